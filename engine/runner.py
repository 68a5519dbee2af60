"""The continuous pipeline: read batches, aggregate per view, checkpoint atomically, emit closed windows.

A checkpoint is one RocksDB write batch holding the new partial-aggregate runs, the removal of closed
windows, each view's source position and watermark, and the series-log entries of the files written
for it. Files are written before the commit but are invisible until it lands; a crash at any point
resumes from the previous checkpoint with the same batch boundaries, so nothing is lost or duplicated.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from datafusion import SessionContext

from pondstream.engine.catalog import Catalog, StreamEntry
from pondstream.engine.compaction import NO_PIN, pins, retention_us
from pondstream.operators.file_source import FileSource
from pondstream.operators.generator import GeneratorSource
from pondstream.operators.partials import merge_partials
from pondstream.operators.prefetch import Prefetch
from pondstream.operators.running import merge_running
from pondstream.operators.session import merge_sessions, session_bounds
from pondstream.operators.source import BAD_RECORD_SCHEMA, Source, SourceBatch, as_json, bad_records
from pondstream.operators.view_source import ViewSource
from pondstream.operators.watermark import END_OF_STREAM, Watermark
from pondstream.operators.window import assign, closing_bound, true_start
from pondstream.operators.window_aggregate import WindowAggregate
from pondstream.sql.intervals import parse_duration
from pondstream.sql.planner import ViewPlan
from pondstream.state.consolidate import consolidate, due
from pondstream.state.files import write_sealed_json
from pondstream.state.paths import errors_series, late_series
from pondstream.state.series import SeriesStore
from pondstream.state.store import StateStore, Txn
from pondstream.state.table import READ_ONLY, quote, register_series
from pondstream.state.window_state import WindowState, split_by_bound, window_starts

TS = pa.timestamp("us")
BUCKETS = 64  # shards of a running aggregate's per-key state
COMPACT_RUNS = 8  # a shard with this many delta runs is merged into one
COMPACT_PER_CHECKPOINT = 4  # shards compacted (or, with state_ttl, swept for idle keys) per checkpoint
EPOCH_EVENTS = 1_000_000  # also checkpoint after this many events, so memory does not grow with speed


def make_source(entry: StreamEntry, position: dict | None) -> Source:
    s = entry.stmt
    connector = s.options.get("connector", "").lower()
    if connector == "file":
        return FileSource(s.schema, s.event_time, s.options, position, base_dir=entry.base_dir)
    if connector == "generator":
        return GeneratorSource(s.schema, s.event_time, s.options, position)
    if connector == "kafka":
        from pondstream.operators.kafka_source import KafkaSource  # confluent-kafka loads only when used

        return KafkaSource(s.schema, s.event_time, s.options, position)
    raise ValueError(f"stream {s.name}: unknown connector {connector!r}; use 'file', 'generator' or 'kafka'")


def failed_rows(sb: SourceBatch, data: pa.Table, errors: list[tuple[int, str]]) -> pa.Table:
    """Input rows an expression failed on, as bad records: where they came from, the row, the error."""
    rows = [i for i, _ in errors]
    raws = as_json(data.take(pa.array(rows)).drop_columns(["__row"]))
    return bad_records(sb.origin or "", [-1 if sb.offsets is None else int(sb.offsets[i]) for i in rows], raws,
                       [m for _, m in errors], None if sb.partitions is None else [int(sb.partitions[i]) for i in rows])


def failed_windows(plan: ViewPlan, rows: pa.Table) -> list[bytes]:
    """What identifies an output row whose select list failed: its window (if any) and group keys."""
    keys = rows.select(plan.key_columns).to_pylist()
    if plan.window.kind == "running":
        return [json.dumps({"keys": list(k.values())}, default=str).encode() for k in keys]
    bounds = rows.select(["__ws", "__we"]).to_pylist()
    return [json.dumps({"window_start": b["__ws"], "window_end": b["__we"], "keys": list(k.values())},
                       default=str).encode() for b, k in zip(bounds, keys, strict=True)]


def merger(plan: ViewPlan) -> Callable[[list[pa.Table | None]], pa.Table | None]:
    """How partial tables of a view combine: by window and key; for SESSION by overlapping session; for a
    running aggregate with state_ttl, oldest first, a key's restart voiding what came before."""
    kind = plan.window.kind
    merge = merge_sessions if kind == "session" else merge_running if kind == "running" else merge_partials
    return lambda tables: merge(plan, tables)


