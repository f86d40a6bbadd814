"""More concurrent callers than the gateway's database pool: waiting claims (`Prefer: wait`)
that find no work, two workers running runs, and a burst of reads, on a pool of 3
connections. Calls queue for a connection (gateway/app.py: the pool's 10 s timeout, then
503 PGRST000 `unavailable`, the documented answer when the database is out of reach); the
gateway keeps answering, every run finishes with nothing lost or done twice, and no database
session is left behind: the sessions on the database are the pool and the listener before,
during and after.

Real processes: the gateway (CONTROL_ROOM_POOL_MIN_SIZE = CONTROL_ROOM_POOL_MAX_SIZE = 3), two
`control-room worker` processes with three slots each, PostgreSQL; the waiting claims and the
reads are the test's own threads over HTTP.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.chaos.harness import Q, chaos_stack, token_of

pytestmark = pytest.mark.slow

POOL = 3
RUNS, PHASES = 2, 8
SECONDS = [0.3, 0.6, 0.9]
WAITERS, READERS = 24, 8
"""Claims waiting for work of a kind nobody queues, and threads reading as fast as they can."""
BURST = 8.0
BOUND = 45.0


def test_more_callers_than_the_pool_keep_getting_answers_and_leak_no_session(
        db_url: str, tmp_path: Path) -> None:
    with chaos_stack(db_url, tmp_path, claim_poll_seconds="0.5", pool_min_size=str(POOL),
                     pool_max_size=str(POOL)) as chaos:
        def sessions() -> int:
            row = chaos.conn.execute(Q["sessions_of_database"]).fetchone()
            chaos.conn.rollback()
            assert row is not None
            return int(row[0])

        deadline = time.monotonic() + BOUND
        while sessions() != POOL + 1:                   # the pool and the listener
            assert time.monotonic() < deadline, sessions()
            time.sleep(0.1)
        baseline = sessions()
        for _ in range(2):
            chaos.worker("--concurrency", "3", "--lease-seconds", "30", "--grace-seconds", "1")
        runs = [chaos.new_run(PHASES, SECONDS) for _ in range(RUNS)]

        answers: Counter[tuple[str, int, str]] = Counter()
        failures: list[str] = []
        lock = threading.Lock()
        in_flight = [0, 0]                              # now, most
        stop = threading.Event()
        url = chaos.gateway.rest_url

        def call(client: httpx.Client, what: str, fn: str, body: dict[str, Any],
                 **headers: str) -> None:
            with lock:
                in_flight[0] += 1
                in_flight[1] = max(in_flight)
            try:
                response = client.post(f"{url}/rpc/{fn}", json=body, headers=headers)
            except httpx.HTTPError as exc:
                with lock:
                    failures.append(f"{what}: {type(exc).__name__}: {exc}")
                return
            finally:
                with lock:
                    in_flight[0] -= 1
            hint = ""
            if response.status_code != 200:
                hint = str(response.json().get("hint", "")) + " " + str(
                    response.json().get("code", ""))
            with lock:
                answers[(what, response.status_code, hint)] += 1

        def waiter(k: int) -> None:
            auth = {"authorization": f"Bearer {token_of(chaos.world.exec1)}"}
            with httpx.Client(timeout=30, headers=auth) as client:
                while not stop.is_set():
                    call(client, "waiting claim", "claim_phase",
                         {"kinds": ["sql"], "lease_seconds": 30, "claim_id": None},
                         prefer="wait=2")

        def reader(k: int) -> None:
            auth = {"authorization": f"Bearer {token_of(chaos.world.dev1)}"}
            with httpx.Client(timeout=30, headers=auth) as client:
                ends = time.monotonic() + BURST
                while time.monotonic() < ends:
                    if k % 2:
                        call(client, "read", "list_runs", {"workspace_id": chaos.world.w1})
                    else:
                        call(client, "read", "get_run", {"run_id": runs[k % len(runs)]})

        waiters = [threading.Thread(target=waiter, args=(k,)) for k in range(WAITERS)]
        readers = [threading.Thread(target=reader, args=(k,)) for k in range(READERS)]
        peak_sessions = 0
        for thread in waiters + readers:
            thread.start()
        while any(t.is_alive() for t in readers):
            peak_sessions = max(peak_sessions, sessions())
            time.sleep(0.2)
        load_ended = time.monotonic()
        recovered = chaos.wait_finished(runs, BOUND)
        stop.set()
        for thread in waiters + readers:
            thread.join(BOUND)
        report = chaos.report(runs)
        deadline = time.monotonic() + BOUND
        while sessions() != baseline and time.monotonic() < deadline:
            time.sleep(0.2)
        after = sessions()
        health = httpx.get(f"{chaos.gateway.base}/health", timeout=10)
    reads = sum(n for (what, status, _), n in answers.items() if what == "read")
    print(f"\npool of {POOL}: {WAITERS} waiting claims, 2 workers, {READERS} readers for "
          f"{BURST:.0f} s; at most {in_flight[1]} of the test's calls in flight; answers "
          f"{dict(sorted(answers.items()))}; database sessions {baseline} before, at most "
          f"{peak_sessions} during, {after} after; every run finished {recovered:.1f} s "
          f"after the burst ({time.monotonic() - load_ended:.1f} s)")
    print(report.line())
    assert failures == [], failures[:5]
    # answered: 200, or the documented 503 of a pool that gave no connection in time
    assert {(status, hint) for (_, status, hint) in answers} <= {
        (200, ""), (503, "unavailable PGRST000")}, answers
    assert answers[("read", 200, "")] >= reads * 0.9, answers
    assert answers[("waiting claim", 200, "")] >= WAITERS, answers
    assert in_flight[1] > POOL * 4, "the callers never outnumbered the pool"
    assert report.phases == RUNS * PHASES
    assert {k: v for k, v in report.zeros().items() if v} == {}
    assert report.attempts == Counter({1: RUNS * PHASES}), report.attempts
    # no session leaked: the pool never grew past its size, and the count is back
    assert peak_sessions <= POOL + 2, peak_sessions     # the health probe's migration check
    assert after == baseline, (baseline, after)
    assert health.status_code == 200 and health.json()["database"] == "reachable"
