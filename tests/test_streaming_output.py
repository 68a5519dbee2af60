"""Query results stream: `query_stream`/`cat_stream` readers, CSV and JSON lines written batch by batch,
a page for the table format, `| head` and LIMIT ending quietly, errors while reading as EngineErrors.

What the output should be is computed independently: DuckDB reads the views' Parquet files (keeping the
latest version of each row), and Python's csv/json/datetime modules read and format the values."""

from __future__ import annotations

import csv
import io
import json
import math
import subprocess
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from pondstream.engine import Engine, EngineError, streams
from pondstream.engine.output import _iso_text, render, write
from pondstream.state.series import read_snapshot, series_meta

from conftest import PYTHON

# 1M generator events, nearly one row each (1M keys, 1-minute windows), in 4 files of ~2 MB: large
# enough that a LIMIT used to abort at exit, that `| head` has much left to stop, and that cat splits it.
PIPELINE = """CREATE STREAM orders (order_id BIGINT, customer_id VARCHAR, amount DOUBLE, event_time TIMESTAMP,
    WATERMARK FOR event_time AS event_time - INTERVAL '5' SECOND)
    WITH (connector = 'generator', rows = '1000000', keys = '1000000', seed = '7', step = '1 second',
          batch_size = '250000');
CREATE MATERIALIZED VIEW big AS SELECT TUMBLE_START(event_time, INTERVAL '1' MINUTE) AS minute, customer_id,
    COUNT(*) AS orders, SUM(amount) AS total FROM orders GROUP BY TUMBLE(event_time, INTERVAL '1' MINUTE), customer_id;
CREATE STREAM late_orders (order_id BIGINT, customer_id VARCHAR, amount DOUBLE, event_time TIMESTAMP,
    WATERMARK FOR event_time AS event_time - INTERVAL '5' SECOND)
    WITH (connector = 'generator', rows = '300000', keys = '300', seed = '3', step = '100 milliseconds',
          out_of_orderness = '12 minutes', batch_size = '5000');
CREATE MATERIALIZED VIEW lenient WITH (allowed_lateness = '30 minutes') AS
SELECT TUMBLE_START(event_time, INTERVAL '10' MINUTE) AS w, customer_id, COUNT(*) AS n, AVG(amount) AS mean
FROM late_orders GROUP BY TUMBLE(event_time, INTERVAL '10' MINUTE), customer_id;
CREATE STREAM few_late (order_id BIGINT, customer_id VARCHAR, amount DOUBLE, event_time TIMESTAMP,
    WATERMARK FOR event_time AS event_time - INTERVAL '5' SECOND)
    WITH (connector = 'generator', rows = '300000', keys = '300', seed = '4', step = '100 milliseconds',
          out_of_orderness = '1 minute', batch_size = '5000');
CREATE MATERIALIZED VIEW keys_first AS
SELECT customer_id, TUMBLE_START(event_time, INTERVAL '10' MINUTE) AS w, MAX(amount) AS top
FROM few_late GROUP BY TUMBLE(event_time, INTERVAL '10' MINUTE), customer_id;
CREATE MATERIALIZED VIEW no_window AS SELECT customer_id, SUM(amount) AS s
FROM few_late GROUP BY TUMBLE(event_time, INTERVAL '10' MINUTE), customer_id;
"""
VIEWS = ["lenient", "keys_first", "no_window", "keys_first__late"]  # big: in a time range, below


@pytest.fixture(scope="module")
def state(tmp_path_factory) -> Path:
    state = tmp_path_factory.mktemp("stream") / "state"
    with Engine(state) as e:
        e.execute(PIPELINE)
        e.run(checkpoint_interval=0)  # a checkpoint per batch: the same files every time
    return state


def iso(v: datetime) -> str:
    """ISO-8601 as pondstream writes it, by Python: fractions only when present, without trailing zeros."""
    return v.isoformat().rstrip("0").rstrip(".") if v.microsecond else v.isoformat(timespec="seconds")


