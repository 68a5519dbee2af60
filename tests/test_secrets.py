"""Secrets stay out of SQL text and state: secret-like options must be `${NAME}` references, resolved from
the environment when the pipeline runs; no file under the state dir and no status output holds the value."""

from __future__ import annotations

import subprocess

import pytest

from pondstream.engine import Engine, EngineError
from pondstream.sql import SqlError, parse_script
from pondstream.sql.secrets import resolve

from conftest import HOURLY, PYTHON, make_orders
from kafka_helpers import kafka_stream, produce_rows

SECRET = "s3cr3t-Value-that-must-not-leak"
STREAM = ("CREATE STREAM k (a BIGINT, ts TIMESTAMP, WATERMARK FOR ts AS ts) WITH (connector = 'kafka', "
          "topic = 't', bootstrap_servers = 'localhost:9092', {key} = {value})")


@pytest.mark.parametrize("key", ["properties.sasl.password", "properties.ssl.key.password",
                                 "properties.sasl.oauthbearer.client.secret",
                                 "properties.schema.registry.basic.auth.user.info"])
def test_a_literal_secret_is_refused_with_the_reference_form(key):
    with pytest.raises(SqlError) as info:
        parse_script(STREAM.format(key=key, value="'hunter2'"))
    assert "holds a secret" in info.value.message and "= '${" in info.value.message and info.value.line == 1
    (s,) = parse_script(STREAM.format(key=key, value="'${KAFKA_SECRET}'"))
    assert s.options[key] == "${KAFKA_SECRET}"  # stored as written


def test_a_literal_secret_in_a_sink_is_refused_too():
    (s,) = parse_script(STREAM.format(key="properties.client.id", value="'me'"))
    with pytest.raises(SqlError, match="sink_properties.sasl.password holds a secret"):
        parse_script("CREATE MATERIALIZED VIEW v WITH (sink_topic = 'o', sink_bootstrap_servers = 'h:9092', "
                     "sink_properties.sasl.password = 'hunter2') AS SELECT a FROM k")


def test_references_resolve_from_the_environment_or_name_what_is_missing(monkeypatch):
    monkeypatch.setenv("PONDSTREAM_TEST_SECRET", SECRET)
    assert resolve("properties.sasl.password", "${PONDSTREAM_TEST_SECRET}") == SECRET
    assert resolve("topic", "orders") == "orders"
    monkeypatch.delenv("PONDSTREAM_TEST_SECRET")
    with pytest.raises(ValueError, match="needs the environment variable PONDSTREAM_TEST_SECRET"):
        resolve("properties.sasl.password", "${PONDSTREAM_TEST_SECRET}")


def test_a_run_with_a_secret_leaves_no_trace_of_it(broker, tmp_path, monkeypatch):
    _, bs = broker
    rows = make_orders(300, seed=3)
    produce_rows(bs, "secrets", rows)
    sql = kafka_stream(bs, "secrets", ", scan_bounded = 'latest', properties.sasl.password = "
                                      "'${PONDSTREAM_TEST_SECRET}'") + HOURLY
    (tmp_path / "p.sql").write_text(sql)
    with Engine(tmp_path / "missing") as e, pytest.raises(EngineError, match="PONDSTREAM_TEST_SECRET"):
        e.execute(sql)  # the variable is not set: an error naming it, nothing stored
    monkeypatch.setenv("PONDSTREAM_TEST_SECRET", SECRET)
    run = subprocess.run([PYTHON, "-m", "pondstream.engine.cli", "run", str(tmp_path / "p.sql"), "--state-dir",
                          str(tmp_path / "s")], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    status = subprocess.run([PYTHON, "-m", "pondstream.engine.cli", "status", "--state-dir", str(tmp_path / "s")],
                            capture_output=True, text=True, timeout=60)
    assert status.returncode == 0 and "hourly_sales" in status.stdout
    with Engine(tmp_path / "s") as e:
        n = e.query("SELECT SUM(orders) AS n FROM hourly_sales").column("n")[0].as_py()
    assert n == sum(1 for r in rows if r["amount"] > 0)  # the view's WHERE amount > 0
    files = [p for p in (tmp_path / "s").rglob("*") if p.is_file()]
    assert files and not [p for p in files if SECRET.encode() in p.read_bytes()]
    assert "${PONDSTREAM_TEST_SECRET}" in (tmp_path / "s" / "catalog.json").read_text()
    for text in (run.stdout, run.stderr, status.stdout, status.stderr):
        assert SECRET not in text
