"""The mergeable aggregates beyond SUM/COUNT: against DuckDB end to end, and merge associativity."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from pondstream.operators.partials import first_partials, merge_partials
from pondstream.sql import parse_script
from pondstream.sql.planner import plan_view

from conftest import canon, duck, make_orders, orders_stream, write_jsonl

AGGS = """COUNT(DISTINCT customer_id) AS customers, APPROX_DISTINCT(order_id % 7) AS residues,
       STDDEV(amount) AS sd, STDDEV_POP(amount) AS sdp, VARIANCE(amount) AS var, VAR_POP(amount) AS varp,
       BOOL_AND(amount > 0) AS all_paid, BOOL_OR(amount > 150) AS any_big,
       FIRST_VALUE(order_id) AS first_order, LAST_VALUE(amount) AS last_amount,
       COUNT(*) FILTER (WHERE amount > 100) AS big, SUM(amount) FILTER (WHERE amount > 150) AS big_sum,
       COUNT(DISTINCT order_id % 5) FILTER (WHERE amount < 80) AS small_residues,
       AVG(amount) FILTER (WHERE order_id % 2 = 0) AS even_avg"""


def test_more_aggregates_match_duckdb(engine, tmp_path):
    rows = make_orders(6000, seed=61, step_s=1.0, disorder_s=4.0, keys=6)
    write_jsonl(tmp_path / "o.jsonl", rows)
    ddl = orders_stream(tmp_path / "o.jsonl", extra=", batch_bytes = '20000'") + f"""
CREATE MATERIALIZED VIEW stats AS
SELECT TUMBLE_START(event_time, INTERVAL '20' MINUTE) AS ws, customer_id, {AGGS}
FROM orders GROUP BY TUMBLE(event_time, INTERVAL '20' MINUTE), customer_id;"""
    engine.execute(ddl, base_dir=str(tmp_path))
    engine.run(checkpoint_interval=0.0)  # a checkpoint per batch: windows merge many stored runs
    got = engine.query("SELECT * FROM stats")
    want = duck("""SELECT time_bucket(INTERVAL '20 minutes', event_time) AS ws, customer_id,
        COUNT(DISTINCT customer_id) AS customers, COUNT(DISTINCT order_id % 7) AS residues,
        STDDEV_SAMP(amount) AS sd, STDDEV_POP(amount) AS sdp, VAR_SAMP(amount) AS var, VAR_POP(amount) AS varp,
        BOOL_AND(amount > 0) AS all_paid, BOOL_OR(amount > 150) AS any_big,
        arg_min(order_id, event_time) AS first_order, arg_max(amount, event_time) AS last_amount,
        COUNT(*) FILTER (WHERE amount > 100) AS big, SUM(amount) FILTER (WHERE amount > 150) AS big_sum,
        COUNT(DISTINCT order_id % 5) FILTER (WHERE amount < 80) AS small_residues,
        AVG(amount) FILTER (WHERE order_id % 2 = 0) AS even_avg
        FROM orders GROUP BY 1, 2""", rows)
    assert got.num_rows > 20
    assert canon(got) == canon(want.cast(got.schema))


def _plan():
    (s,) = parse_script("CREATE STREAM o (k VARCHAR, x DOUBLE, ts TIMESTAMP, WATERMARK FOR ts AS ts) "
                        "WITH (connector = 'generator')")
    (v,) = parse_script("CREATE MATERIALIZED VIEW v AS SELECT k, COUNT(DISTINCT x) AS d, VARIANCE(x) AS var, "
                        "BOOL_OR(x > 0) AS pos, FIRST_VALUE(x) AS f, LAST_VALUE(x) AS l FROM o "
                        "GROUP BY TUMBLE(ts, INTERVAL '1' SECOND), k")
    return plan_view(v, {"o": s})


def _pre(plan, n: int, seed: int) -> tuple[pa.Table, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = np.round(rng.normal(size=n), 1)
    cols = {"__ts": pa.array(rng.permutation(n) + seed * 10_000, pa.int64()).cast(pa.timestamp("us")),
            "__k0": pa.array(rng.choice(["a", "b", "c"], n))}
    inputs = {"__a0": pa.array(x), "__a1": pa.array(x), "__a2": pa.array(x * x), "__a3": pa.array(x > 0)}
    cols.update({c: inputs[c] for p in plan.partials if (c := p.source) and c.startswith("__a")})
    return pa.table(cols), rng.integers(0, 2, n).astype(np.int64) * 1_000_000


def test_merge_with_sets_and_ordered_values_is_associative():
    plan = _plan()
    parts = [_pre(plan, 300, s) for s in range(1, 5)]
    firsts = [first_partials(plan, t, ws) for t, ws in parts]
    left = merge_partials(plan, [merge_partials(plan, firsts[:2]), merge_partials(plan, firsts[2:])])
    right = merge_partials(plan, [firsts[3], merge_partials(plan, [firsts[1], merge_partials(plan, [firsts[2], firsts[0]])])])
    whole = first_partials(plan, pa.concat_tables([t for t, _ in parts]), np.concatenate([ws for _, ws in parts]))
    key = [("__ws", "ascending"), ("__k0", "ascending")]
    for t in (left, right):
        assert canon(t.drop_columns(["__p0"])) == canon(whole.drop_columns(["__p0"]))
    sets = lambda t: [sorted(v) for v in t.sort_by(key).column("__p0").to_pylist()]  # noqa: E731
    assert sets(left) == sets(right) == sets(whole)
