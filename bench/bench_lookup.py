"""Point-lookup latency: `SELECT * FROM v WHERE k = '...'` through Engine.query, lookup route vs scan route.

A 1-minute TUMBLE view's series with 100 keys per window drawn from 100k, built directly with SeriesStore
and consolidate (as tests/test_consolidation.py does): the history in versions of CHUNK windows, each
consolidated, then a tail of TAIL one-window versions (every fifth also rewriting rows of older windows,
as allowed lateness does). Per size: median and p99 over random keys (present or not), with and without a
one-hour window range, and the same query with the lookup turned off (DataFusion's scan).

    .venv/bin/python bench/bench_lookup.py [--windows 2000,10000,50000] [--queries 200]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

import pondstream.engine.api as api
from pondstream.engine import Engine
from pondstream.state.consolidate import consolidate
from pondstream.state.series import SeriesStore
from pondstream.state.store import StateStore, Txn

KEYS, PER_WINDOW, CHUNK, TAIL = 100_000, 100, 2000, 20
T0 = np.datetime64("2026-01-01T00:00:00", "us")
SCHEMA = pa.schema([("minute", pa.timestamp("us")), ("customer_id", pa.string()), ("orders", pa.int64()),
                    ("total", pa.float64()), ("avg_amount", pa.float64())])


def windows(rng: np.random.Generator, first: int, n: int) -> pa.Table:
    """Windows first..first+n-1, each with PER_WINDOW distinct keys: offset + j * stride (mod KEYS), the
    stride coprime to KEYS."""
    w = np.arange(first, first + n)
    offset = rng.integers(0, KEYS, n)
    stride = rng.integers(1, 5000, n) * 10 + rng.choice([1, 3, 7, 9], n)
    keys = (offset[:, None] + np.arange(PER_WINDOW)[None, :] * stride[:, None]) % KEYS
    rows = n * PER_WINDOW
    return pa.table({
        "minute": pa.array(T0 + np.repeat(w, PER_WINDOW).astype("timedelta64[m]")),
        "customer_id": pa.array(np.char.add("c", np.char.zfill(keys.ravel().astype(str), 5))),
        "orders": pa.array(rng.integers(1, 20, rows)), "total": pa.array(rng.random(rows) * 100),
        "avg_amount": pa.array(rng.random(rows) * 10)}, schema=SCHEMA)


def build(root: Path, n_windows: int, seed: int = 1) -> None:
    rng = np.random.default_rng(seed)
    store = StateStore(str(root / "rocksdb"))
    series = SeriesStore(root / "series", store)
    series.ensure("per_minute", SCHEMA, "view", ["minute", "customer_id"], {"minute": "start"})
    history = n_windows - TAIL
    for first in range(0, history, CHUNK):
        txn = Txn()
        series.write(txn, "per_minute", windows(rng, first, min(CHUNK, history - first)))
        store.commit(txn)
        consolidate(series, "per_minute")
    for i in range(TAIL):
        t = windows(rng, history + i, 1)
        late = i % 5 == 4
        if late:  # rewrite 10 rows of a window a few minutes back
            old = windows(np.random.default_rng(seed + history + i - 3), history + i - 3, 1).slice(0, 10)
            t = pa.concat_tables([t, old])
        txn = Txn()
        series.write(txn, "per_minute", t, supersedes=late)
        store.commit(txn)
    store.close()


def timed(engine: Engine, queries: list[str]) -> tuple[float, float, int]:
    ms, rows = [], 0
    for q in queries:
        start = time.perf_counter()
        rows += engine.query(q).num_rows
        ms.append((time.perf_counter() - start) * 1e3)
    ms.sort()
    return statistics.median(ms), ms[min(len(ms) - 1, int(len(ms) * 0.99))], rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--windows", default="2000,10000,50000")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--scan-queries", type=int, default=20)
    args = ap.parse_args()
    rng = np.random.default_rng(7)
    print(f"{'windows':>8} {'rows':>9} {'build s':>8} {'query':<12} {'lookup med':>10} {'p99':>7} "
          f"{'scan med':>9} {'p99':>7} {'rows/q':>6}")
    for n in [int(x) for x in args.windows.split(",")]:
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            build(Path(tmp), n)
            built = time.perf_counter() - start
            engine = Engine(tmp)
            keys = [f"c{k:05d}" for k in rng.integers(0, KEYS, args.queries)]
            hour = T0 + np.timedelta64(int(n * 0.8), "m")
            forms = {
                "key": "SELECT * FROM per_minute WHERE customer_id = '{k}'",
                "key+1h": ("SELECT * FROM per_minute WHERE customer_id = '{k}' AND minute >= TIMESTAMP "
                           f"'{str(hour).replace('T', ' ')}' AND minute < TIMESTAMP "
                           f"'{str(hour + np.timedelta64(1, 'h')).replace('T', ' ')}'"),
            }
            for label, form in forms.items():
                queries = [form.format(k=k) for k in keys]
                assert engine.explain_route(queries[0]).startswith("point lookup"), engine.explain_route(queries[0])
                engine.query(queries[0])  # warm the imports
                med, p99, rows = timed(engine, queries)
                real = api.point_lookup
                api.point_lookup = lambda *a: None  # the scan route: what Engine.query did before lookups
                try:
                    smed, sp99, srows = timed(engine, queries[:args.scan_queries])
                finally:
                    api.point_lookup = real
                print(f"{n:>8} {n * PER_WINDOW:>9} {built:>8.1f} {label:<12} {med:>8.2f}ms {p99:>5.1f}ms "
                      f"{smed:>7.1f}ms {sp99:>5.1f}ms {rows / len(queries):>6.1f}")
            print(f"{'':>8} {engine.explain_route(forms['key'].format(k=keys[0]))}")


if __name__ == "__main__":
    main()
