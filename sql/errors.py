"""One error type for everything a user can get wrong in SQL, rendered with line:column and a hint."""

from __future__ import annotations

from sqlglot import exp


class SqlError(Exception):
    """A user-facing SQL error: what is wrong, where (line/column), and how to fix it."""

    def __init__(self, message: str, line: int | None = None, col: int | None = None,
                 hint: str | None = None, sql: str | None = None) -> None:
        self.message, self.line, self.col, self.hint, self.sql = message, line, col, hint, sql
        super().__init__(self.render())

    def render(self) -> str:
        where = f"line {self.line}, column {self.col}: " if self.line else ""
        text = f"SQL error: {where}{self.message}"
        if self.sql and self.line:
            lines = self.sql.splitlines()
            if 0 < self.line <= len(lines):
                src = lines[self.line - 1]
                text += f"\n  {src}\n  {' ' * max((self.col or 1) - 1, 0)}^"
        if self.hint:
            text += f"\n  hint: {self.hint}"
        return text

    def with_sql(self, sql: str, line_offset: int = 0) -> SqlError:
        """Attach the statement text (and shift lines when it came from a multi-statement script)."""
        line = self.line + line_offset if self.line else None
        return SqlError(self.message, line, self.col, self.hint, sql)


def at(node: exp.Expression | None, message: str, hint: str | None = None) -> SqlError:
    """An error located at a parsed node (sqlglot keeps line/col on identifiers)."""
    line = col = None
    if node is not None:
        for n in node.walk():
            meta = getattr(n, "_meta", None) or {}
            if "line" in meta:
                line, col = meta["line"], meta["col"] - (meta["end"] - meta["start"])
                break
    return SqlError(message, line, col, hint)
