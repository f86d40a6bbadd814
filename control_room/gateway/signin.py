"""Sign-in of local users, served by the gateway in Supabase Auth's (GoTrue's) shape
(docs/auth.md), so that the same front-end code signs in here and against a Supabase project:

- `POST /auth/v1/token?grant_type=password` `{"email", "password"}` and
  `POST /auth/v1/token?grant_type=refresh_token` `{"refresh_token"}`: a session;
- `GET /auth/v1/user` (Bearer): the user;
- `POST /auth/v1/logout?scope=local|global|others` (Bearer): 204.

The access token is an HS256 JWT signed with the gateway's secret, as `/rest/v1` verifies it,
carrying the session's id (`session_id`): `ops_private.pre_request()` refuses the tokens of an
ended session on every call. Refresh tokens are random, stored as SHA-256 hashes, used once.
The database (ops_private.auth_*, called as service_role) keeps the users, sessions, refresh
tokens and failed sign-ins (the rate limits hold across gateways) and writes the audit log.
Passwords are verified here, in a worker thread (argon2 costs tens of milliseconds of CPU), and
go nowhere else: not to the database, a log, an audit row or an error text.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import anyio
import jwt
import psycopg
from psycopg_pool import PoolTimeout
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from control_room.contract.errors import ContractError
from control_room.db.store import call_as
from control_room.gateway.auth import ISSUER, authenticate
from control_room.gateway.errors import GatewayError
from control_room.users import MAX_PASSWORD, verify_password

if TYPE_CHECKING:
    from control_room.gateway.app import Gateway

log = logging.getLogger("control_room.gateway.signin")

REFRESH_REUSE_GRACE_SECONDS = 10
"""A refresh token used again within this many seconds of its first use (two tabs refreshing
at once) gets another successor; later, its reuse revokes the session."""
MAX_BODY_BYTES = 16 * 1024
HASHING_THREADS = 4
"""Password verifications at once per gateway (each takes 64 MiB for a moment)."""
_GRANTS = ("password", "refresh_token")
_SCOPES = ("local", "global", "others")


class AuthError(Exception):
    """An /auth/v1 refusal, answered in GoTrue's shape `{"code", "error_code", "msg"}`."""

    def __init__(self, status: int, error_code: str, msg: str, *,
                 retry_after: int | None = None) -> None:
        super().__init__(msg)
        self.status = status
        self.error_code = error_code
        self.msg = msg
        self.retry_after = retry_after

    def response(self) -> JSONResponse:
        headers = {}
        if self.retry_after is not None:
            headers["Retry-After"] = str(self.retry_after)
        if self.status == 401:
            headers["WWW-Authenticate"] = 'Bearer error="invalid_token"'
        return JSONResponse({"code": self.status, "error_code": self.error_code, "msg": self.msg},
                            status_code=self.status, headers=headers)


INVALID_CREDENTIALS = ("invalid_credentials", "Invalid login credentials")


