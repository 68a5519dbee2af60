"""Temporal joins (FOR SYSTEM_TIME AS OF): each order meets the version of its customer current at the
order's event time, checked against DuckDB's ASOF JOIN over the rows on time under the per-event rule,
with disorder and late rows on both sides, several batch sizes and checkpoint intervals, and SIGKILLs."""

from __future__ import annotations

import random
from datetime import timedelta

import duckdb
import pyarrow as pa
import pytest
from test_joins import on_time, text

from pondstream.engine import Engine
from pondstream.sql.errors import SqlError

from conftest import PYTHON, START, canon, run_with_random_kills, timed_run, write_jsonl

DELAY_O, DELAY_C = 30, 120
VIEWS = """
CREATE MATERIALIZED VIEW enriched AS
SELECT o.id, o.ts, o.amount, c.tier, o.amount * (1 - c.discount) AS net
FROM orders o JOIN customers FOR SYSTEM_TIME AS OF o.ts AS c ON o.cid = c.id;

CREATE MATERIALIZED VIEW enriched_all AS
SELECT o.id, o.ts, o.cid, c.tier, c.ts AS version_ts
FROM orders o LEFT JOIN customers FOR SYSTEM_TIME AS OF o.ts AS c ON o.cid = c.id;

CREATE MATERIALIZED VIEW by_tier AS
SELECT TUMBLE_START(o.ts, INTERVAL '1' HOUR) AS hour, c.tier, COUNT(*) AS n, SUM(o.amount) AS total
FROM orders o JOIN customers FOR SYSTEM_TIME AS OF o.ts AS c ON o.cid = c.id
GROUP BY TUMBLE(o.ts, INTERVAL '1' HOUR), c.tier;
"""
DUCK = {
    "enriched": """SELECT o.id, o.ts, o.amount, c.tier, o.amount * (1 - c.discount) FROM orders o
                   ASOF JOIN customers c ON o.cid = c.id AND o.ts >= c.ts""",
    "enriched_all": """SELECT o.id, o.ts, o.cid, c.tier, c.ts AS version_ts FROM orders o
                       ASOF LEFT JOIN customers c ON o.cid = c.id AND o.ts >= c.ts""",
    "by_tier": """SELECT time_bucket(INTERVAL 1 HOUR, o.ts), c.tier, COUNT(*), SUM(o.amount) FROM orders o
                  ASOF JOIN customers c ON o.cid = c.id AND o.ts >= c.ts GROUP BY 1, 2""",
}


def make_inputs(n: int, seed: int) -> tuple[list[dict], list[dict]]:
    """Orders every ~10 s for 30 customers (a few with no customer); customer versions (tier, discount)
    every ~10 minutes per customer, each at its own time; both disordered beyond their delays, a few
    rows hours late."""
    rng = random.Random(seed)
    orders = []
    for i in range(n):
        t = i * 10 - rng.uniform(0, 2 * DELAY_O) - (rng.uniform(600, 7200) if rng.random() < 0.02 else 0)
        orders.append({"id": i, "cid": rng.randrange(32) if rng.random() < 0.97 else None,
                       "amount": round(rng.uniform(1, 100), 2), "ts": START + timedelta(seconds=t)})
    customers = []
    for k in range(30):
        t = -3600 + k * 7.0 + rng.uniform(0, 3000)  # the first version, for some after their first orders
        while t < n * 10:
            customers.append({"id": k, "tier": rng.choice(["gold", "silver", "bronze"]),
                              "discount": rng.choice([0.0, 0.1, 0.25]), "ts": START + timedelta(seconds=t),
                              "_sort": t + rng.uniform(0, 2 * DELAY_C) + (rng.uniform(600, 7200) if rng.random()
                                                                          < 0.03 else 0)})
            t += rng.uniform(60, 1200)
    customers.sort(key=lambda r: r.pop("_sort"))
    return orders, customers


def pipeline(orders_path, customers_path, batch_bytes: int | None) -> str:
    extra = f", batch_bytes = '{batch_bytes}'" if batch_bytes else ""
    return f"""
CREATE STREAM orders (id BIGINT, cid BIGINT, amount DOUBLE, ts TIMESTAMP,
  WATERMARK FOR ts AS ts - INTERVAL '{DELAY_O}' SECOND)
  WITH (connector = 'file', path = '{orders_path}', format = 'jsonl'{extra});
CREATE STREAM customers (id BIGINT, tier VARCHAR, discount DOUBLE, ts TIMESTAMP, PRIMARY KEY (id) NOT ENFORCED,
  WATERMARK FOR ts AS ts - INTERVAL '{DELAY_C}' SECOND)
  WITH (connector = 'file', path = '{customers_path}', format = 'jsonl'{extra});
""" + VIEWS


