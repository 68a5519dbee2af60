"""One statement, several levels: a GROUP BY over a join, CTEs and derived tables in FROM run as chained
internal views (`<view>__join`, `<view>__<alias>`), each checked against DuckDB over the same events."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest
from test_nexmark import read_all

from pondstream.engine import Engine, EngineError
from pondstream.sql import SqlError

from conftest import canon

DDL = (Path(__file__).parent.parent / "examples" / "nexmark" / "ddl.sql").read_text()
EVENTS = 40_000
VIEWS = """
CREATE MATERIALIZED VIEW by_category AS
SELECT TUMBLE_START(a.datetime, INTERVAL '1' SECOND) AS ws, a.category, COUNT(*) AS bids, MAX(b.price) AS top,
       SUM(b.price) FILTER (WHERE b.price > 1000000) AS big
FROM auction a JOIN bid b
  ON b.auction = a.id AND b.datetime BETWEEN a.datetime AND a.datetime + INTERVAL '2' SECOND
WHERE b.price > 500
GROUP BY TUMBLE(a.datetime, INTERVAL '1' SECOND), a.category;

CREATE MATERIALIZED VIEW big_bids AS
WITH big AS (SELECT auction, price, datetime FROM bid WHERE price > 1000000),
     hot AS (SELECT auction, price * 2 AS doubled, datetime FROM big WHERE auction % 2 = 0)
SELECT window_start, COUNT(*) AS n, SUM(doubled) AS total
FROM TUMBLE(TABLE hot, DESCRIPTOR(datetime), INTERVAL '1' SECOND) GROUP BY window_start, window_end;

CREATE MATERIALIZED VIEW cheap AS
SELECT TUMBLE_START(datetime, INTERVAL '1' SECOND) AS ws, COUNT(*) AS n
FROM (SELECT bidder, datetime FROM bid WHERE price < 1000) AS c GROUP BY TUMBLE(datetime, INTERVAL '1' SECOND);

CREATE MATERIALIZED VIEW per_bidder AS
SELECT TUMBLE_START(datetime, INTERVAL '1' SECOND) AS ws, bidder, COUNT(*) AS n
FROM bid GROUP BY TUMBLE(datetime, INTERVAL '1' SECOND), bidder;

CREATE MATERIALIZED VIEW bid_with_rate AS
SELECT b.auction, b.bidder, b.datetime, r.n, r.ws FROM bid b
JOIN per_bidder FOR SYSTEM_TIME AS OF b.datetime AS r ON b.bidder = r.bidder;

CREATE MATERIALIZED VIEW near_window AS
SELECT b.auction, b.bidder, b.datetime, r.n FROM per_bidder r JOIN bid b
  ON b.bidder = r.bidder AND b.datetime BETWEEN r.ws AND r.ws + INTERVAL '500' MILLISECOND;

CREATE MATERIALIZED VIEW busiest AS
SELECT ws, bidder, n, r FROM (
  SELECT *, DENSE_RANK() OVER (PARTITION BY window_start, window_end ORDER BY n DESC) AS r
  FROM TUMBLE(TABLE per_bidder, DESCRIPTOR(ws), INTERVAL '1' SECOND))
WHERE r <= 3;

CREATE MATERIALIZED VIEW three AS
SELECT a.id AS aid, p.name, b.price, b.datetime AS bt
FROM auction a JOIN person p ON a.seller = p.id AND a.datetime BETWEEN p.datetime AND p.datetime + INTERVAL '10' SECOND
JOIN bid b ON b.auction = a.id AND b.datetime BETWEEN a.datetime AND a.datetime + INTERVAL '2' SECOND
WHERE b.price > 1000;

CREATE MATERIALIZED VIEW bids_of_new AS
SELECT x.id AS aid, x.name, b.price FROM three__join1 x JOIN bid b
  ON b.bidder = x.id AND b.datetime BETWEEN x.datetime AND x.datetime + INTERVAL '1' SECOND;
