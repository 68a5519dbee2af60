"""The Python API: `Engine(state_dir).execute(sql)`, `.run()`, `.query(sql) -> pyarrow.Table`.

Queries read only the series folders and `catalog.json`, never RocksDB, so they work while a pipeline
runs in another process; they are read-only (DataFusion refuses COPY, DDL, DML and SET). DDL and `run`
take the RocksDB lock before they change anything, catalog.json included.
"""

from __future__ import annotations

import inspect
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
from datafusion import SessionContext
from datafusion.record_batch import RecordBatchStream
from sqlglot import exp

from pondstream.engine.lookup import explain, point_lookup, substitute
from pondstream.engine.lookup import parse as parse_query
from pondstream.engine.lookup import register as register_lookup
from pondstream.engine.query_functions import query_context
from pondstream.engine.streams import guard_exit, overlaps, pieces
from pondstream.sql import (
    CreateFunction,
    CreateStream,
    CreateView,
    Describe,
    Drop,
    Query,
    Show,
    SqlError,
    check_limits,
    parse_script,
)
from pondstream.sql.dialect import DataFusionSQL, StreamSQL
from pondstream.sql.functions import FunctionError, load, unload
from pondstream.sql.planner import ViewPlan
from pondstream.sql.windows import WindowSpec
from pondstream.state.errors import EngineError
from pondstream.state.files import damaged, read_json
from pondstream.state.paths import (
    MAX_SERIES_NAME,
    check_name,
    default_state_dir,
    errors_series,
    is_valid_name,
    key_prefix,
    late_series,
    series_dir,
    shown,
)
from pondstream.state.series import (
    HEAD,
    LOG,
    META,
    SeriesStore,
    Snapshot,
    read_snapshot,
    series_meta,
    start_column,
)
from pondstream.state.statcache import StatCache
from pondstream.state.store import StateStore, Txn, prefix_end
from pondstream.state.table import READ_ONLY, damaged_file, quote, register_series, visible_columns

if TYPE_CHECKING:
    from pondstream.engine.catalog import Catalog
    from pondstream.engine.runner import Progress

__all__ = ["Engine", "EngineError", "default_state_dir"]
STATUS_REPAIR = "the next checkpoint of `pondstream run` on this state dir rewrites it"