def expected(state: Path, view: str, time_start: str | None = None,
             time_end: str | None = None) -> tuple[pa.Table, list[str]]:
    """`cat view` computed by DuckDB from the Parquet files: the latest version of each identity (when
    a later version replaced rows), visible columns, in identity order; and the ordering columns."""
    d = state / "series" / view
    meta, _ = series_meta(d)
    snap = read_snapshot(d)  # every row still kept: base, history (rows replaced later) and tail
    files = [str(d / e["file"]) for e in [*snap.base["files"], *snap.base["history"], *snap.tail]]
    cols = [c for c in pq.read_schema(files[0]).names if c not in ("_version", "_superseded_by") and c not in meta["hidden"]]
    quoted = ", ".join(f'"{c}"' for c in cols)
    ident = meta["identity"]
    start = next((c for c, b in meta["time_columns"].items() if b == "start"), None)
    where = [f"\"{start}\" >= TIMESTAMP '{time_start}'"] if time_start else []
    where += [f"\"{start}\" < TIMESTAMP '{time_end}'"] if time_end else []
    latest = (f"QUALIFY row_number() OVER (PARTITION BY {', '.join(f'{chr(34)}{c}{chr(34)}' for c in ident)} "
              "ORDER BY _version DESC) = 1") if ident else ""
    sql = f"SELECT * FROM read_parquet({files!r}, union_by_name = true) {latest}"
    order = [f'"{c}"' for c in ident if c in cols]
    sql = (f"SELECT {quoted} FROM ({sql})" + (f" WHERE {' AND '.join(where)}" if where else "")
           + (f" ORDER BY {', '.join(order)}" if order else ""))
    return duckdb.sql(sql).to_arrow_table(), [c.strip('"') for c in order]


def as_text(v) -> str:
    return "" if v is None else iso(v) if isinstance(v, datetime) else str(v)


def check_csv(text: str, want: pa.Table, order: list[str]) -> None:
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == want.column_names
    types = want.schema.types
    got = [tuple(float(x) if pa.types.is_floating(t) and x else x for x, t in zip(r, types, strict=True))
           for r in rows[1:]]
    exp = [tuple(v if isinstance(v, float) else as_text(v) for v in r.values()) for r in want.to_pylist()]
    same_rows(got, exp, [want.column_names.index(c) for c in order])


def check_jsonl(text: str, want: pa.Table, order: list[str]) -> None:
    got = [tuple(json.loads(line).values()) for line in text.splitlines()]
    assert all(list(json.loads(line)) == want.column_names for line in text.splitlines()[:3])
    exp = [tuple(iso(v) if isinstance(v, datetime) else v for v in r.values()) for r in want.to_pylist()]
    same_rows(got, exp, [want.column_names.index(c) for c in order])


def same_rows(got: list[tuple], exp: list[tuple], order: list[int]) -> None:
    """The same rows (floats read back exactly), in the same order of the ordering columns (rows tied on
    them may come in any order)."""
    assert len(got) == len(exp)
    keys = [tuple(r[i] for i in order) for r in exp]
    if order and len(set(keys)) == len(keys):  # the order is total: the very same sequence
        assert got == exp
        return
    assert [tuple(r[i] for i in order) for r in got] == keys
    key = lambda r: tuple((x is None, str(x)) for x in r)  # noqa: E731
    assert sorted(got, key=key) == sorted(exp, key=key)


def out_bytes(reader: pa.RecordBatchReader, fmt: str) -> str:
    buf = io.BytesIO()
    write(reader, fmt, buf)
    return buf.getvalue().decode()


# -- streamed output equals an independent answer --------------------------------------------------

@pytest.mark.parametrize("view,piece_rows", [(v, p) for v in VIEWS for p in (None, 700)])
def test_cat_streams_csv_and_json_equal_duckdb(state, view, piece_rows, monkeypatch):
    if piece_rows:  # small pieces: many DataFusion sorts, file ranges cut inside files
        monkeypatch.setattr(streams, "PIECE_ROWS", piece_rows)
    want, order = expected(state, view)
    assert want.num_rows > 1000
    if view == "lenient":  # later versions replaced rows: cat shows the latest
        snap = read_snapshot(state / "series" / view)
        assert snap.base["history"] or any(e["supersedes"] for e in snap.tail)
    e = Engine(state)
    check_csv(out_bytes(e.cat_stream(view), "csv"), want, order)
    check_jsonl(out_bytes(e.cat_stream(view), "json"), want, order)
    assert e.cat(view).num_rows == want.num_rows


