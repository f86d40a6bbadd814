"""Workers SIGKILLed mid-phase, again and again (each replaced at once), with short leases:
their phases are reclaimed once the leases expire and finish on a live worker. Nothing is
lost or completed twice; a killed worker's side effect may be repeated (its execution is gone
with it), a live worker's never.

Real processes: the gateway, two `control-room worker` processes (their phase processes die
with them: the whole process group is killed), PostgreSQL.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.chaos.entrypoints import ledger_lines
from tests.chaos.harness import chaos_stack

pytestmark = pytest.mark.slow

RUNS, PHASES = 2, 6
SECONDS = [0.6, 1.2, 1.8]
KILLS, EVERY = 3, 1.5
LEASE = 3
BOUND = 45.0


def test_workers_killed_mid_phase_lose_nothing_and_live_ones_repeat_nothing(
        db_url: str, tmp_path: Path) -> None:
    args = ("--concurrency", "2", "--lease-seconds", str(LEASE), "--grace-seconds", "1")
    with chaos_stack(db_url, tmp_path, claim_poll_seconds="0.5") as chaos:
        workers = [chaos.worker(*args) for _ in range(2)]
        runs = [chaos.new_run(PHASES, SECONDS, max_attempts=6) for _ in range(RUNS)]
        deadline = time.monotonic() + BOUND
        while not ledger_lines(chaos.ledger):           # the workers are busy
            assert time.monotonic() < deadline, chaos.worker_log(0)[-3000:]
            time.sleep(0.05)
        dead: set[int] = set()
        for k in range(KILLS):
            time.sleep(EVERY)
            victim = workers[k % len(workers)]
            chaos.kill_worker(victim)
            dead.add(victim.pid)
            workers[k % len(workers)] = chaos.worker(*args)
        killed_at = time.monotonic()
        recovered = chaos.wait_finished(runs, BOUND)
        report = chaos.report(runs, frozenset(dead))
        pids = {pid for *_, pid in ledger_lines(chaos.ledger)}
        all_workers = {w.pid for w in chaos.workers}
    print(f"\n{KILLS} workers SIGKILLed {EVERY} s apart; every run finished "
          f"{recovered:.1f} s after the last kill ({time.monotonic() - killed_at:.1f} s)")
    print(report.line())
    assert pids <= all_workers, (pids, all_workers)     # the ledger names its workers
    assert report.phases == RUNS * PHASES
    assert {k: v for k, v in report.zeros().items() if v} == {}
    assert report.lease_expiries >= 1, "no kill hit a running phase"
