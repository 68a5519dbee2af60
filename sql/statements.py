"""Parse a SQL script into typed statements: CREATE STREAM / MATERIALIZED VIEW, DROP, SHOW, DESCRIBE, queries."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field

import pyarrow as pa
import sqlglot
from sqlglot import exp
from sqlglot.tokens import TokenType

from pondstream.sql.dialect import StreamSQL
from pondstream.sql.errors import SqlError, at
from pondstream.sql.intervals import interval_us, option_duration
from pondstream.sql.types import arrow_type

logging.getLogger("sqlglot").setLevel(logging.ERROR)  # SHOW falls back to Command; that is expected


@dataclass
class Statement:
    sql: str


@dataclass
class CreateStream(Statement):
    """A source declaration: schema, event-time column, watermark delay, connector options."""

    name: str
    schema: pa.Schema
    event_time: str
    watermark_delay_us: int
    options: dict[str, str] = field(default_factory=dict)


@dataclass
class CreateView(Statement):
    """A materialized view; planned against the catalog later (see sql.planner)."""

    name: str
    select: exp.Select
    options: dict[str, str] = field(default_factory=dict)


@dataclass
class Drop(Statement):
    kind: str  # "STREAM" | "VIEW"
    name: str
    if_exists: bool


@dataclass
class Show(Statement):
    kind: str  # "STREAMS" | "VIEWS"


@dataclass
class Describe(Statement):
    name: str


@dataclass
class Query(Statement):
    """Anything else: a query DataFusion runs over the materialized views."""


_EMIT = re.compile(r"\bEMIT\s+(ON\s+WINDOW\s+CLOSE|EVERY\s+(INTERVAL\s+'[^']*'(?:\s+[A-Za-z]+)?))\s*(?=;|\Z)",
                   re.I)
_SHOW = re.compile(r"^\s*SHOW\s+(STREAMS|MATERIALIZED\s+VIEWS|VIEWS)\s*;?\s*$", re.I)


def _emit_clauses(sql: str) -> tuple[str, dict[int, tuple[str, str | None]]]:
    """Cut `EMIT ON WINDOW CLOSE` / `EMIT EVERY INTERVAL ...` (which sqlglot does not parse) out of the
    script, blanked in place so line/column numbers stay right; returns {statement index: clause}."""
    found = list(_EMIT.finditer(sql))
    if not found:
        return sql, {}
    chars = list(sql)
    for m in found:
        for i in range(m.start(), m.end()):
            if chars[i] != "\n":
                chars[i] = " "
    stripped = "".join(chars)
    try:
        semis = [t.start for t in StreamSQL().tokenize(stripped) if t.token_type == TokenType.SEMICOLON]
    except sqlglot.errors.TokenError:
        return sql, {}
    return stripped, {sum(1 for s in semis if s < m.start()): (m.group(0).strip(), m.group(2)) for m in found}


def parse_script(sql: str) -> list[Statement]:
    """All statements of a script, in order; raises SqlError with line/column on the first problem."""
    text, emits = _emit_clauses(sql)
    try:
        trees = sqlglot.parse(text, read=StreamSQL)
    except sqlglot.errors.ParseError as e:
        err = e.errors[0] if e.errors else {}
        raise SqlError(
            str(err.get("description") or e).split(". Line")[0],
            err.get("line"), err.get("col"),
            "check the syntax near the marked position", sql,
        ) from None
    except sqlglot.errors.TokenError as e:
        raise SqlError(str(e), hint="check quotes and brackets", sql=sql) from None
    out: list[Statement] = []
    for index, tree in enumerate(trees):
        if tree is None:
            continue
        try:
            stmt = _statement(tree)
            if index in emits:
                _apply_emit(stmt, *emits[index])
        except SqlError as e:
            raise e.with_sql(sql) from None
        stmt.script = sql  # the text line/column numbers refer to, for later (planning) errors
        out.append(stmt)
    return out


def _statement(tree: exp.Expression) -> Statement:
    text = tree.sql(dialect=StreamSQL)
    if isinstance(tree, exp.Create):
        kind = (tree.args.get("kind") or "").upper()
        if kind == "STREAM":
            return _create_stream(tree, text)
        props = tree.args.get("properties")
        is_mv = props is not None and any(isinstance(p, exp.MaterializedProperty) for p in props.expressions)
        if kind == "VIEW" and is_mv:
            select = tree.expression
            if not isinstance(select, exp.Select):
                raise at(tree, "a materialized view must be defined by a SELECT")
            return CreateView(text, tree.this.name, select, _options(tree))
        raise at(tree.this, f"CREATE {kind} is not supported",
                 "use CREATE STREAM (a source) or CREATE MATERIALIZED VIEW (a continuous query)")
    if isinstance(tree, exp.Drop):
        kind = (tree.args.get("kind") or "").upper()
        if kind not in ("STREAM", "VIEW"):
            raise at(tree, f"DROP {kind} is not supported", "use DROP STREAM or DROP MATERIALIZED VIEW")
        target = tree.this or (tree.args.get("tables") or [None])[0]
        return Drop(text, kind, target.name, bool(tree.args.get("exists")))
    if isinstance(tree, exp.Describe):
        return Describe(text, tree.this.name)
    if isinstance(tree, exp.Command):
        m = _SHOW.match(tree.sql())
        if m:
            return Show(text, "STREAMS" if m.group(1).upper() == "STREAMS" else "VIEWS")
        raise SqlError(f"unsupported statement: {tree.sql()[:60]}",
                       hint="supported: CREATE STREAM, CREATE MATERIALIZED VIEW, DROP, SHOW, DESCRIBE, SELECT")
    if isinstance(tree, exp.Query):
        return Query(tree.sql(dialect=StreamSQL))
    raise at(tree, f"unsupported statement {type(tree).__name__.upper()}",
             "supported: CREATE STREAM, CREATE MATERIALIZED VIEW, DROP, SHOW, DESCRIBE, SELECT")


def _apply_emit(stmt: Statement, clause: str, every: str | None) -> None:
    if not isinstance(stmt, CreateView):
        raise SqlError(f"{clause} applies only to CREATE MATERIALIZED VIEW")
    stmt.sql = f"{stmt.sql} {clause}"  # kept in the catalog, so a changed EMIT is a changed view
    if every is not None:
        node = sqlglot.parse_one(f"SELECT {every}", read=StreamSQL).expressions[0]
        stmt.options["emit_every_us"] = str(interval_us(node))


def _options(tree: exp.Create) -> dict[str, str]:
    props = tree.args.get("properties")
    out: dict[str, str] = {}
    for p in props.expressions if props else []:
        if isinstance(p, exp.Property) and not isinstance(p, exp.MaterializedProperty):
            key = p.this.name if isinstance(p.this, exp.Expression) else str(p.this)
            value = p.args.get("value")
            out[key.lower()] = value.name if isinstance(value, exp.Literal) else (value.sql() if value else "")
    return out


def _create_stream(tree: exp.Create, text: str) -> CreateStream:
    schema_node = tree.this
    if not isinstance(schema_node, exp.Schema):
        raise at(tree, "CREATE STREAM needs a column list", "CREATE STREAM s (a BIGINT, ts TIMESTAMP) WITH (...)")
    name = schema_node.this.name
    fields: list[pa.Field] = []
    watermark = None
    for item in schema_node.expressions:
        if isinstance(item, exp.WatermarkColumnConstraint):
            watermark = item
        elif isinstance(item, exp.ColumnDef):
            if any(f.name.lower() == item.name.lower() for f in fields):
                raise at(item, f"column {item.name} is declared twice")
            fields.append(pa.field(item.name, arrow_type(item.args["kind"])))
        else:
            raise at(item, f"unexpected item in column list: {item.sql()}")
    if not fields:
        raise at(tree, f"stream {name} has no columns")
    schema = pa.schema(fields)
    options = _options(tree)
    by_name = {f.name.lower(): f for f in fields}
    if watermark is not None:
        col = watermark.this.name
        event_time, delay = col, _watermark_delay(watermark.expression, col)
    elif "timestamp_field" in options:
        event_time = options.pop("timestamp_field")
        delay = option_duration("watermark_delay", options.pop("watermark_delay", "0 seconds"))
    else:
        raise at(schema_node, f"stream {name} has no event-time column",
                 "add WATERMARK FOR ts AS ts - INTERVAL '5' SECOND, or WITH (timestamp_field = 'ts', "
                 "watermark_delay = '5 seconds')")
    field_ = by_name.get(event_time.lower())
    if field_ is None:
        raise at(watermark.this if watermark else schema_node, f"event-time column {event_time} is not declared",
                 f"declared columns: {', '.join(schema.names)}")
    if not pa.types.is_timestamp(field_.type):
        raise at(watermark.this if watermark else schema_node,
                 f"event-time column {event_time} must be TIMESTAMP, not {field_.type}")
    if "connector" not in options:
        raise at(schema_node, f"stream {name} has no connector",
                 "add WITH (connector = 'file', path = '...', format = 'jsonl') or connector = 'generator'")
    return CreateStream(text, name, schema, field_.name, delay, options)


def _watermark_delay(node: exp.Expression, col: str) -> int:
    if isinstance(node, exp.Column) and node.name.lower() == col.lower():
        return 0
    if isinstance(node, exp.Sub) and isinstance(node.this, exp.Column) and node.this.name.lower() == col.lower():
        return interval_us(node.expression, allow_zero=True)
    raise at(node, f"unsupported watermark expression {node.sql()}",
             f"write WATERMARK FOR {col} AS {col} - INTERVAL '5' SECOND")
