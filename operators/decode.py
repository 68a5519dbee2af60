"""Turn raw JSON lines / CSV rows into the stream's typed columns; isolate the records that do not fit.

The fast path decodes a whole chunk with pyarrow. Only when a chunk fails is it bisected, so a few bad
lines cost a few extra decodes, and every bad line is returned with its byte offset and raw bytes.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.json as pjson

from pondstream.operators.source import bad_records

TS = pa.timestamp("us")
_ZONED = r"(?:[Zz]|[+-]\d\d:?\d\d)$"


def line_starts(chunk: bytes) -> np.ndarray:
    """Byte offsets of the non-empty lines of a chunk, plus one past the end."""
    buf = np.frombuffer(chunk, dtype=np.uint8)
    nl = np.flatnonzero(buf == 10)
    starts = np.concatenate(([0], nl + 1))
    ends = np.concatenate((nl, [len(chunk)]))
    keep = (ends - starts) > (buf[np.maximum(ends - 1, 0)] == 13)  # drop blank and "\r"-only lines
    starts, ends = starts[keep], ends[keep]
    return np.append(starts, ends[-1] + 1 if len(ends) else 0)


def parse_ts_strings(s: pa.Array) -> pa.Array:
    """ISO-8601 text with or without zone, or epoch milliseconds as text, to UTC µs; raises if unreadable."""
    s = s.cast(pa.string())
    digits = pc.fill_null(pc.match_substring_regex(s, r"^-?\d+$"), False)
    zoned = pc.fill_null(pc.and_(pc.match_substring_regex(s, _ZONED), pc.invert(digits)), False)
    plain = pc.fill_null(pc.and_(pc.invert(digits), pc.invert(zoned)), True)
    out = pa.nulls(len(s), TS)
    if pc.any(digits).as_py():
        ms = s.filter(digits).cast(pa.int64())
        out = pc.replace_with_mask(out, digits, pc.multiply(ms, 1000).cast(TS))
    if pc.any(zoned).as_py():
        z = s.filter(zoned).cast(pa.timestamp("us", "UTC")).cast(TS)
        out = pc.replace_with_mask(out, zoned, z)
    if pc.any(plain).as_py():
        out = pc.replace_with_mask(out, plain, s.filter(plain).cast(TS))
    return out


def to_timestamp(col: pa.ChunkedArray | pa.Array) -> pa.Array:
    """Any representation of event time to UTC µs: timestamps, epoch milliseconds, ISO text."""
    col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    t = col.type
    if pa.types.is_timestamp(t):
        return col.cast(pa.timestamp("us", "UTC")).cast(TS) if t.tz else col.cast(TS)
    if pa.types.is_integer(t) or pa.types.is_floating(t):
        return pc.multiply(col.cast(pa.float64()), 1000.0).cast(pa.int64()).cast(TS) \
            if pa.types.is_floating(t) else pc.multiply(col.cast(pa.int64()), 1000).cast(TS)
    if pa.types.is_null(t):
        return pa.nulls(len(col), TS)
    if pa.types.is_date(t):
        return col.cast(TS)
    return parse_ts_strings(col)


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Columns in declared order and types; missing columns become nulls; raises if a value won't cast."""
    cols = []
    for f in schema:
        if f.name not in table.column_names:
            cols.append(pa.nulls(table.num_rows, f.type))
            continue
        col = table.column(f.name)
        cols.append(to_timestamp(col) if pa.types.is_timestamp(f.type) else col.cast(f.type))
    return pa.Table.from_arrays(cols, schema=schema)


def json_parser(schema: pa.Schema) -> Callable[[bytes], pa.Table]:
    """Chunk of JSON lines -> typed table. Timestamps as ISO text first, then as epoch milliseconds."""
    as_text = pjson.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")
    millis = pa.schema([pa.field(f.name, pa.int64()) if pa.types.is_timestamp(f.type) else f for f in schema])
    as_millis = pjson.ParseOptions(explicit_schema=millis, unexpected_field_behavior="ignore")

    order = [as_text, as_millis]  # whichever worked last goes first: a stream rarely switches

    def parse(chunk: bytes) -> pa.Table:
        opts = pjson.ReadOptions(block_size=max(len(chunk) + 1, 1 << 20), use_threads=False)
        try:
            return conform(pjson.read_json(io.BytesIO(chunk), read_options=opts, parse_options=order[0]), schema)
        except pa.ArrowInvalid:
            table = conform(pjson.read_json(io.BytesIO(chunk), read_options=opts, parse_options=order[1]), schema)
            order.reverse()
            return table

    return parse


