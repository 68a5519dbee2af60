"""Interval joins, INNER and LEFT/RIGHT/FULL OUTER, against DuckDB over the rows that are on time under
the per-event rule (a row is late when its event time is below the running maximum of its stream's
event times, itself included, minus the watermark delay): with disorder and late rows on both sides,
several batch sizes and checkpoint intervals, SIGKILLs, and a windowed view over a join."""

from __future__ import annotations

import random
from datetime import timedelta

import duckdb
import pyarrow as pa
import pytest

from pondstream.engine import Engine
from pondstream.sql.errors import SqlError

from conftest import PYTHON, START, canon, run_with_random_kills, timed_run, write_jsonl

DELAY_O, DELAY_S = 30, 60  # watermark delays (seconds) of orders and shipments
COLS = "o.id, o.ts, o.amount, s.order_id AS sid, s.carrier, s.ts AS shipped_at"
ON = "o.id = s.order_id AND s.ts BETWEEN o.ts AND o.ts + INTERVAL '30' MINUTE"
KINDS = {"inner_j": "JOIN", "left_j": "LEFT JOIN", "right_j": "RIGHT OUTER JOIN", "full_j": "FULL JOIN"}
VIEWS = "".join(f"CREATE MATERIALIZED VIEW {name} AS SELECT {COLS} FROM orders o {kw} ships s ON {ON};\n"
                for name, kw in KINDS.items()) + """
CREATE MATERIALIZED VIEW shipped_hourly AS
SELECT TUMBLE_START(ts, INTERVAL '1' HOUR) AS hour, COUNT(*) AS n, SUM(amount) AS total
FROM inner_j GROUP BY TUMBLE(ts, INTERVAL '1' HOUR);
"""


def make_inputs(n: int, seed: int) -> tuple[list[dict], list[dict]]:
    """Orders every ~20 s and shipments 0-40 minutes after their order (some never), both disordered beyond
    their watermark delay, with a few rows hours late on each side; in the order a file holds them."""
    rng = random.Random(seed)
    orders, ships = [], []
    for i in range(n):
        t = i * 20 - rng.uniform(0, 2 * DELAY_O)
        if rng.random() < 0.03:
            t -= rng.uniform(600, 7200)
        orders.append({"id": i, "amount": round(rng.uniform(1, 100), 2), "ts": START + timedelta(seconds=t)})
        for _ in range(rng.choice([0, 1, 1, 2])):
            s = i * 20 + rng.uniform(-60, 2400)
            ships.append({"order_id": i if rng.random() < 0.95 else i + 1, "carrier": rng.choice("abc"),
                          "ts": START + timedelta(seconds=s), "_sort": s + rng.uniform(0, 2 * DELAY_S)})
    ships.sort(key=lambda r: r.pop("_sort") + (rng.uniform(600, 7200) if rng.random() < 0.03 else 0))
    return orders, ships


def on_time(rows: list[dict], delay_s: int) -> list[dict]:
    out, high = [], None
    for r in rows:
        high = r["ts"] if high is None else max(high, r["ts"])
        if r["ts"] >= high - timedelta(seconds=delay_s):
            out.append(r)
    return out


def text(rows: list[dict]) -> list[dict]:
    """Rows as a JSONL file holds them: timestamps as ISO text."""
    return [{**r, "ts": r["ts"].isoformat(sep=" ")} for r in rows]


def pipeline(orders_path, ships_path, batch_bytes: int | None) -> str:
    extra = f", batch_bytes = '{batch_bytes}'" if batch_bytes else ""
    return f"""
CREATE STREAM orders (id BIGINT, amount DOUBLE, ts TIMESTAMP, WATERMARK FOR ts AS ts - INTERVAL '{DELAY_O}' SECOND)
  WITH (connector = 'file', path = '{orders_path}', format = 'jsonl'{extra});
CREATE STREAM ships (order_id BIGINT, carrier VARCHAR, ts TIMESTAMP, WATERMARK FOR ts AS ts - INTERVAL '{DELAY_S}' SECOND)
  WITH (connector = 'file', path = '{ships_path}', format = 'jsonl'{extra});
""" + VIEWS


