"""Interval literals (`INTERVAL '1' HOUR`, `INTERVAL '5 seconds'`, `'10 minutes'`) to microseconds.

Every duration is bounded (MAX_US, 100 years), so window arithmetic on microsecond timestamps (adding a
size, multiplying by a fan-out) stays far inside int64 and inside the years Python and Parquet can show.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

from sqlglot import exp

from pondstream.sql.errors import SqlError, at

_UNITS_US = {
    "microsecond": 1, "us": 1, "millisecond": 1_000, "ms": 1_000,
    "second": 1_000_000, "sec": 1_000_000, "s": 1_000_000,
    "minute": 60_000_000, "min": 60_000_000, "m": 60_000_000,
    "hour": 3_600_000_000, "h": 3_600_000_000,
    "day": 86_400_000_000, "d": 86_400_000_000, "week": 7 * 86_400_000_000,
}
MAX_US = 100 * 365 * 86_400_000_000  # 100 years
_HINT = "write e.g. INTERVAL '1' HOUR, INTERVAL '10' MINUTE or INTERVAL '5 seconds'"
_PART = re.compile(r"\s*(-?\d{1,30}(?:\.\d{1,30})?)\s*([a-zA-Z]{1,20})\s*")


def _unit_us(unit: str) -> int | None:
    u = unit.lower()
    if u in _UNITS_US:
        return _UNITS_US[u]
    if u.endswith("s") and u[:-1] in _UNITS_US:
        return _UNITS_US[u[:-1]]
    return None


def parse_duration(text: str) -> int:
    """'5 seconds', '1 hour 30 minutes', '250ms' -> microseconds, |value| <= 100 years; raises ValueError
    naming the problem."""
    pos, total, s = 0, Decimal(0), text.strip()
    if not s:
        raise ValueError("empty interval")
    if len(s) > 200:
        raise ValueError(f"cannot read interval {s[:40]!r}... (too long)")
    while pos < len(s):
        m = _PART.match(s, pos)
        if not m:
            raise ValueError(f"cannot read interval {text!r}")
        us = _unit_us(m.group(2))
        if us is None:
            raise ValueError(f"unknown interval unit {m.group(2)!r} in {text!r} (months and years have no fixed length)")
        try:
            total += Decimal(m.group(1)) * us
        except InvalidOperation:
            raise ValueError(f"cannot read interval {text!r}") from None
        pos = m.end()
        if abs(total) > MAX_US:
            raise ValueError(f"interval {text!r} is too long (at most 100 years)")
    return int(total.to_integral_value())


def duration_us(text: str, allow_zero: bool = False) -> int:
    """A duration that must be positive (or zero, if allowed) and at most 100 years; ValueError if not."""
    us = parse_duration(text)
    if us < 0 or (us == 0 and not allow_zero):
        raise ValueError(f"interval must be {'zero or ' if allow_zero else ''}positive, got {text!r}")
    return us


def month_day_nano_us(months: int, days: int, nanos: int) -> int:
    """An interval as DataFusion hands it to a function (months, days, nanoseconds) in µs, refused where a
    view refuses the same INTERVAL: months and years have no fixed length; it must be positive and at most
    100 years. A day is 24 hours (timestamps are UTC) and a fraction of a µs rounds as parse_duration's."""
    parts = [(Decimal(months), "month"), (Decimal(days), "day"), (Decimal(nanos).scaleb(-9).normalize(), "second")]
    shown = " ".join(f"{n:f} {unit}{'' if abs(n) == 1 else 's'}" for n, unit in parts if n) or "0 seconds"
    if months:
        raise ValueError(f"interval {shown!r} has months or years, which have no fixed length")
    us = int((Decimal(days * _UNITS_US["day"] * 1000 + nanos) / 1000).to_integral_value())
    if abs(us) > MAX_US:
        raise ValueError(f"interval {shown!r} is too long (at most 100 years)")
    if us <= 0:
        raise ValueError(f"interval must be positive, got {shown!r}")
    return us


def _interval_text(node: exp.Expression) -> str:
    """'<value> <unit>' of an INTERVAL node, or the text of a string literal; ValueError for anything else."""
    if isinstance(node, exp.Interval):
        value = node.this
        if not isinstance(value, exp.Literal):
            raise ValueError(f"expected a constant interval, got {node.sql()[:60]}")
        unit = node.args.get("unit")
        if unit is not None and not isinstance(unit, exp.Var):
            raise ValueError(f"unsupported interval unit {unit.sql()[:40]}")
        return f"{value.name} {unit.name}" if unit is not None else value.name
    if isinstance(node, exp.Literal) and node.is_string:
        return node.name
    raise ValueError(f"expected an interval, got {node.sql()[:60]}")


def interval_us(node: exp.Expression, allow_zero: bool = False) -> int:
    """Microseconds of an interval expression (positive, bounded); a clear located error for anything else."""
    try:
        return duration_us(_interval_text(node), allow_zero)
    except ValueError as e:
        raise at(node, str(e), _HINT) from None


def option_duration(name: str, text: str, allow_zero: bool = True) -> int:
    """A duration given as a WITH option, e.g. watermark_delay = '5 seconds'."""
    try:
        return duration_us(text, allow_zero)
    except ValueError as e:
        raise SqlError(f"option {name}: {e}", hint=_HINT) from None
