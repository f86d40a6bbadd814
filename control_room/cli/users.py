"""`control-room users`: the people who sign in to the web UI (docs/auth.md).

Users are principals with an email and an argon2id password hash, managed here over the
operator's own database login (as `token create` and `workspace` are); the gateway signs them
in at /auth/v1. A password is read from stdin (`--password-stdin`, one line) or prompted for
without echo, and is never printed, logged or sent to the database.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from control_room.cli.common import (
    BadInput,
    DatabaseUrl,
    JsonOut,
    StateDir,
    database,
    guard,
    new_app,
    out,
    workspace_by_ref,
)
from control_room.settings import load_settings

app = new_app("People who sign in to the web UI: local users with passwords.")

Email = Annotated[str, typer.Option("--email", help="The user's email (case does not matter).",
                                    show_default=False)]
PasswordStdin = Annotated[bool, typer.Option(
    "--password-stdin", help="Read the password from the first line of stdin (else: a "
    "prompt without echo).")]


def _password(from_stdin: bool) -> str:
    if from_stdin:
        line = sys.stdin.readline()
        password = line[:-1] if line.endswith("\n") else line
        password = password.removesuffix("\r")
        if not password:
            raise BadInput("--password-stdin: stdin held no password")
        return password
    value: str = typer.prompt("Password", hide_input=True, confirmation_prompt=True,
                              err=True)
    return value


def _role(role: str) -> str:
    if role not in ("viewer", "developer", "admin"):
        raise BadInput(f"--role must be viewer, developer or admin, not {role!r}")
    return role


@app.command("create")
def users_create(
    email: Email,
    name: Annotated[str | None, typer.Option(
        "--name", help="The name shown in the UI and the audit log (default: the part of "
        "the email before @).")] = None,
    password_stdin: PasswordStdin = False,
    workspace: Annotated[str | None, typer.Option(
        "--workspace", help="Slug or id of a workspace the user joins.")] = None,
    role: Annotated[str, typer.Option(
        "--role", help="The role in --workspace: viewer, developer or admin.")] = "viewer",
    database_url: DatabaseUrl = None,
    state_dir: StateDir = None,
    as_json: JsonOut = False,
) -> None:
    """Create a user who signs in with an email and a password (8 to 256 characters)."""
    from control_room.users import UserError, check_password, create_user, normalize_email

    with guard():
        settings = load_settings(database_url=database_url, state_dir=state_dir)
        try:
            address = normalize_email(email)
            _role(role)
            password = _password(password_stdin)
            check_password(password)
            with database(settings) as url:
                memberships = ([(workspace_by_ref(url, settings, workspace), role)]
                               if workspace else [])
                principal_id = create_user(url, address, password, name=name,
                                           memberships=memberships)
        except UserError as exc:
            raise BadInput(str(exc)) from None
        result = {"id": principal_id, "email": address,
                  "workspace": workspace, "role": role if workspace else None}
        if as_json:
            out.print_json(data=result)
        else:
            joined = f" ({role} in {workspace})" if workspace else ""
            out.print(f"created user {address} {principal_id}{joined}", markup=False)


@app.command("list")
def users_list(
    database_url: DatabaseUrl = None,
    state_dir: StateDir = None,
    as_json: JsonOut = False,
) -> None:
    """The local users, their workspaces and roles."""
    from control_room.users import list_users

    with guard():
        settings = load_settings(database_url=database_url, state_dir=state_dir)
        with database(settings) as url:
            users = list_users(url)
        if as_json:
            out.print_json(data=users)
            return
        if not users:
            out.print("no users (create one: control-room users create --email E)")
            return
        for user in users:
            state = "disabled" if user["disabled"] else "active"
            where = ", ".join(f"{m['slug']}:{m['role']}" for m in user["memberships"]) or "-"
            last = user["last_sign_in_at"] or "never"
            out.print(f"{user['email']}  {user['name']}  {state}  {where}  "
                      f"last sign-in {last}  {user['id']}", markup=False)


@app.command("set-password")
def users_set_password(
    email: Email,
    password_stdin: PasswordStdin = False,
    database_url: DatabaseUrl = None,
    state_dir: StateDir = None,
) -> None:
    """Set a user's password; every session of the user ends (sign in again)."""
    from control_room.users import UserError, check_password, normalize_email, set_password

    with guard():
        settings = load_settings(database_url=database_url, state_dir=state_dir)
        try:
            address = normalize_email(email)
            password = _password(password_stdin)
            check_password(password)
            with database(settings) as url:
                set_password(url, address, password)
        except UserError as exc:
            raise BadInput(str(exc)) from None
        out.print(f"password of {address} changed; its sessions ended", markup=False)


@app.command("disable")
def users_disable(
    email: Email,
    database_url: DatabaseUrl = None,
    state_dir: StateDir = None,
) -> None:
    """Disable a user: it can no longer sign in, and its sessions end now."""
    from control_room.users import UserError, disable_user, normalize_email

    with guard():
        settings = load_settings(database_url=database_url, state_dir=state_dir)
        try:
            address = normalize_email(email)
            with database(settings) as url:
                disable_user(url, address)
        except UserError as exc:
            raise BadInput(str(exc)) from None
        out.print(f"disabled {address}; its sessions ended", markup=False)


@app.command("add-to-workspace")
def users_add_to_workspace(
    email: Email,
    workspace: Annotated[str, typer.Option(
        "--workspace", help="Slug or id of the workspace.", show_default=False)],
    role: Annotated[str, typer.Option(
        "--role", help="viewer, developer or admin.", show_default=False)],
    database_url: DatabaseUrl = None,
    state_dir: StateDir = None,
) -> None:
    """Make a user a member of a workspace with a role (or change its role there)."""
    from control_room.users import UserError, add_to_workspace, normalize_email

    with guard():
        settings = load_settings(database_url=database_url, state_dir=state_dir)
        try:
            address = normalize_email(email)
            _role(role)
            with database(settings) as url:
                add_to_workspace(url, address, workspace_by_ref(url, settings, workspace), role)
        except UserError as exc:
            raise BadInput(str(exc)) from None
        out.print(f"{address} is {role} in {workspace}", markup=False)
