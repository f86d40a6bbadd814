"""The gateway's database sessions terminated again and again (pg_terminate_backend, as an
operator or a failover ends them) while phases run and finish: the gateway answers 503 while
its pool reconnects, the workers hold finished outcomes through it (executor/attempt.py
`Attempt.hold`), and nothing is lost, completed twice or run twice.

Real processes: the gateway (`control-room serve`), two `control-room worker` processes with
three slots each, PostgreSQL; every 0.3 s for 6 s every session of the test's database but
the test's own is terminated.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import psycopg
import pytest

from tests.chaos.entrypoints import ledger_lines
from tests.chaos.harness import Q, chaos_stack

pytestmark = pytest.mark.slow

RUNS, PHASES = 3, 8
SECONDS = [0.3, 0.6, 0.9, 1.2]
STORM, EVERY = 6.0, 0.3
BOUND = 45.0


def test_terminated_database_sessions_lose_no_phase_and_run_none_twice(
        db_url: str, tmp_path: Path) -> None:
    with chaos_stack(db_url, tmp_path, claim_poll_seconds="0.5") as chaos:
        for _ in range(2):
            chaos.worker("--concurrency", "3", "--lease-seconds", "30", "--grace-seconds", "1")
        runs = [chaos.new_run(PHASES, SECONDS) for _ in range(RUNS)]
        deadline = time.monotonic() + BOUND
        while len(ledger_lines(chaos.ledger)) < 2:      # the workers are busy
            assert time.monotonic() < deadline, chaos.worker_log(0)[-3000:]
            time.sleep(0.05)
        terminated = 0
        before = len(ledger_lines(chaos.ledger))
        with psycopg.connect(db_url, autocommit=True) as killer:
            storm_ends = time.monotonic() + STORM
            while time.monotonic() < storm_ends:
                row = killer.execute(Q["terminate_backends"]).fetchone()
                terminated += row[0] if row is not None else 0
                time.sleep(EVERY)
        during = len(ledger_lines(chaos.ledger)) - before
        recovered = chaos.wait_finished(runs, BOUND)
        report = chaos.report(runs)
        logs = [chaos.worker_log(k) for k in range(len(chaos.workers))]
    print(f"\n{terminated} sessions terminated in {STORM:.0f} s; {during} phases finished "
          f"meanwhile; every run finished {recovered:.1f} s after the storm")
    print(report.line())
    assert terminated >= 10, terminated                 # the storm hit the gateway
    assert report.phases == RUNS * PHASES
    assert {k: v for k, v in report.zeros().items() if v} == {}
    assert report.attempts == Counter({1: RUNS * PHASES}), report.attempts
    assert report.lease_expiries == 0
    assert during >= 1, "no phase finished during the storm"
    assert any("503" in log or "unavailable" in log for log in logs), \
        "no worker met the database's absence"
