"""Enough of pg_catalog and information_schema for psql's \\dt and \\d, SQLAlchemy and BI tools to list
the views and their columns.

The tables are built from the state dir on each catalog query (a few rows per view: cheap) and queried
with DataFusion in a context of their own, after a few textual rewrites that let DataFusion read what
psql sends: `pg_catalog.` prefixes dropped (the tables and functions are registered unqualified),
`OPERATOR(pg_catalog.~)` as `~`, COLLATE and reg* casts removed, `information_schema.x` pointed at our
tables (DataFusion has an information_schema of its own, describing its own internal tables).

Every series is a table in schema `public` (relkind 'r', so \\dt lists it): the views, their `__late`
series and the streams' `__errors` series, with the columns a query sees. Catalog tables nobody can
fill (indexes, constraints, triggers, ...) exist empty so queries joining them get no rows instead of
an error. Only SELECT is answered here; it is not PostgreSQL, and queries needing more than these
columns get a DataFusion error naming what is missing.
"""

from __future__ import annotations

import functools
import re
from typing import TYPE_CHECKING

import pyarrow as pa
import sqlglot
from datafusion import SessionContext, udf
from sqlglot import exp

from pondstream.engine.pgserver.encode import PG_TYPES, TEXT_OID, pg_oid
from pondstream.state.paths import series_dir
from pondstream.state.series import series_meta
from pondstream.state.table import READ_ONLY, visible_columns

if TYPE_CHECKING:
    from pondstream.engine.pgserver.session import Session

PUBLIC_OID, CATALOG_OID, INFO_OID, OWNER_OID, DATABASE_OID = 2200, 11, 13000, 10, 16383
FIRST_TABLE_OID = 16384
I, T, B = pa.int64(), pa.string(), pa.bool_()  # noqa: E741 (short names keep the tables readable)

