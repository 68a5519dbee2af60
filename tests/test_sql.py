"""SQL front end: statements parse into plans; every user mistake is one located message with a hint."""

from __future__ import annotations

import pyarrow as pa
import pytest

from pondstream.engine import Engine, EngineError
from pondstream.sql import CreateStream, Describe, Drop, Show, SqlError, parse_script
from pondstream.sql.intervals import parse_duration
from pondstream.sql.planner import plan_view

STREAM = """CREATE STREAM orders (
    order_id BIGINT, customer_id VARCHAR, amount DECIMAL(10,2), qty INT, ok BOOLEAN, event_time TIMESTAMP,
    WATERMARK FOR event_time AS event_time - INTERVAL '5' SECOND
) WITH (connector = 'generator', rows = '10');"""


def streams():
    (s,) = parse_script(STREAM)
    return {"orders": s}


def plan(sql: str):
    (v,) = parse_script(sql)
    return plan_view(v, streams())


def test_create_stream_types_watermark_and_options():
    (s,) = parse_script(STREAM)
    assert isinstance(s, CreateStream)
    assert s.schema.types == [pa.int64(), pa.string(), pa.decimal128(10, 2), pa.int32(), pa.bool_(),
                              pa.timestamp("us")]
    assert (s.event_time, s.watermark_delay_us) == ("event_time", 5_000_000)
    assert s.options == {"connector": "generator", "rows": "10"}


def test_timestamp_field_option_is_the_watermark_clause():
    (s,) = parse_script("CREATE STREAM o (ts TIMESTAMP, v BIGINT) WITH (connector = 'generator', "
                        "timestamp_field = 'ts', watermark_delay = '2 minutes')")
    assert (s.event_time, s.watermark_delay_us) == ("ts", 120_000_000)
    assert "timestamp_field" not in s.options


def test_other_statements():
    stmts = parse_script("SHOW STREAMS; SHOW MATERIALIZED VIEWS; DESCRIBE orders; DROP STREAM IF EXISTS x;"
                         " DROP MATERIALIZED VIEW v")
    assert [type(s) for s in stmts] == [Show, Show, Describe, Drop, Drop]
    assert (stmts[0].kind, stmts[1].kind) == ("STREAMS", "VIEWS")
    assert (stmts[3].kind, stmts[3].if_exists, stmts[4].kind) == ("STREAM", True, "VIEW")


@pytest.mark.parametrize("text,us", [("5 seconds", 5_000_000), ("1 hour 30 minutes", 5_400_000_000),
                                     ("250ms", 250_000), ("2 days", 172_800_000_000)])
def test_durations(text, us):
    assert parse_duration(text) == us


def test_tumble_view_plan():
    p = plan("CREATE MATERIALIZED VIEW v AS SELECT TUMBLE_START(event_time, INTERVAL '1' HOUR) AS h, "
             "TUMBLE_END(event_time, INTERVAL '1' HOUR) AS e, customer_id, SUM(amount) * 2 AS s2, "
             "AVG(qty) AS a FROM orders WHERE ok GROUP BY TUMBLE(event_time, INTERVAL '1' HOUR), customer_id "
             "HAVING COUNT(*) > 1")
    assert (p.window.kind, p.window.size_us) == ("tumble", 3_600_000_000)
    assert p.time_columns == {"h": "start", "e": "end"}
    assert p.identity_columns == ["h", "e", "customer_id"]
    assert p.output_schema.names == ["h", "e", "customer_id", "s2", "a"]


def test_hop_and_tvf_forms():
    p = plan("CREATE MATERIALIZED VIEW v AS SELECT HOP_START(event_time, INTERVAL '10' MINUTE, INTERVAL '1' HOUR)"
             " AS ws, COUNT(*) AS n FROM orders GROUP BY HOP(event_time, INTERVAL '10' MINUTE, INTERVAL '1' HOUR)")
    assert (p.window.kind, p.window.slide_us, p.window.per_event) == ("hop", 600_000_000, 6)
    t = plan("CREATE MATERIALIZED VIEW v AS SELECT window_start, window_end, customer_id, MAX(amount) AS m "
             "FROM TABLE(TUMBLE(TABLE orders, DESCRIPTOR(event_time), INTERVAL '10' MINUTES)) "
             "GROUP BY window_start, window_end, customer_id")
    assert t.window == type(t.window)("tumble", 600_000_000, 600_000_000)
    assert t.time_columns == {"window_start": "start", "window_end": "end"}
    h = plan("CREATE MATERIALIZED VIEW v AS SELECT window_start, COUNT(*) AS n FROM TABLE(HOP(TABLE orders, "
             "DESCRIPTOR(event_time), INTERVAL '5' MINUTE, INTERVAL '15' MINUTE)) GROUP BY window_start, window_end")
    assert (h.window.kind, h.window.per_event) == ("hop", 3)


def _err(sql: str) -> SqlError:
    with pytest.raises(SqlError) as info:
        plan(sql)
    return info.value


