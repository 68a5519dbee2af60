"""The catalog of streams and views, kept as `catalog.json` in the state dir (atomically replaced).

Definitions are stored as SQL and re-parsed on load, so the file stays readable and a changed
definition is detected by comparing normalized SQL.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from pondstream.sql import CreateStream, CreateView, parse_script
from pondstream.sql.planner import ViewPlan, plan_view

FILE = "catalog.json"


@dataclass
class StreamEntry:
    stmt: CreateStream
    base_dir: str  # relative file paths resolve against the directory the stream was created from


@dataclass
class ViewEntry:
    stmt: CreateView
    plan: ViewPlan


def view_as_stream(plan: ViewPlan) -> CreateStream | None:
    """A view another view can read: its visible columns, event time = its window start. (A running
    aggregate has no event time, so it cannot be read as a stream.)"""
    start = plan.start_column
    if start is None or start.startswith("_") or plan.window.kind == "running":
        return None
    schema = pa.schema([f for f in plan.output_schema if not f.name.startswith("_")])
    return CreateStream(f"-- view {plan.name}", plan.name, schema, start, 0, {"connector": "view"})


@dataclass
class Catalog:
    path: Path
    streams: dict[str, StreamEntry] = field(default_factory=dict)
    views: dict[str, ViewEntry] = field(default_factory=dict)

    @classmethod
    def load(cls, state_dir: Path) -> Catalog:
        cat = cls(state_dir / FILE)
        if not cat.path.exists():
            return cat
        data = json.loads(cat.path.read_text())
        for name, s in data.get("streams", {}).items():
            (stmt,) = parse_script(s["sql"])
            cat.streams[name] = StreamEntry(stmt, s.get("base_dir", os.getcwd()))
        for name, v in data.get("views", {}).items():
            (stmt,) = parse_script(v["sql"])
            cat.views[name] = ViewEntry(stmt, plan_view(stmt, cat.stream_stmts()))
        return cat

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
        return [n for n, v in self.views.items() if v.plan.stream == stream]

    def save(self) -> None:
        data = {
            "streams": {n: {"sql": e.stmt.sql, "base_dir": e.base_dir} for n, e in self.streams.items()},
            "views": {n: {"sql": e.stmt.sql} for n, e in self.views.items()},
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, self.path)
