"""Parse a SQL script into typed statements: CREATE STREAM / MATERIALIZED VIEW, DROP, SHOW, DESCRIBE, queries.

The script is tokenized once and split at semicolons; each statement keeps its exact source text
(`Statement.sql`, what the catalog stores, so a stored statement always parses again) and is parsed
from its own tokens, so line/column numbers refer to the whole script. Size and nesting are bounded
before anything recursive (sqlglot's parser, DataFusion's planner) sees the text.
"""

from __future__ import annotations

import functools
import logging
import re
from dataclasses import dataclass, field

import pyarrow as pa
import sqlglot
from sqlglot import exp
from sqlglot.tokens import Token, TokenType

from pondstream.sql.dialect import StreamSQL
from pondstream.sql.errors import SqlError, at
from pondstream.sql.intervals import duration_us, interval_us
from pondstream.sql.names import object_name
from pondstream.sql.options import check_stream_options, check_view_options
from pondstream.sql.types import arrow_type

logging.getLogger("sqlglot").setLevel(logging.ERROR)  # SHOW falls back to Command; that is expected

MAX_SCRIPT_BYTES = 1 << 20
MAX_BRACKETS = 30  # nesting of brackets in the text (sqlglot's parser recurses ~25 frames per level)
MAX_DEPTH = 200  # of the parsed expression tree
MAX_INTERVAL_TEXT = 100
MAX_NODES = 20_000  # expression nodes in one statement
SUPPORTED = "supported: CREATE STREAM, CREATE MATERIALIZED VIEW, DROP, SHOW, DESCRIBE, SELECT"


@dataclass
class Statement:
    sql: str  # the user's own text of this statement (without the trailing semicolon)
    canonical: str = field(default="", kw_only=True, compare=False)  # normalized, for change detection

    def same_definition(self, other: Statement) -> bool:
        """Whether two statements define the same thing (whitespace, comments and keyword case aside)."""
        return (self.canonical or self.sql) == (other.canonical or other.sql)


@dataclass
class CreateStream(Statement):
    """A source declaration: schema, event-time column, watermark delay, connector options."""

    name: str
    schema: pa.Schema
    event_time: str
    watermark_delay_us: int
    options: dict[str, str] = field(default_factory=dict)
    primary_key: tuple[str, ...] = ()  # PRIMARY KEY (...) NOT ENFORCED: each row is the latest version of its key


@dataclass
class CreateView(Statement):
    """A materialized view; planned against the catalog later (see sql.planner)."""

    name: str
    select: exp.Select
    options: dict[str, str] = field(default_factory=dict)


@dataclass
class CreateFunction(Statement):
    """CREATE FUNCTION f(a DOUBLE, ...) RETURNS T LANGUAGE PYTHON AS 'path/file.py:function'."""

    name: str
    args: list[tuple[str, pa.DataType]]
    returns: pa.DataType
    module: str  # the path as written (relative paths resolve against the run's directory)
    attr: str


@dataclass
class Drop(Statement):
    kind: str  # "STREAM" | "VIEW" | "FUNCTION"
    name: str
    if_exists: bool


@dataclass
class Show(Statement):
    kind: str  # "STREAMS" | "VIEWS" | "FUNCTIONS"


@dataclass
class Describe(Statement):
    name: str


@dataclass
class Query(Statement):
    """Anything else: a query DataFusion runs over the materialized views."""


_SHOW = re.compile(r"^\s*SHOW\s+(STREAMS|MATERIALIZED\s+VIEWS|VIEWS|FUNCTIONS)\s*$", re.I)
_EMIT_HINT = "end the view with EMIT ON WINDOW CLOSE or EMIT EVERY INTERVAL '10' SECOND"


def parse_script(sql: str) -> list[Statement]:
    """All statements of a script, in order; raises SqlError with line/column on the first problem."""
    out: list[Statement] = []
    for tokens in _split(_tokenize(sql)):
        try:
            out.append(_one(sql, tokens))
        except SqlError as e:
            raise (e if e.sql else e.with_sql(sql)) from None
    return out


def check_limits(sql: str) -> None:
    """The size and nesting bounds of parse_script, for text that goes to sqlglot or DataFusion by another
    way (Engine.query); SqlError if exceeded. Short texts that passed are remembered (a server checks
    the same prepared statement at every execution)."""
    if len(sql) <= 8192:
        _check_limits_of_short(sql)
    else:
        _check_limits(sql)


@functools.lru_cache(maxsize=512)
def _check_limits_of_short(sql: str) -> None:
    _check_limits(sql)  # an exception is not cached: a refused text is checked again


