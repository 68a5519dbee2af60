-- q19 as a window Top-N: the three highest bids of each auction per 10-second window, emitted when the
-- window closes (Flink's window Top-N form), and its state dropped then.
CREATE MATERIALIZED VIEW q19w AS
SELECT window_start, window_end, auction, bidder, price, rn FROM (
  SELECT *, ROW_NUMBER() OVER (PARTITION BY window_start, window_end, auction ORDER BY price DESC) AS rn
  FROM TUMBLE(TABLE bid, DESCRIPTOR(datetime), INTERVAL '10' SECOND))
WHERE rn <= 3;
