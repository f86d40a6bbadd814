"""repair_run (docs/repair.md): a child run of a finished run that reruns the named phases,
what did not succeed and everything downstream, keeping the succeeded upstream outputs; at most
one active repair per run, also under concurrency; the lineage in get_run."""

from __future__ import annotations

import threading
from typing import Any

import psycopg
import pytest

from control_room.db.store import ContractError, call_as

from .conftest import Contract, World, event_types, make_world, phase, states
from .jobspec import register_args
from .test_state_machine import Clocked


def failed_pipeline(cr: Clocked, world: World) -> tuple[dict[str, Any], dict[str, str]]:
    """extract -> transform -> publish, and side: transform fails for good.

    Returns the run and phase name -> the id of the parent's phase."""
    run = cr.run(world, [phase("extract"), phase("transform", "sql", "extract"),
                         phase("publish", "sql", "transform"), phase("side")])
    ids: dict[str, str] = {}
    for name, outcome in (("extract", "succeeded"), ("side", "succeeded"), ("transform", "failed")):
        claim = cr.claim(world, run_id=run["id"])
        assert claim is not None and claim["name"] == name
        ids[name] = claim["phase_id"]
        if outcome == "succeeded":
            cr.complete(world, claim, output_manifest={"from": name})
        else:
            cr.complete(world, claim, "failed", error={"message": "bad SQL", "type": "SqlError"},
                        retryable=False)
    assert cr.call("get_run", {"run_id": run["id"]})["state"] == "failed"
    return run, ids


def drain(cr: Clocked, world: World, run_id: str) -> list[str]:
    """Claim and succeed every phase of the run; the names in claim order."""
    names = []
    while (claim := cr.claim(world, run_id=run_id)) is not None:
        names.append(claim["name"])
        cr.complete(world, claim, output_manifest={"again": claim["name"]})
    return names


@pytest.fixture
def cr(contract: Contract) -> Clocked:
    return Clocked(contract)


def test_a_repair_reruns_the_failed_phase_and_downstream_and_reuses_upstream(
        cr: Clocked, world: World) -> None:
    parent, ids = failed_pipeline(cr, world)
    child = cr.call("repair_run", {"run_id": parent["id"]}, as_=world.dev1)
    assert child["created"] is True and child["parent_run_id"] == parent["id"]
    assert child["rerun_phases"] == ["transform", "publish"]
    by_name = {p["name"]: p for p in child["phases"]}
    assert {n: p["state"] for n, p in by_name.items()} == {
        "extract": "succeeded", "transform": "queued", "publish": "waiting", "side": "succeeded"}
    assert by_name["extract"]["reused_from_phase_id"] == ids["extract"]
    assert by_name["side"]["reused_from_phase_id"] == ids["side"]
    assert by_name["transform"]["reused_from_phase_id"] is None
    assert event_types(cr.contract, child["id"]).count("PHASE_REUSED") == 2

    transform = cr.claim(world, run_id=child["id"])
    assert transform is not None and transform["name"] == "transform"
    assert transform["inputs"] == {"extract": {"from": "extract"}}   # the kept upstream output
    cr.complete(world, transform)
    assert drain(cr, world, child["id"]) == ["publish"]
    assert states(cr.contract, child["id"]) == {
        "extract": "succeeded", "transform": "succeeded", "publish": "succeeded",
        "side": "succeeded"}
    assert cr.call("get_run", {"run_id": child["id"]})["state"] == "succeeded"
    assert cr.call("get_run", {"run_id": parent["id"]})["state"] == "failed"   # never changed


def test_named_phases_are_rerun_with_everything_downstream(cr: Clocked, world: World) -> None:
    run = cr.run(world, [phase("a"), phase("b", "sql", "a"), phase("c", "sql", "b"),
                         phase("d", "sql", "a")])
    assert drain(cr, world, run["id"]) == ["a", "b", "d", "c"]
    err = cr.error("repair_run", {"run_id": run["id"]}, as_=world.dev1)
    assert (err.status, err.code) == (409, "conflict") and "name the phases" in str(err)
    err = cr.error("repair_run", {"run_id": run["id"], "phases": ["b", "nope"]}, as_=world.dev1)
    assert (err.status, err.code) == (400, "invalid_argument") and "nope" in str(err)
    err = cr.error("repair_run", {"run_id": run["id"], "phases": []}, as_=world.dev1)
    assert (err.status, err.code) == (400, "invalid_argument")

    child = cr.call("repair_run", {"run_id": run["id"], "phases": ["b"]}, as_=world.dev1)
    assert child["rerun_phases"] == ["b", "c"]
    assert states(cr.contract, child["id"]) == {
        "a": "succeeded", "b": "queued", "c": "waiting", "d": "succeeded"}
    assert drain(cr, world, child["id"]) == ["b", "c"]
    assert cr.call("get_run", {"run_id": child["id"]})["state"] == "succeeded"


def test_named_phases_add_to_what_did_not_succeed(cr: Clocked, world: World) -> None:
    parent, _ = failed_pipeline(cr, world)
    child = cr.call("repair_run", {"run_id": parent["id"], "phases": ["side"]}, as_=world.dev1)
    assert child["rerun_phases"] == ["side", "transform", "publish"]   # ordinal order
    assert states(cr.contract, child["id"])["extract"] == "succeeded"


