"""`control-room deadletters` and `control-room runs repair` against the real gateway on a real
port over a fresh database: dead letters listed and requeued with a confirmation, a repair
run to success by an executor, bad input reported on stderr with exit code 2."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from typer.testing import CliRunner

from control_room.cli import app
from tests.contract.conftest import phase
from tests.executor.harness import Env, gateway_env
from tests.test_cli_runs import cli, ok_json


def answering(env: Env, answer: str, *args: str) -> tuple[int, str, str]:
    """`control-room ARGS` as the developer of w1, answering the confirmation with `answer`."""
    result = CliRunner().invoke(app, list(args), input=answer, env={
        "CONTROL_ROOM_GATEWAY_URL": env.rest_url,
        "CONTROL_ROOM_TOKEN": env.contract.token(env.world.dev1),
        "CONTROL_ROOM_WORKSPACE": None, "CONTROL_ROOM_STATE_DIR": str(env.tmp / "state"),
        "COLUMNS": "200"})
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.stderr
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def env(conn: psycopg.Connection[Any], db_url: str, tmp_path: Path) -> Iterator[Env]:
    with gateway_env(conn, db_url, tmp_path) as environment:
        yield environment


def failed_run(env: Env, slug: str = "demo") -> dict[str, Any]:
    """extract -> load, where extract fails for good: one dead letter."""
    c, w = env.contract, env.world
    run = c.call("create_run", {"workspace_id": w.w1, "spec_slug": slug, "git_sha": "0123abc",
                                "phases": [phase("extract"), phase("load", "sql", "extract")]},
                 as_=w.dev1)
    claim = c.call("claim_phase", {"run_id": run["id"]}, as_=w.exec1)
    c.call("complete_phase", {"lease_token": claim["lease_token"], "outcome": "failed",
                              "error": {"message": "source down", "type": "ConnectionError"},
                              "retryable": False}, as_=w.exec1)
    result: dict[str, Any] = c.call("get_run", {"run_id": run["id"]})
    return result


def run_to_success(env: Env, run_id: str) -> threading.Thread:
    """An executor (over the contract) that claims and succeeds the run's phases."""
    def work() -> None:
        done = 0
        while done < 50:
            claim = env.contract.call("claim_phase", {"run_id": run_id}, as_=env.world.exec1)
            if claim is None:
                state = env.contract.call("get_run", {"run_id": run_id})["state"]
                if state != "queued" and state != "running":
                    return
                done += 1
                continue
            env.contract.call("complete_phase", {"lease_token": claim["lease_token"],
                                                 "outcome": "succeeded"}, as_=env.world.exec1)
    thread = threading.Thread(target=work, daemon=True)
    return thread


def test_list_requeue_and_repair_through_the_gateway(env: Env) -> None:
    first, second = failed_run(env), failed_run(env, "other")
    code, out, err = cli(env, "deadletters", "list")
    assert code == 0, err
    assert first["phases"][0]["id"] in out and "ConnectionError: source down" in out
    letters = ok_json(env, "deadletters", "list", "--spec", "demo")
    assert [(x["run_id"], x["phase"]) for x in letters] == [(first["id"], "extract")]

    # no confirmation: nothing requeued
    code, out, err = answering(env, "n\n", "deadletters", "requeue", "--all")
    assert code == 1 and "requeue 2 dead letter(s)" in out
    assert ok_json(env, "runs", "list", "--state", "queued") == []
    code, out, err = answering(env, "y\n", "deadletters", "requeue", "--all", "--spec", "demo")
    assert code == 0, err
    assert f"of {first['id']} (extract; reruns extract, load) queued" in out
    # idempotent: the active repair is answered, not doubled
    again = ok_json(env, "deadletters", "requeue", letters[0]["phase_id"], "--yes")
    assert again["requeued"][0]["created"] is False
    repair_id = again["requeued"][0]["repair_run_id"]
    assert ok_json(env, "deadletters", "list", "--spec", "demo")[0]["active_repair_id"] == (
        repair_id)

    # a repair of the other run, run to success while the CLI waits
    code, out, err = cli(env, "runs", "repair", second["id"], "--phase", "nope")
    assert code == 2 and "nope" in err
    code, out, err = cli(env, "runs", "repair", second["id"], "--json")
    assert code == 0, err
    child = json.loads(out)
    assert (child["parent_run_id"], child["rerun_phases"]) == (second["id"], ["extract", "load"])
    code, out, err = cli(env, "runs", "repair", second["id"])
    assert code == 1 and child["id"] in err          # one active repair per run
    worker = run_to_success(env, child["id"])
    worker.start()
    code, out, err = cli(env, "runs", "watch", child["id"], "--interval", "0.1")
    worker.join(30)
    assert code == 0, (out, err)
    shown = ok_json(env, "runs", "show", second["id"])
    assert [(r["id"], r["state"]) for r in shown["repairs"]] == [(child["id"], "succeeded")]
    code, out, err = cli(env, "runs", "show", second["id"])
    assert code == 0 and f"repaired by {child['id']} succeeded" in out, err
    code, out, err = cli(env, "runs", "show", child["id"])
    assert code == 0 and f"repair of {second['id']}" in out, err
    # the repaired dead letter left the list; the demo one is still there (its repair queued)
    assert [x["run_id"] for x in ok_json(env, "deadletters", "list")] == [first["id"]]


def test_repair_wait_follows_the_repair_to_success(env: Env) -> None:
    run = failed_run(env)
    child_id: list[str] = []

    def executor() -> None:
        while not child_id:
            children = env.contract.call("list_runs", {"parent_run_id": run["id"]})["runs"]
            if children:
                child_id.append(children[0]["id"])
        worker = run_to_success(env, child_id[0])
        worker.start()
        worker.join(30)

    thread = threading.Thread(target=executor, daemon=True)
    thread.start()
    code, out, err = cli(env, "runs", "repair", run["id"], "--wait", "--interval", "0.1")
    thread.join(30)
    assert code == 0, (out, err)
    assert f"repair created {child_id[0]} of {run['id']}: reruns extract, load" in out


def test_bad_input_exits_2(env: Env) -> None:
    for args, needle in (
        (("deadletters", "requeue"), "--all"),
        (("deadletters", "requeue", "not-a-uuid"), "malformed phase id"),
        (("deadletters", "requeue", str(uuid.uuid4()), "--all"), "not both"),
        (("deadletters", "requeue", str(uuid.uuid4()), "--yes"), "not a dead letter"),
        (("deadletters", "requeue", str(uuid.uuid4()), "--spec", "x"), "--spec"),
        (("deadletters", "list", "--limit", "0"), "limit"),
        (("runs", "repair", "nope"), "malformed run id"),
        (("runs", "repair", str(uuid.uuid4())), "not found"),
        (("runs", "repair", str(uuid.uuid4()), "--phase", " "), "--phase"),
    ):
        code, out, err = cli(env, *args)
        assert code == 2, (args, code, out, err)
        assert needle in err, (args, err)
