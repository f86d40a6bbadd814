"""What the worker tests share: the real gateway, workspaces with every role, contract
clients, workers in a thread or as `control-room worker` processes, and their clean-up."""

from __future__ import annotations

import contextlib
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

import httpx
import psycopg

from control_room.contract.client import ContractClient, Event, RetryPolicy, Run
from executor.artifacts import LocalArtifactStore
from executor.worker import Worker, WorkerStats
from tests.contract.conftest import HttpContract, World, make_world
from tests.helpers import running_gateway

FAST_RETRY = RetryPolicy(attempts=4, initial=0.05, max_wait=0.5, total=10.0)
BOUND = 30.0        # seconds: a generous bound for anything that should take one or two
REPO = Path(__file__).resolve().parents[2]
GIT_SHA = "0123abc"


def wait_for(what: str, check: Callable[[], Any], bound: float = BOUND) -> Any:
    deadline = time.monotonic() + bound
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def of_phase(events: list[Event], name: str) -> list[str]:
    return [e.type for e in events if e.phase == name]


@dataclass
class Env:
    rest_url: str
    world: World
    contract: HttpContract
    tmp: Path
    clients: list[ContractClient] = field(default_factory=list)
    processes: list[subprocess.Popen[str]] = field(default_factory=list)
    pids: list[int] = field(default_factory=list)
    """Phase subprocesses a test learned of (killed, with their groups, in teardown)."""

    def client(self, principal: Any) -> ContractClient:
        client = ContractClient(self.rest_url, self.contract.token(principal), retry=FAST_RETRY)
        self.clients.append(client)
        return client

    @property
    def store(self) -> LocalArtifactStore:
        return LocalArtifactStore(self.tmp / "blobs")

    def new_run(self, *phases: dict[str, Any]) -> str:
        run = self.client(self.world.dev1).create_run(
            self.world.w1, "demo", GIT_SHA, list(phases), idempotency_key=str(uuid.uuid4()))
        return run.id

    def get_run(self, run_id: str) -> Run:
        return self.client(self.world.viewer1).get_run(run_id)

    def events(self, run_id: str) -> list[Event]:
        return list(self.client(self.world.viewer1).iter_events(run_id))

    def artifacts(self, run_id: str) -> list[dict[str, Any]]:
        """The run's artifact links as JSON objects (`list_artifacts`, every page)."""
        viewer = self.client(self.world.viewer1)
        return [link.model_dump(mode="json") for link in viewer.iter_artifacts(run_id)]

    def worker(self, **options: Any) -> Worker:
        """A `Worker` of executor exec1, quick to notice work and to flush events."""
        settings: dict[str, Any] = {"kinds": ["python"], "store": self.store,
                                    "work_dir": self.tmp / "work", "claim_wait": 1.0,
                                    "idle_max": 0.5, "event_flush_seconds": 0.2}
        settings.update(options)
        return Worker(self.client(self.world.exec1), **settings)

    def worker_process(self, *args: str) -> subprocess.Popen[str]:
        """`python -m control_room.cli worker ARGS` against the gateway; its output goes to
        `self.log_of(process)`."""
        process_env = {**os.environ, "PYTHONPATH": str(REPO),
                       "CONTROL_ROOM_GATEWAY_URL": self.rest_url,
                       "CONTROL_ROOM_TOKEN": self.contract.token(self.world.exec1),
                       "CONTROL_ROOM_STATE_DIR": str(self.tmp / "state"),
                       "CONTROL_ROOM_ARTIFACTS_URL": (self.tmp / "blobs").as_uri()}
        log = self.tmp / f"worker-{len(self.processes)}.log"
        with log.open("w") as out:
            process: subprocess.Popen[str] = subprocess.Popen(
                [sys.executable, "-m", "control_room.cli", "worker", *args], env=process_env,
                cwd=REPO, stdout=out, stderr=subprocess.STDOUT, text=True)
        self.processes.append(process)
        return process

    def log_of(self, process: subprocess.Popen[str]) -> str:
        return (self.tmp / f"worker-{self.processes.index(process)}.log").read_text()


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


def kill_group(pid: int) -> None:
    for kill, target in ((os.killpg, pid), (os.kill, pid)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            kill(target, signal.SIGKILL)


@contextlib.contextmanager
def gateway_env(conn: psycopg.Connection[Any], db_url: str, tmp_path: Path) -> Iterator[Env]:
    """The gateway over `db_url` with two workspaces' members; everything started is stopped."""
    with running_gateway(db_url, claim_poll_seconds=0.5) as url, \
            httpx.Client(base_url=url, timeout=30) as http:
        contract = HttpContract(conn, http)
        environment = Env(f"{url}/rest/v1", make_world(contract), contract, tmp_path)
        try:
            yield environment
        finally:
            for process in environment.processes:
                if process.poll() is None:
                    process.kill()
                    process.wait(timeout=BOUND)
            for pid in environment.pids:
                kill_group(pid)
            for client in environment.clients:
                client.close()
