"""Partial aggregates: computed per batch with pyarrow's hash aggregation, merged the same way.

Every aggregate decomposes into mergeable partial columns (AVG = SUM + COUNT), so state is a small
Arrow table per window and merging two of them is one more `group_by`: no per-row Python, no UDAFs.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pondstream.sql.planner import ViewPlan

_COUNT_VALID = pc.CountOptions(mode="only_valid")


def _sum_input(col: pa.ChunkedArray) -> pa.ChunkedArray:
    """Widen SUM inputs so partial types are stable across batches (and do not overflow early)."""
    t = col.type
    if pa.types.is_integer(t):
        return col.cast(pa.int64())
    if pa.types.is_floating(t):
        return col.cast(pa.float64())
    if pa.types.is_decimal(t):
        return col.cast(pa.decimal128(38, t.scale))
    return col


def _group(table: pa.Table, keys: list[str], specs: list[tuple], names: list[str]) -> pa.Table:
    """group_by().aggregate() with the output renamed to `names` and keys first."""
    agg = table.group_by(keys, use_threads=False).aggregate(specs)
    return pa.Table.from_arrays(agg.columns, names=keys + names)  # pyarrow puts keys first


def first_partials(plan: ViewPlan, pre: pa.Table, ws: pa.Array | np.ndarray) -> pa.Table:
    """Partials per (window start, keys) for rows already assigned to windows (`ws` in µs, aligned)."""
    cols: dict[str, pa.ChunkedArray | pa.Array] = {"__ws": pa.array(ws, pa.int64()).cast(pa.timestamp("us"))}
    for k in plan.key_columns:
        cols[k] = pre.column(k)
    specs: list[tuple] = []
    for p in plan.partials:
        if p.first == "count_all":
            specs.append(([], "count_all"))
            continue
        src = pre.column(p.source)
        name = f"{p.name}_in"
        cols[name] = _sum_input(src) if p.first == "sum" else src
        specs.append((name, p.first, _COUNT_VALID) if p.first == "count" else (name, p.first))
    table = pa.table(cols)
    return _group(table, ["__ws", *plan.key_columns], specs, [p.name for p in plan.partials])


def merge_partials(plan: ViewPlan, tables: list[pa.Table]) -> pa.Table:
    """One row per (window, keys) from any number of partial tables of the same plan."""
    tables = [t for t in tables if t is not None and t.num_rows]
    if not tables:
        return None
    table = pa.concat_tables(tables)
    specs = [(p.name, p.merge) for p in plan.partials]
    merged = _group(table, ["__ws", *plan.key_columns], specs, [p.name for p in plan.partials])
    return merged.cast(tables[0].schema)
