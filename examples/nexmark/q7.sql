-- q7 highest bid: the bids at the highest price of each 10-second window. Flink joins bids with each
-- window's MAX(price); a window Top-N with RANK() (every bid tied at the top) gives the same rows.
CREATE MATERIALIZED VIEW q7 AS
SELECT auction, price, bidder, datetime, extra FROM (
  SELECT *, RANK() OVER (PARTITION BY window_start, window_end ORDER BY price DESC) AS rk
  FROM TUMBLE(TABLE bid, DESCRIPTOR(datetime), INTERVAL '10' SECOND))
WHERE rk <= 1;
