"""Same input, same views: whatever the batch size, checkpoint interval or SIGKILLs, every window kind gives
identical views and late series, and each equals DuckDB over the events that are on time under the
per-event rule (an event is late when its window, plus allowed lateness, ended at or before the
watermark formed by the events read before it: max event time so far minus the delay)."""

from __future__ import annotations

import json
import random
from datetime import datetime, timedelta

import duckdb
import numpy as np
import pyarrow as pa
import pytest

from pondstream.engine import Engine
from pondstream.operators.watermark import Watermark

from conftest import PYTHON, START, canon, run_with_random_kills, timed_run, write_jsonl

DELAY_S = 5
VIEWS = """
CREATE MATERIALIZED VIEW tumble AS
SELECT TUMBLE_START(event_time, INTERVAL '10' MINUTE) AS w, customer_id, COUNT(*) AS n, SUM(amount) AS total
FROM orders WHERE amount > 0 GROUP BY TUMBLE(event_time, INTERVAL '10' MINUTE), customer_id;

CREATE MATERIALIZED VIEW hop AS
SELECT HOP_START(event_time, INTERVAL '5' MINUTE, INTERVAL '15' MINUTE) AS w, customer_id, COUNT(*) AS n
FROM orders GROUP BY HOP(event_time, INTERVAL '5' MINUTE, INTERVAL '15' MINUTE), customer_id;

CREATE MATERIALIZED VIEW cumulate AS
SELECT window_start, window_end, customer_id, COUNT(*) AS n, MAX(amount) AS top
FROM TABLE(CUMULATE(TABLE orders, DESCRIPTOR(event_time), INTERVAL '10' MINUTE, INTERVAL '30' MINUTE))
GROUP BY window_start, window_end, customer_id;

CREATE MATERIALIZED VIEW sessions AS
SELECT SESSION_START(event_time, INTERVAL '40' SECOND) AS s, SESSION_END(event_time, INTERVAL '40' SECOND) AS e,
       customer_id, COUNT(*) AS n, SUM(amount) AS total
FROM orders GROUP BY SESSION(event_time, INTERVAL '40' SECOND), customer_id;

CREATE MATERIALIZED VIEW running AS
SELECT customer_id, COUNT(*) AS n, SUM(amount) AS total FROM orders GROUP BY customer_id;

CREATE MATERIALIZED VIEW forgetful WITH (state_ttl = '1 minute') AS
SELECT customer_id, COUNT(*) AS n, SUM(amount) AS total FROM orders GROUP BY customer_id;

CREATE MATERIALIZED VIEW half_hourly AS
SELECT TUMBLE_START(w, INTERVAL '30' MINUTE) AS hh, customer_id, SUM(n) AS n
FROM tumble GROUP BY TUMBLE(w, INTERVAL '30' MINUTE), customer_id;

CREATE MATERIALIZED VIEW lenient WITH (allowed_lateness = '20 minutes') AS
SELECT TUMBLE_START(event_time, INTERVAL '10' MINUTE) AS w, customer_id, COUNT(*) AS n
FROM orders GROUP BY TUMBLE(event_time, INTERVAL '10' MINUTE), customer_id;

CREATE MATERIALIZED VIEW early AS
SELECT TUMBLE_START(event_time, INTERVAL '10' MINUTE) AS w, customer_id, COUNT(*) AS n
FROM orders GROUP BY TUMBLE(event_time, INTERVAL '10' MINUTE), customer_id EMIT EVERY INTERVAL '0.2' SECOND;

CREATE MATERIALIZED VIEW top_tumble AS
SELECT window_start, customer_id, order_id, amount, rn FROM (
  SELECT *, ROW_NUMBER() OVER (PARTITION BY window_start, window_end, customer_id ORDER BY amount DESC) AS rn
  FROM TUMBLE(TABLE orders, DESCRIPTOR(event_time), INTERVAL '10' MINUTE)) WHERE rn <= 2;

CREATE MATERIALIZED VIEW top_running AS
SELECT * FROM (SELECT order_id, customer_id, amount,
                      ROW_NUMBER() OVER (PARTITION BY customer_id ORDER BY amount DESC) AS rn
               FROM orders WHERE amount > 0) WHERE rn <= 3;
"""
QUERIES = {
    "tumble": "SELECT * FROM tumble",
    "hop": "SELECT * FROM hop",
    "cumulate": "SELECT * FROM cumulate",
    "sessions": "SELECT * FROM sessions",
    "running": "SELECT * FROM running",
    "forgetful": "SELECT * FROM forgetful",
    "half_hourly": "SELECT * FROM half_hourly",
    "lenient": "SELECT * FROM lenient",
    "early": "SELECT w, customer_id, n FROM early WHERE is_final",
    "early_all_final": "SELECT COUNT(*) AS n FROM early WHERE NOT is_final",
    "top_tumble": "SELECT * FROM top_tumble",
    "top_running": "SELECT * FROM top_running",
    **{f"{v}__late": f"SELECT order_id, _window_start, _watermark FROM {v}__late"
       for v in ("tumble", "hop", "cumulate", "sessions", "lenient", "early", "top_tumble")},
}

