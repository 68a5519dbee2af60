-- q11 user sessions: bids per bidder in sessions closed by 10 seconds without a bid.
CREATE MATERIALIZED VIEW q11 AS
SELECT bidder, COUNT(*) AS bid_count,
       SESSION_START(datetime, INTERVAL '10' SECOND) AS starttime,
       SESSION_END(datetime, INTERVAL '10' SECOND) AS endtime
FROM bid GROUP BY bidder, SESSION(datetime, INTERVAL '10' SECOND);
