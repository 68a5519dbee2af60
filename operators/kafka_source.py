"""`connector = 'kafka'`: a topic's partitions, assigned explicitly at offsets from our own checkpoint.

Offsets are part of the atomic RocksDB checkpoint, so the checkpoint, not the consumer group, is the
truth about where to resume (offsets are also committed to the group afterwards, for lag monitoring
only). Messages are decoded in bulk: one pyarrow JSON/CSV decode per batch of up to `batch_size`
messages; only a failing batch is bisected to isolate the malformed messages.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pyarrow as pa
from confluent_kafka import OFFSET_END, Consumer, KafkaError, KafkaException, Message, TopicPartition

from pondstream.operators.decode import csv_parser, decode_lines, json_parser
from pondstream.operators.source import Source, SourceBatch, bad_records, event_time_range
from pondstream.sql.secrets import resolve

STARTUP = ("earliest", "latest", "timestamp")
REFRESH_S = 10.0  # how often to look for new partitions
PROBE_S = 2.0  # after this long without data, check that the broker still answers


class KafkaSourceError(ValueError):
    """The source cannot start: unreachable broker, missing topic, bad option. Says how to fix it."""


def kafka_config(options: dict[str, str], **extra: Any) -> dict[str, Any]:
    """librdkafka settings: ours plus every `properties.*` option passed through (security etc.), with
    `${NAME}` references read from the environment now (never stored resolved)."""
    conf: dict[str, Any] = {"bootstrap.servers": resolve("bootstrap_servers", options["bootstrap_servers"]),
                            "log_level": 0, **extra}
    conf.update({k[len("properties."):]: resolve(k, v) for k, v in options.items() if k.startswith("properties.")})
    return conf


class KafkaSource(Source):
    def __init__(self, schema: pa.Schema, event_time: str, options: dict[str, str],
                 position: dict | None = None) -> None:
        for required in ("topic", "bootstrap_servers"):
            if not options.get(required):
                raise KafkaSourceError(f"kafka source needs {required}: WITH (connector = 'kafka', "
                                       "topic = 'orders', bootstrap_servers = 'localhost:9092', format = 'json')")
        self.topic, self.servers = options["topic"], options["bootstrap_servers"]
        self.schema, self.event_time = schema, event_time
        fmt = options.get("format", "json").lower()
        self.objects = fmt in ("json", "jsonl")
        self.time_range = event_time_range(options)
        if fmt in ("json", "jsonl"):
            self._parse = json_parser(schema)
        elif fmt == "csv":
            self._parse = csv_parser(schema, schema.names)
        else:
            raise KafkaSourceError(f"unknown kafka format {fmt!r}; use json or csv")
        self.startup = options.get("scan_startup", "earliest").lower()
        if self.startup not in STARTUP:
            raise KafkaSourceError(f"scan_startup must be one of {', '.join(STARTUP)}, not {self.startup!r}")
        bounded = options.get("scan_bounded", "").lower()
        if bounded not in ("", "latest", "none"):
            raise KafkaSourceError(f"scan_bounded supports 'latest' (a backfill up to the end offsets at start), "
                                   f"not {bounded!r}")
        self.bounded = bounded == "latest"
        self.batch_size = int(options.get("batch_size", 100_000))
        self.options = options
        self.down_since: float | None = None
        self._last_data = self._last_probe = time.monotonic()
        self.last_error: str | None = None
        self.consumer = Consumer(kafka_config(
            options, **{"group.id": options.get("group_id", "pondstream"), "enable.auto.commit": False,
                        "enable.auto.offset.store": False, "queued.min.messages": 1_000_000,
                        "enable.partition.eof": False, "error_cb": self._on_error,
                        "statistics.interval.ms": 1000, "stats_cb": lambda _stats: None}))
        pos = position or {}
        self.offsets: dict[int, int] = {int(p): int(o) for p, o in pos.get("offsets", {}).items()}
        self.ends: dict[int, int] = {int(p): int(o) for p, o in pos.get("ends", {}).items()}
        self.assigned: set[int] = set()
        self.drained: set[int] = set()  # bounded: partitions read up to their end offset
        self._assign(self._partitions(timeout=10.0), first=not pos)
        self._refreshed = time.monotonic()
        self.finished = self.bounded and self._all_done()

    # -- connection and partitions --------------------------------------------------------------
    def _on_error(self, err: KafkaError) -> None:
        if err.code() in (KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT, KafkaError._TIMED_OUT):
            if self.down_since is None:
                self.down_since = time.monotonic()
        self.last_error = err.str()

    def _probe(self) -> None:
        """No data for a while: ask the broker for metadata, so a hung or stopped broker gets noticed
        (librdkafka itself only gives up on a silent connection after socket.timeout.ms)."""
        now = time.monotonic()
        if now - self._last_data < PROBE_S or now - self._last_probe < PROBE_S:
            return
        self._last_probe = now
        try:
            self.consumer.list_topics(self.topic, timeout=1.0)
            self.down_since = None
        except KafkaException as e:
            if self.down_since is None:
                self.down_since = now
            self.last_error = e.args[0].str()

    def health(self) -> str | None:
        if self.down_since is None:
            return None
        return (f"kafka at {self.servers} unreachable for {time.monotonic() - self.down_since:.0f}s "
                f"({self.last_error}); retrying")

    def _partitions(self, timeout: float) -> list[int]:
        try:
            md = self.consumer.list_topics(self.topic, timeout=timeout)
        except KafkaException as e:
            raise KafkaSourceError(f"cannot reach Kafka at {self.servers}: {e.args[0].str()}. Is the broker "
                                   "running? (pondstream broker --port 9092 starts a local one)") from None
        t = md.topics.get(self.topic)
        if t is None or t.error is not None or not t.partitions:
            known = ", ".join(sorted(n for n in md.topics if not n.startswith("__"))) or "none"
            raise KafkaSourceError(f"topic {self.topic!r} does not exist on {self.servers} (topics: {known}); "
                                   f"create it, e.g. pondstream produce {self.topic} FILE")
        return sorted(t.partitions)

    def _assign(self, partitions: list[int], first: bool) -> None:
        new = [p for p in partitions if p not in self.assigned]
        if not new:
            return
        for p in new:
            lo, hi = self.consumer.get_watermark_offsets(TopicPartition(self.topic, p), timeout=10.0)
            if p not in self.offsets:
                # New partitions found while running start at their beginning; at first start, as configured.
                self.offsets[p] = self._start_offset(p, lo, hi) if first else lo
            if self.bounded and p not in self.ends:
                self.ends[p] = hi
        self.assigned.update(new)
        self.drained = {p for p in self.assigned if self.bounded and self.offsets[p] >= self.ends[p]}
        todo = [TopicPartition(self.topic, p, self.offsets[p]) for p in sorted(self.assigned - self.drained)]
        self.consumer.assign(todo)

    def _start_offset(self, p: int, lo: int, hi: int) -> int:
        if self.startup == "earliest":
            return lo
        if self.startup == "latest":
            return hi
        ts = self.options.get("scan_startup_timestamp")
        if not ts:
            raise KafkaSourceError("scan_startup = 'timestamp' needs scan_startup_timestamp "
                                   "(epoch milliseconds or '2026-01-01 00:00:00')")
        ms = int(ts) if ts.isdigit() else pa.scalar(ts).cast(pa.timestamp("ms")).cast(pa.int64()).as_py()
        (found,) = self.consumer.offsets_for_times([TopicPartition(self.topic, p, ms)], timeout=10.0)
        return hi if found.offset < 0 or found.offset == OFFSET_END else found.offset

    def _all_done(self) -> bool:
        return all(self.offsets.get(p, 0) >= e for p, e in self.ends.items())

    def partitions(self) -> list[str]:
        return [str(p) for p in sorted(self.assigned)]

    def describe(self) -> str:
        return f"kafka topic {self.topic} at {self.servers} ({len(self.assigned)} partitions)"

    # -- reading --------------------------------------------------------------------------------
    def read(self) -> SourceBatch | None:
        if self.finished:
            return None
        now = time.monotonic()
        if now - self._refreshed > REFRESH_S:
            self._refreshed = now
            try:
                self._assign(self._partitions(timeout=1.0), first=False)
            except KafkaSourceError:
                pass  # broker briefly unreachable: keep consuming what we have
        msgs = self.consumer.consume(self.batch_size, timeout=0.2)
        if not msgs:
            self._probe()
            return None
        errors = list(map(Message.error, msgs))
        if any(errors):
            for e in errors:
                if e is not None:
                    self._on_error(e)
            msgs = [m for m, e in zip(msgs, errors, strict=True) if e is None]
            if not msgs:
                return None
        self.down_since, self._last_data = None, time.monotonic()
        parts = np.fromiter(map(Message.partition, msgs), np.int64, len(msgs))
        offs = np.fromiter(map(Message.offset, msgs), np.int64, len(msgs))
        values = list(map(Message.value, msgs))
        if self.bounded:  # a backfill stops at the end offsets seen at start
            end_of = np.zeros(max(self.ends) + 1, np.int64)
            end_of[list(self.ends)] = list(self.ends.values())
            keep = offs < end_of[parts]
            if not keep.all():
                parts, offs = parts[keep], offs[keep]
                values = [v for v, k in zip(values, keep, strict=True) if k]
        for p in np.unique(parts).tolist():
            self.offsets[p] = int(offs[parts == p].max()) + 1
        if self.bounded:
            done = [p for p in self.assigned - self.drained if self.offsets[p] >= self.ends[p]]
            if done:
                self.consumer.incremental_unassign([TopicPartition(self.topic, p) for p in done])
                self.drained.update(done)
            self.finished = self._all_done()
        position = self.position()
        if not values:
            return SourceBatch(self.schema.empty_table(), position)
        return self._decode(values, parts, offs, position)

    def _decode(self, values: list, parts: np.ndarray, offs: np.ndarray, position: dict) -> SourceBatch:
        if None in values or b"" in values:  # tombstones and empty messages: one line each, still
            values = [v or b"null" for v in values]
        chunk = b"\n".join(values) + b"\n"
        if chunk.count(b"\n") != len(values):  # a message with embedded newlines (pretty-printed JSON)
            values = [v.replace(b"\r", b" ").replace(b"\n", b" ") for v in values]
            chunk = b"\n".join(values) + b"\n"
        d = decode_lines(chunk, self._parse, self.event_time, self.objects, self.time_range)
        if d.n_lines != len(values):  # a blank message is a record too: make it one line (set aside)
            values = [v if v.strip() else b"null" for v in values]
            d = decode_lines(b"\n".join(values) + b"\n", self._parse, self.event_time, self.objects, self.time_range)
        bad = None
        if d.bad:
            idx = [i for i, _, _ in d.bad]
            bad = bad_records(self.topic, offs[idx].tolist(), [values[i] for i in idx], [e for _, _, e in d.bad],
                              partitions=parts[idx].tolist())
        table = d.table if d.table is not None else self.schema.empty_table()
        return SourceBatch(table, position, bad, partitions=parts[d.row_lines], offsets=offs[d.row_lines],
                           origin=self.topic)

    def position(self) -> dict[str, Any]:
        pos: dict[str, Any] = {"offsets": {str(p): o for p, o in sorted(self.offsets.items())}}
        if self.bounded:
            pos["ends"] = {str(p): e for p, e in sorted(self.ends.items())}
        return pos

    # -- after a checkpoint ---------------------------------------------------------------------
    def committed(self, position: dict[str, Any]) -> None:
        """Report progress to the consumer group for lag monitoring; never read back as truth."""
        offsets = [TopicPartition(self.topic, int(p), int(o)) for p, o in position.get("offsets", {}).items()]
        if offsets and self.down_since is None:
            try:
                self.consumer.commit(offsets=offsets, asynchronous=True)
            except KafkaException:
                pass

    def partition_status(self) -> list[dict[str, Any]]:
        """Offsets and lag per partition; end offsets come from librdkafka's cache of fetch responses
        (no request to the broker, so status stays cheap, and correct while the broker is down)."""
        out = []
        for p in sorted(self.assigned):
            try:
                end = self.consumer.get_watermark_offsets(TopicPartition(self.topic, p), cached=True)[1]
            except KafkaException:
                end = None
            end = None if end is None or end < 0 else end
            off = self.offsets.get(p, 0)
            out.append({"partition": p, "offset": off, "end_offset": end,
                        "lag": None if end is None else max(end - off, 0)})
        return out

    def close(self) -> None:
        self.consumer.close()
