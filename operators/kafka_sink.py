"""Publish what a view emits to a Kafka topic: one JSON message per row, keyed by window and keys.

Delivery is at-least-once: a version is published after its checkpoint commits, and the last version
published is recorded afterwards; a crash in between republishes that version on restart. Every message
carries `_version`, so a consumer that keeps the highest version per key (or dedups on key + version)
sees each result exactly once. The producer is idempotent, so retries inside one run add no duplicates.
"""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal
from typing import Any

import pyarrow as pa
from confluent_kafka import KafkaError, Producer

from pondstream.operators.kafka_source import kafka_config


class KafkaSinkError(RuntimeError):
    pass


def _json_default(v: Any) -> Any:
    if isinstance(v, dt.datetime):
        return v.isoformat()
    if isinstance(v, Decimal):
        return float(v)
    return str(v)


class KafkaSink:
    def __init__(self, view: str, options: dict[str, str], identity: list[str]) -> None:
        self.view, self.identity = view, identity
        self.topic = options["sink_topic"]
        servers = options.get("sink_bootstrap_servers") or options.get("bootstrap_servers")
        if not servers:
            raise KafkaSinkError(f"view {view}: sink_topic needs sink_bootstrap_servers = 'host:port'")
        opts = {"bootstrap_servers": servers, **{k[len("sink_"):]: v for k, v in options.items()
                                                 if k.startswith("sink_properties.")}}
        self._errors: list[str] = []
        self.producer = Producer(kafka_config(opts, **{"enable.idempotence": True, "acks": "all",
                                                       "linger.ms": 20}))

    def _delivered(self, err: KafkaError | None, _msg) -> None:
        if err is not None:
            self._errors.append(err.str())

    def publish(self, table: pa.Table, version: int) -> int:
        """Send every row of one version and wait until all are acknowledged."""
        for row in table.to_pylist():  # emitted rows, not events: far fewer than the input
            key = json.dumps([row.get(c) for c in self.identity], default=_json_default).encode()
            value = {k: v for k, v in row.items() if not k.startswith("_")}
            value["_version"], value["_view"] = version, self.view
            while True:
                try:
                    self.producer.produce(self.topic, json.dumps(value, default=_json_default).encode(), key=key,
                                          on_delivery=self._delivered)
                    break
                except BufferError:
                    self.producer.poll(0.1)
        left = self.producer.flush(60)
        if left or self._errors:
            errors, self._errors = self._errors, []
            raise KafkaSinkError(f"view {self.view}: {left} messages to {self.topic} undelivered "
                                 f"({'; '.join(errors[:3]) or 'timed out'})")
        return table.num_rows
