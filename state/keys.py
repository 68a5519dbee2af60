"""Key files: the base's rows sorted by key, so one key's rows are found without a scan.

A base file is sorted by window start then key, which is what time-range queries want; but then one key's
rows are spread over every row group (a 1-minute view with 100 of 100k keys per window puts about half of
all keys in each 64k-row group), so statistics prune nothing and bloom filters little. So consolidation
also writes key files (for views with a window column and keys; a running aggregate's base is sorted by
key already): the rows of some base files (those with no NULL key; `key = literal` never matches NULL)
sorted by key, in batches of BATCH_ROWS. The footer lists the first key of each batch, so a lookup
bisects it and decodes one or two batches per key file.

A key file covers one or more base files (`covers` in the base manifest, and a `_part` column saying
which one each row came from). When a consolidation replaces a base file, the key files covering it are
not rewritten: the new file gets a key file of its own, and a lookup drops the rows of covered files that
are no longer in the base. Small key files are merged (up to MERGE_BYTES), so a lookup opens a few key
files however long the view has run, not one per base file.

Layout: an Arrow IPC stream (the schema and an empty batch, then the batches, LZ4-compressed), each batch
a message that decodes alone given the schema; then the batches' offsets (u64, one more than batches)
and CRC-32s (u32); then a sealed JSON footer (`columns`, `fences`, `batches`, and the CRC-32 of the
offsets and CRCs); then 16 bytes: MAGIC and the footer's length. All integers little-endian; the offsets
stay binary because parsing 1600 of them as JSON costs more than the rest of a lookup. Every byte a lookup uses is checked (the footer by its seal,
the offsets by their CRC, each batch by its own), so a damaged key file is reported, never read as data.
"""

from __future__ import annotations

import bisect
import os
import struct
import threading
import time
import zlib
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pondstream.state.files import damaged, seal, unseal, write_failed

BATCH_ROWS = 1024  # rows per batch; a lookup decodes one or two (0.17 ms each; 2048 rows: 0.28 ms)
PART = "_part"  # which of the key file's covered base files a row came from
MAGIC = b"PSKEYS01"
SUFFIX = ".keys"
KEY_TYPES = "text or integer"
_IPC = pa.ipc.IpcWriteOptions(compression="lz4")  # vs zstd: writes 2x and decodes 1.5x faster, 35% larger
_READ = pa.ipc.IpcReadOptions(use_threads=False)
CACHE_BYTES = 64 << 20  # decoded key-file batches a process keeps (KEY_FILES)
RACY_NS = 2_000_000_000  # a file changed this recently may change again with the same size and mtime


def key_type_ok(t: pa.DataType) -> bool:
    """Key columns a key file can hold (their values bisect as Python str or int, in Arrow's sort order)."""
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_integer(t)


def key_columns(meta: dict[str, Any], schema: pa.Schema) -> tuple[list[str], str | None]:
    """The columns a point lookup must fix (the identity without its window bounds) and, if a lookup cannot
    serve this series, why not."""
    times = meta.get("time_columns") or {}
    keys = [c for c in meta.get("identity") or [] if c not in times]
    if not keys:
        return keys, "it has no key columns"
    hidden = [c for c in keys if c.startswith("_") or c in meta.get("hidden", [])]
    if hidden:
        return keys, f"one of its keys is not a column of the view ({hidden[0]}), so no WHERE can fix it"
    for c in keys:
        if not key_type_ok(schema.field(c).type):
            return keys, f"its key {c} is {schema.field(c).type}; lookups take {KEY_TYPES} keys"
    return keys, None


def write_key_file(path: Path, rows: pa.Table, keys: list[str]) -> dict[str, int]:
    """Write `rows` (base rows plus their `_part`) with no NULL in `keys`, sorted by `keys` (stably: a key's
    rows keep their order, by window for a base), as key file `path`, durably under a temporary name first.
    Returns its rows, bytes and in-memory size."""
    valid = None
    for k in keys:
        v = pc.is_valid(rows.column(k))
        valid = v if valid is None else pc.and_(valid, v)
    rows = rows.filter(valid).replace_schema_metadata(None)
    rows = rows.take(pc.sort_indices(rows, [(c, "ascending") for c in keys]))
    batches = rows.to_batches(max_chunksize=BATCH_ROWS)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, rows.schema, options=_IPC) as w:
        w.write_batch(pa.RecordBatch.from_pylist([], rows.schema))  # the schema goes out with the first batch
        offsets = [sink.tell()]
        for b in batches:
            w.write_batch(b)
            offsets.append(sink.tell())
    data = sink.getvalue().slice(0, offsets[-1])
    crcs = [zlib.crc32(data.slice(a, b - a)) for a, b in zip(offsets, offsets[1:], strict=False)]
    firsts = np.cumsum([0] + [b.num_rows for b in batches[:-1]]) if batches else []
    fence_cols = [pc.take(rows.column(k), pa.array(firsts, pa.int64())).to_pylist() for k in keys]
    fences = fence_cols[0] if len(keys) == 1 else [list(f) for f in zip(*fence_cols, strict=True)]
    index = np.array(offsets, "<u8").tobytes() + np.array(crcs, "<u4").tobytes()
    footer = seal({"columns": keys, "rows": rows.num_rows, "batches": len(crcs), "fences": fences,
                   "index_crc": zlib.crc32(index)})  # one key column: a flat list (parses 4x faster)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.write(index + footer + MAGIC + struct.pack("<Q", len(footer)))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        return {"rows": rows.num_rows, "bytes": path.stat().st_size, "mem": rows.nbytes}
    except OSError as e:
        raise write_failed(path, e) from None


