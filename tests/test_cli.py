"""The command line as a user meets it: help, run, query formats, cat, status, and readable errors."""

from __future__ import annotations

import csv
import io
import json
import subprocess
from pathlib import Path

from conftest import PYTHON

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "hourly_sales.sql"


def cli(*args: str, state: Path, check: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run([PYTHON, "-m", "pondstream.engine.cli", *args, "--state-dir", str(state)],
                       capture_output=True, text=True, timeout=300)
    if check:
        assert p.returncode == 0, p.stderr
    return p


def test_help_explains_commands():
    p = subprocess.run([PYTHON, "-m", "pondstream.engine.cli", "--help"], capture_output=True, text=True)
    assert p.returncode == 0
    for word in ("run", "query", "cat", "status", "PONDSTREAM_STATE_DIR"):
        assert word in p.stdout


def test_run_example_then_query_in_every_format(tmp_path):
    state = tmp_path / "s"
    run = cli("run", str(EXAMPLE), state=state)
    assert "done: 200,000 events" in run.stderr
    table = cli("query", "SELECT * FROM hourly_sales ORDER BY total DESC LIMIT 3", state=state).stdout
    assert table.splitlines()[0].split("|")[0].strip() == "hour" and "(3 rows)" in table
    rows = list(csv.DictReader(io.StringIO(
        cli("query", "SELECT hour, customer_id, orders FROM hourly_sales ORDER BY hour, customer_id",
            "--format", "csv", state=state).stdout)))
    assert len(rows) > 100 and rows[0]["hour"].count("T") == 1 and int(rows[0]["orders"]) > 0
    lines = cli("query", "SELECT hour, orders FROM hourly_sales LIMIT 2", "--format", "json", state=state).stdout
    first = json.loads(lines.splitlines()[0])
    assert set(first) == {"hour", "orders"} and "T" in first["hour"]
    cat = cli("cat", "hourly_sales", "--time-start", "2026-01-01 02:00:00", "--time-end", "2026-01-01 03:00:00",
              "--format", "csv", state=state).stdout
    assert {r["hour"] for r in csv.DictReader(io.StringIO(cat))} == {"2026-01-01T02:00:00"}
    status = json.loads(cli("status", "--json", state=state).stdout)
    assert status["views"]["hourly_sales"]["finished"] is True
    assert status["series"]["hourly_sales"]["rows"] == len(rows)
    again = cli("run", str(EXAMPLE), state=state)  # resuming a finished pipeline reads nothing new
    assert "done: 0 events" in again.stderr
    compact = cli("compact", state=state).stdout
    assert "hourly_sales: " in compact
    lookup = "SELECT hour, customer_id, orders FROM hourly_sales WHERE customer_id = 'c00001' ORDER BY hour"
    assert cli("query", lookup, "--explain", state=state).stdout.startswith("point lookup on hourly_sales")
    assert cli("query", "SELECT COUNT(*) FROM hourly_sales", "--explain", state=state).stdout.startswith("scan")
    got = list(csv.DictReader(io.StringIO(cli("query", lookup, "--format", "csv", state=state).stdout)))
    assert got and got == [r for r in rows if r["customer_id"] == "c00001"]


def test_errors_are_messages_not_tracebacks(tmp_path):
    bad = tmp_path / "bad.sql"
    bad.write_text(EXAMPLE.read_text().replace("WHERE amount > 0", "WHERE amout > 0"))
    p = cli("run", str(bad), state=tmp_path / "s", check=False)
    assert p.returncode == 1 and "Traceback" not in p.stderr
    line = next(i for i, x in enumerate(bad.read_text().splitlines(), 1) if "amout" in x)
    assert "unknown column amout" in p.stderr and f"line {line}, column 7" in p.stderr and "hint:" in p.stderr
    cli("run", str(EXAMPLE), state=tmp_path / "s2")
    changed = tmp_path / "changed.sql"
    changed.write_text(EXAMPLE.read_text().replace("AVG(amount)", "MAX(amount)"))
    p = cli("run", str(changed), state=tmp_path / "s2", check=False)
    assert p.returncode == 1 and "--reset hourly_sales" in p.stderr
    p = cli("run", str(changed), "--reset", "hourly_sales", state=tmp_path / "s2")
    assert "done: 200,000 events" in p.stderr
    q = cli("query", "SELECT * FROM nowhere", state=tmp_path / "s2", check=False)
    assert q.returncode == 1 and "queryable tables: hourly_sales" in q.stderr and "Traceback" not in q.stderr


def test_damaged_state_is_named_and_the_next_run_repairs_it(tmp_path):
    state = tmp_path / "s"
    cli("run", str(EXAMPLE), state=state)
    full = cli("query", "SELECT COUNT(*) AS n FROM hourly_sales", "--format", "csv", state=state).stdout
    log = state / "series" / "hourly_sales" / "_log.jsonl"
    log.write_bytes(log.read_bytes()[: len(log.read_bytes()) // 2])  # lost its second half
    for args in (("query", "SELECT COUNT(*) AS n FROM hourly_sales"), ("cat", "hourly_sales"), ("status",)):
        p = cli(*args, state=state, check=False)
        assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr
        assert "_log.jsonl is damaged (cut short" in p.stderr and "next `pondstream run`" in p.stderr
    (state / "status.json").write_text('{"pid": 1, "views": {')
    p = cli("status", state=state, check=False)
    assert p.returncode == 1 and "status.json is damaged" in p.stderr
    cli("run", str(EXAMPLE), state=state)  # recovery rewrites the log from RocksDB, the checkpoint status.json
    assert cli("query", "SELECT COUNT(*) AS n FROM hourly_sales", "--format", "csv", state=state).stdout == full
    assert json.loads(cli("status", "--json", state=state).stdout)["views"]["hourly_sales"]["finished"] is True


def test_status_times_never_overflow():
    from pondstream.engine.runner import ts_text
    from pondstream.operators.watermark import END_OF_STREAM

    assert ts_text(END_OF_STREAM - 5_000_000) == "end of input"  # a finished input's watermark less a delay
    assert ts_text(-(1 << 62)) == "-" and ts_text(0) == "1970-01-01 00:00:00"
