"""Point lookups (engine/lookup.py, state/keys.py): a query fixing every key of a view to a literal is
answered from key files without a scan, and gives exactly the rows the scan gives.

The property test writes random series (late rewrites that supersede, NULL keys, keys with quotes and
backslashes, a window view, a two-key view and a running aggregate), consolidates at random points with
tiny files, batches and merge thresholds (so there are many key files, merged ones, and rows of replaced
base files a lookup must skip), and compares Engine.query's lookup with the same query on the scan route.
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pytest

import pondstream.engine.api as api
from pondstream.engine import Engine, EngineError
from pondstream.state.consolidate import consolidate
from pondstream.state.keys import KeyFile
from pondstream.state.series import SeriesStore, read_snapshot
from pondstream.state.store import StateStore, Txn

from conftest import HOURLY, canon, make_orders, orders_stream, write_jsonl

T0 = datetime(2026, 1, 1)
KEYS = ["a", "b", "c", "o'k", "b\\s", "é", None]
SHAPES = {
    "window": (pa.schema([("w", pa.timestamp("us")), ("k", pa.string()), ("x", pa.int64())]),
               ["w", "k"], {"w": "start"}),
    "two_keys": (pa.schema([("w", pa.timestamp("us")), ("k", pa.string()), ("n", pa.int64()), ("x", pa.int64())]),
                 ["w", "k", "n"], {"w": "start"}),
    "running": (pa.schema([("k", pa.string()), ("x", pa.int64())]), ["k"], {}),
}


def version_rows(rng: random.Random, shape: str, version: int) -> list[dict]:
    """One version: mostly the newest windows, some rewrites of recent ones (as allowed lateness makes),
    now and then one of any window, NULL keys now and then."""
    rows, seen = [], set()
    for _ in range(rng.randint(1, 15)):
        back = rng.randint(0, version // 3 + 1) if rng.random() < 0.02 else rng.choice([0] * 8 + [1, 2, 3])
        w = max(0, version // 3 - back)
        row = {"w": T0 + timedelta(minutes=w), "k": rng.choice(KEYS), "n": rng.choice([1, 2, -3, None]),
               "x": rng.randint(-100, 100)}
        ident = tuple(row[c] for c in SHAPES[shape][1])
        if ident not in seen:
            seen.add(ident)
            rows.append({c: row[c] for c in SHAPES[shape][0].names})
    return rows


def open_series(root: Path, shape: str, name: str = "s") -> SeriesStore:
    schema, identity, times = SHAPES[shape]
    series = SeriesStore(root / "series", StateStore(str(root / "rocksdb")))
    series.ensure(name, schema, "view", identity, times)
    return series


def write(series: SeriesStore, shape: str, rng: random.Random, lo: int, hi: int, written: set) -> None:
    """Versions lo..hi; `supersedes` set exactly when an identity comes again (as the runner does)."""
    schema, identity, _ = SHAPES[shape]
    for v in range(lo, hi + 1):
        rows = version_rows(rng, shape, v)
        ids = {tuple(r[c] for c in identity) for r in rows}
        txn = Txn()
        series.write(txn, "s", pa.Table.from_pylist(rows, schema), supersedes=bool(ids & written))
        series.store.commit(txn)
        written |= ids


def scanned(engine: Engine, sql: str, monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    """The same query on the scan route (what Engine.query did before lookups)."""
    with monkeypatch.context() as m:
        m.setattr(api, "point_lookup", lambda *a: None)
        return canon(engine.query(sql))


def lookup_queries(rng: random.Random, shape: str, version: int) -> list[str]:
    def lit(k: str) -> str:
        return "'" + k.replace("'", "''") + "'"

    out = []
    for _ in range(8):
        k = lit(rng.choice([k for k in KEYS if k] + ["zz"]))
        fix = f"k = {k}" + (f" AND n = {rng.choice([1, 2, -3, 7])}" if shape == "two_keys" else "")
        cols = ", ".join(SHAPES[shape][0].names)
        out += [f"SELECT {cols} FROM s WHERE {fix}", f"SELECT COUNT(*) AS c, SUM(x) AS sx FROM s WHERE {fix}"]
        if shape != "running":
            a, b = sorted(rng.randint(0, version // 3 + 1) for _ in range(2))
            ta, tb = (f"TIMESTAMP '{T0 + timedelta(minutes=m)}'" for m in (a, b))
            out += [f"SELECT {cols} FROM s WHERE {fix} AND w >= {ta} AND w < {tb}",
                    f"SELECT w, x FROM s t WHERE w BETWEEN {ta} AND {tb} AND ({fix.replace('k =', 't.k =')})",
                    f"SELECT * FROM s WHERE w > '{T0 + timedelta(minutes=a)}' AND {fix} AND x > 0 ORDER BY w LIMIT 2",
                    f"SELECT * FROM s WHERE {fix} AND x > 0 ORDER BY w DESC LIMIT 2"]
    return out


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("seed", range(5))
def test_lookup_gives_the_rows_a_scan_gives(tmp_path, monkeypatch, shape, seed):
    rng = random.Random(seed * 31 + len(shape))
    monkeypatch.setattr("pondstream.state.consolidate.TARGET_BYTES", rng.choice([500, 3000, 64 << 20]))
    monkeypatch.setattr("pondstream.state.consolidate.SMALL_KEYS", rng.choice([20000, 1 << 30]))
    monkeypatch.setattr("pondstream.state.consolidate.MERGE_BYTES", rng.choice([6000, 1 << 30]))
    monkeypatch.setattr("pondstream.state.consolidate.MERGE_COUNT", rng.choice([2, 4]))
    monkeypatch.setattr("pondstream.state.keys.BATCH_ROWS", rng.choice([1, 3, 1024]))
    monkeypatch.setattr("pondstream.state.series.ROW_GROUP", rng.choice([2, 64, 65536]))
    monkeypatch.setattr("pondstream.state.consolidate.ROW_GROUP", rng.choice([4, 16]))  # rows per base file, at least
    series = open_series(tmp_path, shape)
    engine = Engine(tmp_path)
    written: set = set()
    version, clock, found = 0, 1_000_000.0, 0
    for _ in range(rng.randint(4, 9)):
        n = rng.randint(1, 30)
        write(series, shape, rng, version + 1, version + n, written)
        version += n
        clock += rng.choice([1, 30, 100])  # past the grace period now and then: replaced files go
        consolidate(series, "s", rng.choice([None, version, rng.randint(0, version)]), now=clock)
        for sql in lookup_queries(rng, shape, version):
            assert engine.explain_route(sql).startswith("point lookup on s"), (sql, engine.explain_route(sql))
            got = canon(engine.query(sql))
            assert got == scanned(engine, sql, monkeypatch), sql
            found += bool(got) and "COUNT" not in sql
    assert found > 10  # the queries found rows, not only empty answers
    if shape != "running":
        assert read_snapshot(series.dir("s")).base["keys"]  # key files were written and used
    series.store.close()


def test_merged_key_files_skip_the_rows_of_replaced_base_files(tmp_path, monkeypatch):
    """Key files get merged; a late rewrite then replaces base files a merged key file covers, and with
    the tail folded in (nothing left to deduplicate against) the lookup must drop those files' rows."""
    monkeypatch.setattr("pondstream.state.consolidate.TARGET_BYTES", 500)
    monkeypatch.setattr("pondstream.state.consolidate.ROW_GROUP", 4)
    monkeypatch.setattr("pondstream.state.consolidate.MERGE_COUNT", 2)
    monkeypatch.setattr("pondstream.state.consolidate.SMALL_KEYS", 1 << 30)
    monkeypatch.setattr("pondstream.state.keys.BATCH_ROWS", 2)
    schema = SHAPES["window"][0]
    series = open_series(tmp_path, "window")

    def put(rows: list[tuple[int, str, int]], supersedes: bool = False) -> None:
        txn = Txn()
        table = pa.Table.from_pylist([{"w": T0 + timedelta(minutes=w), "k": k, "x": x} for w, k, x in rows], schema)
        series.write(txn, "s", table, supersedes=supersedes)
        series.store.commit(txn)

    for r in range(8):
        for w in range(r * 5, r * 5 + 5):
            put([(w, k, w) for k in "abcd"])
        consolidate(series, "s")
    put([(w, "b", -w) for w in (6, 7, 12, 13)], supersedes=True)  # late rewrites of windows long folded
    monkeypatch.setattr("pondstream.state.consolidate.MERGE_COUNT", 99)  # no merge now to tidy them away
    base = consolidate(series, "s")
    live = {f["file"] for f in base["files"]}
    merged = [k for k in base["keys"] if len(k["covers"]) > 1]
    assert merged and any(name not in live for k in merged for name, _ in k["covers"]), base["keys"]
    assert not read_snapshot(series.dir("s")).tail
    engine = Engine(tmp_path)
    for k in "abcdz":
        sql = f"SELECT w, k, x FROM s WHERE k = '{k}'"
        assert canon(engine.query(sql)) == scanned(engine, sql, monkeypatch)
    assert sorted(x for _, _, x in canon(engine.query("SELECT * FROM s WHERE k = 'b'"))) == sorted(
        [-6, -7, -12, -13, *(w for w in range(40) if w not in (6, 7, 12, 13))])
    series.store.close()


