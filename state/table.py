"""Register a series as a DataFusion table: only files whose time range overlaps a query's predicate
are opened (the log's min/max become each file's partition expression); Parquet statistics prune inside.

When a later version rewrote a window and key, the table keeps only the latest row for each (identity
columns, highest `_version`); `as_of` reads the series as it was at version N.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from datafusion import SessionContext, SQLOptions

from pondstream.state.consolidate import SUPERSEDED_BY, replaceable
from pondstream.state.errors import EngineError
from pondstream.state.leases import hold
from pondstream.state.series import EMPTY, read_snapshot, series_meta, window_column

TS = pa.timestamp("us")
# Queries only read: no COPY ... TO, CREATE EXTERNAL TABLE, INSERT, SET, PREPARE.
READ_ONLY = SQLOptions().with_allow_ddl(False).with_allow_dml(False).with_allow_statements(False)
PARQUET = ds.ParquetFileFormat(
    default_fragment_scan_options=ds.ParquetFragmentScanOptions(page_checksum_verification=True))


def visible_columns(meta: dict[str, Any], schema: pa.Schema) -> list[str]:
    hidden = set(meta.get("hidden", []))
    return [n for n in schema.names if n not in hidden and n != "_version"]


def quote(name: str) -> str:
    """A SQL identifier that DataFusion takes exactly as written (case kept, quotes doubled)."""
    return '"' + name.replace('"', '""') + '"'


def _dataset(series_dir: Path, entries: list[dict[str, Any]], schema: pa.Schema) -> ds.Dataset:
    """The files of `entries` as one dataset; each file's time ranges are its partition expression, so a
    query's time predicate skips files without opening them."""
    if (series_dir / EMPTY).exists():  # never pruned: with every file pruned, DataFusion still has a scan
        entries = [*entries, {"file": EMPTY}]  # (it refuses to sort one of zero partitions: SanityCheckPlan)
    parts = []
    for e in entries:
        expr = ds.scalar(True)
        for col, (lo, hi) in e.get("ranges", {}).items():
            lo_s, hi_s = pa.scalar(lo, pa.int64()).cast(TS), pa.scalar(hi, pa.int64()).cast(TS)
            expr = expr & (ds.field(col) >= lo_s) & (ds.field(col) <= hi_s)
        parts.append(expr)
    return ds.FileSystemDataset.from_paths(
        [str(series_dir / e["file"]) for e in entries], schema=schema, format=PARQUET,
        filesystem=pafs.LocalFileSystem(), partitions=parts,
    )


def register_series(ctx: SessionContext, name: str, series_dir: Path, as_of: int | None = None) -> None:
    """Register `name` (exactly, case kept) in `ctx`: the latest row per identity, or as of `as_of`.

    A series is a base (one row per identity, consolidated), history (rows later versions replaced) and a
    tail of versions not yet consolidated. Latest: the base rows no tail row replaces, plus the newest tail
    row of each identity. As of n below the base: base and history rows valid at n
    (`_version <= n < _superseded_by`), which are one per identity by construction.

    The files go in as `"__raw:<name>:<part>"`: a colon cannot appear in a series name, so no raw table
    can shadow a view."""
    meta, schema = series_meta(series_dir)
    hold(ctx, series_dir)  # before the snapshot: files it names stay until ctx (the query) is done
    snap = read_snapshot(series_dir)
    base = snap.base
    if as_of is not None and as_of < base["history_from"]:
        raise EngineError(f"version {as_of} of {name} is no longer kept: rows it replaced were dropped after "
                          f"history_retention; the oldest readable version is {base['history_from']}")
    file_schema = schema.append(pa.field("_version", pa.int64()))
    names = ", ".join(quote(c) for c in file_schema.names)
    identity = meta.get("identity") or []
    old = as_of is not None and as_of < base["version"]
    files = [f for f in base["files"] if not old or f["versions"][0] <= as_of]
    tail = [e for e in snap.tail if as_of is None or e["version"] <= as_of]

    def table(part: str, entries: list[dict[str, Any]], schema: pa.Schema) -> str:
        raw = quote(f"__raw:{name}:{part}")
        ctx.register_dataset(raw, _dataset(series_dir, entries, schema))
        return raw

    tcol = window_column(meta)
    replaces = bool(identity) and any(e.get("supersedes") for e in tail)
    dirty = replaceable(files, tail, tcol) if replaces else []
    clean = [f for f in files if f not in dirty]
    version_cut = f" WHERE _version <= {as_of}" if old else ""
    # Base files no tail version can touch are read as they are; only the others meet the anti-join.
    parts = [f"SELECT {names} FROM {table('base', clean, file_schema)}{version_cut}"]
    history = [h for h in base["history"] if old and h["versions"][0] <= as_of and h["superseded"][1] > as_of]
    if history:
        hist_schema = file_schema.append(pa.field(SUPERSEDED_BY, pa.int64()))
        parts.append(f"SELECT {names} FROM {table('history', history, hist_schema)} "
                     f"WHERE _version <= {as_of} AND {SUPERSEDED_BY} > {as_of}")
    if tail:
        raw_tail = table("tail", tail, file_schema)
        if replaces:
            ids = ", ".join(quote(c) for c in identity)
            if dirty:
                same = " AND ".join(f"(b.{quote(c)} IS NOT DISTINCT FROM t.{quote(c)})" for c in identity)
                parts.append(f"SELECT {names} FROM {table('touched', dirty, file_schema)} b WHERE NOT EXISTS "
                             f"(SELECT 1 FROM {raw_tail} t WHERE {same})")
            parts.append(f"SELECT {names} FROM (SELECT *, row_number() OVER (PARTITION BY {ids} ORDER BY "
                         f"_version DESC) AS __rn FROM {raw_tail}) WHERE __rn = 1")
        else:
            parts.append(f"SELECT {names} FROM {raw_tail}")
    cols = ", ".join(quote(c) for c in visible_columns(meta, schema))
    sql = f"SELECT {cols} FROM ({' UNION ALL '.join(parts)})"
    ctx.register_view(quote(name), ctx.sql_with_options(sql, READ_ONLY))


def damaged_file(series_dir: Path) -> tuple[Path, str] | None:
    """The first Parquet file of the series that its log entry does not vouch for (size, or a full read
    with page checksums verified), and why. Run only after a query failed: it reads every file."""
    snap = read_snapshot(series_dir)
    for e in [*snap.base["files"], *snap.base["history"], *snap.tail]:
        path = series_dir / e["file"]
        try:
            if path.stat().st_size != e["bytes"]:
                return path, f"{path.stat().st_size} bytes where the log records {e['bytes']}"
            pq.ParquetFile(path, page_checksum_verification=True).read()
        except FileNotFoundError:
            return path, "missing"
        except (OSError, pa.ArrowException) as err:
            return path, f"unreadable: {str(err).splitlines()[0]}"
    return None
