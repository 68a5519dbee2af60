"""Consolidation: fold a series' tail of small versions into a base of a few large files.

A view writes a version per checkpoint that emits; left alone, a year of a 1-minute view is half a
million files, and every query pays for all of them. Consolidation keeps the folder bounded:

- the tail versions and the base files they touch are merged; for each identity (window and keys) only
  the row of the highest version stays in the base, sorted by window start then key, in files of about
  TARGET_BYTES (Parquet statistics per row group then prune by time and, within a window, by key);
- the rows a later version replaced go to *history* files with `_superseded_by`, so `VERSION AS OF n`
  still reads rows valid at n (`_version <= n < _superseded_by`), for `history_retention`;
- a view with a window column and keys also gets *key files* (state/keys.py): the base's rows sorted by
  key, so a point lookup (`WHERE key = 'x'`, engine/lookup.py) decodes a batch or two per key file
  instead of scanning; each consolidation writes one for the base files it wrote and merges small ones;
- replaced files are deleted at once when no query is reading the series (state/leases.py), else they
  stay on disk for GRACE_S, so a query that planned with them still finds them.

The new base is one RocksDB write that also deletes the folded tail entries, so a crash at any point
leaves either the old layout or the new one (the files of an unfinished one are swept at start-up).
What a latest-version query returns never changes.
"""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pondstream.state.keys import PART, KeyFile, key_columns, live_parts, only_parts, write_key_file
from pondstream.state.leases import no_readers
from pondstream.state.series import (
    ROW_GROUP,
    SeriesStore,
    _write_parquet,
    series_meta,
    time_ranges,
    window_column,
)
from pondstream.state.store import Txn

TARGET_BYTES = 64 << 20  # in memory per base file (tens of MB of Parquet at most)
MIN_TAIL = 32  # tail versions that make a series worth consolidating in the background
MAX_TAIL_BYTES = 32 << 20  # or this many bytes of tail files
GRACE_S = 60.0  # how long a replaced file stays for queries that planned with it
DEFAULT_RETENTION_US = 7 * 86_400_000_000  # history_retention unless the view says otherwise
SUPERSEDED_BY = "_superseded_by"
SMALL_KEYS = TARGET_BYTES  # a key file with fewer live rows than this (in memory) is merged with others
MERGE_COUNT = 4  # settled small key files that make a merge worth it
MERGE_BYTES = 2 * TARGET_BYTES  # the most rows (in memory) one merge reads


def due(tail: list[dict[str, Any]]) -> bool:
    """Whether a tail is long enough to fold in now (background consolidation)."""
    return len(tail) >= MIN_TAIL or sum(e.get("bytes", 0) for e in tail) >= MAX_TAIL_BYTES


def consolidate(series: SeriesStore, name: str, upto: int | None = None,
                retention_us: int = DEFAULT_RETENTION_US, now: float | None = None) -> dict[str, Any] | None:
    """Fold the tail versions of `name` up to `upto` (all, if None) into its base and commit the new base.

    `upto` is held back by readers that still need individual versions (a view over this view, a sink
    catching up). Returns the new base, or None when there was nothing to do."""
    now = time.time() if now is None else now
    base = series.base(name)
    tail = [e for e in series.entries(name) if upto is None or e["version"] <= upto]
    expired = [h for h in base["history"] if h["kept_at"] < now - retention_us / 1e6]
    if not tail and not expired and not any(r["retired_at"] < now - GRACE_S for r in base["retired"]):
        return None
    d = series.dir(name)
    meta, schema = series_meta(d)
    identity = meta.get("identity") or []
    tcol = window_column(meta)
    file_schema = schema.append(pa.field("_version", pa.int64()))
    replaces = bool(identity) and any(e.get("supersedes") for e in tail)
    keys, why_not = key_columns(meta, schema)
    # Key files for lookups; without a window column the base is sorted by key already and needs none.
    indexed = keys if tcol and why_not is None else None

    touched = _touched(base["files"], tail, tcol, replaces) if tail else []
    merged = _read(d, [*touched, *tail], file_schema)
    latest, replaced = _latest(merged, identity) if replaces else (merged, None)
    gen = base["gen"] + 1
    files = [f for f in base["files"] if f not in touched]
    written: list[dict[str, Any]] = []
    if tail:
        latest = _sort(latest, tcol, identity)
        written = _write_files(d, f"b{gen:08d}", latest, meta["time_columns"])
        files += written
    files.sort(key=lambda f: (f["ranges"].get(tcol, [0])[0] if tcol else 0))
    key_files, old_keys = base.get("keys", []), []
    if indexed and tail:
        key_files, old_keys = _key_files(d, f"k{gen:08d}", key_files, files, written, latest, file_schema, indexed)

    history = [h for h in base["history"] if h not in expired]
    history_from = max([base["history_from"], *(h["superseded"][1] for h in expired)])
    if replaced is not None and replaced.num_rows:
        if retention_us > 0:
            history += _write_files(d, f"h{gen:08d}", replaced, meta["time_columns"], kept_at=now)
        else:
            history_from = tail[-1]["version"]

    gone = [*touched, *tail, *expired, *old_keys]
    new = {
        "version": tail[-1]["version"] if tail else base["version"], "gen": gen, "files": files, "keys": key_files,
        "history": history, "history_from": history_from,
        "rows_written": base["rows_written"] + sum(e["rows"] for e in tail),
        "written_at": tail[-1]["written_at"] if tail else base.get("written_at"),
        "watermark": tail[-1].get("watermark") if tail else base.get("watermark"),  # as of the base's version
        "consolidated_at": dt.datetime.fromtimestamp(now, dt.UTC).replace(tzinfo=None).isoformat(),
    }
    with no_readers(d) as idle:  # while idle, no reader can start: replaced files go now
        past = [r for r in base["retired"] if idle or r["retired_at"] < now - GRACE_S]
        new["retired"] = [] if idle else [*(r for r in base["retired"] if r not in past),
                                          *({"file": f["file"], "retired_at": now} for f in gone)]
        deleted = [r["file"] for r in past] + ([f["file"] for f in gone] if idle else [])
        txn = Txn()
        series.put_base(txn, name, new, deleted)
        series.store.commit(txn)  # then the folder is rewritten from RocksDB, and `deleted` removed
    return new


