"""Helpers for streaming query results: how `cat` splits a view into pieces it can sort one at a time,
and a clean interpreter exit while DataFusion scan threads may still be inside Python.

Why the exit needs help: a view's files are scanned through a pyarrow dataset, which DataFusion drives
from its own (tokio) threads, each taking the GIL for every batch. When a query stops before its end
(LIMIT, a page of the table, `| head`, an error), scans of other files may still be in the middle of a
pyarrow read. If the interpreter starts finalizing then, Python 3.11-3.13 end such a thread with
`pthread_exit` as it takes the GIL back; that forced unwind crosses Rust frames and the process aborts
("FATAL: exception not rethrown", SIGABRT) after all output was written. Those threads hold a Python
thread state only while they are inside Python, so at exit we wait (briefly: they finish one batch)
until no thread states but the interpreter's own threads' remain.
"""

from __future__ import annotations

import atexit
import ctypes
import threading
import time
from collections.abc import Iterable
from typing import Any

PIECE_ROWS = 250_000  # cat sorts about this many rows at a time: DataFusion's sort memory stays small
EXIT_WAIT_S = 10.0  # upper bound on waiting for scan threads at exit (each needs one batch: milliseconds)

_api = ctypes.pythonapi
_api.PyInterpreterState_Get.restype = ctypes.c_void_p
_api.PyInterpreterState_ThreadHead.argtypes = [ctypes.c_void_p]
_api.PyInterpreterState_ThreadHead.restype = ctypes.c_void_p
_api.PyThreadState_Next.argtypes = [ctypes.c_void_p]
_api.PyThreadState_Next.restype = ctypes.c_void_p
_baseline: int | None = None
_lock = threading.Lock()


def _foreign_thread_states() -> int:
    """Python thread states of threads the threading module does not know: native threads (DataFusion's)
    currently inside Python. Read under the GIL, so the list cannot change while it is walked."""
    n, t = 0, _api.PyInterpreterState_ThreadHead(_api.PyInterpreterState_Get())
    while t:
        n += 1
        t = _api.PyThreadState_Next(t)
    return n - len(threading.enumerate())


def _wait_for_scans() -> None:
    deadline = time.monotonic() + EXIT_WAIT_S
    while _foreign_thread_states() > (_baseline or 0) and time.monotonic() < deadline:
        time.sleep(0.002)  # releases the GIL, so the scan threads can finish their batch and leave Python


def guard_exit() -> None:
    """Before the first query runs: at exit, wait for its scan threads to leave Python (see above)."""
    global _baseline
    with _lock:
        if _baseline is None:
            _baseline = max(0, _foreign_thread_states())
            atexit.register(_wait_for_scans)


def overlaps(entry: dict[str, Any], column: str | None, start: int | None, end: int | None) -> bool:
    """Whether a log entry's file can hold rows with `column` in [start, end) (epoch microseconds)."""
    r = entry.get("ranges", {}).get(column) if column else None
    if r is None:
        return entry["rows"] > 0
    return (start is None or r[1] >= start) and (end is None or r[0] < end)


def pieces(entries: Iterable[dict[str, Any]], column: str, rows: int | None = None) -> list[tuple[int, int]] | None:
    """Disjoint, increasing [lo, hi] ranges of `column` (inclusive, epoch microseconds) covering every
    file's range, each holding about `rows` rows: files whose ranges overlap share a range (so a row
    and the later version that replaces it are read together), small neighbours are joined, and a
    range with more rows is cut into equal spans of time (each reads only the row groups it overlaps).
    `rows` defaults to PIECE_ROWS.
    Sorting range after range by `column` first is then the same as sorting everything at once.
    None if a file with rows has no range for `column` (all its values null)."""
    rows = rows or PIECE_ROWS
    spans = []
    for e in entries:
        if e["rows"]:
            r = e.get("ranges", {}).get(column)
            if r is None:
                return None
            spans.append((r[0], r[1], e["rows"]))
    joined: list[list[int]] = []
    for lo, hi, n in sorted(spans):
        if joined and (lo <= joined[-1][1] or joined[-1][2] + n <= rows):
            joined[-1][1], joined[-1][2] = max(joined[-1][1], hi), joined[-1][2] + n
        else:
            joined.append([lo, hi, n])
    out = []
    for lo, hi, n in joined:
        k = max(1, min(-(-n // rows), hi - lo + 1))  # ceil(n / rows) spans, at least one value each
        cuts = [lo + (hi - lo + 1) * i // k for i in range(k + 1)]
        out += [(a, b - 1) for a, b in zip(cuts, cuts[1:], strict=False)]
    return out
