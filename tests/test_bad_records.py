"""Nothing lost, nothing silent: every input record reaches the view or `<stream>__errors` (with its
offset and a reason), and none stops the pipeline. Generated hostile files, several batch sizes."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from datetime import datetime, timedelta

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pondstream.engine import Engine
from pondstream.engine.cli import main

START = datetime(2026, 1, 1)
VIEWS = """
CREATE MATERIALIZED VIEW per_id AS SELECT id, COUNT(*) AS n FROM s GROUP BY id;
CREATE MATERIALIZED VIEW ratio AS
SELECT TUMBLE_START(ts, INTERVAL '1' HOUR) AS w, SUM(100 / qty) AS r, COUNT(*) AS n
FROM s GROUP BY TUMBLE(ts, INTERVAL '1' HOUR);
"""


def jsonl_line(kind: str, obj: dict, rng: random.Random) -> str:
    """One line of the given kind for the record `obj`."""
    if kind == "good":
        return json.dumps(obj)
    if kind == "huge_line":
        return json.dumps({**obj, "pad": "x" * rng.randrange(20_000, 200_000)})
    if kind == "blank":
        return rng.choice(["", "   ", "\t", "\r"])
    if kind == "null":
        return rng.choice(["null", "  null", "1", '"text"'])
    if kind == "broken":
        return json.dumps(obj)[: rng.randrange(1, 20)]
    changed = {"array": [obj], "wrong_type": {**obj, "id": f"x{obj['id']}"}, "huge_int": {**obj, "id": 10**30},
               "no_ts": {"id": obj["id"], "qty": obj["qty"]}, "far_future": {**obj, "ts": 99999999999999999},
               "ancient": {**obj, "ts": "1800-01-01 00:00:00"}}
    return json.dumps(obj) + json.dumps(obj) if kind == "double" else json.dumps(changed[kind])


def hostile_jsonl(rng: random.Random, n: int) -> tuple[bytes, dict[int, int], dict[int, str], int]:
    """(file bytes, {good id: qty}, {byte offset of each bad record: expected reason}, number of records)."""
    out = bytearray(b"\xef\xbb\xbf" if rng.random() < 0.5 else b"")
    good: dict[int, int] = {}
    bad: dict[int, str] = {}
    records = 0

    def ts(i: int) -> str | int:
        t = START + timedelta(seconds=i)
        return int(t.timestamp() * 1000) if rng.random() < 0.3 else t.isoformat(sep=" ")

    for i in range(n):
        eol = b"\r\n" if rng.random() < 0.2 else b"\n"
        kind = rng.choices(["good", "blank", "null", "array", "double", "wrong_type", "huge_int", "no_ts",
                            "far_future", "ancient", "broken", "huge_line"],
                           [60, 4, 2, 2, 2, 2, 2, 2, 2, 2, 2, 1])[0]
        qty = rng.choice([0, 1, 2, 3, 4])
        obj = {"id": i, "qty": qty, "ts": ts(i)}
        line = jsonl_line(kind, obj, rng)
        offset = len(out)
        out += line.encode() + eol
        if kind == "blank":
            continue
        records += 1
        if kind in ("good", "huge_line"):
            good[i] = qty
        else:
            bad[offset + (3 if offset == 0 and out.startswith(b"\xef\xbb\xbf") else 0)] = {
                "no_ts": "missing event time", "far_future": "event time out of range",
                "ancient": "event time out of range", "wrong_type": "wrong type", "huge_int": "wrong type"}.get(
                kind, "malformed")
    if rng.random() < 0.5:  # a truncated last line, no newline
        bad[len(out)] = "malformed"
        out += b'{"id": -1, "qty'
        records += 1
    return bytes(out), good, bad, records


def check_accounting(state, good: dict[int, int], bad: dict[int, str], records: int) -> None:
    with Engine(state) as e:
        ids = e.query("SELECT id, n FROM per_id").to_pylist()
        errors = e.query('SELECT "offset", reason, error FROM s__errors').to_pylist()
        ratio_n = e.query("SELECT COALESCE(SUM(n), 0) AS n FROM ratio").column("n")[0].as_py()
        status = e.status()
    assert sorted(r["id"] for r in ids) == sorted(good) and all(r["n"] == 1 for r in ids)
    decode_errors = {r["offset"]: r["reason"] for r in errors if r["reason"] != "expression error"}
    assert decode_errors == bad
    zero = [r for r in errors if r["reason"] == "expression error"]
    assert len(zero) == sum(1 for q in good.values() if q == 0)
    assert all("Divide by zero" in r["error"] and "view ratio" in r["error"] for r in zero)
    assert ratio_n == sum(1 for q in good.values() if q != 0)
    assert len(good) + len(bad) == records  # every record is in a view's input or in s__errors
    per_id = status["views"]["per_id"]
    assert per_id["records_read"] == records and per_id["records_bad"] == len(bad)
    ratio = status["views"]["ratio"]
    assert ratio["records_read"] == records and ratio["records_bad"] == len(bad) + len(zero)


@pytest.mark.parametrize("seed", range(3))
def test_every_jsonl_record_reaches_a_view_or_the_errors(tmp_path, seed):
    rng = random.Random(seed)
    data, good, bad, records = hostile_jsonl(rng, 1500)
    (tmp_path / "in.jsonl").write_bytes(data)
    assert len(bad) > 50 and len(good) > 500
    for batch_bytes in (700, 20_000, None):
        state = tmp_path / f"state{batch_bytes}"
        extra = f", batch_bytes = '{batch_bytes}'" if batch_bytes else ""
        with Engine(state) as e:
            e.execute(f"""CREATE STREAM s (id BIGINT, qty INT, ts TIMESTAMP, WATERMARK FOR ts AS ts)
                WITH (connector = 'file', path = '{tmp_path / "in.jsonl"}'{extra});""" + VIEWS)
            e.run(checkpoint_interval=0.0 if batch_bytes == 20_000 else 1.0)
        check_accounting(state, good, bad, records)


def hostile_csv(rng: random.Random, n: int) -> tuple[bytes, dict[int, int], dict[int, str], int]:
    out = bytearray((b"\xef\xbb\xbf" if rng.random() < 0.5 else b"") + b"id,qty,ts\n")
    good: dict[int, int] = {}
    bad: dict[int, str] = {}
    records = 0
    for i in range(n):
        eol = b"\r\n" if rng.random() < 0.2 else b"\n"
        kind = rng.choices(["good", "blank", "fields", "wrong_type", "no_ts", "far_future", "ancient"],
                           [70, 4, 3, 3, 3, 3, 3])[0]
        qty = rng.choice([0, 1, 2, 3])
        t = START + timedelta(seconds=i)
        ts = str(int(t.timestamp() * 1000)) if rng.random() < 0.3 else t.isoformat(sep=" ")
        line = {"good": f"{i},{qty},{ts}", "blank": "", "fields": f"{i},{qty},{ts},extra",
                "wrong_type": f"x{i},{qty},{ts}", "no_ts": f"{i},{qty},", "far_future": f"{i},{qty},99999999999999999",
                "ancient": f"{i},{qty},1800-01-01 00:00:00"}[kind]
        offset = len(out)
        out += line.encode() + eol
        if kind == "blank":
            continue
        records += 1
        if kind == "good":
            good[i] = qty
        else:
            bad[offset] = {"no_ts": "missing event time", "far_future": "event time out of range",
                           "ancient": "event time out of range", "wrong_type": "wrong type"}.get(kind, "malformed")
    return bytes(out), good, bad, records


@pytest.mark.parametrize("seed", range(2))
def test_every_csv_record_reaches_a_view_or_the_errors(tmp_path, seed):
    data, good, bad, records = hostile_csv(random.Random(100 + seed), 1500)
    (tmp_path / "in.csv").write_bytes(data)
    for batch_bytes in (500, None):
        state = tmp_path / f"state{batch_bytes}"
        extra = f", batch_bytes = '{batch_bytes}'" if batch_bytes else ""
        with Engine(state) as e:
            e.execute(f"""CREATE STREAM s (id BIGINT, qty INT, ts TIMESTAMP, WATERMARK FOR ts AS ts)
                WITH (connector = 'file', path = '{tmp_path / "in.csv"}', format = 'csv'{extra});""" + VIEWS)
            e.run()
        check_accounting(state, good, bad, records)


def test_parquet_rows_that_do_not_fit_and_unreadable_files_are_bad_records(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    ts = [START + timedelta(seconds=i) for i in range(100)]
    qty = [str(i % 5) if i not in (10, 20) else "many" for i in range(100)]  # "many" does not cast to INT
    pq.write_table(pa.table({"id": list(range(100)), "qty": qty, "ts": ts}), d / "a.parquet", row_group_size=30)
    (d / "b.parquet").write_bytes(b"PAR1 this is not parquet")
    (d / "c.parquet").write_bytes(b"")
    pq.write_table(pa.table({"id": [100, 101], "qty": ["1", "2"],
                             "ts": [START, datetime(2400, 1, 1)]}), d / "d.parquet")
    state = tmp_path / "state"
    with Engine(state) as e:
        e.execute(f"""CREATE STREAM s (id BIGINT, qty INT, ts TIMESTAMP, WATERMARK FOR ts AS ts)
            WITH (connector = 'file', path = '{d}', format = 'parquet');""" + VIEWS)
        e.run()
        ids = sorted(e.query("SELECT id FROM per_id").column("id").to_pylist())
        errors = e.query('SELECT source, reason FROM s__errors ORDER BY source, "offset"').to_pylist()
    assert ids == [i for i in range(101) if i not in (10, 20)]
    reasons = [(r["source"].split("/")[-1], r["reason"]) for r in errors if r["reason"] != "expression error"]
    assert reasons == [("a.parquet (row group 0)", "wrong type"), ("a.parquet (row group 0)", "wrong type"),
                       ("b.parquet", "unreadable file"), ("c.parquet", "unreadable file"),
                       ("d.parquet (row group 0)", "event time out of range")]


def test_batch_bytes_zero_is_refused(tmp_path, capsys):
    (tmp_path / "in.jsonl").write_text('{"id": 1, "qty": 1, "ts": "2026-01-01 00:00:00"}\n')
    sql = tmp_path / "p.sql"
    sql.write_text(f"""CREATE STREAM s (id BIGINT, qty INT, ts TIMESTAMP, WATERMARK FOR ts AS ts)
        WITH (connector = 'file', path = '{tmp_path / "in.jsonl"}', batch_bytes = '0');""" + VIEWS)
    assert main(["run", str(sql), "--state-dir", str(tmp_path / "state"), "--quiet"]) == 1
    assert "batch_bytes" in capsys.readouterr().err


def test_status_shows_where_records_went_and_a_closed_pipe_is_no_error(tmp_path, capsys):
    rows = [json.dumps({"id": i, "qty": i % 3, "ts": f"2026-01-01 00:00:{i:02d}"}) for i in range(50)]
    (tmp_path / "in.jsonl").write_text("\n".join(rows[:20] + ["null", "{oops"] + rows[20:]) + "\n")
    sql = tmp_path / "p.sql"
    sql.write_text(f"""CREATE STREAM s (id BIGINT, qty INT, ts TIMESTAMP, WATERMARK FOR ts AS ts)
        WITH (connector = 'file', path = '{tmp_path / "in.jsonl"}');""" + VIEWS)
    state = str(tmp_path / "state")
    assert main(["run", str(sql), "--state-dir", state, "--quiet"]) == 0
    assert main(["status", "--state-dir", state]) == 0
    out = capsys.readouterr().out
    assert "records read: 52 = 50 to the view + 2 to s__errors" in out  # per_id
    assert "records read: 52 = 33 to the view + 19 to s__errors" in out  # ratio: 17 rows with qty = 0
    p = subprocess.run(f"{sys.executable} -m pondstream.engine.cli query 'SELECT * FROM s__errors CROSS JOIN generate_series(1, 100000)' "
                       f"--state-dir {state} --format csv | head -1", shell=True, capture_output=True, text=True)
    assert p.stdout.startswith('"source"') and "Traceback" not in p.stderr