# name -> columns (the ones psql, SQLAlchemy, DBeaver and Grafana read); tables left empty are listed too
COLUMNS: dict[str, dict[str, pa.DataType]] = {
    "pg_namespace": {"oid": I, "nspname": T, "nspowner": I, "nspacl": T},
    "pg_class": {"oid": I, "relname": T, "relnamespace": I, "relkind": T, "relowner": I, "relam": I,
                 "reltuples": pa.float64(), "relpages": I, "relhasindex": B, "relchecks": I, "relhasrules": B,
                 "relhastriggers": B, "relrowsecurity": B, "relforcerowsecurity": B, "relispartition": B,
                 "reltablespace": I, "reloftype": I, "relpersistence": T, "relreplident": T, "reltoastrelid": I,
                 "relacl": T, "reloptions": T, "relnatts": I, "relispopulated": B, "relisshared": B,
                 "relpartbound": T, "reltype": I, "relfilenode": I},
    "pg_attribute": {"attrelid": I, "attname": T, "atttypid": I, "attnum": I, "attnotnull": B, "atthasdef": B,
                     "attisdropped": B, "atttypmod": I, "attlen": I, "attidentity": T, "attgenerated": T,
                     "attcollation": I, "attndims": I, "attstorage": T, "attcompression": T, "attislocal": B,
                     "attinhcount": I, "attstattarget": I, "attacl": T, "attoptions": T, "attfdwoptions": T},
    "pg_type": {"oid": I, "typname": T, "typnamespace": I, "typlen": I, "typtype": T, "typbasetype": I,
                "typtypmod": I, "typnotnull": B, "typelem": I, "typarray": I, "typrelid": I, "typcategory": T,
                "typowner": I, "typdelim": T, "typcollation": I, "typndims": I, "typdefault": T},
    "pg_database": {"oid": I, "datname": T, "datdba": I, "encoding": I, "datcollate": T, "datctype": T,
                    "datistemplate": B, "datallowconn": B, "datacl": T, "dattablespace": I},
    "pg_roles": {"oid": I, "rolname": T, "rolsuper": B, "rolinherit": B, "rolcreaterole": B, "rolcreatedb": B,
                 "rolcanlogin": B, "rolreplication": B, "rolconnlimit": I, "rolvaliduntil": T, "rolbypassrls": B},
    "pg_user": {"usename": T, "usesysid": I, "usecreatedb": B, "usesuper": B},
    "pg_settings": {"name": T, "setting": T, "unit": T, "category": T, "short_desc": T, "vartype": T},
    "pg_am": {"oid": I, "amname": T, "amtype": T},
    "pg_description": {"objoid": I, "classoid": I, "objsubid": I, "description": T},
    "pg_index": {"indexrelid": I, "indrelid": I, "indisprimary": B, "indisunique": B, "indkey": T,
                 "indisclustered": B, "indisvalid": B, "indexprs": T, "indpred": T, "indnatts": I},
    "pg_constraint": {"oid": I, "conname": T, "connamespace": I, "contype": T, "conrelid": I, "confrelid": I,
                      "conkey": T, "confkey": T, "conindid": I, "conparentid": I, "convalidated": B},
    "pg_attrdef": {"oid": I, "adrelid": I, "adnum": I, "adbin": T},
    "pg_inherits": {"inhrelid": I, "inhparent": I, "inhseqno": I},
    "pg_trigger": {"oid": I, "tgrelid": I, "tgname": T, "tgisinternal": B},
    "pg_proc": {"oid": I, "proname": T, "pronamespace": I, "prorettype": I, "prokind": T},
    "pg_tablespace": {"oid": I, "spcname": T},
    "pg_extension": {"oid": I, "extname": T, "extversion": T, "extnamespace": I},
    "pg_enum": {"oid": I, "enumtypid": I, "enumlabel": T, "enumsortorder": pa.float64()},
    "pg_collation": {"oid": I, "collname": T},
    "pg_policy": {"oid": I, "polname": T, "polrelid": I},
    "pg_rewrite": {"oid": I, "rulename": T, "ev_class": I},
    "pg_statistic_ext": {"oid": I, "stxrelid": I, "stxname": T},
    "pg_publication": {"oid": I, "pubname": T},
    **{name: {"oid": I} for name in (
        "pg_publication_rel", "pg_publication_namespace", "pg_statistic_ext_data", "pg_subscription",
        "pg_event_trigger", "pg_foreign_data_wrapper", "pg_foreign_server", "pg_depend", "pg_shdescription",
        "pg_auth_members", "pg_cast", "pg_operator", "pg_aggregate", "pg_language", "pg_seclabel",
        "pg_init_privs", "pg_opclass", "pg_conversion", "pg_ts_config", "pg_range", "pg_transform")},
    "pg_foreign_table": {"ftrelid": I},
    "pg_partitioned_table": {"partrelid": I},
    "pg_sequence": {"seqrelid": I},
    "pg_matviews": {"schemaname": T, "matviewname": T, "definition": T},
    "pg_views": {"schemaname": T, "viewname": T, "definition": T},
    "pg_tables": {"schemaname": T, "tablename": T, "tableowner": T, "hasindexes": B},
}
INFO_COLUMNS: dict[str, dict[str, pa.DataType]] = {
    "tables": {"table_catalog": T, "table_schema": T, "table_name": T, "table_type": T},
    "columns": {"table_catalog": T, "table_schema": T, "table_name": T, "column_name": T, "ordinal_position": I,
                "column_default": T, "is_nullable": T, "data_type": T, "udt_name": T,
                "character_maximum_length": I, "numeric_precision": I, "numeric_scale": I},
    "schemata": {"catalog_name": T, "schema_name": T, "schema_owner": T},
    "views": {"table_catalog": T, "table_schema": T, "table_name": T, "view_definition": T},
}
FILLED = {"pg_namespace", "pg_class", "pg_attribute", "pg_type", "pg_database", "pg_roles", "pg_user",
          "pg_settings", "pg_am", "pg_tables"}
EMPTY = set(COLUMNS) - FILLED
FUNCTIONS = {"version", "current_schema", "current_database", "current_schemas", "pg_get_userbyid",
             "pg_table_is_visible", "format_type", "obj_description", "col_description", "pg_get_expr",
             "pg_encoding_to_char", "has_table_privilege", "has_schema_privilege", "has_database_privilege",
             "pg_get_viewdef", "pg_relation_size", "pg_total_relation_size", "pg_backend_pid", "shobj_description",
             "pg_is_in_recovery", "pg_postmaster_start_time", "txid_current", "pg_get_constraintdef",
             "pg_get_indexdef", "pg_type_is_visible", "pg_function_is_visible", "quote_ident", "inet_server_addr",
             "pg_get_keywords", "current_setting", "pg_size_pretty", "to_regtype"}
