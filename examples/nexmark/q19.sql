-- q19 auction Top-10 price: the ten highest bids of each auction (Flink's q19 as written: a running
-- Top-N, each auction's rows rewritten as its top ten change; equal prices ranked by the other columns).
CREATE MATERIALIZED VIEW q19 AS
SELECT * FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY auction ORDER BY price DESC) AS rank_number
               FROM bid)
WHERE rank_number <= 10;