@pytest.mark.parametrize("view,start,end", [("big", "2026-01-03 00:00:00", "2026-01-05 12:00:00"),
                                            ("lenient", "2026-01-01 00:30:00", "2026-01-01 01:10:00"),
                                            ("big", None, "2026-01-01 00:05:00")])
def test_cat_time_range_streams_the_rows_duckdb_selects(state, view, start, end, monkeypatch):
    monkeypatch.setattr(streams, "PIECE_ROWS", 5_000)
    want, order = expected(state, view, start, end)
    assert want.num_rows > 0
    check_csv(out_bytes(Engine(state).cat_stream(view, start, end), "csv"), want, order)


def test_query_stream_equals_query_and_duckdb(state):
    e = Engine(state)
    want, _ = expected(state, "big", None, "2026-01-02 00:00:00")
    day = "FROM big WHERE minute < TIMESTAMP '2026-01-02 00:00:00'"
    sql = f"SELECT * {day} AND total > 50 ORDER BY minute, customer_id"
    reader = e.query_stream(sql)
    assert isinstance(reader, pa.RecordBatchReader)
    filtered = want.filter(pc.greater(want["total"], 50))
    check_jsonl(out_bytes(reader, "json"), filtered, ["minute", "customer_id"])
    assert e.query(sql).equals(e.query_stream(sql).read_all())
    check_csv(out_bytes(e.query_stream(f"SELECT * {day}"), "csv"), want, [])  # no ORDER BY: any order
    want, order = expected(state, "lenient")
    check_csv(out_bytes(e.query_stream("SELECT * FROM lenient"), "csv"), want, [])


@pytest.mark.parametrize("chunk", [1, 3, 1000, None])
def test_batch_boundaries_do_not_change_the_output(state, chunk):
    table = Engine(state).query("SELECT * FROM keys_first__late ORDER BY order_id LIMIT 3000")
    whole = {fmt: render(table, fmt) for fmt in ("csv", "json", "table")}
    for fmt, text in whole.items():
        reader = pa.RecordBatchReader.from_batches(table.schema, table.to_batches(max_chunksize=chunk))
        assert out_bytes(reader, fmt) == text
    assert whole["csv"].count("\n") == 3001 and whole["json"].count("\n") == 3000


def test_json_lines_read_back_as_python_json_writes_them():
    """Every kind of value, encoded column-wise, reads back as the old per-row json.dumps wrote it."""
    t = pa.table({
        "i": pa.array([1, None, -(2**63)], pa.int64()),
        "f": pa.array([1.5, float("nan"), float("-inf")]),
        "g": pa.array([100.0, 1e-7, 1.2345678901234568e+20]),
        "z": pa.array([-0.0, None, 5e-324], pa.float64()),
        "s": pa.array(['say "hi"\\', None, "é ☃ \u2028 \u0085 𝄞"]),
        "ctl": pa.array(["a\nb", "\t\x01", None]),
        "b": pa.array([True, False, None]),
        "ts": pa.array([0, 1_500_000, None], pa.timestamp("us")),
        "d": pa.array([Decimal("12.50"), None, Decimal("-0.01")], pa.decimal128(10, 2)),
        "day": pa.array([0, 19000, None], pa.date32()),
        "cat": pa.array(["x", None, "y"]).dictionary_encode(),
        "raw": pa.array([b"ab", None, b"\x00"]),
        "nothing": pa.nulls(3),
    })
    text = render(t, "json")
    assert text.count("\n") == 3 and all(line.startswith("{") for line in text.split("\n")[:3])
    lines = text.split("\n")[:3]  # split on newlines only: U+2028 and U+0085 are escaped, not line ends
    for line, row in zip(lines, t.to_pylist(), strict=True):
        got = json.loads(line)
        for k, v in row.items():
            if isinstance(v, datetime):
                v = iso(v)
            elif isinstance(v, Decimal):
                v = float(v)
            elif isinstance(v, bytes):
                v = str(v)
            elif k == "day" and v is not None:
                v = v.isoformat()
            if isinstance(v, float) and math.isnan(v):
                assert math.isnan(got[k])
            else:
                assert got[k] == v and type(got[k]) is type(v), (k, got[k], v)
    assert "\u2028" not in text and "\u0085" not in text and "é" in text


