"""`pondstream generate nexmark`: the Nexmark streams as files, so anyone can check results with other
tools (DuckDB, Spark, Flink) over exactly the events a `connector = 'nexmark'` stream reads."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pondstream.operators.nexmark import SCHEMAS, NexmarkSource

FORMATS = ("parquet", "jsonl")


def json_lines(table: pa.Table) -> pa.Array:
    """One JSON object per row, built column-wise (the generated text holds no character JSON must escape)."""
    parts: list[pa.Array | str] = []
    for i, f in enumerate(table.schema):
        col = table.column(i)
        if pa.types.is_timestamp(f.type):
            text = pc.binary_join_element_wise('"', pc.strftime(col, format="%Y-%m-%d %H:%M:%S"), '"', "")
        elif pa.types.is_string(f.type):
            text = pc.binary_join_element_wise('"', col, '"', "")
        else:
            text = col.cast(pa.string())
        parts += [("{" if i == 0 else ", ") + f'"{f.name}": ', text]
    out = pc.binary_join_element_wise(*parts, "}\n", "")
    return out.combine_chunks() if isinstance(out, pa.ChunkedArray) else out


def generate_nexmark(out: Path, events: int, seed: int = 0, formats: tuple[str, ...] = FORMATS,
                     progress: Callable[[int], None] | None = None) -> dict[str, int]:
    """Write person, auction and bid (the first `events` events) under `out`; returns rows per table."""
    out.mkdir(parents=True, exist_ok=True)
    rows = {}
    for table, schema in SCHEMAS.items():
        src = NexmarkSource(schema, "datetime", {"table": table, "events": str(events), "seed": str(seed),
                                                 "batch_size": "500000"})
        writer = pq.ParquetWriter(out / f"{table}.parquet", schema) if "parquet" in formats else None
        lines = (out / f"{table}.jsonl").open("wb") if "jsonl" in formats else None
        rows[table] = 0
        try:
            while (batch := src.read()) is not None:
                if writer is not None:
                    writer.write_table(batch.data)
                if lines is not None:
                    text = json_lines(batch.data)
                    if len(text):
                        offsets = np.frombuffer(text.buffers()[1], np.int32)[text.offset: text.offset + len(text) + 1]
                        lo, hi = int(offsets[0]), int(offsets[-1])
                        lines.write(memoryview(text.buffers()[2])[lo:hi])
                rows[table] += batch.data.num_rows
                if progress is not None:
                    progress(src.next_event)
        finally:
            if writer is not None:
                writer.close()
            if lines is not None:
                lines.close()
    return rows
