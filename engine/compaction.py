"""Which versions of which series may be consolidated now, and the on-demand `pondstream compact`.

Consolidation (state/consolidate.py) folds tail versions into a base; a version is folded only once
everything that reads versions one by one has read it: a view over this view (its committed position)
and a Kafka sink (the last version it published). The same pins serve the running pipeline and
`compact`, so neither can fold away a version a reader still needs.
"""

from __future__ import annotations

from typing import Any

from pondstream.engine.catalog import Catalog
from pondstream.sql.intervals import parse_duration
from pondstream.state.consolidate import DEFAULT_RETENTION_US, consolidate
from pondstream.state.series import SeriesStore
from pondstream.state.store import StateStore

NO_PIN = 1 << 62


def pins(catalog: Catalog, store: StateStore) -> dict[str, int]:
    """Series name -> the highest version that may be folded (as committed in RocksDB)."""
    out: dict[str, int] = {}
    for name, entry in catalog.views.items():
        plan = entry.plan
        if plan.stream in catalog.views:
            read = int((store.get_meta(f"view/{name}", {}).get("position") or {}).get("version", 0))
            out[plan.stream] = min(out.get(plan.stream, NO_PIN), read)
        if plan.options.get("sink_topic"):
            out[name] = min(out.get(name, NO_PIN), int(store.get_meta(f"sink/{name}", 0)))
    return out


def retention_us(catalog: Catalog, series: str) -> int:
    """The view's history_retention (the default for other series, which replace no rows)."""
    entry = catalog.views.get(series)
    text = entry.plan.options.get("history_retention") if entry else None
    return DEFAULT_RETENTION_US if text is None else parse_duration(text)


def compact(catalog: Catalog, store: StateStore, series: SeriesStore, names: list[str]) -> list[dict[str, Any]]:
    """Consolidate every series in `names` as far as its pins allow; one summary per series."""
    held = pins(catalog, store)
    out = []
    for name in names:
        before = len(series.entries(name)) + len(series.base(name)["files"])
        base = consolidate(series, name, held.get(name), retention_us(catalog, name))
        after = len(series.entries(name)) + len(series.base(name)["files"])
        out.append({"series": name, "files_before": before, "files_after": after,
                    "base_version": (base or series.base(name))["version"], "changed": base is not None})
    return out
