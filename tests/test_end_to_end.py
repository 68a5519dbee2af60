"""Views over files, compared with DuckDB computing the same GROUP BY over the same input."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest

from conftest import HOURLY, START, canon, duck, make_orders, orders_stream, write_jsonl

DUCK_HOURLY = """SELECT time_bucket(INTERVAL '1 hour', event_time) AS hour, customer_id, COUNT(*) AS orders,
       SUM(amount) AS total, AVG(amount) AS avg_amount
FROM orders WHERE amount > 0 GROUP BY 1, 2"""


def run_view(engine, ddl: str, view: str, tmp_path) -> pa.Table:
    engine.execute(ddl, base_dir=str(tmp_path))
    engine.run(checkpoint_interval=0.0)
    return engine.query(f"SELECT * FROM {view}")


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_hourly_tumble_matches_duckdb(engine, tmp_path, fmt):
    rows = make_orders(6000, seed=3, disorder_s=4.0)  # disorder within the 5 s watermark delay: nothing late
    data = tmp_path / "data"
    data.mkdir()
    for i in range(3):  # a directory of files, read in name order
        part = rows[i * 2000:(i + 1) * 2000]
        if fmt == "jsonl":
            write_jsonl(data / f"part-{i}.jsonl", part)
        else:
            t = pa.Table.from_pylist(part)
            if fmt == "csv":
                pcsv.write_csv(t, data / f"part-{i}.csv")
            else:
                t = t.set_column(3, "event_time", t.column("event_time").cast(pa.timestamp("us")))
                pq.write_table(t, data / f"part-{i}.parquet", row_group_size=500)
    ddl = orders_stream("data/", fmt, extra=", batch_bytes = '40000'") + HOURLY
    got = run_view(engine, ddl, "hourly_sales", tmp_path)
    assert got.num_rows > 20
    assert canon(got) == canon(duck(DUCK_HOURLY, rows))
    assert engine.query("SELECT COUNT(*) AS n FROM hourly_sales__late").column("n")[0].as_py() == 0


def test_hop_tvf_having_and_expressions_match_duckdb(engine, tmp_path):
    rows = make_orders(5000, seed=5, step_s=1.5)
    write_jsonl(tmp_path / "o.jsonl", rows)
    ddl = orders_stream(tmp_path / "o.jsonl", extra=", batch_bytes = '30000'") + """
CREATE MATERIALIZED VIEW hop AS
SELECT HOP_START(event_time, INTERVAL '10' MINUTE, INTERVAL '30' MINUTE) AS ws,
       HOP_END(event_time, INTERVAL '10' MINUTE, INTERVAL '30' MINUTE) AS we,
       UPPER(customer_id) AS cust, COUNT(amount) AS n, SUM(amount) / COUNT(*) + 1 AS mean,
       MIN(amount) AS lo, MAX(amount) AS hi
