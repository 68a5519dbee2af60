"""TUMBLE, HOP and CUMULATE views: emit the windows the watermark closed, re-emit closed windows that
late events within the allowed lateness updated, and with EMIT EVERY write open windows' current rows
early (is_final = false), superseded by the final rows at close."""

from __future__ import annotations

import time

import pyarrow as pa
import pyarrow.compute as pc

from pondstream.operators.partials import merge_partials
from pondstream.operators.view_operator import TS, Emission, ViewOperator
from pondstream.operators.watermark import END_OF_STREAM
from pondstream.operators.window import closing_bound
from pondstream.state.store import Txn
from pondstream.state.window_state import split_by_bound, window_starts


class WindowedView(ViewOperator):
    """State: partial aggregates per window in RocksDB (append-only runs until the window closes)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.last_early = time.monotonic()  # EMIT EVERY: when open windows were last written

    def merge(self, tables: list[pa.Table | None]) -> pa.Table | None:
        return merge_partials(self.plan, tables)

    def flush(self, txn: Txn, watermark: int | None, epoch: int) -> list[Emission]:
        merged = self.take_pending()
        if watermark is None:
            self.state.append(txn, merged, epoch)
            return []
        out = []
        close = closing_bound(watermark, self.plan.window)
        expire = close - self.plan.lateness_us
        done = self.meta.get("emitted_upto")  # every window starting at or before this was emitted
        ready, rest = split_by_bound(merged, close)
        self.state.append(txn, rest, epoch)
        every = self.plan.emit_every_us
        if every and time.monotonic() - self.last_early >= every / 1e6:
            out += self._early(close, rest)
        touched = window_starts(ready)
        updated = {w for w in touched if done is not None and w <= done}
        out_windows = self.state.stored_windows(done, close) | touched
        if out_windows:
            partials = merge_partials(self.plan, [*self.state.read(out_windows), ready])
            kept, _ = split_by_bound(None if partials is None else partials.filter(
                pc.greater(partials.column("__ws"), pa.scalar(expire, pa.int64()).cast(TS))), close)
            if kept is not None and kept.num_rows:
                self.state.replace(txn, kept, epoch)  # emitted, but late events may still update it
            if partials is not None:
                out.append(self.emission(partials, watermark, supersedes=bool(updated) or bool(every)))
        self.state.expire(txn, expire)
        self.meta["emitted_upto"] = close if done is None else max(done, close)
        if updated:
            self.meta["reemitted"] = self.meta.get("reemitted", 0) + len(updated)
        return out

    def _early(self, close: int, pending: pa.Table | None) -> list[Emission]:
        """EMIT EVERY: the current rows of every open window, marked is_final = false."""
        self.last_early = time.monotonic()
        partials = merge_partials(self.plan, [*self.state.read(self.state.stored_windows(close, END_OF_STREAM)),
                                              pending])
        if partials is None:
            return []
        e = self.emission(partials, None, supersedes=True)
        i = e.rows.schema.get_field_index("is_final")
        e.rows = e.rows.set_column(i, "is_final", pa.array([False] * e.rows.num_rows))
        return [e]