_WORD = re.compile(r"[a-z_][a-z0-9_]*")
_CALL = re.compile(r"([a-z_][a-z0-9_]*)\s*\(")
_NAMES = frozenset(COLUMNS)
_REWRITES = [
    (re.compile(r"OPERATOR\s*\(\s*(?:pg_catalog\s*\.\s*)?([~!<>=*]+)\s*\)", re.I), r"\1"),
    (re.compile(r"\s+COLLATE\s+(?:pg_catalog\s*\.\s*)?(?:\"?default\"?|\"C\"|\"POSIX\")", re.I), ""),
    (re.compile(r"::\s*(?:pg_catalog\s*\.\s*)?(?:regclass|regtype|regproc|regprocedure|regnamespace|regrole|"
                r"oid|name)\b(?:\[\])?", re.I), ""),
    (re.compile(r"\bpg_catalog\s*\.\s*", re.I), ""),
    (re.compile(r"\binformation_schema\s*\.\s*(\w+)", re.I), r'"pg_info_\1"'),
    (re.compile(r"\b(pg_get_expr|pg_get_viewdef|pg_get_constraintdef|pg_get_indexdef)\s*\(([^,()]+),\s*([^,()]+),\s*"
                r"(?:true|false)\s*\)", re.I), r"\1(\2, \3)"),
    # psql \d: reloptions || array(select 'toast.' || x from unnest(tc.reloptions) x): no arrays here
    (re.compile(r"array_to_string\(c\.reloptions \|\| array\(select.*?\), ', '\)", re.I | re.S), "''"),
]


def rewrite(sql: str) -> str:
    """psql's and drivers' catalog SQL in a form DataFusion plans against the tables below."""
    for pattern, repl in _REWRITES:
        sql = pattern.sub(repl, sql)
    if re.search(r"\(\s*select\b", sql, re.I):
        sql = _aggregate_scalar_subqueries(sql)
    return sql


def _empty_result(sql: str) -> pa.Schema | None:
    """The (text) columns of a SELECT whose FROM is an always-empty table (psql's \\d asks pg_policy,
    pg_statistic_ext, pg_publication, pg_inherits ... for a table's details): no rows, whatever the
    columns, so they need not all exist. None for any other statement."""
    try:
        tree = sqlglot.parse_one(sql, read="postgres")
    except (sqlglot.errors.SqlglotError, RecursionError):
        return None
    if not _always_empty(tree):
        return None
    first = tree
    while isinstance(first, exp.SetOperation):
        first = first.this
    names = [e.alias_or_name or f"?column{i}?" for i, e in enumerate(first.expressions)]
    return pa.schema([(n, pa.string()) for n in names])


def _always_empty(q: exp.Expression) -> bool:
    """A SELECT from (or inner-joined with) an always-empty table, or a UNION of such."""
    if isinstance(q, exp.Union):
        return _always_empty(q.this) and _always_empty(q.expression)
    if not isinstance(q, exp.Select):
        return False
    from_ = q.args.get("from_") or q.args.get("from")
    if from_ is None:
        return False
    joins = q.args.get("joins") or []
    inner = [from_.this, *(j.this for j in joins if not j.side)]
    return any(isinstance(t, exp.Table) and t.name in EMPTY for t in inner) and all(
        not j.side or j.side.upper() == "LEFT" for j in joins) and (
        isinstance(from_.this, exp.Table) and from_.this.name in EMPTY or not any(j.side for j in joins))


