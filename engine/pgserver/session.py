"""One client session: what each statement means to a read-only server over the views.

Transaction control, SET/RESET/SHOW and DISCARD are answered here (a read-only server has nothing to
commit, but psycopg's default mode sends BEGIN before the first query and drivers SET and SHOW
settings on connect). Statements that would write are refused with SQLSTATE 25006 before the engine
sees them. Catalog queries (pg_catalog, information_schema, version()) go to catalog.py; everything
else is `Engine.query_stream`, so the semantics are those of `pondstream query`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from pondstream.engine.pgserver.catalog import Catalog
from pondstream.engine.pgserver.errors import READ_ONLY, PgError
from pondstream.engine.pgserver.params import with_values

SERVER_VERSION = "16.0"
# Reported at start-up (ParameterStatus) and by SHOW; SET changes a session's copy.
SETTINGS: dict[str, str] = {
    "server_version": SERVER_VERSION, "server_version_num": "160000", "server_encoding": "UTF8",
    "client_encoding": "UTF8", "DateStyle": "ISO, MDY", "TimeZone": "UTC", "integer_datetimes": "on",
    "standard_conforming_strings": "on", "IntervalStyle": "postgres", "application_name": "",
    "is_superuser": "off", "default_transaction_read_only": "on", "transaction_read_only": "on",
    "transaction_isolation": "read committed", "default_transaction_isolation": "read committed",
    "search_path": '"$user", public', "max_identifier_length": "63", "statement_timeout": "0",
    "lc_collate": "C", "lc_ctype": "C", "extra_float_digits": "1", "in_hot_standby": "off",
}
STARTUP_PARAMETERS = ("server_version", "server_encoding", "client_encoding", "DateStyle", "TimeZone",
                      "integer_datetimes", "standard_conforming_strings", "IntervalStyle", "application_name",
                      "is_superuser", "default_transaction_read_only", "in_hot_standby")
_ALIASES = {"time zone": "timezone", "transaction isolation level": "transaction_isolation",
            "session authorization": "session_authorization"}
WRITES = {"insert", "update", "delete", "merge", "create", "drop", "alter", "truncate", "copy", "grant",
          "revoke", "vacuum", "reindex", "cluster", "lock", "comment", "refresh", "call", "do", "import",
          "security", "reassign", "notify", "listen", "prepare", "execute", "load"}
_QUERIES = {"select", "with", "values", "table", "("}  # what runs from the tree a Bind made
_COMMENTS = re.compile(r"^\s*(?:(?:--[^\n]*\n?|/\*.*?\*/)\s*)*", re.DOTALL)
_SET = re.compile(r"^set\s+(?:session\s+|local\s+)?(time\s+zone|[\w.]+)\s*(?:=|\s+to\s+|\s+)(.*)$",
                  re.IGNORECASE | re.DOTALL)


@dataclass
class Result:
    """A statement's outcome: a command tag, and rows when `reader` is set (tag "SELECT")."""

    tag: str
    reader: pa.RecordBatchReader | None = None

    @property
    def schema(self) -> pa.Schema | None:
        return self.reader.schema if self.reader is not None else None


def strip(sql: str) -> str:
    """The statement without leading comments, surrounding blanks and trailing semicolons."""
    return _COMMENTS.sub("", sql).strip().rstrip(";").strip()


