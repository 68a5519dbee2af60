"""Wires SQL, operators and state together: catalog, runner, checkpoints, CLI and the Python API."""

from __future__ import annotations

from typing import TYPE_CHECKING

__all__ = ["Engine", "EngineError"]

if TYPE_CHECKING:
    from pondstream.engine.api import Engine, EngineError


def __getattr__(name: str):
    """`from pondstream.engine import Engine` without loading the engine for `pondstream --help`."""
    if name in __all__:
        from pondstream.engine import api

        return getattr(api, name)
    raise AttributeError(f"module 'pondstream.engine' has no attribute {name!r}")
