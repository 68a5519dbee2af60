"""Plan a materialized view: split its SELECT into a per-batch pre-aggregation and a per-window finalize.

A windowed view `SELECT f(keys, aggs) FROM s WHERE p GROUP BY window, keys HAVING h` runs in three steps:
1. `pre_sql`, per batch (DataFusion): the WHERE filter, event time, key expressions and aggregate inputs.
2. window assignment and partial aggregation (operators/), merged across batches in RocksDB.
3. `final_sql`, per closed window (DataFusion): aggregates finalized from partials (AVG = sum/count),
   expressions over them, HAVING, and the select list with the user's column names.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa
import sqlglot
from datafusion import SessionConfig, SessionContext
from sqlglot import exp

from pondstream.sql.dialect import to_datafusion
from pondstream.sql.errors import SqlError, at
from pondstream.sql.functions import register_all
from pondstream.sql.intervals import interval_us, option_duration
from pondstream.sql.join_planner import JoinSpec, is_join, plan_join
from pondstream.sql.names import object_name
from pondstream.sql.options import sink_servers_problem
from pondstream.sql.statements import CreateStream, CreateView
from pondstream.sql.top_n_planner import TopN, is_top_n, plan_top_n
from pondstream.sql.windows import WindowSpec, window_spec

WINDOW_FUNCS = {"TUMBLE": "tumble", "HOP": "hop", "SESSION": "session"}
BOUND_FUNCS = {"TUMBLE_START": ("tumble", "start"), "TUMBLE_END": ("tumble", "end"),
               "HOP_START": ("hop", "start"), "HOP_END": ("hop", "end"),
               "SESSION_START": ("session", "start"), "SESSION_END": ("session", "end")}
WINDOW_ARGS = {"TUMBLE": 2, "HOP": 3, "SESSION": 2}
AGG_HINT = ("supported aggregates: COUNT(*), COUNT(x), COUNT(DISTINCT x), SUM, MIN, MAX, AVG, STDDEV(_POP|_SAMP), "
            "VARIANCE, VAR_POP, VAR_SAMP, BOOL_AND, BOOL_OR, FIRST_VALUE, LAST_VALUE, APPROX_DISTINCT")
VARIANCE = {exp.Stddev: ("samp", True), exp.StddevSamp: ("samp", True), exp.StddevPop: ("pop", True),
            exp.Variance: ("samp", False), exp.VariancePop: ("pop", False)}


@dataclass(frozen=True)
class Partial:
    """One column of partial-aggregate state: how a batch computes it and how two partials merge."""

    name: str
    source: str | None  # input column (None for COUNT(*))
    first: str  # pyarrow hash aggregate over inputs: count_all, count, sum, min, max, all, any, first, last, distinct
    merge: str  # how partials combine: sum, min, max, all, any, first, last, distinct (set union)
    order: str | None = None  # first/last: the partial holding the event time they are ordered by


@dataclass
class ViewPlan:
    name: str
    stream: str
    event_time: str
    window: WindowSpec
    pre_sql: str
    key_columns: list[str]
    partials: list[Partial]
    final_sql: str
    output_schema: pa.Schema
    time_columns: dict[str, str] = field(default_factory=dict)  # output column -> "start" | "end"
    identity_columns: list[str] = field(default_factory=list)  # window + keys: what a later version replaces
    options: dict[str, str] = field(default_factory=dict)
    lateness_us: int = 0  # allowed lateness: how long after its end a window still accepts events
    session_bounds: tuple[str, str] | None = None  # SESSION: partials holding first and last event time
    last_seen: str | None = None  # running aggregates: partial with each key's latest event time
    state_ttl_us: int = 0  # running aggregates: forget keys idle (in event time) this long
    emit_every_us: int = 0  # EMIT EVERY: early (partial) results of open windows on this schedule
    join: JoinSpec | None = None  # an interval join (window kind "join"): its two inputs and time bound
    top: TopN | None = None  # a Top-N view: its partial per (window, key) is the best N rows (struct __top)

    @property
    def inputs(self) -> list[str]:
        """The streams this view reads: one, or a join's two."""
        return list(self.join.streams) if self.join is not None else [self.stream]

    @property
    def start_column(self) -> str | None:
        """The output column holding window start: the view's event-time axis for pruning."""
        return next((c for c, b in self.time_columns.items() if b == "start"), None)


