-- Hourly sales from a Kafka topic. Start a local broker and load some data first:
--   pondstream broker --port 9092 &
--   pondstream produce orders examples/orders.jsonl --bootstrap-servers localhost:9092
--   pondstream run examples/kafka_orders.sql --state-dir ./kafka-state      (Ctrl-C to stop)

CREATE STREAM orders (
    order_id BIGINT, customer_id VARCHAR, amount DOUBLE, event_time TIMESTAMP,
    WATERMARK FOR event_time AS event_time - INTERVAL '5' SECOND
) WITH (connector = 'kafka', topic = 'orders', bootstrap_servers = 'localhost:9092', format = 'json',
        scan_startup = 'earliest', idle_timeout = '10 seconds');

CREATE MATERIALIZED VIEW hourly_sales AS
SELECT TUMBLE_START(event_time, INTERVAL '1' HOUR) AS hour,
       customer_id, COUNT(*) AS orders, SUM(amount) AS total
FROM orders WHERE amount > 0
GROUP BY TUMBLE(event_time, INTERVAL '1' HOUR), customer_id;
