"""Window functions in queries: TUMBLE_START/TUMBLE_END(ts, size) and HOP_START/HOP_END(ts, slide, size),
registered as DataFusion UDFs that run the operators' own window arithmetic (operators/window.py) on Arrow
arrays, with sizes accepted exactly where a view accepts them (sql/intervals.py, sql/windows.py).

An event lies in one TUMBLE window, so TUMBLE_START(ts, size) is the start a view gives it. It lies in
size / slide HOP windows; a scalar function returns one, so HOP_START/HOP_END give the latest (starting at
the last slide boundary at or before ts). Over a view's own window-start column both give back that
view's bounds. SESSION_START/SESSION_END need the events of a session, so they exist only in views.

Sizes are checked on the query text before DataFusion runs it (check_sizes). DataFusion reports a wrong
call as a type-coercion error and a failing Python UDF as a dump of the Python exception; the query
context turns both into an EngineError naming the function and its arguments.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import sqlglot
from datafusion import DataFrame, SessionContext, udf
from sqlglot import exp

from pondstream.operators.window import latest_start, window_end
from pondstream.sql.dialect import StreamSQL
from pondstream.sql.errors import SqlError
from pondstream.sql.functions import register_all
from pondstream.sql.intervals import interval_us, month_day_nano_us
from pondstream.sql.windows import window_spec
from pondstream.state.errors import EngineError

TS = pa.timestamp("us")
INTERVAL = pa.month_day_nano_interval()
_MDN = np.dtype([("months", "<i4"), ("days", "<i4"), ("nanos", "<i8")])  # Arrow's interval layout
_I64 = np.iinfo(np.int64)

# name -> (window kind, which bound, the interval arguments after ts, an example)
FUNCTIONS: dict[str, tuple[str, str, tuple[str, ...], str]] = {
    "tumble_start": ("tumble", "start", ("size",), "TUMBLE_START(hour, INTERVAL '1' DAY)"),
    "tumble_end": ("tumble", "end", ("size",), "TUMBLE_END(hour, INTERVAL '1' DAY)"),
    "hop_start": ("hop", "start", ("slide", "size"), "HOP_START(hour, INTERVAL '1' HOUR, INTERVAL '1' DAY)"),
    "hop_end": ("hop", "end", ("slide", "size"), "HOP_END(hour, INTERVAL '1' HOUR, INTERVAL '1' DAY)"),
}
_COERCE = re.compile(r"to satisfy a call to '(\w+)' function: coercion from (.*?) to the signature"
                     r"|'(\w+)' does not support zero arguments")
_SESSION = re.compile(r"Invalid function '(session_start|session_end)'")
_TS_HINT = ("ts must be a timestamp in microseconds without a time zone, like the views' columns (a TIMESTAMP "
            "literal is nanoseconds): write to_timestamp_micros('2026-01-01 10:00:00') or "
            "arrow_cast(x, 'Timestamp(Microsecond, None)')")


def usage(name: str) -> str:
    """How a function is called, e.g. `HOP_START(ts, slide, size)`."""
    return f"{name.upper()}({', '.join(('ts', *FUNCTIONS[name][2]))})"


def query_context() -> QueryContext:
    """A DataFusion session for queries over the views, with the window functions and the catalog's
    Python functions registered."""
    ctx = QueryContext()
    register_all(ctx)
    return ctx


class QueryContext(SessionContext):
    """A SessionContext whose errors about the window functions say which function and what it takes."""

    def __init__(self) -> None:
        super().__init__()
        self.function_errors: list[str] = []  # what a window function refused, in the current execution
        for name, (_, _, sizes, _) in FUNCTIONS.items():
            fn = _window_function(name, self.function_errors)
            self.register_udf(udf(fn, [TS, *[INTERVAL] * len(sizes)], TS, "immutable", name))

    def sql(self, query: str, options: Any = None, param_values: dict[str, Any] | None = None,
            **named_params: Any) -> DataFrame:
        """Plan `query` (sql_with_options calls this too); the result explains window-function errors."""
        del self.function_errors[:]
        check_sizes(query)
        try:
            df = super().sql(query, options, param_values, **named_params)
        except Exception as e:
            problem = _explain(e, self.function_errors)
            if problem is None:
                raise
            raise problem from None
        return _Frame(df.df, self.function_errors)


class _Frame(DataFrame):
    """A query's DataFrame: running it turns a window function's refusal into its EngineError."""

    def __init__(self, df: Any, errors: list[str]) -> None:
        super().__init__(df)
        self._errors = errors

    def _run(self, method: Callable[[], Any]) -> Any:
        del self._errors[:]
        try:
            return method()
        except Exception as e:
            problem = _explain(e, self._errors)
            if problem is None:
                raise
            raise problem from None

    def to_arrow_table(self) -> pa.Table:
        return self._run(super().to_arrow_table)

    def collect(self) -> list[pa.RecordBatch]:
        return self._run(super().collect)

    def to_pylist(self) -> list[dict[str, Any]]:
        return self._run(super().to_pylist)

    def to_pydict(self) -> dict[str, list[Any]]:
        return self._run(super().to_pydict)

    def count(self) -> int:
        return self._run(super().count)


def check_sizes(query: str) -> None:
    """Refuse, before DataFusion runs anything, window-function sizes a view would refuse, read by the views'
    own parser: a Python UDF that raises while partitions run in parallel can abort the process at exit
    (threads still waiting to call it), so the UDF's own checks are only a backstop."""
    low = query.lower()
    if not any(name in low for name in FUNCTIONS):
        return
    try:
        tree = sqlglot.parse_one(query, read=StreamSQL)
    except (sqlglot.errors.SqlglotError, RecursionError):
        return  # DataFusion says what is wrong with it
    for call in tree.find_all(exp.Anonymous) if tree is not None else []:
        name = call.name.lower()
        if name not in FUNCTIONS or len(call.expressions) != 1 + len(FUNCTIONS[name][2]):
            continue  # a wrong count is DataFusion's coercion error, explained below
        sizes = call.expressions[1:]
        if any(isinstance(a, exp.Null) for a in sizes):
            continue  # NULL in, NULL out
        try:
            window_spec(FUNCTIONS[name][0], [interval_us(a) for a in sizes])
        except SqlError as e:
            raise EngineError(_refusal(name, e.message, e.hint)) from None


