"""`control-room workspace`: tenants, with the operator's own database login."""

from __future__ import annotations

import re
from typing import Annotated

import typer
from rich.table import Table

from control_room.cli.common import (
    BadInput,
    DatabaseUrl,
    JsonOut,
    StateDir,
    admin_call,
    database,
    guard,
    new_app,
    out,
)
from control_room.settings import load_settings

app = new_app("Workspaces: tenants with an env (dev, stage, prod).")


@app.command("create")
def workspace_create(
    name: Annotated[str, typer.Argument(help="Display name; the slug is derived from it.")],
    env: Annotated[str, typer.Option("--env", help="dev, stage or prod.")] = "dev",
    slug: Annotated[str | None, typer.Option("--slug", help="Default: from the name.")] = None,
    database_url: DatabaseUrl = None,
    state_dir: StateDir = None,
    as_json: JsonOut = False,
) -> None:
    """Create a workspace."""
    with guard():
        settings = load_settings(database_url=database_url, state_dir=state_dir)
        if env not in ("dev", "stage", "prod"):
            raise BadInput(f"--env must be dev, stage or prod, not {env!r}")
        slug = slug or re.sub(r"[^a-z0-9_-]+", "-", name.lower()).strip("-")[:63]
        with database(settings) as url:
            ws = admin_call(url, settings, "create_workspace",
                            {"slug": slug, "name": name, "env": env})
        if as_json:
            out.print_json(data=ws)
        else:
            out.print(f"workspace {ws['slug']} ({ws['env']}): {ws['id']}")


@app.command("list")
def workspace_list(database_url: DatabaseUrl = None, state_dir: StateDir = None,
                   as_json: JsonOut = False) -> None:
    """List workspaces."""
    with guard():
        settings = load_settings(database_url=database_url, state_dir=state_dir)
        with database(settings) as url:
            rows = admin_call(url, settings, "list_workspaces", {})
        if as_json:
            out.print_json(data=rows)
            return
        table = Table("slug", "env", "id", "name")
        for ws in rows:
            table.add_row(ws["slug"], ws["env"], ws["id"], ws["name"])
        out.print(table)