def answers(state) -> dict[str, list]:
    with Engine(state) as e:
        got = {name: canon(e.query(f"SELECT * FROM {name}")) for name in [*KINDS, "shipped_hourly"]}
        got["late"] = canon(e.query("SELECT _side, _row FROM inner_j__late"))
        return got


def duck_answers(orders: list[dict], ships: list[dict]) -> dict[str, list]:
    con = duckdb.connect()
    con.register("orders", pa.Table.from_pylist(on_time(orders, DELAY_O)))
    con.register("ships", pa.Table.from_pylist(on_time(ships, DELAY_S)))
    duck_on = ON.replace("INTERVAL '30' MINUTE", "INTERVAL 30 MINUTE")
    out = {name: canon(con.sql(f"SELECT {COLS} FROM orders o {kw} ships s ON {duck_on}").to_arrow_table())
           for name, kw in KINDS.items()}
    out["shipped_hourly"] = canon(con.sql(
        f"SELECT time_bucket(INTERVAL 1 HOUR, o.ts) AS hour, COUNT(*) AS n, SUM(o.amount) AS total "
        f"FROM orders o JOIN ships s ON {duck_on} GROUP BY 1").to_arrow_table())
    return out


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("joins")
    orders, ships = make_inputs(900, seed=11)
    src = (write_jsonl(tmp / "orders.jsonl", text(orders)), write_jsonl(tmp / "ships.jsonl", text(ships)))
    with Engine(tmp / "one_batch") as e:
        e.execute(pipeline(*src, None))
        e.run()
    return tmp, orders, ships, src, answers(tmp / "one_batch")


def test_each_join_kind_equals_duckdb_over_on_time_rows(case):
    _, orders, ships, _, got = case
    want = duck_answers(orders, ships)
    for name in [*KINDS, "shipped_hourly"]:
        assert got[name] == want[name], name
    n_late = (len(orders) - len(on_time(orders, DELAY_O))) + (len(ships) - len(on_time(ships, DELAY_S)))
    assert len(got["late"]) == n_late > 20 and {r[0] for r in got["late"]} == {"o", "s"}
    inner, left, full = (len(got[k]) for k in ("inner_j", "left_j", "full_j"))
    assert 300 < inner < left < full  # the outer joins padded rows of their own


@pytest.mark.parametrize("batch_bytes,interval", [(400, 0.0), (5000, 1.0)])
def test_batch_size_and_checkpoint_interval_do_not_change_joins(case, batch_bytes, interval):
    tmp, _, _, src, reference = case
    opened: list[int] = []
    with Engine(tmp / f"b{batch_bytes}") as e:
        e.execute(pipeline(*src, batch_bytes))
        p = e.run(checkpoint_interval=interval, on_progress=lambda p: opened.append(p.open_windows))
        assert p.checkpoints > (10 if interval == 0 else 0)
    assert answers(tmp / f"b{batch_bytes}") == reference
    if interval == 0:  # state falls back as the watermarks pass: a few 30-minute buckets per side of each
        # of the 4 joins, never the ~10 per side that 5 hours of input span
        assert opened[-1] == 0 and 8 <= max(opened) <= 4 * 2 * 3


def test_random_sigkills_do_not_change_joins(case):
    tmp, _, _, src, reference = case
    sql = tmp / "pipeline.sql"
    sql.write_text(pipeline(*src, 2000))
    cmd = [PYTHON, "-m", "pondstream.engine.cli", "run", str(sql), "--quiet", "--checkpoint-interval", "0.05"]
    full = timed_run(cmd, tmp / "kill_ref")
    kills = run_with_random_kills(cmd, tmp / "kill", random.Random(5), full)
    assert answers(tmp / "kill") == reference
    assert kills >= 1


