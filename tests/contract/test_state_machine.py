"""Every transition of the phase and run state machines (docs/state_machine.md), on a clock
the tests move themselves: lease expiry and backoff are tested without sleeping."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from .conftest import SERVICE, Contract, Principal, World, event_types, new_run, phase, states

T0 = datetime(2030, 1, 1, tzinfo=UTC)


class Clocked:
    """The contract on a test clock: every call happens at `self.now`."""

    def __init__(self, contract: Contract) -> None:
        self.contract = contract
        self.now = T0

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)

    def call(self, fn: str, args: dict[str, Any] | None = None, *, as_: Principal = SERVICE) -> Any:
        return self.contract.call(fn, args, as_=as_, now=self.now)

    def error(
        self, fn: str, args: dict[str, Any] | None = None, *, as_: Principal = SERVICE
    ) -> Any:
        return self.contract.error(fn, args, as_=as_, now=self.now)

    def run(self, world: World, phases: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        return new_run(self.contract, world.w1, phases, as_=world.dev1, now=self.now, **extra)

    def claim(self, world: World, **args: Any) -> dict[str, Any] | None:
        result: dict[str, Any] | None = self.call("claim_phase", args, as_=world.exec1)
        return result

    def complete(
        self, world: World, claim: dict[str, Any], outcome: str = "succeeded", **args: Any
    ) -> dict[str, Any]:
        result: dict[str, Any] = self.call(
            "complete_phase",
            {"lease_token": claim["lease_token"], "outcome": outcome, **args},
            as_=world.exec1,
        )
        return result


@pytest.fixture
def cr(contract: Contract) -> Clocked:
    return Clocked(contract)


def run_state(cr: Clocked, run_id: str) -> str:
    state: str = cr.call("get_run", {"run_id": run_id})["state"]
    return state


# --- create_run ------------------------------------------------------------------------------


def test_create_run_queues_roots_and_holds_dependents(cr: Clocked, world: World) -> None:
    run = cr.run(
        world,
        [
            phase("extract"),
            phase("load", "sql", "extract"),
            phase("report", "sql", "extract", "load"),
        ],
    )
    assert run["created"] is True
    assert run["state"] == "queued"
    assert run["env"] == "dev"
    assert [p["name"] for p in run["phases"]] == ["extract", "load", "report"]
    assert states(cr.contract, run["id"]) == {
        "extract": "queued",
        "load": "waiting",
        "report": "waiting",
    }
    assert event_types(cr.contract, run["id"]) == ["RUN_CREATED", "PHASE_QUEUED"]
    assert "lease_token" not in run["phases"][0]


def test_phases_are_ordered_topologically(cr: Clocked, world: World) -> None:
    run = cr.run(world, [phase("c", "sql", "b"), phase("b", "sql", "a"), phase("a")])
    assert [(p["name"], p["ordinal"]) for p in run["phases"]] == [("a", 1), ("b", 2), ("c", 3)]


def test_create_run_is_idempotent_on_its_key(cr: Clocked, world: World) -> None:
    phases = [phase("a")]
    first = cr.run(world, phases, idempotency_key="nightly-2030-01-01")
    again = cr.run(world, phases, idempotency_key="nightly-2030-01-01")
    assert again["id"] == first["id"]
    assert again["created"] is False
    listed = cr.call("list_runs", {"workspace_id": world.w1})["runs"]
    assert [r["id"] for r in listed] == [first["id"]]
    other = cr.contract.error(
        "create_run",
        {
            "workspace_id": world.w1,
            "spec_slug": "demo",
            "git_sha": "fedcba9",
            "phases": phases,
            "idempotency_key": "nightly-2030-01-01",
        },
        as_=world.dev1,
        now=cr.now,
    )
    assert (other.status, other.code) == (409, "conflict")
    assert "idempotency_key" in other.message


# --- claim_phase -----------------------------------------------------------------------------


def test_claim_takes_priority_then_age(cr: Clocked, world: World) -> None:
    old = cr.run(world, [phase("old")])
    cr.advance(1)
    newer = cr.run(world, [phase("newer")])
    cr.advance(1)
    urgent = cr.run(world, [phase("urgent")], priority=10)
    order = []
    for _ in range(3):
        claim = cr.claim(world)
        assert claim is not None
        order.append(claim["run_id"])
    assert order == [urgent["id"], old["id"], newer["id"]]
    assert cr.claim(world) is None


def test_claim_filters_by_kind_run_and_workspace(cr: Clocked, world: World) -> None:
    run_a = cr.run(world, [phase("py", "python")])
    run_b = cr.run(world, [phase("q", "sql")])
    assert cr.claim(world, kinds=["dbt"]) is None
    claim = cr.claim(world, kinds=["sql"])
    assert claim is not None and claim["name"] == "q" and claim["run_id"] == run_b["id"]
    assert cr.claim(world, run_id=run_b["id"]) is None
    claim = cr.claim(world, run_id=run_a["id"], workspace_id=world.w1)
    assert claim is not None and claim["name"] == "py"


def test_claim_returns_the_lease_and_what_the_phase_needs(cr: Clocked, world: World) -> None:
    run = cr.run(
        world,
        [phase("a", params={"table": "bronze.orders"}), phase("b", "sql", "a")],
        input_manifest={"odoo": "blake3:" + "0" * 64},
        labels={"team": "finance"},
    )
    claim = cr.claim(world, lease_seconds=30)
    assert claim is not None
    assert claim["params"] == {"table": "bronze.orders"}
    assert claim["attempt"] == 1
    assert datetime.fromisoformat(claim["lease_expires_at"]) == cr.now + timedelta(seconds=30)
    assert claim["run"]["git_sha"] == "0123abc"
    assert claim["run"]["input_manifest"] == {"odoo": "blake3:" + "0" * 64}
    uuid.UUID(claim["lease_token"])
    cr.complete(world, claim, output_manifest={"rows": 10})
    second = cr.claim(world)
    assert second is not None and second["name"] == "b"
    assert second["inputs"] == {"a": {"rows": 10}}
    assert run_state(cr, run["id"]) == "running"


def test_claim_retried_with_the_same_claim_id_returns_the_same_lease(
    cr: Clocked, world: World
) -> None:
    cr.run(world, [phase("a"), phase("b")])
    claim_id = str(uuid.uuid4())
    first = cr.claim(world, claim_id=claim_id)
    again = cr.claim(world, claim_id=claim_id)
    assert first is not None and again is not None
    assert (again["phase_id"], again["lease_token"], again["attempt"]) == (
        first["phase_id"],
        first["lease_token"],
        first["attempt"],
    )
    # a fresh claim id gets the other phase; the replay wrote no second PHASE_CLAIMED
    other = cr.claim(world, claim_id=str(uuid.uuid4()))
    assert other is not None and other["phase_id"] != first["phase_id"]
    assert event_types(cr.contract, first["run_id"]).count("PHASE_CLAIMED") == 2
    # someone else presenting that claim id is refused
    thief = cr.contract.call(
        "add_member",
        {"workspace_id": world.w1, "principal_id": str(world.exec2.sub), "role": "executor"},
        as_=SERVICE,
    )
    assert thief["role"] == "executor"
    err = cr.error("claim_phase", {"claim_id": claim_id},
                   as_=world.exec2.pinned(world.w1, world.w2))
    assert (err.status, err.code) == (409, "conflict")


def test_nothing_runnable_returns_null(cr: Clocked, world: World) -> None:
    assert cr.claim(world) is None
    cr.run(world, [phase("a"), phase("b", "python", "a")])
    assert cr.claim(world) is not None
    assert cr.claim(world) is None  # b waits for a


# --- heartbeat ------------------------------------------------------------------------------


def test_heartbeat_extends_the_lease_and_keeps_progress(cr: Clocked, world: World) -> None:
    cr.run(world, [phase("a")])
    claim = cr.claim(world, lease_seconds=20)
    assert claim is not None
    cr.advance(15)
    beat = cr.call(
        "heartbeat", {"lease_token": claim["lease_token"], "progress": {"pct": 40}}, as_=world.exec1
    )
    assert beat["cancel_requested"] is False
    assert datetime.fromisoformat(beat["lease_expires_at"]) == cr.now + timedelta(seconds=20)
    beat = cr.call(
        "heartbeat", {"lease_token": claim["lease_token"], "lease_seconds": 120}, as_=world.exec1
    )
    assert datetime.fromisoformat(beat["lease_expires_at"]) == cr.now + timedelta(seconds=120)
    run = cr.call("get_run", {"run_id": claim["run_id"]})
    assert run["phases"][0]["progress"] == {"pct": 40}
    # a heartbeat after the lease ran out (nobody reclaimed it yet) revives it
    cr.advance(121)
    beat = cr.call("heartbeat", {"lease_token": claim["lease_token"]}, as_=world.exec1)
    assert datetime.fromisoformat(beat["lease_expires_at"]) == cr.now + timedelta(seconds=120)


# --- complete_phase: success and the DAG ------------------------------------------------------


def test_success_releases_dependents_once_all_their_dependencies_succeeded(
    cr: Clocked, world: World
) -> None:
    run = cr.run(
        world,
        [phase("a"), phase("b", "sql", "a"), phase("c", "sql", "a"), phase("d", "sql", "b", "c")],
    )
    a = cr.claim(world)
    assert a is not None
    done = cr.complete(world, a, output_manifest={"rows": 1})
    assert sorted(done["released"]) == ["b", "c"]
    assert done["run_state"] == "running"
    b = cr.claim(world)
    c = cr.claim(world)
    assert b is not None and c is not None
    assert cr.complete(world, b)["released"] == []
    assert states(cr.contract, run["id"])["d"] == "waiting"
    assert cr.complete(world, c)["released"] == ["d"]
    d = cr.claim(world)
    assert d is not None and d["name"] == "d"
    assert set(d["inputs"]) == {"b", "c"}
    last = cr.complete(world, d, output_manifest={"table": "gold.revenue"})
    assert last["run_state"] == "succeeded"
    final = cr.call("get_run", {"run_id": run["id"]})
    assert final["state"] == "succeeded"
    assert final["output_manifest"]["a"] == {"rows": 1}
    assert final["output_manifest"]["d"] == {"table": "gold.revenue"}
    types = event_types(cr.contract, run["id"])
    assert types[0] == "RUN_CREATED" and types[-1] == "RUN_SUCCEEDED"
    assert types.count("PHASE_SUCCEEDED") == 4
    assert types.count("PHASE_QUEUED") == 4


def test_completing_twice_with_the_same_token_is_a_replay(cr: Clocked, world: World) -> None:
    run = cr.run(world, [phase("a")])
    claim = cr.claim(world)
    assert claim is not None
    first = cr.complete(world, claim)
    again = cr.complete(world, claim)
    assert first["replayed"] is False and again["replayed"] is True
    assert again["phase_state"] == "succeeded"
    assert event_types(cr.contract, run["id"]).count("PHASE_SUCCEEDED") == 1


# --- failure: retries with backoff, final failure, skip propagation ---------------------------


def test_failures_retry_with_capped_exponential_jittered_backoff(cr: Clocked, world: World) -> None:
    run = cr.run(
        world,
        [
            phase("flaky", max_attempts=4, retry_backoff_seconds=10, retry_backoff_max_seconds=25),
            phase("after", "sql", "flaky"),
        ],
    )
    nominal = {1: 10.0, 2: 20.0, 3: 25.0}  # base * 2^(attempt-1), capped at 25
    for attempt in (1, 2, 3):
        claim = cr.claim(world)
        assert claim is not None and claim["attempt"] == attempt
        result = cr.complete(world, claim, "failed", error={"message": f"boom {attempt}"})
        assert result["phase_state"] == "queued"
        delay = (datetime.fromisoformat(result["not_before"]) - cr.now).total_seconds()
        assert nominal[attempt] / 2 <= delay <= nominal[attempt], (attempt, delay)
        assert cr.claim(world) is None  # not before the backoff has passed
        cr.advance(delay)
    last = cr.claim(world)
    assert last is not None and last["attempt"] == 4
    result = cr.complete(world, last, "failed", error={"message": "boom 4"})
    assert result["phase_state"] == "failed" and result["run_state"] == "failed"
    assert states(cr.contract, run["id"]) == {"flaky": "failed", "after": "skipped"}
    types = event_types(cr.contract, run["id"])
    assert types.count("PHASE_RETRY_SCHEDULED") == 3
    assert types.count("PHASE_FAILED") == 4
    assert types[-2:] == ["RUN_FAILED", "PHASE_SKIPPED"]
    final = cr.call("get_run", {"run_id": run["id"]})
    assert final["error"]["phase"] == "flaky"
    assert final["phases"][0]["error"] == {"message": "boom 4"}


def test_a_terminal_error_fails_at_once_and_skips_what_has_not_started(
    cr: Clocked, world: World
) -> None:
    run = cr.run(
        world,
        [phase("a"), phase("b"), phase("c"), phase("a2", "sql", "a"), phase("c2", "sql", "c")],
    )
    a = cr.claim(world)
    c = cr.claim(world, run_id=run["id"])
    assert a is not None and a["name"] == "a"
    assert c is not None and c["name"] == "b"  # b is next in line; c stays queued
    result = cr.complete(world, a, "failed", error="bad credentials", retryable=False)
    assert (result["phase_state"], result["run_state"]) == ("failed", "failed")
    assert states(cr.contract, run["id"]) == {
        "a": "failed",
        "b": "running",
        "c": "skipped",
        "a2": "skipped",
        "c2": "skipped",
    }
    # the phase already running may finish; its success releases nothing in a failed run
    late = cr.complete(world, c)
    assert late["phase_state"] == "succeeded" and late["run_state"] == "failed"
    assert cr.claim(world) is None
    assert cr.call("get_run", {"run_id": run["id"]})["phases"][0]["error"] == {
        "message": "bad credentials"
    }


def test_a_failure_in_a_failed_run_is_not_retried(cr: Clocked, world: World) -> None:
    run = cr.run(world, [phase("a"), phase("b", max_attempts=5)])
    a = cr.claim(world)
    b = cr.claim(world)
    assert a is not None and b is not None
    cr.complete(world, a, "failed", retryable=False)
    result = cr.complete(world, b, "failed", error={"message": "also broken"})
    assert result["phase_state"] == "failed"
    assert states(cr.contract, run["id"]) == {"a": "failed", "b": "failed"}


# --- leases ---------------------------------------------------------------------------------


def test_an_expired_lease_is_reclaimed_and_counted_as_a_failed_attempt(
    cr: Clocked, world: World
) -> None:
    run = cr.run(world, [phase("a", max_attempts=3)])
    first = cr.claim(world, lease_seconds=30)
    assert first is not None
    cr.advance(29)
    assert cr.claim(world) is None  # still leased
    cr.advance(2)
    second = cr.claim(world, lease_seconds=30)
    assert second is not None
    assert second["phase_id"] == first["phase_id"]
    assert second["attempt"] == 2
    assert second["lease_token"] != first["lease_token"]
    types = event_types(cr.contract, run["id"], phase="a")
    assert types == ["PHASE_QUEUED", "PHASE_CLAIMED", "LEASE_EXPIRED", "PHASE_CLAIMED"]


def test_a_stale_lease_token_is_refused_everywhere(cr: Clocked, world: World) -> None:
    run = cr.run(world, [phase("a")])
    stale = cr.claim(world, lease_seconds=10)
    assert stale is not None
    cr.advance(11)
    fresh = cr.claim(world)
    assert fresh is not None and fresh["phase_id"] == stale["phase_id"]
    token = stale["lease_token"]
    calls: list[tuple[str, dict[str, Any]]] = [
        ("heartbeat", {"lease_token": token}),
        (
            "append_events",
            {
                "run_id": run["id"],
                "lease_token": token,
                "events": [
                    {"event_id": str(uuid.uuid4()), "phase": "a", "type": "LOG", "message": "late"}
                ],
            },
        ),
        (
            "register_artifact",
            {
                "lease_token": token,
                "digest": "blake3:" + "1" * 64,
                "uri": "file:///tmp/x",
                "size_bytes": 1,
            },
        ),
        ("complete_phase", {"lease_token": token, "outcome": "succeeded"}),
    ]
    before = cr.call("get_run", {"run_id": run["id"]})["last_event_seq"]
    for fn, args in calls:
        err = cr.error(fn, args, as_=world.exec1)
        assert (err.status, err.code, err.sqlstate) == (409, "lease_lost", "PT409"), fn
    assert cr.call("get_run", {"run_id": run["id"]})["last_event_seq"] == before
    # the live holder is unaffected
    assert cr.complete(world, fresh)["run_state"] == "succeeded"
    # and once it completed, its own token is dead for everything but a completion replay
    err = cr.error("heartbeat", {"lease_token": fresh["lease_token"]}, as_=world.exec1)
    assert err.code == "lease_lost"
    unknown = cr.error("heartbeat", {"lease_token": str(uuid.uuid4())}, as_=world.exec1)
    assert unknown.code == "lease_lost"


def test_a_lease_expiring_on_the_last_attempt_fails_the_run(cr: Clocked, world: World) -> None:
    run = cr.run(world, [phase("a", max_attempts=1), phase("b", "sql", "a")])
    claim = cr.claim(world, lease_seconds=5)
    assert claim is not None
    cr.advance(6)
    assert cr.claim(world) is None
    assert states(cr.contract, run["id"]) == {"a": "failed", "b": "skipped"}
    assert run_state(cr, run["id"]) == "failed"
    types = event_types(cr.contract, run["id"])
    assert types[-4:] == ["LEASE_EXPIRED", "PHASE_FAILED", "RUN_FAILED", "PHASE_SKIPPED"]
    err = cr.error(
        "complete_phase",
        {"lease_token": claim["lease_token"], "outcome": "succeeded"},
        as_=world.exec1,
    )
    assert (err.status, err.code) == (409, "lease_lost")


# --- events ----------------------------------------------------------------------------------


def test_events_are_deduplicated_and_paged_by_a_gap_free_cursor(cr: Clocked, world: World) -> None:
    run = cr.run(world, [phase("a")])
    claim = cr.claim(world)
    assert claim is not None
    batch = [
        {
            "event_id": str(uuid.uuid4()),
            "phase": "a",
            "type": "LOG",
            "level": "info",
            "message": f"line {i}",
            "payload": {"i": i},
        }
        for i in range(25)
    ]
    batch.append(dict(batch[3]))  # a duplicate inside the batch
    first = cr.call(
        "append_events",
        {"run_id": run["id"], "events": batch, "lease_token": claim["lease_token"]},
        as_=world.exec1,
    )
    assert (first["appended"], first["duplicates"]) == (25, 1)
    again = cr.call(
        "append_events",
        {"run_id": run["id"], "events": batch[:10], "lease_token": claim["lease_token"]},
        as_=world.exec1,
    )
    assert (again["appended"], again["duplicates"]) == (0, 10)
    # run-level events need no lease; developers may write them
    cr.call(
        "append_events",
        {
            "run_id": run["id"],
            "events": [{"event_id": str(uuid.uuid4()), "type": "NOTE", "message": "deploy window"}],
        },
        as_=world.dev1,
    )
    seqs: list[int] = []
    after = 0
    while True:
        page = cr.call("list_events", {"run_id": run["id"], "after": after, "limit": 7})
        if not page["events"]:
            break
        seqs += [e["seq"] for e in page["events"]]
        after = page["next_after"]
    assert seqs == list(range(1, len(seqs) + 1))
    logs = cr.call("list_events", {"run_id": run["id"], "phase": "a", "limit": 1000})["events"]
    assert [e["message"] for e in logs if e["type"] == "LOG"] == [f"line {i}" for i in range(25)]
    assert all(e["attempt"] == 1 for e in logs if e["type"] == "LOG")


def test_an_event_naming_a_phase_needs_that_phases_live_lease(cr: Clocked, world: World) -> None:
    run = cr.run(world, [phase("a"), phase("b")])
    a = cr.claim(world)
    b = cr.claim(world)
    assert a is not None and b is not None
    event = {"event_id": str(uuid.uuid4()), "phase": b["name"], "type": "PHASE_PROGRESS"}
    err = cr.error(
        "append_events",
        {"run_id": run["id"], "events": [event], "lease_token": a["lease_token"]},
        as_=world.exec1,
    )
    assert err.code == "lease_lost"
    missing = cr.error("append_events", {"run_id": run["id"], "events": [event]}, as_=world.exec1)
    assert (missing.status, missing.code) == (400, "invalid_argument")


# --- artifacts ---------------------------------------------------------------------------------


def test_artifacts_are_immutable_and_shared_by_digest(cr: Clocked, world: World) -> None:
    digest = "blake3:" + "ab" * 32
    run1 = cr.run(world, [phase("a")])
    run2 = cr.run(world, [phase("a")])
    c1 = cr.claim(world, run_id=run1["id"])
    c2 = cr.claim(world, run_id=run2["id"])
    assert c1 is not None and c2 is not None
    args = {
        "digest": digest,
        "uri": "s3://lake/blobs/ab/abab",
        "size_bytes": 1234,
        "media_type": "application/vnd.apache.parquet",
        "kind": "table",
        "name": "silver.orders",
    }
    first = cr.call(
        "register_artifact", {"lease_token": c1["lease_token"], **args}, as_=world.exec1
    )
    assert (first["created"], first["linked"]) == (True, True)
    same = cr.call("register_artifact", {"lease_token": c1["lease_token"], **args}, as_=world.exec1)
    assert (same["created"], same["linked"]) == (False, False)
    other = cr.call(
        "register_artifact",
        {"lease_token": c2["lease_token"], **args, "uri": "s3://elsewhere"},
        as_=world.exec1,
    )
    assert (other["created"], other["linked"]) == (False, True)
    assert other["uri"] == "s3://lake/blobs/ab/abab"  # the first registration stands
    err = cr.error(
        "register_artifact",
        {"lease_token": c2["lease_token"], **args, "size_bytes": 9},
        as_=world.exec1,
    )
    assert (err.status, err.code) == (409, "conflict")
    by_digest = cr.call("list_artifacts", {"digest": digest})["artifacts"]
    assert sorted(a["run_id"] for a in by_digest) == sorted([run1["id"], run2["id"]])
    by_run = cr.call("list_artifacts", {"run_id": run1["id"]})["artifacts"]
    assert [(a["name"], a["role"], a["size_bytes"]) for a in by_run] == [
        ("silver.orders", "output", 1234)
    ]
    assert "ARTIFACT_REGISTERED" in event_types(cr.contract, run1["id"])


# --- cancel_run --------------------------------------------------------------------------------


def test_cancel_reaches_the_running_phase_through_its_heartbeat(cr: Clocked, world: World) -> None:
    run = cr.run(world, [phase("a"), phase("b"), phase("c", "sql", "a")])
    running = cr.claim(world)
    assert running is not None and running["name"] == "a"
    cancelled = cr.call(
        "cancel_run", {"run_id": run["id"], "reason": "wrong inputs"}, as_=world.dev1
    )
    assert cancelled["state"] == "cancelled" and cancelled["cancel_reason"] == "wrong inputs"
    assert states(cr.contract, run["id"]) == {"a": "cancelled", "b": "cancelled", "c": "cancelled"}
    beat = cr.call("heartbeat", {"lease_token": running["lease_token"]}, as_=world.exec1)
    assert beat["cancel_requested"] is True
    # the executor may still flush its logs, then reports and stops
    cr.call(
        "append_events",
        {
            "run_id": run["id"],
            "lease_token": running["lease_token"],
            "events": [
                {"event_id": str(uuid.uuid4()), "phase": "a", "type": "LOG", "message": "stopping"}
            ],
        },
        as_=world.exec1,
    )
    stop = cr.complete(world, running, "failed", error={"message": "cancelled"})
    assert (stop["phase_state"], stop["run_state"]) == ("cancelled", "cancelled")
    assert cr.claim(world) is None
    again = cr.call("cancel_run", {"run_id": run["id"]}, as_=world.dev1)
    assert again["state"] == "cancelled"
    types = event_types(cr.contract, run["id"])
    assert types.count("RUN_CANCELLED") == 1
    assert types.count("PHASE_CANCELLED") == 3
    assert types[-1] == "PHASE_STOPPED"
    err = cr.error("heartbeat", {"lease_token": running["lease_token"]}, as_=world.exec1)
    assert err.code == "lease_lost"


def test_a_finished_run_cannot_be_cancelled(cr: Clocked, world: World) -> None:
    run = cr.run(world, [phase("a")])
    claim = cr.claim(world)
    assert claim is not None
    cr.complete(world, claim)
    err = cr.error("cancel_run", {"run_id": run["id"]}, as_=world.dev1)
    assert (err.status, err.code) == (409, "conflict")


def test_a_cancelled_phase_whose_executor_died_is_not_reclaimed(cr: Clocked, world: World) -> None:
    run = cr.run(world, [phase("a")])
    claim = cr.claim(world, lease_seconds=5)
    assert claim is not None
    cr.call("cancel_run", {"run_id": run["id"]}, as_=world.dev1)
    cr.advance(60)
    assert cr.claim(world) is None
    assert states(cr.contract, run["id"]) == {"a": "cancelled"}


# --- complete_run ------------------------------------------------------------------------------


def test_complete_run_finalizes_once(cr: Clocked, world: World) -> None:
    run = cr.run(world, [phase("a")])
    early = cr.error("complete_run", {"run_id": run["id"]}, as_=world.exec1)
    assert (early.status, early.code) == (409, "conflict")
    assert "a (queued)" in early.message
    claim = cr.claim(world)
    assert claim is not None
    cr.complete(world, claim, output_manifest={"rows": 3})
    manifest = {"gold.revenue": "blake3:" + "c" * 64}
    done = cr.call(
        "complete_run", {"run_id": run["id"], "output_manifest": manifest}, as_=world.exec1
    )
    assert done["state"] == "succeeded" and done["output_manifest"] == manifest
    assert done["finalized_at"] is not None
    again = cr.call(
        "complete_run", {"run_id": run["id"], "output_manifest": manifest}, as_=world.exec1
    )
    assert again["finalized_at"] == done["finalized_at"]
    assert (
        cr.call("complete_run", {"run_id": run["id"]}, as_=world.dev1)["output_manifest"]
        == manifest
    )
    err = cr.error(
        "complete_run", {"run_id": run["id"], "output_manifest": {"other": 1}}, as_=world.exec1
    )
    assert err.code == "conflict"
    assert event_types(cr.contract, run["id"]).count("RUN_FINALIZED") == 1


# --- retry_run ---------------------------------------------------------------------------------


def test_retry_run_keeps_succeeded_phases_and_requeues_the_rest(cr: Clocked, world: World) -> None:
    parent = cr.run(
        world,
        [
            phase("extract"),
            phase("transform", "sql", "extract"),
            phase("publish", "sql", "transform"),
            phase("side"),
        ],
    )
    extract = cr.claim(world)
    assert extract is not None and extract["name"] == "extract"
    cr.complete(world, extract, output_manifest={"rows": 42})
    side = cr.claim(world)
    assert side is not None and side["name"] == "side"
    cr.complete(world, side, output_manifest={"ok": True})
    transform = cr.claim(world)
    assert transform is not None and transform["name"] == "transform"
    cr.complete(world, transform, "failed", error={"message": "bad SQL"}, retryable=False)
    assert run_state(cr, parent["id"]) == "failed"

    child = cr.call("retry_run", {"run_id": parent["id"]}, as_=world.dev1)
    assert child["created"] is True
    assert child["parent_run_id"] == parent["id"]
    assert (child["spec_slug"], child["git_sha"]) == (parent["spec_slug"], parent["git_sha"])
    by_name = {p["name"]: p for p in child["phases"]}
    assert {n: p["state"] for n, p in by_name.items()} == {
        "extract": "succeeded",
        "transform": "queued",
        "publish": "waiting",
        "side": "succeeded",
    }
    assert by_name["extract"]["output_manifest"] == {"rows": 42}
    assert by_name["extract"]["reused_from_phase_id"] == extract["phase_id"]
    assert by_name["transform"]["attempt"] == 0
    again = cr.call("retry_run", {"run_id": parent["id"]}, as_=world.dev1)
    assert again["id"] == child["id"] and again["created"] is False

    transform2 = cr.claim(world)
    assert transform2 is not None and transform2["run_id"] == child["id"]
    assert transform2["inputs"] == {"extract": {"rows": 42}}
    cr.complete(world, transform2)
    publish = cr.claim(world)
    assert publish is not None
    assert cr.complete(world, publish)["run_state"] == "succeeded"
    types = event_types(cr.contract, child["id"])
    assert types.count("PHASE_REUSED") == 2
    assert types[-1] == "RUN_SUCCEEDED"
    # a retry of the retry points at the first run that produced the output
    err = cr.error("retry_run", {"run_id": child["id"]}, as_=world.dev1)
    assert (err.status, err.code) == (409, "conflict")
    children = cr.call("list_runs", {"parent_run_id": parent["id"]})["runs"]
    assert [r["id"] for r in children] == [child["id"]]


def test_a_running_run_cannot_be_retried(cr: Clocked, world: World) -> None:
    run = cr.run(world, [phase("a")])
    err = cr.error("retry_run", {"run_id": run["id"]}, as_=world.dev1)
    assert (err.status, err.code) == (409, "conflict")


def test_a_cancelled_run_can_be_retried(cr: Clocked, world: World) -> None:
    run = cr.run(world, [phase("a"), phase("b", "sql", "a")])
    cr.call("cancel_run", {"run_id": run["id"]}, as_=world.dev1)
    child = cr.call("retry_run", {"run_id": run["id"]}, as_=world.dev1)
    assert {p["name"]: p["state"] for p in child["phases"]} == {"a": "queued", "b": "waiting"}


# --- reads and audit ---------------------------------------------------------------------------


def test_list_runs_filters_and_pages(cr: Clocked, world: World) -> None:
    ids = []
    for i in range(7):
        cr.advance(1)
        ids.append(
            cr.run(
                world,
                [phase("a")],
                labels={"batch": "x" if i % 2 else "y"},
                spec_slug="odoo" if i < 3 else "demo",
            )["id"]
        )
    seen: list[str] = []
    cursor = None
    while True:
        page = cr.call(
            "list_runs", {"workspace_id": world.w1, "limit": 3, "cursor": cursor}, as_=world.viewer1
        )
        seen += [r["id"] for r in page["runs"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(ids))
    odoo = cr.call("list_runs", {"spec_slug": "odoo"}, as_=world.viewer1)["runs"]
    assert {r["id"] for r in odoo} == set(ids[:3])
    labelled = cr.call("list_runs", {"labels": {"batch": "x"}}, as_=world.viewer1)["runs"]
    assert {r["id"] for r in labelled} == {ids[i] for i in (1, 3, 5)}
    assert labelled[0]["phase_counts"] == {"queued": 1}
    queued = cr.call("list_runs", {"state": "succeeded"}, as_=world.viewer1)["runs"]
    assert queued == []


def test_mutating_calls_are_audited(cr: Clocked, world: World) -> None:
    run = cr.run(world, [phase("a")])
    claim = cr.claim(world)
    assert claim is not None
    cr.complete(world, claim)
    rows = cr.contract.conn.execute(
        "select function_name, principal_id::text, target_id from ops.audit_log"
        " where workspace_id = %s order by id",
        (world.w1,),
    ).fetchall()
    cr.contract.conn.rollback()
    functions = [r[0] for r in rows]
    assert functions[:1] == ["create_workspace"]
    assert functions[-3:] == ["create_run", "claim_phase", "complete_phase"]
    assert rows[-3] == ("create_run", str(world.dev1.sub), run["id"])
    assert rows[-2][1] == str(world.exec1.sub)
