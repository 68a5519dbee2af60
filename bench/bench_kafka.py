"""Kafka benchmark: 2M JSON events on a 4-partition topic of the local broker, 1000 keys, through a
1-minute TUMBLE COUNT+SUM view, next to the ceiling measured in the same run: plain confluent-kafka
batch consume of the same topic + pyarrow JSON decode + a pyarrow group-by per batch.

    python bench/bench_kafka.py [--events 2000000]

Needs the broker extra (pip install 'pondstream[broker]'). With Quix Streams set up in its own venv
(`make bench-quix-env`; it pins an older confluent-kafka) the same window runs in Quix on the same topic
and the ratio is printed.
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VIEW = """CREATE MATERIALIZED VIEW per_minute AS
SELECT TUMBLE_START(event_time, INTERVAL '1' MINUTE) AS minute, customer_id, COUNT(*) AS n, SUM(amount) AS total
FROM orders GROUP BY TUMBLE(event_time, INTERVAL '1' MINUTE), customer_id;"""


def produce(bs: str, topic: str, events: int) -> None:
    import numpy as np
    from confluent_kafka import Producer

    from pondstream.engine.kafka_tools import ensure_topic

    ensure_topic(bs, topic, 4)
    rng = np.random.default_rng(1)
    base = 1767225600_000  # 2026-01-01 in ms
    p = Producer({"bootstrap.servers": bs, "linger.ms": 50, "batch.num.messages": 10000,
                  "queue.buffering.max.messages": 1_000_000, "log_level": 0})
    keys = rng.integers(0, 1000, events)
    amounts = np.round(rng.gamma(2.0, 40.0, events), 2)
    times = base + np.arange(events) * 10 - rng.integers(0, 2000, events)
    for i in range(events):
        msg = (f'{{"order_id":{i},"customer_id":"c{keys[i]:05d}","amount":{amounts[i]},'
               f'"event_time":{times[i]}}}').encode()
        if i >= events - 4:
            p.flush(60)  # each partition's last message in its own batch (exact end offsets on this broker)
        while True:
            try:
                p.produce(topic, msg, key=b"c%05d" % keys[i], partition=i % 4)  # keyed, for Quix
                break
            except BufferError:
                p.poll(0.05)
    assert p.flush(120) == 0


def ceiling(bs: str, topic: str, events: int) -> dict:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.json as pj
    from confluent_kafka import Consumer, Message, TopicPartition

    c = Consumer({"bootstrap.servers": bs, "group.id": "ceiling", "enable.auto.commit": False,
                  "queued.min.messages": 1_000_000, "log_level": 0})
    t0 = time.perf_counter()
    c.assign([TopicPartition(topic, p, 0) for p in range(4)])
    n, groups = 0, 0
    schema = pa.schema([("order_id", pa.int64()), ("customer_id", pa.string()), ("amount", pa.float64()),
                        ("event_time", pa.int64())])
    opts = pj.ParseOptions(explicit_schema=schema)
    while n < events:
        msgs = c.consume(10000, 1.0)
        if not msgs:
            continue
        values = list(map(Message.value, msgs))
        t = pj.read_json(io.BytesIO(b"\n".join(values)), parse_options=opts)
        minute = pc.multiply(pc.divide(t.column("event_time"), 60000), 60000)
        g = pa.table({"m": minute, "k": t.column("customer_id"), "a": t.column("amount")}).group_by(
            ["m", "k"], use_threads=False).aggregate([([], "count_all"), ("a", "sum")])
        groups += g.num_rows
        n += len(msgs)
    secs = time.perf_counter() - t0
    c.close()
    return {"events": n, "seconds": secs, "events_per_s": n / secs}


def pipeline(bs: str, topic: str) -> dict:
    code = f"""
import json, tempfile, time
from pondstream.engine import Engine
t0 = time.perf_counter()
with tempfile.TemporaryDirectory() as d, Engine(d) as e:
    e.execute('''CREATE STREAM orders (order_id BIGINT, customer_id VARCHAR, amount DOUBLE, event_time TIMESTAMP,
        WATERMARK FOR event_time AS event_time - INTERVAL '5' SECOND)
        WITH (connector = 'kafka', topic = '{topic}', bootstrap_servers = '{bs}', format = 'json',
              scan_bounded = 'latest');''' + '''{VIEW}''')
    t1 = time.perf_counter()
    p = e.run()
    run_s = time.perf_counter() - t1
    rows = e.query("SELECT COUNT(*) AS n FROM per_minute").column("n")[0].as_py()
secs = time.perf_counter() - t0
import resource
print(json.dumps({{"events": p.events, "seconds": secs, "run_seconds": run_s, "events_per_s": p.events / run_s,
                  "rows": rows,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=2_000_000)
    ap.add_argument("--quix-python", default=str(Path(__file__).with_name(".venv-quix") / "bin" / "python"),
                    help="a Python with quixstreams installed (default: bench/.venv-quix, see make bench-quix-env)")
    ap.add_argument("--quix-events", type=int, default=500_000, help="events Quix processes (it is slow)")
    args = ap.parse_args()
    from pondstream.engine.kafka_tools import free_port, start_broker

    port = free_port()
    broker = start_broker(port)
    bs = f"127.0.0.1:{port}"
    try:
        t = time.perf_counter()
        produce(bs, "orders", args.events)
        print(f"produced {args.events:,} JSON events to 4 partitions in {time.perf_counter() - t:.1f} s")
        ceil = ceiling(bs, "orders", args.events)
        print(f"ceiling: consume + JSON decode + group-by  {ceil['events_per_s']:>12,.0f} ev/s "
              f"({ceil['seconds']:.2f} s)")
        view = pipeline(bs, "orders")
        print(f"pondstream view (1-min TUMBLE, 1000 keys) {view['events_per_s']:>12,.0f} ev/s "
              f"({view['run_seconds']:.2f} s in run(); {view['seconds']:.2f} s with process start-up and the "
              f"final query) = {view['events_per_s'] / ceil['events_per_s']:.0%} of ceiling")
        print(f"  {view['rows']:,} rows in the view; peak RSS {view['peak_rss_mb']:.0f} MB "
              f"(librdkafka prefetches up to queued.min.messages per partition)")
        quix = Path(args.quix_python)
        if quix.exists():
            n = min(args.events, args.quix_events)
            out = subprocess.run([str(quix), str(Path(__file__).with_name("quix_window.py")), bs, "orders", str(n)],
                                 capture_output=True, text=True, timeout=1800)
            if out.returncode == 0:
                q = json.loads(out.stdout.strip().splitlines()[-1])
                print(f"quix streams 3.28, same window (first {n:,} events) {q['events_per_s']:>10,.0f} ev/s "
                      f"(first message to last, consumer-group start-up excluded): pondstream is "
                      f"{view['events_per_s'] / q['events_per_s']:.1f}x")
            else:
                print(f"quix streams run failed: {out.stderr.strip().splitlines()[-1:]}")
        else:
            print(f"quix streams not set up ({quix} missing): make bench-quix-env to compare")
    finally:
        broker.kill()


if __name__ == "__main__":
    with tempfile.TemporaryDirectory():
        main()
