"""file:series: file pruning by the log's min/max, versions superseding rows, as-of reads, crash safety."""

from __future__ import annotations

import json
from datetime import datetime

import duckdb
import pyarrow as pa
import pytest

from pondstream.engine import Engine, EngineError
from pondstream.state.series import SeriesStore
from pondstream.state.store import StateStore, Txn

from conftest import HOURLY, canon, make_orders, orders_stream, write_jsonl


def _hourly_files(tmp_path, hours: int) -> Engine:
    """One input file per hour and a checkpoint per batch: each closed hour becomes its own version."""
    rows = make_orders(hours * 60, seed=2, step_s=60.0, disorder_s=0.0, keys=3)
    d = tmp_path / "in"
    for h in range(hours):
        write_jsonl(d / f"{h:05d}.jsonl", rows[h * 60:(h + 1) * 60])
    e = Engine(tmp_path / "state")
    e.execute(orders_stream(d, delay="INTERVAL '0' SECOND") + HOURLY)
    e.run(checkpoint_interval=0.0)
    return e


def test_time_range_query_opens_only_overlapping_files(tmp_path, monkeypatch):
    monkeypatch.setattr("pondstream.state.consolidate.MIN_TAIL", 10**9)  # a tail of hundreds of files
    e = _hourly_files(tmp_path, 300)
    series = tmp_path / "state" / "series" / "hourly_sales"
    log = [json.loads(x) for x in (series / "_log.jsonl").read_text().splitlines()]
    assert len(log) >= 290  # hundreds of files
    q = ("SELECT SUM(orders) AS n FROM hourly_sales WHERE hour >= TIMESTAMP '2026-01-05 10:00:00' "
         "AND hour < TIMESTAMP '2026-01-05 11:00:00'")
    expected = e.query(q).column("n")[0].as_py()
    assert expected == 60 - sum(1 for r in make_orders(300 * 60, seed=2, step_s=60.0, disorder_s=0.0, keys=3)
                                if r["amount"] <= 0 and r["event_time"].startswith("2026-01-05 10:"))
    plan = e.query("EXPLAIN " + q).to_pylist()[-1]["plan"]
    opened = int(plan.split("number_of_fragments=")[1].split(",")[0])
    assert 1 <= opened <= 2
    # Proof by sabotage: every file outside the hour becomes garbage; the range query still answers.
    keep = {x["file"] for x in log if x["ranges"]["hour"][0] <= 1767607200000000 + 3600_000000
            and x["ranges"]["hour"][1] >= 1767607200000000}
    for x in log:
        if x["file"] not in keep:
            (series / x["file"]).write_bytes(b"garbage")
    assert e.query(q).column("n")[0].as_py() == expected
    with pytest.raises(EngineError, match=r"hourly_sales/v\d{10}\.parquet is damaged"):
        e.query("SELECT SUM(orders) FROM hourly_sales")
    e.close()


def test_files_are_plain_parquet_with_versions(tmp_path):
    e = _hourly_files(tmp_path, 5)
    files = sorted((tmp_path / "state" / "series" / "hourly_sales").glob("v*.parquet"))
    got = duckdb.sql(f"SELECT hour, customer_id, orders, _version FROM read_parquet({[str(f) for f in files]})"
                     ).to_arrow_table()
    ours = e.query("SELECT hour, customer_id, orders FROM hourly_sales")
    assert canon(got.drop_columns(["_version"])) == canon(ours)
    assert sorted(set(got.column("_version").to_pylist())) == list(range(1, len(files) + 1))
    e.close()


def test_later_version_supersedes_and_as_of_reads_older(tmp_path):
    """Write versions of a view directly (as a re-emitted window will) and read them back."""
    e = _hourly_files(tmp_path, 3)
    e.close()
    store = StateStore(str(tmp_path / "state" / "rocksdb"))
    series = SeriesStore(tmp_path / "state" / "series", store)
    v_before = series.version("hourly_sales")
    h = datetime(2026, 1, 1, 1)
    schema = pa.ipc.read_schema(pa.py_buffer((tmp_path / "state/series/hourly_sales/_schema.arrow").read_bytes()))
    row = pa.Table.from_pylist([{"hour": h, "customer_id": "c1", "orders": 999, "total": 1.0, "avg_amount": 1.0}],
                               schema=schema)
    txn = Txn()
    series.write(txn, "hourly_sales", row, supersedes=True)
    # A version written but never committed (a crash before the checkpoint) must stay invisible.
    store.commit(txn)
    txn2 = Txn()
    series.write(txn2, "hourly_sales", row.set_column(2, "orders", pa.array([12345])), supersedes=True)
    store.close()
    e = Engine(tmp_path / "state")
    latest = e.query("SELECT orders FROM hourly_sales WHERE hour = TIMESTAMP '2026-01-01 01:00:00' "
                     "AND customer_id = 'c1'")
    assert latest.column("orders").to_pylist() == [999]
    n_rows = e.query("SELECT COUNT(*) AS n FROM hourly_sales").column("n")[0].as_py()
    older = e.query(f"SELECT orders FROM hourly_sales VERSION AS OF {v_before} WHERE hour = TIMESTAMP "
                    "'2026-01-01 01:00:00' AND customer_id = 'c1'")
    assert older.column("orders").to_pylist() != [999] and older.num_rows == 1
    assert e.query("SELECT COUNT(*) AS n FROM hourly_sales", as_of_version=v_before).column("n")[0].as_py() == n_rows
    e._open()  # recovery rewrites the log from RocksDB and deletes the uncommitted file
    e.close()
    files = {p.name for p in (tmp_path / "state/series/hourly_sales").glob("v*.parquet")}
    assert f"v{v_before + 2:010d}.parquet" not in files and f"v{v_before + 1:010d}.parquet" in files


def test_cat_time_range(tmp_path):
    e = _hourly_files(tmp_path, 6)
    t = e.cat("hourly_sales", "2026-01-01 02:00:00", "2026-01-01 04:00:00")
    hours = set(t.column("hour").to_pylist())
    assert hours == {datetime(2026, 1, 1, 2), datetime(2026, 1, 1, 3)}
    assert t.column("hour").to_pylist() == sorted(t.column("hour").to_pylist())
    e.close()
