"""What the chaos tests share: a gateway process that can be SIGKILLed and started again on
the same port, `control-room worker` processes, a world of principals made over SQL, and
the bookkeeping the tests assert on (lost phases, double completions, duplicated side
effects, incomplete event trails), read straight from the tables so that it works while the
gateway is down."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
from psycopg.rows import dict_row

from control_room.db.queries import parse_queries
from control_room.gateway.auth import mint_token
from tests.chaos.entrypoints import ledger_lines
from tests.contract.conftest import Contract, Principal, World, make_world, phase
from tests.helpers import TEST_JWT_SECRET

Q = parse_queries((Path(__file__).parent / "queries.sql").read_text("utf-8"))
REPO = Path(__file__).resolve().parents[2]
EP = "tests.chaos.entrypoints"
GIT_SHA = "0123abc"
START_BOUND = 30.0
OBSERVER = "chaos-observer"
"""The test's own session (application_name): the chaos spares it."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def token_of(principal: Principal) -> str:
    return mint_token(TEST_JWT_SECRET, role=principal.role,
                      sub=str(principal.sub) if principal.sub else None, ttl_seconds=3600,
                      workspaces=principal.pins)


class GatewayProcess:
    """`control-room serve` over `db_url` on a fixed port, in a process of its own."""

    def __init__(self, db_url: str, logs: Path, **settings: str) -> None:
        self.db_url = db_url
        self.port = free_port()
        self.logs = logs
        self.settings = settings
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def rest_url(self) -> str:
        return f"{self.base}/rest/v1"

    def start(self) -> float:
        """Start it and wait until /health answers; the seconds that took."""
        began = time.monotonic()
        env = {**os.environ, "CONTROL_ROOM_JWT_SECRET": TEST_JWT_SECRET,
               **{f"CONTROL_ROOM_{k.upper()}": v for k, v in self.settings.items()}}
        log = self.logs / f"gateway-{self.starts}.log"
        self.starts += 1
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "control_room", "serve", "--database-url", self.db_url,
                 "--host", "127.0.0.1", "--port", str(self.port)],
                env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
        while True:
            if self.process.poll() is not None or time.monotonic() - began > START_BOUND:
                raise AssertionError(f"the gateway did not start:\n{log.read_text()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.base}/health", timeout=2).status_code == 200:
                    return time.monotonic() - began
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL: no graceful shutdown, requests in flight are cut."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=START_BOUND)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=START_BOUND)


