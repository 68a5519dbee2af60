"""SESSION views: per key, sessions of events closer than the gap, emitted when the watermark passes
their end (the interval merging itself is in operators/session.py)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pondstream.operators.groups import key_in
from pondstream.operators.session import merge_sessions, session_bounds
from pondstream.operators.view_operator import TS, Emission, ViewOperator
from pondstream.state.store import Txn


class SessionView(ViewOperator):
    """SESSION: merge new partial sessions with the stored ones; emit those the watermark passed.

    State is two runs, replaced at each checkpoint: open sessions (id 0) and emitted ones (id 1),
    kept until the watermark passes their end + gap. An on-time event can still extend an emitted
    session (its own interval [ts, ts + gap) is open, yet it starts before that session's end); the
    merged session keeps its start and is written again, superseding the old row. So the final
    sessions are those of all on-time events, whatever the batching, and never overlap."""

    def merge(self, tables: list[pa.Table | None]) -> pa.Table | None:
        return merge_sessions(self.plan, tables)

    def flush(self, txn: Txn, watermark: int | None, epoch: int) -> list[Emission]:
        plan, state = self.plan, self.state
        emitted = self.merge(state.read({1}))
        merged = self.merge([*state.read({0}), emitted, *self.pending])
        self.pending = []
        state.expire(txn, 1)
        if merged is None:
            return []
        out = []
        _, end = session_bounds(merged, plan)
        closed = np.zeros(merged.num_rows, dtype=bool) if watermark is None else end <= watermark
        lo, hi = plan.session_bounds
        keys = plan.key_columns
        if emitted is not None:  # a changed session always has a new end: unchanged ones are not rewritten
            fresh = closed & ~key_in(merged, emitted, [*keys, lo, hi]).to_numpy(zero_copy_only=False)
        else:
            fresh = closed
        if fresh.any():
            rows = merged.filter(pa.array(fresh))
            again = emitted is not None and pc.any(key_in(rows, emitted, [*keys, lo])).as_py()
            out.append(self.emission(rows, watermark, supersedes=bool(again)))
        for wid, keep in ((0, ~closed), (1, closed & (end + plan.window.size_us > (watermark or 0)))):
            kept = merged.filter(pa.array(keep))
            if kept.num_rows:
                ids = pa.array(np.full(kept.num_rows, wid, np.int64)).cast(TS)
                state.replace(txn, kept.set_column(0, "__ws", ids), epoch)
        return out
