"""SIGKILL at random moments, restart, repeat: the final views equal an uninterrupted run's, exactly."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import time
from datetime import timedelta

from pondstream.engine import Engine

from conftest import (
    HOURLY,
    PYTHON,
    START,
    canon,
    duck,
    make_orders,
    orders_stream,
    run_with_random_kills,
    timed_run,
    write_jsonl,
)

HOP = """CREATE MATERIALIZED VIEW hop_counts AS
SELECT HOP_START(event_time, INTERVAL '20' MINUTE, INTERVAL '1' HOUR) AS ws, customer_id, COUNT(*) AS n,
       SUM(amount) AS total
FROM orders GROUP BY HOP(event_time, INTERVAL '20' MINUTE, INTERVAL '1' HOUR), customer_id;
"""
SESSIONS = """CREATE MATERIALIZED VIEW sessions AS
SELECT SESSION_START(event_time, INTERVAL '90' SECOND) AS s, SESSION_END(event_time, INTERVAL '90' SECOND) AS e,
       customer_id, COUNT(*) AS n, MAX(amount) AS top
FROM orders GROUP BY SESSION(event_time, INTERVAL '90' SECOND), customer_id;
"""
QUERIES = {
    "hourly": "SELECT * FROM hourly_sales",
    "hop": "SELECT * FROM hop_counts",
    "sessions": "SELECT * FROM sessions",
    "late": "SELECT * FROM hourly_sales__late",
    "errors": "SELECT source, \"offset\", error FROM orders__errors",
}


def _inputs(tmp_path):
    rows = make_orders(24000, seed=21, step_s=4.0, disorder_s=3.0)
    replay = make_orders(400, seed=22, step_s=10.0, disorder_s=0.0, start=START + timedelta(hours=2))
    for i, r in enumerate(replay):
        r["order_id"] = 900_000 + i
    d = tmp_path / "in"
    write_jsonl(d / "a.jsonl", rows[:12000])
    write_jsonl(d / "b.jsonl", replay)  # late when it arrives
    write_jsonl(d / "c.jsonl", rows[12000:])
    (d / "c.jsonl").write_text((d / "c.jsonl").read_text() + "{broken\n")
    sql = tmp_path / "pipeline.sql"
    sql.write_text(orders_stream(d, extra=", batch_bytes = '2500'") + HOURLY + HOP + SESSIONS)
    return rows + replay, sql


def _answers(state_dir):
    with Engine(state_dir) as e:
        return {k: canon(e.query(q)) for k, q in QUERIES.items()}


def test_kill_restart_equals_uninterrupted_run(tmp_path):
    rows, sql = _inputs(tmp_path)
    cmd = [PYTHON, "-m", "pondstream.engine.cli", "run", str(sql), "--quiet", "--checkpoint-interval", "0.02"]
    ref_dir = tmp_path / "reference"
    full = timed_run(cmd, ref_dir)
    reference = _answers(ref_dir)
    assert len(reference["hourly"]) > 100 and len(reference["late"]) > 100 and len(reference["errors"]) == 1
    assert 200 < len(reference["sessions"]) < 12000  # sessions that merge across batches and checkpoints

    rng = random.Random(1234)
    kills = 0
    for trial in range(5):
        state = tmp_path / f"trial{trial}"
        kills += run_with_random_kills(cmd, state, rng, full)
        got = _answers(state)
        assert got == reference, f"trial {trial} differs from the uninterrupted run"
    assert kills >= 5  # the trials really were interrupted

    hourly = reference["hourly"]
    assert len({(r[0], r[1]) for r in hourly}) == len(hourly)  # no duplicated window/key
    late_ids = {r[0] for r in reference["late"]}
    kept = [r for r in rows if r["order_id"] not in late_ids]
    want = duck("""SELECT time_bucket(INTERVAL '1 hour', event_time) AS hour, customer_id, COUNT(*) AS orders,
        SUM(amount) AS total, AVG(amount) AS avg_amount FROM orders WHERE amount > 0 GROUP BY 1, 2""", kept)
    assert hourly == canon(want)


def test_sigterm_checkpoints_and_resumes(tmp_path):
    rows, sql = _inputs(tmp_path)
    state = tmp_path / "state"
    cmd = [PYTHON, "-m", "pondstream.engine.cli", "run", str(sql), "--state-dir", str(state),
           "--checkpoint-interval", "5"]
    p = subprocess.Popen(cmd, stderr=subprocess.PIPE)
    time.sleep(2.0)
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=60) == 0
    assert b"stopping: writing a checkpoint" in p.stderr.read()
    with Engine(state) as e:
        partial = e.status()["views"]["hourly_sales"]
        assert partial["finished"] is False
    subprocess.run(cmd, check=True, timeout=300, capture_output=True)
    ref = tmp_path / "ref"
    subprocess.run([*cmd[:5], "--state-dir", str(ref)], check=True, timeout=300, capture_output=True)
    assert _answers(state) == _answers(ref)


def test_kill_restart_during_reemission_with_allowed_lateness(tmp_path):
    """Late events within the allowed lateness re-emit windows (and, through a view over the view, its
    periods); kills at random moments change nothing."""
    rows = make_orders(12000, seed=71, step_s=3.0, disorder_s=3.0)
    d = tmp_path / "in"
    chunks = [rows[i:i + 3000] for i in range(0, 12000, 3000)]
    for n, part in enumerate(chunks):  # after each chunk, a replay of the previous hours arrives late
        write_jsonl(d / f"{n}a.jsonl", part)
        replay = make_orders(150, seed=80 + n, step_s=20.0, disorder_s=0.0,
                             start=START + timedelta(seconds=max(0, (n + 1) * 3000 * 3 - 4000)))
        for i, r in enumerate(replay):
            r["order_id"] = 1_000_000 + n * 1000 + i
        write_jsonl(d / f"{n}b.jsonl", replay)
    sql = tmp_path / "p.sql"
    sql.write_text(orders_stream(d, extra=", batch_bytes = '4000'") + HOURLY.replace(
        "CREATE MATERIALIZED VIEW hourly_sales AS",
        "CREATE MATERIALIZED VIEW hourly_sales WITH (allowed_lateness = '40 minutes') AS") + """
CREATE MATERIALIZED VIEW three_hourly AS
SELECT TUMBLE_START(hour, INTERVAL '3' HOUR) AS period, customer_id, SUM(orders) AS orders, MAX(total) AS top
FROM hourly_sales GROUP BY TUMBLE(hour, INTERVAL '3' HOUR), customer_id;""")
    cmd = [PYTHON, "-m", "pondstream.engine.cli", "run", str(sql), "--quiet", "--checkpoint-interval", "0.02"]
    full = timed_run(cmd, tmp_path / "reference")

    def answers(state):
        with Engine(state) as e:
            return (canon(e.query(QUERIES["hourly"])), canon(e.query(QUERIES["late"])),
                    canon(e.query("SELECT * FROM three_hourly")))

    reference = answers(tmp_path / "reference")
    log = (tmp_path / "reference" / "series" / "hourly_sales" / "_log.jsonl").read_text().splitlines()
    assert sum(json.loads(x)["supersedes"] for x in log) >= 2  # windows really were re-emitted
    assert reference[1], "some replayed events should be beyond the lateness"
    assert len(reference[2]) > 20  # the view over the view, re-emitted as the hourly view re-emits
    rng = random.Random(99)
    kills = 0
    for trial in range(3):
        kills += run_with_random_kills(cmd, tmp_path / f"t{trial}", rng, full)
        assert answers(tmp_path / f"t{trial}") == reference, f"trial {trial}"
    assert kills >= 3
