"""RocksDB (rocksdict, raw mode, WAL on) under the state dir: one atomic write batch per checkpoint.

Key space (one column family, prefixes keep it readable):
  m/<name>                       JSON metadata: positions, watermarks, series versions, counters
  s/<view>\\0<ws:8><seq:8>       a run of partial aggregates for one window (Arrow IPC)
  v/<series>\\0<version:8>       a series-log entry (JSON): the truth about which files are visible
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterator
from typing import Any

from rocksdict import AccessType, DBCompressionType, Options, Rdict, ReadOptions, WriteBatch

from pondstream.state.errors import EngineError

BIAS = 1 << 63


class StateLockedError(RuntimeError):
    """Another pondstream process holds the state dir."""


def u64(n: int) -> bytes:
    """Order-preserving encoding of a signed 64-bit integer."""
    return struct.pack(">Q", n + BIAS)


def from_u64(b: bytes) -> int:
    return struct.unpack(">Q", b)[0] - BIAS


def prefix_end(prefix: bytes) -> bytes:
    """The smallest key greater than every key starting with `prefix`."""
    return prefix[:-1] + bytes([prefix[-1] + 1]) if prefix[-1] < 255 else prefix + b"\xff" * 9


class Txn:
    """Everything one checkpoint changes; nothing is visible until `StateStore.commit`."""

    def __init__(self) -> None:
        self.batch = WriteBatch(raw_mode=True)
        self.meta: dict[str, Any] = {}
        self.after_commit: list = []  # callbacks run once the batch is durable

    def put(self, key: bytes, value: bytes) -> None:
        self.batch.put(key, value)

    def delete_range(self, lo: bytes, hi: bytes) -> None:
        self.batch.delete_range(lo, hi)

    def put_meta(self, name: str, value: Any) -> None:
        self.meta[name] = value


class StateStore:
    def __init__(self, path: str, read_only: bool = False) -> None:
        try:
            os.makedirs(path, exist_ok=True)
        except OSError as e:
            raise EngineError(f"cannot create {path}: {e.strerror or e}; check the state dir's permissions") from None
        opts = Options(raw_mode=True)
        opts.create_if_missing(True)
        opts.set_compression_type(DBCompressionType.lz4())
        opts.set_write_buffer_size(16 << 20)  # bounds memtable memory: RSS stays flat
        try:
            if read_only:
                self.db = Rdict(path, opts, access_type=AccessType.read_only())
            else:
                self.db = Rdict(path, opts)
        except Exception as e:
            if "lock" in str(e).lower():
                raise StateLockedError(
                    f"state dir {os.path.dirname(path)} is in use by another pondstream process; "
                    "stop it first (Ctrl-C) or use another --state-dir") from None
            raise EngineError(f"cannot open the RocksDB state in {path}: {e}") from None
        self.path = path

    def get_meta(self, name: str, default: Any = None) -> Any:
        raw = self.db.get(b"m/" + name.encode())
        return default if raw is None else json.loads(raw)

    def scan(self, lo: bytes, hi: bytes) -> Iterator[tuple[bytes, bytes]]:
        """Keys in [lo, hi) in order (seek, not iterate_lower_bound: rocksdict ignores the latter)."""
        ro = ReadOptions()
        ro.set_iterate_upper_bound(hi)
        it = self.db.iter(ro)
        it.seek(lo)
        while it.valid():
            yield it.key(), it.value()
            it.next()

    def keys(self, lo: bytes, hi: bytes) -> Iterator[bytes]:
        for k, _ in self.scan(lo, hi):
            yield k

    def commit(self, txn: Txn) -> None:
        for name, value in txn.meta.items():
            txn.batch.put(b"m/" + name.encode(), json.dumps(value).encode())
        try:
            self.db.write(txn.batch)
        except Exception as e:  # rocksdict raises a bare Exception("IO error: ...")
            raise EngineError(f"cannot commit the checkpoint to {self.path}: {e}.\n  The last checkpoint is "
                              "intact; free disk space or fix the state dir's permissions, then run again") from None
        for fn in txn.after_commit:
            fn()

    def close(self) -> None:
        self.db.close()
