"""Consolidation never changes an answer: random series, random consolidations, random queries, each
compared with DuckDB over every row ever written (latest version per identity, or as of a version);
SIGKILL during consolidation loses and duplicates nothing; folders stay bounded in a real pipeline."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest

from pondstream.engine import Engine, EngineError
from pondstream.state.consolidate import consolidate
from pondstream.state.series import EMPTY, SeriesStore, read_snapshot
from pondstream.state.store import StateStore, Txn

from conftest import PYTHON, canon, make_orders, orders_stream, write_jsonl

SCHEMA = pa.schema([("w", pa.timestamp("us")), ("k", pa.string()), ("x", pa.int64())])
T0 = datetime(2026, 1, 1)


def version_rows(seed: int, version: int, windows: int) -> list[dict]:
    """The rows of one version: mostly the newest windows, some rewrites of old ones, a few NULL keys."""
    rng = random.Random(seed * 100_003 + version)
    rows, seen = [], set()
    for _ in range(rng.randint(1, 12)):
        w = max(0, version // 3 - rng.choice([0, 0, 0, 1, 2, rng.randint(0, windows)]))
        k = rng.choice(["a", "b", "c", "d", None])
        if (w, k) not in seen:
            seen.add((w, k))
            rows.append({"w": T0 + timedelta(minutes=w), "k": k, "x": rng.randint(-1000, 1000)})
    return rows


def write_versions(series: SeriesStore, seed: int, lo: int, hi: int, written: set) -> None:
    """Versions lo..hi, one checkpoint each; `supersedes` is set exactly when an identity comes again."""
    for v in range(lo, hi + 1):
        rows = version_rows(seed, v, v // 3 + 1)
        ids = {(r["w"], r["k"]) for r in rows}
        txn = Txn()
        series.write(txn, "s", pa.Table.from_pylist(rows, SCHEMA), supersedes=bool(ids & written))
        series.store.commit(txn)
        written |= ids


def reference(seed: int, versions: int, as_of: int | None = None) -> duckdb.DuckDBPyRelation:
    rows = [{**r, "_version": v} for v in range(1, versions + 1) for r in version_rows(seed, v, v // 3 + 1)]
    written = pa.Table.from_pylist(rows, SCHEMA.append(pa.field("_version", pa.int64())))  # noqa: F841
    n = versions if as_of is None else as_of
    return duckdb.sql(f"SELECT w, k, x FROM (SELECT *, row_number() OVER (PARTITION BY w, k ORDER BY _version DESC) "
                      f"AS rn FROM written WHERE _version <= {n}) WHERE rn = 1")


def open_series(root: Path) -> SeriesStore:
    store = StateStore(str(root / "rocksdb"))
    series = SeriesStore(root / "series", store)
    series.ensure("s", SCHEMA, "view", ["w", "k"], {"w": "start"})
    series.recover()
    return series


def query(series: SeriesStore, sql: str, as_of: int | None = None) -> list[tuple]:
    from datafusion import SessionContext

    from pondstream.state.table import register_series

    ctx = SessionContext()
    register_series(ctx, "s", series.dir("s"), as_of)
    return canon(ctx.sql(sql).to_arrow_table())


QUERIES = [
    "SELECT w, k, x FROM {t}",
    "SELECT w, k, x FROM {t} WHERE w >= TIMESTAMP '2026-01-01 00:05:00' AND w < TIMESTAMP '2026-01-01 00:12:00'",
    "SELECT w, k, x FROM {t} WHERE k = 'b'",
    "SELECT w, k, x FROM {t} WHERE k IS NULL",
    "SELECT k, COUNT(*) AS n, SUM(x) AS sx FROM {t} GROUP BY k",
]


@pytest.mark.parametrize("seed", range(12))
def test_random_consolidations_never_change_answers(tmp_path, monkeypatch, seed):
    rng = random.Random(seed)
    monkeypatch.setattr("pondstream.state.consolidate.TARGET_BYTES", rng.choice([2_000, 20_000, 64 << 20]))
    monkeypatch.setattr("pondstream.state.series.ROW_GROUP", rng.choice([4, 64, 65536]))
    monkeypatch.setattr("pondstream.state.consolidate.ROW_GROUP", rng.choice([4, 64]))
    series = open_series(tmp_path)
    written: set = set()
    version, clock = 0, 1_000_000.0
    for _ in range(rng.randint(3, 8)):
        n = rng.randint(1, 25)
        write_versions(series, seed, version + 1, version + n, written)
        version += n
        clock += rng.choice([1, 30, 100])
        upto = rng.choice([None, version, rng.randint(0, version)])
        consolidate(series, "s", upto, retention_us=10**15, now=clock)
        snap = read_snapshot(series.dir("s"))
        assert snap.versions == version and snap.base["version"] <= version
        ref = reference(seed, version).to_arrow_table()  # noqa: F841
        for q in QUERIES:
            assert query(series, q.format(t="s")) == canon(duckdb.sql(q.format(t="ref")).to_arrow_table()), q
        for as_of in sorted({1, rng.randint(1, version), max(1, snap.base["version"]), version}):
            want = canon(reference(seed, version, as_of).to_arrow_table())
            assert query(series, "SELECT w, k, x FROM s", as_of) == want, as_of
    base = read_snapshot(series.dir("s")).base
    on_disk = {p.name for p in [*series.dir("s").glob("*.parquet"), *series.dir("s").glob("*.keys")]} - {EMPTY}
    named = {f["file"] for f in [*base["files"], *base["history"], *base["retired"], *base["keys"],
                                 *series.entries("s")]}
    assert on_disk == named  # no stray files (key files included); every named file present
    series.store.close()


def test_retention_drops_history_and_says_which_version_is_the_oldest(tmp_path):
    series = open_series(tmp_path)
    written: set = set()
    write_versions(series, 7, 1, 40, written)
    consolidate(series, "s", retention_us=60_000_000, now=1000.0)
    assert query(series, "SELECT w, k, x FROM s", 3)  # history kept
    write_versions(series, 7, 41, 50, written)
    consolidate(series, "s", retention_us=60_000_000, now=1000.0 + 3600)  # an hour later: history expired
    base = read_snapshot(series.dir("s")).base
    assert base["history_from"] > 3
    with pytest.raises(EngineError, match=f"oldest readable version is {base['history_from']}"):
        query(series, "SELECT * FROM s", 3)
    assert query(series, "SELECT w, k, x FROM s", base["history_from"]) == \
        canon(reference(7, 50, base["history_from"]).to_arrow_table())
    assert query(series, "SELECT w, k, x FROM s") == canon(reference(7, 50).to_arrow_table())
    series.store.close()


def test_replaced_files_go_at_once_unless_a_reader_holds_them(tmp_path):
    """With no query reading the series, consolidation deletes the files it replaced at once; a query
    that is reading (its lease, in this process or another) keeps them for the grace period, and reads
    the rows it planned with to the end."""
    from datafusion import SessionContext

    from pondstream.state.table import register_series

    series = open_series(tmp_path)
    d = series.dir("s")
    write_versions(series, 3, 1, 10, set())
    consolidate(series, "s", now=1000.0)
    assert not list(d.glob("v*.parquet"))  # every version folded, none kept

    written = {(r["w"], r["k"]) for v in range(1, 11) for r in version_rows(3, v, v // 3 + 1)}
    write_versions(series, 3, 11, 14, written)
    ctx = SessionContext()
    register_series(ctx, "s", d)
    stream = ctx.sql("SELECT w, k, x FROM s").execute_stream()  # planned over the base and the tail
    consolidate(series, "s", now=2000.0)
    assert (d / "v0000000011.parquet").exists()  # the query may still open it
    assert canon(pa.Table.from_batches([b.to_pyarrow() for b in stream])) == \
        canon(reference(3, 14).to_arrow_table())
    del stream, ctx  # the query is done: its lease goes with its context

    holder = subprocess.Popen([PYTHON, "-c", "import sys, time; from pathlib import Path; "
                               "from pondstream.state.leases import Lease; l = Lease(Path(sys.argv[1])); "
                               "print('held', flush=True); time.sleep(60)", str(d)], stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline() == b"held\n"
        write_versions(series, 3, 15, 16, written)
        consolidate(series, "s", now=2010.0)  # a reader in another process: nothing goes, even past grace
        assert (d / "v0000000011.parquet").exists() and (d / "v0000000015.parquet").exists()
    finally:
        holder.kill()
        holder.wait()
    write_versions(series, 3, 17, 17, written)
    consolidate(series, "s", now=2011.0)  # no reader: everything replaced so far goes
    assert not [p.name for p in d.glob("v*.parquet")]
    assert query(series, "SELECT w, k, x FROM s") == canon(reference(3, 17).to_arrow_table())
    series.store.close()


def test_busy_readers_fall_back_to_the_grace_period(tmp_path):
    from pondstream.state.leases import Lease

    series = open_series(tmp_path)
    d = series.dir("s")
    write_versions(series, 3, 1, 10, set())
    with Lease(d):
        consolidate(series, "s", now=1000.0)
        assert (d / "v0000000001.parquet").exists()
        write_versions(series, 3, 11, 12, set())
        consolidate(series, "s", now=1000.0 + 120)  # still read, but past its grace: deleted
        assert not (d / "v0000000001.parquet").exists() and (d / "v0000000011.parquet").exists()
    series.store.close()


CHILD = """
import sys, time
sys.path.insert(0, {tests!r})
from pathlib import Path
from test_consolidation import open_series, version_rows, write_versions
from pondstream.state.consolidate import consolidate
import pondstream.state.consolidate as c
c.TARGET_BYTES = 3000
series = open_series(Path({root!r}))
v = series.version("s")
written = {{(r["w"], r["k"]) for u in range(1, v + 1) for r in version_rows(11, u, u // 3 + 1)}}
while True:
    write_versions(series, 11, v + 1, v + 5, written)
    v += 5
    consolidate(series, "s", now=time.time())
"""


def test_sigkill_during_consolidation_loses_and_duplicates_nothing(tmp_path):
    rng = random.Random(5)
    code = CHILD.format(tests=str(Path(__file__).parent), root=str(tmp_path))
    for _ in range(8):
        p = subprocess.Popen([PYTHON, "-c", code], stderr=subprocess.PIPE)
        time.sleep(rng.uniform(1.0, 3.0))
        p.send_signal(signal.SIGKILL)
        p.wait()
        series = open_series(tmp_path)
        n = series.version("s")
        assert n > 0
        assert query(series, "SELECT w, k, x FROM s") == canon(reference(11, n).to_arrow_table())
        series.store.close()


def test_pipeline_folder_stays_bounded_and_results_match(tmp_path):
    """A running aggregate writes a version per checkpoint; with consolidation the folder stays small
    and every query answers as DuckDB does over the input."""
    rows = make_orders(6000, seed=4, keys=30)
    d = tmp_path / "in"
    for i in range(200):
        write_jsonl(d / f"{i:04d}.jsonl", rows[i * 30:(i + 1) * 30])
    e = Engine(tmp_path / "state")
    e.execute(orders_stream(d, extra=", batch_bytes = '1000'") + """
CREATE MATERIALIZED VIEW totals AS SELECT customer_id, COUNT(*) AS n, SUM(amount) AS total FROM orders
GROUP BY customer_id;""")
    e.run(checkpoint_interval=0.0)
    snap = read_snapshot(tmp_path / "state" / "series" / "totals")
    assert snap.versions > 150
    assert snap.files <= 40
    got = canon(e.query("SELECT customer_id, n, ROUND(total, 6) AS total FROM totals"))
    orders = pa.Table.from_pylist(rows)  # noqa: F841
    want = canon(duckdb.sql("SELECT customer_id, COUNT(*) AS n, ROUND(SUM(amount), 6) AS total FROM orders "
                            "GROUP BY customer_id").to_arrow_table())
    assert got == want
    e.close()


def test_compact_command(tmp_path):
    rows = make_orders(3000, seed=8, keys=5, step_s=60.0)
    d = tmp_path / "in"
    for i in range(30):
        write_jsonl(d / f"{i:04d}.jsonl", rows[i * 100:(i + 1) * 100])
    state = tmp_path / "state"
    sql = tmp_path / "p.sql"
    sql.write_text(orders_stream(d, extra=", batch_bytes = '2000'") + """
CREATE MATERIALIZED VIEW hourly AS SELECT TUMBLE_START(event_time, INTERVAL '1' HOUR) AS hour, customer_id,
COUNT(*) AS n FROM orders GROUP BY TUMBLE(event_time, INTERVAL '1' HOUR), customer_id;""")
    env = {**os.environ, "PYTHONPATH": ""}
    cli = [PYTHON, "-m", "pondstream.engine.cli"]
    subprocess.run([*cli, "run", str(sql), "--state-dir", str(state), "--quiet", "--checkpoint-interval", "0"],
                   check=True, env=env)
    before = subprocess.run([*cli, "query", "SELECT * FROM hourly ORDER BY hour, customer_id", "--format", "csv",
                             "--state-dir", str(state)], check=True, capture_output=True, text=True, env=env).stdout
    out = subprocess.run([*cli, "compact", "hourly", "--state-dir", str(state)], check=True, capture_output=True,
                         text=True, env=env).stdout
    assert "hourly: " in out and "consolidated" in out
    snap = read_snapshot(state / "series" / "hourly")
    assert snap.tail == [] and len(snap.base["files"]) == 1
    after = subprocess.run([*cli, "query", "SELECT * FROM hourly ORDER BY hour, customer_id", "--format", "csv",
                            "--state-dir", str(state)], check=True, capture_output=True, text=True, env=env).stdout
    assert after == before and before.count("\n") > 50
    bad = subprocess.run([*cli, "compact", "nope", "--state-dir", str(state)], capture_output=True, text=True, env=env)
    assert bad.returncode != 0 and "no view named 'nope'" in bad.stderr and "Traceback" not in bad.stderr
    assert json.loads((state / "series" / "hourly" / "_head.json").read_text().rsplit(', "crc"', 1)[0] + "}")


def test_consolidating_on_a_thread_while_versions_are_written_and_read(tmp_path, monkeypatch):
    """As in `pondstream run`: checkpoints append versions on one thread, consolidation commits and
    publishes on another, a reader queries all along; no reader sees damage, nothing is lost."""
    import threading

    monkeypatch.setattr("pondstream.state.consolidate.TARGET_BYTES", 5_000)
    series = open_series(tmp_path)
    written: set = set()
    done = threading.Event()
    errors: list[Exception] = []

    def consolidating() -> None:
        while not done.is_set():
            try:
                consolidate(series, "s", now=time.time())
            except Exception as e:  # noqa: BLE001
                errors.append(e)

    def reading() -> None:
        while not done.is_set():
            try:
                query(series, "SELECT COUNT(*) FROM s")
            except Exception as e:  # noqa: BLE001
                errors.append(e)

    threads = [threading.Thread(target=consolidating), threading.Thread(target=reading)]
    for t in threads:
        t.start()
    for v in range(1, 301, 5):
        write_versions(series, 13, v, v + 4, written)
    done.set()
    for t in threads:
        t.join()
    assert errors == []
    consolidate(series, "s", now=time.time())
    assert read_snapshot(series.dir("s")).base["version"] == 300
    assert query(series, "SELECT w, k, x FROM s") == canon(reference(13, 300).to_arrow_table())
    series.store.close()


def test_readme_duckdb_query_over_the_folder_matches(tmp_path):
    """The README's DuckDB one-liner over every file of a series folder (base, history, tail, and files
    still in their grace period) gives the latest rows, as queries do."""
    series = open_series(tmp_path)
    written: set = set()
    write_versions(series, 9, 1, 40, written)
    consolidate(series, "s", now=time.time())
    write_versions(series, 9, 41, 45, written)
    folder = series.dir("s")
    assert list(folder.glob("h*.parquet")) and list(folder.glob("b*.parquet"))
    got = duckdb.sql(f"SELECT * EXCLUDE (_version, _superseded_by, rn) FROM (SELECT *, row_number() OVER "
                     f"(PARTITION BY w, k ORDER BY _version DESC) AS rn FROM read_parquet('{folder}/*.parquet', "
                     f"union_by_name = true)) WHERE rn = 1").to_arrow_table()
    assert canon(got) == query(series, "SELECT w, k, x FROM s") == canon(reference(9, 45).to_arrow_table())
    series.store.close()


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
