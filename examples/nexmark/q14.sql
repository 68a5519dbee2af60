-- q14 calculation (without Flink's Java UDF count_char): classify bids by time of day and price.
CREATE MATERIALIZED VIEW q14 AS
SELECT auction, bidder, 0.908 * price AS price,
       CASE WHEN EXTRACT(HOUR FROM datetime) >= 8 AND EXTRACT(HOUR FROM datetime) <= 18 THEN 'dayTime'
            WHEN EXTRACT(HOUR FROM datetime) <= 6 OR EXTRACT(HOUR FROM datetime) >= 20 THEN 'nightTime'
            ELSE 'otherTime' END AS bidtimetype,
       datetime, extra
FROM bid WHERE 0.908 * price > 1000000 AND 0.908 * price < 50000000;
