"""Session windows: per key, events closer than the gap form one session; sessions that an event bridges
merge. Vectorized as interval merging: sort by (keys, start), a running max of ends per key, and a new
session wherever a start is not before the running end."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pondstream.operators.groups import key_changes, running_max
from pondstream.operators.partials import merge_partials
from pondstream.sql.planner import ViewPlan

TS = pa.timestamp("us")


def sessionize(keys: pa.Table, start: np.ndarray, end: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(row order sorted by keys then start, session number per sorted row) for intervals [start, end)."""
    n = len(start)
    if n == 0:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    table = keys.append_column("__start", pa.array(start, pa.int64()))
    order = pc.sort_indices(table, sort_keys=[(c, "ascending") for c in table.column_names]).to_numpy()
    s, e = start[order], end[order]
    change = key_changes(keys.take(pa.array(order)))
    run_end = running_max(e, change)
    new = change.copy()
    new[1:] |= s[1:] >= run_end[:-1]
    return order, np.cumsum(new) - 1


def merge_sessions(plan: ViewPlan, tables: list[pa.Table | None]) -> pa.Table | None:
    """Partial sessions (any number of tables) merged wherever they overlap, one row per session."""
    tables = [t for t in tables if t is not None and t.num_rows]
    if not tables:
        return None
    table = pa.concat_tables(tables)
    lo, hi = plan.session_bounds
    start = table.column(lo).cast(pa.int64()).to_numpy()
    end = table.column(hi).cast(pa.int64()).to_numpy() + plan.window.size_us
    order, ids = sessionize(table.select(plan.key_columns), start, end)
    table = table.take(pa.array(order)).set_column(0, "__ws", pa.array(ids).cast(TS))
    return merge_partials(plan, [table])


def session_bounds(merged: pa.Table, plan: ViewPlan) -> tuple[np.ndarray, np.ndarray]:
    """(start, end) in µs of each merged session: first event, last event + gap."""
    lo, hi = plan.session_bounds
    return (merged.column(lo).cast(pa.int64()).to_numpy(),
            merged.column(hi).cast(pa.int64()).to_numpy() + plan.window.size_us)
