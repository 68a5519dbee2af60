"""Top-N state: per (window, key), the key's best N rows so far, one struct per row (`__top`).

A batch keeps the best N of its rows per key; merging two such tables keeps the best N of both, so the
result never depends on how rows were batched. "Best" is the view's ORDER BY, ties broken by every
field of the row (ascending), so equal rankings are also decided the same way every run. With RANK()
rows equal under ORDER BY share the rank of the first of them; a row's rank in a part of the input is
never above its rank in the whole (DENSE_RANK's neither), so keeping ranks <= N per part loses nothing.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pondstream.operators.groups import key_changes
from pondstream.sql.planner import ViewPlan
from pondstream.sql.top_n_planner import TOP


def _rank(plan: ViewPlan, table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """(the order that sorts `table` by window, key and rank; each sorted row's 0-based rank within its
    (window, key)). Only the narrow sort columns move here: callers take the wide rows they keep."""
    top = table.column(TOP).combine_chunks()
    keys = ["__ws", *plan.key_columns]
    cols: dict[str, pa.Array] = {k: table.column(k) for k in keys}
    sort = [(k, "ascending") for k in keys]
    ordered = {f for f, _, _ in plan.top.order}
    for f, desc, nulls_first in plan.top.order:
        v = pc.struct_field(top, f)
        cols[f"{f}_null"] = pc.is_null(v)
        sort.append((f"{f}_null", "descending" if nulls_first else "ascending"))
        cols[f] = v
        sort.append((f, "descending" if desc else "ascending"))
    for i in range(top.type.num_fields):  # ties: by the whole row
        f = top.type.field(i).name
        if f not in ordered:
            cols[f"__t{i}"] = pc.struct_field(top, f)
            sort.append((f"__t{i}", "ascending"))
    narrow = pa.table(cols)
    order = pc.sort_indices(narrow, sort_keys=sort)
    pos = np.arange(table.num_rows)
    first = np.maximum.accumulate(np.where(key_changes(narrow.select(keys).take(order)), pos, 0))  # key's 1st row
    if not plan.top.ties:
        return order.to_numpy(), pos - first
    change = key_changes(narrow.select([*keys, *(f for f, _, _ in plan.top.order)]).take(order))
    if plan.top.function == "dense_rank":  # distinct ORDER BY values before the row, in its key
        seen = np.cumsum(change)
        return order.to_numpy(), seen - seen[first]
    tie = np.maximum.accumulate(np.where(change, pos, 0))  # the first row ranked equal
    return order.to_numpy(), tie - first


def best_rows(plan: ViewPlan, tables: list[pa.Table]) -> pa.Table:
    """The best N rows per (window, key) of the given tables (columns __ws, keys, __top)."""
    table = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
    order, rank = _rank(plan, table)
    return table.take(pa.array(order[rank < plan.top.n]))


def ranked_rows(plan: ViewPlan, win: pa.Table) -> pa.Table:
    """What the select list reads: each kept row's fields as columns, its 1-based rank __rn and its
    position __pos among its key's rows (the same but for RANK's ties)."""
    order, rank = _rank(plan, win)
    table = win.take(pa.array(order))
    pos = np.arange(table.num_rows)
    pos = pos - np.maximum.accumulate(np.where(key_changes(table.select(["__ws", *plan.key_columns])), pos, 0))
    top = table.column(TOP).combine_chunks()
    table = table.drop_columns([TOP])
    for i in range(top.type.num_fields):
        table = table.append_column(top.type.field(i).name, top.field(i))
    return table.append_column("__rn", pa.array(rank + 1, pa.int64())).append_column("__pos", pa.array(pos + 1))
