"""Window kinds and the sizes a view accepts: one place, so that views and the query functions
(engine/query_functions.py) accept exactly the same windows. Light to import: queries load it."""

from __future__ import annotations

from dataclasses import dataclass

from pondstream.sql.errors import SqlError

MAX_FAN_OUT = 1000  # HOP / CUMULATE windows one event falls in


@dataclass(frozen=True)
class WindowSpec:
    """TUMBLE(size), HOP(slide, size) or CUMULATE(step = slide, max size = size).

    Internally a window is identified by `end - size` (for TUMBLE and HOP that is its start); CUMULATE
    windows share a start and differ in end, so their true start is derived when rows are emitted."""

    kind: str  # "tumble" | "hop" | "cumulate" | "session" | "running" (no window: GROUP BY keys only)
    size_us: int
    slide_us: int

    @property
    def per_event(self) -> int:
        return self.size_us // self.slide_us


def window_spec(kind: str, sizes_us: list[int]) -> WindowSpec:
    """The window of TUMBLE(size), SESSION(gap), HOP(slide, size) or CUMULATE(step, max_size), sizes in µs
    (already positive and bounded); SqlError (unlocated) for a HOP or CUMULATE the views refuse. Query
    functions check their sizes here too, so a query accepts exactly the windows a view accepts."""
    if kind in ("tumble", "session"):
        return WindowSpec(kind, sizes_us[0], sizes_us[0])
    slide, size = sizes_us
    if size % slide:
        name = "HOP size must be a whole multiple of its slide" if kind == "hop" else \
            "CUMULATE max_size must be a whole multiple of its step"
        raise SqlError(name, hint="e.g. HOP(ts, INTERVAL '5' MINUTE, INTERVAL '1' HOUR)" if kind == "hop"
                       else "e.g. CUMULATE(TABLE s, DESCRIPTOR(ts), INTERVAL '1' HOUR, INTERVAL '1' DAY)")
    if size // slide > MAX_FAN_OUT:  # each event is in size/slide windows: state and work grow with it
        raise SqlError(f"{kind.upper()} size / slide is {size // slide}, more than {MAX_FAN_OUT} windows per event",
                       hint="use a larger slide (step) or a smaller size")
    return WindowSpec(kind, size, slide)
