"""Local users of the installation: people who sign in with an email and a password
(docs/auth.md). `control-room users` and the tests create and manage them here, over the
operator's own database login; the gateway signs them in (`control_room.gateway.signin`).

Passwords are hashed here with argon2id (argon2-cffi, its RFC 9106 low-memory profile) and
never reach the database, a log or an error text: the database keeps the hash only
(`ops_private.auth_users`, readable by no API role).
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Iterable
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

MIN_PASSWORD = 8
MAX_PASSWORD = 256
ROLES = ("viewer", "developer", "admin")


class UserError(ValueError):
    """Bad input for a user operation (a short password, a duplicate email, an unknown
    workspace...): the message says what and is safe to show (it never holds a password)."""


@functools.lru_cache(maxsize=1)
def hasher() -> PasswordHasher:
    return PasswordHasher()


@functools.lru_cache(maxsize=1)
def dummy_hash() -> str:
    """A hash of a random password: verified against when the email is unknown, so that an
    unknown email costs the same time as a wrong password."""
    return hasher().hash(uuid.uuid4().hex)


def check_password(password: str) -> None:
    if not isinstance(password, str) or not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise UserError(f"a password must be {MIN_PASSWORD} to {MAX_PASSWORD} characters")
    if "\x00" in password:
        raise UserError("a password may not contain a NUL character")


def hash_password(password: str) -> str:
    """The argon2id hash of a valid password (`UserError` for an invalid one)."""
    check_password(password)
    return hasher().hash(password)


def verify_password(stored_hash: str | None, password: str) -> tuple[bool, str | None]:
    """Whether `password` matches `stored_hash` (None: verify against the dummy hash and
    answer False), and a new hash when the stored one's parameters are outdated. CPU-bound
    (tens of milliseconds): call it in a worker thread from async code."""
    target = stored_hash or dummy_hash()
    try:
        hasher().verify(target, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False, None
    if stored_hash is None:
        return False, None
    rehash = hasher().hash(password) if hasher().check_needs_rehash(stored_hash) else None
    return True, rehash


def normalize_email(email: str) -> str:
    value = email.strip().lower() if isinstance(email, str) else ""
    local, at, host = value.partition("@")
    if not at or not local or not host or "@" in host or any(c.isspace() for c in value) \
            or not 3 <= len(value) <= 320:
        raise UserError(f"not an email address: {email[:100]!r}" if isinstance(email, str)
                        else "an email address is required")
    return value


def _connect(conninfo: str) -> Any:
    from control_room.db.store import connect

    return connect(conninfo)


def _call(conn: Any, fn: str, args: dict[str, Any], *, schema: str = "ops_private") -> Any:
    from control_room.db.store import ContractError, call

    try:
        return call(conn, fn, args, schema=schema)
    except ContractError as exc:
        raise UserError(exc.message) from None


def _membership_args(memberships: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    result = []
    for workspace_id, role in memberships:
        if role not in ROLES:
            raise UserError(f"role must be viewer, developer or admin, not {role!r}")
        try:
            result.append((str(uuid.UUID(str(workspace_id))), role))
        except ValueError:
            raise UserError(f"not a workspace id: {str(workspace_id)[:100]!r}") from None
    return result


def _add_members(conn: Any, principal_id: str, name: str,
                 memberships: list[tuple[str, str]]) -> None:
    for workspace_id, role in memberships:
        if conn.execute("select 1 from ops.workspaces where id = %s",
                        (workspace_id,)).fetchone() is None:
            raise UserError(f"no workspace {workspace_id}")
        _call(conn, "add_member", {"workspace_id": workspace_id, "principal_id": principal_id,
                                   "role": role, "name": name}, schema="ops")


def create_user(conninfo: str, email: str, password: str, name: str | None = None,
                memberships: Iterable[tuple[str, str]] = ()) -> str:
    """Create a local user (a principal of kind user with credentials) and add it to
    workspaces with roles; return its principal id. All or nothing."""
    address = normalize_email(email)
    password_hash = hash_password(password)
    label = (name or address.partition("@")[0]).strip()
    if not 1 <= len(label) <= 200:
        raise UserError("a name must be 1 to 200 characters")
    members = _membership_args(memberships)
    with _connect(conninfo) as conn, conn.transaction():
        principal_id = str(_call(conn, "auth_create_user", {
            "p_email": address, "p_name": label, "p_password_hash": password_hash}))
        _add_members(conn, principal_id, label, members)
    return principal_id


def user_id(conninfo: str, email: str) -> str:
    """The principal id of the user with `email` (`UserError` when there is none)."""
    address = normalize_email(email)
    with _connect(conninfo) as conn:
        found = _call(conn, "auth_user_id", {"p_email": address})
    if found is None:
        raise UserError(f"no user with email {address}")
    return str(found)


def set_password(conninfo: str, email: str, password: str) -> str:
    """Replace a user's password; every session of the user ends. Returns its id."""
    address = normalize_email(email)
    password_hash = hash_password(password)
    with _connect(conninfo) as conn, conn.transaction():
        return str(_call(conn, "auth_set_password",
                         {"p_email": address, "p_password_hash": password_hash}))


def disable_user(conninfo: str, email: str) -> str:
    """Disable a user: no sign-in, no refresh, and its sessions end now. Returns its id."""
    address = normalize_email(email)
    with _connect(conninfo) as conn, conn.transaction():
        return str(_call(conn, "auth_disable_user", {"p_email": address}))


def add_to_workspace(conninfo: str, email: str, workspace_id: str, role: str) -> str:
    """Make the user a member of a workspace with `role` (or change its role there)."""
    address = normalize_email(email)
    [(workspace, checked_role)] = _membership_args([(workspace_id, role)])
    with _connect(conninfo) as conn, conn.transaction():
        found = _call(conn, "auth_user_id", {"p_email": address})
        if found is None:
            raise UserError(f"no user with email {address}")
        name = conn.execute("select name from ops.principals where id = %s",
                            (found,)).fetchone()[0]
        _add_members(conn, str(found), name, [(workspace, checked_role)])
    return str(found)


def list_users(conninfo: str) -> list[dict[str, Any]]:
    """Every local user (id, email, name, disabled, created_at, last_sign_in_at,
    memberships), by email."""
    with _connect(conninfo) as conn:
        users: list[dict[str, Any]] = _call(conn, "auth_list_users", {})
    return users
