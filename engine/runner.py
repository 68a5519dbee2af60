"""The continuous pipeline, as wiring: read each source, judge each event by its partition's watermark,
route batches to the view operators of their stream (operators/*_view.py, one per kind of view), and
checkpoint: every operator puts its state changes into one RocksDB write batch and returns the rows to
emit, which are written as versions of the view's series, with each view's position and watermark.

Files are written before the commit but are invisible until it lands; a crash at any point resumes
from the previous checkpoint with the same batch boundaries, so nothing is lost or duplicated.
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
import pyarrow.parquet as pq

from pondstream.engine.catalog import Catalog, StreamEntry
from pondstream.engine.compaction import NO_PIN, pins, retention_us
from pondstream.operators.file_source import FileSource
from pondstream.operators.generator import GeneratorSource
from pondstream.operators.interval_join_view import LATE_SCHEMA as JOIN_LATE_SCHEMA
from pondstream.operators.interval_join_view import IntervalJoinView
from pondstream.operators.nexmark import NexmarkSource
from pondstream.operators.prefetch import Prefetch
from pondstream.operators.projection_view import ProjectionView
from pondstream.operators.recomputed_view import RecomputedView
from pondstream.operators.running_view import RunningView
from pondstream.operators.session_view import SessionView
from pondstream.operators.source import BAD_RECORD_SCHEMA, Source, SourceBatch, as_json, bad_records
from pondstream.operators.temporal_join_view import TemporalJoinView
from pondstream.operators.view_operator import ViewOperator
from pondstream.operators.view_source import ViewSource
from pondstream.operators.watermark import END_OF_STREAM, Watermark
from pondstream.operators.windowed_view import WindowedView
from pondstream.sql.intervals import parse_duration
from pondstream.sql.planner import ViewPlan
from pondstream.state.consolidate import consolidate, due
from pondstream.state.files import write_sealed_json
from pondstream.state.paths import errors_series, late_series
from pondstream.state.series import SeriesStore
from pondstream.state.store import StateStore, Txn

TS = pa.timestamp("us")
EPOCH_EVENTS = 1_000_000  # also checkpoint after this many events, so memory does not grow with speed


def make_source(entry: StreamEntry, position: dict | None) -> Source:
    s = entry.stmt
    connector = s.options.get("connector", "").lower()
    if connector == "file":
        return FileSource(s.schema, s.event_time, s.options, position, base_dir=entry.base_dir)
    if connector == "generator":
        return GeneratorSource(s.schema, s.event_time, s.options, position)
    if connector == "nexmark":
        return NexmarkSource(s.schema, s.event_time, s.options, position)
    if connector == "kafka":
        from pondstream.operators.kafka_source import KafkaSource  # confluent-kafka loads only when used

        return KafkaSource(s.schema, s.event_time, s.options, position)
    raise ValueError(f"stream {s.name}: unknown connector {connector!r}; use 'file', 'generator', 'nexmark' or 'kafka'")


def failed_rows(sb: SourceBatch, data: pa.Table, errors: list[tuple[int, str]]) -> pa.Table:
    """Input rows an expression failed on, as bad records: where they came from, the row, the error."""
    rows = [i for i, _ in errors]
    raws = as_json(data.take(pa.array(rows)).drop_columns(["__row"]))
    return bad_records(sb.origin or "", [-1 if sb.offsets is None else int(sb.offsets[i]) for i in rows], raws,
                       [m for _, m in errors], None if sb.partitions is None else [int(sb.partitions[i]) for i in rows])

MAX_DATETIME_US = 253_402_300_800_000_000  # 10000-01-01, in µs since 1970
MIN_DATETIME_US = -62_135_596_800_000_000  # 0001-01-01


def ts_text(us: int | None) -> str:
    if us is None:
        return "-"
    if us >= min(END_OF_STREAM, MAX_DATETIME_US):  # also the end-of-input watermark less a delay
        return "end of input"
    if us < MIN_DATETIME_US:
        return "-"
    return pa.scalar(us, pa.int64()).cast(TS).as_py().isoformat(sep=" ")


def ensure_series(series: SeriesStore, plan: ViewPlan, stream_schema: pa.Schema) -> None:
    hidden = [c for c in plan.output_schema.names if c.startswith("_")]
    series.ensure(plan.name, plan.output_schema, "view", plan.identity_columns, plan.time_columns, hidden)
    if plan.join is not None:  # late rows of either side, as JSON
        series.ensure(late_series(plan.name), JOIN_LATE_SCHEMA, "late", [], {"_event_time": "start"})
        return
    late_schema = stream_schema.append(pa.field("_window_start", TS)).append(pa.field("_watermark", TS))
    series.ensure(late_series(plan.name), late_schema, "late", [], {plan.event_time: "start"})


def input_meta(meta: dict[str, Any], i: int) -> dict[str, Any]:
    """Where a view's checkpoint record keeps input i's position and watermark state (the record itself
    for the first input, as before joins existed)."""
    return meta if i == 0 else meta.setdefault("inputs", {}).setdefault(str(i), {})


# The operator of each kind of view (operators/view_operator.py has the interface); a view over another
# view is recomputed from it whatever its window.
OPERATORS: dict[str, type[ViewOperator]] = {
    "tumble": WindowedView, "hop": WindowedView, "cumulate": WindowedView,
    "session": SessionView, "running": RunningView, "join": IntervalJoinView, "select": ProjectionView,
    "temporal": TemporalJoinView,
}


@dataclass
class ViewRun:
    op: ViewOperator
    groups: list[Group] = field(default_factory=list)  # the group of each input (two for a join)
    sink: Any = None  # a KafkaSink when the view publishes

    @property
    def plan(self) -> ViewPlan:
        return self.op.plan

    @property
    def meta(self) -> dict[str, Any]:
        return self.op.meta


@dataclass
class Group:
    """Views over one stream at the same position share one reader and one watermark."""

    stream: StreamEntry
    source: Source
    watermark: Watermark
    views: list[tuple[ViewRun, int]]  # the views reading this stream, and which of their inputs it is
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
    state_bytes: int = 0  # what the views hold in RocksDB, as of the latest checkpoint
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
        self.views: list[ViewRun] = []
        for name, entry in self.catalog.views.items():  # definition order: upstream views come first
            plan = entry.plan
            ensure_series(self.series, plan, self.catalog.source_entry(plan.stream).stmt.schema)
            meta = self.store.get_meta(f"view/{name}", {})
            mine = [self._group(groups, upstream, input_meta(meta, i)) for i, upstream in enumerate(plan.inputs)]
            if isinstance(mine[0].source, ViewSource) and plan.window.kind in ("tumble", "hop", "cumulate"):
                # windows over a view are recomputed from its series; joins and projections read its rows
                op: ViewOperator = RecomputedView(plan, self.store, meta, upstream=mine[0].source)
            else:
                op = OPERATORS[plan.window.kind](plan, self.store, meta)
            view = ViewRun(op, mine)
            for i, g in enumerate(mine):
                g.views.append((view, i))
            if plan.options.get("sink_topic"):
                stream = self.catalog.source_entry(plan.stream)
                fallback = {"bootstrap_servers": stream.stmt.options.get("bootstrap_servers", "")}
                from pondstream.operators.kafka_sink import KafkaSink

                view.sink = KafkaSink(name, {**fallback, **plan.options}, plan.identity_columns)
                self._catch_up_sink(view)
            self.views.append(view)
        return list(groups.values())

    def _group(self, groups: dict[tuple[str, str], Group], upstream: str, meta: dict[str, Any]) -> Group:
        """The group reading `upstream` from the position in `meta`, created on first use: views over one
        stream at the same position share one reader and one watermark."""
        key = (upstream, json.dumps(meta.get("position"), sort_keys=True))
        if key not in groups:
            stream = self.catalog.source_entry(upstream)
            if upstream in self.catalog.streams:
                self.series.ensure(errors_series(upstream), BAD_RECORD_SCHEMA, "errors")
            src = self._view_source(upstream, meta.get("position")) if upstream in self.catalog.views \
                else make_source(stream, meta.get("position"))
            if src.prefetch_safe:  # read the next batch while this one is aggregated
                src = Prefetch(src)
            idle = parse_duration(stream.stmt.options.get("idle_timeout", "30 seconds")) / 1e6
            wm = Watermark(stream.stmt.watermark_delay_us, idle, meta.get("watermark_state"))
            # A source that resolved its start (Kafka 'latest'/'timestamp') has that in the first checkpoint.
            groups[key] = Group(stream, src, wm, [], meta.get("position") or src.position())
        return groups[key]

    def _view_source(self, upstream: str, position: dict | None) -> ViewSource:
        """Another view of this pipeline read as a stream (it must already be in a group)."""
        up = next(g for g in self.groups_so_far if any(v.plan.name == upstream for v, _ in g.views))
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
        for v, _ in g.views:  # the accounting a user can check: read = view input + errors
            v.meta["records_read"] = v.meta.get("records_read", 0) + data.num_rows + n_bad
            v.meta["records_bad"] = v.meta.get("records_bad", 0) + n_bad
        if data.num_rows == 0:
            return
        if isinstance(g.source, ViewSource):  # an upstream view's watermark is its own: nothing is late
            if sb.watermark is not None:
                g.watermark.advance_to(sb.watermark)
            wm = None
        else:
            ts = data.column(g.stream.stmt.event_time).cast(pa.int64()).to_numpy(zero_copy_only=False)
            wm = g.watermark.per_event(ts, sb.partitions, g.source.partitions())
        data = data.add_column(0, "__row", pa.array(np.arange(data.num_rows, dtype=np.int64)))
        for v, side in g.views:
            errors, late = v.op.process(data, wm, side)
            if errors:
                g.bad.append(failed_rows(sb, data, errors))
                self.progress.rejected(g.stream.stmt.name, g.bad[-1])
                v.meta["records_bad"] += len(errors)
            self.progress.late += late
        if not isinstance(g.source, ViewSource):  # events are what the sources read, not rows views pass on
            self.progress.read(g.stream.stmt.name, data.num_rows, sb.partitions)

    def checkpoint(self) -> None:
        """Commit one epoch: state runs, emitted windows, positions and watermarks, atomically."""
        began = time.perf_counter()
        self.epoch += 1
        txn = Txn()
        open_windows = state_bytes = 0
        for g in self.groups:
            if g.source.bounded and g.source.finished:
                g.watermark.finish()
        for v in self.views:
            self._flush(txn, v)
            open_windows += v.op.open_windows
            state_bytes += v.op.state_bytes
        for g in self.groups:
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
        self.progress.state_bytes = state_bytes
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

    def _flush(self, txn: Txn, v: ViewRun) -> None:
        """The view's checkpoint: its operator's state changes, versions, late events and failed windows,
        then each input's position and watermark, and its counters, all into `txn`."""
        wms = [g.watermark.value for g in v.groups]
        out = v.op.checkpoint(txn, wms, self.epoch)
        for e in out.emissions:
            self._write_version(txn, v, e.rows, e.watermark, e.supersedes)
        g = v.groups[0]  # failures of a join's select list are filed under its first stream
        for bad in out.bad:
            g.bad.append(bad)
            self.progress.rejected(g.stream.stmt.name, bad)
        if out.late is not None:
            self.series.write(txn, late_series(v.plan.name), out.late)
            v.meta["late"] = v.meta.get("late", 0) + out.late.num_rows
        for i, g in enumerate(v.groups):
            input_meta(v.meta, i).update(position=g.position, watermark_state=g.watermark.state())
        v.meta["watermark"] = None if None in wms else min(wms)
        txn.put_meta(f"view/{v.plan.name}", v.meta)

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
        for v in self.views:
            inputs = []
            for g in v.groups:
                parts = g.source.partition_status()
                for p in parts:
                    m = g.watermark.max_event.get(str(p["partition"]))
                    p["watermark"] = ts_text(None if m is None else m - g.watermark.delay_us)
                    p["idle"] = g.watermark.idle(str(p["partition"]))
                held = g.watermark.holding_back()
                inputs.append({
                    "stream": g.stream.stmt.name, "source": g.source.describe(),
                    "position": g.position, "watermark": ts_text(g.watermark.value),
                    "watermark_us": g.watermark.value,
                    "held_back_by": None if g.source.finished or held is None else (
                        f"partition {held}" + (" (no data yet)" if g.watermark.max_event.get(held) is None
                                               else "")),
                    "finished": bool(g.source.bounded and g.source.finished),
                    "health": g.source.health(), "partitions": parts})
            first = inputs[0]
            if len(inputs) > 1:  # a join: its watermark is the lower of its inputs'
                wms = [i["watermark_us"] for i in inputs]
                low = None if None in wms else min(wms)
                first = {**first, "watermark": ts_text(low), "watermark_us": low,
                         "finished": all(i["finished"] for i in inputs), "inputs": inputs}
            views[v.plan.name] = {**first, "open_windows": v.op.open_windows, "state_bytes": v.op.state_bytes,
                                  "late": v.meta.get("late", 0),
                                  "records_read": v.meta.get("records_read", 0),
                                  "records_bad": v.meta.get("records_bad", 0)}
        status = {"pid": os.getpid(), "updated_at": time.strftime("%Y-%m-%d %H:%M:%S"),
                  "checkpoint": self.epoch, "events_this_run": self.progress.events,
                  "events_per_second": round(self.progress.rate), "bad_records_this_run": self.progress.bad,
                  "views": views,
                  "functions": {n: {"module": f"{e.fn.path}:{e.fn.attr}", "source_hash": e.fn.source_hash}
                                for n, e in self.catalog.functions.items()}}
        write_sealed_json(self.state_dir / "status.json", status)  # atomic, fsynced, checksummed
