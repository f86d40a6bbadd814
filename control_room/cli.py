"""`control-room`: the command line.

Bad input (a malformed or unreachable database URL, a missing migrations directory) gives
a one-line message on stderr and exit code 2; a failed migration or server start, exit 1.
"""

from __future__ import annotations

import contextlib
import re
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, NoReturn

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
from control_room.db.store import (
    ContractError,
    DatabaseStatus,
    call,
    connect,
    database_status,
)
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


# ------------------------------------------------------------------------------ serve

@app.command("serve")
def serve_command(
    host: Annotated[str | None, typer.Option(
        "--host", envvar=env_var("host"), show_envvar=True,
        help="Address to listen on. Default: 127.0.0.1")] = None,
    port: Annotated[int | None, typer.Option(
        "--port", envvar=env_var("port"), show_envvar=True,
        help="Port to listen on. Default: 8787")] = None,
    database_url: DatabaseUrl = None,
    state_dir: StateDir = None,
) -> None:
    """Serve the contract over HTTP: POST /rest/v1/rpc/<fn>, /health, /metrics.

    Tokens are verified with CONTROL_ROOM_JWT_SECRET (the Supabase project's JWT secret in
    production); without it, with a secret generated once and kept in the state directory.
    With no database configured, the embedded one is started and migrated.
    """
    import uvicorn

    from control_room.gateway.app import create_app
    from control_room.gateway.auth import signing_secret

    with _guard():
        settings = load_settings(host=host, port=port, database_url=database_url,
                                 state_dir=state_dir)
        if not settings.contract_file.is_file():
            raise BadInput(f"contract not found: {settings.contract_file}")
        embedded = settings.database_url is None
        with _database(settings) as url:
            if embedded:
                with err.status("Migrating the embedded database ..."):
                    migrate(url, settings.migrations_dir)
            app_ = create_app(settings, database_url=url, jwt_secret=signing_secret(settings))
            err.print(f"Serving the contract on http://{settings.host}:{settings.port}/rest/v1/rpc/"
                      f" (database {_target(url)})", markup=False)
            # uvicorn shuts down gracefully on SIGINT/SIGTERM, then re-raises the signal to the
            # handler it found: make that one a no-op so that this command's own cleanup
            # (stopping an embedded server) runs and the exit status is 0
            previous = {sig: signal.signal(sig, lambda *_: None)
                        for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                uvicorn.run(app_, host=settings.host, port=settings.port, log_level="info",
                            access_log=False)
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)


# ----------------------------------------------------------------- workspaces and tokens

workspace_app = typer.Typer(help="Workspaces: tenants with an env (dev, stage, prod).",
                            no_args_is_help=True)
token_app = typer.Typer(help="API tokens for principals (executors, users, CI).",
                        no_args_is_help=True)
app.add_typer(workspace_app, name="workspace")
app.add_typer(token_app, name="token")

JsonOut = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
_TTL = re.compile(r"^([0-9]+)([smhd]?)$")
_TTL_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def _admin_call(url: str, settings: Settings, fn: str, args: dict[str, Any]) -> Any:
    """Call a contract function with the operator's own (privileged) database login."""
    with connect(url, statement_timeout_ms=settings.statement_timeout_ms) as conn:
        try:
            with conn.transaction():
                return call(conn, fn, args)
        except ContractError as exc:
            raise BadInput(f"{fn}: {exc.message} ({exc.code})") from None


def _workspace_id(url: str, settings: Settings, ref: str) -> str:
    for ws in _admin_call(url, settings, "list_workspaces", {}):
        if ref in (ws["id"], ws["slug"]):
            return str(ws["id"])
    raise BadInput(f"no workspace {ref!r} (give its slug or id; `control-room workspace list`)")


@workspace_app.command("create")
def workspace_create(
    name: Annotated[str, typer.Argument(help="Display name; the slug is derived from it.")],
    env: Annotated[str, typer.Option("--env", help="dev, stage or prod.")] = "dev",
    slug: Annotated[str | None, typer.Option("--slug", help="Default: from the name.")] = None,
    database_url: DatabaseUrl = None,
    state_dir: StateDir = None,
    as_json: JsonOut = False,
) -> None:
    """Create a workspace."""
    with _guard():
        settings = load_settings(database_url=database_url, state_dir=state_dir)
        if env not in ("dev", "stage", "prod"):
            raise BadInput(f"--env must be dev, stage or prod, not {env!r}")
        slug = slug or re.sub(r"[^a-z0-9_-]+", "-", name.lower()).strip("-")[:63]
        with _database(settings) as url:
            ws = _admin_call(url, settings, "create_workspace",
                             {"slug": slug, "name": name, "env": env})
        if as_json:
            out.print_json(data=ws)
        else:
            out.print(f"workspace {ws['slug']} ({ws['env']}): {ws['id']}")