class Engine:
    def __init__(self, state_dir: str | os.PathLike | None = None) -> None:
        self.state_dir = Path(state_dir or default_state_dir()).resolve()
        self._store: StateStore | None = None
        self._series: SeriesStore | None = None

    # -- state ---------------------------------------------------------------------------------
    @property
    def catalog(self) -> Catalog:
        from pondstream.engine.catalog import Catalog  # loaded on first DDL or run: queries start faster

        return Catalog.load(self.state_dir)

    def _open(self) -> tuple[StateStore, SeriesStore]:
        """Open RocksDB, which is the state dir's lock (StateLockedError if another process holds it)."""
        if self._store is None:
            try:
                self.state_dir.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise EngineError(f"cannot create the state dir {self.state_dir}: {e.strerror or e}; "
                                  "pick another --state-dir") from None
            self._store = StateStore(str(self.state_dir / "rocksdb"))
            self._series = SeriesStore(self.state_dir / "series", self._store)
            self._series.recover()
        return self._store, self._series

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = self._series = None

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- statements ----------------------------------------------------------------------------
    def execute(self, sql: str, reset: Iterable[str] = (), base_dir: str | None = None) -> list[pa.Table | str]:
        """Run each statement of `sql`: DDL changes the catalog, SHOW/DESCRIBE/SELECT return tables.

        Re-creating an object with the same definition is a no-op (so a pipeline file can be run again
        to resume); a changed view is refused unless its name is in `reset`, which discards its state."""
        reset_names = {r.lower() for r in reset}
        out: list[pa.Table | str] = []
        for stmt in parse_script(sql):
            if isinstance(stmt, (CreateStream, CreateView, CreateFunction, Drop)):
                self._open()  # the lock first: catalog.json changes only under it
            if isinstance(stmt, CreateFunction):
                out.append(self._create_function(stmt, base_dir or os.getcwd()))
            elif isinstance(stmt, CreateStream):
                out.append(self._create_stream(stmt, reset_names, base_dir or os.getcwd()))
            elif isinstance(stmt, CreateView):
                out.append(self._create_view(stmt, reset_names))
            elif isinstance(stmt, Drop):
                out.append(self._drop(stmt))
            elif isinstance(stmt, Show):
                out.append(self._show(stmt.kind))
            elif isinstance(stmt, Describe):
                out.append(self.describe(stmt.name))
            elif isinstance(stmt, Query):
                out.append(self.query(stmt.sql))
        return out

    def _create_stream(self, stmt: CreateStream, reset: set[str], base_dir: str) -> str:
        _check_new_name(stmt.name, "stream name")
        cat = self.catalog
        found = cat.find(stmt.name)
        if found and found[0] == "view":
            raise EngineError(f"{stmt.name} is already a materialized view; pick another name")
        if found:
            old = cat.streams[found[1]]
            if old.stmt.same_definition(stmt):
                return f"stream {stmt.name} exists (unchanged)"
            if stmt.name.lower() not in reset:
                raise EngineError(
                    f"stream {stmt.name} already exists with a different definition.\n"
                    f"  To replace it and recompute its views from scratch, run again with --reset {stmt.name}")
            for v in cat.views_of(found[1]):
                self._discard_view_state(v)
            del cat.streams[found[1]]
        from pondstream.engine.catalog import StreamEntry, ViewEntry
        from pondstream.engine.runner import make_source
        from pondstream.sql.planner import plan_view

        entry = StreamEntry(stmt, base_dir)
        try:
            make_source(entry, None).close()  # fail now, not mid-run: missing path, bad options
        except (ValueError, OSError) as e:
            raise EngineError(f"stream {stmt.name}: {e}") from None
        cat.streams[stmt.name] = entry
        for v in cat.views_of(stmt.name):
            cat.views[v] = ViewEntry(cat.views[v].stmt, plan_view(cat.views[v].stmt, cat.stream_stmts()))
        cat.save()
        return f"created stream {stmt.name}"

    def _create_view(self, stmt: CreateView, reset: set[str]) -> str:
        _check_new_name(stmt.name, "view name")
        cat = self.catalog
        found = cat.find(stmt.name)
        if found and found[0] == "stream":
            raise EngineError(f"{stmt.name} is already a stream; pick another name for the view")
        if found and cat.views[found[1]].stage_of:
            raise EngineError(f"{found[1]} is a stage of view {cat.views[found[1]].stage_of}; pick another name")
        if found:
            old = cat.views[found[1]]
            if old.stmt.same_definition(stmt):
                return f"materialized view {stmt.name} exists (unchanged)"
            if stmt.name.lower() not in reset:
                raise EngineError(
                    f"materialized view {stmt.name} already exists with a different definition.\n"
                    f"  Its results so far came from the old query. To discard them and recompute from the\n"
                    f"  start of the stream, run again with --reset {stmt.name} "
                    f"(or DROP MATERIALIZED VIEW {stmt.name} first)")
        previous = {n: cat.views.pop(n) for n in ([*cat.stages_of(found[1]), found[1]] if found else [])}
        try:
            added = cat.add_view(stmt.name, stmt)
        except SqlError as e:
            cat.views.update(previous)
            name = e.message.removeprefix("unknown stream ") if e.message.startswith("unknown stream") else None
            up = cat.find(name) if name else None
            if up and up[0] == "view":
                raise SqlError(f"view {up[1]} cannot be read as a stream: it has no window-start column to use as "
                               "event time (a running aggregate, or a window whose start it does not select)",
                               e.line, e.col, "select TUMBLE_START(...) (or window_start) in it, or query it "
                               "instead", e.sql) from None
            raise
        for n in previous:
            self._discard_view_state(n)
        cat.save()
        staged = f" (runs as {', '.join(added)})" if len(added) > 1 else ""
        return f"created materialized view {stmt.name}{staged}"

    def _create_function(self, stmt: CreateFunction, base_dir: str) -> str:
        from pondstream.engine.catalog import FunctionEntry, python_function

        _check_new_name(stmt.name, "function name")
        cat = self.catalog
        old = next((n for n in cat.functions if n.lower() == stmt.name.lower()), None)
        entry = FunctionEntry(stmt, python_function(stmt, base_dir))
        if old and cat.functions[old].stmt.same_definition(stmt) and cat.functions[old].fn == entry.fn:
            load(entry.fn)  # imported afresh: an edited module changes future results
            return f"function {stmt.name} exists (unchanged)"
        try:
            load(entry.fn)
        except FunctionError as e:
            raise EngineError(str(e)) from None
        if old:
            del cat.functions[old]
        cat.functions[stmt.name] = entry
        cat.save()
        return f"{'replaced' if old else 'created'} function {stmt.name}"

    def register_function(self, fn: Callable[..., Any], args: list[str], returns: str,
                          name: str | None = None) -> str:
        """CREATE FUNCTION for a Python function defined in a module file: `args` and `returns` are SQL
        types, e.g. `engine.register_function(discount, ["DOUBLE", "VARCHAR"], "DOUBLE")`."""
        path = inspect.getsourcefile(fn)
        if path is None or fn.__name__ == "<lambda>":
            raise EngineError(f"{fn!r} is not a named function in a module file: the catalog stores where it lives")
        params = ", ".join(f"a{i} {t}" for i, t in enumerate(args))
        return self.execute(f"CREATE FUNCTION {name or fn.__name__}({params}) RETURNS {returns} LANGUAGE PYTHON "
                            f"AS '{os.path.abspath(path)}:{fn.__name__}'")[0]

    def _discard_view_state(self, name: str) -> None:
        store, series = self._open()
        txn = Txn()
        p = key_prefix(b"s", name)
        txn.delete_range(p, prefix_end(p))
        txn.delete_range(b"m/view/" + name.encode(), b"m/view/" + name.encode() + b"\x00")
        for s in (name, late_series(name)):
            series.drop(txn, s)
        store.commit(txn)

    def _drop(self, stmt: Drop) -> str:
        cat = self.catalog
        if stmt.kind == "FUNCTION":
            return self._drop_function(stmt)
        found = cat.find(stmt.name)
        want = "stream" if stmt.kind == "STREAM" else "view"
        if not found or found[0] != want:
            if stmt.if_exists:
                return f"{shown(stmt.name)} does not exist"
            raise EngineError(f"no {'stream' if want == 'stream' else 'materialized view'} named {shown(stmt.name)}"
                              " (SHOW STREAMS / SHOW MATERIALIZED VIEWS lists them)")
        name = found[1]
        if want == "stream":
            deps = cat.views_of(name)
            if deps:
                raise EngineError(f"stream {name} is used by {', '.join(deps)}; drop those views first")
            del cat.streams[name]
            store, series = self._open()
            txn = Txn()
            series.drop(txn, errors_series(name))
            store.commit(txn)
        else:
            if cat.views[name].stage_of:
                raise EngineError(f"view {name} is a stage of view {cat.views[name].stage_of}; drop that view")
            parts = [name, *reversed(cat.stages_of(name))]
            deps = sorted({d for p in parts for d in cat.views_of(p)} - set(parts))  # readers of its stages too
            if deps:
                raise EngineError(f"view {name} is read by {', '.join(deps)}; drop those views first")
            for n in parts:
                self._discard_view_state(n)
                del cat.views[n]
        cat.save()
        return f"dropped {name}"

    def _drop_function(self, stmt: Drop) -> str:
        cat = self.catalog
        name = next((n for n in cat.functions if n.lower() == stmt.name.lower()), None)
        if name is None:
            if stmt.if_exists:
                return f"{shown(stmt.name)} does not exist"
            raise EngineError(f"no function named {shown(stmt.name)} (SHOW FUNCTIONS lists them)")
        users = [v for v, e in cat.views.items() if any(f.name.lower() == name.lower()
                                                       for f in e.stmt.select.find_all(exp.Anonymous))]
        if users:
            raise EngineError(f"function {name} is called by {', '.join(users)}; drop those views first")
        del cat.functions[name]
        unload(name)
        cat.save()
        return f"dropped function {name}"

    def _show(self, kind: str) -> pa.Table:
        cat = self.catalog
        if kind == "FUNCTIONS":
            rows = [{"name": n, "arguments": ", ".join(f"{a} {t}" for a, t in e.stmt.args),
                     "returns": str(e.stmt.returns), "module": f"{e.fn.path}:{e.fn.attr}",
                     "source_hash": e.fn.source_hash} for n, e in sorted(cat.functions.items())]
            names = ["name", "arguments", "returns", "module", "source_hash"]
            return pa.Table.from_pylist(rows) if rows else pa.table({n: pa.array([], pa.string()) for n in names})
        if kind == "STREAMS":
            rows = [{"name": n, "connector": e.stmt.options.get("connector"), "event_time": e.stmt.event_time,
                     "watermark_delay_s": e.stmt.watermark_delay_us / 1e6,
                     "columns": ", ".join(f"{f.name} {f.type}" for f in e.stmt.schema)}
                    for n, e in sorted(cat.streams.items())]
            names = ["name", "connector", "event_time", "watermark_delay_s", "columns"]
        else:
            rows = []
            for n, e in sorted(cat.views.items()):
                snap = self._snapshot(n)
                rows.append({"name": n, "stream": ", ".join(e.plan.inputs), "window": _window_text(e.plan),
                             "versions": snap.versions if snap else 0,
                             "rows_written": snap.rows_written if snap else 0, "stage_of": e.stage_of})
            names = ["name", "stream", "window", "versions", "rows_written", "stage_of"]
        return pa.Table.from_pylist(rows) if rows else pa.table({n: pa.array([], pa.string()) for n in names})

    def describe(self, name: str) -> pa.Table:
        """Columns and types of a stream or a view (plus, for streams, event time and options)."""
        cat = self.catalog
        found = cat.find(name)
        if not found:
            raise EngineError(f"no stream or materialized view named {name}")
        kind, name = found
        if kind == "stream":
            s = cat.streams[name].stmt
            rows = [{"column": f.name, "type": str(f.type),
                     "note": (f"event time, watermark delay {_dur(s.watermark_delay_us)}"
                              if f.name == s.event_time else "")} for f in s.schema]
            rows += [{"column": f"({k})", "type": "option", "note": v} for k, v in sorted(s.options.items())]
        else:
            plan = cat.views[name].plan
            rows = [{"column": f.name, "type": str(f.type),
                     "note": ("window " + plan.time_columns[f.name]) if f.name in plan.time_columns else ""}
                    for f in plan.output_schema if not f.name.startswith("_")]
        return pa.Table.from_pylist(rows)

    # -- running -------------------------------------------------------------------------------
    def run(self, stop: threading.Event | None = None, checkpoint_interval: float = 1.0,
            on_progress: Callable[[Progress], None] | None = None) -> Progress:
        """Run every view until bounded sources end (all windows emitted) or `stop` is set."""
        cat = self.catalog
        if not cat.views:
            raise EngineError("no materialized views to run; CREATE MATERIALIZED VIEW first")
        from pondstream.engine.runner import Runner

        store, series = self._open()
        try:
            runner = Runner(self.state_dir, store, series, cat, checkpoint_interval, on_progress)
        except (ValueError, OSError) as e:
            raise EngineError(str(e)) from None
        try:
            return runner.run(stop)
        except OSError as e:  # a write the state layer does not wrap (status.json): disk full, read-only
            raise EngineError(f"cannot write to {e.filename or self.state_dir}: {e.strerror or e}.\n  The last "
                              "checkpoint is intact; free disk space or fix permissions, then run again") from None

    def compact(self, view: str | None = None) -> list[dict]:
        """Consolidate now: fold each series' tail into its base (`pondstream compact`). With `view`, only
        that view and its late series; else every series. Needs the state dir (a running pipeline
        consolidates in the background instead)."""
        from pondstream.engine.compaction import compact

        names = self.series_names()
        if view is not None:
            real = self._resolve(view, False, names)
            if real is None:
                raise EngineError(f"no view named {shown(view)}; known: {', '.join(names) or 'none'}")
            names = [n for n in (real, late_series(real)) if n in names]
        _, series = self._open()
        return compact(self.catalog, self._store, series, names)

    # -- queries -------------------------------------------------------------------------------
    def _series_root(self) -> Path:
        return self.state_dir / "series"

    def series_names(self) -> list[str]:
        """Every series folder (a usable name holding any series file); others are not ours."""
        root = self._series_root()
        # The listing is kept while the folder is unchanged; folders that held no series file yet are
        # looked at again each time (files appearing inside them do not change the folder's mtime).
        names, pending = _LISTINGS.get(root, (root,), lambda: _list_series(root))
        if pending:
            names = sorted([*names, *(n for n in pending if _is_series(root / n))])
        return list(names)

    def _snapshot(self, name: str) -> Snapshot | None:
        """The verified base and tail of series `name`; None if the view has not run."""
        d = series_dir(self._series_root(), name)
        return read_snapshot(d) if d.exists() else None

    @staticmethod
    def _resolve(name: str, quoted: bool, names: list[str]) -> str | None:
        """The series a name refers to: quoted exactly, unquoted folded to lower case, else the one
        name equal to it ignoring case (views created before unquoted names were folded)."""
        if quoted or name in names:
            return name if name in names else None
        low = name.lower()
        if low in names:
            return low
        matches = [n for n in names if n.lower() == low]
        return matches[0] if len(matches) == 1 else None

    def query(self, sql: str, as_of_version: int | None = None) -> pa.Table:
        """The whole result of `query_stream` as one table (for results that fit in memory)."""
        return self.query_stream(sql, as_of_version).read_all()

    def query_stream(self, sql: str, as_of_version: int | None = None, tree: exp.Expression | None = None,
                     params: list[exp.Expression] | None = None) -> pa.RecordBatchReader:
        """Run a read-only query over the views (latest versions, or as of `as_of_version`) with DataFusion.

        `FROM view VERSION AS OF n` reads one view as it was at version n.
        Batches are computed as they are read; closing the reader early stops the query.
        `tree`: `sql` already parsed with the StreamSQL dialect (so the positions of its literals refer
        to `sql`), never changed here (it may be shared, as a server's cached statement is); `params`:
        the literal nodes its `$n` stand for (pgserver/params.py). The tree with those values in place
        is what runs, rendered where text is needed."""
        check_limits(sql)
        names = self.series_names()
        given = tree is not None
        if tree is None:
            tree = parse_query(sql)

        def as_given() -> str:  # the text of the statement with its values (given: rendered, and checked)
            if not given:
                return sql
            text = tree.sql(dialect=StreamSQL)
            check_limits(text)
            return text

        found = point_lookup(self, sql, as_of_version, names, tree, params)  # WHERE fixes a view's keys: no scan
        if found is not None:
            if found.result is not None:  # only columns of the rows found: the answer, without DataFusion
                return found.result.to_reader()
            ctx = query_context()
            register_lookup(ctx, found)
            if found.sql is None and given:
                tree = substitute(tree.copy(), params)
            return self._run(ctx, found.sql if found.sql is not None else as_given(), names, used={found.view})
        ctx = query_context()
        if given:  # the scan below changes the tree: a copy of our own, with the values in place
            tree = substitute(tree.copy(), params)
        written = as_given()
        if not isinstance(tree, exp.Query):  # EXPLAIN, SHOW, and what DataFusion will refuse: as written
            tree = None
        registered: dict[str, str] = {}  # alias -> series

        def register(name: str, as_of: int | None, alias: str | None = None) -> str:
            if alias is None:
                alias = name if as_of is None else f"{name}:as_of:{as_of}"  # ':' is never in a series name
            if alias not in registered:
                register_series(ctx, alias, series_dir(self._series_root(), name), as_of)
                registered[alias] = name
            return alias

        if tree is None:
            for n in names:
                register(n, as_of_version, alias=n)
            text = written
        else:
            rewrite = as_of_version is not None
            for table in tree.find_all(exp.Table):
                if not isinstance(table.this, exp.Identifier) or table.args.get("db"):
                    continue
                real = self._resolve(table.name, table.this.quoted, names)
                if real is None:
                    continue
                version = table.args.get("version")
                as_of = as_of_version
                if version is not None:
                    try:
                        as_of = int(version.expression.name)
                    except ValueError:
                        raise SqlError(f"VERSION AS OF needs a version number, got {version.expression.sql()}",
                                       hint="e.g. SELECT * FROM hourly_sales VERSION AS OF 3") from None
                    table.set("version", None)
                    rewrite = True
                alias = register(real, as_of)
                if alias != table.name or not table.this.quoted and real != real.lower():
                    if not table.alias:  # keep `view.column` qualifiers resolving as the user wrote them
                        table.set("alias", exp.TableAlias(this=table.this.copy()))
                    table.set("this", exp.to_identifier(alias, quoted=True))
                    rewrite = True
            text = tree.sql(dialect=DataFusionSQL) if rewrite else written
        return self._run(ctx, text, names, used=set(registered.values()))

    def explain_route(self, sql: str, as_of_version: int | None = None) -> str:
        """Which route `query(sql)` takes, a point lookup or a DataFusion scan, and why (`query --explain`)."""
        return explain(self, sql, as_of_version)

    def _run(self, ctx: SessionContext, sql: str, names: list[str], params: dict | None = None,
             used: Iterable[str] = ()) -> pa.RecordBatchReader:
        """Plan read-only and start executing; DataFusion's refusals and failures, when planning and while
        the batches are read, become EngineErrors (naming the damaged Parquet file of a series in `used`,
        if that is why it failed)."""
        used = set(used)
        guard_exit()
        try:
            df = ctx.sql_with_options(sql, READ_ONLY, param_values=params)
            schema = df.schema()
            stream = df.execute_stream()
        except EngineError:
            raise
        except Exception as e:
            raise self._query_error(e, names, used) from None
        return pa.RecordBatchReader.from_batches(schema, self._batches(ctx, stream, schema, names, used))

    def _batches(self, ctx: SessionContext, stream: RecordBatchStream, schema: pa.Schema, names: list[str],
                 used: set[str]) -> Iterator[pa.RecordBatch]:
        """The stream's batches as pyarrow, labelled with the planned schema; a failure while reading
        (a damaged file, a division by zero in an expression) is an EngineError like one when planning.
        Holding `ctx` keeps its reader leases (state/leases.py) until the last batch is read."""
        while True:
            try:
                batch = next(stream).to_pyarrow()
            except StopIteration:
                return
            except EngineError:
                raise
            except Exception as e:
                raise self._query_error(e, names, used) from None
            if not batch.schema.equals(schema):  # the same types; nullability or metadata may differ
                batch = pa.RecordBatch.from_arrays(batch.columns, schema=schema)
            yield batch

    def _query_error(self, e: Exception, names: list[str], used: set[str]) -> EngineError:
        """The EngineError for DataFusion's exception `e`: a refused statement, a damaged file of a
        series in `used`, or the query's own failure with a hint."""
        msg = str(e).split("\n")[0]
        if any(w in msg for w in ("DML not supported", "DDL not supported", "Statement not supported")):
            return EngineError(f"queries are read-only: {msg.split(': ', 1)[-1]} is not allowed.\n"
                               "  hint: query runs SELECT (and EXPLAIN, DESCRIBE, SHOW); views change only "
                               "through `pondstream run`")
        hint = ""
        if "not found" in msg:
            hint = f"\n  hint: queryable tables: {', '.join(names) or 'none yet (run a view first)'}"
        elif "single SQL statement" in msg:
            hint = "\n  hint: query runs one statement at a time"
        elif "SanityCheckPlan" in msg and "UnknownPartitioning(0)" in str(e):
            hint = ("\n  hint: the query's time range matches no file of the view, and DataFusion cannot sort "
                    "an empty scan; widen the range or drop ORDER BY")
        for name in sorted(used):
            bad = damaged_file(series_dir(self._series_root(), name))
            if bad is not None:
                return damaged(bad[0], bad[1], f"restore it from a backup, or recompute the view from its "
                               f"stream: pondstream run FILE.sql --reset {name.removesuffix('__late')}")
        return EngineError(f"query failed: {msg}{hint}")

    def cat(self, view: str, time_start: str | None = None, time_end: str | None = None) -> pa.Table:
        """The whole result of `cat_stream` as one table."""
        return self.cat_stream(view, time_start, time_end).read_all()

    def cat_stream(self, view: str, time_start: str | None = None,
                   time_end: str | None = None) -> pa.RecordBatchReader:
        """A view's rows in identity (window, key) order, optionally limited to windows starting in
        [time_start, time_end), computed as they are read.

        When the order starts with a window column, the view's files are sorted a piece at a time
        (files whose windows overlap together, about PIECE_ROWS rows each), so memory stays flat; a
        range that matches no file gives no rows without asking DataFusion."""
        names = self.series_names()
        real = self._resolve(view, False, names)
        if real is None:
            raise EngineError(f"no view named {shown(view)}; known: {', '.join(names) or 'none'}")
        d = series_dir(self._series_root(), real)
        meta, schema = series_meta(d)
        tcol = start_column(meta)
        params, conds, bounds = {}, [], {}
        for option, text, op in (("--time-start", time_start, ">="), ("--time-end", time_end, "<")):
            if text is None:
                continue
            if tcol is None:
                raise EngineError(f"{real} has no window-start column, so {option} cannot select its rows; "
                                  "cat it without a time range")
            key = option.strip("-").replace("-", "_")
            params[key] = _timestamp(text, option)
            bounds[key] = params[key].cast(pa.int64()).as_py()
            conds.append(f"{quote(tcol)} {op} ${key}")
        where = f" WHERE {' AND '.join(conds)}" if conds else ""
        order = [quote(c) for c in (meta.get("identity") or []) if c in visible_columns(meta, schema)]
        ctx = query_context()
        register_series(ctx, real, d)
        # Read after registering: windows only ever get added, so these files cover every row registered.
        entries = [e for e in _latest_files(read_snapshot(d))
                   if overlaps(e, tcol, bounds.get("time_start"), bounds.get("time_end"))]
        first = next((c for c in (meta.get("identity") or []) if c in visible_columns(meta, schema)), None)
        split = pieces(entries, first) if first in meta["time_columns"] else None
        if split is None:
            split = [None] if entries else []

        def piece_sql(piece: tuple[int, int] | None) -> tuple[str, dict]:
            sql, p = f"SELECT * FROM {quote(real)}{where}", dict(params)
            if piece is not None:
                sql += f"{' AND' if where else ' WHERE'} {quote(first)} >= $piece_lo AND {quote(first)} <= $piece_hi"
                p |= {"piece_lo": pa.scalar(piece[0], schema.field(first).type),
                      "piece_hi": pa.scalar(piece[1], schema.field(first).type)}
            return sql + (f" ORDER BY {', '.join(order)}" if order else ""), p

        if len(split) == 1:
            sql, p = piece_sql(split[0])
            return self._run(ctx, sql, names, p or None, used={real})
        sql, p = piece_sql(None)
        try:
            out_schema = ctx.sql_with_options(sql, READ_ONLY, param_values=p or None).schema()
        except Exception as e:
            raise self._query_error(e, names, {real}) from None

        def batches() -> Iterator[pa.RecordBatch]:
            for piece in split:
                sql, p = piece_sql(piece)
                with self._run(ctx, sql, names, p, used={real}) as reader:
                    yield from reader

        return pa.RecordBatchReader.from_batches(out_schema, batches())

    def cat_rows(self, view: str, time_start: str | None = None, time_end: str | None = None) -> int | None:
        """How many rows `cat_stream` gives, when the log alone tells: no row of the view was replaced by
        a later version, and each file lies wholly inside the time range. None otherwise (not counted)."""
        names = self.series_names()
        real = self._resolve(view, False, names)
        if real is None:
            return None
        d = series_dir(self._series_root(), real)
        meta, _ = series_meta(d)
        snap = read_snapshot(d)
        if meta.get("identity") and any(e.get("supersedes") for e in snap.tail):
            return None  # base rows are one per identity; only the tail may replace some
        entries = _latest_files(snap)
        tcol = start_column(meta)
        start = _timestamp(time_start, "--time-start").cast(pa.int64()).as_py() if time_start else None
        end = _timestamp(time_end, "--time-end").cast(pa.int64()).as_py() if time_end else None
        total = 0
        for e in entries:
            if not overlaps(e, tcol, start, end):
                continue
            r = e.get("ranges", {}).get(tcol) if tcol else None
            if (start is not None or end is not None) and e["rows"] and (
                    r is None or (start is not None and r[0] < start) or (end is not None and r[1] >= end)):
                return None  # only part of this file is in the range
            total += e["rows"]
        return total

    def series_figures(self) -> dict[str, dict]:
        """Versions, rows written, files and last write of every series: read from the series logs, no
        query, so /metrics can take them at scrape time."""
        return {n: {"versions": s.versions, "rows": s.rows_written, "files": s.files,
                    "last_written_at": s.last_written_at}
                for n in self.series_names() if (s := self._snapshot(n)) is not None}

    def status(self) -> dict:
        """Progress of the last or current run (status.json) and per-view series figures."""
        status = read_json(self.state_dir / "status.json", STATUS_REPAIR, required=False, sealed=False) or {}
        status["state_dir"] = str(self.state_dir)
        status["series"] = self.series_figures()
        for name, s in status["series"].items():
            if name.endswith("__errors") and s["rows"]:
                by = self.query(f"SELECT reason, COUNT(*) AS n FROM {quote(name)} GROUP BY reason ORDER BY n DESC")
                s["by_reason"] = dict(zip(by.column("reason").to_pylist(), by.column("n").to_pylist(), strict=True))
        return status


