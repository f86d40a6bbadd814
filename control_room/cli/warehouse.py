"""`control-room warehouse ...`: the Postgres warehouse that gold is published to (BI tools
connect to it; docs/odoo.md "Publication").

`grant-reader ROLE` gives a role read-only access to the gold schema, for the tables there
now and those a later publication creates. It reaches the warehouse as the pipeline does:
through the workspace's connection (default `warehouse`; its DSN from the connection's
config, its password resolved here from the connection's secret reference under this
process's CONTROL_ROOM_SECRET_ALLOW, as a worker resolves it), or `--database-url` given
directly. Run it as the role that publishes (the connection's user): the default privileges
it sets are for tables that role creates.
"""

from __future__ import annotations

import os
import re
from typing import Annotated, Any

import typer

from control_room.cli.common import (
    BadInput,
    Gateway,
    JsonOut,
    StateDir,
    Token,
    Workspace,
    gateway,
    guard,
    new_app,
    out,
)

__all__ = ["grant_reader_command"]

app = new_app("The warehouse gold is published to (BI access).")

_ROLE = re.compile(r"^[a-z_][a-z0-9_$-]{0,62}$")


def _connection_dsn(name: str, gateway_url: str | None, token: str | None,
                    workspace: str | None, state_dir: Any) -> tuple[str, dict[str, Any]]:
    """The DSN and extra connect arguments of the workspace connection `name` (its secret
    references resolved here, under this process's policy)."""
    from executor.secrets import POLICY_VARIABLE, SecretError, SecretPolicy, resolve_secrets

    with gateway(gateway_url, token, workspace, state_dir) as target:
        found = target.client.get_connection(target.workspace_id(), name)
    if found.type != "postgres":
        raise BadInput(f"connection {name!r} is of type {found.type}, not postgres")
    dsn = found.config.get("dsn")
    if not isinstance(dsn, str) or not dsn:
        raise BadInput(f"connection {name!r} has no config.dsn")
    try:
        policy = SecretPolicy.parse(os.environ.get(POLICY_VARIABLE))
        values = resolve_secrets(found.secrets, policy)
    except ValueError as exc:
        raise BadInput(str(exc)) from None
    except SecretError as exc:
        raise BadInput(f"connection {name!r}: {exc.message}; this command resolves "
                       f"references under its own {POLICY_VARIABLE}, as a worker does"
                       ) from None
    extra: dict[str, Any] = {}
    if values.get("password"):
        extra["password"] = values["password"]
    return dsn, extra


@app.command("grant-reader")
def grant_reader_command(
    role: Annotated[str, typer.Argument(help="The role to give read access (a Postgres role "
                                             "name, lower case).", show_default=False)],
    schema: Annotated[str, typer.Option("--schema", help="The published schema.")] = "gold",
    create: Annotated[bool, typer.Option(
        "--create", help="Create the role when it is missing (NOLOGIN: grant it to the BI "
                         "tools' login roles with `GRANT role TO user`).")] = False,
    connection: Annotated[str, typer.Option(
        "--connection", help="The workspace connection of the warehouse (its password "
                             "resolved from its secret reference here).")] = "warehouse",
    database_url: Annotated[str | None, typer.Option(
        "--database-url", help="The warehouse's PostgreSQL URL, instead of a workspace "
                               "connection (not the control plane's database).")] = None,
    workspace: Workspace = None,
    gateway_url: Gateway = None,
    token: Token = None,
    state_dir: StateDir = None,
    as_json: JsonOut = False,
) -> None:
    """Give ROLE read-only access to the gold schema: USAGE on it, SELECT on its tables and,
    by default privileges, on the tables publications create later; no write and no other
    schema. Idempotent. Publication never drops the tables, so the grants last (and views
    built on gold keep working)."""
    import psycopg

    from pipelines.odoo.publish import grant_reader

    with guard():
        if not _ROLE.match(role):
            raise BadInput(f"role must be a lower-case Postgres role name, got {role!r}")
        if not _ROLE.match(schema):
            raise BadInput(f"--schema must be a lower-case schema name, got {schema!r}")
        extra: dict[str, Any] = {}
        if database_url is not None:
            dsn = database_url
            source = "--database-url"
        else:
            dsn, extra = _connection_dsn(connection, gateway_url, token, workspace, state_dir)
            source = f"connection {connection}"
        try:
            with psycopg.connect(dsn, autocommit=True, connect_timeout=10, **extra) as pg:
                done = grant_reader(pg, schema, role, create=create)
        except LookupError as exc:
            raise BadInput(str(exc)) from None
        except psycopg.errors.InsufficientPrivilege as exc:
            raise BadInput(f"the warehouse refused ({source}): {exc.diag.message_primary}; "
                           "run it as the schema's owner (the publishing role)") from None
    if as_json:
        out.print_json(data={**done, "via": source})
        return
    out.print(f"role {role}{' (created)' if done['created'] else ''} may read schema "
              f"{schema}: its tables now, and those {done['default_privileges_for']} creates "
              f"later ({source})", markup=False)
