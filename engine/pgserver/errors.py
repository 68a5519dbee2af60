"""PostgreSQL errors: an exception carrying a SQLSTATE, and the mapping from the engine's own errors.

Clients branch on SQLSTATE (psycopg raises UndefinedTable for 42P01, SQLAlchemy and BI tools show the
code), so every failure the server reports carries one; the engine's located message goes in the
message field and its hint in the HINT field.
"""

from __future__ import annotations

import re

UNDEFINED_TABLE, UNDEFINED_COLUMN, SYNTAX_ERROR = "42P01", "42703", "42601"
READ_ONLY, INTERNAL, FEATURE = "25006", "XX000", "0A000"

_HINT = re.compile(r"\n\s*hint: ", re.IGNORECASE)


class PgError(Exception):
    """An error to send as an ErrorResponse: SQLSTATE, message, optional hint; `fatal` ends the session."""

    def __init__(self, sqlstate: str, message: str, hint: str | None = None, fatal: bool = False) -> None:
        super().__init__(message)
        self.sqlstate, self.message, self.hint, self.fatal = sqlstate, message, hint, fatal


def split_hint(text: str) -> tuple[str, str | None]:
    """The engine writes hints as a trailing "\\n  hint: ..." line; PostgreSQL has a field for them."""
    parts = _HINT.split(text, maxsplit=1)
    return (parts[0], parts[1].strip()) if len(parts) == 2 else (text, None)


def classify(message: str) -> str:
    """The SQLSTATE for an engine or DataFusion error message."""
    low = message.lower()
    if "read-only" in low:
        return READ_ONLY
    if re.search(r"table '[^']*' not found|table .* not found|no (stream or )?(materialized )?view named", low):
        return UNDEFINED_TABLE
    if "no field named" in low or "unknown column" in low:
        return UNDEFINED_COLUMN
    if "sql error" in low or "parsererror" in low or "syntax" in low or ("expected" in low and "found" in low):
        return SYNTAX_ERROR
    if "not supported" in low or "unsupported" in low:
        return FEATURE
    return INTERNAL


def from_exception(e: BaseException) -> PgError:
    """Any exception as a PgError: ours keep their code; SqlError/EngineError are classified by message."""
    if isinstance(e, PgError):
        return e
    text = e.render() if hasattr(e, "render") else str(e)
    message, hint = split_hint(text)
    if type(e).__name__ == "SqlError" and getattr(e, "hint", None):
        hint = e.hint
    return PgError(classify(text), message.strip(), hint)
