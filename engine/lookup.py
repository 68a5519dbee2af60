"""Point lookups: `SELECT ... FROM view WHERE <every key> = <literal> [AND <window range>]` without a scan.

A view's base files are sorted by window start then key, so one key's rows are spread over all of them:
DataFusion would read every row group (statistics and bloom filters prune next to nothing when each row
group holds half of all keys). A query that fixes every key column of one view to a literal is instead
served from the key files consolidation writes beside the base files (state/keys.py): the base rows of
that key come from a batch or two per base file, the tail's rows from its few small version files, and
the latest row per identity is kept exactly as `register_series` keeps it. Those rows are then
registered as the view in the query's DataFusion context and the user's SQL runs over them unchanged,
so projections, the rest of the WHERE, GROUP BY, ORDER BY and LIMIT mean what they mean on a scan.
Running aggregates (no window column) need no key file: their base is sorted by key, so Parquet
statistics find the row groups.

Everything else goes to DataFusion as before: several tables, joins, subqueries, CTEs, a key compared to
anything but a plain literal of its type, views with a hidden key (a key the view does not select cannot
be named in WHERE), as-of versions (they read history files), and bases written before key files existed
until consolidation has given them one. `explain` says which route a query takes and why.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import sqlglot
from datafusion import SessionContext
from sqlglot import exp

from pondstream.sql.dialect import DataFusionSQL, StreamSQL
from pondstream.state.consolidate import _latest
from pondstream.state.errors import EngineError
from pondstream.state.files import damaged
from pondstream.state.keys import KEY_FILES, KeyFile, key_columns, live_parts, only_parts
from pondstream.state.leases import Lease
from pondstream.state.paths import series_dir
from pondstream.state.series import (
    BASE,
    HEAD,
    LOG,
    META,
    SCHEMA,
    Snapshot,
    read_snapshot,
    series_meta,
    start_column,
)
from pondstream.state.statcache import StatCache, identity
from pondstream.state.table import damaged_file, quote, visible_columns

if TYPE_CHECKING:
    from pondstream.engine.api import Engine

# Views' descriptions and snapshots, kept while their files are unchanged (shared: never changed here).
_DESCRIPTIONS, _SNAPSHOTS = StatCache(), StatCache()
_TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}(?:[ T]\d{2}:\d{2}(?::\d{2}(?:\.\d{1,9})?)?)?")
_INT = re.compile(r"\d+")


@dataclass
class Plan:
    """The route of one query: a point lookup (`lookup` true) or a DataFusion scan, and why."""

    lookup: bool
    reason: str
    view: str | None = None
    tree: exp.Select | None = None
    table: exp.Table | None = None
    key: dict[str, Any] = field(default_factory=dict)  # key column -> the literal it is fixed to
    span: tuple[int | None, int | None] = (None, None)  # window starts (µs, inclusive) the WHERE allows
    tcol: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    schema: pa.Schema | None = None
    snap: Snapshot | None = None
    files: list[dict[str, Any]] = field(default_factory=list)  # base files that may hold the key
    key_files: list[dict[str, Any]] = field(default_factory=list)  # the key files covering them
    tail: list[dict[str, Any]] = field(default_factory=list)  # tail versions that may hold it
    dir: Path | None = None  # the view's folder
    key_stats: dict[str, tuple] = field(default_factory=dict)  # key file -> its identity when located
    others: int = 0  # WHERE conditions besides the key and window range (DataFusion applies them)
    exact: bool = False  # the WHERE is the key equalities and nothing else: the rows found are the answer's
    lease: Lease | None = None

    @property
    def key_text(self) -> str:
        return " AND ".join(f"{c} = {v!r}" for c, v in self.key.items())


@dataclass
class Lookup:
    """A query answered by a lookup: the view's rows for the key (`rows`) and the SQL to run over them
    with the rows registered as the view (None: the query as given), or, when the query only picks
    columns of those rows, `result`, the answer itself (no DataFusion)."""

    view: str
    sql: str | None
    rows: pa.Table
    result: pa.Table | None = None


def _scan(reason: str, view: str | None = None) -> Plan:
    return Plan(False, reason, view)


def parameter_name(p: exp.Parameter) -> str:
    """The n of `$n`."""
    return p.this.name if isinstance(p.this, exp.Expression) else str(p.this)


def substitute(tree: exp.Expression, params: list[exp.Expression] | None) -> exp.Expression:
    """`tree` (changed in place) with each `$n` replaced by a copy of params[n-1]; EngineError for a `$n`
    without one."""
    if params is None:
        return tree
    for node in list(tree.find_all(exp.Parameter)):
        n = parameter_name(node)
        if not n.isdigit() or not 1 <= int(n) <= len(params):
            raise EngineError(f"${n} has no bound value ({len(params)} parameter(s) were given)")
        node.replace(params[int(n) - 1].copy())
    return tree


def parse(sql: str) -> exp.Expression | None:
    """`sql` parsed as the engine reads it; None if sqlglot cannot."""
    try:
        return sqlglot.parse_one(sql, read=StreamSQL)
    except (sqlglot.errors.SqlglotError, RecursionError):
        return None


def plan(engine: Engine, sql: str, as_of_version: int | None = None, names: list[str] | None = None,
         tree: exp.Expression | None = None, params: list[exp.Expression] | None = None) -> Plan:
    """Decide the route of `sql` (reads the view's description and snapshot, never its data files).

    `tree` is `sql` already parsed, read but never changed (it may be shared): the positions of its
    literals refer to `sql`. `params` are the literal nodes its `$n` stand for (pgserver/params.py; they
    carry no position: they are marked `bound`)."""
    if tree is None:
        tree = parse(sql)
        if tree is None:
            return _scan("sqlglot does not parse it")
    if not isinstance(tree, exp.Select):
        return _scan("not a single SELECT" if isinstance(tree, exp.Query) else "not a query")
    for arg in ("with_", "with", "joins", "laterals", "connect", "into"):
        if tree.args.get(arg):
            return _scan({"joins": "a join", "laterals": "a join"}.get(arg, f"a {arg.strip('_').upper()} clause"))
    if any(isinstance(n, (exp.Query, exp.Subquery)) for n in tree.walk() if n is not tree):
        return _scan("a subquery")
    tables = list(tree.find_all(exp.Table))
    from_ = tree.args.get("from_") or tree.args.get("from")
    table = from_.this if from_ is not None else None
    if len(tables) != 1 or table is not tables[0]:
        return _scan("not one table in FROM")
    alias = table.args.get("alias")
    if any(v for k, v in table.args.items() if k not in ("this", "alias", "version")) or not isinstance(
            table.this, exp.Identifier) or (alias is not None and alias.columns):
        return _scan("FROM is not a plain table name")
    names = engine.series_names() if names is None else names
    real = engine._resolve(table.name, table.this.quoted, names)
    if real is None:
        return _scan(f"{table.name} is not a view")
    if table.args.get("version") is not None or as_of_version is not None:
        return _scan("an as-of version: it reads history files", real)
    d = series_dir(engine._series_root(), real)
    meta, schema = _DESCRIPTIONS.get(d, (d / META, d / SCHEMA), lambda: series_meta(d))
    keys, why_not = key_columns(meta, schema)
    if why_not is not None:
        return _scan(f"{real} cannot be looked up: {why_not}", real)
    columns = visible_columns(meta, schema)
    tcol = start_column(meta)
    where = tree.args.get("where")
    if where is None:
        return _scan(f"no WHERE fixing {', '.join(keys)}", real)

    qualifiers = {_ident(alias.this) if alias is not None else _ident(table.this)}
    key: dict[str, Any] = {}
    notes: list[str] = []
    lo: int | None = None
    hi: int | None = None
    others = 0
    exact = True
    for cond in _conjuncts(where.this):
        col, op, other = _comparison(cond)
        if params is not None:
            other = tuple(_param(o, params) for o in other) if isinstance(other, tuple) else _param(other, params)
        name = _column(col, columns, qualifiers) if col is not None else None
        if name in keys and op == "=":
            value = _key_literal(other, schema.field(name).type, sql)
            if value is None:
                notes.append(f"{name} is compared to {other.sql()[:40]}, not a plain literal of its type "
                             f"({schema.field(name).type})")
            elif name not in key:
                key[name] = value
                continue
            exact = False
            continue
        exact = False
        if name is not None and name == tcol and op is not None:
            bounds = [_timestamp_literal(o, sql) for o in (other if isinstance(other, tuple) else (other,))]
            if all(b is not None for b in bounds):
                if op in ("=", ">=", ">", "between"):
                    lo = max(lo if lo is not None else -(1 << 63), bounds[0][0])
                if op in ("=", "<=", "<", "between"):
                    hi = min(hi if hi is not None else 1 << 63, bounds[-1][1])
                continue
        others += 1
    missing = [k for k in keys if k not in key]
    if missing:
        why = notes[0] if notes else f"WHERE does not fix {missing[0]} to a literal (it needs {missing[0]} = <literal>)"
        return _scan(why, real)
    p = Plan(True, "", real, tree, table, {k: key[k] for k in keys}, (lo, hi), tcol, meta, schema, others=others,
             exact=exact, dir=d)
    return _locate(p, d)


def _param(node: Any, params: list[exp.Expression]) -> Any:
    """The bound literal a `$n` stands for; any other node as it is."""
    if isinstance(node, exp.Parameter):
        n = parameter_name(node)
        if n.isdigit() and 1 <= int(n) <= len(params):
            return params[int(n) - 1]
    return node


def _locate(p: Plan, d: Path) -> Plan:
    """The base files and tail versions the key may be in (window range), and whether each base file has
    what a lookup needs."""
    p.lease = Lease(d)  # before the snapshot: the files it names stay while the lookup reads them
    p.snap = snap = _SNAPSHOTS.get(d, (d / HEAD, d / BASE, d / LOG), lambda: read_snapshot(d))
    p.files = [f for f in snap.base["files"] if _overlaps(f, p.tcol, p.span)]
    p.tail = [e for e in snap.tail if _overlaps(e, p.tcol, p.span)]
    if p.tcol is not None:
        wanted = {f["file"] for f in p.files}
        p.key_files = [k for k in snap.base.get("keys", []) if any(name in wanted for name, _ in k["covers"])]
        covered = {name for k in p.key_files for name, _ in k["covers"]}
        bare = [f["file"] for f in p.files if f["file"] not in covered]
        if bare:
            return _scan(f"{len(bare)} base file(s) of {p.view} have no key file yet (consolidated by an older "
                         f"pondstream; each consolidation indexes one), e.g. {bare[0]}", p.view)
        p.key_stats = {k["file"]: identity(d / k["file"]) for k in p.key_files}
        gone = [name for name, i in p.key_stats.items() if i is None]
        if gone:
            return _scan(f"key file {gone[0]} of {p.view} is missing (each consolidation rebuilds one base file's)",
                         p.view)
    return p


def _overlaps(entry: dict[str, Any], tcol: str | None, span: tuple[int | None, int | None]) -> bool:
    r = entry.get("ranges", {}).get(tcol) if tcol else None
    if r is None:
        return True
    lo, hi = span
    return (lo is None or r[1] >= lo) and (hi is None or r[0] <= hi)


def _ident(i: exp.Identifier) -> str:
    return i.this if i.quoted else i.this.lower()


def _conjuncts(e: exp.Expression) -> list[exp.Expression]:
    while isinstance(e, exp.Paren):
        e = e.this
    if isinstance(e, exp.And):
        return [*_conjuncts(e.this), *_conjuncts(e.expression)]
    return [e]


_OPS = {exp.EQ: "=", exp.GTE: ">=", exp.GT: ">", exp.LTE: "<=", exp.LT: "<"}
_FLIP = {"=": "=", ">=": "<=", ">": "<", "<=": ">=", "<": ">"}


def _comparison(e: exp.Expression) -> tuple[exp.Column | None, str | None, Any]:
    """`column op other` (sides swapped if the column is on the right), BETWEEN as (low, high)."""
    if isinstance(e, exp.Between) and isinstance(e.this, exp.Column):
        return e.this, "between", (e.args["low"], e.args["high"])
    op = _OPS.get(type(e))
    if op is None:
        return None, None, None
    if isinstance(e.this, exp.Column):
        return e.this, op, e.expression
    if isinstance(e.expression, exp.Column):
        return e.expression, _FLIP[op], e.this
    return None, None, None


def _column(col: exp.Column, columns: list[str], qualifiers: set[str]) -> str | None:
    """The view column `col` names (as DataFusion resolves it: unquoted folds to lower case), if any."""
    if not isinstance(col.this, exp.Identifier) or col.args.get("db") or col.args.get("catalog"):
        return None
    q = col.args.get("table")
    if q is not None and (not isinstance(q, exp.Identifier) or _ident(q) not in qualifiers):
        return None
    name = _ident(col.this)
    return name if name in columns else None


def _raw(node: exp.Expression, sql: str) -> str | None:
    meta = node.meta
    return sql[meta["start"]:meta["end"] + 1] if "start" in meta and "end" in meta else None


def _key_literal(node: Any, t: pa.DataType, sql: str) -> Any:
    """The value of a literal of the key's type, exactly as DataFusion reads it; None for anything else
    (DataFusion would coerce; we do not guess how)."""
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        if isinstance(node, exp.Literal) and node.is_string:
            value = node.this
            # The text must be the plain standard literal: no escapes sqlglot and DataFusion might read apart.
            # A bound parameter has no text of its own: what counts is how it is rendered for DataFusion.
            raw = node.sql(dialect=StreamSQL) if node.meta.get("bound") else _raw(node, sql)
            return value if raw == "'" + value.replace("'", "''") + "'" else None
        return None
    sign = 1
    if isinstance(node, exp.Neg):
        node, sign = node.this, -1
    if isinstance(node, exp.Literal) and not node.is_string and _INT.fullmatch(node.this):
        value = sign * int(node.this)
        try:
            pa.scalar(value, t)
        except (OverflowError, pa.ArrowInvalid):
            return None
        return value
    return None


def _timestamp_literal(node: Any, sql: str) -> tuple[int, int] | None:
    """`TIMESTAMP '...'` or a string literal without a zone, as (floor, ceil) in µs; None for other forms
    (they still filter, in DataFusion; they just do not narrow the files read)."""
    if isinstance(node, exp.Cast) and node.to.is_type(exp.DataType.Type.TIMESTAMP):
        node = node.this
    if not (isinstance(node, exp.Literal) and node.is_string and _TIMESTAMP.fullmatch(node.this)):
        return None
    try:
        ns = int(np.datetime64(node.this.replace(" ", "T"), "ns").astype(np.int64))
    except ValueError:
        return None
    return ns // 1000, -(-ns // 1000)


def fetch(p: Plan, root: Path) -> pa.Table:
    """The view's latest rows with the plan's key (a superset of what the query selects; never missing
    one): base rows from key files (or, for a key-sorted base, row groups by statistics), tail rows from
    the version files, the newest per identity kept."""
    d = p.dir or series_dir(root, p.view)
    file_schema = p.schema.append(pa.field("_version", pa.int64()))
    key = tuple(p.key.values())
    expr = None
    for c, v in p.key.items():
        cond = pc.field(c) == pa.scalar(v, p.schema.field(c).type)
        expr = cond if expr is None else expr & cond
    repair = (f"delete it; queries of {p.view} then scan until a consolidation (the next of a running pipeline) "
              "rebuilds it")
    parts = []
    try:
        wanted = {f["file"] for f in p.files}
        for k in p.key_files:
            rows = KEY_FILES.lookup(d / k["file"], repair, key, p.key_stats.get(k["file"]))
            if rows is not None and rows.num_rows:
                parts.append(only_parts(rows, live_parts(k, wanted)))
        for f in p.files if p.tcol is None else []:
            rows = _by_statistics(d / f["file"], p.key, expr)
            if rows is not None and rows.num_rows:
                parts.append(rows)
        for e in p.tail:
            rows = _version_rows(d / e["file"], p.key)
            if rows is not None:
                parts.append(rows)
    except EngineError:
        raise
    except (OSError, pa.ArrowException) as e:
        bad = damaged_file(d)
        if bad is not None:
            raise damaged(bad[0], bad[1], f"restore it from a backup, or recompute the view from its stream: "
                          f"pondstream run FILE.sql --reset {p.view.removesuffix('__late')}") from None
        raise EngineError(f"query failed: {str(e).splitlines()[0]}") from None
    rows = pa.concat_tables([_as(t, file_schema) for t in parts]) if parts else file_schema.empty_table()
    if any(e.get("supersedes") for e in p.tail) and rows.num_rows:
        rows, _ = _latest(rows, p.meta["identity"])  # a tail row replaces the base's (or an older tail's)
    return rows.select(visible_columns(p.meta, p.schema))


def _as(t: pa.Table, schema: pa.Schema) -> pa.Table:
    """`t`'s columns of `schema`, with its types (cast only if they differ: a cast is a compute call)."""
    t = t.select(schema.names)
    if t.schema.equals(schema):
        return t
    if [f.type for f in t.schema] == [f.type for f in schema]:
        return pa.Table.from_arrays(t.columns, schema=schema)
    return t.cast(schema)


def _version_rows(path: Path, key: dict[str, Any]) -> pa.Table | None:
    """The rows of `key` in a tail version file: its key columns first, the rest only if the key is there
    (a version holds a few windows' keys, so most hold none: 0.15 ms a file instead of 0.5)."""
    pf = pq.ParquetFile(path, pre_buffer=False, page_checksum_verification=True)
    cols = pf.read(columns=list(key), use_threads=False)
    mask = None
    for c, v in key.items():
        m = pc.equal(cols.column(c), pa.scalar(v, cols.schema.field(c).type))
        mask = m if mask is None else pc.and_(mask, m)
    if not pc.any(mask).as_py():
        return None
    return pf.read(use_threads=False).filter(mask)


def _by_statistics(path: Path, key: dict[str, Any], expr: pc.Expression) -> pa.Table | None:
    """The rows of `key` in a base file sorted by key: only row groups whose min/max can hold it are read."""
    pf = pq.ParquetFile(path, page_checksum_verification=True)
    md = pf.metadata
    index = {n: i for i, n in enumerate(pf.schema_arrow.names)}
    groups = []
    for g in range(md.num_row_groups):
        rg = md.row_group(g)
        for c, v in key.items():
            s = rg.column(index[c]).statistics
            if s is not None and s.has_min_max and not s.min <= v <= s.max:
                break
        else:
            groups.append(g)
    return pf.read_row_groups(groups).filter(expr) if groups else None


def picked(p: Plan) -> list[tuple[str, str]] | None:
    """(output name, view column) of each result column when the query does nothing but pick columns of
    the rows a lookup finds (`SELECT a, b AS c, * FROM view WHERE <the keys> = <literals>`), named as
    DataFusion names them; None when anything else is asked (then DataFusion runs the query)."""
    tree = p.tree
    if not p.exact or any(v for k, v in tree.args.items() if k not in ("expressions", "from_", "from", "where")):
        return None
    visible = visible_columns(p.meta, p.schema)
    alias = p.table.args.get("alias")
    qualifiers = {_ident(alias.this) if alias is not None else _ident(p.table.this)}
    out: list[tuple[str, str]] = []
    for e in tree.expressions:
        if isinstance(e, exp.Star) and not any(e.args.values()):
            out += [(c, c) for c in visible]
            continue
        name = _ident(e.args["alias"]) if isinstance(e, exp.Alias) and isinstance(e.args.get("alias"),
                                                                                  exp.Identifier) else None
        col = e.this if isinstance(e, exp.Alias) else e
        if not isinstance(col, exp.Column) or (isinstance(e, exp.Alias) and name is None):
            return None
        real = _column(col, visible, qualifiers)
        if real is None:
            return None
        out.append((name or real, real))
    if len({n for n, _ in out}) != len(out):  # DataFusion refuses or renames duplicate names
        return None
    return out


def point_lookup(engine: Engine, sql: str, as_of_version: int | None, names: list[str],
                 tree: exp.Expression | None = None, params: list[exp.Expression] | None = None) -> Lookup | None:
    """If `sql` (or `tree` with `params`, see `plan`) is a point lookup, the view's rows for its key and
    the SQL to run over them registered as the view (or, if the query only picks columns, the answer);
    None for any other query (it is scanned as usual)."""
    p = plan(engine, sql, as_of_version, names, tree, params)
    if not p.lookup:
        return None
    rows = fetch(p, engine._series_root())
    p.lease = None  # the rows are in memory: consolidation may delete the files now
    columns = picked(p)
    if columns is not None:
        result = rows.select([c for _, c in columns]).rename_columns([n for n, _ in columns])
        return Lookup(p.view, None, rows, result)
    table = p.table
    text = None  # the query as given
    if p.view != table.name or not table.this.quoted and p.view != p.view.lower():  # as Engine.query does
        mine = substitute(p.tree.copy(), params)  # the tree may be shared: change a copy
        table = (mine.args.get("from_") or mine.args.get("from")).this
        if not table.alias:
            table.set("alias", exp.TableAlias(this=table.this.copy()))
        table.set("this", exp.to_identifier(p.view, quoted=True))
        text = mine.sql(dialect=DataFusionSQL)
    return Lookup(p.view, text, rows)


def register(ctx: SessionContext, found: Lookup) -> None:
    """Register the rows a lookup found as its view in `ctx` (for `found.sql`)."""
    rows = found.rows
    ctx.register_record_batches(quote(found.view), [rows.to_batches() or [pa.RecordBatch.from_pylist([], rows.schema)]])


def explain(engine: Engine, sql: str, as_of_version: int | None = None) -> str:
    """One line: the route `Engine.query(sql)` takes and why, with what a lookup reads."""
    p = plan(engine, sql, as_of_version)
    if not p.lookup:
        return f"scan: DataFusion reads {p.view or 'the tables'} ({p.reason})"
    d = series_dir(engine._series_root(), p.view)
    total = len(p.snap.base["files"])
    if p.tcol is not None:
        batches = 0
        for k in p.key_files:
            with KeyFile(d / k["file"], "") as kf:
                batches += len(kf.batches_for(tuple(p.key.values())))
        base = (f"{batches} batch(es) of {len(p.key_files)} key file(s) covering {len(p.files)} of {total} base "
                "file(s)")
    else:
        base = f"row groups by statistics in {len(p.files)} base file(s) (sorted by key)"
    narrowed = " (window range)" if p.span != (None, None) else ""
    rest = f"; {p.others} other condition(s)" if p.others else ""
    return (f"point lookup on {p.view} by {p.key_text}: {base}{narrowed}, and {len(p.tail)} of "
            f"{len(p.snap.tail)} tail version(s); then "
            + ("the columns asked for are taken from the rows found" if picked(p) is not None else
               f"DataFusion runs the query over the rows found{rest}"))
