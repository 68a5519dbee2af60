"""Query output as a user meets it: time to first byte, wall time and peak RSS of `pondstream cat` and
`pondstream query` writing a multi-million-row view as CSV and JSON lines, plus `| head -1`.

    python bench/bench_output.py                      # a 10M-row view (built once, ~15 s)
    python bench/bench_output.py --rows 2000000 --state-dir /tmp/out-bench

Each command is a fresh process whose stdout is a pipe read to the end (or, for `head`, closed after
the first line); peak RSS is that process's `ru_maxrss`. The view: 1-minute TUMBLE windows over 1M keys,
so nearly every event is its own row (minute, customer_id, orders, total).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PIPELINE = """CREATE STREAM orders (order_id BIGINT, customer_id VARCHAR, amount DOUBLE, event_time TIMESTAMP,
    WATERMARK FOR event_time AS event_time - INTERVAL '5' SECOND)
WITH (connector = 'generator', rows = '{rows}', keys = '1000000', seed = '7', step = '1 second');
CREATE MATERIALIZED VIEW big AS
SELECT TUMBLE_START(event_time, INTERVAL '1' MINUTE) AS minute, customer_id, COUNT(*) AS orders, SUM(amount) AS total
FROM orders GROUP BY TUMBLE(event_time, INTERVAL '1' MINUTE), customer_id;
"""


def measure(cmd: list[str], lines: int | None = None) -> tuple[float, float, float, int, str]:
    """(seconds to the first byte, wall seconds, peak RSS MB, bytes read, what went wrong) of `cmd`; with
    `lines`, stdout is closed after that many lines, as `| head -n` does."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0)
    first = p.stdout.read(1)
    ttfb = time.perf_counter() - t0
    size = len(first)
    if lines is not None:
        seen = first.count(b"\n")
        while seen < lines and (chunk := p.stdout.read(1 << 16)):
            seen += chunk.count(b"\n")
            size += len(chunk)
        p.stdout.close()
    else:
        while chunk := p.stdout.read(1 << 20):
            size += len(chunk)
    _, status, usage = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    err = p.stderr.read().decode().strip()
    problem = "" if status == 0 and not err else f"exit status {status:#x}; stderr: {err[-200:]!r}"
    return ttfb, wall, usage.ru_maxrss / 1024, size, problem


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=10_000_000, help="generator events (about one row each)")
    ap.add_argument("--state-dir", help="reuse (or build once into) this state dir")
    args = ap.parse_args()
    exe = str(Path(sys.executable).with_name("pondstream"))
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(args.state_dir or Path(tmp) / "state")
        if not (state / "series" / "big").exists():
            sql = Path(tmp) / "big.sql"
            sql.write_text(PIPELINE.format(rows=args.rows))
            subprocess.run([exe, "run", str(sql), "--state-dir", str(state), "--quiet"], check=True)
        base = ["--state-dir", str(state)]
        n = subprocess.run([exe, "query", "SELECT COUNT(*) AS n FROM big", "--format", "csv", *base],
                           check=True, capture_output=True, text=True).stdout.split()[1]
        print(f"pondstream output benchmark: view of {int(n):,} rows; {os.cpu_count()} cores")
        print("| command | first byte | wall | peak RSS | output | problem |\n|---|---|---|---|---|---|")
        runs = [("cat big --format csv", ["cat", "big", "--format", "csv"], None),
                ("cat big --format json", ["cat", "big", "--format", "json"], None),
                ("query 'SELECT * FROM big' --format csv", ["query", "SELECT * FROM big", "--format", "csv"], None),
                ("query 'SELECT * FROM big' --format json", ["query", "SELECT * FROM big", "--format", "json"], None),
                ("cat big (table)", ["cat", "big"], None),
                ("query 'SELECT * FROM big' --format csv | head -1",
                 ["query", "SELECT * FROM big", "--format", "csv"], 1),
                ("cat big --format csv | head -1", ["cat", "big", "--format", "csv"], 1)]
        for label, cmd, lines in runs:
            ttfb, wall, rss, size, problem = measure([exe, *cmd, *base], lines)
            print(f"| `{label}` | {ttfb:.2f} s | {wall:.2f} s | {rss:,.0f} MB | {size / 1e6:,.1f} MB | {problem} |",
                  flush=True)


if __name__ == "__main__":
    main()
