-- Python functions in SQL: run with  pondstream run examples/udf/pipeline.sql
-- (the module path is relative to the directory pondstream run starts in)
CREATE FUNCTION discount(amount DOUBLE, customer VARCHAR) RETURNS DOUBLE
  LANGUAGE PYTHON AS 'examples/udf/functions.py:discount';
CREATE FUNCTION size_band(amount DOUBLE) RETURNS VARCHAR
  LANGUAGE PYTHON AS 'examples/udf/functions.py:size_band';

CREATE STREAM orders (order_id BIGINT, customer_id VARCHAR, amount DOUBLE, event_time TIMESTAMP,
    WATERMARK FOR event_time AS event_time - INTERVAL '5' SECOND)
  WITH (connector = 'generator', rows = '200000', keys = '50');

CREATE MATERIALIZED VIEW net_by_band AS
SELECT TUMBLE_START(event_time, INTERVAL '1' HOUR) AS hour, size_band(amount) AS band,
       COUNT(*) AS orders, SUM(discount(amount, customer_id)) AS net
FROM orders WHERE discount(amount, customer_id) > 1
GROUP BY TUMBLE(event_time, INTERVAL '1' HOUR), size_band(amount);
