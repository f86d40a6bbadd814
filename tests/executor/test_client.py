"""The executor's contract client against the real gateway on a real port and a real database.

Lost answers are simulated deterministically: `Faults` forwards a request to the gateway (the
database does the work), reads the answer and then raises `httpx.ReadError` in its place. The
polling fallback is tested against a respx-mocked PostgREST (hosted Supabase can't run here).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import psycopg
import pytest
import respx

from control_room.contract.client import (
    Conflict,
    ContractClient,
    ContractError,
    Forbidden,
    InvalidArgument,
    LeaseLost,
    NewEvent,
    NotFound,
    PayloadTooLarge,
    RetryPolicy,
    ServerError,
    ServiceUnavailable,
    TransientError,
    TransportFailure,
    Unauthorized,
)
from tests.contract.conftest import HttpContract, Principal, World, make_world, phase
from tests.helpers import running_gateway

FAST_RETRY = RetryPolicy(attempts=4, initial=0.01, max_wait=0.05, total=10.0)
DIGEST = "blake3:" + "ab" * 32
JSON = {"Content-Type": "application/json; charset=utf-8"}


def body(status: int, code: str, message: str, hint: str | None,
         details: str | None = None) -> httpx.Response:
    """An error answer in PostgREST's shape."""
    return httpx.Response(status, json={"code": code, "message": message, "details": details,
                                        "hint": hint})


