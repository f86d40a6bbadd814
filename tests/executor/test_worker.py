"""The worker against the real gateway on a real port, a real database, real python-kind
subprocesses and a local artifact store under tmp.

Each test runs a `Worker` in a thread (as `control-room worker` does) and watches the run
through the contract; every wait has a generous deadline and polls, so nothing depends on
timing beyond "eventually, well within the bound".
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import blake3
import psycopg
import pytest
from typer.testing import CliRunner

from control_room.cli import app
from executor.artifacts import read_blob
from tests.contract.conftest import phase
from tests.executor.harness import (
    BOUND,
    Env,
    Running,
    gateway_env,
    of_phase,
    wait_for,
)

EP = "tests.executor.worker_entrypoints"


def python(name: str, entrypoint: str, *deps: str, **extra: Any) -> dict[str, Any]:
    return phase(name, "python", *deps, params={"entrypoint": entrypoint}, **extra)


@pytest.fixture
def env(conn: psycopg.Connection[Any], db_url: str, tmp_path: Path) -> Iterator[Env]:
    with gateway_env(conn, db_url, tmp_path) as environment:
        yield environment


def test_a_dag_of_three_python_phases_succeeds_with_two_slots(env: Env) -> None:
    run_id = env.new_run(python("a", f"{EP}:produce"), python("b", f"{EP}:produce", "a"),
                         python("c", f"{EP}:produce", "a"))
    stats = Running(env.worker(concurrency=2), max_phases=3).join()
    assert (stats.claimed, stats.succeeded, stats.failed, stats.abandoned) == (3, 3, 0, 0)
    # the python kind's spare processes lived as long as the worker's run, no longer
    assert wait_for("the spares to end", lambda: not [
        p for p in multiprocessing.active_children() if p.name == "python-phase"])

    run = env.get_run(run_id)
    assert run.state == "succeeded"
    assert run.finalized_at is not None             # the last phase's worker finalized it
    events = env.events(run_id)
    types = [e.type for e in events]
    assert types.count("RUN_SUCCEEDED") == 1 and "RUN_FINALIZED" in types
    for name in "abc":
        trail = of_phase(events, name)
        # PHASE_STARTED first after the claim; the entrypoint's events; the artifact; success
        assert trail[trail.index("PHASE_CLAIMED") + 1] == "PHASE_STARTED", trail
        assert trail.index("PHASE_STARTED") < trail.index("LOG") < trail.index(
            "ARTIFACT_REGISTERED") < trail.index("PHASE_SUCCEEDED"), trail
        assert "PHASE_PROGRESS" in trail
        assert trail.count("PHASE_STARTED") == 1 and trail.count("ARTIFACT_REGISTERED") == 1
        log_event = next(e for e in events if e.phase == name and e.type == "LOG")
        assert (log_event.message, log_event.payload, log_event.attempt) == (
            f"producing {name}", {"phase": name}, 1)

        content = f"output of {name}\n".encode()
        digest = "blake3:" + blake3.blake3(content).hexdigest()
        manifest = run.phase(name).output_manifest
        assert manifest == {"phase": name, "upstream": [] if name == "a" else ["a"],
                            "artifacts": {f"{name}.txt": digest}}
        assert read_blob(env.store, digest) == content
        registered = next(e for e in events if e.phase == name
                          and e.type == "ARTIFACT_REGISTERED")
        assert registered.payload["digest"] == digest
        assert registered.payload["name"] == f"{name}.txt"
        assert registered.payload["size_bytes"] == len(content)
    rows = env.client(env.world.viewer1).list_artifacts(run_id).artifacts
    assert sorted((r.name, r.media_type, r.role) for r in rows) == [
        (f"{n}.txt", "text/plain", "output") for n in "abc"]
    # b and c ran after a; the scratch space was cleaned up
    assert not any((env.tmp / "work").rglob("*.txt"))


def test_a_worker_claims_for_all_its_free_slots_in_one_call(env: Env) -> None:
    """Four free slots, four runnable phases: one claim_phases call takes them all (one
    transaction: their PHASE_CLAIMED events share its time), and each runs in its slot."""
    run_id = env.new_run(*(python(name, f"{EP}:produce") for name in "abcd"))
    stats = Running(env.worker(concurrency=4), max_phases=4).join()
    assert (stats.claimed, stats.succeeded, stats.failed, stats.abandoned) == (4, 4, 0, 0)
    claimed = [e for e in env.events(run_id) if e.type == "PHASE_CLAIMED"]
    assert sorted(str(e.phase) for e in claimed) == ["a", "b", "c", "d"]
    assert len({e.ts for e in claimed}) == 1, [e.ts for e in claimed]
    assert env.get_run(run_id).state == "succeeded"


def test_a_transient_error_is_retried_then_succeeds(env: Env) -> None:
    run_id = env.new_run(python("f", f"{EP}:flaky", max_attempts=2, retry_backoff_seconds=0))
    stats = Running(env.worker(), max_phases=2).join()
    assert (stats.claimed, stats.succeeded, stats.failed) == (2, 1, 1)
    run = env.get_run(run_id)
    assert (run.state, run.phase("f").attempt) == ("succeeded", 2)
    assert run.phase("f").output_manifest == {"attempt": 2}
    events = env.events(run_id)
    failed = next(e for e in events if e.type == "PHASE_FAILED")
    assert failed.payload["retryable"] is True and failed.payload["final"] is False
    error = failed.payload["error"]
    assert error["type"] == "RuntimeError" and error["reason"] == "error"
    assert "the warehouse blinked" in error["message"] and "Traceback" in error["detail"]
    assert of_phase(events, "f").count("PHASE_STARTED") == 2


def test_a_terminal_error_fails_at_once(env: Env) -> None:
    run_id = env.new_run(python("t", "tests.executor.sample_entrypoints:raise_terminal",
                                max_attempts=3, retry_backoff_seconds=0))
    stats = Running(env.worker(), max_phases=1).join()
    assert (stats.claimed, stats.failed) == (1, 1)
    run = env.get_run(run_id)
    assert (run.state, run.phase("t").state, run.phase("t").attempt) == ("failed", "failed", 1)
    error = run.phase("t").error
    assert error is not None
    assert error["message"] == "the input can never work"
    assert (error["type"], error["reason"]) == ("TerminalPhaseError", "error")
    failed = next(e for e in env.events(run_id) if e.type == "PHASE_FAILED")
    assert failed.payload["retryable"] is False and failed.payload["final"] is True


def test_a_timeout_fails_the_phase_as_timeout(env: Env) -> None:
    # the timeout counts the phase process's start: a worker's first one starts cold (slowly
    # on a busy machine: no spares are started beside it, and the bound leaves it room)
    run_id = env.new_run(python("s", f"{EP}:sleep_long", timeout_seconds=8, max_attempts=3))
    started = time.monotonic()
    Running(env.worker(python_spares=0), max_phases=1).join()
    assert time.monotonic() - started < 30
    run = env.get_run(run_id)
    assert (run.state, run.phase("s").state, run.phase("s").attempt) == ("failed", "failed", 1)
    error = run.phase("s").error
    assert error is not None and (error["reason"], error["type"]) == ("timeout", "PhaseTimeout")
    pid = next(e for e in env.events(run_id) if e.type == "READY").payload["pid"]
    assert not _alive(pid)


def test_a_cancel_learned_from_a_heartbeat_kills_the_phase(env: Env) -> None:
    run_id = env.new_run(python("s", f"{EP}:sleep_long", max_attempts=3))
    running = Running(env.worker(lease_seconds=3), max_phases=1)
    ready = wait_for("READY", lambda: [e for e in env.events(run_id) if e.type == "READY"])
    pid = ready[0].payload["pid"]
    env.client(env.world.dev1).cancel_run(run_id, reason="enough")
    stats = running.join()
    assert (stats.claimed, stats.failed, stats.abandoned) == (1, 1, 0)
    assert not _alive(pid)
    run = env.get_run(run_id)
    assert (run.state, run.phase("s").state) == ("cancelled", "cancelled")
    stopped = [e for e in env.events(run_id) if e.type == "PHASE_STOPPED"]
    assert len(stopped) == 1
    assert stopped[0].payload["error"]["reason"] == "cancelled"


def test_a_graceful_stop_gives_a_long_phase_back(env: Env) -> None:
    run_id = env.new_run(python("s", f"{EP}:sleep_long", max_attempts=3))
    running = Running(env.worker(grace_seconds=0.5))
    ready = wait_for("READY", lambda: [e for e in env.events(run_id) if e.type == "READY"])
    pid = ready[0].payload["pid"]
    running.stop.set()
    stats = running.join()
    assert (stats.claimed, stats.failed, stats.abandoned) == (1, 1, 0)
    assert not _alive(pid)
    run = env.get_run(run_id)
    s = run.phase("s")
    assert (run.state, s.state, s.attempt) == ("running", "queued", 1)
    assert s.not_before is not None
    failed = next(e for e in env.events(run_id) if e.type == "PHASE_FAILED")
    assert failed.payload["retryable"] is True and failed.payload["final"] is False
    assert failed.payload["error"]["reason"] == "worker_stopped"
    assert "PHASE_RETRY_SCHEDULED" in [e.type for e in env.events(run_id)]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# --- the command ------------------------------------------------------------------------

def test_the_worker_command_runs_phases_and_gives_them_back_on_sigterm(env: Env) -> None:
    run_id = env.new_run(python("a", f"{EP}:produce"), python("s", f"{EP}:sleep_long", "a"))
    worker = env.worker_process("--kinds", "python", "--concurrency", "2",
                                "--grace-seconds", "0.5", "--lease-seconds", "6")
    wait_for("READY", lambda: [e for e in env.events(run_id) if e.type == "READY"])
    worker.send_signal(signal.SIGTERM)
    worker.wait(timeout=BOUND)
    stderr = env.log_of(worker)
    assert worker.returncode == 0, stderr
    assert "stopping gracefully" in stderr
    run = env.get_run(run_id)
    assert (run.phase("a").state, run.phase("s").state) == ("succeeded", "queued")
    digest = run.phase("a").output_manifest["artifacts"]["a.txt"]  # type: ignore[index]
    assert read_blob(env.store, digest) == b"output of a\n"


def test_the_worker_command_refuses_bad_input(tmp_path: Path) -> None:
    runner = CliRunner()
    env = {"CONTROL_ROOM_TOKEN": "", "CONTROL_ROOM_STATE_DIR": str(tmp_path)}
    help_text = runner.invoke(app, ["worker", "--help"], env={"COLUMNS": "200"}).output
    for var in ("CONTROL_ROOM_GATEWAY_URL", "CONTROL_ROOM_TOKEN", "CONTROL_ROOM_WORKER_KINDS",
                "CONTROL_ROOM_WORKER_CONCURRENCY", "CONTROL_ROOM_ARTIFACTS_URL"):
        assert var in help_text
    cases = [
        ["worker"],                                             # no token
        ["worker", "--token", "t", "--kinds", "python,nope"],
        ["worker", "--token", "t", "--concurrency", "0"],
        ["worker", "--token", "t", "--lease-seconds", "5000"],
        ["worker", "--token", "t", "--gateway", "ftp://x"],
        ["worker", "--token", "t", "--artifacts", "gopher://x"],
    ]
    for args in cases:
        result = runner.invoke(app, args, env=env)
        assert result.exit_code == 2, (args, result.output)


def test_a_failed_attempts_files_are_registered_as_reports(env: Env) -> None:
    run_id = env.new_run(python("check", f"{EP}:report_then_fail", max_attempts=2))
    stats = Running(env.worker(), max_phases=1).join()
    assert (stats.claimed, stats.failed) == (1, 1)
    run = env.get_run(run_id)
    assert (run.state, run.phase("check").attempt) == ("failed", 1)   # terminal: no retry
    [artifact] = env.artifacts(run_id)
    assert (artifact["phase"], artifact["name"], artifact["role"]) == (
        "check", "failed_rows/negative_qty.csv", "report")
    assert read_blob(env.store, artifact["digest"]) == b"id,qty\n7,-2\n"
    trail = of_phase(env.events(run_id), "check")
    assert trail.index("FAILURE_OUTPUTS") < trail.index("PHASE_FAILED")
