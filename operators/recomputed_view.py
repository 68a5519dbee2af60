"""A windowed view over another view keeps no state of its own: the upstream's series is it. Windows
that new upstream versions touched are computed from the upstream's latest rows (as of the version
read) once the watermark has passed them; an upstream re-emission touches them again, and they are
re-emitted as a superseding version."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datafusion import SessionContext

from pondstream.operators.partials import merge_partials
from pondstream.operators.view_operator import TS, Emission
from pondstream.operators.view_source import ViewSource
from pondstream.operators.window import assign, true_start
from pondstream.operators.windowed_view import WindowedView
from pondstream.state.store import Txn
from pondstream.state.table import READ_ONLY, quote, register_series


class RecomputedView(WindowedView):
    """`upstream` is the ViewSource this view reads; only the windows it touched are noted per batch."""

    def __init__(self, *args, upstream: ViewSource, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.upstream = upstream

    def process(self, data: pa.Table, watermarks: np.ndarray | None, side: int = 0) -> tuple[list[tuple[int, str]], int]:
        ts = data.column(self.plan.event_time).cast(pa.int64()).to_numpy(zero_copy_only=False)
        windows = set(assign(ts, self.plan.window)[1].tolist())
        self.meta["touched"] = sorted(set(self.meta.get("touched", [])) | windows)
        return [], 0

    def flush(self, txn: Txn, watermark: int | None, epoch: int) -> list[Emission]:
        spec, touched = self.plan.window, set(self.meta.get("touched", []))
        closed = sorted(w for w in touched if watermark is not None and w + spec.size_us <= watermark)
        if not closed:
            return []
        ctx = SessionContext()
        register_series(ctx, "__up", self.upstream.dir, as_of=self.upstream.version)
        lo, hi = int(true_start(np.array(closed), spec).min()), max(closed) + spec.size_us
        tcol = quote(self.plan.event_time)
        bounds = {"lo": pa.scalar(lo, pa.int64()).cast(TS), "hi": pa.scalar(hi, pa.int64()).cast(TS)}
        rows = ctx.sql_with_options(f'SELECT * FROM "__up" WHERE {tcol} >= $lo AND {tcol} < $hi', READ_ONLY,
                                    param_values=bounds).to_arrow_table()
        schema = self.upstream.schema
        rows = rows.select(schema.names).cast(schema)
        rows = rows.add_column(0, "__row", pa.array(np.arange(rows.num_rows, dtype=np.int64)))
        part = self.agg.process(rows, None).partials if rows.num_rows else None
        if part is not None:
            wanted = pa.array(closed, pa.int64()).cast(TS)
            part = merge_partials(self.plan, [part.filter(pc.is_in(part.column("__ws"), value_set=wanted))])
        self.meta["touched"] = sorted(touched - set(closed))
        return [] if part is None else [self.emission(part, watermark, supersedes=True)]