def csv_parser(schema: pa.Schema, header: list[str]) -> Callable[[bytes], pa.Table]:
    """Chunk of CSV rows (no header) -> typed table; timestamp columns read as text, then parsed."""
    types = {f.name: (pa.string() if pa.types.is_timestamp(f.type) else f.type) for f in schema}
    read = pcsv.ReadOptions(column_names=header, use_threads=False, block_size=1 << 26)
    wanted = [n for n in header if n in types]
    convert = pcsv.ConvertOptions(column_types={n: types[n] for n in wanted}, include_columns=wanted,
                                  strings_can_be_null=True)

    def parse(chunk: bytes) -> pa.Table:
        return conform(pcsv.read_csv(io.BytesIO(chunk), read_options=read, convert_options=convert), schema)

    return parse


@dataclass
class Decoded:
    """A decoded chunk: good rows, the line each came from, and the lines set aside (with why)."""

    table: pa.Table | None
    row_lines: np.ndarray  # line index (among non-empty lines) of each good row
    bad: list[tuple[int, bytes, str]]  # (line index, raw bytes, error), in line order
    starts: np.ndarray  # byte offset of each non-empty line, plus one past the end


def decode_lines(chunk: bytes, parse: Callable[[bytes], pa.Table], event_time: str) -> Decoded:
    """Decode a chunk of lines; bad lines (won't parse or cast, or lack event time) are isolated."""
    starts = line_starts(chunk)
    n_lines = len(starts) - 1
    try:
        parts, bad_spans = [parse(chunk)], []
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        parts, bad_spans = [], []
        _bisect(chunk, starts, 0, n_lines, parse, parts, bad_spans)
    good = pa.concat_tables(parts) if parts else None
    bad_idx = {i for i, _ in bad_spans}
    lines = np.array([i for i in range(n_lines) if i not in bad_idx], np.int64) if bad_idx else np.arange(n_lines)
    bad = [(i, _line(chunk, starts, i), err) for i, err in bad_spans]
    if good is not None and len(lines) != good.num_rows:  # a blank-looking line decoded to no row
        good, lines, bad = _line_by_line(chunk, starts, parse)
    if good is not None and good.column(event_time).null_count:
        null_ts = pc.is_null(good.column(event_time)).combine_chunks().to_numpy(zero_copy_only=False)
        msg = f"event time column {event_time} is null or missing"
        bad += [(int(i), _line(chunk, starts, int(i)), msg) for i in lines[null_ts]]
        good = good.filter(pa.array(~null_ts))
        lines = lines[~null_ts]
        bad.sort(key=lambda b: b[0])
    return Decoded(good, lines, bad, starts)


def _line_by_line(chunk: bytes, starts: np.ndarray, parse) -> tuple[pa.Table | None, np.ndarray, list]:
    """The slow, exact path: one decode per line (only for chunks the fast path cannot map)."""
    parts, lines, bad = [], [], []
    for i in range(len(starts) - 1):
        raw = _line(chunk, starts, i)
        try:
            t = parse(raw + b"\n")
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as e:
            bad.append((i, raw, str(e).split("\n")[0][:300]))
            continue
        if t.num_rows == 1:
            parts.append(t)
            lines.append(i)
    return (pa.concat_tables(parts) if parts else None), np.array(lines, np.int64), bad


def _line(chunk: bytes, starts: np.ndarray, i: int) -> bytes:
    return chunk[int(starts[i]): int(starts[i + 1]) - 1].rstrip(b"\r\n")


def decode_chunk(chunk: bytes, base_offset: int, parse: Callable[[bytes], pa.Table], source: str,
                 event_time: str) -> tuple[pa.Table | None, pa.Table | None]:
    """(good rows, bad records with byte offsets) for a chunk of a file starting at `base_offset`."""
    d = decode_lines(chunk, parse, event_time)
    if not d.bad:
        return d.table, None
    return d.table, bad_records(source, [base_offset + int(d.starts[i]) for i, _, _ in d.bad],
                                [raw for _, raw, _ in d.bad], [err for _, _, err in d.bad])


def _bisect(chunk: bytes, starts: np.ndarray, lo: int, hi: int, parse, good: list, bad: list) -> None:
    """Decode lines [lo, hi); split on failure until single bad lines are isolated (in order)."""
    if lo >= hi:
        return
    a, b = int(starts[lo]), int(starts[hi]) - 1
    try:
        good.append(parse(chunk[a:b] + b"\n"))
        return
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as e:
        if hi - lo == 1:
            bad.append((lo, str(e).split("\n")[0][:300]))
            return
    mid = (lo + hi) // 2
    _bisect(chunk, starts, lo, mid, parse, good, bad)
    _bisect(chunk, starts, mid, hi, parse, good, bad)