def answers(state) -> dict[str, list]:
    with Engine(state) as e:
        got = {name: canon(e.query(f"SELECT * FROM {name}")) for name in DUCK}
        got["late"] = canon(e.query("SELECT _side, _row FROM enriched__late"))
        return got


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("temporal")
    orders, customers = make_inputs(3000, seed=11)
    src = (write_jsonl(tmp / "orders.jsonl", text(orders)), write_jsonl(tmp / "customers.jsonl", text(customers)))
    with Engine(tmp / "ref") as e:
        e.execute(pipeline(*src, None))
        e.run()
    return tmp, orders, customers, src, answers(tmp / "ref")


def test_temporal_joins_equal_duckdb_asof_joins(case):
    _, orders, customers, _, got = case
    con = duckdb.connect()
    con.register("orders", pa.Table.from_pylist(on_time(orders, DELAY_O)))
    con.register("customers", pa.Table.from_pylist(on_time(customers, DELAY_C)))
    for name, sql in DUCK.items():
        want = canon(con.sql(sql).to_arrow_table())
        assert got[name] == want and len(want) > 10, name
    assert len(got["enriched_all"]) == len(on_time(orders, DELAY_O))  # every on-time order, once
    assert any(r[3] is None and r[2] is not None for r in got["enriched_all"])  # before its first version
    late_sides = {side for side, _ in got["late"]}
    assert late_sides == {"o", "c"}


@pytest.mark.parametrize("batch_bytes,interval", [(400, 0.0), (5000, 1.0)])
def test_batching_and_checkpoints_do_not_change_temporal_joins(case, batch_bytes, interval):
    tmp, _, _, src, ref = case
    with Engine(tmp / f"b{batch_bytes}") as e:
        e.execute(pipeline(*src, batch_bytes))
        e.run(checkpoint_interval=interval)
        state_runs = e.execute("SHOW MATERIALIZED VIEWS")[0].num_rows
    assert answers(tmp / f"b{batch_bytes}") == ref and state_runs == 4  # by_tier runs as by_tier__join, by_tier


def test_random_sigkills_do_not_change_temporal_joins(case):
    tmp, _, _, src, ref = case
    sql = tmp / "pipeline.sql"
    sql.write_text(pipeline(*src, 1500))
    cmd = [PYTHON, "-m", "pondstream.engine.cli", "run", str(sql), "--quiet", "--checkpoint-interval", "0.05"]
    full = timed_run(cmd, tmp / "kill_ref")
    assert run_with_random_kills(cmd, tmp / "kill", random.Random(3), full) >= 1
    assert answers(tmp / "kill") == ref


@pytest.mark.parametrize(("sql", "words"), [
    ("FROM orders o RIGHT JOIN customers FOR SYSTEM_TIME AS OF o.ts AS c ON o.cid = c.id", "[LEFT] JOIN r FOR"),
    ("FROM orders o JOIN customers FOR SYSTEM_TIME AS OF c.ts AS c ON o.cid = c.id", "must name the left side's"),
    ("FROM orders o JOIN customers FOR SYSTEM_TIME AS OF o.ts AS c ON o.cid = c.id AND o.amount > 1",
     "equates columns of the two sides"),
    ("FROM orders o JOIN customers FOR SYSTEM_TIME AS OF o.ts AS c ON o.id = c.discount",
     "declares PRIMARY KEY (id)"),
])
def test_temporal_join_mistakes_say_what_to_write(tmp_path, sql, words):
    with Engine(tmp_path) as e:
        paths = [write_jsonl(tmp_path / f"{n}.jsonl", []) for n in ("o", "c")]
        e.execute(pipeline(*paths, None).split("CREATE MATERIALIZED")[0])
        with pytest.raises(SqlError) as info:
            e.execute(f"CREATE MATERIALIZED VIEW v AS SELECT o.id, c.tier {sql}")
    assert words in info.value.message and info.value.hint