@workspace_app.command("list")
def workspace_list(database_url: DatabaseUrl = None, state_dir: StateDir = None,
                   as_json: JsonOut = False) -> None:
    """List workspaces."""
    with _guard():
        settings = load_settings(database_url=database_url, state_dir=state_dir)
        with _database(settings) as url:
            rows = _admin_call(url, settings, "list_workspaces", {})
        if as_json:
            out.print_json(data=rows)
            return
        table = Table("slug", "env", "id", "name")
        for ws in rows:
            table.add_row(ws["slug"], ws["env"], ws["id"], ws["name"])
        out.print(table)


@token_app.command("create")
def token_create(
    workspace: Annotated[str | None, typer.Option(
        "--workspace", help="Slug or id of the workspace the principal joins.")] = None,
    role: Annotated[str, typer.Option(
        "--role", help="executor, viewer, developer or admin.")] = "executor",
    name: Annotated[str | None, typer.Option("--name", help="Who holds it.")] = None,
    ttl: Annotated[str, typer.Option(
        "--ttl", help="Lifetime: seconds or 90s, 15m, 12h, 30d.")] = "30d",
    service: Annotated[bool, typer.Option(
        "--service", help="A service_role token (bypasses RLS; operators only).")] = False,
    database_url: DatabaseUrl = None,
    state_dir: StateDir = None,
    as_json: JsonOut = False,
) -> None:
    """Create a principal with a role in a workspace and print a signed token for it."""
    from control_room.gateway.auth import mint_token, signing_secret

    with _guard():
        settings = load_settings(database_url=database_url, state_dir=state_dir)
        match = _TTL.match(ttl.strip())
        if match is None or int(match.group(1)) == 0:
            raise BadInput(f"--ttl must be a positive duration such as 3600, 15m, 12h or 30d, "
                           f"not {ttl!r}")
        seconds = int(match.group(1)) * _TTL_UNITS[match.group(2)]
        secret = signing_secret(settings)
        if service:
            token = mint_token(secret, role="service_role", ttl_seconds=seconds, name=name)
            result: dict[str, Any] = {"token": token, "role": "service_role"}
        else:
            if role not in ("executor", "viewer", "developer", "admin"):
                raise BadInput(f"--role must be executor, viewer, developer or admin, not {role!r}")
            if workspace is None:
                raise BadInput("--workspace is required (or --service for a service token)")
            with _database(settings) as url:
                ws_id = _workspace_id(url, settings, workspace)
                label = name or f"{role}@{workspace}"
                principal = _admin_call(url, settings, "create_principal", {
                    "name": label, "kind": "executor" if role == "executor" else "user"})
                _admin_call(url, settings, "add_member", {
                    "workspace_id": ws_id, "principal_id": principal["id"], "role": role,
                    "name": label})
            token = mint_token(secret, role="authenticated", sub=principal["id"],
                               ttl_seconds=seconds, name=label)
            result = {"token": token, "principal_id": principal["id"], "workspace_id": ws_id,
                      "role": role, "name": label}
        if as_json:
            out.print_json(data=result)
        else:
            if "principal_id" in result:
                err.print(f"principal {result['principal_id']} is {role} in {workspace}; "
                          f"token valid {ttl}", markup=False)
            out.print(token, markup=False, soft_wrap=True)


@token_app.command("revoke")
def token_revoke(
    principal_id: Annotated[str, typer.Argument(help="The principal whose tokens stop working.")],
    database_url: DatabaseUrl = None,
    state_dir: StateDir = None,
) -> None:
    """Revoke a principal: every token it holds is refused from now on."""
    with _guard():
        settings = load_settings(database_url=database_url, state_dir=state_dir)
        with _database(settings) as url:
            row = _admin_call(url, settings, "revoke_principal", {"principal_id": principal_id})
        out.print(f"revoked {row['id']} ({row['name']}) at {row['revoked_at']}")


# ------------------------------------------------------------------------------ worker