FROM orders WHERE amount > 0 AND customer_id <> 'c3'
GROUP BY HOP(event_time, INTERVAL '10' MINUTE, INTERVAL '30' MINUTE), UPPER(customer_id)
HAVING COUNT(*) >= 3;
CREATE MATERIALIZED VIEW tvf AS
SELECT window_start, window_end, customer_id, COUNT(*) AS n, SUM(amount) AS total
FROM TABLE(TUMBLE(TABLE orders, DESCRIPTOR(event_time), INTERVAL '15' MINUTES))
GROUP BY window_start, window_end, customer_id;
"""
    got_hop = run_view(engine, ddl, "hop", tmp_path)
    want_hop = duck("""
        WITH w AS (SELECT *, unnest(generate_series(0, 2)) AS j FROM orders WHERE amount > 0 AND customer_id <> 'c3'),
        a AS (SELECT *, time_bucket(INTERVAL '10 minutes', event_time) - j * INTERVAL '10 minutes' AS ws FROM w)
        SELECT ws, ws + INTERVAL '30 minutes' AS we, UPPER(customer_id) AS cust, COUNT(amount) AS n,
               SUM(amount) / COUNT(*) + 1 AS mean, MIN(amount) AS lo, MAX(amount) AS hi
        FROM a GROUP BY 1, 2, 3 HAVING COUNT(*) >= 3""", rows)
    assert got_hop.num_rows > 100
    assert canon(got_hop) == canon(want_hop)
    got_tvf = engine.query("SELECT * FROM tvf")
    want_tvf = duck("""SELECT time_bucket(INTERVAL '15 minutes', event_time) AS window_start,
        time_bucket(INTERVAL '15 minutes', event_time) + INTERVAL '15 minutes' AS window_end,
        customer_id, COUNT(*) AS n, SUM(amount) AS total FROM orders GROUP BY 1, 2, 3""", rows)
    assert canon(got_tvf) == canon(want_tvf)


def test_late_events_go_to_late_series_and_view_matches_duckdb_without_them(engine, tmp_path):
    """File 1 is on time; file 2 (a later batch) replays events from hours before the watermark."""
    on_time = make_orders(4000, seed=7, disorder_s=3.0)
    replay = make_orders(300, seed=8, disorder_s=0.0, start=START + timedelta(minutes=30), step_s=5.0)
    for i, r in enumerate(replay):
        r["order_id"] = 100_000 + i
    d = tmp_path / "in"
    write_jsonl(d / "1.jsonl", on_time)
    write_jsonl(d / "2.jsonl", replay)
    got = run_view(engine, orders_stream(d) + HOURLY, "hourly_sales", tmp_path)
    watermark = max(pa.array([r["event_time"] for r in on_time]).cast(pa.timestamp("us")).to_pylist()) \
        - timedelta(seconds=5)
    late_expected = [r for r in replay if r["amount"] > 0 and
                     pa.scalar(r["event_time"]).cast(pa.timestamp("us")).as_py().replace(
                         minute=0, second=0, microsecond=0) + timedelta(hours=1) <= watermark]
    assert len(late_expected) > 50
    late = engine.query("SELECT order_id, _window_start, _watermark FROM hourly_sales__late")
    assert sorted(late.column("order_id").to_pylist()) == sorted(r["order_id"] for r in late_expected)
    assert set(late.column("_watermark").to_pylist()) == {watermark}
    on_time_ids = {r["order_id"] for r in late_expected}
    kept = on_time + [r for r in replay if r["order_id"] not in on_time_ids]
    assert canon(got) == canon(duck(DUCK_HOURLY, kept))


def test_malformed_records_are_set_aside_with_file_and_offset(engine, tmp_path):
    rows = make_orders(500, seed=11)
    lines = [json.dumps(r) for r in rows]
    bad = {10: "{not json", 20: json.dumps({**rows[20], "order_id": "abc"}),
           30: json.dumps({**rows[30], "event_time": None}), 40: json.dumps({**rows[40], "event_time": "yesterday"})}
    for i, text in bad.items():
        lines[i] = text
    t50 = datetime.fromisoformat(rows[50]["event_time"]).replace(microsecond=0)
    rows[50]["event_time"] = t50.isoformat(sep=" ")
    millis = int(t50.replace(tzinfo=UTC).timestamp() * 1000)
    lines[50] = json.dumps({**rows[50], "event_time": millis})  # epoch milliseconds are accepted too
    path = tmp_path / "o.jsonl"
    path.write_text("\n".join(lines) + "\n")
    got = run_view(engine, orders_stream(path) + HOURLY, "hourly_sales", tmp_path)
    errors = engine.query("SELECT source, \"offset\", raw, error FROM orders__errors ORDER BY \"offset\"")
    offsets = [sum(len(x) + 1 for x in lines[:i]) for i in sorted(bad)]
    assert errors.column("offset").to_pylist() == offsets
    assert [r.decode() for r in errors.column("raw").to_pylist()] == [bad[i] for i in sorted(bad)]
    assert all(s.endswith("o.jsonl") for s in errors.column("source").to_pylist())
    assert "null or missing" in errors.column("error")[2].as_py()
    good = [r for i, r in enumerate(rows) if i not in bad]
    assert canon(got) == canon(duck(DUCK_HOURLY, good))


def test_timestamps_iso_with_zone_and_epoch_millis_csv(engine, tmp_path):
    text = ("order_id,customer_id,amount,event_time\n"
            "1,a,10,2026-01-01T10:15:00Z\n"
            "2,a,20,2026-01-01T12:20:00+02:00\n"
            "3,a,30,1767263700000\n"
            "4,b,40,2026-01-01 10:59:59.5\n")
    (tmp_path / "t.csv").write_text(text)
    got = run_view(engine, orders_stream(tmp_path / "t.csv", "csv") + HOURLY, "hourly_sales", tmp_path)
    assert canon(got.select(["hour", "customer_id", "orders"])) == canon(pa.table({
        "hour": pa.array([START.replace(hour=10)] * 2, pa.timestamp("us")), "customer_id": ["a", "b"],
        "orders": pa.array([3, 1], pa.int64())}))


def test_generator_is_deterministic_and_matches_duckdb(tmp_path):
    from pondstream.engine import Engine

    ddl = """CREATE STREAM orders (order_id BIGINT, customer_id VARCHAR, amount DOUBLE, event_time TIMESTAMP,
        WATERMARK FOR event_time AS event_time - INTERVAL '2' SECOND)
        WITH (connector = 'generator', rows = '30000', keys = '7', seed = '3', batch_size = '4096',
              step = '1 second', out_of_orderness = '2 seconds');""" + HOURLY
    results = []
    for i in range(2):
        with Engine(tmp_path / f"s{i}") as e:
            e.execute(ddl)
            e.run(checkpoint_interval=0.0)
            results.append(e.query("SELECT * FROM hourly_sales"))
    assert canon(results[0]) == canon(results[1])
    from pondstream.operators.generator import GeneratorSource
    from pondstream.sql import parse_script
    (s,) = parse_script(ddl.split(";")[0])
    src, parts = GeneratorSource(s.schema, s.event_time, s.options), []
    while (b := src.read()) is not None:
        parts.append(b.data)
    raw = pa.concat_tables(parts)
    assert raw.num_rows == 30000
    assert canon(results[0]) == canon(duck(DUCK_HOURLY, raw.to_pylist()))


def test_decimal_and_integer_aggregates_match_duckdb(engine, tmp_path):
    rows = make_orders(3000, seed=13)
    write_jsonl(tmp_path / "o.jsonl", rows)
    ddl = orders_stream(tmp_path / "o.jsonl", amount_type="DECIMAL(12,2)") + """
