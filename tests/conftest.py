"""Shared helpers: deterministic input files and an independent DuckDB answer to compare against."""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest

from pondstream.engine import Engine

START = datetime(2026, 1, 1, 0, 0, 0)
PYTHON = sys.executable


def make_orders(n: int, seed: int = 1, keys: int = 20, step_s: float = 2.0, disorder_s: float = 4.0,
                start: datetime = START) -> list[dict]:
    """Orders with event time advancing `step_s` per event, each jittered back by up to `disorder_s`."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        t = start + timedelta(seconds=i * step_s - rng.uniform(0, disorder_s))
        rows.append({"order_id": i, "customer_id": f"c{rng.randrange(keys)}",
                     "amount": round(rng.uniform(-20, 200), 2), "event_time": t.isoformat(sep=" ")})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def orders_stream(path: Path | str, fmt: str = "jsonl", delay: str = "INTERVAL '5' SECOND",
                  extra: str = "", amount_type: str = "DOUBLE") -> str:
    return f"""CREATE STREAM orders (
    order_id BIGINT, customer_id VARCHAR, amount {amount_type}, event_time TIMESTAMP,
    WATERMARK FOR event_time AS event_time - {delay}
) WITH (connector = 'file', path = '{path}', format = '{fmt}'{extra});
"""


HOURLY = """CREATE MATERIALIZED VIEW hourly_sales AS
SELECT TUMBLE_START(event_time, INTERVAL '1' HOUR) AS hour,
       customer_id, COUNT(*) AS orders, SUM(amount) AS total, AVG(amount) AS avg_amount
FROM orders WHERE amount > 0
GROUP BY TUMBLE(event_time, INTERVAL '1' HOUR), customer_id;
"""


def duck(sql: str, rows: list[dict]) -> pa.Table:
    """DuckDB's batch answer over the same input, registered as table `orders`."""
    con = duckdb.connect()
    src = pa.Table.from_pylist(rows)
    con.register("raw_orders", src)
    con.sql("CREATE TABLE orders AS SELECT order_id::BIGINT AS order_id, customer_id::VARCHAR AS customer_id, "
                "amount::DOUBLE AS amount, event_time::TIMESTAMP AS event_time FROM raw_orders")
    return con.sql(sql).to_arrow_table()


class Approx(float):
    """A float equal to another within summation-order noise (two engines add in different orders)."""

    def __eq__(self, other) -> bool:
        return isinstance(other, float) and math.isclose(self, other, rel_tol=1e-9, abs_tol=1e-9)

    __hash__ = float.__hash__


def canon(table: pa.Table) -> list[tuple]:
    """Rows as tuples sorted by their non-float values; floats compare approximately."""
    out = [tuple(Approx(v) if isinstance(v, float) else v for v in r.values()) for r in table.to_pylist()]
    return sorted(out, key=lambda t: tuple((x is None, str(x) if not isinstance(x, float) else "")
                                           for x in t) + tuple(round(x, 3) for x in t if isinstance(x, float)))


@pytest.fixture
def engine(tmp_path):
    e = Engine(tmp_path / "state")
    yield e
    e.close()


@pytest.fixture(scope="session")
def broker():
    """One local broker for the session, on a free loopback port: yields its bootstrap address."""
    from pondstream.engine.kafka_tools import free_port, start_broker

    port = free_port()
    proc = start_broker(port)
    yield proc, f"127.0.0.1:{port}"
    proc.kill()
    proc.wait()


def timed_run(cmd: list[str], state) -> float:
    """Run a pipeline to the end once; its duration calibrates when the kill tests strike."""
    t0 = time.monotonic()
    subprocess.run([*cmd, "--state-dir", str(state)], check=True, timeout=300, capture_output=True)
    return time.monotonic() - t0


def run_with_random_kills(cmd: list[str], state, rng: random.Random, full: float, attempts: int = 40) -> int:
    """Start the pipeline, SIGKILL it after a random 15-75% of an uninterrupted run's duration (growing
    by a fifth per kill), restart, repeat until a run exits 0. Returns how many times it was killed."""
    kills = 0
    for _ in range(attempts):
        p = subprocess.Popen([*cmd, "--state-dir", str(state)], stderr=subprocess.PIPE)
        try:
            p.wait(timeout=rng.uniform(0.15, 0.75) * full)
        except subprocess.TimeoutExpired:
            os.kill(p.pid, signal.SIGKILL)
            p.wait()
            kills += 1
            full *= 1.2  # strike later each time, so a restart that has start-up plus a tail to do gets through
            continue
        assert p.returncode == 0, p.stderr.read().decode()[-2000:]
        if kills == 0:  # done before the first kill (the machine got faster): start over, strike sooner
            shutil.rmtree(state)
            full /= 2
            continue
        return kills
    raise AssertionError("pipeline never finished")
