"""The local stack: database, migrations, gateway and workers in one process tree.

    with LocalStack(settings, workers=2) as stack:    # `control-room up`, `control-room demo`
        stack.info.gateway_url, stack.info.token       # also written to <state_dir>/stack.json
        stack.wait()                                   # until stopped (Ctrl-C)

- The database is the configured one (`CONTROL_ROOM_DATABASE_URL`) or the embedded server
  under the state directory, started here and stopped on exit (a second `up` reuses its data).
- The gateway runs in this process on uvicorn (a thread); workers are child processes
  (`control-room worker`), so that a phase's subprocesses belong to this tree and a worker
  that dies takes nothing else with it. Ctrl-C / SIGTERM: the workers get SIGTERM (they give
  running phases their grace period), then the gateway and the database stop.
- One workspace (`local`) and two principals are created once and reused: `local-operator`
  (admin; its token is the CLI's, in stack.json) and `local-executor` (the workers'). Their ids
  are kept in `<state_dir>/local-principals.json`. They are made through the gateway, with the
  typed contract client and a short-lived service_role token, once it listens.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import psycopg
from pydantic import SecretStr

from control_room.contract import ContractClient, MemberRole, PrincipalKind
from control_room.db.migrate import migrate
from control_room.db.queries import query
from control_room.db.store import connect
from control_room.local import EmbeddedPostgres
from control_room.secretfile import ensure_private_dir, write_secret_file
from control_room.settings import Settings
from control_room.stack import Stack, remove_stack, write_stack

__all__ = ["LocalStack", "LocalStackError"]

WORKSPACE_SLUG = "local"
PRINCIPALS_FILE = "local-principals.json"
TOKEN_TTL_SECONDS = 30 * 86400


class LocalStackError(RuntimeError):
    """The stack could not start (a port taken, a worker that died at once, ...)."""


@dataclass
class LocalStack:
    """Database + gateway + workers; a context manager (see the module docstring)."""

    settings: Settings
    workers: int = 2
    concurrency: int = 2
    kinds: str = "python,sql"
    repo: Path | None = None
    worker_env: dict[str, str] = field(default_factory=dict)
    log: Any = None
    """A callable(str) for progress lines (rich console's print); None: silent."""
    scheduler: bool = True
    """Start one `control-room scheduler` process beside the workers (docs/schedules.md)."""
    scheduler_interval: float = 15.0
    sensors: bool = True
    """Start one `control-room sensors evaluate` process beside the scheduler
    (docs/sensors.md)."""
    alerts: bool = True
    """Start one `control-room alerts deliver` process beside the scheduler (docs/alerts.md):
    the workspaces' alert rules reach their webhooks."""

    def __post_init__(self) -> None:
        self._exit = contextlib.ExitStack()
        self._procs: list[subprocess.Popen[bytes]] = []
        self._services: dict[str, subprocess.Popen[bytes]] = {}
        """The scheduler, the sensor evaluator and the alert deliverer, by name."""
        self.database_url = ""
        self.info: Stack | None = None
        self.server: EmbeddedPostgres | None = None

    # ---------------------------------------------------------------- lifecycle

    def __enter__(self) -> LocalStack:
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _say(self, message: str) -> None:
        if self.log is not None:
            self.log(message)

    def _start(self) -> None:
        state = self.settings.state_dir
        ensure_private_dir(state)
        if self.settings.database_url:
            self.database_url = self.settings.database_url
        else:
            self.server = EmbeddedPostgres(state)
            self._say(f"database: starting the embedded PostgreSQL in {state / 'pgdata'}")
            self.database_url = self.server.start()
            if self.server.started_here:
                self._exit.callback(self.server.stop)
        report = migrate(self.database_url, self.settings.migrations_dir)
        self._say(f"database: migrated ({len(report.applied)} applied now)")
        from control_room.gateway.app import create_app, serving
        from control_room.gateway.auth import mint_token, signing_secret

        secret = signing_secret(self.settings)

        app = create_app(self.settings, database_url=self.database_url, jwt_secret=secret)
        try:
            base = self._exit.enter_context(
                serving(app, host=self.settings.host, port=self.settings.port))
        except OSError as exc:
            raise LocalStackError(f"the gateway cannot listen on {self.settings.host}:"
                                  f"{self.settings.port}: {exc.strerror or exc} (is another "
                                  "`control-room up` running? pass --port)") from None
        gateway_url = f"{base}/rest/v1"
        self._say(f"gateway: {gateway_url} (health {base}/health)")
        service = mint_token(secret, role="service_role", ttl_seconds=300,
                             name="local-stack-setup")
        with ContractClient(gateway_url, service) as setup:
            workspace_id = self._workspace(setup)
            operator, executor = self._principals(setup, workspace_id)
        operator_token = mint_token(secret, role="authenticated", sub=operator,
                                    ttl_seconds=TOKEN_TTL_SECONDS, name="local-operator")
        executor_token = mint_token(secret, role="authenticated", sub=executor,
                                    ttl_seconds=TOKEN_TTL_SECONDS, name="local-executor",
                                    workspaces=[workspace_id])
        lake = (state / "lake").absolute()
        artifacts = (state / "artifacts").absolute()
        self.info = Stack(gateway_url=gateway_url, token=SecretStr(operator_token),
                          executor_token=SecretStr(executor_token),
                          workspace_id=workspace_id, workspace_slug=WORKSPACE_SLUG,
                          lake=lake, artifacts=artifacts, ui_url=f"{base}/")
        for n in range(self.workers):
            self._procs.append(self._worker(n, gateway_url, executor_token, workspace_id,
                                            artifacts))
        self._exit.callback(self._stop_workers)
        # services of the stack, each with a service_role token that only reaches its own
        # environment (never the stack file): the scheduler fires every workspace's due ticks,
        # the sensor evaluator reads the sources through the workspaces' connections and the
        # deliverer posts alerts to webhooks, both under the stack workers' secret policy
        policy = {"CONTROL_ROOM_SECRET_ALLOW": local_secret_allow(state)}
        if self.scheduler:
            self._start_service(secret, "scheduler", [
                "scheduler", "--gateway", gateway_url,
                "--interval", f"{self.scheduler_interval:g}s"], {})
            self._say(f"scheduler: every {self.scheduler_interval:g}s "
                      f"(log {state / 'log' / 'scheduler.log'})")
        if self.sensors:
            self._start_service(secret, "sensors", [
                "sensors", "evaluate", "--gateway", gateway_url, "--interval", "10s"], policy)
            self._say(f"sensors: evaluated every 10s (log {state / 'log' / 'sensors.log'})")
        if self.alerts:
            self._start_service(secret, "alerts", [
                "alerts", "deliver", "--gateway", gateway_url, "--interval", "5"], policy)
            self._say(f"alerts: delivered by one process (log {state / 'log' / 'alerts.log'})")
        write_stack(state, self.info)
        self._exit.callback(remove_stack, state)
        self._say(f"workers: {self.workers} x {self.concurrency} slot(s), kinds {self.kinds}")

    def _workspace(self, setup: ContractClient) -> str:
        for ws in setup.list_workspaces():
            if ws.slug == WORKSPACE_SLUG:
                return ws.id
        return setup.create_workspace(WORKSPACE_SLUG, "Local", env="dev").id

    def _principals(self, setup: ContractClient, workspace_id: str) -> tuple[str, str]:
        """(operator, executor) principal ids: reused from the state dir when still members."""
        path = self.settings.state_dir / PRINCIPALS_FILE
        try:
            known = json.loads(path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            known = {}
        ids: dict[str, str] = {}
        with connect(self.database_url) as conn:
            roles: tuple[tuple[str, MemberRole, PrincipalKind], ...] = (
                ("local-operator", "admin", "user"), ("local-executor", "executor", "executor"))
            for name, role, kind in roles:
                pid = known.get(name) if known.get("workspace_id") == workspace_id else None
                if pid is not None and _is_member(conn, workspace_id, str(pid)):
                    ids[name] = str(pid)
                    continue
                principal = setup.create_principal(name, kind=kind, workspace_id=workspace_id)
                setup.add_member(workspace_id, principal.id, role, name=name)
                ids[name] = principal.id
        document = {"workspace_id": workspace_id, **ids}
        write_secret_file(path, json.dumps(document, indent=2) + "\n")
        return ids["local-operator"], ids["local-executor"]

    def _worker(self, n: int, gateway_url: str, token: str, workspace_id: str,
                artifacts: Path) -> subprocess.Popen[bytes]:
        state = self.settings.state_dir
        assert self.info is not None
        allow = local_secret_allow(state)
        env = {**os.environ, **self.worker_env,
               "CONTROL_ROOM_TOKEN": token, "CONTROL_ROOM_STATE_DIR": str(state),
               "CONTROL_ROOM_SECRET_ALLOW": allow,
               # one lake for every worker of the stack (each has its own work dir)
               "CONTROL_ROOM_LAKE_ROOT": str(self.info.lake)}
        cmd = [sys.executable, "-m", "control_room", "worker", "--gateway", gateway_url,
               "--kinds", self.kinds, "--concurrency", str(self.concurrency),
               "--artifacts", str(artifacts), "--work-dir", str(state / "work" / f"w{n}"),
               "--workspace-id", workspace_id, "--grace-seconds", "10"]
        if self.repo is not None:
            cmd += ["--repo", str(self.repo)]
        log_dir = state / "log"
        log_dir.mkdir(parents=True, exist_ok=True)
        with open(log_dir / f"worker-{n}.log", "ab") as out:
            proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL)
        return proc

    def _start_service(self, secret: str, name: str, args: list[str],
                       extra_env: dict[str, str]) -> None:
        """`control-room ARGS` with a service_role token of its own in its environment only,
        logging to `log/<name>.log`; stopped (SIGTERM) when the stack closes."""
        from control_room.gateway.auth import mint_token

        state = self.settings.state_dir
        token = mint_token(secret, role="service_role", ttl_seconds=TOKEN_TTL_SECONDS,
                           name=f"local-{name}")
        env = {**os.environ, **extra_env, "CONTROL_ROOM_TOKEN": token,
               "CONTROL_ROOM_STATE_DIR": str(state)}
        cmd = [sys.executable, "-m", "control_room", *args]
        log_dir = state / "log"
        log_dir.mkdir(parents=True, exist_ok=True)
        with open(log_dir / f"{name}.log", "ab") as out:
            self._services[name] = subprocess.Popen(
                cmd, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self._exit.callback(self._stop_service, name)

    def _stop_service(self, name: str) -> None:
        _terminate(self._services.pop(name, None))

    def check_workers(self) -> None:
        """Raise when a worker process (or the scheduler, or the alert deliverer) has exited
        (its log names why)."""
        for name, service in self._services.items():
            if service.poll() is not None:
                log = self.settings.state_dir / "log" / f"{name}.log"
                tail = log.read_text(errors="replace").strip().splitlines()[-5:]
                raise LocalStackError(f"the {name} process exited with {service.returncode}: "
                                      + " | ".join(tail))
        for n, proc in enumerate(self._procs):
            if proc.poll() is not None:
                log = self.settings.state_dir / "log" / f"worker-{n}.log"
                tail = log.read_text(errors="replace").strip().splitlines()[-5:]
                raise LocalStackError(f"worker {n} exited with {proc.returncode}: "
                                      + " | ".join(tail))

    def wait(self, stop: threading.Event) -> None:
        """Block until `stop` is set; a worker that dies meanwhile ends the wait with an error."""
        while not stop.wait(1.0):
            self.check_workers()

    def _stop_workers(self) -> None:
        for proc in self._procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 20
        for proc in self._procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._procs.clear()

    def close(self) -> None:
        self._exit.close()

    def health(self) -> dict[str, Any]:
        """The gateway's /health document."""
        assert self.info is not None
        base = self.info.ui_url.rstrip("/")
        answer: dict[str, Any] = httpx.get(f"{base}/health", timeout=5).json()
        return answer


def _terminate(proc: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM, 20 s to stop, then SIGKILL."""
    if proc is None:
        return
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def local_secret_allow(state_dir: Path) -> str:
    """The secret policy of the stack's workers (and of `verify`'s against the stack): the
    local connections' files (`demo` writes them: control_room/cli/up.py), then whatever this
    environment's CONTROL_ROOM_SECRET_ALLOW allows."""
    return ",".join(part for part in (
        f"file:{(state_dir / 'connection-secrets').absolute()}",
        os.environ.get("CONTROL_ROOM_SECRET_ALLOW", "").strip()) if part)


def _is_member(conn: psycopg.Connection[Any], workspace_id: str, principal_id: str) -> bool:
    row = conn.execute(query("live_member"),
                       {"workspace_id": workspace_id, "principal_id": principal_id}).fetchone()
    conn.rollback()
    return row is not None
