"""The gateway on a real port: PostgREST's shapes, strict input, auth, waiting claims."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import jwt
import psycopg
import pytest

from control_room.gateway.auth import mint_token
from tests.contract.conftest import (
    SERVICE,
    HttpContract,
    Principal,
    World,
    make_world,
    new_run,
    phase,
)
from tests.contract.snapshot import snapshot
from tests.helpers import TEST_JWT_SECRET, running_gateway


@dataclass
class Gateway:
    url: str
    client: httpx.Client
    contract: HttpContract
    conn: psycopg.Connection[Any]

    def post(self, fn: str, body: Any = None, *, principal: Principal | None = SERVICE,
             headers: dict[str, str] | None = None, content: bytes | None = None) -> httpx.Response:
        all_headers = {"Content-Profile": "ops"}
        if principal is not None and principal.role != "anon":
            all_headers["Authorization"] = f"Bearer {self.contract.token(principal)}"
        all_headers.update(headers or {})
        if content is None:
            content = json.dumps({} if body is None else body).encode()
            all_headers.setdefault("Content-Type", "application/json")
        return self.client.post(f"/rest/v1/rpc/{fn}", content=content, headers=all_headers)


@pytest.fixture
def gw(conn: psycopg.Connection[Any], db_url: str) -> Iterator[Gateway]:
    with running_gateway(db_url, claim_poll_seconds=5.0) as url, \
            httpx.Client(base_url=url, timeout=30) as client:
        yield Gateway(url, client, HttpContract(conn, client), conn)


@pytest.fixture
def world(gw: Gateway) -> World:
    return make_world(gw.contract)


def refused(response: httpx.Response, status: int, hint: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert set(body) == {"code", "message", "details", "hint"}
    assert body["hint"] == hint, body
    assert "Traceback" not in response.text
    return body


# --- PostgREST shapes ---------------------------------------------------------------------------

def test_results_and_errors_have_postgrests_shapes(gw: Gateway, world: World) -> None:
    run = new_run(gw.contract, world.w1, [phase("a")], as_=world.dev1)
    ok = gw.post("get_run", {"run_id": run["id"]}, principal=world.viewer1)
    assert ok.status_code == 200
    assert ok.headers["content-type"].startswith("application/json")
    assert ok.json()["id"] == run["id"]
    nothing = gw.post("claim_phase", {"kinds": ["dbt"]}, principal=world.exec1)
    assert (nothing.status_code, nothing.json()) == (200, None)
    missing = gw.post("get_run", {"run_id": str(uuid.uuid4())}, principal=world.viewer1)
    body = refused(missing, 404, "not_found")
    assert body["code"] == "PT404"
    lost = gw.post("heartbeat", {"lease_token": str(uuid.uuid4())}, principal=world.exec1)
    assert refused(lost, 409, "lease_lost")["code"] == "PT409"


def test_the_schema_is_chosen_by_content_profile(gw: Gateway, world: World) -> None:
    no_profile = gw.client.post("/rest/v1/rpc/list_workspaces", json={}, headers={
        "Authorization": f"Bearer {gw.contract.token(world.viewer1)}"})
    assert no_profile.status_code == 200
    other = gw.post("list_workspaces", {}, principal=world.viewer1,
                    headers={"Content-Profile": "public"})
    assert refused(other, 406, "invalid_argument")["code"] == "PGRST106"


def test_only_the_contracts_functions_are_served(gw: Gateway) -> None:
    for fn in ("pg_sleep", "now", "settle_run", "notify_queued"):
        assert refused(gw.post(fn, {}), 404, "not_found")["code"] == "PGRST202"
    assert gw.client.get("/rest/v1/workspaces").status_code == 404
    assert gw.client.get("/rest/v1/rpc/get_run").status_code == 405


def test_the_contract_and_health_and_metrics_are_served(gw: Gateway, world: World) -> None:
    root = gw.client.get("/rest/v1/")
    assert root.status_code == 200
    document = root.json()
    assert document["openapi"].startswith("3.1")
    assert "/rpc/claim_phase" in document["paths"]
    yaml_doc = gw.client.get("/openapi.yaml")
    assert yaml_doc.status_code == 200 and "claim_phase" in yaml_doc.text
    health = gw.client.get("/health")
    assert health.status_code == 200, health.text
    assert health.json()["migrations"] == "current"
    assert health.json()["database"] == "reachable"

    new_run(gw.contract, world.w1, [phase("a"), phase("b", "sql", "a")], as_=world.dev1)
    claim = gw.contract.call("claim_phase", {}, as_=world.exec1)
    gw.contract.call("complete_phase", {"lease_token": claim["lease_token"],
                                        "outcome": "succeeded"}, as_=world.exec1)
    gw.post("nope", {})
    metrics = gw.client.get("/metrics").text
    assert 'control_room_requests_total{function="complete_phase",status="200"} 1.0' in metrics
    assert 'control_room_requests_total{function="unknown",status="404"} 1.0' in metrics
    assert 'control_room_request_duration_seconds_count{function="claim_phase"} 1.0' in metrics
    assert 'control_room_phases{state="queued"} 1.0' in metrics
    assert 'control_room_phases{state="succeeded"} 1.0' in metrics
    assert "control_room_queue_depth 1.0" in metrics
    assert 'control_room_phase_success_ratio{kind="python"} 1.0' in metrics
    assert "control_room_lease_expiries_total 0.0" in metrics


# --- strict input -------------------------------------------------------------------------------

@pytest.mark.parametrize(("content", "content_type", "status", "code"), [
    (b"{not json", "application/json", 400, "PGRST102"),
    (b'[{"a": 1}]', "application/json", 400, "PGRST102"),
    (b'"just a string"', "application/json", 400, "PGRST102"),
    (b"run_id=1", "application/x-www-form-urlencoded", 415, "PGRST107"),
    (b"<xml/>", "text/xml", 415, "PGRST107"),
])
def test_malformed_bodies_are_refused_and_nothing_is_written(
        gw: Gateway, world: World, content: bytes, content_type: str, status: int,
        code: str) -> None:
    before = snapshot(gw.conn)
    response = gw.post("create_workspace", content=content, principal=world.admin1,
                       headers={"Content-Type": content_type})
    assert refused(response, status, "invalid_argument")["code"] == code
    assert snapshot(gw.conn) == before


def test_unknown_and_missing_arguments_are_400(gw: Gateway, world: World) -> None:
    before = snapshot(gw.conn)
    body = refused(gw.post("create_workspace", {"slug": "x", "name": "X", "colour": "red"},
                           principal=world.admin1), 400, "invalid_argument")
    assert "colour" in body["message"]
    body = refused(gw.post("get_run", {}, principal=world.viewer1), 400, "invalid_argument")
    assert "run_id" in body["message"]
    body = refused(gw.post("create_run", {"workspace_id": world.w1, "spec_slug": "s",
                                          "git_sha": "abcdef1", "phases": "nope"},
                           principal=world.dev1), 400, "invalid_argument")
    assert "phases" in body["message"]
    assert snapshot(gw.conn) == before


def test_an_oversized_body_is_413(conn: psycopg.Connection[Any], db_url: str) -> None:
    with running_gateway(db_url, max_body_bytes=4096) as url, httpx.Client(base_url=url) as client:
        contract = HttpContract(conn, client)
        headers = {"Authorization": f"Bearer {contract.token(SERVICE)}",
                   "Content-Profile": "ops"}
        big = {"slug": "big", "name": "x" * 5000}
        response = client.post("/rest/v1/rpc/create_workspace", json=big, headers=headers)
        assert refused(response, 413, "payload_too_large")["code"] == "PT413"
        # also when the client streams without announcing a length
        chunks = iter([json.dumps(big).encode()[i:i + 1000] for i in range(0, 5100, 1000)])
        response = client.post("/rest/v1/rpc/create_workspace", content=chunks,
                               headers={**headers, "Content-Type": "application/json"})
        assert response.status_code == 413
        assert contract.call("list_workspaces", {}) == []


# --- auth -------------------------------------------------------------------------------------

def _token(claims: dict[str, Any], secret: str = TEST_JWT_SECRET) -> str:
    return jwt.encode(claims, secret, algorithm="HS256")


@pytest.mark.filterwarnings("ignore:The HMAC key")
def test_tokens_are_verified(gw: Gateway, world: World) -> None:
    sub = str(world.admin1.sub)
    cases = {
        "bad signature": (_token({"role": "authenticated", "sub": sub}, "another-secret-" * 3),
                          401, "PGRST301"),
        "expired": (_token({"role": "authenticated", "sub": sub, "exp": int(time.time()) - 5}),
                    401, "PGRST303"),
        "garbage": ("not.a.jwt", 401, "PGRST301"),
        "role postgres": (_token({"role": "postgres", "sub": sub}), 403, "42501"),
        "role supabase_admin": (_token({"role": "supabase_admin"}), 403, "42501"),
        "sub not a uuid": (_token({"role": "authenticated", "sub": "root"}), 401, "PGRST301"),
    }
    before = snapshot(gw.conn)
    for name, (token, status, code) in cases.items():
        response = gw.client.post(
            "/rest/v1/rpc/create_workspace", json={"slug": "evil", "name": "Evil"},
            headers={"Authorization": f"Bearer {token}", "Content-Profile": "ops"})
        body = refused(response, status, "unauthorized" if status == 401 else "forbidden")
        assert body["code"] == code, name
        if status == 401:
            assert response.headers["WWW-Authenticate"].startswith("Bearer error=")
    hs512 = jwt.encode({"role": "service_role"}, TEST_JWT_SECRET, algorithm="HS512")
    response = gw.client.post("/rest/v1/rpc/list_workspaces", json={},
                              headers={"Authorization": f"Bearer {hs512}"})
    assert response.status_code == 401
    assert snapshot(gw.conn) == before


def test_no_token_is_anon_and_anon_calls_nothing(gw: Gateway, world: World) -> None:
    response = gw.post("list_workspaces", {}, principal=None)
    assert refused(response, 401, "unauthorized")["code"] == "42501"
    # a JWT given as apikey (as supabase clients send it) is honoured
    response = gw.client.post("/rest/v1/rpc/list_workspaces", json={}, headers={
        "apikey": gw.contract.token(world.viewer1)})
    assert response.status_code == 200
    assert [w["slug"] for w in response.json()] == ["w1"]


def test_roles_and_tenants_are_enforced_over_http(gw: Gateway, world: World) -> None:
    run = new_run(gw.contract, world.w1, [phase("a")], as_=world.dev1)
    before = snapshot(gw.conn)
    viewer_cancel = gw.post("cancel_run", {"run_id": run["id"]}, principal=world.viewer1)
    assert refused(viewer_cancel, 403, "forbidden")["code"] == "PT403"
    viewer_create = gw.post("create_run", {"workspace_id": world.w1, "spec_slug": "s",
                                           "git_sha": "abcdef1", "phases": [phase("x")]},
                            principal=world.viewer1)
    refused(viewer_create, 403, "forbidden")
    cross = gw.post("claim_phase", {"workspace_id": world.w1}, principal=world.exec2)
    refused(cross, 403, "forbidden")
    other_tenant = gw.post("cancel_run", {"run_id": run["id"]}, principal=world.dev2)
    refused(other_tenant, 404, "not_found")
    assert gw.post("claim_phase", {}, principal=world.exec2).json() is None
    assert snapshot(gw.conn) == before


def test_a_revoked_principal_is_refused_despite_a_valid_signature(
        gw: Gateway, world: World) -> None:
    run = new_run(gw.contract, world.w1, [phase("a")], as_=world.dev1)
    robot = gw.contract.call("create_principal", {"name": "robot-1", "workspace_id": world.w1},
                             as_=world.admin1)
    gw.contract.call("add_member", {"workspace_id": world.w1, "principal_id": robot["id"],
                                    "role": "executor"}, as_=world.admin1)
    token = mint_token(TEST_JWT_SECRET, role="authenticated", sub=robot["id"], ttl_seconds=600,
                       workspaces=[world.w1])
    headers = {"Authorization": f"Bearer {token}", "Content-Profile": "ops"}
    claim = gw.client.post("/rest/v1/rpc/claim_phase", json={}, headers=headers)
    assert claim.status_code == 200 and claim.json()["run_id"] == run["id"]
    revoked = gw.contract.call("revoke_principal", {"principal_id": robot["id"]},
                               as_=world.admin1)
    assert revoked["revoked_at"] is not None
    before = snapshot(gw.conn)
    for fn, args in (("heartbeat", {"lease_token": claim.json()["lease_token"]}),
                     ("claim_phase", {}),
                     ("complete_phase", {"lease_token": claim.json()["lease_token"],
                                         "outcome": "succeeded"})):
        response = gw.client.post(f"/rest/v1/rpc/{fn}", json=args, headers=headers)
        refused(response, 401, "unauthorized")
    # reads too: the pre-request hook refuses it before any call runs
    for fn, args in (("list_runs", {}), ("get_run", {"run_id": run["id"]}),
                     ("list_events", {"run_id": run["id"]}), ("list_workspaces", {})):
        response = gw.client.post(f"/rest/v1/rpc/{fn}", json=args, headers=headers)
        refused(response, 401, "unauthorized")
    assert snapshot(gw.conn) == before


# --- waiting claims -----------------------------------------------------------------------------

def test_a_waiting_claim_answers_as_soon_as_work_is_queued(gw: Gateway, world: World) -> None:
    result: dict[str, Any] = {}

    def wait_for_work() -> None:
        started = time.monotonic()
        response = gw.post("claim_phase", {"lease_seconds": 30}, principal=world.exec1,
                           headers={"Prefer": "wait=20"})
        result.update(response=response, seconds=time.monotonic() - started)

    waiter = threading.Thread(target=wait_for_work)
    waiter.start()
    time.sleep(0.5)
    assert waiter.is_alive()                     # nothing to claim: it waits
    queued_at = time.monotonic()
    run = new_run(gw.contract, world.w1, [phase("a")], as_=world.dev1)
    waiter.join(timeout=20)
    woke_after = time.monotonic() - queued_at
    assert result["response"].status_code == 200
    assert result["response"].json()["run_id"] == run["id"]
    # the gateway polls every 5 s here: answering well before proves NOTIFY woke it
    assert woke_after < 2.5, woke_after


def test_a_waiting_claim_gives_up_after_its_wait(gw: Gateway, world: World) -> None:
    started = time.monotonic()
    response = gw.post("claim_phase", {}, principal=world.exec1, headers={"Prefer": "wait=1"})
    elapsed = time.monotonic() - started
    assert (response.status_code, response.json()) == (200, None)
    assert 0.9 <= elapsed < 4
    assert response.headers["Preference-Applied"] == "wait=1"
    plain = gw.post("claim_phase", {}, principal=world.exec1)
    assert "Preference-Applied" not in plain.headers


def test_the_listener_has_a_connection_of_its_own(gw: Gateway, db_url: str) -> None:
    dbname = gw.conn.info.dbname
    deadline = time.monotonic() + 10
    with psycopg.connect(db_url, autocommit=True) as probe:
        while True:
            rows = probe.execute(
                "select pid, state from pg_stat_activity"
                " where datname = %s and query ilike '%%listen ops_run_changes%%'"
                " and pid <> pg_backend_pid()",
                (dbname,)).fetchall()
            if rows or time.monotonic() > deadline:
                break
            time.sleep(0.05)
    assert len(rows) == 1
    assert gw.client.get("/health").json()["listener"] == "connected"
    # calls keep being served by the pool while the listener sits idle in its LISTEN
    for _ in range(5):
        assert gw.post("list_workspaces", {}).status_code == 200
    with psycopg.connect(db_url, autocommit=True) as probe:
        state = probe.execute("select state, query from pg_stat_activity where pid = %s",
                              (rows[0][0],)).fetchone()
    assert state is not None and state[0] == "idle" and "listen" in state[1].lower()


def test_a_waiting_claim_whose_client_left_claims_nothing(gw: Gateway, world: World) -> None:
    headers = {"Authorization": f"Bearer {gw.contract.token(world.exec1)}",
               "Content-Profile": "ops", "Prefer": "wait=10"}
    with httpx.Client(base_url=gw.url, timeout=1.0) as impatient, \
            pytest.raises(httpx.ReadTimeout):
        impatient.post("/rest/v1/rpc/claim_phase", json={"lease_seconds": 60}, headers=headers)
    time.sleep(0.3)
    run = new_run(gw.contract, world.w1, [phase("a", max_attempts=1)], as_=world.dev1)
    time.sleep(1.5)   # the abandoned wait would have been woken by now
    phases = gw.contract.call("get_run", {"run_id": run["id"]})["phases"]
    assert phases[0]["state"] == "queued", phases
    claim = gw.contract.call("claim_phase", {}, as_=world.exec1)
    assert claim is not None and claim["run_id"] == run["id"]


def test_notifications_wake_only_the_waiters_they_concern() -> None:
    from control_room.gateway.app import Waiter

    sql_anywhere = Waiter(frozenset({"sql"}), None)
    anything_in_w = Waiter(None, "w-1")
    assert sql_anywhere.concerns("w-9 sql") and not sql_anywhere.concerns("w-9 python")
    assert anything_in_w.concerns("w-1 dbt") and not anything_in_w.concerns("w-2 dbt")
    assert sql_anywhere.concerns("") and anything_in_w.concerns("")   # unknown: wake all
