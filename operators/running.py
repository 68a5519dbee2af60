"""Running aggregates with `state_ttl`, decided per event like lateness: a key starts again from zero
when an event of it meets a watermark at or past the key's last event time + the TTL (it was idle that
long in event time). So what a key's row holds never depends on when checkpoints happened to forget it.

Each partial row carries two columns besides the aggregates: `__reset` (its events began with such a
restart, so everything older for that key is void) and `__first_wm` (the watermark its first event
met, to decide that restart against older state when they are merged). Dropping idle keys from state at
a checkpoint is then only a memory saving: any later event of theirs restarts them anyway.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pondstream.operators.groups import key_changes, running_max
from pondstream.operators.partials import first_partials, merge_partials
from pondstream.sql.planner import ViewPlan

RESET, FIRST_WM = "__reset", "__first_wm"
NEVER = -(1 << 62)


def _last_restart(change: np.ndarray, restart: np.ndarray) -> np.ndarray:
    """For rows grouped by key: keep[i] is True when no restart follows row i within its key's rows, and
    row i is at or after the key's last restart."""
    pos = np.arange(len(change))
    seg_start = np.maximum.accumulate(np.where(change | restart, pos, 0))  # latest key start or restart
    group = np.cumsum(change) - 1
    last = np.zeros(group[-1] + 1 if len(group) else 0, np.int64)
    np.maximum.at(last, group, seg_start)
    return pos >= last[group]


def _apply(plan: ViewPlan, rows: pa.Table, ts_last: np.ndarray, wm_first: np.ndarray, reset: np.ndarray,
           order_col: str) -> tuple[pa.Table, np.ndarray, np.ndarray, np.ndarray]:
    """Sort `rows` by key then `order_col`, find each key's last restart (an explicit `reset`, or a gap:
    the key's latest event before the row + ttl <= the watermark the row's first event met) and keep the
    rows from there. Returns (kept rows, group id per kept row, restart flag per group, first wm per group)."""
    order = pc.sort_indices(rows, sort_keys=[(k, "ascending") for k in [*plan.key_columns, order_col]]).to_numpy()
    rows = rows.take(pa.array(order))
    ts_last, wm_first, reset = ts_last[order], wm_first[order], reset[order]
    change = key_changes(rows.select(plan.key_columns))
    before = np.concatenate(([NEVER], running_max(ts_last, change)[:-1]))
    before[change] = NEVER
    restart = reset | ((before > NEVER) & (before + plan.state_ttl_us <= wm_first))
    keep = _last_restart(change, restart)
    group = (np.cumsum(change) - 1)[keep]
    firsts = np.flatnonzero(keep & (change | restart))  # the first kept row of each key
    return rows.filter(pa.array(keep)), group, restart[firsts], wm_first[firsts]


def _with_flags(plan: ViewPlan, rows: pa.Table, group: np.ndarray, restart: np.ndarray, wm_first: np.ndarray,
                merge: bool) -> pa.Table:
    """Aggregate kept rows per key (the group id stands in for the window column during the group-by) and
    attach the key's restart flag and first watermark."""
    ws = rows.column("__ws") if "__ws" in rows.column_names else None
    if merge:
        body = rows.drop_columns([c for c in (RESET, FIRST_WM, "__ws") if c in rows.column_names])
        part = merge_partials(plan, [body.add_column(0, "__ws", pa.array(group, pa.int64()).cast(pa.timestamp("us")))])
    else:
        part = first_partials(plan, rows, group)
    gid = part.column("__ws").cast(pa.int64()).to_numpy()
    if ws is not None:  # the shard number the rows were stored under
        _, first_of = np.unique(group, return_index=True)
        part = part.set_column(0, "__ws", ws.take(pa.array(first_of[gid])))
    else:
        part = part.set_column(0, "__ws", pa.array(np.zeros(len(gid), np.int64)).cast(pa.timestamp("us")))
    return part.append_column(RESET, pa.array(restart[gid])).append_column(FIRST_WM, pa.array(wm_first[gid]))


def batch_partials(plan: ViewPlan, pre: pa.Table, wm: np.ndarray | None) -> pa.Table:
    """A batch's partials per key, counting only each key's events after its last restart in the batch."""
    if not plan.state_ttl_us or wm is None:
        return first_partials(plan, pre, np.zeros(pre.num_rows, np.int64))
    ts = pre.column("__ts").cast(pa.int64()).to_numpy(zero_copy_only=False)
    rows, group, restart, wm_first = _apply(plan, pre, ts, wm, np.zeros(len(ts), bool), "__row")
    return _with_flags(plan, rows, group, restart, wm_first, merge=False)


def merge_running(plan: ViewPlan, tables: list[pa.Table | None]) -> pa.Table | None:
    """Merge partial tables given oldest first: per key, a table that restarted the key (or whose first
    event found it idle past the TTL) voids the older ones."""
    tables = [t for t in tables if t is not None and t.num_rows]
    if not tables or not plan.state_ttl_us:
        return merge_partials(plan, tables)
    tables = [t if RESET in t.column_names else
              t.append_column(RESET, pa.array(np.zeros(t.num_rows, bool)))
               .append_column(FIRST_WM, pa.array(np.full(t.num_rows, NEVER, np.int64))) for t in tables]
    seq = np.concatenate([np.full(t.num_rows, i, np.int64) for i, t in enumerate(tables)])
    rows = pa.concat_tables(tables).append_column("__seq", pa.array(seq))
    last = rows.column(plan.last_seen).cast(pa.int64()).to_numpy(zero_copy_only=False)
    wm_first = rows.column(FIRST_WM).to_numpy(zero_copy_only=False)
    reset = rows.column(RESET).to_numpy(zero_copy_only=False)
    kept, group, restart, wm0 = _apply(plan, rows, last, wm_first, reset, "__seq")
    return _with_flags(plan, kept.drop_columns(["__seq"]), group, restart, wm0, merge=True)
