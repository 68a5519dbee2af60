"""Find the records that make a vectorized step fail, without giving up the vectorized step.

One bad record must never stop a pipeline, yet running a step per record is slow. So a step runs over
the whole batch; only when it raises is the batch bisected, until each failing record stands alone: a
few bad records cost a few extra calls (about 2 log2(n) per bad record), and the rest is processed.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


_PY_ERROR = re.compile(r"FunctionError\((['\"])(.*?)\1\)")  # a Python function's error inside DataFusion's


def first_line(error: BaseException) -> str:
    """An exception's message, one line, bounded: fit for an errors series. A Python function's own message
    is taken out of the PyErr DataFusion wraps it in."""
    text = str(error).strip()
    m = _PY_ERROR.search(text)
    text = m.group(2) if m else text.split("\n")[0]
    return (text or type(error).__name__)[:300]


def bisect_failures(n: int, step: Callable[[int, int], T],
                    errors: tuple[type[BaseException], ...] = (Exception,)
                    ) -> tuple[list[tuple[int, int, T]], list[tuple[int, str]]]:
    """Run `step(lo, hi)` over records [0, n); where it raises one of `errors`, split the range.

    Returns the results as (lo, hi, result) in record order, and (index, message) of each record that
    fails on its own."""
    done: list[tuple[int, int, T]] = []
    failed: list[tuple[int, str]] = []

    def go(lo: int, hi: int) -> None:
        if lo >= hi:
            return
        try:
            done.append((lo, hi, step(lo, hi)))
            return
        except errors as e:
            if hi - lo == 1:
                failed.append((lo, first_line(e)))
                return
        mid = (lo + hi) // 2
        go(lo, mid)
        go(mid, hi)

    go(0, n)
    return done, failed
