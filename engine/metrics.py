"""Prometheus metrics of `pondstream run --metrics-port` and `pondstream serve --metrics-port`.

Nothing is counted on the hot path. Two kinds of figures are read when Prometheus scrapes:
- this process's counters, as of the latest checkpoint: `on_checkpoint` (the runner's `on_progress`
  hook, on the runner's thread) keeps a copy of `Progress`, so a scrape never iterates a dict the runner
  is changing, and observes that checkpoint's duration into a histogram;
- the state dir's committed figures (status.json, the series logs, the size on disk), re-read at most
  every `refresh_seconds`, so a scrape every second does not walk the state dir every second. These are
  what `pondstream status` shows, so `serve --metrics-port` reports a pipeline another process runs.

Each Metrics has its own CollectorRegistry (not prometheus_client's global one), so several engines or
servers in one process, as in the tests, do not collide. Label values are bounded: stream, view and
partition names, and the reason category of a bad record, never its free-text error.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from pondstream.state.errors import EngineError
from pondstream.state.files import read_json

if TYPE_CHECKING:
    from pondstream.engine.runner import Progress

DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 9464
END_OF_STREAM_US = (2**63 - 1) // 2  # operators.watermark.END_OF_STREAM, not imported: serve need not load operators
CHECKPOINT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
QUERY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def reason_kind(reason: str) -> str:
    """The `kind` label of a bad record: its `reason` column (operators.source.reason, a small fixed set
    such as "wrong type" or "event time out of range") in snake case, never the free-text error."""
    return reason.replace(" ", "_")


def dir_bytes(path: Path) -> int:
    """Bytes of the files under `path` (0 if it does not exist); files vanishing meanwhile are skipped,
    as RocksDB compaction and consolidation delete files while we walk."""
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.stat(os.path.join(root, f), follow_symlinks=False).st_size
            except OSError:
                pass
    return total


class Metrics:
    """The metrics of one process over one state dir, and the HTTP endpoint that serves them."""

    def __init__(self, state_dir: str | os.PathLike, refresh_seconds: float = 2.0) -> None:
        from pondstream.engine.api import Engine

        self.state_dir = Path(state_dir)
        self.engine = Engine(self.state_dir)  # for series figures only: never opens (locks) RocksDB
        self.refresh_seconds = refresh_seconds
        self.registry = CollectorRegistry(auto_describe=False)
        self.checkpoint_seconds = Histogram(
            "pondstream_checkpoint_duration_seconds",
            "Time to commit one checkpoint (state, emitted windows, positions, watermarks); p99 rising means "
            "state or output per checkpoint is growing", buckets=CHECKPOINT_BUCKETS, registry=self.registry)
        self.queries = Counter("pondstream_queries", "Queries answered by the PostgreSQL server (serve), by outcome",
                               ["outcome"], registry=self.registry)
        for outcome in ("ok", "error"):
            self.queries.labels(outcome)
        self.query_seconds = Histogram(
            "pondstream_query_duration_seconds",
            "Time from receiving a query (or an Execute) to its last row or error being sent (serve)",
            buckets=QUERY_BUCKETS, registry=self.registry)
        self.progress: dict[str, Any] | None = None  # this run's counters as of the latest checkpoint
        self._state: dict[str, Any] = {}
        self._state_at = float("-inf")
        self._lock = threading.Lock()
        self._server: Any = None
        self.registry.register(_Figures(self))

    # -- hooks ---------------------------------------------------------------------------------
    def on_checkpoint(self, p: Progress) -> None:
        """The runner's on_progress hook: copy the counters (on the runner's thread, so no race with a
        scrape) and observe the checkpoint's duration."""
        self.progress = {"events_by": dict(p.events_by), "bad_by": dict(p.bad_by), "late": p.late,
                         "checkpoints": p.checkpoints, "consolidations": p.consolidations,
                         "versions": p.versions, "at": time.time()}
        if p.checkpoint_seconds:
            self.checkpoint_seconds.observe(p.checkpoint_seconds[-1])

    def query_done(self, seconds: float, ok: bool) -> None:
        """The PostgreSQL server's hook: one query answered (rows sent) or failed."""
        self.queries.labels("ok" if ok else "error").inc()
        self.query_seconds.observe(seconds)

    # -- endpoint ------------------------------------------------------------------------------
    def start(self, port: int = DEFAULT_PORT, host: str = DEFAULT_HOST) -> Metrics:
        """Serve /metrics over HTTP on a daemon thread."""
        try:
            self._server, _ = start_http_server(port, host, registry=self.registry)
        except OSError as e:
            raise EngineError(f"cannot serve metrics on {host}:{port}: {e.strerror or e}; "
                              "pick another --metrics-port") from None
        self.host, self.port = host, self._server.server_address[1]
        return self

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    # -- committed figures ---------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """status.json, series figures and disk usage, re-read at most every refresh_seconds (a failed
        read keeps the previous figures: a scrape must not fail because a file is being replaced)."""
        with self._lock:
            if time.monotonic() - self._state_at >= self.refresh_seconds:
                try:
                    self._state = {
                        "status": read_json(self.state_dir / "status.json", "", required=False, sealed=False) or {},
                        "series": self.engine.series_figures(),
                        "disk": {"rocksdb": dir_bytes(self.state_dir / "rocksdb"),
                                 "series": dir_bytes(self.state_dir / "series")}}
                except (OSError, ValueError, EngineError):
                    pass
                self._state_at = time.monotonic()
            return self._state


class _Figures(Collector):
    """Builds the gauges and counters from Metrics.progress and Metrics.state() at each scrape."""

    def __init__(self, metrics: Metrics) -> None:
        self.m = metrics

    def collect(self) -> Iterator[Any]:
        yield from self._progress()
        yield from self._committed()

    def _progress(self) -> Iterator[Any]:
        p = self.m.progress
        if p is None:  # serve, or a run before its first checkpoint
            return
        events = CounterMetricFamily("pondstream_events", "Events read from each stream (partition \"\" for "
                                     "sources without partitions) by this process, as of the latest checkpoint; "
                                     "bad records are not included", labels=["stream", "partition"])
        for (stream, part), n in sorted(p["events_by"].items()):
            events.add_metric([stream, part], n)
        yield events
        bad = CounterMetricFamily("pondstream_bad_records", "Records set aside into <stream>__errors by this "
                                  "process, by reason (the reason column, snake-cased)", labels=["stream", "kind"])
        kinds: dict[tuple[str, str], int] = {}
        for (stream, reason), n in p["bad_by"].items():
            key = (stream, reason_kind(reason))
            kinds[key] = kinds.get(key, 0) + n
        for key, n in sorted(kinds.items()):
            bad.add_metric(list(key), n)
        yield bad
        yield CounterMetricFamily("pondstream_checkpoints", "Checkpoints committed by this process",
                                  value=p["checkpoints"])
        yield CounterMetricFamily("pondstream_consolidations", "Background consolidations of a series' versions "
                                  "into its base started by this process", value=p["consolidations"])
        yield GaugeMetricFamily("pondstream_last_checkpoint_timestamp_seconds", "When the latest checkpoint "
                                "was committed (seconds since epoch); alert if time() minus this grows",
                                value=p["at"])

    def _committed(self) -> Iterator[Any]:
        st = self.m.state()
        views = st.get("status", {}).get("views", {})
        now = time.time()
        late = CounterMetricFamily("pondstream_late_events", "Events that arrived after their window closed "
                                   "(beyond allowed lateness), committed to <view>__late; over all runs on "
                                   "this state dir", labels=["view"])
        wm = GaugeMetricFamily("pondstream_watermark_seconds", "Each view's event-time watermark (seconds "
                               "since epoch); absent once a bounded input has ended", labels=["view"])
        lag = GaugeMetricFamily("pondstream_watermark_lag_seconds", "Wall clock minus the watermark, as of "
                                "this scrape: steady when keeping up, growing when the pipeline falls behind or "
                                "its input stops", labels=["view"])
        windows = GaugeMetricFamily("pondstream_open_windows", "Windows (or key shards) held in state, not yet "
                                    "closed, per view", labels=["view"])
        held = GaugeMetricFamily("pondstream_view_state_bytes", "Bytes a view holds in RocksDB (Arrow IPC, before "
                                 "compression): windows, join rows, key shards; falls as the watermark passes",
                                 labels=["view"])
        consumer = GaugeMetricFamily("pondstream_consumer_lag_messages", "Kafka messages per partition not yet "
                                     "read (end offset minus position), as of the latest checkpoint",
                                     labels=["stream", "partition"])
        seen: set[tuple[str, str]] = set()
        for name, v in sorted(views.items()):
            late.add_metric([name], v.get("late", 0))
            windows.add_metric([name], v.get("open_windows", 0))
            held.add_metric([name], v.get("state_bytes", 0))
            us = v.get("watermark_us")
            if us is not None and us < END_OF_STREAM_US:
                wm.add_metric([name], us / 1e6)
                lag.add_metric([name], now - us / 1e6)
            for part in v.get("partitions", []):
                key = (v.get("stream", ""), str(part.get("partition")))
                if part.get("lag") is not None and key not in seen:
                    seen.add(key)
                    consumer.add_metric(list(key), part["lag"])
        yield from (late, wm, lag, windows, held, consumer)
        versions = CounterMetricFamily("pondstream_versions", "Versions (committed emissions) of each view's "
                                       "output; over all runs on this state dir", labels=["view"])
        rows = CounterMetricFamily("pondstream_rows_written", "Output rows written to each view, re-emissions "
                                   "included; over all runs on this state dir", labels=["view"])
        for name, s in sorted(st.get("series", {}).items()):
            if not name.endswith(("__late", "__errors")):
                versions.add_metric([name], s["versions"])
                rows.add_metric([name], s["rows"])
        yield from (versions, rows)
        disk = GaugeMetricFamily("pondstream_state_size_bytes", "Bytes on disk of the state dir: RocksDB (open "
                                 "windows, positions) and series (the views' Parquet files and logs)",
                                 labels=["part"])
        for part, n in st.get("disk", {}).items():
            disk.add_metric([part], n)
        yield disk
