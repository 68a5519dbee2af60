"""Arrow batches as PostgreSQL text-format rows: type OIDs for RowDescription, DataRows built with numpy.

buenavista encodes a row at a time in Python (a converter call per value and a socket write per row),
which is far too slow for view scans. Here every column is cast to text once per batch with pyarrow
compute, then the DataRow messages of the whole batch are assembled in one numpy buffer: per-row
lengths and offsets are computed as arrays and each column's UTF-8 bytes are scattered into place with
a single fancy-index copy. Python work per batch is per column, not per row.
"""

from __future__ import annotations

import math
import struct

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

TEXT_OID = 25
BOOL_OID, INT2_OID, INT4_OID, INT8_OID = 16, 21, 23, 20
FLOAT4_OID, FLOAT8_OID, NUMERIC_OID = 700, 701, 1700
DATE_OID, TIME_OID, TIMESTAMP_OID, TIMESTAMPTZ_OID = 1082, 1083, 1114, 1184
BYTEA_OID, INTERVAL_OID = 17, 1186

# OID -> (name as format_type() shows it, typlen); the types the server ever describes a column as
PG_TYPES: dict[int, tuple[str, int]] = {
    BOOL_OID: ("boolean", 1), INT2_OID: ("smallint", 2), INT4_OID: ("integer", 4), INT8_OID: ("bigint", 8),
    FLOAT4_OID: ("real", 4), FLOAT8_OID: ("double precision", 8), NUMERIC_OID: ("numeric", -1),
    TEXT_OID: ("text", -1), DATE_OID: ("date", 4), TIME_OID: ("time without time zone", 8),
    TIMESTAMP_OID: ("timestamp without time zone", 8), TIMESTAMPTZ_OID: ("timestamp with time zone", 8),
    BYTEA_OID: ("bytea", -1), INTERVAL_OID: ("interval", 16),
}


def pg_oid(t: pa.DataType) -> int:
    """The PostgreSQL type a column of Arrow type `t` is described as (text for anything unusual)."""
    if pa.types.is_boolean(t):
        return BOOL_OID
    if pa.types.is_int8(t) or pa.types.is_int16(t) or pa.types.is_uint8(t):
        return INT2_OID
    if pa.types.is_int32(t) or pa.types.is_uint16(t):
        return INT4_OID
    if pa.types.is_int64(t) or pa.types.is_uint32(t):
        return INT8_OID
    if pa.types.is_uint64(t) or pa.types.is_decimal(t):
        return NUMERIC_OID
    if pa.types.is_float16(t) or pa.types.is_float32(t):
        return FLOAT4_OID
    if pa.types.is_float64(t):
        return FLOAT8_OID
    if pa.types.is_timestamp(t):
        return TIMESTAMPTZ_OID if t.tz else TIMESTAMP_OID
    if pa.types.is_date(t):
        return DATE_OID
    if pa.types.is_time(t):
        return TIME_OID
    if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t):
        return BYTEA_OID
    return TEXT_OID


def _text(col: pa.Array) -> pa.Array:
    """One column as PostgreSQL's text output of its type (nulls stay null)."""
    t = col.type
    if pa.types.is_dictionary(t):
        col = col.dictionary_decode()
        t = col.type
    if pa.types.is_boolean(t):
        return pc.if_else(col, "t", "f")
    if pa.types.is_floating(t):
        return _floats(pc.cast(col, pa.string()))
    if pa.types.is_timestamp(t):
        s = pc.cast(col, pa.string())
        s = pc.replace_substring_regex(s, r"\.000000", "")  # PostgreSQL prints whole seconds bare
        return pc.replace_substring_regex(s, "Z$", "+00") if t.tz else s
    if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t):
        return pa.array([None if v is None else "\\x" + v.hex() for v in col.to_pylist()], pa.string())
    if pa.types.is_string(t):
        return col
    if pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return pc.cast(col, pa.string())
    try:
        return pc.cast(col, pa.string())
    except (pa.ArrowNotImplementedError, pa.ArrowInvalid):  # nested types: Python's rendering
        return pa.array([None if v is None else str(v) for v in col.to_pylist()], pa.string())


def _floats(s: pa.Array) -> pa.Array:
    """Arrow prints inf/-inf/nan; PostgreSQL prints Infinity/-Infinity/NaN."""
    s = pc.replace_substring_regex(s, "^inf$", "Infinity")
    s = pc.replace_substring_regex(s, "^-inf$", "-Infinity")
    return pc.replace_substring_regex(s, "^nan$", "NaN")


