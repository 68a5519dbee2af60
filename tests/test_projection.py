"""Views without GROUP BY (filters and projections of a stream): every row that passes WHERE, through
the select list, whatever the batching; rows an expression fails on go to the stream's errors; a
windowed view over one equals DuckDB over the filtered rows."""

from __future__ import annotations

import duckdb
import pyarrow as pa
import pytest

from pondstream.engine import Engine
from pondstream.sql.errors import SqlError

from conftest import canon, make_orders, orders_stream, write_jsonl

VIEWS = """
CREATE MATERIALIZED VIEW big_orders AS
SELECT order_id, UPPER(customer_id) AS customer, amount * 2 AS doubled, 1000 / (order_id % 50) AS poison, event_time
FROM orders WHERE amount > 50;
CREATE MATERIALIZED VIEW everything AS SELECT * FROM orders;
CREATE MATERIALIZED VIEW big_hourly AS
SELECT TUMBLE_START(event_time, INTERVAL '1' HOUR) AS hour, COUNT(*) AS n, SUM(doubled) AS total
FROM big_orders GROUP BY TUMBLE(event_time, INTERVAL '1' HOUR);
"""


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("projection")
    rows = make_orders(4000, keys=30, disorder_s=600)  # disorder far beyond the delay: nothing may be dropped
    return tmp, rows, write_jsonl(tmp / "orders.jsonl", rows)


def run(tmp, src, batch_bytes: int | None, interval: float) -> dict[str, list]:
    extra = f", batch_bytes = '{batch_bytes}'" if batch_bytes else ""
    state = tmp / f"s{batch_bytes}_{interval}"
    with Engine(state) as e:
        e.execute(orders_stream(src, extra=extra) + VIEWS)
        e.run(checkpoint_interval=interval)
        out = {v: canon(e.query(f"SELECT * FROM {v}")) for v in ("big_orders", "everything", "big_hourly")}
        out["errors"] = canon(e.query("SELECT reason, error FROM orders__errors"))
    return out


def test_projection_views_equal_duckdb_whatever_the_batching(inputs):
    tmp, rows, src = inputs
    got = run(tmp, src, None, 1.0)
    assert run(tmp, src, 600, 0.0) == got
    con = duckdb.connect()
    con.register("raw", pa.Table.from_pylist(rows))
    con.sql("CREATE TABLE orders AS SELECT order_id::BIGINT AS order_id, customer_id, amount::DOUBLE AS amount, "
            "event_time::TIMESTAMP AS event_time FROM raw")
    assert got["everything"] == canon(con.sql("SELECT * FROM orders").to_arrow_table())
    assert got["big_orders"] == canon(con.sql(
        "SELECT order_id, UPPER(customer_id) AS customer, amount * 2 AS doubled, 1000 // (order_id % 50) AS poison, "
        "event_time FROM orders WHERE amount > 50 AND order_id % 50 <> 0").to_arrow_table())
    assert got["big_hourly"] == canon(con.sql(
        "SELECT time_bucket(INTERVAL 1 HOUR, event_time) AS hour, COUNT(*) AS n, SUM(amount * 2) AS total "
        "FROM orders WHERE amount > 50 AND order_id % 50 <> 0 GROUP BY 1").to_arrow_table())
    poisoned = con.sql("SELECT COUNT(*) FROM orders WHERE amount > 50 AND order_id % 50 = 0").fetchall()[0][0]
    assert len(got["errors"]) == poisoned > 5
    assert all(r[0] == "expression error" and "big_orders" in r[1] for r in got["errors"])


@pytest.mark.parametrize("select,message", [
    ("SELECT amount + 1 FROM orders", "name this column"),
    ("SELECT nope FROM orders", "unknown column nope"),
    ("SELECT COUNT(*) AS n FROM orders", "needs GROUP BY"),
    ("SELECT amount FROM orders ORDER BY amount", "ORDER is not supported"),
])
def test_projection_mistakes_are_located(tmp_path, select, message):
    src = write_jsonl(tmp_path / "o.jsonl", [])
    with Engine(tmp_path / "state") as e:
        e.execute(orders_stream(src))
        with pytest.raises(SqlError) as err:
            e.execute(f"CREATE MATERIALIZED VIEW v AS {select};")
    assert message in str(err.value) and err.value.line is not None
