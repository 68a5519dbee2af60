"""Write query results for people (an aligned page of rows) and for tools (CSV with a header, JSON lines).

Results arrive as a `pyarrow.RecordBatchReader` and are written batch by batch, so output starts with
the first batch, memory stays flat whatever the result size, and a reader that goes away (`| head`)
ends the query. Values are formatted with Arrow compute per column, not per row in Python.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv

PAGE_ROWS = 200  # what the table format shows; csv and json write everything
PER_SECOND = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}
# Arrow writes years 0001-9999 with four digits, so the text has fixed positions: the fast path
YEAR_1, YEAR_10000 = -62_135_596_800, 253_402_300_800  # epoch seconds


def _iso_text(col: pa.Array) -> pa.Array:
    """A timestamp column as ISO-8601 text (`2026-01-01T10:00:00`, fractions only when present)."""
    if col.type.tz is not None:  # pondstream's timestamps are naive; a zoned one is shown in its zone
        text = pc.strftime(col, format="%Y-%m-%dT%H:%M:%S")  # %S carries the fraction: "05.250000"
        text = pc.replace_substring_regex(text, r"\.0+$", "")
        return pc.replace_substring_regex(text, r"(\.\d*[1-9])0+$", r"\1")
    per = PER_SECOND[col.type.unit]
    ints = col.view(pa.int64())
    span = pc.min_max(ints)
    fixed = span["min"].is_valid and YEAR_1 * per <= span["min"].as_py() and span["max"].as_py() < YEAR_10000 * per
    text = pc.cast(col, pa.string())  # "2026-01-01 10:00:00.250000": the fraction has the unit's width
    if fixed:
        text = pc.binary_replace_slice(text.view(pa.binary()), 10, 11, "T").view(pa.string())
    else:
        text = pc.replace_substring(text, " ", "T", max_replacements=1)
    if per == 1:
        return text
    if fixed and pc.all(pc.equal(pc.multiply(pc.divide(ints, per), per), ints)).as_py():
        return pc.binary_slice(text.view(pa.binary()), 0, 19).view(pa.string())  # whole seconds: the usual case
    return pc.replace_substring_regex(text, r"\.?0+$", "")  # every value has a fraction part: trim its zeros


def _iso(data: pa.RecordBatch | pa.Table) -> pa.RecordBatch | pa.Table:
    """Timestamps as ISO-8601 text, other columns as they are."""
    if not any(pa.types.is_timestamp(t) for t in data.schema.types):
        return data
    if isinstance(data, pa.Table):
        cols = [pa.chunked_array([_iso_text(ch) for ch in c.chunks], pa.string())
                if pa.types.is_timestamp(c.type) else c for c in data.columns]
        return pa.Table.from_arrays(cols, names=data.column_names)
    cols = [_iso_text(c) if pa.types.is_timestamp(c.type) else c for c in data.columns]
    return pa.RecordBatch.from_arrays(cols, names=data.schema.names)


def _text_schema(schema: pa.Schema) -> pa.Schema:
    return pa.schema([pa.field(f.name, pa.string()) if pa.types.is_timestamp(f.type) else f for f in schema])


def write_csv(reader: pa.RecordBatchReader, out: BinaryIO) -> int:
    """CSV with a header row, one pyarrow CSV write per batch. Returns the rows written."""
    rows = 0
    writer = pcsv.CSVWriter(out, _text_schema(reader.schema))
    for batch in reader:
        writer.write_batch(_iso(batch))
        rows += batch.num_rows
    writer.close()
    return rows


# -- JSON lines ----------------------------------------------------------------------------------
def _py_json(col: pa.Array) -> pa.Array:
    """Per-value JSON for the rare types and values the vectorized encoders leave out."""
    def default(v):
        return float(v) if isinstance(v, Decimal) else str(v)

    return pa.array([json.dumps(v, default=default, ensure_ascii=False) for v in col.to_pylist()], pa.string())


def _utf8(text: pa.Array) -> np.ndarray:
    """The bytes of a string array's values (its slice of the data buffer), without copying."""
    wide = pa.types.is_large_string(text.type)
    width = 8 if wide else 4
    offsets = np.frombuffer(text.buffers()[1], np.int64 if wide else np.int32, len(text) + 1, text.offset * width)
    data = text.buffers()[2]
    if data is None or offsets[-1] == offsets[0]:
        return np.zeros(0, np.uint8)
    return np.frombuffer(data, np.uint8)[offsets[0]:offsets[-1]]


def _json_string(text: pa.Array) -> pa.Array:
    """Strings as JSON string literals: quoted, `\\` and `"` escaped, and the characters some readers
    take for line ends (U+0085, U+2028, U+2029) as \\u escapes; other non-ASCII text stays UTF-8."""
    data = _utf8(text)
    if data.size and data.min() < 0x20:  # control characters (bytes of multi-byte UTF-8 are all >= 0x80): per value
        return pa.array([None if v is None else json.dumps(v) for v in text.to_pylist()], pa.string())
    text = pc.replace_substring(pc.replace_substring(text, "\\", "\\\\"), '"', '\\"')
    if data.size and data.max() >= 0x80:
        for char in "\u0085\u2028\u2029":
            text = pc.replace_substring(text, char, f"\\u{ord(char):04x}")
    return pc.binary_join_element_wise('"', text, '"', "")


