"""The windowed aggregate of one view: per-batch filter/project, window assignment, lateness, partials;
and per closed window the finalize step that turns merged partials into the view's rows."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from pondstream.operators.partials import first_partials
from pondstream.operators.session import session_bounds, sessionize
from pondstream.operators.window import assign, true_start
from pondstream.sql.planner import ViewPlan, session


@dataclass
class BatchResult:
    partials: pa.Table | None  # per (window, keys) for on-time rows
    late_rows: np.ndarray  # indices into the input batch of rows that arrived for closed windows
    late_windows: np.ndarray  # the window start (µs) each late row was meant for


class WindowAggregate:
    """Stateless per batch: state merging and emission live with the runner's checkpoint."""

    def __init__(self, plan: ViewPlan) -> None:
        self.plan = plan
        self.ctx = session()

    def process(self, batch: pa.Table, watermark_us: int | None) -> BatchResult:
        """`batch` carries a `__row` column; `watermark_us` is the watermark before this batch."""
        self.ctx.deregister_table("__batch")
        self.ctx.register_record_batches("__batch", [batch.to_batches()])
        pre = self.ctx.sql(self.plan.pre_sql).to_arrow_table()  # re-planned: plans keep old providers
        empty = np.empty(0, np.int64)
        if pre.num_rows == 0:
            return BatchResult(None, empty, empty)
        ts = pre.column("__ts").combine_chunks().cast(pa.int64()).to_numpy(zero_copy_only=False)
        if self.plan.window.kind == "session":
            return self._sessions(pre, ts, watermark_us)
        if self.plan.window.kind == "running":  # no window, so nothing is ever late
            return BatchResult(first_partials(self.plan, pre, np.zeros(len(ts), np.int64)), empty, empty)
        rows, ws = assign(ts, self.plan.window)
        if watermark_us is not None:  # too late: the window ended (plus allowed lateness) before this batch
            late = ws + self.plan.window.size_us + self.plan.lateness_us <= watermark_us
            if late.any():
                late_idx = np.flatnonzero(late) if rows is None else rows[late]
                late_rows = pre.column("__row").take(pa.array(late_idx)).to_numpy()
                late_ws = ws[late]
                on_time = ~late
                rows = np.flatnonzero(on_time) if rows is None else rows[on_time]
                ws = ws[on_time]
                taken = pre.take(pa.array(rows))
                part = first_partials(self.plan, taken, ws) if len(ws) else None
                return BatchResult(part, late_rows, late_ws)
        taken = pre if rows is None else pre.take(pa.array(rows))
        return BatchResult(first_partials(self.plan, taken, ws), empty, empty)

    def _sessions(self, pre: pa.Table, ts: np.ndarray, watermark_us: int | None) -> BatchResult:
        """Each event is the interval [ts, ts + gap); this batch's sessions are those intervals merged per
        key. An event whose own interval ended before the watermark is late."""
        gap = self.plan.window.size_us
        late = ts + gap <= watermark_us if watermark_us is not None else np.zeros(len(ts), dtype=bool)
        late_rows = pre.column("__row").filter(pa.array(late)).to_numpy() if late.any() else np.empty(0, np.int64)
        late_starts = ts[late]  # a late event's own session would have started at its event time
        keep = np.flatnonzero(~late)
        if not len(keep):
            return BatchResult(None, late_rows, late_starts)
        pre, ts = pre.take(pa.array(keep)), ts[keep]
        order, ids = sessionize(pre.select(self.plan.key_columns), ts, ts + gap)
        return BatchResult(first_partials(self.plan, pre.take(pa.array(order)), ids), late_rows, late_starts)

    def buckets(self, partials: pa.Table, n: int) -> np.ndarray:
        """A stable shard number in [0, n) per row, from an md5 of the group keys (computed by DataFusion)."""
        keys = [f"COALESCE(CAST({k} AS VARCHAR), '\u2205')" for k in self.plan.key_columns]
        self.ctx.deregister_table("__keys")
        self.ctx.register_record_batches("__keys", [partials.select(self.plan.key_columns).to_batches()])
        h = self.ctx.sql(f"SELECT md5(concat_ws('|', {', '.join(keys)})) AS h FROM __keys").to_arrow_table()
        hexes = h.column("h").combine_chunks().cast(pa.string())
        data = np.frombuffer(hexes.buffers()[2], np.uint8)
        starts = np.frombuffer(hexes.buffers()[1], np.int32)[hexes.offset: hexes.offset + len(hexes)]
        c0, c1 = data[starts], data[starts + 1]
        digit = lambda c: np.where(c <= 57, c - 48, c - 87).astype(np.int64)  # noqa: E731 - '0'-'9', 'a'-'f'
        return (digit(c0) * 16 + digit(c1)) % n

    def finalize(self, merged: pa.Table) -> pa.Table:
        """The view's rows for complete windows, ordered by window and key for row-group statistics."""
        spec = self.plan.window
        if spec.kind == "session":
            start, end = session_bounds(merged, self.plan)
        else:
            wid = merged.column("__ws").combine_chunks().cast(pa.int64()).to_numpy()
            start, end = true_start(wid, spec), wid + spec.size_us
        win = merged.set_column(0, "__ws", pa.array(start).cast(pa.timestamp("us")))
        win = win.append_column("__we", pa.array(end).cast(pa.timestamp("us")))
        self.ctx.deregister_table("__win")
        self.ctx.register_record_batches("__win", [win.to_batches()])
        out = self.ctx.sql(self.plan.final_sql).to_arrow_table()
        order = [(c, "ascending") for c in self.plan.time_columns] + [
            (c, "ascending") for c in self.plan.identity_columns if c not in self.plan.time_columns
        ]
        return out.sort_by(order) if order else out
