"""Interval joins (`FROM a JOIN b ON a.k = b.k AND b.ts BETWEEN a.ts + lo AND a.ts + hi`) and window joins
(both sides windowed alike, paired per window: the rows are due when their window ends), INNER and
LEFT/RIGHT/FULL OUTER, decided per event so results never depend on batching or interleaving:

- A row is late, and goes to the view's late series, when its event time is below the watermark of the
  events before it in its own partition (as for windows). Every other row is joined with every on-time
  row of the other side that satisfies ON: a partner is purged only once no on-time row could match it.
- Each side's rows are kept in RocksDB, bucketed by event time, until the other side's watermark passes
  them: a left row with time t can match right rows up to t + hi, so it goes once the right watermark is
  past t + hi (right rows symmetrically, past t - lo). An outer side's rows that never matched are
  emitted null-padded then, never before.
- Matches are emitted at the checkpoint after both rows arrived; a version's watermark bounds the event
  time of rows still to come, so a windowed view over the join closes its windows correctly.

The ON condition and the select list run in DataFusion: pairs are found with the ON condition as
written, then the select list (and WHERE) is evaluated over the paired rows, with poison rows bisected
out into the stream's errors like any expression failure.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pondstream.operators.isolate import bisect_failures
from pondstream.operators.source import as_json, bad_records
from pondstream.operators.view_operator import TS, Emission, Flush, ViewOperator
from pondstream.operators.watermark import END_OF_STREAM
from pondstream.operators.window import assign, true_start, window_end
from pondstream.sql.planner import ViewPlan, session
from pondstream.state.store import StateStore, Txn
from pondstream.state.window_state import WindowState

RID, PAIR, DUE = "__rid", "__pair", "__due"
OFFSET = 1 << 48  # bucket numbers are shifted so times before 1970 still give positive RocksDB keys
SIDE_BITS = 56  # window id = side << SIDE_BITS | bucket: 0, 1 the rows of each side, 2, 3 their matched ids
LATE_SCHEMA = pa.schema([("_side", pa.string()), ("_row", pa.string()), ("_event_time", TS), ("_watermark", TS)])


def _concat(tables: list[pa.Table | None]) -> pa.Table | None:
    tables = [t for t in tables if t is not None and t.num_rows]
    return pa.concat_tables(tables) if tables else None


class IntervalJoinView(ViewOperator):
    """Two inputs: 0 is the left side of the JOIN, 1 the right. State per side: its rows by time bucket,
    and for an outer side the ids of its rows that found a partner."""

    def __init__(self, plan: ViewPlan, store: StateStore, meta: dict[str, Any]) -> None:
        self.plan, self.meta = plan, meta
        self.j = plan.join
        self.ctx = session()
        self.state = WindowState(store, plan.name, _concat)
        self.pending: list[list[pa.Table]] = [[], []]
        self.late = []
        self.failed: list[tuple[bytes, str]] = []  # (the row or pair as JSON, message): expression failures
        self.seq = int(meta.get("join_seq", 0))  # row ids are unique over the view's life

    def merge(self, tables: list[pa.Table | None]) -> pa.Table | None:
        return _concat(tables)

    # -- per batch ---------------------------------------------------------------------------------
    def process(self, data: pa.Table, watermarks: np.ndarray | None, side: int = 0) -> tuple[list, int]:
        """Each row gets its due time `__due`: it is late when that is below its own watermark, and is
        kept until the other side's watermark passes due + reach (see _gone). For an interval join the
        due time is the event time; in a window join each row is one per window it falls in (HOP and
        CUMULATE windows overlap), due when its window ends."""
        ts = data.column(self.j.times[side]).cast(pa.int64()).to_numpy(zero_copy_only=False)
        rows = data.drop_columns(["__row"])
        spec = self.j.window
        if spec is None:
            due = ts
        else:
            idx, wid = assign(ts, spec)
            if idx is not None:
                rows, ts = rows.take(pa.array(idx)), ts[idx]
                watermarks = None if watermarks is None else watermarks[idx]
            end = window_end(wid, spec)
            rows = rows.append_column("window_start", pa.array(true_start(wid, spec)).cast(TS))
            rows = rows.append_column("window_end", pa.array(end).cast(TS))
            due = end - 1
        late = np.zeros(len(ts), bool) if watermarks is None else due < watermarks
        rows = rows.append_column(DUE, pa.array(due, pa.int64()))
        if late.any():
            gone = rows.filter(pa.array(late)).drop_columns([DUE])
            self.late.append(pa.table({
                "_side": [self.j.aliases[side]] * gone.num_rows, "_row": [r.decode() for r in as_json(gone)],
                "_event_time": pa.array(ts[late]).cast(TS), "_watermark": pa.array(watermarks[late]).cast(TS)},
                schema=LATE_SCHEMA))
            rows = rows.filter(pa.array(~late))
        if rows.num_rows:
            self.pending[side].append(rows)
        return [], int(late.sum())

    # -- checkpoint --------------------------------------------------------------------------------
    def checkpoint(self, txn: Txn, watermarks: list[int | None], epoch: int) -> Flush:
        # A window view's rows are its windows' starts: they stay above its watermark less the window size.
        watermarks = [w if w is None or w >= END_OF_STREAM else w - lag
                      for w, lag in zip(watermarks, self.j.lags, strict=True)]
        out = Flush(emissions=[e for e in self.flush(txn, watermarks, epoch) if e.rows.num_rows])
        if self.late:
            out.late, self.late = pa.concat_tables(self.late), []
        if self.failed:
            out.bad.append(bad_records(f"view {self.plan.name}", [-1] * len(self.failed),
                                       [raw for raw, _ in self.failed], [msg for _, msg in self.failed]))
        self.failed = []
        self.meta["join_seq"] = self.seq
        return out

    def flush(self, txn: Txn, watermarks: list[int | None], epoch: int) -> list[Emission]:
        new = [self._with_ids(_concat(p)) for p in self.pending]
        self.pending = [[], []]
        out_wm = self._output_watermark(watermarks)
        pairs: list[tuple[pa.Table, pa.Table]] = []
        stored = [self._stored(1 - s, new[s], s) for s in (0, 1)]  # candidates of the other side for new rows
        if new[0] is not None:
            pairs.append(self._pairs(new[0], _concat([stored[0], new[1]])))
        if new[1] is not None and stored[1] is not None:
            pairs.append(self._pairs(stored[1], new[1]))
        left = _concat([p[0] for p in pairs])
        right = _concat([p[1] for p in pairs])
        emissions = []
        matched: list[pa.Table | None] = [None, None]  # (time, id) of the rows of each side matched now
        if left is not None:
            emissions.append(Emission(self._select(left, right), False, out_wm))
            matched = [rows.select([DUE, RID]) for rows in (left, right)]
        for side in (0, 1):
            emissions += self._purge(txn, side, watermarks[1 - side], new[side], matched[side], out_wm, epoch)
        return emissions

    def _with_ids(self, rows: pa.Table | None) -> pa.Table | None:
        if rows is None:
            return None
        ids = np.arange(self.seq, self.seq + rows.num_rows, dtype=np.int64)
        self.seq += rows.num_rows
        return rows.append_column(RID, pa.array(ids))

    def _bucket(self, ts: np.ndarray) -> np.ndarray:
        return ts // self.j.bucket_us + OFFSET

    def _time(self, rows: pa.Table, side: int) -> np.ndarray:
        """The due time of each row (see process)."""
        return rows.column(DUE).to_numpy(zero_copy_only=False)

    def _store(self, txn: Txn, wid: int, rows: pa.Table | None, epoch: int) -> None:
        """Append `rows` to state under their time buckets (window ids of kind `wid`)."""
        if rows is None or not rows.num_rows:
            return
        side = wid % 2
        w = (wid << SIDE_BITS) | self._bucket(self._time(rows, side))
        self.state.append(txn, rows.add_column(0, "__ws", pa.array(w).cast(TS)).sort_by("__ws"), epoch)

    def _read(self, wid: int, buckets: set[int]) -> pa.Table | None:
        runs = self.state.read({(wid << SIDE_BITS) | b for b in buckets})
        t = _concat(runs)
        return None if t is None else t.drop_columns(["__ws"])

    def _stored(self, side: int, other: pa.Table | None, other_side: int) -> pa.Table | None:
        """Stored rows of `side` in the buckets that rows of the other side could match."""
        if other is None:
            return None
        ts = self._time(other, other_side)
        lo, hi = (ts.min() + self.j.lo_us, ts.max() + self.j.hi_us) if side == 1 else \
            (ts.min() - self.j.hi_us, ts.max() - self.j.lo_us)
        b_lo, b_hi = int(self._bucket(np.array([lo]))[0]), int(self._bucket(np.array([hi]))[0])
        have = {w & ((1 << SIDE_BITS) - 1) for w in self.state.runs if w >> SIDE_BITS == side}
        return self._read(side, {b for b in have if b_lo <= b <= b_hi})

    def _pairs(self, left: pa.Table, right: pa.Table | None) -> tuple[pa.Table, pa.Table]:
        """(left rows, right rows) of every pair satisfying ON, row-aligned."""
        if right is None or not right.num_rows:
            return left.slice(0, 0), self._nulls(1, 0)

        found = self._isolated(lambda lo, hi: self._sql(self.j.pairs_sql, left.slice(lo, hi - lo), right),
                               left.num_rows, lambda rows: as_json(left.take(pa.array(rows)).drop_columns([RID])),
                               " (ON)")
        li = pc.index_in(found.column("l"), value_set=left.column(RID))
        ri = pc.index_in(found.column("r"), value_set=right.column(RID))
        return left.take(li), right.take(ri)

    def _sql(self, sql: str, left: pa.Table, right: pa.Table) -> pa.Table:
        for name, t in zip(self.j.aliases, (left, right), strict=True):
            self.ctx.deregister_table(name)
            self.ctx.register_record_batches(name, [t.to_batches() or [pa.RecordBatch.from_pylist([], t.schema)]])
        return self.ctx.sql(sql).to_arrow_table()

    def _nulls(self, side: int, n: int) -> pa.Table:
        schema = self.j.schemas[side].append(pa.field(DUE, pa.int64())).append(pa.field(RID, pa.int64()))
        return pa.table([pa.nulls(n, f.type) for f in schema], schema=schema)

    def _select(self, left: pa.Table, right: pa.Table) -> pa.Table:
        """The select list (and WHERE) over row-aligned pairs; rows it fails on go to the errors."""
        pair = pa.array(np.arange(left.num_rows, dtype=np.int64))
        left, right = left.append_column(PAIR, pair), right.append_column(PAIR, pair)

        def pair_json(rows: list[int]) -> list[bytes]:
            sides = [t.take(pa.array(rows)).drop_columns([RID, PAIR]).to_pylist() for t in (left, right)]
            return [json.dumps(dict(zip(self.j.aliases, pair, strict=True)), default=str).encode()
                    for pair in zip(*sides, strict=True)]
        out = self._isolated(lambda lo, hi: self._sql(self.plan.final_sql, left.slice(lo, hi - lo),
                                                      right.slice(lo, hi - lo)), left.num_rows, pair_json)
        return self._in_time_order(out)

    def _isolated(self, run: Callable[[int, int], pa.Table], n: int, raw: Callable[[list[int]], list[bytes]],
                  where: str = "") -> pa.Table:
        """`run(0, n)`, or, when it fails, the rows that work: the failing left rows are bisected out and
        recorded (as `raw` describes them) for the stream's errors, so one poison row stops nothing."""
        try:
            return run(0, n)
        except Exception:  # noqa: BLE001 - DataFusion raises plain Exceptions for data errors
            done, failed = bisect_failures(n, run)
        if failed:
            self.failed += [(r, f"expression error in view {self.plan.name}{where}: {msg}")
                            for r, (_, msg) in zip(raw([i for i, _ in failed]), failed, strict=True)]
        return _concat([t for _, _, t in done]) or run(0, 0)

    def _in_time_order(self, out: pa.Table) -> pa.Table:
        order = [(c, "ascending") for c in self.plan.time_columns]
        return out.sort_by(order) if order else out

    def _gone(self, buckets: np.ndarray, side: int, other_wm: int | None) -> np.ndarray:
        """Which time buckets of `side` no on-time row of the other side can match any more: the last time
        in bucket b is (b - OFFSET + 1) * size - 1, and its partners reach that + hi (left) or - lo (right)."""
        if other_wm is None:
            return np.zeros(len(buckets), bool)
        reach = self.j.hi_us if side == 0 else -self.j.lo_us
        return (buckets - OFFSET + 1) * self.j.bucket_us - 1 + reach < other_wm

    def _purge(self, txn: Txn, side: int, other_wm: int | None, new: pa.Table | None, matched: pa.Table | None,
               out_wm: int | None, epoch: int) -> list[Emission]:
        """Store this checkpoint's rows of `side` (and, for an outer side, the ids that found a partner),
        then drop the buckets the other side's watermark has passed, emitting an outer side's rows there
        that never matched, null-padded."""
        j, mask = self.j, (1 << SIDE_BITS) - 1
        stored = np.array(sorted(w & mask for w in self.state.runs if w >> SIDE_BITS == side), np.int64)
        gone = set(stored[self._gone(stored, side, other_wm)].tolist())
        fresh_gone = None
        if new is not None:  # rows of this checkpoint in a bucket already passed are never stored
            g = self._gone(self._bucket(self._time(new, side)), side, other_wm)
            fresh_gone = new.filter(pa.array(g))
            self._store(txn, side, new.filter(pa.array(~g)), epoch)
        if j.outer[side] and matched is not None:
            self._store(txn, side + 2, matched, epoch)  # dropped below if its bucket goes
        emissions = []
        if j.outer[side]:
            rows = _concat([self._read(side, gone) if gone else None, fresh_gone])
            if rows is not None:
                ids = [t.column(RID) for t in (self._read(side + 2, gone) if gone else None, matched) if t is not None]
                if ids:
                    hit = pc.is_in(rows.column(RID), value_set=pa.chunked_array(ids).combine_chunks())
                    rows = rows.filter(pc.invert(hit))
                if rows.num_rows:
                    pad = self._nulls(1 - side, rows.num_rows)
                    emissions.append(Emission(self._select(*((rows, pad) if side == 0 else (pad, rows))), False,
                                              out_wm))
        for w in {(side << SIDE_BITS) | b for b in gone} | {((side + 2) << SIDE_BITS) | b for b in gone}:
            self.state.drop(txn, w)
        if j.outer[side] and matched is not None:  # ids of rows purged just now need no keeping
            b = self._bucket(self._time(matched, side))
            for w in set(((side + 2) << SIDE_BITS) | b[self._gone(b, side, other_wm)]):
                self.state.drop(txn, int(w))
        return emissions

    def _output_watermark(self, watermarks: list[int | None]) -> int | None:
        """No row still to come has an event time below this (as the output's time column counts it)."""
        wl, wr = watermarks
        if wl is None or wr is None:
            return None
        slack = self.j.bucket_us  # rows are purged a bucket at a time
        if self.j.window is not None:  # rows still held are in windows not yet closed on the other side
            return min(wl, wr) - self.j.window.size_us - slack
        if self.j.time_side is None:
            return min(wl, wr)
        if self.j.time_side == 0:
            return min(wl, wr - self.j.hi_us - slack)
        return min(wr, wl + self.j.lo_us - slack)

    @property
    def open_windows(self) -> int:
        return sum(1 for w in self.state.runs if w >> SIDE_BITS < 2)