def _aggregate_scalar_subqueries(sql: str) -> str:
    """DataFusion plans a correlated scalar subquery only when it is aggregated; PostgreSQL's catalog
    lookups (`(SELECT collname FROM ... WHERE c.oid = a.attcollation)`) return at most one row anyway,
    so MAX() of it is the same value."""
    try:
        tree = sqlglot.parse_one(sql, read="postgres")
    except (sqlglot.errors.SqlglotError, RecursionError):
        return sql
    changed = False
    for ex in list(tree.find_all(exp.Exists)):  # EXISTS over tables that are always empty: false
        if {t.name for t in ex.find_all(exp.Table)} <= EMPTY:
            ex.replace(exp.false())
            changed = True
    for sub in list(tree.find_all(exp.Subquery)):
        inner = sub.this
        if sub.root() is not tree:  # inside a part already replaced
            continue
        inner_join_of_empty = {t.name for t in sub.find_all(exp.Table)} & EMPTY and not any(
            j.side for j in sub.find_all(exp.Join))
        if not isinstance(sub.parent, (exp.From, exp.Join)) and inner_join_of_empty:
            sub.replace(exp.Null())  # a lookup joining an always-empty table (pg_attrdef, pg_collation...)
            changed = True
            continue
        if not isinstance(inner, exp.Select) or isinstance(sub.parent, (exp.From, exp.Join, exp.In, exp.Exists)):
            continue
        if len(inner.expressions) != 1 or inner.args.get("group") or inner.find(exp.AggFunc):
            continue
        e = inner.expressions[0]
        name = e.alias_or_name
        inner.set("expressions", [exp.alias_(exp.Max(this=e.unalias()), name or "max")])
        changed = True
    return tree.sql(dialect="postgres") if changed else sql


def _handles(sql: str) -> bool:
    low = sql.lower()
    if "pg_catalog" in low or "information_schema" in low:
        return True
    return bool(set(_WORD.findall(low)) & _NAMES or set(_CALL.findall(low)) & FUNCTIONS)


_handles_short = functools.lru_cache(maxsize=512)(_handles)  # a prepared statement comes again and again


class Catalog:
    """Answers catalog queries over one engine's state dir."""

    def __init__(self, engine) -> None:
        self.engine = engine

    def handles(self, sql: str) -> bool:
        """Whether `sql` reads a catalog table or calls a catalog function (a view named like one loses)."""
        return _handles_short(sql) if len(sql) <= 8192 else _handles(sql)

    def tables(self) -> list[tuple[int, str, list[tuple[str, pa.DataType]]]]:
        """(oid, name, visible columns) of every series, oids in name order from FIRST_TABLE_OID."""
        out = []
        root = self.engine.state_dir / "series"
        for i, name in enumerate(self.engine.series_names()):
            try:
                meta, schema = series_meta(series_dir(root, name))
            except Exception:  # a damaged series is still listed; querying it names the damage
                out.append((FIRST_TABLE_OID + i, name, []))
                continue
            out.append((FIRST_TABLE_OID + i, name, [(c, schema.field(c).type) for c in visible_columns(meta, schema)]))
        return out

    def query(self, sql: str, session: Session) -> pa.RecordBatchReader:
        sql = rewrite(sql)
        empty = _empty_result(sql)
        if empty is not None:
            return pa.RecordBatchReader.from_batches(empty, iter([]))
        ctx = self._context(session)
        df = ctx.sql_with_options(sql, READ_ONLY)
        return pa.RecordBatchReader.from_batches(df.schema(), iter(df.collect()))

    def _context(self, session: Session) -> SessionContext:
        ctx = SessionContext()
        rows = _rows(self.tables(), session)
        for name, cols in COLUMNS.items():
            ctx.register_record_batches(name, [[_batch(cols, rows.get(name, []))]])
        for name, cols in INFO_COLUMNS.items():
            ctx.register_record_batches(f"pg_info_{name}", [[_batch(cols, rows.get("info." + name, []))]])
        _functions(ctx, session)
        return ctx


def _batch(cols: dict[str, pa.DataType], rows: list[dict]) -> pa.RecordBatch:
    return pa.RecordBatch.from_pylist(rows, schema=pa.schema(cols)) if rows else pa.RecordBatch.from_pylist(
        [], schema=pa.schema(cols))