def session() -> SessionContext:
    """DataFusion for per-batch work: one partition, output in one large batch."""
    ctx = SessionContext(SessionConfig().with_target_partitions(1).with_batch_size(1 << 20))
    register_all(ctx)  # the Python functions of the catalog (CREATE FUNCTION)
    return ctx


def plan_view(view: CreateView, streams: dict[str, CreateStream]) -> ViewPlan:
    """Check a view against the stream it reads and compile it; SqlError (located) on any problem."""
    try:
        if is_join(view):
            return _plan_join(view, streams)
        if is_top_n(view.select):
            return _plan_top_n(view, streams)
        return _Planner(view, streams).plan()
    except SqlError as e:
        raise e.with_sql(getattr(view, "script", view.sql)) if e.sql is None else e from None
    except RecursionError:
        raise SqlError(f"view {view.name} is too deeply nested to plan", hint="simplify its expressions") from None


def _plan_join(view: CreateView, streams: dict[str, CreateStream]) -> ViewPlan:
    def side(table: exp.Table) -> tuple[CreateStream, WindowSpec | None]:
        """A join side: a stream, or a window TVF over one (a window join)."""
        p = _Planner(view, streams)
        if isinstance(table.this, exp.Anonymous):
            stream = p._tvf(table.this)
            if p.window.kind == "session":
                raise at(table, "SESSION windows cannot be joined", "join TUMBLE, HOP or CUMULATE windows")
            return stream, p.window
        return p._stream(table), None

    spec, final_sql, schema, time_col = plan_join(view, streams, side)
    kind = "temporal" if spec.keys else "join"
    plan = ViewPlan(view.name, spec.streams[0], time_col or "", WindowSpec(kind, 0, 0), "", [], [], final_sql,
                    schema, {time_col: "start"} if time_col else {}, [], dict(view.options), join=spec)
    problem = sink_servers_problem(plan.options, streams[spec.streams[0]].options)
    if problem:
        raise SqlError(problem)
    return plan


def _plan_top_n(view: CreateView, streams: dict[str, CreateStream]) -> ViewPlan:
    plan = plan_top_n(_Planner(view, streams), view)
    stream = streams[plan.stream] if plan.stream in streams else next(
        s for n, s in streams.items() if n.lower() == plan.stream.lower())
    for opt in ("emit_every", "emit_every_us", "state_ttl"):
        if opt in plan.options:
            raise at(view.select, f"{opt} is not supported for Top-N views",
                     "a window Top-N is emitted when its window closes; a running one as its rows change")
    if "allowed_lateness" in plan.options:
        if plan.top.ties:
            raise at(view.select, "allowed_lateness is not supported with RANK() or DENSE_RANK()",
                     "use ROW_NUMBER(), or no "
                     "allowed_lateness: a late row could end a tie, and an emitted row cannot be withdrawn")
        if plan.window.kind == "running":
            raise at(view.select, "allowed_lateness is not supported for a running Top-N", "nothing is late there")
        plan.lateness_us = option_duration("allowed_lateness", plan.options["allowed_lateness"])
    if plan.top.ties and (plan.window.kind == "running" or stream.options.get("append_only") == "false"):
        raise at(view.select, "RANK() and DENSE_RANK() are supported in window Top-N over streams and views "
                 "that never rewrite "
                 "rows", "use ROW_NUMBER(), or rank within windows: a row in a tie could later be outranked, and "
                 "an emitted row cannot be withdrawn")
    if stream.options.get("connector") == "view" and plan.window.kind == "running":
        raise at(view.select, "a running Top-N over another view is not supported yet",
                 "rank within windows: FROM TUMBLE(TABLE v, DESCRIPTOR(window_start), size)")
    problem = sink_servers_problem(plan.options, stream.options)
    if problem:
        raise SqlError(problem)
    plan.output_schema = _typecheck(plan, stream, view.select, [])
    return plan


