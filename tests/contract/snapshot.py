"""What is stored in schema ops, as a comparable value: a refused call must not change it.

Read as the connection's own (superuser) role, outside any `acting_as()` block, so row level
security and column grants hide nothing.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

TablesState = dict[str, tuple[int, str]]

# The digest of a table's content: the sum of a 64-bit hash of each row (order does not matter,
# a changed, added or removed row changes it), hashed by each column type's own hash function.
# That reads each row as stored; rendering every row as text and sorting it (md5 of string_agg,
# as this was first) took 3 to 4 times as long, and the contract tests take a snapshot before
# and after every refused call. A table with a column of a type that has no hash function
# (json, point) is digested from its rows' text instead.
_HASHED = "coalesce(sum(pg_catalog.hash_record_extended(t, 0)), 0)::text"
_AS_TEXT = "coalesce(md5(string_agg(t::text, E'\\n' order by t::text)), '')"


def ops_tables(conn: psycopg.Connection[Any]) -> list[str]:
    """Every table of schema ops, from the catalog (a new table is covered automatically)."""
    with conn.transaction():
        rows = conn.execute(
            "select c.relname from pg_catalog.pg_class c"
            " join pg_catalog.pg_namespace n on n.oid = c.relnamespace"
            " where n.nspname = 'ops' and c.relkind in ('r', 'p') order by 1"
        ).fetchall()
    return [str(r[0]) for r in rows]


def _statement(tables: list[str], digest: str) -> sql.Composed:
    parts: list[sql.Composable] = [
        sql.SQL("select {name}, count(*), " + digest + " from ops.{table} t").format(
            name=sql.Literal(table), table=sql.Identifier(table))
        for table in tables
    ]
    parts.append(sql.SQL(
        "select 'runs.last_event_seq', count(*), coalesce(sum(last_event_seq), 0)::text"
        " from ops.runs"))
    return sql.SQL(" union all ").join(parts)


def snapshot(conn: psycopg.Connection[Any]) -> TablesState:
    """Row count and a digest of the content of every ops table, and the runs' event counters
    (one statement)."""
    tables = ops_tables(conn)
    try:
        with conn.transaction():
            rows = conn.execute(_statement(tables, _HASHED)).fetchall()
    except psycopg.errors.UndefinedFunction:     # could not identify a hash function for type
        with conn.transaction():
            rows = conn.execute(_statement(tables, _AS_TEXT)).fetchall()
    return {str(name): (int(n), str(digest)) for name, n, digest in rows}