def test_unknown_column_is_located_with_hint():
    e = _err("CREATE MATERIALIZED VIEW v AS\nSELECT COUNT(*) AS n\nFROM orders WHERE amont > 0\n"
             "GROUP BY TUMBLE(event_time, INTERVAL '1' HOUR)")
    assert (e.line, e.col) == (3, 19)
    assert "unknown column amont" in e.render() and "columns are:" in e.render()
    assert "^" in e.render()


def test_unknown_stream_bad_interval_unsupported_agg_and_type_mismatch():
    assert "unknown stream nope" in str(_err(
        "CREATE MATERIALIZED VIEW v AS SELECT COUNT(*) FROM nope GROUP BY TUMBLE(ts, INTERVAL '1' HOUR)"))
    e = _err("CREATE MATERIALIZED VIEW v AS SELECT COUNT(*) AS n FROM orders "
             "GROUP BY TUMBLE(event_time, INTERVAL '1' FORTNIGHT)")
    assert "unknown interval unit" in e.message and e.line == 1
    e = _err("CREATE MATERIALIZED VIEW v AS SELECT MEDIAN(amount) AS m FROM orders "
             "GROUP BY TUMBLE(event_time, INTERVAL '1' HOUR)")
    assert "unsupported aggregate" in e.message and "supported aggregates" in e.hint
    e = _err("CREATE MATERIALIZED VIEW v AS SELECT SUM(customer_id) AS s FROM orders "
             "GROUP BY TUMBLE(event_time, INTERVAL '1' HOUR)")
    assert "type error" in e.message
    e = _err("CREATE MATERIALIZED VIEW v AS SELECT customer_id, COUNT(*) AS n FROM orders "
             "GROUP BY TUMBLE(event_time, INTERVAL '1' HOUR)")
    assert "must appear in GROUP BY" in e.message
    running = plan("CREATE MATERIALIZED VIEW v AS SELECT customer_id, COUNT(*) AS n FROM orders GROUP BY customer_id")
    assert running.window.kind == "running" and running.identity_columns == ["customer_id"]
    e = _err("CREATE MATERIALIZED VIEW v AS SELECT COUNT(*) AS n FROM orders")
    assert "needs GROUP BY" in e.message
    e = _err("CREATE MATERIALIZED VIEW v AS SELECT COUNT(*) AS n FROM orders "
             "GROUP BY HOP(event_time, INTERVAL '7' MINUTE, INTERVAL '1' HOUR)")
    assert "whole multiple" in e.message
    e = _err("CREATE MATERIALIZED VIEW v AS SELECT customer_id,\n  FIRST_VALUE(amount) FILTER (WHERE amount > 1) AS f "
             "FROM orders GROUP BY customer_id")
    assert "FILTER is not supported for FIRST_VALUE" in e.message and e.line == 2 and "WHERE" in e.hint


def test_syntax_error_has_line_and_column():
    with pytest.raises(SqlError) as info:
        parse_script("CREATE STREAM s (a BIGINT,\n  ts TIMESTAMP WITH (connector='generator')")
    assert (info.value.line, info.value.col) == (2, 43)
    assert "expected a closing )" in info.value.render()


def test_stream_errors():
    with pytest.raises(SqlError, match="no event-time column"):
        parse_script("CREATE STREAM s (a BIGINT) WITH (connector = 'generator')")
    with pytest.raises(SqlError, match="unsupported column type"):
        parse_script("CREATE STREAM s (a JSONB, ts TIMESTAMP, WATERMARK FOR ts AS ts) WITH (connector='x')")
    with pytest.raises(SqlError, match="must be TIMESTAMP"):
        parse_script("CREATE STREAM s (a BIGINT, WATERMARK FOR a AS a) WITH (connector='generator')")


def test_engine_refuses_changed_view_unless_reset(tmp_path):
    with Engine(tmp_path) as e:
        with pytest.raises(EngineError, match="cannot fill qty, ok"):
            e.execute(STREAM)
        e.execute("CREATE STREAM orders (order_id BIGINT, event_time TIMESTAMP, WATERMARK FOR event_time AS "
                  "event_time) WITH (connector = 'generator', rows = '10')")
        v1 = ("CREATE MATERIALIZED VIEW v AS SELECT COUNT(*) AS n FROM orders "
              "GROUP BY TUMBLE(event_time, INTERVAL '1' HOUR)")
        e.execute(v1)
        assert e.execute(v1) == ["materialized view v exists (unchanged)"]
        v2 = v1.replace("1' HOUR", "2' HOUR")
        with pytest.raises(EngineError, match="--reset v"):
            e.execute(v2)
        assert e.execute(v2, reset=["v"]) == ["created materialized view v"]
        with pytest.raises(EngineError, match="used by v"):
            e.execute("DROP STREAM orders")
        assert isinstance(e.execute("CREATE MATERIALIZED VIEW v2 AS SELECT 1 AS x FROM orders "
                                    "GROUP BY TUMBLE(event_time, INTERVAL '1' HOUR)")[0], str)
        assert set(e.execute("SHOW MATERIALIZED VIEWS")[0].column("name").to_pylist()) == {"v", "v2"}


