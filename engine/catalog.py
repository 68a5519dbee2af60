"""The catalog of streams and views, kept as `catalog.json` in the state dir (atomically replaced).

Definitions are stored as SQL and re-parsed on load, so the file stays readable and a changed
definition is detected by comparing normalized SQL.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from pondstream.sql import CreateFunction, CreateStream, CreateView, SqlError, parse_script
from pondstream.sql.functions import FunctionError, PythonFunction, load
from pondstream.sql.planner import ViewPlan, plan_view
from pondstream.sql.stages import stages
from pondstream.state.errors import EngineError
from pondstream.state.files import damaged, read_json, write_sealed_json
from pondstream.state.paths import is_valid_name
from pondstream.state.series import META

FILE = "catalog.json"
REPAIR = ("restore it from a backup or fix it by hand (it holds the SQL of every stream and view), or move "
          "the state dir aside and run the pipeline again from scratch")


@dataclass
class StreamEntry:
    stmt: CreateStream
    base_dir: str  # relative file paths resolve against the directory the stream was created from


@dataclass
class FunctionEntry:
    stmt: CreateFunction
    fn: PythonFunction  # the module path resolved against the directory it was created from


def python_function(stmt: CreateFunction, base_dir: str) -> PythonFunction:
    path = stmt.module if os.path.isabs(stmt.module) else os.path.join(base_dir, stmt.module)
    return PythonFunction(stmt.name, tuple(t for _, t in stmt.args), stmt.returns, os.path.abspath(path), stmt.attr)


@dataclass
class ViewEntry:
    stmt: CreateView
    plan: ViewPlan
    stage_of: str | None = None  # an internal stage of this view (sql/stages.py): not saved, derived again


def view_as_stream(plan: ViewPlan) -> CreateStream | None:
    """A view another view can read: its visible columns, event time = its window start. (A running
    aggregate has no event time, so it cannot be read as a stream.)"""
    start = plan.start_column
    if start is None or start.startswith("_") or plan.window.kind == "running":
        return None
    schema = pa.schema([f for f in plan.output_schema if not f.name.startswith("_")])
    append_only = plan.window.kind in ("select", "join", "temporal") or (  # never rewrites a row it wrote
        plan.window.kind in ("tumble", "hop", "cumulate") and not plan.lateness_us and not plan.emit_every_us)
    # A join can read a view whose rows never fall below a known bound: a join's rows stay at or above its
    # output watermark, a window view's starts above its watermark less the window size (the lag). A
    # projection passes late rows on, below any watermark, so it cannot feed a join.
    windowed = plan.window.kind in ("tumble", "hop", "cumulate")
    joinable = plan.window.kind in ("join", "temporal") or (windowed and append_only)
    return CreateStream(f"-- view {plan.name}", plan.name, schema, start, 0,
                        {"connector": "view", "append_only": str(append_only).lower(),
                         "joinable": str(joinable).lower(),
                         "watermark_lag_us": str(plan.window.size_us if windowed else 0)})


@dataclass
class Catalog:
    path: Path
    streams: dict[str, StreamEntry] = field(default_factory=dict)
    views: dict[str, ViewEntry] = field(default_factory=dict)
    functions: dict[str, FunctionEntry] = field(default_factory=dict)

    @classmethod
    def load(cls, state_dir: Path) -> Catalog:
        """The catalog in `state_dir`; an EngineError naming catalog.json if it is damaged or missing
        while views have written output (which would otherwise look like an empty state dir)."""
        cat = cls(state_dir / FILE)
        data = read_json(cat.path, REPAIR, required=False, sealed=False)
        if data is None:
            if any((d / META).exists() for d in (state_dir / "series").glob("*")):
                raise damaged(cat.path, "missing, but series/ holds the output of views", REPAIR)
            return cat
        try:
            for name, s in _section(data, "streams").items():
                (stmt,) = parse_script(s["sql"])
                cat.streams[_checked(name, stmt.name, cat.path)] = StreamEntry(stmt, s.get("base_dir", os.getcwd()))
            for name, f in _section(data, "functions").items():  # before the views that call them
                (stmt,) = parse_script(f["sql"])
                entry = FunctionEntry(stmt, PythonFunction(stmt.name, tuple(t for _, t in stmt.args), stmt.returns,
                                                           f["path"], stmt.attr))
                load(entry.fn)
                cat.functions[_checked(name, stmt.name, cat.path)] = entry
            for name, v in _section(data, "views").items():
                (stmt,) = parse_script(v["sql"])
                cat.add_view(_checked(name, stmt.name, cat.path), stmt)
        except FunctionError as e:
            raise EngineError(f"{e}; restore the module, or DROP FUNCTION and the views that call it") from None
        except (SqlError, KeyError, TypeError, ValueError) as e:
            raise damaged(cat.path, f"an entry cannot be read: {e}", REPAIR) from None
        return cat

    def add_view(self, name: str, stmt: CreateView) -> list[str]:
        """Plan a view and its stages (each against the streams and views before it) and add them;
        the names added, in order. On a planning error nothing is added."""
        added: list[str] = []
        try:
            for st in stages(stmt):
                last = st.name == stmt.name
                if not last and self.find(st.name):
                    raise SqlError(f"view {name} runs a subquery as view {st.name}, but that name is taken",
                                   hint="rename the subquery or CTE")
                self.views[name if last else st.name] = ViewEntry(st, plan_view(st, self.stream_stmts()),
                                                                  None if last else name)
                added.append(name if last else st.name)
        except BaseException:
            for n in added:
                del self.views[n]
            raise
        return added

    def stages_of(self, name: str) -> list[str]:
        return [n for n, v in self.views.items() if v.stage_of == name]

    def stream_stmts(self) -> dict[str, CreateStream]:
        """What a view can read FROM: the streams, and the views defined so far (as streams)."""
        out = {n: e.stmt for n, e in self.streams.items()}
        for name, v in self.views.items():
            as_stream = view_as_stream(v.plan)
            if as_stream is not None:
                out[name] = as_stream
        return out

    def source_entry(self, name: str) -> StreamEntry:
        if name in self.streams:
            return self.streams[name]
        return StreamEntry(self.stream_stmts()[name], os.getcwd())

    def find(self, name: str) -> tuple[str, str] | None:
        """('stream' | 'view', canonical name) for a case-insensitive name."""
        for kind, objs in (("stream", self.streams), ("view", self.views)):
            for n in objs:
                if n.lower() == name.lower():
                    return kind, n
        return None

    def views_of(self, stream: str) -> list[str]:
        return [n for n, v in self.views.items() if stream in v.plan.inputs]

    def save(self) -> None:
        """Replace catalog.json atomically (the caller holds the state dir's lock)."""
        data = {
            "streams": {n: {"sql": e.stmt.sql, "base_dir": e.base_dir} for n, e in self.streams.items()},
            "views": {n: {"sql": e.stmt.sql} for n, e in self.views.items() if e.stage_of is None},
            "functions": {n: {"sql": e.stmt.sql, "path": e.fn.path} for n, e in self.functions.items()},
        }
        write_sealed_json(self.path, data)


def _section(data: dict, key: str) -> dict:
    section = data.get(key, {})
    if not isinstance(section, dict):
        raise ValueError(f"{key!r} is not an object")
    return section


def _checked(key: str, stmt_name: str, path: Path) -> str:
    """A catalog key must be the name its SQL declares (up to case: older catalogs kept unquoted names
    as written), and a usable one: it names folders."""
    if key.lower() != stmt_name.lower() or not is_valid_name(key):
        raise damaged(path, f"entry {key[:40]!r} does not match its SQL or is not a usable name", REPAIR)
    return key