def _check_limits(sql: str) -> None:
    for tokens in _split(_tokenize(sql)):
        try:
            _check_tokens(tokens)
        except SqlError as e:
            raise e.with_sql(sql) from None


def _tokenize(sql: str) -> list[Token]:
    """sqlglot's tokens of a script of at most MAX_SCRIPT_BYTES."""
    if len(sql.encode("utf-8", "surrogatepass")) > MAX_SCRIPT_BYTES:
        raise SqlError(f"the script is larger than {MAX_SCRIPT_BYTES >> 20} MB", hint="split it into smaller files")
    try:
        return StreamSQL().tokenize(sql)
    except sqlglot.errors.TokenError as e:
        raise SqlError(f"cannot read the text: {str(e)[:200]}", hint="check quotes and brackets", sql=sql) from None


def _split(tokens: list[Token]) -> list[list[Token]]:
    """The tokens of each statement (semicolons dropped, empty statements skipped)."""
    chunks: list[list[Token]] = [[]]
    for t in tokens:
        if t.token_type == TokenType.SEMICOLON:
            chunks.append([])
        else:
            chunks[-1].append(t)
    return [c for c in chunks if c]


def _one(sql: str, tokens: list[Token]) -> Statement:
    """One statement from its tokens: bounded, parsed, typed; its source text kept exactly."""
    _check_tokens(tokens)
    text = sql[tokens[0].start:tokens[-1].end + 1]
    tokens, emit = _cut_emit(tokens)
    tree = _parse(sql, tokens)
    _check_size(tree, tokens[0])
    stmt = _statement(tree, text, tokens)
    stmt.canonical = _canonical(tree, emit)
    if emit is not None:
        _apply_emit(stmt, emit)
    stmt.script = sql  # the text line/column numbers refer to, for later (planning) errors
    return stmt


def _where(t: Token) -> tuple[int, int]:
    """(line, column) where a token starts (sqlglot's tokens carry the column of their last character)."""
    return t.line, max(t.col - (t.end - t.start), 1)


def _check_tokens(tokens: list[Token]) -> None:
    """Refuse, before sqlglot's parser sees them, bracket nesting deeper than MAX_BRACKETS (it recurses per
    level) and interval strings longer than MAX_INTERVAL_TEXT (it reads them with a regex that is
    quadratic in their length)."""
    depth = 0
    for prev, t in zip([None, *tokens], tokens, strict=False):
        if prev is not None and prev.token_type == TokenType.INTERVAL and len(t.text) > MAX_INTERVAL_TEXT:
            raise SqlError(f"interval text longer than {MAX_INTERVAL_TEXT} characters", *_where(t),
                           "write e.g. INTERVAL '1' HOUR")
        depth += (t.token_type in (TokenType.L_PAREN, TokenType.L_BRACKET)) - \
            (t.token_type in (TokenType.R_PAREN, TokenType.R_BRACKET))
        if depth > MAX_BRACKETS:
            raise SqlError(f"brackets nested more than {MAX_BRACKETS} deep", *_where(t),
                           "simplify the expression")


def _check_size(tree: exp.Expression, first: Token) -> None:
    """Refuse expression trees deeper than MAX_DEPTH or larger than MAX_NODES: they overflow the stack
    of the SQL generator or of DataFusion later (long `a + a + ...` chains are deep, too)."""
    stack, nodes = [(tree, 1)], 0
    while stack:
        node, depth = stack.pop()
        nodes += 1
        if depth > MAX_DEPTH or nodes > MAX_NODES:
            what = f"nested more than {MAX_DEPTH} deep" if depth > MAX_DEPTH else f"more than {MAX_NODES} terms"
            e = at(node, f"expression too large: {what}", "split it into simpler expressions")
            raise e if e.line else SqlError(e.message, *_where(first), e.hint)
        stack.extend((child, depth + 1) for child in node.iter_expressions())


def _parse(sql: str, tokens: list[Token]) -> exp.Expression:
    """sqlglot's parse of one statement's tokens, its errors turned into located syntax errors."""
    try:
        trees = StreamSQL().parser().parse(tokens, sql)
    except sqlglot.errors.ParseError as e:
        raise _syntax_error(e, tokens) from None
    except RecursionError:
        raise SqlError("statement nested too deeply", *_where(tokens[0]), "simplify the expression") from None
    except (ValueError, TypeError, AttributeError, IndexError, KeyError):  # sqlglot's own checks on odd input
        raise SqlError("syntax error: cannot read this statement", *_where(tokens[0]),
                       "check the syntax; " + SUPPORTED) from None
    tree = trees[0] if trees else None
    if tree is None:
        raise SqlError("empty statement", *_where(tokens[0]), SUPPORTED)
    return tree


