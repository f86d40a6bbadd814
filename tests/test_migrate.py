"""The migration runner against throwaway databases and temporary migrations directories."""

from __future__ import annotations

import threading
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest

from control_room.db.migrate import (
    MigrationError,
    MigrationReport,
    MigrationsDirNotFound,
    apply_shim,
    load_migrations,
    migrate,
)
from control_room.db.split import split_and_trim
from tests.helpers import REPO_MIGRATIONS

FIRST = """
create table public.widgets (id int primary key, label text not null);
insert into public.widgets values (1, 'semi;colon');
"""
SECOND = """
create function public.widget_count() returns bigint
language plpgsql stable as $$
begin
    return (select count(*) from public.widgets);  -- a ; inside a body
end
$$;
"""


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(text)
    return path


def history(url: str) -> list[tuple[str, str, list[str]]]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "select version, name, statements from supabase_migrations.schema_migrations "
            "order by version"
        ).fetchall()
    return [(r[0], r[1], list(r[2])) for r in rows]


def fetch_one(url: str, query: str) -> Any:
    with psycopg.connect(url) as conn:
        row = conn.execute(query).fetchone()
    assert row is not None
    return row[0]


@pytest.fixture
def migrations(tmp_path: Path) -> Path:
    directory = tmp_path / "migrations"
    directory.mkdir()
    write(directory, "20240101000000_widgets.sql", FIRST)
    write(directory, "20240102000000_widget_count.sql", SECOND)
    write(directory, "README.md", "not a migration")
    write(directory, "notes.sql", "select 'not named <version>_<name>.sql';")
    return directory


def test_applies_in_version_order_and_records_history(
    empty_db_url: str, migrations: Path
) -> None:
    # Version order, not name order: 9 < 10.
    write(migrations, "9_nine.sql", "create table public.nine (x int);")
    write(migrations, "10_ten.sql", "alter table public.nine add column y int;")

    report = migrate(empty_db_url, migrations)

    assert report.applied == [
        "9_nine", "10_ten", "20240101000000_widgets", "20240102000000_widget_count",
    ]
    assert report.pending == [] and report.drifted == [] and report.unknown == []
    assert report.shim_applied
    rows = history(empty_db_url)
    assert [(v, n) for v, n, _ in rows] == [
        ("10", "ten"), ("20240101000000", "widgets"), ("20240102000000", "widget_count"),
        ("9", "nine"),
    ]
    statements = {v: s for v, _, s in rows}
    assert statements["20240101000000"] == split_and_trim(FIRST)
    assert len(statements["20240101000000"]) == 2
    assert len(statements["20240102000000"]) == 1
    assert fetch_one(empty_db_url, "select public.widget_count()") == 1


def test_history_table_matches_the_supabase_cli(empty_db_url: str, migrations: Path) -> None:
    migrate(empty_db_url, migrations)
    with psycopg.connect(empty_db_url) as conn:
        columns = conn.execute(
            "select column_name, data_type, is_nullable from information_schema.columns "
            "where table_schema = 'supabase_migrations' and table_name = 'schema_migrations' "
            "order by ordinal_position"
        ).fetchall()
        primary_key = conn.execute(
            "select a.attname from pg_index i join pg_attribute a "
            "on a.attrelid = i.indrelid and a.attnum = any(i.indkey) "
            "where i.indrelid = 'supabase_migrations.schema_migrations'::regclass "
            "and i.indisprimary"
        ).fetchall()
    assert columns == [
        ("version", "text", "NO"), ("statements", "ARRAY", "YES"), ("name", "text", "YES"),
    ]
    assert primary_key == [("version",)]


def test_second_run_applies_nothing(empty_db_url: str, migrations: Path) -> None:
    migrate(empty_db_url, migrations)
    again = migrate(empty_db_url, migrations)
    assert again.applied == [] and again.pending == []
    assert len(history(empty_db_url)) == 2


def test_failing_migration_leaves_no_row_and_no_partial_objects(
    empty_db_url: str, migrations: Path
) -> None:
    write(
        migrations,
        "20240103000000_broken.sql",
        "create table public.partial (id int);\nselect 1 / 0;\n",
    )
    with pytest.raises(MigrationError) as failure:
        migrate(empty_db_url, migrations)

    assert failure.value.version == "20240103000000"
    assert "division by zero" in str(failure.value)
    assert failure.value.report is not None
    assert failure.value.report.applied == [
        "20240101000000_widgets", "20240102000000_widget_count",
    ]
    assert [v for v, _, _ in history(empty_db_url)] == ["20240101000000", "20240102000000"]
    assert fetch_one(empty_db_url, "select to_regclass('public.partial')") is None

    check = migrate(empty_db_url, migrations, check=True)
    assert check.pending == ["20240103000000_broken"]


def test_check_reports_pending_drifted_and_unknown(empty_db_url: str, migrations: Path) -> None:
    before = migrate(empty_db_url, migrations, check=True)
    assert before.pending == ["20240101000000_widgets", "20240102000000_widget_count"]
    assert before.shim_missing
    assert not before.clean
    # check=True applies nothing, not even the history table or the shim.
    assert fetch_one(empty_db_url, "select to_regclass('supabase_migrations.schema_migrations')") \
        is None
    assert fetch_one(empty_db_url, "select to_regprocedure('auth.uid()')") is None

    migrate(empty_db_url, migrations)
    assert migrate(empty_db_url, migrations, check=True).clean

    # Layout-only edits are not drift...
    write(migrations, "20240101000000_widgets.sql", FIRST.replace(" (", "\n    (") + "\n\n")
    assert migrate(empty_db_url, migrations, check=True).drifted == []
    # ...a changed statement is.
    write(migrations, "20240101000000_widgets.sql", FIRST.replace("semi;colon", "changed"))
    (migrations / "20240102000000_widget_count.sql").unlink()
    write(migrations, "20240104000000_new.sql", "select 1;")

    report = migrate(empty_db_url, migrations, check=True)
    assert report.pending == ["20240104000000_new"]
    assert report.drifted == ["20240101000000_widgets"]
    assert report.unknown == ["20240102000000_widget_count"]
    assert not report.shim_missing
    assert not report.clean


