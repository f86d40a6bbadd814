"""A retry storm: every phase of several runs fails transiently at once, on each of its first
attempts, with a small backoff and several attempts allowed. Each phase succeeds exactly once
(one side effect, on its last attempt), on the attempt configured, and every retry is claimed
soon after its backoff ends (the waiting claims wake at the retry's not_before, gateway/app.py
`_claim_or_due`), not a poll period or a lease later.

Real processes: the gateway, two `control-room worker` processes with six slots each (a slot
for every phase), PostgreSQL. The phases run `tests/chaos/entrypoints.py:flaky`.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest
from psycopg.rows import dict_row

from tests.chaos.entrypoints import ledger_lines
from tests.chaos.harness import Q, chaos_stack

pytestmark = pytest.mark.slow

RUNS, PHASES = 2, 6
SECONDS = [0.1, 0.2, 0.3]
FAIL_FIRST, MAX_ATTEMPTS = 2, 5
BACKOFF, BACKOFF_MAX = 0.5, 2.0
PICKUP_BOUND = 10.0
"""Generous: a retry claimed this long after its not_before was left waiting."""
SLOTS = 6
"""Per worker: a slot for every phase, so that a retry due never waits for a free one (its
pickup delay is the gateway's and the worker's)."""
BOUND = 60.0


def test_a_retry_storm_succeeds_every_phase_once_and_picks_the_retries_up_promptly(
        db_url: str, tmp_path: Path) -> None:
    with chaos_stack(db_url, tmp_path, claim_poll_seconds="5") as chaos:
        for _ in range(2):
            chaos.worker("--concurrency", str(SLOTS), "--lease-seconds", "30",
                         "--grace-seconds", "1")
        began = time.monotonic()
        runs = [chaos.new_run(PHASES, SECONDS, entrypoint="flaky",
                              args={"fail_first": FAIL_FIRST}, max_attempts=MAX_ATTEMPTS,
                              retry_backoff_seconds=BACKOFF,
                              retry_backoff_max_seconds=BACKOFF_MAX)
                for _ in range(RUNS)]
        took = chaos.wait_finished(runs, BOUND)
        report = chaos.report(runs)
        with chaos.conn.cursor(row_factory=dict_row) as cur:
            retries = cur.execute(Q["retry_pickups"], {"runs": runs}).fetchall()
        chaos.conn.rollback()
        ledger = ledger_lines(chaos.ledger)
    delays = [r["delay"] for r in retries]
    claimed = [d for d in delays if d is not None]
    print(f"\n{RUNS * PHASES} phases failing their first {FAIL_FIRST} attempts (backoff "
          f"{BACKOFF}-{BACKOFF_MAX} s): {len(retries)} retries, every run finished in "
          f"{took:.1f} s ({time.monotonic() - began:.1f} s); a retry claimed at most "
          f"{max(claimed):.2f} s after its not_before (median "
          f"{sorted(claimed)[len(claimed) // 2]:.2f} s)")
    print(report.line())
    assert report.phases == RUNS * PHASES
    assert {k: v for k, v in report.zeros().items() if v} == {}
    # the attempts configured: each phase failed FAIL_FIRST times, then succeeded once
    assert report.attempts == Counter({FAIL_FIRST + 1: RUNS * PHASES}), report.attempts
    assert report.lease_expiries == 0
    assert len(retries) == RUNS * PHASES * FAIL_FIRST
    assert Counter(attempt for *_, attempt, _ in ledger) == Counter(
        {FAIL_FIRST + 1: RUNS * PHASES}), "a side effect on another attempt than the last"
    # every retry was claimed, after its backoff (never before) and promptly
    assert len(claimed) == len(delays), retries
    assert min(claimed) >= 0, min(claimed)
    assert max(claimed) < PICKUP_BOUND, max(claimed)