_TOKEN_REPR = re.compile(r"<Token token_type: TokenType\.(\w+), text: ([^,]*), line[^>]*>")
_REQUIRED = re.compile(r"Required keyword: '(\w+)' missing for <class '[\w.]*\.(\w+)'>")
_ARG_WORDS = {"this": "argument", "expression": "right-hand side"}


def _syntax_error(e: sqlglot.errors.ParseError, tokens: list[Token]) -> SqlError:
    """A parse error in words: what was expected, where; no parser internals (token reprs, class names)."""
    err = e.errors[0] if e.errors else {}
    desc = str(err.get("description") or e).split(". Line")[0]
    desc = _TOKEN_REPR.sub(lambda m: "the end of the statement" if m.group(1) == "SENTINEL" else repr(m.group(2)),
                           desc)
    desc = _REQUIRED.sub(lambda m: f"incomplete {m.group(2).upper()}: its "
                                   f"{_ARG_WORDS.get(m.group(1), m.group(1))} is missing", desc)
    desc = desc.replace("Expecting )", "expected a closing )").replace("Invalid expression / Unexpected token",
                                                                       "unexpected text").replace("Expected", "expected")
    near = err.get("highlight")
    line, col = (err["line"], err["col"] - len(near or " ") + 1) if err.get("line") else _where(tokens[-1])
    return SqlError(f"syntax error: {desc}" + (f" (at {near!r})" if near and near not in desc else ""),
                    line, col, "check the syntax near the marked position")


def _cut_emit(tokens: list[Token]) -> tuple[list[Token], list[Token] | None]:
    """Split a trailing `EMIT ON WINDOW CLOSE` / `EMIT EVERY INTERVAL '..' [unit]` (which sqlglot does not
    parse) off a statement's tokens."""
    words = [t.text.upper() for t in tokens]
    if words[-4:] == ["EMIT", "ON", "WINDOW", "CLOSE"] and len(tokens) > 4:
        return tokens[:-4], tokens[-4:]
    for i in range(max(len(tokens) - 5, 1), len(tokens) - 1):  # (a statement of only EMIT is not cut)
        if words[i] == "EMIT" and words[i + 1] == "EVERY":
            return tokens[:i], tokens[i:]
    return tokens, None


def _apply_emit(stmt: Statement, emit: list[Token]) -> None:
    """EMIT belongs to a materialized view; EMIT EVERY must name a positive, bounded interval."""
    where = emit[0]
    if not isinstance(stmt, CreateView):
        raise SqlError(f"{' '.join(t.text for t in emit)} applies only to CREATE MATERIALIZED VIEW",
                       *_where(where), _EMIT_HINT)
    if emit[1].text.upper() != "EVERY":
        return
    rest = emit[2:]
    ok = len(rest) in (2, 3) and rest[0].token_type == TokenType.INTERVAL and rest[1].token_type == TokenType.STRING
    if not ok:
        raise SqlError("cannot read this EMIT EVERY clause", *_where(where), _EMIT_HINT)
    try:
        us = duration_us(" ".join(t.text for t in rest[1:]))
    except ValueError as e:
        raise SqlError(f"EMIT EVERY: {e}", *_where(rest[1]), _EMIT_HINT) from None
    stmt.options["emit_every_us"] = str(us)


def _canonical(tree: exp.Expression, emit: list[Token] | None) -> str:
    """The statement as sqlglot writes it back (plus the EMIT clause): equal for the same definition."""
    tail = " " + " ".join(t.text.upper() if t.token_type != TokenType.STRING else repr(t.text) for t in emit) \
        if emit else ""
    try:
        return tree.sql(dialect=StreamSQL, comments=False) + tail
    except (RecursionError, ValueError):
        return ""