# DuckDB, independently: `wm` is each event's watermark (running max over file order, minus the delay).
ON_TIME = f"""WITH e AS (SELECT *, max(event_time) OVER (ORDER BY seq ROWS UNBOUNDED PRECEDING)
                              - INTERVAL {DELAY_S} SECOND AS wm FROM orders)"""
TUMBLE_BASE = "time_bucket(INTERVAL '10 minutes', event_time)"
DUCK = {
    "tumble": f"""{ON_TIME} SELECT {TUMBLE_BASE} AS w, customer_id, COUNT(*), SUM(amount) FROM e
        WHERE amount > 0 AND {TUMBLE_BASE} + INTERVAL '10 minutes' > wm GROUP BY 1, 2""",
    "hop": f"""{ON_TIME}, h AS (SELECT *, time_bucket(INTERVAL '5 minutes', event_time) - INTERVAL (k * 5) MINUTE AS w
        FROM e, range(3) t(k)) SELECT w, customer_id, COUNT(*) FROM h
        WHERE w + INTERVAL '15 minutes' > wm GROUP BY 1, 2""",
    "cumulate": f"""{ON_TIME}, c AS (SELECT *, time_bucket(INTERVAL '30 minutes', event_time) AS ws,
        time_bucket(INTERVAL '30 minutes', event_time) + INTERVAL (k * 10) MINUTE AS we FROM e, range(1, 4) t(k))
        SELECT ws, we, customer_id, COUNT(*), MAX(amount) FROM c WHERE we > event_time AND we > wm GROUP BY 1, 2, 3""",
    "sessions": f"""{ON_TIME}, o AS (SELECT * FROM e WHERE event_time + INTERVAL 40 SECOND > wm),
        g AS (SELECT *, CASE WHEN event_time - max(event_time) OVER (PARTITION BY customer_id ORDER BY event_time
              ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) < INTERVAL 40 SECOND THEN 0 ELSE 1 END AS new FROM o),
        s AS (SELECT *, sum(new) OVER (PARTITION BY customer_id ORDER BY event_time, seq) AS sid FROM g)
        SELECT min(event_time), max(event_time) + INTERVAL 40 SECOND, customer_id, COUNT(*), SUM(amount)
        FROM s GROUP BY customer_id, sid""",
    "running": "SELECT customer_id, COUNT(*), SUM(amount) FROM orders GROUP BY 1",
    "forgetful": f"""{ON_TIME}, p AS (SELECT *, max(event_time) OVER (PARTITION BY customer_id ORDER BY seq
            ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS prev FROM e),
        r AS (SELECT *, sum(CASE WHEN prev + INTERVAL 1 MINUTE <= wm THEN 1 ELSE 0 END)
            OVER (PARTITION BY customer_id ORDER BY seq) AS seg FROM p)
        SELECT customer_id, COUNT(*), SUM(amount) FROM r
        WHERE seg = (SELECT max(seg) FROM r r2 WHERE r2.customer_id = r.customer_id) GROUP BY 1""",
    "lenient": f"""{ON_TIME} SELECT {TUMBLE_BASE} AS w, customer_id, COUNT(*) FROM e
        WHERE {TUMBLE_BASE} + INTERVAL '30 minutes' > wm GROUP BY 1, 2""",
    "early": f"""{ON_TIME} SELECT {TUMBLE_BASE} AS w, customer_id, COUNT(*) FROM e
        WHERE {TUMBLE_BASE} + INTERVAL '10 minutes' > wm GROUP BY 1, 2""",
    "top_tumble": f"""{ON_TIME} SELECT w, customer_id, order_id, amount, rn FROM (SELECT *, {TUMBLE_BASE} AS w,
        row_number() OVER (PARTITION BY {TUMBLE_BASE}, customer_id ORDER BY amount DESC, order_id) AS rn FROM e
        WHERE {TUMBLE_BASE} + INTERVAL '10 minutes' > wm) WHERE rn <= 2""",
    "top_running": """SELECT order_id, customer_id, amount, rn FROM (SELECT *, row_number() OVER (PARTITION BY
        customer_id ORDER BY amount DESC, order_id) AS rn FROM orders WHERE amount > 0) WHERE rn <= 3""",
    "top_tumble__late": f"""{ON_TIME} SELECT order_id, {TUMBLE_BASE}, wm FROM e
        WHERE {TUMBLE_BASE} + INTERVAL '10 minutes' <= wm""",
    "tumble__late": f"""{ON_TIME} SELECT order_id, {TUMBLE_BASE}, wm FROM e
        WHERE amount > 0 AND {TUMBLE_BASE} + INTERVAL '10 minutes' <= wm""",
}
DUCK["half_hourly"] = f"""WITH t AS ({DUCK['tumble']}) SELECT time_bucket(INTERVAL '30 minutes', w), customer_id,
    SUM("count_star()") FROM t GROUP BY 1, 2"""


