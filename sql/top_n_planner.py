"""Plan a Top-N (or deduplicating) view, Flink's form:

    SELECT * FROM (
      SELECT *, ROW_NUMBER() OVER (PARTITION BY [window_start, window_end,] k ORDER BY price DESC) AS rn
      FROM bid | TUMBLE(TABLE bid, DESCRIPTOR(ts), size) [WHERE ...]) WHERE rn <= N

RANK() or DENSE_RANK() instead of ROW_NUMBER() keeps ties (every row ranked <= N). Over a window TVF it is a window Top-N, emitted when the watermark closes the window; over a stream it
is a running Top-N per key, rewritten as the key's top rows change (N = 1 with ORDER BY ts DESC keeps the
latest row per key: dedup). It runs on the aggregate machinery: the "partial" per (window, key) is the
key's best N rows so far (a struct per row), and merging two is keeping the best N of both, so state,
lateness, versions and restarts are those of any windowed or running view.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlglot import exp

from pondstream.sql.dialect import to_datafusion
from pondstream.sql.errors import at

if TYPE_CHECKING:
    from pondstream.sql.planner import ViewPlan

TOP = "__top"  # the struct column holding a candidate row
HINT = ("write SELECT * FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY k ORDER BY x DESC) AS rn FROM s) "
        "WHERE rn <= 3")


@dataclass(frozen=True)
class TopN:
    n: int
    order: list[tuple[str, bool, bool]]  # (struct field, descending, nulls first), then every field ascending
    function: str = "row_number"  # rank, dense_rank: rows equal under ORDER BY share a rank (ties are kept)

    @property
    def ties(self) -> bool:
        return self.function != "row_number"


def _row_number(sel: exp.Select) -> exp.Alias | None:
    for e in sel.expressions:
        if isinstance(e, exp.Alias) and isinstance(e.this, exp.Window) and \
                isinstance(e.this.this, (exp.RowNumber, exp.Rank, exp.DenseRank)):
            return e
    return None


def is_top_n(select: exp.Select) -> bool:
    """A SELECT over a subquery that numbers its rows with ROW_NUMBER() OVER (...)."""
    frm = select.args.get("from_") or select.args.get("from")
    inner = frm.this if frm is not None else None
    return isinstance(inner, exp.Subquery) and isinstance(inner.this, exp.Select) and \
        any(isinstance(e.unalias(), exp.Window) for e in inner.this.expressions)


def _limit(where: exp.Expression | None, rn: str, node: exp.Expression) -> int:
    """N from the outer `WHERE rn <= N` (also `rn < N`, `rn = 1` and the mirrored forms)."""
    cond = where.this if where is not None else None
    if isinstance(cond, (exp.LTE, exp.LT, exp.EQ, exp.GTE, exp.GT)):
        left, right = cond.this, cond.expression
        flip = {exp.GTE: exp.LTE, exp.GT: exp.LT}
        op = type(cond)
        if isinstance(right, exp.Column) and right.name.lower() == rn:
            left, right, op = right, left, flip.get(op, {exp.LTE: exp.GTE, exp.LT: exp.GT}.get(op, op))
        if isinstance(left, exp.Column) and left.name.lower() == rn and right.is_int and op in (exp.LTE, exp.LT, exp.EQ):
            n = int(right.this) - (1 if op is exp.LT else 0)
            if op is exp.EQ and n != 1:
                raise at(cond, f"{rn} = {n} keeps only the {n}th row", f"use {rn} <= {n} (or {rn} = 1 to deduplicate)")
            if 1 <= n <= 10_000:
                return n
            raise at(cond, f"Top-N keeps 1 to 10000 rows per key, not {n}", HINT)
    raise at(where or node, f"a Top-N view needs WHERE {rn} <= N, and only that", HINT + "; filter rows inside")


def plan_top_n(planner: Any, view: Any) -> ViewPlan:
    """`planner` is the view planner (sql/planner.py's _Planner): it resolves the FROM and the columns."""
    from pondstream.sql.planner import ViewPlan, _star
    from pondstream.sql.windows import WindowSpec

    outer = planner.select
    inner = outer.args["from_"].this.this.copy()
    numbered = _row_number(inner)
    if numbered is None:
        raise at(inner, "only ROW_NUMBER(), RANK() or DENSE_RANK() OVER (...) is supported here", HINT)
    win: exp.Window = numbered.this
    rn = numbered.alias.lower()
    n = _limit(outer.args.get("where"), rn, outer)
    for arg in ("group", "having", "order", "limit", "distinct", "joins"):
        for sel in (inner, outer):
            if sel.args.get(arg):
                raise at(sel.args[arg] if not isinstance(sel.args[arg], list) else sel, f"{arg.upper()} is not "
                         "supported in a Top-N view", HINT)
    planner.select = inner
    stream = planner._source()
    tvf = planner.tvf
    if planner.window is not None and planner.window.kind == "session":
        raise at(inner, "Top-N over SESSION windows is not supported", "use TUMBLE, HOP or CUMULATE")
    window_cols = {"window_start", "window_end"} if tvf else set()

    parts = list(win.args.get("partition_by") or [])
    orders = list(win.args["order"].expressions) if win.args.get("order") else []
    if not orders:
        raise at(win, "ROW_NUMBER() needs ORDER BY: which rows are the top ones", HINT)
    items = [e for e in _star(inner.expressions, stream, ("window_start", "window_end") if tvf else ())
             if e is not numbered]
    planner._resolve([*items, *parts, *[o.this for o in orders], inner.args.get("where")], stream, window_cols)

    def is_window_col(e: exp.Expression) -> bool:
        return isinstance(e, exp.Column) and e.name.lower() in window_cols

    if tvf and {p.name.lower() for p in parts if is_window_col(p)} != window_cols:
        raise at(win, "a window Top-N partitions by window_start, window_end (and keys)",
                 "write ROW_NUMBER() OVER (PARTITION BY window_start, window_end, k ORDER BY x DESC)")
    keys = [p for p in parts if not is_window_col(p)]
    if not tvf and not keys:
        raise at(win, "a Top-N over a whole stream needs PARTITION BY keys",
                 "partition by a key, or rank within windows: FROM TUMBLE(TABLE s, DESCRIPTOR(ts), size)")
    for node in [*keys, *[o.this for o in orders]]:
        if any(c.name.lower() in window_cols for c in node.find_all(exp.Column)):
            raise at(node, "window_start/window_end may only be partition columns here", HINT)

    # The candidate row: order values first (__o0...), then the inner select list by name.
    fields: list[tuple[str, str]] = [(f"__o{i}", to_datafusion(o.this)) for i, o in enumerate(orders)]
    names: dict[str, exp.Expression] = {}  # inner output name (lower) -> what the final step reads
    for e in items:
        name = e.alias_or_name
        if not name or not isinstance(e, exp.Column | exp.Alias):
            raise at(e, "name this column", f"write {e.sql()} AS some_name")
        if name.lower() in names or name.lower() == rn:
            raise at(e, f"two columns are named {name}", "give one of them another name with AS")
        target = e.this if isinstance(e, exp.Alias) else e
        if is_window_col(target):
            names[name.lower()] = exp.column("__ws" if target.name.lower() == "window_start" else "__we")
            continue
        if any(c.name.lower() in window_cols for c in target.find_all(exp.Column)):
            raise at(e, "only window_start and window_end themselves can be selected here", HINT)
        fields.append((name, to_datafusion(target)))
        names[name.lower()] = exp.column(exp.to_identifier(name, quoted=True))
    names[rn] = exp.column("__rn")
    order = [(f"__o{i}", bool(o.args.get("desc")), bool(o.args.get("nulls_first"))) for i, o in enumerate(orders)]

    key_cols = [f"__k{i}" for i in range(len(keys))]
    struct = ", ".join(f"'{f}', {sql}" for f, sql in fields)
    pre = ["__row", f'"{stream.event_time}" AS __ts', *[f"{to_datafusion(k)} AS {kc}" for k, kc in zip(keys, key_cols, strict=True)],
           f"named_struct({struct}) AS {TOP}"]
    where = inner.args.get("where")
    pre_sql = f"SELECT {', '.join(pre)} FROM __batch" + (f" WHERE {to_datafusion(where.this)}" if where else "")

    # The outer select list over the ranked rows (`*`: the subquery's columns, its row number last).
    inner_names = [*(i.alias_or_name for i in items), numbered.alias]
    out, time_columns, identity, seen, rank_shown = [], {}, [], set(), False
    for e in [x for o in outer.expressions for x in
              ([exp.column(exp.to_identifier(c, quoted=True)) for c in inner_names] if isinstance(o, exp.Star) else [o])]:
        name = e.alias_or_name
        if not name or not isinstance(e, exp.Column | exp.Alias):
            raise at(e, "name this column", f"write {e.sql()} AS some_name")
        if name.lower() in seen:
            raise at(e, f"two columns are named {name}", "give one of them another name with AS")
        seen.add(name.lower())

        def rewrite(c: exp.Expression) -> exp.Expression:
            if isinstance(c, exp.Column):
                if c.name.lower() not in names:
                    raise at(c, f"unknown column {c.name}", f"the subquery's columns are: {', '.join(inner_names)}")
                return names[c.name.lower()].copy()
            return c

        final = (e.this if isinstance(e, exp.Alias) else e).copy().transform(rewrite, copy=False)
        if isinstance(final, exp.Column) and final.name in ("__ws", "__we"):
            time_columns[name] = "start" if final.name == "__ws" else "end"
            identity.append(name)
        elif isinstance(final, exp.Column) and final.name == "__rn":
            identity.append(name)
            rank_shown = True
        out.append(f"{to_datafusion(final)} AS {to_datafusion(exp.to_identifier(name, quoted=True))}")
    kind = planner.window.kind if tvf else "running"
    if kind == "cumulate" and "end" not in time_columns.values():
        out.append('__we AS "_window_end"')
        time_columns["_window_end"] = "end"
        identity.append("_window_end")
    if tvf and "start" not in time_columns.values():
        out.append('__ws AS "_window_start"')
        time_columns["_window_start"] = "start"
        identity.append("_window_start")
    for i, kc in enumerate(key_cols):  # hidden: the partition keys tell rows apart across versions
        out.append(f'{kc} AS "_key{i}"')
        identity.append(f"_key{i}")
    function = {exp.Rank: "rank", exp.DenseRank: "dense_rank"}.get(type(win.this), "row_number")
    ties = function != "row_number"
    if ties or (n > 1 and not rank_shown):  # what tells a key's rows apart: their position (RANK repeats)
        identity = [i for i in identity if not (rank_shown and ties and i.lower() == numbered.alias.lower())]
        out.append('__pos AS "_position"')
        identity.append("_position")
    final_sql = f"SELECT {', '.join(out)} FROM __win"
    window = planner.window if tvf else WindowSpec("running", 0, 0)
    return ViewPlan(view.name, stream.name, stream.event_time, window, pre_sql, key_cols, [], final_sql,
                    None, time_columns, identity, dict(view.options), top=TopN(n, order, function))