CREATE MATERIALIZED VIEW d AS
SELECT TUMBLE_START(event_time, INTERVAL '30' MINUTE) AS ws, SUM(amount) AS total, MIN(amount) AS lo,
       SUM(order_id) AS ids, AVG(order_id) AS mean_id, COUNT(*) AS n
FROM orders GROUP BY TUMBLE(event_time, INTERVAL '30' MINUTE);"""
    got = run_view(engine, ddl, "d", tmp_path)
    assert pa.types.is_decimal(got.schema.field("total").type)
    want = duck("""SELECT time_bucket(INTERVAL '30 minutes', event_time) AS ws,
        SUM(amount::DECIMAL(12,2)) AS total, MIN(amount::DECIMAL(12,2)) AS lo, SUM(order_id)::BIGINT AS ids,
        AVG(order_id) AS mean_id, COUNT(*) AS n FROM orders GROUP BY 1""", rows)
    assert canon(got) == canon(want.cast(got.schema))


def test_glob_path_reads_matching_files_in_name_order(engine, tmp_path):
    rows = make_orders(900, seed=17)
    write_jsonl(tmp_path / "d" / "b.jsonl", rows[300:600])
    write_jsonl(tmp_path / "d" / "a.jsonl", rows[:300])
    write_jsonl(tmp_path / "d" / "c.jsonl", rows[600:])
    write_jsonl(tmp_path / "d" / "skip.json", make_orders(50, seed=99))
    got = run_view(engine, orders_stream("d/*.jsonl") + HOURLY, "hourly_sales", tmp_path)
    assert canon(got) == canon(duck(DUCK_HOURLY, rows))


def test_unbounded_rate_limited_generator_stops_on_request_and_resumes(tmp_path):
    import threading

    from pondstream.engine import Engine

    ddl = """CREATE STREAM orders (order_id BIGINT, customer_id VARCHAR, amount DOUBLE, event_time TIMESTAMP,
        WATERMARK FOR event_time AS event_time) WITH (connector = 'generator', rows = '0', rate = '20000',
        step = '1 second', keys = '5');""" + HOURLY
    stop = threading.Event()
    with Engine(tmp_path / "s") as e:
        e.execute(ddl)
        threading.Timer(1.5, stop.set).start()
        first = e.run(stop, checkpoint_interval=0.2)
        assert 10_000 < first.events < 60_000  # paced near 20k/s, stopped by the request
        n1 = e.query("SELECT SUM(orders) AS n FROM hourly_sales").column("n")[0].as_py()
        assert n1 > 0
        stop.clear()
        threading.Timer(1.0, stop.set).start()
        e.run(stop, checkpoint_interval=0.2)
        pos = e.status()["views"]["hourly_sales"]["position"]["row"]
        assert pos > first.events  # resumed after the first run's last checkpoint, not from zero


def test_cumulate_tvf_matches_duckdb(engine, tmp_path):
    rows = make_orders(4000, seed=19, step_s=3.0)
    write_jsonl(tmp_path / "o.jsonl", rows)
    ddl = orders_stream(tmp_path / "o.jsonl", extra=", batch_bytes = '50000'") + """
