"""The only way from a name to a place on disk, and the only way to delete there.

Names become directory names and RocksDB key prefixes, so a name is checked before it is used for
either: a name like `..`, `a/b`, `` or one with a NUL could otherwise point outside the state dir, or
at all of it. Every path is also checked after resolving symlinks: it must be a direct child of the
series root, and every delete must land strictly inside the root it was given.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from pondstream.state.errors import EngineError

NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
MAX_NAME = 63  # a stream or view name (the SQL identifier rule)
MAX_SERIES_NAME = MAX_NAME + len("__errors")  # a series is a name plus, at most, the errors suffix
NAME_HINT = ("names are letters, digits and underscores, not starting with a digit, at most "
             f"{MAX_NAME} characters (e.g. hourly_sales)")


def late_series(view: str) -> str:
    """The series holding a view's late events."""
    return f"{view}__late"


def errors_series(stream: str) -> str:
    """The series holding a stream's bad records."""
    return f"{stream}__errors"


def default_state_dir() -> str:
    """Where state lives unless --state-dir says otherwise."""
    return os.environ.get("PONDSTREAM_STATE_DIR", "./pondstream-data")


def shown(name: object) -> str:
    """A name as it can be printed: quoted, escapes visible, long ones cut."""
    text = repr(name)
    return text if len(text) <= 40 else text[:37] + "..."


def is_valid_name(name: object, limit: int = MAX_NAME) -> bool:
    return isinstance(name, str) and len(name) <= limit and NAME_RE.fullmatch(name) is not None


def check_name(name: object, what: str = "name", limit: int = MAX_NAME) -> str:
    """`name` if it is safe as a directory name and key prefix; else an EngineError with the rule."""
    if not is_valid_name(name, limit):
        raise EngineError(f"{what} {shown(name)} cannot be used: {NAME_HINT}")
    return name  # type: ignore[return-value]


def key_prefix(space: bytes, name: str) -> bytes:
    """The RocksDB key prefix of `name` in key space `space` (b"s", b"v"): the name is checked, so
    it holds no NUL and the prefix of one name is never the start of another's."""
    return space + b"/" + check_name(name, "name", MAX_SERIES_NAME).encode() + b"\x00"


_ROOTS: dict[str, Path] = {}  # absolute folder -> its real path (a query server asks for each lookup)


def _resolved(root: str | Path) -> Path:
    """`root` with symlinks resolved; remembered for an absolute folder that exists."""
    key = str(root)
    base = _ROOTS.get(key)
    if base is None:
        base = Path(root).resolve()
        if os.path.isabs(key) and base.is_dir() and len(_ROOTS) < 256:
            _ROOTS[key] = base
    return base


def series_dir(root: str | Path, name: str) -> Path:
    """The folder of series `name` under `root`, refused unless it is a direct child of `root`."""
    check_name(name, "series name", MAX_SERIES_NAME)
    base = _resolved(root)
    d = base / name
    # `name` is one plain component and `base` is resolved, so only a symlink at `d` can lead elsewhere.
    if os.path.islink(d) and d.resolve().parent != base:  # a symlink planted in the state dir
        raise EngineError(f"{d} points outside the state dir ({d.resolve()}); remove it")
    return d


def safe_remove(root: str | Path, path: str | Path) -> None:
    """Delete a file or folder, but only strictly inside `root` (missing is fine)."""
    base, target = Path(root).resolve(), Path(path).absolute()
    real = target.resolve()
    if real == base or not real.is_relative_to(base):
        raise EngineError(f"refusing to delete {target}: it is not inside {base}")
    if target.is_symlink() or target.is_file():
        target.unlink(missing_ok=True)
    elif target.exists():
        shutil.rmtree(target)
