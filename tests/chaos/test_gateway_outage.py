"""The gateway SIGKILLed and started again (2-5 s later) while phases finish: workers hold
the outcomes of the phases that finished meanwhile (registration, events, completion held
until the lease's deadline, executor/attempt.py `Attempt.hold`), so nothing finished is
thrown away and nothing runs twice.

Real processes: the gateway (`control-room serve`, killed with SIGKILL: requests in flight
are cut, its database sessions end), two `control-room worker` processes with three slots
each, PostgreSQL. Each phase sleeps, then appends one line to a ledger file (its side effect)
and writes an output file that the worker registers as an artifact.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from pathlib import Path

import pytest

from control_room.contract.client import ContractClient
from executor.artifacts import LocalArtifactStore
from executor.worker import Worker
from tests.chaos.entrypoints import ledger_lines
from tests.chaos.harness import chaos_stack, token_of
from tests.executor.harness import FAST_RETRY, Running

pytestmark = pytest.mark.slow

RUNS, PHASES = 3, 8
SECONDS = [0.4, 0.8, 1.2, 1.6]         # phases of varied length finish all the time
OUTAGES = 2
BOUND = 45.0


def test_a_gateway_killed_while_phases_finish_throws_no_finished_work_away(
        db_url: str, tmp_path: Path) -> None:
    rng = random.Random(1)
    with chaos_stack(db_url, tmp_path, claim_poll_seconds="0.5") as chaos:
        for _ in range(2):
            chaos.worker("--concurrency", "3", "--lease-seconds", "30", "--grace-seconds", "1")
        runs = [chaos.new_run(PHASES, SECONDS) for _ in range(RUNS)]
        deadline = time.monotonic() + BOUND
        while len(ledger_lines(chaos.ledger)) < 3:      # the workers are busy
            assert time.monotonic() < deadline, chaos.worker_log(0)[-3000:]
            time.sleep(0.05)
        finished_while_down = []
        downtimes = []
        for _ in range(OUTAGES):
            before = len(ledger_lines(chaos.ledger))
            chaos.gateway.kill()
            down = rng.uniform(2.0, 5.0)
            time.sleep(down)
            finished_while_down.append(len(ledger_lines(chaos.ledger)) - before)
            downtimes.append(down + chaos.gateway.start())
            time.sleep(1.5)                 # back to work: claims, completions
        recovered = chaos.wait_finished(runs, BOUND)
        report = chaos.report(runs)
        logs = [chaos.worker_log(k) for k in range(len(chaos.workers))]
    print(f"\ngateway outages of {', '.join(f'{d:.1f}' for d in downtimes)} s; phases that "
          f"finished while it was down: {finished_while_down}; every run finished "
          f"{recovered:.1f} s after the last restart")
    print(report.line())
    assert report.phases == RUNS * PHASES
    assert {k: v for k, v in report.zeros().items() if v} == {}
    # the outages hit finished work, and the workers held it: every phase ran exactly once,
    # on its first attempt (no retry, no lease expiry), though their calls failed meanwhile
    assert sum(finished_while_down) >= 3, finished_while_down
    assert report.attempts == Counter({1: RUNS * PHASES}), report.attempts
    assert report.lease_expiries == 0
    held = sum(log.count("holding the outcome") for log in logs)
    assert held >= 1, "no worker had to hold an outcome: the outage missed the finishing phases"


def test_a_worker_holds_a_finished_outcome_until_the_lease_deadline_then_gives_it_up(
        db_url: str, tmp_path: Path) -> None:
    """The gateway does not come back: the worker retries the finished phase's calls until its
    lease's deadline (not forever, not a moment less), abandons the attempt, and the phase is
    reclaimed once the lease has expired."""
    lease = 4
    with chaos_stack(db_url, tmp_path, claim_poll_seconds="0.5") as chaos:
        run_id = chaos.new_run(1, [2.0])
        client = ContractClient(chaos.gateway.rest_url, token_of(chaos.world.exec1),
                                retry=FAST_RETRY)
        worker = Worker(client, kinds=["python"], lease_seconds=lease,
                        store=LocalArtifactStore(tmp_path / "blobs"), work_dir=tmp_path / "work",
                        claim_wait=1.0, idle_max=0.5, event_flush_seconds=0.2,
                        python_spares=0)
        running = Running(worker, max_phases=1)
        deadline = time.monotonic() + BOUND
        while not chaos.has_event(run_id, "WORKING"):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        chaos.gateway.kill()                    # before the phase finishes (it works 2 s)
        killed = time.monotonic()
        stats = running.join(BOUND)
        gave_up = time.monotonic() - killed
        client.close()
        assert (stats.claimed, stats.succeeded, stats.failed, stats.abandoned) == (1, 0, 0, 1)
        assert len(ledger_lines(chaos.ledger)) == 1         # it did finish its work
        # held until the lease's deadline (the claim's lease, as no heartbeat got through),
        # then given up; the client's own retries of the last call may add a few seconds
        assert lease - 2.0 <= gave_up <= lease + 8.0, gave_up
        chaos.gateway.start()
        chaos.worker("--concurrency", "1", "--lease-seconds", "30", "--grace-seconds", "1")
        chaos.wait_finished([run_id], BOUND)
        report = chaos.report([run_id])
    print(f"\ngave the attempt up {gave_up:.1f} s after the kill (lease {lease} s); "
          f"{report.line()}")
    # reclaimed after the lease expired: attempt 2 did the work again (the first holder was
    # alive but gave up, as it must once its lease is over)
    assert (report.lost, report.double_completions, report.incomplete_trails) == ([], [], [])
    assert report.attempts == Counter({2: 1}) and report.lease_expiries == 1
