"""`control-room datasets`: the data catalog from the terminal (docs/catalog.md).

    control-room datasets list [--layer gold] [--state blocked]
    control-room datasets show silver.orders          # schema versions, newest first
    control-room datasets unblock silver.orders --accept | --reject [--note TEXT]
"""

from __future__ import annotations

from typing import Annotated, Any, cast

import typer
from rich.table import Table

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
    state_text,
    when,
)
from control_room.cli.display import dump

app = new_app("The data catalog: datasets, schema versions, unblocking.")

LAYERS = ("raw", "bronze", "silver", "gold", "other")
SCHEMA_STATES = ("active", "blocked", "accepted")
Name = Annotated[str, typer.Argument(help="The dataset's name, e.g. silver.orders.",
                                     show_default=False)]


@app.command("list")
def list_command(
    layer: Annotated[str | None, typer.Option(
        "--layer", help="Only this layer: " + ", ".join(LAYERS) + ".")] = None,
    state: Annotated[str | None, typer.Option(
        "--state", help="Only this schema state: " + ", ".join(SCHEMA_STATES) + ".")] = None,
    workspace: Workspace = None,
    gateway_url: Gateway = None,
    token: Token = None,
    state_dir: StateDir = None,
    as_json: JsonOut = False,
) -> None:
    """The workspace's datasets: layer, schema state and version, last write."""
    with guard():
        if layer is not None and layer not in LAYERS:
            raise BadInput(f"--layer must be one of {', '.join(LAYERS)}, not {layer!r}")
        if state is not None and state not in SCHEMA_STATES:
            raise BadInput(f"--state must be one of {', '.join(SCHEMA_STATES)}, not {state!r}")
        with gateway(gateway_url, token, workspace, state_dir) as target:
            rows = target.client.list_datasets(target.workspace_id(), layer=cast(Any, layer),
                                               schema_state=cast(Any, state), limit=1000)
        if as_json:
            out.print_json(data=dump(rows))
            return
        if not rows:
            out.print("No datasets.")
            return
        table = Table("dataset", "layer", "schema", "version", "rows", "last written",
                      "location")
        for d in rows:
            table.add_row(d.name, d.layer, state_text(d.schema_state), str(d.schema_version),
                          f"{d.last_rows:,}" if d.last_rows is not None else "-",
                          when(d.last_written_at), d.location)
        out.print(table)


@app.command("show")
def show_command(
    name: Name,
    workspace: Workspace = None,
    gateway_url: Gateway = None,
    token: Token = None,
    state_dir: StateDir = None,
    as_json: JsonOut = False,
) -> None:
    """One dataset and its schema versions (a refused BREAKING change included)."""
    with guard():
        with gateway(gateway_url, token, workspace, state_dir) as target:
            dataset = target.client.get_dataset(target.workspace_id(), name)
        if as_json:
            out.print_json(data=dump(dataset))
            return
        out.print(f"{dataset.name} ({dataset.layer}, {dataset.format}) at {dataset.location}",
                  markup=False)
        out.print(f"schema: {dataset.schema_state}, version {dataset.schema_version}",
                  markup=False)
        if dataset.blocked_change:
            changes = dataset.blocked_change.get("changes") or []
            out.print("blocked by: " + "; ".join(
                f"{c.get('column')} {c.get('change')} ({c.get('old_type')} -> "
                f"{c.get('new_type')})" for c in changes), markup=False)
        table = Table("version", "change", "applied", "columns", "run", "recorded")
        for v in dataset.versions:
            schema = v.schema_ or []
            columns = ", ".join(str(c.get("name")) for c in schema) if isinstance(
                schema, list) else "-"
            table.add_row(str(v.version), v.change, "yes" if v.applied else "no", columns,
                          str(v.run_id or "-")[:8], when(v.recorded_at))
        out.print(table)


@app.command("unblock")
def unblock_command(
    name: Name,
    accept: Annotated[bool, typer.Option(
        "--accept", help="Accept the breaking change: the next write applies it.")] = False,
    reject: Annotated[bool, typer.Option(
        "--reject", help="Keep the schema: fix the source, then re-run.")] = False,
    note: Annotated[str | None, typer.Option("--note", help="Why, for the audit log.")
                    ] = None,
    workspace: Workspace = None,
    gateway_url: Gateway = None,
    token: Token = None,
    state_dir: StateDir = None,
    as_json: JsonOut = False,
) -> None:
    """Resolve a BLOCKED dataset (workspace admins only)."""
    with guard():
        if accept == reject:
            raise BadInput("give exactly one of --accept or --reject")
        with gateway(gateway_url, token, workspace, state_dir) as target:
            dataset = target.client.unblock_dataset(
                target.workspace_id(), name, "accept" if accept else "reject", note=note)
        if as_json:
            out.print_json(data=dump(dataset))
        else:
            out.print(f"{dataset.name}: schema {dataset.schema_state} (version "
                      f"{dataset.schema_version})", markup=False)