class _Planner:
    def __init__(self, view: CreateView, streams: dict[str, CreateStream]) -> None:
        self.view, self.streams = view, streams
        self.select = view.select.copy()
        self.window: WindowSpec | None = None
        self.tvf = False
        self.session_keys: list[exp.Expression] = []

    # -- FROM ------------------------------------------------------------------------------------
    def _source(self) -> CreateStream:
        sel = self.select
        frm = sel.args.get("from_") or sel.args.get("from")
        if frm is None:
            raise at(sel, "a materialized view needs FROM <stream>")
        table = frm.this
        if isinstance(table, exp.Table) and isinstance(table.this, exp.Anonymous):
            return self._tvf(table.this)
        if not isinstance(table, exp.Table):
            raise at(table, "FROM must name a stream (subqueries are not supported yet)")
        return self._stream(table)

    def _stream(self, table: exp.Expression) -> CreateStream:
        """The stream (or view) a FROM names: by the folded name, else by a unique case-insensitive match
        (streams created before names were folded keep their case)."""
        name = object_name(table, "stream")
        found = self.streams.get(name)
        if found is None:
            matches = [s for n, s in self.streams.items() if n.lower() == name.lower()]
            found = matches[0] if len(matches) == 1 else None
        if found is None:
            known = ", ".join(sorted(self.streams)) or "none declared yet"
            raise at(table, f"unknown stream {name}", f"declare it with CREATE STREAM first (known: {known})")
        return found

    def _tvf(self, call: exp.Anonymous) -> CreateStream:
        if call.name.upper() == "TABLE" and call.expressions and isinstance(call.expressions[0], exp.Anonymous):
            call = call.expressions[0]
        kind = {**WINDOW_FUNCS, "CUMULATE": "cumulate"}.get(call.name.upper())
        if kind is None:
            raise at(call, f"unsupported table function {call.name}", "use TUMBLE, HOP, CUMULATE or SESSION")
        args = list(call.expressions)
        if len(args) != (3 if kind in ("tumble", "session") else 4):
            usage = {"tumble": "TUMBLE(TABLE s, DESCRIPTOR(ts), size)",
                     "hop": "HOP(TABLE s, DESCRIPTOR(ts), slide, size)",
                     "cumulate": "CUMULATE(TABLE s, DESCRIPTOR(ts), step, max_size)",
                     "session": "SESSION(TABLE s PARTITION BY k, DESCRIPTOR(ts), gap)"}[kind]
            raise at(call, f"{call.name} takes {len(args)} arguments here", f"write {usage}")
        src = args[0]
        if isinstance(src, exp.Anonymous) and src.name.upper() == "TABLE":
            if len(src.expressions) > 1:  # PARTITION BY keys: the session is per these keys
                self.session_keys = list(src.expressions[1].expressions)
            src = src.expressions[0]
        stream = self._stream(src)
        ts = args[1].expressions[0] if isinstance(args[1], exp.Anonymous) and args[1].expressions else args[1]
        self._check_time_col(ts, stream)
        self.window = self._window_spec(kind, args[2:], call)
        self.tvf = True
        return stream

    def _projection(self, stream: CreateStream) -> ViewPlan:
        """A view without GROUP BY or aggregates: every input row that passes WHERE, through the select
        list, appended at each checkpoint (no state, nothing is ever late). If it selects the stream's
        event-time column as is, that is its event time, so windowed views can read it."""
        sel = self.select
        for arg in ("having", "order", "limit", "distinct", "qualify"):
            if sel.args.get(arg):
                raise at(sel.args[arg], f"{arg.upper()} is not supported in a view without GROUP BY")
        items = _star(sel.expressions, stream)
        where = sel.args.get("where")
        self._resolve([*items, where], stream)
        out, seen, time_col = [], set(), None
        for e in items:
            name = e.alias_or_name
            if not name or not isinstance(e, exp.Column | exp.Alias):
                raise at(e, "name this column", f"write {e.sql()} AS some_name")
            if name.lower() in seen:
                raise at(e, f"two columns are named {name}", "give one of them another name with AS")
            seen.add(name.lower())
            target = e.this if isinstance(e, exp.Alias) else e
            if time_col is None and isinstance(target, exp.Column) and target.name == stream.event_time:
                time_col = name
            out.append(f"{to_datafusion(target)} AS {to_datafusion(exp.to_identifier(name, quoted=True))}")
        pre_sql = f"SELECT {', '.join(out)} FROM __batch" + (f" WHERE {to_datafusion(where.this)}" if where else "")
        empty = pa.schema([pa.field("__row", pa.int64()), *stream.schema]).empty_table()
        ctx = session()
        ctx.register_record_batches("__batch", [[pa.RecordBatch.from_pylist([], empty.schema)]])
        try:
            schema = ctx.sql(pre_sql).to_arrow_table().schema
        except Exception as e:  # noqa: BLE001 - DataFusion's planning errors are plain Exceptions
            raise _df_error(e, sel) from None
        plan = ViewPlan(self.view.name, stream.name, stream.event_time, WindowSpec("select", 0, 0), pre_sql, [], [],
                        "", schema, {time_col: "start"} if time_col else {}, [], dict(self.view.options))
        if stream.options.get("append_only") == "false":
            raise at(sel, f"a view without GROUP BY can only read streams and views that never rewrite rows; "
                          f"{stream.name} writes new versions of its rows (allowed lateness, EMIT EVERY)",
                     "read the stream it reads instead")
        problem = sink_servers_problem(plan.options, stream.options)
        if problem:
            raise at(sel, problem, "e.g. WITH (sink_topic = 'clean_orders', sink_bootstrap_servers = 'localhost:9092')")
        return plan

    def _resolve(self, nodes: list[exp.Expression | None], stream: CreateStream, skip: set[str] = frozenset()) -> None:
        """Point every column at the stream's column of that name (case-insensitively, quoted so case
        survives), or fail naming the columns there are; names in `skip` (window_start...) are left."""
        names = {f.name.lower(): f.name for f in stream.schema}
        for node in nodes:
            for col in list(node.find_all(exp.Column)) if node is not None else []:
                low = col.name.lower()
                if low in skip:
                    continue
                if low not in names:
                    raise at(col, f"unknown column {col.name} in stream {stream.name}",
                             f"columns are: {', '.join(stream.schema.names)}")
                ident = exp.to_identifier(names[low], quoted=True)
                ident.meta.update(col.this.meta)  # keep the position, for errors about this column later
                col.set("this", ident)
                col.set("table", None)

    # -- windows -----------------------------------------------------------------------------------
    def _window_spec(self, kind: str, sizes: list[exp.Expression], node: exp.Expression) -> WindowSpec:
        try:
            return window_spec(kind, [interval_us(s) for s in sizes])
        except SqlError as e:
            raise at(node, e.message, e.hint) if e.line is None else e from None

    def _check_session_keys(self, keys: list[exp.Expression]) -> None:
        """TVF sessions are per their PARTITION BY keys, which must also be the view's group keys."""
        if not self.tvf:
            return
        group = {to_datafusion(k) for k in keys}
        part = {to_datafusion(k) for k in self.session_keys}
        if group != part:
            raise at(self.select, "SESSION's PARTITION BY keys must be the GROUP BY keys (besides window_start/"
                                  "window_end)", "e.g. SESSION(TABLE s PARTITION BY k, ...) ... GROUP BY "
                                                 "window_start, window_end, k")

    def _check_bound(self, call: exp.Anonymous, kind: str, stream: CreateStream) -> None:
        """TUMBLE_START(ts, size) and friends must repeat the GROUP BY window exactly: with other sizes they
        would label rows with bounds of windows that were never computed."""
        want = WINDOW_ARGS[kind.upper()]
        if len(call.expressions) != want:
            raise at(call, f"{call.name} takes {want} arguments, those of the window in GROUP BY")
        self._check_time_col(call.expressions[0], stream)
        if self._window_spec(kind, call.expressions[1:], call) != self.window:
            raise at(call, f"{call.name} names another window than the one in GROUP BY",
                     "repeat the GROUP BY window's arguments")

    def _check_time_col(self, col: exp.Expression, stream: CreateStream) -> None:
        if not isinstance(col, exp.Column) or col.name.lower() != stream.event_time.lower():
            raise at(col, f"windows must be over the stream's event-time column {stream.event_time}",
                     f"the stream declares WATERMARK FOR {stream.event_time}")

    # -- the plan ----------------------------------------------------------------------------------
    def plan(self) -> ViewPlan:
        stream = self._source()
        sel = self.select
        group = sel.args.get("group")
        if group is None and not self.tvf and not any(e.find(exp.AggFunc) for e in sel.expressions):
            return self._projection(stream)
        if group is None:
            raise at(sel, "a materialized view needs GROUP BY",
                     "GROUP BY TUMBLE(ts, INTERVAL '1' HOUR), key for windows, or GROUP BY key for running totals")
        keys: list[exp.Expression] = []
        window_cols = {"window_start", "window_end"} if self.tvf else set()
        for g in group.expressions:
            if isinstance(g, exp.Anonymous) and g.name.upper() in WINDOW_FUNCS:
                if self.window is not None:
                    raise at(g, "only one window per view", "remove the extra window from GROUP BY")
                self._check_time_col(g.expressions[0] if g.expressions else g, stream)
                if len(g.expressions) != WINDOW_ARGS[g.name.upper()]:
                    raise at(g, f"wrong number of arguments to {g.name}",
                             "TUMBLE(ts, size), HOP(ts, slide, size) or SESSION(ts, gap)")
                self.window = self._window_spec(WINDOW_FUNCS[g.name.upper()], g.expressions[1:], g)
            elif isinstance(g, exp.Column) and g.name.lower() in window_cols:
                continue
            else:
                keys.append(g)
        if self.window is None:  # a running aggregate: one ever-open "window", results per key as they change
            if not keys:
                raise at(group, "GROUP BY needs a key or a window", "e.g. GROUP BY customer_id")
            self.window = WindowSpec("running", 0, 0)

        # Resolve every column against the stream (case-insensitively) before anything is compiled.
        self._resolve([*sel.expressions, *keys, sel.args.get("where"), sel.args.get("having")], stream, window_cols)

        where = sel.args.get("where")
        if where is not None:
            if where.find(exp.AggFunc):
                raise at(where.find(exp.AggFunc), "aggregates are not allowed in WHERE", "use HAVING")
        pre_cols = ["__row", f'"{stream.event_time}" AS __ts']
        key_cols = [f"__k{i}" for i in range(len(keys))]
        pre_cols += [f"{to_datafusion(k)} AS {kc}" for k, kc in zip(keys, key_cols, strict=True)]

        partials: list[Partial] = []
        numeric_inputs: list[tuple[str, exp.Expression]] = []  # SUM/AVG arguments, checked after typing
        inputs: dict[str, str] = {}  # input expression sql -> column

        def input_col(arg: exp.Expression) -> str:
            text = to_datafusion(arg)
            if text not in inputs:
                inputs[text] = f"__a{len(inputs)}"
                pre_cols.append(f"{text} AS {inputs[text]}")
            return inputs[text]

        def add(source: str | None, first: str, merge: str, order: str | None = None) -> str:
            for p in partials:  # SUM(x) and AVG(x) share one sum partial
                if (p.source, p.first, p.order) == (source, first, order):
                    return p.name
            name = f"__p{len(partials)}"
            partials.append(Partial(name, source, first, merge, order))
            return name

        def final_agg(agg: exp.AggFunc) -> exp.Expression:
            distinct = agg.this if isinstance(agg, exp.Count) and isinstance(agg.this, exp.Distinct) else None
            if isinstance(agg, exp.ApproxDistinct) or distinct is not None:
                # A set of values per window and key; APPROX_DISTINCT is answered exactly.
                if distinct is not None and len(distinct.expressions) != 1:
                    raise at(agg, "COUNT(DISTINCT ...) takes one expression")
                arg = distinct.expressions[0] if distinct is not None else agg.this
                col = exp.column(add(input_col(arg), "distinct", "distinct"))
                return exp.Cast(this=exp.Anonymous(this="cardinality", expressions=[col]),
                                to=exp.DataType.build("BIGINT"))
            if agg.find(exp.Distinct):
                raise at(agg, f"{agg.sql_name()}(DISTINCT ...) is not supported", AGG_HINT)
            if agg.this is None and not isinstance(agg, exp.Count):
                raise at(agg, f"{agg.sql_name()} needs an argument", AGG_HINT)
            if type(agg) in VARIANCE:
                kind, root = VARIANCE[type(agg)]
                x = exp.Cast(this=agg.this.copy(), to=exp.DataType.build("DOUBLE"))
                numeric_inputs.append((input_col(agg.this), agg))
                s = exp.column(add(input_col(x), "sum", "sum"))
                q = exp.column(add(input_col(exp.Mul(this=x.copy(), expression=x.copy())), "sum", "sum"))
                n = exp.column(add(input_col(agg.this), "count", "sum"))
                dof = f"({n.sql()} - 1)" if kind == "samp" else n.sql()
                var = (f"CASE WHEN {n.sql()} > {1 if kind == 'samp' else 0} THEN "
                       f"GREATEST(({q.sql()} - {s.sql()} * {s.sql()} / {n.sql()}) / {dof}, 0) END")
                return sqlglot.parse_one(f"SQRT({var})" if root else var)
            if isinstance(agg, (exp.LogicalAnd, exp.LogicalOr)):
                fn = "all" if isinstance(agg, exp.LogicalAnd) else "any"
                return exp.column(add(input_col(agg.this), fn, fn))
            if isinstance(agg, (exp.FirstValue, exp.LastValue)):
                first = isinstance(agg, exp.FirstValue)
                ts = add("__ts", "min" if first else "max", "min" if first else "max")
                fn = "first" if first else "last"
                return exp.column(add(input_col(agg.this), fn, fn, order=ts))
            if isinstance(agg, exp.Count):
                arg = agg.this
                if arg is None or isinstance(arg, exp.Star):
                    return exp.column(add(None, "count_all", "sum"))
                return exp.column(add(input_col(arg), "count", "sum"))
            if isinstance(agg, (exp.Sum, exp.Min, exp.Max)):
                fn = {exp.Sum: "sum", exp.Min: "min", exp.Max: "max"}[type(agg)]
                if fn == "sum":
                    numeric_inputs.append((input_col(agg.this), agg))
                return exp.column(add(input_col(agg.this), fn, fn))
            if isinstance(agg, exp.Avg):
                src = input_col(agg.this)
                numeric_inputs.append((src, agg))
                s, n = add(src, "sum", "sum"), add(src, "count", "sum")
                return exp.Div(
                    this=exp.Cast(this=exp.column(s), to=exp.DataType.build("DOUBLE")),
                    expression=exp.Nullif(this=exp.column(n), expression=exp.Literal.number(0)),
                )
            raise at(agg, f"unsupported aggregate {agg.sql_name()}", AGG_HINT)

        key_sql = {to_datafusion(k): kc for k, kc in zip(keys, key_cols, strict=True)}
        time_columns: dict[str, str] = {}
        kind = self.window.kind

        def to_final(node: exp.Expression) -> exp.Expression:
            def rewrite(n: exp.Expression) -> exp.Expression:
                if isinstance(n, exp.Filter) and isinstance(n.this, exp.AggFunc):
                    return final_agg(_filtered(n.this, n.expression.this))
                if isinstance(n, exp.AggFunc):
                    return final_agg(n)
                if isinstance(n, exp.Anonymous) and n.name.upper() in BOUND_FUNCS:
                    fkind, bound = BOUND_FUNCS[n.name.upper()]
                    if fkind != kind:
                        raise at(n, f"{n.name} does not match the view's {kind.upper()} window")
                    self._check_bound(n, fkind, stream)
                    return exp.column("__ws" if bound == "start" else "__we")
                if isinstance(n, exp.Column) and n.name.lower() in window_cols:
                    return exp.column("__ws" if n.name.lower() == "window_start" else "__we")
                if not isinstance(n, exp.Column) and to_datafusion(n) in key_sql:
                    return exp.column(key_sql[to_datafusion(n)])
                if isinstance(n, exp.Column):
                    text = to_datafusion(n)
                    if text in key_sql:
                        return exp.column(key_sql[text])
                    raise at(n, f"column {n.name} must appear in GROUP BY or be used in an aggregate",
                             f"add {n.name} to GROUP BY, or wrap it in MIN/MAX/SUM/COUNT")
                return n

            return node.copy().transform(rewrite, copy=False)

        out_exprs: list[str] = []
        identity: list[str] = []
        shown_keys: set[str] = set()
        seen: set[str] = set()
        for item in sel.expressions:
            if isinstance(item, exp.Star):
                raise at(item, "SELECT * is not allowed in a materialized view", "list the columns")
            inner = item.this if isinstance(item, exp.Alias) else item
            if isinstance(item, exp.Alias):
                name = object_name(item, "output column")
            elif isinstance(inner, exp.Column):
                name = inner.name
            elif isinstance(inner, exp.Anonymous) and inner.name.upper() in BOUND_FUNCS:
                name = "window_" + BOUND_FUNCS[inner.name.upper()][1]
            else:
                name = inner.sql(dialect="postgres").lower()
            if name.lower() in seen:
                raise at(item, f"duplicate output column {name}", "give each output column its own alias")
            seen.add(name.lower())
            final = to_final(inner)
            if isinstance(final, exp.Column) and final.name in ("__ws", "__we"):
                time_columns[name] = "start" if final.name == "__ws" else "end"
                if final.name == "__ws" or kind != "session":  # a session extended by late data keeps its start
                    identity.append(name)
            elif isinstance(final, exp.Column) and final.name in key_cols:
                identity.append(name)
                shown_keys.add(final.name)
            out_exprs.append(f"{to_datafusion(final)} AS {exp.to_identifier(name, quoted=True).sql()}")
        if self.window.kind == "running":  # when each key was last seen: for state_ttl
            self.last_seen = add("__ts", "max", "max")
        if self.window.kind == "session":
            self._check_session_keys(keys)
            self.session_bounds = (add("__ts", "min", "min"), add("__ts", "max", "max"))
        if self.window.kind == "cumulate" and not any(b == "end" for b in time_columns.values()):
            out_exprs.append('__we AS "_window_end"')  # CUMULATE windows sharing a start differ by end
            time_columns["_window_end"] = "end"
            identity.append("_window_end")
        if self.window.kind != "running" and not any(b == "start" for b in time_columns.values()):
            out_exprs.append('__ws AS "_window_start"')  # hidden: a version needs its window to be replaced
            time_columns["_window_start"] = "start"
            identity.append("_window_start")
        for i, kc in enumerate(key_cols):
            if kc not in shown_keys:  # hidden: keys not shown still tell rows apart across versions
                out_exprs.append(f'{kc} AS "_key{i}"')
                identity.append(f"_key{i}")
        emit_every = self.view.options.get("emit_every_us") or self.view.options.get("emit_every")
        if emit_every:
            out_exprs.append('TRUE AS "is_final"')  # early rows of open windows say FALSE
        having = sel.args.get("having")
        final_where = f" WHERE {to_datafusion(to_final(having.this))}" if having is not None else ""
        pre_where = f" WHERE {to_datafusion(where.this)}" if where is not None else ""
        pre_sql = f"SELECT {', '.join(pre_cols)} FROM __batch{pre_where}"
        final_sql = f"SELECT {', '.join(out_exprs)} FROM __win{final_where}"

        plan = ViewPlan(self.view.name, stream.name, stream.event_time, self.window, pre_sql, key_cols,
                        partials, final_sql, pa.schema([]), time_columns, identity, dict(self.view.options),
                        session_bounds=self.session_bounds if self.window.kind == "session" else None,
                        last_seen=getattr(self, "last_seen", None))
        if "state_ttl" in plan.options:
            plan.state_ttl_us = option_duration("state_ttl", plan.options["state_ttl"])
        if emit_every:
            plan.emit_every_us = int(emit_every) if str(emit_every).isdigit() else \
                option_duration("emit_every", emit_every)
        kind = self.window.kind
        if stream.options.get("connector") == "view" and kind in ("session", "running"):
            raise at(sel, f"a {'SESSION window' if kind == 'session' else 'running aggregate'} over another "
                          f"view is not supported yet", "use TUMBLE, HOP or CUMULATE over a view")
        unsupported = [(opt, kinds) for opt, kinds in (("allowed_lateness", ("session", "running")),
                                                        ("emit_every", ("session", "running")),
                                                        ("state_ttl", ("tumble", "hop", "cumulate", "session")))
                       if kind in kinds and (opt in plan.options or (opt == "emit_every" and emit_every))]
        if unsupported:
            opt = unsupported[0][0].replace("emit_every", "EMIT EVERY")
            what = "running aggregates" if kind == "running" else f"{kind.upper()} windows"
            raise at(sel, f"{opt} is not supported for {what}",
                     "running aggregates already write changed keys at every checkpoint; windows drop their "
                     "state when they close" if kind != "session" else "sessions are emitted once, when closed")
        problem = sink_servers_problem(plan.options, stream.options)
        if problem:
            raise at(sel, problem, "e.g. WITH (sink_topic = 'hourly', sink_bootstrap_servers = 'localhost:9092')")
        if "allowed_lateness" in plan.options:
            plan.lateness_us = option_duration("allowed_lateness", plan.options["allowed_lateness"])
        plan.output_schema = _typecheck(plan, stream, sel, numeric_inputs)
        return plan


