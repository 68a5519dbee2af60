"""Vectorized per-key scans over a table sorted by key: where each key's run starts, and running maxima
that restart at every key (sessions merge intervals with it; state_ttl finds idle gaps with it)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def key_changes(keys: pa.Table) -> np.ndarray:
    """For rows sorted by `keys`: True where a row's key tuple differs from the row before (NULL equals
    NULL), and at row 0."""
    n = keys.num_rows
    change = np.zeros(n, dtype=bool)
    if n == 0:
        return change
    change[0] = True
    for col in keys.columns:
        c = col.combine_chunks()
        a, b = c.slice(1), c.slice(0, n - 1)
        differ = pc.fill_null(pc.not_equal(a, b), False)
        differ = pc.or_(differ, pc.xor(pc.is_null(a), pc.is_null(b)))
        change[1:] |= differ.to_numpy(zero_copy_only=False)
    return change


def running_max(values: np.ndarray, change: np.ndarray) -> np.ndarray:
    """Running maximum of int64 `values` that restarts wherever `change` is True (one pass: each key's
    values are shifted into a band of their own, so the maximum never carries over to the next key)."""
    if len(values) == 0:
        return values.copy()
    group = np.cumsum(change) - 1
    starts = np.flatnonzero(change)
    low = np.minimum.reduceat(values, starts)[group]
    rel = values - low
    span = int(rel.max()) + 1
    if group[-1] * span < (1 << 62):
        return np.maximum.accumulate(rel + group * span) - group * span + low
    return np.concatenate([np.maximum.accumulate(values[a:b])
                           for a, b in zip(starts, [*starts[1:], len(values)], strict=True)])


def key_in(table: pa.Table, subset: pa.Table, keys: list[str]) -> pa.Array:
    """Rows of `table` whose key tuple appears in `subset` (NULL keys match NULL keys)."""
    def strings(t: pa.Table) -> pa.Array:
        parts = [pc.fill_null(t.column(k).cast(pa.string()), "\u2205") for k in keys]
        return pc.binary_join_element_wise(*parts, "\u001f")
    return pc.is_in(strings(table), value_set=strings(subset).combine_chunks())
