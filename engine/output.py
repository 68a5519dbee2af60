"""Render Arrow tables for people (aligned text) and for tools (CSV with header, JSON lines)."""

from __future__ import annotations

import io
import json
from decimal import Decimal

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv


def _iso(table: pa.Table) -> pa.Table:
    """Timestamps as ISO-8601 text (`2026-01-01T10:00:00`, fractions only when present)."""
    cols = []
    for col in table.columns:
        if pa.types.is_timestamp(col.type):
            text = pc.strftime(col, format="%Y-%m-%dT%H:%M:%S")  # %S carries the fraction: "05.250000"
            text = pc.replace_substring_regex(text, r"\.0+$", "")
            col = pc.replace_substring_regex(text, r"(\.\d*[1-9])0+$", r"\1")
        cols.append(col)
    return pa.Table.from_arrays(cols, names=table.column_names)


def to_csv(table: pa.Table) -> str:
    buf = io.BytesIO()
    pcsv.write_csv(_iso(table), buf)
    return buf.getvalue().decode()


def to_jsonl(table: pa.Table) -> str:
    def default(v):
        return float(v) if isinstance(v, Decimal) else str(v)

    return "".join(json.dumps(r, default=default) + "\n" for r in _iso(table).to_pylist())


def _cell(v) -> str:
    if v is None:
        return "NULL"
    if isinstance(v, float):
        return f"{v:.6g}" if abs(v) < 1e15 else repr(v)
    return str(v)


def to_text(table: pa.Table, max_rows: int = 200) -> str:
    """An aligned table; numbers right-aligned; long results cut with a note."""
    shown = _iso(table.slice(0, max_rows)) if table.num_rows else table
    rows = [[_cell(v) for v in r.values()] for r in shown.to_pylist()]
    names = table.column_names
    numeric = [pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t)
               for t in table.schema.types]
    widths = [max([len(n)] + [len(r[i]) for r in rows]) for i, n in enumerate(names)]

    def line(vals: list[str]) -> str:
        return " | ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in zip(vals, widths, numeric, strict=True))

    out = [line(names), "-+-".join("-" * w for w in widths)] + [line(r) for r in rows]
    more = table.num_rows - len(rows)
    out.append(f"({table.num_rows} row{'s' if table.num_rows != 1 else ''}"
               + (f", first {len(rows)} shown; use --format csv for all" if more > 0 else "") + ")")
    return "\n".join(out) + "\n"


def render(table: pa.Table, fmt: str) -> str:
    return {"table": to_text, "csv": to_csv, "json": to_jsonl}[fmt](table)
