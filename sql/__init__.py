"""SQL front end: text in, typed statement plans out (via a sqlglot dialect of ours)."""

from pondstream.sql.errors import SqlError
from pondstream.sql.names import check_name, object_name
from pondstream.sql.statements import (
    CreateFunction,
    CreateStream,
    CreateView,
    Describe,
    Drop,
    Query,
    Show,
    Statement,
    check_limits,
    parse_script,
)

__all__ = [
    "SqlError", "check_name", "object_name", "Statement", "CreateFunction", "CreateStream", "CreateView", "Drop", "Show", "Describe", "Query", "parse_script",
    "check_limits",
]
