"""Names, durations, options, limits and stored statement text: what CREATE accepts, and how it refuses the rest.

Cases are generated from the rules themselves (the option table, the name rule, interval units), so a
rule and its check cannot drift apart silently.
"""

from __future__ import annotations

import itertools
import random
import re

import pytest

from pondstream.engine import Engine, EngineError
from pondstream.engine.catalog import Catalog
from pondstream.sql import CreateStream, CreateView, SqlError, check_limits, parse_script
from pondstream.sql.dialect import StreamSQL
from pondstream.sql.intervals import MAX_US
from pondstream.sql.names import MAX_LEN, check_name
from pondstream.sql.options import CONNECTORS, STREAM, VIEW
from pondstream.sql.planner import plan_view

COLS = "order_id BIGINT, customer_id VARCHAR, amount DOUBLE, event_time TIMESTAMP"
WM = "WATERMARK FOR event_time AS event_time - INTERVAL '5' SECOND"
GEN = f"CREATE STREAM orders ({COLS}, {WM}) WITH (connector = 'generator', rows = '100'{{opts}})"
HOURLY = ("CREATE MATERIALIZED VIEW hourly{with_} AS SELECT {start} AS hour, "
          "customer_id, COUNT(*) AS n FROM orders GROUP BY {window}, customer_id")
INTERNALS = re.compile(r"TokenType|SENTINEL|<class|<Token|sqlglot|Traceback")


def refused(sql: str) -> SqlError:
    with pytest.raises(SqlError) as info:
        stmts = parse_script(sql)
        streams = {s.name: s for s in stmts if isinstance(s, CreateStream)}
        for v in (s for s in stmts if isinstance(s, CreateView)):
            plan_view(v, streams or gen_streams())
    assert not INTERNALS.search(info.value.render()), info.value.render()
    return info.value


def gen_streams() -> dict[str, CreateStream]:
    (s,) = parse_script(GEN.format(opts=""))
    return {"orders": s}


def view(window: str = "TUMBLE(event_time, INTERVAL '1' HOUR)", with_: str = "") -> str:
    return HOURLY.format(window=window, with_=with_, start=re.sub(r"^(\w+)\(", r"\1_START(", window))


# -- names ---------------------------------------------------------------------------------------------
def _names(n: int) -> list[str]:
    """Random candidate names, good and bad: letters, digits, _, and hostile characters."""
    rng = random.Random(3)
    alphabet = "abcXYZ019_" * 4 + " .-/\\\x00\té'\"$"
    out = ["", ".", "..", "a" * MAX_LEN, "a" * (MAX_LEN + 1), "_x", "__x", "x__errors", "x__late", "X__LATE",
           "orders", "Orders", "a1", "1a", "é", "a b", "a/b", "ok_name_2"]
    out += ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 12))) for _ in range(n)]
    return out


@pytest.mark.parametrize("name", _names(150))
def test_one_name_rule_for_api_and_sql(name):
    good = (re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) is not None and len(name) <= MAX_LEN
            and not name.startswith("_") and not name.lower().endswith(("__errors", "__late")))
    if good:
        assert check_name(name, "stream") == name
    else:
        with pytest.raises(SqlError):
            check_name(name, "stream")
    if '"' in name or "\x00" in name:
        return
    sql = GEN.format(opts="").replace("orders", f'"{name}"', 1)  # quoted: kept exactly, same rule
    if good:
        assert parse_script(sql)[0].name == name
    else:
        e = refused(sql)
        assert e.line == 1 and ("not allowed" in e.message or "reserved" in e.message or "syntax" in e.message)


@pytest.mark.parametrize("written,stored", [("Orders", "orders"), ("ORDERS", "orders"), ('"Orders"', "Orders"),
                                            ('"orders"', "orders")])
def test_unquoted_names_fold_to_lower_case_quoted_are_exact(written, stored):
    (s,) = parse_script(GEN.format(opts="").replace("orders", written, 1))
    assert s.name == stored
    (d,) = parse_script(f"DROP STREAM {written}")
    assert d.name == stored


