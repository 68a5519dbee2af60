"""Reader leases: consolidation deletes the files it replaced as soon as no query is reading them.

A reader takes a shared flock on the series' `_readers.lock` before it reads a snapshot and holds it
until it has read the files that snapshot names (a query: until its last batch; the lease is dropped
with the query's SessionContext). Consolidation publishes a new base while holding the lock
exclusively, if it can get it at once: then no reader anywhere (any process on the state dir) holds an
older snapshot, so the replaced files are deleted right away and a view's folder holds its live files
only, however fast it grows. When readers are busy, replaced files stay for the grace period as before.

Tools that read the folder without pondstream (DuckDB, polars) take no lease: a file they planned with
can vanish when a consolidation publishes, and re-running their query reads the new files.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

READERS = "_readers.lock"
WAIT_S = 2.0  # a reader waits this long for a publication's exclusive lock (milliseconds in practice)


class Lease:
    """A shared lock on one series' readers file, released by `release()` or when the lease is dropped.

    Without a readers file (a series written before leases) or locks (a filesystem without flock), the
    lease holds nothing and the grace period protects the reader, as it always did."""

    def __init__(self, series_dir: Path) -> None:
        self._fd: int | None = None
        try:
            fd = os.open(series_dir / READERS, os.O_RDONLY)
        except OSError:
            return
        deadline = time.monotonic() + WAIT_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                self._fd = fd
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.001)
            except OSError:
                break
        os.close(fd)

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    __del__ = release

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def create(series_dir: Path) -> None:
    """Create the readers file of a new series (before anything can read it)."""
    (series_dir / READERS).touch(exist_ok=True)


@contextmanager
def no_readers(series_dir: Path) -> Iterator[bool]:
    """Yields whether no reader holds a lease now; while True, none can take one (they wait)."""
    path = series_dir / READERS
    existed = path.exists()  # a file created just now says nothing about readers that started without it
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        yield False
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            idle = existed
        except OSError:
            idle = False
        yield idle
    finally:
        os.close(fd)


def hold(ctx: object, series_dir: Path) -> None:
    """Take a lease on `series_dir` that lives as long as `ctx` (the SessionContext reading it)."""
    leases = ctx.__dict__.setdefault("_pondstream_leases", [])
    leases.append(Lease(series_dir))
