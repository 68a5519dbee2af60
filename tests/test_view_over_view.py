"""A view reading another view's output like a stream, closed by the upstream's watermark."""

from __future__ import annotations

from datetime import timedelta

import pytest

from pondstream.engine import EngineError
from pondstream.sql import SqlError

from conftest import HOURLY, START, canon, duck, make_orders, orders_stream, write_jsonl

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


def test_upstream_reemission_updates_the_downstream_view(engine, tmp_path):
    """The hourly view accepts late events for 45 minutes and re-emits their hour; the two-hourly view
    over it had already emitted that period, and re-emits it with the corrected hour."""
    on_time = make_orders(4000, seed=51, step_s=2.0, disorder_s=3.0)  # ~2h13m: period [0, 2h) closes
    replay = make_orders(500, seed=52, step_s=12.0, disorder_s=0.0, start=START + timedelta(minutes=5))
    for i, r in enumerate(replay):
        r["order_id"] = 500_000 + i
    write_jsonl(tmp_path / "in" / "1.jsonl", on_time)
    write_jsonl(tmp_path / "in" / "2.jsonl", replay)
    hourly = HOURLY.replace("hourly_sales AS", "hourly_sales WITH (allowed_lateness = '45 minutes') AS")
    engine.execute(orders_stream(tmp_path / "in") + hourly + TWO_HOURLY, base_dir=str(tmp_path))
    engine.run(checkpoint_interval=0.0)
    kept = [r for r in engine.query("SELECT order_id FROM hourly_sales__late").column("order_id").to_pylist()]
    accepted = [r for r in replay if r["order_id"] not in set(kept)]
    assert kept and accepted
    want = duck(f"""WITH h AS ({DUCK_HOURLY}) SELECT time_bucket(INTERVAL '2 hours', hour) AS period, customer_id,
        SUM(orders)::BIGINT AS orders FROM h GROUP BY 1, 2""", on_time + accepted)
    assert canon(engine.query("SELECT * FROM two_hourly")) == canon(want)
    first = duck(f"""WITH h AS ({DUCK_HOURLY}) SELECT time_bucket(INTERVAL '2 hours', hour) AS period, customer_id,
        SUM(orders)::BIGINT AS orders FROM h GROUP BY 1, 2 HAVING period < TIMESTAMP '2026-01-01 02:00:00'""",
                 on_time)
    assert canon(engine.query("SELECT * FROM two_hourly VERSION AS OF 1")) == canon(first)  # before the fix-up


TWO_HOURLY = """CREATE MATERIALIZED VIEW two_hourly AS
SELECT TUMBLE_START(hour, INTERVAL '2' HOUR) AS period, customer_id, SUM(orders) AS orders
FROM hourly_sales GROUP BY TUMBLE(hour, INTERVAL '2' HOUR), customer_id;"""
DUCK_HOURLY = """SELECT time_bucket(INTERVAL '1 hour', event_time) AS hour, customer_id, COUNT(*) AS orders
    FROM orders WHERE amount > 0 GROUP BY 1, 2"""


def test_a_view_without_event_time_cannot_be_read_as_a_stream(engine, tmp_path):
    write_jsonl(tmp_path / "o.jsonl", make_orders(10))
    totals = "CREATE MATERIALIZED VIEW totals AS SELECT customer_id, COUNT(*) AS n FROM orders GROUP BY customer_id;"
    engine.execute(orders_stream(tmp_path / "o.jsonl") + totals, base_dir=str(tmp_path))
    with pytest.raises(SqlError, match="view totals cannot be read as a stream: it has no window-start column"):
        engine.execute("CREATE MATERIALIZED VIEW t2 AS SELECT COUNT(*) AS n FROM totals "
                       "GROUP BY TUMBLE(customer_id, INTERVAL '1' HOUR)")


def test_view_added_after_its_upstream_was_consolidated_reads_the_base(engine, tmp_path):
    """A downstream view created once the upstream's versions were folded into its base starts from the
    base (one batch of the latest rows) and then the tail: the same answer as DuckDB."""
    rows = make_orders(20000, seed=103, step_s=4.0, keys=8)
    write_jsonl(tmp_path / "o.jsonl", rows)
    engine.execute(orders_stream(tmp_path / "o.jsonl", extra=", batch_bytes = '100000'") + HOURLY,
                   base_dir=str(tmp_path))
    engine.run(checkpoint_interval=0.0)
    engine.compact("hourly_sales")
    assert engine.status()["series"]["hourly_sales"]["files"] == 1  # every version folded
    engine.execute(DAILY)
    engine.run(checkpoint_interval=0.0)
    want = duck("""WITH h AS (SELECT time_bucket(INTERVAL '1 hour', event_time) AS hour, customer_id, COUNT(*) AS orders,
                  SUM(amount) AS total, AVG(amount) AS avg_amount FROM orders WHERE amount > 0 GROUP BY 1, 2)
        SELECT time_bucket(INTERVAL '6 hours', hour) AS period, customer_id, SUM(orders)::BIGINT AS orders,
               SUM(total) AS total, MAX(avg_amount) AS best_hour_avg FROM h GROUP BY 1, 2""", rows)
    got = engine.query("SELECT * FROM six_hourly")
    assert got.num_rows >= 24 and canon(got) == canon(want)
