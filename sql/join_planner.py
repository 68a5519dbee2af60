"""Plan a join view (temporal joins, `JOIN r FOR SYSTEM_TIME AS OF l.ts ON l.k = r.k`, too). An interval join: `SELECT ... FROM a [x] [LEFT|RIGHT|FULL [OUTER]] JOIN b [y] ON <cond> [WHERE p]`
where <cond> bounds the two event times (`y.ts BETWEEN x.ts + lo AND x.ts + hi`, or `>=`/`>`/`<=`/`<`
comparisons of `x.ts [± interval]` and `y.ts [± interval]`) and may hold any other conditions (keys).

The ON condition runs as written in DataFusion; from it the planner takes only [lo, hi], the range of
`right time - left time` a pair can have, which tells the operator (operators/interval_join_view.py)
how long each side's rows must be kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
from sqlglot import exp

from pondstream.sql.dialect import to_datafusion
from pondstream.sql.errors import at
from pondstream.sql.intervals import interval_us
from pondstream.sql.statements import CreateStream, CreateView
from pondstream.sql.windows import WindowSpec

TIME_BOUND_HINT = ("bound the event times in ON, e.g. s.ts BETWEEN o.ts AND o.ts + INTERVAL '4' HOUR "
                   "(or s.ts >= o.ts - INTERVAL '1' MINUTE AND s.ts < o.ts + INTERVAL '1' HOUR), so each "
                   "side's rows can be forgotten once the other side's watermark passes them; to look rows up "
                   "in a table that changes (latest row per key), use a temporal join: JOIN c FOR SYSTEM_TIME "
                   "AS OF o.ts AS c ON o.k = c.k (an unbounded join with a state TTL is not supported)")
MAX_BUCKET_US, MIN_BUCKET_US = 3_600_000_000, 1_000_000
TEMPORAL_BUCKET_US = 10_000_000  # a temporal join keeps waiting rows and recent versions per 10 s of event time
TEMPORAL_HINT = ("write FROM orders o [LEFT] JOIN customers FOR SYSTEM_TIME AS OF o.event_time AS c "
                 "ON o.customer_id = c.id")


@dataclass(frozen=True)
class JoinSpec:
    streams: tuple[str, str]
    aliases: tuple[str, str]  # what the SQL calls each side (its alias, else the stream name)
    times: tuple[str, str]  # each side's event-time column
    schemas: tuple[pa.Schema, pa.Schema]
    lo_us: int  # a pair has lo <= right time - left time <= hi
    hi_us: int
    outer: tuple[bool, bool]  # which sides keep their unmatched rows (null-padded)
    time_side: int | None  # the side whose event time is the output's time column (None: no time column)
    pairs_sql: str  # the ON condition over the two sides: (left row id, right row id) per pair
    bucket_us: int  # state is kept per time bucket of this size
    window: WindowSpec | None = None  # a window join: both sides windowed alike, rows paired per window
    keys: tuple[tuple[str, ...], tuple[str, ...]] | None = None  # a temporal join: the equated columns per side
    lags: tuple[int, int] = (0, 0)  # a window view input: its rows' times stay above its watermark less this


def is_join(view: CreateView) -> bool:
    return bool(view.select.args.get("joins"))


def plan_join(view: CreateView, streams: dict[str, CreateStream], side_of) -> tuple:
    """(JoinSpec, final_sql, output schema, time column or None) for a join view; SqlError when it is
    not a bounded two-stream join we can run. `side_of(table node)` resolves a FROM item to (stream,
    window spec of a window TVF or None)."""
    from pondstream.sql.planner import session  # noqa: PLC0415 - planner imports this module

    sel = view.select.copy()
    joins = sel.args["joins"]
    if len(joins) > 1:
        raise at(joins[1], "a view joins two streams at most", "join the result of a join in a view over it")
    join = joins[0]
    for arg in ("group", "having", "order", "limit", "distinct"):
        if sel.args.get(arg):
            raise at(sel.args[arg], f"{arg.upper()} is not supported in a join view yet",
                     "aggregate the join in a view over it: CREATE MATERIALIZED VIEW ... FROM <join view> GROUP BY "
                     "TUMBLE(...)")
    frm = sel.args.get("from_") or sel.args.get("from")
    tables = [frm.this, join.this]
    stmts: list[CreateStream] = []
    aliases: list[str] = []
    windows: list[WindowSpec | None] = []
    for t in tables:
        if not isinstance(t, exp.Table):
            raise at(t, "a join reads two streams, or two windows of streams (no subqueries in FROM yet)")
        s, w = side_of(t)
        windows.append(w)
        if s.options.get("connector") == "view" and s.options.get("joinable") != "true":
            raise at(t, f"{s.name} cannot be joined: joins read streams, joins' views and window views without "
                     "allowed lateness or EMIT EVERY (a projection passes late rows on; the others rewrite rows)",
                     "join the streams the view reads instead")
        stmts.append(s)
        aliases.append(t.alias_or_name.lower() if t.alias else s.name)
    window = windows[0]
    if windows[0] != windows[1]:
        raise at(join.this, "a window join needs the same window on both sides" if all(windows) else
                 "either both sides of a join are windows (a window join) or neither is",
                 "e.g. FROM TUMBLE(TABLE a, DESCRIPTOR(ts), INTERVAL '1' MINUTE) x JOIN TUMBLE(TABLE b, "
                 "DESCRIPTOR(ts), INTERVAL '1' MINUTE) y ON x.window_start = y.window_start AND x.window_end = "
                 "y.window_end AND ...")
    if aliases[0] == aliases[1]:
        raise at(join.this, "both sides of the join have the same name", "give them aliases: FROM s a JOIN s b ON ...")
    side, kind = (join.args.get("side") or "").upper(), (join.args.get("kind") or "").upper()
    if kind in ("CROSS", "SEMI", "ANTI") or join.args.get("using"):
        raise at(join, f"{kind or 'USING'} joins are not supported", "write [LEFT|RIGHT|FULL] JOIN ... ON ...")
    outer = (side in ("LEFT", "FULL"), side in ("RIGHT", "FULL"))
    on = join.args.get("on")
    if on is None:
        raise at(join, "a join needs ON with a time bound", TIME_BOUND_HINT)

    by_alias = dict(zip(aliases, stmts, strict=True))
    extra = ["window_start", "window_end"] if window is not None else []
    columns = {a: [f.name for f in by_alias[a].schema] + extra for a in aliases}

    def resolve(col: exp.Column) -> int:
        """Qualify `col` with its side (quoted exact names) and return the side."""
        q = col.table.lower() if col.table else None
        if q is not None and q not in by_alias:
            raise at(col, f"unknown table {col.table}", f"the join's sides are {aliases[0]} and {aliases[1]}")
        found = [i for i, a in enumerate(aliases) if (q is None or a == q)
                 and col.name.lower() in {c.lower() for c in columns[a]}]
        if not found:
            raise at(col, f"unknown column {col.sql()}", "columns: " + "; ".join(
                f"{a}: {', '.join(columns[a])}" for a in aliases))
        if len(found) > 1:
            raise at(col, f"column {col.name} is in both sides", f"write {aliases[0]}.{col.name} or {aliases[1]}.{col.name}")
        i = found[0]
        real = next(c for c in columns[aliases[i]] if c.lower() == col.name.lower())
        ident = exp.to_identifier(real, quoted=True)
        ident.meta.update(col.this.meta)
        col.set("this", ident)
        col.set("table", exp.to_identifier(aliases[i], quoted=True))
        return i

    where = sel.args.get("where")
    for node in [*sel.expressions, on, where, join.this.args.get("version")]:
        for col in list(node.find_all(exp.Column)) if node is not None else []:
            if isinstance(col.this, exp.Star):
                raise at(col, "list the columns of a join view", "e.g. SELECT o.id, o.event_time, s.ts AS shipped_at")
            resolve(col)
    if any(isinstance(e, exp.Star) for e in sel.expressions):
        raise at(sel, "list the columns of a join view", "e.g. SELECT o.id, o.event_time, s.ts AS shipped_at")
    version = join.this.args.get("version") if isinstance(join.this, exp.Table) else None
    keys = None
    if version is not None:  # FOR SYSTEM_TIME AS OF: each left row meets the right row current at its time
        keys = _temporal_keys(version, on, side, window, aliases, [s.event_time for s in stmts])
        declared = stmts[1].primary_key
        if declared and {k.lower() for k in keys[1]} != {k.lower() for k in declared}:
            raise at(on, f"{stmts[1].name} declares PRIMARY KEY ({', '.join(declared)}): a temporal join matches "
                     f"its versions on exactly that key", f"write ON {' AND '.join(f'{aliases[0]}.<col> = {aliases[1]}.{k}' for k in declared)}")
        lo, hi = -(1 << 62), 0
    elif window is None:
        lo, hi = _time_bound(on, [s.event_time for s in stmts], aliases)
    else:  # pairs share a window; the rows of a window are kept until it closes on the other side
        _check_same_window(on, aliases)
        lo = hi = 0

    names, time_col, time_side = [], None, None
    for e in sel.expressions:
        name = e.alias_or_name
        if not name or not isinstance(e, exp.Column | exp.Alias):
            raise at(e, "name this column", f"write {e.sql()} AS some_name")
        if name.lower() in {n.lower() for n in names}:
            raise at(e, f"two columns are named {name}", "give one of them another name with AS")
        names.append(name)
        target = e.this if isinstance(e, exp.Alias) else e
        if time_col is None and isinstance(target, exp.Column):
            i = aliases.index(target.table)
            times = {stmts[i].event_time, *extra}
            if target.name in times and not outer[1 - i] and (keys is None or i == 0):  # never null-padded
                time_col, time_side = name, i
    wrapped = [e if isinstance(e, exp.Alias) else exp.alias_(e, exp.to_identifier(e.name, quoted=True)) for e in sel.expressions]
    a, b = (f'"{x}"' for x in aliases)
    kw = "LEFT JOIN" if keys and outer[0] else "JOIN"  # a temporal join pairs by the partner's row id
    final_sql = (f"SELECT {', '.join(to_datafusion(e) for e in wrapped)} FROM {a} {kw} {b} "
                 f'ON {a}."__pair" = {b}."__pair"' + (f" WHERE {to_datafusion(where.this)}" if where is not None else ""))
    pairs_sql = f'SELECT {a}."__rid" AS l, {b}."__rid" AS r FROM {a} JOIN {b} ON {to_datafusion(on)}'
    bucket = max(MIN_BUCKET_US, min(MAX_BUCKET_US, hi - lo if window is None else window.size_us))
    schemas = [s.schema for s in stmts]
    if window is not None:
        schemas = [sc.append(pa.field("window_start", pa.timestamp("us"))).append(pa.field("window_end", pa.timestamp("us")))
                   for sc in schemas]
    spec = JoinSpec((stmts[0].name, stmts[1].name), (aliases[0], aliases[1]), (stmts[0].event_time, stmts[1].event_time),
                    (schemas[0], schemas[1]), lo, hi, outer, time_side, pairs_sql,
                    TEMPORAL_BUCKET_US if keys else bucket, window, keys,
                    tuple(int(st.options.get("watermark_lag_us", 0)) for st in stmts))

    for a, b in zip(*(keys or ((), ())), strict=True):  # the as-of match compares the keys as the left's type
        ta, tb = schemas[0].field(a).type, schemas[1].field(b).type
        if ta != tb and not all(pa.types.is_integer(t) for t in (ta, tb)) and \
                not all(pa.types.is_string(t) or pa.types.is_large_string(t) for t in (ta, tb)):
            raise at(on, f"type error: {aliases[0]}.{a} is {ta} but {aliases[1]}.{b} is {tb}",
                     "declare both key columns with the same type")
    ctx = session()
    for alias, sc in zip(aliases, schemas, strict=True):
        empty = sc.append(pa.field("__rid", pa.int64())).append(pa.field("__pair", pa.int64())).empty_table()
        ctx.register_record_batches(alias, [[pa.RecordBatch.from_pylist([], empty.schema)]])
    try:
        ctx.sql(pairs_sql).to_arrow_table()
        schema = ctx.sql(final_sql).to_arrow_table().schema
    except Exception as e:  # noqa: BLE001 - DataFusion's planning errors are plain Exceptions
        msg = str(e).split("\n")[0].replace("DataFusion error: ", "").replace("Error during planning: ", "")
        raise at(sel, f"type error: {msg.strip()}", "check the types of the columns in ON, WHERE and SELECT") from None
    return spec, final_sql, schema, time_col


def _temporal_keys(version: exp.Expression, on: exp.Expression, side: str, window: WindowSpec | None,
                   aliases: list[str], times: list[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The key columns (left, right) of `... JOIN r FOR SYSTEM_TIME AS OF l.ts ON l.a = r.b [AND ...]`."""
    at_time = version.args.get("expression")
    if window is not None or side not in ("", "LEFT") or (version.args.get("kind") or "").upper() != "AS OF":
        raise at(version, "a temporal join is [LEFT] JOIN r FOR SYSTEM_TIME AS OF <left event time>, of two streams",
                 TEMPORAL_HINT)
    if not (isinstance(at_time, exp.Column) and at_time.table.lower() == aliases[0]
            and at_time.name.lower() == times[0].lower()):
        raise at(at_time or version, f"FOR SYSTEM_TIME AS OF must name the left side's event time "
                 f"{aliases[0]}.{times[0]}", TEMPORAL_HINT)
    left, right = [], []
    for c in list(on.flatten()) if isinstance(on, exp.And) else [on]:
        cols = (c.this, c.expression) if isinstance(c, exp.EQ) else ()
        if len(cols) != 2 or not all(isinstance(x, exp.Column) for x in cols) or \
                {x.table for x in cols} != set(aliases):
            raise at(c, "a temporal join's ON equates columns of the two sides, and nothing else",
                     "move other conditions to WHERE; " + TEMPORAL_HINT)
        a, b = cols if cols[0].table == aliases[0] else cols[::-1]
        left.append(a.name)
        right.append(b.name)
    return tuple(left), tuple(right)


