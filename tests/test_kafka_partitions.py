"""New partitions found while running are assigned from their beginning (the local broker cannot add
partitions to a topic, so this drives the source against a stand-in consumer)."""

from __future__ import annotations

from types import SimpleNamespace

import pyarrow as pa

import pondstream.operators.kafka_source as ks


class FakeConsumer:
    partitions = [0, 1]
    assigned: list = []

    def __init__(self, conf):
        self.conf = conf

    def list_topics(self, topic, timeout):
        return SimpleNamespace(topics={topic: SimpleNamespace(error=None, partitions={p: None for p in self.partitions})})

    def get_watermark_offsets(self, tp, timeout=None, cached=False):
        return (10 * tp.partition, 100)  # low offsets differ per partition: 0, 10, 20, ...

    def assign(self, tps):
        FakeConsumer.assigned = [(tp.partition, tp.offset) for tp in tps]

    def consume(self, n, timeout):
        return []


def test_new_partitions_are_assigned_from_their_beginning(monkeypatch):
    monkeypatch.setattr(ks, "Consumer", FakeConsumer)
    schema = pa.schema([("v", pa.int64()), ("ts", pa.timestamp("us"))])
    opts = {"topic": "t", "bootstrap_servers": "x:1", "scan_startup": "latest"}
    src = ks.KafkaSource(schema, "ts", opts, position=None)
    assert FakeConsumer.assigned == [(0, 100), (1, 100)]  # a new pipeline with 'latest' starts at the end
    FakeConsumer.partitions = [0, 1, 2]
    src._refreshed = 0.0  # due for a metadata refresh
    assert src.read() is None
    assert FakeConsumer.assigned == [(0, 100), (1, 100), (2, 20)]  # the new one from its first offset
    assert src.position() == {"offsets": {"0": 100, "1": 100, "2": 20}}
    restored = ks.KafkaSource(schema, "ts", opts, position=src.position())
    assert restored.position() == src.position()  # the checkpoint, not 'latest', decides on restart
