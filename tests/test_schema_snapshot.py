"""control_room/db/schema.sql, the whole schema the migrations create, and the catalog check.

A database migrated from zero and one loaded from the snapshot (after the shim) must have the
same catalog (procrastinate's tests/migration idea); the snapshot must be what the generator
writes for today's migrations, so a new migration comes with a regenerated schema.sql.
"""

from __future__ import annotations

import difflib
import shutil
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest

from control_room.contract import vocabulary
from control_room.db.migrate import apply_shim, migrate
from control_room.db.snapshot import (
    REGENERATE_COMMAND,
    SCHEMA_FILE,
    catalog,
    catalog_diff,
    load_snapshot,
    render_snapshot,
    significant_lines,
)
from tests.helpers import REPO_MIGRATIONS, temporary_database


def _loaded_from_snapshot(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        apply_shim(conn)
        load_snapshot(conn)


def test_a_database_loaded_from_the_snapshot_has_the_migrated_catalog(
    pg_admin_url: str, empty_db_url: str
) -> None:
    migrate(empty_db_url, REPO_MIGRATIONS)
    with temporary_database(pg_admin_url, suffix="snap") as loaded_url:
        _loaded_from_snapshot(loaded_url)
        with psycopg.connect(empty_db_url) as migrated, psycopg.connect(loaded_url) as loaded:
            from_migrations, from_snapshot = catalog(migrated), catalog(loaded)
            differences = catalog_diff(from_migrations, from_snapshot)
            assert differences == [], (
                "schema.sql and the migrations build different schemas "
                f"(regenerate it: {REGENERATE_COMMAND}):\n" + "\n".join(differences[:40]))
            # the comparison sees what it must: functions, their definitions, rows, grants
            assert any(row[0].startswith("ops.claim_phase(") for row in from_snapshot["functions"])
            assert len(from_snapshot["rows of ops_private.reserved_event_types"]) == len(
                vocabulary.RESERVED_EVENT_TYPES)

            loaded.execute("create or replace function ops_private.now() returns timestamptz"
                           " language sql stable as $$ select pg_catalog.now() $$")
            loaded.execute("insert into ops_private.reserved_event_types values ('SNAPSHOT_X')")
            loaded.execute("grant select on ops.runs to anon")
            loaded.commit()
            changed = "\n".join(catalog_diff(from_migrations, catalog(loaded)))
            assert "ops_private.now()" in changed
            assert "SNAPSHOT_X" in changed
            assert "anon=r/" in changed


def test_the_snapshot_is_current(empty_db_url: str) -> None:
    """Fails after a migration is added until schema.sql is regenerated."""
    migrate(empty_db_url, REPO_MIGRATIONS)
    expected = significant_lines(render_snapshot(empty_db_url))
    current = significant_lines(SCHEMA_FILE.read_text("utf-8"))
    if current != expected:
        diff = list(difflib.unified_diff(
            current, expected, "schema.sql (committed)", "schema.sql (from the migrations)",
            lineterm="", n=1))
        pytest.fail(f"control_room/db/schema.sql is stale: regenerate it with "
                    f"`{REGENERATE_COMMAND}` and commit it.\n" + "\n".join(diff[:60]),
                    pytrace=False)


def test_a_new_migration_makes_the_snapshot_stale(empty_db_url: str, tmp_path: Path) -> None:
    """What the check above compares changes with the migrations (so it can fail)."""
    for path in Path(REPO_MIGRATIONS).glob("*.sql"):
        shutil.copy(path, tmp_path / path.name)
    (tmp_path / "29991231000000_extra.sql").write_text(
        "create table ops.extra_for_the_test (id integer primary key);\n", "utf-8")
    migrate(empty_db_url, tmp_path)
    rendered = render_snapshot(empty_db_url)
    assert significant_lines(rendered) != significant_lines(SCHEMA_FILE.read_text("utf-8"))
    assert "CREATE TABLE ops.extra_for_the_test" in rendered


def test_the_snapshot_names_its_regeneration_command() -> None:
    assert REGENERATE_COMMAND in SCHEMA_FILE.read_text("utf-8").splitlines()[2]


class TestReservedEventTypes:
    """The event types append_events refuses are rows (one line of a migration adds one)."""

    def test_the_rows_are_the_vocabulary(self, conn: psycopg.Connection[Any]) -> None:
        rows = conn.execute("select type from ops_private.reserved_event_types").fetchall()
        assert {r[0] for r in rows} == vocabulary.RESERVED_EVENT_TYPES

    def test_a_new_row_is_refused_by_append_events(self, conn: psycopg.Connection[Any]) -> None:
        ws = conn.execute("select (ops.create_workspace('rsv', 'Reserved')) ->> 'id'").fetchone()
        assert ws is not None
        run = conn.execute(
            "select (ops.create_run(%s, 'spec', 'abcdef0', %s::jsonb)) ->> 'id'",
            (ws[0], '[{"name": "a", "kind": "python"}]')).fetchone()
        assert run is not None

        def append(event_type: str) -> Any:
            row = conn.execute(
                "select ops.append_events(%s, %s::jsonb)",
                (run[0], f'[{{"event_id": "{uuid.uuid4()}", "type": "{event_type}"}}]'),
            ).fetchone()
            return row[0] if row else None

        assert append("NEW_LIFECYCLE_EVENT")["appended"] == 1
        conn.execute(
            "insert into ops_private.reserved_event_types (type) values ('NEW_LIFECYCLE_EVENT')")
        with pytest.raises(psycopg.Error) as refused:
            append("NEW_LIFECYCLE_EVENT")
        assert refused.value.sqlstate == "PT400"
        assert refused.value.diag.message_hint == "invalid_argument"
        assert "NEW_LIFECYCLE_EVENT is a lifecycle event that only the control plane writes" in str(
            refused.value)
