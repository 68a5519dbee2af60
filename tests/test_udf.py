"""Python scalar functions in SQL (CREATE FUNCTION ... LANGUAGE PYTHON): in SELECT, WHERE, GROUP BY keys and
inside aggregates against DuckDB computing the same expressions, at two batch sizes; exactly the rows a
function fails on go to <stream>__errors; import failures, wrong results, DROP and the Python API."""

from __future__ import annotations

from pathlib import Path

import pytest

from pondstream.engine import Engine, EngineError

from conftest import canon, duck, make_orders, orders_stream, write_jsonl

EXAMPLE = Path(__file__).parent.parent / "examples" / "udf" / "functions.py"
FUNCS = Path(__file__).parent / "udf_funcs.py"
CREATE = f"""
CREATE FUNCTION discount(amount DOUBLE, customer VARCHAR) RETURNS DOUBLE LANGUAGE PYTHON AS '{EXAMPLE}:discount';
CREATE FUNCTION size_band(amount DOUBLE) RETURNS VARCHAR LANGUAGE PYTHON AS '{EXAMPLE}:size_band';
"""
VIEW = """
CREATE MATERIALIZED VIEW net AS
SELECT TUMBLE_START(event_time, INTERVAL '1' HOUR) AS hour, size_band(amount) AS band, COUNT(*) AS n,
       SUM(discount(amount, customer_id)) AS net, MAX(discount(amount, customer_id)) AS top
FROM orders WHERE discount(amount, customer_id) > 20
GROUP BY TUMBLE(event_time, INTERVAL '1' HOUR), size_band(amount);
"""
DISCOUNT = "CASE WHEN customer_id LIKE '%7' THEN amount * 0.9 ELSE amount END"
BAND = "CASE WHEN amount < 50 THEN 'small' WHEN amount < 150 THEN 'medium' ELSE 'large' END"


@pytest.mark.parametrize("batch_bytes", [3000, 1 << 20])
def test_functions_in_select_where_group_keys_and_aggregates_equal_duckdb(tmp_path, batch_bytes):
    rows = make_orders(5000, seed=17, step_s=3.0, keys=20)
    write_jsonl(tmp_path / "o.jsonl", rows)
    with Engine(tmp_path / "s") as e:
        e.execute(CREATE + orders_stream(tmp_path / "o.jsonl", extra=f", batch_bytes = '{batch_bytes}'") + VIEW,
                  base_dir=str(tmp_path))
        e.run(checkpoint_interval=0.0)
        got = canon(e.query("SELECT * FROM net"))
    want = canon(duck(f"""SELECT time_bucket(INTERVAL '1 hour', event_time), {BAND}, COUNT(*), SUM({DISCOUNT}),
                          MAX({DISCOUNT}) FROM orders WHERE {DISCOUNT} > 20 GROUP BY 1, 2""", rows))
    assert got == want and len(got) > 10
    with Engine(tmp_path / "s") as e:  # a new engine on the state dir loads the functions from the catalog
        assert e.query("SELECT discount(100.0, 'c7') AS d, size_band(10.0) AS b").to_pylist() == [
            {"d": 90.0, "b": "small"}]
        shown = e.execute("SHOW FUNCTIONS")[0].to_pylist()
        assert [f["name"] for f in shown] == ["discount", "size_band"] and len(shown[0]["source_hash"]) == 12
        assert set(e.status()["functions"]) == {"discount", "size_band"}


def test_a_function_that_raises_sends_exactly_those_rows_to_the_errors(tmp_path):
    rows = make_orders(3000, seed=5)
    write_jsonl(tmp_path / "o.jsonl", rows)
    with Engine(tmp_path / "s") as e:
        e.execute(f"CREATE FUNCTION fragile(x BIGINT) RETURNS BIGINT LANGUAGE PYTHON AS '{FUNCS}:fragile';"
                  + orders_stream(tmp_path / "o.jsonl", extra=", batch_bytes = '20000'")
                  + "CREATE MATERIALIZED VIEW f AS SELECT order_id, fragile(order_id) AS twice FROM orders;")
        e.run()
        got = e.query("SELECT order_id, twice FROM f").to_pylist()
        errors = e.query("SELECT reason, error FROM orders__errors").to_pylist()
    cursed = [r for r in rows if r["order_id"] % 97 == 0]
    assert sorted(g["order_id"] for g in got) == sorted(r["order_id"] for r in rows if r["order_id"] % 97)
    assert all(g["twice"] == 2 * g["order_id"] for g in got)
    assert len(errors) == len(cursed) > 20
    assert {r["reason"] for r in errors} == {"expression error"}
    assert {r["error"] for r in errors} == {"expression error in view f: function fragile raised ValueError: "
                                            "order ids divisible by 97 are cursed"}


