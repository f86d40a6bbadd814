"""The contract under concurrency: many executors, each on its own connection, racing for phases.

What must hold whatever the interleaving: one live holder per phase, every (phase, attempt)
claimed once, every phase of a finished run succeeded exactly once, every run terminal with a
gap-free, well-ordered event trail, and no deadlock or serialization failure reaching a client.
Lease expiry is driven by the test clock (`now=`), never by sleeping. Every worker is a
direct-SQL connection of its own (tests/gateway/test_gateway_concurrency.py does the same over
HTTP).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from control_room.db.store import ContractError

from .conftest import SERVICE, Contract, Principal, phase, user

WORKERS = 16
RUNS = 100
PHASES_PER_RUN = 20
CANCELLED_RUNS = (5, 25, 45, 65, 85)      # chains, cancelled by a developer mid-flight
CANCEL_WHILE_RUNNING = (5, 25, 45)        # ...of which these are cancelled while s03 runs
DEADLINE_SECONDS = 240.0


# --------------------------------------------------------------------------------------------
# the event trail of a run, checked transition by transition
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Event:
    seq: int
    type: str
    phase: str | None
    attempt: int | None
    payload: dict[str, Any]


def load_events(conn: psycopg.Connection[Any], workspace_id: str) -> dict[str, list[Event]]:
    """run id -> its events in seq order (read as the superuser, past row level security)."""
    rows = conn.execute(
        "select run_id::text, seq, type, phase, attempt, payload from ops.run_events "
        "where workspace_id = %s order by run_id, seq",
        (workspace_id,),
    ).fetchall()
    conn.rollback()
    out: dict[str, list[Event]] = defaultdict(list)
    for run_id, seq, type_, phase_name, attempt, payload in rows:
        out[run_id].append(Event(seq, type_, phase_name, attempt, payload))
    return dict(out)


def load_phases(conn: psycopg.Connection[Any], workspace_id: str) -> dict[str, dict[str, Any]]:
    """phase id -> its row's id, run, name, state, attempt and whether it holds a live lease."""
    rows = conn.execute(
        "select id::text, run_id::text, name, state, attempt, lease_expires_at is not null "
        "from ops.phases where workspace_id = %s",
        (workspace_id,),
    ).fetchall()
    conn.rollback()
    return {
        pid: {"id": pid, "run_id": rid, "name": name, "state": state, "attempt": attempt,
              "leased": leased}
        for pid, rid, name, state, attempt, leased in rows
    }


def load_runs(conn: psycopg.Connection[Any], workspace_id: str) -> dict[str, str]:
    rows = conn.execute(
        "select id::text, state from ops.runs where workspace_id = %s", (workspace_id,)
    ).fetchall()
    conn.rollback()
    return {rid: state for rid, state in rows}


def walk_phase(name: str, events: list[Event]) -> tuple[str, int]:
    """Replay one phase's lifecycle events; fail on an illegal step. Returns (state, attempt).

    States are the database's, plus `retrying` (failed, retry not yet scheduled: both are
    written by one transaction), `expired` (its lease expired; a claim follows in the same
    transaction) and `stopping` (cancelled while running; its executor has not reported yet).
    """
    state, attempt = "waiting", 0
    for e in events:
        where = f"phase {name} seq {e.seq}: {e.type} in state {state}"
        if e.type == "PHASE_QUEUED":
            assert state == "waiting" and e.attempt == 0, where
            state = "queued"
        elif e.type == "PHASE_CLAIMED":
            assert state in ("queued", "expired"), where
            assert e.attempt == attempt + 1, f"{where}: attempt {e.attempt} after {attempt}"
            attempt, state = attempt + 1, "running"
        elif e.type == "PHASE_SUCCEEDED":
            assert state == "running" and e.attempt == attempt, where
            state = "succeeded"
        elif e.type == "PHASE_FAILED":
            assert state in ("running", "expired") and e.attempt == attempt, where
            state = "failed" if e.payload.get("final") else "retrying"
        elif e.type == "PHASE_RETRY_SCHEDULED":
            assert state == "retrying" and e.attempt == attempt, where
            state = "queued"
        elif e.type == "LEASE_EXPIRED":
            assert state == "running" and e.attempt == attempt, where
            state = "expired"
        elif e.type == "PHASE_CANCELLED":
            assert state in ("waiting", "queued", "running"), where
            assert e.payload.get("was") == state, f"{where}: payload says was={e.payload}"
            state = "stopping" if state == "running" else "cancelled"
        elif e.type == "PHASE_STOPPED":
            assert state == "stopping" and e.attempt == attempt, where
            state = "cancelled"
        elif e.type == "PHASE_SKIPPED":
            assert state in ("waiting", "queued"), where
            state = "skipped"
        else:
            raise AssertionError(f"{where}: unexpected event type")
    return state, attempt


