"""Fuzz the SQL front end with token-level mutations of the README's statements.

Every mutated script must be accepted, or refused with SqlError / EngineError: no other exception, no
hang, no crash of the process. Whatever was accepted must leave a catalog that loads again, whose stored
statements parse and are recognized as unchanged when executed again. A handful of accepted generator
pipelines are also run. The cases run in worker subprocesses (this file, run as a script), so a crash or
a hang is reported with the case that caused it instead of killing the test run.
"""

from __future__ import annotations

import json
import os
import random
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from sqlglot.tokens import TokenType

from pondstream.engine import Engine, EngineError
from pondstream.engine.catalog import Catalog
from pondstream.sql import CreateStream, CreateView, SqlError, parse_script
from pondstream.sql.dialect import StreamSQL
from pondstream.sql.planner import plan_view

CASES = int(os.environ.get("PONDSTREAM_FUZZ_CASES", "4000"))
SEED = int(os.environ.get("PONDSTREAM_FUZZ_SEED", "7"))
CASE_SECONDS = 10  # a case taking longer counts as a hang
RUNS = 5  # accepted generator pipelines that are also run

FILE_STREAM = """CREATE STREAM orders (
    order_id BIGINT, customer_id VARCHAR, amount DOUBLE, event_time TIMESTAMP,
    WATERMARK FOR event_time AS event_time - INTERVAL '5' SECOND
) WITH (connector = 'file', path = 'orders.jsonl', format = 'jsonl', batch_bytes = '4096');
"""
GEN_STREAM = """CREATE STREAM orders (order_id BIGINT, customer_id VARCHAR, amount DOUBLE, event_time TIMESTAMP)
WITH (connector = 'generator', rows = '1000', keys = '5', seed = '7', step = '10 seconds',
      out_of_orderness = '3 seconds', timestamp_field = 'event_time', watermark_delay = '5 seconds');
"""
KAFKA_STREAM = """CREATE STREAM orders (order_id BIGINT, customer_id VARCHAR, amount DOUBLE, event_time TIMESTAMP,
    WATERMARK FOR event_time AS event_time - INTERVAL '5' SECOND)
WITH (connector = 'kafka', topic = 'orders', bootstrap_servers = 'localhost:9092', format = 'json',
      scan_startup = 'earliest', idle_timeout = '30 seconds', 'properties.security.protocol' = 'PLAINTEXT');
"""
VIEWS = [
    """CREATE MATERIALIZED VIEW hourly_sales AS
SELECT TUMBLE_START(event_time, INTERVAL '1' HOUR) AS hour,
       customer_id, COUNT(*) AS orders, SUM(amount) AS total, AVG(amount) AS avg_amount
FROM orders WHERE amount > 0
GROUP BY TUMBLE(event_time, INTERVAL '1' HOUR), customer_id;
""",
    """CREATE MATERIALIZED VIEW six_hourly AS
SELECT TUMBLE_START(hour, INTERVAL '6' HOUR) AS period, customer_id, SUM(orders) AS orders
FROM hourly_sales GROUP BY TUMBLE(hour, INTERVAL '6' HOUR), customer_id;
""",
    """CREATE MATERIALIZED VIEW customer_totals WITH (state_ttl = '7 days') AS
SELECT customer_id, COUNT(*) AS orders, SUM(amount) AS total FROM orders GROUP BY customer_id;
""",
    """CREATE MATERIALIZED VIEW late_sales WITH (allowed_lateness = '10 minutes') AS
SELECT TUMBLE_START(event_time, INTERVAL '1' HOUR) AS hour, COUNT(*) AS n FROM orders
GROUP BY TUMBLE(event_time, INTERVAL '1' HOUR)
EMIT EVERY INTERVAL '10' SECOND;
""",
    """CREATE MATERIALIZED VIEW hopping AS
SELECT HOP_START(event_time, INTERVAL '10' MINUTE, INTERVAL '1' HOUR) AS ws, customer_id, MAX(amount) AS m
FROM orders GROUP BY HOP(event_time, INTERVAL '10' MINUTE, INTERVAL '1' HOUR), customer_id
HAVING COUNT(*) > 1;
""",
    """CREATE MATERIALIZED VIEW tvf AS
SELECT window_start, window_end, customer_id, STDDEV(amount) AS sd, COUNT(DISTINCT order_id) AS d
FROM TABLE(TUMBLE(TABLE orders, DESCRIPTOR(event_time), INTERVAL '10' MINUTES))
GROUP BY window_start, window_end, customer_id;
""",
    """CREATE MATERIALIZED VIEW sessions AS
SELECT window_start, window_end, customer_id, COUNT(*) AS n
FROM TABLE(SESSION(TABLE orders PARTITION BY customer_id, DESCRIPTOR(event_time), INTERVAL '5' MINUTE))
GROUP BY window_start, window_end, customer_id;
""",
    """CREATE MATERIALIZED VIEW daily AS
SELECT window_start, window_end, SUM(amount) AS total
FROM TABLE(CUMULATE(TABLE orders, DESCRIPTOR(event_time), INTERVAL '1' HOUR, INTERVAL '1' DAY))
GROUP BY window_start, window_end EMIT ON WINDOW CLOSE;
""",
    """CREATE MATERIALIZED VIEW published WITH (sink_topic = 'hourly', sink_bootstrap_servers = 'localhost:9092',
    'sink_properties.acks' = 'all') AS
SELECT TUMBLE_START(event_time, INTERVAL '1' HOUR) AS hour, UPPER(customer_id) AS c, SUM(amount) / COUNT(*) AS a
FROM orders GROUP BY TUMBLE(event_time, INTERVAL '1' HOUR), UPPER(customer_id);
""",
]
UDF = Path(__file__).parent.parent / "examples" / "udf" / "functions.py"
NEWER = [  # joins, stages, Top-N, FILTER, functions
    """CREATE MATERIALIZED VIEW top3 AS SELECT * FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY customer_id
ORDER BY amount DESC) AS rn FROM orders WHERE amount > 0) WHERE rn <= 3;
""",
    """CREATE MATERIALIZED VIEW best AS SELECT window_start, customer_id, rk FROM (SELECT *, RANK() OVER (PARTITION BY
window_start, window_end ORDER BY amount DESC) AS rk FROM TUMBLE(TABLE orders, DESCRIPTOR(event_time), INTERVAL '1' MINUTE))
WHERE rk <= 1;
""",
    """CREATE MATERIALIZED VIEW staged AS WITH big AS (SELECT order_id, customer_id, event_time FROM orders WHERE amount > 10)
SELECT window_start, COUNT(*) AS n, COUNT(*) FILTER (WHERE order_id % 2 = 0) AS even
FROM TUMBLE(TABLE big, DESCRIPTOR(event_time), INTERVAL '1' MINUTE) GROUP BY window_start, window_end;
""",
    """CREATE MATERIALIZED VIEW asof AS SELECT o.order_id, c.amount FROM orders o
LEFT JOIN orders FOR SYSTEM_TIME AS OF o.event_time AS c ON o.customer_id = c.customer_id;
""",
    """CREATE MATERIALIZED VIEW three AS SELECT TUMBLE_START(a.event_time, INTERVAL '1' MINUTE) AS m, COUNT(*) AS n
FROM orders a JOIN orders b ON a.order_id = b.order_id AND b.event_time BETWEEN a.event_time AND a.event_time + INTERVAL '1' MINUTE
JOIN orders d ON d.order_id = a.order_id AND d.event_time BETWEEN a.event_time AND a.event_time + INTERVAL '1' MINUTE
GROUP BY TUMBLE(a.event_time, INTERVAL '1' MINUTE);
""",
    f"""CREATE FUNCTION discount(amount DOUBLE, customer VARCHAR) RETURNS DOUBLE LANGUAGE PYTHON AS '{UDF}:discount';
CREATE MATERIALIZED VIEW net AS SELECT DATE_FORMAT(event_time, 'yyyy-MM-dd') AS day,
SUM(discount(amount, customer_id)) AS net FROM orders GROUP BY DATE_FORMAT(event_time, 'yyyy-MM-dd');
SHOW FUNCTIONS;
""",
]
OTHER = "DESCRIBE orders; SHOW STREAMS; SHOW MATERIALIZED VIEWS; SELECT 1 AS x;\n"
DROPS = "DESCRIBE hourly_sales; DROP MATERIALIZED VIEW hourly_sales; DROP STREAM IF EXISTS orders;\n"
TYPED = """CREATE STREAM typed (id BIGINT, price DECIMAL(10, 2), qty INT, note VARCHAR(20), ok BOOLEAN, ts TIMESTAMP,
    WATERMARK FOR ts AS ts) WITH (connector = 'file', path = 'orders.jsonl', format = 'jsonl');
CREATE MATERIALIZED VIEW per_minute AS
SELECT TUMBLE_START(ts, INTERVAL '1' MINUTE) AS m, SUM(price * qty) AS v, BOOL_AND(ok) AS all_ok,
       FIRST_VALUE(note) AS first_note, VAR_POP(CAST(qty AS DOUBLE)) AS var
FROM typed WHERE qty BETWEEN 1 AND 10 AND note LIKE 'a%' GROUP BY TUMBLE(ts, INTERVAL '1' MINUTE);
"""

