"""The migrations applied the way `supabase db push` applies them, on this PostgreSQL 15.

On a Supabase project the CLI connects as `postgres`, which is no superuser there: LOGIN
CREATEROLE CREATEDB REPLICATION BYPASSRLS, a member of anon, authenticated and service_role,
with all privileges on the database and on schemas public and extensions (supabase/postgres
init scripts). The platform, not the migrations, provides what needs a superuser: the API
roles, schema auth and its helpers, pgcrypto in schema extensions, the supabase_realtime
publication. So here the superuser sets up exactly that (control_room/db/shim.sql), creates a
role with the powers Supabase gives `postgres`, and that role then pushes: the CLI's history
table, then each file in timestamp order in its own transaction, statement by statement, with
its `supabase_migrations.schema_migrations` row (version, name, statements) in the same
transaction (supabase/cli pkg/migration/file.go ExecBatch). Afterwards `control-room migrate
--check` must be clean and the schema must be control_room/db/schema.sql's.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from typer.testing import CliRunner

from control_room.cli import app
from control_room.db.migrate import apply_shim, load_migrations
from control_room.db.queries import query
from control_room.db.snapshot import SCHEMA_FILE, render_snapshot, significant_lines
from tests.helpers import REPO_MIGRATIONS, temporary_database


@dataclass(frozen=True)
class Pushed:
    role: str
    url: str  # the database, as the pushing role
    admin_url: str  # the same database, as the superuser


def as_role(url: str, role: str) -> str:
    params: dict[str, Any] = conninfo_to_dict(url)
    params["user"] = role
    params.pop("password", None)
    return make_conninfo(**params)


def platform_setup(admin_db_url: str, role: str) -> None:
    """What the Supabase platform provides before any migration (superuser only)."""
    dbname = str(conninfo_to_dict(admin_db_url)["dbname"])
    with psycopg.connect(admin_db_url, autocommit=True) as conn:
        apply_shim(conn)  # API roles, auth.*, extensions (+pgcrypto), supabase_realtime
        ident = sql.Identifier(role)
        conn.execute(sql.SQL("create role {} login nosuperuser createrole createdb replication "
                             "bypassrls").format(ident))
        conn.execute(sql.SQL("grant anon, authenticated, service_role to {} with admin option")
                     .format(ident))
        conn.execute(sql.SQL("grant all on database {} to {}").format(
            sql.Identifier(dbname), ident))
        conn.execute(sql.SQL("grant all on schema public, extensions to {}").format(ident))
        conn.execute(sql.SQL("grant usage on schema auth to {}").format(ident))


def push(url: str) -> list[str]:
    """`supabase db push`: the history table, then each pending file in one transaction."""
    pushed = []
    with psycopg.connect(url, autocommit=True) as conn:
        with conn.transaction():
            conn.execute(query("create_history_table"))
        done = {r[0] for r in conn.execute(
            "select version from supabase_migrations.schema_migrations")}
        for m in load_migrations(REPO_MIGRATIONS):  # timestamp order
            if m.version in done:
                continue
            with conn.transaction():
                for statement in m.statements:
                    conn.execute(statement.encode("utf-8"))
                conn.execute(query("insert_history"), {
                    "version": m.version, "name": m.name, "statements": list(m.statements)})
            pushed.append(m.version)
    return pushed


@pytest.fixture(scope="module")
def pushed(pg_admin_url: str) -> Iterator[Pushed]:
    role = f"crtest_push_{secrets.token_hex(4)}"
    with temporary_database(pg_admin_url, suffix="push") as admin_db_url:
        try:
            platform_setup(admin_db_url, role)
            url = as_role(admin_db_url, role)
            versions = push(url)
            assert versions == [m.version for m in load_migrations(REPO_MIGRATIONS)]
            yield Pushed(role, url, admin_db_url)
        finally:
            with psycopg.connect(admin_db_url, autocommit=True) as conn:
                conn.execute(sql.SQL("drop owned by {} cascade").format(sql.Identifier(role)))
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("drop role if exists {}").format(sql.Identifier(role)))


def test_the_pushing_role_has_supabase_powers_not_a_superusers(pushed: Pushed) -> None:
    with psycopg.connect(pushed.url) as conn:
        row = conn.execute("select rolsuper, rolbypassrls, rolcreaterole from pg_roles "
                           "where rolname = current_user").fetchone()
        assert row == (False, True, True)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("create extension if not exists pg_stat_statements")


def test_the_history_is_what_the_cli_records(pushed: Pushed) -> None:
    with psycopg.connect(pushed.url) as conn:
        rows = conn.execute("select version, name, statements from "
                            "supabase_migrations.schema_migrations order by version").fetchall()
    assert [(v, n, list(s)) for v, n, s in rows] == [
        (m.version, m.name, list(m.statements)) for m in load_migrations(REPO_MIGRATIONS)]


def test_migrate_check_is_clean_on_the_pushed_database(pushed: Pushed) -> None:
    result = CliRunner().invoke(app, ["migrate", "--check", "--database-url", pushed.url])
    assert result.exit_code == 0, result.output
    # and it would see a file the push did not apply
    latest = load_migrations(REPO_MIGRATIONS)[-1]
    with psycopg.connect(pushed.admin_url, autocommit=True) as conn:
        conn.execute("delete from supabase_migrations.schema_migrations where version = %s",
                     (latest.version,))
        try:
            result = CliRunner().invoke(app, ["migrate", "--check", "--database-url", pushed.url])
        finally:
            conn.execute("insert into supabase_migrations.schema_migrations (version, name, "
                         "statements) values (%s, %s, %s)",
                         (latest.version, latest.name, list(latest.statements)))
    assert result.exit_code == 1 and latest.version in result.output, result.output


def test_the_pushed_schema_is_schema_sql(pushed: Pushed) -> None:
    # pg_dump --no-owner: an owner's name could only show in default privileges (FOR ROLE;
    # none today), where Supabase's pushing role is `postgres`, as the generator's is here
    rendered = render_snapshot(pushed.admin_url).replace(pushed.role, "postgres")
    assert significant_lines(rendered) == significant_lines(SCHEMA_FILE.read_text("utf-8"))
    # what pg_dump leaves out: the pushing role owns it all, so every security definer
    # function runs as a role without superuser powers (as on Supabase)
    with psycopg.connect(pushed.url) as conn:
        owners = conn.execute("""
            select pg_get_userbyid(p.proowner), count(*) filter (where p.prosecdef)
            from pg_proc p join pg_namespace n on n.oid = p.pronamespace
            where n.nspname in ('ops', 'ops_private') group by 1""").fetchall()
    assert len(owners) == 1 and owners[0][0] == pushed.role and owners[0][1] > 0, owners
