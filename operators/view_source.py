"""A view read as a stream: the upstream view's committed versions, in order, one batch per version.
Versions already consolidated into the upstream's base (a view added after they were folded) come as
one batch: the base's rows, the latest of each window and key as of its version.

The event time is the upstream's window start; the watermark is the upstream's own watermark when it
wrote the version (every upstream window that could still change starts after it), so a downstream
window closes exactly when the upstream windows it covers are final.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pondstream.operators.source import Source, SourceBatch
from pondstream.state.leases import Lease


class ViewSource(Source):
    def __init__(self, schema: pa.Schema, series_dir: Path, entries: Callable[[], list[dict[str, Any]]],
                 upstream_done: Callable[[], bool], position: dict | None = None,
                 base: Callable[[], dict[str, Any]] | None = None) -> None:
        self.schema, self.dir, self.entries, self.upstream_done = schema, series_dir, entries, upstream_done
        self.base = base or (lambda: {"version": 0, "files": []})
        self.version = int((position or {}).get("version", 0))
        self.bounded = True  # ends when the upstream's bounded source has ended and been read to the end

    @property
    def finished(self) -> bool:  # type: ignore[override]
        return self.upstream_done() and self.base()["version"] <= self.version and \
            not any(e["version"] > self.version for e in self.entries())

    @finished.setter
    def finished(self, _value: bool) -> None:
        pass

    def describe(self) -> str:
        return f"view {self.dir.name} (read up to version {self.version})"

    def position(self) -> dict[str, Any]:
        return {"version": self.version}

    def read(self) -> SourceBatch | None:
        with Lease(self.dir):  # the files named below stay while they are read
            base = self.base()
            if base["version"] > self.version:  # consolidated before this view read them (a view added later)
                files = [pq.read_table(self.dir / f["file"], columns=self.schema.names) for f in base["files"]]
                table = pa.concat_tables(files).cast(self.schema) if files else self.schema.empty_table()
                self.version = base["version"]
                return SourceBatch(table, self.position(), watermark=base.get("watermark"))
            entry = next((e for e in self.entries() if e["version"] > self.version), None)
            if entry is None:
                return None
            table = pq.read_table(self.dir / entry["file"], columns=self.schema.names).cast(self.schema)
        self.version = entry["version"]
        return SourceBatch(table, self.position(), watermark=entry.get("watermark"))