def check_run_trail(run_id: str, run_state: str, events: list[Event],
                    phases: list[dict[str, Any]]) -> dict[str, tuple[str, int]]:
    """Check one run's whole trail against its final rows; return phase name -> (state, attempt)."""
    assert [e.seq for e in events] == list(range(1, len(events) + 1)), f"run {run_id}: seq gaps"
    assert events[0].type == "RUN_CREATED", f"run {run_id} starts with {events[0].type}"
    run_level = [e.type for e in events if e.phase is None]
    if run_state == "succeeded":
        assert run_level == ["RUN_CREATED", "RUN_SUCCEEDED"], (run_id, run_level)
        assert events[-1].type == "RUN_SUCCEEDED", (run_id, events[-1])
    elif run_state == "cancelled":
        assert run_level == ["RUN_CREATED", "RUN_CANCELLED"], (run_id, run_level)
        last_run_event = max(e.seq for e in events if e.type == "RUN_CANCELLED")
        # after the cancel only executors that were running report that they stopped
        assert {e.type for e in events if e.seq > last_run_event} <= {"PHASE_STOPPED"}, run_id
    elif run_state == "failed":
        assert run_level == ["RUN_CREATED", "RUN_FAILED"], (run_id, run_level)
    else:
        raise AssertionError(f"run {run_id} ended {run_state}, not in a terminal state")
    by_phase: dict[str, list[Event]] = defaultdict(list)
    for e in events:
        if e.phase is not None:
            by_phase[e.phase].append(e)
    walked: dict[str, tuple[str, int]] = {}
    for p in phases:
        final, attempt = walk_phase(p["name"], by_phase.pop(p["name"], []))
        db_state = "cancelled" if final == "stopping" else final
        assert db_state == p["state"], f"run {run_id} phase {p['name']}: trail {final}, row {p}"
        assert attempt == p["attempt"], f"run {run_id} phase {p['name']}: trail attempt {attempt}"
        walked[p["name"]] = (final, attempt)
    assert not by_phase, f"run {run_id}: events of unknown phases {sorted(by_phase)}"
    return walked


# --------------------------------------------------------------------------------------------
# the workload
# --------------------------------------------------------------------------------------------

