"""What every source hands the runner: a typed batch, the position after it, and records it set aside."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

BAD_RECORD_SCHEMA = pa.schema([
    ("source", pa.string()), ("partition", pa.int32()), ("offset", pa.int64()), ("raw", pa.binary()),
    ("reason", pa.string()), ("error", pa.string()),
])


EVENT_TIME_RANGE = ("1900-01-01", "2300-01-01")  # defaults of the options event_time_min / event_time_max


class Pacer:
    """Holds a generated source to `rate` items per second (0: as fast as possible): how many of the
    next `want` items may be produced now (0 after a short sleep, when ahead of schedule)."""

    def __init__(self, rate: float, start: int) -> None:
        self.rate, self.start, self.t0 = rate, start, time.monotonic()

    def allow(self, done: int, want: int) -> int:
        if self.rate <= 0:
            return want
        n = max(1, min(want, int(self.rate / 10)))
        due = self.start + (time.monotonic() - self.t0) * self.rate
        if done + n > due:
            time.sleep(min(0.1, (done + n - due) / self.rate))
            return 0
        return n


def event_time_range(options: dict[str, str]) -> tuple[int, int]:
    """[min, max) of sane event times in µs; events outside it are bad records, not watermark movers."""
    lo = options.get("event_time_min", EVENT_TIME_RANGE[0])
    hi = options.get("event_time_max", EVENT_TIME_RANGE[1])
    try:
        return tuple(pa.scalar(t).cast(pa.timestamp("us")).value for t in (lo, hi))  # type: ignore[return-value]
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        raise ValueError(f"event_time_min/event_time_max must be timestamps like '1900-01-01', "
                         f"got {lo!r} and {hi!r}") from None


def reason(error: str) -> str:
    """A short category to count bad records by."""
    e = error.lower()
    if "null or missing" in e:
        return "missing event time"
    if e.startswith("event time out of range"):
        return "event time out of range"
    if e.startswith("expression error"):
        return "expression error"
    if e.startswith("unreadable file"):
        return "unreadable file"
    if e.startswith("malformed"):
        return "malformed"
    if "json parse error" in e and ("changed from" in e or "convert" in e):
        return "wrong type"
    if "json parse error" in e or "csv parse error" in e or "expected" in e and "columns" in e:
        return "malformed"
    return "wrong type"


def as_json(rows: pa.Table) -> list[bytes]:
    """Each row as JSON bytes: the `raw` of a bad record that was already decoded (a Parquet row, a row an
    expression failed on, the window and keys of an output row)."""
    return [json.dumps(r, default=str).encode() for r in rows.to_pylist()]


def bad_records(source: str, offsets: list[int], raws: list[bytes], errors: list[str],
                partitions: list[int] | None = None) -> pa.Table:
    parts = partitions if partitions is not None else [None] * len(offsets)
    return pa.table([[source] * len(offsets), parts, offsets, raws, [reason(e) for e in errors], errors],
                    schema=BAD_RECORD_SCHEMA)


@dataclass
class SourceBatch:
    data: pa.Table  # columns exactly as the stream declares them
    position: dict[str, Any]  # where to resume after this batch
    bad: pa.Table | None = None  # malformed records (BAD_RECORD_SCHEMA), never silently dropped
    watermark: int | None = None  # a source that knows its watermark (a view read as a stream) sets it
    partitions: np.ndarray | None = None  # partition number of each row (sources with several partitions)
    offsets: np.ndarray | None = None  # where each row came from (byte offset, message offset, row number)
    origin: str | None = None  # the file or topic the rows came from


class Source:
    """A resumable reader. `read()` returns None when nothing is available yet; `finished` when bounded
    input is exhausted."""

    bounded: bool = True
    finished: bool = False
    prefetch_safe: bool = False  # read() may run on a reader thread of its own (operators.prefetch)

    def read(self) -> SourceBatch | None:
        raise NotImplementedError

    def describe(self) -> str:
        return type(self).__name__

    def position(self) -> dict[str, Any] | None:
        """Where this source stands before any batch (sources that resolve a start point say so here)."""
        return None

    def partitions(self) -> list[str]:
        """Partitions whose watermarks combine into the source's (one for files and the generator)."""
        return ["0"]

    def health(self) -> str | None:
        """A problem worth showing in the progress line (e.g. broker unreachable), or None."""
        return None

    def partition_status(self) -> list[dict[str, Any]]:
        """Per-partition offsets and lag for `pondstream status` (sources with partitions)."""
        return []

    def committed(self, position: dict[str, Any]) -> None:
        """Called after a checkpoint with this position landed (e.g. to report offsets for lag monitoring)."""

    def close(self) -> None:
        """Release files or connections."""
