"""A view reading another view's output like a stream, closed by the upstream's watermark."""

from __future__ import annotations

import pytest

from pondstream.engine import EngineError
from pondstream.sql import SqlError

from conftest import HOURLY, canon, duck, make_orders, orders_stream, write_jsonl

DAILY = """CREATE MATERIALIZED VIEW six_hourly AS
SELECT TUMBLE_START(hour, INTERVAL '6' HOUR) AS period, customer_id, SUM(orders) AS orders, SUM(total) AS total,
       MAX(avg_amount) AS best_hour_avg
FROM hourly_sales GROUP BY TUMBLE(hour, INTERVAL '6' HOUR), customer_id;"""


def test_view_over_view_matches_duckdb(engine, tmp_path):
    rows = make_orders(20000, seed=101, step_s=4.0, keys=8)  # ~22 hours
    write_jsonl(tmp_path / "o.jsonl", rows)
    engine.execute(orders_stream(tmp_path / "o.jsonl", extra=", batch_bytes = '100000'") + HOURLY + DAILY,
                   base_dir=str(tmp_path))
    engine.run(checkpoint_interval=0.0)
    got = engine.query("SELECT * FROM six_hourly")
    want = duck("""WITH h AS (SELECT time_bucket(INTERVAL '1 hour', event_time) AS hour, customer_id, COUNT(*) AS orders,
                  SUM(amount) AS total, AVG(amount) AS avg_amount FROM orders WHERE amount > 0 GROUP BY 1, 2)
        SELECT time_bucket(INTERVAL '6 hours', hour) AS period, customer_id, SUM(orders)::BIGINT AS orders,
               SUM(total) AS total, MAX(avg_amount) AS best_hour_avg FROM h GROUP BY 1, 2""", rows)
    assert got.num_rows >= 24
    assert canon(got) == canon(want)
    versions = engine.status()["series"]["six_hourly"]["versions"]
    assert versions >= 3  # periods closed one after another as the hourly view's watermark moved
    with pytest.raises(EngineError, match="read by six_hourly"):
        engine.execute("DROP MATERIALIZED VIEW hourly_sales")


def test_views_whose_rows_get_replaced_cannot_be_read_yet(engine, tmp_path):
    write_jsonl(tmp_path / "o.jsonl", make_orders(10))
    lateness = HOURLY.replace("hourly_sales AS", "hourly_sales WITH (allowed_lateness = '5 minutes') AS")
    engine.execute(orders_stream(tmp_path / "o.jsonl") + lateness, base_dir=str(tmp_path))
    with pytest.raises(SqlError, match="view hourly_sales cannot be read as a stream yet"):
        engine.execute(DAILY)
