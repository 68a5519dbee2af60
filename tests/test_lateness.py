"""Allowed lateness: late events within it update their window, which is re-emitted as a new version
(older versions stay readable); beyond it they go to the late series; expired state is dropped."""

from __future__ import annotations

from datetime import datetime, timedelta

from pondstream.engine import Engine

from conftest import START, canon, duck, make_orders, orders_stream, write_jsonl

VIEW = """CREATE MATERIALIZED VIEW hourly_sales WITH (allowed_lateness = '45 minutes') AS
SELECT TUMBLE_START(event_time, INTERVAL '1' HOUR) AS hour, customer_id, COUNT(*) AS orders, SUM(amount) AS total
FROM orders GROUP BY TUMBLE(event_time, INTERVAL '1' HOUR), customer_id;"""
DUCK = """SELECT time_bucket(INTERVAL '1 hour', event_time) AS hour, customer_id, COUNT(*) AS orders,
       SUM(amount) AS total FROM orders GROUP BY 1, 2"""


def test_late_events_within_lateness_reemit_their_window(tmp_path):
    on_time = make_orders(4000, seed=51, step_s=2.0, disorder_s=3.0)  # ~2h13m of event time
    replay = make_orders(500, seed=52, step_s=12.0, disorder_s=0.0, start=START + timedelta(minutes=5))
    for i, r in enumerate(replay):
        r["order_id"] = 500_000 + i
    write_jsonl(tmp_path / "in" / "1.jsonl", on_time)
    write_jsonl(tmp_path / "in" / "2.jsonl", replay)  # arrives after the first windows were emitted
    watermark = max(datetime.fromisoformat(r["event_time"]) for r in on_time) - timedelta(seconds=5)
    hour_end = lambda r: datetime.fromisoformat(r["event_time"]).replace(minute=0, second=0, microsecond=0) \
        + timedelta(hours=1)  # noqa: E731
    dropped = [r for r in replay if hour_end(r) + timedelta(minutes=45) <= watermark]
    accepted = [r for r in replay if hour_end(r) + timedelta(minutes=45) > watermark]
    reemitted_hour = START + timedelta(hours=1)
    assert dropped and any(hour_end(r) - timedelta(hours=1) == reemitted_hour for r in accepted)

    with Engine(tmp_path / "s") as e:
        e.execute(orders_stream(tmp_path / "in") + VIEW)
        e.run(checkpoint_interval=0.0)  # a checkpoint per batch: each file is one batch
        latest = e.query("SELECT * FROM hourly_sales")
        assert canon(latest) == canon(duck(DUCK, on_time + accepted))
        late = e.query("SELECT order_id FROM hourly_sales__late")
        assert sorted(late.column("order_id").to_pylist()) == sorted(r["order_id"] for r in dropped)
        # Version 1 emitted hours 0 and 1 from the on-time events only; it is still readable.
        v1 = e.query("SELECT * FROM hourly_sales VERSION AS OF 1")
        want_v1 = duck(DUCK + " HAVING time_bucket(INTERVAL '1 hour', event_time) < TIMESTAMP '2026-01-01 02:00:00'",
                       on_time)
        assert canon(v1) == canon(want_v1)
        log = e.status()["series"]["hourly_sales"]
        assert log["versions"] >= 2  # the first emission, then the re-emission (and the last hour, maybe with it)
        hour1 = "SELECT customer_id, orders FROM hourly_sales{} WHERE hour = TIMESTAMP '2026-01-01 01:00:00'"
        assert canon(e.query(hour1.format(" VERSION AS OF 1"))) != canon(e.query(hour1.format("")))  # rewritten
        rows_h1 = e.query("SELECT COUNT(*) AS n FROM hourly_sales WHERE hour = TIMESTAMP '2026-01-01 01:00:00'")
        assert rows_h1.column("n")[0].as_py() == len({r["customer_id"] for r in on_time + accepted
                                                        if hour_end(r) - timedelta(hours=1) == reemitted_hour})


def test_state_for_expired_windows_is_dropped(tmp_path):
    ddl = """CREATE STREAM orders (order_id BIGINT, customer_id VARCHAR, amount DOUBLE, event_time TIMESTAMP,
        WATERMARK FOR event_time AS event_time - INTERVAL '2' SECOND)
        WITH (connector = 'generator', rows = '200000', keys = '50', step = '1 second', batch_size = '5000',
              out_of_orderness = '1 second');""" + VIEW.replace("45 minutes", "2 hours")
    open_windows = []
    with Engine(tmp_path / "s") as e:
        e.execute(ddl)
        e.run(checkpoint_interval=0.0, on_progress=lambda p: open_windows.append(p.open_windows))
        n_hours = e.query("SELECT COUNT(DISTINCT hour) AS n FROM hourly_sales").column("n")[0].as_py()
    assert n_hours >= 55  # 200k seconds of event time
    assert max(open_windows[:-1]) <= 4  # the open hour plus the two hours of lateness (plus one in flight)
    assert open_windows[-1] == 0
