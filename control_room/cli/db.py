"""`control-room migrate` and `control-room status`: the database itself."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from control_room.cli.common import (
    EXIT_FAILED,
    DatabaseUrl,
    MigrationsDir,
    StateDir,
    database,
    defaults,
    err,
    guard,
    new_app,
    option_for,
    out,
    require_migrations,
)
from control_room.settings import Settings, load_settings

if TYPE_CHECKING:
    from control_room.db.migrate import MigrationReport
    from control_room.db.store import DatabaseStatus

app = new_app("The database: migrations and status.")

SETTINGS = defaults(Settings)
Check = Annotated[bool, option_for(Settings, "migrate_check", "--check")]


def print_report(report: MigrationReport, *, check: bool) -> None:
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


def print_status(status: DatabaseStatus) -> None:
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


def status_of(url: str, settings: Settings) -> DatabaseStatus:
    from control_room.db.store import connect, database_status

    with connect(url, statement_timeout_ms=settings.statement_timeout_ms) as conn:
        return database_status(conn)


@app.command("migrate")
def migrate_command(
    database_url: DatabaseUrl = None,
    migrations_dir: MigrationsDir = None,
    state_dir: StateDir = None,
    check: Check = SETTINGS.migrate_check,
) -> None:
    """Apply the migrations to the database (or, with --check, report what differs)."""
    from control_room.db.migrate import migrate

    with guard():
        settings = load_settings(database_url=database_url, migrations_dir=migrations_dir,
                                 state_dir=state_dir, migrate_check=check)
        require_migrations(settings)
        with database(settings) as url:
            with err.status("Checking migrations ..." if check else "Migrating ..."):
                report = migrate(url, settings.migrations_dir, check=check)
            print_report(report, check=check)
        if check and not report.clean:
            raise typer.Exit(EXIT_FAILED)


@app.command("status")
def status_command(database_url: DatabaseUrl = None, state_dir: StateDir = None) -> None:
    """Server version, applied migrations, and workspaces, runs and phases by state."""
    with guard():
        settings = load_settings(database_url=database_url, state_dir=state_dir)
        with database(settings) as url:
            print_status(status_of(url, settings))