def test_as_of_versions_are_scanned_and_correct(tmp_path, monkeypatch):
    series = open_series(tmp_path, "window")
    rng, written = random.Random(5), set()
    write(series, "window", rng, 1, 40, written)
    consolidate(series, "s")
    write(series, "window", rng, 41, 50, written)
    engine = Engine(tmp_path)
    for sql, as_of in (("SELECT * FROM s VERSION AS OF 20 WHERE k = 'a'", None), ("SELECT * FROM s WHERE k = 'a'", 20)):
        assert engine.explain_route(sql, as_of) == "scan: DataFusion reads s (an as-of version: it reads history files)"
        with monkeypatch.context() as m:
            m.setattr("pondstream.engine.lookup.fetch", lambda *a: pytest.fail("an as-of query was looked up"))
            assert engine.query(sql, as_of).num_rows
    series.store.close()


@pytest.fixture
def views(tmp_path):
    """A state dir with a window view `s` (key k), a two-key view, a running aggregate, a view whose key
    is hidden, one with a DOUBLE key and a late series (no keys), each consolidated once."""
    store = StateStore(str(tmp_path / "rocksdb"))
    series = SeriesStore(tmp_path / "series", store)
    specs = {
        "s": SHAPES["window"], "two": SHAPES["two_keys"], "totals": SHAPES["running"],
        "hid": (pa.schema([("w", pa.timestamp("us")), ("_key0", pa.string()), ("x", pa.int64())]), ["w", "_key0"],
                {"w": "start"}),
        "dbl": (pa.schema([("w", pa.timestamp("us")), ("d", pa.float64()), ("x", pa.int64())]), ["w", "d"],
                {"w": "start"}),
        "s__late": (pa.schema([("w", pa.timestamp("us")), ("k", pa.string())]), [], {"w": "start"}),
    }
    for name, (schema, identity, times) in specs.items():
        series.ensure(name, schema, "view", identity, times, hidden=[c for c in schema.names if c.startswith("_")])
        row = {"w": T0, "k": "a", "n": 2, "x": 1, "_key0": "a", "d": 1.5}
        txn = Txn()
        series.write(txn, name, pa.Table.from_pylist([{c: row[c] for c in schema.names}], schema))
        store.commit(txn)
        consolidate(series, name)
    store.close()
    return Engine(tmp_path)


