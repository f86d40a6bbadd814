"""`control-room datasets`: the data catalog from the terminal (docs/catalog.md).

    control-room datasets list [--layer gold] [--state blocked]
    control-room datasets show silver.orders          # schema versions, newest first
    control-room datasets unblock silver.orders --accept | --reject [--note TEXT]
"""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from control_room.cli import BadInput, JsonOut, StateDir, _guard, app, out
from control_room.cli_runs import Gateway, Token, Workspace, _gateway, _state, _when

datasets_app = typer.Typer(help="The data catalog: datasets, schema versions, unblocking.",
                           no_args_is_help=True)
app.add_typer(datasets_app, name="datasets")

LAYERS = ("raw", "bronze", "silver", "gold", "other")
SCHEMA_STATES = ("active", "blocked", "accepted")
Name = Annotated[str, typer.Argument(help="The dataset's name, e.g. silver.orders.",
                                     show_default=False)]


@datasets_app.command("list")
def list_command(
    layer: Annotated[str | None, typer.Option(
        "--layer", help="Only this layer: " + ", ".join(LAYERS) + ".")] = None,
    state: Annotated[str | None, typer.Option(
        "--state", help="Only this schema state: " + ", ".join(SCHEMA_STATES) + ".")] = None,
    workspace: Workspace = None,
    gateway: Gateway = None,
    token: Token = None,
    state_dir: StateDir = None,
    as_json: JsonOut = False,
) -> None:
    """The workspace's datasets: layer, schema state and version, last write."""
    with _guard():
        if layer is not None and layer not in LAYERS:
            raise BadInput(f"--layer must be one of {', '.join(LAYERS)}, not {layer!r}")
        if state is not None and state not in SCHEMA_STATES:
            raise BadInput(f"--state must be one of {', '.join(SCHEMA_STATES)}, not {state!r}")
        with _gateway(gateway, token, workspace, state_dir) as target:
            args: dict[str, Any] = {"workspace_id": target.workspace_id(), "limit": 1000}
            if layer is not None:
                args["layer"] = layer
            if state is not None:
                args["schema_state"] = state
            rows: list[dict[str, Any]] = target.client.call("list_datasets", args)
        if as_json:
            out.print_json(data=rows)
            return
        if not rows:
            out.print("No datasets.")
            return
        table = Table("dataset", "layer", "schema", "version", "rows", "last written",
                      "location")
        for d in rows:
            table.add_row(d["name"], d["layer"], _state(d["schema_state"]),
                          str(d["schema_version"]),
                          f"{d['last_rows']:,}" if d.get("last_rows") is not None else "-",
                          _when_text(d.get("last_written_at")), d["location"])
        out.print(table)


@datasets_app.command("show")
def show_command(
    name: Name,
    workspace: Workspace = None,
    gateway: Gateway = None,
    token: Token = None,
    state_dir: StateDir = None,
    as_json: JsonOut = False,
) -> None:
    """One dataset and its schema versions (a refused BREAKING change included)."""
    with _guard():
        with _gateway(gateway, token, workspace, state_dir) as target:
            dataset: dict[str, Any] = target.client.call(
                "get_dataset", {"workspace_id": target.workspace_id(), "name": name})
        if as_json:
            out.print_json(data=dataset)
            return
        out.print(f"{dataset['name']} ({dataset['layer']}, {dataset['format']}) at "
                  f"{dataset['location']}", markup=False)
        out.print(f"schema: {dataset['schema_state']}, version {dataset['schema_version']}",
                  markup=False)
        if dataset.get("blocked_change"):
            changes = dataset["blocked_change"].get("changes") or []
            out.print("blocked by: " + "; ".join(
                f"{c.get('column')} {c.get('change')} ({c.get('old_type')} -> "
                f"{c.get('new_type')})" for c in changes), markup=False)
        table = Table("version", "change", "applied", "columns", "run", "recorded")
        for v in dataset.get("versions") or []:
            schema = v.get("schema") or []
            columns = ", ".join(str(c.get("name")) for c in schema) if isinstance(
                schema, list) else "-"
            table.add_row(str(v["version"]), v["change"], "yes" if v["applied"] else "no",
                          columns, str(v.get("run_id") or "-")[:8],
                          _when_text(v.get("recorded_at")))
        out.print(table)


@datasets_app.command("unblock")
def unblock_command(
    name: Name,
    accept: Annotated[bool, typer.Option(
        "--accept", help="Accept the breaking change: the next write applies it.")] = False,
    reject: Annotated[bool, typer.Option(
        "--reject", help="Keep the schema: fix the source, then re-run.")] = False,
    note: Annotated[str | None, typer.Option("--note", help="Why, for the audit log.")
                    ] = None,
    workspace: Workspace = None,
    gateway: Gateway = None,
    token: Token = None,
    state_dir: StateDir = None,
    as_json: JsonOut = False,
) -> None:
    """Resolve a BLOCKED dataset (workspace admins only)."""
    with _guard():
        if accept == reject:
            raise BadInput("give exactly one of --accept or --reject")
        with _gateway(gateway, token, workspace, state_dir) as target:
            args: dict[str, Any] = {"workspace_id": target.workspace_id(), "name": name,
                                    "resolution": "accept" if accept else "reject"}
            if note is not None:
                args["note"] = note
            dataset: dict[str, Any] = target.client.call("unblock_dataset", args)
        if as_json:
            out.print_json(data=dataset)
        else:
            out.print(f"{dataset['name']}: schema {dataset['schema_state']} (version "
                      f"{dataset['schema_version']})", markup=False)


def _when_text(value: Any) -> str:
    from datetime import datetime

    if value is None:
        return "-"
    return _when(datetime.fromisoformat(str(value)))
