"""The control-room command line, against a real database."""

from __future__ import annotations

import inspect
import re
from pathlib import Path
from typing import Any

import pytest
import typer.main
from typer.testing import CliRunner

from control_room.cli import app
from control_room.db.migrate import load_migrations
from tests.helpers import REPO_MIGRATIONS

runner = CliRunner()


def test_status_prints_the_applied_migration_count(db_url: str) -> None:
    result = runner.invoke(app, ["status", "--database-url", db_url])
    assert result.exit_code == 0, result.output
    expected = len(load_migrations(REPO_MIGRATIONS))
    assert re.search(rf"migrations applied\s+{expected}\b", result.stdout), result.stdout
    assert "PostgreSQL" in result.stdout


def test_status_reads_the_url_from_the_environment(db_url: str) -> None:
    result = runner.invoke(app, ["status"], env={"CONTROL_ROOM_DATABASE_URL": db_url})
    assert result.exit_code == 0, result.output
    assert "migrations applied" in result.stdout


def test_status_of_a_database_without_ops(empty_db_url: str) -> None:
    result = runner.invoke(app, ["status", "--database-url", empty_db_url])
    assert result.exit_code == 0, result.output
    assert "schema ops is missing" in result.stdout


def test_migrate_check_on_a_migrated_database(db_url: str) -> None:
    result = runner.invoke(app, ["migrate", "--check", "--database-url", db_url])
    assert result.exit_code == 0, result.output
    assert "Nothing pending" in result.stdout


def test_migrate_check_reports_pending(empty_db_url: str, tmp_path: Path) -> None:
    (tmp_path / "1_first.sql").write_text("create table public.t (x int);")
    args = ["migrate", "--database-url", empty_db_url, "--migrations-dir", str(tmp_path)]
    result = runner.invoke(app, [*args, "--check"])
    assert result.exit_code == 1, result.output
    assert "1_first" in result.stdout and "pending" in result.stdout

    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "Applied 1 migration" in result.stdout
    assert runner.invoke(app, [*args, "--check"]).exit_code == 0


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("postgresql://postgres@127.0.0.1:1/nowhere", "error: cannot connect to 127.0.0.1:1"),
        ("definitely not a url", "error: malformed database URL"),
        ("postgresql://postgres@127.0.0.1:5432/crtest_no_such_db", "error: cannot connect"),
    ],
)
def test_bad_url_exits_2_with_one_line(url: str, message: str) -> None:
    for command in (["status"], ["migrate"], ["migrate", "--check"]):
        result = runner.invoke(app, [*command, "--database-url", url])
        assert result.exit_code == 2, result.output
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert lines[0].startswith(message)
        assert result.exception is None or isinstance(result.exception, SystemExit)


def test_missing_migrations_dir_exits_2(db_url: str, tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["migrate", "--database-url", db_url, "--migrations-dir", str(tmp_path / "nope")]
    )
    assert result.exit_code == 2
    assert result.stderr.strip() == f"error: migrations directory not found: {tmp_path / 'nope'}"


def test_every_option_names_its_environment_variable() -> None:
    for command in ("migrate", "status", "demo", "up"):
        result = runner.invoke(app, [command, "--help"], env={"COLUMNS": "200"})
        assert result.exit_code == 0
        options = re.findall(r"(--[a-z-]+)", result.stdout)
        envvars = re.findall(r"env var: (CONTROL_ROOM_[A-Z_]+)", result.stdout)
        # --json is a choice per invocation, not a setting
        assert len(set(envvars)) == len(set(options) - {"--help", "--json"}), result.stdout


def _paragraphs(doc: str) -> list[str]:
    """A docstring's paragraphs, each joined into one line as markdown renders it."""
    return [" ".join(p.replace("`", "").split()) for p in inspect.cleandoc(doc).split("\n\n")]


def test_demo_help_shows_its_docstring_as_paragraphs() -> None:
    result = runner.invoke(app, ["demo", "--help"], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    lines = [line.strip() for line in result.stdout.splitlines()]
    assert ("Generates an Odoo database, runs specs/odoo_medallion.yaml through the gateway and "
            "real workers with live progress, then prints the gold KPIs, the artifact digests "
            "and where to look. Always uses the embedded PostgreSQL under the state "
            "directory.") in lines, result.stdout


def test_every_help_text_renders_its_paragraphs_unbroken() -> None:
    root: Any = typer.main.get_command(app)
    checked = 0
    for path, command in _commands(root):
        doc = command.callback.__doc__ if command.callback is not None else None
        if not doc:
            continue
        result = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "250"})
        assert result.exit_code == 0, (path, result.output)
        lines = {line.strip() for line in result.stdout.splitlines()}
        for paragraph in _paragraphs(doc):
            if len(paragraph) < 240:
                assert paragraph in lines, (path, paragraph, result.stdout)
                checked += 1
    assert checked > 20


def _commands(group: Any, path: tuple[str, ...] = ()) -> list[tuple[list[str], Any]]:
    found: list[tuple[list[str], Any]] = []
    for name, command in getattr(group, "commands", {}).items():
        found.append(([*path, name], command))
        found += _commands(command, (*path, name))
    return found


def test_the_cli_calls_the_contract_only_through_typed_methods() -> None:
    package = Path(__file__).resolve().parents[1] / "control_room" / "cli"
    untyped = [f"{path.name}:{n}" for path in package.glob("*.py")
               for n, line in enumerate(path.read_text().splitlines(), 1) if '.call("' in line]
    assert len(list(package.glob("*.py"))) >= 10
    assert not untyped, untyped


@pytest.mark.parametrize("policy", ["env:CONTROL_ROOM_", "bogus:/x", "file:relative/dir"])
def test_worker_refuses_a_bad_secret_policy_naming_the_setting(policy: str,
                                                              tmp_path: Path) -> None:
    result = runner.invoke(app, [
        "worker", "--gateway", "http://127.0.0.1:1/rest/v1", "--token", "t",
        "--artifacts", str(tmp_path / "a"), "--work-dir", str(tmp_path / "w")],
        env={"CONTROL_ROOM_SECRET_ALLOW": policy})
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: CONTROL_ROOM_SECRET_ALLOW: "), result.stderr
    assert "--repo" not in result.stderr
