"""`pondstream serve` end to end with real clients (psql, psycopg, SQLAlchemy/pandas) over state dirs a
pipeline wrote (or is writing): types, parameters, transactions, SQLSTATE errors, catalog
introspection, streaming, faults, passwords and `run --serve`."""

from __future__ import annotations

import os
import shutil
import socket
import struct
import subprocess
import time
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest

from pondstream.engine import Engine
from pondstream.engine.serve import Server, free_port

from conftest import HOURLY, PYTHON, make_orders, orders_stream, write_jsonl

PSQL = shutil.which("psql")
needs_psql = pytest.mark.skipif(PSQL is None, reason="psql not installed (.ci/run installs postgresql-client)")


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([PYTHON, "-m", "pondstream.engine.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def state(tmp_path_factory) -> Path:
    """A state dir `pondstream run` wrote: hourly_sales over 3,000 orders with DECIMAL amounts."""
    root = tmp_path_factory.mktemp("serve")
    data = write_jsonl(root / "orders.jsonl", make_orders(3000, keys=20))
    sql = root / "p.sql"
    sql.write_text(orders_stream(data, amount_type="DECIMAL(10,2)") + HOURLY)
    p = run_cli("run", str(sql), "--state-dir", str(root / "state"))
    assert p.returncode == 0, p.stderr
    return root / "state"


@pytest.fixture(scope="module")
def server(state):
    with Server(state, port=free_port()).start() as s:
        yield s


def dsn(s: Server, **kw) -> str:
    extra = " ".join(f"{k}={v}" for k, v in kw.items())
    return f"host={s.host} port={s.port} user=tester dbname=pondstream connect_timeout=10 {extra}"


def psql(s: Server, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([PSQL, "-h", s.host, "-p", str(s.port), "-U", "tester", "-d", "pondstream",
                           "-X", "-v", "VERBOSITY=verbose", *args], capture_output=True, text=True, timeout=30,
                          env={**os.environ, **(env or {})})


@needs_psql
def test_psql_select_dt_and_d(server, state):
    expected = Engine(state).query("SELECT COUNT(*) AS n FROM hourly_sales").column("n")[0].as_py()
    p = psql(server, "-At", "-c", "SELECT COUNT(*) AS n FROM hourly_sales")
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == str(expected) and expected > 10
    dt = psql(server, "-c", r"\dt")
    assert dt.returncode == 0, dt.stderr
    assert "hourly_sales " in dt.stdout and "orders__errors" in dt.stdout and "| table |" in dt.stdout
    d = psql(server, "-c", r"\d hourly_sales")
    assert d.returncode == 0, d.stderr
    lines = {ln.split("|")[0].strip(): ln.split("|")[1].strip() for ln in d.stdout.splitlines() if ln.count("|") >= 4}
    assert lines["hour"] == "timestamp without time zone" and lines["customer_id"] == "text"
    assert lines["orders"] == "bigint" and lines["total"].startswith("numeric")
    missing = psql(server, "-c", "SELECT * FROM nowhere")
    assert missing.returncode == 1 and "42P01" in missing.stderr and "HINT:  queryable tables: hourly_sales" in missing.stderr


def test_psycopg_types_params_and_point_lookup(server, state):
    eng = Engine(state)
    lookup = "SELECT hour, customer_id, orders, total FROM hourly_sales WHERE customer_id = 'c3' ORDER BY hour"
    assert eng.explain_route(lookup).startswith("point lookup")
    want = [tuple(r.values()) for r in eng.query(lookup).to_pylist()]
    with psycopg.connect(dsn(server)) as conn:  # not autocommit: psycopg sends BEGIN first
        cur = conn.cursor()
        cur.execute("SELECT hour, customer_id, orders, total FROM hourly_sales WHERE customer_id = %s ORDER BY hour",
                    ("c3",))
        got = cur.fetchall()
        assert got == want and len(got) > 1
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
        assert isinstance(got[0][3], Decimal) and got[0][0].year == 2026
        cur.execute("SELECT %s::BIGINT + 1 AS i, %s AS s, %s AS b, %s AS n, %s AS f, CAST(%s AS DECIMAL(5,2)) AS d, "
                    "TIMESTAMP '2026-01-01 10:00:00' AS ts, 1 = 2 AS f2", (41, "it's \\ 'x'", True, None, -1.5,
                                                                        Decimal("2.50")))
        i, s, b, n, f, d, ts, f2 = cur.fetchone()
        assert (i, s, b, n, f, d, f2) == (42, "it's \\ 'x'", True, None, -1.5, Decimal("2.50"), False)
        assert ts.isoformat() == "2026-01-01T10:00:00"
        # a value is a value: quotes in it do not widen the WHERE
        cur.execute("SELECT COUNT(*) FROM hourly_sales WHERE customer_id = %s", ("c3' OR '1'='1",))
        assert cur.fetchone() == (0,)
        conn.commit()
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        for _ in range(7):  # past psycopg's prepare threshold (5): named statements, Describe S
            cur.execute("SELECT orders FROM hourly_sales WHERE customer_id = %s ORDER BY hour", ("c3",))
            assert [r[0] for r in cur.fetchall()] == [r[2] for r in want]
        version = eng.query("SELECT COUNT(*) AS n FROM hourly_sales VERSION AS OF 1").column("n")[0].as_py()
        cur.execute("SELECT COUNT(*) FROM hourly_sales VERSION AS OF 1")
        assert cur.fetchone() == (version,)
        # A prepared statement is parsed once and its tree shared by every execution (params.Statements):
        # each gets its own values, on the lookup route, the DataFusion route over the rows found (a
        # renamed table, GROUP BY) and the scan route, again and again.
        for sql in ("SELECT orders FROM hourly_sales WHERE customer_id = %s ORDER BY hour",
                    "SELECT orders FROM HOURLY_SALES h WHERE h.customer_id = %s ORDER BY hour",
                    "SELECT customer_id, SUM(orders) AS o FROM hourly_sales WHERE customer_id = %s GROUP BY customer_id",
                    "SELECT SUM(orders) FROM hourly_sales WHERE customer_id = %s OR customer_id = 'nobody'"):
            for _ in range(8):
                for key in ("c3", "c4", "c3' OR '1'='1"):
                    cur.execute(sql, (key,))
                    lit = "'" + key.replace("'", "''") + "'"
                    assert cur.fetchall() == [tuple(r.values()) for r in
                                              eng.query(sql.replace("%s", lit)).to_pylist()], (sql, key)


def test_transactions_settings_and_read_only(server):
    with psycopg.connect(dsn(server)) as conn:
        cur = conn.cursor()
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            cur.execute("INSERT INTO hourly_sales VALUES (1)")
        with pytest.raises(psycopg.errors.InFailedSqlTransaction):  # as in PostgreSQL: until ROLLBACK
            cur.execute("SELECT 1")
        conn.rollback()
        cur.execute("SELECT 1")
        assert cur.fetchone() == (1,)
        conn.rollback()
        conn.autocommit = True
        shown = {}
        for name in ("server_version", "standard_conforming_strings", "TimeZone", "transaction_isolation"):
            cur.execute(f"SHOW {name}")
            shown[name] = cur.fetchone()[0]
        assert shown == {"server_version": "16.0", "standard_conforming_strings": "on", "TimeZone": "UTC",
                         "transaction_isolation": "read committed"}
        cur.execute("SET application_name = 'grafana'")
        assert cur.statusmessage == "SET"
        cur.execute("SHOW application_name")
        assert cur.fetchone() == ("grafana",)
        for stmt in ("DROP TABLE hourly_sales", "CREATE TABLE t (a INT)", "COPY hourly_sales TO '/tmp/x'"):
            with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
                cur.execute(stmt)
        cur.execute("SELECT version()")
        assert cur.fetchone()[0].startswith("PostgreSQL 16.0")


@pytest.mark.parametrize("sql, sqlstate, hint", [
    ("SELECT * FROM nowhere", "42P01", "queryable tables"),
    ("SELEC 1", "42601", None),
    ("SELECT nocolumn FROM hourly_sales", "42703", None),
    ("UPDATE hourly_sales SET orders = 0", "25006", "pondstream run"),
    ("SELECT 1/0", "XX000", None),
])
def test_errors_carry_sqlstate_and_the_connection_stays_usable(server, sql, sqlstate, hint):
    with psycopg.connect(dsn(server), autocommit=True) as conn:
        with pytest.raises(psycopg.Error) as err:
            conn.execute(sql)
        assert err.value.sqlstate == sqlstate, str(err.value)
        if hint:
            assert hint in (err.value.diag.message_hint or "")
        assert conn.execute("SELECT 2").fetchone() == (2,)


def test_sqlalchemy_and_pandas(server, state):
    pd = pytest.importorskip("pandas")
    sa = pytest.importorskip("sqlalchemy")
    engine = sa.create_engine(f"postgresql+psycopg://tester@{server.host}:{server.port}/pondstream")
    try:
        df = pd.read_sql("SELECT * FROM hourly_sales WHERE customer_id = %(c)s ORDER BY hour", engine,
                         params={"c": "c5"})
        want = Engine(state).query("SELECT * FROM hourly_sales WHERE customer_id = 'c5' ORDER BY hour")
        assert len(df) == want.num_rows > 0 and list(df.columns) == want.column_names
        assert str(df["hour"].dtype).startswith("datetime64")
        insp = sa.inspect(engine)
        assert "hourly_sales" in insp.get_table_names()
        assert [c["name"] for c in insp.get_columns("hourly_sales")] == want.column_names
    finally:
        engine.dispose()


def _raw_startup(s: Server) -> socket.socket:
    sock = socket.create_connection((s.host, s.port), timeout=10)
    body = struct.pack("!I", 196608) + b"user\x00t\x00database\x00d\x00\x00"
    sock.sendall(struct.pack("!I", len(body) + 4) + body)
    buf = b""
    while not buf.endswith(b"Z\x00\x00\x00\x05I"):
        chunk = sock.recv(4096)
        assert chunk, "server closed during start-up"
        buf += chunk
    return sock


def test_streaming_result_and_client_gone_mid_result(server):
    sock = _raw_startup(server)
    sql = b"SELECT value, value * 2 AS v2 FROM range(20000000)\x00"
    sock.sendall(b"Q" + struct.pack("!I", len(sql) + 4) + sql)
    got = 0
    t0 = time.monotonic()
    while got < 1_000_000:  # the first rows arrive long before 20M could have been computed
        chunk = sock.recv(1 << 16)
        assert chunk
        got += len(chunk)
    assert time.monotonic() - t0 < 10
    sock.close()  # gone mid-result: its query must stop and its session go
    deadline = time.monotonic() + 20
    while server._server.ctxts and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not server._server.ctxts
    with psycopg.connect(dsn(server), autocommit=True) as conn:
        assert conn.execute("SELECT COUNT(*) FROM range(100000)").fetchone() == (100000,)


def test_malformed_bytes_and_1000_connections(server):
    bad = [b"\x00\x00\x00\x08\x04\xd2\x16\x2e",  # unknown protocol
           b"\xff\xff\xff\xff",  # a 4 GB start-up packet
           b"GET / HTTP/1.1\r\n\r\n", b"\x00"]
    for payload in bad:
        with socket.create_connection((server.host, server.port), timeout=10) as sock:
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
            sock.recv(1024)  # an error message or EOF; never a hang
    sock = _raw_startup(server)  # after start-up: a message claiming 2 GB, then garbage
    sock.sendall(b"Q\x7f\xff\xff\xff garbage")
    assert b"08P01" in sock.recv(4096)
    sock.close()
    for i in range(1000):
        with socket.create_connection((server.host, server.port), timeout=10) as sock:
            if i % 2:
                sock.sendall(b"\x00\x00\x00")  # half a length, then gone
    with psycopg.connect(dsn(server), autocommit=True) as conn:
        assert conn.execute("SELECT 41 + 1").fetchone() == (42,)


def test_password_required_off_loopback_and_checked(state, tmp_path):
    p = run_cli("serve", "--host", "0.0.0.0", "--port", str(free_port()), "--state-dir", str(state))
    assert p.returncode == 1 and "without a password" in p.stderr and "PONDSTREAM_PASSWORD" in p.stderr
    with Server(state, port=free_port(), password="s3cret").start() as s:
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(dsn(s, password="wrong"))
        with psycopg.connect(dsn(s, password="s3cret"), autocommit=True) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        with psycopg.connect(dsn(s, password="s3cret"), autocommit=True) as conn:  # the server still answers
            assert conn.execute("SELECT 2").fetchone() == (2,)


GENERATOR = """CREATE STREAM orders (order_id BIGINT, customer_id VARCHAR, amount DOUBLE, event_time TIMESTAMP,
    WATERMARK FOR event_time AS event_time - INTERVAL '1' SECOND)
WITH (connector = 'generator', rows = '{rows}', rate = '{rate}', keys = '30', step = '10 seconds');
CREATE MATERIALIZED VIEW per_minute AS
SELECT TUMBLE_START(event_time, INTERVAL '1' MINUTE) AS minute, customer_id, COUNT(*) AS n
FROM orders GROUP BY TUMBLE(event_time, INTERVAL '1' MINUTE), customer_id;
"""


def _wait_for_rows(dsn_text: str, proc: subprocess.Popen, timeout: float = 60) -> list[int]:
    """Poll COUNT(*) of the view while the pipeline writes; returns the counts seen (errors fail)."""
    counts: list[int] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with psycopg.connect(dsn_text, autocommit=True) as conn:
                while proc.poll() is None and time.monotonic() < deadline:
                    try:
                        counts.append(conn.execute("SELECT COUNT(*) FROM per_minute").fetchone()[0])
                    except psycopg.errors.UndefinedTable:  # before the first version is written
                        pass
                    if len(set(counts)) >= 3:
                        return counts
                    time.sleep(0.2)
        except psycopg.OperationalError:  # `run --serve` not listening yet
            time.sleep(0.2)
    return counts


@needs_psql
def test_run_serve_answers_while_the_pipeline_writes(tmp_path):
    sql = tmp_path / "gen.sql"
    sql.write_text(GENERATOR.format(rows=0, rate=400))
    port = free_port()
    proc = subprocess.Popen([PYTHON, "-m", "pondstream.engine.cli", "run", str(sql), "--serve", str(port), "--quiet",
                             "--checkpoint-interval", "0.2", "--state-dir", str(tmp_path / "state")],
                            stderr=subprocess.PIPE, text=True)
    try:
        counts = _wait_for_rows(f"host=127.0.0.1 port={port} user=t dbname=d connect_timeout=5", proc)
        assert len(set(counts)) >= 3 and counts == sorted(counts), counts  # growing while it runs
        p = subprocess.run([PSQL, "-h", "127.0.0.1", "-p", str(port), "-X", "-At", "-c",
                            "SELECT COUNT(*) > 0 FROM per_minute"], capture_output=True, text=True, timeout=30)
        assert p.returncode == 0 and p.stdout.strip() == "t", p.stderr
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert f"serving the views on postgresql://127.0.0.1:{port}" in err


def test_serve_process_over_a_running_pipeline(tmp_path):
    sql = tmp_path / "gen.sql"
    sql.write_text(GENERATOR.format(rows=0, rate=400))
    state = tmp_path / "state"
    run = subprocess.Popen([PYTHON, "-m", "pondstream.engine.cli", "run", str(sql), "--quiet", "--checkpoint-interval",
                            "0.2", "--state-dir", str(state)], stderr=subprocess.PIPE, text=True)
    try:
        with Server(state, port=free_port()).start() as s:
            counts = _wait_for_rows(dsn(s), run)
            assert len(set(counts)) >= 3 and counts == sorted(counts), counts
    finally:
        run.terminate()
        run.communicate(timeout=60)
    assert run.returncode == 0
