"""Query benchmark (issue 8, "query rollups of any age"): query cost as a view's history grows.

    python bench/bench_query.py                          # 2,000 / 10,000 / 50,000 versions, both variants
    python bench/bench_query.py --versions 2000,10000
    python bench/bench_query.py --versions 2000,10000,50000 --supersede-versions 2000,10000
    python bench/bench_query.py --quick                  # smoke run: 200 and 600 versions

How the versions are made: the built-in generator (unbounded, 100,000 keys, 600 events per minute of event
time, batches of exactly one minute) feeds a 1-minute TUMBLE view grouped by `customer_id` through
`Engine.run(checkpoint_interval=0)`, so every batch is followed by a checkpoint and every checkpoint closes
one window: one new version per checkpoint, as a live pipeline makes one per minute (N versions = N
minutes of history). An `on_progress` callback stops the run at N versions; the next size resumes the same state
dir (a new process, same SQL), so growing to 50,000 costs what 50,000 checkpoints cost, once.

Two variants of the view:

- `append`:    each version holds the window that just closed (no row is ever rewritten).
- `supersede`: `allowed_lateness = '5 minutes'` with events up to 90 s out of order (watermark delay 0),
               so each batch holds late events for the window emitted one checkpoint earlier and every
               version also rewrites that window: versions supersede earlier rows, and queries keep the
               latest row per (window, key).

For each size, in fresh processes: files in the view folder, a one-hour query, a full COUNT/SUM, DuckDB
running the same aggregate over the view's current rows exported (with `Engine.query`) to one Parquet
file, point lookups by key with and without a one-hour window range (random keys), the peak RSS of a
`pondstream query` process running the full aggregate, and p50/p99 checkpoint time while the view grew.
If `pondstream --help` lists a `compact` command, a copy of the state dir is compacted and measured too.
Then the figures are extrapolated (a linear fit, not a measurement) to a year of 1-minute windows.

Consolidation, in a version that does it in the background of a run, is exercised only if it runs inside
`Engine.run` (growing happens there, so checkpoint times are visible); `pondstream compact` covers the rest.

Every measuring process runs with a soft open-files limit of `--nofile` (default 1024, the usual Linux
default; 0 keeps this machine's), since files opened at once is one of the things measured. A query
that fails is reported as FAILED with its first error line; the bench goes on.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

VIEW = "per_minute"
START = "2026-01-01 00:00:00"
MINUTE_US = 60_000_000
HOUR_US = 60 * MINUTE_US
YEAR_VERSIONS = 525_600  # a year of 1-minute windows
MARK = "@@ "  # children print result lines with this prefix
TARGETS = ("files <= ~1,000; one-hour query <= 50 ms and flat; full aggregate <= 2x DuckDB; point lookup "
           "<= 20 ms at any history; checkpoint p99 must not spike while the view grows")


def pipeline_sql(variant: str, keys: int, per_minute: int) -> str:
    step_ms = 60_000 // per_minute
    disorder = "90 seconds" if variant == "supersede" else "0 seconds"
    lateness = " WITH (allowed_lateness = '5 minutes')" if variant == "supersede" else ""
    return f"""
CREATE STREAM orders (order_id BIGINT, customer_id VARCHAR, amount DOUBLE, event_time TIMESTAMP,
    WATERMARK FOR event_time AS event_time)
WITH (connector = 'generator', rows = '0', keys = '{keys}', seed = '7', start = '{START}',
      step = '{step_ms} milliseconds', batch_size = '{per_minute}', out_of_orderness = '{disorder}');

CREATE MATERIALIZED VIEW {VIEW}{lateness} AS
SELECT TUMBLE_START(event_time, INTERVAL '1' MINUTE) AS minute, customer_id,
       COUNT(*) AS orders, SUM(amount) AS total
