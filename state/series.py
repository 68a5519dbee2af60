"""file:series: each flush of a view is a new version, one Parquet file plus one log entry.

The entries live in RocksDB and are committed in the same write batch as the state that produced them,
so a crash before the commit leaves the file invisible (and it is overwritten by the retried flush).
After each commit the entry is appended to `<series>/_log.jsonl`, the copy that queries read without
touching RocksDB, and `_head.json` records how many versions that log must hold; on start-up both are
rewritten from RocksDB, the truth. Every entry, `_head.json` and `_series.json` carry a checksum, and
`_series.json` the checksum of `_schema.arrow`, so a reader can tell a damaged series from a short one.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pondstream.state.files import (
    append_line,
    crc,
    damaged,
    read_json,
    sealed_line,
    unseal,
    write_atomic,
    write_failed,
    write_sealed_json,
)
from pondstream.state.paths import (
    MAX_SERIES_NAME,
    check_name,
    is_valid_name,
    key_prefix,
    safe_remove,
    series_dir,
)
from pondstream.state.store import StateStore, Txn, prefix_end, u64

LOG = "_log.jsonl"
META = "_series.json"
SCHEMA = "_schema.arrow"
HEAD = "_head.json"
ROW_GROUP = 64 * 1024


def _iso(us: int | None) -> str | None:
    if us is None:
        return None
    return (dt.datetime(1970, 1, 1) + dt.timedelta(microseconds=us)).isoformat()


def version_file(version: int) -> str:
    return f"v{version:010d}.parquet"


class SeriesStore:
    """Writes versions of named series under `root` (the state dir's `series/`)."""

    def __init__(self, root: str | Path, store: StateStore) -> None:
        self.root, self.store = Path(root), store
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise write_failed(self.root, e) from None

    def dir(self, name: str) -> Path:
        """The folder of series `name` (the name checked, the folder inside `root`)."""
        return series_dir(self.root, name)

    def _prefix(self, name: str) -> bytes:
        return key_prefix(b"v", name)

    def version(self, name: str) -> int:
        return int(self.store.get_meta(f"series/{check_name(name, 'series name', MAX_SERIES_NAME)}", 0))

    def ensure(self, name: str, schema: pa.Schema, kind: str, identity: list[str] | None = None,
               time_columns: dict[str, str] | None = None, hidden: list[str] | None = None) -> None:
        """Create the series folder and its description (schema, identity, time columns) if new."""
        d = self.dir(name)
        try:
            d.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise write_failed(d, e) from None
        schema_bytes = schema.serialize().to_pybytes()
        write_atomic(d / SCHEMA, schema_bytes)
        write_sealed_json(d / META, {"name": name, "kind": kind, "identity": identity or [],
                                     "time_columns": time_columns or {}, "hidden": hidden or [],
                                     "schema_crc": crc(schema_bytes)})
        if not (d / HEAD).exists():
            self._sync_log(name)

    def write(self, txn: Txn, name: str, table: pa.Table, supersedes: bool = False,
              watermark: int | None = None) -> dict[str, Any]:
        """Write `table` as the next version of `name` (visible once `txn` commits)."""
        version = txn.meta.get(f"series/{name}", self.version(name)) + 1
        d = self.dir(name)
        meta, _ = series_meta(d)
        ranges = {}
        for col in meta["time_columns"]:
            arr = table.column(col)
            mm = pc.min_max(arr)
            lo, hi = mm["min"], mm["max"]
            if lo.is_valid:
                ranges[col] = [lo.cast(pa.int64()).as_py(), hi.cast(pa.int64()).as_py()]
        out = table.append_column("_version", pa.array([version] * table.num_rows, pa.int64()))
        path = d / version_file(version)
        _write_parquet(out, path)
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
        txn.after_commit.append(lambda: _append_entry(d, entry))
        return entry

    def entries(self, name: str) -> list[dict[str, Any]]:
        p = self._prefix(name)
        return [json.loads(v) for _, v in self.store.scan(p, prefix_end(p))]

    def recover(self) -> None:
        """Make every series folder match RocksDB: rewrite logs, delete files of uncommitted versions."""
        for d in sorted(p for p in self.root.iterdir() if p.is_dir() and is_valid_name(p.name, MAX_SERIES_NAME)):
            self._sync_log(d.name)

    def _sync_log(self, name: str) -> None:
        """Rewrite one series' log and head from RocksDB; delete Parquet files no entry names."""
        d = self.dir(name)
        entries = self.entries(name)
        keep = {e["file"] for e in entries}
        write_atomic(d / LOG, b"".join(sealed_line(e) for e in entries))
        write_sealed_json(d / HEAD, {"versions": len(entries)})
        for f in d.glob("v*.parquet*"):
            if f.name not in keep:
                safe_remove(self.root, f)

    def drop(self, txn: Txn, name: str) -> None:
        p = self._prefix(name)
        d = self.dir(name)
        txn.delete_range(p, prefix_end(p))
        txn.put_meta(f"series/{name}", 0)
        txn.after_commit.append(lambda: safe_remove(self.root, d))


def _write_parquet(table: pa.Table, path: Path) -> None:
    """Write durably under a temporary name, then rename (page checksums let readers detect damage)."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        pq.write_table(table, tmp, row_group_size=ROW_GROUP, compression="zstd", write_page_checksum=True)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        raise write_failed(path, e) from None


def _append_entry(d: Path, entry: dict[str, Any]) -> None:
    """Log first, then the head: a crash in between leaves one entry more than the head, never fewer."""
    append_line(d / LOG, sealed_line(entry))
    write_sealed_json(d / HEAD, {"versions": entry["version"]})


def read_head(d: Path) -> int:
    """How many versions the log must hold."""
    if not (d / HEAD).exists():
        raise damaged(d / HEAD, "missing; a series written by an older pondstream has none yet")
    head = read_json(d / HEAD)
    n = head.get("versions") if head else None
    if not isinstance(n, int) or n < 0:
        raise damaged(d / HEAD, "no version count")
    return n


def read_log(d: Path) -> list[dict[str, Any]]:
    """Committed entries, verified: each line's checksum, versions 1..N in order, and at least as many
    as `_head.json` records. A torn last line beyond that count (a crash mid-append) is ignored."""
    n = read_head(d)  # the head first: a concurrent append writes the log first, then the head
    try:
        data = (d / LOG).read_bytes()
    except FileNotFoundError:
        if n == 0:
            return []
        raise damaged(d / LOG, f"missing, but {HEAD} records {n} versions") from None
    lines = data.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    out: list[dict[str, Any]] = []
    for i, line in enumerate(lines):
        e = unseal(line)
        if e is None or e.get("version") != len(out) + 1 or e.get("file") != version_file(len(out) + 1):
            if i < len(lines) - 1:
                raise damaged(d / LOG, f"line {i + 1} is garbled or out of order")
            if len(out) >= n:
                break
            raise damaged(d / LOG, f"cut short or garbled at its end: {len(out)} whole entries of the {n} "
                          f"versions {HEAD} records")
        out.append(e)
    if len(out) < n:
        raise damaged(d / LOG, f"cut short: it holds {len(out)} of the {n} versions {HEAD} records")
    return out


def series_meta(d: Path) -> tuple[dict[str, Any], pa.Schema]:
    """The series description and schema, verified against each other."""
    meta = read_json(d / META)
    try:
        raw = (d / SCHEMA).read_bytes()
    except FileNotFoundError:
        raise damaged(d / SCHEMA, "missing") from None
    if crc(raw) != meta.get("schema_crc"):
        raise damaged(d / SCHEMA, f"its checksum does not match the one in {META}")
    try:
        schema = pa.ipc.read_schema(pa.py_buffer(raw))
    except (pa.ArrowInvalid, OSError) as e:
        raise damaged(d / SCHEMA, f"unreadable: {e}") from None
    return meta, schema