def _json_values(col: pa.Array) -> pa.Array:
    """The JSON text of each value of `col` (`null` for nulls), computed column-wise."""
    t = col.type
    if pa.types.is_dictionary(t):
        return _json_values(col.dictionary_decode())
    if pa.types.is_null(t):
        return pa.array(["null"] * len(col), pa.string())
    if pa.types.is_boolean(t) or pa.types.is_integer(t) or pa.types.is_decimal(t):
        text = pc.cast(col, pa.string())  # decimals keep their exact digits
    elif pa.types.is_floating(t):
        text = pc.cast(col, pa.string())  # shortest text that reads back as the same value
        text = pc.replace_substring_regex(text, r"^(-?\d+)$", r"\1.0")  # 100.0, not 100: still a float
        if pc.any(pc.invert(pc.is_finite(col))).as_py():  # as Python's json writes them
            text = pc.if_else(pc.is_nan(col), "NaN", text)
            text = pc.if_else(pc.is_inf(col), pc.if_else(pc.greater(col, 0), "Infinity", "-Infinity"), text)
    elif pa.types.is_timestamp(t):
        text = pc.binary_join_element_wise('"', _iso_text(col), '"', "")
    elif pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        text = _json_string(col.cast(pa.string()) if pa.types.is_string_view(t) else col)
    elif pa.types.is_date(t):
        text = pc.binary_join_element_wise('"', pc.cast(col, pa.string()), '"', "")
    else:  # binary, durations, times, nested: rare in views
        return _py_json(col)
    return pc.fill_null(text, "null") if col.null_count else text


def _jsonl_text(batch: pa.RecordBatch) -> bytes | memoryview:
    """The batch as JSON lines: one `{"column": value, ...}` object per row (spaced as Python's json
    writes it), each ending in a newline."""
    if batch.num_columns == 0:
        return b"{}\n" * batch.num_rows
    parts: list = []
    for i, (name, col) in enumerate(zip(batch.schema.names, batch.columns, strict=True)):
        parts += [("{" if i == 0 else ", ") + json.dumps(name, ensure_ascii=False) + ": ", _json_values(col)]
    return memoryview(_utf8(pc.binary_join_element_wise(*parts, "}\n", "")))


def write_jsonl(reader: pa.RecordBatchReader, out: BinaryIO) -> int:
    """JSON lines, one object per row; timestamps as ISO text. Returns the rows written."""
    rows = 0
    for batch in reader:
        if batch.num_rows:
            out.write(_jsonl_text(batch))
            rows += batch.num_rows
    return rows


# -- an aligned page for people ------------------------------------------------------------------
def _cell(v) -> str:
    if v is None:
        return "NULL"
    if isinstance(v, float):
        return f"{v:.6g}" if abs(v) < 1e15 else repr(v)
    return str(v)


def first_rows(reader: pa.RecordBatchReader, max_rows: int) -> tuple[pa.Table, bool]:
    """Up to `max_rows` rows from the start of `reader`, and whether more followed; reads only as far
    as it must (one row past the page, to know whether there are more)."""
    got, n = [], 0
    for batch in reader:
        got.append(batch)
        n += batch.num_rows
        if n > max_rows:
            break
    table = pa.Table.from_batches(got, schema=reader.schema)
    return table.slice(0, max_rows), n > max_rows


def to_text(table: pa.Table, more: bool = False, total: int | None = None) -> str:
    """An aligned table; numbers right-aligned; a note on rows not shown (`more`), with their count
    when known (`total`)."""
    rows = [[_cell(v) for v in r.values()] for r in _iso(table).to_pylist()]
    names = table.column_names
    numeric = [pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t)
               for t in table.schema.types]
    widths = [max([len(n)] + [len(r[i]) for r in rows]) for i, n in enumerate(names)]

    def line(vals: list[str]) -> str:
        return " | ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in zip(vals, widths, numeric, strict=True))

    out = [line(names), "-+-".join("-" * w for w in widths)] + [line(r) for r in rows]
    if not more:
        out.append(f"({len(rows)} row{'s' if len(rows) != 1 else ''})")
    else:
        shown = f"first {len(rows)} of {total:,} rows shown" if total is not None else \
            f"first {len(rows)} rows shown, more not counted"
        out.append(f"({shown}; use --format csv or --format json for all)")
    return "\n".join(out) + "\n"


def write_text(reader: pa.RecordBatchReader, out: BinaryIO, max_rows: int = PAGE_ROWS,
               total: int | None = None) -> int:
    """The first `max_rows` rows as an aligned table; the query stops there. Returns the rows shown."""
    table, more = first_rows(reader, max_rows)
    out.write(to_text(table, more, total).encode())
    return table.num_rows


def write(reader: pa.RecordBatchReader, fmt: str, out: BinaryIO, total: int | None = None) -> int:
    """Write `reader` to `out` as `fmt` (table, csv or json), then close it: stopping early (a page of
    the table, or a broken pipe) stops the query. `total` is the row count for the table's note."""
    try:
        if fmt == "table":
            return write_text(reader, out, total=total)
        return {"csv": write_csv, "json": write_jsonl}[fmt](reader, out)
    finally:
        reader.close()


def render(table: pa.Table, fmt: str) -> str:
    """A whole table as text in `fmt` (for small results; the CLI streams with `write`)."""
    import io

    buf = io.BytesIO()
    write(pa.RecordBatchReader.from_batches(table.schema, table.to_batches()), fmt, buf)
    return buf.getvalue().decode()