LOOKUPS = [
    ("SELECT * FROM s WHERE k = 'a'", "point lookup on s by k = 'a': 1 batch(es) of 1 key file(s) covering 1 of 1"),
    ("select X from S where K = 'a'", "point lookup on s by k = 'a'"),  # unquoted names fold, as in DataFusion
    ("SELECT * FROM s WHERE (k = 'a') AND w >= TIMESTAMP '2026-01-01 00:01:00'", "covering 0 of 1 base file(s)"),
    ("SELECT * FROM s WHERE w < '2026-01-01 00:01:00' AND k = 'a'", "covering 1 of 1 base file(s) (window range)"),
    ("SELECT * FROM s t WHERE t.k = 'a' AND t.w BETWEEN '2025-12-31' AND '2026-01-02'", "point lookup on s"),
    ("SELECT * FROM s WHERE 'a' = k", "point lookup on s by k = 'a'"),
    ("SELECT k, COUNT(*) FROM s WHERE k = 'a' AND x > 3 GROUP BY k", "1 other condition(s)"),
    ("SELECT * FROM s WHERE k = 'a' AND (x > 3 OR x < 0)", "1 other condition(s)"),
    ("SELECT * FROM s WHERE k = 'a' AND w >= to_timestamp_micros('2026-01-01')", "1 other condition(s)"),
    ("SELECT * FROM two WHERE n = -2 AND k = 'a'", "point lookup on two by k = 'a' AND n = -2"),
    ("SELECT * FROM totals WHERE k = 'a'", "row groups by statistics in 1 base file(s) (sorted by key)"),
]
SCANS = [
    ("SELECT * FROM s", "no WHERE fixing k"),
    ("SELECT * FROM s WHERE k = 'a' OR k = 'b'", "WHERE does not fix k to a literal"),
    ("SELECT * FROM s WHERE LOWER(k) = 'a'", "WHERE does not fix k"),
    ("SELECT * FROM s WHERE k IN ('a')", "WHERE does not fix k"),
    ("SELECT * FROM s WHERE k = 1", "k is compared to 1, not a plain literal of its type (string)"),
    ("SELECT * FROM s WHERE k = x", "k is compared to x"),
    ("SELECT * FROM s WHERE k = E'a'", "not a plain literal"),
    ("SELECT * FROM two WHERE k = 'a'", "WHERE does not fix n"),
    ("SELECT * FROM two WHERE k = 'a' AND n = '2'", "n is compared to '2'"),
    ("SELECT * FROM two WHERE k = 'a' AND n = 2.5", "n is compared to 2.5"),
    ("SELECT * FROM s a JOIN s b ON a.k = b.k WHERE a.k = 'a'", "a join"),
    ("SELECT * FROM s, two WHERE s.k = 'a'", "a join"),
    ("SELECT * FROM s WHERE k = (SELECT MAX(k) FROM s)", "a subquery"),
    ("SELECT k, (SELECT COUNT(*) FROM s) FROM s WHERE k = 'a'", "a subquery"),
    ("WITH t AS (SELECT * FROM s) SELECT * FROM t WHERE k = 'a'", "a WITH clause"),
    ("SELECT * FROM s WHERE k = 'a' UNION ALL SELECT * FROM s WHERE k = 'b'", "not a single SELECT"),
    ("SELECT * FROM s t WHERE s.k = 'a'", "WHERE does not fix k"),  # DataFusion says why that fails
    ("SELECT * FROM hid WHERE x = 1", "one of its keys is not a column of the view (_key0)"),
    ("SELECT * FROM dbl WHERE d = 1.5", "its key d is double; lookups take text or integer keys"),
    ("SELECT * FROM s__late WHERE k = 'a'", "s__late cannot be looked up: it has no key columns"),
    ('SELECT * FROM "S" WHERE k = \'a\'', "S is not a view"),
    ("SELECT * FROM public.s WHERE k = 'a'", "FROM is not a plain table name"),
    ("EXPLAIN SELECT * FROM s WHERE k = 'a'", "not a query"),
    ("SELECT 1", "not one table in FROM"),
]


