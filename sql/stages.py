"""Split one CREATE MATERIALIZED VIEW into the chain of views it runs as.

Each operator reads streams (or views), so a statement with several levels runs as several views: a
derived table or CTE in FROM becomes a stage of its own (`<view>__<alias>`), so do the first two inputs
of a join of three or more (`<view>__join1`, ...), and so does the join under a GROUP BY (`<view>__join`), whose output the aggregate then reads like any view over a view. Stages are
ordinary views (versioned, queryable, exactly once), derived again from the statement whenever the
catalog is read, and dropped with it. Nodes are copied with their positions, so a mistake inside a
stage is reported at its place in the user's statement.
"""

from __future__ import annotations

from sqlglot import exp

from pondstream.sql.errors import at
from pondstream.sql.names import name_problem
from pondstream.sql.statements import CreateView
from pondstream.sql.top_n_planner import is_top_n


def stages(view: CreateView) -> list[CreateView]:
    """The internal stages (each reading streams or earlier stages), then the view itself."""
    out: list[CreateView] = []
    select = view.select.copy()
    with_ = select.args.get("with_") or select.args.get("with")
    if with_ is not None:
        renamed: dict[str, str] = {}
        for cte in with_.expressions:
            name = f"{view.name}__{cte.alias_or_name}"
            body = cte.this.copy()
            _rename_tables(body, renamed)
            out += stages(_stage(view, name, body))
            renamed[cte.alias_or_name.lower()] = name
        select.set("with_", None)
        select.set("with", None)
        _rename_tables(select, renamed)
    _lift_derived_tables(view, select, out)
    while len(_joins(select)) > 1:  # a join of three or more: the first two joined, as a stage
        out.append(_first_join_stage(view, select, len(out) + 1))
    if _joins(select) and _aggregates(select):
        out.append(_join_stage(view, select))
    final = CreateView(view.sql, view.name, select, dict(view.options), canonical=view.canonical)
    final.script = getattr(view, "script", view.sql)
    return [*out, final]


def _stage(view: CreateView, name: str, select: exp.Select) -> CreateView:
    if not isinstance(select, exp.Select):
        raise at(select, "only a SELECT can be a stage of a view", "write the subquery as one SELECT")
    problem = name_problem(name, "view")
    if problem:
        raise at(select, f"this subquery runs as view {name}, and {problem.split(': ', 1)[-1]}",
                 "give the subquery (or CTE) a shorter or other name")
    stmt = CreateView(f"CREATE MATERIALIZED VIEW {name} AS {select.sql()}", name, select, {})
    stmt.script = getattr(view, "script", view.sql)  # errors point into the user's statement
    return stmt


def _from(select: exp.Select) -> exp.From | None:
    return select.args.get("from_") or select.args.get("from")


def _joins(select: exp.Select) -> list[exp.Join]:
    return list(select.args.get("joins") or [])


def _aggregates(select: exp.Select) -> bool:
    return select.args.get("group") is not None or any(e.find(exp.AggFunc) for e in select.expressions)


def _rename_tables(node: exp.Expression, renamed: dict[str, str]) -> None:
    """Point references to CTEs at their stages (keeping the name the query uses as alias)."""
    for t in list(node.find_all(exp.Table)):
        target = renamed.get(t.name.lower()) if isinstance(t.this, exp.Identifier) else None
        if target:
            alias = t.alias_or_name
            t.set("this", exp.to_identifier(target, quoted=True))
            if not t.alias:
                t.set("alias", exp.TableAlias(this=exp.to_identifier(alias)))


def _lift_derived_tables(view: CreateView, select: exp.Select, out: list[CreateView]) -> None:
    """Each subquery in FROM or JOIN becomes a stage; a Top-N's numbering subquery stays (its planner
    reads it), but what that subquery reads from is lifted in turn."""
    frm = _from(select)
    if frm is None:
        return
    if is_top_n(select):
        _lift_derived_tables(view, frm.this.this, out)
        return
    for holder in [frm, *_joins(select)]:
        sub = holder.this
        if not isinstance(sub, exp.Subquery):
            continue
        alias = sub.alias_or_name or f"sub{len(out) + 1}"
        name = f"{view.name}__{alias}"
        out += stages(_stage(view, name, sub.this.copy()))
        holder.set("this", exp.Table(this=exp.to_identifier(name, quoted=True),
                                     alias=exp.TableAlias(this=exp.to_identifier(alias))))


