"""Register a series as a DataFusion table: only files whose time range overlaps a query's predicate
are opened (the log's min/max become each file's partition expression); Parquet statistics prune inside.

When a later version rewrote a window and key, the table keeps only the latest row for each (identity
columns, highest `_version`); `as_of` restricts the files to versions <= N first.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from datafusion import SessionContext, SQLOptions

from pondstream.state.series import read_log, series_meta

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


def dataset(series_dir: Path, as_of: int | None = None) -> tuple[ds.Dataset | None, list[dict], pa.Schema]:
    meta, schema = series_meta(series_dir)
    file_schema = schema.append(pa.field("_version", pa.int64()))
    entries = [e for e in read_log(series_dir) if as_of is None or e["version"] <= as_of]
    if not entries:
        return None, entries, file_schema
    parts = []
    for e in entries:
        expr = ds.scalar(True)
        for col, (lo, hi) in e.get("ranges", {}).items():
            lo_s, hi_s = pa.scalar(lo, pa.int64()).cast(TS), pa.scalar(hi, pa.int64()).cast(TS)
            expr = expr & (ds.field(col) >= lo_s) & (ds.field(col) <= hi_s)
        parts.append(expr)
    dset = ds.FileSystemDataset.from_paths(
        [str(series_dir / e["file"]) for e in entries], schema=file_schema, format=PARQUET,
        filesystem=pafs.LocalFileSystem(), partitions=parts,
    )
    return dset, entries, file_schema


def register_series(ctx: SessionContext, name: str, series_dir: Path, as_of: int | None = None) -> None:
    """Register `name` (exactly, case kept) in `ctx`: the latest row per identity, or as of `as_of`.

    The raw files go in as `"__raw:<name>"`: a colon cannot appear in a series name, so no raw table
    can shadow a view."""
    meta, schema = series_meta(series_dir)
    dset, entries, file_schema = dataset(series_dir, as_of)
    raw = quote(f"__raw:{name}")
    if dset is None:
        ctx.register_record_batches(raw, [[pa.RecordBatch.from_pylist([], file_schema)]])
    else:
        ctx.register_dataset(raw, dset)
    cols = ", ".join(quote(c) for c in visible_columns(meta, schema))
    identity = meta.get("identity") or []
    if identity and any(e.get("supersedes") for e in entries):
        part = ", ".join(quote(c) for c in identity)
        sql = (f"SELECT {cols} FROM (SELECT *, row_number() OVER (PARTITION BY {part} ORDER BY _version DESC) "
               f"AS __rn FROM {raw}) WHERE __rn = 1")
    else:
        sql = f"SELECT {cols} FROM {raw}"
    ctx.register_view(quote(name), ctx.sql_with_options(sql, READ_ONLY))


def damaged_file(series_dir: Path) -> tuple[Path, str] | None:
    """The first Parquet file of the series that its log entry does not vouch for (size, or a full read
    with page checksums verified), and why. Run only after a query failed: it reads every file."""
    for e in read_log(series_dir):
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
