"""TUMBLE_START/END and HOP_START/END in queries: the same windows the views assign (operators/window.py),
checked against plain integer arithmetic and DuckDB's time_bucket on generated timestamps, end to end
against views and DuckDB over the same input, with NULLs and the errors a user meets."""

from __future__ import annotations

import csv
import io
import subprocess

import duckdb
import numpy as np
import pyarrow as pa
import pytest
import sqlglot

from pondstream.engine import EngineError, query_functions
from pondstream.engine.query_functions import query_context, window_bounds
from pondstream.operators.window import assign
from pondstream.sql import SqlError, parse_script
from pondstream.sql.dialect import StreamSQL
from pondstream.sql.intervals import interval_us
from pondstream.sql.planner import plan_view
from pondstream.sql.windows import WindowSpec

from conftest import HOURLY, PYTHON, canon, duck, make_orders, orders_stream, write_jsonl

TS = pa.timestamp("us")
US = {"hour": 3_600_000_000, "day": 86_400_000_000}
LO, HI = -2_208_988_800_000_000, 10_413_792_000_000_000  # 1900-01-01 .. 2300-01-01, the default event-time range
SIZES = [1, 13, 1_500_000, 60_000_000, US["hour"], 7 * US["hour"], US["day"], 7 * US["day"], 36500 * US["day"]]
HOPS = [(3, 300), (7, 21), (60_000_000, US["hour"]), (US["hour"], US["day"]), (US["day"], 7 * US["day"]),
        (5 * 60_000_000, 5 * 60_000_000)]


