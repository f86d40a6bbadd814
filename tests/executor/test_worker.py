"""The worker against the real gateway on a real port, a real database, real python-kind
subprocesses and a local artifact store under tmp.

Each test runs a `Worker` in a thread (as `control-room worker` does) and watches the run
through the contract; every wait has a generous deadline and polls, so nothing depends on
timing beyond "eventually, well within the bound".
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import blake3
import httpx
import psycopg
import pytest
from typer.testing import CliRunner

from control_room.cli import app
from executor.artifacts import LocalArtifactStore, read_blob
from executor.client import ContractClient, Event, RetryPolicy, Run
from executor.worker import Worker, WorkerStats
from tests.contract.conftest import HttpContract, World, make_world, phase
from tests.helpers import running_gateway

FAST_RETRY = RetryPolicy(attempts=4, initial=0.05, max_wait=0.5, total=10.0)
EP = "tests.executor.worker_entrypoints"
BOUND = 30.0        # seconds: a generous bound for anything that should take one or two


def python(name: str, entrypoint: str, *deps: str, **extra: Any) -> dict[str, Any]:
    return phase(name, "python", *deps, params={"entrypoint": entrypoint}, **extra)


def wait_for(what: str, check: Callable[[], Any], bound: float = BOUND) -> Any:
    deadline = time.monotonic() + bound
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


@dataclass
class Env:
    rest_url: str
    world: World
    contract: HttpContract
    tmp: Path
    clients: list[ContractClient] = field(default_factory=list)

    def client(self, principal: Any) -> ContractClient:
        client = ContractClient(self.rest_url, self.contract.token(principal), retry=FAST_RETRY)
        self.clients.append(client)
        return client

    @property
    def store(self) -> LocalArtifactStore:
        return LocalArtifactStore(self.tmp / "blobs")

    def new_run(self, *phases: dict[str, Any]) -> str:
        run = self.client(self.world.dev1).call("create_run", {
            "workspace_id": self.world.w1, "spec_slug": "demo", "git_sha": "0123abc",
            "phases": list(phases), "idempotency_key": str(uuid.uuid4())})
        return str(run["id"])

    def get_run(self, run_id: str) -> Run:
        return self.client(self.world.viewer1).get_run(run_id)

    def events(self, run_id: str) -> list[Event]:
        return list(self.client(self.world.viewer1).iter_events(run_id))

    def worker(self, **options: Any) -> Worker:
        settings: dict[str, Any] = {"kinds": ["python"], "store": self.store,
                                    "work_dir": self.tmp / "work", "claim_wait": 1.0,
                                    "idle_max": 0.5, "event_flush_seconds": 0.2}
        settings.update(options)
        return Worker(self.client(self.world.exec1), **settings)


class Running:
    """A worker's `run` in a thread."""

    def __init__(self, worker: Worker, max_phases: int | None = None) -> None:
        self.stop = threading.Event()
        self.stats: WorkerStats | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(worker, max_phases), daemon=True)
        self.thread.start()

    def _run(self, worker: Worker, max_phases: int | None) -> None:
        try:
            self.stats = worker.run(self.stop, max_phases=max_phases)
        except BaseException as exc:
            self.error = exc

    def join(self, bound: float = BOUND) -> WorkerStats:
        self.thread.join(bound)
        assert not self.thread.is_alive(), "the worker did not end in time"
        assert self.error is None, self.error
        assert self.stats is not None
        return self.stats


@pytest.fixture
def env(conn: psycopg.Connection[Any], db_url: str, tmp_path: Path) -> Iterator[Env]:
    with running_gateway(db_url, claim_poll_seconds=0.5) as url, \
            httpx.Client(base_url=url, timeout=30) as http:
        contract = HttpContract(conn, http)
        environment = Env(f"{url}/rest/v1", make_world(contract), contract, tmp_path)
        try:
            yield environment
        finally:
            for client in environment.clients:
                client.close()


def of_phase(events: list[Event], name: str) -> list[str]:
    return [e.type for e in events if e.phase == name]


def test_a_dag_of_three_python_phases_succeeds_with_two_slots(env: Env) -> None:
    run_id = env.new_run(python("a", f"{EP}:produce"), python("b", f"{EP}:produce", "a"),
                         python("c", f"{EP}:produce", "a"))
    stats = Running(env.worker(concurrency=2), max_phases=3).join()
    assert (stats.claimed, stats.succeeded, stats.failed, stats.abandoned) == (3, 3, 0, 0)

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
    artifacts = env.client(env.world.viewer1).call("list_artifacts", {"run_id": run_id})
    rows = artifacts["artifacts"] if isinstance(artifacts, dict) else artifacts
    assert sorted((r["name"], r["media_type"], r["role"]) for r in rows) == [
        (f"{n}.txt", "text/plain", "output") for n in "abc"]
    # b and c ran after a; the scratch space was cleaned up
    assert not any((env.tmp / "work").rglob("*.txt"))


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
    run_id = env.new_run(python("s", f"{EP}:sleep_long", timeout_seconds=2, max_attempts=3))
    started = time.monotonic()
    Running(env.worker(), max_phases=1).join()
    assert time.monotonic() - started < 20
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
    env.client(env.world.dev1).call("cancel_run", {"run_id": run_id, "reason": "enough"})
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
    repo = Path(__file__).resolve().parents[2]
    process_env = {**os.environ, "PYTHONPATH": str(repo),
                   "CONTROL_ROOM_GATEWAY_URL": env.rest_url,
                   "CONTROL_ROOM_TOKEN": env.contract.token(env.world.exec1),
                   "CONTROL_ROOM_STATE_DIR": str(env.tmp / "state"),
                   "CONTROL_ROOM_ARTIFACTS_URL": (env.tmp / "blobs").as_uri()}
    command = [sys.executable, "-m", "control_room.cli", "worker", "--kinds", "python",
               "--concurrency", "2", "--grace-seconds", "0.5", "--lease-seconds", "6"]
    worker = subprocess.Popen(command, env=process_env, cwd=repo, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        wait_for("READY", lambda: [e for e in env.events(run_id) if e.type == "READY"])
        worker.send_signal(signal.SIGTERM)
        _, stderr = worker.communicate(timeout=BOUND)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
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
