"""The state dir is the engine's alone: names cannot reach outside it, catalog changes wait for the
lock, and damaged files are reported by name instead of giving partial answers."""

from __future__ import annotations

import errno
import itertools
import os
import random
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

from pondstream.engine import Engine, EngineError
from pondstream.engine.cli import main
from pondstream.sql import SqlError
from pondstream.state.store import StateLockedError

from conftest import PYTHON, canon

ORDERS = """CREATE STREAM orders (order_id BIGINT, customer_id VARCHAR, amount DOUBLE, event_time TIMESTAMP,
    WATERMARK FOR event_time AS event_time - INTERVAL '5' SECOND)
    WITH (connector = 'generator', rows = '{rows}', keys = '50'{extra});
"""
HOURLY = """CREATE MATERIALIZED VIEW {name} AS SELECT TUMBLE_START(event_time, INTERVAL '10' MINUTE) AS w,
    customer_id, COUNT(*) AS n FROM orders GROUP BY TUMBLE(event_time, INTERVAL '10' MINUTE), customer_id;
"""


def q(name: str) -> str:
    """`name` as a quoted SQL identifier, whatever it holds."""
    return '"' + name.replace('"', '""') + '"'


def hostile_names() -> list[str]:
    """Every pairing of path-ish, quoting and odd-character fragments, plus long and absolute names."""
    fragments = ["..", ".", "", "/", "\\", "a", "X", "\x00", "é", '"', "'", " ", "\n"]
    names = {"".join(p) for n in (1, 2) for p in itertools.product(fragments, repeat=n)}
    rng = random.Random(7)
    names |= {"".join(rng.choices([*fragments, "Ω", "-", "abs"], k=rng.randint(3, 6))) for _ in range(30)}
    names |= {"/abs/path", "../../x", "a" * 300, "a" * 64, "a/../../b", "ok\x00tail", "café", "1abc"}
    return sorted(names)


def outside_tree(tmp_path: Path, state: Path) -> dict[str, bytes]:
    """Every file beside the state dir (under tmp_path/work), with contents."""
    root = tmp_path / "work"
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*")
            if p.is_file() and not p.is_relative_to(state)}


def refused_or_ok(fn, *args):
    """Run `fn`; a refusal must be a user-facing error, never a traceback."""
    try:
        return fn(*args)
    except (EngineError, SqlError) as e:
        assert str(e)
        return e


@pytest.fixture
def guarded(tmp_path):
    """A state dir with one working view, and a sentinel beside it that nothing may touch."""
    state = tmp_path / "work" / "state"
    (tmp_path / "work" / "sentinel.txt").parent.mkdir(parents=True)
    (tmp_path / "work" / "sentinel.txt").write_text("keep me")
    e = Engine(state)
    e.execute(ORDERS.format(rows=2000, extra="") + HOURLY.format(name="base"))
    e.run(checkpoint_interval=0)
    base = canon(e.query("SELECT * FROM base"))
    yield e, state, base
    e.close()


def assert_intact(tmp_path: Path, e: Engine, state: Path, base, before: dict[str, bytes], full: bool = True) -> None:
    """The sentinel and everything else beside the state dir unchanged; RocksDB and view `base` whole."""
    assert (tmp_path / "work" / "sentinel.txt").read_text() == "keep me"
    assert outside_tree(tmp_path, state) == before, "a file outside the state dir changed"
    assert (state / "rocksdb" / "CURRENT").exists() and (state / "series" / "base" / "_head.json").exists()
    if full:
        assert canon(e.query("SELECT * FROM base")) == base


