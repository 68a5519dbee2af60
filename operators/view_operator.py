"""What every materialized view's operator does, whatever its kind: the interface the runner drives.

An operator takes batches of its input (`process`) and, at each checkpoint, given the watermark, puts
its state changes into the checkpoint's write batch and returns what to emit (`checkpoint`). It never
writes files or commits itself: the runner writes the emitted rows as versions of the view's series in
the same atomic checkpoint. Each window kind is one subclass in a module of its own:

- operators/windowed_view.py     TUMBLE, HOP, CUMULATE (allowed lateness, EMIT EVERY)
- operators/session_view.py      SESSION
- operators/running_view.py      running aggregates (no window; state_ttl)
- operators/recomputed_view.py   a windowed view over another view (no state of its own)
- operators/interval_join_view.py  a join of two streams bounded in event time (and window joins)
- operators/temporal_join_view.py  a join with the right side as of each left row's time
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from pondstream.operators.source import bad_records
from pondstream.operators.window import true_start
from pondstream.operators.window_aggregate import WindowAggregate
from pondstream.sql.planner import ViewPlan
from pondstream.state.store import StateStore, Txn
from pondstream.state.window_state import WindowState

TS = pa.timestamp("us")
MERGE_PENDING_AT = 16  # partial tables of a checkpoint's batches merged into one past this many


@dataclass
class Emission:
    """Rows to write as one version of the view. `supersedes`: some of its (window, key) rows replace
    rows of earlier versions; `watermark` is recorded in the version's log entry (None: early results)."""

    rows: pa.Table
    supersedes: bool
    watermark: int | None


@dataclass
class Flush:
    """A checkpoint's output of one operator: versions to write, late events, windows that failed."""

    emissions: list[Emission] = field(default_factory=list)
    late: pa.Table | None = None  # the <view>__late rows (input columns + _window_start, _watermark)
    bad: list[pa.Table] = field(default_factory=list)  # bad records (BAD_RECORD_SCHEMA) for <stream>__errors


class ViewOperator:
    """The shared part: per-batch aggregation into pending partials and the late rows; subclasses define
    how partials merge (`merge`) and what a checkpoint emits and keeps (`flush`)."""

    def __init__(self, plan: ViewPlan, store: StateStore, meta: dict[str, Any]) -> None:
        self.plan, self.meta = plan, meta  # meta: what the view's checkpoint record carries across runs
        self.agg = WindowAggregate(plan)
        self.state = WindowState(store, plan.name, self.merge)
        self.pending: list[pa.Table] = []
        self.late: list[pa.Table] = []

    def merge(self, tables: list[pa.Table | None]) -> pa.Table | None:
        """Combine partial tables of this view (by window and key, unless the kind says otherwise)."""
        raise NotImplementedError

    def process(self, data: pa.Table, watermarks: np.ndarray | None, side: int = 0) -> tuple[list[tuple[int, str]], int]:
        """One batch of input `side` (0 unless the view joins two), with a `__row` column; `watermarks[row]`
        is what each row is judged by. Returns (rows an expression failed on, as (row, message); number of
        late rows)."""
        r = self.agg.process(data, watermarks)
        if r.partials is not None:
            self.pending.append(r.partials)
            if len(self.pending) >= MERGE_PENDING_AT:
                self.pending = [self.merge(self.pending)]
        if len(r.late_rows):
            rows = data.take(pa.array(r.late_rows)).drop_columns(["__row"])
            starts = r.late_windows if self.plan.window.kind == "session" else true_start(r.late_windows, self.plan.window)
            rows = rows.append_column("_window_start", pa.array(starts).cast(TS))
            self.late.append(rows.append_column("_watermark", pa.array(watermarks[r.late_rows]).cast(TS)))
        return r.errors, len(r.late_rows)

    def checkpoint(self, txn: Txn, watermarks: list[int | None], epoch: int) -> Flush:
        """Put this checkpoint's state changes into `txn` and return what to write; `watermarks` holds
        each input's (one, unless the view joins two)."""
        out = Flush()
        out.emissions = [e for e in self.flush(txn, watermarks[0], epoch) if e.rows.num_rows]
        if self.late:
            out.late = pa.concat_tables(self.late)
            self.late = []
        for rows, msg in self.agg.final_errors:  # windows whose select list failed to evaluate
            out.bad.append(bad_records(f"view {self.plan.name}", [0] * rows.num_rows,
                                       self.failed_windows(rows), [msg] * rows.num_rows))
        self.agg.final_errors = []
        return out

    def flush(self, txn: Txn, watermark: int | None, epoch: int) -> list[Emission]:
        raise NotImplementedError

    def take_pending(self) -> pa.Table | None:
        """This checkpoint's partials, merged into one table (or None), and forget them."""
        merged = self.merge(self.pending) if self.pending else None
        self.pending = []
        return merged

    def emission(self, partials: pa.Table, watermark: int | None, supersedes: bool) -> Emission:
        """The view's rows for merged partials (the select list evaluated per window)."""
        return Emission(self.agg.finalize(partials), supersedes, watermark)

    @property
    def open_windows(self) -> int:
        return self.state.open_windows

    @property
    def state_bytes(self) -> int:
        """What this view holds in RocksDB: it falls back as the watermark lets windows and rows go."""
        return self.state.size_bytes

    def failed_windows(self, rows: pa.Table) -> list[bytes]:
        """What identifies an output row whose select list failed: its window and group keys."""
        keys = rows.select(self.plan.key_columns).to_pylist()
        bounds = rows.select(["__ws", "__we"]).to_pylist()
        return [json.dumps({"window_start": b["__ws"], "window_end": b["__we"], "keys": list(k.values())},
                           default=str).encode() for b, k in zip(bounds, keys, strict=True)]
