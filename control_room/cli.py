"""`control-room`: the command line.

Bad input (a malformed or unreachable database URL, a missing migrations directory) gives
a one-line message on stderr and exit code 2; a failed migration or server start, exit 1.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, NoReturn

import psycopg
import pydantic
import typer
from psycopg.conninfo import conninfo_to_dict
from rich.console import Console
from rich.table import Table

from control_room.db.migrate import (
    MigrationError,
    MigrationReport,
    MigrationsDirNotFound,
    migrate,
)
from control_room.db.store import DatabaseStatus, connect, database_status
from control_room.local import EmbeddedPostgres, EmbeddedPostgresError
from control_room.settings import Settings, env_var, load_settings

app = typer.Typer(
    name="control-room",
    help="Lakehouse Control Room: the control plane's database, migrations and tools.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2

DatabaseUrl = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        envvar=env_var("database_url"),
        show_envvar=True,
        help=(
            "PostgreSQL URL. Default: the embedded server under the state directory."
        ),
    ),
]
StateDir = Annotated[
    Path | None,
    typer.Option(
        "--state-dir",
        envvar=env_var("state_dir"),
        show_envvar=True,
        file_okay=False,
        help=(
            "Local state: the embedded server's data and logs. Default: ./.control-room"
        ),
    ),
]
MigrationsDir = Annotated[
    Path | None,
    typer.Option(
        "--migrations-dir",
        envvar=env_var("migrations_dir"),
        show_envvar=True,
        help=(
            "The Supabase migrations directory. Default: supabase/migrations of this repo."
        ),
    ),
]
Check = Annotated[
    bool,
    typer.Option(
        "--check",
        envvar="CONTROL_ROOM_MIGRATE_CHECK",
        show_envvar=True,
        help=(
            "Apply nothing; list pending, drifted and unknown migrations and exit 1 if there "
            "are any."
        ),
    ),
]


class BadInput(Exception):
    """Something the user gave us is wrong: exit 2 with the message."""


def _fail(message: str, code: int) -> NoReturn:
    err.print(f"error: {' '.join(message.split())}", markup=False)
    raise typer.Exit(code)


@contextlib.contextmanager
def _guard() -> Iterator[None]:
    """Turn expected failures into one line on stderr and an exit code, never a traceback."""
    try:
        yield
    except BadInput as exc:
        _fail(str(exc), EXIT_BAD_INPUT)
    except MigrationsDirNotFound as exc:
        _fail(str(exc), EXIT_BAD_INPUT)
    except pydantic.ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        _fail(f"invalid setting {where}: {first['msg']}", EXIT_BAD_INPUT)
    except MigrationError as exc:
        _fail(str(exc), EXIT_FAILED)
    except EmbeddedPostgresError as exc:
        _fail(str(exc), EXIT_FAILED)
    except psycopg.Error as exc:
        _fail(f"database error: {exc}", EXIT_FAILED)
    except OSError as exc:
        _fail(str(exc), EXIT_FAILED)


def _target(url: str) -> str:
    """host:port/dbname of a conninfo, without any password."""
    params = conninfo_to_dict(url)
    host = params.get("host") or params.get("hostaddr") or "localhost"
    port = params.get("port") or "5432"
    dbname = params.get("dbname") or params.get("user") or ""
    return f"{host}:{port}/{dbname}"


def _check_url(url: str, settings: Settings) -> None:
    try:
        target = _target(url)
    except psycopg.ProgrammingError as exc:
        raise BadInput(f"malformed database URL: {exc}") from None
    try:
        with connect(url, connect_timeout=5, statement_timeout_ms=settings.statement_timeout_ms):
            pass
    except psycopg.OperationalError as exc:
        reason = str(exc).strip() or type(exc).__name__
        raise BadInput(f"cannot connect to {target}: {reason}") from None


@contextlib.contextmanager
def _database(settings: Settings) -> Iterator[str]:
    """The configured database's URL; without one, the embedded server (stopped afterwards
    when this command started it)."""
    if settings.database_url:
        _check_url(settings.database_url, settings)
        yield settings.database_url
        return
    server = EmbeddedPostgres(settings.state_dir)
    with err.status(f"Starting the embedded PostgreSQL in {settings.state_dir} ..."):
        url = server.start()
    try:
        yield url
    finally:
        if server.started_here:
            with err.status("Stopping the embedded PostgreSQL ..."):
                server.stop()


def _print_report(report: MigrationReport, *, check: bool) -> None:
    if check:
        rows: list[tuple[str, str]] = []
        if report.shim_missing:
            rows.append(("shim missing", "the local Supabase shim (auth.uid(), API roles)"))
        rows += [("pending", label) for label in report.pending]
        rows += [("drifted", label) for label in report.drifted]
        rows += [("unknown", label) for label in report.unknown]
        if not rows:
            out.print("Nothing pending, drifted or unknown.")
            return
        table = Table(title="Migrations needing attention")
        table.add_column("state")
        table.add_column("migration")
        for state, label in rows:
            table.add_row(state, label)
        out.print(table)
        return
    if report.shim_applied:
        out.print("Plain PostgreSQL: the local Supabase shim is in place.")
    if report.applied:
        out.print(f"Applied {len(report.applied)} migration(s):")
        for label in report.applied:
            out.print(f"  {label}")
    else:
        out.print("No migrations to apply: the database is up to date.")
    for label in report.drifted:
        out.print(f"warning: {label} was edited after it was applied (drifted)")
    for label in report.unknown:
        out.print(f"warning: {label} is applied but has no file here (unknown)")


def _print_status(status: DatabaseStatus) -> None:
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    table.add_row("server", f"PostgreSQL {status.server_version}")
    table.add_row("database", status.database)
    latest = f" (latest {status.latest_migration})" if status.latest_migration else ""
    if status.has_history:
        table.add_row("migrations applied", f"{status.migrations_applied}{latest}")
    else:
        table.add_row("migrations applied", "0 (no supabase_migrations.schema_migrations)")
    if not status.has_ops:
        table.add_row("ops", "schema ops is missing: run `control-room migrate`")
    else:
        table.add_row("workspaces", str(status.workspaces))
        table.add_row("runs", _by_state(status.runs_by_state))
        table.add_row("phases", _by_state(status.phases_by_state))
    out.print(table)


def _by_state(counts: dict[str, int]) -> str:
    if not counts:
        return "0"
    total = sum(counts.values())
    return f"{total} (" + ", ".join(f"{state} {n}" for state, n in counts.items()) + ")"


def _status_of(url: str, settings: Settings) -> DatabaseStatus:
    with connect(url, statement_timeout_ms=settings.statement_timeout_ms) as conn:
        return database_status(conn)


@app.command("migrate")
def migrate_command(
    database_url: DatabaseUrl = None,
    migrations_dir: MigrationsDir = None,
    state_dir: StateDir = None,
    check: Check = False,
) -> None:
    """Apply supabase/migrations to the database (or, with --check, report what differs)."""
    with _guard():
        settings = load_settings(
            database_url=database_url, migrations_dir=migrations_dir, state_dir=state_dir
        )
        if not settings.migrations_dir.is_dir():
            raise BadInput(f"migrations directory not found: {settings.migrations_dir}")
        with _database(settings) as url:
            with err.status("Checking migrations ..." if check else "Migrating ..."):
                report = migrate(url, settings.migrations_dir, check=check)
            _print_report(report, check=check)
        if check and not report.clean:
            raise typer.Exit(EXIT_FAILED)


@app.command("status")
def status_command(database_url: DatabaseUrl = None, state_dir: StateDir = None) -> None:
    """Server version, applied migrations, and workspaces, runs and phases by state."""
    with _guard():
        settings = load_settings(database_url=database_url, state_dir=state_dir)
        with _database(settings) as url:
            _print_status(_status_of(url, settings))


@app.command("demo")
def demo_command(
    state_dir: StateDir = None, migrations_dir: MigrationsDir = None
) -> None:
    """Start the embedded database under the state directory, migrate it, show its status."""
    with _guard():
        settings = load_settings(state_dir=state_dir, migrations_dir=migrations_dir)
        if not settings.migrations_dir.is_dir():
            raise BadInput(f"migrations directory not found: {settings.migrations_dir}")
        # The demo always uses the embedded server, whatever CONTROL_ROOM_DATABASE_URL says.
        settings = settings.model_copy(update={"database_url": None})
        out.print(f"State directory: {settings.state_dir}")
        with _database(settings) as url:
            with err.status("Migrating ..."):
                report = migrate(url, settings.migrations_dir)
            _print_report(report, check=False)
            _print_status(_status_of(url, settings))
        out.print(
            f"The embedded server's data is in {settings.state_dir / 'pgdata'}, its log in "
            f"{settings.state_dir / 'log' / 'postgres.log'}."
        )


def main() -> None:
    app()


if __name__ == "__main__":
    main()
