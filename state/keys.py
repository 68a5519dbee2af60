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
import zlib
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
        message = pa.ipc.read_message(pa.py_buffer(self._blob(i)))
        return pa.Table.from_batches([pa.ipc.read_record_batch(message, self.schema)])

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


def live_parts(entry: dict[str, Any], files: set[str]) -> list[int] | None:
    """The `_part` numbers of key file `entry` whose base files are in `files`; None if all of them are."""
    live = [i for i, (name, _) in enumerate(entry["covers"]) if name in files]
    return None if len(live) == len(entry["covers"]) else live


def only_parts(rows: pa.Table, parts: list[int] | None) -> pa.Table:
    """`rows` without the ones from base files not wanted (replaced since, or outside a query's range)."""
    if parts is None:
        return rows
    return rows.filter(pc.is_in(rows.column(PART), pa.array(parts, pa.int32())))