def run_shape(i: int) -> list[dict[str, Any]]:
    """Twenty phases of run i: chains, fan-out/fan-in, independent, layered diamonds, pairs."""
    n = PHASES_PER_RUN
    shape = i % 5
    if shape == 0:
        specs = [phase("s00")]
        specs += [phase(f"s{k:02d}", "python", f"s{k - 1:02d}") for k in range(1, n)]
    elif shape == 1:
        middle = [f"m{k:02d}" for k in range(n - 2)]
        specs = [phase("root")] + [phase(m, "sql", "root") for m in middle] + [
            phase("sink", "python", *middle)]
    elif shape == 2:
        specs = [phase(f"i{k:02d}", "python" if k % 2 else "sql") for k in range(n)]
    elif shape == 3:
        layers = [[f"l{layer}_{k}" for k in range(5)] for layer in range(n // 5)]
        specs = [phase(name) for name in layers[0]]
        for layer in range(1, len(layers)):
            specs += [phase(name, "python", *layers[layer - 1]) for name in layers[layer]]
    else:
        specs = [phase(f"a{k}") for k in range(n // 2)] + [
            phase(f"b{k}", "sql", f"a{k}") for k in range(n // 2)]
    if i in CANCELLED_RUNS:
        for spec in specs:
            spec["params"] = {"work_ms": 10}
        if i in CANCEL_WHILE_RUNNING:
            # its executor waits after claiming s03 until the run has been cancelled
            specs[3]["params"]["hold_for_cancel"] = True
    elif i % 4 == 2:
        # these fail once with a retryable error and come straight back (no backoff)
        for k in (3, 11, 17):
            specs[k]["params"] = {"fail_once": True}
            specs[k]["retry_backoff_seconds"] = 0
    return specs


@dataclass(frozen=True)
class Claim:
    worker: int
    phase_id: str
    run_id: str
    name: str
    token: str
    attempt: int


@dataclass(frozen=True)
class Completion:
    claim: Claim
    outcome: str
    answer: dict[str, Any] | None
    error: ContractError | None


@dataclass
class Ledger:
    """What the clients saw, shared by the worker threads."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    claims: list[Claim] = field(default_factory=list)
    completions: list[Completion] = field(default_factory=list)
    heartbeats: list[tuple[Claim, dict[str, Any]]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    holders: dict[str, Claim] = field(default_factory=dict)

    def claimed(self, claim: Claim) -> None:
        with self.lock:
            self.claims.append(claim)
            other = self.holders.get(claim.phase_id)
            if other is not None:
                # the other holder has not even started to complete: two live holders
                self.errors.append(f"two live holders of {claim.phase_id}: {other} and {claim}")
            self.holders[claim.phase_id] = claim

    def releasing(self, claim: Claim) -> None:
        """Called before complete_phase: whoever claims the phase next claims after this."""
        with self.lock:
            if self.holders.get(claim.phase_id) == claim:
                del self.holders[claim.phase_id]

    def error(self, message: str) -> None:
        with self.lock:
            self.errors.append(message)


def describe(exc: ContractError) -> str:
    return f"{exc.sqlstate} {exc.code}: {exc.message}"


@pytest.fixture
def connect(db_url: str) -> Iterator[Callable[[], Contract]]:
    """Contracts on connections of their own (one per thread), all closed afterwards."""
    opened: list[psycopg.Connection[Any]] = []
    lock = threading.Lock()

    def make() -> Contract:
        conn = psycopg.connect(db_url)
        with lock:
            opened.append(conn)
        return Contract(conn)

    yield make
    for conn in opened:
        conn.close()


def make_workspace(contract: Contract, slug: str, members: dict[str, Principal]) -> str:
    """A workspace made by service_role with the given principals (role -> principal)."""
    ws: str = contract.call("create_workspace", {"slug": slug, "name": slug}, as_=SERVICE)["id"]
    for role_and_label, who in members.items():
        role = role_and_label.split(":")[0]
        contract.call("add_member", {"workspace_id": ws, "principal_id": str(who.sub),
                                     "role": role, "name": who.label}, as_=SERVICE)
    return ws


def unfinished_runs(conn: psycopg.Connection[Any], workspace_id: str) -> int:
    row = conn.execute(
        "select count(*) from ops.runs where workspace_id = %s and state in ('queued', 'running')",
        (workspace_id,),
    ).fetchone()
    conn.rollback()
    assert row is not None
    return int(row[0])


# --------------------------------------------------------------------------------------------
# 16 executors, 2,000 phases
# --------------------------------------------------------------------------------------------

# `slow` (make test runs it, make test-fast does not): 2,000 phases through 16 connections take
# 10 to 15 s; its twin over HTTP (tests/gateway/test_gateway_concurrency.py) is slow too.
@pytest.mark.slow
@pytest.mark.parametrize("mode", ["single", "batched"])
def test_sixteen_executors_drain_two_thousand_phases(
    sql_contract: Contract, connect: Callable[[], Contract], mode: str
) -> None:
    """`batched`: every other executor claims up to four phases at once (`claim_phases`) and
    completes what it claimed in one call (`complete_phases`), racing the single callers."""
    contract = sql_contract   # the workers are connections to the database itself
    executors = [user(f"exec{k}") for k in range(WORKERS)]
    dev = user("dev")
    members = {"developer:dev": dev} | {f"executor:{k}": e for k, e in enumerate(executors)}
    ws = make_workspace(contract, "concurrency", members)
    executors = [e.pinned(ws) for e in executors]   # their tokens are pinned to it
    run_ids: list[str] = []
    for i in range(RUNS):
        run = contract.call("create_run", {"workspace_id": ws, "spec_slug": f"shape-{i % 5}",
                                           "git_sha": "0123abc", "phases": run_shape(i)}, as_=dev)
        run_ids.append(run["id"])
    cancelled = {run_ids[i] for i in CANCELLED_RUNS}
    assert sum(len(run_shape(i)) for i in range(RUNS)) == 2000

    ledger = Ledger()
    held = {run_ids[i]: threading.Event() for i in CANCEL_WHILE_RUNNING}
    cancel_done = {run_ids[i]: threading.Event() for i in CANCEL_WHILE_RUNNING}
    start = threading.Barrier(WORKERS + 1)
    stop = threading.Event()
    deadline = time.monotonic() + DEADLINE_SECONDS

    def work(k: int) -> None:
        me = executors[k]
        c = connect()
        start.wait()
        batched = mode == "batched" and k % 2 == 1
        fn = "claim_phases" if batched else "claim_phase"
        while not stop.is_set():
            if time.monotonic() > deadline:
                ledger.error(f"worker {k}: deadline passed with runs unfinished")
                return
            args = {"lease_seconds": 300, "workspace_id": ws, "claim_id": str(uuid.uuid4())}
            try:
                answer = c.call(fn, args | ({"limit": 4} if batched else {}), as_=me)
            except ContractError as exc:
                ledger.error(f"worker {k}: {fn} raised {describe(exc)}")
                continue
            got_all: list[dict[str, Any]] = (answer if batched else
                                             [] if answer is None else [answer])
            if not got_all:
                if unfinished_runs(c.conn, ws) == 0:
                    return
                time.sleep(0.005)
                continue
            # a batch's phases that wait for their run's cancel come last: the others are
            # completed first (a worker completes what has finished, it does not hold it back)
            holds = [got for got in got_all if got["params"].get("hold_for_cancel")]
            for got in holds:       # all held now: the canceller may take their runs in any order
                held[got["run_id"]].set()
            for group in ([got for got in got_all if got not in holds], holds):
                done = [one(k, me, c, got) for got in group]
                if batched and done:
                    complete_all(k, me, c, done)

    def one(k: int, me: Principal, c: Contract, got: dict[str, Any]
            ) -> tuple[Claim, str, dict[str, Any]]:
        """One claimed phase worked on; completed here unless the executor batches."""
        batched = mode == "batched" and k % 2 == 1
        claim = Claim(k, got["phase_id"], got["run_id"], got["name"], got["lease_token"],
                      got["attempt"])
        ledger.claimed(claim)
        params: dict[str, Any] = got["params"]
        stop_requested = False
        if params.get("hold_for_cancel"):
            held[claim.run_id].set()
            if not cancel_done[claim.run_id].wait(DEADLINE_SECONDS):
                ledger.error(f"worker {k}: run of {claim} was never cancelled")
        if k % 4 == 0 or "work_ms" in params:
            time.sleep(params.get("work_ms", 0) / 2000)
            try:
                beat = c.call("heartbeat", {"lease_token": claim.token,
                                            "progress": {"pct": 50}}, as_=me)
            except ContractError as exc:
                ledger.error(f"worker {k}: heartbeat of {claim} raised {describe(exc)}")
            else:
                with ledger.lock:
                    ledger.heartbeats.append((claim, beat))
                stop_requested = bool(beat["cancel_requested"])
            time.sleep(params.get("work_ms", 0) / 2000)
        if stop_requested:
            outcome, extra = "failed", {"error": {"message": "stopped: cancel requested"},
                                        "retryable": False}
        elif params.get("fail_once") and claim.attempt == 1:
            outcome, extra = "failed", {"error": {"message": "transient"}, "retryable": True}
        else:
            outcome, extra = "succeeded", {"output_manifest": {"by": k}}
        ledger.releasing(claim)
        if batched:
            return claim, outcome, extra
        try:
            answer = c.call("complete_phase", {"lease_token": claim.token, "outcome": outcome,
                                               **extra}, as_=me)
        except ContractError as exc:
            with ledger.lock:
                ledger.completions.append(Completion(claim, outcome, None, exc))
            if not (exc.code == "lease_lost" and claim.run_id in cancelled):
                ledger.error(f"worker {k}: complete_phase of {claim} raised {describe(exc)}")
        else:
            with ledger.lock:
                ledger.completions.append(Completion(claim, outcome, answer, None))
        return claim, outcome, extra

    def complete_all(k: int, me: Principal, c: Contract,
                     done: list[tuple[Claim, str, dict[str, Any]]]) -> None:
        completions = [{"lease_token": claim.token, "outcome": outcome, **extra}
                       for claim, outcome, extra in done]
        try:
            answers = c.call("complete_phases", {"completions": completions}, as_=me)
        except ContractError as exc:
            ledger.error(f"worker {k}: complete_phases raised {describe(exc)}")
            return
        if len(answers) != len(done):
            ledger.error(f"worker {k}: complete_phases answered {len(answers)} of {len(done)}")
        for (claim, outcome, _), answer in zip(done, answers, strict=False):
            if answer["lease_token"] != claim.token:
                ledger.error(f"worker {k}: complete_phases answered out of order: {answer}")
            if answer.get("error") is not None:
                with ledger.lock:
                    ledger.completions.append(Completion(claim, outcome, None, None))
                if not (answer["error"]["code"] == "lease_lost" and claim.run_id in cancelled):
                    ledger.error(f"worker {k}: complete_phases of {claim} answered {answer}")
            else:
                with ledger.lock:
                    ledger.completions.append(Completion(claim, outcome, answer, None))

    def cancel() -> None:
        c = connect()
        start.wait()
        for i in CANCELLED_RUNS:
            rid = run_ids[i]
            while i in CANCEL_WHILE_RUNNING and not held[rid].wait(0.01):
                if time.monotonic() > deadline:
                    break
            while i not in CANCEL_WHILE_RUNNING and time.monotonic() < deadline:
                row = c.conn.execute(
                    "select count(*) filter (where state = 'succeeded'), "
                    "count(*) filter (where state = 'running') from ops.phases where run_id = %s",
                    (rid,),
                ).fetchone()
                c.conn.rollback()
                assert row is not None
                if row[0] >= 2:
                    break
                time.sleep(0.002)
            try:
                answer = c.call("cancel_run", {"run_id": rid, "reason": "test"}, as_=dev)
            except ContractError as exc:
                ledger.error(f"cancel_run of run {i} raised {describe(exc)}")
            else:
                if answer["state"] != "cancelled":
                    ledger.error(f"cancel_run of run {i} answered {answer['state']}")
            if rid in cancel_done:
                cancel_done[rid].set()

    began = time.monotonic()
    with ThreadPoolExecutor(max_workers=WORKERS + 1) as pool:
        futures: list[Future[None]] = [pool.submit(work, k) for k in range(WORKERS - 1)]
        futures.append(pool.submit(cancel))
        futures.append(pool.submit(work, WORKERS - 1))
        try:
            for f in futures:
                f.result(timeout=DEADLINE_SECONDS + 30)
        finally:
            stop.set()
    elapsed = time.monotonic() - began
    print(f"\n{len(ledger.claims)} claims, {len(ledger.completions)} completions, "
          f"{len(ledger.heartbeats)} heartbeats by {WORKERS} executors in {elapsed:.1f} s")

    # nothing but the expected refusals reached a client: no deadlock (40P01), no 40001
    assert ledger.errors == []

    # every (phase, attempt) was claimed once, every lease token handed out once
    per_attempt = Counter((c.phase_id, c.attempt) for c in ledger.claims)
    assert [key for key, n in per_attempt.items() if n > 1] == []
    assert len({c.token for c in ledger.claims}) == len(ledger.claims)
    attempts: dict[str, list[int]] = defaultdict(list)
    for c in ledger.claims:
        attempts[c.phase_id].append(c.attempt)
    assert all(sorted(a) == list(range(1, len(a) + 1)) for a in attempts.values())

    # complete_phase answered "succeeded" to one token per phase at most
    succeeded_tokens: dict[str, set[str]] = defaultdict(set)
    for done in ledger.completions:
        if done.answer is not None and done.answer["phase_state"] == "succeeded":
            assert done.answer["replayed"] is False
            assert done.answer["attempt"] == done.claim.attempt
            succeeded_tokens[done.claim.phase_id].add(done.claim.token)
    assert [p for p, tokens in succeeded_tokens.items() if len(tokens) > 1] == []

    # a heartbeat told the truth about its phase
    for claim, beat in ledger.heartbeats:
        assert beat["phase_id"] == claim.phase_id
        if claim.run_id not in cancelled:
            assert beat["cancel_requested"] is False, (claim, beat)

    # every run is terminal; those not cancelled succeeded, every phase exactly once
    runs = load_runs(contract.conn, ws)
    assert {rid for rid, state in runs.items() if state == "cancelled"} == cancelled
    assert {state for rid, state in runs.items() if rid not in cancelled} == {"succeeded"}
    phases = load_phases(contract.conn, ws)
    assert len(phases) == 2000
    events = load_events(contract.conn, ws)
    by_run: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for p in phases.values():
        by_run[p["run_id"]].append(p)
    walked: dict[str, tuple[str, int]] = {}
    for rid, state in runs.items():
        for name, result in check_run_trail(rid, state, events[rid], by_run[rid]).items():
            walked[f"{rid}/{name}"] = result

    def count(type_: str) -> Counter[str]:
        return Counter(f"{rid}/{e.phase}" for rid, evs in events.items() for e in evs
                       if e.type == type_)

    def key(phase_id: str) -> str:
        return f"{phases[phase_id]['run_id']}/{phases[phase_id]['name']}"

    succeeded_events = count("PHASE_SUCCEEDED")
    succeeded_rows = {key(p) for p, row in phases.items() if row["state"] == "succeeded"}
    assert set(succeeded_events) == succeeded_rows
    assert all(n == 1 for n in succeeded_events.values())
    assert sum(succeeded_events.values()) == len(succeeded_rows)
    assert len(succeeded_rows) == 2000 - sum(
        1 for p in phases.values() if p["run_id"] in cancelled and p["state"] != "succeeded")
    # ...and the clients' view agrees with the trail
    assert {key(p) for p in succeeded_tokens} == succeeded_rows
    assert count("PHASE_CLAIMED") == Counter(key(c.phase_id) for c in ledger.claims)

    # the phases that fail once were claimed twice, everything else in finished runs once
    fail_once = {
        f"{run_ids[i]}/{spec['name']}" for i in range(RUNS) if run_ids[i] not in cancelled
        for spec in run_shape(i) if spec.get("params", {}).get("fail_once")}
    assert len(fail_once) == 3 * len([i for i in range(RUNS) if i % 4 == 2])
    for name in succeeded_rows:
        assert walked[name] == ("succeeded", 2 if name in fail_once else 1), name

    # the cancelled runs: cancelled mid-flight, nothing of theirs left running
    for rid in cancelled:
        states = Counter(p["state"] for p in by_run[rid])
        assert states["succeeded"] >= 2 and states["cancelled"] >= 1, states
        assert set(states) <= {"succeeded", "cancelled"}
        assert not any(p["leased"] for p in by_run[rid]), "a stopped phase kept its lease"
    for i in CANCEL_WHILE_RUNNING:
        # the executor holding s03 heard of the cancel from its heartbeat and reported a stop
        assert [e.phase for e in events[run_ids[i]] if e.type == "PHASE_STOPPED"] == ["s03"]
        assert any(beat["cancel_requested"] and claim.name == "s03"
                   for claim, beat in ledger.heartbeats if claim.run_id == run_ids[i])


# --------------------------------------------------------------------------------------------
# batches on wide runs: the deadlock bench/peers.py found
# --------------------------------------------------------------------------------------------

def wide_shape(width: int) -> list[dict[str, Any]]:
    """`width` roots, each second one failing once, and fan-ins of four roots each: their
    completions release dependents (updating rows claims are walking past) and re-queue
    retries, the update chains a SKIP LOCKED claim would wait on."""
    roots = [phase(f"r{k:03d}", params={"fail_once": k % 2 == 0}, retry_backoff_seconds=0)
             for k in range(width)]
    fans = [phase(f"f{k:03d}", "python", *[f"r{j:03d}" for j in range(k * 4, k * 4 + 4)])
            for k in range(width // 4)]
    return roots + fans


def test_batches_on_wide_runs_never_deadlock(
    sql_contract: Contract, connect: Callable[[], Contract]
) -> None:
    """Eight executors claiming ten at a time and completing what they claimed in one call,
    on runs of 125 phases: before claims stopped waiting while they hold a run's row, runs of
    100 at 8 connections deadlocked (a claim_phases waiting on a phase's update chain held by
    a complete_phases that waited for the claim's run row)."""
    contract = sql_contract
    executors = [user(f"wide{k}") for k in range(8)]
    ws = make_workspace(contract, "wide", {f"executor:{k}": e for k, e in enumerate(executors)})
    executors = [e.pinned(ws) for e in executors]
    runs = [contract.call("create_run", {"workspace_id": ws, "spec_slug": "wide",
                                         "git_sha": "0123abc", "phases": wide_shape(100)},
                          as_=SERVICE)["id"] for _ in range(6)]
    errors: list[str] = []
    claimed: Counter[tuple[str, int]] = Counter()
    lock = threading.Lock()
    start = threading.Barrier(len(executors))
    deadline = time.monotonic() + 120

    def work(me: Principal) -> None:
        c = connect()
        start.wait()
        while time.monotonic() < deadline:
            try:
                got = c.call("claim_phases", {"lease_seconds": 300, "limit": 10,
                                              "workspace_id": ws}, as_=me)
                if not got:
                    if unfinished_runs(c.conn, ws) == 0:
                        return
                    time.sleep(0.002)
                    continue
                with lock:
                    claimed.update((g["phase_id"], g["attempt"]) for g in got)
                answers = c.call("complete_phases", {"completions": [
                    {"lease_token": g["lease_token"], "retryable": True,
                     "outcome": "failed" if g["params"].get("fail_once") and g["attempt"] == 1
                     else "succeeded"} for g in got]}, as_=me)
                lost = [a for a in answers if a.get("error") is not None]
                if lost:
                    with lock:
                        errors.append(f"lost leases: {lost}")
            except ContractError as exc:
                with lock:
                    errors.append(describe(exc))
        with lock:
            errors.append("deadline passed with runs unfinished")

    with ThreadPoolExecutor(len(executors)) as pool:
        for future in [pool.submit(work, e) for e in executors]:
            future.result(timeout=180)
    assert errors == []       # no 40P01 deadlock, no lease lost
    assert [key for key, n in claimed.items() if n > 1] == []
    assert load_runs(contract.conn, ws) == dict.fromkeys(runs, "succeeded")
    phases = load_phases(contract.conn, ws)
    assert len(phases) == 6 * 125
    assert {p["state"] for p in phases.values()} == {"succeeded"}
    assert sum(1 for _, attempt in claimed if attempt == 2) == 6 * 50   # each fail_once twice


# --------------------------------------------------------------------------------------------
# killed executors: their leases expire, others take the work over, their late calls are refused
# --------------------------------------------------------------------------------------------

T0 = datetime(2030, 6, 1, tzinfo=UTC)
KILL_RUNS = 20
KILL_PHASES = 10


def test_killed_executors_phases_are_reclaimed_after_their_leases_expire(
    sql_contract: Contract, connect: Callable[[], Contract]
) -> None:
    contract = sql_contract
    killers = [user(f"killed{k}") for k in range(4)]
    rescuers = [user(f"rescuer{k}") for k in range(8)]
    dev = user("dev")
    ws = make_workspace(contract, "kills", {"developer:dev": dev}
                        | {f"executor:k{k}": e for k, e in enumerate(killers)}
                        | {f"executor:r{k}": e for k, e in enumerate(rescuers)})
    killers = [e.pinned(ws) for e in killers]       # their tokens are pinned to it
    rescuers = [e.pinned(ws) for e in rescuers]
    run_ids = [
        contract.call("create_run", {
            "workspace_id": ws, "spec_slug": "kill", "git_sha": "0123abc",
            "phases": [phase(f"p{k}", max_attempts=3) for k in range(KILL_PHASES)]},
            as_=dev, now=T0)["id"]
        for _ in range(KILL_RUNS)]
    # the oldest run, so wave 1 takes its first phase, which has a single attempt: its
    # expiry fails the run
    last_chance = contract.call("create_run", {
        "workspace_id": ws, "spec_slug": "kill", "git_sha": "0123abc",
        "phases": [phase("only", max_attempts=1), phase("after", "python", "only")]},
        as_=dev, now=T0 - timedelta(seconds=1))["id"]

    def claim_and_die(who: Principal, n: int, at: datetime) -> list[dict[str, Any]]:
        c = connect()
        got: list[dict[str, Any]] = []
        for _ in range(n):
            claim = c.call("claim_phase", {"lease_seconds": 1, "workspace_id": ws}, as_=who, now=at)
            assert claim is not None
            got.append(claim | {"holder": who})
        return got

    # wave 1 at T0: four executors claim ten phases each with a 1 s lease, and die
    with ThreadPoolExecutor(max_workers=4) as pool:
        waves = list(pool.map(lambda who: claim_and_die(who, 10, T0), killers))
    wave1 = [c for wave in waves for c in wave]
    assert {c["attempt"] for c in wave1} == {1}
    assert last_chance in {c["run_id"] for c in wave1}
    # wave 2 at T0+5s: two of them come back, take over expired leases, and die again
    at2 = T0 + timedelta(seconds=5)
    with ThreadPoolExecutor(max_workers=2) as pool:
        waves = list(pool.map(lambda who: claim_and_die(who, 5, at2), killers[:2]))
    wave2 = [c for wave in waves for c in wave]
    assert {c["attempt"] for c in wave2} == {2}, "expired leases are taken before queued phases"
    assert {c["phase_id"] for c in wave2} <= {c["phase_id"] for c in wave1}

    # T0+10s: eight live executors drain everything, expired leases first
    at3 = T0 + timedelta(seconds=10)
    rescued: list[dict[str, Any]] = []
    errors: list[str] = []
    lock = threading.Lock()

    def rescue(who: Principal) -> None:
        c = connect()
        while True:
            try:
                claim = c.call("claim_phase", {"lease_seconds": 60, "workspace_id": ws},
                               as_=who, now=at3)
                if claim is None:
                    return
                c.call("complete_phase", {"lease_token": claim["lease_token"],
                                          "outcome": "succeeded"}, as_=who, now=at3)
            except ContractError as exc:
                with lock:
                    errors.append(describe(exc))
                return
            with lock:
                rescued.append(claim)

    with ThreadPoolExecutor(max_workers=len(rescuers)) as pool:
        list(pool.map(rescue, rescuers))
    assert errors == []
    per_attempt = Counter((c["phase_id"], c["attempt"]) for c in wave1 + wave2 + rescued)
    assert max(per_attempt.values()) == 1
    killed_once = {c["phase_id"] for c in wave1} - {c["phase_id"] for c in wave2}
    killed_twice = {c["phase_id"] for c in wave2}
    for c in rescued:
        expected = 3 if c["phase_id"] in killed_twice else 2 if c["phase_id"] in killed_once else 1
        assert c["attempt"] == expected, c
    assert len(rescued) == KILL_RUNS * KILL_PHASES

    # the killed executors' late calls are refused: their leases were taken over
    late = connect()
    at4 = T0 + timedelta(seconds=20)
    for claim in wave1 + wave2:
        who: Principal = claim["holder"]
        for fn, args in (("complete_phase", {"lease_token": claim["lease_token"],
                                             "outcome": "succeeded"}),
                         ("heartbeat", {"lease_token": claim["lease_token"]})):
            err = late.error(fn, args, as_=who, now=at4)
            assert (err.status, err.code, err.sqlstate) == (409, "lease_lost", "PT409"), (fn, err)

    # the database agrees: attempts, LEASE_EXPIRED events, one success per phase, full trails
    phases = load_phases(contract.conn, ws)
    runs = load_runs(contract.conn, ws)
    events = load_events(contract.conn, ws)
    assert runs == {rid: "succeeded" for rid in run_ids} | {last_chance: "failed"}
    by_run: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for p in phases.values():
        by_run[p["run_id"]].append(p)
    for rid, state in runs.items():
        check_run_trail(rid, state, events[rid], by_run[rid])
    expired = Counter(
        (rid, e.phase) for rid, evs in events.items() for e in evs if e.type == "LEASE_EXPIRED")
    assert sum(expired.values()) == len(wave1) + len(wave2)
    for p in phases.values():
        key = (p["run_id"], p["name"])
        if p["run_id"] == last_chance:
            continue
        assert p["state"] == "succeeded"
        if p["id"] in killed_twice:
            assert (p["attempt"], expired[key]) == (3, 2), p
        elif p["id"] in killed_once:
            assert (p["attempt"], expired[key]) == (2, 1), p
        else:
            assert (p["attempt"], expired[key]) == (1, 0), p
    succeeded = Counter(
        (rid, e.phase) for rid, evs in events.items() for e in evs if e.type == "PHASE_SUCCEEDED")
    assert set(succeeded.values()) == {1} and len(succeeded) == KILL_RUNS * KILL_PHASES
    # the single-attempt phase failed for good on expiry; its dependent was skipped
    lc = {p["name"]: (p["state"], p["attempt"]) for p in by_run[last_chance]}
    assert lc == {"only": ("failed", 1), "after": ("skipped", 0)}
    assert [e.type for e in events[last_chance] if e.phase == "only"] == [
        "PHASE_QUEUED", "PHASE_CLAIMED", "LEASE_EXPIRED", "PHASE_FAILED"]