def _star(items: list[exp.Expression], stream: CreateStream, extra: tuple[str, ...] = ()) -> list[exp.Expression]:
    """The select list with `*` spelled out as the stream's columns (then `extra`, e.g. window bounds)."""
    out: list[exp.Expression] = []
    for e in items:
        if isinstance(e, exp.Star) or isinstance(e, exp.Column) and isinstance(e.this, exp.Star):
            out += [exp.column(exp.to_identifier(n, quoted=True)) for n in [*stream.schema.names, *extra]]
        else:
            out.append(e)
    return out


def _filtered(agg: exp.AggFunc, cond: exp.Expression) -> exp.AggFunc:
    """AGG(x) FILTER (WHERE c) is AGG(CASE WHEN c THEN x END): aggregates skip NULLs, so the rows the
    filter drops count for nothing (COUNT gives 0 and the others NULL when none pass, as in SQL)."""
    if isinstance(agg, (exp.FirstValue, exp.LastValue)):
        raise at(agg, f"FILTER is not supported for {agg.sql_name()}", "filter the view's rows in WHERE instead")
    agg = agg.copy()

    def case(x: exp.Expression) -> exp.Expression:
        return exp.Case(ifs=[exp.If(this=cond.copy(), true=x)])

    arg = agg.this
    if arg is None or isinstance(arg, exp.Star):
        agg.set("this", case(exp.Literal.number(1)))
    elif isinstance(arg, exp.Distinct):
        arg.set("expressions", [case(x) for x in arg.expressions])
    else:
        agg.set("this", case(arg))
    return agg


