-- Hourly sales per customer from the built-in generator (no external services needed).
-- Run:   pondstream run examples/hourly_sales.sql
-- Query: pondstream query "SELECT * FROM hourly_sales ORDER BY total DESC LIMIT 10"

CREATE STREAM orders (
    order_id BIGINT,
    customer_id VARCHAR,
    amount DOUBLE,
    event_time TIMESTAMP,
    WATERMARK FOR event_time AS event_time - INTERVAL '5' SECOND
) WITH (connector = 'generator', rows = '200000', keys = '50', seed = '7',
        step = '100 milliseconds', out_of_orderness = '3 seconds');

CREATE MATERIALIZED VIEW hourly_sales AS
SELECT TUMBLE_START(event_time, INTERVAL '1' HOUR) AS hour,
       customer_id,
       COUNT(*) AS orders,
       SUM(amount) AS total,
       AVG(amount) AS avg_amount
FROM orders
WHERE amount > 0
GROUP BY TUMBLE(event_time, INTERVAL '1' HOUR), customer_id;
