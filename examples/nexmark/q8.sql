-- q8-like monitor new users: people who opened an auction in the same 10-second window as they signed up
-- (Flink's q8 first deduplicates each side per window; this window join keeps one row per auction).
CREATE MATERIALIZED VIEW q8 AS
SELECT p.id, p.name, p.window_start AS starttime, a.id AS auction
FROM TUMBLE(TABLE person, DESCRIPTOR(datetime), INTERVAL '10' SECOND) p
JOIN TUMBLE(TABLE auction, DESCRIPTOR(datetime), INTERVAL '10' SECOND) a
  ON p.window_start = a.window_start AND p.window_end = a.window_end AND p.id = a.seller;
