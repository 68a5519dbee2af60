"""Spine benchmark: events/s and peak RSS of a 1-hour TUMBLE view (COUNT, SUM, AVG) over 1000 keys,
from the generator and from a JSONL file, next to the same source's read+decode-only ceiling.

    python bench/bench_spine.py                 # 5M events, plus a 20M generator run for RSS growth
    python bench/bench_spine.py --events 1000000 --no-20m

Each measurement runs in its own process so peak RSS (ru_maxrss) belongs to that run alone.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VIEW = """CREATE MATERIALIZED VIEW hourly AS
SELECT TUMBLE_START(event_time, INTERVAL '1' HOUR) AS hour, customer_id,
       COUNT(*) AS orders, SUM(amount) AS total, AVG(amount) AS avg_amount
FROM orders GROUP BY TUMBLE(event_time, INTERVAL '1' HOUR), customer_id;"""
COLS = "order_id BIGINT, customer_id VARCHAR, amount DOUBLE, event_time TIMESTAMP"
WM = "WATERMARK FOR event_time AS event_time - INTERVAL '5' SECOND"


def stream_sql(kind: str, events: int, path: str) -> str:
    if kind == "generator":
        opts = f"connector = 'generator', rows = '{events}', keys = '1000', seed = '1', out_of_orderness = '2 seconds'"
    else:
        opts = f"connector = 'file', path = '{path}', format = 'jsonl'"
    return f"CREATE STREAM orders ({COLS}, {WM}) WITH ({opts});"


def child(mode: str, kind: str, events: int, path: str) -> None:
    from pondstream.engine import Engine
    from pondstream.engine.runner import make_source

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as state, Engine(state) as e:
        e.execute(stream_sql(kind, events, path))
        if mode == "ceiling":
            src, n = make_source(e.catalog.streams["orders"], None), 0
            while not src.finished:
                b = src.read()
                n += b.data.num_rows if b else 0
        else:
            e.execute(VIEW)
            n = e.run(checkpoint_interval=1.0).events
            rows = e.query("SELECT COUNT(*) AS n FROM hourly").column("n")[0].as_py()
            assert rows > 0
    secs = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"events": n, "seconds": secs, "events_per_s": n / secs, "peak_rss_mb": rss}))


def measure(mode: str, kind: str, events: int, path: str = "") -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", mode, kind, str(events), path],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def write_jsonl(path: Path, events: int) -> None:
    """The generator's events as JSON lines (DuckDB writes them; not part of any measurement)."""
    import duckdb
    import pyarrow as pa

    from pondstream.operators.generator import GeneratorSource
    from pondstream.sql import parse_script

    (s,) = parse_script(stream_sql("generator", events, ""))
    src = GeneratorSource(s.schema, s.event_time, s.options)
    con = duckdb.connect()
    parts = []
    while (b := src.read()) is not None:
        parts.append(b.data)
    con.register("t", pa.concat_tables(parts))
    con.sql(f"COPY (SELECT order_id, customer_id, amount, strftime(event_time, '%Y-%m-%dT%H:%M:%S.%f') AS event_time "
            f"FROM t) TO '{path}' (FORMAT json)")


def row(name: str, r: dict, ceiling: dict | None = None) -> str:
    ratio = f"{r['events_per_s'] / ceiling['events_per_s']:.0%} of ceiling" if ceiling else ""
    return (f"{name:<34} {r['events']:>11,} ev  {r['seconds']:7.2f} s  {r['events_per_s']:>12,.0f} ev/s  "
            f"peak RSS {r['peak_rss_mb']:7.0f} MB  {ratio}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=5_000_000)
    ap.add_argument("--no-20m", action="store_true", help="skip the 4x generator run for RSS growth")
    ap.add_argument("--no-json", action="store_true", help="skip the JSONL file source")
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        mode, kind, events, path = args.child
        child(mode, kind, int(events), path)
        return
    n = args.events
    print(f"pondstream spine benchmark: {n:,} events, 1000 keys, 1-hour TUMBLE COUNT/SUM/AVG; "
          f"{os.cpu_count()} cores")
    gc, gv = measure("ceiling", "generator", n), measure("view", "generator", n)
    print(row("generator: read only (ceiling)", gc))
    print(row("generator -> view", gv, gc))
    if not args.no_20m:
        big = measure("view", "generator", 4 * n)
        print(row(f"generator -> view, {4 * n:,} events", big))
        print(f"peak RSS {4 * n:,} vs {n:,} events: {big['peak_rss_mb'] / gv['peak_rss_mb'] - 1:+.1%}")
    if not args.no_json:
        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / "orders.jsonl"
            write_jsonl(path, n)
            print(f"(JSONL file: {path.stat().st_size / 1e6:,.0f} MB)")
            jc, jv = measure("ceiling", "file", n, str(path)), measure("view", "file", n, str(path))
            print(row("jsonl: read + decode only (ceiling)", jc))
            print(row("jsonl -> view", jv, jc))


if __name__ == "__main__":
    main()
