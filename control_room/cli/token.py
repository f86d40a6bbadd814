"""`control-room token`: principals and their signed API tokens."""

from __future__ import annotations

import re
from typing import Annotated, Any

import typer

from control_room.cli.common import (
    BadInput,
    DatabaseUrl,
    JsonOut,
    StateDir,
    admin_call,
    database,
    err,
    guard,
    new_app,
    out,
    workspace_by_ref,
)
from control_room.settings import load_settings

app = new_app("API tokens for principals (executors, users, CI).")

_TTL = re.compile(r"^([0-9]+)([smhd]?)$")
_TTL_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


@app.command("create")
def token_create(
    workspace: Annotated[list[str] | None, typer.Option(
        "--workspace", help="Slug or id of the workspace the principal joins (and, for an "
        "executor, the token is pinned to). Repeat it for an executor serving several; the "
        "first owns the principal.")] = None,
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

    with guard():
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
            refs = list(dict.fromkeys(workspace or ()))
            if not refs:
                raise BadInput("--workspace is required (or --service for a service token)")
            if len(refs) > 1 and role != "executor":
                raise BadInput("only an executor token serves several workspaces: give one "
                               "--workspace for a viewer, developer or admin")
            with database(settings) as url:
                ws_ids = [workspace_by_ref(url, settings, ref) for ref in refs]
                label = name or f"{role}@{refs[0]}"
                # the principal is owned by (the first) workspace: its admins may revoke it
                principal = admin_call(url, settings, "create_principal", {
                    "name": label, "kind": "executor" if role == "executor" else "user",
                    "workspace_id": ws_ids[0]})
                for ws_id in ws_ids:
                    admin_call(url, settings, "add_member", {
                        "workspace_id": ws_id, "principal_id": principal["id"], "role": role,
                        "name": label})
            # an executor's token is pinned to its workspaces: it claims nowhere else, ever
            token = mint_token(secret, role="authenticated", sub=principal["id"],
                               ttl_seconds=seconds, name=label,
                               workspaces=ws_ids if role == "executor" else None)
            result = {"token": token, "principal_id": principal["id"],
                      "workspace_id": ws_ids[0], "role": role, "name": label}
            if role == "executor":
                result["workspaces"] = ws_ids
        if as_json:
            out.print_json(data=result)
        else:
            if "principal_id" in result:
                pinned = " (pinned)" if role == "executor" else ""
                err.print(f"principal {result['principal_id']} is {role} in "
                          f"{', '.join(refs)}{pinned}; token valid {ttl}", markup=False)
            out.print(token, markup=False, soft_wrap=True)


@app.command("revoke")
def token_revoke(
    principal_id: Annotated[str, typer.Argument(help="The principal whose tokens stop working.")],
    database_url: DatabaseUrl = None,
    state_dir: StateDir = None,
) -> None:
    """Revoke a principal: every token it holds is refused from now on."""
    with guard():
        settings = load_settings(database_url=database_url, state_dir=state_dir)
        with database(settings) as url:
            row = admin_call(url, settings, "revoke_principal", {"principal_id": principal_id})
        out.print(f"revoked {row['id']} ({row['name']}) at {row['revoked_at']}")
