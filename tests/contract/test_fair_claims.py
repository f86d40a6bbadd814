"""Fair claims: runs of equal priority take turns (20261203020600_fair_claims.sql).

A phase queued to run now plays in a fair round: the round after its run's last queued phase,
never before the current round. Claims go by priority, fair round, then age, so a long run no
longer holds back the runs queued after it (before: four one-phase runs behind a 40-phase run
waited for all of its phases still queued). The clock is the test clock (`now=`); claimers are
executors taking turns on one connection, as slots of workers would.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from .conftest import SERVICE, Contract, World, make_world, new_run, phase


class Queue:
    """The contract on the test clock, as the executor of workspace w1."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.contract = Contract(conn)
        self.world: World = make_world(self.contract)
        self.now = datetime(2030, 1, 1, tzinfo=UTC)

    def advance(self, seconds: float = 1.0) -> None:
        self.now += timedelta(seconds=seconds)

    def run(self, n: int, prefix: str = "p", **extra: Any) -> str:
        self.advance(0.001)
        run: dict[str, Any] = new_run(self.contract, self.world.w1,
                                      [phase(f"{prefix}{k:03d}") for k in range(n)],
                                      as_=self.world.dev1, now=self.now, **extra)
        return str(run["id"])

    def chain(self, n: int) -> str:
        self.advance(0.001)
        phases = [phase("c000")] + [phase(f"c{k:03d}", "python", f"c{k - 1:03d}")
                                    for k in range(1, n)]
        run: dict[str, Any] = new_run(self.contract, self.world.w1, phases,
                                      as_=self.world.dev1, now=self.now)
        return str(run["id"])

    def claim(self) -> dict[str, Any] | None:
        self.advance(0.001)
        claim: dict[str, Any] | None = self.contract.call(
            "claim_phase", {"lease_seconds": 60}, as_=self.world.exec1, now=self.now)
        return claim

    def complete(self, claim: dict[str, Any], outcome: str = "succeeded",
                 **args: Any) -> dict[str, Any]:
        self.advance(0.001)
        result: dict[str, Any] = self.contract.call(
            "complete_phase", {"lease_token": claim["lease_token"], "outcome": outcome, **args},
            as_=self.world.exec1, now=self.now)
        return result

    def drain(self, limit: int = 10_000) -> list[dict[str, Any]]:
        """Claim and complete one at a time until nothing is claimable."""
        out: list[dict[str, Any]] = []
        for _ in range(limit):
            claim = self.claim()
            if claim is None:
                return out
            out.append(claim)
            self.complete(claim)
        raise AssertionError("the queue did not drain")


@pytest.fixture
def queue(conn: psycopg.Connection[Any]) -> Queue:
    return Queue(conn)


def test_small_runs_behind_a_big_run_are_claimed_in_the_next_round(queue: Queue) -> None:
    """The issue's case: a 40-phase run being worked on by two claimers (both slots hold one of
    its phases), then four one-phase runs. Before fair claims the small runs came after the 38
    phases of the big run still queued; now each is claimed after at most one more phase of the
    big run: the next five claims are one phase of the big run (queued first in the current
    round) and the four small runs, in the order they were submitted."""
    big = queue.run(40)
    slots = [queue.claim(), queue.claim()]                  # two claimers, busy with the big run
    assert all(s is not None and s["run_id"] == big for s in slots)
    small = [queue.run(1, prefix="s") for _ in range(4)]
    order: list[str] = []
    rounds, small_done = 0, 0
    while len(order) < 10:
        rounds += 1
        for i, held in enumerate(slots):                    # a round of slots: each finishes,
            assert held is not None                         # then claims again
            queue.complete(held)
            slots[i] = queue.claim()
            assert slots[i] is not None
            order.append(slots[i]["run_id"])                # type: ignore[index]
        if set(small) <= set(order) and not small_done:
            small_done = rounds
    first = {run: order.index(run) for run in small}
    assert sorted(first.values()) == [1, 2, 3, 4], order    # claims 2-5 after submission
    assert order[0] == big and order.count(big) == 6
    assert [order[k] for k in sorted(first.values())] == small   # in submission order
    assert small_done == 3                                   # within three rounds of two slots
    # ...and the big run then has the slots to itself
    rest = queue.drain()
    assert {c["run_id"] for c in rest} == {big} and len(rest) == 40 - 2 - 6


def test_runs_of_equal_priority_take_turns(queue: Queue) -> None:
    a = queue.run(6, prefix="a")
    b = queue.run(6, prefix="b")
    claims = [queue.claim() for _ in range(4)]
    assert [c["run_id"] for c in claims if c] == [a, b, a, b]
    c = queue.run(3, prefix="c")                            # joins the current round
    order = [x["run_id"] for x in queue.drain()]
    assert order[:6] == [a, b, c, a, b, c], order
    assert order == [a, b, c, a, b, c, a, b, c, a, b, a, b][: len(order)] and len(order) == 11
    for claim in claims:
        assert claim is not None
        queue.complete(claim)
    # within a run the phases keep their order
    names = queue.contract.conn.execute(
        "select name from ops.phases where run_id = %s order by started_at", (a,)).fetchall()
    queue.contract.conn.rollback()
    assert [n for (n,) in names] == [f"a{k:03d}" for k in range(6)]