class KeyFile:
    """An open key file: its footer read and verified; `lookup` decodes only the batches a key can be in."""

    def __init__(self, path: Path, repair: str) -> None:
        self.path, self.repair = path, repair
        try:
            self.f = open(path, "rb")  # closed by close(), or by the context manager
        except FileNotFoundError:
            raise damaged(path, "missing", repair) from None
        self.f.seek(0, os.SEEK_END)
        size = self.f.tell()
        if size < 16:
            self._bad("shorter than its trailer")
        self.f.seek(size - 16)
        trailer = self.f.read(16)
        (n,) = struct.unpack("<Q", trailer[8:])
        if trailer[:8] != MAGIC or n > size - 16:
            self._bad("no key-file trailer: cut short or garbled")
        self.f.seek(size - 16 - n)
        footer = unseal(self.f.read(n))
        if footer is None:
            self._bad("its footer's checksum does not match")
        self.columns: list[str] = footer["columns"]
        self.single = len(self.columns) == 1
        self.fences = footer["fences"] if self.single else [tuple(x) for x in footer["fences"]]
        batches = footer["batches"]
        start = size - 16 - n - 12 * batches - 8
        self.f.seek(max(0, start))
        index = self.f.read(12 * batches + 8)
        if start < 0 or zlib.crc32(index) != footer["index_crc"]:
            self._bad("its batch offsets do not match their checksum")
        self.offsets = np.frombuffer(index, "<u8", batches + 1)
        self.crcs = np.frombuffer(index, "<u4", batches, 8 * (batches + 1))
        if int(self.offsets[-1]) != start:
            self._bad("its batches do not end where its index starts")
        self.schema: pa.Schema | None = None
        self._schema_message: bytes | None = None

    def _bad(self, why: str) -> None:
        self.f.close()
        raise damaged(self.path, why, self.repair)

    def batches_for(self, key: tuple) -> range:
        """The batches that may hold `key`: from the last one starting before it to the last starting at it."""
        probe = key[0] if self.single else key
        lo = max(0, bisect.bisect_left(self.fences, probe) - 1)
        return range(lo, bisect.bisect_right(self.fences, probe))

    def batch(self, i: int) -> pa.Table:
        if self.schema is None:
            self.f.seek(0)
            try:
                self.schema = pa.ipc.read_schema(pa.py_buffer(self.f.read(int(self.offsets[0]))))
            except (pa.ArrowException, OSError) as e:
                self._bad(f"unreadable schema: {e}")
        # One reader per batch, without threads: decompressing a few kB on the thread pool costs more in
        # hand-offs (and, in a server, in taking the GIL back) than it saves.
        blob = self._blob(i)
        if self._schema_message is None:
            self._schema_message = self.schema.serialize().to_pybytes()
        reader = pa.ipc.open_stream(pa.BufferReader(self._schema_message + blob), options=_READ)
        return pa.Table.from_batches([reader.read_next_batch()])

    def _blob(self, i: int) -> bytes:
        self.f.seek(int(self.offsets[i]))
        blob = self.f.read(int(self.offsets[i + 1] - self.offsets[i]))
        if zlib.crc32(blob) != self.crcs[i]:
            self._bad(f"batch {i} does not match its checksum")
        return blob

    def lookup(self, key: tuple) -> pa.Table | None:
        """The rows whose key columns equal `key` (None if no batch can hold it)."""
        parts = []
        for i in self.batches_for(key):
            batch = self.batch(i)
            mask = None
            for col, value in zip(self.columns, key, strict=True):
                m = pc.equal(batch.column(col), pa.scalar(value, batch.schema.field(col).type))
                mask = m if mask is None else pc.and_(mask, m)
            parts.append(batch.filter(mask))
        return pa.concat_tables(parts) if parts else None

    def read_all(self) -> list[pa.Table]:
        return [self.batch(i) for i in range(len(self.crcs))]

    def close(self) -> None:
        self.f.close()

    def __enter__(self) -> KeyFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class KeyFileCache:
    """Decoded key-file batches, kept across lookups (the newest CACHE_BYTES of them), so a lookup of a
    key seen before (or of a neighbour in the same batch) reads no file: it finds the key's rows by
    bisecting the batch's keys, held as Python values beside it.

    A key file never changes once written (a new one gets a new name, or at least a new inode), but a
    name can come back (a view dropped and recreated), so entries are by the file's identity: device,
    inode, size and mtime, from one stat per lookup. Files changed less than RACY_NS ago are read but not
    kept (a rewrite within the file system's timestamp granularity could look identical), as git does."""

    def __init__(self, max_bytes: int = CACHE_BYTES) -> None:
        self.max_bytes = max_bytes
        self._files: OrderedDict[str, tuple[tuple, KeyFile]] = OrderedDict()  # path -> (identity, footer)
        self._batches: OrderedDict[tuple, tuple[pa.Table, list, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def clear(self) -> None:
        with self._lock:
            self._files.clear()
            self._batches.clear()
            self._bytes = 0

    def lookup(self, path: Path, repair: str, key: tuple, ident: tuple | None = None) -> pa.Table | None:
        """What `KeyFile(path).lookup(key)` gives: the rows whose key columns equal `key`. `ident`: the
        file's (device, inode, size, mtime) if the caller has just taken them (else they are)."""
        if ident is None:
            try:
                ident = _identity(os.stat(path))
            except FileNotFoundError:
                raise damaged(path, "missing", repair) from None
        keep = time.time_ns() - ident[3] > RACY_NS
        name = str(path)
        with self._lock:
            cached = self._files.get(name)
            if cached is not None:
                self._files.move_to_end(name)
        kf = cached[1] if cached is not None and cached[0] == ident and keep else None
        opened = None
        try:
            if kf is None:
                kf = opened = KeyFile(path, repair)
                if _identity(os.fstat(kf.f.fileno())) != ident:
                    keep = False  # replaced since the stat: read it, keep nothing
                if keep:
                    with self._lock:
                        self._files[name] = (ident, kf)
                        while len(self._files) > 4096:
                            self._files.popitem(last=False)
            probe = key[0] if kf.single else key
            parts = []
            for i in kf.batches_for(key):
                found = self._cached((ident, i)) if keep else None
                if found is None:
                    if opened is None:
                        opened = KeyFile(path, repair)
                        if _identity(os.fstat(opened.f.fileno())) != ident:
                            keep = False
                    found = _decoded(opened, i)
                    if keep:
                        self._put((ident, i), found)
                table, keys, _ = found
                lo, hi = bisect.bisect_left(keys, probe), bisect.bisect_right(keys, probe)
                parts.append(table.slice(lo, hi - lo))
        finally:
            if opened is not None:
                opened.close()
        return pa.concat_tables(parts) if parts else None

    def _cached(self, at: tuple) -> tuple[pa.Table, list, int] | None:
        with self._lock:
            found = self._batches.get(at)
            if found is not None:
                self._batches.move_to_end(at)
            return found

    def _put(self, at: tuple, found: tuple[pa.Table, list, int]) -> None:
        with self._lock:
            if at in self._batches:
                return
            self._batches[at] = found
            self._bytes += found[2]
            while self._bytes > self.max_bytes and self._batches:
                _, (_, _, n) = self._batches.popitem(last=False)
                self._bytes -= n


def _identity(st: os.stat_result) -> tuple:
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def _decoded(kf: KeyFile, i: int) -> tuple[pa.Table, list, int]:
    """Batch `i` of `kf`, its keys as Python values (tuples for several key columns, in the order the key
    file is sorted in: Arrow sorts text by UTF-8 bytes, which is Python's order of str), and its size."""
    table = kf.batch(i)
    cols = [table.column(c).to_pylist() for c in kf.columns]
    keys = cols[0] if kf.single else list(zip(*cols, strict=True))
    return table, keys, table.nbytes + 64 * len(keys)


KEY_FILES = KeyFileCache()


def live_parts(entry: dict[str, Any], files: set[str]) -> list[int] | None:
    """The `_part` numbers of key file `entry` whose base files are in `files`; None if all of them are."""
    live = [i for i, (name, _) in enumerate(entry["covers"]) if name in files]
    return None if len(live) == len(entry["covers"]) else live


def only_parts(rows: pa.Table, parts: list[int] | None) -> pa.Table:
    """`rows` without the ones from base files not wanted (replaced since, or outside a query's range)."""
    if parts is None:
        return rows
    return rows.filter(pc.is_in(rows.column(PART), pa.array(parts, pa.int32())))
