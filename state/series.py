"""file:series: each flush of a view is a new version, one Parquet file plus one log entry.

The entries live in RocksDB and are committed in the same write batch as the state that produced them,
so a crash before the commit leaves the file invisible (and it is overwritten by the retried flush).
After each commit the entry is appended to `<series>/_log.jsonl`, the copy that queries read without
touching RocksDB; on start-up that copy is rewritten from RocksDB, the truth.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pondstream.state.store import StateStore, Txn, prefix_end, u64

LOG = "_log.jsonl"
META = "_series.json"
SCHEMA = "_schema.arrow"
ROW_GROUP = 64 * 1024


def _iso(us: int | None) -> str | None:
    if us is None:
        return None
    return (dt.datetime(1970, 1, 1) + dt.timedelta(microseconds=us)).isoformat()


def _fsync_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class SeriesStore:
    """Writes versions of named series under `root` (the state dir's `series/`)."""

    def __init__(self, root: str | Path, store: StateStore) -> None:
        self.root, self.store = Path(root), store
        self.root.mkdir(parents=True, exist_ok=True)

    def _prefix(self, name: str) -> bytes:
        return b"v/" + name.encode() + b"\x00"

    def version(self, name: str) -> int:
        return int(self.store.get_meta(f"series/{name}", 0))

    def ensure(self, name: str, schema: pa.Schema, kind: str, identity: list[str] | None = None,
               time_columns: dict[str, str] | None = None, hidden: list[str] | None = None) -> None:
        """Create the series folder and its description (schema, identity, time columns) if new."""
        d = self.root / name
        d.mkdir(parents=True, exist_ok=True)
        meta = {"name": name, "kind": kind, "identity": identity or [], "time_columns": time_columns or {},
                "hidden": hidden or []}
        _fsync_write(d / META, json.dumps(meta, indent=1).encode())
        _fsync_write(d / SCHEMA, schema.serialize().to_pybytes())

    def write(self, txn: Txn, name: str, table: pa.Table, supersedes: bool = False,
              watermark: int | None = None) -> dict[str, Any]:
        """Write `table` as the next version of `name` (visible once `txn` commits)."""
        version = txn.meta.get(f"series/{name}", self.version(name)) + 1
        d = self.root / name
        meta = json.loads((d / META).read_text())
        ranges = {}
        for col in meta["time_columns"]:
            arr = table.column(col)
            mm = pc.min_max(arr)
            lo, hi = mm["min"], mm["max"]
            if lo.is_valid:
                ranges[col] = [lo.cast(pa.int64()).as_py(), hi.cast(pa.int64()).as_py()]
        out = table.append_column("_version", pa.array([version] * table.num_rows, pa.int64()))
        path = d / f"v{version:010d}.parquet"
        tmp = path.with_name(path.name + ".tmp")
        pq.write_table(out, tmp, row_group_size=ROW_GROUP, compression="zstd")
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        starts = [r for c, r in ranges.items() if meta["time_columns"][c] == "start"]
        ends = [r for c, r in ranges.items() if meta["time_columns"][c] == "end"]
        entry = {
            "version": version, "file": path.name, "rows": table.num_rows,
            "min_event_time": _iso(min(r[0] for r in starts)) if starts else None,
            "max_event_time": _iso(max(r[1] for r in ends)) if ends else (
                _iso(max(r[1] for r in starts)) if starts else None),
            "ranges": ranges, "written_at": dt.datetime.now(dt.UTC).replace(tzinfo=None).isoformat(),
            "supersedes": supersedes, "bytes": path.stat().st_size, "watermark": watermark,
        }
        txn.put(self._prefix(name) + u64(version), json.dumps(entry).encode())
        txn.put_meta(f"series/{name}", version)
        txn.after_commit.append(lambda: _append_log(d / LOG, entry))
        return entry

    def entries(self, name: str) -> list[dict[str, Any]]:
        p = self._prefix(name)
        return [json.loads(v) for _, v in self.store.scan(p, prefix_end(p))]

    def recover(self) -> None:
        """Make every series folder match RocksDB: rewrite logs, delete files of uncommitted versions."""
        for d in sorted(p for p in self.root.iterdir() if p.is_dir()):
            entries = self.entries(d.name)
            keep = {e["file"] for e in entries}
            _fsync_write(d / LOG, b"".join(json.dumps(e).encode() + b"\n" for e in entries))
            for f in d.glob("v*.parquet*"):
                if f.name not in keep:
                    f.unlink()

    def drop(self, txn: Txn, name: str) -> None:
        p = self._prefix(name)
        txn.delete_range(p, prefix_end(p))
        txn.put_meta(f"series/{name}", 0)
        txn.after_commit.append(lambda: shutil.rmtree(self.root / name, ignore_errors=True))


def _append_log(path: Path, entry: dict[str, Any]) -> None:
    with open(path, "ab") as f:
        f.write(json.dumps(entry).encode() + b"\n")
        f.flush()
        os.fsync(f.fileno())