def ts_text(us: int | None) -> str:
    if us is None:
        return "-"
    if us >= END_OF_STREAM:
        return "end of input"
    return pa.scalar(us, pa.int64()).cast(TS).as_py().isoformat(sep=" ")


def key_in(table: pa.Table, subset: pa.Table, keys: list[str]) -> pa.Array:
    """Rows of `table` whose key tuple appears in `subset` (NULL keys match NULL keys)."""
    def strings(t: pa.Table) -> pa.Array:
        parts = [pc.fill_null(t.column(k).cast(pa.string()), "\u2205") for k in keys]
        return pc.binary_join_element_wise(*parts, "\u001f")
    return pc.is_in(strings(table), value_set=strings(subset).combine_chunks())


def ensure_series(series: SeriesStore, plan: ViewPlan, stream_schema: pa.Schema) -> None:
    hidden = [c for c in plan.output_schema.names if c.startswith("_")]
    series.ensure(plan.name, plan.output_schema, "view", plan.identity_columns, plan.time_columns, hidden)
    late_schema = stream_schema.append(pa.field("_window_start", TS)).append(pa.field("_watermark", TS))
    series.ensure(late_series(plan.name), late_schema, "late", [], {plan.event_time: "start"})


@dataclass
class ViewRun:
    plan: ViewPlan
    op: WindowAggregate
    state: WindowState
    meta: dict[str, Any]
    pending: list[pa.Table] = field(default_factory=list)
    late: list[pa.Table] = field(default_factory=list)
    sink: Any = None  # a KafkaSink when the view publishes
    last_early: float = field(default_factory=time.monotonic)  # EMIT EVERY: when open windows were last written

    def merge(self, tables: list[pa.Table | None]) -> pa.Table | None:
        return merger(self.plan)(tables)


@dataclass
class Group:
    """Views over one stream at the same position share one reader and one watermark."""

    stream: StreamEntry
    source: Source
    watermark: Watermark
    views: list[ViewRun]
    position: Any
    bad: list[pa.Table] = field(default_factory=list)
    final_committed: bool = False  # a bounded source ended and the checkpoint flushing everything landed


@dataclass
class Progress:
    events: int = 0
    late: int = 0
    bad: int = 0
    started: float = field(default_factory=time.monotonic)
    watermark: int | None = None
    open_windows: int = 0
    versions: int = 0
    checkpoints: int = 0
    health: str | None = None
    checkpoint_seconds: deque[float] = field(default_factory=lambda: deque(maxlen=10_000))  # the latest ones
    consolidations: int = 0
    events_by: Counter[tuple[str, str]] = field(default_factory=Counter)  # (stream, partition or "")
    bad_by: Counter[tuple[str, str]] = field(default_factory=Counter)  # (stream, reason category)

    def read(self, stream: str, n: int, partitions: np.ndarray | None) -> None:
        """Count `n` events of `stream` (per partition, for /metrics: one np.unique per batch)."""
        self.events += n
        if partitions is None:
            self.events_by[(stream, "")] += n
        else:
            ids, counts = np.unique(partitions, return_counts=True)
            self.events_by.update({(stream, str(i)): c for i, c in zip(ids.tolist(), counts.tolist(), strict=True)})

    def rejected(self, stream: str, bad: pa.Table) -> None:
        """Count bad records (BAD_RECORD_SCHEMA) by their reason, a small fixed set (source.reason)."""
        self.bad += bad.num_rows
        for r in bad.column("reason").value_counts().to_pylist():
            self.bad_by[(stream, r["values"])] += r["counts"]

    @property
    def rate(self) -> float:
        return self.events / max(time.monotonic() - self.started, 1e-9)