NUMBERS = ["0", "-1", "1", "99999999999999999999999999", "1e308", "2147483648", "9223372036854775808", "0.5"]
STRINGS = ["'0 seconds'", "'-5 seconds'", "'0'", "'-1'", "''", "'1000000000 days'", "'1e400 hours'",
           "'5 fortnights'", "'1 month'", "'x'", "'99999999999999999999999999999 seconds'", "'1 ms'",
           "'csv'", "'parquet'", "'avro'", "'latest'", "'timestamp'", "'3000-01-01'", "'1800-01-01'",
           "'2026-01-01'", "'9999999'", "'../../etc/passwd'", "'\\x00'", "'" + "9" * 5000 + "'"]
IDENTS = ['"Orders"', "ORDERS", "Orders", '"a b"', '"../x"', "x__errors", "_x", "__late", '"é"', "é",
          '"' + "a" * 100 + '"', "x.y", '"tab\t"', "hourly_sales", "orders", "emit", "window_start",
          "_window_start", "_version", "batch_byte", "rowz", "connecter", "time_stamp_field", "DESCRIPTOR",
          "TABLE", "SELECT", "NULL", "1abc", '""', "event_time"]
INSERTS = ["(", ")", ",", ";", "EMIT EVERY", "EMIT ON WINDOW CLOSE", "DESCRIPTOR()", "TABLE", "NOT", "-",
           "INTERVAL", "INTERVAL '0' SECOND", "INTERVAL '-1' HOUR", "INTERVAL '100000' DAY", "WITH (x = 1)",
           "AS", "GROUP BY", "*", "'", '"', "--", "/*", "DROP STREAM orders", "DROP MATERIALIZED VIEW hourly_sales",
           "CAST(", "CASE WHEN", "END", "AND", "OR", "[", "]", "::", "$1", "?", "\\", "\x00", "é", "\t\n"]
