"""file:series: each flush of a view is a new version, one Parquet file plus one log entry.

The entries live in RocksDB and are committed in the same write batch as the state that produced them,
so a crash before the commit leaves the file invisible (and it is overwritten by the retried flush).
After each commit the entry is appended to `<series>/_log.jsonl`, the copy that queries read without
touching RocksDB, and `_head.json` records how many versions there are; on start-up both are rewritten
from RocksDB, the truth. Every entry, `_head.json` and `_series.json` carry a checksum, and
`_series.json` the checksum of `_schema.arrow`, so a reader can tell a damaged series from a short one.

Versions do not pile up: consolidation (state/consolidate.py) folds versions 1..B into the *base*, a few
large files holding the latest row per identity (and *history* files with the rows later versions
replaced, kept for `history_retention`), described by `_base.json`. The log then holds only the tail,
versions B+1..N, so opening a series costs the base's few entries plus a short tail, whatever its age.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pondstream.state import leases
from pondstream.state.files import (
    DamagedFileError,
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
BASE = "_base.json"
EMPTY = "_empty.parquet"
ROW_GROUP = 64 * 1024
DATA_FILE_PREFIXES = ("v", "b", "h", "k")  # tail versions, base files, history files, key files
RETRY = 20  # a reader that meets a consolidation half-published reads again (it takes milliseconds)


def empty_base() -> dict[str, Any]:
    """The base of a series no consolidation has touched: versions 1..0."""
    return {"version": 0, "gen": 0, "files": [], "history": [], "history_from": 0, "rows_written": 0,
            "versions_dropped": 0, "retired": [], "keys": []}


def _iso(us: int | None) -> str | None:
    if us is None:
        return None
    return (dt.datetime(1970, 1, 1) + dt.timedelta(microseconds=us)).isoformat()


def time_ranges(table: pa.Table, columns: Iterable[str]) -> dict[str, list[int]]:
    """Each time column's [min, max] in µs (columns with no values left out): a file's pruning bounds."""
    ranges = {}
    for col in columns:
        mm = pc.min_max(table.column(col))
        if mm["min"].is_valid:
            ranges[col] = [mm["min"].cast(pa.int64()).as_py(), mm["max"].cast(pa.int64()).as_py()]
    return ranges


def version_file(version: int) -> str:
    return f"v{version:010d}.parquet"


class SeriesStore:
    """Writes versions of named series under `root` (the state dir's `series/`)."""

    def __init__(self, root: str | Path, store: StateStore) -> None:
        self.root, self.store = Path(root), store
        self.written: set[str] = set()  # series this process wrote: what the runner consolidates
        self.lock = threading.Lock()  # the folder's log and head are rewritten by one thread at a time
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
        if not (d / EMPTY).exists():  # a file no predicate prunes: a query always has one partition to plan
            _write_parquet(schema.append(pa.field("_version", pa.int64())).empty_table(), d / EMPTY)
        if not (d / HEAD).exists():
            self._sync_log(name)

    def write(self, txn: Txn, name: str, table: pa.Table, supersedes: bool = False,
              watermark: int | None = None) -> dict[str, Any]:
        """Write `table` as the next version of `name` (visible once `txn` commits)."""
        version = txn.meta.get(f"series/{name}", self.version(name)) + 1
        d = self.dir(name)
        meta, _ = series_meta(d)
        ranges = time_ranges(table, meta["time_columns"])
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
        txn.after_commit.append(lambda: self._append(d, entry))
        self.written.add(name)
        return entry

    def entries(self, name: str) -> list[dict[str, Any]]:
        """The tail: versions after the base, each still its own file."""
        p = self._prefix(name)
        return [json.loads(v) for _, v in self.store.scan(p, prefix_end(p))]

    def base(self, name: str) -> dict[str, Any]:
        raw = self.store.db.get(key_prefix(b"b", name))
        return empty_base() if raw is None else json.loads(raw)

    def put_base(self, txn: Txn, name: str, base: dict[str, Any], expired: list[str]) -> None:
        """Commit a new base: its entry replaces the tail entries of the versions it folded in. Once it
        is durable the folder is rewritten to match and the `expired` files (nothing names them) go.

        A consolidation may run on another thread while checkpoints append versions: both publish
        under `lock`, an append the rewrite already holds is skipped, and nothing is swept by pattern
        (a version file of a checkpoint not yet committed must survive)."""
        p = self._prefix(name)
        txn.put(key_prefix(b"b", name), json.dumps(base).encode())
        txn.delete_range(p, p + u64(base["version"] + 1))

        def publish() -> None:
            with self.lock:
                self._publish(name, self.entries(name), self.base(name))
            for f in expired:
                safe_remove(self.root, self.dir(name) / f)
        txn.after_commit.append(publish)

    def _append(self, d: Path, entry: dict[str, Any]) -> None:
        """Log first, then the head: a crash in between leaves one entry more than the head, never fewer."""
        with self.lock:
            head = read_json(d / HEAD)
            if head.get("versions", 0) >= entry["version"]:
                return  # a consolidation publishing in between already wrote it
            append_line(d / LOG, sealed_line(entry))
            write_sealed_json(d / HEAD, {**head, "versions": entry["version"]})

    def _publish(self, name: str, entries: list[dict[str, Any]], base: dict[str, Any]) -> None:
        """Base, log, then head (so a reader that meets a mix sees the versions disagree and reads again)."""
        d = self.dir(name)
        versions = entries[-1]["version"] if entries else base["version"]
        write_sealed_json(d / BASE, base)
        write_atomic(d / LOG, b"".join(sealed_line(e) for e in entries))
        write_sealed_json(d / HEAD, {"versions": versions, "base": base["version"], "gen": base["gen"]})

    def recover(self) -> None:
        """Make every series folder match RocksDB: rewrite logs, delete files of uncommitted versions."""
        for d in sorted(p for p in self.root.iterdir() if p.is_dir() and is_valid_name(p.name, MAX_SERIES_NAME)):
            self._sync_log(d.name)

    def _sync_log(self, name: str) -> None:
        """Rewrite one series' base, log and head from RocksDB; delete data files nothing names (at
        start-up, when nothing else writes)."""
        d = self.dir(name)
        leases.create(d)
        entries, base = self.entries(name), self.base(name)
        named = [*entries, *base["files"], *base["history"], *base["retired"], *base.get("keys", [])]
        keep = {e["file"] for e in named}
        self._publish(name, entries, base)
        for f in [*d.glob("*.parquet*"), *d.glob("*.keys*")]:
            if f.name[:1] in DATA_FILE_PREFIXES and f.name not in keep:
                safe_remove(self.root, f)

    def drop(self, txn: Txn, name: str) -> None:
        p = self._prefix(name)
        d = self.dir(name)
        txn.delete_range(p, prefix_end(p))
        b = key_prefix(b"b", name)
        txn.delete_range(b, prefix_end(b))
        txn.put_meta(f"series/{name}", 0)
        txn.after_commit.append(lambda: safe_remove(self.root, d))


def _write_parquet(table: pa.Table, path: Path, **options: Any) -> None:
    """Write durably under a temporary name, then rename (page checksums let readers detect damage)."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        pq.write_table(table, tmp, row_group_size=ROW_GROUP, compression="zstd", write_page_checksum=True,
                       **options)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        raise write_failed(path, e) from None


@dataclass
class Snapshot:
    """One consistent view of a series: its base (versions 1..base.version folded) and its tail."""

    base: dict[str, Any]
    tail: list[dict[str, Any]]

    @property
    def versions(self) -> int:
        return self.tail[-1]["version"] if self.tail else self.base["version"]

    @property
    def rows_written(self) -> int:
        return self.base["rows_written"] + sum(e["rows"] for e in self.tail)

    @property
    def files(self) -> int:
        """Data files a latest-version query may open (base and tail; history only for old versions)."""
        return len(self.base["files"]) + len(self.tail)

    @property
    def last_written_at(self) -> str | None:
        return self.tail[-1]["written_at"] if self.tail else self.base.get("written_at")


class _Moved(Exception):
    """The files changed under the reader (a consolidation publishing): read again."""


def read_snapshot(d: Path) -> Snapshot:
    """The base and tail of series folder `d`, verified and consistent with each other."""
    for _ in range(RETRY):
        try:
            return _read_snapshot(d)
        except (_Moved, DamagedFileError):  # a consolidation publishing (base, log, head) as we read
            time.sleep(0.005)
    try:
        return _read_snapshot(d)  # still inconsistent: the damage is real, and this names it
    except _Moved:
        raise damaged(d / HEAD, f"{HEAD}, {BASE} and {LOG} kept disagreeing about which versions they hold") from None


def _read_snapshot(d: Path) -> Snapshot:
    if not (d / HEAD).exists():
        raise damaged(d / HEAD, "missing; a series written by an older pondstream has none yet")
    head = read_json(d / HEAD)  # the head first: a concurrent append writes the log first, then the head
    n, b = head.get("versions"), head.get("base", 0)
    if not isinstance(n, int) or not isinstance(b, int) or not 0 <= b <= n:
        raise damaged(d / HEAD, "no version count")
    base = read_json(d / BASE) if b else empty_base()
    if base.get("version") != b or base.get("gen", 0) != head.get("gen", 0):
        raise _Moved
    return Snapshot(base, _read_log(d, b, n))


def _read_log(d: Path, b: int, n: int) -> list[dict[str, Any]]:
    """Tail entries b+1..n, verified: each line's checksum, versions in order, at least n - b of them.
    A torn last line beyond that count (a crash mid-append) is ignored."""
    try:
        data = (d / LOG).read_bytes()
    except FileNotFoundError:
        if n == b:
            return []
        raise damaged(d / LOG, f"missing, but {HEAD} records {n} versions") from None
    lines = data.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    out: list[dict[str, Any]] = []
    for i, line in enumerate(lines):
        e = unseal(line)
        want = b + len(out) + 1
        if e is not None and not out and e.get("version") != want and e.get("file", "").startswith("v"):
            raise _Moved  # a log rewritten by a consolidation the head does not show yet (or the reverse)
        if e is None or e.get("version") != want or e.get("file") != version_file(want):
            if i < len(lines) - 1:
                raise damaged(d / LOG, f"line {i + 1} is garbled or out of order")
            if len(out) >= n - b:
                break
            raise damaged(d / LOG, f"cut short or garbled at its end: {len(out)} whole entries of the {n - b} "
                          f"versions {HEAD} records")
        out.append(e)
    if len(out) < n - b:
        raise damaged(d / LOG, f"cut short: it holds {len(out)} of the {n - b} versions {HEAD} records")
    return out


def read_log(d: Path) -> list[dict[str, Any]]:
    """The tail entries of series folder `d` (versions not yet consolidated)."""
    return read_snapshot(d).tail


def start_column(meta: dict[str, Any]) -> str | None:
    """The column holding window starts (a view's window column, a late series' event time): what
    `--time-start`/`--time-end` and lookups' window ranges filter, and what file ranges prune by."""
    return next((c for c, b in meta.get("time_columns", {}).items() if b == "start"), None)


def window_column(meta: dict[str, Any]) -> str | None:
    """The window-start column among a series' identity (None for late/error series and running
    aggregates): bases are sorted by it, and a tail version can replace only rows of its windows."""
    return next((c for c in meta.get("identity") or [] if meta["time_columns"].get(c) == "start"), None)


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

