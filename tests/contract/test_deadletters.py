"""Dead letters (docs/repair.md): failed phases no repair has rerun to an end, listed per
workspace with a cursor, and requeued in bulk (one repair per run, idempotent)."""

from __future__ import annotations

import threading
from typing import Any

import psycopg
import pytest

from control_room.db.store import call_as

from .conftest import Contract, World, make_world, new_run, phase
from .test_state_machine import Clocked


@pytest.fixture
def cr(contract: Contract) -> Clocked:
    return Clocked(contract)


def dead_run(cr: Clocked, world: World, *, workspace: str = "w1", slug: str = "demo",
             message: str = "boom") -> dict[str, Any]:
    """A run of a -> b and c where a fails on its last attempt (retryable) and c succeeds."""
    w = world.w1 if workspace == "w1" else world.w2
    dev = world.dev1 if workspace == "w1" else world.dev2
    ex = world.exec1 if workspace == "w1" else world.exec2
    run = new_run(cr.contract, w, [phase("a", max_attempts=1), phase("b", "sql", "a"), phase("c")],
                  as_=dev, now=cr.now, spec_slug=slug)
    first = cr.call("claim_phase", {"run_id": run["id"]}, as_=ex)
    second = cr.call("claim_phase", {"run_id": run["id"]}, as_=ex)
    assert (first["name"], second["name"]) == ("a", "c")
    cr.call("complete_phase", {"lease_token": second["lease_token"], "outcome": "succeeded"},
            as_=ex)
    cr.call("complete_phase", {"lease_token": first["lease_token"], "outcome": "failed",
                               "error": {"message": message * 200, "type": "ValueError",
                                         "reason": "bad_data"}}, as_=ex)
    cr.advance(1)
    return run


def letters(cr: Clocked, who: Any, workspace: str, **args: Any) -> list[dict[str, Any]]:
    page = cr.call("list_dead_letters", {"workspace_id": workspace, **args}, as_=who)
    out: list[dict[str, Any]] = page["dead_letters"]
    return out


def test_a_phase_failed_out_of_attempts_is_listed_with_its_error(cr: Clocked, world: World) -> None:
    run = dead_run(cr, world)
    [letter] = letters(cr, world.viewer1, world.w1)
    a = next(p for p in cr.call("get_run", {"run_id": run["id"]})["phases"] if p["name"] == "a")
    assert letter["phase_id"] == a["id"] and letter["run_id"] == run["id"]
    assert (letter["spec_slug"], letter["phase"], letter["kind"]) == ("demo", "a", "python")
    assert (letter["attempts"], letter["max_attempts"], letter["run_state"]) == (1, 1, "failed")
    assert letter["error"]["type"] == "ValueError" and letter["error"]["reason"] == "bad_data"
    assert len(letter["error"]["message"]) == 500   # capped
    assert letter["failed_at"] == a["finished_at"] and letter["active_repair_id"] is None
    # b was skipped, c succeeded: neither is a dead letter
    assert letters(cr, world.viewer1, world.w1, spec_slug="other") == []
    assert letters(cr, world.viewer1, world.w1, since="2031-01-01T00:00:00Z") == []