def make_events(n: int, seed: int) -> list[dict]:
    """Bursty orders (so sessions start and end), jittered beyond the watermark delay (so some are
    mildly late, and some extend a session that was already emitted), plus a few replayed hours late, one
    of them among the very first events."""
    rng = random.Random(seed)
    t, rows = 0.0, []
    for i in range(n):
        t += rng.expovariate(1 / 3.0) if rng.random() < 0.9 else rng.uniform(30, 120)
        ts = t - rng.uniform(0, 2 * DELAY_S) - (rng.uniform(0, 60) if rng.random() < 0.08 else 0)
        if rng.random() < 0.03 or i == 7:
            ts -= rng.uniform(600, 3 * 3600)
        rows.append({"order_id": i, "customer_id": f"c{rng.randrange(6)}", "amount": round(rng.uniform(-20, 200), 2),
                     "event_time": (START + timedelta(seconds=ts)).isoformat(sep=" ")})
    return rows


def pipeline(path, batch_bytes: int | None) -> str:
    extra = f", batch_bytes = '{batch_bytes}'" if batch_bytes else ""
    return f"""CREATE STREAM orders (order_id BIGINT, customer_id VARCHAR, amount DOUBLE, event_time TIMESTAMP,
    WATERMARK FOR event_time AS event_time - INTERVAL '{DELAY_S}' SECOND)
    WITH (connector = 'file', path = '{path}', format = 'jsonl'{extra});""" + VIEWS


def answers(state) -> dict[str, list]:
    with Engine(state) as e:
        return {k: canon(e.query(q)) for k, q in QUERIES.items()}


def run_in_process(tmp_path, name: str, src, batch_bytes: int | None, interval: float) -> dict[str, list]:
    with Engine(tmp_path / name) as e:
        e.execute(pipeline(src, batch_bytes))
        e.run(checkpoint_interval=interval)
    return answers(tmp_path / name)


def duck_answers(rows: list[dict]) -> dict[str, list]:
    con = duckdb.connect()
    src = pa.Table.from_pylist(rows)
    con.register("raw", src)
    con.sql("CREATE TABLE orders AS SELECT row_number() OVER () AS seq, order_id::BIGINT AS order_id, "
            "customer_id, amount::DOUBLE AS amount, event_time::TIMESTAMP AS event_time FROM raw")
    return {k: canon(con.sql(q).to_arrow_table()) for k, q in DUCK.items()}


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("determinism")
    rows = make_events(1500, seed=7)
    src = write_jsonl(tmp / "in" / "orders.jsonl", rows)
    reference = run_in_process(tmp, "one_batch", src, None, 1.0)
    return tmp, rows, src, reference


def test_views_equal_duckdb_over_on_time_events(case):
    _, rows, _, got = case
    want = duck_answers(rows)
    for name, rows_want in want.items():
        assert got[name] == rows_want, name
    late = got["tumble__late"]
    assert len(late) > 20  # the rule has work to do, in the very first batch too (event 7 is hours late)
    assert any(r[0] == 7 for r in got["hop__late"])
    assert got["early_all_final"] == [(0,)]
    assert len(got["sessions"]) > 100
    assert got["forgetful"] != got["running"]  # some keys were idle past the TTL and started again


@pytest.mark.parametrize("batch_bytes,interval", [(300, 1.0), (3000, 0.0), (40_000, 0.0)])
def test_batch_size_and_checkpoint_interval_do_not_change_results(case, batch_bytes, interval):
    tmp, _, src, reference = case
    got = run_in_process(tmp, f"b{batch_bytes}_i{interval}", src, batch_bytes, interval)
    for name in QUERIES:
        assert got[name] == reference[name], name
    if batch_bytes == 3000:  # emitted sessions were extended by on-time events and written again
        series = tmp / f"b{batch_bytes}_i{interval}" / "series" / "sessions"
        log, base = (series / "_log.jsonl").read_text(), json.loads((series / "_base.json").read_text())
        assert '"supersedes": true' in log or base["history"]  # a replaced row, in the tail or consolidated


