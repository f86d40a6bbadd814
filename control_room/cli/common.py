"""What every command group shares: the consoles, the error handling (one line on stderr, exit
2 for bad input, 1 for a failure), the options derived from the settings classes
(docs/settings.md), the database a command talks to and the gateway client of the HTTP
commands. Group modules import this one; this one imports no group module.
"""

from __future__ import annotations

import contextlib
import urllib.parse
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, NoReturn, TypeVar

import annotated_types
import psycopg
import pydantic
import typer
from psycopg.conninfo import conninfo_to_dict
from pydantic_settings import BaseSettings
from rich.console import Console
from rich.text import Text

from control_room.db.migrate import MigrationError, MigrationsDirNotFound
from control_room.local import EmbeddedPostgresError
from control_room.settings import ClientSettings, Settings, env_var, load_settings
from control_room.stack import Stack, StackFileError, load_stack

if TYPE_CHECKING:
    from control_room.contract.client import ContractClient, RetryPolicy


def _console(*, stderr: bool = False) -> Console:
    """A console whose width follows `COLUMNS` and the terminal when it prints, not when this
    module was imported (rich reads `COLUMNS` once, at construction)."""
    console = Console(stderr=stderr, highlight=False, soft_wrap=True)
    console._width = None
    return console


out = _console()
err = _console(stderr=True)

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2

HELP_MODE: Literal["markdown"] = "markdown"
"""How docstrings and option help render: markdown reflows a docstring's wrapped lines into
paragraphs (blank lines separate them) and shows `code` as code."""


class BadInput(Exception):
    """Something the user gave us is wrong: exit 2 with the message."""


def new_app(help_text: str) -> typer.Typer:
    """A command group's `typer.Typer`, rendered like every other."""
    return typer.Typer(help=help_text, no_args_is_help=True, rich_markup_mode=HELP_MODE)


def fail(message: str, code: int) -> NoReturn:
    err.print(f"error: {' '.join(message.split())}", markup=False)
    raise typer.Exit(code)


@contextlib.contextmanager
def guard() -> Iterator[None]:
    """Turn expected failures into one line on stderr and an exit code, never a traceback."""
    try:
        yield
    except BadInput as exc:
        fail(str(exc), EXIT_BAD_INPUT)
    except MigrationsDirNotFound as exc:
        fail(str(exc), EXIT_BAD_INPUT)
    except pydantic.ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        fail(f"invalid setting {where}: {first['msg']}", EXIT_BAD_INPUT)
    except MigrationError as exc:
        fail(str(exc), EXIT_FAILED)
    except EmbeddedPostgresError as exc:
        fail(str(exc), EXIT_FAILED)
    except psycopg.Error as exc:
        fail(f"database error: {exc}", EXIT_FAILED)
    except OSError as exc:
        fail(str(exc), EXIT_FAILED)


# ------------------------------------------------------------------- options from settings

_S = TypeVar("_S", bound=BaseSettings)


def defaults(cls: type[_S]) -> _S:
    """The settings' defaults, environment ignored: what the options that set them default
    to (so an option and its field cannot disagree)."""
    return cls.model_construct()


def option_for(cls: type[BaseSettings], name: str, *flags: str, help: str | None = None,
               **extra: Any) -> Any:
    """The `typer.Option` that sets `cls.name`: its environment variable, its description as
    the help (or `help`), its bounds as the option's min and max."""
    info = cls.model_fields[name]
    for bound in info.metadata:
        if isinstance(bound, annotated_types.Ge):
            extra.setdefault("min", bound.ge)
        elif isinstance(bound, annotated_types.Le):
            extra.setdefault("max", bound.le)
    return typer.Option(*flags, envvar=env_var(name, cls), show_envvar=True,
                        help=help or info.description, **extra)


DatabaseUrl = Annotated[str | None, option_for(
    Settings, "database_url", "--database-url",
    help="PostgreSQL URL. Default: the embedded server under the state directory.")]
StateDir = Annotated[Path | None, option_for(
    Settings, "state_dir", "--state-dir", file_okay=False,
    help="Local state: the embedded server's data and logs, the local stack's file. Default: "
         "./.control-room")]
MigrationsDir = Annotated[Path | None, option_for(
    Settings, "migrations_dir", "--migrations-dir",
    help="The Supabase migrations directory. Default: the migrations shipped in the package "
         "(supabase/migrations of this repo links to them).")]