_LISTINGS = StatCache(16)


def _is_series(d: Path) -> bool:
    return any((d / f).exists() for f in (META, HEAD, LOG))


def _list_series(root: Path) -> tuple[list[str], list[str]]:
    """The series folders under `root`, and the folders with a usable name that hold no series file."""
    try:
        with os.scandir(root) as entries:
            found = sorted(e.name for e in entries if is_valid_name(e.name, MAX_SERIES_NAME) and e.is_dir())
    except (FileNotFoundError, NotADirectoryError):
        return [], []
    series = [n for n in found if _is_series(root / n)]
    return series, [n for n in found if n not in set(series)]


def _latest_files(snap: Snapshot) -> list[dict]:
    """The files a latest-version read opens: the base's and the tail's (each with rows and ranges)."""
    return [*snap.base["files"], *snap.tail]


def _window_text(plan: ViewPlan) -> str:
    """What SHOW MATERIALIZED VIEWS says about a view's kind: its window, join or Top-N."""
    def window(w: WindowSpec) -> str:
        every = f" every {_dur(w.slide_us)}" if w.kind in ("hop", "cumulate") else ""
        return f"{w.kind.upper()} {_dur(w.size_us)}{every}"

    w, j = plan.window, plan.join
    if j is not None:
        return f"WINDOW JOIN {window(j.window)}" if j.window is not None else \
            f"INTERVAL JOIN {_dur(j.lo_us)} to {_dur(j.hi_us)}"
    text = {"running": "none (running)", "select": "none (projection)"}.get(w.kind) or window(w)
    return f"TOP {plan.top.n}, {text}" if plan.top is not None else text


def _check_new_name(name: str, what: str) -> None:
    """A name usable on disk that cannot collide with a series the engine derives from another name."""
    check_name(name, what)
    for suffix in (late_series(""), errors_series("")):
        if name.lower().endswith(suffix):
            raise EngineError(f"{what} {name} ends in {suffix}, which is reserved: a view's late events and a "
                              f"stream's bad records are kept as <name>{late_series('')} and "
                              f"<name>{errors_series('')}; pick another name")


def _timestamp(text: str, option: str) -> pa.Scalar:
    """`text` read as a timestamp (pyarrow's ISO-8601 parser), for binding as a query parameter."""
    try:
        return pa.scalar(text).cast(pa.timestamp("us"))
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        raise EngineError(f"{option} {text[:80]!r} is not a timestamp; write e.g. '2026-01-01 10:00:00'") from None


def _dur(us: int) -> str:
    if us == 0:
        return "0 seconds"
    for unit, n in (("day", 86_400_000_000), ("hour", 3_600_000_000), ("minute", 60_000_000),
                    ("second", 1_000_000), ("millisecond", 1000)):
        if us % n == 0:
            k = us // n
            return f"{k} {unit}{'s' if k != 1 else ''}"
    return f"{us} microseconds"