"""
DUCK = {
    "by_category": """SELECT time_bucket(INTERVAL 1 SECOND, a.datetime), a.category, COUNT(*), MAX(b.price),
        (SUM(b.price) FILTER (WHERE b.price > 1000000))::BIGINT FROM auction a JOIN bid b ON b.auction = a.id
        AND b.datetime BETWEEN a.datetime AND a.datetime + INTERVAL 2 SECOND WHERE b.price > 500 GROUP BY 1, 2""",
    "big_bids": """SELECT time_bucket(INTERVAL 1 SECOND, datetime), COUNT(*), SUM(price * 2)::BIGINT FROM bid
        WHERE price > 1000000 AND auction % 2 = 0 GROUP BY 1""",
    "per_bidder": "SELECT time_bucket(INTERVAL 1 SECOND, datetime), bidder, COUNT(*) FROM bid GROUP BY 1, 2",
    "bid_with_rate": """SELECT b.auction, b.bidder, b.datetime, r.n, r.ws FROM bid b ASOF JOIN
        (SELECT time_bucket(INTERVAL 1 SECOND, datetime) AS ws, bidder, COUNT(*) AS n FROM bid GROUP BY 1, 2) r
        ON b.bidder = r.bidder AND b.datetime >= r.ws""",
    "near_window": """SELECT b.auction, b.bidder, b.datetime, r.n FROM
        (SELECT time_bucket(INTERVAL 1 SECOND, datetime) AS ws, bidder, COUNT(*) AS n FROM bid GROUP BY 1, 2) r
        JOIN bid b ON b.bidder = r.bidder AND b.datetime BETWEEN r.ws AND r.ws + INTERVAL 500 MILLISECOND""",
    "busiest": """SELECT * FROM (SELECT time_bucket(INTERVAL 1 SECOND, datetime) AS ws, bidder, COUNT(*) AS n,
        dense_rank() OVER (PARTITION BY time_bucket(INTERVAL 1 SECOND, datetime) ORDER BY COUNT(*) DESC) AS r
        FROM bid GROUP BY 1, 2) WHERE r <= 3""",
    "three": """SELECT a.id, p.name, b.price, b.datetime FROM auction a JOIN person p ON a.seller = p.id
        AND a.datetime BETWEEN p.datetime AND p.datetime + INTERVAL 10 SECOND JOIN bid b ON b.auction = a.id
        AND b.datetime BETWEEN a.datetime AND a.datetime + INTERVAL 2 SECOND WHERE b.price > 1000""",
    "bids_of_new": """SELECT a.id, p.name, b.price FROM auction a JOIN person p ON a.seller = p.id
        AND a.datetime BETWEEN p.datetime AND p.datetime + INTERVAL 10 SECOND JOIN bid b ON b.bidder = a.id
        AND b.datetime BETWEEN a.datetime AND a.datetime + INTERVAL 1 SECOND""",
    "cheap": "SELECT time_bucket(INTERVAL 1 SECOND, datetime), COUNT(*) FROM bid WHERE price < 1000 GROUP BY 1",
}


def run(state: Path, batch_size: int) -> dict[str, list]:
    ddl = DDL.replace("'10000000'", f"'{EVENTS}', batch_size = '{batch_size}'")
    with Engine(state) as e:
        out = e.execute(ddl + VIEWS)
        assert "created materialized view by_category (runs as by_category__join, by_category)" in out
        e.run(checkpoint_interval=0.0)
    with Engine(state) as e:  # a fresh engine derives the stages from catalog.json again
        return {v: canon(e.query(f"SELECT * FROM {v}")) for v in DUCK}


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("stages")
    return tmp, run(tmp / "big", 100_000), run(tmp / "small", 777)


def test_chained_views_equal_duckdb(results):
    _, got, _ = results
    con = duckdb.connect()
    for t in ("auction", "bid", "person"):
        con.register(t, read_all(t, EVENTS))
    for view, sql in DUCK.items():
        want = canon(con.sql(sql).to_arrow_table())
        assert got[view] == want and len(want) >= 4, view


def test_batching_does_not_change_chained_views(results):
    _, big, small = results
    assert big == small


def test_stages_are_views_of_their_own_and_go_with_their_view(results):
    tmp, _, _ = results
    with Engine(tmp / "big") as e:
        shown = {r["name"]: r for r in e.execute("SHOW MATERIALIZED VIEWS")[0].to_pylist()}
        assert shown["by_category__join"]["stage_of"] == "by_category"
        assert shown["by_category__join"]["window"].startswith("INTERVAL JOIN")
        assert shown["big_bids__hot"]["stream"] == "big_bids__big" and shown["big_bids"]["stage_of"] is None
        assert e.query("SELECT COUNT(*) AS n FROM by_category__join").column("n")[0].as_py() > 100
        again = e.execute(DDL.replace("'10000000'", f"'{EVENTS}', batch_size = '100000'") + VIEWS)
        assert len(again) == 3 + len(DUCK) and all(r.endswith("(unchanged)") for r in again)
        with pytest.raises(EngineError, match="is a stage of view by_category"):
            e.execute("DROP MATERIALIZED VIEW by_category__join")
        with pytest.raises(EngineError, match="big_bids__big is a stage of view big_bids"):
            e.execute("CREATE MATERIALIZED VIEW big_bids__big AS SELECT auction FROM bid")
        e.execute("CREATE MATERIALIZED VIEW x__bids AS SELECT auction FROM bid")
        with pytest.raises(SqlError, match="runs a subquery as view x__bids, but that name is taken"):
            e.execute("CREATE MATERIALIZED VIEW x AS WITH bids AS (SELECT auction, datetime FROM bid) "
                      "SELECT window_start, COUNT(*) AS n FROM TUMBLE(TABLE bids, DESCRIPTOR(datetime), "
                      "INTERVAL '1' SECOND) GROUP BY window_start, window_end")
        with pytest.raises(EngineError, match="view three is read by bids_of_new"):  # it reads three's stage
            e.execute("DROP MATERIALIZED VIEW three")
        e.execute("DROP MATERIALIZED VIEW big_bids")
        names = set(e.execute("SHOW MATERIALIZED VIEWS")[0].column("name").to_pylist())
        assert not {"big_bids", "big_bids__big", "big_bids__hot"} & names and "by_category__join" in names
        assert not (tmp / "big" / "series" / "big_bids__hot").exists()


def test_a_mistake_inside_a_stage_is_located_in_the_statement(tmp_path):
    with Engine(tmp_path) as e:
        e.execute(DDL)
        with pytest.raises(SqlError) as info:
            e.execute("CREATE MATERIALIZED VIEW v AS\nWITH b AS (SELECT auction, pricee, datetime FROM bid)\n"
                      "SELECT window_start, COUNT(*) AS n FROM TUMBLE(TABLE b, DESCRIPTOR(datetime), INTERVAL '1' "
                      "SECOND) GROUP BY window_start, window_end")
        assert "unknown column pricee" in info.value.message and info.value.line == 2
        assert e.execute("SHOW MATERIALIZED VIEWS")[0].num_rows == 0


@pytest.mark.parametrize("upstream", [
    "SELECT auction, price, datetime FROM bid WHERE price > 100",  # a projection passes late rows on
    "SELECT TUMBLE_START(datetime, INTERVAL '1' SECOND) AS datetime, auction, COUNT(*) AS n FROM bid "
    "GROUP BY TUMBLE(datetime, INTERVAL '1' SECOND), auction EMIT EVERY INTERVAL '1' SECOND",  # rewrites rows
])
def test_joins_refuse_views_whose_rows_can_fall_below_their_watermark(tmp_path, upstream):
    with Engine(tmp_path) as e:
        e.execute(DDL + f"CREATE MATERIALIZED VIEW up AS {upstream};")
        with pytest.raises(SqlError, match="up cannot be joined"):
            e.execute("CREATE MATERIALIZED VIEW j AS SELECT c.auction, b.price FROM up c JOIN bid b "
                      "ON b.auction = c.auction AND b.datetime BETWEEN c.datetime AND c.datetime + INTERVAL '1' SECOND")