def data_rows(batch: pa.RecordBatch) -> bytes:
    """The DataRow ('D') messages of every row of `batch`, in text format, as one bytes object."""
    n, ncols = batch.num_rows, batch.num_columns
    if n == 0:
        return b""
    if n <= SMALL_BATCH:
        return _small_data_rows(batch)
    datas, offs, lens = [], [], []
    for col in batch.columns:
        s = _text(col)
        if s.offset:
            s = pa.concat_arrays([s])  # a slice: make offsets start at the buffer's start
        o = np.frombuffer(s.buffers()[1], dtype=np.int32, count=n + 1, offset=s.offset * 4)
        ln = np.diff(o).astype(np.int64)
        valid = ~np.asarray(s.is_null(), dtype=bool) if s.null_count else None
        field_len = ln if valid is None else np.where(valid, ln, -1)
        data = s.buffers()[2]
        datas.append(np.frombuffer(data, dtype=np.uint8) if data is not None else np.zeros(0, np.uint8))
        offs.append(o[:-1].astype(np.int64))
        lens.append(field_len)
    payload = [np.maximum(fl, 0) for fl in lens]  # bytes each value takes (a null takes none)
    row_len = 1 + 4 + 2 + 4 * ncols + np.sum(payload, axis=0)  # 'D', length, column count, per-value lengths
    row_start = np.zeros(n, np.int64)
    np.cumsum(row_len[:-1], out=row_start[1:])
    out = np.zeros(int(row_len.sum()), np.uint8)
    out[row_start] = ord("D")
    _put_be(out, row_start + 1, (row_len - 1).astype(np.int64), 4)
    _put_be(out, row_start + 5, np.full(n, ncols, np.int64), 2)
    pos = row_start + 7
    for data, o, fl, pl in zip(datas, offs, lens, payload, strict=True):
        _put_be(out, pos, fl, 4)
        pos = pos + 4
        total = int(pl.sum())
        if total:
            rows_with = pl > 0
            dst_start = np.repeat(pos[rows_with], pl[rows_with])
            within = np.arange(total) - np.repeat(np.cumsum(pl[rows_with]) - pl[rows_with], pl[rows_with])
            out[dst_start + within] = data[np.repeat(o[rows_with], pl[rows_with]) + within]
        pos = pos + pl
    return out.tobytes()


SMALL_BATCH = 32  # rows below which plain Python builds the messages faster than numpy's fixed costs


def _small_data_rows(batch: pa.RecordBatch) -> bytes:
    """data_rows for a few rows (a point lookup's answer): the same bytes, built value by value."""
    columns = [_small_text(col) for col in batch.columns]
    count = struct.pack("!h", batch.num_columns)
    out = []
    for row in zip(*columns, strict=True):
        body = [count]
        for v in row:
            if v is None:
                body.append(b"\xff\xff\xff\xff")
            else:
                data = v.encode("utf-8")
                body.append(struct.pack("!i", len(data)) + data)
        message = b"".join(body)
        out.append(b"D" + struct.pack("!i", len(message) + 4) + message)
    return b"".join(out)


def _small_text(col: pa.Array) -> list[str | None]:
    """What `_text(col).to_pylist()` gives, for a few values, with as few compute calls as can be (each
    lets go of the GIL, which a busy server then waits to get back): integers, booleans, text and
    timestamps without a zone are written in Python exactly as Arrow writes them, finite floats need
    one cast instead of a cast and three replacements."""
    t = col.type
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return col.to_pylist()
    if pa.types.is_integer(t):
        return [None if v is None else str(v) for v in col.to_pylist()]
    if pa.types.is_boolean(t):
        return [None if v is None else ("t" if v else "f") for v in col.to_pylist()]
    if pa.types.is_timestamp(t) and t.tz is None and t.unit == "us":
        try:
            return [None if v is None else v.isoformat(sep=" ") for v in col.to_pylist()]
        except (ValueError, OverflowError):  # outside datetime's years: Arrow's own text
            pass
    if pa.types.is_floating(t) and all(v is None or math.isfinite(v) for v in col.to_pylist()):
        return pc.cast(col, pa.string()).to_pylist()
    return _text(col).to_pylist()


def _put_be(out: np.ndarray, at: np.ndarray, values: np.ndarray, width: int) -> None:
    """Write `values` as big-endian signed integers of `width` bytes at positions `at` of `out`."""
    be = values.astype(">i4" if width == 4 else ">i2").view(np.uint8).reshape(-1, width)
    for k in range(width):
        out[at + k] = be[:, k]
