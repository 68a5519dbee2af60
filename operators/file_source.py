"""`connector = 'file'`: JSON lines, CSV or Parquet from a file, a directory (name order) or a glob.

Text formats are read in large byte chunks cut at a line end, so a batch is one pyarrow decode and the
position after it is an exact byte offset: a restart resumes at the same boundaries as the first run.
"""

from __future__ import annotations

import csv
import glob
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pondstream.operators.decode import (
    PARSE_ERRORS,
    check_event_time,
    conform,
    csv_parser,
    decode_chunk,
    json_parser,
)
from pondstream.operators.isolate import bisect_failures, first_line
from pondstream.operators.source import Source, SourceBatch, as_json, bad_records, event_time_range

FORMATS = ("jsonl", "json", "csv", "parquet")
BOM = b"\xef\xbb\xbf"
FILE_DONE = 1 << 62  # a position offset meaning "this file is done"


class FileSourceError(ValueError):
    """A file source that cannot start: the message names the path and how to fix it."""


def list_files(path: str) -> list[str]:
    if any(ch in path for ch in "*?["):
        files = sorted(p for p in glob.glob(path) if os.path.isfile(p))
    elif os.path.isdir(path):
        files = sorted(str(p) for p in Path(path).iterdir() if p.is_file() and not p.name.startswith("."))
    elif os.path.isfile(path):
        files = [path]
    else:
        raise FileSourceError(f"file source path {path!r} does not exist (working directory: {os.getcwd()})")
    return files


class FileSource(Source):
    bounded = True
    prefetch_safe = True

    def __init__(self, schema: pa.Schema, event_time: str, options: dict[str, str],
                 position: dict | None = None, base_dir: str | None = None) -> None:
        path = options.get("path")
        if not path:
            raise FileSourceError("file source needs a path: WITH (connector = 'file', path = 'data/*.jsonl', ...)")
        if base_dir and not os.path.isabs(path):
            path = os.path.join(base_dir, path)
        self.format = options.get("format", "jsonl").lower()
        if self.format not in FORMATS:
            raise FileSourceError(f"unknown file format {self.format!r}; use one of jsonl, csv, parquet")
        self.schema, self.event_time, self.path = schema, event_time, path
        try:
            self.batch_bytes = int(options.get("batch_bytes", 16 << 20))
            self.time_range = event_time_range(options)
        except ValueError as e:
            raise FileSourceError(f"file source option: {e}") from None
        if self.batch_bytes < 1:
            raise FileSourceError(f"batch_bytes must be a positive number of bytes, not {self.batch_bytes}")
        self.files = list_files(path)
        pos = position or {}
        done_upto = pos.get("file")
        self.index = 0
        self.offset = int(pos.get("offset", 0))
        if done_upto is not None:
            later = [i for i, f in enumerate(self.files) if f >= done_upto]
            self.index = later[0] if later else len(self.files)
            if self.index < len(self.files) and self.files[self.index] != done_upto:
                self.offset = 0
        self._fh = None
        self._parse = None
        self.finished = self.index >= len(self.files)

    def describe(self) -> str:
        return f"file {self.path} ({len(self.files)} files, {self.format})"

    def _position(self) -> dict:
        return {"file": self.files[self.index], "offset": self.offset}

    def _next_file(self) -> None:
        if self._fh:
            self._fh.close()
        self._fh, self._parse = None, None
        self.index += 1
        self.offset = 0
        self.finished = self.index >= len(self.files)

    def read(self) -> SourceBatch | None:
        while not self.finished:
            batch = self._read_parquet() if self.format == "parquet" else self._read_text()
            if batch is not None:
                return batch
        return None

    def _read_text(self) -> SourceBatch | None:
        name = self.files[self.index]
        if self._fh is None:
            self._fh = open(name, "rb")  # noqa: SIM115 - kept open across batches
            if self.format == "csv":
                header_line = self._fh.readline()
                header = next(csv.reader([header_line.decode("utf-8-sig")]), [])
                self._parse = csv_parser(self.schema, [h.strip() for h in header])
                self.offset = max(self.offset, len(header_line))
            else:
                self._parse = json_parser(self.schema)
                if self.offset == 0 and self._fh.read(3) == BOM:  # a UTF-8 byte-order mark is no record
                    self.offset = 3
            self._fh.seek(self.offset)
        chunk = self._fh.read(self.batch_bytes)
        if not chunk:
            self._next_file()
            return None
        if len(chunk) == self.batch_bytes:
            cut = chunk.rfind(b"\n")
            while cut < 0:  # a line longer than a chunk: read on to its end
                more = self._fh.read(self.batch_bytes)
                if not more:
                    break
                chunk += more
                cut = chunk.rfind(b"\n")
            if cut >= 0:
                self._fh.seek(self.offset + cut + 1)
                chunk = chunk[: cut + 1]
        start = self.offset
        self.offset += len(chunk)
        good, bad, offsets = decode_chunk(chunk, start, self._parse, name, self.event_time,
                                          objects=self.format != "csv", time_range=self.time_range)
        data = good if good is not None else self.schema.empty_table()
        return SourceBatch(data, self._position(), bad, offsets=offsets, origin=name)

    def _read_parquet(self) -> SourceBatch | None:
        """One row group per batch (position: file and row group). Rows whose values do not fit the
        declared types, or lack a sane event time, are bad records; a file pyarrow cannot open or read
        is one bad record naming it, and reading goes on with the next file."""
        name = self.files[self.index]
        if self.offset >= FILE_DONE:  # set aside as unreadable before a restart
            self._next_file()
            return None
        try:
            pf = pq.ParquetFile(name)
            if self.offset >= pf.num_row_groups:
                self._next_file()
                return None
            cols = [c for c in self.schema.names if c in pf.schema_arrow.names]
            raw = pf.read_row_group(self.offset, columns=cols)
        except (OSError, pa.ArrowException) as e:
            bad = bad_records(name, [self.offset], [b""], [f"unreadable file: {first_line(e)}"])
            self._next_file()
            return SourceBatch(self.schema.empty_table(), {"file": name, "offset": FILE_DONE}, bad)
        group = self.offset
        self.offset += 1
        done, failed = bisect_failures(raw.num_rows, lambda lo, hi: conform(raw.slice(lo, hi - lo), self.schema),
                                       PARSE_ERRORS)
        rows = np.concatenate([np.arange(lo, hi) for lo, hi, _ in done]) if done else np.empty(0, np.int64)
        table = pa.concat_tables([t for _, _, t in done]) if done else self.schema.empty_table()
        bad = [(i, err) for i, err in failed]
        if table.num_rows:
            kept, rows, time_bad = check_event_time(table, rows, self.event_time, self.time_range)
            table = kept if kept is not None else self.schema.empty_table()
            bad = sorted(bad + time_bad)
        records = None
        if bad:
            raws = as_json(raw.take(pa.array([i for i, _ in bad])))
            records = bad_records(f"{name} (row group {group})", [i for i, _ in bad], raws, [e for _, e in bad])
        return SourceBatch(table, self._position(), records, offsets=rows, origin=f"{name} (row group {group})")

    def close(self) -> None:
        if self._fh:
            self._fh.close()