def _check_same_window(on: exp.Expression, aliases: list[str]) -> None:
    """A window join pairs rows of the same window: ON must equate both window_start and window_end."""
    conjuncts = list(on.flatten()) if isinstance(on, exp.And) else [on]
    found = set()
    for c in conjuncts:
        if isinstance(c, exp.EQ) and all(isinstance(x, exp.Column) for x in (c.this, c.expression)):
            names, tables = {c.this.name, c.expression.name}, {c.this.table, c.expression.table}
            if len(names) == 1 and tables == set(aliases) and names <= {"window_start", "window_end"}:
                found |= names
    if found != {"window_start", "window_end"}:
        raise at(on, "a window join's ON must pair the windows: "
                     f"{aliases[0]}.window_start = {aliases[1]}.window_start AND {aliases[0]}.window_end = "
                     f"{aliases[1]}.window_end", "add both equalities (and the keys) to ON")


def _time_bound(on: exp.Expression, times: list[str], aliases: list[str]) -> tuple[int, int]:
    """[lo, hi] of right time - left time from the conjuncts of ON that compare the two event times."""
    lows: list[int] = []
    highs: list[int] = []
    conjuncts = list(on.flatten()) if isinstance(on, exp.And) else [on]

    def term(node: exp.Expression) -> tuple[int, int] | None:
        """(side, offset µs) of `side.ts [+|- interval]`, else None."""
        sign = 0
        if isinstance(node, exp.Add | exp.Sub) and isinstance(node.expression, exp.Interval):
            sign = 1 if isinstance(node, exp.Add) else -1
            off, node = interval_us(node.expression), node.this
        else:
            off = 0
        if isinstance(node, exp.Paren):
            node = node.this
        if isinstance(node, exp.Column) and node.table in aliases:
            i = aliases.index(node.table)
            if node.name == times[i]:
                return i, sign * off
        return None

    def bound(x: exp.Expression, op: str, y: exp.Expression) -> bool:
        """Record `x op y` as a bound on d = right - left when x and y are the two sides' times."""
        tx, ty = term(x), term(y)
        if tx is None or ty is None or tx[0] == ty[0]:
            return False
        if tx[0] == 0:  # left + ox op right + oy  <=>  d (op reversed) ox - oy
            op = {">=": "<=", ">": "<", "<=": ">=", "<": ">"}[op]
            value = tx[1] - ty[1]
        else:  # right + ox op left + oy  <=>  d op oy - ox
            value = ty[1] - tx[1]
        (lows if op in (">=", ">") else highs).append(value)
        return True

    ops = {exp.GTE: ">=", exp.GT: ">", exp.LTE: "<=", exp.LT: "<"}
    for c in conjuncts:
        if isinstance(c, exp.Between):
            bound(c.this, ">=", c.args["low"])
            bound(c.this, "<=", c.args["high"])
        elif type(c) in ops:
            bound(c.this, ops[type(c)], c.expression)
        elif isinstance(c, exp.EQ):
            if bound(c.this, ">=", c.expression):
                bound(c.this, "<=", c.expression)
    if not lows or not highs:
        missing = "lower" if not lows else "upper"
        raise at(on, f"the join's ON has no {missing} bound on the event times "
                     f"({aliases[0]}.{times[0]}, {aliases[1]}.{times[1]}): unbounded joins would keep state forever",
                 TIME_BOUND_HINT)
    lo, hi = max(lows), min(highs)
    if lo > hi:
        raise at(on, "the join's time bounds exclude every pair", "check the BETWEEN bounds: low must not exceed high")
    return lo, hi

