"""Units: window assignment against brute force, watermark rules, partial merge against direct aggregation."""

from __future__ import annotations

import random

import numpy as np
import pyarrow as pa

from pondstream.operators.partials import first_partials, merge_partials
from pondstream.operators.watermark import Watermark
from pondstream.operators.window import assign, closing_bound
from pondstream.sql import parse_script
from pondstream.sql.planner import WindowSpec, plan_view

from conftest import canon


def test_tumble_assignment_matches_brute_force_including_negative_times():
    spec = WindowSpec("tumble", 7, 7)
    ts = np.array([-15, -8, -7, -1, 0, 1, 6, 7, 13, 14, 100], dtype=np.int64)
    rows, ws = assign(ts, spec)
    assert rows is None
    for t, w in zip(ts, ws, strict=True):
        assert w <= t < w + 7 and w % 7 == 0


def test_hop_assignment_matches_brute_force():
    spec = WindowSpec("hop", 12, 4)
    ts = np.array(random.Random(0).sample(range(-50, 200), 60), dtype=np.int64)
    rows, ws = assign(ts, spec)
    got = sorted(zip(ts[rows].tolist(), ws.tolist(), strict=True))
    want = sorted((int(t), s) for t in ts for s in range(-100, 260, 4) if s <= t < s + 12)
    assert got == want


def test_watermark_never_moves_back_and_closes_windows():
    wm = Watermark(delay_us=5)
    assert wm.value is None
    wm.per_event(np.array([100]))
    wm.per_event(np.array([50]))  # out of order: no retreat
    assert wm.value == 95
    wm.per_event(np.array([120]))
    assert wm.value == 115
    spec = WindowSpec("tumble", 10, 10)
    bound = closing_bound(wm.value, spec)
    assert [w for w in range(0, 200, 10) if w <= bound] == [w for w in range(0, 200, 10) if w + 10 <= 115]
    wm.finish()
    assert closing_bound(wm.value, spec) > 10**15