def test_hostile_names_are_refused_or_work_and_never_escape(guarded, tmp_path):
    e, state, base = guarded
    before = outside_tree(tmp_path, state)
    names = hostile_names()
    assert len(names) > 180
    rng = random.Random(3)
    created = []
    for name in names:
        view = refused_or_ok(e.execute, HOURLY.format(name=q(name)))
        stream = refused_or_ok(e.execute, ORDERS.format(rows=10, extra="").replace("orders", q(name + "_in"), 1))
        if not isinstance(view, Exception):
            created.append(name)
        for got in (stream, view):
            if isinstance(got, Exception):
                assert "Traceback" not in str(got)
        for sql in (f"SELECT * FROM {q(name)}", f"SELECT * FROM {q(name)} VERSION AS OF 1"):
            refused_or_ok(e.query, sql)
        refused_or_ok(e.cat, name)
        assert_intact(tmp_path, e, state, base, before, full=False)
    assert_intact(tmp_path, e, state, base, before)
    assert {"a", "X", "aX", "Xa", "aa"} <= set(created) <= {n for n in names if n.isascii() and n.isidentifier()}
    assert {"a_in", "X_in"} <= set(e.catalog.streams) and "_in" not in e.catalog.streams  # _...: reserved
    e.run(checkpoint_interval=0)
    for name in created:  # the usable ones work end to end
        assert canon(e.query(f"SELECT * FROM {q(name)}")) == base
        assert canon(e.cat(name)) == base
        assert e.status()["series"][name]["rows"] == len(base)
    for name in names:
        for kind, target in (("MATERIALIZED VIEW", name), ("STREAM", name), ("STREAM", name + "_in")):
            refused_or_ok(e.execute, f"DROP {kind} {rng.choice(['', 'IF EXISTS '])}{q(target)}")
        assert_intact(tmp_path, e, state, base, before, full=False)
    assert_intact(tmp_path, e, state, base, before)
    assert e.status()["series"]["base"]["rows"] == len(base)
    assert set(e.series_names()) == {"base", "base__late", "orders__errors"}
    assert set(e.catalog.views) == {"base"} and set(e.catalog.streams) == {"orders"}


def test_names_of_derived_series_are_reserved(guarded):
    e, state, base = guarded
    for name in ("base__late", "orders__errors", "x__LATE", "y__errors"):
        for sql in (HOURLY.format(name=q(name)), ORDERS.format(rows=10, extra="").replace("orders", q(name), 1)):
            with pytest.raises((EngineError, SqlError), match="reserved"):
                e.execute(sql)
    assert canon(e.query("SELECT * FROM base")) == base


def test_hostile_names_through_the_cli(guarded, tmp_path, capsys):
    e, state, base = guarded
    e.close()
    before = outside_tree(tmp_path, state)
    for name in ["..", ".", "", "a/b", "/abs", "../../x", "a" * 300, "é", 'a"b', "base/../.."]:
        sql = tmp_path / "p.sql"
        sql.write_text(ORDERS.format(rows=10, extra="") + HOURLY.format(name=q(name)))
        codes = [main(["run", str(sql), "--state-dir", str(state), "--quiet"]),
                 main(["cat", name, "--state-dir", str(state)]),
                 main(["query", f"SELECT * FROM {q(name)}", "--state-dir", str(state)]),
                 main(["status", "--state-dir", str(state)])]
        err = capsys.readouterr().err
        assert codes[:3] == [1, 1, 1] and codes[3] == 0, (name, err)
        assert "Traceback" not in err and ("cannot be used" in err or "no view named" in err)
        assert_intact(tmp_path, e, state, base, before)


