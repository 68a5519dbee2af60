"""Views without GROUP BY: each input row that passes WHERE, through the select list, appended to the
view's series at every checkpoint (filters, projections, parsing and enrichment of a stream). No state
and no lateness: every row is kept. Rows on which an expression fails go to the stream's errors."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from pondstream.operators.view_operator import Emission, ViewOperator
from pondstream.state.store import Txn


class ProjectionView(ViewOperator):
    def merge(self, tables: list[pa.Table | None]) -> pa.Table | None:
        tables = [t for t in tables if t is not None and t.num_rows]
        return pa.concat_tables(tables) if tables else None

    def process(self, data: pa.Table, watermarks: np.ndarray | None, side: int = 0) -> tuple[list[tuple[int, str]], int]:
        out, failed = self.agg.isolated(self.plan.pre_sql, "__batch", data)
        if out.num_rows:
            self.pending.append(out)
        rows = data.column("__row")
        return [(int(rows[i].as_py()), msg) for i, msg in failed], 0

    def flush(self, txn: Txn, watermark: int | None, epoch: int) -> list[Emission]:
        rows = self.take_pending()
        if rows is None:
            return []
        order = [(c, "ascending") for c in self.plan.time_columns]
        return [Emission(rows.sort_by(order) if order else rows, False, watermark)]
