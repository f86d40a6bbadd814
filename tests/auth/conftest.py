"""Sign-in tests: the real gateway over real HTTP on a cloned database, users made with
`control_room.users` (the CLI's functions)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx
import pytest

from control_room.db.store import call, connect
from control_room.users import create_user
from tests.helpers import running_gateway

PASSWORD = "correct horse battery staple"
_numbers = itertools.count()


@dataclass
class Auth:
    """A gateway's /auth/v1 and /rest/v1 over HTTP, and the database behind it."""

    url: str
    db_url: str

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30)

    def sign_in(self, email: str, password: str = PASSWORD, *, now: datetime | None = None,
                ip_headers: dict[str, str] | None = None) -> httpx.Response:
        with self.client() as c:
            return c.post("/auth/v1/token", params={"grant_type": "password"},
                          json={"email": email, "password": password},
                          headers={**_clock(now), **(ip_headers or {})})

    def refresh(self, refresh_token: str, *, now: datetime | None = None) -> httpx.Response:
        with self.client() as c:
            return c.post("/auth/v1/token", params={"grant_type": "refresh_token"},
                          json={"refresh_token": refresh_token}, headers=_clock(now))

    def rpc(self, token: str, fn: str, args: dict[str, Any] | None = None, *,
            now: datetime | None = None) -> httpx.Response:
        with self.client() as c:
            return c.post(f"/rest/v1/rpc/{fn}", json=args or {},
                          headers={"Authorization": f"Bearer {token}", **_clock(now)})

    def workspace(self, slug: str | None = None) -> str:
        slug = slug or f"ws{next(_numbers)}"
        with connect(self.db_url, autocommit=True) as conn:
            return str(call(conn, "create_workspace", {"slug": slug, "name": slug})["id"])

    def user(self, role: str | None = None, workspace: str | None = None, *,
             password: str = PASSWORD, name: str | None = None) -> tuple[str, str]:
        """A new user (email, principal id), a member of `workspace` with `role` if given."""
        email = f"user{next(_numbers)}@Example.org"
        memberships = [(workspace, role)] if workspace and role else []
        principal = create_user(self.db_url, email, password, name=name, memberships=memberships)
        return email.lower(), principal


def _clock(now: datetime | None) -> dict[str, str]:
    return {"X-Control-Room-Now": now.isoformat()} if now is not None else {}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def auth(module_db_url: str) -> Iterator[Auth]:
    with running_gateway(module_db_url, auth_max_failures_per_email=3,
                         auth_max_failures_per_ip=1000) as url:
        yield Auth(url, module_db_url)