@pytest.mark.parametrize(("sql", "route"), LOOKUPS)
def test_what_routes_to_a_lookup(views, monkeypatch, sql, route):
    assert route in views.explain_route(sql)
    assert views.explain_route(sql).startswith("point lookup")
    assert canon(views.query(sql)) == scanned(views, sql, monkeypatch)


@pytest.mark.parametrize(("sql", "reason"), SCANS)
def test_what_is_scanned(views, monkeypatch, sql, reason):
    route = views.explain_route(sql)
    assert route.startswith("scan: DataFusion") and reason in route, route
    with monkeypatch.context() as m:  # and Engine.query really takes the scan route
        m.setattr("pondstream.engine.lookup.fetch", lambda *a: pytest.fail("looked up"))
        try:
            views.query(sql)
        except EngineError:
            pass  # some are errors on the scan route too (a bad qualifier, a refused statement)


def test_damaged_key_file_is_reported(views):
    key_file = next((views.state_dir / "series" / "s").glob("k*.keys"))
    good = key_file.read_bytes()
    with KeyFile(key_file, "") as kf:
        first_batch = int(kf.offsets[0])
    for at, why in ((first_batch + 20, r"batch 0 does not match its checksum"), (len(good) - 40, "its footer's checksum"),
                    (len(good) - 1, "no key-file trailer"), (10, "unreadable schema")):
        data = bytearray(good)
        data[at] ^= 0xFF
        key_file.write_bytes(bytes(data))
        with pytest.raises(EngineError, match=rf"k\d+-\d+\.keys is damaged \({why}"):
            views.query("SELECT * FROM s WHERE k = 'a'")
    key_file.write_bytes(good[:-3])
    with pytest.raises(EngineError, match="no key-file trailer"):
        views.query("SELECT * FROM s WHERE k = 'a'")
    key_file.write_bytes(good)
    assert views.query("SELECT * FROM s WHERE k = 'a'").num_rows == 1
    key_file.unlink()  # what the repair hint says: the view is scanned until consolidation rebuilds it
    assert "is missing (each consolidation rebuilds" in views.explain_route("SELECT * FROM s WHERE k = 'a'")
    assert views.query("SELECT * FROM s WHERE k = 'a'").num_rows == 1


