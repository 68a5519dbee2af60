"""`pondstream serve` under load: 20 concurrent psycopg clients x (500 point lookups + 20 range queries)
while a pipeline writes to the same state dir, served from that pipeline's process (`run --serve`).

1. A bounded pipeline builds `per_minute` (TUMBLE 1 minute, ~100k distinct customer keys), then
   `pondstream compact` writes its key files, so `WHERE customer_id = %s` takes the point-lookup route.
2. A second pipeline file on the same state dir keeps `per_minute` (unchanged, finished) and adds an
   unbounded generator feeding `live_minute`; it runs with `--serve PORT`.
3. The clients run; every error is counted. Then a 1M-row SELECT is read by one psycopg client (rows/s).

Prints: errors (must be 0), p50/p99 latency per kind, rows/s of the big SELECT, and the server process's
peak RSS (VmHWM). Target: p99 <= 50 ms for point lookups.

    .venv/bin/python bench/bench_serve.py [--clients 20] [--lookups 500] [--ranges 20]
"""

from __future__ import annotations

import argparse
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psycopg

from pondstream.engine.serve import free_port

KEYS = 100_000
BASE = """CREATE STREAM orders (order_id BIGINT, customer_id VARCHAR, amount DOUBLE, event_time TIMESTAMP,
    WATERMARK FOR event_time AS event_time - INTERVAL '1' SECOND)
WITH (connector = 'generator', rows = '600000', keys = '{keys}', seed = '3', step = '1 milliseconds');
CREATE MATERIALIZED VIEW per_minute AS
SELECT TUMBLE_START(event_time, INTERVAL '1' MINUTE) AS minute, customer_id, COUNT(*) AS n, SUM(amount) AS total
FROM orders GROUP BY TUMBLE(event_time, INTERVAL '1' MINUTE), customer_id;
"""
LIVE = """CREATE STREAM live (order_id BIGINT, customer_id VARCHAR, amount DOUBLE, event_time TIMESTAMP,
    WATERMARK FOR event_time AS event_time - INTERVAL '1' SECOND)
WITH (connector = 'generator', rows = '0', rate = '20000', keys = '1000', step = '10 milliseconds');
CREATE MATERIALIZED VIEW live_minute AS
SELECT TUMBLE_START(event_time, INTERVAL '1' MINUTE) AS minute, customer_id, COUNT(*) AS n
FROM live GROUP BY TUMBLE(event_time, INTERVAL '1' MINUTE), customer_id;
"""
CLI = [sys.executable, "-m", "pondstream.engine.cli"]


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))] * 1000