def test_missing_directory(empty_db_url: str, tmp_path: Path) -> None:
    with pytest.raises(MigrationsDirNotFound):
        migrate(empty_db_url, tmp_path / "nope")


def test_duplicate_versions_are_refused(tmp_path: Path) -> None:
    write(tmp_path, "1_a.sql", "select 1;")
    write(tmp_path, "1_b.sql", "select 2;")
    with pytest.raises(MigrationError, match="share version 1"):
        load_migrations(tmp_path)


def test_shim_is_idempotent_and_auth_uid_reads_the_claims(empty_db_url: str) -> None:
    user = uuid.uuid4()
    with psycopg.connect(empty_db_url, autocommit=True) as conn:
        apply_shim(conn)
        apply_shim(conn)
        with conn.transaction():
            conn.execute(
                "select set_config('request.jwt.claims', %s, true)",
                (f'{{"sub": "{user}", "role": "authenticated", "email": "a@b.c"}}',),
            )
            row = conn.execute("select auth.uid(), auth.role(), auth.email(), auth.jwt()")
            uid, role, email, jwt = row.fetchone() or (None, None, None, None)
        assert (uid, role, email) == (user, "authenticated", "a@b.c")
        assert jwt == {"sub": str(user), "role": "authenticated", "email": "a@b.c"}
        with conn.transaction():
            # The legacy per-claim setting wins, as in Supabase.
            conn.execute("select set_config('request.jwt.claim.sub', %s, true)", (str(user),))
            assert conn.execute("select auth.uid()").fetchone() == (user,)
        assert conn.execute("select auth.uid()").fetchone() == (None,)

        roles = conn.execute(
            "select rolname, rolcanlogin, rolinherit, rolbypassrls from pg_roles "
            "where rolname in ('anon', 'authenticated', 'service_role', 'authenticator') "
            "order by rolname"
        ).fetchall()
        assert roles == [
            ("anon", False, False, False),
            ("authenticated", False, False, False),
            ("authenticator", True, False, False),
            ("service_role", False, False, True),
        ]
        members = conn.execute(
            "select r.rolname from pg_auth_members m join pg_roles r on r.oid = m.roleid "
            "join pg_roles u on u.oid = m.member where u.rolname = 'authenticator' "
            "order by 1"
        ).fetchall()
        assert members == [("anon",), ("authenticated",), ("service_role",)]
        # digest() exists in schema extensions: pgcrypto's, or the shim's fallback.
        digest = conn.execute(
            "select encode(extensions.digest('abc', 'sha256'), 'hex')"
        ).fetchone()
        assert digest == ("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",)
        # The API roles may call the auth helpers.
        with conn.transaction():
            conn.execute("set local role anon")
            assert conn.execute("select auth.uid()").fetchone() == (None,)


def test_concurrent_migrators_apply_each_file_once(empty_db_url: str, tmp_path: Path) -> None:
    directory = tmp_path / "migrations"
    directory.mkdir()
    # Plain `create table` fails if a file ever runs twice; the sleep widens the race.
    for index in range(1, 4):
        write(
            directory,
            f"{index}_step.sql",
            f"create table public.step_{index} (id int);\nselect pg_sleep(0.1);\n",
        )
    reports: list[MigrationReport] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(3)

    def run() -> None:
        try:
            barrier.wait()
            reports.append(migrate(empty_db_url, directory))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    applied = sorted(label for report in reports for label in report.applied)
    assert applied == ["1_step", "2_step", "3_step"]
    assert [v for v, _, _ in history(empty_db_url)] == ["1", "2", "3"]


def test_repo_migrations_apply_to_an_empty_database(empty_db_url: str) -> None:
    assert load_migrations(REPO_MIGRATIONS), "supabase/migrations holds no migration"
    report = migrate(empty_db_url, REPO_MIGRATIONS)
    assert report.applied == [m.label for m in load_migrations(REPO_MIGRATIONS)]

    check = migrate(empty_db_url, REPO_MIGRATIONS, check=True)
    assert check.pending == []
    assert check.drifted == []
    assert check.unknown == []
    assert check.clean
    assert fetch_one(empty_db_url, "select to_regnamespace('ops') is not null") is True


def test_splitter_matches_the_supabase_cli() -> None:
    # Cases from the CLI's parser: quotes, dollar quotes, comments, BEGIN ATOMIC, parens.
    sql = (
        "-- leading comment; still a comment\n"
        "create table t (x text default 'a;b''c');\n"
        "create function f() returns int language plpgsql as $body$ begin return 1; end $body$;\n"
        "/* block ; /* nested ; */ still */ select 1;\n"
        "create function g() returns int language sql begin atomic select 1; select 2; end;\n"
        'select "odd;name" from t;;\n'
        "select E'\\\\';\n"
        "-- trailing comment\n"
    )
    assert split_and_trim(sql) == [
        "-- leading comment; still a comment\ncreate table t (x text default 'a;b''c')",
        "create function f() returns int language plpgsql as $body$ begin return 1; end $body$",
        "/* block ; /* nested ; */ still */ select 1",
        "create function g() returns int language sql begin atomic select 1; select 2; end",
        'select "odd;name" from t',
        "select E'\\\\'",
        "-- trailing comment",
    ]