def _stage_columns(used: list[exp.Column]) -> tuple[list[exp.Expression], dict[tuple[str, str], str]]:
    """The select list of a join stage: each used column once, named as itself, or `table_column` when
    two sides share the name."""
    names: dict[tuple[str, str], str] = {}
    clashing = {c.name.lower() for c in used
                if len({(d.table.lower(), d.name.lower()) for d in used if d.name.lower() == c.name.lower()}) > 1}
    items: list[exp.Expression] = []
    for col in used:
        key = (col.table.lower(), col.name.lower())
        if key not in names:
            names[key] = f"{col.table}_{col.name}" if col.name.lower() in clashing else col.name
            items.append(exp.alias_(col.copy(), exp.to_identifier(names[key], quoted=True)))
    return items, names


def _first_join_stage(view: CreateView, select: exp.Select, n: int) -> CreateView:
    """`FROM a JOIN b ON ... JOIN c ON ...`: `a JOIN b` becomes `<view>__join<n>`, selecting the columns of
    a and b the rest of the query uses (those in the later ONs first, so a time they bound on is the
    stage's event time); the rest reads the stage in their place."""
    frm, joins = _from(select), _joins(select)
    sides = {t.alias_or_name.lower() for t in (frm.this, joins[0].this)}
    later = [j.args.get("on") for j in joins[1:]]
    rest = [*later, *select.expressions, select.args.get("where"), select.args.get("group"), select.args.get("having")]
    used: list[exp.Column] = []
    for node in rest:
        for col in list(node.find_all(exp.Column)) if node is not None else []:
            if isinstance(col.this, exp.Star):
                raise at(col, "list the columns of a join view", "e.g. SELECT o.id, s.carrier, ...")
            if not col.table:
                raise at(col, "qualify the columns of a join of three or more inputs", f"write alias.{col.name}")
            if col.table.lower() in sides:
                used.append(col)
    items, names = _stage_columns(used)
    name = f"{view.name}__join{n}"
    inner = exp.Select(expressions=items)
    inner.set("from_", frm.copy())
    inner.set("joins", [joins[0].copy()])
    for col in used:
        col.replace(exp.column(exp.to_identifier(names[(col.table.lower(), col.name.lower())], quoted=True),
                               table=exp.to_identifier(name, quoted=True)))
    select.set("from_", exp.From(this=exp.Table(this=exp.to_identifier(name, quoted=True))))
    select.set("joins", joins[1:])
    return _stage(view, name, inner)


def _join_stage(view: CreateView, select: exp.Select) -> CreateView:
    """GROUP BY over a join: the join (with WHERE) becomes `<view>__join`, selecting the columns the
    aggregate uses; the aggregate reads it. The window's time column goes first, so it is the stage's
    event time."""
    used: list[exp.Column] = []
    seen: set[int] = set()
    window_cols = [g.expressions[0] for g in (select.args["group"].expressions if select.args.get("group") else [])
                   if isinstance(g, exp.Anonymous) and g.expressions and isinstance(g.expressions[0], exp.Column)]
    nodes = [*window_cols, *select.expressions, select.args.get("group"), select.args.get("having")]
    for node in nodes:
        for col in list(node.find_all(exp.Column)) if node is not None else []:
            if isinstance(col.this, exp.Star):
                raise at(col, "list the columns of a join view", "e.g. SELECT o.id, COUNT(*) ...")
            if id(col) not in seen:
                seen.add(id(col))
                used.append(col)
    items, names = _stage_columns(used)
    inner = exp.Select(expressions=items)
    inner.set("from_", _from(select).copy())
    inner.set("joins", [j.copy() for j in _joins(select)])
    if select.args.get("where") is not None:
        inner.set("where", select.args["where"].copy())
    name = f"{view.name}__join"
    for col in used:
        col.replace(exp.column(exp.to_identifier(names[(col.table.lower(), col.name.lower())], quoted=True)))
    select.set("from_", exp.From(this=exp.Table(this=exp.to_identifier(name, quoted=True))))
    select.set("joins", None)
    select.set("where", None)
    return _stage(view, name, inner)