class Faults(httpx.BaseTransport):
    """Forwards every request to the real gateway, recording it; on demand, answers a canned
    response instead (`canned[fn]`), or loses the real answer (`lose[fn]` times): the request
    is served, its answer read and kept in `lost`, and a ReadError raised in its place."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.sent: list[tuple[str, dict[str, Any], httpx.Headers]] = []
        self.canned: dict[str, list[httpx.Response]] = {}
        self.lose: dict[str, int] = {}
        self.lost: list[Any] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        fn = request.url.path.rsplit("/", 1)[-1]
        self.sent.append((fn, json.loads(request.content or b"{}"), request.headers))
        if self.canned.get(fn):
            return self.canned[fn].pop(0)
        response = self.inner.handle_request(request)
        if self.lose.get(fn, 0) > 0:
            self.lose[fn] -= 1
            response.read()
            self.lost.append(json.loads(response.content))
            response.close()
            raise httpx.ReadError("the answer was lost on the way back", request=request)
        return response

    def close(self) -> None:
        self.inner.close()

    def calls(self, fn: str) -> list[dict[str, Any]]:
        return [args for name, args, _ in self.sent if name == fn]


@dataclass
class Env:
    rest_url: str
    world: World
    contract: HttpContract
    conn: psycopg.Connection[Any]
    faults: Faults = field(default_factory=Faults)
    clients: list[ContractClient] = field(default_factory=list)

    def client(self, principal: Principal, *, retry: RetryPolicy = FAST_RETRY,
               faulty: bool = False, **options: Any) -> ContractClient:
        client = ContractClient(self.rest_url, self.contract.token(principal), retry=retry,
                                transport=self.faults if faulty else None, **options)
        self.clients.append(client)
        return client

    def new_run(self, *phases: dict[str, Any]) -> str:
        dev = self.client(self.world.dev1)
        run = dev.create_run(self.world.w1, "demo", "0123abc", list(phases) or [phase("a")],
                             idempotency_key=str(uuid.uuid4()))
        return run.id

    def event_types(self, run_id: str) -> list[str]:
        return [e.type for e in self.client(self.world.viewer1).iter_events(run_id)]


@pytest.fixture
def env(conn: psycopg.Connection[Any], db_url: str) -> Iterator[Env]:
    with running_gateway(db_url, claim_poll_seconds=5.0) as url, \
            httpx.Client(base_url=url, timeout=30) as http:
        contract = HttpContract(conn, http)
        environment = Env(f"{url}/rest/v1", make_world(contract), contract, conn)
        try:
            yield environment
        finally:
            for client in environment.clients:
                client.close()
            environment.faults.close()


# --- the protocol ------------------------------------------------------------------------------

def test_the_executor_protocol_through_the_client(env: Env) -> None:
    run_id = env.new_run(phase("a"), phase("b", "python", "a"))
    ex = env.client(env.world.exec1)

    claim = ex.claim_phase(["python"], 30)
    assert claim is not None
    assert (claim.run_id, claim.name, claim.kind, claim.attempt) == (run_id, "a", "python", 1)
    assert (claim.run.spec_slug, claim.run.git_sha, claim.inputs) == ("demo", "0123abc", {})
    assert claim.lease_token not in repr(claim)          # a capability stays out of logs
    token = claim.lease_token

    appended = ex.append_events(run_id, [
        NewEvent("PHASE_STARTED", phase="a"),
        {"type": "LOG", "phase": "a", "level": "debug", "message": "hello"},
    ], lease_token=token)
    assert (appended.appended, appended.duplicates, len(appended.event_ids)) == (2, 0, 2)

    beat = ex.heartbeat(token, {"pct": 50}, lease_seconds=40)
    assert (beat.cancel_requested, beat.phase_state, beat.run_state) == (False, "running",
                                                                          "running")
    artifact = ex.register_artifact(token, DIGEST, "file:///lake/a.parquet", 3, name="out",
                                    media_type="application/vnd.apache.parquet", kind="table")
    assert (artifact.created, artifact.linked, artifact.role, artifact.phase) == (
        True, True, "output", "a")
    again = ex.register_artifact(token, DIGEST, "file:///lake/a.parquet", 3, name="out")
    assert (again.created, again.linked) == (False, False)

    done = ex.complete_phase(token, "succeeded", {"rows": 3})
    assert (done.phase_state, done.run_state, done.released, done.replayed) == (
        "succeeded", "running", ("b",), False)

    second = ex.claim_phase(["python"], 30)
    assert second is not None and second.name == "b"
    assert second.inputs == {"a": {"rows": 3}}
    last = ex.complete_phase(second.lease_token, "succeeded", {"rows": 5})
    assert last.run_state == "succeeded"

    run = ex.complete_run(run_id, {"tables": 2})
    assert (run.state, run.output_manifest) == ("succeeded", {"tables": 2})
    assert run.finalized_at is not None
    viewed = env.client(env.world.viewer1).get_run(run_id)
    assert [p.state for p in viewed.phases] == ["succeeded", "succeeded"]
    assert viewed.phase("a").output_manifest == {"rows": 3}

    types = env.event_types(run_id)
    for expected in ("RUN_CREATED", "PHASE_CLAIMED", "PHASE_STARTED", "LOG",
                     "ARTIFACT_REGISTERED", "PHASE_SUCCEEDED", "RUN_SUCCEEDED", "RUN_FINALIZED"):
        assert expected in types, types
    page = ex.list_events(run_id, after=0, limit=2)
    assert [e.seq for e in page.events] == [1, 2] and page.next_after == 2
    started = ex.list_events(run_id, phase="a").events
    assert {e.event_id for e in started} >= set(appended.event_ids)


def test_refusals_raise_typed_errors_and_are_not_retried(env: Env) -> None:
    run_id = env.new_run()
    ex = env.client(env.world.exec1, faulty=True)
    claim = ex.claim_phase(["python"])
    assert claim is not None
    ex.complete_phase(claim.lease_token, "succeeded")

    other = env.new_run()
    live = ex.claim_phase(["python"], run_id=other)
    assert live is not None

    sent_before = len(env.faults.sent)
    with pytest.raises(LeaseLost) as stale:             # a token no longer live
        ex.heartbeat(claim.lease_token)
    assert (stale.value.status, stale.value.code, stale.value.sqlstate) == (409, "lease_lost",
                                                                            "PT409")
    assert not isinstance(stale.value, Conflict | TransientError)
    with pytest.raises(InvalidArgument) as bad:
        ex.get_run("nope")
    assert (bad.value.status, bad.value.sqlstate, bad.value.argument) == (400, "PT400", "run_id")
    assert bad.value.details_json == {"argument": "run_id"}
    with pytest.raises(NotFound):
        ex.get_run(str(uuid.uuid4()))
    with pytest.raises(PayloadTooLarge) as big:
        ex.heartbeat(live.lease_token, {"blob": "x" * 20_000})
    assert big.value.details_json is not None and big.value.details_json["limit"] == 16384
    with pytest.raises(Conflict) as conflict:          # the other run has not succeeded
        ex.complete_run(other)
    assert conflict.value.code == "conflict"
    # every refusal above was one request: a 4xx is never retried
    assert len(env.faults.sent) - sent_before == 5

    viewer = env.client(env.world.viewer1, faulty=True)
    with pytest.raises(Forbidden) as forbidden:
        viewer.claim_phase(["python"], workspace_id=env.world.w1)
    assert (forbidden.value.status, forbidden.value.code) == (403, "forbidden")
    stranger = ContractClient(env.rest_url, "not-a-jwt", retry=FAST_RETRY)
    with stranger, pytest.raises(Unauthorized) as unauthorized:
        stranger.get_run(run_id)
    assert unauthorized.value.status == 401 and isinstance(unauthorized.value, ContractError)


# --- retries keep calls idempotent -------------------------------------------------------------

def test_a_claim_retried_after_a_lost_answer_returns_the_same_lease(env: Env) -> None:
    run_id = env.new_run()
    ex = env.client(env.world.exec1, faulty=True)
    env.faults.lose["claim_phase"] = 1

    claim = ex.claim_phase(["python"], 30)

    assert claim is not None
    tries = env.faults.calls("claim_phase")
    assert len(tries) == 2 and tries[0]["claim_id"] == tries[1]["claim_id"] == claim.claim_id
    lost = env.faults.lost[0]                          # what the database answered the first time
    assert (claim.phase_id, claim.lease_token, claim.attempt) == (
        lost["phase_id"], lost["lease_token"], 1)
    assert env.event_types(run_id).count("PHASE_CLAIMED") == 1
    assert ex.heartbeat(claim.lease_token).phase_state == "running"   # the live lease
    assert ex.claim_phase(["python"]) is None          # nothing was claimed twice


def test_poll_for_work_gets_back_a_claim_whose_answers_were_lost(env: Env) -> None:
    """Lost answers outlasting the client's own retries (a gateway restarting): poll_for_work's
    next try carries the same claim_id, so the lease a lost answer held comes back at once
    instead of waiting, unheld, for its expiry."""
    run_id = env.new_run()
    ex = env.client(env.world.exec1, retry=RetryPolicy.never(), faulty=True)
    env.faults.lose["claim_phase"] = 2

    claim = ex.poll_for_work(["python"], 30, wait=0, idle_start=0.05, idle_max=0.1, timeout=10)

    assert claim is not None
    tries = env.faults.calls("claim_phase")
    assert len(tries) == 3 and len({t["claim_id"] for t in tries}) == 1
    assert (claim.phase_id, claim.lease_token) == (env.faults.lost[0]["phase_id"],
                                                   env.faults.lost[0]["lease_token"])
    assert env.event_types(run_id).count("PHASE_CLAIMED") == 1


def test_poll_for_claims_gets_back_a_batch_whose_answers_were_lost(env: Env) -> None:
    """The batch form: a lost answer's leases come back to the next try (same claim_id), and
    one complete_phases call completes them, a stale token answered in its place."""
    run_id = env.new_run(phase("a"), phase("b"), phase("c"))
    ex = env.client(env.world.exec1, retry=RetryPolicy.never(), faulty=True)
    env.faults.lose["claim_phases"] = 1

    claims = ex.poll_for_claims(["python"], 30, 2, wait=0, idle_start=0.05, idle_max=0.1,
                                timeout=10)

    tries = env.faults.calls("claim_phases")
    assert len(tries) == 2 and len({t["claim_id"] for t in tries}) == 1
    assert [t["limit"] for t in tries] == [2, 2]
    assert [(c.name, c.lease_token) for c in claims] == [
        (c["name"], c["lease_token"]) for c in env.faults.lost[0]]
    assert env.event_types(run_id).count("PHASE_CLAIMED") == 2

    answers = ex.complete_phases(
        [{"lease_token": claims[0].lease_token, "outcome": "succeeded"},
         {"lease_token": str(uuid.uuid4()), "outcome": "succeeded"},
         {"lease_token": claims[1].lease_token, "outcome": "failed", "error": "boom"}])
    assert [a.lost for a in answers] == [False, True, False]
    first, lost, last = answers
    done = first.result()
    assert done is not None and (done.phase, done.phase_state) == (claims[0].name, "succeeded")
    assert lost.result() is None and lost.error is not None and lost.error.code == "lease_lost"
    assert (last.phase_state, last.attempt, last.not_before is not None) == ("queued", 1, True)
    rest = ex.poll_for_claims(["python"], 30, 5, wait=0, timeout=5)
    assert [c.name for c in rest] == ["c"]      # b waits out its backoff
    assert ex.poll_for_claims(["python"], 30, 5, wait=0, idle_start=0.05, timeout=0.3) == []


def test_events_retried_after_a_lost_answer_are_stored_once(env: Env) -> None:
    run_id = env.new_run()
    ex = env.client(env.world.exec1, faulty=True)
    claim = ex.claim_phase(["python"])
    assert claim is not None
    env.faults.lose["append_events"] = 1

    result = ex.append_events(run_id, [{"type": "PHASE_STARTED", "phase": "a"},
                                       {"type": "LOG", "phase": "a", "message": "one"}],
                              lease_token=claim.lease_token)

    tries = env.faults.calls("append_events")
    assert len(tries) == 2
    assert [e["event_id"] for e in tries[0]["events"]] == [e["event_id"] for e in
                                                           tries[1]["events"]]
    assert env.faults.lost[0]["appended"] == 2        # the first try stored them...
    assert (result.appended, result.duplicates) == (0, 2)   # ...the retry added nothing
    stored = [e for e in env.client(env.world.viewer1).iter_events(run_id)
              if e.type in ("PHASE_STARTED", "LOG")]
    assert [e.event_id for e in stored] == list(result.event_ids)


def test_complete_phase_retried_after_a_lost_answer_is_a_replayed_success(env: Env) -> None:
    run_id = env.new_run()
    ex = env.client(env.world.exec1, faulty=True)
    claim = ex.claim_phase(["python"])
    assert claim is not None
    env.faults.lose["complete_phase"] = 1

    done = ex.complete_phase(claim.lease_token, "succeeded", {"rows": 1})

    assert len(env.faults.calls("complete_phase")) == 2
    assert env.faults.lost[0]["replayed"] is False
    assert (done.replayed, done.phase_state, done.run_state) == (True, "succeeded", "succeeded")
    assert env.event_types(run_id).count("PHASE_SUCCEEDED") == 1


def test_unavailable_is_retried_and_other_failures_are_not(env: Env) -> None:
    run_id = env.new_run()
    ex = env.client(env.world.exec1, faulty=True)
    unavailable = body(503, "PGRST000", "the database is unavailable", "unavailable")
    env.faults.canned["get_run"] = [unavailable, unavailable]
    assert ex.get_run(run_id).id == run_id
    assert len(env.faults.calls("get_run")) == 3

    env.faults.canned["get_run"] = [unavailable] * 10        # gives up after `attempts`
    with pytest.raises(ServiceUnavailable) as gave_up:
        ex.get_run(run_id)
    assert isinstance(gave_up.value, TransientError) and gave_up.value.status == 503
    assert len(env.faults.calls("get_run")) == 3 + FAST_RETRY.attempts

    env.faults.canned["get_run"] = [body(500, "XX000", "internal error", "internal")]
    with pytest.raises(ServerError) as internal:               # a 500 is transient, not retried
        ex.get_run(run_id)
    assert isinstance(internal.value, TransientError)
    assert len(env.faults.calls("get_run")) == 4 + FAST_RETRY.attempts

    # an answer lost for a call that is not idempotent is not sent again
    env.faults.lose["create_workspace"] = 1
    with pytest.raises(TransportFailure) as lost:
        ex.call("create_workspace", {"slug": "once", "name": "Once"})
    assert lost.value.sent and len(env.faults.calls("create_workspace")) == 1
    env.faults.lose["create_workspace"] = 1                    # the typed method alike
    with pytest.raises(TransportFailure):
        ex.create_workspace("twice", "Twice")
    assert len(env.faults.calls("create_workspace")) == 2


def test_create_run_is_retried_only_with_an_idempotency_key(env: Env) -> None:
    dev = env.client(env.world.dev1, faulty=True)
    env.faults.lose["create_run"] = 1
    with pytest.raises(TransportFailure):                      # without a key: sent once
        dev.create_run(env.world.w1, "demo", "0123abc", [phase("a")])
    assert len(env.faults.calls("create_run")) == 1

    env.faults.lose["create_run"] = 1
    run = dev.create_run(env.world.w1, "demo", "0123abc", [phase("a")], idempotency_key="k1")
    assert len(env.faults.calls("create_run")) == 3            # lost, then sent again
    assert run.created is False and run.id == env.faults.lost[-1]["id"]


def test_no_connection_is_retried_then_raised(env: Env) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]                  # closed again: connections are refused
    attempts: list[float] = []
    client = ContractClient(f"http://127.0.0.1:{port}/rest/v1", "token", retry=FAST_RETRY,
                            sleep=attempts.append)
    with client, pytest.raises(TransportFailure) as failure:
        client.get_run(str(uuid.uuid4()))
    assert failure.value.sent is False and failure.value.status is None
    assert len(attempts) == FAST_RETRY.attempts - 1
    assert all(0 <= pause <= FAST_RETRY.max_wait for pause in attempts)


# --- waiting for work --------------------------------------------------------------------------

def _create_run_later(env: Env, delay: float) -> tuple[threading.Thread, dict[str, str]]:
    made: dict[str, str] = {}

    def create() -> None:
        time.sleep(delay)
        made["run_id"] = env.new_run()

    thread = threading.Thread(target=create)
    thread.start()
    return thread, made


def test_prefer_wait_wakes_on_a_new_run(env: Env) -> None:
    ex = env.client(env.world.exec1, faulty=True, timeout=2.0)
    thread, made = _create_run_later(env, 0.5)
    started = time.monotonic()
    claim = ex.claim_phase(["python"], 30, wait=10)
    elapsed = time.monotonic() - started
    thread.join()
    assert claim is not None and claim.run_id == made["run_id"]
    assert 0.4 <= elapsed < 3.0, elapsed   # woken by the new run (the gateway polls every 5 s)
    (_, _, headers), = env.faults.sent
    assert headers["prefer"] == "wait=10"          # and the 2 s read timeout was extended


def test_poll_for_work_waits_on_the_server_where_it_can(env: Env) -> None:
    pauses: list[float] = []
    ex = env.client(env.world.exec1, faulty=True, sleep=pauses.append)
    thread, made = _create_run_later(env, 1.5)
    claim = ex.poll_for_work(["python"], 30, wait=1.0, timeout=10)
    thread.join()
    assert claim is not None and claim.run_id == made["run_id"]
    assert ex.wait_supported is True
    # waits ran out empty until one was woken by the run: no sleeping polls in between (on a
    # loaded machine the run may come after the second wait has ended: a third wait, no sleep)
    assert len(env.faults.calls("claim_phase")) >= 2 and pauses == []


CLAIM = {
    "phase_id": str(uuid.uuid4()), "run_id": str(uuid.uuid4()), "workspace_id": str(uuid.uuid4()),
    "name": "bronze", "kind": "python", "params": {"entrypoint": "jobs:bronze"},
    "depends_on": [], "attempt": 1, "max_attempts": 3, "timeout_seconds": 3600,
    "lease_token": str(uuid.uuid4()), "lease_seconds": 60,
    "lease_expires_at": "2026-11-25T12:29:51.264769+00:00", "claim_id": None,
    "inputs": {}, "run": {"spec_slug": "odoo-medallion", "git_sha": "abcdef0", "env": "dev",
                          "input_manifest": {}, "labels": {}, "priority": 0,
                          "parent_run_id": None},
}


def test_poll_for_work_polls_a_postgrest_that_ignores_wait() -> None:
    """PostgREST as Supabase serves it: answers `null` at once whatever `Prefer` says, errors
    in `{code, message, details, hint}` with the SQLSTATE's status."""
    base = "https://project-ref.supabase.co/rest/v1"
    pauses: list[float] = []
    client = ContractClient(base, "executor-jwt", apikey="sb_publishable_key", retry=FAST_RETRY,
                            sleep=pauses.append)
    with respx.mock(base_url=base, assert_all_called=True) as server, client:
        claims = server.post("/rpc/claim_phase").mock(side_effect=[
            httpx.Response(200, content=b"null", headers=JSON) for _ in range(5)] + [
            body(503, "PGRST002",
                 "Could not query the database for the schema cache. Retrying.", None),
            httpx.Response(200, json=CLAIM)])
        heartbeat = server.post("/rpc/heartbeat").mock(return_value=body(
            409, "PT409", "lease token is not live: the phase was reclaimed or "
            "finished", "lease_lost"))

        claim = client.poll_for_work(["python"], 60, wait=20, idle_start=0.2, idle_max=1.0)

        assert claim is not None and claim.name == "bronze"
        assert client.wait_supported is False           # null at once: no wait here
        assert pauses[:5] == [0.2, 0.4, 0.8, 1.0, 1.0]   # doubling while idle, capped
        assert len(pauses) == 6                          # + one retry backoff for the 503
        requests = [call.request for call in claims.calls]
        assert len(requests) == 7
        assert requests[0].headers["prefer"] == "wait=20"
        assert all("prefer" not in r.headers for r in requests[1:])
        for request in requests:
            assert request.headers["apikey"] == "sb_publishable_key"
            assert request.headers["authorization"] == "Bearer executor-jwt"
            assert request.headers["content-profile"] == "ops"
        ids = [json.loads(r.content)["claim_id"] for r in requests]
        assert ids[5] == ids[6] and len(set(ids)) == 6   # one id per claim, kept on its retry

        with pytest.raises(LeaseLost):
            client.heartbeat(claim.lease_token)
        assert heartbeat.call_count == 1


def test_poll_for_work_gives_up_at_its_timeout_or_stop(env: Env) -> None:
    ex = env.client(env.world.exec1, faulty=True)
    started = time.monotonic()
    assert ex.poll_for_work(["python"], wait=0.3, idle_start=0.05, timeout=0.6) is None
    assert time.monotonic() - started < 2.0
    stop = threading.Event()
    stop.set()
    assert ex.poll_for_work(["python"], stop=stop) is None


def test_the_contract_package_imports_nothing_else_of_ours() -> None:
    """`control_room.contract` (what workers import) loads only itself of ours, and neither the
    database driver nor the server."""
    probe = ("import sys, control_room.contract.client; "
             "ours = [m for m in sys.modules if m.split('.')[0] == 'control_room' "
             "and m != 'control_room' and not m.startswith('control_room.contract')]; "
             "theirs = [m for m in ('psycopg', 'starlette', 'uvicorn', 'duckdb') "
             "if m in sys.modules]; "
             "print(ours + theirs); sys.exit(bool(ours or theirs))")
    done = subprocess.run([sys.executable, "-c", probe], check=False, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stdout + done.stderr