@pytest.mark.parametrize(("fn", "words"), [
    ("short", "function short returned 1 values for"),
    ("wrong_type", "function wrong_type returned string, but it RETURNS double"),
])
def test_a_function_returning_the_wrong_shape_is_an_error_naming_it(tmp_path, fn, words):
    rows = make_orders(500, seed=2)
    write_jsonl(tmp_path / "o.jsonl", rows)
    with Engine(tmp_path / "s") as e:
        e.execute(f"CREATE FUNCTION {fn}(x DOUBLE) RETURNS DOUBLE LANGUAGE PYTHON AS '{FUNCS}:{fn}';"
                  + orders_stream(tmp_path / "o.jsonl")
                  + f"CREATE MATERIALIZED VIEW v AS SELECT order_id, {fn}(amount) AS y FROM orders;")
        e.run()
        assert e.query("SELECT COUNT(*) AS n FROM v").column("n")[0].as_py() == 0  # no wrong values written
        errors = e.query("SELECT error FROM orders__errors").column("error").to_pylist()
    assert len(errors) == len(rows) and all(words in m for m in errors)


def test_import_failures_and_missing_modules_are_errors_at_create(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import math\nRATE = 1 / 0\n")
    with Engine(tmp_path / "s") as e:
        with pytest.raises(EngineError, match="importing .*bad.py failed: ZeroDivisionError: division by zero"):
            e.execute(f"CREATE FUNCTION f(x DOUBLE) RETURNS DOUBLE LANGUAGE PYTHON AS '{bad}:f'")
        with pytest.raises(EngineError, match="does not exist"):
            e.execute("CREATE FUNCTION f(x DOUBLE) RETURNS DOUBLE LANGUAGE PYTHON AS 'nope.py:f'",
                      base_dir=str(tmp_path))
        with pytest.raises(EngineError, match="has no function nothere"):
            e.execute(f"CREATE FUNCTION f(x DOUBLE) RETURNS DOUBLE LANGUAGE PYTHON AS '{FUNCS}:nothere'")
        assert e.execute("SHOW FUNCTIONS")[0].num_rows == 0


def test_relative_paths_drop_and_the_python_api(tmp_path):
    import udf_funcs

    mod = tmp_path / "lib" / "mine.py"
    mod.parent.mkdir()
    mod.write_text(FUNCS.read_text())
    write_jsonl(tmp_path / "o.jsonl", make_orders(200, seed=1))
    with Engine(tmp_path / "s") as e:
        assert e.execute("CREATE FUNCTION fragile(x BIGINT) RETURNS BIGINT LANGUAGE PYTHON AS 'lib/mine.py:fragile'",
                         base_dir=str(tmp_path)) == ["created function fragile"]
        assert e.execute("SHOW FUNCTIONS")[0].column("module").to_pylist() == [f"{mod}:fragile"]  # stored resolved
        assert e.register_function(udf_funcs.triple, ["DOUBLE"], "DOUBLE") == "created function triple"
        e.execute(orders_stream(tmp_path / "o.jsonl")
                  + "CREATE MATERIALIZED VIEW t AS SELECT order_id, triple(amount) AS y FROM orders;")
        e.run()
        with pytest.raises(EngineError, match="function triple is called by t"):
            e.execute("DROP FUNCTION triple")
        e.execute("DROP MATERIALIZED VIEW t; DROP FUNCTION triple")
        assert e.execute("DROP FUNCTION IF EXISTS triple") == ["'triple' does not exist"]
        assert e.execute("SHOW FUNCTIONS")[0].column("name").to_pylist() == ["fragile"]
    mod.unlink()
    with pytest.raises(EngineError, match="function fragile: module file .*mine.py does not exist"):
        Engine(tmp_path / "s").execute("SHOW FUNCTIONS")