def test_random_sigkills_do_not_change_results(case):
    tmp, _, src, reference = case
    sql = tmp / "pipeline.sql"
    sql.write_text(pipeline(src, 2000))
    cmd = [PYTHON, "-m", "pondstream.engine.cli", "run", str(sql), "--quiet", "--checkpoint-interval", "0.05"]
    full = timed_run(cmd, tmp / "kill_ref")
    rng = random.Random(99)
    kills = 0
    for trial in range(2):
        kills += run_with_random_kills(cmd, tmp / f"kill{trial}", rng, full)
        got = answers(tmp / f"kill{trial}")
        for name in QUERIES:
            assert got[name] == reference[name], (trial, name)
    assert kills >= 2


def test_per_event_watermarks_do_not_depend_on_batch_cuts_or_partition_interleaving():
    """The watermark an event is judged by depends only on the events before it in its partition."""
    rng = np.random.default_rng(3)
    for _ in range(50):
        n = int(rng.integers(1, 300))
        ts = rng.integers(0, 10_000, n)
        part = rng.integers(0, 3, n)
        want = np.empty(n, np.int64)
        for p in range(3):
            idx = np.flatnonzero(part == p)
            want[idx] = np.maximum.accumulate(ts[idx]) - 10 if len(idx) else []
        for _cuts in range(3):
            wm = Watermark(10)
            cuts = sorted(rng.choice(np.arange(1, n), size=min(n - 1, int(rng.integers(0, 6))), replace=False)) \
                if n > 1 else []
            got = np.concatenate([wm.per_event(ts[a:b], part[a:b], ["0", "1", "2"])
                                  for a, b in zip([0, *cuts], [*cuts, n], strict=True)])
            assert (got == want).all()  # each partition's own running watermark, however the batches fell
            delivered = [int(ts[part == p].max()) - 10 for p in range(3) if (part == p).any()]
            assert wm.value == (min(delivered) if len(delivered) == 3 else None)


def test_watermark_epoch_of_first_event_counts_events_before_it():
    """A batch's first events set the watermark for the rest of it: nothing is on time just because it
    arrived in the first batch."""
    wm = Watermark(5_000_000)
    base = int(datetime(2026, 1, 1).timestamp() * 1e6)
    ts = np.array([base + 3 * 3600 * 10**6, base, base + 3 * 3600 * 10**6 + 1])
    got = wm.per_event(ts)
    assert got[1] == ts[0] - 5_000_000


def test_kafka_partitions_judged_by_their_own_watermark_whatever_the_interleaving(broker, tmp_path):
    """Events spread over 3 partitions by key (as a keyed topic is), consumed in batches of 7 or 100,000
    (so partitions interleave differently): the same views and late series, equal to DuckDB with a
    running max per partition."""
    from kafka_helpers import produce_rows

    _, bootstrap = broker
    rows = make_events(900, seed=11)
    parts = produce_rows(bootstrap, "determinism", rows, partitions=3,
                         parts=[int(r["customer_id"][1:]) % 3 for r in rows])
    got = []
    for batch in (7, 100_000):
        state = tmp_path / f"k{batch}"
        with Engine(state) as e:
            e.execute(f"""CREATE STREAM orders (order_id BIGINT, customer_id VARCHAR, amount DOUBLE,
                event_time TIMESTAMP, WATERMARK FOR event_time AS event_time - INTERVAL '{DELAY_S}' SECOND)
                WITH (connector = 'kafka', topic = 'determinism', bootstrap_servers = '{bootstrap}',
                      scan_bounded = 'latest', batch_size = '{batch}');""" + VIEWS)
            e.run(checkpoint_interval=0.0 if batch == 7 else 1.0)
        got.append(answers(state))
    assert got[0] == got[1]
    for r, p in zip(rows, parts, strict=True):
        r["part"] = p
    con = duckdb.connect()
    con.register("raw", pa.Table.from_pylist(rows))
    con.sql("CREATE TABLE orders AS SELECT row_number() OVER () AS seq, part, order_id::BIGINT AS order_id, "
            "customer_id, amount::DOUBLE AS amount, event_time::TIMESTAMP AS event_time FROM raw")
    per_partition = ON_TIME.replace("OVER (ORDER BY seq", "OVER (PARTITION BY part ORDER BY seq")
    for name in ("tumble", "hop", "sessions", "lenient", "forgetful", "tumble__late"):
        want = canon(con.sql(DUCK[name].replace(ON_TIME, per_partition)).to_arrow_table())
        assert got[0][name] == want, name
    assert len(got[0]["tumble__late"]) > 10
