-- q18 find last bid: each bidder's latest bid on each auction (dedup by ROW_NUMBER, Flink's q18 as
-- written); the row of a (bidder, auction) is rewritten when a later bid arrives.
CREATE MATERIALIZED VIEW q18 AS
SELECT auction, bidder, price, channel, url, datetime, extra
FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY bidder, auction ORDER BY datetime DESC) AS rank_number
      FROM bid)
WHERE rank_number <= 1;