def test_folded_names_work_end_to_end_and_columns_fold_too(tmp_path):
    with Engine(tmp_path) as e:
        e.execute(f"CREATE STREAM Orders (ORDER_ID BIGINT, Customer_Id VARCHAR, event_time TIMESTAMP, {WM}) "
                  "WITH (connector = 'generator', rows = '10')")
        e.execute("CREATE MATERIALIZED VIEW V AS SELECT customer_id, COUNT(*) AS N FROM orders GROUP BY CUSTOMER_ID")
        cat = Catalog.load(tmp_path)
        assert list(cat.streams) == ["orders"] and list(cat.views) == ["v"]
        assert cat.streams["orders"].stmt.schema.names == ["order_id", "customer_id", "event_time"]
        assert cat.views["v"].plan.output_schema.names == ["customer_id", "n"]


@pytest.mark.parametrize("alias", ["_k", "_version", "_window_start", "_key0", "_watermark", '"_x"'])
def test_user_output_columns_may_not_look_internal(alias):
    e = refused(view().replace("AS n", f"AS {alias}"))
    assert "reserved" in e.message and e.line == 1 and e.col > 1


def test_planner_hidden_columns_remain():
    p = plan_view(parse_script("CREATE MATERIALIZED VIEW v AS SELECT COUNT(*) AS n FROM orders "
                               "GROUP BY TUMBLE(event_time, INTERVAL '1' HOUR)")[0], gen_streams())
    assert p.output_schema.names == ["n", "_window_start"]


# -- durations -----------------------------------------------------------------------------------------
UNITS = {"second": 1_000_000, "minutes": 60_000_000, "HOUR": 3_600_000_000, "days": 86_400_000_000, "ms": 1000}
AMOUNTS = ["0", "-1", "1", "0.5", "36500", "36501", "99999999999999999999", "1000000"]


@pytest.mark.parametrize("amount,unit", list(itertools.product(AMOUNTS, UNITS)))
def test_window_sizes_are_positive_and_bounded_however_written(amount, unit):
    us = float(amount) * UNITS[unit]
    for window in (f"TUMBLE(event_time, INTERVAL '{amount}' {unit})", f"TUMBLE(event_time, '{amount} {unit}')"):
        if 0 < us <= MAX_US:
            plan = plan_view(parse_script(view(window))[0], gen_streams())
            assert plan.window.size_us == round(us)
        else:
            e = refused(view(window))
            assert e.line == 1 and ("positive" in e.message or "too long" in e.message)


@pytest.mark.parametrize("slide,size,ok", [("1 minute", "1 hour", True), ("0 seconds", "1 hour", False),
                                           ("7 minutes", "1 hour", False), ("1 second", "1 day", False),
                                           ("1 minute", "1000 minutes", True), ("1 minute", "1001 minutes", False)])
def test_hop_and_cumulate_size_is_a_bounded_multiple_of_slide(slide, size, ok):
    windows = [f"HOP(event_time, '{slide}', '{size}')"]
    tvf = (f"CREATE MATERIALIZED VIEW c AS SELECT window_start, window_end, COUNT(*) AS n FROM TABLE(CUMULATE("
           f"TABLE orders, DESCRIPTOR(event_time), '{slide}', '{size}')) GROUP BY window_start, window_end")
    for sql in [view(w) for w in windows] + [tvf]:
        if ok:
            plan_view(parse_script(sql)[0], gen_streams())
        else:
            assert refused(sql).line == 1


@pytest.mark.parametrize("clause,ok", [("EMIT EVERY INTERVAL '10' SECOND", True), ("EMIT ON WINDOW CLOSE", True),
                                       ("EMIT EVERY INTERVAL '0' SECOND", False),
                                       ("EMIT EVERY INTERVAL '-1' SECOND", False),
                                       ("EMIT EVERY INTERVAL '99999999999' DAY", False),
                                       ("EMIT EVERY 10", False), ("EMIT EVERY", False)])
def test_emit_clauses(clause, ok):
    sql = f"{view()}\n  {clause};"
    if ok:
        (v,) = parse_script(sql)
        assert v.sql.endswith(clause)  # the stored text keeps the clause
        assert parse_script(v.sql)[0].options == v.options
    else:
        e = refused(sql)
        assert e.line == 2 and e.col >= 3


@pytest.mark.parametrize("delay,ok", [("'0 seconds'", True), ("'5 seconds'", True), ("'-5 seconds'", False),
                                      ("'1000000 days'", False), ("'5 fortnights'", False), ("''", False)])