def test_only_a_finished_run_is_repaired_by_a_developer(cr: Clocked, world: World) -> None:
    run = cr.run(world, [phase("a")])
    err = cr.error("repair_run", {"run_id": run["id"]}, as_=world.dev1)
    assert (err.status, err.code) == (409, "conflict") and "queued" in str(err)
    claim = cr.claim(world, run_id=run["id"])
    assert claim is not None
    err = cr.error("repair_run", {"run_id": run["id"]}, as_=world.dev1)
    assert (err.status, err.code) == (409, "conflict") and "running" in str(err)
    cr.complete(world, claim, "failed", retryable=False)
    err = cr.error("repair_run", {"run_id": run["id"]}, as_=world.viewer1)
    assert err.status == 403
    err = cr.error("repair_run", {"run_id": run["id"]}, as_=world.dev2)
    assert err.status == 404


def test_one_active_repair_per_run_and_idempotency_keys(cr: Clocked, world: World) -> None:
    parent, _ = failed_pipeline(cr, world)
    first = cr.call("repair_run", {"run_id": parent["id"], "idempotency_key": "fix-1"},
                    as_=world.dev1)
    again = cr.call("repair_run", {"run_id": parent["id"], "idempotency_key": "fix-1"},
                    as_=world.dev1)
    assert (again["id"], again["created"]) == (first["id"], False)
    err = cr.error("repair_run", {"run_id": parent["id"]}, as_=world.dev1)
    assert (err.status, err.code) == (409, "conflict") and first["id"] in str(err)
    err = cr.error("retry_run", {"run_id": parent["id"]}, as_=world.dev1)   # retry shares the guard
    assert (err.status, err.code) == (409, "conflict") and first["id"] in str(err)
    err = cr.error("repair_run", {"run_id": parent["id"], "phases": ["side"],
                                  "idempotency_key": "fix-1"}, as_=world.dev1)
    assert (err.status, err.code) == (409, "conflict")   # the key names another repair
    cr.call("cancel_run", {"run_id": first["id"]}, as_=world.dev1)
    second = cr.call("repair_run", {"run_id": parent["id"]}, as_=world.dev1)   # none active now
    assert second["created"] is True and second["id"] != first["id"]


def test_get_run_shows_the_lineage(cr: Clocked, world: World) -> None:
    parent, _ = failed_pipeline(cr, world)
    child = cr.call("repair_run", {"run_id": parent["id"]}, as_=world.dev1)
    transform = cr.claim(world, run_id=child["id"])
    assert transform is not None
    cr.complete(world, transform, "failed", retryable=False)
    grandchild = cr.call("repair_run", {"run_id": child["id"]}, as_=world.dev1)

    top = cr.call("get_run", {"run_id": parent["id"]})
    assert (top["parent_run_id"], top["root_run_id"]) == (None, parent["id"])
    assert [(r["id"], r["state"]) for r in top["repairs"]] == [(child["id"], "failed")]
    middle = cr.call("get_run", {"run_id": child["id"]})
    assert (middle["parent_run_id"], middle["root_run_id"]) == (parent["id"], parent["id"])
    assert [(r["id"], r["state"]) for r in middle["repairs"]] == [(grandchild["id"], "queued")]
    last = cr.call("get_run", {"run_id": grandchild["id"]})
    assert (last["parent_run_id"], last["root_run_id"], last["repairs"]) == (
        child["id"], parent["id"], [])
    # the kept outputs point at the phase that produced them, through the repairs
    assert last["phases"][0]["reused_from_phase_id"] == top["phases"][0]["id"]


def test_two_concurrent_repairs_make_exactly_one(sql_contract: Contract, db_url: str) -> None:
    world = make_world(sql_contract)
    cr = Clocked(sql_contract)
    for _ in range(4):
        parent, _ = failed_pipeline(cr, world)
        barrier = threading.Barrier(2)
        results: list[Any] = []

        def repair(parent_id: str = parent["id"], gate: threading.Barrier = barrier,
                   results: list[Any] = results) -> None:
            with psycopg.connect(db_url, autocommit=True) as conn:
                gate.wait()
                try:
                    results.append(call_as(conn, "repair_run", {"run_id": parent_id},
                                           role="authenticated", sub=str(world.dev1.sub),
                                           now=cr.now))
                except ContractError as error:
                    results.append(error)

        threads = [threading.Thread(target=repair) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        created = [r for r in results if isinstance(r, dict)]
        refused = [r for r in results if isinstance(r, ContractError)]
        assert len(created) == 1 and len(refused) == 1, results
        assert refused[0].status == 409 and created[0]["id"] in str(refused[0])
        children = sql_contract.call("list_runs", {"parent_run_id": parent["id"]})["runs"]
        assert [c["id"] for c in children] == [created[0]["id"]]


def test_a_repair_of_a_job_run_is_a_run_of_the_same_job_version(
        cr: Clocked, world: World) -> None:
    cr.call("register_job", register_args(world.w1), as_=world.dev1)
    run = cr.call("create_job_run", {"workspace_id": world.w1, "job": "nightly",
                                     "params": {"day": "2026-12-01"}}, as_=world.dev1)
    claim = cr.claim(world, run_id=run["id"])
    assert claim is not None
    cr.complete(world, claim, "failed", retryable=False)
    child = cr.call("repair_run", {"run_id": run["id"]}, as_=world.dev1)
    assert run["job"] is not None and child["job"] == run["job"]
    assert child["input_manifest"] == run["input_manifest"]
