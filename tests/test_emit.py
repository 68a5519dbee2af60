"""EMIT EVERY: early, partial results of open windows as versions (is_final = false), then the final rows."""

from __future__ import annotations

import pyarrow as pa

from pondstream.engine import Engine
from pondstream.operators.generator import GeneratorSource
from pondstream.sql import parse_script

from conftest import canon, duck

STREAM = """CREATE STREAM orders (order_id BIGINT, customer_id VARCHAR, amount DOUBLE, event_time TIMESTAMP,
    WATERMARK FOR event_time AS event_time - INTERVAL '2' SECOND)
WITH (connector = 'generator', rows = '6000', rate = '3000', keys = '4', step = '1 second', seed = '9');"""
VIEW = """CREATE MATERIALIZED VIEW hourly AS
SELECT TUMBLE_START(event_time, INTERVAL '1' HOUR) AS hour, customer_id, COUNT(*) AS orders, SUM(amount) AS total
FROM orders GROUP BY TUMBLE(event_time, INTERVAL '1' HOUR), customer_id
EMIT EVERY INTERVAL '300' MILLISECOND;"""


def test_emit_every_writes_early_versions_then_final_rows(tmp_path):
    with Engine(tmp_path / "s") as e:
        e.execute(STREAM + VIEW)
        e.run(checkpoint_interval=0.1)
        latest = e.query("SELECT * FROM hourly")
        versions = e.status()["series"]["hourly"]["versions"]
        history = [e.query(f"SELECT hour, customer_id, orders, is_final FROM hourly VERSION AS OF {v}")
                   for v in range(1, versions + 1)]
    (s,) = parse_script(STREAM)
    src, parts = GeneratorSource(s.schema, s.event_time, s.options), []
    while not src.finished:
        if (b := src.read()) is not None:
            parts.append(b.data)
    rows = pa.concat_tables(parts).to_pylist()
    want = duck("""SELECT time_bucket(INTERVAL '1 hour', event_time) AS hour, customer_id, COUNT(*) AS orders,
        SUM(amount) AS total, TRUE AS is_final FROM orders GROUP BY 1, 2""", rows)
    assert canon(latest) == canon(want)  # the final rows supersede every early one
    assert versions >= 4
    finals = {(r["hour"], r["customer_id"]): r["orders"] for r in latest.to_pylist()}
    early = [r for t in history for r in t.to_pylist() if not r["is_final"]]
    assert early, "no early results were written"
    assert all(r["orders"] <= finals[(r["hour"], r["customer_id"])] for r in early)
    assert any(r["orders"] < finals[(r["hour"], r["customer_id"])] for r in early)  # really partial