class Session:
    """Per-connection state: settings, and the transaction block status ReadyForQuery reports."""

    def __init__(self, engine, catalog: Catalog, user: str = "pondstream") -> None:
        self.engine, self.catalog = engine, catalog
        self.settings = {k.lower(): v for k, v in SETTINGS.items()} | {"session_authorization": user}
        self.user = user
        self.tx = "I"  # I idle, T in a transaction block, E in a failed one

    def failed(self) -> None:
        """An error inside a transaction block fails it, as in PostgreSQL, until ROLLBACK."""
        if self.tx == "T":
            self.tx = "E"

    def execute(self, sql: str, tree: Any = None, params: list | None = None) -> Result:
        """Run one statement. With `tree`, `sql`'s syntax tree (shared, see params.Statements) and the
        literal nodes of the values its `$n` stand for: what the statement is (a SET, a write, a catalog
        query) is read from `sql`, so no value can change it, and the tree with the values is what runs."""
        text = strip(sql)
        if tree is not None and "$" in text and text.split(None, 1)[0].lower() not in _QUERIES:
            text, tree = strip(with_values(tree, params or [])), None  # SET, SHOW, EXPLAIN ...: as bound
        if not text:
            return Result("")
        words = text.split(None, 2)
        first = words[0].lower()
        second = words[1].lower() if len(words) > 1 else ""
        if self.tx == "E" and first not in ("rollback", "abort", "commit", "end"):
            raise PgError("25P02", "current transaction is aborted, commands ignored until end of transaction block",
                          "ROLLBACK (or COMMIT) ends it")
        if first in ("begin", "start"):
            self.tx = "T"
            return Result("BEGIN")
        if first in ("commit", "end", "rollback", "abort"):
            if first == "rollback" and second == "to":  # ROLLBACK TO SAVEPOINT: still in the block
                self.tx = "T"
                return Result("ROLLBACK")
            tag = "ROLLBACK" if first in ("rollback", "abort") or self.tx == "E" else "COMMIT"
            self.tx = "I"
            return Result(tag)
        if first in ("savepoint", "release"):
            return Result(first.upper())
        if first == "set":
            return self._set(text)
        if first == "reset":
            name = text[5:].strip().lower()
            if name == "all":
                self.settings = {k.lower(): v for k, v in SETTINGS.items()} | {"session_authorization": self.user}
            elif name.lower() in {k.lower() for k in SETTINGS}:
                self.settings[name] = SETTINGS[next(k for k in SETTINGS if k.lower() == name)]
            return Result("RESET")
        if first == "show":
            shown = self._show(text[4:].strip())
            if shown is not None:
                return shown
        if first in ("discard", "deallocate", "close", "unlisten"):
            return Result(" ".join(w.upper() for w in words[:2]) if first == "discard" else first.upper())
        if first in WRITES or (first == "with" and re.search(r"\b(insert|update|delete)\b", text, re.I)):
            raise PgError(READ_ONLY, f"cannot execute {first.upper()} in a read-only server",
                          "pondstream serve only reads the views; they change through `pondstream run`")
        if self.catalog.handles(text):
            return Result("SELECT", self.catalog.query(text if tree is None else with_values(tree, params or []), self))
        if tree is not None:
            return Result("SELECT", self.engine.query_stream(sql, tree=tree, params=params))
        return Result("SELECT", self.engine.query_stream(text))

    def _set(self, text: str) -> Result:
        m = _SET.match(text)
        if m is None:
            if re.match(r"^set\s+(session\s+characteristics|transaction)\b", text, re.I):
                return Result("SET")
            raise PgError("42601", f"cannot read this SET: {text[:200]}", "write SET name = value")
        name = re.sub(r"\s+", " ", m.group(1).lower())
        name = _ALIASES.get(name, name)
        value = m.group(2).strip().strip("'\"")
        if name in ("transaction_read_only", "default_transaction_read_only") and value.lower() in ("off", "false"):
            raise PgError(READ_ONLY, "pondstream serve is read-only: transactions cannot be made read-write")
        self.settings[name] = value
        return Result("SET")

    def _show(self, what: str) -> Result | None:
        """SHOW of a setting; None when `what` is not one (SHOW TABLES and such go to the engine)."""
        name = re.sub(r"\s+", " ", what.lower())
        name = _ALIASES.get(name, name)
        if name == "all":
            rows = sorted(self.settings.items())
            table = pa.table({"name": [r[0] for r in rows], "setting": [r[1] for r in rows]})
        elif name in self.settings:
            column = next((k for k in SETTINGS if k.lower() == name), name)
            table = pa.table({column: [self.settings[name]]})
        else:
            return None
        return Result("SHOW", pa.RecordBatchReader.from_batches(table.schema, table.to_batches()))