JsonOut = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


# ------------------------------------------------------------------------------ database

def target(url: str) -> str:
    """host:port/dbname of a conninfo, without any password."""
    params = conninfo_to_dict(url)
    host = params.get("host") or params.get("hostaddr") or "localhost"
    port = params.get("port") or "5432"
    dbname = params.get("dbname") or params.get("user") or ""
    return f"{host}:{port}/{dbname}"


def _check_url(url: str, settings: Settings) -> None:
    from control_room.db.store import connect

    try:
        where = target(url)
    except psycopg.ProgrammingError as exc:
        raise BadInput(f"malformed database URL: {exc}") from None
    try:
        with connect(url, connect_timeout=5, statement_timeout_ms=settings.statement_timeout_ms):
            pass
    except psycopg.OperationalError as exc:
        reason = str(exc).strip() or type(exc).__name__
        raise BadInput(f"cannot connect to {where}: {reason}") from None


@contextlib.contextmanager
def database(settings: Settings) -> Iterator[str]:
    """The configured database's URL; without one, the embedded server (stopped afterwards
    when this command started it)."""
    from control_room.local import EmbeddedPostgres

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


def admin_call(url: str, settings: Settings, fn: str, args: dict[str, Any]) -> Any:
    """Call a contract function with the operator's own (privileged) database login."""
    from control_room.db.store import ContractError, call, connect

    with connect(url, statement_timeout_ms=settings.statement_timeout_ms) as conn:
        try:
            with conn.transaction():
                return call(conn, fn, args)
        except ContractError as exc:
            raise BadInput(f"{fn}: {exc.message} ({exc.code})") from None


def workspace_by_ref(url: str, settings: Settings, ref: str) -> str:
    """The id of the workspace whose slug or id is `ref`."""
    for ws in admin_call(url, settings, "list_workspaces", {}):
        if ref in (ws["id"], ws["slug"]):
            return str(ws["id"])
    raise BadInput(f"no workspace {ref!r} (give its slug or id; `control-room workspace list`)")


def require_migrations(settings: Settings) -> None:
    if not settings.migrations_dir.is_dir():
        raise BadInput(f"migrations directory not found: {settings.migrations_dir}")


# ---------------------------------------------------------------- the contract over HTTP

Gateway = Annotated[str | None, option_for(
    ClientSettings, "gateway_url", "--gateway",
    help="The contract's REST root, e.g. http://127.0.0.1:8787/rest/v1. Default: the local "
         "stack's (`control-room up`).")]
Token = Annotated[str | None, option_for(
    ClientSettings, "token", "--token",
    help="A developer's (or service) token (`control-room token create`). Default: the "
         "local stack's.")]
Workspace = Annotated[str | None, option_for(
    ClientSettings, "workspace", "--workspace",
    help="The workspace's slug or id. Default: the local stack's, or the only workspace "
         "the token sees.")]
RunId = Annotated[str, typer.Argument(help="The run's id (a UUID).", show_default=False)]

FINAL_STATES = frozenset({"succeeded", "failed", "cancelled"})


def cli_retry() -> RetryPolicy:
    """A CLI gives up on an unreachable gateway after seconds, not the worker's half minute."""
    from control_room.contract.client import RetryPolicy

    return RetryPolicy(attempts=3, initial=0.2, max_wait=1.0, total=5.0)


def load_local_stack(state_dir: Path | None) -> Stack | None:
    """The stack `control-room up` wrote under the state directory, if any."""
    try:
        return load_stack(load_settings(state_dir=state_dir).state_dir)
    except StackFileError as exc:
        raise BadInput(str(exc)) from None