def _rows(tables: list, session: Session) -> dict[str, list[dict]]:
    db = session.settings.get("database") or "pondstream"
    user = session.user
    r: dict[str, list[dict]] = {
        "pg_namespace": [{"oid": CATALOG_OID, "nspname": "pg_catalog", "nspowner": OWNER_OID},
                         {"oid": PUBLIC_OID, "nspname": "public", "nspowner": OWNER_OID},
                         {"oid": INFO_OID, "nspname": "information_schema", "nspowner": OWNER_OID}],
        "pg_type": [{"oid": oid, "typname": _typname(oid), "typnamespace": CATALOG_OID, "typlen": n,
                     "typtype": "b", "typbasetype": 0, "typtypmod": -1, "typnotnull": False, "typelem": 0,
                     "typarray": 0, "typrelid": 0, "typcategory": "S", "typowner": OWNER_OID, "typdelim": ",",
                     "typcollation": 0, "typndims": 0} for oid, (_, n) in PG_TYPES.items()],
        "pg_database": [{"oid": DATABASE_OID, "datname": db, "datdba": OWNER_OID, "encoding": 6,
                         "datcollate": "C", "datctype": "C", "datistemplate": False, "datallowconn": True,
                         "dattablespace": 1663}],
        "pg_roles": [{"oid": OWNER_OID, "rolname": user, "rolsuper": False, "rolinherit": True,
                      "rolcreaterole": False, "rolcreatedb": False, "rolcanlogin": True, "rolreplication": False,
                      "rolconnlimit": -1, "rolbypassrls": False}],
        "pg_user": [{"usename": user, "usesysid": OWNER_OID, "usecreatedb": False, "usesuper": False}],
        "pg_settings": [{"name": k, "setting": v, "vartype": "string"} for k, v in sorted(session.settings.items())],
        "pg_am": [{"oid": 2, "amname": "heap", "amtype": "t"}],
        "info.schemata": [{"catalog_name": db, "schema_name": s, "schema_owner": user}
                          for s in ("public", "pg_catalog", "information_schema")],
    }
    for oid, name, cols in tables:
        r.setdefault("pg_class", []).append({
            "oid": oid, "relname": name, "relnamespace": PUBLIC_OID, "relkind": "r", "relowner": OWNER_OID,
            "relam": 2, "reltuples": -1.0, "relpages": 0, "relhasindex": False, "relchecks": 0,
            "relhasrules": False, "relhastriggers": False, "relrowsecurity": False, "relforcerowsecurity": False,
            "relispartition": False, "reltablespace": 0, "reloftype": 0, "relpersistence": "p",
            "relreplident": "n", "reltoastrelid": 0, "relnatts": len(cols), "relispopulated": True,
            "relisshared": False, "reltype": 0, "relfilenode": oid})
        r.setdefault("pg_tables", []).append({"schemaname": "public", "tablename": name, "tableowner": user,
                                              "hasindexes": False})
        r.setdefault("info.tables", []).append({"table_catalog": db, "table_schema": "public", "table_name": name,
                                                "table_type": "BASE TABLE"})
        for i, (col, t) in enumerate(cols, 1):
            oid_t = pg_oid(t)
            r.setdefault("pg_attribute", []).append({
                "attrelid": oid, "attname": col, "atttypid": oid_t, "attnum": i, "attnotnull": False,
                "atthasdef": False, "attisdropped": False, "atttypmod": _typmod(t), "attlen": PG_TYPES[oid_t][1],
                "attidentity": "", "attgenerated": "", "attcollation": 0, "attndims": 0, "attstorage": "p",
                "attislocal": True, "attinhcount": 0, "attstattarget": -1})
            r.setdefault("info.columns", []).append({
                "table_catalog": db, "table_schema": "public", "table_name": name, "column_name": col,
                "ordinal_position": i, "is_nullable": "YES", "data_type": _format_type(oid_t, _typmod(t)).split("(")[0],
                "udt_name": _typname(oid_t), "numeric_precision": getattr(t, "precision", None),
                "numeric_scale": getattr(t, "scale", None)})
    return r


_TYPNAMES = {16: "bool", 17: "bytea", 20: "int8", 21: "int2", 23: "int4", 25: "text", 700: "float4",
             701: "float8", 1082: "date", 1083: "time", 1114: "timestamp", 1184: "timestamptz",
             1186: "interval", 1700: "numeric"}


