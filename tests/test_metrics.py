"""`--metrics-port`: /metrics scraped during a run and checked against the run's own figures (events,
bad records by reason, late events, versions and rows), plus the CLI flags and the query counters of serve."""

from __future__ import annotations

import json
import random
import subprocess
import threading
import time
import urllib.request
from collections import Counter
from datetime import timedelta

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from pondstream.engine import Engine
from pondstream.engine.metrics import Metrics, reason_kind
from pondstream.engine.serve import Server, free_port

from conftest import HOURLY, PYTHON, START, make_orders, orders_stream

TICKS = """CREATE STREAM ticks (customer_id VARCHAR, amount DOUBLE, event_time TIMESTAMP,
    WATERMARK FOR event_time AS event_time - INTERVAL '1' SECOND)
WITH (connector = 'generator', rows = '0', rate = '3000', keys = '5', step = '1 second', batch_size = '500');
CREATE MATERIALIZED VIEW tick_minutes AS
SELECT TUMBLE_START(event_time, INTERVAL '1' MINUTE) AS minute, COUNT(*) AS n
FROM ticks GROUP BY TUMBLE(event_time, INTERVAL '1' MINUTE);
"""


def scrape(m: Metrics) -> dict[tuple[str, tuple], float]:
    """Every sample of /metrics over HTTP, as {(sample name, sorted labels): value}."""
    with urllib.request.urlopen(f"http://{m.host}:{m.port}/metrics", timeout=10) as r:
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain")
        text = r.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def by_label(samples: dict, name: str, label: str) -> dict[str, float]:
    return {dict(k[1])[label]: v for k, v in samples.items() if k[0] == name}


def orders_with_faults(path, seed: int) -> tuple[int, int]:
    """Orders plus malformed lines, wrong types, missing and out-of-range event times and events hours
    late, shuffled in by a seeded generator. Returns (good lines, bad lines)."""
    rng = random.Random(seed)
    lines = [json.dumps(r) for r in make_orders(3000, seed=seed)]
    old = (START - timedelta(hours=5)).isoformat(sep=" ")
    faults = [lambda: '{"order_id": 1, "amount": ', lambda: '{"order_id": "x", "amount": 1, "event_time": "2026-01-01"}',
              lambda: '{"order_id": 2, "customer_id": "c1", "amount": 3.5}',
              lambda: '{"order_id": 3, "customer_id": "c1", "amount": 3.5, "event_time": "3000-01-01 00:00:00"}']
    bad = 0
    for _ in range(60):
        i = rng.randrange(100, len(lines))
        if rng.random() < 0.5:
            lines.insert(i, json.dumps({"order_id": -i, "customer_id": "late", "amount": 5.0, "event_time": old}))
        else:
            lines.insert(i, rng.choice(faults)())
            bad += 1
    path.write_text("\n".join(lines) + "\n")
    return len(lines) - bad, bad


def test_metrics_during_a_run_match_the_runs_figures(tmp_path):
    good, bad = orders_with_faults(tmp_path / "orders.jsonl", seed=7)
    engine = Engine(tmp_path / "state")
    list(engine.execute(TICKS + orders_stream(tmp_path / "orders.jsonl") + HOURLY))
    metrics = Metrics(engine.state_dir, refresh_seconds=0).start(free_port())
    stop, result = threading.Event(), {}
    runner = threading.Thread(target=lambda: result.update(p=engine.run(stop, 0.2, metrics.on_checkpoint)))
    runner.start()
    try:
        seen: list[float] = []
        deadline = time.monotonic() + 60
        while len(seen) < 3 and time.monotonic() < deadline:  # counters move while the pipeline runs
            s = scrape(metrics)
            ticks = by_label(s, "pondstream_events_total", "stream").get("ticks", 0)
            if ticks and (not seen or ticks > seen[-1]):
                seen.append(ticks)
            time.sleep(0.3)
        assert len(seen) == 3, f"events_total never advanced: {seen}"
        assert by_label(s, "pondstream_watermark_lag_seconds", "view").keys() >= {"tick_minutes"}
        assert s[("pondstream_checkpoint_duration_seconds_count", ())] >= 3
    finally:
        stop.set()
        runner.join(60)
    p = result["p"]
    s = scrape(metrics)  # the endpoint outlives the run: its figures are the final checkpoint's
    metrics.close()
    with engine:
        events = by_label(s, "pondstream_events_total", "stream")
        assert sum(events.values()) == p.events and events["orders"] == good
        errors = engine.query("SELECT reason, COUNT(*) AS n FROM orders__errors GROUP BY reason").to_pylist()
        expected_bad = {reason_kind(r["reason"]): r["n"] for r in errors}
        assert by_label(s, "pondstream_bad_records_total", "kind") == expected_bad
        assert sum(expected_bad.values()) == bad == p.bad and len(expected_bad) >= 3
        late = engine.query("SELECT COUNT(*) AS n FROM hourly_sales__late").column("n")[0].as_py()
        assert by_label(s, "pondstream_late_events_total", "view")["hourly_sales"] == late == p.late > 0
        status = engine.status()["series"]
        for view in ("hourly_sales", "tick_minutes"):
            assert by_label(s, "pondstream_versions_total", "view")[view] == status[view]["versions"] > 0
            assert by_label(s, "pondstream_rows_written_total", "view")[view] == status[view]["rows"] > 0
        assert s[("pondstream_checkpoints_total", ())] == p.checkpoints
        assert s[("pondstream_checkpoint_duration_seconds_count", ())] == p.checkpoints
        assert by_label(s, "pondstream_state_size_bytes", "part")["series"] > 0
        assert "hourly_sales" not in by_label(s, "pondstream_watermark_seconds", "view")  # its file ended
        assert by_label(s, "pondstream_open_windows", "view")["hourly_sales"] == 0