@dataclass
class GatewayTarget:
    """A client of the gateway, and how to find the workspace meant."""

    client: ContractClient
    url: str
    workspace: str | None
    state_dir: Path | None
    local: Stack | None = field(default=None)
    _loaded: bool = field(default=False, init=False)

    def stack(self) -> Stack | None:
        if self.local is None and not self._loaded:
            self.local = load_local_stack(self.state_dir)
            self._loaded = True
        return self.local

    def workspace_id(self) -> str:
        """The id of `--workspace` (slug or id), else the stack's workspace when this is the
        stack's gateway, else the only workspace the token sees."""
        listed = self.client.list_workspaces()
        names = ", ".join(ws.slug for ws in listed) or "none"
        if self.workspace is not None:
            wanted = self.workspace.strip().lower()
            for ws in listed:
                if wanted in (str(ws.id).lower(), ws.slug.lower()):
                    return str(ws.id)
            raise BadInput(f"no workspace {self.workspace!r} visible to this token "
                           f"(workspaces: {names})")
        stack = self.stack()
        if stack is not None and stack.gateway_url.rstrip("/") == self.url:
            return stack.workspace_id
        if len(listed) == 1:
            return str(listed[0].id)
        raise BadInput(f"--workspace is required: this token sees workspaces {names}")


def check_http_url(url: str) -> None:
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise BadInput(f"--gateway must be an http(s) URL, not {url!r}")


@contextlib.contextmanager
def gateway(url: str | None, token: str | None, workspace: str | None,
            state_dir: Path | None, *, run_id: str | None = None) -> Iterator[GatewayTarget]:
    """A client of the configured gateway; its refusals reported as the CLI reports them
    (`run_id`: the run the command is about, named when the gateway does not find it)."""
    from control_room.contract.client import ContractClient

    stack = load_local_stack(state_dir) if not (url and token) else None
    url = url or (stack.gateway_url if stack else None)
    secret = token or (stack.token.get_secret_value() if stack else None)
    if not url or not secret:
        raise BadInput("no gateway configured: run `control-room up`, or pass --gateway and "
                       "--token (CONTROL_ROOM_GATEWAY_URL, CONTROL_ROOM_TOKEN)")
    check_http_url(url)
    with ContractClient(url, secret, retry=cli_retry()) as client:
        found = GatewayTarget(client, url.rstrip("/"), workspace, state_dir, local=stack)
        with contract_errors(found.url, run_id):
            yield found


@contextlib.contextmanager
def contract_errors(url: str, run_id: str | None) -> Iterator[None]:
    """The gateway's refusals as the CLI reports them: the caller's mistakes exit 2, the
    run's state or an unreachable gateway exit 1."""
    from control_room.contract.client import (
        Conflict,
        ContractError,
        Forbidden,
        InvalidArgument,
        NotFound,
        TransientError,
        Unauthorized,
    )

    try:
        yield
    except NotFound as exc:
        if run_id is None:
            raise BadInput(f"{exc.function or 'gateway'}: {exc.message} ({exc.code})") from None
        raise BadInput(f"run {run_id} not found (or not visible to this token)") from None
    except (InvalidArgument, Unauthorized, Forbidden) as exc:
        raise BadInput(f"{exc.function or 'gateway'}: {exc.message} ({exc.code})") from None
    except Conflict as exc:
        fail(f"{exc.function or 'gateway'}: {exc.message} (conflict)", EXIT_FAILED)
    except TransientError as exc:
        fail(f"cannot reach the gateway at {url} ({exc}); is it running (`control-room up`)?",
             EXIT_FAILED)
    except ContractError as exc:
        fail(str(exc), EXIT_FAILED)


def parse_run_id(text: str) -> str:
    try:
        return str(uuid.UUID(text.strip()))
    except ValueError:
        raise BadInput(f"malformed run id {text!r}: expected a UUID such as "
                       "0f8e5a7c-3b1d-4c2e-9a6f-1d2e3f4a5b6c") from None


def pairs(option: str, values: list[str] | None) -> dict[str, str]:
    """`--param k=v` options as a dict (a later repeat of a name wins)."""
    found: dict[str, str] = {}
    for value in values or []:
        name, sep, text = value.partition("=")
        if not sep or not name.strip():
            raise BadInput(f"{option} must be NAME=VALUE, not {value!r}")
        found[name.strip()] = text
    return found


# ------------------------------------------------------------------------------- display

STATE_STYLE = {"succeeded": "green", "failed": "red", "running": "cyan", "cancelled": "yellow",
               "queued": "blue", "waiting": "dim", "skipped": "dim"}


def when(value: datetime | None) -> str:
    return value.astimezone().strftime("%Y-%m-%d %H:%M:%S") if value else "-"


def state_text(state: str) -> Text:
    return Text(state, style=STATE_STYLE.get(state, ""))