def test_watermark_delay_may_be_zero_never_negative(delay, ok):
    sql = (f"CREATE STREAM o ({COLS}) WITH (connector = 'generator', timestamp_field = 'event_time', "
           f"watermark_delay = {delay})")
    if ok:
        assert parse_script(sql)[0].watermark_delay_us >= 0
    else:
        assert "watermark_delay" in refused(sql).message
    clause = f"CREATE STREAM o ({COLS}, WATERMARK FOR event_time AS event_time - INTERVAL {delay} SECOND) " \
             "WITH (connector = 'generator')"
    if delay in ("'0 seconds'", "'5 seconds'"):
        return
    assert refused(clause).line == 1


# -- options -------------------------------------------------------------------------------------------
GOOD = {"connector": None, "timestamp_field": None, "watermark_delay": "'1 second'", "idle_timeout": "'10 seconds'",
        "path": "'x.jsonl'", "format": None, "batch_bytes": "'1024'", "event_time_min": "'2000-01-01'",
        "event_time_max": "'2100-01-01'", "rows": "'5'", "rate": "'10.5'", "keys": "'3'", "seed": "'1'",
        "out_of_orderness": "'1 second'", "step": "'1 second'", "start": "'2026-01-01 00:00:00'",
        "batch_size": "'100'", "topic": "'t'", "bootstrap_servers": "'localhost:9092'", "scan_startup": "'latest'",
        "scan_startup_timestamp": "'1700000000000'", "scan_bounded": "'latest'", "group_id": "'g'",
        "table": "'bid'", "events": "'100'", "out_of_order_group": "'2'", "first_event_rate": "'1000'"}
BAD = ["'0'", "'-1'", "''", "'abc'", "'1e400'", "'99999999999999999999999'", "'1 month'", "'2026-13-45'"]
STREAM_OPTIONS = [(c, k) for c, opts in CONNECTORS.items() for k in opts]


def stream_sql(connector: str, extra: str) -> str:
    base = {"file": "path = 'x.jsonl'", "generator": "rows = '10'", "nexmark": "table = 'bid'",
            "kafka": "topic = 't', bootstrap_servers = 'localhost:9092'"}[connector]
    return f"CREATE STREAM o ({COLS}, {WM}) WITH (connector = '{connector}', {base}{extra})"


def _with(sql: str, key: str, value: str) -> str:
    """Set one option (replacing it if the base statement already has it)."""
    sql = re.sub(rf", {key} = '[^']*'", "", sql)
    return sql[:-1] + f", {key} = {value})"


@pytest.mark.parametrize("connector,key", STREAM_OPTIONS)
def test_every_known_option_accepts_a_good_value_and_bad_values_name_it(connector, key):
    good = GOOD.get(key) or ("'jsonl'" if connector == "file" else "'json'")
    assert key in parse_script(_with(stream_sql(connector, ""), key, good))[0].options
    for bad in BAD:
        sql = _with(stream_sql(connector, ""), key, bad)
        try:
            parse_script(sql)  # a few validators accept some of these (any text is a path)
        except SqlError as e:
            assert key in e.message and e.line == 1 and not INTERNALS.search(e.render())


@pytest.mark.parametrize("connector,key", STREAM_OPTIONS + [(None, k) for k in [*STREAM, *VIEW]])
def test_misspelled_options_are_refused_with_did_you_mean(connector, key):
    typo = key[:-1] if len(key) > 4 else key + "x"
    if connector is None and key in VIEW:
        e = refused(view(with_=f" WITH ({typo} = '1')"))
        assert "materialized view" in e.message
    else:
        e = refused(stream_sql(connector or "generator", f", {typo} = '1'"))
    assert f"unknown option {typo}" in e.message and f"did you mean {key}" in e.hint, e.render()


def test_options_of_another_connector_are_refused():
    for connector, other in itertools.permutations(CONNECTORS, 2):
        for key in set(CONNECTORS[other]) - set(CONNECTORS[connector]):
            assert f"unknown option {key}" in refused(stream_sql(connector, f", {key} = '1'")).message


@pytest.mark.parametrize("extra,words", [
    (", event_time_min = '2100-01-01', event_time_max = '2000-01-01'", "before event_time_max"),
    (", scan_startup = 'timestamp'", "needs scan_startup_timestamp"),
    (", connector = 'view'", "connector: must be one of"),
])
def test_options_that_contradict_each_other(extra, words):
    connector = "kafka" if "scan_startup" in extra else "file" if "event_time" in extra else "generator"
    assert words in refused(stream_sql(connector, extra)).message