def _touched(files: list[dict[str, Any]], tail: list[dict[str, Any]], tcol: str | None,
             replaces: bool) -> list[dict[str, Any]]:
    """The base files the tail may replace rows of, plus the newest base file while it is small (so
    base files grow to their target size instead of one per consolidation)."""
    out = replaceable(files, tail, tcol) if replaces else []
    if files and files[-1] not in out and files[-1]["bytes"] < TARGET_BYTES // 8:
        out.append(files[-1])
    return out


def _read(d: Path, entries: list[dict[str, Any]], schema: pa.Schema) -> pa.Table:
    tables = [pq.read_table(d / e["file"], schema=schema) for e in entries]
    return pa.concat_tables(tables) if tables else schema.empty_table()


def _latest(table: pa.Table, identity: list[str]) -> tuple[pa.Table, pa.Table]:
    """Split rows into the newest per identity and the ones a higher version replaced (with the version
    that replaced each: the next one of its identity). NULL keys equal NULL keys."""
    if not table.num_rows:
        return table, table.append_column(SUPERSEDED_BY, pa.array([], pa.int64()))
    order = pc.sort_indices(table, [(c, "ascending", "at_end") for c in [*identity, "_version"]])
    rows = table.take(order)
    n = rows.num_rows
    same_next = pa.array([True] * (n - 1), pa.bool_())
    for c in identity:
        col = rows.column(c).combine_chunks()
        a, b = col.slice(0, n - 1), col.slice(1)
        equal = pc.or_(pc.fill_null(pc.equal(a, b), False), pc.and_(pc.is_null(a), pc.is_null(b)))
        same_next = pc.and_(same_next, equal)
    replaced = pa.concat_arrays([same_next, pa.array([False])])
    versions = rows.column("_version").combine_chunks()
    next_version = pa.concat_arrays([versions.slice(1), pa.array([None], pa.int64())])
    old = rows.filter(replaced).append_column(SUPERSEDED_BY, next_version.filter(replaced))
    return rows.filter(pc.invert(replaced)), old


def _sort(table: pa.Table, tcol: str | None, identity: list[str]) -> pa.Table:
    """Window start, then key: row-group statistics then prune by time, and by key within a window."""
    keys = [tcol] if tcol else []
    keys += [c for c in identity if c not in keys]
    if not keys:
        return table
    return table.take(pc.sort_indices(table, [(c, "ascending", "at_end") for c in keys]))


