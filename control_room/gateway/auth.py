"""Who is calling: JWTs verified as PostgREST verifies them, and tokens minted for principals.

A request without a token is `anon`. A token must be HS256-signed with the configured secret
(the Supabase project's JWT secret in production), unexpired when it carries `exp`, and may
only ask for the API roles `anon`, `authenticated` or `service_role`.
"""

from __future__ import annotations

import secrets
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt

from control_room.gateway.errors import GatewayError
from control_room.secretfile import ensure_private_dir, read_secret_file, write_secret_file
from control_room.settings import Settings

API_ROLES = frozenset({"anon", "authenticated", "service_role"})
ISSUER = "control-room"


@dataclass(frozen=True)
class Caller:
    """The database role a request runs as, and the claims PostgREST would set."""

    role: str
    sub: str | None = None
    claims: dict[str, Any] = field(default_factory=dict)


ANON = Caller("anon")


def authenticate(authorization: str | None, apikey: str | None, secret: str) -> Caller:
    """The caller of a request, from `Authorization: Bearer <jwt>` (or a JWT `apikey`)."""
    token: str | None = None
    if authorization:
        scheme, _, value = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise GatewayError(401, "PGRST301", "Authorization must be 'Bearer <JWT>'",
                               hint="unauthorized", bearer_error="invalid_request")
        token = value.strip()
    elif apikey and apikey.count(".") == 2:
        token = apikey.strip()
    if token is None:
        return ANON
    try:
        claims: dict[str, Any] = jwt.decode(
            token, secret, algorithms=["HS256"],
            options={"verify_aud": False, "require": []}, leeway=0,
        )
    except jwt.ExpiredSignatureError as exc:
        raise GatewayError(401, "PGRST303", "JWT expired", hint="unauthorized",
                           bearer_error="invalid_token") from exc
    except jwt.InvalidTokenError as exc:
        raise GatewayError(401, "PGRST301", f"JWT invalid: {exc}", hint="unauthorized",
                           bearer_error="invalid_token") from exc
    role = claims.get("role", "anon")
    if not isinstance(role, str) or role not in API_ROLES:
        raise GatewayError(
            403, "42501", f"permission denied to set role {role!r}",
            details="a token may ask for the roles anon, authenticated or service_role",
            hint="forbidden",
        )
    sub = claims.get("sub")
    if sub is not None:
        try:
            uuid.UUID(str(sub))
        except ValueError as exc:
            raise GatewayError(401, "PGRST301", "JWT invalid: sub must be a UUID",
                               hint="unauthorized", bearer_error="invalid_token") from exc
    return Caller(role=role, sub=str(sub) if sub is not None else None, claims=claims)


class TokenCache:
    """Verified tokens, kept until they expire so a busy executor's token is checked once.

    Only successes are kept (a refused token is verified again each time), the expiry is
    checked on every use, and the cache is bounded.
    """

    def __init__(self, secret: str, size: int = 4096) -> None:
        self._secret = secret
        self._size = size
        self._callers: dict[str, tuple[Caller, float | None]] = {}

    def authenticate(self, authorization: str | None, apikey: str | None) -> Caller:
        key = f"{authorization}\n{apikey}"
        hit = self._callers.get(key)
        if hit is not None and (hit[1] is None or hit[1] > time.time()):
            return hit[0]
        caller = authenticate(authorization, apikey, self._secret)
        if caller is not ANON:
            if len(self._callers) >= self._size:
                self._callers.clear()
            exp = caller.claims.get("exp")
            self._callers[key] = (caller, float(exp) if isinstance(exp, int | float) else None)
        return caller


def mint_token(secret: str, *, role: str, sub: str | None = None, ttl_seconds: int | None = None,
               name: str | None = None, extra: dict[str, Any] | None = None,
               workspaces: Sequence[str] | None = None) -> str:
    """An HS256 token as Supabase issues them.

    `role` picks the database role, `sub` the principal (auth.uid()). `workspaces` pins the
    token (claim `workspaces`, a list of workspace ids): `claim_phase` claims only inside them,
    and refuses an executor whose token carries no pins.
    """
    if role not in API_ROLES:
        raise ValueError(f"role must be one of {', '.join(sorted(API_ROLES))}")
    now = int(time.time())
    claims: dict[str, Any] = {"role": role, "iat": now, "iss": ISSUER}
    if role == "authenticated":
        claims["aud"] = "authenticated"
    if sub is not None:
        claims["sub"] = sub
    if name:
        claims["name"] = name
    if workspaces is not None:
        if isinstance(workspaces, str):
            raise ValueError("workspaces must be a list of workspace ids, not one string")
        try:
            claims["workspaces"] = sorted({str(uuid.UUID(str(ws))) for ws in workspaces})
        except ValueError as exc:
            raise ValueError(f"workspaces must be workspace ids (UUIDs): {exc}") from None
    if ttl_seconds is not None:
        claims["exp"] = now + ttl_seconds
    claims.update(extra or {})
    return jwt.encode(claims, secret, algorithm="HS256")


def signing_secret(settings: Settings) -> str:
    """The secret tokens are signed and verified with: `CONTROL_ROOM_JWT_SECRET` (the
    Supabase project's in production), else the one kept in the state directory."""
    if settings.jwt_secret is not None:
        return settings.jwt_secret.get_secret_value()
    return local_secret(settings.state_dir)


LOCAL_SECRET_FILE = "jwt_secret"


def local_secret(state_dir: Path) -> str:
    """The secret kept in `<state_dir>/jwt_secret`, generated on first use: created 0600
    with O_EXCL in the 0700 state directory (control_room/secretfile.py). An existing one
    that is a symlink, another user's, or readable by others is refused (`PermissionError`,
    naming the fix), never used nor silently repaired."""
    ensure_private_dir(state_dir)
    path = state_dir / LOCAL_SECRET_FILE
    for _ in range(2):
        missing = False
        try:
            value = read_secret_file(path).strip()
        except FileNotFoundError:
            value, missing = "", True
        if value:
            return value
        value = secrets.token_urlsafe(48)
        try:
            # an empty file (a crash while writing) is replaced; a missing one is created
            # exclusively, so that two processes starting at once agree on the secret (decided
            # by what the read saw: another process may create it right after)
            write_secret_file(path, value + "\n", replace=not missing)
        except FileExistsError:
            continue
        return value
    raise PermissionError(f"{path} could not be created")
