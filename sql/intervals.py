"""Interval literals (`INTERVAL '1' HOUR`, `INTERVAL '5 seconds'`, `'10 minutes'`) to microseconds."""

from __future__ import annotations

import re

from sqlglot import exp

from pondstream.sql.errors import SqlError, at

_UNITS_US = {
    "microsecond": 1, "us": 1, "millisecond": 1_000, "ms": 1_000,
    "second": 1_000_000, "sec": 1_000_000, "s": 1_000_000,
    "minute": 60_000_000, "min": 60_000_000, "m": 60_000_000,
    "hour": 3_600_000_000, "h": 3_600_000_000,
    "day": 86_400_000_000, "d": 86_400_000_000, "week": 7 * 86_400_000_000,
}
_HINT = "write e.g. INTERVAL '1' HOUR, INTERVAL '10' MINUTE or INTERVAL '5 seconds'"
_PART = re.compile(r"\s*(-?\d+(?:\.\d+)?)\s*([a-zA-Z]+)\s*")


def _unit_us(unit: str) -> int | None:
    u = unit.lower()
    if u in _UNITS_US:
        return _UNITS_US[u]
    if u.endswith("s") and u[:-1] in _UNITS_US:
        return _UNITS_US[u[:-1]]
    return None


def parse_duration(text: str) -> int:
    """'5 seconds', '1 hour 30 minutes', '250ms' -> microseconds; raises ValueError naming the problem."""
    pos, total, s = 0, 0, text.strip()
    if not s:
        raise ValueError("empty interval")
    while pos < len(s):
        m = _PART.match(s, pos)
        if not m:
            raise ValueError(f"cannot read interval {text!r}")
        us = _unit_us(m.group(2))
        if us is None:
            raise ValueError(f"unknown interval unit {m.group(2)!r} in {text!r} (months and years have no fixed length)")
        total += round(float(m.group(1)) * us)
        pos = m.end()
    return total


def interval_us(node: exp.Expression, allow_zero: bool = False) -> int:
    """Microseconds of an interval expression; a clear located error for anything else."""
    if isinstance(node, exp.Interval):
        value = node.this.name if node.this is not None else ""
        unit = node.args.get("unit")
        text = f"{value} {unit.name}" if unit is not None else value
        try:
            us = parse_duration(text)
        except ValueError as e:
            raise at(node, str(e), _HINT) from None
        if us < 0 or (us == 0 and not allow_zero):
            raise at(node, f"interval must be positive, got {text!r}", _HINT)
        return us
    if isinstance(node, exp.Literal) and node.is_string:
        try:
            return parse_duration(node.name)
        except ValueError as e:
            raise at(node, str(e), _HINT) from None
    raise at(node, f"expected an interval, got {node.sql()}", _HINT)


def option_duration(name: str, text: str) -> int:
    """A duration given as a WITH option, e.g. watermark_delay = '5 seconds'."""
    try:
        return parse_duration(text)
    except ValueError as e:
        raise SqlError(f"option {name}: {e}", hint=_HINT) from None
