"""Bind parameters: decode what the client sent (text or binary, by type OID) and put the values into
the statement's syntax tree as literal nodes.

Why literals in the tree rather than DataFusion `param_values`: the engine's point-lookup route
(engine/lookup.py) recognises `WHERE key = <literal>` only, so a `$1` bound by DataFusion would turn
every psycopg lookup into a full scan. The value never becomes SQL text the client wrote: it is a
sqlglot Literal (or Boolean/Null) node, rendered by the generator with the quoting the engine's own
parser reads back, so a value cannot change the statement's shape (tests/test_serve.py tries).
"""

from __future__ import annotations

import math
import struct
import threading
from collections import OrderedDict
from collections.abc import Sequence
from decimal import Decimal, InvalidOperation
from typing import Any

import sqlglot
from sqlglot import exp

from pondstream.engine.lookup import parameter_name, substitute
from pondstream.engine.pgserver.encode import (
    BOOL_OID,
    FLOAT4_OID,
    FLOAT8_OID,
    INT2_OID,
    INT4_OID,
    INT8_OID,
    NUMERIC_OID,
)
from pondstream.engine.pgserver.errors import PgError
from pondstream.sql.dialect import StreamSQL

_BINARY = {INT2_OID: "!h", INT4_OID: "!i", INT8_OID: "!q", FLOAT4_OID: "!f", FLOAT8_OID: "!d"}
_TEXT_TYPES = {25, 1043, 1042, 19, 0, 705, 114, 3802}  # text, varchar, bpchar, name, unknown, json(b)


def decode(raw: bytes | None, oid: int, fmt: int) -> Any:
    """One parameter value as Python: None, bool, int, float, Decimal or str (dates, timestamps and
    anything else stay text, which DataFusion coerces where the column's type needs it)."""
    if raw is None:
        return None
    if fmt == 1:
        if oid in _BINARY:
            return struct.unpack(_BINARY[oid], raw)[0]
        if oid == BOOL_OID:
            return raw != b"\x00"
        if oid in _TEXT_TYPES:
            return raw.decode("utf-8")
        raise PgError("0A000", f"a binary parameter of type OID {oid} is not supported",
                      "send parameters in text format (psycopg: the default %s placeholders)")
    text = raw.decode("utf-8")
    try:
        if oid in (INT2_OID, INT4_OID, INT8_OID):
            return int(text)
        if oid in (FLOAT4_OID, FLOAT8_OID):
            return float(text)
        if oid == NUMERIC_OID:
            return Decimal(text)
    except (ValueError, InvalidOperation):
        raise PgError("22P02", f"invalid input for a parameter of type OID {oid}: {text[:80]!r}") from None
    if oid == BOOL_OID:
        return text.strip().lower() in ("t", "true", "1", "y", "yes", "on")
    return text


def literal(value: Any) -> exp.Expression:
    """The syntax-tree node for one bound value (marked `bound`: it has no text of its own in the
    statement, see engine/lookup.py `_key_literal`)."""
    node = _literal(value)
    for n in node.walk():
        n.meta["bound"] = True
    return node


def _literal(value: Any) -> exp.Expression:
    if value is None:
        return exp.Null()
    if isinstance(value, bool):
        return exp.Boolean(this=value)
    if isinstance(value, int):
        node = exp.Literal.number(abs(value))
        return exp.Neg(this=node) if value < 0 else node
    if isinstance(value, float):
        if not math.isfinite(value):
            return exp.Cast(this=exp.Literal.string(repr(value)), to=exp.DataType.build("DOUBLE"))
        node = exp.Literal.number(repr(abs(value)))
        return exp.Neg(this=node) if value < 0 or math.copysign(1, value) < 0 else node
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise PgError("22P02", f"a parameter {value} is not a finite number")
        node = exp.Literal.number(str(abs(value)))
        return exp.Neg(this=node) if value.is_signed() else node
    return exp.Literal.string(str(value))


def parse(sql: str) -> exp.Expression:
    """`sql` as the engine parses it; PgError 42601 if sqlglot cannot."""
    try:
        return sqlglot.parse_one(sql, read=StreamSQL)
    except (sqlglot.errors.SqlglotError, RecursionError) as e:
        raise PgError("42601", f"cannot bind parameters: the statement does not parse: {str(e)[:300]}") from None


def bind_tree(tree: exp.Expression, values: Sequence[Any]) -> exp.Expression:
    """`tree` (changed in place) with each `$n` replaced by the literal node of values[n-1]."""
    for p in list(tree.find_all(exp.Parameter)):
        n = parameter_name(p)
        if not n.isdigit() or not 1 <= int(n) <= len(values):
            raise PgError("08P01", f"${n} has no bound value ({len(values)} parameter(s) were sent)")
        p.replace(literal(values[int(n) - 1]))
    return tree


def bind(sql: str, values: Sequence[Any]) -> str:
    """`sql` with each `$n` replaced by the literal node of values[n-1]."""
    if not values and "$" not in sql:
        return sql
    return bind_tree(parse(sql), values).sql(dialect=StreamSQL)


class Statements:
    """Parsed statements by text, the newest `size` kept (shared by a server's connections): a prepared
    statement is parsed once, not at every Bind, as PostgreSQL plans an extended-protocol statement once.
    A Bind gets the shared tree and the literal nodes of its values (`bind`); the engine reads the tree
    and puts the values into a copy only when it needs text or a changed tree (a point lookup needs
    neither). The tree is syntax only (what a name means is looked up when it runs): nothing goes stale."""

    def __init__(self, size: int = 256) -> None:
        self.size = size
        self._trees: OrderedDict[str, tuple[exp.Expression, list[str]] | PgError] = OrderedDict()
        self._lock = threading.Lock()

    def parsed(self, sql: str) -> tuple[exp.Expression, list[str]]:
        """`sql`'s syntax tree (shared: never change it) and the names of its `$n` (PgError 42601 if it
        does not parse)."""
        with self._lock:
            found = self._trees.get(sql)
            if found is not None:
                self._trees.move_to_end(sql)
        if found is None:
            try:
                tree = parse(sql)
                found = (tree, sorted({parameter_name(p) for p in tree.find_all(exp.Parameter)}))
            except PgError as e:
                found = e
            with self._lock:
                self._trees[sql] = found
                while len(self._trees) > self.size:
                    self._trees.popitem(last=False)
        if isinstance(found, PgError):
            raise PgError(found.sqlstate, found.message, found.hint)
        return found

    def bind(self, sql: str, values: Sequence[Any]) -> tuple[exp.Expression | None, list[exp.Expression]]:
        """The shared tree of `sql` and the literal node of each value (for `$1`, `$2`, ...); the tree is
        None when `sql` has no parameters and does not parse (it then runs as written, and the engine
        says what is wrong with it)."""
        if not values and "$" not in sql:
            try:
                return self.parsed(sql)[0], []
            except PgError:
                return None, []
        tree, names = self.parsed(sql)
        for n in names:
            if not n.isdigit() or not 1 <= int(n) <= len(values):
                raise PgError("08P01", f"${n} has no bound value ({len(values)} parameter(s) were sent)")
        return tree, [literal(v) for v in values]


def with_values(tree: exp.Expression, params: list[exp.Expression]) -> str:
    """The text of shared `tree` with the `params` in place (what `bind` gives for its text)."""
    return substitute(tree.copy(), params).sql(dialect=StreamSQL)
