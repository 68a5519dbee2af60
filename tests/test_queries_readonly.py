"""Queries only read: DataFusion plans them with DDL, DML and statements refused, and `cat`'s time range
is parsed as timestamps and bound as values, never spliced into SQL text."""

from __future__ import annotations

import pytest

from pondstream.engine import Engine, EngineError
from pondstream.engine.cli import main

from conftest import canon

VIEW = """CREATE STREAM orders (order_id BIGINT, customer_id VARCHAR, amount DOUBLE, event_time TIMESTAMP,
    WATERMARK FOR event_time AS event_time - INTERVAL '5' SECOND)
    WITH (connector = 'generator', rows = '2000', keys = '50');
CREATE MATERIALIZED VIEW base AS SELECT TUMBLE_START(event_time, INTERVAL '10' MINUTE) AS w,
    customer_id, COUNT(*) AS n FROM orders GROUP BY TUMBLE(event_time, INTERVAL '10' MINUTE), customer_id;
"""


@pytest.fixture
def guarded(tmp_path):
    """A state dir with one view, run to the end: (engine, state dir, the view's rows)."""
    state = tmp_path / "state"
    e = Engine(state)
    e.execute(VIEW)
    e.run(checkpoint_interval=0)
    yield e, state, canon(e.query("SELECT * FROM base"))
    e.close()


@pytest.mark.parametrize("sql", [
    "COPY (SELECT * FROM base) TO '{out}'",
    "COPY base TO '{out}'",
    "EXPLAIN ANALYZE COPY (SELECT 1) TO '{out}'",
    "CREATE EXTERNAL TABLE t STORED AS CSV LOCATION '{out}'",
    "INSERT INTO base SELECT * FROM base",
    "SET datafusion.execution.batch_size = 1",
    "CREATE VIEW v AS SELECT 1",
    "DROP VIEW base",
    "PREPARE p AS SELECT 1",
])
def test_queries_cannot_write_or_change_settings(guarded, tmp_path, sql):
    e, state, base = guarded
    out = tmp_path / "out.csv"
    for run in (e.query, lambda s: e.query(s, as_of_version=1)):
        with pytest.raises(EngineError, match="queries are read-only"):
            run(sql.format(out=out))
    assert not out.exists()
    assert canon(e.query("SELECT * FROM base")) == base


def test_select_and_explain_still_work(guarded):
    e, state, base = guarded
    assert e.query("SELECT COUNT(*) AS c FROM base").column("c")[0].as_py() == len(base)
    assert "DatasetExec" in str(e.query("EXPLAIN SELECT * FROM base").to_pylist())
    assert e.query("WITH x AS (SELECT * FROM base) SELECT COUNT(*) AS c FROM x").column("c")[0].as_py() == len(base)


def test_a_second_statement_cannot_ride_along(guarded, tmp_path):
    e, state, base = guarded
    out = tmp_path / "out.csv"
    with pytest.raises(EngineError, match="one statement at a time"):
        e.query(f"SELECT 1; COPY (SELECT 1) TO '{out}'")
    assert not out.exists()


def test_paths_are_not_tables(guarded):
    e, state, base = guarded
    for sql in ("SELECT * FROM '/etc/hostname'", f"SELECT * FROM '{state}/catalog.json'"):
        with pytest.raises(EngineError, match="query failed: .*not found"):
            e.query(sql)


def test_cli_query_copy_writes_nothing(guarded, tmp_path, capsys):
    e, state, base = guarded
    out = tmp_path / "leak.csv"
    assert main(["query", f"COPY (SELECT * FROM base) TO '{out}'", "--state-dir", str(state)]) == 1
    assert "queries are read-only" in capsys.readouterr().err and not out.exists()


# -- cat's time range is parsed, then bound as a value ----------------------------------------------

def test_cat_time_range_is_a_value_not_text(guarded, capsys):
    e, state, base = guarded
    got = e.cat("base", "2026-01-01 00:00:00", "2026-01-01T00:10")
    assert canon(got) == base and {r["w"].isoformat(sep=" ") for r in got.to_pylist()} == {"2026-01-01 00:00:00"}
    for bad in ["2026-01-01' OR 1=1 --", "yesterday", "", "2026-13-01", "0') UNION SELECT 1 --"]:
        for kwargs, option in (({"time_start": bad}, "--time-start"), ({"time_end": bad}, "--time-end")):
            with pytest.raises(EngineError, match=f"{option} .* is not a timestamp"):
                e.cat("base", **kwargs)
    assert main(["cat", "base", "--time-end", "x' OR '1'='1", "--state-dir", str(state)]) == 1
    err = capsys.readouterr().err
    assert "--time-end" in err and "is not a timestamp" in err and "Traceback" not in err