FROM orders GROUP BY TUMBLE(event_time, INTERVAL '1' MINUTE), customer_id;
"""


def emit(record: dict) -> None:
    print(MARK + json.dumps(record), flush=True)


def first_line(e: BaseException | str) -> str:
    text = str(e).strip()
    if not text and isinstance(e, BaseException):
        text = type(e).__name__
    return (text.splitlines() or ["(no message)"])[0][:400]


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))]


def ts_literal(us: int) -> str:
    import datetime as dt

    t = dt.datetime(1970, 1, 1) + dt.timedelta(microseconds=us)
    return f"TIMESTAMP '{t.isoformat(sep=' ')}'"


def start_us() -> int:
    import datetime as dt

    return int((dt.datetime.fromisoformat(START) - dt.datetime(1970, 1, 1)).total_seconds()) * 1_000_000


def view_versions(state: Path) -> int:
    """Versions the view's log holds (Engine.status(); if that fails, the log's lines)."""
    try:
        from pondstream.engine import Engine

        return int(Engine(state).status()["series"][VIEW]["versions"])
    except Exception:  # noqa: BLE001 - a figure, not a check: fall back to the log itself
        log = state / "series" / VIEW / "_log.jsonl"
        return sum(1 for line in log.read_bytes().splitlines() if line.strip()) if log.exists() else 0


# -- child: grow ---------------------------------------------------------------------------------
def child_grow(state: Path, variant: str, target: int, keys: int, per_minute: int) -> None:
    """Resume (or start) the pipeline and stop it once the view holds `target` versions."""
    from pondstream.engine import Engine
    from pondstream.engine import runner as runner_mod

    before = view_versions(state) if state.exists() else 0
    durations: list[float] = []  # each Runner.checkpoint() call, when the runner has one
    stamps: list[float] = []  # when on_progress was called (the end of each checkpoint)
    reported: dict[str, list[float]] = {}  # checkpoint timings the runner itself exposes on Progress, if any
    Runner = getattr(runner_mod, "Runner", None)
    original = getattr(Runner, "checkpoint", None)
    how = "time between on_progress callbacks (read + process + checkpoint of one batch)"
    if original is not None:
        def timed(self, *a, **k):
            t = time.perf_counter()
            try:
                return original(self, *a, **k)
            finally:
                durations.append(time.perf_counter() - t)

        Runner.checkpoint = timed
        how = "wall time of each Runner.checkpoint() call (wrapped by the bench, engine code unchanged)"
    stop = threading.Event()
    last: dict = {}
    limit_events = (target - before + 10) * per_minute * 3  # a safety stop if versions stop appearing

    def on_progress(p) -> None:
        stamps.append(time.perf_counter())
        for name, value in vars(p).items():
            if "checkpoint" in name and name != "checkpoints" and isinstance(value, (int, float)):
                reported.setdefault(name, []).append(float(value))
        last.update(versions=p.versions, events=p.events, watermark=p.watermark, checkpoints=p.checkpoints)
        if before + p.versions >= target - 1 or p.events > limit_events:  # the stop checkpoint adds one
            stop.set()

    with Engine(state) as e:
        e.execute(pipeline_sql(variant, keys, per_minute), base_dir=str(state))
        t0 = time.perf_counter()
        e.run(stop, checkpoint_interval=0.0, on_progress=on_progress)
        seconds = time.perf_counter() - t0
    after = view_versions(state)
    gaps = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    times = durations or gaps
    status_fields = {}
    try:
        st = json.loads((state / "status.json").read_text().split("\n")[0])
        status_fields = {k: v for k, v in st.items() if "checkpoint" in k and k != "checkpoint"}
    except Exception:  # noqa: BLE001 - status.json's shape is the engine's business; only looked at
        pass
    emit({"kind": "grow", "versions_before": before, "versions": after, "seconds": seconds,
          "events": last.get("events", 0), "checkpoints": last.get("checkpoints", 0),
          "watermark": last.get("watermark"), "how": how,
          "ckpt_p50": pct(times, 50), "ckpt_p99": pct(times, 99), "ckpt_max": max(times, default=None),
          "gap_p50": pct(gaps, 50), "gap_p99": pct(gaps, 99),
          "runner_reported": {k: {"p50": pct(v, 50), "p99": pct(v, 99)} for k, v in reported.items()},
          "status_fields": status_fields})


# -- child: measure ------------------------------------------------------------------------------
def timed_runs(fn, repeat: int, budget: float, args_list=None) -> dict:
    """One warm-up, then up to `repeat` timed runs while within `budget` seconds. If the warm-up alone
    exceeds the budget, it is the only (cold) figure."""
    args_list = args_list or [()] * (repeat + 1)
    t = time.perf_counter()
    result = fn(*args_list[0])
    warm = time.perf_counter() - t
    if warm > budget:
        return {"median": warm, "runs": 1, "cold_only": True, "result": result}
    runs, spent = [], warm
    for args in args_list[1:repeat + 1]:
        t = time.perf_counter()
        fn(*args)
        runs.append(time.perf_counter() - t)
        spent += runs[-1]
        if spent > budget:
            break
    return {"median": statistics.median(runs), "runs": len(runs), "cold_only": False, "result": result}


def child_measure(state: Path, spec: dict) -> None:
    from pondstream.engine import Engine

    e = Engine(state)
    rng = random.Random(spec["seed"])
    wm, s0, repeat, budget = spec["watermark"], start_us(), spec["repeat"], spec["budget"]
    last_closed = (wm // MINUTE_US) * MINUTE_US - MINUTE_US  # the newest window the watermark has closed
    minutes = max(1, (last_closed - s0) // MINUTE_US + 1)
    hour_hi = last_closed + MINUTE_US
    hour_lo = hour_hi - HOUR_US
    full_sql = f"SELECT COUNT(*) AS n, SUM(orders) AS orders, SUM(total) AS total FROM {VIEW}"

    def key() -> str:
        return f"c{rng.randrange(spec['keys']):05d}"

    def hour_range() -> tuple[int, int]:
        lo = s0 + rng.randrange(max(1, minutes - 60)) * MINUTE_US
        return lo, lo + HOUR_US

    queries = {
        "hour": ([()] * (repeat + 1), lambda: e.query(
            f"SELECT customer_id, SUM(orders) AS orders, SUM(total) AS total FROM {VIEW} "
            f"WHERE minute >= {ts_literal(hour_lo)} AND minute < {ts_literal(hour_hi)} "
            "GROUP BY customer_id ORDER BY total DESC LIMIT 10")),
        "full": ([()] * (repeat + 1), lambda: e.query(full_sql)),
        "point": ([(key(),) for _ in range(repeat + 1)], lambda k: e.query(
            f"SELECT minute, orders, total FROM {VIEW} WHERE customer_id = '{k}'")),
        "point_range": ([(key(), *hour_range()) for _ in range(repeat + 1)], lambda k, lo, hi: e.query(
            f"SELECT minute, orders, total FROM {VIEW} WHERE customer_id = '{k}' "
            f"AND minute >= {ts_literal(lo)} AND minute < {ts_literal(hi)}")),
    }
    full_answer = None
    for name, (args_list, fn) in queries.items():
        try:
            r = timed_runs(fn, repeat, budget, args_list)
            table = r.pop("result")
            extra = {}
            if name == "full":
                full_answer = {c: table.column(c)[0].as_py() for c in table.column_names}
                extra["view_rows"] = full_answer["n"]
            emit({"kind": "query", "name": name, **r, "rows": table.num_rows, **extra})
        except Exception as err:  # noqa: BLE001 - a failing query is a figure (FAILED), not a crash
            emit({"kind": "query", "name": name, "failed": first_line(err)})

    # DuckDB over the same rows: the view's current rows exported with Engine.query to one Parquet file.
    export = Path(spec["export"])
    how = "Engine.query in time chunks -> one Parquet file"
    try:
        t = time.perf_counter()
        export_view(e, export, s0, minutes, spec["per_minute"])
        export_s = time.perf_counter() - t
    except Exception as err:  # noqa: BLE001 - fall back to DuckDB deduplicating the raw files itself
        export_s = None
        how = f"Engine.query export FAILED ({first_line(err)}); rows rebuilt by DuckDB from the raw files"
        try:
            export_raw(state, export)
        except Exception as err2:  # noqa: BLE001
            emit({"kind": "duckdb", "failed": f"export failed: {first_line(err)}; raw: {first_line(err2)}"})
            return
    try:
        import duckdb

        con = duckdb.connect()
        sql = (f"SELECT COUNT(*) AS n, SUM(orders) AS orders, SUM(total) AS total "
               f"FROM read_parquet('{export}')")
        r = timed_runs(lambda: con.execute(sql).fetchone(), repeat, budget)
        n, orders, total = r.pop("result")
        same = None
        if full_answer is not None:
            same = (full_answer["n"] == n and full_answer["orders"] == orders
                    and abs((full_answer["total"] or 0) - (total or 0)) <= 1e-6 * max(1.0, abs(total or 0)))
        emit({"kind": "duckdb", **r, "rows": n, "export_s": export_s, "how": how, "same_answer": same,
              "parquet_mb": export.stat().st_size / 1e6})
    except Exception as err:  # noqa: BLE001
        emit({"kind": "duckdb", "failed": first_line(err)})
    finally:
        export.unlink(missing_ok=True)


def export_view(e, path: Path, s0: int, minutes: int, per_minute: int) -> None:
    """Every current row of the view, by time chunks of ~2M rows (open-ended first and last chunks, so
    nothing outside the expected range is missed), into one Parquet file."""
    import pyarrow.parquet as pq

    chunk = max(60, 2_000_000 // per_minute) * MINUTE_US
    edges = list(range(s0 + chunk, s0 + minutes * MINUTE_US, chunk))
    conds = []
    for i in range(len(edges) + 1):
        lo = f"minute >= {ts_literal(edges[i - 1])}" if i > 0 else None
        hi = f"minute < {ts_literal(edges[i])}" if i < len(edges) else None
        conds.append(" AND ".join(c for c in (lo, hi) if c) or "TRUE")
    writer = None
    try:
        for cond in conds:
            t = e.query(f"SELECT minute, customer_id, orders, total FROM {VIEW} WHERE {cond}")
            if writer is None:
                writer = pq.ParquetWriter(path, t.schema, compression="zstd")
            writer.write_table(t.cast(writer.schema))
    finally:
        if writer is not None:
            writer.close()


def export_raw(state: Path, path: Path) -> None:
    import duckdb

    files = str(state / "series" / VIEW / "*.parquet")
    duckdb.connect().execute(
        f"COPY (SELECT minute, customer_id, orders, total FROM read_parquet('{files}') QUALIFY row_number() "
        f"OVER (PARTITION BY minute, customer_id ORDER BY _version DESC) = 1) TO '{path}' (FORMAT parquet, COMPRESSION zstd)")


# -- parent --------------------------------------------------------------------------------------
def limit_files(nofile: int):
    def pre() -> None:
        if nofile:
            soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(nofile, soft if soft > 0 else nofile), hard))
    return pre


def run_child(args: list[str], nofile: int, timeout: float | None = None) -> tuple[list[dict], str | None]:
    """Run this script as a child; its result lines, and an error line if it failed."""
    try:
        p = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True,
                           preexec_fn=limit_files(nofile), timeout=timeout)
    except subprocess.TimeoutExpired:
        return [], f"timed out after {timeout:.0f} s"
    records = [json.loads(line[len(MARK):]) for line in p.stdout.splitlines() if line.startswith(MARK)]
    if p.returncode != 0:
        lines = [x for x in p.stderr.strip().splitlines() if x.strip()]
        return records, (lines[-1] if lines else f"exit code {p.returncode}")[:400]
    return records, None


def cli() -> list[str]:
    exe = Path(sys.executable).parent / "pondstream"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "pondstream.engine.cli"]


WRAP = """import json, resource, subprocess, sys, time
t = time.perf_counter()
p = subprocess.run(sys.argv[1:], capture_output=True, text=True)
print(json.dumps({"rc": p.returncode, "seconds": time.perf_counter() - t, "err": p.stderr.strip()[-2000:],
                  "rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))"""


def cli_measure(cmd: list[str], state: Path, nofile: int) -> dict:
    """Run a pondstream CLI command in a fresh process: its wall time and peak RSS (ru_maxrss of the
    only child of a small wrapper process)."""
    env = {**os.environ, "PONDSTREAM_STATE_DIR": str(state)}
    p = subprocess.run([sys.executable, "-c", WRAP, *cli(), *cmd], capture_output=True, text=True, env=env,
                       preexec_fn=limit_files(nofile))
    r = json.loads(p.stdout.strip().splitlines()[-1])
    if r["rc"] != 0:
        lines = [x for x in r["err"].splitlines() if x.strip()]
        r["failed"] = next((x for x in lines if "error" in x.lower()), lines[0] if lines else f"exit {r['rc']}")
    return r


def detect_compact() -> tuple[bool, bool]:
    """Whether `pondstream --help` lists a compact command, and whether it takes --state-dir."""
    out = subprocess.run([*cli(), "--help"], capture_output=True, text=True).stdout
    if not any(line.split()[:1] == ["compact"] for line in out.splitlines()):
        return False, False
    sub = subprocess.run([*cli(), "compact", "--help"], capture_output=True, text=True).stdout
    return True, "--state-dir" in sub


def count_files(d: Path) -> int:
    return sum(len(files) for _, _, files in os.walk(d)) if d.exists() else 0


def measure_all(state: Path, grow: dict, args, work: Path, label: str) -> dict:
    row: dict = {"files": count_files(state / "series" / VIEW), "versions": view_versions(state)}
    spec = {"watermark": grow["watermark"], "keys": args.keys, "per_minute": args.per_minute,
            "repeat": args.repeat, "budget": args.budget, "seed": 1, "export": str(work / f"{label}.parquet")}
    print(f"  measuring {label}: {row['versions']:,} versions, {row['files']:,} files ...", flush=True)
    records, err = run_child(["--child-measure", str(state), json.dumps(spec)], args.nofile)
    for r in records:
        row[r.get("name", r["kind"])] = r
    for name in ("hour", "full", "point", "point_range", "duckdb"):
        if name not in row:
            row[name] = {"failed": f"measuring process died: {err}"}
    q = cli_measure(["query", f"SELECT COUNT(*) AS n, SUM(orders) AS o, SUM(total) AS t FROM {VIEW}",
                     "--format", "csv"], state, args.nofile)
    row["cli"] = q
    return row


def fmt_s(r: dict | None) -> str:
    if not r or "median" not in r:
        return "FAILED" if r and "failed" in r else "-"
    s = r["median"]
    text = f"{s * 1000:.1f} ms" if s < 0.1 else f"{s * 1000:.0f} ms" if s < 1 else f"{s:.2f} s"
    return text + ("*" if r.get("cold_only") else "")


def ms(x: float | None) -> str:
    return "-" if x is None else f"{x * 1000:.0f}" if x >= 0.01 else f"{x * 1000:.1f}"


def table_rows(rows: list[dict]) -> list[str]:
    head = ("| versions | files in view folder | rows | one-hour query | full COUNT/SUM | DuckDB, same rows "
            "| ratio | point lookup | point + 1 h range | CLI query peak RSS | checkpoint p50 / p99 (ms) "
            "| time to grow |")
    out = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        full, duck = r.get("full", {}), r.get("duckdb", {})
        ratio = (f"{full['median'] / duck['median']:.1f}x" if "median" in full and "median" in duck
                 and duck["median"] > 0 else "-")
        cli_rss = "FAILED" if "failed" in r["cli"] else f"{r['cli']['rss_mb']:,.0f} MB"
        n_rows = full.get("view_rows", duck.get("rows"))
        grow = r.get("grow") or {}
        ck = f"{ms(grow.get('ckpt_p50'))} / {ms(grow.get('ckpt_p99'))}" if grow else "-"
        grown = f"{r['grow_total_s']:.0f} s" if r.get("grow_total_s") is not None else "-"
        cells = [r["label"], f"{r['files']:,}", "-" if n_rows is None else f"{n_rows:,}", fmt_s(r.get("hour")),
                 fmt_s(full), fmt_s(duck), ratio, fmt_s(r.get("point")), fmt_s(r.get("point_range")), cli_rss,
                 ck, grown]
        out.append("| " + " | ".join(cells) + " |")
    return out


def failures(rows: list[dict]) -> list[str]:
    out = []
    for r in rows:
        for name in ("hour", "full", "duckdb", "point", "point_range", "cli", "compact"):
            f = (r.get(name) or {}).get("failed")
            if f:
                out.append(f"  {r['label']} {name}: FAILED: {f}")
        duck = r.get("duckdb") or {}
        if duck.get("how", "").startswith("Engine.query export FAILED"):
            out.append(f"  {r['label']} DuckDB rows: {duck['how']}")
        if duck.get("same_answer") is False:
            out.append(f"  {r['label']} DuckDB's COUNT/SUM differ from pondstream's over the exported rows")
    return out


def fit(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares line through the points: (slope, intercept)."""
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx if sxx else 0.0
    return slope, my - slope * mx


def extrapolate(rows: list[dict]) -> list[str]:
    pts = [r for r in rows if not r.get("compacted")]
    if len({r["versions"] for r in pts}) < 2:
        return ["  (needs two sizes to extrapolate)"]
    metrics = [("files in view folder", lambda r: r["files"], lambda v: f"{v:,.0f}"),
               ("one-hour query", lambda r: r["hour"].get("median"), lambda v: fmt_s({"median": v})),
               ("full COUNT/SUM", lambda r: r["full"].get("median"), lambda v: fmt_s({"median": v})),
               ("point lookup", lambda r: r["point"].get("median"), lambda v: fmt_s({"median": v})),
               ("point + 1 h range", lambda r: r["point_range"].get("median"), lambda v: fmt_s({"median": v})),
               ("CLI query peak RSS", lambda r: None if "failed" in r["cli"] else r["cli"]["rss_mb"],
                lambda v: f"{v:,.0f} MB"),
               ("time to grow", lambda r: r.get("grow_total_s"), lambda v: f"{v / 3600:,.1f} h")]
    out = []
    for name, get, show in metrics:
        xy = [(r["versions"], get(r)) for r in pts if get(r) is not None]
        if len({x for x, _ in xy}) < 2:
            out.append(f"  {name:<22} -  (fewer than two sizes measured)")
            continue
        slope, icept = fit([x for x, _ in xy], [y for _, y in xy])
        if slope <= 0:
            out.append(f"  {name:<22} no growth measured (last {show(xy[-1][1])}; slope <= 0 within the noise)")
            continue
        value = slope * YEAR_VERSIONS + icept
        if name == "time to grow":
            per = f"{slope * 1000:.1f} ms per version"
        else:
            per = f"{'+' if slope >= 0 else '-'}{show(abs(slope) * 10_000)} per 10k versions"
        out.append(f"  {name:<22} ~{show(value):>10}   ({per})")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--versions", default="2000,10000,50000", help="comma-separated sizes (default %(default)s)")
    ap.add_argument("--supersede-versions", default=None,
                    help="sizes for the superseding variant (default: same as --versions; 'none' skips it)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 200 and 600 versions, fewer repeats")
    ap.add_argument("--keys", type=int, default=100_000, help="distinct customer_id values (default %(default)s)")
    ap.add_argument("--per-minute", type=int, default=600, help="events per minute of event time (default 600)")
    ap.add_argument("--repeat", type=int, default=5, help="timed runs per query after a warm-up (default 5)")
    ap.add_argument("--budget", type=float, default=30.0,
                    help="seconds per query figure before repeats stop (default %(default)s)")
    ap.add_argument("--nofile", type=int, default=1024,
                    help="soft open-files limit of every measuring process (default 1024; 0 = machine's)")
    ap.add_argument("--work-dir", default=None, help="where state dirs go (default: a temporary directory)")
    ap.add_argument("--keep", action="store_true", help="keep the state dirs")
    ap.add_argument("--child-grow", nargs=5, help=argparse.SUPPRESS)
    ap.add_argument("--child-measure", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child_grow:
        state, variant, target, keys, per_minute = args.child_grow
        child_grow(Path(state), variant, int(target), int(keys), int(per_minute))
        return
    if args.child_measure:
        child_measure(Path(args.child_measure[0]), json.loads(args.child_measure[1]))
        return
    if 60_000 % args.per_minute:
        ap.error("--per-minute must divide 60000 (a whole number of milliseconds between events)")
    if args.quick:
        args.versions = "200,600"
        args.repeat, args.budget = min(args.repeat, 3), min(args.budget, 10.0)
    sizes = sorted({int(x) for x in args.versions.split(",") if x.strip()})
    sup = args.supersede_versions
    sup_sizes = sizes if sup is None else [] if sup.lower() == "none" else sorted(
        {int(x) for x in sup.split(",") if x.strip()})
    if min(sizes + sup_sizes, default=120) < 120:
        ap.error("sizes must be at least 120 versions (the one-hour query needs an hour of closed windows)")

    work = Path(args.work_dir or tempfile.mkdtemp(prefix="bench_query_"))
    work.mkdir(parents=True, exist_ok=True)
    compact, compact_state_flag = detect_compact()
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    nofile = min(args.nofile, soft) if args.nofile else soft
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                         cwd=Path(__file__).parent).stdout.strip() or "?"
    print(f"bench_query.py  (pondstream {rev}, {os.cpu_count()} cores, {time.strftime('%Y-%m-%d %H:%M')}, "
          f"open-files limit {nofile} in measuring processes, work dir {work})")
    print(f"view: 1-minute TUMBLE, COUNT(*) and SUM(amount) per customer_id; generator with {args.keys:,} keys, "
          f"{args.per_minute} events per minute of event time, one-minute batches;")
    print("versions: Engine.run(checkpoint_interval=0) checkpoints after every batch, each closing one window "
          "(one version per checkpoint); an on_progress callback stops at N, the next size resumes the state dir.")
    print(f"`pondstream compact`: {'found; each size is also measured on a compacted copy' if compact else 'not in this version'}")
    print(f"targets: {TARGETS}\n", flush=True)

    results: dict[str, list[dict]] = {}
    for variant, vsizes in (("append", sizes), ("supersede", sup_sizes)):
        if not vsizes:
            continue
        state = work / variant
        rows: list[dict] = results.setdefault(variant, [])
        grown = 0.0
        for n in vsizes:
            print(f"[{variant}] growing to {n:,} versions ...", flush=True)
            recs, err = run_child(["--child-grow", str(state), variant, str(n), str(args.keys),
                                   str(args.per_minute)], args.nofile)
            grow = next((r for r in recs if r["kind"] == "grow"), None)
            if grow is None:
                print(f"  growing FAILED: {err}; stopping this variant", flush=True)
                break
            grown += grow["seconds"]
            added = grow["versions"] - grow["versions_before"]
            print(f"  {grow['versions']:,} versions (this step: +{added:,} versions, {grow['events']:,} events, "
                  f"{grow['checkpoints']:,} checkpoints in {grow['seconds']:.0f} s, "
                  f"{grow['seconds'] / max(added, 1) * 1000:.1f} ms per version); checkpoint p50 {ms(grow['ckpt_p50'])} ms, p99 "
                  f"{ms(grow['ckpt_p99'])} ms, max {ms(grow['ckpt_max'])} ms [{grow['how']}]; "
                  f"checkpoint-to-checkpoint p50 {ms(grow['gap_p50'])} / p99 {ms(grow['gap_p99'])} ms", flush=True)
            for k, v in grow["runner_reported"].items():
                print(f"  runner-reported {k}: p50 {v['p50']}, p99 {v['p99']}", flush=True)
            if grow["status_fields"]:
                print(f"  status.json checkpoint fields: {grow['status_fields']}", flush=True)
            row = measure_all(state, grow, args, work, f"{variant}-{n}")
            row.update(label=f"{row['versions']:,}", grow=grow, grow_total_s=grown)
            rows.append(row)
            print("\n".join(table_rows([row])[2:] + failures([row])), flush=True)
            if compact:
                copy = work / f"{variant}-{n}-compacted"
                shutil.rmtree(copy, ignore_errors=True)
                shutil.copytree(state, copy)
                cmd = ["compact", VIEW] + (["--state-dir", str(copy)] if compact_state_flag else [])
                c = cli_measure(cmd, copy, args.nofile)
                print(f"  pondstream compact: {'FAILED: ' + c['failed'] if 'failed' in c else 'done'} in "
                      f"{c['seconds']:.1f} s, peak RSS {c['rss_mb']:,.0f} MB", flush=True)
                crow = measure_all(copy, grow, args, work, f"{variant}-{n}-compacted")
                took = "FAILED" if "failed" in c else f"{c['seconds']:.0f} s"
                crow.update(label=f"{crow['versions']:,} after compact ({took})", compacted=True, compact=c)
                rows.append(crow)
                print("\n".join(table_rows([crow])[2:] + failures([crow])), flush=True)
                shutil.rmtree(copy, ignore_errors=True)
        print(flush=True)

    for variant, rows in results.items():
        if not rows:
            continue
        print(f"\n== {variant} ==" + ("  (allowed lateness: each version rewrites the previous window)"
                                     if variant == "supersede" else "  (each version adds one window)"))
        print("\n".join(table_rows(rows)))
        fails = failures(rows)
        if fails:
            print("failures (first error line):\n" + "\n".join(fails))
        if any(r.get(k, {}).get("cold_only") for r in rows for k in ("hour", "full", "point", "point_range")):
            print(f"* one cold run only: the warm-up alone took longer than --budget {args.budget:.0f} s")
        print(f"extrapolation to a year of 1-minute windows ({YEAR_VERSIONS:,} versions), a linear fit over the "
              "measured sizes, not a measurement:")
        print("\n".join(extrapolate(rows)))
    print("\nFigures are medians of in-process runs after one warm-up (point lookups: a different random key "
          "each run), on a shared 2-core machine: noisy, compare within a run. The page cache is warm (the "
          "files were just written). Checkpoint p50/p99 cover the checkpoints that grew the view to that "
          "size from the previous one.")
    if not args.keep and not args.work_dir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