def test_a_chain_takes_its_turn_beside_a_wide_run(queue: Queue) -> None:
    """A run whose phases are queued one at a time (each when the one before it succeeds)
    gets a turn each round, not after the wide run's backlog."""
    wide = queue.run(30, prefix="w")
    chain = queue.chain(4)
    order = [c["run_id"] for c in queue.drain()]
    assert len(order) == 34
    at = [k for k, run in enumerate(order) if run == chain]
    assert at == [1, 3, 5, 7], order                        # every other claim
    assert order.count(wide) == 30


def test_priority_still_wins(queue: Queue) -> None:
    low = queue.run(5, prefix="l")
    high_a = queue.run(3, prefix="h", priority=10)
    high_b = queue.run(3, prefix="k", priority=10)
    order = [c["run_id"] for c in queue.drain()]
    assert order[:6] == [high_a, high_b] * 3               # the high runs first, taking turns
    assert order[6:] == [low] * 5


def test_a_due_retry_goes_first_at_its_priority(queue: Queue) -> None:
    """A retry waits out its backoff outside the rounds (phases_retry_idx), then goes before
    the queued phases of its priority (it had its turn when it failed), not after a long run's
    backlog; a phase of higher priority still goes before it."""
    queue.advance(0.001)
    flaky_run = new_run(queue.contract, queue.world.w1,
                        [phase("flaky", max_attempts=3, retry_backoff_seconds=10,
                               retry_backoff_max_seconds=10)],
                        as_=queue.world.dev1, now=queue.now)["id"]
    first = queue.claim()
    assert first is not None and first["run_id"] == flaky_run
    big = queue.run(20, prefix="b")
    failed = queue.complete(first, "failed", error={"message": "boom"})
    assert failed["phase_state"] == "queued"
    due = datetime.fromisoformat(failed["not_before"])
    held = [queue.claim() for _ in range(3)]                 # not due yet: the big run's
    assert all(h is not None and h["run_id"] == big for h in held)
    fair_round = queue.contract.conn.execute(
        "select fair_round from ops.phases where run_id = %s", (flaky_run,)).fetchone()
    queue.contract.conn.rollback()
    assert fair_round == (None,)
    queue.now = due
    retry = queue.claim()
    assert retry is not None and retry["run_id"] == flaky_run and retry["attempt"] == 2
    # a due retry and a queued phase of higher priority: the higher priority first
    failed = queue.complete(retry, "failed", error={"message": "boom again"})
    urgent = queue.run(1, prefix="u", priority=5)
    queue.now = datetime.fromisoformat(failed["not_before"])
    claims = [queue.claim(), queue.claim()]
    assert [c["run_id"] for c in claims if c] == [urgent, flaky_run]
    assert claims[1] is not None and claims[1]["attempt"] == 3


def test_an_expired_lease_is_reclaimed_first(queue: Queue) -> None:
    big = queue.run(10, prefix="b")
    held = queue.contract.call("claim_phase", {"lease_seconds": 5}, as_=queue.world.exec1,
                               now=queue.now)
    assert held is not None and held["run_id"] == big
    other = queue.run(2, prefix="o")
    queue.advance(10)                                        # its holder is gone
    claim = queue.claim()
    assert claim is not None and claim["phase_id"] == held["phase_id"] and claim["attempt"] == 2
    order = [c["run_id"] for c in queue.drain()]
    assert order[:4] == [big, other, big, other], order


def test_every_run_kind_of_queueing_gets_a_round(queue: Queue) -> None:
    """Roots, dependents queued by complete_phase and phases requeued without backoff all carry
    a fair round; the service role's claims follow the same order."""
    run = queue.chain(2)
    claim = queue.contract.call("claim_phase", {"lease_seconds": 60}, as_=SERVICE, now=queue.now)
    assert claim is not None and claim["name"] == "c000"
    queue.contract.call("complete_phase", {"lease_token": claim["lease_token"],
                                           "outcome": "succeeded"}, as_=SERVICE, now=queue.now)
    rows = queue.contract.conn.execute(
        "select name, state, fair_round from ops.phases where run_id = %s order by name",
        (run,)).fetchall()
    queue.contract.conn.rollback()
    assert rows[0][:2] == ("c000", "succeeded")
    assert rows[1][:2] == ("c001", "queued") and rows[1][2] is not None


def test_a_phase_nobody_claims_does_not_hold_the_round_back(queue: Queue) -> None:
    """A queued phase of a kind no claimer runs keeps the lowest round; a run submitted later
    joins the round being run, not that one (it would go ahead of the whole queue)."""
    queue.advance(0.001)
    new_run(queue.contract, queue.world.w1, [phase("stuck", "spark")], as_=queue.world.dev1,
            now=queue.now)

    def claim() -> dict[str, Any] | None:
        queue.advance(0.001)
        got: dict[str, Any] | None = queue.contract.call(
            "claim_phase", {"lease_seconds": 60, "kinds": ["python"]}, as_=queue.world.exec1,
            now=queue.now)
        return got

    a = queue.run(20, prefix="a")
    for _ in range(8):
        done = claim()
        assert done is not None and done["run_id"] == a
        queue.complete(done)
    held = [claim(), claim()]                                # rounds 8 and 9 being run
    assert all(h is not None and h["run_id"] == a for h in held)
    n = queue.run(10, prefix="n")
    order = [c["run_id"] for c in (claim() for _ in range(6)) if c]
    assert order == [n, a, n, a, n, a], order                # taking turns with the long run