def _statement(tree: exp.Expression, text: str, tokens: list[Token]) -> Statement:
    if isinstance(tree, exp.Create):
        kind = (tree.args.get("kind") or "").upper()
        if kind == "STREAM":
            return _create_stream(tree, text)
        props = tree.args.get("properties")
        is_mv = props is not None and any(isinstance(p, exp.MaterializedProperty) for p in props.expressions)
        if kind == "VIEW" and is_mv:
            name = object_name(tree.this, "view")
            select = tree.expression
            if not isinstance(select, exp.Select):
                raise at(select if select is not None else tree.this,
                         "a materialized view must be defined by a SELECT",
                         "CREATE MATERIALIZED VIEW v AS SELECT ... FROM stream GROUP BY ...")
            options, nodes = _options(tree)
            return CreateView(text, name, select, check_view_options(options, nodes))
        if kind == "FUNCTION":
            return _create_function(tree, text)
        raise at(tree.this, f"CREATE {kind or '...'} is not supported",
                 "use CREATE STREAM (a source), CREATE MATERIALIZED VIEW (a continuous query) or CREATE FUNCTION")
    if isinstance(tree, exp.Drop):
        kind = (tree.args.get("kind") or "").upper()
        if kind not in ("STREAM", "VIEW", "FUNCTION"):
            raise at(tree.this, f"DROP {kind} is not supported",
                     "use DROP STREAM, DROP MATERIALIZED VIEW or DROP FUNCTION")
        target = tree.this or (tree.args.get("tables") or [None])[0]
        return Drop(text, kind, object_name(target, kind.lower()), bool(tree.args.get("exists")))
    if isinstance(tree, exp.Describe):
        return Describe(text, object_name(tree.this, "object"))
    if isinstance(tree, exp.Command):
        m = _SHOW.match(text)
        if m:
            word = m.group(1).upper()
            return Show(text, word if word in ("STREAMS", "FUNCTIONS") else "VIEWS")
        stop, kw = tree.meta.get("stop") or tokens[0], tokens[0].text.upper()[:20]
        what = f"unexpected {stop.text[:40]!r} in this {kw} statement" if stop is not tokens[0] \
            else f"cannot read this {kw} statement"
        raise SqlError(f"syntax error: {what}", *_where(stop), "check the syntax near the marked position; " + SUPPORTED
                       + (" (SHOW STREAMS, SHOW MATERIALIZED VIEWS)" if kw == "SHOW" else ""))
    if isinstance(tree, exp.Query):
        return Query(text)
    raise SqlError(f"unsupported statement {tokens[0].text.upper()[:20]}", *_where(tokens[0]), SUPPORTED)


FUNCTION_HINT = "CREATE FUNCTION f(x DOUBLE) RETURNS DOUBLE LANGUAGE PYTHON AS 'udfs.py:f'"


def _create_function(tree: exp.Create, text: str) -> CreateFunction:
    fn = tree.this
    if not isinstance(fn, exp.UserDefinedFunction):
        raise at(tree, "cannot read this CREATE FUNCTION", FUNCTION_HINT)
    name = object_name(fn.this, "function")
    args = []
    for a in fn.expressions:
        if not isinstance(a, exp.ColumnDef) or not isinstance(a.args.get("kind"), exp.DataType):
            raise at(a, "each argument needs a name and a type", FUNCTION_HINT)
        args.append((a.name, arrow_type(a.args["kind"], a)))
    props = {type(p): p for p in (tree.args.get("properties").expressions if tree.args.get("properties") else [])}
    returns, language = props.get(exp.ReturnsProperty), props.get(exp.LanguageProperty)
    if returns is None or not isinstance(returns.this, exp.DataType):
        raise at(tree, f"function {name} needs RETURNS <type>", FUNCTION_HINT)
    if language is None or language.name.upper() != "PYTHON":
        raise at(language or tree, f"function {name} needs LANGUAGE PYTHON (the only language there is)", FUNCTION_HINT)
    body = tree.expression
    where, _, attr = (body.this if isinstance(body, exp.Literal) and body.is_string else "").rpartition(":")
    if not where or not attr.isidentifier():
        raise at(body if body is not None else tree, f"function {name}: AS must be 'path/file.py:function'",
                 FUNCTION_HINT)
    return CreateFunction(text, name, args, arrow_type(returns.this, tree), where, attr)


def _options(tree: exp.Create) -> tuple[dict[str, str], dict[str, exp.Expression]]:
    """WITH (key = value, ...) as text, keys lower case, plus each option's node (to locate errors). An
    option given twice takes its last value (tests and scripts override a base list that way)."""
    props = tree.args.get("properties")
    out: dict[str, str] = {}
    nodes: dict[str, exp.Expression] = {}
    for p in props.expressions if props else []:
        if isinstance(p, exp.MaterializedProperty):
            continue
        if not isinstance(p, exp.Property) or not isinstance(p.this, exp.Expression):
            raise at(p, f"cannot read option {p.sql()[:60]}", "write WITH (key = 'value', ...)")
        key = (p.this.name if isinstance(p.this, (exp.Literal, exp.Var, exp.Identifier)) else p.this.sql()).lower()
        value = p.args.get("value")
        out[key] = value.name if isinstance(value, exp.Literal) else (value.sql() if value else "")
        nodes[key] = p
    return out, nodes


