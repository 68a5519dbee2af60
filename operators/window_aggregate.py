"""The windowed aggregate of one view: per-batch filter/project, window assignment, lateness, partials;
and per closed window the finalize step that turns merged partials into the view's rows."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from pondstream.operators.isolate import bisect_failures
from pondstream.operators.partials import first_partials
from pondstream.operators.running import batch_partials
from pondstream.operators.session import session_bounds, sessionize
from pondstream.operators.top_n import ranked_rows
from pondstream.operators.window import assign, true_start, window_end
from pondstream.sql.planner import ViewPlan, session


@dataclass
class BatchResult:
    partials: pa.Table | None  # per (window, keys) for on-time rows
    late_rows: np.ndarray  # indices into the input batch of rows that arrived for closed windows
    late_windows: np.ndarray  # the window start (µs) each late row was meant for
    errors: list[tuple[int, str]] = field(default_factory=list)  # (input row, message): expression failed


class WindowAggregate:
    """Stateless per batch: state merging and emission live with the runner's checkpoint."""

    def __init__(self, plan: ViewPlan) -> None:
        self.plan = plan
        self.ctx = session()
        self.final_errors: list[tuple[pa.Table, str]] = []  # (window rows, message) finalize set aside

    def _sql(self, sql: str, name: str, table: pa.Table) -> pa.Table:
        self.ctx.deregister_table(name)
        self.ctx.register_record_batches(name, [table.to_batches() or [pa.RecordBatch.from_pylist([], table.schema)]])
        return self.ctx.sql(sql).to_arrow_table()  # re-planned each time: plans keep old providers

    def isolated(self, sql: str, name: str, table: pa.Table) -> tuple[pa.Table, list[tuple[int, str]]]:
        """`sql` over `table`; rows on which an expression fails (division by zero, a failed CAST) are
        bisected out and returned as (row index, message), so one poison row cannot stop the view."""
        try:
            return self._sql(sql, name, table), []
        except Exception:  # DataFusion raises plain Exceptions for data errors  # noqa: BLE001
            done, failed = bisect_failures(table.num_rows, lambda lo, hi: self._sql(sql, name, table.slice(lo, hi - lo)))
        good = [t for _, _, t in done]
        out = pa.concat_tables(good) if good else self._sql(sql, name, table.slice(0, 0))
        return out, [(i, f"expression error in view {self.plan.name}: {msg}") for i, msg in failed]

    def process(self, batch: pa.Table, watermarks: np.ndarray | None) -> BatchResult:
        """`batch` carries a `__row` column; `watermarks[row]` is the watermark that row is judged by
        (see Watermark.per_event), or None when nothing can be late (a view recomputed at close)."""
        pre, errors = self.isolated(self.plan.pre_sql, "__batch", batch)
        rows_failed = [(int(batch.column("__row")[i].as_py()), msg) for i, msg in errors]
        result = self._windows(pre, watermarks)
        result.errors = rows_failed
        return result

    def _windows(self, pre: pa.Table, watermarks: np.ndarray | None) -> BatchResult:
        empty = np.empty(0, np.int64)
        if pre.num_rows == 0:
            return BatchResult(None, empty, empty)
        ts = pre.column("__ts").combine_chunks().cast(pa.int64()).to_numpy(zero_copy_only=False)
        row = pre.column("__row").combine_chunks().to_numpy()
        wm = None if watermarks is None else watermarks[row]
        if self.plan.window.kind == "running":  # no window, so nothing is ever late
            return BatchResult(batch_partials(self.plan, pre, wm), empty, empty)
        if self.plan.window.kind == "session":  # an event's own session [ts, ts + gap) must still be open
            rows, ws, end = None, ts, ts + self.plan.window.size_us
        else:
            rows, ws = assign(ts, self.plan.window)
            end = ws + self.plan.window.size_us + self.plan.lateness_us
        late = np.zeros(len(ws), bool) if wm is None else end <= (wm if rows is None else wm[rows])
        late_rows, late_ws = (row if rows is None else row[rows])[late], ws[late]
        if late.any():
            keep = np.flatnonzero(~late)
            rows = keep if rows is None else rows[keep]
            ws = ws[keep]
        if not len(ws):
            return BatchResult(None, late_rows, late_ws)
        taken = pre if rows is None else pre.take(pa.array(rows))
        if self.plan.window.kind == "session":
            order, ids = sessionize(taken.select(self.plan.key_columns), ws, ws + self.plan.window.size_us)
            return BatchResult(first_partials(self.plan, taken.take(pa.array(order)), ids), late_rows, late_ws)
        return BatchResult(first_partials(self.plan, taken, ws), late_rows, late_ws)

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
            start, end = true_start(wid, spec), window_end(wid, spec)
        win = merged.set_column(0, "__ws", pa.array(start).cast(pa.timestamp("us")))
        win = win.append_column("__we", pa.array(end).cast(pa.timestamp("us")))
        if self.plan.top is not None:
            win = ranked_rows(self.plan, win)
        out, failed = self.isolated(self.plan.final_sql, "__win", win)
        if failed:
            self.final_errors.append((win.take(pa.array([i for i, _ in failed])), failed[0][1]))
        order = [(c, "ascending") for c in self.plan.time_columns] + [
            (c, "ascending") for c in self.plan.identity_columns if c not in self.plan.time_columns
        ]
        return out.sort_by(order) if order else out