@dataclass
class Chaos:
    """One chaos test's stack: the database, the gateway process, workers, the ledger."""

    db_url: str
    conn: psycopg.Connection[Any]
    tmp: Path
    gateway: GatewayProcess
    world: World
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def ledger(self) -> Path:
        return self.tmp / "ledger.txt"

    @property
    def contract(self) -> Contract:
        return Contract(self.conn)

    def worker(self, *args: str) -> subprocess.Popen[bytes]:
        """`control-room worker --kinds python ARGS` as executor exec1 (its own log)."""
        env = {**os.environ, "PYTHONPATH": str(REPO),
               "CONTROL_ROOM_GATEWAY_URL": self.gateway.rest_url,
               "CONTROL_ROOM_TOKEN": token_of(self.world.exec1),
               "CONTROL_ROOM_STATE_DIR": str(self.tmp / "state"),
               "CONTROL_ROOM_ARTIFACTS_URL": (self.tmp / "blobs").as_uri(),
               "CONTROL_ROOM_PYTHON_SPARES": "1"}
        log = self.tmp / f"worker-{len(self.workers)}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "control_room.cli", "worker", "--kinds", "python",
                 *args], env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True)
        self.workers.append(process)
        return process

    def kill_worker(self, process: subprocess.Popen[bytes]) -> None:
        """SIGKILL a worker and its phase processes (its process group)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=START_BOUND)

    def worker_log(self, k: int) -> str:
        return (self.tmp / f"worker-{k}.log").read_text(errors="replace")

    def new_run(self, phases: int, seconds: list[float], *, slug: str = "chaos",
                chain: bool = False, entrypoint: str = "side_effect",
                args: dict[str, Any] | None = None, **extra: Any) -> str:
        """A run of `phases` side-effect phases (independent, or a chain), created over SQL
        as dev1; phase k works seconds[k % len(seconds)]. `entrypoint` names another one of
        tests/chaos/entrypoints.py (`args` adds to its arguments)."""
        specs = [phase(f"p{k:03d}", "python", *([f"p{k - 1:03d}"] if chain and k else []),
                       params={"entrypoint": f"{EP}:{entrypoint}",
                               "args": {"ledger": str(self.ledger),
                                        "seconds": seconds[k % len(seconds)], **(args or {})}},
                       **extra)
                 for k in range(phases)]
        run = self.contract.call("create_run", {
            "workspace_id": self.world.w1, "spec_slug": slug, "git_sha": GIT_SHA,
            "phases": specs, "idempotency_key": str(uuid.uuid4())}, as_=self.world.dev1)
        self.conn.commit()
        return str(run["id"])

    def unfinished(self, runs: list[str]) -> int:
        row = self.conn.execute(Q["unfinished_runs"], {"runs": runs}).fetchone()
        self.conn.rollback()
        assert row is not None
        return int(row[0])

    def has_event(self, run_id: str, type: str) -> bool:
        found = self.conn.execute(Q["has_event"], {"run_id": run_id, "type": type}).fetchone()
        self.conn.rollback()
        return found is not None

    def wait_finished(self, runs: list[str], bound: float) -> float:
        began = time.monotonic()
        while self.unfinished(runs):
            if time.monotonic() - began > bound:
                raise AssertionError(f"{self.unfinished(runs)} run(s) unfinished after "
                                     f"{bound} s; worker 0's log:\n{self.worker_log(0)[-4000:]}")
            time.sleep(0.1)
        return time.monotonic() - began

    def report(self, runs: list[str], dead: frozenset[int] = frozenset()) -> Report:
        """What happened to these runs; side effects by the worker pids in `dead` (killed
        workers) are not counted as duplicates: only live workers must not repeat one."""
        with self.conn.cursor(row_factory=dict_row) as cur:
            phases = cur.execute(Q["phases_of_runs"], {"runs": runs}).fetchall()
            run_rows = cur.execute(Q["runs_states"], {"runs": runs}).fetchall()
            events = cur.execute(Q["events_of_runs"], {"runs": runs}).fetchall()
        self.conn.rollback()
        return Report.of(phases, run_rows, events, ledger_lines(self.ledger), dead)


# the trail every succeeded phase must have, each event once, in this order
PHASE_TRAIL = ("PHASE_QUEUED", "PHASE_CLAIMED", "PHASE_STARTED", "SIDE_EFFECT",
               "ARTIFACT_REGISTERED", "PHASE_SUCCEEDED")


@dataclass
class Report:
    """What a chaos test asserts zero for, and what it reports."""

    phases: int
    lost: list[str]
    """Phases that did not succeed."""
    double_completions: list[str]
    """Phases with more than one PHASE_SUCCEEDED (or a completion of a stale attempt)."""
    duplicated_effects: list[str]
    """Phases whose side effect live workers did more than once (ledger lines; a killed
    worker's are not counted), or a succeeded phase without one."""
    incomplete_trails: list[str]
    """Phases (and runs) whose event trail lacks a step, or has one twice."""
    attempts: Counter[int]
    lease_expiries: int

    @classmethod
    def of(cls, phases: list[dict[str, Any]], runs: list[dict[str, Any]],
           events: list[dict[str, Any]], ledger: list[tuple[str, str, int, int]],
           dead: frozenset[int] = frozenset()) -> Report:
        trails: dict[tuple[str, str | None], list[str]] = {}
        for e in events:
            trails.setdefault((e["run_id"], e["phase"]), []).append(e["type"])
        effects = Counter((run_id, name) for run_id, name, _, _ in ledger)
        live = Counter((run_id, name) for run_id, name, _, pid in ledger if pid not in dead)
        lost, doubles, duplicated, incomplete = [], [], [], []
        for p in phases:
            key = (p["run_id"], p["name"])
            where = f"{p['run_id'][:8]}/{p['name']}"
            trail = trails.get(key, [])
            if p["state"] != "succeeded":
                lost.append(f"{where} ({p['state']}, attempt {p['attempt']})")
            if trail.count("PHASE_SUCCEEDED") != 1:
                doubles.append(f"{where}: {trail}")
            # a killed worker's execution may be repeated (its lease expired); a live one's not
            if live[key] > 1 or (p["state"] == "succeeded" and effects[key] == 0):
                duplicated.append(f"{where}: {live[key]} side effects by live workers, "
                                  f"{effects[key]} in all")
            # the last attempt's trail: everything after its PHASE_CLAIMED, once, in order
            last = len(trail) - 1 - trail[::-1].index("PHASE_CLAIMED") \
                if "PHASE_CLAIMED" in trail else 0
            steps = [t for t in trail[last:] if t in PHASE_TRAIL]
            if p["state"] == "succeeded" and (trail[:1] != ["PHASE_QUEUED"] or steps != list(
                    PHASE_TRAIL[1:]) or trail.count("PHASE_QUEUED") != 1):
                incomplete.append(f"{where}: {trail}")
        for r in runs:
            trail = trails.get((r["run_id"], None), [])
            if r["state"] != "succeeded":
                lost.append(f"run {r['run_id'][:8]} ({r['state']})")
            elif (trail.count("RUN_CREATED"), trail.count("RUN_SUCCEEDED"),
                  trail.count("RUN_FINALIZED")) != (1, 1, 1) or not r["finalized"]:
                incomplete.append(f"run {r['run_id'][:8]}: {trail}")
        return cls(len(phases), lost, doubles, duplicated, incomplete,
                   Counter(int(p["attempt"]) for p in phases),
                   sum(1 for e in events if e["type"] == "LEASE_EXPIRED"))

    def zeros(self) -> dict[str, list[str]]:
        return {"lost phases": self.lost, "double completions": self.double_completions,
                "duplicated side effects": self.duplicated_effects,
                "incomplete event trails": self.incomplete_trails}

    def line(self) -> str:
        return (f"{self.phases} phases: lost {len(self.lost)}, double completions "
                f"{len(self.double_completions)}, duplicated side effects "
                f"{len(self.duplicated_effects)}, incomplete trails "
                f"{len(self.incomplete_trails)}; attempts {dict(sorted(self.attempts.items()))}"
                f", lease expiries {self.lease_expiries}")


@contextlib.contextmanager
def chaos_stack(db_url: str, tmp: Path, **gateway_settings: str) -> Iterator[Chaos]:
    """A world made over SQL, the gateway process started; everything stopped after."""
    with psycopg.connect(db_url, application_name=OBSERVER) as conn:
        world = make_world(Contract(conn))
        conn.commit()
        gateway = GatewayProcess(db_url, tmp, **gateway_settings)
        chaos = Chaos(db_url, conn, tmp, gateway, world)
        try:
            gateway.start()
            yield chaos
        finally:
            for process in chaos.workers:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=START_BOUND)
            gateway.stop()
