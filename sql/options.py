"""The WITH options every stream connector and view knows, each with its validator: one table, checked at CREATE.

A Check takes the option's text and returns it (normalized) or raises ValueError saying why; unknown
options are refused with the known ones listed and the closest match suggested, so a misspelled option
is never silently ignored.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import pyarrow as pa
from sqlglot import exp

from pondstream.sql.errors import at
from pondstream.sql.intervals import MAX_US, duration_us
from pondstream.sql.secrets import REFERENCE, literal_secret_problem

INT64_MAX = 2**63 - 1


@dataclass(frozen=True)
class Check:
    """How one option's text is validated (returns it normalized, or raises ValueError saying why), and a
    good value to show in the hint."""

    parse: Callable[[str], str]
    example: str


def duration(allow_zero: bool) -> Check:
    """A duration, '5 seconds': positive (or zero) and at most 100 years."""
    def parse(text: str) -> str:
        duration_us(text, allow_zero)
        return text.strip()
    return Check(parse, "'5 seconds'")


def integer(lo: int, hi: int) -> Check:
    """A whole number in [lo, hi], given as '10' or 10."""
    def parse(text: str) -> str:
        t = text.strip().replace("_", "")
        if not t.lstrip("+-").isdigit() or len(t) > 20:
            raise ValueError(f"expected a whole number, got {text[:40]!r}")
        if not lo <= int(t) <= hi:
            raise ValueError(f"must be between {lo:_} and {hi:_}, got {text[:40]}")
        return str(int(t))
    return Check(parse, f"'{max(lo, 1)}'")


def number(lo: float, hi: float) -> Check:
    """A finite number in [lo, hi]."""
    def parse(text: str) -> str:
        try:
            x = float(text)
        except ValueError:
            raise ValueError(f"expected a number, got {text[:40]!r}") from None
        if not math.isfinite(x) or not lo <= x <= hi:
            raise ValueError(f"must be a number between {lo:g} and {hi:g}, got {text[:40]}")
        return text.strip()
    return Check(parse, f"'{lo:g}'")


def choice(*values: str) -> Check:
    """One of `values`, case-insensitive (stored lower case)."""
    def parse(text: str) -> str:
        if text.strip().lower() not in values:
            raise ValueError(f"must be one of {', '.join(values)}, got {text[:40]!r}")
        return text.strip().lower()
    return Check(parse, f"'{values[0]}'")


def timestamp_us(text: str) -> int:
    """A timestamp as the sources read it ('2026-01-01 00:00:00', ISO-8601), in µs; ValueError if not one."""
    try:
        return pa.scalar(text.strip()).cast(pa.timestamp("us")).value
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OverflowError):
        raise ValueError(f"expected a timestamp such as '2026-01-01 00:00:00', got {text[:40]!r}") from None


def _timestamp(text: str) -> str:
    timestamp_us(text)
    return text.strip()


def _epoch_ms_or_timestamp(text: str) -> str:
    """Kafka's scan_startup_timestamp: epoch milliseconds (digits) or a timestamp."""
    return integer(0, INT64_MAX // 1000).parse(text) if text.strip().isdigit() else _timestamp(text)


def _text(text: str) -> str:
    """Any non-empty text (a path, a topic, a host:port list, a column name)."""
    if not text.strip():
        raise ValueError("must not be empty")
    if "\x00" in text:
        raise ValueError("must not contain NUL characters")
    return text


timestamp = Check(_timestamp, "'2026-01-01 00:00:00'")
epoch_ms_or_timestamp = Check(_epoch_ms_or_timestamp, "'1767225600000'")
text_value = Check(_text, "'...'")
identifier = Check(_text, "'event_time'")


HUGE = 10**12
STREAM: dict[str, Check] = {
    "connector": choice("file", "generator", "kafka", "nexmark"),
    "timestamp_field": identifier,
    "watermark_delay": duration(allow_zero=True),
    "idle_timeout": duration(allow_zero=False),
}
CONNECTORS: dict[str, dict[str, Check]] = {
    "file": {
        "path": text_value,
        "format": choice("jsonl", "json", "csv", "parquet"),
        "batch_bytes": integer(1, 1 << 34),
        "event_time_min": timestamp,
        "event_time_max": timestamp,
    },
    "generator": {
        "rows": integer(0, HUGE),
        "rate": number(0, 1e9),
        "keys": integer(1, 10_000_000),
        "seed": integer(0, INT64_MAX),
        "out_of_orderness": duration(allow_zero=True),
        "step": duration(allow_zero=True),
        "start": timestamp,
        "batch_size": integer(1, 10_000_000),
    },
    "nexmark": {
        "table": choice("person", "auction", "bid"),
        "events": integer(0, HUGE),
        "rate": number(0, 1e9),
        "seed": integer(0, INT64_MAX),
        "batch_size": integer(1, 10_000_000),
        "out_of_order_group": integer(1, 1_000_000),
        "first_event_rate": number(1, 1e9),
        "start": timestamp,
    },
    "kafka": {
        "topic": text_value,
        "bootstrap_servers": text_value,
        "format": choice("json", "jsonl", "csv"),
        "scan_startup": choice("earliest", "latest", "timestamp"),
        "scan_startup_timestamp": epoch_ms_or_timestamp,
        "scan_bounded": choice("latest", "none"),
        "group_id": text_value,
        "batch_size": integer(1, 10_000_000),
    },
}
REQUIRED = {"file": ("path",), "kafka": ("topic", "bootstrap_servers")}
PREFIXES = {"kafka": ("properties.",)}  # passed through to librdkafka
VIEW: dict[str, Check] = {
    "allowed_lateness": duration(allow_zero=True),
    "state_ttl": duration(allow_zero=False),
    "sink_topic": text_value,
    "sink_bootstrap_servers": text_value,
    "emit_every": duration(allow_zero=False),  # EMIT EVERY, also accepted as an option
    "history_retention": duration(allow_zero=True),  # how long replaced rows stay readable (VERSION AS OF)
    "emit_every_us": integer(1, MAX_US),  # internal: what EMIT EVERY becomes
}
VIEW_PREFIXES = ("sink_properties.",)


def check_options(options: dict[str, str], known: Mapping[str, Check], prefixes: tuple[str, ...],
                  nodes: Mapping[str, exp.Expression], what: str) -> dict[str, str]:
    """Validate (and normalize) every option against `known`; a SqlError at the offending option if one is
    unknown or its value is wrong."""
    out: dict[str, str] = {}
    for key, value in options.items():
        node = nodes.get(key)
        problem = literal_secret_problem(key, value)
        if problem:
            raise at(node, problem, "secrets are read from the environment when the pipeline runs, never stored")
        if any(key.startswith(p) and len(key) > len(p) for p in prefixes):  # passed through as they are
            out[key] = value
            continue
        if REFERENCE.match(value) and known.get(key) is text_value:  # resolved when the pipeline runs
            out[key] = value
            continue
        if key not in known:
            close = difflib.get_close_matches(key, [*known, *(p + "*" for p in prefixes)], n=1)
            hint = (f"did you mean {close[0]}? " if close else "") + \
                f"{what} options are: {', '.join([*known, *(p + '*' for p in prefixes)])}"
            raise at(node, f"unknown option {key} for {what}", hint)
        try:
            out[key] = known[key].parse(value)
        except ValueError as e:
            raise at(node, f"option {key}: {e}", f"e.g. {key} = {known[key].example}") from None
    return out


def check_stream_options(options: dict[str, str], nodes: Mapping[str, exp.Expression],
                         where: exp.Expression) -> dict[str, str]:
    """A stream's options: the common ones plus its connector's; required ones present; ranges consistent."""
    connector = options.get("connector")
    if connector is None:
        raise at(where, "the stream has no connector",
                 "add WITH (connector = 'file', path = '...', format = 'jsonl') or connector = 'generator'")
    connector = check_options({"connector": connector}, STREAM, (), nodes, "a stream")["connector"]
    out = check_options(options, {**STREAM, **CONNECTORS[connector]}, PREFIXES.get(connector, ()), nodes,
                        f"connector '{connector}'")
    missing = [k for k in REQUIRED.get(connector, ()) if k not in out]
    if missing:
        raise at(where, f"connector '{connector}' needs {', '.join(missing)}",
                 {"file": "WITH (connector = 'file', path = 'data/orders/', format = 'jsonl')",
                  "kafka": "WITH (connector = 'kafka', topic = 'orders', bootstrap_servers = 'localhost:9092')"}
                 [connector])
    problems = _consistency(out)
    if problems:
        raise at(where, problems[0], "see the connector options in the README")
    return out


def _consistency(o: dict[str, str]) -> list[str]:
    """Problems between options that are each fine alone."""
    problems = []
    lo, hi = o.get("event_time_min", "1900-01-01"), o.get("event_time_max", "2300-01-01")
    if timestamp_us(lo) >= timestamp_us(hi):
        problems.append(f"event_time_min ({lo}) must be before event_time_max ({hi})")
    if o.get("scan_startup") == "timestamp" and "scan_startup_timestamp" not in o:
        problems.append("scan_startup = 'timestamp' needs scan_startup_timestamp (epoch ms or '2026-01-01 00:00:00')")
    if o.get("connector") == "generator" and int(o.get("rows", 100_000)) > 0:
        start = timestamp_us(o.get("start", "2026-01-01 00:00:00"))
        step = duration_us(o.get("step", "100 milliseconds"), allow_zero=True)
        end = start + int(o.get("rows", 100_000)) * step
        if end >= timestamp_us("9999-01-01"):
            problems.append("the generator's event times (start + rows x step) would pass the year 9999; "
                            "use fewer rows or a smaller step")
    return problems


def check_view_options(options: dict[str, str], nodes: Mapping[str, exp.Expression]) -> dict[str, str]:
    """A materialized view's WITH options; sink settings without a sink_topic would be silently unused."""
    out = check_options(options, VIEW, VIEW_PREFIXES, nodes, "a materialized view")
    stray = next((k for k in out if k.startswith("sink_") and k != "sink_topic"), None)
    if stray and "sink_topic" not in out:
        raise at(nodes[stray], f"option {stray} needs sink_topic", "add sink_topic = 'topic' or remove it")
    return out


def sink_servers_problem(view_options: dict[str, str], stream_options: dict[str, str]) -> str | None:
    """A Kafka sink needs a broker: sink_bootstrap_servers, or the Kafka stream's own bootstrap_servers."""
    if "sink_topic" in view_options and not (view_options.get("sink_bootstrap_servers")
                                             or stream_options.get("bootstrap_servers")):
        return "sink_topic needs sink_bootstrap_servers = 'host:port' (the stream is not read from Kafka)"
    return None
