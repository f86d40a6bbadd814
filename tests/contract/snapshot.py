"""What is stored in schema ops, as a comparable value: a refused call must not change it.

Read as the connection's own (superuser) role, outside any `acting_as()` block, so row level
security and column grants hide nothing.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

TablesState = dict[str, tuple[int, str]]


def ops_tables(conn: psycopg.Connection[Any]) -> list[str]:
    """Every table of schema ops, from the catalog (a new table is covered automatically)."""
    with conn.transaction():
        rows = conn.execute(
            "select c.relname from pg_catalog.pg_class c"
            " join pg_catalog.pg_namespace n on n.oid = c.relnamespace"
            " where n.nspname = 'ops' and c.relkind in ('r', 'p') order by 1"
        ).fetchall()
    return [str(r[0]) for r in rows]


def snapshot(conn: psycopg.Connection[Any]) -> TablesState:
    """Row count and a digest of the content of every ops table, and the runs' event counters
    (one statement)."""
    parts: list[sql.Composable] = [
        sql.SQL(
            "select {name}, count(*),"
            " coalesce(md5(string_agg(t::text, E'\\n' order by t::text)), '') from ops.{table} t"
        ).format(name=sql.Literal(table), table=sql.Identifier(table))
        for table in ops_tables(conn)
    ]
    parts.append(sql.SQL(
        "select 'runs.last_event_seq', count(*), coalesce(sum(last_event_seq), 0)::text"
        " from ops.runs"))
    with conn.transaction():
        rows = conn.execute(sql.SQL(" union all ").join(parts)).fetchall()
    return {str(name): (int(n), str(digest)) for name, n, digest in rows}