def _refusal(name: str, message: str, hint: str | None) -> str:
    if hint is None or hint.startswith(("e.g.", "write e.g.")):  # the view's example, as this function's
        hint = f"e.g. {FUNCTIONS[name][3]}; sizes are constant intervals in weeks, days, hours, minutes, " \
               "seconds, milliseconds or microseconds"
    return f"{usage(name)}: {message}\n  hint: {hint}"


def _explain(e: Exception, errors: list[str]) -> EngineError | None:
    """The EngineError for a failed plan or run that a window function caused, else None."""
    if errors:
        return EngineError(errors[0])
    text = str(e)
    m = _COERCE.search(text)
    if m and (m.group(1) or m.group(3)) in FUNCTIONS:
        name, got = m.group(1) or m.group(3), m.group(2) or ""
        sizes = FUNCTIONS[name][2]
        first = got.split(",")[0].strip()
        hint = _TS_HINT if first.startswith("Timestamp") and first != "Timestamp(µs)" else f"e.g. {FUNCTIONS[name][3]}"
        return EngineError(f"{usage(name)} takes a timestamp and {len(sizes)} interval"
                           f"{'s' if len(sizes) > 1 else ''} ({', '.join(sizes)}); got ({got or 'no arguments'})"
                           f"\n  hint: {hint}")
    m = _SESSION.search(text)
    if m:
        return EngineError(f"{m.group(1).upper()} is not available in queries: a session is made of a key's events, "
                           "not found from one timestamp\n  hint: a SESSION view's rows already hold each "
                           "session's start and end; select those columns")
    return None


def _window_function(name: str, errors: list[str]) -> Callable[..., pa.Array]:
    """The UDF body of `name`: vectorized window bounds, or a recorded, explained refusal."""
    kind, bound, arg_names, _ = FUNCTIONS[name]

    def evaluate(ts: pa.Array, *sizes: pa.Array) -> pa.Array:
        try:
            return window_bounds(kind, bound, ts, sizes, arg_names)
        except (ValueError, SqlError) as e:
            message, hint = (e.message, e.hint) if isinstance(e, SqlError) else (str(e), None)
            errors.append(_refusal(name, message, hint))
            raise

    return evaluate


def window_bounds(kind: str, bound: str, ts: pa.Array, sizes: tuple[pa.Array, ...],
                  arg_names: tuple[str, ...] = ("size",)) -> pa.Array:
    """Start or end (timestamp[us]) of the window of each `ts` (timestamp[us]); `sizes` are interval arrays
    holding one constant (as a view's sizes are), checked as a view checks them. NULL in, NULL out."""
    null = ts.is_null().to_numpy(zero_copy_only=False)
    sizes_us = []
    for arg, arr in zip(arg_names, sizes, strict=True):
        valid = arr.is_valid().to_numpy(zero_copy_only=False)
        if not valid.any():
            return pa.nulls(len(ts), TS)
        values = np.frombuffer(arr.buffers()[1], _MDN, count=arr.offset + len(arr))[arr.offset:][valid]
        if (values != values[0]).any():
            raise ValueError(f"{arg} must be one constant interval, as in a view")
        months, days, nanos = (int(values[0][f]) for f in ("months", "days", "nanos"))
        sizes_us.append(month_day_nano_us(months, days, nanos))
        null |= ~valid
    spec = window_spec(kind, sizes_us)
    t = ts.cast(pa.int64()).fill_null(0).to_numpy()
    if len(t) and (t.min() < _I64.min + spec.size_us or t.max() > _I64.max - spec.size_us):
        raise ValueError("a timestamp is too far from 1970 for its window to be represented")
    start = latest_start(t, spec)
    out = start if bound == "start" else window_end(start, spec)
    return pa.array(out, TS, mask=null if null.any() else None)