def client(dsn: str, lookups: int, ranges: int, seed: int, out: dict, lock: threading.Lock) -> None:
    rng = random.Random(seed)
    point, rng_t, errors = [], [], []
    try:
        conn = psycopg.connect(dsn, autocommit=True)
    except psycopg.Error as e:
        with lock:
            out["errors"].append(repr(e))
        return
    with conn:
        kinds = ["point"] * lookups + ["range"] * ranges
        rng.shuffle(kinds)
        for kind in kinds:
            t0 = time.perf_counter()
            try:
                if kind == "point":
                    conn.execute("SELECT minute, customer_id, n, total FROM per_minute WHERE customer_id = %s",
                                 (f"c{rng.randrange(KEYS):05d}",)).fetchall()
                    point.append(time.perf_counter() - t0)
                else:
                    m = rng.randrange(9)
                    conn.execute("SELECT customer_id, SUM(n) AS n FROM per_minute WHERE minute >= %s AND minute < %s "
                                 "GROUP BY customer_id ORDER BY n DESC LIMIT 10",
                                 (f"2026-01-01 00:{m:02d}:00", f"2026-01-01 00:{m + 1:02d}:00")).fetchall()
                    rng_t.append(time.perf_counter() - t0)
            except psycopg.Error as e:
                errors.append(repr(e))
    with lock:
        out["point"] += point
        out["range"] += rng_t
        out["errors"] += errors


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--lookups", type=int, default=500)
    ap.add_argument("--ranges", type=int, default=20)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        state = tmp / "state"
        (tmp / "base.sql").write_text(BASE.format(keys=KEYS))
        (tmp / "live.sql").write_text(BASE.format(keys=KEYS) + LIVE)
        t0 = time.monotonic()
        subprocess.run([*CLI, "run", str(tmp / "base.sql"), "--quiet", "--state-dir", str(state)], check=True)
        subprocess.run([*CLI, "compact", "--state-dir", str(state)], check=True, capture_output=True)
        print(f"built per_minute ({KEYS:,} keys) and its key files in {time.monotonic() - t0:.1f} s")
        explain = subprocess.run([*CLI, "query", "SELECT * FROM per_minute WHERE customer_id = 'c00042'",
                                  "--explain", "--state-dir", str(state)], capture_output=True, text=True).stdout
        print("route:", explain.strip()[:120])
        port = free_port()
        proc = subprocess.Popen([*CLI, "run", str(tmp / "live.sql"), "--serve", str(port), "--quiet",
                                 "--state-dir", str(state)], stderr=subprocess.PIPE, text=True)
        dsn = f"host=127.0.0.1 port={port} user=bench dbname=pondstream connect_timeout=10"
        try:
            for _ in range(200):
                try:
                    with psycopg.connect(dsn, autocommit=True) as c:
                        c.execute("SELECT COUNT(*) FROM per_minute").fetchone()
                        rows = c.execute("SELECT COUNT(*) FROM live_minute").fetchone()[0]
                        break
                except psycopg.Error:
                    time.sleep(0.25)
            else:
                raise SystemExit("server did not come up / live_minute never written")
            print(f"pipeline writing live_minute ({rows} rows so far); {args.clients} clients start")
            out: dict = {"point": [], "range": [], "errors": []}
            lock = threading.Lock()
            t0 = time.monotonic()
            threads = [threading.Thread(target=client, args=(dsn, args.lookups, args.ranges, i, out, lock))
                       for i in range(args.clients)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wall = time.monotonic() - t0
            with psycopg.connect(dsn, autocommit=True) as c:
                rows_after = c.execute("SELECT COUNT(*) FROM live_minute").fetchone()[0]
                t1 = time.perf_counter()
                cur = c.execute("SELECT value AS k, value * 1.5 AS f, CAST(value AS VARCHAR) AS s FROM range(1000000)")
                n = len(cur.fetchall())
                big = time.perf_counter() - t1
                t1 = time.perf_counter()
                scan = len(c.execute("SELECT * FROM per_minute").fetchall())
                scan_s = time.perf_counter() - t1
            rss = peak_rss_mb(proc.pid)
        finally:
            proc.terminate()
            proc.communicate(timeout=120)
        total = len(out["point"]) + len(out["range"])
        print(f"errors: {len(out['errors'])}" + (f"  first: {out['errors'][0]}" if out["errors"] else "  (0-error check OK)"))
        print(f"{total:,} queries in {wall:.1f} s ({total / wall:,.0f}/s); live_minute grew {rows} -> {rows_after} rows meanwhile")
        for kind in ("point", "range"):
            xs = out[kind]
            if xs:
                print(f"{kind:>5}: n={len(xs):,}  p50 {pct(xs, 50):.1f} ms  p99 {pct(xs, 99):.1f} ms  "
                      f"mean {statistics.fmean(xs) * 1000:.1f} ms")
        print(f"1M-row SELECT (3 columns) read by psycopg: {n:,} rows in {big:.2f} s ({n / big:,.0f} rows/s)")
        print(f"full view scan: {scan:,} rows in {scan_s:.2f} s ({scan / scan_s:,.0f} rows/s)")
        print(f"server process (pipeline + server) peak RSS: {rss:.0f} MB")
        ok = not out["errors"] and (not out["point"] or pct(out["point"], 99) <= 50)
        print("target p99 <= 50 ms for point lookups:", "met" if ok else "NOT met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