def _create_stream(tree: exp.Create, text: str) -> CreateStream:
    schema_node = tree.this
    if not isinstance(schema_node, exp.Schema):
        raise at(tree, "CREATE STREAM needs a column list", "CREATE STREAM s (a BIGINT, ts TIMESTAMP) WITH (...)")
    name = object_name(schema_node.this, "stream")
    fields: list[pa.Field] = []
    watermark = key = None
    for item in schema_node.expressions:
        if isinstance(item, exp.PrimaryKey):
            if key is not None:
                raise at(item, "only one PRIMARY KEY per stream")
            key = item
        elif isinstance(item, exp.WatermarkColumnConstraint):
            if watermark is not None:
                raise at(item, "only one WATERMARK clause per stream")
            watermark = item
        elif isinstance(item, exp.ColumnDef):
            col = object_name(item, "column")
            if any(f.name.lower() == col.lower() for f in fields):
                raise at(item, f"column {col} is declared twice")
            if not isinstance(item.args.get("kind"), exp.DataType):
                raise at(item, f"column {col} needs a type", "e.g. amount DOUBLE")
            fields.append(pa.field(col, arrow_type(item.args["kind"], item)))
        else:
            raise at(item, f"unexpected item in column list: {item.sql()[:60]}")
    if not fields:
        raise at(tree, f"stream {name} has no columns")
    schema = pa.schema(fields)
    options, nodes = _options(tree)
    options = check_stream_options(options, nodes, schema_node)
    event_time, delay, where = _event_time(options, watermark, schema_node, name)
    field_ = next((f for f in fields if f.name.lower() == event_time.lower()), None)
    if field_ is None:
        raise at(where, f"event-time column {event_time} is not declared", f"declared columns: {', '.join(schema.names)}")
    if not pa.types.is_timestamp(field_.type):
        raise at(where, f"event-time column {event_time} must be TIMESTAMP, not {field_.type}")
    return CreateStream(text, name, schema, field_.name, delay, options, _primary_key(key, schema))


def _primary_key(key: exp.PrimaryKey | None, schema: pa.Schema) -> tuple[str, ...]:
    """The declared key columns (as declared in the column list); streams do not enforce it: it says
    which rows are versions of one another, for temporal joins."""
    if key is None:
        return ()
    names = {n.lower(): n for n in schema.names}
    out = []
    for ident in key.expressions:
        col = ident.name if isinstance(ident, (exp.Identifier, exp.Column)) else ident.sql()
        if col.lower() not in names:
            raise at(ident, f"PRIMARY KEY column {col} is not declared", f"declared columns: {', '.join(schema.names)}")
        out.append(names[col.lower()])
    return tuple(out)


def _event_time(options: dict[str, str], watermark: exp.Expression | None, schema_node: exp.Expression,
                name: str) -> tuple[str, int, exp.Expression]:
    """(column, watermark delay µs, node to point at), from WATERMARK FOR or the equivalent options, which
    are removed from `options`; given both ways, it is refused (which one would win?)."""
    by_option = "timestamp_field" in options or "watermark_delay" in options
    if watermark is not None:
        if by_option:
            raise at(watermark, "the event time is given twice: by WATERMARK FOR and by timestamp_field/"
                                "watermark_delay options", "keep one of them")
        col = object_name(watermark.this, "column")
        return col, _watermark_delay(watermark.expression, col), watermark.this
    if "timestamp_field" in options:
        delay = duration_us(options.pop("watermark_delay", "0 seconds"), allow_zero=True)  # checked already
        return options.pop("timestamp_field"), delay, schema_node
    raise at(schema_node, f"stream {name} has no event-time column",
             "add WATERMARK FOR ts AS ts - INTERVAL '5' SECOND, or WITH (timestamp_field = 'ts', "
             "watermark_delay = '5 seconds')")


def _watermark_delay(node: exp.Expression | None, col: str) -> int:
    if isinstance(node, exp.Column) and node.name.lower() == col.lower():
        return 0
    if isinstance(node, exp.Sub) and isinstance(node.this, exp.Column) and node.this.name.lower() == col.lower():
        return interval_us(node.expression, allow_zero=True)
    raise at(node, f"unsupported watermark expression {node.sql()[:60] if node is not None else ''}",
             f"write WATERMARK FOR {col} AS {col} - INTERVAL '5' SECOND")