def test_two_metrics_in_one_process_do_not_collide(tmp_path):
    a, b = Metrics(tmp_path / "a").start(free_port()), Metrics(tmp_path / "b").start(free_port())
    try:
        a.query_done(0.01, ok=True)
        assert scrape(a)[("pondstream_queries_total", (("outcome", "ok"),))] == 1
        assert scrape(b)[("pondstream_queries_total", (("outcome", "ok"),))] == 0
    finally:
        a.close()
        b.close()


def test_serve_counts_queries_and_errors(tmp_path):
    data = tmp_path / "orders.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in make_orders(500)))
    with Engine(tmp_path / "state") as e:
        list(e.execute(orders_stream(data) + HOURLY))
        e.run()
    metrics = Metrics(tmp_path / "state").start(free_port())
    try:
        with Server(tmp_path / "state", port=free_port(), metrics=metrics).start() as srv:
            with psycopg.connect(host=srv.host, port=srv.port, user="u", dbname="d", autocommit=True) as c:
                for _ in range(5):
                    c.execute("SELECT COUNT(*) FROM hourly_sales").fetchall()
                with pytest.raises(psycopg.errors.UndefinedTable):
                    c.execute("SELECT * FROM nowhere")
                c.execute("SELECT 1").fetchall()  # the connection survives and is counted
        s = scrape(metrics)
        assert s[("pondstream_queries_total", (("outcome", "ok"),))] >= 6
        assert s[("pondstream_queries_total", (("outcome", "error"),))] == 1
        assert s[("pondstream_query_duration_seconds_count", ())] == sum(
            v for k, v in s.items() if k[0] == "pondstream_queries_total")
        assert "pondstream_events_total" not in {k[0] for k in s}  # serve runs no pipeline
        assert by_label(s, "pondstream_versions_total", "view")["hourly_sales"] > 0  # but reports its output
    finally:
        metrics.close()


def test_cli_metrics_port_flag_and_busy_port(tmp_path):
    help_text = subprocess.run([PYTHON, "-m", "pondstream.engine.cli", "run", "--help"], capture_output=True,
                               text=True, timeout=60).stdout
    assert "--metrics-port" in help_text
    taken = Metrics(tmp_path).start(free_port())
    try:
        sql = tmp_path / "p.sql"
        sql.write_text(TICKS)
        p = subprocess.run([PYTHON, "-m", "pondstream.engine.cli", "run", str(sql), "--state-dir",
                            str(tmp_path / "state"), "--metrics-port", str(taken.port)],
                           capture_output=True, text=True, timeout=60)
        assert p.returncode != 0 and "pick another --metrics-port" in p.stderr and "Traceback" not in p.stderr
    finally:
        taken.close()


def test_reason_kind_labels_are_the_bounded_reason_categories():
    from pondstream.operators.source import reason

    errors = ["json parse error: expected value", "event time out of range: 3000-01-01",
              "null or missing event time", "expression error in view v: divide by zero",
              "unreadable file x: permission denied", "malformed line", "anything new"]
    kinds = Counter(reason_kind(reason(e)) for e in errors)
    assert all(k.replace("_", "").isalpha() and k.islower() for k in kinds)
    assert len(kinds) <= 6 and {"event_time_out_of_range", "missing_event_time", "expression_error"} <= set(kinds)