def streams_only(tmp_path) -> str:
    paths = [write_jsonl(tmp_path / f"{n}.jsonl", []) for n in ("o", "s")]
    return pipeline(*paths, None).split("CREATE MATERIALIZED VIEW")[0]


@pytest.mark.parametrize("on,message", [
    ("o.id = s.order_id", "no lower bound on the event times"),
    ("o.id = s.order_id AND s.ts >= o.ts", "no upper bound"),
    ("o.id = s.order_id AND s.ts BETWEEN o.ts + INTERVAL '2' HOUR AND o.ts", "exclude every pair"),
    ("o.id = s.nope AND s.ts BETWEEN o.ts AND o.ts + INTERVAL '1' HOUR", "unknown column s.nope"),
])
def test_unbounded_or_wrong_joins_are_refused_with_a_located_message(tmp_path, on, message):
    with Engine(tmp_path / "state") as e:
        e.execute(streams_only(tmp_path))
        with pytest.raises(SqlError) as err:
            e.execute(f"CREATE MATERIALIZED VIEW j AS SELECT o.id, s.carrier FROM orders o JOIN ships s ON {on};")
    assert message in str(err.value) and err.value.line is not None
    if "bound" in message:  # the bounded forms, and the temporal join for lookups
        assert "BETWEEN" in err.value.hint and "FOR SYSTEM_TIME AS OF" in err.value.hint


def test_a_join_with_group_by_runs_as_a_join_stage_and_a_view_over_it(tmp_path):
    with Engine(tmp_path / "state") as e:
        e.execute(streams_only(tmp_path))
        out = e.execute(f"CREATE MATERIALIZED VIEW j AS SELECT COUNT(*) AS n FROM orders o JOIN ships s ON {ON} "
                        "GROUP BY TUMBLE(o.ts, INTERVAL '1' HOUR);")
        assert out == ["created materialized view j (runs as j__join, j)"]
        views = e.execute("SHOW MATERIALIZED VIEWS")[0].to_pylist()
    assert [(v["name"], v["stream"], v["stage_of"]) for v in views] == [("j", "j__join", None),
                                                                        ("j__join", "orders, ships", "j")]


def test_self_join_and_a_poison_row_in_the_select_list(case):
    """One stream on both sides (one reader feeds both inputs), and a select list that fails on some
    pairs (division by zero): those go to orders__errors with their reason, every other pair to the view."""
    tmp, orders, ships, src, _ = case
    sql = pipeline(*src, 3000).split("CREATE MATERIALIZED VIEW")[0] + """
CREATE MATERIALIZED VIEW next_order AS SELECT a.id, a.ts, b.id AS next_id, b.ts AS next_ts
FROM orders a JOIN orders b ON b.id = a.id + 1 AND b.ts BETWEEN a.ts - INTERVAL '1' MINUTE AND a.ts + INTERVAL '2' MINUTE;
CREATE MATERIALIZED VIEW poisoned AS SELECT o.id, o.ts, 1000 / (o.id % 97) AS inv, s.carrier
FROM orders o JOIN ships s ON """ + ON + ";"
    with Engine(tmp / "self") as e:
        e.execute(sql)
        e.run(checkpoint_interval=0)
        got = canon(e.query("SELECT * FROM next_order"))
        poisoned = e.query("SELECT id FROM poisoned").column("id").to_pylist()
        errors = e.query("SELECT reason, error, raw FROM orders__errors").to_pylist()
    con = duckdb.connect()
    con.register("orders", pa.Table.from_pylist(on_time(orders, DELAY_O)))
    con.register("ships", pa.Table.from_pylist(on_time(ships, DELAY_S)))
    want = canon(con.sql("SELECT a.id, a.ts, b.id AS next_id, b.ts AS next_ts FROM orders a JOIN orders b "
                         "ON b.id = a.id + 1 AND b.ts BETWEEN a.ts - INTERVAL 1 MINUTE AND a.ts + INTERVAL 2 MINUTE")
                 .to_arrow_table())
    assert got == want and len(got) > 500
    poison_pairs = con.sql(f"SELECT COUNT(*) FROM orders o JOIN ships s ON {ON.replace(chr(39) + '30' + chr(39), '30')} "
                          "WHERE o.id % 97 = 0").fetchall()[0][0]
    assert not any(i % 97 == 0 for i in poisoned) and len(poisoned) > 300
    assert len(errors) == poison_pairs >= 3
    assert all(r["reason"] == "expression error" and "poisoned" in r["error"] and b'"o": {"id": ' in r["raw"]
               for r in errors)