def test_mixed_case_names_work_end_to_end(tmp_path, capsys):
    state = tmp_path / "state"
    with Engine(state) as e:
        e.execute(ORDERS.format(rows=2000, extra="").replace("orders", "Orders", 1)
                  + HOURLY.format(name='"HourlySales"').replace("FROM orders", "FROM Orders"))
        e.run(checkpoint_interval=0)
        rows = canon(e.query('SELECT * FROM "HourlySales"'))
        assert sum(r[2] for r in rows) == 2000
        assert canon(e.query("SELECT * FROM HourlySales")) == rows  # unique ignoring case
        assert canon(e.query('SELECT "HourlySales".w, customer_id, n FROM "HourlySales"')) == rows
        assert canon(e.query('SELECT * FROM "HourlySales" VERSION AS OF 1000')) == rows
        assert canon(e.cat("HourlySales")) == rows
        assert e.status()["series"]["HourlySales"]["rows"] == len(rows)
        assert e.execute("SHOW MATERIALIZED VIEWS")[0].column("name").to_pylist() == ["HourlySales"]
        e.query(f"SELECT * FROM {q(next(n for n in e.series_names() if n.endswith('__errors')))}")
    assert main(["cat", "HourlySales", "--state-dir", str(state), "--format", "csv"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == len(rows) + 1
    assert main(["status", "--state-dir", str(state)]) == 0
    assert "HourlySales: " in capsys.readouterr().out


# -- catalog changes take the lock -------------------------------------------------------------------

def test_catalog_unchanged_while_another_process_runs(tmp_path):
    state = tmp_path / "state"
    pipeline = tmp_path / "p.sql"
    pipeline.write_text(ORDERS.format(rows=0, extra=", rate = '20'") + HOURLY.format(name="hourly"))
    proc = subprocess.Popen([PYTHON, "-m", "pondstream.engine.cli", "run", str(pipeline), "--state-dir",
                             str(state), "--quiet"], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not (state / "status.json").exists():
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline, "the pipeline never checkpointed"
            time.sleep(0.1)
        before = (state / "catalog.json").read_bytes()
        other = Engine(state)
        for sql in (HOURLY.format(name="other"), "DROP MATERIALIZED VIEW hourly",
                    ORDERS.format(rows=5, extra="").replace("orders", "orders2", 1),
                    ORDERS.format(rows=5, extra="")):  # a changed definition, too
            with pytest.raises(StateLockedError, match="in use by another pondstream process"):
                other.execute(sql, reset=["orders"])
        second = subprocess.run([PYTHON, "-m", "pondstream.engine.cli", "run", str(pipeline), "--state-dir",
                                 str(state), "--reset", "hourly"], capture_output=True, text=True, timeout=120)
        assert second.returncode == 1 and "in use by another pondstream process" in second.stderr
        assert (state / "catalog.json").read_bytes() == before
        assert other.query("SELECT COUNT(*) AS c FROM hourly").num_rows == 1  # queries need no lock
    finally:
        proc.terminate()
        proc.wait(60)
    assert proc.returncode == 0, proc.stderr.read()
    assert Engine(state).catalog.views.keys() == {"hourly"}


# -- damage is detected, never read as a shorter answer ----------------------------------------------

ASKS = {
    "query": lambda e: canon(e.query("SELECT * FROM hourly")),
    "count": lambda e: e.query("SELECT COUNT(*) AS c, SUM(n) AS s FROM hourly").to_pylist(),
    "cat": lambda e: e.cat("hourly").to_pylist(),
    "range": lambda e: canon(e.cat("hourly", "2026-01-01 00:10:00", "2026-01-01 00:20:00")),
    "status": lambda e: e.status()["series"],
    "show": lambda e: e.execute("SHOW MATERIALIZED VIEWS")[0].to_pylist(),
}


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """The view from the brief, run to the end once: every damage test starts from a copy of it."""
    state = tmp_path_factory.mktemp("pristine") / "state"
    with Engine(state) as e:
        e.execute(ORDERS.format(rows=20000, extra=", batch_size = '1000'") + HOURLY.format(name="hourly"))
        e.run(checkpoint_interval=0)
        answers = {k: fn(e) for k, fn in ASKS.items()}
    assert answers["query"] and answers["status"]["hourly"]["versions"] >= 4
    return state, answers


FILES = ["catalog.json", "status.json", "series/hourly/_log.jsonl", "series/hourly/_head.json",
         "series/hourly/_series.json", "series/hourly/_schema.arrow", "series/hourly__late/_head.json",
         "series/hourly/v0000000003.parquet"]


def damages(rng: random.Random, data: bytes):
    """(description, new bytes or None for deleted): deletion, cuts at random offsets, flipped bytes."""
    yield "deleted", None
    yield "emptied", b""
    for cut in sorted(rng.sample(range(1, len(data)), min(10, len(data) - 1))):
        yield f"cut at {cut}", data[:cut]
    for _ in range(10):
        i = rng.randrange(len(data))
        yield f"byte {i} flipped", data[:i] + bytes([data[i] ^ (1 << rng.randrange(8))]) + data[i + 1:]


def _damage_cases():
    rng = random.Random(11)
    return [(f, rng.randrange(1 << 30)) for f in FILES]


@pytest.mark.parametrize(("rel", "seed"), _damage_cases())
def test_damage_gives_full_answer_or_names_the_file(pristine, tmp_path, rel, seed):
    src, answers = pristine
    data = (src / rel).read_bytes()
    rng = random.Random(seed)
    errors = 0
    for what, new in damages(rng, data):
        state = tmp_path / what.replace(" ", "_")
        shutil.copytree(src, state)
        if new is None:
            (state / rel).unlink()
        else:
            (state / rel).write_bytes(new)
        e = Engine(state)
        for ask, fn in ASKS.items():
            try:
                got = fn(e)
            except EngineError as err:
                errors += 1
                assert Path(rel).name in str(err), f"{rel} {what}: {ask} failed without naming the file: {err}"
                continue
            assert got == answers[ask], f"{rel} {what}: {ask} gave a different answer"
        shutil.rmtree(state)
    assert errors, f"no damage to {rel} was ever noticed"


@pytest.mark.parametrize("rel", [f for f in FILES if f.startswith("series/") and not f.endswith(".parquet")])
def test_next_run_repairs_damaged_series_files(pristine, tmp_path, rel):
    src, answers = pristine
    state = tmp_path / "state"
    shutil.copytree(src, state)
    (state / rel).unlink()
    with Engine(state) as e:
        with pytest.raises(EngineError, match="next `pondstream run`"):
            ASKS["query"](e) if "late" not in rel else ASKS["status"](e)
        e.run(checkpoint_interval=0)
        assert {k: fn(e) for k, fn in ASKS.items()} == answers


def test_torn_last_line_beyond_the_head_is_tolerated(pristine, tmp_path):
    src, answers = pristine
    state = tmp_path / "state"
    shutil.copytree(src, state)
    log = state / "series/hourly/_log.jsonl"
    log.write_bytes(log.read_bytes() + b'{"version": 99, "fi')  # a crash mid-append
    assert {k: fn(Engine(state)) for k, fn in ASKS.items()} == answers


# -- a full disk or a read-only state dir -------------------------------------------------------------

GENERATED = ORDERS.format(rows=20000, extra=", batch_size = '1000'") + HOURLY.format(name="hourly")


def _stopped_early(state: Path) -> Engine:
    """The generated pipeline, stopped after a few checkpoints (some windows emitted, more to come)."""
    e = Engine(state)
    e.execute(GENERATED)
    stop = threading.Event()
    e.run(stop, checkpoint_interval=0, on_progress=lambda p: stop.set() if p.checkpoints >= 10 else None)
    return e


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> list:
    with Engine(tmp_path_factory.mktemp("reference") / "state") as e:
        e.execute(GENERATED)
        e.run(checkpoint_interval=0)
        return canon(e.query("SELECT * FROM hourly"))


@pytest.mark.parametrize("fail_on", [".parquet", "_head.json", "_log.jsonl", "status.json", "_schema.arrow"])
def test_disk_full_is_a_message_and_the_last_checkpoint_survives(tmp_path, monkeypatch, reference, fail_on):
    e = _stopped_early(tmp_path / "state")
    first = canon(e.query("SELECT * FROM hourly"))
    e.close()
    assert 0 < len(first) < len(reference)
    real_replace, real_open = os.replace, open

    def full(path):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    def replace(src, dst, *a, **k):
        return full(dst) if str(dst).endswith(fail_on) else real_replace(src, dst, *a, **k)

    def opener(path, mode="r", *a, **k):
        return full(path) if str(path).endswith(fail_on) and "a" in mode else real_open(path, mode, *a, **k)

    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr("builtins.open", opener)
    with pytest.raises(EngineError, match="No space left on device") as err:
        e.run(checkpoint_interval=0)
    e.close()
    monkeypatch.undo()
    assert fail_on in str(err.value) and "last checkpoint is intact" in str(err.value)
    seen = canon(Engine(tmp_path / "state").query("SELECT * FROM hourly"))  # a whole checkpoint, never a mix
    assert set(first) <= set(seen) <= set(reference)
    with Engine(tmp_path / "state") as again:
        again.run(checkpoint_interval=0)
        assert canon(again.query("SELECT * FROM hourly")) == reference


def test_catalog_write_failure_keeps_the_old_catalog(guarded, monkeypatch):
    e, state, base = guarded
    before = (state / "catalog.json").read_bytes()

    def replace(src, dst):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(EngineError, match="cannot write .*catalog.json: No space left"):
        e.execute(HOURLY.format(name="more"))
    monkeypatch.undo()
    assert (state / "catalog.json").read_bytes() == before
