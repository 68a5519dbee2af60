"""Running aggregates (GROUP BY keys, no window): per-key state, changed keys written as new versions,
the latest version per key queried, and state_ttl forgetting idle keys."""

from __future__ import annotations

import json
from datetime import timedelta

from conftest import START, canon, duck, make_orders, orders_stream, write_jsonl

TOTALS = """CREATE MATERIALIZED VIEW totals AS
SELECT customer_id, COUNT(*) AS orders, SUM(amount) AS total, AVG(amount) AS mean, MAX(amount) AS top
FROM orders WHERE amount > 0 GROUP BY customer_id;"""
DUCK = """SELECT customer_id, COUNT(*) AS orders, SUM(amount) AS total, AVG(amount) AS mean, MAX(amount) AS top
FROM orders WHERE amount > 0 GROUP BY customer_id"""


def test_running_totals_match_duckdb_and_versions_hold_changed_keys(engine, tmp_path):
    rows = make_orders(5000, seed=91, keys=300)
    write_jsonl(tmp_path / "o.jsonl", rows)
    engine.execute(orders_stream(tmp_path / "o.jsonl", extra=", batch_bytes = '30000'") + TOTALS,
                   base_dir=str(tmp_path))
    engine.run(checkpoint_interval=0.0)  # a version per batch
    assert canon(engine.query("SELECT * FROM totals")) == canon(duck(DUCK, rows))
    log = [json.loads(x) for x in (tmp_path / "state/series/totals/_log.jsonl").read_text().splitlines()]
    assert len(log) >= 10
    # Each version holds only the keys its batch changed, not the whole table.
    assert max(e["rows"] for e in log) < 300 and sum(e["rows"] for e in log) > 300
    first = engine.query("SELECT * FROM totals VERSION AS OF 1")
    assert 0 < first.num_rows < 300


def test_state_ttl_forgets_idle_keys(engine, tmp_path):
    early = [{"order_id": i, "customer_id": "idle", "amount": 10.0,
              "event_time": (START + timedelta(minutes=i)).isoformat(sep=" ")} for i in range(5)]
    busy = make_orders(4000, seed=92, keys=40, step_s=3.0, start=START + timedelta(minutes=10))
    back = [{"order_id": 90_000 + i, "customer_id": "idle", "amount": 1.0,
             "event_time": (START + timedelta(hours=3, minutes=40 + i)).isoformat(sep=" ")} for i in range(3)]
    write_jsonl(tmp_path / "in" / "1.jsonl", early + busy)
    write_jsonl(tmp_path / "in" / "2.jsonl", back)
    ddl = orders_stream(tmp_path / "in", extra=", batch_bytes = '6000'") + TOTALS.replace(
        "CREATE MATERIALIZED VIEW totals AS", "CREATE MATERIALIZED VIEW totals WITH (state_ttl = '1 hour') AS")
    engine.execute(ddl, base_dir=str(tmp_path))
    engine.run(checkpoint_interval=0.0)
    idle = engine.query("SELECT orders, total FROM totals WHERE customer_id = 'idle'").to_pylist()
    assert idle == [{"orders": 3, "total": 3.0}]  # the early five were forgotten: a fresh start
    before = engine.query("SELECT orders FROM totals VERSION AS OF 1 WHERE customer_id = 'idle'").to_pylist()
    assert before == [{"orders": 5}]  # what was emitted then stays readable
    others = [r for r in busy if r["customer_id"] != "idle"]
    got = engine.query("SELECT * FROM totals WHERE customer_id <> 'idle'")
    assert canon(got) == canon(duck(DUCK, others))
