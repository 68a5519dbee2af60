"""Partial aggregates of open windows, as append-only runs of Arrow IPC per (view, window).

Each checkpoint appends at most one run per touched window (no read-modify-write on the hot path).
A window's runs are merged when it is emitted (and, while allowed lateness keeps it, replaced by that
one merged run), or compacted into one when they pile up; a range delete drops expired windows.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pondstream.state.paths import key_prefix
from pondstream.state.store import StateStore, Txn, from_u64, prefix_end, u64

COMPACT_AFTER = 16


def to_ipc(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    return sink.getvalue().to_pybytes()


def from_ipc(data: bytes) -> pa.Table:
    return pa.ipc.open_stream(data).read_all()


class WindowState:
    """Runs for one view. `merge` combines partial tables (operators.partials.merge_partials)."""

    def __init__(self, store: StateStore, view: str, merge: Callable[[list[pa.Table]], pa.Table]) -> None:
        self.store, self.merge = store, merge
        self.prefix = key_prefix(b"s", view)
        self.runs: dict[int, int] = defaultdict(int)  # window start -> number of runs
        self.sizes: dict[int, int] = defaultdict(int)  # window start -> bytes stored (from the keys, no values read)
        pre = len(self.prefix)
        for key in store.keys(self.prefix, prefix_end(self.prefix)):
            w = from_u64(key[pre: pre + 8])
            self.runs[w] += 1
            self.sizes[w] += from_u64(key[pre + 16: pre + 24]) if len(key) >= pre + 24 else 0  # older keys: unknown

    def _put(self, txn: Txn, w: int, seq: int, part: pa.Table) -> None:
        """One run; its key ends with the value's size, so state size is known without reading values."""
        blob = to_ipc(part)
        txn.put(self.prefix + u64(w) + u64(seq) + u64(len(blob)), blob)
        self.sizes[w] += len(blob)

    @property
    def size_bytes(self) -> int:
        """Bytes of Arrow IPC this view holds in RocksDB (before RocksDB's compression)."""
        return sum(self.sizes.values())

    def _window_range(self, ws: int) -> tuple[bytes, bytes]:
        lo = self.prefix + u64(ws)
        return lo, prefix_end(lo)

    def _read(self, lo: bytes, hi: bytes) -> list[pa.Table]:
        return [from_ipc(v) for _, v in self.store.scan(lo, hi)]

    @property
    def open_windows(self) -> int:
        return len(self.runs)

    def append(self, txn: Txn, partials: pa.Table | None, seq: int) -> None:
        """One run per window present in `partials`."""
        if partials is None or partials.num_rows == 0:
            return
        for w, part in by_window(partials):
            if self.runs[w] >= COMPACT_AFTER:
                lo_key, hi_key = self._window_range(w)
                part = self.merge([*self._read(lo_key, hi_key), part])
                txn.delete_range(lo_key, hi_key)
                self.runs[w] = self.sizes[w] = 0
            self._put(txn, w, seq, part)
            self.runs[w] += 1

    def read(self, windows: set[int]) -> list[pa.Table]:
        """All stored runs of the given windows (one range scan from the lowest to the highest)."""
        if not windows:
            return []
        lo, hi = self.prefix + u64(min(windows)), self.prefix + u64(max(windows) + 1)
        pre = len(self.prefix)
        return [from_ipc(v) for k, v in self.store.scan(lo, hi) if from_u64(k[pre: pre + 8]) in windows]

    def stored_windows(self, lo: int | None, hi: int) -> set[int]:
        """Windows with state whose start is in (lo, hi]."""
        return {w for w in self.runs if (lo is None or w > lo) and w <= hi}

    def replace(self, txn: Txn, partials: pa.Table, seq: int) -> None:
        """Make `partials` the only run of each window it holds (emitted windows kept for lateness)."""
        for w, part in by_window(partials):
            txn.delete_range(*self._window_range(w))
            self.sizes[w] = 0
            self._put(txn, w, seq, part)
            self.runs[w] = 1

    def drop(self, txn: Txn, window: int) -> None:
        """Remove one window's state."""
        txn.delete_range(*self._window_range(window))
        self.runs.pop(window, None)
        self.sizes.pop(window, None)

    def expire(self, txn: Txn, bound: int) -> None:
        """Drop the state of every window with start <= bound (one range delete)."""
        gone = [w for w in self.runs if w <= bound]
        if gone:
            txn.delete_range(self.prefix, self.prefix + u64(max(gone) + 1))
            for w in gone:
                del self.runs[w]
                self.sizes.pop(w, None)


def by_window(partials: pa.Table) -> Iterator[tuple[int, pa.Table]]:
    """(window id, its rows) for each window in a partial table."""
    partials = partials.sort_by("__ws")
    ws = partials.column("__ws").combine_chunks().cast(pa.int64()).to_numpy()
    cuts = np.flatnonzero(np.diff(ws)) + 1
    for lo, hi in zip(np.concatenate(([0], cuts)), np.concatenate((cuts, [len(ws)])), strict=True):
        yield int(ws[lo]), partials.slice(int(lo), int(hi - lo))


def split_by_bound(partials: pa.Table | None, bound: int) -> tuple[pa.Table | None, pa.Table | None]:
    """(windows with start <= bound, the rest)."""
    if partials is None:
        return None, None
    mask = pc.less_equal(partials.column("__ws"), pa.scalar(bound, pa.int64()).cast(pa.timestamp("us")))
    return partials.filter(mask), partials.filter(pc.invert(mask))


def window_starts(partials: pa.Table | None) -> set[int]:
    if partials is None or partials.num_rows == 0:
        return set()
    return set(pc.unique(partials.column("__ws").cast(pa.int64())).to_pylist())