def _hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class SignIn:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.settings = gateway.settings
        self._limiter: anyio.CapacityLimiter | None = None

    # -- plumbing --------------------------------------------------------------------------

    async def _guarded(self, request: Request,
                       handler: Callable[[Request], Awaitable[Response]]) -> Response:
        try:
            return await handler(request)
        except AuthError as exc:
            return exc.response()
        except GatewayError as exc:     # the test clock header, malformed
            return AuthError(exc.status, "validation_failed", exc.message).response()
        except (PoolTimeout, psycopg.OperationalError) as exc:
            log.warning("database unavailable serving %s: %s", request.url.path, exc)
            return AuthError(503, "unexpected_failure", "the database is unavailable").response()
        except Exception:
            log.exception("unexpected error serving %s", request.url.path)
            return AuthError(500, "unexpected_failure",
                             "internal error; see the gateway's log").response()

    def _db(self, fn: str, args: dict[str, Any], now: Any) -> Any:
        with self.gateway.pool.connection() as conn:
            return call_as(conn, fn, args, role="service_role", now=now, schema="ops_private")

    async def db(self, request: Request, fn: str, args: dict[str, Any]) -> Any:
        now = self.gateway._clock(request)
        return await anyio.to_thread.run_sync(self._db, fn, args, now)

    async def _verify(self, stored_hash: str | None, password: str) -> tuple[bool, str | None]:
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(HASHING_THREADS)
        return await anyio.to_thread.run_sync(verify_password, stored_hash, password,
                                              limiter=self._limiter)

    @staticmethod
    async def _body(request: Request) -> dict[str, Any]:
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_BODY_BYTES:
                raise AuthError(413, "request_too_large",
                                f"the request body is larger than {MAX_BODY_BYTES} bytes")
        try:
            parsed = json.loads(body) if body.strip() else {}
        except ValueError:
            raise AuthError(400, "validation_failed", "the body must be JSON") from None
        if not isinstance(parsed, dict):
            raise AuthError(400, "validation_failed", "the body must be a JSON object")
        return parsed

    @staticmethod
    def _ip(request: Request) -> str:
        return request.client.host if request.client is not None else "unknown"

    def _session(self, principal_id: str, email: str | None, user: dict[str, Any],
                 session_id: str, signed_in_at: int, refresh_token: str) -> JSONResponse:
        now = int(time.time())
        ttl = self.settings.auth_access_ttl_seconds
        claims = {
            "iss": ISSUER, "sub": principal_id, "aud": "authenticated", "exp": now + ttl,
            "iat": now, "email": email, "phone": "", "role": "authenticated", "aal": "aal1",
            "amr": [{"method": "password", "timestamp": signed_in_at}],
            "session_id": session_id, "is_anonymous": False,
            "app_metadata": user.get("app_metadata", {}),
            "user_metadata": user.get("user_metadata", {}),
        }
        token = jwt.encode(claims, self.gateway.secret, algorithm="HS256")
        return JSONResponse({
            "access_token": token, "token_type": "bearer", "expires_in": ttl,
            "expires_at": now + ttl, "refresh_token": refresh_token, "user": user,
        }, headers={"Cache-Control": "no-store"})

    def _bearer(self, request: Request) -> tuple[str, str | None, dict[str, Any]]:
        """The principal, session id and claims of the request's access token."""
        authorization = request.headers.get("authorization")
        if not authorization or not authorization.strip():
            raise AuthError(401, "no_authorization",
                            "This endpoint requires a Bearer token")
        try:
            caller = authenticate(authorization, None, self.gateway.secret)
        except GatewayError as exc:
            raise AuthError(401, "bad_jwt", f"invalid JWT: {exc.message}") from None
        if caller.role != "authenticated" or caller.sub is None:
            raise AuthError(401, "bad_jwt", "invalid JWT: the token names no user")
        session = caller.claims.get("session_id")
        if session is not None:
            try:
                session = str(uuid.UUID(str(session)))
            except ValueError:
                raise AuthError(401, "bad_jwt", "invalid JWT: session_id is not a UUID") from None
        return caller.sub, session, caller.claims

    # -- POST /auth/v1/token ---------------------------------------------------------------

    async def token(self, request: Request) -> Response:
        return await self._guarded(request, self._token)

    async def _token(self, request: Request) -> Response:
        grant = request.query_params.get("grant_type")
        if grant not in _GRANTS:
            raise AuthError(400, "unsupported_grant_type",
                            "grant_type must be password or refresh_token")
        body = await self._body(request)
        if grant == "password":
            return await self._password(request, body)
        return await self._refresh(request, body)

    async def _password(self, request: Request, body: dict[str, Any]) -> Response:
        email, password = body.get("email"), body.get("password")
        if not isinstance(email, str) or not email.strip():
            raise AuthError(400, "validation_failed", "an email is required")
        if not isinstance(password, str) or not password:
            raise AuthError(400, "validation_failed", "a password is required")
        if len(email) > 320:
            raise AuthError(400, *INVALID_CREDENTIALS)
        ip = self._ip(request)
        settings = self.settings
        try:
            found = await self.db(request, "auth_signin_lookup", {
                "p_email": email, "p_ip": ip,
                "p_window_seconds": settings.auth_failure_window_seconds,
                "p_max_per_email": settings.auth_max_failures_per_email,
                "p_max_per_ip": settings.auth_max_failures_per_ip})
        except ContractError as exc:
            if exc.code == "over_request_rate_limit":
                retry = (exc.details_json or {}).get("retry_after")
                raise AuthError(429, "over_request_rate_limit",
                                "Too many failed sign-ins: try again later",
                                retry_after=int(retry) if isinstance(retry, int) else
                                settings.auth_failure_window_seconds) from None
            raise
        principal = found.get("principal_id")
        if len(password) > MAX_PASSWORD:
            ok, rehash = False, None
        else:
            ok, rehash = await self._verify(found.get("password_hash"), password)
        del password
        if principal is None or not ok or found.get("disabled"):
            reason = ("unknown_email" if principal is None else
                      "disabled" if found.get("disabled") else "wrong_password")
            await self.db(request, "auth_signin_failed", {
                "p_email": email, "p_ip": ip, "p_principal": principal, "p_reason": reason})
            raise AuthError(400, *INVALID_CREDENTIALS)
        refresh_token = secrets.token_urlsafe(32)
        try:
            session = await self.db(request, "auth_signin_ok", {
                "p_principal": principal, "p_ip": ip,
                "p_user_agent": request.headers.get("user-agent", "")[:512],
                "p_refresh_hash": _hash_token(refresh_token),
                "p_session_ttl_seconds": settings.auth_session_ttl_seconds,
                "p_rehash": rehash})
        except ContractError as exc:
            if exc.code == "invalid_credentials":       # disabled meanwhile
                raise AuthError(400, *INVALID_CREDENTIALS) from None
            raise
        user = session["user"]
        return self._session(str(principal), user.get("email"), user, str(session["session_id"]),
                             int(session["signed_in_at"]), refresh_token)

    async def _refresh(self, request: Request, body: dict[str, Any]) -> Response:
        old = body.get("refresh_token")
        if not isinstance(old, str) or not old.strip():
            raise AuthError(400, "validation_failed", "a refresh_token is required")
        if len(old) > 512:
            raise AuthError(400, "refresh_token_not_found",
                            "Invalid Refresh Token: Refresh Token Not Found")
        new = secrets.token_urlsafe(32)
        result = await self.db(request, "auth_refresh", {
            "p_hash": _hash_token(old.strip()), "p_new_hash": _hash_token(new),
            "p_session_ttl_seconds": self.settings.auth_session_ttl_seconds,
            "p_grace_seconds": REFRESH_REUSE_GRACE_SECONDS, "p_ip": self._ip(request)})
        error = result.get("error")
        if error == "refresh_token_already_used":
            raise AuthError(400, "refresh_token_already_used",
                            "Invalid Refresh Token: Already Used (the session is revoked)")
        if error is not None:
            raise AuthError(400, "refresh_token_not_found",
                            "Invalid Refresh Token: Refresh Token Not Found")
        user = result["user"]
        return self._session(str(user["id"]), user.get("email"), user,
                             str(result["session_id"]), int(result["signed_in_at"]), new)

    # -- GET /auth/v1/user -----------------------------------------------------------------

    async def user(self, request: Request) -> Response:
        return await self._guarded(request, self._user)

    async def _user(self, request: Request) -> Response:
        principal, session, _ = self._bearer(request)
        result = await self.db(request, "auth_get_user",
                               {"p_principal": principal, "p_session": session})
        if result.get("error") == "session_not_found":
            raise AuthError(403, "session_not_found",
                            "Session from session_id claim in JWT does not exist")
        if result.get("error") is not None:
            raise AuthError(404, "user_not_found", "User from sub claim in JWT does not exist")
        return JSONResponse(result["user"], headers={"Cache-Control": "no-store"})

    # -- POST /auth/v1/logout --------------------------------------------------------------

    async def logout(self, request: Request) -> Response:
        return await self._guarded(request, self._logout)

    async def _logout(self, request: Request) -> Response:
        scope = request.query_params.get("scope", "local")
        if scope not in _SCOPES:
            raise AuthError(400, "validation_failed", "scope must be local, global or others")
        principal, session, _ = self._bearer(request)
        result = await self.db(request, "auth_logout", {
            "p_principal": principal, "p_session": session, "p_scope": scope,
            "p_ip": self._ip(request)})
        if result.get("error") == "session_not_found":
            raise AuthError(403, "session_not_found",
                            "Session from session_id claim in JWT does not exist")
        return Response(status_code=204)


def signin_routes(gateway: Gateway) -> list[BaseRoute]:
    """The /auth/v1 routes of `gateway`."""
    signin = SignIn(gateway)
    return [
        Route("/auth/v1/token", signin.token, methods=["POST"]),
        Route("/auth/v1/user", signin.user, methods=["GET"]),
        Route("/auth/v1/logout", signin.logout, methods=["POST"]),
    ]