OPTIONS = ["rows = '-1'", "batch_bytes = '0'", "batch_bytes = 0", "keys = '0'", "seed = '-3'", "rate = 'inf'",
           "step = '0 seconds'", "start = 'yesterday'", "batch_size = '0'", "watermark_delay = '-5 seconds'",
           "idle_timeout = '0 seconds'", "allowed_lateness = '-1 minute'", "state_ttl = '0 days'",
           "event_time_min = '2300-01-01'", "event_time_max = '1800-01-01'", "format = 'xml'",
           "scan_startup = 'timestamp'", "scan_bounded = 'forever'", "rowz = '10'", "connector = 'view'",
           "connector = 'file'", "connector = 'kafka'", "properties.x = 'y'", "sink_properties. = 'x'",
           "emit_every = '0 seconds'", "emit_every_us = '-1'", "path = ''", "rows = '99999999999999'"]


def bases() -> list[str]:
    """Scripts from the README: a stream and some views, as whole pipelines."""
    out = []
    for stream in (FILE_STREAM, GEN_STREAM):
        out.append(stream + VIEWS[0] + VIEWS[1])
        out += [stream + v for v in VIEWS[2:]]
        out.append(stream + VIEWS[0] + VIEWS[3] + VIEWS[7] + OTHER)  # (each statement re-reads the catalog)
    out += [KAFKA_STREAM + v for v in (VIEWS[0], VIEWS[2], VIEWS[3])]
    out += [TYPED, FILE_STREAM + VIEWS[0] + DROPS]
    out += [GEN_STREAM + v for v in NEWER]
    return out


def _pieces(sql: str) -> list[str]:
    """The script as its tokens' source text (comments dropped), so mutations work on whole tokens."""
    tokens = StreamSQL().tokenize(sql)
    return [("STRING" if t.token_type == TokenType.STRING else
             "NUMBER" if t.token_type == TokenType.NUMBER else
             "IDENT" if t.token_type in (TokenType.VAR, TokenType.IDENTIFIER) else "OTHER", sql[t.start:t.end + 1])
            for t in tokens]


OPS = {"delete": 8, "duplicate": 4, "swap": 4, "value": 30, "duration": 20, "insert": 8, "nest": 5, "long": 6,
       "option": 15}