def test_old_bases_get_key_files_one_per_consolidation(tmp_path, monkeypatch):
    """A base consolidated before key files existed is scanned (and says why) until consolidations have
    given each of its files a key file; answers never change on the way."""
    monkeypatch.setattr("pondstream.state.consolidate.TARGET_BYTES", 400)
    monkeypatch.setattr("pondstream.state.consolidate.ROW_GROUP", 8)
    series = open_series(tmp_path, "window")
    rng, written = random.Random(3), set()
    with monkeypatch.context() as m:
        m.setattr("pondstream.state.consolidate.key_columns", lambda meta, schema: (["k"], "off"))
        write(series, "window", rng, 1, 30, written)
        consolidate(series, "s")
    bare = len(read_snapshot(series.dir("s")).base["files"])
    assert bare > 2 and not read_snapshot(series.dir("s")).base["keys"]
    engine = Engine(tmp_path)
    sql = "SELECT w, k, x FROM s WHERE k = 'b'"
    routes = []
    for v in range(31, 31 + bare + 2):
        write(series, "window", rng, v, v, written)
        consolidate(series, "s")
        routes.append(engine.explain_route(sql))
        assert canon(engine.query(sql)) == scanned(engine, sql, monkeypatch)
    assert "have no key file yet" in routes[0]
    assert routes[-1].startswith("point lookup")
    (series.dir("s") / read_snapshot(series.dir("s")).base["keys"][0]["file"]).unlink()  # as after damage
    assert "is missing" in engine.explain_route(sql)
    for v in range(31 + bare + 2, 31 + 2 * bare + 4):
        write(series, "window", rng, v, v, written)
        consolidate(series, "s")
        assert canon(engine.query(sql)) == scanned(engine, sql, monkeypatch)
    assert engine.explain_route(sql).startswith("point lookup")
    series.store.close()


