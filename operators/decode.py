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

from pondstream.operators.isolate import bisect_failures, first_line
from pondstream.operators.source import bad_records

TS = pa.timestamp("us")
_ZONED = r"(?:[Zz]|[+-]\d\d:?\d\d)$"
BLOCK = 2 << 20  # pyarrow decodes a chunk in blocks of this size on all cores
MAX_MS = 9 * 10**15  # epoch milliseconds beyond this (year ~287,000) would overflow µs: clamped, hence out of range


WHITESPACE = np.zeros(256, bool)
WHITESPACE[[9, 10, 13, 32]] = True
CR_LF = np.zeros(256, bool)
CR_LF[[10, 13]] = True


def line_starts(chunk: bytes, spaces_blank: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(byte offset of each line that is not blank, plus one past the end; first non-blank byte of each).

    A blank line is no record; any other line is one. Blank means empty or a lone carriage return, and
    with `spaces_blank` (JSON, where parsers skip whitespace) also only spaces and tabs. Only the rare
    lines that start with whitespace are looked at one by one."""
    buf = np.frombuffer(chunk, dtype=np.uint8)
    nl = np.flatnonzero(buf == 10)
    starts = np.concatenate(([0], nl + 1))
    ends = np.concatenate((nl, [len(chunk)]))
    keep = ends > starts
    first = np.zeros(len(starts), np.uint8)
    first[keep] = buf[starts[keep]]
    for i in np.flatnonzero(keep & WHITESPACE[first]).tolist():
        rest = chunk[starts[i]: ends[i]].lstrip(b" \t\r" if spaces_blank else b"\r")
        keep[i], first[i] = bool(rest), rest[0] if rest else 0
    starts, ends, first = starts[keep], ends[keep], first[keep]
    return np.append(starts, ends[-1] + 1 if len(ends) else 0), first


def parse_ts_strings(s: pa.Array) -> pa.Array:
    """ISO-8601 text with or without zone, or epoch milliseconds as text, to UTC µs; raises if unreadable."""
    s = s.cast(pa.string())
    digits = pc.fill_null(pc.match_substring_regex(s, r"^-?\d+$"), False)
    zoned = pc.fill_null(pc.and_(pc.match_substring_regex(s, _ZONED), pc.invert(digits)), False)
    plain = pc.fill_null(pc.and_(pc.invert(digits), pc.invert(zoned)), True)
    out = pa.nulls(len(s), TS)
    if pc.any(digits).as_py():
        out = pc.replace_with_mask(out, digits, to_timestamp(s.filter(digits).cast(pa.float64())))
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
    if pa.types.is_integer(t) or pa.types.is_floating(t):  # epoch ms, saturated: a huge number stays out
        kind, scale = (pa.int64(), 1000) if pa.types.is_integer(t) else (pa.float64(), 1000.0)  # of range
        ms = pc.min_element_wise(pc.max_element_wise(col.cast(kind), -MAX_MS, skip_nulls=False), MAX_MS,
                                 skip_nulls=False)
        return pc.multiply(ms, scale).cast(pa.int64()).cast(TS)
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
        opts = pjson.ReadOptions(block_size=BLOCK, use_threads=True)  # blocks decode in parallel, in order
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
    read = pcsv.ReadOptions(column_names=header, use_threads=True, block_size=BLOCK)
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
    row_lines: np.ndarray  # line index (among non-blank lines) of each good row
    bad: list[tuple[int, bytes, str]]  # (line index, raw bytes, error), in line order
    starts: np.ndarray  # byte offset of each non-blank line, plus one past the end

    @property
    def n_lines(self) -> int:
        return len(self.starts) - 1


PARSE_ERRORS = (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError)
NOT_OBJECT = "malformed: not a JSON object"


def simple_starts(chunk: bytes, objects: bool) -> np.ndarray | None:
    """Line starts (plus one past the end) when no line needs a look of its own, else None: no blank
    lines and, for JSON, every line starts with `{`. One vectorized pass over the newlines."""
    buf = np.frombuffer(chunk, dtype=np.uint8)
    if not len(buf):
        return np.zeros(1, np.int64)
    nl = np.flatnonzero(buf == 10)
    last_nl = len(nl) > 0 and nl[-1] == len(buf) - 1
    starts = np.concatenate(([0], (nl[:-1] if last_nl else nl) + 1))
    first = buf[starts]
    ok = (first == ord("{")).all() if objects else not ((first == 10) | (first == 13)).any()
    return np.append(starts, len(buf) if last_nl else len(buf) + 1) if ok else None


def decode_lines(chunk: bytes, parse: Callable[[bytes], pa.Table], event_time: str, objects: bool = False,
                 time_range: tuple[int, int] | None = None) -> Decoded:
    """Decode a chunk of lines, one record per non-blank line; every line ends up as a row or as a bad
    record (won't parse or cast, not one JSON object, event time missing or outside `time_range`).

    The usual chunk is one pyarrow decode and no per-line work. Otherwise, with `objects` (JSON), lines
    that do not start with `{` are set aside before pyarrow sees them (pyarrow 26 crashes on a lone
    `null`), blanked in place so offsets stay right, and a failing chunk is bisected."""
    starts = simple_starts(chunk, objects)
    table = None
    if starts is not None:
        try:
            table = parse(chunk)
        except PARSE_ERRORS:
            pass
    if table is not None and table.num_rows == len(starts) - 1:
        d = Decoded(None, np.arange(len(starts) - 1), [], starts)
    else:
        d = _decode_carefully(chunk, parse, objects, tried=starts is not None)
        table = d.table
    if table is not None:
        table, d.row_lines, time_bad = check_event_time(table, d.row_lines, event_time, time_range)
        d.bad = sorted(d.bad + [(i, _line(chunk, d.starts, i), err) for i, err in time_bad], key=lambda b: b[0])
    d.table = table
    return d


def _decode_carefully(chunk: bytes, parse: Callable[[bytes], pa.Table], objects: bool, tried: bool) -> Decoded:
    """The path for chunks with blank or suspicious lines, or that failed to decode as a whole."""
    starts, first = line_starts(chunk, spaces_blank=objects)
    n_lines = len(starts) - 1
    screened = np.flatnonzero(first != ord("{")) if objects else np.empty(0, np.int64)
    bad = [(int(i), _line(chunk, starts, int(i)), NOT_OBJECT) for i in screened]
    if len(screened):
        chunk = _blank(chunk, starts, screened)
    parts: list[pa.Table] = []
    try:
        if tried and not len(screened):
            raise pa.ArrowInvalid("the whole chunk failed already")
        parts = [parse(chunk)]
    except PARSE_ERRORS:
        done, failed = bisect_failures(n_lines, lambda lo, hi: parse(_span(chunk, starts, lo, hi)), PARSE_ERRORS)
        parts = [t for _, _, t in done]
        bad += [(i, _line(chunk, starts, i), err) for i, err in failed]
    good = pa.concat_tables(parts) if parts else None
    gone = {i for i, _, _ in bad}
    lines = np.array([i for i in range(n_lines) if i not in gone], np.int64) if gone else np.arange(n_lines)
    if good is not None and len(lines) != good.num_rows:  # some line held several JSON values
        good, lines, slow_bad = _line_by_line(chunk, starts, parse, gone)
        bad += slow_bad
    bad.sort(key=lambda b: b[0])
    return Decoded(good, lines, bad, starts)


def check_event_time(table: pa.Table, lines: np.ndarray, event_time: str, time_range: tuple[int, int] | None
                      ) -> tuple[pa.Table | None, np.ndarray, list[tuple[int, str]]]:
    """Rows whose event time is missing, or outside the sane range, are bad records (a year-248,000
    timestamp would otherwise move the watermark so far that every good event after it is late)."""
    ts = table.column(event_time)
    missing = pc.is_null(ts).combine_chunks().to_numpy(zero_copy_only=False)
    out = np.zeros(len(missing), bool)
    if time_range is not None:
        t = pc.fill_null(ts.cast(pa.int64()), time_range[0]).combine_chunks().to_numpy(zero_copy_only=False)
        out = (t < time_range[0]) | (t >= time_range[1])
    if not (missing.any() or out.any()):
        return table, lines, []
    bad = [(int(i), f"event time column {event_time} is null or missing") for i in lines[missing]]
    if out.any():
        lo, hi = (ts_text(b) for b in time_range)
        bad += [(int(i), f"event time out of range: outside [{lo}, {hi}) (options event_time_min/event_time_max)")
                for i in lines[out]]
    keep = ~(missing | out)
    return (table.filter(pa.array(keep)) if keep.any() else None), lines[keep], bad


def ts_text(us: int) -> str:
    return str(pa.scalar(us, pa.int64()).cast(TS).as_py())


def _blank(chunk: bytes, starts: np.ndarray, lines: np.ndarray) -> bytes:
    """The chunk with the given lines overwritten by spaces (vectorized), so a parser skips them."""
    buf = np.frombuffer(chunk, np.uint8).copy()
    edges = np.zeros(len(buf) + 1, np.int64)
    np.add.at(edges, starts[lines], 1)
    np.add.at(edges, starts[lines + 1] - 1, -1)
    inside = np.cumsum(edges[:-1]) > 0
    buf[inside & (buf != 10)] = 32
    return buf.tobytes()


def _span(chunk: bytes, starts: np.ndarray, lo: int, hi: int) -> bytes:
    return chunk[int(starts[lo]): int(starts[hi]) - 1] + b"\n"


def _line_by_line(chunk: bytes, starts: np.ndarray, parse, skip: set[int]
                  ) -> tuple[pa.Table | None, np.ndarray, list[tuple[int, bytes, str]]]:
    """The slow, exact path: one decode per line (only for chunks whose rows cannot be mapped to lines)."""
    parts, lines, bad = [], [], []
    for i in range(len(starts) - 1):
        if i in skip:
            continue
        raw = _line(chunk, starts, i)
        try:
            t = parse(raw + b"\n")
        except PARSE_ERRORS as e:
            bad.append((i, raw, first_line(e)))
            continue
        if t.num_rows == 1:
            parts.append(t)
            lines.append(i)
        else:
            bad.append((i, raw, f"malformed: the line holds {t.num_rows} JSON values, not one"))
    return (pa.concat_tables(parts) if parts else None), np.array(lines, np.int64), bad


def _line(chunk: bytes, starts: np.ndarray, i: int) -> bytes:
    return chunk[int(starts[i]): int(starts[i + 1]) - 1].rstrip()


def decode_chunk(chunk: bytes, base_offset: int, parse: Callable[[bytes], pa.Table], source: str,
                 event_time: str, objects: bool = False, time_range: tuple[int, int] | None = None
                 ) -> tuple[pa.Table | None, pa.Table | None, np.ndarray]:
    """(good rows, bad records with byte offsets, byte offset of each good row) for a chunk of a file
    starting at `base_offset`."""
    d = decode_lines(chunk, parse, event_time, objects, time_range)
    offsets = base_offset + d.starts[d.row_lines]
    if not d.bad:
        return d.table, None, offsets
    return d.table, bad_records(source, [base_offset + int(d.starts[i]) for i, _, _ in d.bad],
                                [raw for _, raw, _ in d.bad], [err for _, _, err in d.bad]), offsets