def test_partition_watermarks_combine_by_minimum_and_idle_partitions_stop_holding_back(monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr("pondstream.operators.watermark.time.monotonic", lambda: clock[0])
    wm = Watermark(delay_us=10, idle_timeout_s=30)
    wm.per_event(np.array([500]), np.array([0]), ["0", "1", "2"])
    assert wm.value is None and wm.holding_back() == "1"  # partitions 1 and 2 have delivered nothing
    wm.per_event(np.array([300, 900]), np.array([1, 2]), ["0", "1", "2"])
    assert wm.value == 290 and wm.holding_back() == "1"
    clock[0] += 20
    wm.per_event(np.array([700, 950]), np.array([0, 2]), ["0", "1", "2"])
    assert wm.value == 290  # partition 1 is quiet but not yet idle
    clock[0] += 15
    wm.tick(["0", "1", "2"])
    assert wm.value == 690 and wm.idle("1")  # 35 s without data: partition 1 no longer holds back
    wm.per_event(np.array([400]), np.array([1]), ["0", "1", "2"])
    assert wm.value == 690  # back from idle with old data: the watermark does not move back
    clock[0] += 100
    wm.tick(["0", "1", "2"])
    assert wm.value == 940  # all idle: the max, so a quiet topic still closes what it delivered
    restored = Watermark(10, 30, wm.state())
    assert restored.value == 940 and restored.max_event == wm.max_event


PLAN = None


def _plan():
    global PLAN
    if PLAN is None:
        (s,) = parse_script("CREATE STREAM o (k VARCHAR, x DOUBLE, ts TIMESTAMP, WATERMARK FOR ts AS ts) "
                            "WITH (connector = 'generator')")
        (v,) = parse_script("CREATE MATERIALIZED VIEW v AS SELECT k, COUNT(*) AS n, COUNT(x) AS nx, SUM(x) AS s, "
                            "MIN(x) AS lo, MAX(x) AS hi, AVG(x) AS a FROM o "
                            "GROUP BY TUMBLE(ts, INTERVAL '1' SECOND), k")
        PLAN = plan_view(v, {"o": s})
    return PLAN


def _pre(n: int, seed: int) -> tuple[pa.Table, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    x[rng.random(n) < 0.1] = np.nan
    xs = pa.array(x, from_pandas=True)  # NaN -> null: COUNT(x) must skip them
    t = pa.table({"__k0": pa.array(rng.choice(["a", "b", "c"], n)), "__a0": xs})
    return t, rng.integers(0, 3, n).astype(np.int64) * 1_000_000


def test_merge_is_associative_and_equals_one_pass():
    plan = _plan()
    parts = [_pre(500, s) for s in range(4)]
    firsts = [first_partials(plan, t, ws) for t, ws in parts]
    left = merge_partials(plan, [merge_partials(plan, firsts[:2]), merge_partials(plan, firsts[2:])])
    right = merge_partials(plan, [firsts[0], merge_partials(plan, [firsts[1], merge_partials(plan, firsts[2:])])])
    whole_t = pa.concat_tables([t for t, _ in parts])
    whole = first_partials(plan, whole_t, np.concatenate([ws for _, ws in parts]))
    assert canon(left) == canon(right) == canon(whole)
    assert left.schema == firsts[0].schema  # merged partials keep the state schema


def test_cumulate_assignment_matches_brute_force():
    from pondstream.operators.window import true_start

    spec = WindowSpec("cumulate", 12, 4)  # step 4, max size 12: windows [s, s+4), [s, s+8), [s, s+12)
    ts = np.array(random.Random(1).sample(range(-40, 100), 50), dtype=np.int64)
    rows, ids = assign(ts, spec)
    got = sorted(zip(ts[rows].tolist(), true_start(ids, spec).tolist(), (ids + 12).tolist(), strict=True))
    want = sorted((int(t), s, s + k) for t in ts for s in range(-48, 108, 12) for k in (4, 8, 12)
                  if s <= t < s + k)
    assert got == want


def test_sessionize_matches_brute_force_per_key():
    from pondstream.operators.session import sessionize

    rng = random.Random(3)
    keys = [rng.choice(["a", "b", None]) for _ in range(300)]
    ts = np.array([rng.randrange(0, 2000) for _ in keys], dtype=np.int64)
    gap = 37
    order, ids = sessionize(pa.table({"k": keys}), ts, ts + gap)
    got = {}
    for i, sid in zip(order.tolist(), ids.tolist(), strict=True):
        got.setdefault(sid, []).append((keys[i], int(ts[i])))
    want = []  # brute force: per key, sort; a gap >= `gap` between neighbours starts a new session
    for k in {"a", "b", None}:
        times = sorted(int(t) for kk, t in zip(keys, ts, strict=True) if kk == k)
        cur = [times[0]]
        for t in times[1:]:
            if t - cur[-1] >= gap:
                want.append((k, tuple(cur)))
                cur = []
            cur.append(t)
        want.append((k, tuple(cur)))
    assert all(len({k for k, _ in members}) == 1 for members in got.values())  # a session has one key
    got_sessions = [(members[0][0], tuple(sorted(t for _, t in members))) for members in got.values()]
    by = lambda x: (str(x[0]), x[1])  # noqa: E731
    assert sorted(got_sessions, key=by) == sorted(want, key=by)


def final(plan, t: pa.Table) -> list[tuple]:
    return sorted(zip(*(t.column(c).to_pylist() for c in ("__k0", plan.partials[0].name)), strict=True))


def test_state_ttl_restarts_do_not_depend_on_how_batches_and_merges_fall():
    """Per-event restarts: one batch, or the same events cut into batches whose partials are merged in
    any grouping (pending merges, state runs, compaction), give the same per-key result."""
    from pondstream.operators.running import batch_partials, merge_running

    (s,) = parse_script("CREATE STREAM o (k VARCHAR, x DOUBLE, ts TIMESTAMP, WATERMARK FOR ts AS ts) "
                        "WITH (connector = 'generator')")
    (v,) = parse_script("CREATE MATERIALIZED VIEW v WITH (state_ttl = '10 seconds') AS "
                        "SELECT k, COUNT(*) AS n, SUM(x) AS s FROM o GROUP BY k")
    plan = plan_view(v, {"o": s})
    rng = np.random.default_rng(5)
    for _ in range(20):
        n = int(rng.integers(5, 400))
        ts = np.cumsum(rng.exponential(2.0, n) * 1e6).astype(np.int64)
        wm = np.maximum.accumulate(ts)
        pre = pa.table({"__row": pa.array(np.arange(n)), "__ts": pa.array(ts).cast(pa.timestamp("us")),
                        "__k0": pa.array(rng.choice(["a", "b", "c", "d"], n)), "__a0": pa.array(rng.normal(size=n))})

        whole = final(plan, batch_partials(plan, pre, wm))
        cuts = sorted(rng.choice(np.arange(1, n), size=min(n - 1, 6), replace=False).tolist())
        parts = [batch_partials(plan, pre.slice(a, b - a).set_column(0, "__row", pa.array(np.arange(b - a))), wm[a:b])
                 for a, b in zip([0, *cuts], [*cuts, n], strict=True)]
        flat = final(plan, merge_running(plan, parts))
        nested = final(plan, merge_running(plan, [merge_running(plan, parts[:3]), merge_running(plan, parts[3:])]))
        assert whole == flat == nested
    assert any(n < 10 for _, n in whole)  # restarts happened (keys are idle > 10 s now and then)
