"""What every source hands the runner: a typed batch, the position after it, and records it set aside."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyarrow as pa

BAD_RECORD_SCHEMA = pa.schema([
    ("source", pa.string()), ("offset", pa.int64()), ("raw", pa.binary()), ("error", pa.string()),
])


def bad_records(source: str, offsets: list[int], raws: list[bytes], errors: list[str]) -> pa.Table:
    return pa.table([[source] * len(offsets), offsets, raws, errors], schema=BAD_RECORD_SCHEMA)


@dataclass
class SourceBatch:
    data: pa.Table  # columns exactly as the stream declares them
    position: dict[str, Any]  # where to resume after this batch
    bad: pa.Table | None = None  # malformed records (BAD_RECORD_SCHEMA), never silently dropped


class Source:
    """A resumable reader. `read()` returns None when nothing is available yet; `finished` when bounded
    input is exhausted."""

    bounded: bool = True
    finished: bool = False

    def read(self) -> SourceBatch | None:
        raise NotImplementedError

    def describe(self) -> str:
        return type(self).__name__

    def close(self) -> None:
        """Release files or connections."""