class Runner:
    def __init__(self, state_dir: Path, store: StateStore, series: SeriesStore, catalog: Catalog,
                 checkpoint_interval: float = 1.0,
                 on_progress: Callable[[Progress], None] | None = None) -> None:
        self.state_dir, self.store, self.series, self.catalog = state_dir, store, series, catalog
        self.interval = checkpoint_interval
        self.on_progress = on_progress
        self.progress = Progress()
        self.epoch = int(store.get_meta("epoch", 0))
        self.groups = self._groups()
        self._consolidation: threading.Thread | None = None
        self._consolidation_error: Exception | None = None

    def _groups(self) -> list[Group]:
        groups: dict[tuple[str, str], Group] = {}
        self.groups_so_far = groups.values()
        for name, entry in self.catalog.views.items():  # definition order: upstream views come first
            plan = entry.plan
            stream = self.catalog.source_entry(plan.stream)
            ensure_series(self.series, plan, stream.stmt.schema)
            meta = self.store.get_meta(f"view/{name}", {})
            view = ViewRun(plan, WindowAggregate(plan),
                           WindowState(self.store, name, merger(plan)), meta)
            if plan.options.get("sink_topic"):
                fallback = {"bootstrap_servers": stream.stmt.options.get("bootstrap_servers", "")}
                from pondstream.operators.kafka_sink import KafkaSink

                view.sink = KafkaSink(name, {**fallback, **plan.options}, plan.identity_columns)
                self._catch_up_sink(view)
            key = (plan.stream, json.dumps(meta.get("position"), sort_keys=True))
            if key not in groups:
                if plan.stream in self.catalog.streams:
                    self.series.ensure(errors_series(plan.stream), BAD_RECORD_SCHEMA, "errors")
                src = self._view_source(plan.stream, meta.get("position")) if plan.stream in self.catalog.views \
                    else make_source(stream, meta.get("position"))
                if src.prefetch_safe:  # read the next batch while this one is aggregated
                    src = Prefetch(src)
                idle = parse_duration(stream.stmt.options.get("idle_timeout", "30 seconds")) / 1e6
                wm = Watermark(stream.stmt.watermark_delay_us, idle, meta.get("watermark_state"))
                # A source that resolved its start (Kafka 'latest'/'timestamp') has that in the first checkpoint.
                groups[key] = Group(stream, src, wm, [], meta.get("position") or src.position())
            groups[key].views.append(view)
        return list(groups.values())

    def _view_source(self, upstream: str, position: dict | None) -> ViewSource:
        """Another view of this pipeline read as a stream (it must already be in a group)."""
        up = next(g for g in self.groups_so_far if any(v.plan.name == upstream for v in g.views))
        schema = self.catalog.source_entry(upstream).stmt.schema
        return ViewSource(schema, self.series.dir(upstream), lambda: self.series.entries(upstream),
                          lambda: up.final_committed, position, lambda: self.series.base(upstream))

    @property
    def finished(self) -> bool:
        return all(g.source.bounded and g.source.finished for g in self.groups)

    def run(self, stop: threading.Event | None = None) -> Progress:
        """Until every bounded source ends (then all windows are emitted) or `stop` is set."""
        stop = stop or threading.Event()
        last, last_events = time.monotonic(), 0
        while True:
            got = False
            for g in self.groups:
                if not g.source.finished:
                    sb = g.source.read()
                    if sb is not None:
                        self._process(g, sb)
                        got = True
                    else:
                        g.watermark.tick(g.source.partitions())  # idle partitions may release windows
            done = self.finished or stop.is_set()
            if (done or time.monotonic() - last >= self.interval
                    or self.progress.events - last_events >= EPOCH_EVENTS):
                self.checkpoint()
                last, last_events = time.monotonic(), self.progress.events
            if done:
                break
            if not got:
                stop.wait(0.05)
        self._join_consolidation(wait=True)
        for g in self.groups:
            g.source.close()
        return self.progress

    def _process(self, g: Group, sb: SourceBatch) -> None:
        data = sb.data
        g.position = sb.position
        n_bad = 0 if sb.bad is None else sb.bad.num_rows
        if n_bad:
            g.bad.append(sb.bad)
            self.progress.rejected(g.stream.stmt.name, sb.bad)
        for v in g.views:  # the accounting a user can check: read = view input + errors
            v.meta["records_read"] = v.meta.get("records_read", 0) + data.num_rows + n_bad
            v.meta["records_bad"] = v.meta.get("records_bad", 0) + n_bad
        if data.num_rows == 0:
            return
        if isinstance(g.source, ViewSource):  # recomputed from the upstream at close: note the windows
            ts = data.column(g.stream.stmt.event_time).cast(pa.int64()).to_numpy(zero_copy_only=False)
            for v in g.views:
                v.meta["touched"] = sorted(set(v.meta.get("touched", [])) |
                                           set(assign(ts, v.plan.window)[1].tolist()))
            if sb.watermark is not None:
                g.watermark.advance_to(sb.watermark)
            self.progress.read(g.stream.stmt.name, data.num_rows, sb.partitions)
            return
        data = data.add_column(0, "__row", pa.array(np.arange(data.num_rows, dtype=np.int64)))
        ts = data.column(g.stream.stmt.event_time).cast(pa.int64()).to_numpy(zero_copy_only=False)
        wm = g.watermark.per_event(ts, sb.partitions, g.source.partitions())
        for v in g.views:
            r = v.op.process(data, wm)
            if r.errors:
                g.bad.append(failed_rows(sb, data, r.errors))
                self.progress.rejected(g.stream.stmt.name, g.bad[-1])
                v.meta["records_bad"] += len(r.errors)
            if r.partials is not None:
                v.pending.append(r.partials)
                if len(v.pending) >= 16:
                    v.pending = [v.merge(v.pending)]
            if len(r.late_rows):
                rows = data.take(pa.array(r.late_rows)).drop_columns(["__row"])
                starts = r.late_windows if v.plan.window.kind == "session" else \
                    true_start(r.late_windows, v.plan.window)
                rows = rows.append_column("_window_start", pa.array(starts).cast(TS))
                v.late.append(rows.append_column("_watermark", pa.array(wm[r.late_rows]).cast(TS)))
                self.progress.late += rows.num_rows
        self.progress.read(g.stream.stmt.name, data.num_rows, sb.partitions)

    def checkpoint(self) -> None:
        """Commit one epoch: state runs, emitted windows, positions and watermarks, atomically."""
        began = time.perf_counter()
        self.epoch += 1
        txn = Txn()
        open_windows = 0
        for g in self.groups:
            if g.source.bounded and g.source.finished:
                g.watermark.finish()
            for v in g.views:
                if isinstance(g.source, ViewSource):
                    self._flush_recomputed(txn, g, v)
                elif v.plan.window.kind == "session":
                    self._flush_sessions(txn, g, v)
                elif v.plan.window.kind == "running":
                    self._flush_running(txn, g, v)
                else:
                    self._flush_view(txn, g, v)
                open_windows += v.state.open_windows
                for rows, msg in v.op.final_errors:  # windows whose select list failed to evaluate
                    g.bad.append(bad_records(f"view {v.plan.name}", [0] * rows.num_rows,
                                             failed_windows(v.plan, rows), [msg] * rows.num_rows))
                    self.progress.rejected(g.stream.stmt.name, g.bad[-1])
                v.op.final_errors = []
            if g.bad:
                self.series.write(txn, errors_series(g.stream.stmt.name),
                                  pa.concat_tables(g.bad).cast(BAD_RECORD_SCHEMA))
                g.bad = []
        txn.put_meta("epoch", self.epoch)
        self.store.commit(txn)
        for g in self.groups:
            if g.position is not None:
                g.source.committed(g.position)
            g.final_committed = bool(g.source.bounded and g.source.finished)
        self._consolidate()
        wms = [g.watermark.value for g in self.groups if g.watermark.value is not None]
        self.progress.watermark = min(wms) if wms else None
        self.progress.open_windows = open_windows
        self.progress.health = "; ".join(h for g in self.groups if (h := g.source.health())) or None
        self.progress.checkpoints += 1
        self.progress.checkpoint_seconds.append(time.perf_counter() - began)
        self._write_status()
        if self.on_progress:
            self.on_progress(self.progress)

    def _consolidate(self) -> None:
        """Start folding the longest due tail of the series this run writes into its base, on a thread of
        its own (rewriting large files takes longer than a checkpoint should): one series at a time.
        Versions a view over that view or a sink has not read yet stay in the tail."""
        self._join_consolidation(wait=False)
        if self._consolidation is not None:
            return
        held = pins(self.catalog, self.store)
        due_tails = []
        for name in sorted(self.series.written):
            tail = [e for e in self.series.entries(name) if e["version"] <= held.get(name, NO_PIN)]
            if due(tail):
                due_tails.append((len(tail), name))
        if not due_tails:
            return
        name = max(due_tails)[1]
        args = (self.series, name, held.get(name), retention_us(self.catalog, name))

        def work() -> None:
            try:
                consolidate(*args)
            except Exception as e:  # noqa: BLE001 - reported on the main thread at the next checkpoint
                self._consolidation_error = e
        self._consolidation = threading.Thread(target=work, name=f"consolidate {name}", daemon=True)
        self._consolidation.start()
        self.progress.consolidations += 1

    def _join_consolidation(self, wait: bool) -> None:
        """Collect a finished consolidation (or wait for it); its failure stops the run like any write."""
        t = self._consolidation
        if t is not None and (wait or not t.is_alive()):
            t.join()
            self._consolidation = None
            if self._consolidation_error is not None:
                e, self._consolidation_error = self._consolidation_error, None
                raise e

    def _flush_running(self, txn: Txn, g: Group, v: ViewRun) -> None:
        """No window: state per key in RocksDB, sharded into BUCKETS, each a list of delta runs (the
        partials of one checkpoint), merged on read. A checkpoint appends its deltas, writes the current
        values of the changed keys as a new version, and compacts (and applies state_ttl to) a few
        shards, so neither memory nor a checkpoint's write grows with the number of keys."""
        merged = v.merge(v.pending)
        v.pending = []
        wm = g.watermark.value
        outs = []
        shard_of = v.op.buckets(merged, BUCKETS) if merged is not None else np.empty(0, np.int64)
        touched = sorted(set(shard_of.tolist()))
        busy = sorted((b for b in v.state.runs if v.state.runs[b] >= COMPACT_RUNS), key=lambda b: -v.state.runs[b])
        idle = [b for b in sorted(v.state.runs) if b not in touched] if v.plan.state_ttl_us else []
        compact = set(busy[:COMPACT_PER_CHECKPOINT] + idle[:COMPACT_PER_CHECKPOINT])
        for b in sorted(set(touched) | compact):
            delta = None
            if b in touched:
                delta = merged.filter(pa.array(shard_of == b))
                delta = delta.set_column(0, "__ws", pa.array(np.full(delta.num_rows, b)).cast(TS))
            current = v.merge([*v.state.read({b}), delta])
            if delta is not None:
                outs.append(current.filter(key_in(current, delta, v.plan.key_columns)))
            if b not in compact:
                v.state.append(txn, delta, self.epoch)
                continue
            if v.plan.state_ttl_us and wm is not None:
                seen = current.column(v.plan.last_seen).cast(pa.int64())
                current = current.filter(pc.greater(pc.add(seen, v.plan.state_ttl_us), wm))
            if current.num_rows:
                v.state.replace(txn, current, self.epoch)
            else:
                v.state.drop(txn, b)
        if outs:
            self._write_version(txn, v, v.op.finalize(pa.concat_tables(outs)), wm, supersedes=True)
        self._finish_flush(txn, g, v, wm)

    def _flush_sessions(self, txn: Txn, g: Group, v: ViewRun) -> None:
        """SESSION: merge new partial sessions with the stored ones; emit those the watermark passed.

        State is two runs, replaced at each checkpoint: open sessions (id 0) and emitted ones (id 1),
        kept until the watermark passes their end + gap. An on-time event can still extend an emitted
        session (its own interval [ts, ts + gap) is open, yet it starts before that session's end); the
        merged session keeps its start and is written again, superseding the old row. So the final
        sessions are those of all on-time events, whatever the batching, and never overlap."""
        emitted = merge_sessions(v.plan, v.state.read({1}))
        merged = merge_sessions(v.plan, [*v.state.read({0}), emitted, *v.pending])
        v.pending = []
        wm = g.watermark.value
        v.state.expire(txn, 1)
        if merged is not None:
            _, end = session_bounds(merged, v.plan)
            closed = np.zeros(merged.num_rows, dtype=bool) if wm is None else end <= wm
            lo, hi = v.plan.session_bounds
            keys = v.plan.key_columns
            if emitted is not None:  # a changed session always has a new end: unchanged ones are not rewritten
                fresh = closed & ~key_in(merged, emitted, [*keys, lo, hi]).to_numpy(zero_copy_only=False)
            else:
                fresh = closed
            if fresh.any():
                out = merged.filter(pa.array(fresh))
                again = emitted is not None and pc.any(key_in(out, emitted, [*keys, lo])).as_py()
                self._write_version(txn, v, v.op.finalize(out), wm, supersedes=bool(again))
            for wid, keep in ((0, ~closed), (1, closed & (end + v.plan.window.size_us > (wm or 0)))):
                kept = merged.filter(pa.array(keep))
                if kept.num_rows:
                    ids = pa.array(np.full(kept.num_rows, wid, np.int64)).cast(TS)
                    v.state.replace(txn, kept.set_column(0, "__ws", ids), self.epoch)
        self._finish_flush(txn, g, v, wm)

    def _flush_recomputed(self, txn: Txn, g: Group, v: ViewRun) -> None:
        """A view over a view keeps no state of its own: the upstream's series is it. Windows that new
        upstream versions touched are computed from the upstream's latest rows (as of the version read)
        once the watermark has passed them; an upstream re-emission touches them again, and they are
        re-emitted as a superseding version."""
        wm = g.watermark.value
        spec = v.plan.window
        touched = set(v.meta.get("touched", []))
        closed = sorted(w for w in touched if wm is not None and w + spec.size_us <= wm)
        if closed:
            src: ViewSource = g.source
            ctx = SessionContext()
            register_series(ctx, "__up", src.dir, as_of=src.version)
            lo = int(true_start(np.array(closed), spec).min())
            hi = max(closed) + spec.size_us
            tcol = quote(g.stream.stmt.event_time)
            bounds = {"lo": pa.scalar(lo, pa.int64()).cast(TS), "hi": pa.scalar(hi, pa.int64()).cast(TS)}
            rows = ctx.sql_with_options(f'SELECT * FROM "__up" WHERE {tcol} >= $lo AND {tcol} < $hi', READ_ONLY,
                                        param_values=bounds).to_arrow_table()
            rows = rows.select(g.stream.stmt.schema.names).cast(g.stream.stmt.schema)
            rows = rows.add_column(0, "__row", pa.array(np.arange(rows.num_rows, dtype=np.int64)))
            part = v.op.process(rows, None).partials if rows.num_rows else None
            if part is not None:
                wanted = pa.array(closed, pa.int64()).cast(TS)
                part = merge_partials(v.plan, [part.filter(pc.is_in(part.column("__ws"), value_set=wanted))])
            if part is not None:
                self._write_version(txn, v, v.op.finalize(part), wm, supersedes=True)
            v.meta["touched"] = sorted(touched - set(closed))
        self._finish_flush(txn, g, v, wm)

    def _flush_view(self, txn: Txn, g: Group, v: ViewRun) -> None:
        """Emit windows the watermark has closed, re-emit closed windows that late events (within the
        allowed lateness) updated, keep the rest as state, and drop state past the lateness horizon."""
        merged = v.merge(v.pending) if v.pending else None
        v.pending = []
        wm = g.watermark.value
        if wm is None:
            v.state.append(txn, merged, self.epoch)
        else:
            close = closing_bound(wm, v.plan.window)
            expire = close - v.plan.lateness_us
            done = v.meta.get("emitted_upto")  # every window starting at or before this was emitted
            ready, rest = split_by_bound(merged, close)
            v.state.append(txn, rest, self.epoch)
            if v.plan.emit_every_us and time.monotonic() - v.last_early >= v.plan.emit_every_us / 1e6:
                self._emit_early(txn, v, close, rest)
            touched = window_starts(ready)
            updated = {w for w in touched if done is not None and w <= done}
            out_windows = v.state.stored_windows(done, close) | touched
            if out_windows:
                partials = merge_partials(v.plan, [*v.state.read(out_windows), ready])
                kept, _ = split_by_bound(None if partials is None else partials.filter(
                    pc.greater(partials.column("__ws"), pa.scalar(expire, pa.int64()).cast(TS))), close)
                if kept is not None and kept.num_rows:
                    v.state.replace(txn, kept, self.epoch)  # emitted, but late events may still update it
                if partials is not None:
                    self._write_version(txn, v, v.op.finalize(partials), wm,
                                        supersedes=bool(updated) or bool(v.plan.emit_every_us))
            v.state.expire(txn, expire)
            v.meta["emitted_upto"] = close if done is None else max(done, close)
            if updated:
                v.meta["reemitted"] = v.meta.get("reemitted", 0) + len(updated)
        self._finish_flush(txn, g, v, wm)

    def _finish_flush(self, txn: Txn, g: Group, v: ViewRun, wm: int | None) -> None:
        """Late events to their series; position, watermark and counters into the checkpoint."""
        if v.late:
            self.series.write(txn, late_series(v.plan.name), pa.concat_tables(v.late))
            v.meta["late"] = v.meta.get("late", 0) + sum(t.num_rows for t in v.late)
            v.late = []
        v.meta.update(position=g.position, watermark=wm, watermark_state=g.watermark.state())
        txn.put_meta(f"view/{v.plan.name}", v.meta)

    def _emit_early(self, txn: Txn, v: ViewRun, close: int, pending: pa.Table | None) -> None:
        """EMIT EVERY: write the current results of every open window as a version (is_final = false);
        the final rows at close supersede them."""
        v.last_early = time.monotonic()
        open_windows = v.state.stored_windows(close, END_OF_STREAM)
        partials = merge_partials(v.plan, [*v.state.read(open_windows), pending])
        if partials is None:
            return
        out = v.op.finalize(partials)
        out = out.set_column(out.schema.get_field_index("is_final"), "is_final", pa.array([False] * out.num_rows))
        self._write_version(txn, v, out, None, supersedes=True)

    def _write_version(self, txn: Txn, v: ViewRun, out: pa.Table, wm: int | None, supersedes: bool = False) -> None:
        """Every emission of every window kind goes through here: a new version of the view's series
        (visible once `txn` commits), then, if the view has a sink, its rows are published."""
        if not out.num_rows:
            return
        entry = self.series.write(txn, v.plan.name, out, supersedes=supersedes, watermark=wm)
        self.progress.versions += 1
        if v.sink is not None:
            txn.after_commit.append(lambda: self._publish(v, out, entry["version"]))

    def _publish(self, v: ViewRun, table: pa.Table, version: int) -> None:
        """After the version's checkpoint landed: send it, then record it as sent (at-least-once)."""
        v.sink.publish(table, version)
        txn = Txn()
        txn.put_meta(f"sink/{v.plan.name}", version)
        self.store.commit(txn)

    def _catch_up_sink(self, v: ViewRun) -> None:
        """Versions committed but not yet recorded as published (a crash in between): send them again."""
        done = int(self.store.get_meta(f"sink/{v.plan.name}", 0))
        for entry in self.series.entries(v.plan.name):
            if entry["version"] > done:
                table = pq.read_table(self.series.dir(v.plan.name) / entry["file"]).drop_columns(["_version"])
                self._publish(v, table, entry["version"])

    def _write_status(self) -> None:
        views = {}
        for g in self.groups:
            for v in g.views:
                parts = g.source.partition_status()
                for p in parts:
                    m = g.watermark.max_event.get(str(p["partition"]))
                    p["watermark"] = ts_text(None if m is None else m - g.watermark.delay_us)
                    p["idle"] = g.watermark.idle(str(p["partition"]))
                held = g.watermark.holding_back()
                views[v.plan.name] = {
                    "stream": g.stream.stmt.name, "source": g.source.describe(),
                    "position": g.position, "watermark": ts_text(g.watermark.value),
                    "watermark_us": g.watermark.value,
                    "held_back_by": None if g.source.finished or held is None else (
                        f"partition {held}" + (" (no data yet)" if g.watermark.max_event.get(held) is None
                                               else "")),
                    "open_windows": v.state.open_windows, "late": v.meta.get("late", 0),
                    "records_read": v.meta.get("records_read", 0), "records_bad": v.meta.get("records_bad", 0),
                    "finished": bool(g.source.bounded and g.source.finished),
                    "health": g.source.health(), "partitions": parts,
                }
        status = {"pid": os.getpid(), "updated_at": time.strftime("%Y-%m-%d %H:%M:%S"),
                  "checkpoint": self.epoch, "events_this_run": self.progress.events,
                  "events_per_second": round(self.progress.rate), "bad_records_this_run": self.progress.bad,
                  "views": views}
        write_sealed_json(self.state_dir / "status.json", status)  # atomic, fsynced, checksummed