def test_end_to_end_hourly_sales(tmp_path, monkeypatch):
    """A real pipeline: run, compact, then look customers up through Engine.query."""
    rows = make_orders(6000, seed=4, keys=300, step_s=30)
    src = write_jsonl(tmp_path / "orders.jsonl", rows)
    with Engine(tmp_path / "state") as engine:
        engine.execute(orders_stream(src) + HOURLY)
        engine.run(checkpoint_interval=0.05)
        engine.compact("hourly_sales")
    engine = Engine(tmp_path / "state")
    for c in ["c1", "c17", "c299", "nobody"]:
        sql = (f"SELECT hour, orders, total FROM hourly_sales WHERE customer_id = '{c}' "
               "AND hour >= TIMESTAMP '2026-01-01 10:00:00' ORDER BY hour")
        assert engine.explain_route(sql).startswith("point lookup on hourly_sales by customer_id")
        assert canon(engine.query(sql)) == scanned(engine, sql, monkeypatch)
    total = engine.query("SELECT SUM(orders) AS n FROM hourly_sales WHERE customer_id = 'c1'").column("n")[0].as_py()
    assert total == sum(1 for r in rows if r["customer_id"] == "c1" and r["amount"] > 0)


def test_lookup_caches_follow_new_versions_and_a_recreated_view(tmp_path, monkeypatch):
    """Lookups keep views' descriptions, snapshots and decoded key-file batches while the files are
    unchanged (state/statcache.py, state/keys.py KEY_FILES); a new version, a consolidation and a view
    dropped and recreated under the same name are all seen by the next identical lookup."""
    import time

    import pondstream.engine.lookup as lookup

    monkeypatch.setattr("pondstream.state.statcache.RACY_NS", 0)  # keep what was just written, too
    monkeypatch.setattr("pondstream.state.keys.RACY_NS", 0)
    reads = []
    real = lookup.read_snapshot
    monkeypatch.setattr(lookup, "read_snapshot", lambda d: reads.append(d) or real(d))
    schema = SHAPES["window"][0]
    series = open_series(tmp_path, "window")

    def put(rows: list[tuple[int, str, int]], supersedes: bool = False) -> None:
        time.sleep(0.02)  # past the file system's timestamp granularity, as RACY_NS otherwise ensures
        txn = Txn()
        table = pa.Table.from_pylist([{"w": T0 + timedelta(minutes=w), "k": k, "x": x} for w, k, x in rows], schema)
        series.write(txn, "s", table, supersedes=supersedes)
        series.store.commit(txn)

    engine = Engine(tmp_path)
    sql = "SELECT w, x FROM s WHERE k = 'a'"

    def xs() -> list[int]:
        assert engine.explain_route(sql).startswith("point lookup on s")
        return sorted(engine.query(sql).column("x").to_pylist())

    put([(0, "a", 1), (0, "b", 2)])
    consolidate(series, "s")
    assert xs() == [1]
    n = len(reads)
    assert xs() == [1] and len(reads) == n  # the snapshot came from the cache
    put([(1, "a", 3)])
    assert xs() == [1, 3]
    put([(0, "a", 5)], supersedes=True)
    assert xs() == [3, 5]
    consolidate(series, "s")
    assert xs() == [3, 5]
    txn = Txn()
    series.drop(txn, "s")
    series.store.commit(txn)
    with pytest.raises(EngineError):
        engine.query(sql)
    time.sleep(0.02)
    series.ensure("s", schema, "view", ["w", "k"], {"w": "start"})
    put([(0, "a", 7), (0, "c", 8)])
    consolidate(series, "s")  # the same file names as the dropped view's first base and key file
    assert xs() == [7]
    assert canon(engine.query(sql)) == scanned(engine, sql, monkeypatch)
    series.store.close()
