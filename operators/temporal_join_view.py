"""Temporal joins (`FROM o [LEFT] JOIN c FOR SYSTEM_TIME AS OF o.ts ON o.k = c.k`): each left row meets
the right row of its key that was current at the left row's event time (the one with the latest time at
or before it), decided per event so results never depend on batching or interleaving:

- Late rows of either side (event time below the watermark of the events before them in their own
  partition) go to the view's late series, as for every join.
- A left row waits until the right side's watermark has passed its time: then no on-time right row at or
  before it can still arrive, so its partner is final. It is emitted then (null-padded for LEFT JOIN when
  the key had no row yet), once.
- The right side keeps, per key, the latest row at or before the oldest time a left row can still have
  (its own watermark, or an older waiting row), plus every newer row: older versions can never be a
  partner again. So state is about one row per key, plus recent versions, plus waiting left rows.

The right side is any stream: a changelog of upserts (latest row per key wins), e.g. a compacted topic
keyed by the ON columns, or files.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pondstream.operators.groups import key_changes, running_max
from pondstream.operators.interval_join_view import (
    DUE,
    OFFSET,
    PAIR,
    RID,
    SIDE_BITS,
    IntervalJoinView,
    _concat,
)
from pondstream.operators.source import as_json
from pondstream.operators.view_operator import Emission
from pondstream.operators.watermark import END_OF_STREAM
from pondstream.state.store import Txn

BASE = 2 << SIDE_BITS  # the right side's compacted rows: the latest per key at or before the compaction time


class TemporalJoinView(IntervalJoinView):
    def flush(self, txn: Txn, watermarks: list[int | None], epoch: int) -> list[Emission]:
        wl, wr = watermarks
        new_left, new_right = (self._with_ids(_concat(p)) for p in self.pending)
        self.pending = [[], []]
        # Left rows that may be ready: new ones, and stored ones in buckets that start below the right watermark.
        left = _concat([self._take_waiting(txn, wr), new_left]) if wr is not None else None
        if wr is None:
            self._store(txn, 0, new_left, epoch)
        ready = waiting = None
        if left is not None:
            due = self._time(left, 0)
            ok = due < wr if wr is not None else np.zeros(len(due), bool)
            ready, waiting = left.filter(pa.array(ok)), left.filter(pa.array(~ok))
        self._store(txn, 0, waiting, epoch)
        out = []
        if ready is not None and ready.num_rows:
            right = _concat([self._stored_right(), new_right])
            out.append(Emission(self._matched(ready, right), False, self._output_watermark(watermarks)))
        oldest = [int((w & ((1 << SIDE_BITS) - 1)) - OFFSET) * self.j.bucket_us for w in self.state.runs
                  if w >> SIDE_BITS == 0]  # the start of every bucket still holding waiting rows
        if wl is not None:  # keep what a waiting or future left row can still need
            new_right = self._fold(txn, min([wl, *oldest]), new_right, epoch)
        self._store(txn, 1, new_right, epoch)
        return out

    def _stored_right(self) -> pa.Table | None:
        ids = {w for w in self.state.runs if w >> SIDE_BITS == 1 or w == BASE}
        return _concat([t.drop_columns(["__ws"]) for t in self.state.read(ids)])

    def _fold(self, txn: Txn, horizon: int, new: pa.Table | None, epoch: int) -> pa.Table | None:
        """Fold the right side's rows at or before `horizon` (stored buckets that end by then, and such
        `new` rows) into the latest row per key, once they hold a quarter of what the folded rows do (so
        the base is not rewritten every checkpoint). Returns the new rows still to store."""
        mask = (1 << SIDE_BITS) - 1
        if horizon >= END_OF_STREAM:  # the left side has ended: no row will ever need a version again
            for w in [w for w in self.state.runs if w >> SIDE_BITS == 1 or w == BASE]:
                self.state.drop(txn, w)
            return None
        old = [w for w in self.state.runs if w >> SIDE_BITS == 1
               and ((w & mask) - OFFSET + 1) * self.j.bucket_us - 1 <= horizon]
        fresh = None
        if new is not None:
            young = self._time(new, 1) > horizon
            new, fresh = new.filter(pa.array(young)), new.filter(pa.array(~young))
        due = sum(self.state.sizes[w] for w in old) + (fresh.nbytes if fresh is not None else 0)
        if not due or due * 4 < self.state.sizes.get(BASE, 0):
            return _concat([new, fresh])
        rows = _concat([*(t.drop_columns(["__ws"]) for t in self.state.read({*old, BASE})), fresh])
        for w in [*old, BASE]:
            self.state.drop(txn, w)
        keys = list(self.j.keys[1])
        order = pc.sort_indices(rows, sort_keys=[*((k, "ascending") for k in keys), (DUE, "descending"),
                                                  (RID, "descending")])
        rows = rows.take(order)
        rows = rows.filter(pa.array(key_changes(rows.select(keys))))  # the first, i.e. latest, per key
        self.state.append(txn, rows.add_column(0, "__ws", pa.array(np.full(rows.num_rows, BASE)).cast(
            pa.timestamp("us"))), epoch)
        return new

    def _take_waiting(self, txn: Txn, below: int) -> pa.Table | None:
        """The waiting left rows in buckets that start below `below` (the right watermark), removed from
        state: the caller stores back the ones still waiting."""
        mask = (1 << SIDE_BITS) - 1
        ids = {w for w in self.state.runs if w >> SIDE_BITS == 0 and ((w & mask) - OFFSET) * self.j.bucket_us < below}
        rows = _concat([t.drop_columns(["__ws"]) for t in self.state.read(ids)])
        for w in ids:
            self.state.drop(txn, w)
        return rows

    def _matched(self, left: pa.Table, right: pa.Table | None) -> pa.Table:
        """Each left row with its key's right row as of its time, through the select list: DataFusion joins
        them by the partner's row id (`__pair`; -1 when there is none: dropped by an inner join, null-padded
        by LEFT JOIN), so WHERE filters before any wide row is copied."""
        if right is None:
            right = self._nulls(1, 0)
        idx = self._as_of(left, right) if right.num_rows else np.full(left.num_rows, -1)
        rids = right.column(RID).to_numpy(zero_copy_only=False)
        pair = np.where(idx >= 0, rids[np.maximum(idx, 0)] if len(rids) else -1, -1)
        if not self.j.outer[0]:
            left, pair = left.filter(pa.array(pair >= 0)), pair[pair >= 0]
        left = left.append_column(PAIR, pa.array(pair, pa.int64()))
        right = right.append_column(PAIR, right.column(RID))

        out = self._isolated(lambda lo, hi: self._sql(self.plan.final_sql, left.slice(lo, hi - lo), right),
                             left.num_rows, lambda rows: as_json(left.take(pa.array(rows)).drop_columns([RID, PAIR, DUE])))
        return self._in_time_order(out)

    def _as_of(self, left: pa.Table, right: pa.Table) -> np.ndarray:
        """For each left row, the index of the right row with equal keys and the latest (time, arrival) at
        or before the left row's time, or -1: one sort of both sides by (key, time), right rows first at
        equal times, then a running maximum of right positions that restarts at every key."""
        lk, rk = self.j.keys
        nl, nr = left.num_rows, right.num_rows
        cols = {}
        for i, (a, b) in enumerate(zip(lk, rk, strict=True)):
            la = left.column(a).combine_chunks()
            cols[f"k{i}"] = pa.concat_arrays([la, right.column(b).combine_chunks().cast(la.type)])
        cols["t"] = pa.concat_arrays([left.column(DUE).combine_chunks(), right.column(DUE).combine_chunks()])
        cols["side"] = pa.array(np.concatenate([np.ones(nl, np.int8), np.zeros(nr, np.int8)]))
        cols["rid"] = pa.concat_arrays([left.column(RID).combine_chunks(), right.column(RID).combine_chunks()])
        valid = np.ones(nl + nr, bool)  # a NULL key equals nothing
        for i in range(len(lk)):
            valid &= pc.is_valid(cols[f"k{i}"]).to_numpy(zero_copy_only=False)
        both = pa.table(cols).filter(pa.array(valid))
        source = np.flatnonzero(valid)  # row of `both` -> left row i, or right row i - nl
        order = pc.sort_indices(both, sort_keys=[*((f"k{i}", "ascending") for i in range(len(lk))),
                                                 ("t", "ascending"), ("side", "ascending"), ("rid", "ascending")])
        order = order.to_numpy()
        sorted_keys = both.select([f"k{i}" for i in range(len(lk))]).take(pa.array(order))
        src = source[order]
        is_right = src >= nl
        pos = np.arange(len(order))
        last = running_max(np.where(is_right, pos, -1), key_changes(sorted_keys))
        out = np.full(nl, -1, np.int64)
        mine = ~is_right
        found = last[mine]
        out[src[mine]] = np.where(found >= 0, src[np.maximum(found, 0)] - nl, -1)
        return out

    def _output_watermark(self, watermarks: list[int | None]) -> int | None:
        """Rows still to come are left rows waiting for the right watermark, or newer ones."""
        wl, wr = watermarks
        return None if wl is None or wr is None else min(wl, wr)

