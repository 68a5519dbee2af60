"""Partial aggregates: computed per batch with pyarrow's hash aggregation, merged the same way.

Every aggregate decomposes into mergeable partial columns (AVG = SUM + COUNT, VARIANCE = sums of x and
x², FIRST_VALUE = earliest event time + the value seen then, COUNT(DISTINCT) = the set of values), so state
is a small Arrow table per window and merging two of them is one more `group_by`: no per-row Python,
no UDAFs. Adding an aggregate means adding its partials in sql/planner.py and, if its merge is not a
plain hash aggregate, a branch in `merge_partials`.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pondstream.operators.top_n import best_rows
from pondstream.sql.planner import ViewPlan
from pondstream.sql.top_n_planner import TOP

_ONLY_VALID = pc.CountOptions(mode="only_valid")
_SKIP_NULLS = pc.ScalarAggregateOptions(skip_nulls=True, min_count=1)


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


def _spec(column: str | list, fn: str) -> tuple:
    if fn in ("count", "distinct"):
        return (column, fn, _ONLY_VALID)
    if fn in ("all", "any", "first", "last"):
        return (column, fn, _SKIP_NULLS) if fn in ("all", "any") else (column, fn)
    return (column, fn)


def _group(table: pa.Table, keys: list[str], specs: list[tuple], names: list[str]) -> pa.Table:
    """group_by().aggregate() with the output renamed to `names`, keys first."""
    agg = table.group_by(keys, use_threads=False).aggregate(specs)
    return pa.Table.from_arrays(agg.columns, names=keys + names)  # pyarrow puts keys first


def first_partials(plan: ViewPlan, pre: pa.Table, ws: pa.Array | np.ndarray) -> pa.Table:
    """Partials per (window start, keys) for rows already assigned to windows (`ws` in µs, aligned)."""
    cols: dict[str, pa.ChunkedArray | pa.Array] = {"__ws": pa.array(ws, pa.int64()).cast(pa.timestamp("us"))}
    for k in plan.key_columns:
        cols[k] = pre.column(k)
    if plan.top is not None:  # Top-N: the partial is the best rows themselves
        return best_rows(plan, [pa.table({**cols, TOP: pre.column(TOP)})])
    specs: list[tuple] = []
    for p in plan.partials:
        if p.first == "count_all":
            specs.append(([], "count_all"))
            continue
        name = f"{p.name}_in"
        src = pre.column(p.source)
        cols[name] = _sum_input(src) if p.first == "sum" else src
        specs.append(_spec(name, p.first))
    table = pa.table(cols)
    if any(p.order for p in plan.partials):  # FIRST/LAST_VALUE: rows in event-time order
        table = table.append_column("__order", pre.column("__ts")).sort_by("__order")
    return _group(table, ["__ws", *plan.key_columns], specs, [p.name for p in plan.partials])


def merge_partials(plan: ViewPlan, tables: list[pa.Table | None]) -> pa.Table | None:
    """One row per (window, keys) from any number of partial tables of the same plan."""
    tables = [t for t in tables if t is not None and t.num_rows]
    if not tables:
        return None
    if plan.top is not None:
        return best_rows(plan, tables)
    table = pa.concat_tables(tables)
    keys = ["__ws", *plan.key_columns]
    plain = [p for p in plan.partials if not p.order and p.merge != "distinct"]
    if len(plain) == len(plan.partials):
        merged = _group(table, keys, [_spec(p.name, p.merge) for p in plain], [p.name for p in plain])
        return merged.cast(tables[0].schema)
    # Aggregates that need their own pass (ordered or set-valued) are computed separately and lined up
    # by sorting every pass on the keys: each pass sees the same groups.
    order = [(k, "ascending") for k in keys]
    passes = [_group(table, keys, [_spec(p.name, p.merge) for p in plain], [p.name for p in plain]).sort_by(order)]
    for col in sorted({p.order for p in plan.partials if p.order}):
        ordered = [p for p in plan.partials if p.order == col]
        passes.append(_group(table.sort_by(col), keys, [_spec(p.name, p.merge) for p in ordered],
                             [p.name for p in ordered]).sort_by(order))
    for p in plan.partials:
        if p.merge == "distinct":
            passes.append(_merge_sets(table, keys, p.name).sort_by(order))
    cols = {k: passes[0].column(k) for k in keys}
    for t in passes:
        for name in t.column_names[len(keys):]:
            cols[name] = t.column(name)
    return pa.table({n: cols[n] for n in tables[0].schema.names}).cast(tables[0].schema)


def _merge_sets(table: pa.Table, keys: list[str], name: str) -> pa.Table:
    """Union of the value sets of each group (COUNT(DISTINCT)); empty sets survive as empty sets."""
    sets = table.column(name).combine_chunks()
    empty = pc.equal(pc.list_value_length(sets), 0)
    if pc.any(empty).as_py():  # keep every group in the flattened table: an empty set becomes [NULL]
        sets = pc.if_else(empty, pa.scalar([None], sets.type), sets)
    parents = pc.list_parent_indices(sets)
    flat = table.select(keys).take(parents).append_column(name, pc.list_flatten(sets))
    return _group(flat, keys, [_spec(name, "distinct")], [name])