CREATE MATERIALIZED VIEW running AS
SELECT window_start, window_end, customer_id, COUNT(*) AS n, SUM(amount) AS total
FROM TABLE(CUMULATE(TABLE orders, DESCRIPTOR(event_time), INTERVAL '15' MINUTES, INTERVAL '1' HOUR))
GROUP BY window_start, window_end, customer_id;"""
    got = run_view(engine, ddl, "running", tmp_path)
    want = duck("""WITH w AS (SELECT *, time_bucket(INTERVAL '1 hour', event_time) AS s,
                    unnest(generate_series(1, 4)) AS k FROM orders)
        SELECT s AS window_start, s + k * INTERVAL '15 minutes' AS window_end, customer_id, COUNT(*) AS n,
               SUM(amount) AS total
        FROM w WHERE s + k * INTERVAL '15 minutes' > event_time GROUP BY 1, 2, 3""", rows)
    assert got.num_rows > 200
    assert canon(got) == canon(want)


DUCK_SESSIONS = """WITH o AS (SELECT *, CASE WHEN event_time - lag(event_time) OVER (PARTITION BY customer_id
          ORDER BY event_time) < INTERVAL '2 minutes' THEN 0 ELSE 1 END AS new_session FROM orders),
     s AS (SELECT *, SUM(new_session) OVER (PARTITION BY customer_id ORDER BY event_time
          ROWS UNBOUNDED PRECEDING) AS sid FROM o)
SELECT MIN(event_time) AS window_start, MAX(event_time) + INTERVAL '2 minutes' AS window_end, customer_id,
       COUNT(*) AS n, SUM(amount) AS total FROM s GROUP BY customer_id, sid"""


def test_session_windows_match_duckdb(engine, tmp_path):
    rows = make_orders(3000, seed=23, step_s=30.0, disorder_s=20.0, keys=5)  # gaps vary around 2.5 min per key
    write_jsonl(tmp_path / "o.jsonl", rows)
    ddl = orders_stream(tmp_path / "o.jsonl", delay="INTERVAL '30' SECOND", extra=", batch_bytes = '8000'") + """
CREATE MATERIALIZED VIEW sessions AS
SELECT SESSION_START(event_time, INTERVAL '2' MINUTE) AS window_start,
       SESSION_END(event_time, INTERVAL '2' MINUTE) AS window_end, customer_id, COUNT(*) AS n, SUM(amount) AS total
FROM orders GROUP BY SESSION(event_time, INTERVAL '2' MINUTE), customer_id;
CREATE MATERIALIZED VIEW sessions_tvf AS
SELECT window_start, window_end, customer_id, COUNT(*) AS n, SUM(amount) AS total
FROM TABLE(SESSION(TABLE orders PARTITION BY customer_id, DESCRIPTOR(event_time), INTERVAL '2' MINUTES))
GROUP BY window_start, window_end, customer_id;"""
    got = run_view(engine, ddl, "sessions", tmp_path)
    assert engine.query("SELECT COUNT(*) AS n FROM sessions__late").column("n")[0].as_py() == 0
    want = duck(DUCK_SESSIONS, rows)
    assert 100 < got.num_rows < len(rows) / 2  # real sessions: many, each of several events
    assert canon(got) == canon(want)
    assert canon(engine.query("SELECT * FROM sessions_tvf")) == canon(want)
