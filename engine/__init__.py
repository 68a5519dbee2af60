"""Wires SQL, operators and state together: catalog, runner, checkpoints, CLI and the Python API."""

from pondstream.engine.api import Engine, EngineError

__all__ = ["Engine", "EngineError"]
