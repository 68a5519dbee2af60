"""The one rule for names that come from SQL (streams, views, columns) or from the CLI / Python API.

- Unquoted identifiers are case-insensitive and folded to lower case (as PostgreSQL and DataFusion do);
  quoted identifiers are kept exactly: `CREATE STREAM Orders` is `orders`, `CREATE STREAM "Orders"` is `Orders`.
- Every name, quoted or not, is 1..63 ASCII letters, digits and underscores, not starting with a digit
  (it becomes a directory name, a RocksDB key prefix and a column of Parquet files).
- Columns declared in CREATE STREAM and aliases of a view's output columns follow the same rule (a quoted
  "customerId" reads a JSON field of that exact case; unquoted, it is customerid). Output columns without an
  alias keep the name DataFusion would give them.
- Names starting with `_` are pondstream's own: a stream's `__errors` series, a view's `__late` series,
  the hidden columns `_version`, `_window_start`, `_window_end`, `_keyN`, `_watermark`. A stream or view
  may also not end in `__errors` or `__late`, so it can never be mistaken for another object's series.
"""

from __future__ import annotations

from sqlglot import exp

from pondstream.sql.errors import SqlError, at
from pondstream.state.paths import MAX_NAME as MAX_LEN  # the characters and length names on disk allow
from pondstream.state.paths import NAME_RE as _CHARS

RULE = f"names are 1..{MAX_LEN} ASCII letters, digits and _, not starting with a digit"
INTERNAL_SUFFIXES = ("__errors", "__late")


def name_problem(name: str, what: str) -> str | None:
    """Why `name` is not allowed as a `what` (None if it is): the character rule, then reserved names."""
    if not _CHARS.fullmatch(name) or len(name) > MAX_LEN:
        shown = name if len(name) <= 40 else name[:40] + "..."
        return f"{what} name {shown!r} is not allowed: {RULE}"
    if name.startswith("_"):
        return (f"{what} name {name!r} is reserved: names starting with _ are pondstream's internal "
                f"series and columns (_version, _window_start, _window_end, _keyN, _watermark)")
    if what in ("stream", "view", "object") and name.lower().endswith(INTERNAL_SUFFIXES):
        return (f"{what} name {name!r} is reserved: <name>__errors and <name>__late are the internal series "
                f"of other streams and views")
    return None


def check_name(name: str, what: str = "object") -> str:
    """A name given on the command line or through the Python API: same rule as in SQL (kept as given)."""
    problem = name_problem(name, what)
    if problem:
        raise SqlError(problem, hint=f"e.g. hourly_sales; {RULE}")
    return name


def _identifier(node: exp.Expression) -> exp.Identifier | None:
    """The single identifier naming `node` (a Table, Column, ColumnDef or Identifier), or None if it is
    qualified (`db.x`) or not a plain name."""
    if isinstance(node, exp.Identifier):
        return node
    if isinstance(node, exp.Table) and any(node.args.get(k) for k in ("db", "catalog")):
        return None
    if isinstance(node, exp.Column) and node.args.get("table"):
        return None
    inner = node.this if isinstance(node, (exp.Table, exp.Column, exp.ColumnDef, exp.Alias)) else None
    if isinstance(node, exp.Alias):
        inner = node.args.get("alias")
    return inner if isinstance(inner, exp.Identifier) else None


def fold(ident: exp.Identifier) -> str:
    """Unquoted identifiers are case-insensitive (lower case); quoted ones are exact."""
    return ident.this if ident.quoted else ident.this.lower()


def object_name(node: exp.Expression | None, what: str) -> str:
    """The name a SQL node gives a stream, view or column, folded and checked; a located SqlError if not."""
    ident = _identifier(node) if node is not None else None
    if ident is None or not isinstance(ident.this, str):
        raise at(node, f"expected a plain {what} name here", f"e.g. hourly_sales (no schema prefix); {RULE}")
    name = fold(ident)
    problem = name_problem(name, what)
    if problem:
        raise at(node, problem, f"e.g. hourly_sales; {RULE}")
    return name
