-- q5 hot items: the auctions with the most bids in each 10-second window sliding by 2 seconds. Flink
-- joins the per-auction counts with their per-window maximum; here the same rows come from a window
-- Top-N with RANK() (ties kept, as the join keeps them) over the counts, one statement run as two views.
CREATE MATERIALIZED VIEW q5 AS
WITH auctionbids AS (
  SELECT auction, COUNT(*) AS num, window_start AS starttime, window_end AS endtime
  FROM HOP(TABLE bid, DESCRIPTOR(datetime), INTERVAL '2' SECOND, INTERVAL '10' SECOND)
  GROUP BY auction, window_start, window_end)
SELECT auction, num, starttime FROM (
  SELECT *, RANK() OVER (PARTITION BY window_start, window_end ORDER BY num DESC) AS rk
  FROM TUMBLE(TABLE auctionbids, DESCRIPTOR(starttime), INTERVAL '2' SECOND))
WHERE rk <= 1;
