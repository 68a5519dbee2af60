"""Window assignment: event times (µs) to window starts, vectorized with numpy.

TUMBLE gives each event one window, `floor(ts / size) * size`. HOP gives it `size / slide` windows:
the latest slide boundary at or before ts, and the ones before it that still contain ts.
"""

from __future__ import annotations

import numpy as np

from pondstream.sql.planner import WindowSpec


def assign(ts_us: np.ndarray, spec: WindowSpec) -> tuple[np.ndarray | None, np.ndarray]:
    """(row index per assignment or None when 1:1, window start per assignment) for each event."""
    base = ts_us - np.mod(ts_us, spec.slide_us)
    if spec.kind == "tumble":
        return None, base
    k = spec.per_event
    rows = np.repeat(np.arange(len(ts_us), dtype=np.int64), k)
    steps = np.tile(np.arange(k, dtype=np.int64) * spec.slide_us, len(ts_us))
    return rows, base[rows] - steps


def closing_bound(watermark_us: int, spec: WindowSpec) -> int:
    """Windows with start <= this bound have end <= watermark: they are complete."""
    return watermark_us - spec.size_us
