"""Waiting claims take work that falls due without a notification when it falls due: a retry
whose backoff ends, a lease that expires (ops_private.claim_due_at, the gateway's
`_claim_or_due`). The gateway here polls only every 30 s, so a claim answered within a
second or two of the due time proves that it slept until then, not until its next poll."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest

from tests.contract.conftest import HttpContract, World, make_world, new_run, phase
from tests.helpers import running_gateway

POLL = 30.0
LATE = 3.0      # a bound with margin for a loaded machine; bench/retry_latency.py measures


@pytest.fixture
def http(conn: psycopg.Connection[Any], db_url: str) -> Iterator[HttpContract]:
    with running_gateway(db_url, claim_poll_seconds=POLL) as url, \
            httpx.Client(base_url=url, timeout=60) as client:
        yield HttpContract(conn, client)


@pytest.fixture
def world(http: HttpContract) -> World:
    return make_world(http)


def waiting_claim(http: HttpContract, world: World, wait: float) -> tuple[Any, float]:
    """A claim that waits up to `wait` s; its answer and when it came (epoch seconds)."""
    response = http.client.post(
        "/rest/v1/rpc/claim_phase", json={"lease_seconds": 30},
        headers={"Content-Profile": "ops", "Prefer": f"wait={wait:g}",
                 "Authorization": f"Bearer {http.token(world.exec1)}"})
    assert response.status_code == 200, response.text
    return response.json(), time.time()


def epoch(conn: psycopg.Connection[Any], sql: str, run_id: str) -> float:
    row = conn.execute(sql, {"run_id": run_id}).fetchone()
    conn.rollback()
    assert row is not None and row[0] is not None
    return float(row[0])


def test_a_waiting_claim_takes_a_retry_when_its_backoff_ends(http: HttpContract,
                                                              world: World) -> None:
    run = new_run(http, world.w1, [phase("a", max_attempts=2, retry_backoff_seconds=2)],
                  as_=world.dev1)
    claim = http.call("claim_phase", {"lease_seconds": 30}, as_=world.exec1)
    http.call("complete_phase", {"lease_token": claim["lease_token"], "outcome": "failed",
                                 "error": {"message": "the warehouse blinked"}},
              as_=world.exec1)
    due = epoch(http.conn, "select extract(epoch from not_before) from ops.phases"
                           " where run_id = %(run_id)s", run["id"])
    assert due > time.time()                    # backed off: 1-2 s from now
    again, answered = waiting_claim(http, world, 20)
    assert again is not None and (again["run_id"], again["attempt"]) == (run["id"], 2)
    assert answered - due < LATE, answered - due


def test_a_waiting_claim_takes_an_expired_lease_when_it_expires(http: HttpContract,
                                                                world: World) -> None:
    run = new_run(http, world.w1, [phase("a", max_attempts=2)], as_=world.dev1)
    claim = http.call("claim_phase", {"lease_seconds": 2}, as_=world.exec1)
    assert claim is not None            # its holder dies: no heartbeat
    expires = epoch(http.conn, "select extract(epoch from lease_expires_at) from ops.phases"
                               " where run_id = %(run_id)s", run["id"])
    again, answered = waiting_claim(http, world, 20)
    assert again is not None and (again["run_id"], again["attempt"]) == (run["id"], 2)
    assert answered - expires < LATE, answered - expires


def test_nothing_due_a_waiting_claim_waits_its_whole_wait(http: HttpContract,
                                                           world: World) -> None:
    started = time.monotonic()
    answer, _ = waiting_claim(http, world, 1.5)
    assert answer is None and time.monotonic() - started >= 1.4