def _typecheck(plan: ViewPlan, stream: CreateStream, sel: exp.Select,
               numeric_inputs: list[tuple[str, exp.Expression]]) -> pa.Schema:
    """Run both SQL halves over empty inputs so type errors surface at CREATE time, not mid-stream."""
    from pondstream.operators.partials import first_partials  # runtime step shared with the operator

    ctx = session()
    empty = pa.schema([pa.field("__row", pa.int64()), *stream.schema]).empty_table()
    try:
        ctx.register_record_batches("__batch", [empty.to_batches() or [pa.RecordBatch.from_pylist([], empty.schema)]])
        pre = ctx.sql(plan.pre_sql).to_arrow_table()
    except Exception as e:  # DataFusion reports planning errors as generic exceptions
        raise _df_error(e, sel.args.get("where") or sel) from None
    for col, agg in numeric_inputs:
        t = pre.schema.field(col).type
        if not (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t)):
            raise at(agg, f"type error: {agg.sql_name()} needs a numeric argument, got {t}",
                     f"CAST the argument, e.g. {agg.sql_name()}(CAST(x AS DOUBLE))")
    part = first_partials(plan, pre, ws=pa.array([], pa.int64()))
    win = part.append_column("__we", pa.array([], pa.timestamp("us")))
    if plan.top is not None:
        from pondstream.operators.top_n import ranked_rows
        win = ranked_rows(plan, win)
    try:
        ctx.register_record_batches("__win", [win.to_batches() or [pa.RecordBatch.from_pylist([], win.schema)]])
        return ctx.sql(plan.final_sql).to_arrow_table().schema
    except Exception as e:
        raise _df_error(e, sel) from None


def _df_error(e: Exception, node: exp.Expression) -> SqlError:
    msg = str(e).split("\n")[0]
    for prefix in ("DataFusion error: ", "Error during planning: ", "Optimizer rule", "type_coercion"):
        msg = msg.replace(prefix, "")
    return at(node, f"type error: {msg.strip()}", "check the types of the columns used in this expression")
