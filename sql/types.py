"""SQL column types a stream may declare, and the Arrow type each becomes."""

from __future__ import annotations

import pyarrow as pa
from sqlglot import exp

from pondstream.sql.errors import at

T = exp.DataType.Type
_SIMPLE: dict[T, pa.DataType] = {
    T.BIGINT: pa.int64(),
    T.INT: pa.int32(),
    T.SMALLINT: pa.int16(),
    T.DOUBLE: pa.float64(),
    T.FLOAT: pa.float64(),
    T.VARCHAR: pa.string(),
    T.TEXT: pa.string(),
    T.CHAR: pa.string(),
    T.BOOLEAN: pa.bool_(),
    T.TIMESTAMP: pa.timestamp("us"),
    T.TIMESTAMPTZ: pa.timestamp("us"),
    T.DATETIME: pa.timestamp("us"),
}
SUPPORTED = "BIGINT, INT, SMALLINT, DOUBLE, FLOAT, DECIMAL(p,s), VARCHAR, TEXT, BOOLEAN, TIMESTAMP"


def arrow_type(kind: exp.DataType, where: exp.Expression | None = None) -> pa.DataType:
    """Arrow type for a declared column type; timestamps are UTC microseconds without zone. Errors point at
    `where` (the column), since type nodes carry no position."""
    where = where if where is not None else kind
    if kind.this in _SIMPLE:  # parameters such as VARCHAR(20) or TIMESTAMP(3) do not change the Arrow type
        return _SIMPLE[kind.this]
    if kind.this == T.DECIMAL:
        params = [int(p.name) if isinstance(p, exp.DataTypeParam) and p.name.isdigit() and len(p.name) < 4 else -1
                  for p in kind.expressions]
        if len(params) > 2 or -1 in params:
            raise at(where, f"cannot read {kind.sql()[:40]}", "write DECIMAL(p, s) with whole numbers, e.g. DECIMAL(10, 2)")
        precision, scale = [*params, 0][:2] if params else (38, 9)
        if not 0 < precision <= 38 or not 0 <= scale <= precision:
            raise at(where, f"DECIMAL({precision},{scale}) is out of range", "precision 1..38, 0 <= scale <= precision")
        return pa.decimal128(precision, scale)
    raise at(where, f"unsupported column type {kind.sql()[:40]}", f"use one of {SUPPORTED}")


def is_timestamp(t: pa.DataType) -> bool:
    return pa.types.is_timestamp(t)
