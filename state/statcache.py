"""Results derived from a few files, kept while those files are unchanged (for the query server, which
answers many lookups of the same views: their description and snapshot then cost a stat per file, not
a read and a checksum of each).

A file is taken as unchanged while its device, inode, size and mtime are. Writers replace these files
(write_atomic: a new inode) or append to them (a new size), so any change shows, except one within the
file system's timestamp granularity that keeps the size and gets a reused inode: results from files
changed less than RACY_NS before they were read are not kept (git's "racy" rule), so the next call reads
again.
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

RACY_NS = 2_000_000_000


def identity(path: Path) -> tuple | None:
    """(device, inode, size, mtime) of `path`; None if it does not exist."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


class StatCache:
    """`get(key, paths, load)`: load()'s result, reused while every file in `paths` is unchanged (a missing
    file counts as a state too). The newest `size` keys are kept. Results are shared: callers must not
    change them."""

    def __init__(self, size: int = 256) -> None:
        self.size = size
        self._items: OrderedDict[Any, tuple[tuple, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def get(self, key: Any, paths: Sequence[Path], load: Callable[[], Any]) -> Any:
        before = tuple(identity(p) for p in paths)
        with self._lock:
            hit = self._items.get(key)
            if hit is not None and hit[0] == before:
                self._items.move_to_end(key)
                return hit[1]
        value = load()
        now = time.time_ns()
        # Keep it only if the files did not change while it was loaded, and not just before.
        if all(i is None or now - i[3] > RACY_NS for i in before) and \
                tuple(identity(p) for p in paths) == before:
            with self._lock:
                self._items[key] = (before, value)
                while len(self._items) > self.size:
                    self._items.popitem(last=False)
        return value
