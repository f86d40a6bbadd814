"""32 executors over HTTP drain 2,000 phases through the real gateway on a real port.

Each client is a thread with an httpx.Client of its own (keep-alive) and a token of its own
executor principal; the workspace, its members and the runs are made through the contract over
HTTP too. Clients claim (every fourth with `Prefer: wait=2`, the others poll), some heartbeat,
and complete; some phases fail once with `retryable` and no backoff, so they come straight back
to the queue. Whatever the interleaving, this must hold: no 5xx, no unexpected refusal, every
(phase, attempt) claimed by one client, every phase succeeded exactly once, every run succeeded
with a complete, gap-free event trail, and the gateway's metrics saw exactly what clients saw.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from control_room.db.store import ContractError
from control_room.gateway.auth import mint_token
from tests.contract.conftest import http_error
from tests.helpers import TEST_JWT_SECRET, running_gateway

pytestmark = pytest.mark.slow

CLIENTS = 32
RUNS = 100
PHASES_PER_RUN = 20
POOL_MAX_SIZE = 16
WAIT_SECONDS = 2
DEADLINE_SECONDS = 90.0
FAIL_ONCE_AT = (2, 9, 15)   # phase indexes that fail once in every third run


# ---------------------------------------------------------------------------------------------
# the workload
# ---------------------------------------------------------------------------------------------

def run_phases(i: int) -> list[dict[str, Any]]:
    """Twenty phases of run i: independent, pairs, fan-out/fan-in or layered diamonds."""
    n, shape = PHASES_PER_RUN, i % 4
    specs: list[dict[str, Any]]
    if shape == 0:
        specs = [{"name": f"i{k:02d}", "kind": "noop"} for k in range(n)]
    elif shape == 1:
        specs = [{"name": f"a{k}", "kind": "noop"} for k in range(n // 2)]
        specs += [{"name": f"b{k}", "kind": "noop", "depends_on": [f"a{k}"]}
                  for k in range(n // 2)]
    elif shape == 2:
        middle = [f"m{k:02d}" for k in range(n - 2)]
        specs = [{"name": "root", "kind": "noop"}]
        specs += [{"name": m, "kind": "noop", "depends_on": ["root"]} for m in middle]
        specs += [{"name": "sink", "kind": "noop", "depends_on": middle}]
    else:
        layers = [[f"l{layer}_{k}" for k in range(5)] for layer in range(n // 5)]
        specs = [{"name": name, "kind": "noop"} for name in layers[0]]
        for layer in range(1, len(layers)):
            specs += [{"name": name, "kind": "noop", "depends_on": layers[layer - 1]}
                      for name in layers[layer]]
    if i % 3 == 0:
        for k in FAIL_ONCE_AT:
            specs[k]["params"] = {"fail_once": True}
            specs[k]["retry_backoff_seconds"] = 0
    return specs


# ---------------------------------------------------------------------------------------------
# what the clients saw
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Claim:
    client: int
    phase_id: str
    run_id: str
    name: str
    attempt: int
    token: str
    fail_once: bool


@dataclass
class Ledger:
    """Shared by the client threads; every field is guarded by `lock`."""

    total: int
    lock: threading.Lock = field(default_factory=threading.Lock)
    finished: threading.Event = field(default_factory=threading.Event)
    failed: threading.Event = field(default_factory=threading.Event)   # stop early on an error
    requests: Counter[tuple[str, int]] = field(default_factory=Counter)
    claims: list[Claim] = field(default_factory=list)
    holders: dict[str, Claim] = field(default_factory=dict)
    completions: list[tuple[Claim, str, dict[str, Any]]] = field(default_factory=list)
    heartbeats: list[tuple[Claim, dict[str, Any]]] = field(default_factory=list)
    waiting_claims: int = 0
    waiting_hits: int = 0
    waiting_empty_seconds: list[float] = field(default_factory=list)
    succeeded: int = 0
    errors: list[str] = field(default_factory=list)

    def answered(self, fn: str, status: int) -> None:
        with self.lock:
            self.requests[(fn, status)] += 1

    def error(self, message: str) -> None:
        with self.lock:
            self.errors.append(message)
        self.failed.set()

    def claimed(self, claim: Claim) -> None:
        with self.lock:
            self.claims.append(claim)
            other = self.holders.get(claim.phase_id)
            if other is not None:
                self.errors.append(f"two live holders of {claim.phase_id}: {other} and {claim}")
                self.failed.set()
            self.holders[claim.phase_id] = claim

    def releasing(self, claim: Claim) -> None:
        """Before complete_phase: whoever claims the phase next claims after this."""
        with self.lock:
            if self.holders.get(claim.phase_id) == claim:
                del self.holders[claim.phase_id]

    def completed(self, claim: Claim, outcome: str, answer: dict[str, Any]) -> None:
        with self.lock:
            self.completions.append((claim, outcome, answer))
            if answer.get("phase_state") == "succeeded":
                self.succeeded += 1
                if self.succeeded >= self.total:
                    self.finished.set()


class RpcFailed(Exception):
    """The gateway refused or failed a call; already recorded in the ledger."""


def rpc(client: httpx.Client, ledger: Ledger, fn: str, args: dict[str, Any],
        headers: dict[str, str] | None = None) -> Any:
    """POST /rest/v1/rpc/<fn>; count the answer; record and raise on anything but 200."""
    try:
        response = client.post(f"/rest/v1/rpc/{fn}", json=args, headers=headers)
    except httpx.HTTPError as exc:
        ledger.error(f"{fn}: transport error {exc!r}")
        raise RpcFailed(fn) from exc
    ledger.answered(fn, response.status_code)
    if response.status_code >= 500:
        ledger.error(f"{fn}: HTTP {response.status_code} {response.text[:500]}")
        raise RpcFailed(fn)
    if response.status_code >= 400:
        exc2: ContractError = http_error(response)
        ledger.error(f"{fn}: HTTP {response.status_code} {exc2.sqlstate} {exc2.code}: "
                     f"{exc2.message}")
        raise RpcFailed(fn) from exc2
    if response.status_code != 200:
        ledger.error(f"{fn}: HTTP {response.status_code} {response.text[:500]}")
        raise RpcFailed(fn)
    return response.json()


def client_for(url: str, role: str, sub: str | None = None,
               workspaces: list[str] | None = None) -> httpx.Client:
    token = mint_token(TEST_JWT_SECRET, role=role, sub=sub, ttl_seconds=3600,
                       workspaces=workspaces)
    return httpx.Client(base_url=url, timeout=60, headers={
        "Authorization": f"Bearer {token}", "Content-Profile": "ops"})


# ---------------------------------------------------------------------------------------------
# the database afterwards, read as the superuser (past row level security)
# ---------------------------------------------------------------------------------------------

def rows(conn: psycopg.Connection[Any], query: str, workspace_id: str) -> list[tuple[Any, ...]]:
    found = conn.execute(query, (workspace_id,)).fetchall()
    conn.rollback()
    return found


def expected_trail(fail_once: bool) -> list[tuple[str, int]]:
    """The lifecycle events of one phase, as (type, attempt), in order."""
    if fail_once:
        return [("PHASE_QUEUED", 0), ("PHASE_CLAIMED", 1), ("PHASE_FAILED", 1),
                ("PHASE_RETRY_SCHEDULED", 1), ("PHASE_CLAIMED", 2), ("PHASE_SUCCEEDED", 2)]
    return [("PHASE_QUEUED", 0), ("PHASE_CLAIMED", 1), ("PHASE_SUCCEEDED", 1)]


# ---------------------------------------------------------------------------------------------
# the test
# ---------------------------------------------------------------------------------------------

@pytest.fixture
def gateway_url(db_url: str) -> Iterator[str]:
    with running_gateway(db_url, pool_min_size=4, pool_max_size=POOL_MAX_SIZE) as url:
        yield url


def test_thirty_two_http_clients_drain_two_thousand_phases(
    gateway_url: str, conn: psycopg.Connection[Any]
) -> None:
    specs = {i: run_phases(i) for i in range(RUNS)}
    total = sum(len(s) for s in specs.values())
    assert total == 2000
    ledger = Ledger(total=total)

    # setup through the contract over HTTP: service_role makes the workspace and its members
    executors = [str(uuid.uuid4()) for _ in range(CLIENTS)]
    developer = str(uuid.uuid4())
    with client_for(gateway_url, "service_role") as service:
        ws: str = rpc(service, ledger, "create_workspace",
                      {"slug": "gateway-concurrency", "name": "gateway concurrency"})["id"]
        for k, principal in enumerate(executors):
            rpc(service, ledger, "add_member", {"workspace_id": ws, "principal_id": principal,
                                                "role": "executor", "name": f"executor-{k}"})
        rpc(service, ledger, "add_member", {"workspace_id": ws, "principal_id": developer,
                                            "role": "developer", "name": "developer"})
    run_of: dict[str, int] = {}
    with client_for(gateway_url, "authenticated", developer) as dev:
        for i, phases in specs.items():
            run = rpc(dev, ledger, "create_run", {"workspace_id": ws, "spec_slug": f"shape-{i % 4}",
                                                  "git_sha": "0123abc", "phases": phases})
            assert run["created"] is True and len(run["phases"]) == PHASES_PER_RUN
            run_of[run["id"]] = i
    assert not ledger.errors, ledger.errors

    start = threading.Barrier(CLIENTS + 1)
    deadline = time.monotonic() + DEADLINE_SECONDS

    def work(k: int) -> None:
        try:
            drain(k)
        except BaseException as exc:   # a thread's exception would otherwise vanish
            ledger.error(f"client {k} crashed: {exc!r}")
            raise

    def drain(k: int) -> None:
        waits, beats = k % 4 == 0, k % 3 == 0
        claim_headers = {"Prefer": f"wait={WAIT_SECONDS}"} if waits else None
        with client_for(gateway_url, "authenticated", executors[k], [ws]) as client:
            start.wait(60)
            while not (ledger.finished.is_set() or ledger.failed.is_set()):
                if time.monotonic() > deadline:
                    ledger.error(f"client {k}: deadline passed with phases left")
                    return
                asked = time.monotonic()
                try:
                    got = rpc(client, ledger, "claim_phase", {
                        "kinds": ["noop"], "lease_seconds": 300, "workspace_id": ws,
                        "claim_id": str(uuid.uuid4())}, claim_headers)
                except RpcFailed:
                    time.sleep(0.05)
                    continue
                if waits:
                    with ledger.lock:
                        ledger.waiting_claims += 1
                        if got is None:
                            ledger.waiting_empty_seconds.append(time.monotonic() - asked)
                        else:
                            ledger.waiting_hits += 1
                if got is None:
                    if not waits:
                        time.sleep(0.01)
                    continue
                claim = Claim(k, got["phase_id"], got["run_id"], got["name"], got["attempt"],
                              got["lease_token"], bool(got["params"].get("fail_once")))
                ledger.claimed(claim)
                try:
                    if beats:
                        beat = rpc(client, ledger, "heartbeat", {
                            "lease_token": claim.token, "progress": {"client": k}})
                        with ledger.lock:
                            ledger.heartbeats.append((claim, beat))
                    if claim.fail_once and claim.attempt == 1:
                        outcome = "failed"
                        extra: dict[str, Any] = {"error": {"message": "transient"},
                                                 "retryable": True}
                    else:
                        outcome, extra = "succeeded", {"output_manifest": {"client": k}}
                    ledger.releasing(claim)
                    answer = rpc(client, ledger, "complete_phase", {
                        "lease_token": claim.token, "outcome": outcome, **extra})
                except RpcFailed:
                    continue
                ledger.completed(claim, outcome, answer)

    threads = [threading.Thread(target=work, args=(k,), name=f"client-{k}")
               for k in range(CLIENTS)]
    for t in threads:
        t.start()
    start.wait(60)
    began = time.monotonic()
    for t in threads:
        t.join(DEADLINE_SECONDS + 30)
    elapsed = time.monotonic() - began
    assert not any(t.is_alive() for t in threads), "clients still running after the deadline"

    # --- what the clients saw --------------------------------------------------------------
    assert not ledger.errors, f"{len(ledger.errors)} errors, first: {ledger.errors[:10]}"
    statuses: Counter[int] = Counter()
    for (_, status), n in ledger.requests.items():
        statuses[status] += n
    assert set(statuses) == {200}, statuses
    assert ledger.succeeded == total, (ledger.succeeded, total, f"{elapsed:.1f} s")

    claimed = Counter((c.phase_id, c.attempt) for c in ledger.claims)
    doubled = {key: n for key, n in claimed.items() if n > 1}
    assert not doubled, f"(phase, attempt) claimed more than once: {list(doubled)[:10]}"
    attempts: dict[str, set[int]] = defaultdict(set)
    fail_once: dict[str, bool] = {}
    for c in ledger.claims:
        attempts[c.phase_id].add(c.attempt)
        fail_once[c.phase_id] = c.fail_once
    assert len(attempts) == total
    for phase_id, seen in attempts.items():
        assert seen == ({1, 2} if fail_once[phase_id] else {1}), (phase_id, seen)
    n_fail_once = sum(fail_once.values())
    assert n_fail_once == len(FAIL_ONCE_AT) * len(range(0, RUNS, 3))
    assert len(ledger.claims) == total + n_fail_once

    assert len(ledger.completions) == len(ledger.claims)
    finishing: Counter[str] = Counter()
    for c, outcome, answer in ledger.completions:
        assert answer["phase_id"] == c.phase_id and answer["attempt"] == c.attempt, answer
        assert answer["replayed"] is False, answer
        expected_state = "queued" if outcome == "failed" else "succeeded"
        assert answer["phase_state"] == expected_state, (c, outcome, answer)
        if answer["run_state"] == "succeeded":
            finishing[answer["run_id"]] += 1
    assert finishing == Counter(dict.fromkeys(run_of, 1)), "each run finished by one completion"

    assert ledger.heartbeats, "no client heartbeat"
    for c, beat in ledger.heartbeats:
        assert beat["phase_id"] == c.phase_id and beat["phase_state"] == "running", beat
        assert beat["cancel_requested"] is False, beat
    assert ledger.waiting_hits > 0, "no waiting claim ever got a phase"
    too_early = [s for s in ledger.waiting_empty_seconds if s < WAIT_SECONDS - 0.1]
    assert not too_early, f"waiting claims answered null before their wait: {too_early}"

    # --- what the gateway counted ----------------------------------------------------------
    metrics = httpx.get(f"{gateway_url}/metrics", timeout=30)
    assert metrics.status_code == 200
    served: Counter[tuple[str, int]] = Counter()
    for family in text_string_to_metric_families(metrics.text):
        for sample in family.samples:
            if sample.name == "control_room_requests_total":
                served[(sample.labels["function"], int(sample.labels["status"]))] += int(
                    sample.value)
    assert not {key for key in served if key[1] >= 500}, served
    assert +served == +ledger.requests, (served, ledger.requests)

    # --- what the database holds -----------------------------------------------------------
    check_database(conn, ws, set(run_of), fail_once, set(claimed))


def check_database(conn: psycopg.Connection[Any], ws: str, run_ids: set[str],
                   fail_once: dict[str, bool], claimed: set[tuple[str, int]]) -> None:
    """Every phase succeeded once, every run succeeded, every trail complete and gap-free."""
    total = len(fail_once)
    table = rows(conn, "select id::text, run_id::text, name, state, attempt, depends_on "
                       "from ops.phases where workspace_id = %s", ws)
    assert len(table) == total
    assert Counter(row[3] for row in table) == {"succeeded": total}
    phase_rows: dict[str, dict[str, tuple[str, list[str]]]] = defaultdict(dict)
    for pid, run_id, name, _, attempt, depends_on in table:
        assert attempt == (2 if fail_once[pid] else 1), (pid, name, attempt)
        phase_rows[run_id][name] = (pid, list(depends_on))
    runs = rows(conn, "select id::text, state from ops.runs where workspace_id = %s", ws)
    assert dict(runs) == dict.fromkeys(run_ids, "succeeded")
    events = rows(conn, "select run_id::text, seq, type, phase, attempt from ops.run_events "
                        "where workspace_id = %s order by run_id, seq", ws)
    assert sum(1 for e in events if e[2] == "PHASE_SUCCEEDED") == total

    by_run: dict[str, list[tuple[int, str, str | None, int | None]]] = defaultdict(list)
    for ev_run, ev_seq, ev_type, ev_phase, ev_attempt in events:
        by_run[ev_run].append((ev_seq, ev_type, ev_phase, ev_attempt))
    assert set(by_run) == run_ids
    claimed_in_trail: set[tuple[str, int]] = set()
    for run_id, trail in by_run.items():
        assert [e[0] for e in trail] == list(range(1, len(trail) + 1)), f"run {run_id}: seq gaps"
        assert [e[1] for e in trail if e[2] is None] == ["RUN_CREATED", "RUN_SUCCEEDED"], run_id
        assert trail[0][1] == "RUN_CREATED" and trail[-1][1] == "RUN_SUCCEEDED", run_id
        per_phase: dict[str, list[tuple[int, str, int | None]]] = defaultdict(list)
        for seq, type_, phase_name, phase_attempt in trail:
            if phase_name is not None:
                per_phase[phase_name].append((seq, type_, phase_attempt))
        assert set(per_phase) == set(phase_rows[run_id]), run_id
        for name, lifecycle in per_phase.items():
            pid, deps = phase_rows[run_id][name]
            assert [(t, a) for _, t, a in lifecycle] == expected_trail(fail_once[pid]), (
                run_id, name, lifecycle)
            claimed_in_trail |= {(pid, a) for _, t, a in lifecycle
                                 if t == "PHASE_CLAIMED" and a is not None}
            queued_seq = lifecycle[0][0]
            for dep in deps:
                assert per_phase[dep][-1][0] < queued_seq, f"run {run_id}: {name} before {dep}"
    assert claimed_in_trail == claimed, "the trail's claims are the clients' claims"
