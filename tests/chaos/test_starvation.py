"""Starvation: a one-phase run submitted while the workers are busy with a 1,000-phase run is
claimed within two rounds of slots (at most twice as many of the long run's phases claimed
before it as there are slots), not after the long run's backlog.

Real processes: the gateway, two `control-room worker` processes of two slots each (noop
python phases), PostgreSQL. Before fair claims (20261203020600_fair_claims.sql) claims went by
priority then age, and the small run would have waited for every phase of the long run still
queued.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

from tests.chaos.harness import EP, GIT_SHA, Q, chaos_stack
from tests.contract.conftest import phase

pytestmark = pytest.mark.slow

LONG = 1_000
WORKERS, SLOTS = 2, 2
WARM = 3 * WORKERS * SLOTS      # long-run phases done before the small run is submitted
BOUND = 50.0


def test_a_small_run_is_claimed_within_two_rounds_of_slots_behind_a_long_run(
        db_url: str, tmp_path: Path) -> None:
    began = time.monotonic()
    with chaos_stack(db_url, tmp_path, claim_poll_seconds="0.5") as chaos:
        long_run = str(chaos.contract.call("create_run", {
            "workspace_id": chaos.world.w1, "spec_slug": "long", "git_sha": GIT_SHA,
            "idempotency_key": str(uuid.uuid4()),
            "phases": [phase(f"n{k:04d}", "python", params={"entrypoint": f"{EP}:noop"})
                       for k in range(LONG)]}, as_=chaos.world.dev1)["id"])
        chaos.conn.commit()
        for _ in range(WORKERS):
            chaos.worker("--concurrency", str(SLOTS), "--lease-seconds", "30")
        while True:                                       # the workers are at it
            done = chaos.conn.execute(Q["succeeded_phases"], {"run": long_run}).fetchone()
            chaos.conn.rollback()
            if done and done[0] >= WARM:
                break
            assert time.monotonic() - began < BOUND, chaos.worker_log(0)[-3000:]
            time.sleep(0.05)
        small = chaos.new_run(1, [0.1], slug="small")
        submitted = time.monotonic()
        while True:
            row = chaos.conn.execute(Q["claims_behind"], {"big": long_run, "small": small}
                                     ).fetchone()
            chaos.conn.rollback()
            assert row is not None
            ahead, waited = row
            if waited is not None:
                break
            assert time.monotonic() - submitted < BOUND / 2, (
                f"the small run is not claimed after {ahead} phases of the long run")
            time.sleep(0.02)
        finished = chaos.wait_finished([small], BOUND / 2)
        report = chaos.report([small])
        long_done = chaos.conn.execute(Q["succeeded_phases"], {"run": long_run}).fetchone()
        chaos.conn.rollback()
        chaos.contract.call("cancel_run", {"run_id": long_run}, as_=chaos.world.dev1)
        chaos.conn.commit()
    print(f"\nbehind a {LONG}-phase run on {WORKERS * SLOTS} slots: the small run was claimed "
          f"after {ahead} of its phases ({waited * 1000:.0f} ms after it was created), finished "
          f"{finished:.2f} s later; the long run had {long_done[0] if long_done else '?'} "
          f"phases done; {report.line()}")
    assert ahead <= 2 * WORKERS * SLOTS, ahead             # within two rounds of slots
    assert {k: v for k, v in report.zeros().items() if v} == {}
    assert long_done is not None and long_done[0] < LONG // 2   # the long run was far from done
    assert time.monotonic() - began < 60
