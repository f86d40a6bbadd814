"""Claims and completions in batches (20261208000000_batch_claims.sql): `claim_phases` claims up
to `limit` phases in one call, each exactly as `claim_phase` claims one; `complete_phases`
makes several completions in one call, each exactly as `complete_phase` makes it. Over both
transports (direct SQL and the gateway). The race of batching and single executors on 2,000
phases is tests/contract/test_concurrency.py (`batched`).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import psycopg
import pytest

from tests.helpers import running_gateway

from .conftest import (
    SERVICE,
    Contract,
    HttpContract,
    World,
    event_types,
    make_world,
    new_run,
    phase,
    states,
)


def audit_count(conn: psycopg.Connection[Any], function: str) -> int:
    row = conn.execute("select count(*) from ops.audit_log where function_name = %s",
                       (function,)).fetchone()
    conn.rollback()
    assert row is not None
    return int(row[0])


def snapshot(conn: psycopg.Connection[Any]) -> tuple[Any, ...]:
    """The rows a batch may change (phases, runs, events, audit), to prove nothing changed."""
    out = tuple(conn.execute(query).fetchall() for query in (
        "select id, state, attempt, lease_token, error from ops.phases order by id",
        "select id, state, last_event_seq from ops.runs order by id",
        "select count(*) from ops.run_events",
        "select count(*) from ops.audit_log"))
    conn.rollback()
    return out


def test_a_batch_claims_each_phase_as_claim_phase_would(contract: Contract, world: World) -> None:
    run = new_run(contract, world.w1, [phase(f"p{k}") for k in range(5)], as_=world.dev1)
    before = audit_count(contract.conn, "claim_phase")
    claims = contract.call("claim_phases", {"run_id": run["id"], "limit": 3, "lease_seconds": 30},
                           as_=world.exec1)
    assert [c["name"] for c in claims] == ["p0", "p1", "p2"]   # ordinal order within a run
    assert len({c["lease_token"] for c in claims}) == 3
    assert all(c["attempt"] == 1 and c["lease_seconds"] == 30 and c["run_id"] == run["id"]
               and c["run"]["git_sha"] == "0123abc" for c in claims)
    assert states(contract, run["id"]) == {"p0": "running", "p1": "running", "p2": "running",
                                           "p3": "queued", "p4": "queued"}
    assert event_types(contract, run["id"]).count("PHASE_CLAIMED") == 3
    assert audit_count(contract.conn, "claim_phase") == before + 3
    # the rest: fewer than the limit; then nothing, an empty array
    rest = contract.call("claim_phases", {"run_id": run["id"], "limit": 10}, as_=world.exec1)
    assert [c["name"] for c in rest] == ["p3", "p4"]
    assert contract.call("claim_phases", {"run_id": run["id"]}, as_=world.exec1) == []


def test_a_batch_takes_turns_across_runs(contract: Contract, world: World) -> None:
    """Fair order holds inside a batch: a long run does not fill it when others wait."""
    big = new_run(contract, world.w1, [phase(f"b{k:02d}") for k in range(20)], as_=world.dev1)
    small = [new_run(contract, world.w1, [phase("s")], as_=world.dev1) for _ in range(3)]
    claims = contract.call("claim_phases", {"limit": 4}, as_=world.exec1)
    assert sorted(c["run_id"] for c in claims) == sorted([big["id"]] + [r["id"] for r in small])


def test_a_repeated_batch_gets_the_same_leases_back(contract: Contract, world: World) -> None:
    run = new_run(contract, world.w1, [phase(f"p{k}") for k in range(4)], as_=world.dev1)
    claim_id = str(uuid.uuid4())
    first = contract.call("claim_phases", {"run_id": run["id"], "limit": 2, "claim_id": claim_id},
                          as_=world.exec1)
    again = contract.call("claim_phases", {"run_id": run["id"], "limit": 2, "claim_id": claim_id},
                          as_=world.exec1)
    assert [(c["phase_id"], c["lease_token"], c["lease_expires_at"]) for c in again] == \
        [(c["phase_id"], c["lease_token"], c["lease_expires_at"]) for c in first]
    assert event_types(contract, run["id"]).count("PHASE_CLAIMED") == 2
    # completed ones are no longer under the batch: a repeat returns those still running
    contract.call("complete_phase", {"lease_token": first[0]["lease_token"],
                                     "outcome": "succeeded"}, as_=world.exec1)
    left = contract.call("claim_phases", {"run_id": run["id"], "limit": 2,
                                          "claim_id": claim_id}, as_=world.exec1)
    assert [c["phase_id"] for c in left] == [first[1]["phase_id"]]
    # another executor of the workspace may not use the claim_id
    other = contract.call("create_principal", {"name": "exec-b"}, as_=SERVICE)
    contract.call("add_member", {"workspace_id": world.w1, "principal_id": other["id"],
                                 "role": "executor"}, as_=SERVICE)
    intruder = world.exec1.__class__("authenticated", uuid.UUID(other["id"]), "exec-b",
                                     (world.w1,))
    err = contract.error("claim_phases", {"run_id": run["id"], "claim_id": claim_id},
                         as_=intruder)
    assert (err.status, err.code) == (409, "conflict")


def test_a_batch_claims_only_where_the_token_is_pinned(contract: Contract,
                                                       world: World) -> None:
    new_run(contract, world.w2, [phase("w2-only")], as_=world.dev2)
    assert contract.call("claim_phases", {"limit": 5}, as_=world.exec1) == []
    err = contract.error("claim_phases", {"workspace_id": world.w2}, as_=world.exec1)
    assert (err.status, err.code) == (403, "forbidden")
    err = contract.error("claim_phases", {}, as_=world.dev1.pinned(world.w1))
    assert (err.status, err.code) == (403, "forbidden")
    err = contract.error("claim_phases", {}, as_=world.exec1.__class__(
        "authenticated", world.exec1.sub, "unpinned"))
    assert (err.status, err.code) == (403, "forbidden") and "not pinned" in err.message


def test_a_batch_completes_each_as_complete_phase_would(contract: Contract,
                                                        world: World) -> None:
    """Success releasing a dependent, a retry, a final failure failing another run, a lost
    lease and a replay, in one call; answers in the order given."""
    a = new_run(contract, world.w1, [phase("x"), phase("y", "python", "x"), phase("z")],
                as_=world.dev1)
    b = new_run(contract, world.w1, [phase("f"), phase("g", "python", "f")], as_=world.dev1)
    claims = {c["name"]: c for c in contract.call("claim_phases", {"limit": 10},
                                                  as_=world.exec1)}
    assert set(claims) == {"x", "z", "f"}
    before = audit_count(contract.conn, "complete_phase")
    answers = contract.call("complete_phases", {"completions": [
        {"lease_token": claims["z"]["lease_token"], "outcome": "failed",
         "error": {"message": "flaky"}},
        {"lease_token": claims["x"]["lease_token"], "outcome": "succeeded",
         "output_manifest": {"rows": 3}},
        {"lease_token": str(uuid.uuid4()), "outcome": "succeeded"},
        {"lease_token": claims["f"]["lease_token"], "outcome": "failed", "retryable": False,
         "error": "broken"},
    ]}, as_=world.exec1)
    assert [a_.get("phase") for a_ in answers] == ["z", "x", None, "f"]
    z, x, lost, f = answers
    assert (z["phase_state"], z["replayed"], z["not_before"] is not None) == ("queued", False, True)
    assert (x["phase_state"], x["released"]) == ("succeeded", ["y"])
    assert lost["error"]["code"] == "lease_lost" and "phase_state" not in lost
    assert (f["phase_state"], f["run_state"]) == ("failed", "failed")
    assert states(contract, a["id"]) == {"x": "succeeded", "y": "queued", "z": "queued"}
    assert states(contract, b["id"]) == {"f": "failed", "g": "skipped"}
    assert event_types(contract, b["id"])[-3:] == ["PHASE_FAILED", "RUN_FAILED", "PHASE_SKIPPED"]
    assert audit_count(contract.conn, "complete_phase") == before + 3
    # a repeat is a replay of each, nothing written twice
    again = contract.call("complete_phases", {"completions": [
        {"lease_token": claims["x"]["lease_token"], "outcome": "succeeded"}]}, as_=world.exec1)
    assert (again[0]["replayed"], again[0]["phase_state"]) == (True, "succeeded")
    assert audit_count(contract.conn, "complete_phase") == before + 3


def test_a_bad_completion_fails_the_whole_batch_and_writes_nothing(
    contract: Contract, world: World
) -> None:
    run = new_run(contract, world.w1, [phase("p"), phase("q")], as_=world.dev1)
    p, q = contract.call("claim_phases", {"run_id": run["id"]}, as_=world.exec1)
    before = snapshot(contract.conn)
    err = contract.error("complete_phases", {"completions": [
        {"lease_token": p["lease_token"], "outcome": "succeeded"},
        {"lease_token": q["lease_token"], "outcome": "finished"}]}, as_=world.exec1)
    assert (err.status, err.code) == (400, "invalid_argument") and "outcome" in err.message
    assert snapshot(contract.conn) == before
    # an executor of another workspace holding the tokens changes nothing either
    err = contract.error("complete_phases", {"completions": [
        {"lease_token": p["lease_token"], "outcome": "succeeded"}]}, as_=world.exec2)
    assert err.status in (403, 404)
    assert snapshot(contract.conn) == before
    done = contract.call("complete_phases", {"completions": [
        {"lease_token": q["lease_token"], "outcome": "succeeded"},
        {"lease_token": p["lease_token"], "outcome": "succeeded"}]}, as_=world.exec1)
    assert [d["phase"] for d in done] == ["q", "p"]
    assert contract.call("get_run", {"run_id": run["id"]})["state"] == "succeeded"


@pytest.fixture
def http(conn: psycopg.Connection[Any], db_url: str) -> Iterator[HttpContract]:
    with running_gateway(db_url) as url, httpx.Client(base_url=url, timeout=30) as client:
        yield HttpContract(conn, client)


def test_a_waiting_batch_on_the_gateway_takes_work_queued_meanwhile(http: HttpContract) -> None:
    """`Prefer: wait` on claim_phases: an empty array after the wait, or the phases queued
    while it waited (woken by the queue's notification, not at the end of the wait)."""
    world = make_world(http)
    headers = {"Content-Profile": "ops", "Prefer": "wait=1",
               "Authorization": f"Bearer {http.token(world.exec1)}"}
    began = time.monotonic()
    response = http.client.post("/rest/v1/rpc/claim_phases", json={"limit": 3}, headers=headers)
    assert response.status_code == 200 and response.json() == []
    assert time.monotonic() - began >= 0.9
    assert response.headers["preference-applied"] == "wait=1"

    headers["Prefer"] = "wait=10"
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(http.client.post, "/rest/v1/rpc/claim_phases",
                              json={"limit": 3}, headers=headers)
        time.sleep(0.3)
        began = time.monotonic()
        run = new_run(Contract(http.conn), world.w1, [phase("a"), phase("b")], as_=world.dev1)
        answer = waiting.result(timeout=15)
    assert time.monotonic() - began < 5
    claimed = answer.json()
    assert answer.status_code == 200 and {c["run_id"] for c in claimed} == {run["id"]}
    assert 1 <= len(claimed) <= 2