@app.command("worker")
def worker_command(
    gateway: Annotated[str, typer.Option(
        "--gateway", envvar="CONTROL_ROOM_GATEWAY_URL", show_envvar=True,
        help="The contract's REST root: the gateway's or Supabase's /rest/v1.")
    ] = "http://127.0.0.1:8787/rest/v1",
    token: Annotated[str | None, typer.Option(
        "--token", envvar="CONTROL_ROOM_TOKEN", show_envvar=True,
        help="The executor principal's token (`control-room token create`).")] = None,
    kinds: Annotated[str | None, typer.Option(
        "--kinds", envvar="CONTROL_ROOM_WORKER_KINDS", show_envvar=True,
        help="Comma-separated phase kinds to run, e.g. python,sql. Default: every kind "
             "this worker has.")] = None,
    concurrency: Annotated[int, typer.Option(
        "--concurrency", envvar="CONTROL_ROOM_WORKER_CONCURRENCY", show_envvar=True,
        min=1, max=256, help="Phases run at once.")] = 1,
    lease_seconds: Annotated[int, typer.Option(
        "--lease-seconds", envvar="CONTROL_ROOM_WORKER_LEASE_SECONDS", show_envvar=True,
        min=1, max=3600, help="Lease length; heartbeats every third of it.")] = 60,
    artifacts: Annotated[str | None, typer.Option(
        "--artifacts", envvar="CONTROL_ROOM_ARTIFACTS_URL", show_envvar=True,
        help="Artifact store: a directory, file:///dir or s3://bucket/prefix. "
             "Default: artifacts under the state directory.")] = None,
    work_dir: Annotated[Path | None, typer.Option(
        "--work-dir", envvar="CONTROL_ROOM_WORKER_DIR", show_envvar=True, file_okay=False,
        help="Scratch space for phase outputs. Default: work under the state directory.")
    ] = None,
    workspace: Annotated[str | None, typer.Option(
        "--workspace-id", envvar="CONTROL_ROOM_WORKSPACE_ID", show_envvar=True,
        help="Claim only in this workspace (id). Default: every workspace of the token.")
    ] = None,
    grace_seconds: Annotated[float, typer.Option(
        "--grace-seconds", envvar="CONTROL_ROOM_WORKER_GRACE_SECONDS", show_envvar=True,
        min=0, help="On SIGTERM or Ctrl-C: how long running phases may finish before they "
                    "are given back.")] = 30.0,
    repo: Annotated[str | None, typer.Option(
        "--repo", envvar="CONTROL_ROOM_WORKER_REPO", show_envvar=True,
        help="Git repository (a directory or URL) of the pipelines' code: each run's "
             "git sha is checked out under the work dir and its code runs. Default: this "
             "worker's own code.")] = None,
    state_dir: StateDir = None,
) -> None:
    """Run phases: claim, heartbeat, run the kind, register artifacts, complete.

    SIGTERM or Ctrl-C stops gracefully: no more claims, running phases get --grace-seconds
    to finish, the rest are given back to the queue.
    """
    import logging
    import threading
    import urllib.parse

    from control_room.contract.client import ContractClient
    from executor.artifacts import artifact_store_from_url
    from executor.kinds import KINDS
    from executor.worker import Worker

    with _guard():
        settings = load_settings(state_dir=state_dir)
        if not token:
            raise BadInput("--token (or CONTROL_ROOM_TOKEN) is required: an executor token")
        if urllib.parse.urlsplit(gateway).scheme not in ("http", "https"):
            raise BadInput(f"--gateway must be an http(s) URL, not {gateway!r}")
        names = [k.strip() for k in (kinds or ",".join(sorted(KINDS))).split(",") if k.strip()]
        unknown = sorted(set(names) - set(KINDS))
        if not names or unknown:
            raise BadInput(f"--kinds: unknown kind(s) {', '.join(unknown) or '(none given)'} "
                           f"(this worker has: {', '.join(sorted(KINDS))})")
        try:
            store = artifact_store_from_url(artifacts or str(settings.state_dir / "artifacts"))
        except ValueError as exc:
            raise BadInput(f"--artifacts: {exc}") from None
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
        logging.getLogger("httpx").setLevel(logging.WARNING)   # not a line per request
        stop = threading.Event()

        def _stop(signum: int, frame: Any) -> None:
            err.print(f"{signal.Signals(signum).name}: stopping gracefully ...", markup=False)
            stop.set()

        with ContractClient(gateway, token) as client:
            try:
                worker = Worker(client, kinds=names, concurrency=concurrency,
                                lease_seconds=lease_seconds, store=store,
                                work_dir=work_dir or settings.state_dir / "work",
                                workspace_id=workspace, grace_seconds=grace_seconds,
                                repo=repo)
            except ValueError as exc:
                raise BadInput(f"--repo: {exc}") from None
            err.print(f"Worker {worker.name}: kinds {','.join(names)}, {concurrency} slot(s), "
                      f"claiming from {gateway}", markup=False)
            previous = {sig: signal.signal(sig, _stop) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                stats = worker.run(stop)
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)
        err.print(f"Worker stopped: {stats.claimed} claimed, {stats.succeeded} succeeded, "
                  f"{stats.failed} failed, {stats.abandoned} abandoned", markup=False)


# Commands in their own modules register themselves on `app` when imported (by the module
# itself, not by a copy of this file run as `__main__` or as multiprocessing's `__mp_main__`).
if __name__ == "control_room.cli":
    from control_room import cli_datasets, cli_runs, cli_up, cli_verify  # noqa: F401


def main() -> None:
    app()


if __name__ == "__main__":
    # `python -m control_room.cli` runs this file as `__main__`, a second copy of the module:
    # run the real `control_room.cli`, whose app the command modules register on
    from control_room.cli import main as _main
    _main()