def _mutate(rng: random.Random, pieces: list[tuple[str, str]]) -> None:
    """One random token-level mutation, in place."""
    i = rng.randrange(len(pieces))
    kind, text = pieces[i]
    op = rng.choices(list(OPS), weights=list(OPS.values()))[0]
    if op == "duration":  # a string that reads as a duration: the most common place for bad values
        strings = [j for j, (k, _) in enumerate(pieces) if k == "STRING"]
        if strings:
            i, kind, text = (j := rng.choice(strings)), "STRING", pieces[j][1]
            n = rng.choice(["0", "-1", "1", "7", "0.0000001", "1e3", "36500", "36501", "10" * 12, "-0"])
            unit = rng.choice(["seconds", "second", "ms", "us", "hours", "days", "week", "month", "year", "", "x"])
            pieces[i] = (kind, f"'{n} {unit}'" if rng.random() < 0.8 else f"'{n}' {unit or 'SECOND'}")
        return
    if op == "delete":
        del pieces[i]
    elif op == "duplicate":
        pieces.insert(i, pieces[i])
    elif op == "swap" and i + 1 < len(pieces):
        pieces[i], pieces[i + 1] = pieces[i + 1], pieces[i]
    elif op == "value":
        pool = {"NUMBER": NUMBERS, "STRING": STRINGS, "IDENT": IDENTS}.get(kind, INSERTS)
        pieces[i] = (kind, rng.choice(pool))
    elif op == "insert":
        pieces.insert(i, ("OTHER", rng.choice(INSERTS)))
    elif op == "nest":
        n = rng.choice([3, 150, 199, 250, 5000])
        pieces[i] = (kind, "(" * n + text + ")" * n)
    elif op == "long":
        n = rng.choice([10, 150, 250, 3000, 10000])
        pieces[i] = (kind, " + ".join([text] * n) if kind != "STRING" else "NOT " * n + text)
    elif op == "option":
        at = next((j for j, (_, t) in enumerate(pieces) if t.upper() == "WITH"), None)
        if at is not None and at + 1 < len(pieces):
            pieces.insert(at + 2, ("OTHER", rng.choice(OPTIONS) + ","))


def case(i: int) -> str:
    """The i-th generated script (deterministic for SEED)."""
    rng = random.Random(SEED * 1_000_003 + i)
    all_bases = bases()
    pieces = _pieces(all_bases[i % len(all_bases)])
    for _ in range(rng.choice([1, 1, 1, 1, 2, 3])):
        if pieces:
            _mutate(rng, pieces)
    return " ".join(t for _, t in pieces)


# -- one case ------------------------------------------------------------------------------------------
class Timeout(Exception):
    pass


def _on_alarm(*_) -> None:
    raise Timeout()


def run_case(sql: str, root: Path, run: bool = False) -> tuple[str, str]:
    """(outcome, detail): 'accepted', 'refused' or 'other' (a bug: any other exception)."""
    state = root / "state"
    try:
        if "'kafka'" in sql:  # no broker here: check parsing, planning and the stored text only
            return _parse_only(sql)
        with Engine(state) as engine:  # one Engine at a time: an open one holds the state dir's lock
            try:
                engine.execute(sql, base_dir=str(root))
                outcome = ("accepted", "")
            except (SqlError, EngineError) as e:
                outcome = ("refused", str(e).splitlines()[0][:200])
            if run and outcome[0] == "accepted":
                _run(engine)
        _reload(state, root)
        return outcome
    except Timeout:
        return "other", "timeout"
    except Exception as e:  # noqa: BLE001 - the point: nothing else may escape
        return "other", f"{type(e).__name__}: {str(e)[:300]}"
    finally:
        shutil.rmtree(state, ignore_errors=True)


def _reload(state: Path, root: Path) -> None:
    """The catalog loads again, and each stored statement, executed again, is recognized as unchanged."""
    cat = Catalog.load(state)
    stored = [e.stmt.sql for e in cat.functions.values()] + [e.stmt.sql for e in cat.streams.values()] + \
        [e.stmt.sql for e in cat.views.values() if e.stage_of is None]  # stages are derived, not stored
    with Engine(state) as again:
        for text in stored:
            (result,) = again.execute(text, base_dir=str(root))
            assert "unchanged" in result, (text, result)


def _small_generator(sql: str) -> bool:
    """A pipeline that runs quickly and needs no broker: one generator of 1000 rows, no Kafka sink."""
    return "'generator'" in sql and "rows = '1000'" in sql and not any(
        w in sql for w in ("'kafka'", "'file'", "sink_topic", "SHOW"))


