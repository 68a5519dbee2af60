"""`connector = 'generator'`: a deterministic orders stream for demos, tests and benchmarks.

Batch i is drawn from a generator seeded with (seed, i), so any run, or any restart from a checkpoint,
produces the same events. Event time advances by `step` per event, minus up to `out_of_orderness`.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pondstream.operators.decode import conform
from pondstream.operators.source import Pacer, Source, SourceBatch
from pondstream.sql.intervals import parse_duration

COLUMNS = {"order_id", "customer_id", "amount", "event_time"}


class GeneratorError(ValueError):
    pass


class GeneratorSource(Source):
    prefetch_safe = True

    def __init__(self, schema: pa.Schema, event_time: str, options: dict[str, str],
                 position: dict | None = None) -> None:
        unknown = [n for n in schema.names if n.lower() not in COLUMNS]
        if unknown:
            raise GeneratorError(f"the generator makes order_id, customer_id, amount, event_time; "
                                 f"it cannot fill {', '.join(unknown)}")
        try:
            self.rows = int(options.get("rows", 100_000))
            self.rate = float(options.get("rate", 0))
            self.keys = int(options.get("keys", 1000))
            self.seed = int(options.get("seed", 42))
            self.batch_size = int(options.get("batch_size", 100_000))
            self.disorder_us = parse_duration(options.get("out_of_orderness", "0 seconds"))
            self.step_us = parse_duration(options.get("step", "100 milliseconds"))
            start = options.get("start", "2026-01-01 00:00:00")
            self.start_us = pa.scalar(start).cast(pa.timestamp("us")).value
        except ValueError as e:
            raise GeneratorError(f"generator option: {e}") from None
        if self.keys < 1 or self.batch_size < 1:
            raise GeneratorError("generator options keys and batch_size must be positive")
        self.schema, self.event_time = schema, event_time
        self.bounded = self.rows > 0
        self.next_row = int((position or {}).get("row", 0))
        self.finished = self.bounded and self.next_row >= self.rows
        digits = pc.utf8_lpad(pa.array(np.arange(self.keys)).cast(pa.string()), 5, "0")
        self.customers = pc.binary_join_element_wise("c", digits, "")  # c00000, c00001, ... (no Python list)
        self.pacer = Pacer(self.rate, self.next_row)

    def describe(self) -> str:
        total = self.rows if self.bounded else "unbounded"
        return f"generator ({total} rows, {self.keys} keys, seed {self.seed})"

    def read(self) -> SourceBatch | None:
        if self.finished:
            return None
        n = self.pacer.allow(self.next_row, self.batch_size)
        if n == 0:
            return None
        if self.bounded:
            n = min(n, self.rows - self.next_row)
        lo = self.next_row
        rng = np.random.default_rng([self.seed, lo])
        ids = np.arange(lo, lo + n, dtype=np.int64)
        amount = np.round(rng.gamma(2.0, 40.0, n), 2)
        amount[rng.random(n) < 0.02] *= -1  # refunds, so WHERE amount > 0 has work to do
        ts = self.start_us + ids * self.step_us
        if self.disorder_us:
            ts -= rng.integers(0, self.disorder_us + 1, n)
        cols = {
            "order_id": pa.array(ids),
            "customer_id": pc.take(self.customers, pa.array(rng.integers(0, self.keys, n))),
            "amount": pa.array(amount),
            "event_time": pa.array(ts).cast(pa.timestamp("us")),
        }
        lower = {n.lower(): n for n in self.schema.names}
        data = pa.table({lower[k]: v for k, v in cols.items() if k in lower})
        self.next_row += n
        self.finished = self.bounded and self.next_row >= self.rows
        return SourceBatch(conform(data, self.schema), {"row": self.next_row})
