"""The guard every SQL passes before it runs (compiled from a metric query or proposed by an
LLM): parsed by sqlglot (Postgres), it must be ONE SELECT, read only tables of the gold
schema (or its own CTEs), call no function with side effects, take no locks, and it gets a
row cap (`LIMIT`, lowered to the cap when above it). The warehouse session adds its own
belts: a READ ONLY transaction and a statement timeout (`control_room.semantic.warehouse`).
"""

from __future__ import annotations

import sqlglot
from sqlglot import exp

__all__ = ["ROW_CAP", "GuardError", "guard"]

ROW_CAP = 1000

# functions known to be safe that sqlglot parses as anonymous calls (Postgres-specific ones)
_SAFE_ANONYMOUS = frozenset({
    "date_trunc", "to_char", "to_date", "date_part", "age", "justify_days", "initcap",
    "percentile_cont", "percentile_disc", "string_agg", "array_agg", "generate_series",
    "make_date", "extract", "nullif", "greatest", "least", "split_part", "format",
})
_FORBIDDEN_PREFIXES = ("pg_", "lo_", "dblink", "set_config", "nextval", "setval", "currval",
                       "txid_", "query_to_xml", "table_to_xml", "cursor_to_xml",
                       "database_to_xml", "schema_to_xml", "current_setting", "version",
                       "inet_", "copy", "binary_upgrade")
_FORBIDDEN_NODES: tuple[type[exp.Expression], ...] = (
    exp.Insert, exp.Update, exp.Delete, exp.Merge, exp.Create, exp.Drop, exp.Alter,
    exp.Command, exp.Into, exp.Lock, exp.Set, exp.Transaction, exp.Commit, exp.Rollback,
    exp.Copy, exp.Grant,
)


class GuardError(ValueError):
    """SQL the guard refuses; `code` is the machine code (`sql_refused`)."""

    code = "sql_refused"


def _function_name(node: exp.Func) -> str:
    if isinstance(node, exp.Anonymous):
        return str(node.name).lower()
    return node.sql_name().lower()


def guard(sql: str, *, schema: str = "gold", cap: int = ROW_CAP) -> str:
    """The SQL to run (capped), or GuardError saying why it may not run."""
    try:
        statements = [s for s in sqlglot.parse(sql, read="postgres") if s is not None]
    except sqlglot.errors.SqlglotError as exc:
        raise GuardError(f"the SQL does not parse: {str(exc)[:300]}") from None
    if len(statements) != 1:
        raise GuardError(f"one statement only, got {len(statements)}")
    tree = statements[0]
    if not isinstance(tree, exp.Select | exp.Union | exp.Intersect | exp.Except):
        raise GuardError(f"a SELECT only, got {tree.key.upper()}")
    for node in tree.walk():
        if isinstance(node, _FORBIDDEN_NODES):
            raise GuardError(f"{node.key.upper()} is not allowed")
        if isinstance(node, exp.Select) and node.args.get("locks"):
            raise GuardError("row locks (FOR UPDATE/SHARE) are not allowed")
    ctes = {cte.alias_or_name.lower() for cte in tree.find_all(exp.CTE)}
    for table in tree.find_all(exp.Table):
        if isinstance(table.this, exp.Func):
            raise GuardError(f"a function as a table is not allowed: {table.this.sql()}")
        name = table.name.lower()
        db = (table.db or "").lower()
        if not db and name in ctes:
            continue
        if db != schema.lower() or table.catalog:
            raise GuardError(f"only tables of schema {schema} may be read, not "
                             f"{table.sql(dialect='postgres')}")
    for func in tree.find_all(exp.Func):
        name = _function_name(func)
        if name.startswith(_FORBIDDEN_PREFIXES):
            raise GuardError(f"function {name} is not allowed")
        if isinstance(func, exp.Anonymous) and name not in _SAFE_ANONYMOUS:
            raise GuardError(f"function {name} is not allowed (not a known read-only "
                             "function)")
    limit = tree.args.get("limit")
    current: int | None = None
    if isinstance(limit, exp.Limit):
        value = limit.expression
        if not isinstance(value, exp.Literal) or value.is_string:
            raise GuardError("LIMIT must be a number")
        current = int(value.name)
    if current is None or current > cap:
        tree = tree.limit(cap, copy=False) if isinstance(tree, exp.Select) else (
            exp.select("*").from_(tree.subquery("capped")).limit(cap))
    return tree.sql(dialect="postgres", pretty=True)