def test_generator_event_times_must_stay_readable():
    assert "year 9999" in refused(GEN.format(opts=", step = '36500 days'")).message


def test_connector_is_checked_and_required_options_named():
    assert "connector: must be one of file, generator, kafka" in refused(
        f"CREATE STREAM o ({COLS}, {WM}) WITH (connector = 'view')").message
    assert "needs path" in refused(f"CREATE STREAM o ({COLS}, {WM}) WITH (connector = 'file')").message
    assert "needs topic, bootstrap_servers" in refused(f"CREATE STREAM o ({COLS}, {WM}) WITH (connector = 'kafka')").message


def test_batch_bytes_zero_no_longer_skips_the_input(tmp_path):
    (tmp_path / "o.jsonl").write_text('{"order_id": 1, "event_time": "2026-01-01 00:00:00"}\n')
    with Engine(tmp_path / "state") as e, pytest.raises(SqlError, match="batch_bytes"):
        e.execute(stream_sql("file", "").replace("x.jsonl", "o.jsonl")[:-1] + ", batch_bytes = '0')",
                  base_dir=str(tmp_path))


@pytest.mark.parametrize("opts,ok", [("allowed_lateness = '0 seconds'", True), ("allowed_lateness = '-1 minute'", False),
                                     ("state_ttl = '0 days'", False), ("state_ttl = '7 days'", True),
                                     ("sink_topic = ''", False), ("'sink_properties.acks' = 'all'", False),
                                     ("sink_topic = 't'", False),  # a generator stream has no broker to default to
                                     ("sink_topic = 't', sink_bootstrap_servers = 'h:9092', "
                                      "'sink_properties.acks' = 'all'", True),
                                     ("'sink_properties.' = 'x'", False)])
def test_view_options(opts, ok):
    sql = view(with_=f" WITH ({opts})")
    if "state_ttl" in opts:
        sql = (f"CREATE MATERIALIZED VIEW t WITH ({opts}) AS SELECT customer_id, COUNT(*) AS n FROM orders "
               "GROUP BY customer_id")
    if ok:
        plan_view(parse_script(sql)[0], gen_streams())
    else:
        assert refused(sql).line == 1


# -- stored text, syntax errors, limits ----------------------------------------------------------------
SCRIPT = f"""-- a pipeline
CREATE STREAM orders ({COLS},
    {WM})   -- the source
WITH (connector = 'generator', rows = '100');

CREATE MATERIALIZED VIEW hourly WITH (allowed_lateness = '1 minute') AS
SELECT TUMBLE_START(event_time, INTERVAL '1' HOUR) AS hour, COUNT(*) AS n
FROM orders   /* no filter */
GROUP BY TUMBLE(event_time, INTERVAL '1' HOUR)
EMIT EVERY INTERVAL '1' SECOND ;
SHOW STREAMS;; DESCRIBE hourly
"""


def test_statements_keep_their_exact_source_text(tmp_path):
    stmts = parse_script(SCRIPT)
    assert [s.sql for s in stmts] == [part.strip() for part in re.split(r";", SCRIPT.split("\n", 1)[1]) if part.strip()]
    for s in stmts:
        (again,) = parse_script(s.sql)
        assert again.sql == s.sql and again.same_definition(s) and type(again) is type(s)
    with Engine(tmp_path) as e:
        e.execute(SCRIPT)
        cat = Catalog.load(tmp_path)
        assert cat.views["hourly"].stmt.sql == stmts[1].sql
        assert e.execute(SCRIPT)[:2] == ["stream orders exists (unchanged)",
                                         "materialized view hourly exists (unchanged)"]
    reindented = parse_script(SCRIPT.replace("\n", "\n  ").replace("SELECT", "select"))
    assert [a.same_definition(b) for a, b in zip(stmts, reindented, strict=True)] == [True] * len(stmts)


def _prefixes(sql: str) -> list[str]:
    tokens = StreamSQL().tokenize(sql)
    return [sql[:t.end + 1] for t in tokens]


