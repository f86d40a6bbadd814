"""Idempotency rules that docs/contract.md states, where the SQL did not keep them when the
document was written (each test names the rule it checks)."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import psycopg

from control_room.db.store import ContractError, acting_as, call

from .conftest import SERVICE, Contract, World, new_run, phase


def test_retry_run_refuses_a_key_that_names_another_run(contract: Contract, world: World) -> None:
    """docs/contract.md, idempotency: a key already used for a run with other arguments is a
    409 conflict, for retry_run as for create_run; it never returns an unrelated run."""
    parent = new_run(contract, world.w1, [phase("a")], as_=world.dev1, idempotency_key="nightly")
    contract.call("cancel_run", {"run_id": parent["id"]}, as_=world.dev1)
    err = contract.error("retry_run", {"run_id": parent["id"], "idempotency_key": "nightly"},
                         as_=world.dev1)
    assert (err.status, err.code) == (409, "conflict"), err


def test_retry_run_refuses_a_key_used_by_the_retry_of_another_run(
    contract: Contract, world: World
) -> None:
    """The same rule, for a key that a retry of a different parent used."""
    first = new_run(contract, world.w1, [phase("a")], as_=world.dev1)
    second = new_run(contract, world.w1, [phase("b")], as_=world.dev1)
    for run in (first, second):
        contract.call("cancel_run", {"run_id": run["id"]}, as_=world.dev1)
    child = contract.call("retry_run", {"run_id": first["id"], "idempotency_key": "again"},
                          as_=world.dev1)
    assert child["parent_run_id"] == first["id"]
    err = contract.error("retry_run", {"run_id": second["id"], "idempotency_key": "again"},
                         as_=world.dev1)
    assert (err.status, err.code) == (409, "conflict"), err


def test_concurrent_claims_with_one_claim_id_return_one_claim(
    sql_contract: Contract, db_url: str
) -> None:
    """docs/contract.md, idempotency: a claim retried with the same claim_id gets the same
    phase and token, also when the retry starts before the first call has committed."""
    contract = sql_contract
    ws = contract.call("create_workspace", {"slug": "race", "name": "Race"})
    new_run(contract, ws["id"], [phase("a"), phase("b")])
    claim_id = str(uuid.uuid4())
    second: dict[str, Any] = {}

    def retry(conn: psycopg.Connection[Any]) -> None:
        try:
            with acting_as(conn, role=SERVICE.role):
                second["result"] = call(conn, "claim_phase", {"claim_id": claim_id})
        except ContractError as exc:
            second["error"] = exc

    with psycopg.connect(db_url) as other, psycopg.connect(db_url, autocommit=True) as watcher:
        with acting_as(contract.conn, role=SERVICE.role):
            first = call(contract.conn, "claim_phase", {"claim_id": claim_id})
            thread = threading.Thread(target=retry, args=(other,))
            thread.start()
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:   # the retry waits for the first call's locks
                row = watcher.execute(
                    "select wait_event_type from pg_stat_activity where pid = %s",
                    (other.info.backend_pid,),
                ).fetchone()
                if row is not None and row[0] == "Lock":
                    break
                time.sleep(0.01)
            else:
                raise AssertionError("the retried claim never waited for the first one")
        thread.join(10)
    assert "error" not in second, f"the retried claim failed: {second.get('error')!r}"
    assert second["result"]["phase_id"] == first["phase_id"]
    assert second["result"]["lease_token"] == first["lease_token"]
