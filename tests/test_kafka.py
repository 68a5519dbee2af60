"""Kafka in: bounded backfills, per-partition watermarks, dead letters, clear start-up errors, exactly once."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import threading
import time

import pytest
from confluent_kafka import Producer

from pondstream.engine import Engine, EngineError
from pondstream.engine.kafka_tools import ensure_topic

from conftest import HOURLY, PYTHON, canon, duck, make_orders, run_with_random_kills, timed_run
from kafka_helpers import kafka_stream, produce_more, produce_rows

DUCK_HOURLY = """SELECT time_bucket(INTERVAL '1 hour', event_time) AS hour, customer_id, COUNT(*) AS orders,
       SUM(amount) AS total, AVG(amount) AS avg_amount FROM orders WHERE amount > 0 GROUP BY 1, 2"""


def test_backfill_over_four_partitions_matches_duckdb(broker, tmp_path):
    _, bs = broker
    rows = make_orders(8000, seed=31, step_s=2.0, disorder_s=4.0)
    produce_rows(bs, "backfill", rows)
    with Engine(tmp_path / "s") as e:
        e.execute(kafka_stream(bs, "backfill", ", scan_bounded = 'latest', batch_size = '1000'") + HOURLY)
        p = e.run(checkpoint_interval=0.05)
        assert p.events == len(rows) and p.late == 0
        assert canon(e.query("SELECT * FROM hourly_sales")) == canon(duck(DUCK_HOURLY, rows))
        st = e.status()["views"]["hourly_sales"]
        assert [x["partition"] for x in st["partitions"]] == [0, 1, 2, 3]
        assert all(x["offset"] == 2000 for x in st["partitions"])


def test_malformed_messages_go_to_dead_letters_with_partition_and_offset(broker, tmp_path):
    _, bs = broker
    rows = make_orders(400, seed=32)
    raw = {5: b"{oops", 10: json.dumps({**rows[10], "amount": "lots"}).encode(),
           15: json.dumps({**rows[15], "event_time": None}).encode(), 21: b"\xff\xfe"}
    parts = produce_rows(bs, "dirty", rows, raw=raw)
    with Engine(tmp_path / "s") as e:
        e.execute(kafka_stream(bs, "dirty", ", scan_bounded = 'latest'") + HOURLY)
        e.run(checkpoint_interval=0.0)
        dl = e.query('SELECT source, "partition", "offset", raw, reason FROM orders__errors ORDER BY "partition", "offset"')
        got = [(r["partition"], r["offset"], r["raw"]) for r in dl.to_pylist()]
        want = sorted((parts[i], i // 4, raw[i]) for i in raw)
        assert got == want and set(dl.column("source").to_pylist()) == {"dirty"}
        reasons = dict(zip([r[2] for r in got], dl.column("reason").to_pylist(), strict=True))
        by_reason = e.status()["series"]["orders__errors"]["by_reason"]
        assert sum(by_reason.values()) == len(raw) and by_reason["missing event time"] == 1
        assert reasons[raw[15]] == "missing event time" and reasons[raw[5]] == "malformed"
        good = [r for i, r in enumerate(rows) if i not in raw]
        assert canon(e.query("SELECT * FROM hourly_sales")) == canon(duck(DUCK_HOURLY, good))


def test_missing_topic_and_unreachable_broker_are_clear_errors(broker, tmp_path):
    _, bs = broker
    with Engine(tmp_path / "s") as e:
        with pytest.raises(EngineError, match="topic 'nope' does not exist"):
            e.execute(kafka_stream(bs, "nope"))
        with pytest.raises(EngineError, match="cannot reach Kafka at 127.0.0.1:1"):
            e.execute(kafka_stream("127.0.0.1:1", "orders"))


def test_idle_partition_stops_holding_back_the_watermark(broker, tmp_path):
    """Only partition 0 gets data; with a 1 s idle timeout the other three stop holding windows open."""
    _, bs = broker
    ensure_topic(bs, "quiet", 4)
    rows = make_orders(3000, seed=33, step_s=3.0, disorder_s=0.0)
    p = Producer({"bootstrap.servers": bs, "log_level": 0})
    for r in rows:
        p.produce("quiet", json.dumps(r).encode(), partition=0)
    p.flush(30)
    stop = threading.Event()
    with Engine(tmp_path / "s") as e:
        e.execute(kafka_stream(bs, "quiet", ", idle_timeout = '1 second'") + HOURLY)
        threading.Timer(4.0, stop.set).start()
        e.run(stop, checkpoint_interval=0.2)
        hours = e.query("SELECT COUNT(DISTINCT hour) AS n FROM hourly_sales").column("n")[0].as_py()
        assert hours >= 2  # windows closed although partitions 1-3 never delivered anything


def test_kill_restart_from_kafka_is_exactly_once(broker, tmp_path):
    _, bs = broker
    rows = make_orders(30000, seed=34, step_s=2.0, disorder_s=4.0)
    produce_rows(bs, "crashy", rows)
    sql = tmp_path / "p.sql"
    sql.write_text(kafka_stream(bs, "crashy", ", scan_bounded = 'latest', batch_size = '150'") + HOURLY)
    cmd = [PYTHON, "-m", "pondstream.engine.cli", "run", str(sql), "--quiet", "--checkpoint-interval", "0.02"]
    rng = random.Random(7)
    want = canon(duck(DUCK_HOURLY, rows))
    full = timed_run(cmd, tmp_path / "ref")
    with Engine(tmp_path / "ref") as e:
        assert canon(e.query("SELECT * FROM hourly_sales")) == want
    kills = 0
    for trial in range(3):
        state = tmp_path / f"t{trial}"
        kills += run_with_random_kills(cmd, state, rng, full)
        with Engine(state) as e:
            assert canon(e.query("SELECT * FROM hourly_sales")) == want, f"trial {trial}"
    assert kills >= 3


def _status(state) -> dict:
    try:
        return json.loads((state / "status.json").read_text())["views"]["hourly_sales"]
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return {}


def _wait(cond, what: str, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_broker_outage_is_reported_and_survived(broker, tmp_path):
    """Stop the broker mid-run (SIGSTOP keeps its data), see the outage reported, resume, lose nothing."""
    proc_broker, bs = broker
    rows = make_orders(6000, seed=35, step_s=2.0, disorder_s=4.0)
    first, second = rows[:3000], rows[3000:]
    produce_rows(bs, "outage", first)
    sql = tmp_path / "p.sql"
    sql.write_text(kafka_stream(bs, "outage", ", idle_timeout = '1 hour'") + HOURLY)
    state = tmp_path / "s"
    run = subprocess.Popen([PYTHON, "-m", "pondstream.engine.cli", "run", str(sql), "--state-dir", str(state),
                            "--checkpoint-interval", "0.1"], stderr=subprocess.PIPE, text=True)
    offsets = lambda: sum(p["offset"] for p in _status(state).get("partitions", []))  # noqa: E731
    _wait(lambda: offsets() == len(first), "the first half to be read")
    os.kill(proc_broker.pid, signal.SIGSTOP)  # the broker stops answering; its data stays
    try:
        health = _wait(lambda: _status(state).get("health"), "the outage to be reported")
    finally:
        os.kill(proc_broker.pid, signal.SIGCONT)
    assert "unreachable" in health and "retrying" in health
    produce_more(bs, "outage", second, start_index=len(first))
    _wait(lambda: offsets() == len(rows) and not _status(state).get("health"), "recovery and the second half")
    run.send_signal(signal.SIGTERM)
    assert run.wait(timeout=60) == 0, run.stderr.read()[-2000:]
    wm = _status(state)["watermark"]
    with Engine(state) as e:
        got = e.query("SELECT * FROM hourly_sales")
    want = duck(DUCK_HOURLY + f" HAVING time_bucket(INTERVAL '1 hour', event_time) + INTERVAL '1 hour' "
                f"<= TIMESTAMP '{wm}'", rows)
    assert want.num_rows > 20 and canon(got) == canon(want)


def _consume_all(bs: str, topic: str, expect: int, timeout: float = 30.0) -> list:
    from confluent_kafka import Consumer, TopicPartition
    c = Consumer({"bootstrap.servers": bs, "group.id": "t", "log_level": 0, "enable.auto.commit": False})
    n = len(c.list_topics(topic, timeout=10).topics[topic].partitions)
    c.assign([TopicPartition(topic, p, 0) for p in range(n)])
    out, deadline = [], time.monotonic() + timeout
    while len(out) < expect and time.monotonic() < deadline:
        out += [m for m in c.consume(1000, 0.5) if m.error() is None]
    c.close()
    return out


def test_view_publishes_emitted_rows_to_a_sink_topic(broker, tmp_path):
    _, bs = broker
    rows = make_orders(5000, seed=36, step_s=2.0)
    produce_rows(bs, "sink_in", rows)
    ensure_topic(bs, "hourly_out", 1)
    view = HOURLY.replace("CREATE MATERIALIZED VIEW hourly_sales AS",
                          f"CREATE MATERIALIZED VIEW hourly_sales WITH (sink_topic = 'hourly_out', "
                          f"sink_bootstrap_servers = '{bs}') AS")
    with Engine(tmp_path / "s") as e:
        e.execute(kafka_stream(bs, "sink_in", ", scan_bounded = 'latest', batch_size = '500'") + view)
        e.run(checkpoint_interval=0.0)
        table = e.query("SELECT * FROM hourly_sales")
    msgs = _consume_all(bs, "hourly_out", table.num_rows)
    values = [json.loads(m.value()) for m in msgs]
    assert all(v["_view"] == "hourly_sales" and v["_version"] >= 1 for v in values)
    latest = {}
    for m, v in zip(msgs, values, strict=True):  # a consumer keeping the highest version per key
        if m.key() not in latest or latest[m.key()]["_version"] < v["_version"]:
            latest[m.key()] = v
    got = [(v["hour"], v["customer_id"], v["orders"], v["total"], v["avg_amount"]) for v in latest.values()]
    want = [(r["hour"].isoformat(), r["customer_id"], r["orders"], r["total"], r["avg_amount"])
            for r in table.to_pylist()]
    assert canon_rows(got) == canon_rows(want) and len(got) == table.num_rows


def canon_rows(rows: list[tuple]) -> list[tuple]:
    import pyarrow as pa
    return canon(pa.Table.from_pylist([{str(i): x for i, x in enumerate(r)} for r in rows]))


def test_sink_republishes_versions_not_recorded_as_sent(broker, tmp_path):
    """A crash after a checkpoint but before 'published' was recorded: the restart sends those again."""
    from pondstream.state.store import StateStore, Txn

    _, bs = broker
    rows = make_orders(3000, seed=37, step_s=2.0)
    produce_rows(bs, "sink_in2", rows)
    ensure_topic(bs, "hourly_out2", 1)
    view = HOURLY.replace("CREATE MATERIALIZED VIEW hourly_sales AS",
                          "CREATE MATERIALIZED VIEW hourly_sales WITH (sink_topic = 'hourly_out2') AS")
    ddl = kafka_stream(bs, "sink_in2", ", scan_bounded = 'latest'") + view  # sink defaults to the stream's broker
    with Engine(tmp_path / "s") as e:
        e.execute(ddl)
        e.run(checkpoint_interval=0.0)
        n = e.query("SELECT COUNT(*) AS n FROM hourly_sales").column("n")[0].as_py()
    store = StateStore(str(tmp_path / "s" / "rocksdb"))
    txn = Txn()
    txn.put_meta("sink/hourly_sales", 0)
    store.commit(txn)
    store.close()
    with Engine(tmp_path / "s") as e:
        e.execute(ddl)
        assert e.run(checkpoint_interval=0.0).events == 0
    msgs = _consume_all(bs, "hourly_out2", 2 * n)
    assert len(msgs) == 2 * n  # at-least-once: every row twice, with the same key and version
    assert len({(m.key(), json.loads(m.value())["_version"]) for m in msgs}) == n


def test_cli_produce_run_and_status_per_partition(broker, tmp_path):
    _, bs = broker
    rows = make_orders(1200, seed=38, step_s=5.0)
    data = tmp_path / "orders.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cli = [PYTHON, "-m", "pondstream.engine.cli"]
    out = subprocess.run([*cli, "produce", "cli_orders", str(data), "--bootstrap-servers", bs, "--partitions", "3"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "produced 1,200 messages" in out.stderr
    sql = tmp_path / "p.sql"
    sql.write_text(kafka_stream(bs, "cli_orders", ", scan_bounded = 'latest'") + HOURLY)
    state = str(tmp_path / "s")
    assert subprocess.run([*cli, "run", str(sql), "--state-dir", state], capture_output=True, timeout=120).returncode == 0
    st = json.loads(subprocess.run([*cli, "status", "--json", "--state-dir", state], capture_output=True,
                                   text=True, timeout=60).stdout)["views"]["hourly_sales"]
    assert [(p["partition"], p["offset"], p["end_offset"], p["lag"]) for p in st["partitions"]] == \
        [(0, 400, 400, 0), (1, 400, 400, 0), (2, 400, 400, 0)]
    text = subprocess.run([*cli, "status", "--state-dir", state], capture_output=True, text=True, timeout=60).stdout
    assert "partition 2: offset 400  end 400  lag 0" in text
    with Engine(state) as e:
        assert canon(e.query("SELECT * FROM hourly_sales")) == canon(duck(DUCK_HOURLY, rows))


def test_scan_startup_latest_and_timestamp(broker, tmp_path):
    _, bs = broker
    rows = make_orders(800, seed=39, step_s=5.0)
    produce_rows(bs, "startup", rows[:400])
    time.sleep(0.3)
    cut_ms = int(time.time() * 1000)
    time.sleep(0.3)
    produce_more(bs, "startup", rows[400:], start_index=400)
    with Engine(tmp_path / "ts") as e:  # from a timestamp: only what was produced after it
        e.execute(kafka_stream(bs, "startup", f", scan_startup = 'timestamp', scan_startup_timestamp = '{cut_ms}', "
                                              "scan_bounded = 'latest'") + HOURLY)
        assert e.run(checkpoint_interval=0.0).events == 400
        assert canon(e.query("SELECT * FROM hourly_sales")) == canon(duck(DUCK_HOURLY, rows[400:]))
    with Engine(tmp_path / "latest") as e:  # from the end: nothing that exists at start
        e.execute(kafka_stream(bs, "startup", ", scan_startup = 'latest'") + HOURLY)
        stop = threading.Event()
        threading.Timer(2.0, stop.set).start()
        late_rows = make_orders(40, seed=40, step_s=5.0)
        threading.Timer(0.8, lambda: produce_more(bs, "startup", late_rows, start_index=800)).start()
        assert e.run(stop, checkpoint_interval=0.1).events == 40


def test_csv_messages(broker, tmp_path):
    _, bs = broker
    rows = make_orders(600, seed=41, step_s=4.0)
    ensure_topic(bs, "csv_orders", 2)
    p = Producer({"bootstrap.servers": bs, "log_level": 0})
    for i, r in enumerate(rows):
        p.produce("csv_orders", f"{r['order_id']},{r['customer_id']},{r['amount']},{r['event_time']}".encode(),
                  partition=i % 2)
        p.flush(10)
    with Engine(tmp_path / "s") as e:
        e.execute(kafka_stream(bs, "csv_orders", ", scan_bounded = 'latest'").replace("'json'", "'csv'") + HOURLY)
        e.run(checkpoint_interval=0.0)
        assert canon(e.query("SELECT * FROM hourly_sales")) == canon(duck(DUCK_HOURLY, rows))


def test_every_window_kind_publishes_to_its_sink(broker, tmp_path):
    """Sessions and running aggregates emit through the same path as windows, so their sinks see every row."""
    _, bs = broker
    rows = make_orders(2000, seed=42, step_s=30.0, keys=4)
    produce_rows(bs, "kinds_in", rows)
    ensure_topic(bs, "sessions_out", 1)
    ensure_topic(bs, "totals_out", 1)
    views = """CREATE MATERIALIZED VIEW sessions WITH (sink_topic = 'sessions_out') AS
    SELECT SESSION_START(event_time, INTERVAL '2' MINUTE) AS s, customer_id, COUNT(*) AS n
    FROM orders GROUP BY SESSION(event_time, INTERVAL '2' MINUTE), customer_id;
    CREATE MATERIALIZED VIEW totals WITH (sink_topic = 'totals_out') AS
    SELECT customer_id, COUNT(*) AS n FROM orders GROUP BY customer_id;"""
    with Engine(tmp_path / "s") as e:
        e.execute(kafka_stream(bs, "kinds_in", ", scan_bounded = 'latest'") + views)
        e.run(checkpoint_interval=0.0)
        n_sessions = e.query("SELECT COUNT(*) AS n FROM sessions").column("n")[0].as_py()
        totals = {r["customer_id"]: r["n"] for r in e.query("SELECT * FROM totals").to_pylist()}
        sent = e.status()["series"]["totals"]["rows"]  # every version's rows
    assert n_sessions > 10
    assert len(_consume_all(bs, "sessions_out", n_sessions)) == n_sessions
    latest = {}
    msgs = _consume_all(bs, "totals_out", sent)
    assert len(msgs) == sent
    for m in msgs:
        v = json.loads(m.value())
        if v["customer_id"] not in latest or latest[v["customer_id"]]["_version"] < v["_version"]:
            latest[v["customer_id"]] = v
    assert {k: v["n"] for k, v in latest.items()} == totals