def _typname(oid: int) -> str:
    return _TYPNAMES.get(oid, "text")


def _typmod(t: pa.DataType) -> int:
    """numeric(p, s) is typmod ((p << 16) | s) + 4, as PostgreSQL stores it; -1 for everything else."""
    return ((t.precision << 16) | t.scale) + 4 if pa.types.is_decimal(t) else -1


def _format_type(oid: int | None, typmod: int | None) -> str | None:
    if oid is None:
        return None
    name = PG_TYPES.get(oid, PG_TYPES[TEXT_OID])[0]
    if name == "numeric" and typmod is not None and typmod > 4:
        return f"numeric({(typmod - 4) >> 16},{(typmod - 4) & 0xFFFF})"
    return name


def _scalar(fn, types: list[pa.DataType], ret: pa.DataType, name: str, ctx: SessionContext) -> None:
    """Register a Python function of plain values as a DataFusion UDF applied row by row (catalog tables
    are a few rows)."""
    def run(*arrays: pa.Array) -> pa.Array:
        n = len(arrays[0]) if arrays else 1
        cols = [a.to_pylist() for a in arrays]
        return pa.array([fn(*(c[i] for c in cols)) for i in range(n)], ret)

    ctx.register_udf(udf(run, types, ret, "stable", name))


def _functions(ctx: SessionContext, session: Session) -> None:
    from pondstream.engine.pgserver.session import SERVER_VERSION

    db = session.settings.get("database") or "pondstream"
    version = f"PostgreSQL {SERVER_VERSION} (pondstream serve; DataFusion underneath, read-only)"
    _scalar(lambda: version, [], T, "version", ctx)
    _scalar(lambda: "public", [], T, "current_schema", ctx)
    _scalar(lambda: db, [], T, "current_database", ctx)
    _scalar(lambda b: "{public}", [B], T, "current_schemas", ctx)
    _scalar(lambda oid: session.user, [I], T, "pg_get_userbyid", ctx)
    _scalar(lambda oid: True, [I], B, "pg_table_is_visible", ctx)
    _scalar(lambda oid: True, [I], B, "pg_type_is_visible", ctx)
    _scalar(lambda oid: True, [I], B, "pg_function_is_visible", ctx)
    _scalar(_format_type, [I, I], T, "format_type", ctx)
    _scalar(lambda oid, cat: None, [I, T], T, "obj_description", ctx)
    _scalar(lambda oid, cat: None, [I, T], T, "shobj_description", ctx)
    _scalar(lambda oid, n: None, [I, I], T, "col_description", ctx)
    _scalar(lambda expr, rel: None, [T, I], T, "pg_get_expr", ctx)
    _scalar(lambda oid: None, [I], T, "pg_get_constraintdef", ctx)
    _scalar(lambda oid: None, [I], T, "pg_get_indexdef", ctx)
    _scalar(lambda oid: None, [I], T, "pg_get_viewdef", ctx)
    _scalar(lambda n: "UTF8", [I], T, "pg_encoding_to_char", ctx)
    _scalar(lambda rel, priv: True, [T, T], B, "has_table_privilege", ctx)
    _scalar(lambda rel, priv: True, [T, T], B, "has_schema_privilege", ctx)
    _scalar(lambda rel, priv: True, [T, T], B, "has_database_privilege", ctx)
    _scalar(lambda oid: 0, [I], I, "pg_relation_size", ctx)
    _scalar(lambda oid: 0, [I], I, "pg_total_relation_size", ctx)
    _scalar(lambda: False, [], B, "pg_is_in_recovery", ctx)
    _scalar(lambda: 0, [], I, "pg_backend_pid", ctx)
    _scalar(lambda name: session.settings.get(name.lower()), [T], T, "current_setting", ctx)
    _scalar(lambda n: f"{n} bytes", [I], T, "pg_size_pretty", ctx)
    by_name = {name: oid for oid, name in _TYPNAMES.items()} | {v[0]: oid for oid, v in PG_TYPES.items()}
    _scalar(lambda name: by_name.get((name or "").lower()), [T], I, "to_regtype", ctx)