@pytest.mark.parametrize("cut", _prefixes(GEN.format(opts="") + ";\n" + view()))
def test_every_truncation_is_accepted_or_a_located_syntax_error(cut):
    try:
        parse_script(cut)
    except SqlError as e:
        assert e.line is not None and e.col is not None, e.render()
        assert not INTERNALS.search(e.render()), e.render()
        assert "unsupported statement" not in e.message


@pytest.mark.parametrize("sql,words", [
    ("SELECT " + "(" * 200 + "1" + ")" * 200, "nested more than 30"),
    ("SELECT " + " + ".join(["1"] * 5000), "expression too large"),
    ("SELECT " + "NOT " * 3000 + "TRUE", "nested too deeply"),
    ("SELECT " + "CASE WHEN TRUE THEN " * 300 + "1" + " END" * 300, "nested too deeply"),
    ("SELECT '" + "x" * (1 << 20) + "'", "larger than 1 MB"),
    ("DROP STREAM", "syntax error"),
    ("DESCRIBE", "syntax error"),
    ("CREAT STREAM s (a INT)", "syntax error"),
    ("CREATE STREAM s (a BIGINT) WITH INTERVAL '0' SECOND", "syntax error"),
    ("CREATE MATERIALIZED VIEW v AS", "must be defined by a SELECT"),
    ("CREATE STREAM x.y (a INT)", "plain stream name"),
    ("CREATE STREAM s (a, ts TIMESTAMP, WATERMARK FOR ts AS ts) WITH (connector = 'generator')", "column list"),
    ("CREATE STREAM s (a DECIMAL(a, b), ts TIMESTAMP, WATERMARK FOR ts AS ts) WITH (connector = 'generator')",
     "cannot read DECIMAL"),
    ('CREATE STREAM s (a INT) WITH ("" = 1)', "syntax error"),
    ("SELECT 1 EMIT ON WINDOW CLOSE", "applies only to CREATE MATERIALIZED VIEW"),
    ("SELECT 1; EMIT ON WINDOW CLOSE", "syntax error"),
    ("EMIT EVERY INTERVAL '1' SECOND", "syntax error"),
])
def test_limits_and_syntax_errors_are_sql_errors(sql, words):
    e = refused(sql)
    assert words in e.message, e.render()
    assert e.line is not None or "MB" in e.message


@pytest.mark.parametrize("start,ok", [("TUMBLE_START(event_time, INTERVAL '1' HOUR)", True),
                                      ("TUMBLE_START(event_time, '60 minutes')", True),
                                      ("TUMBLE_START(event_time, INTERVAL '2' HOUR)", False),
                                      ("TUMBLE_START(event_time)", False), ("TUMBLE_START(amount, INTERVAL '1' HOUR)", False),
                                      ("HOP_START(event_time, INTERVAL '1' HOUR, INTERVAL '1' HOUR)", False)])
def test_window_bound_functions_must_repeat_the_group_by_window(start, ok):
    sql = view().replace("TUMBLE_START(event_time, INTERVAL '1' HOUR)", start)
    if ok:
        plan_view(parse_script(sql)[0], gen_streams())
    else:
        assert refused(sql).line == 1


def test_tvf_without_descriptor_column_is_located():
    e = refused("CREATE MATERIALIZED VIEW v AS SELECT window_start, COUNT(*) AS n FROM TABLE(TUMBLE(TABLE orders, "
                "DESCRIPTOR(), INTERVAL '1' HOUR)) GROUP BY window_start, window_end")
    assert "event-time column" in e.message and e.line == 1


def test_engine_refuses_reserved_and_hostile_names(tmp_path):
    with Engine(tmp_path) as e:
        for name in ("orders__errors", '"../x"', "_hidden", '"a b"'):
            with pytest.raises((SqlError, EngineError)):
                e.execute(GEN.format(opts="").replace("orders", name, 1))
        assert not (tmp_path / "catalog.json").exists() or not Catalog.load(tmp_path).streams


@pytest.mark.parametrize("sql,ok", [("EXPLAIN SELECT * FROM v", True), ("SELECT " + "(" * 31 + "1" + ")" * 31, False),
                                    ("SELECT INTERVAL '" + "9" * 5000 + "'", False), ("x" * (1 << 20 | 1), False)])
def test_check_limits_bounds_text_that_is_not_parsed_here(sql, ok):
    if ok:
        check_limits(sql)
    else:
        with pytest.raises(SqlError):
            check_limits(sql)