def _key_files(d: Path, stem: str, old: list[dict[str, Any]], files: list[dict[str, Any]],
               written: list[dict[str, Any]], latest: pa.Table, schema: pa.Schema,
               indexed: list[str]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The key files of the new base (every base file covered by exactly one) and the old ones it drops.

    The base files just written (`latest`, in that order) get one key file. A key file whose base files are
    all gone (or that was deleted, being damaged) is dropped; one with some gone stays (lookups skip those
    rows) until a merge. One base file without a key file (consolidated before key files existed, or whose
    key file was deleted) gets one per consolidation, so such a series is indexed gradually.
    Then, if MERGE_COUNT small key files have settled (not covering the newest base file, which the next
    consolidation rewrites), the oldest of them are merged, up to MERGE_BYTES."""
    live = {f["file"] for f in files}
    keep = [k for k in old if any(name in live for name, _ in k["covers"]) and (d / k["file"]).exists()]
    gone = [k for k in old if k not in keep]
    new = []
    if written:
        part = np.repeat(np.arange(len(written), dtype=np.int32), [f["rows"] for f in written])
        new.append(_key_file(d / f"{stem}-0000.keys", latest.append_column(PART, pa.array(part)), written, indexed))
    covered = {name for k in keep for name, _ in k["covers"]} | {f["file"] for f in written}
    bare = [f for f in files if f["file"] not in covered]
    if bare:
        rows = pq.read_table(d / bare[0]["file"], schema=schema)
        rows = rows.append_column(PART, pa.array(np.zeros(rows.num_rows, np.int32)))
        new.append(_key_file(d / f"{stem}-0001.keys", rows, bare[:1], indexed))
    out = keep + new
    newest = files[-1]["file"] if files else None
    small = [k for k in out if newest not in {n for n, _ in k["covers"]} and _live_bytes(k, live) < SMALL_KEYS]
    if len(small) >= MERGE_COUNT:
        group, total = [], 0
        for k in small:
            if group and total + _live_bytes(k, live) > MERGE_BYTES:
                break
            group.append(k)
            total += _live_bytes(k, live)
        if len(group) >= 2:
            merged = _merge_key_files(d, d / f"{stem}-0002.keys", group, live,
                                      schema.append(pa.field(PART, pa.int32())), indexed)
            out = [k for k in out if k not in group] + [merged]
            gone += [k for k in group if k in keep]
    return out, gone


def _live_bytes(k: dict[str, Any], live: set[str]) -> int:
    rows = sum(n for name, n in k["covers"] if name in live)
    total = sum(n for _, n in k["covers"])
    return k["mem"] * rows // total if total else 0


def _key_file(path: Path, rows: pa.Table, covers: list[dict[str, Any]],
              indexed: list[str]) -> dict[str, Any]:
    return {"file": path.name, "covers": [[f["file"], f["rows"]] for f in covers],
            **write_key_file(path, rows, indexed)}


def _merge_key_files(d: Path, path: Path, group: list[dict[str, Any]], live: set[str], schema: pa.Schema,
                     indexed: list[str]) -> dict[str, Any]:
    """One key file for the live rows of `group` (their `_part` renumbered into the new covers)."""
    tables, covers = [], []
    for k in group:
        renumber = np.full(len(k["covers"]), -1, np.int32)
        for i, (name, n) in enumerate(k["covers"]):
            if name in live:
                renumber[i] = len(covers)
                covers.append({"file": name, "rows": n})
        with KeyFile(d / k["file"], "consolidation reads it to merge it") as kf:
            rows = pa.concat_tables([schema.empty_table(), *kf.read_all()])
        rows = only_parts(rows, live_parts(k, live))
        tables.append(rows.set_column(rows.schema.get_field_index(PART), PART,
                                      pc.take(pa.array(renumber), rows.column(PART))))
    return _key_file(path, pa.concat_tables(tables), covers, indexed)


def _write_files(d: Path, stem: str, table: pa.Table, time_columns: dict[str, str],
                 kept_at: float | None = None) -> list[dict[str, Any]]:
    """`table` as files of about TARGET_BYTES each; their entries (ranges for pruning, versions held)."""
    if not table.num_rows:
        return []
    per_row = max(1, table.nbytes // table.num_rows)
    step = max(ROW_GROUP, TARGET_BYTES // per_row)
    out = []
    for i, start in enumerate(range(0, table.num_rows, step)):
        part = table.slice(start, step)
        path = d / f"{stem}-{i:04d}.parquet"
        _write_parquet(part, path)
        versions = pc.min_max(part.column("_version"))
        entry = {"file": path.name, "rows": part.num_rows, "bytes": path.stat().st_size,
                 "ranges": time_ranges(part, time_columns),
                 "versions": [versions["min"].as_py(), versions["max"].as_py()]}
        if kept_at is not None:
            sup = pc.min_max(part.column(SUPERSEDED_BY))
            entry.update(kept_at=kept_at, superseded=[sup["min"].as_py(), sup["max"].as_py()])
        out.append(entry)
    return out


def replaceable(files: list[dict[str, Any]], tail: list[dict[str, Any]], tcol: str | None) -> list[dict[str, Any]]:
    """The base files holding rows a superseding tail version may replace: those whose window range
    overlaps a superseding version's (all of them when there is no window column to tell)."""
    sup = [e for e in tail if e.get("supersedes")]
    if not sup:
        return []
    spans = [e["ranges"][tcol] for e in sup if tcol and tcol in e["ranges"]]
    if tcol is None or len(spans) < len(sup):
        return list(files)
    lo, hi = min(s[0] for s in spans), max(s[1] for s in spans)
    return [f for f in files if tcol not in f["ranges"] or (f["ranges"][tcol][0] <= hi and f["ranges"][tcol][1] >= lo)]