def test_dead_letters_are_per_workspace_and_paged(cr: Clocked, world: World) -> None:
    runs = [dead_run(cr, world)["id"] for _ in range(5)]
    theirs = dead_run(cr, world, workspace="w2")["id"]
    assert [x["run_id"] for x in letters(cr, world.dev2, world.w2)] == [theirs]
    assert letters(cr, world.dev2, world.w1) == []        # another workspace: nothing
    assert letters(cr, world.viewer1, world.w2) == []
    seen: list[str] = []
    cursor = None
    while True:
        page = cr.call("list_dead_letters", {"workspace_id": world.w1, "limit": 2,
                                             "cursor": cursor}, as_=world.viewer1)
        assert len(page["dead_letters"]) <= 2
        seen += [x["run_id"] for x in page["dead_letters"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == runs[::-1]                             # newest failure first, each once
    err = cr.error("list_dead_letters", {"workspace_id": world.w1, "cursor": "x"},
                   as_=world.viewer1)
    assert (err.status, err.code) == (400, "invalid_argument") and "cursor" in str(err)
    err = cr.error("list_dead_letters", {"workspace_id": world.w1, "since": "yesterday"},
                   as_=world.viewer1)
    assert err.status == 400 and "since" in str(err)


def test_bulk_requeue_makes_one_repair_per_run_and_is_idempotent(cr: Clocked, world: World) -> None:
    r1, r2 = dead_run(cr, world), dead_run(cr, world)
    ids = [x["phase_id"] for x in letters(cr, world.dev1, world.w1)]
    err = cr.error("requeue_dead_letters", {"workspace_id": world.w1, "phase_ids": ids},
                   as_=world.viewer1)
    assert err.status == 403
    first = cr.call("requeue_dead_letters", {"workspace_id": world.w1, "phase_ids": ids},
                    as_=world.dev1)["requeued"]
    assert sorted(x["run_id"] for x in first) == sorted([r1["id"], r2["id"]])
    assert all(x["created"] and x["phases"] == ["a"] and x["rerun_phases"] == ["a", "b"]
               for x in first)
    again = cr.call("requeue_dead_letters", {"workspace_id": world.w1, "phase_ids": ids[:1]},
                    as_=world.dev1)["requeued"]
    [replay] = again
    assert replay["created"] is False
    assert replay["repair_run_id"] == next(
        x["repair_run_id"] for x in first if x["run_id"] == replay["run_id"])
    listed = letters(cr, world.dev1, world.w1)
    assert {x["active_repair_id"] for x in listed} == {x["repair_run_id"] for x in first}
    children = cr.call("list_runs", {"parent_run_id": r1["id"]})["runs"]
    assert len(children) == 1
    err = cr.error("requeue_dead_letters", {"workspace_id": world.w2, "phase_ids": ids},
                   as_=world.dev2)
    assert (err.status, err.code) == (404, "not_found") and "phase_ids[0]" in str(err)


def test_a_repair_that_succeeds_clears_its_dead_letter(cr: Clocked, world: World) -> None:
    run = dead_run(cr, world)
    [letter] = letters(cr, world.dev1, world.w1)
    [req] = cr.call("requeue_dead_letters", {"workspace_id": world.w1,
                                             "phase_ids": [letter["phase_id"]]},
                    as_=world.dev1)["requeued"]
    while (claim := cr.call("claim_phase", {"run_id": req["repair_run_id"]},
                            as_=world.exec1)) is not None:
        assert claim["name"] in ("a", "b")
        cr.call("complete_phase", {"lease_token": claim["lease_token"], "outcome": "succeeded"},
                as_=world.exec1)
    assert cr.call("get_run", {"run_id": req["repair_run_id"]})["state"] == "succeeded"
    assert letters(cr, world.dev1, world.w1) == []
    err = cr.error("requeue_dead_letters", {"workspace_id": world.w1,
                                            "phase_ids": [letter["phase_id"]]}, as_=world.dev1)
    assert (err.status, err.code) == (409, "conflict") and "not a dead letter" in str(err)
    assert cr.call("get_run", {"run_id": run["id"]})["repairs"][0]["state"] == "succeeded"


def test_a_repair_that_fails_again_shows_its_own_phase(cr: Clocked, world: World) -> None:
    dead_run(cr, world)
    [letter] = letters(cr, world.dev1, world.w1)
    [req] = cr.call("requeue_dead_letters", {"workspace_id": world.w1,
                                             "phase_ids": [letter["phase_id"]]},
                    as_=world.dev1)["requeued"]
    claim = cr.call("claim_phase", {"run_id": req["repair_run_id"]}, as_=world.exec1)
    assert claim is not None and claim["name"] == "a"
    cr.call("complete_phase", {"lease_token": claim["lease_token"], "outcome": "failed",
                               "error": "still broken", "retryable": False}, as_=world.exec1)
    [now] = letters(cr, world.dev1, world.w1)
    assert now["run_id"] == req["repair_run_id"] and now["phase_id"] != letter["phase_id"]
    assert now["error"]["message"] == "still broken" and now["active_repair_id"] is None


def test_two_concurrent_requeues_make_one_repair(sql_contract: Contract, db_url: str) -> None:
    world = make_world(sql_contract)
    cr = Clocked(sql_contract)
    run = dead_run(cr, world)
    [letter] = letters(cr, world.dev1, world.w1)
    barrier = threading.Barrier(2)
    answers: list[Any] = []

    def requeue() -> None:
        with psycopg.connect(db_url, autocommit=True) as conn:
            barrier.wait()
            answers.append(call_as(conn, "requeue_dead_letters", {
                "workspace_id": world.w1, "phase_ids": [letter["phase_id"]]},
                role="authenticated", sub=str(world.dev1.sub), now=cr.now)["requeued"][0])

    threads = [threading.Thread(target=requeue) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(a["created"] for a in answers) == [False, True]
    assert answers[0]["repair_run_id"] == answers[1]["repair_run_id"]
    assert len(sql_contract.call("list_runs", {"parent_run_id": run["id"]})["runs"]) == 1
