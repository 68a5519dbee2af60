"""The small files of a state dir: written atomically (a failed write names the file and leaves the
previous version in place), sealed with a checksum, and read back verified.

Sealed JSON is ordinary JSON whose last key is `"crc"`: the CRC-32 of the exact bytes of the object
written without it. Checking it needs no re-serialisation (a log line costs one crc32), and a flipped
byte, a cut or a hand edit is noticed instead of read as data.
"""

from __future__ import annotations

import json
import os
import zlib
from pathlib import Path
from typing import Any

from pondstream.state.errors import EngineError

RERUN = "the next `pondstream run` on this state dir rewrites it from RocksDB"
_MARK = b', "crc": "'
_TAIL = len(_MARK) + 8 + 2  # , "crc": "<8 hex>"}


class DamagedFileError(EngineError):
    """A state file is missing, cut short or garbled; the message names it and how to repair it."""


def damaged(path: Path, why: str, repair: str = RERUN) -> DamagedFileError:
    return DamagedFileError(f"{path} is damaged ({why}).\n  To repair: {repair}")


def write_failed(path: Path, e: OSError) -> EngineError:
    return EngineError(f"cannot write {path}: {e.strerror or e}.\n  The last checkpoint is intact; "
                       "free disk space or fix the state dir's permissions, then run again to resume")


def crc(data: bytes) -> str:
    return f"{zlib.crc32(data):08x}"


def seal(obj: dict[str, Any], indent: int | None = None) -> bytes:
    """`obj` as JSON with its checksum as the last key."""
    body = json.dumps(obj, indent=indent).encode()  # ends with b"}"
    return body[:-1] + _MARK + crc(body).encode() + b'"}'


def unseal(data: bytes) -> dict[str, Any] | None:
    """The object of sealed JSON `data`, or None unless its checksum matches."""
    data = data.rstrip(b"\n")
    tail = data[-_TAIL:]
    if len(data) <= _TAIL or not tail.startswith(_MARK) or not tail.endswith(b'"}'):
        return None
    if crc(data[:-_TAIL] + b"}") != tail[len(_MARK):-2].decode("ascii", "replace"):
        return None
    try:
        obj = json.loads(data)
        del obj["crc"]
    except (ValueError, KeyError, TypeError):  # a checksum that matches by chance
        return None
    return obj if isinstance(obj, dict) else None


def sealed_line(obj: dict[str, Any]) -> bytes:
    return seal(obj) + b"\n"


def write_atomic(path: Path, data: bytes) -> None:
    """Replace `path` with `data` durably: a crash or a full disk leaves the old file in place."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        raise write_failed(path, e) from None


def write_sealed_json(path: Path, obj: dict[str, Any]) -> None:
    write_atomic(path, seal(obj, indent=1) + b"\n")


def append_line(path: Path, line: bytes) -> None:
    try:
        with open(path, "ab") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise write_failed(path, e) from None


def read_json(path: Path, repair: str = RERUN, required: bool = True, sealed: bool = True) -> dict[str, Any] | None:
    """The JSON object in `path`, verified; a DamagedFileError naming the file if it cannot be trusted.

    `sealed=False` also accepts an object without a checksum (files written before checksums, or by
    code that does not seal); a present checksum is always checked."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        if required:
            raise damaged(path, "missing", repair) from None
        return None
    except OSError as e:
        raise EngineError(f"cannot read {path}: {e.strerror or e}") from None
    obj = unseal(data)
    if obj is not None:
        return obj
    try:
        plain = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise damaged(path, "not valid JSON: cut short or garbled", repair) from None
    if isinstance(plain, dict) and "crc" not in plain:
        if not sealed:
            return plain
        raise damaged(path, "it has no checksum: garbled, or written by an older pondstream", repair)
    raise damaged(path, "its checksum does not match its content", repair)
