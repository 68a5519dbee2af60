"""Running aggregates (no window): one row per key, updated as events arrive, a new version per
checkpoint holding the changed keys' current values (the state_ttl rule is in operators/running.py).

State per key lives in RocksDB, sharded into BUCKETS, each a list of delta runs (the partials of one
checkpoint), merged on read. A checkpoint appends its deltas, writes the current values of the changed
keys, and compacts (and applies state_ttl to) a few shards, so neither memory nor a checkpoint's write
grows with the number of keys."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pondstream.operators.groups import key_in
from pondstream.operators.running import merge_running
from pondstream.operators.view_operator import TS, Emission, ViewOperator
from pondstream.state.store import Txn

BUCKETS = 64  # shards of a running aggregate's per-key state
COMPACT_RUNS = 8  # a shard with this many delta runs is merged into one
COMPACT_PER_CHECKPOINT = 4  # shards compacted (or, with state_ttl, swept for idle keys) per checkpoint


class RunningView(ViewOperator):
    def merge(self, tables: list[pa.Table | None]) -> pa.Table | None:
        return merge_running(self.plan, tables)

    def flush(self, txn: Txn, watermark: int | None, epoch: int) -> list[Emission]:
        plan, state = self.plan, self.state
        merged = self.take_pending()
        outs = []
        shard_of = self.agg.buckets(merged, BUCKETS) if merged is not None else np.empty(0, np.int64)
        touched = sorted(set(shard_of.tolist()))
        busy = sorted((b for b in state.runs if state.runs[b] >= COMPACT_RUNS), key=lambda b: -state.runs[b])
        idle = [b for b in sorted(state.runs) if b not in touched] if plan.state_ttl_us else []
        compact = set(busy[:COMPACT_PER_CHECKPOINT] + idle[:COMPACT_PER_CHECKPOINT])
        for b in sorted(set(touched) | compact):
            delta = None
            if b in touched:
                delta = merged.filter(pa.array(shard_of == b))
                delta = delta.set_column(0, "__ws", pa.array(np.full(delta.num_rows, b)).cast(TS))
            current = self.merge([*state.read({b}), delta])
            if delta is not None:
                outs.append(current.filter(key_in(current, delta, plan.key_columns)))
            if b not in compact:
                state.append(txn, delta, epoch)
                continue
            if plan.state_ttl_us and watermark is not None:
                seen = current.column(plan.last_seen).cast(pa.int64())
                current = current.filter(pc.greater(pc.add(seen, plan.state_ttl_us), watermark))
            if current.num_rows:
                state.replace(txn, current, epoch)
            else:
                state.drop(txn, b)
        return [self.emission(pa.concat_tables(outs), watermark, supersedes=True)] if outs else []

    def failed_windows(self, rows: pa.Table) -> list[bytes]:
        return [json.dumps({"keys": list(k.values())}, default=str).encode()
                for k in rows.select(self.plan.key_columns).to_pylist()]