def test_options_that_do_not_apply_are_refused():
    e = _err("CREATE MATERIALIZED VIEW v WITH (allowed_lateness = '1 minute') AS SELECT customer_id, COUNT(*) AS n "
             "FROM orders GROUP BY SESSION(event_time, INTERVAL '5' MINUTE), customer_id")
    assert "allowed_lateness is not supported for SESSION windows" in e.message
    e = _err("CREATE MATERIALIZED VIEW v WITH (state_ttl = '1 day') AS SELECT COUNT(*) AS n FROM orders "
             "GROUP BY TUMBLE(event_time, INTERVAL '1' HOUR)")
    assert "state_ttl is not supported for TUMBLE windows" in e.message


@pytest.mark.parametrize(("expr", "want"), [
    ("REGEXP_EXTRACT('q=1&channel_id=7x', '(&|^)channel_id=([^&]*)', 2)", "7x"),
    ("REGEXP_EXTRACT('abc', 'b.')", "bc"),  # group 0, the default: the whole match
    ("REGEXP_EXTRACT('abc', 'z(.)', 1)", None),  # no match is NULL
    ("SPLIT_INDEX('https://x.com/a/b', '/', 3)", "a"),  # Flink counts from 0
    ("DATE_FORMAT(TIMESTAMP '2026-03-04 05:06:07', 'yyyy-MM-dd HH:mm:ss')", "2026-03-04 05:06:07"),
    ("TO_CHAR(TIMESTAMP '2026-03-04 05:06:07', 'HH24:MI')", "05:06"),  # PostgreSQL patterns
    ("TO_CHAR(TIMESTAMP '2026-03-04 05:06:07', '%H:%M')", "05:06"),  # and DataFusion's own
])
def test_flink_and_postgres_functions_mean_what_they_say(expr, want):
    import sqlglot
    from datafusion import SessionContext

    from pondstream.sql.dialect import StreamSQL, to_datafusion

    sql = to_datafusion(sqlglot.parse_one(f"SELECT {expr} AS v", read=StreamSQL))
    assert SessionContext().sql(sql).to_pylist() == [{"v": want}]


TOP = ("CREATE MATERIALIZED VIEW v{opts} AS SELECT {outer} FROM (SELECT *, {rank}() OVER ({over}) AS rn "
       "FROM {src}) WHERE {where}")
TOP_OK = dict(rank="ROW_NUMBER", opts="", outer="*", over="PARTITION BY customer_id ORDER BY amount DESC", src="orders",
              where="rn <= 3")
TVF = "TUMBLE(TABLE orders, DESCRIPTOR(event_time), INTERVAL '1' HOUR)"


@pytest.mark.parametrize(("change", "words"), [
    ({}, None),
    ({"where": "rn < 4"}, None), ({"where": "3 >= rn"}, None), ({"where": "rn = 1"}, None),
    ({"src": TVF, "over": "PARTITION BY window_start, window_end ORDER BY amount"}, None),
    ({"outer": "customer_id, amount AS a, rn"}, None),
    ({"where": "rn = 2"}, "keeps only the 2th row"),
    ({"where": "rn <= 3 AND amount > 0"}, "needs WHERE rn <= N, and only that"),
    ({"where": "rn <= 0"}, "1 to 10000"),
    ({"over": "PARTITION BY customer_id"}, "needs ORDER BY"),
    ({"over": "ORDER BY amount"}, "needs PARTITION BY keys"),
    ({"src": TVF, "over": "PARTITION BY customer_id ORDER BY amount"}, "partitions by window_start, window_end"),
    ({"outer": "customer, rn"}, "unknown column customer"),
    ({"over": "PARTITION BY custmer_id ORDER BY amount"}, "unknown column custmer_id"),
    ({"opts": " WITH (state_ttl = '1 hour')"}, "state_ttl is not supported for Top-N"),
    ({"over": "PARTITION BY customer_id ORDER BY amount DESC", "outer": "*"}, None),
    ({"src": TVF, "over": "PARTITION BY window_start, window_end ORDER BY amount"}, None),
    ({"src": TVF, "over": "PARTITION BY window_start, window_end ORDER BY amount",
      "opts": " WITH (allowed_lateness = '1 hour')"}, None),
    ({"rank": "RANK", "src": TVF, "over": "PARTITION BY window_start, window_end ORDER BY amount"}, None),
    ({"rank": "RANK"}, "RANK() and DENSE_RANK() are supported in window Top-N"),
    ({"rank": "DENSE_RANK", "src": TVF, "over": "PARTITION BY window_start, window_end ORDER BY amount"}, None),
    ({"rank": "RANK", "src": TVF, "over": "PARTITION BY window_start, window_end ORDER BY amount",
      "opts": " WITH (allowed_lateness = '1 hour')"}, "allowed_lateness is not supported with RANK()"),
    ({"rank": "NTILE"}, "only ROW_NUMBER(), RANK() or DENSE_RANK()"),
])
def test_top_n_views_plan_or_say_what_to_write(change, words):
    sql = TOP.format(**{**TOP_OK, **change})
    if words is None:
        p = plan(sql)
        assert p.top is not None and p.output_schema.names
        return
    e = _err(sql)
    assert words in e.message and e.hint and e.line == 1