WINDOW_VIEWS = {
    "tumble_j": ("TUMBLE", "INTERVAL '10' MINUTE", "JOIN", (600, 600)),
    "hop_left": ("HOP", "INTERVAL '5' MINUTE, INTERVAL '15' MINUTE", "LEFT JOIN", (300, 900)),
}


def window_join_sql(src, batch_bytes: int | None) -> str:
    views = ""
    for name, (fn, sizes, kw, _) in WINDOW_VIEWS.items():
        views += f"""CREATE MATERIALIZED VIEW {name} AS
SELECT o.window_start, o.window_end, o.id, o.amount, s.carrier, s.ts AS shipped_at
FROM {fn}(TABLE orders, DESCRIPTOR(ts), {sizes}) o {kw} {fn}(TABLE ships, DESCRIPTOR(ts), {sizes}) s
ON o.window_start = s.window_start AND o.window_end = s.window_end AND o.id = s.order_id;
"""
    return pipeline(*src, batch_bytes).split("CREATE MATERIALIZED VIEW")[0] + views


def windowed_on_time(rows: list[dict], delay_s: int, slide_s: int, size_s: int) -> list[dict]:
    """Each row once per window it falls in, kept when the window had not ended at the watermark the
    row met (running max of event times so far, itself included, minus the delay)."""
    out, high = [], None
    for r in rows:
        high = r["ts"] if high is None else max(high, r["ts"])
        wm = high - timedelta(seconds=delay_s)
        t = (r["ts"] - START).total_seconds()
        k = int(t // slide_s)
        while k * slide_s + size_s > t:
            start = START + timedelta(seconds=k * slide_s)
            if start + timedelta(seconds=size_s) > wm:
                out.append({**r, "window_start": start, "window_end": start + timedelta(seconds=size_s)})
            k -= 1
    return out


def test_window_joins_equal_duckdb_whatever_the_batching(case):
    """Flink's window join: both sides windowed alike (TUMBLE, and overlapping HOP windows), paired per
    window and key; a row is late when its window had ended at its own watermark."""
    tmp, orders, ships, src, _ = case
    got = {}
    for batch in (None, 700):
        with Engine(tmp / f"win{batch}") as e:
            e.execute(window_join_sql(src, batch))
            e.run(checkpoint_interval=0 if batch else 1.0)
            got[batch] = {name: canon(e.query(f"SELECT * FROM {name}")) for name in WINDOW_VIEWS}
    assert got[None] == got[700]
    con = duckdb.connect()
    for name, (_, _, kw, (slide, size)) in WINDOW_VIEWS.items():
        con.register("o", pa.Table.from_pylist(windowed_on_time(orders, DELAY_O, slide, size)))
        con.register("s", pa.Table.from_pylist(windowed_on_time(ships, DELAY_S, slide, size)))
        want = canon(con.sql(f"SELECT o.window_start, o.window_end, o.id, o.amount, s.carrier, s.ts AS shipped_at "
                             f"FROM o {kw} s ON o.window_start = s.window_start AND o.window_end = s.window_end "
                             f"AND o.id = s.order_id").to_arrow_table())
        assert got[None][name] == want, name
        assert len(want) > 80
