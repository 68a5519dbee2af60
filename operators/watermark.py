"""Event-time watermark of one source: max event time seen minus the declared delay; never moves back."""

from __future__ import annotations

import numpy as np

END_OF_STREAM = np.iinfo(np.int64).max // 2  # far future, still safe to subtract window sizes from


class Watermark:
    def __init__(self, delay_us: int, value: int | None = None) -> None:
        self.delay_us = delay_us
        self.value = value  # None until the first event

    def observe(self, max_event_us: int) -> None:
        candidate = max_event_us - self.delay_us
        if self.value is None or candidate > self.value:
            self.value = candidate

    def finish(self) -> None:
        """A bounded source ended: every window is complete."""
        self.value = END_OF_STREAM
