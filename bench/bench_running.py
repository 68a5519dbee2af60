"""Running aggregate (no window) benchmark: events/s and peak RSS as the number of keys grows 8x.

    python bench/bench_running.py [--events 8000000]

Per-key state lives in RocksDB in 64 shards, read one shard at a time at each checkpoint, so peak memory
follows the events per checkpoint, not the number of keys.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time


def child(events: int, keys: int) -> None:
    from pondstream.engine import Engine

    with tempfile.TemporaryDirectory() as d, Engine(d) as e:
        e.execute(f"""CREATE STREAM orders (order_id BIGINT, customer_id VARCHAR, amount DOUBLE, event_time TIMESTAMP,
            WATERMARK FOR event_time AS event_time) WITH (connector = 'generator', rows = '{events}',
            keys = '{keys}', step = '10 milliseconds');
            CREATE MATERIALIZED VIEW totals AS SELECT customer_id, COUNT(*) AS n, SUM(amount) AS total
            FROM orders GROUP BY customer_id;""")
        t0 = time.perf_counter()
        p = e.run()
        secs = time.perf_counter() - t0
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # the pipeline's, before querying
        n = e.query("SELECT COUNT(*) AS n FROM totals").column("n")[0].as_py()
    print(json.dumps({"events": p.events, "keys": n, "events_per_s": p.events / secs, "peak_rss_mb": rss}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=8_000_000, help="also the larger key space")
    ap.add_argument("--child", nargs=2, type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(*args.child)
        return
    for keys in (args.events // 8, args.events):
        out = subprocess.run([sys.executable, __file__, "--child", str(args.events), str(keys)],
                             capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{r['events']:>10,} events, {r['keys']:>9,} keys: {r['events_per_s']:>10,.0f} ev/s, "
              f"peak RSS {r['peak_rss_mb']:6.0f} MB")


if __name__ == "__main__":
    main()