def _run(engine: Engine) -> None:
    """Run an accepted pipeline of a bounded generator to its end: every view gets its windows."""
    if engine.catalog.views:
        progress = engine.run(checkpoint_interval=0.2)
        assert progress.events == 1000, progress


def _parse_only(sql: str) -> tuple[str, str]:
    try:
        stmts = parse_script(sql)
        streams = {s.name: s for s in stmts if isinstance(s, CreateStream)}
        for v in (s for s in stmts if isinstance(s, CreateView)):
            plan_view(v, streams)
    except SqlError as e:
        return "refused", str(e).splitlines()[0][:200]
    for s in stmts:
        (again,) = parse_script(s.sql)
        assert type(again) is type(s) and again.sql == s.sql and again.same_definition(s), s.sql
    return "accepted", ""


def worker(cases: list[int]) -> None:
    """Run `cases`; print one JSON line per case (and a 'start' line before each)."""
    root = Path(tempfile.mkdtemp(prefix="pondstream-fuzz-"))
    (root / "orders.jsonl").write_text("".join(
        json.dumps({"order_id": i, "customer_id": f"c{i % 3}", "amount": i * 1.5,
                    "event_time": f"2026-01-01 00:{i:02d}:00"}) + "\n" for i in range(20)))
    signal.signal(signal.SIGALRM, _on_alarm)
    try:
        for i in cases:
            print(json.dumps({"start": i}), flush=True)
            signal.setitimer(signal.ITIMER_REAL, CASE_SECONDS)
            outcome, detail = run_case(case(i), root)
            signal.setitimer(signal.ITIMER_REAL, 0)
            print(json.dumps({"case": i, "outcome": outcome, "detail": detail}), flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)


# -- the test ------------------------------------------------------------------------------------------
def _drive(cases: list[int], results: dict[int, tuple[str, str]]) -> None:
    """Run `cases` in one worker process, restarting it after the case it crashed or hung on."""
    todo = list(cases)
    while todo:
        proc = subprocess.Popen([sys.executable, __file__, "worker", ",".join(map(str, todo))],
                                stdout=subprocess.PIPE, text=True)
        current = None
        while True:
            ready, _, _ = select.select([proc.stdout], [], [], CASE_SECONDS * 3)
            line = proc.stdout.readline() if ready else None
            if not line:  # the worker died or stopped answering
                proc.kill()
                proc.wait()
                if current is not None:
                    results[current] = ("other", "crashed" if ready else "hung")
                break
            msg = json.loads(line)
            if "start" in msg:
                current = msg["start"]
            else:
                results[msg["case"]] = (msg["outcome"], msg["detail"])
                current = None
        todo = [i for i in todo if i not in results]


def test_mutated_readme_statements_are_accepted_or_refused_cleanly():
    results: dict[int, tuple[str, str]] = {}
    start = time.monotonic()
    parts = [list(range(k, CASES, 2)) for k in range(2)]  # one worker per core
    threads = [threading.Thread(target=_drive, args=(p, results)) for p in parts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    counts = {k: sum(1 for o, _ in results.values() if o == k) for k in ("accepted", "refused", "other")}
    print(f"\nfuzz: {len(results)} cases in {time.monotonic() - start:.0f}s: {counts}")
    bad = {i: d for i, (o, d) in results.items() if o == "other"}
    shown = "\n".join(f"case {i}: {d}\n  {case(i)[:400]}" for i, d in sorted(bad.items())[:10])
    assert not bad, f"{len(bad)} cases raised something other than SqlError/EngineError:\n{shown}"
    assert len(results) == CASES
    assert counts["accepted"] > CASES // 30 and counts["refused"] > CASES // 2  # the mutations do both


def test_some_accepted_mutations_also_run(tmp_path):
    """Accepted is not just parsed: a few accepted generator pipelines (1000 rows) run to their end."""
    (tmp_path / "orders.jsonl").write_text("")
    ran = 0
    for i in range(CASES):
        sql = case(i)
        if ran == RUNS:
            break
        if _small_generator(sql) and run_case(sql, tmp_path)[0] == "accepted":
            assert run_case(sql, tmp_path, run=True) == ("accepted", ""), sql
            ran += 1
    assert ran == RUNS


if __name__ == "__main__" and sys.argv[1:2] == ["worker"]:
    worker([int(x) for x in sys.argv[2].split(",")])
