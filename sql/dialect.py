"""The StreamSQL dialect (reading) and DataFusionSQL (writing), both thin sqlglot subclasses.

Reading builds on RisingWave, which already parses `WATERMARK FOR c AS ...`; we add `CREATE STREAM`,
generic `WITH (key = value)` options and Flink's window TVF arguments (`TABLE s`, `DESCRIPTOR(c)`).
Writing builds on Postgres, which DataFusion accepts almost entirely; we keep TRY_CAST and MAX_BY.
A few Flink functions read as their meaning (`DATE_FORMAT` with Java patterns, 0-based `SPLIT_INDEX`,
`REGEXP_EXTRACT`'s group index), so Flink queries such as Nexmark's run as written.
"""

from __future__ import annotations

from sqlglot import exp
from sqlglot.dialects.postgres import Postgres
from sqlglot.dialects.risingwave import RisingWave
from sqlglot.generator import Generator
from sqlglot.generators.postgres import PostgresGenerator
from sqlglot.parsers.risingwave import RisingWaveParser
from sqlglot.time import format_time
from sqlglot.tokens import TokenType

# Java (Flink, Spark) date patterns -> strftime, the form sqlglot keeps and DataFusion's to_char reads.
JAVA_TIME = {"yyyy": "%Y", "yy": "%y", "MM": "%m", "dd": "%d", "HH": "%H", "mm": "%M", "ss": "%S",
             "SSS": "%3f", "EEE": "%a", "MMM": "%b"}


def _date_format(args: list[exp.Expression]) -> exp.Expression:
    """Flink's DATE_FORMAT(ts, 'yyyy-MM-dd'); a pattern that is not a literal is passed as written."""
    fmt = args[1] if len(args) > 1 else exp.Literal.string("yyyy-MM-dd HH:mm:ss")
    if fmt.is_string:
        fmt = exp.Literal.string(format_time(fmt.this, JAVA_TIME))
    return exp.TimeToStr(this=args[0], format=fmt)


def _split_index(args: list[exp.Expression]) -> exp.Expression:
    """Flink's SPLIT_INDEX(s, sep, i) counts from 0; SPLIT_PART counts from 1."""
    return exp.SplitPart(this=args[0], delimiter=args[1], part_index=exp.Add(this=args[2], expression=exp.Literal.number(1)))


class StreamParser(RisingWaveParser):
    DB_CREATABLES = {*RisingWaveParser.DB_CREATABLES, TokenType.STREAM}
    CREATABLES = {*RisingWaveParser.CREATABLES, TokenType.STREAM}
    FUNCTIONS = {
        **RisingWaveParser.FUNCTIONS,
        "DATE_FORMAT": _date_format,
        "SPLIT_INDEX": _split_index,
        "REGEXP_EXTRACT": lambda args: exp.RegexpExtract(this=args[0], expression=args[1],
                                                         group=args[2] if len(args) > 2 else exp.Literal.number(0)),
    }

    def _parse_wrapped_properties(self):  # WITH (connector = 'file', path = '...')
        return self._parse_wrapped_csv(self._parse_key_value_property)

    def _parse_lambda(self, alias: bool = False):
        """Accept Flink's `TABLE s` and `DATA => TABLE s` arguments of window TVFs."""
        t = self._tokens
        if (
            self._next
            and self._next.token_type == TokenType.FARROW
            and self._index + 2 < len(t)
            and t[self._index + 2].token_type == TokenType.TABLE
        ):
            key = self._parse_var(any_token=True)
            self._advance()
            return self.expression(exp.Kwarg(this=key, expression=self._parse_lambda(alias)))
        if self._curr and self._curr.token_type == TokenType.TABLE and self._next and (
            self._next.token_type != TokenType.L_PAREN
        ):
            self._advance()
            args = [self._parse_table_parts()]
            if self._match(TokenType.PARTITION_BY):  # SESSION(TABLE s PARTITION BY k | (k1, k2), ...)
                keys = self._parse_bitwise()
                keys = keys.expressions if isinstance(keys, exp.Tuple) else [keys.unnest()]
                args.append(self.expression(exp.Anonymous(this="PARTITION_BY", expressions=keys)))
            return self.expression(exp.Anonymous(this="TABLE", expressions=args))
        return super()._parse_lambda(alias=alias)

    def _parse_as_command(self, start):
        """sqlglot's fallback for statements it cannot parse; remember the first token it could not place,
        so the syntax error can point there."""
        stop = self._curr
        command = super()._parse_as_command(start)
        command.meta["stop"] = stop
        return command


class StreamSQL(RisingWave):
    class Tokenizer(RisingWave.Tokenizer):
        KEYWORDS = {**RisingWave.Tokenizer.KEYWORDS, "STREAM": TokenType.STREAM}
        KEYWORDS.pop("SESSION", None)  # SESSION(ts, gap) is a window function here, not a keyword

    Parser = StreamParser


class DataFusionGenerator(PostgresGenerator):
    TRY_SUPPORTED = True
    TRANSFORMS = {k: v for k, v in PostgresGenerator.TRANSFORMS.items() if k not in (exp.TryCast, exp.TimeToStr)}
    TRANSFORMS[exp.ArgMax] = lambda s, e: (
        f"first_value({s.sql(e, 'this')} ORDER BY {s.sql(e, 'expression')} DESC NULLS LAST)"
    )

    def timetostr_sql(self, e: exp.TimeToStr) -> str:  # DataFusion's to_char takes strftime patterns
        return self.func("to_char", e.this, e.args.get("format"))

    def regexpextract_sql(self, e: exp.RegexpExtract) -> str:
        """Group i of the first match, 0 the whole match (Flink, Spark); NULL when nothing matches."""
        pattern = self.sql(exp.DPipe(this=exp.DPipe(this=exp.Literal.string("("), expression=e.expression),
                                     expression=exp.Literal.string(")")))
        group = self.sql(exp.Add(this=e.args.get("group") or exp.Literal.number(0), expression=exp.Literal.number(1)))
        return f"regexp_match({self.sql(e, 'this')}, {pattern})[{group}]"

    def trycast_sql(self, expression: exp.TryCast) -> str:
        return Generator.trycast_sql(self, expression)


class DataFusionSQL(Postgres):
    Generator = DataFusionGenerator


def to_datafusion(node: exp.Expression) -> str:
    """SQL text DataFusion runs; identifiers quoted so column case survives."""
    return node.sql(dialect=DataFusionSQL, identify=True)
