"""Fixtures of the contract suite: the ops functions called as PostgREST would call them.

`contract.call(fn, args, as_=principal)` runs one function in one transaction with the
principal's role and JWT claims set. The suite is written against this one method so that
it can run over every transport that serves the contract (direct SQL today).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import httpx
import psycopg
import pytest

from control_room.db.store import ContractError, acting_as, call
from control_room.gateway.auth import mint_token
from tests.helpers import TEST_JWT_SECRET, running_gateway


@dataclass(frozen=True)
class Principal:
    """Who calls: a database role (anon, authenticated, service_role) and, for users, a sub."""

    role: str
    sub: uuid.UUID | None = None
    label: str = ""
    pins: tuple[str, ...] | None = None
    """The workspaces its token is pinned to (JWT claim `workspaces`): executors have them."""

    def __str__(self) -> str:
        return self.label or self.role

    @property
    def claims(self) -> dict[str, Any]:
        """Claims of its token beyond role and sub."""
        return {} if self.pins is None else {"workspaces": list(self.pins)}

    def pinned(self, *workspaces: str) -> Principal:
        """The same principal with a token pinned to these workspaces."""
        return replace(self, pins=tuple(workspaces))


SERVICE = Principal("service_role", label="service_role")
ANON = Principal("anon", label="anon")


def user(label: str) -> Principal:
    return Principal("authenticated", uuid.uuid4(), label)


class Contract:
    """The direct-SQL transport: one connection, one transaction per call.

    `conn` is also how tests look at the database behind any transport.
    """

    name = "sql"

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn

    def call(
        self,
        fn: str,
        args: dict[str, Any] | None = None,
        *,
        as_: Principal = SERVICE,
        now: datetime | None = None,
    ) -> Any:
        with acting_as(
            self.conn,
            role=as_.role,
            sub=str(as_.sub) if as_.sub else None,
            claims=as_.claims,
            now=now,
        ):
            return call(self.conn, fn, args or {})

    def error(
        self,
        fn: str,
        args: dict[str, Any] | None = None,
        *,
        as_: Principal = SERVICE,
        now: datetime | None = None,
    ) -> ContractError:
        """Call and return the ContractError it must raise."""
        with pytest.raises(ContractError) as info:
            self.call(fn, args, as_=as_, now=now)
        return info.value


class HttpContract(Contract):
    """The HTTP transport: the real gateway on a real port, a signed JWT per principal."""

    name = "http"

    def __init__(self, conn: psycopg.Connection[Any], client: httpx.Client) -> None:
        super().__init__(conn)
        self.client = client
        self._tokens: dict[Principal, str] = {}

    def token(self, principal: Principal) -> str:
        if principal not in self._tokens:
            self._tokens[principal] = mint_token(
                TEST_JWT_SECRET, role=principal.role,
                sub=str(principal.sub) if principal.sub else None, ttl_seconds=3600,
                workspaces=principal.pins)
        return self._tokens[principal]

    def call(
        self,
        fn: str,
        args: dict[str, Any] | None = None,
        *,
        as_: Principal = SERVICE,
        now: datetime | None = None,
    ) -> Any:
        headers = {"Content-Profile": "ops"}
        if as_.role != "anon":
            headers["Authorization"] = f"Bearer {self.token(as_)}"
        if now is not None:
            headers["X-Control-Room-Now"] = now.isoformat()
        response = self.client.post(f"/rest/v1/rpc/{fn}", json=args or {}, headers=headers)
        if response.status_code >= 400:
            raise http_error(response)
        return response.json()


def http_error(response: httpx.Response) -> ContractError:
    """The gateway's PostgREST-shaped error body as a ContractError."""
    body = response.json()
    assert set(body) == {"code", "message", "details", "hint"}, body
    return ContractError(body["message"], status=response.status_code,
                         code=body["hint"] or body["code"], sqlstate=body["code"],
                         details=body["details"], hint=body["hint"])


@dataclass
class World:
    """Two workspaces with a member of every role in each, made through the contract."""

    w1: str
    w2: str
    admin1: Principal
    dev1: Principal
    viewer1: Principal
    exec1: Principal
    admin2: Principal
    dev2: Principal
    viewer2: Principal
    exec2: Principal
    members: dict[str, Principal] = field(default_factory=dict)


@pytest.fixture(params=["sql", "http"])
def contract(request: pytest.FixtureRequest, conn: psycopg.Connection[Any],
             db_url: str) -> Iterator[Contract]:
    """The contract over each transport that serves it: direct SQL, and the gateway."""
    if request.param == "sql":
        yield Contract(conn)
        return
    with running_gateway(db_url) as url, httpx.Client(base_url=url, timeout=30) as client:
        yield HttpContract(conn, client)


@pytest.fixture
def sql_contract(conn: psycopg.Connection[Any]) -> Iterator[Contract]:
    """Direct SQL only: for tests about the database itself (RLS on tables, plans)."""
    yield Contract(conn)


@pytest.fixture
def world(contract: Contract) -> World:
    return make_world(contract)


def make_world(contract: Contract) -> World:
    """Workspaces w1 (dev) and w2 (prod), each with an admin, developer, viewer and executor.

    Members are added by service_role (the principals are users of the installation, owned by
    no workspace); each executor's token is pinned to its workspace."""
    ps = {
        name: user(name)
        for name in ("admin1", "dev1", "viewer1", "exec1", "admin2", "dev2", "viewer2", "exec2")
    }
    w1 = contract.call(
        "create_workspace", {"slug": "w1", "name": "Workspace 1", "env": "dev"}, as_=ps["admin1"]
    )["id"]
    w2 = contract.call(
        "create_workspace", {"slug": "w2", "name": "Workspace 2", "env": "prod"}, as_=ps["admin2"]
    )["id"]
    for ws, suffix in ((w1, "1"), (w2, "2")):
        for role in ("developer", "viewer", "executor"):
            short = {"developer": "dev", "viewer": "viewer", "executor": "exec"}[role]
            contract.call(
                "add_member",
                {"workspace_id": ws, "principal_id": str(ps[short + suffix].sub), "role": role},
                as_=SERVICE,
            )
    ps["exec1"] = ps["exec1"].pinned(w1)
    ps["exec2"] = ps["exec2"].pinned(w2)
    return World(w1=w1, w2=w2, members=ps, **ps)


def phase(name: str, kind: str = "python", *deps: str, **extra: Any) -> dict[str, Any]:
    """One phase spec for create_run."""
    return {"name": name, "kind": kind, "depends_on": list(deps), **extra}


def new_run(
    contract: Contract,
    workspace_id: str,
    phases: list[dict[str, Any]],
    *,
    as_: Principal = SERVICE,
    now: datetime | None = None,
    **extra: Any,
) -> dict[str, Any]:
    args = {
        "workspace_id": workspace_id,
        "spec_slug": "demo",
        "git_sha": "0123abc",
        "phases": phases,
        **extra,
    }
    result: dict[str, Any] = contract.call("create_run", args, as_=as_, now=now)
    return result


def states(contract: Contract, run_id: str) -> dict[str, str]:
    """Phase name -> state of a run."""
    run = contract.call("get_run", {"run_id": run_id})
    return {p["name"]: p["state"] for p in run["phases"]}


def event_types(contract: Contract, run_id: str, phase: str | None = None) -> list[str]:
    out: list[str] = []
    after = 0
    while True:
        page = contract.call("list_events", {"run_id": run_id, "after": after, "limit": 1000})
        out += [e["type"] for e in page["events"] if phase is None or e["phase"] == phase]
        if not page["events"]:
            return out
        after = page["next_after"]
