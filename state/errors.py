"""The user-facing error type, defined down here so the state layer can raise it directly (the engine
re-exports it): a damaged file or an unusable name is reported where it is found, with a fix."""

from __future__ import annotations


class EngineError(Exception):
    """A user-facing error that is not about SQL syntax: say what and how to fix it."""