@pytest.mark.parametrize("view", VIEWS)
def test_json_lines_are_the_bytes_python_json_writes(state, view):
    """For the values views hold, the column-wise encoder writes what json.dumps wrote row by row."""
    table = Engine(state).cat(view)
    want = "".join(json.dumps({k: iso(v) if isinstance(v, datetime) else v for k, v in r.items()}) + "\n"
                   for r in table.to_pylist())
    assert render(table, "json") == want


@pytest.mark.parametrize("unit", ["s", "ms", "us", "ns"])
def test_timestamps_as_iso_text_match_python(unit):
    step = {"s": 1, "ms": 10**3, "us": 10**6, "ns": 10**9}[unit]
    values = [0, 1, 59, 3600 * 24 * 365 * 200, 1_767_225_600, -1, 86_399, -2_208_988_800]
    ticks = [v * step for v in values] + ([v * step + step // 4 for v in values] if step > 1 else [])
    got = _iso_text(pa.array(ticks, pa.int64()).cast(pa.timestamp(unit))).to_pylist()
    epoch = datetime(1970, 1, 1)
    want = [iso(epoch + timedelta(microseconds=t * 10**6 // step)) for t in ticks]
    assert got == want
    assert _iso_text(pa.array([None, 5], pa.timestamp(unit))).to_pylist()[0] is None


# -- reading stops when output stops ----------------------------------------------------------------

def written(table: pa.Table, rows: int, fmt: str, sink: io.BytesIO) -> dict:
    """Write `table` in batches of `rows` to `sink`: how many batches were pulled, whether the stream
    was closed once the reader was dropped, and whether the pipe broke."""
    seen = {"pulled": 0, "closed": False, "broken": False}

    def batches():
        try:
            for b in table.to_batches(max_chunksize=rows):
                seen["pulled"] += 1
                yield b
        finally:
            seen["closed"] = True

    try:
        write(pa.RecordBatchReader.from_batches(table.schema, batches()), fmt, sink)
    except BrokenPipeError:
        seen["broken"] = True
    return seen


class ClosedPipe(io.BytesIO):
    """A pipe whose reader goes away after the first write (the CSV header, or the first JSON batch)."""

    def write(self, data) -> int:
        if self.tell():
            raise BrokenPipeError(32, "Broken pipe")
        return super().write(data)


@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_a_closed_pipe_stops_reading_and_closes_the_stream(fmt):
    table = pa.table({"x": pa.array(range(100_000)), "t": pa.array(range(100_000), pa.timestamp("s"))})
    assert written(table, 1000, fmt, ClosedPipe()) == {"pulled": 1 if fmt == "csv" else 2, "closed": True,
                                                        "broken": True}


def test_the_table_format_reads_one_page():
    table = pa.table({"x": pa.array(range(100_000))})
    buf = io.BytesIO()
    # 4 batches of 64: 201 rows, enough to know there are more than 200
    assert written(table, 64, "table", buf) == {"pulled": 4, "closed": True, "broken": False}
    text = buf.getvalue().decode()
    assert text.count("\n") == 2 + 200 + 1
    assert text.endswith("(first 200 rows shown, more not counted; use --format csv or --format json for all)\n")
    buf = io.BytesIO()
    written(table.slice(0, 150), 64, "table", buf)
    assert buf.getvalue().decode().endswith("(150 rows)\n")


def cli(*args: str, state: Path) -> subprocess.CompletedProcess:
    return subprocess.run([PYTHON, "-m", "pondstream.engine.cli", *args, "--state-dir", str(state)],
                          capture_output=True, text=True, timeout=300)


def test_head_ends_the_query_quietly(state):
    full = len(expected(state, "big")[0])
    for args in (("query", "SELECT * FROM big", "--format", "csv"), ("cat", "big", "--format", "json")):
        p = subprocess.Popen([PYTHON, "-m", "pondstream.engine.cli", *args, "--state-dir", str(state)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        first = p.stdout.readline()
        p.stdout.close()  # what `| head -1` does
        assert p.wait(timeout=120) == 0  # a guard against hanging, not a timing assertion
        assert p.stderr.read() == b"" and first.strip() and full > 900_000


def test_limit_exits_cleanly(state):
    """DataFusion scan threads still reading other files when the LIMIT is met used to abort the
    interpreter at exit (SIGABRT, "FATAL: exception not rethrown") after printing the rows."""
    for sql in ("SELECT * FROM big LIMIT 5", "SELECT customer_id FROM big LIMIT 1"):
        for fmt in ("table", "csv"):
            p = cli("query", sql, "--format", fmt, state=state)
            assert (p.returncode, p.stderr) == (0, "")
    p = subprocess.run([PYTHON, "-c", "import sys; from pondstream.engine import Engine; "
                        "print(Engine(sys.argv[1]).query('SELECT * FROM big LIMIT 3').num_rows)", str(state)],
                       capture_output=True, text=True, timeout=300)
    assert (p.returncode, p.stdout, p.stderr) == (0, "3\n", "")


def test_table_format_shows_a_page_and_the_count_from_the_log(state):
    p = cli("cat", "big", state=state)
    lines = p.stdout.splitlines()
    assert p.returncode == 0 and len(lines) == 2 + 200 + 1
    n = len(expected(state, "big")[0])
    assert lines[-1] == f"(first 200 of {n:,} rows shown; use --format csv or --format json for all)"
    assert lines[2].startswith("2026-01-01T00:00:00 |")
    # a replaced row makes the log's count wrong, so it is not shown
    assert "more not counted" in cli("cat", "lenient", state=state).stdout.splitlines()[-1]


def test_cat_with_a_range_matching_no_file_prints_no_rows(state):
    last = Engine(state).query("SELECT MAX(minute) AS m FROM big").column("m")[0].as_py()
    after = (last + timedelta(days=1)).isoformat(sep=" ")
    for view, start, end in (("big", after, None), ("lenient", after, None),
                             ("big", "2026-01-01 00:10:00", "2026-01-01 00:10:00"),
                             ("big", "2026-01-02 00:00:00", "2026-01-01 00:00:00")):
        extra = ("--time-end", end) if end else ()
        p = cli("cat", view, "--time-start", start, *extra, "--format", "csv", state=state)
        assert (p.returncode, p.stderr) == (0, "") and p.stdout.splitlines() == [
            ",".join(f'"{c}"' for c in expected(state, view)[0].column_names)]
        assert Engine(state).cat(view, start, end).num_rows == 0
    p = cli("cat", "big", "--time-start", after, state=state)
    assert p.returncode == 0 and p.stdout.endswith("(0 rows)\n")
    for view in ("big", "lenient"):  # a user's ORDER BY over a range no file overlaps
        col = expected(state, view)[0].column_names[0]
        p = cli("query", f"SELECT * FROM {view} WHERE \"{col}\" > TIMESTAMP '{after}' ORDER BY 1", state=state)
        assert (p.returncode, p.stderr) == (0, "") and p.stdout.endswith("(0 rows)\n")


# -- errors while reading -----------------------------------------------------------------------------

def test_an_error_while_reading_is_an_engine_error(state):
    e = Engine(state)
    reader = e.query_stream("SELECT minute, 10 / (orders - 1) AS x FROM big")  # planning succeeds
    with pytest.raises(EngineError, match="query failed: .*Divide by zero"):
        reader.read_all()
    p = cli("query", "SELECT CAST(customer_id AS INT) AS n FROM big", "--format", "csv", state=state)
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert p.stderr.startswith("error: query failed: ") and "Cannot cast string" in p.stderr


def test_a_file_damaged_inside_names_itself_mid_stream(state, tmp_path):
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-r", str(state), str(copy)], check=True)
    d = copy / "series" / "big"
    snap = read_snapshot(d)
    last = d / [*snap.base["files"], *snap.tail][-1]["file"]
    meta = pq.ParquetFile(last).metadata
    data = bytearray(last.read_bytes())
    chunk = meta.row_group(meta.num_row_groups - 1).column(1)
    middle = (chunk.dictionary_page_offset or chunk.data_page_offset) + chunk.total_compressed_size // 2
    for i in range(middle, middle + 8):  # inside a page's data, which its checksum covers; same size
        data[i] ^= 0xFF
    last.write_bytes(bytes(data))
    for args in (("cat", "big", "--format", "csv"), ("query", "SELECT * FROM big ORDER BY minute", "--format", "json")):
        p = cli(*args, state=copy)
        assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr
        assert f"{last} is damaged" in p.stderr and "--reset big" in p.stderr
    assert cli("cat", "big", "--format", "csv", state=copy).stdout.count("\n") > 100_000  # rows before it
