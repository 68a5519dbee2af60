"""Interval join throughput, timed as a user times it: `pondstream run` of an orders/shipments LEFT JOIN
over two JSONL files, next to a batch ceiling in the same run (pyarrow read + decode of both files and
one DataFusion join of everything at once, in a fresh process). Prints events/s, the ratio to the
ceiling and peak RSS.

    python bench/bench_join.py                      # 1M orders, ~1M shipments
    python bench/bench_join.py --orders 200000 --repeat 1
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench_run import wall  # noqa: E402

PIPELINE = """
CREATE STREAM orders (id BIGINT, amount DOUBLE, ts TIMESTAMP, WATERMARK FOR ts AS ts - INTERVAL '30' SECOND)
  WITH (connector = 'file', path = '{orders}', format = 'jsonl');
CREATE STREAM ships (order_id BIGINT, carrier VARCHAR, ts TIMESTAMP, WATERMARK FOR ts AS ts - INTERVAL '1' MINUTE)
  WITH (connector = 'file', path = '{ships}', format = 'jsonl');
CREATE MATERIALIZED VIEW shipped AS
SELECT o.id, o.ts, o.amount, s.carrier, s.ts AS shipped_at
FROM orders o LEFT JOIN ships s ON o.id = s.order_id AND s.ts BETWEEN o.ts AND o.ts + INTERVAL '1' HOUR;
"""
CEILING = """
import sys, pyarrow as pa, pyarrow.json as pj, datafusion
o = pj.read_json(sys.argv[1], parse_options=pj.ParseOptions(explicit_schema=pa.schema(
    [("id", pa.int64()), ("amount", pa.float64()), ("ts", pa.timestamp("us"))])))
s = pj.read_json(sys.argv[2], parse_options=pj.ParseOptions(explicit_schema=pa.schema(
    [("order_id", pa.int64()), ("carrier", pa.string()), ("ts", pa.timestamp("us"))])))
ctx = datafusion.SessionContext()
ctx.register_record_batches("o", [o.to_batches()])
ctx.register_record_batches("s", [s.to_batches()])
n = ctx.sql("SELECT o.id, o.ts, o.amount, s.carrier, s.ts AS shipped_at FROM o LEFT JOIN s ON o.id = s.order_id "
            "AND s.ts BETWEEN o.ts AND o.ts + INTERVAL '1' HOUR").count()
print(n)
"""


def write_inputs(d: Path, n: int, seed: int = 3) -> tuple[Path, Path, int]:
    """Orders every 100 ms (jittered 10 s), each shipped 0-50 minutes later with probability 0.9, in
    shipment-time order (jittered 30 s). Returns the two paths and the number of events."""
    rng = np.random.default_rng(seed)
    base = 1_767_225_600_000_000  # 2026-01-01 in µs
    ts = base + np.arange(n) * 100_000 - rng.integers(0, 10_000_000, n)
    amount = np.round(rng.uniform(1, 100, n), 2)
    shipped = rng.random(n) < 0.9
    sid = np.flatnonzero(shipped)
    sts = ts[sid] + rng.integers(0, 3_000_000_000, len(sid))
    order = np.argsort(sts + rng.integers(0, 30_000_000, len(sid)), kind="stable")
    sid, sts = sid[order], sts[order]
    carriers = np.array(["a", "b", "c"])[rng.integers(0, 3, len(sid))]

    def iso(us: np.ndarray) -> np.ndarray:
        return np.datetime_as_string(us.astype("datetime64[us]"), unit="us")

    orders, ships = d / "orders.jsonl", d / "ships.jsonl"
    with orders.open("w") as f:
        f.writelines(f'{{"id": {i}, "amount": {a}, "ts": "{t}"}}\n' for i, a, t in zip(range(n), amount, iso(ts), strict=True))
    with ships.open("w") as f:
        f.writelines(f'{{"order_id": {i}, "carrier": "{c}", "ts": "{t}"}}\n'
                     for i, c, t in zip(sid, carriers, iso(sts), strict=True))
    return orders, ships, n + len(sid)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--orders", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        orders, ships, events = write_inputs(d, args.orders)
        (d / "p.sql").write_text(PIPELINE.format(orders=orders, ships=ships))
        run_s, run_rss = wall([sys.executable, "-m", "pondstream.engine.cli", "run", str(d / "p.sql"), "--quiet",
                               "--state-dir", str(d / "state")], 1)
        ceil_s, ceil_rss = wall([sys.executable, "-c", CEILING, str(orders), str(ships)], args.repeat)
    print(f"events: {events:,} ({args.orders:,} orders + {events - args.orders:,} shipments)")
    print(f"pondstream run (LEFT interval join): {run_s:.2f} s  {events / run_s:,.0f} events/s  peak RSS {run_rss:.0f} MB")
    print(f"batch ceiling (pyarrow decode + one DataFusion join): {ceil_s:.2f} s  {events / ceil_s:,.0f} events/s  "
          f"peak RSS {ceil_rss:.0f} MB")
    print(f"ratio to ceiling: {ceil_s / run_s:.2f}")


if __name__ == "__main__":
    main()
