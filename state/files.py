"""The small files of a state dir: written atomically (a failed write names the file and leaves the
previous version in place), sealed with a checksum, and read back verified.

A sealed JSON object carries `"crc"`: the CRC-32 of its canonical JSON (sorted keys, no spaces)
without that key, so a flipped byte, a cut or a hand edit is noticed instead of read as data.
"""

from __future__ import annotations

import json
import os
import zlib
from pathlib import Path
from typing import Any

from pondstream.state.errors import EngineError

RERUN = "the next `pondstream run` on this state dir rewrites it from RocksDB"


class DamagedFileError(EngineError):
    """A state file is missing, cut short or garbled; the message names it and how to repair it."""


def damaged(path: Path, why: str, repair: str = RERUN) -> DamagedFileError:
    return DamagedFileError(f"{path} is damaged ({why}).\n  To repair: {repair}")


def write_failed(path: Path, e: OSError) -> EngineError:
    return EngineError(f"cannot write {path}: {e.strerror or e}.\n  The last checkpoint is intact; "
                       "free disk space or fix the state dir's permissions, then run again to resume")


def crc(data: bytes) -> str:
    return f"{zlib.crc32(data):08x}"


def _canonical(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def seal(obj: dict[str, Any]) -> dict[str, Any]:
    """`obj` plus its checksum."""
    return {**obj, "crc": crc(_canonical(obj))}


def is_sealed(obj: Any) -> bool:
    """True when `obj` is a JSON object whose checksum matches its content."""
    if not isinstance(obj, dict) or not isinstance(obj.get("crc"), str):
        return False
    body = {k: v for k, v in obj.items() if k != "crc"}
    return obj["crc"] == crc(_canonical(body))


def unseal(obj: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k != "crc"}


def sealed_line(obj: dict[str, Any]) -> bytes:
    return json.dumps(seal(obj)).encode() + b"\n"


def parse_sealed_line(line: bytes) -> dict[str, Any] | None:
    """The object of a sealed JSON line, or None if the line is garbled."""
    try:
        obj = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return unseal(obj) if is_sealed(obj) else None


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
    write_atomic(path, json.dumps(seal(obj), indent=1).encode())


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
    try:
        obj = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise damaged(path, "not valid JSON: cut short or garbled", repair) from None
    if not isinstance(obj, dict):
        raise damaged(path, "not a JSON object", repair)
    if "crc" not in obj and not sealed:
        return obj
    if not is_sealed(obj):
        raise damaged(path, "its checksum does not match its content", repair)
    return unseal(obj)