def test_temporal_join_keys_must_compare(tmp_path):
    with Engine(tmp_path) as e:
        paths = [write_jsonl(tmp_path / f"{n}.jsonl", []) for n in ("o", "c")]
        e.execute(pipeline(*paths, None).split("CREATE MATERIALIZED")[0].replace(" PRIMARY KEY (id) NOT ENFORCED,", ""))
        with pytest.raises(SqlError, match="type error: o.cid is int64 but c.tier is string"):
            e.execute("CREATE MATERIALIZED VIEW v AS SELECT o.id FROM orders o "
                      "JOIN customers FOR SYSTEM_TIME AS OF o.ts AS c ON o.cid = c.tier")


def test_join_state_falls_back_as_the_watermark_passes(tmp_path):
    """Ten hours of event time, both inputs advancing together (as live topics do): what each join holds
    stays flat instead of growing with its input (rows the other side's watermark passed are purged, old
    versions fold into one per key), and all of it goes once the inputs end."""
    from pondstream.engine.runner import OPERATORS
    from pondstream.operators.watermark import END_OF_STREAM
    from pondstream.sql import parse_script
    from pondstream.sql.planner import plan_view
    from pondstream.state.store import StateStore, Txn

    stmts = parse_script(pipeline("o.jsonl", "c.jsonl", None).split("CREATE MATERIALIZED VIEW")[0] + """
CREATE MATERIALIZED VIEW t AS SELECT o.id, c.tier FROM orders o JOIN customers FOR SYSTEM_TIME AS OF o.ts AS c
  ON o.cid = c.id;
CREATE MATERIALIZED VIEW i AS SELECT a.id, b.id AS next_id FROM orders a JOIN orders b
  ON b.cid = a.cid AND b.ts BETWEEN a.ts AND a.ts + INTERVAL '10' MINUTE;""")
    streams = {s.name: s for s in stmts[:2]}
    store = StateStore(str(tmp_path / "rocks"))
    ops = {v.name: OPERATORS[(p := plan_view(v, streams)).window.kind](p, store, {}) for v in stmts[2:]}
    rng = random.Random(3)
    sizes: dict[str, list[int]] = {n: [] for n in ops}
    for step in range(60):  # 10 minutes of each input per checkpoint
        base = step * 600
        o = pa.Table.from_pylist([{"__row": k, "id": step * 60 + k, "cid": rng.randrange(30), "amount": 1.0,
                                   "ts": START + timedelta(seconds=base + k * 10 + rng.uniform(0, 5))} for k in range(60)])
        c = pa.Table.from_pylist([{"__row": k, "id": k, "tier": rng.choice("abc"), "discount": 0.0,
                                   "ts": START + timedelta(seconds=base + k * 20 + rng.uniform(0, 5))} for k in range(30)])
        wm = [pa.scalar(START + timedelta(seconds=base + 600 - 120)).cast(pa.timestamp("us")).value] * 2
        last = step == 59
        for name, op in ops.items():
            op.process(o, None, 0)
            op.process(o if name == "i" else c, None, 1)
            txn = Txn()
            op.checkpoint(txn, [END_OF_STREAM] * 2 if last else wm, step)
            store.commit(txn)
            sizes[name].append(op.state_bytes)
    for name, got in sizes.items():
        assert max(got[40:59]) <= 1.3 * max(got[10:20]) and max(got) > 0, (name, got)  # flat, not growing
        assert got[-1] == 0, name  # the end of input purges everything
    store.close()


def test_a_poison_row_in_a_temporal_join_goes_to_the_errors(case):
    """A select list that fails on some rows (division by zero): those orders go to orders__errors with
    their reason, every other one to the view."""
    tmp, orders, customers, src, _ = case
    sql = pipeline(*src, 3000).split("CREATE MATERIALIZED VIEW")[0] + """
CREATE MATERIALIZED VIEW poisoned AS SELECT o.id, 1000 / (o.id % 97) AS inv, c.tier
FROM orders o LEFT JOIN customers FOR SYSTEM_TIME AS OF o.ts AS c ON o.cid = c.id;"""
    with Engine(tmp / "poison") as e:
        e.execute(sql)
        e.run(checkpoint_interval=0)
        got = set(e.query("SELECT id FROM poisoned").column("id").to_pylist())
        errors = e.query("SELECT reason, error, raw FROM orders__errors").to_pylist()
    on = {r["id"] for r in on_time(orders, DELAY_O)}
    assert got == {i for i in on if i % 97} and len(errors) == len({i for i in on if i % 97 == 0}) > 5
    assert all(r["reason"] == "expression error" and "poisoned" in r["error"] for r in errors)
