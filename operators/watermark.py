"""Event-time watermark of one source, per partition, combined by minimum; never moves back.

Each partition's watermark is the max event time it has delivered minus the declared delay. The source's
watermark is the minimum over partitions that are not idle, so one slow partition holds windows open
(correctly), but a partition silent for longer than `idle_timeout` stops holding them back until it
delivers again. When every partition is idle, the maximum is used (as Flink does), so a quiet topic still
closes the windows it has fully delivered. Single-partition sources (files, the generator) use "0".

Lateness is judged per event, never per batch: `per_event` gives each event the watermark formed by the
events read before it in its own partition (a running maximum), so where a batch happens to be cut, and how
partitions interleave, cannot change which events are late.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

END_OF_STREAM = np.iinfo(np.int64).max // 2  # far future, still safe to subtract window sizes from


class Watermark:
    def __init__(self, delay_us: int, idle_timeout_s: float = 30.0, state: dict[str, Any] | None = None) -> None:
        self.delay_us, self.idle_timeout_s = delay_us, idle_timeout_s
        state = state or {}
        self.value: int | None = state.get("value")
        self.max_event: dict[str, int | None] = dict(state.get("partitions", {}))
        now = time.monotonic()
        self.last_seen: dict[str, float] = {p: now for p in self.max_event}

    def state(self) -> dict[str, Any]:
        return {"value": self.value, "partitions": self.max_event}

    def per_event(self, ts: np.ndarray, partition: np.ndarray | None = None,
                  partitions: list[str] | None = None) -> np.ndarray:
        """Read a batch: return the watermark each event is judged by (µs, int64), then advance.

        An event's watermark is its partition's, formed by the events before it (running max of event
        times minus the delay; an event's own time cannot make it late, so the max may include it), and
        never below the source's watermark at the start of the batch, so windows already closed (e.g.
        released by an idle partition) stay closed. `partition` holds each event's partition number
        (None: all in "0"); `partitions` lists the partitions that exist."""
        floor = -END_OF_STREAM if self.value is None else self.value
        out = np.empty(len(ts), np.int64)
        groups = [(0, None)] if partition is None else [(int(p), np.flatnonzero(partition == p))
                                                         for p in np.unique(partition)]
        now = time.monotonic()
        for p, idx in groups:  # one vectorized pass per partition (a handful), not per event
            run = np.maximum.accumulate(ts if idx is None else ts[idx], out=out if idx is None else None)
            prev = self.max_event.get(str(p))
            if prev is not None:
                np.maximum(run, prev, out=run)
            if len(run):
                self.max_event[str(p)], self.last_seen[str(p)] = int(run[-1]), now
            run -= self.delay_us
            np.maximum(run, floor, out=run)
            if idx is not None:
                out[idx] = run
        self.tick(partitions)
        return out

    def tick(self, partitions: list[str] | None = None) -> None:
        """Re-evaluate (also without data): partitions may have become idle."""
        now = time.monotonic()
        for p in partitions or []:
            if p not in self.max_event:
                self.max_event[p] = None
                self.last_seen[p] = now
        candidate = self._combined(now)
        if candidate is not None and (self.value is None or candidate > self.value):
            self.value = candidate

    def idle(self, partition: str, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        return now - self.last_seen.get(partition, now) >= self.idle_timeout_s

    def _combined(self, now: float) -> int | None:
        active = [p for p in self.max_event if not self.idle(p, now)]
        if active:
            if any(self.max_event[p] is None for p in active):
                return None  # an active partition has not delivered yet: it may hold anything
            return min(self.max_event[p] for p in active) - self.delay_us
        seen = [m for m in self.max_event.values() if m is not None]
        return max(seen) - self.delay_us if seen else None

    def holding_back(self) -> str | None:
        """The partition that currently determines the watermark (the answer to 'why no output?')."""
        now = time.monotonic()
        active = [p for p in self.max_event if not self.idle(p, now)]
        if not active:
            return None
        waiting = [p for p in active if self.max_event[p] is None]
        if waiting:
            return waiting[0]
        return min(active, key=lambda p: self.max_event[p])

    def advance_to(self, value: int) -> None:
        """A watermark given by the source itself (never moving back)."""
        if self.value is None or value > self.value:
            self.value = value

    def finish(self) -> None:
        """A bounded source ended: every window is complete."""
        self.value = END_OF_STREAM
