"""Read the next batch while the current one is aggregated: a source wrapper with one reader thread.

Decoding (pyarrow) and generating (numpy) release the GIL, so on two cores reading and aggregating
overlap. The batches, their order and their positions are exactly the source's own, and the runner
commits the position of the batch it processed, never of one read ahead, so restarts and results are
unchanged. Only for sources whose state nothing else touches while they read (files, the generator).
"""

from __future__ import annotations

import queue
import threading
from typing import Any

from pondstream.operators.source import Source, SourceBatch

AHEAD = 2  # batches read ahead at most (memory: a few decoded chunks)
WAIT_S = 0.5  # longest a read waits for the reader, so a stop request is seen quickly


class Prefetch(Source):
    def __init__(self, inner: Source) -> None:
        self.inner = inner
        self.bounded = inner.bounded
        self._queue: queue.Queue[SourceBatch | BaseException] = queue.Queue(AHEAD)
        self._stop = threading.Event()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="pondstream-prefetch", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        try:
            while not self._stop.is_set() and not self.inner.finished:
                batch = self.inner.read()
                if batch is not None:
                    self._offer(batch)
        except BaseException as e:  # noqa: BLE001 - handed to the reading thread, raised there
            self._offer(e)
        finally:
            self._done.set()

    def _offer(self, item: SourceBatch | BaseException) -> None:
        """Queue `item`, waiting while the queue is full, unless the wrapper is being closed."""
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=WAIT_S)
                return
            except queue.Full:
                continue

    @property
    def finished(self) -> bool:  # type: ignore[override]
        return self._done.is_set() and self._queue.empty()

    @finished.setter
    def finished(self, _value: bool) -> None:
        pass

    def read(self) -> SourceBatch | None:
        try:
            item = self._queue.get(timeout=WAIT_S)
        except queue.Empty:
            return None
        if isinstance(item, BaseException):
            raise item
        return item

    def describe(self) -> str:
        return self.inner.describe()

    def position(self) -> dict[str, Any] | None:
        return self.inner.position()

    def partitions(self) -> list[str]:
        return self.inner.partitions()

    def health(self) -> str | None:
        return self.inner.health()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.inner.close()
