"""Window assignment: event times (µs) to window starts, vectorized with numpy.

TUMBLE gives each event one window, `floor(ts / size) * size`. HOP gives it `size / slide` windows:
the latest slide boundary at or before ts, and the ones before it that still contain ts. CUMULATE gives
it the windows of its period that end after it.
"""

from __future__ import annotations

import numpy as np

from pondstream.sql.windows import WindowSpec


def assign(ts_us: np.ndarray, spec: WindowSpec) -> tuple[np.ndarray | None, np.ndarray]:
    """(row index per assignment or None when 1:1, window id per assignment) for each event.

    The id is `end - size`: the start for TUMBLE and HOP. A CUMULATE event belongs to every window of its
    period [start, start + max) whose end (start + k * step) is after it."""
    if spec.kind == "cumulate":
        start = ts_us // spec.size_us * spec.size_us
        first_k = (ts_us - start) // spec.slide_us + 1
        counts = spec.size_us // spec.slide_us - first_k + 1
        rows = np.repeat(np.arange(len(ts_us), dtype=np.int64), counts)
        nth = np.arange(len(rows), dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
        end = start[rows] + (first_k[rows] + nth) * spec.slide_us
        return rows, end - spec.size_us
    base = latest_start(ts_us, spec)
    if spec.kind == "tumble":
        return None, base
    k = spec.per_event
    rows = np.repeat(np.arange(len(ts_us), dtype=np.int64), k)
    steps = np.tile(np.arange(k, dtype=np.int64) * spec.slide_us, len(ts_us))
    return rows, base[rows] - steps


def latest_start(ts_us: np.ndarray, spec: WindowSpec) -> np.ndarray:
    """The start of the latest TUMBLE or HOP window holding each event: the last slide boundary at or
    before it (floor, also before 1970). `assign` derives every window from it, and the query functions
    TUMBLE_START/HOP_START call it, so a query labels an event with the window a view gives it.
    Floor division by a scalar (numpy divides by a constant with libdivide) is ~9x faster than np.mod."""
    return ts_us // spec.slide_us * spec.slide_us


def window_end(window_id: np.ndarray, spec: WindowSpec) -> np.ndarray:
    """A window's end from its id (its start, for TUMBLE and HOP); windows are half-open [start, end)."""
    return window_id + spec.size_us


def true_start(window_id: np.ndarray, spec: WindowSpec) -> np.ndarray:
    """A window's start from its id (they differ only for CUMULATE)."""
    if spec.kind != "cumulate":
        return window_id
    end = window_id + spec.size_us
    return (end - 1) // spec.size_us * spec.size_us


def closing_bound(watermark_us: int, spec: WindowSpec) -> int:
    """Windows with start <= this bound have end <= watermark: they are complete."""
    return watermark_us - spec.size_us