def timestamps(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """Event times across 1900-2300, around 1970, and on window boundaries (k * size - 1, + 0, + 1)."""
    spread = rng.integers(LO, HI, n)
    near_epoch = rng.integers(-3 * size, 3 * size, n)
    k = rng.integers(LO // size, HI // size, n)
    edges = k * size + rng.integers(-1, 2, n)
    pick = rng.integers(0, 3, n)
    return np.clip(np.choose(pick, [spread, near_epoch, edges]), LO, HI - 1)


def with_nulls(rng: np.random.Generator, ts: np.ndarray) -> pa.Array:
    return pa.array(ts, TS, mask=rng.random(len(ts)) < 0.1)


def query_bounds(ts: pa.Array, calls: dict[str, str]) -> dict[str, np.ndarray]:
    """Each call (SQL over column ts) evaluated by a query session: µs, with nulls as a masked array."""
    ctx = query_context()
    ctx.register_record_batches("t", [[pa.record_batch({"ts": ts, "i": np.arange(len(ts))})]])
    select = ", ".join(f"{sql} AS {name}" for name, sql in calls.items())
    got = ctx.sql(f"SELECT {select} FROM t ORDER BY i").to_arrow_table()  # batches may run in parallel
    out = {}
    for name in calls:
        col = got.column(name).combine_chunks()
        assert col.type == TS
        out[name] = np.ma.masked_array(col.cast(pa.int64()).fill_null(0).to_numpy(),
                                       mask=col.is_null().to_numpy(zero_copy_only=False))
    return out


def us_interval(us: int) -> str:
    return f"INTERVAL '{us} microseconds'"


def duck_bucket(ts: pa.Array, size_us: int) -> np.ma.MaskedArray:
    """DuckDB's time_bucket from the epoch (its default origin is 2000-01-03)."""
    con = duckdb.connect()
    con.register("t", pa.table({"ts": ts, "i": np.arange(len(ts))}))
    col = con.sql(f"SELECT time_bucket(to_microseconds({size_us}::BIGINT), ts, TIMESTAMP '1970-01-01') AS b "
                  f"FROM t ORDER BY i").to_arrow_table().column("b").combine_chunks().cast(TS)
    return np.ma.masked_array(col.cast(pa.int64()).fill_null(0).to_numpy(),
                              mask=col.is_null().to_numpy(zero_copy_only=False))


def assert_same(got: np.ma.MaskedArray, want: np.ndarray, null: np.ndarray) -> None:
    assert np.array_equal(np.ma.getmaskarray(got), null)
    assert np.array_equal(got.data[~null], np.asarray(want)[~null])


@pytest.mark.parametrize("n", [0, 1, 7, 1000, 50_000])
@pytest.mark.parametrize("size", SIZES)
def test_tumble_bounds_are_the_views_windows(n, size):
    rng = np.random.default_rng(n * 7919 + size % 10007)
    raw = timestamps(rng, n, size)
    ts = with_nulls(rng, raw)
    null = ts.is_null().to_numpy(zero_copy_only=False)
    got = query_bounds(ts, {"s": f"TUMBLE_START(ts, {us_interval(size)})", "e": f"TUMBLE_END(ts, {us_interval(size)})"})
    rows, view = assign(raw, WindowSpec("tumble", size, size))  # what a TUMBLE view assigns each event
    assert rows is None
    assert_same(got["s"], view, null)
    assert_same(got["s"], (raw // size) * size, null)  # floor division, also before 1970
    assert_same(got["e"], (raw // size) * size + size, null)
    assert_same(got["s"], duck_bucket(ts, size).data, null)
    assert np.all(got["s"].data[~null] <= raw[~null]) and np.all(raw[~null] < got["e"].data[~null])


@pytest.mark.parametrize("n", [0, 1, 7, 1000, 20_000])
@pytest.mark.parametrize("slide,size", HOPS)
def test_hop_bounds_are_the_latest_of_the_views_windows(n, slide, size):
    rng = np.random.default_rng(n * 104729 + slide % 9973 + size % 101)
    raw = timestamps(rng, n, slide)
    ts = with_nulls(rng, raw)
    null = ts.is_null().to_numpy(zero_copy_only=False)
    args = f"ts, {us_interval(slide)}, {us_interval(size)}"
    got = query_bounds(ts, {"s": f"HOP_START({args})", "e": f"HOP_END({args})"})
    rows, view = assign(raw, WindowSpec("hop", size, slide))  # every window a HOP view puts each event in
    latest = np.maximum.reduceat(view, np.arange(n) * (size // slide)) if n else view
    assert_same(got["s"], latest, null)
    assert_same(got["s"], (raw // slide) * slide, null)
    assert_same(got["e"], (raw // slide) * slide + size, null)
    assert_same(got["s"], duck_bucket(ts, slide).data, null)
    assert np.all(got["s"].data[~null] <= raw[~null]) and np.all(raw[~null] < got["e"].data[~null])


@pytest.mark.parametrize("text", ["'1' HOUR", "'90' MINUTE", "'1.5' HOUR", "'1' DAY", "'2' WEEK", "'250' MILLISECOND",
                                  "'1 hour 30 minutes'", "'5 seconds'", "'7' MICROSECOND", "'36500' DAY"])
def test_an_interval_is_the_size_a_view_reads_from_it(text):
    sql = f"INTERVAL {text}"
    want = interval_us(sqlglot.parse_one(sql, read=StreamSQL))
    ctx = query_context()
    got = ctx.sql(f"SELECT CAST(TUMBLE_END(to_timestamp_micros(0), {sql}) AS BIGINT) AS n").to_pydict()["n"][0]
    assert got == want


def test_null_in_null_out():
    ctx = query_context()
    ctx.register_record_batches("t", [[pa.record_batch({"ts": pa.array([None, 5_400_000_000], TS)})]])
    got = ctx.sql("SELECT TUMBLE_START(ts, INTERVAL '1' HOUR) AS a, TUMBLE_END(ts, NULL) AS b, "
                  "HOP_START(ts, INTERVAL '1' HOUR, NULL) AS c, HOP_END(NULL, INTERVAL '1' HOUR, INTERVAL '2' HOUR) "
                  "AS d FROM t").to_pydict()
    assert got["a"][0] is None and got["a"][1].isoformat() == "1970-01-01T01:00:00"
    assert got["b"] == [None, None] and got["c"] == [None, None] and got["d"] == [None, None]


def refusal(sql: str) -> str:
    ctx = query_context()
    ctx.register_record_batches("t", [[pa.record_batch({"ts": pa.array([0, 1], TS), "n": [1, 2],
                                                        "tn": pa.array([0, 1], pa.timestamp("ns"))})]])
    with pytest.raises(EngineError) as e:
        ctx.sql(sql).to_arrow_table()
    return str(e.value)


@pytest.mark.parametrize("call,words", [
    ("TUMBLE_START(ts)", ["TUMBLE_START(ts, size) takes a timestamp and 1 interval", "got (Timestamp(µs))"]),
    ("TUMBLE_END()", ["TUMBLE_END(ts, size)", "no arguments"]),
    ("HOP_START(ts, INTERVAL '1' HOUR)", ["HOP_START(ts, slide, size) takes a timestamp and 2 intervals"]),
    ("TUMBLE_START(ts, INTERVAL '1' HOUR, INTERVAL '1' DAY)", ["TUMBLE_START(ts, size)"]),
    ("TUMBLE_START(n, INTERVAL '1' HOUR)", ["got (Int64", "e.g. TUMBLE_START(hour, INTERVAL '1' DAY)"]),
    ("TUMBLE_START(ts, 5)", ["TUMBLE_START(ts, size): expected an interval, got 5"]),
    ("TUMBLE_START(tn, INTERVAL '1' HOUR)", ["Timestamp(ns)", "to_timestamp_micros("]),
    ("TUMBLE_START(TIMESTAMP '2026-01-01 10:00:00', INTERVAL '1' HOUR)", ["microseconds", "to_timestamp_micros("]),
    ("TUMBLE_START(ts, INTERVAL '1' MONTH)", ["TUMBLE_START(ts, size): ", "no fixed length", "e.g. TUMBLE_START("]),
    ("TUMBLE_START(ts, '1 month')", ["TUMBLE_START(ts, size): ", "no fixed length"]),
    ("HOP_END(ts, INTERVAL '1' DAY, INTERVAL '1' YEAR)", ["HOP_END(ts, slide, size)", "no fixed length"]),
    ("TUMBLE_END(ts, INTERVAL '-1' HOUR)", ["TUMBLE_END(ts, size): interval must be positive"]),
    ("TUMBLE_END(ts, INTERVAL '0' SECOND)", ["interval must be positive"]),
    ("TUMBLE_END(ts, INTERVAL '101 years')", ["no fixed length"]),
    ("TUMBLE_END(ts, INTERVAL '36501' DAY)", ["too long (at most 100 years)"]),
    ("HOP_START(ts, INTERVAL '7' MINUTE, INTERVAL '1' HOUR)", ["whole multiple of its slide", "e.g. HOP_START("]),
    ("HOP_START(ts, INTERVAL '1' SECOND, INTERVAL '1' DAY)", ["86400, more than 1000 windows per event"]),
    ("TUMBLE_START(ts, CASE WHEN n = 1 THEN INTERVAL '1' HOUR ELSE INTERVAL '1' DAY END)", ["expected an interval"]),
    ("SESSION_START(ts, INTERVAL '1' HOUR)", ["SESSION_START is not available in queries"]),
])
def test_wrong_calls_name_the_function_and_its_arguments(call, words):
    message = refusal(f"SELECT {call} FROM t")
    for w in words:
        assert w in message, message
    assert "PyErr" not in message and "Traceback" not in message


def test_the_functions_own_checks_back_up_the_check_before_running(monkeypatch):
    """Sizes a view refuses are refused before DataFusion runs (check_sizes); if one got through, the function
    itself refuses it with the same kind of message (one partition here: see check_sizes)."""
    monkeypatch.setattr(query_functions, "check_sizes", lambda query: None)
    for call, words in [("TUMBLE_START(ts, INTERVAL '1' MONTH)", ["TUMBLE_START(ts, size): interval '1 month' has "
                                                                  "months or years, which have no fixed length"]),
                        ("HOP_END(ts, INTERVAL '7' MINUTE, INTERVAL '1' HOUR)", ["HOP_END(ts, slide, size): HOP size "
                                                                                 "must be a whole multiple"]),
                        ("TUMBLE_END(ts, INTERVAL '-1' HOUR)", ["interval must be positive, got '-3600 seconds'"]),
                        ("TUMBLE_START(ts, CASE WHEN n = 1 THEN INTERVAL '1' HOUR ELSE INTERVAL '1' DAY END)",
                         ["TUMBLE_START(ts, size): size must be one constant interval"])]:
        message = refusal(f"SELECT {call} FROM t")
        for w in words:
            assert w in message, message
        assert "PyErr" not in message
    far = pa.array([np.iinfo(np.int64).max - 10], TS)
    with pytest.raises(ValueError, match="too far from 1970"):
        window_bounds("tumble", "end", far, (pa.array([pa.MonthDayNano([0, 1, 0])], pa.month_day_nano_interval()),))


@pytest.mark.parametrize("window,ok", [("TUMBLE(event_time, INTERVAL '1' MONTH)", False),
                                       ("HOP(event_time, INTERVAL '7' MINUTE, INTERVAL '1' HOUR)", False),
                                       ("HOP(event_time, INTERVAL '1' SECOND, INTERVAL '1' DAY)", False),
                                       ("HOP(event_time, INTERVAL '1' MINUTE, INTERVAL '1000' MINUTE)", True),
                                       ("TUMBLE(event_time, INTERVAL '36500' DAY)", True)])
def test_queries_accept_exactly_the_windows_views_accept(tmp_path, window, ok):
    streams = {s.name: s for s in parse_script(orders_stream(tmp_path / "o.jsonl"))}
    kind, args = window.split("(", 1)
    view = (f"CREATE MATERIALIZED VIEW v AS SELECT {kind}_START({args} AS ws, COUNT(*) AS n FROM orders "
            f"GROUP BY {window}")
    query = f"SELECT {kind}_START(ts, {args.split(', ', 1)[1]} AS ws FROM t"
    if ok:
        plan_view(parse_script(view)[0], streams)
        ctx = query_context()
        ctx.register_record_batches("t", [[pa.record_batch({"ts": pa.array([0], TS)})]])
        assert ctx.sql(query).to_pydict()["ws"][0].year == 1970
    else:
        with pytest.raises(SqlError):
            plan_view(parse_script(view)[0], streams)
        refusal(query)


DAILY_SIX = """
CREATE MATERIALIZED VIEW daily AS
SELECT TUMBLE_START(event_time, INTERVAL '1' DAY) AS day, customer_id, COUNT(*) AS orders, SUM(amount) AS total
FROM orders WHERE amount > 0 GROUP BY TUMBLE(event_time, INTERVAL '1' DAY), customer_id;
CREATE MATERIALIZED VIEW hop AS
SELECT HOP_START(event_time, INTERVAL '2' HOUR, INTERVAL '6' HOUR) AS ws,
       HOP_END(event_time, INTERVAL '2' HOUR, INTERVAL '6' HOUR) AS we, COUNT(*) AS n
FROM orders GROUP BY HOP(event_time, INTERVAL '2' HOUR, INTERVAL '6' HOUR);
"""


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """Four days of orders (nothing late) through an hourly, a daily and a HOP view."""
    from pondstream.engine import Engine

    tmp = tmp_path_factory.mktemp("qf")
    rows = make_orders(6000, seed=11, step_s=60.0, disorder_s=4.0)
    write_jsonl(tmp / "o.jsonl", rows)
    engine = Engine(tmp / "state")
    engine.execute(orders_stream(tmp / "o.jsonl", extra=", batch_bytes = '60000'") + HOURLY + DAILY_SIX)
    engine.run(checkpoint_interval=0.0)
    yield engine, rows, tmp / "state"
    engine.close()


def test_daily_rollup_of_an_hourly_view_matches_duckdb_and_the_daily_view(pipeline):
    engine, rows, _ = pipeline
    got = engine.query("SELECT TUMBLE_START(hour, INTERVAL '1' DAY) AS day, SUM(total) AS total FROM hourly_sales "
                       "GROUP BY 1")
    assert got.num_rows >= 4
    assert canon(got) == canon(duck("SELECT time_bucket(INTERVAL '1 day', event_time) AS day, SUM(amount) AS total "
                                    "FROM orders WHERE amount > 0 GROUP BY 1", rows))
    by_key = engine.query("SELECT TUMBLE_START(hour, INTERVAL '1' DAY) AS day, customer_id, SUM(orders) AS orders, "
                          "SUM(total) AS total FROM hourly_sales GROUP BY 1, 2")
    assert canon(by_key) == canon(engine.query("SELECT day, customer_id, orders, total FROM daily"))
    six = engine.query("SELECT TUMBLE_START(hour, INTERVAL '6' HOUR) AS s, TUMBLE_END(hour, INTERVAL '6' HOUR) AS e, "
                       "SUM(orders) AS n FROM hourly_sales GROUP BY 1, 2")
    assert canon(six) == canon(duck("SELECT time_bucket(INTERVAL '6 hours', event_time) AS s, time_bucket(INTERVAL "
                                    "'6 hours', event_time) + INTERVAL '6 hours' AS e, COUNT(*) AS n FROM orders "
                                    "WHERE amount > 0 GROUP BY 1, 2", rows))


def test_over_a_views_own_window_column_the_functions_give_back_its_bounds(pipeline):
    engine, _, _ = pipeline
    for sql in ("SELECT COUNT(*) AS bad FROM hourly_sales WHERE TUMBLE_START(hour, INTERVAL '1' HOUR) <> hour",
                "SELECT COUNT(*) AS bad FROM hop WHERE HOP_START(ws, INTERVAL '2' HOUR, INTERVAL '6' HOUR) <> ws "
                "OR HOP_END(ws, INTERVAL '2' HOUR, INTERVAL '6' HOUR) <> we",
                "SELECT COUNT(*) AS bad FROM daily WHERE TUMBLE_END(day, INTERVAL '1' DAY) <> day + INTERVAL '1' DAY"):
        assert engine.query(sql).column("bad")[0].as_py() == 0
    assert engine.query("SELECT COUNT(*) AS n FROM hop").column("n")[0].as_py() > 40


def test_version_as_of_and_the_cli_run_the_functions(pipeline):
    engine, rows, state = pipeline
    sql = "SELECT TUMBLE_START(hour, INTERVAL '1' DAY) AS day, SUM(total) AS total FROM hourly_sales GROUP BY 1"
    versions = engine.status()["series"]["hourly_sales"]["versions"]
    assert canon(engine.query(sql.replace("hourly_sales", f"hourly_sales VERSION AS OF {versions}"))) == \
        canon(engine.query(sql))
    p = subprocess.run([PYTHON, "-m", "pondstream.engine.cli", "query", sql + " ORDER BY 1", "--format", "csv",
                        "--state-dir", str(state)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    lines = list(csv.reader(io.StringIO(p.stdout)))
    assert lines[0] == ["day", "total"] and len(lines) == engine.query(sql).num_rows + 1 >= 5
    assert all(day.endswith("T00:00:00") for day, _ in lines[1:])
    bad = subprocess.run([PYTHON, "-m", "pondstream.engine.cli", "query",
                          "SELECT TUMBLE_START(hour, INTERVAL '1' MONTH) FROM hourly_sales",
                          "--state-dir", str(state)], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert bad.stderr.startswith("error: TUMBLE_START(ts, size): ") and "no fixed length" in bad.stderr, bad.stderr
