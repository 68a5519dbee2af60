"""Whole-process figures, timed as a user times them: `pondstream run` on a JSONL file next to pyarrow's
read + decode + group-by of the same file (each a fresh process, start-up included), start-up of the
CLI, and the generator path next to its own ceiling.

    python bench/bench_run.py                    # 2M events
    python bench/bench_run.py --events 500000 --repeat 1

The view: a filter and COUNT/SUM/MIN/MAX per customer and hour. Ratios are of wall times measured in
the same run (median of --repeat), so they hold on any machine; targets: JSONL >= 0.75 of the ceiling,
start-up <= 0.4 s, generator >= 60% of its ceiling.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_spine import measure, write_jsonl  # noqa: E402

PIPELINE = """CREATE STREAM orders (order_id BIGINT, customer_id VARCHAR, amount DOUBLE, event_time TIMESTAMP,
    WATERMARK FOR event_time AS event_time - INTERVAL '5' SECOND) WITH (connector = 'file', path = '{path}');
CREATE MATERIALIZED VIEW hourly AS
SELECT TUMBLE_START(event_time, INTERVAL '1' HOUR) AS hour, customer_id, COUNT(*) AS orders,
       SUM(amount) AS total, MIN(amount) AS smallest, MAX(amount) AS largest
FROM orders WHERE amount > 0 GROUP BY TUMBLE(event_time, INTERVAL '1' HOUR), customer_id;
"""
CEILING = """
import sys, pyarrow as pa, pyarrow.json as pj, pyarrow.compute as pc
schema = pa.schema([("order_id", pa.int64()), ("customer_id", pa.string()), ("amount", pa.float64()),
                    ("event_time", pa.timestamp("us"))])
t = pj.read_json(sys.argv[1], parse_options=pj.ParseOptions(explicit_schema=schema))
t = t.filter(pc.greater(t["amount"], 0))
hour = pc.floor_temporal(t["event_time"], unit="hour")
g = t.append_column("hour", hour).group_by(["hour", "customer_id"]).aggregate(
    [([], "count_all"), ("amount", "sum"), ("amount", "min"), ("amount", "max")])
print(g.num_rows)
"""


def wall(cmd: list[str], repeat: int) -> tuple[float, float]:
    """(median wall seconds, max peak RSS in MB) of running `cmd` `repeat` times."""
    times, rss = [], 0.0
    for _ in range(repeat):
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _, status, usage = os.wait4(p.pid, 0)
        times.append(time.perf_counter() - t0)
        if status != 0:
            raise SystemExit(f"{' '.join(cmd)} failed: {p.stderr.read().decode()[-2000:]}")
        rss = max(rss, usage.ru_maxrss / 1024)
    return statistics.median(times), rss


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=2_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    exe = str(Path(sys.executable).with_name("pondstream"))
    print(f"pondstream whole-process benchmark: {args.events:,} events; {os.cpu_count()} cores")

    with tempfile.TemporaryDirectory() as d:
        help_s, _ = wall([exe, "--help"], 5)
        query_s, _ = wall([exe, "query", "SELECT 1", "--state-dir", f"{d}/empty"], 5)
        print(f"start-up: pondstream --help {help_s:.2f} s, pondstream query \"SELECT 1\" {query_s:.2f} s "
              f"(target <= 0.4 s)")

        path = Path(d) / "orders.jsonl"
        write_jsonl(path, args.events)
        sql = Path(d) / "pipeline.sql"
        sql.write_text(PIPELINE.format(path=path))
        ceiling_s, ceiling_rss = wall([sys.executable, "-c", CEILING, str(path)], args.repeat)
        runs = []
        for i in range(args.repeat):
            runs.append(wall([exe, "run", str(sql), "--quiet", "--state-dir", f"{d}/state{i}"], 1))
        run_s, run_rss = statistics.median(r[0] for r in runs), max(r[1] for r in runs)
        n = args.events
        print(f"JSONL file ({path.stat().st_size / 1e6:,.0f} MB), whole processes, median of {args.repeat}:")
        print(f"  pyarrow read + decode + filter + group-by (ceiling) {ceiling_s:6.2f} s  {n / ceiling_s:>10,.0f} ev/s"
              f"  peak RSS {ceiling_rss:6.0f} MB")
        print(f"  pondstream run                                      {run_s:6.2f} s  {n / run_s:>10,.0f} ev/s"
              f"  peak RSS {run_rss:6.0f} MB")
        print(f"  ratio to ceiling: {ceiling_s / run_s:.2f} (target >= 0.75)")

    gc, gv = measure("ceiling", "generator", n), measure("view", "generator", n)
    print(f"generator, in process: ceiling {gc['events_per_s']:,.0f} ev/s, view {gv['events_per_s']:,.0f} ev/s: "
          f"{gv['events_per_s'] / gc['events_per_s']:.0%} of ceiling (target >= 60%)")


if __name__ == "__main__":
    main()
