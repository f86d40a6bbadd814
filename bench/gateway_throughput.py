"""Gateway benchmark: HTTP throughput beside direct SQL, waiting claims beside 1-second polling.

    python bench/gateway_throughput.py [--phases 2000] [--workers 8] [--rounds 3] [--samples 200]
                                       [--pollers 8] [--pool-max-size 16] [--database-url URL]
                                       [--py-spy FILE]

(a) Throughput: noop phases claimed and completed per second by `--workers` concurrent workers,
    each an executor principal with a token of its own.
    - HTTP: the gateway as production runs it, `control-room serve` in a process of its own
      (uvicorn, CONTROL_ROOM_JWT_SECRET set), so the load generator's GIL does not throttle it;
      one keep-alive httpx client per worker: `POST /rest/v1/rpc/claim_phase`, then
      `complete_phase`, until a claim answers null.
    - direct SQL: the same loop on one psycopg connection per worker, each call its own
      transaction through `call_as` (role and JWT claims set as PostgREST sets them, one round
      trip, exactly as the gateway calls the database).
    Same database, same run, the same number of phases (runs of 10 noop phases, one workspace
    per measurement); the two alternate for --rounds rounds and the table shows the median.
    CPU seconds per 1,000 jobs of the load generator, the gateway process and the database's
    backends are read from /proc (when the server runs on this machine).
(b) Latency from enqueue to claim for an idle worker:
    - one worker waiting on the gateway with `Prefer: wait=30`;
    - `--pollers` workers (each in a workspace of its own) claiming without a wait and sleeping
      one second after an empty answer.
    An enqueuer per worker pauses at random (50-150 ms when waiting, 0-1 s when polling, so
    enqueues fall anywhere in the polling cycle), records the time, creates a one-phase run
    (direct SQL as service_role; the recorded time is taken just before that call, so the
    latency includes its commit) and waits for its worker to report when the claim returned.
    Also how often ops.claim_phase runs in the database per second for one idle worker of each
    kind (pg_stat_user_functions: the benchmark sets track_functions = pl for new sessions of its
    database before the gateway starts, and resets it at the end).

Without --database-url it creates a database on 127.0.0.1:5432, migrates it with
`control_room.db.migrate` and drops it at the end; with --database-url it migrates that database
(a no-op when it is current) and leaves the workspaces and runs it made there.
--py-spy FILE records the gateway process with py-spy (`py-spy` on PATH, or --py-spy-bin) while
it holds the GIL during one extra HTTP round (not counted in the table), writes the collapsed
stacks to FILE and prints where the gateway's CPU goes, by request step and by package.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import random
import resource
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from queue import Queue
from typing import Any

import httpx
import jwt
import psycopg
from common import own_database  # bench/common.py (run as python bench/<script>.py)
from prometheus_client.parser import text_string_to_metric_families
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from rich.console import Console
from rich.table import Table

from control_room.db.migrate import migrate
from control_room.db.queries import parse_queries
from control_room.db.store import acting_as, call, call_as
from control_room.settings import default_migrations_dir

Q = parse_queries((Path(__file__).parent / "gateway_throughput.sql").read_text("utf-8"))
ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
PHASES_PER_RUN = 10
CLAIM = {"kinds": ["noop"], "lease_seconds": 60}
WAIT_HEADER = {"Prefer": "wait=30"}
POLL_SECONDS = 1.0
CLK_TCK = os.sysconf("SC_CLK_TCK")
PY_SPY_RATE = 250   # samples per second

console = Console(width=150)


# --------------------------------------------------------------------------------- plumbing

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class GatewayProcess:
    base_url: str
    pid: int
    secret: str

    def token(self, role: str, sub: str | None = None, workspace: str | None = None) -> str:
        claims: dict[str, Any] = {"role": role, "iat": int(time.time()),
                                  "exp": int(time.time()) + 3600}
        if sub is not None:
            claims.update(sub=sub, aud="authenticated")
        if workspace is not None:
            claims["workspaces"] = [workspace]   # an executor's token is pinned
        return jwt.encode(claims, self.secret, algorithm="HS256")

    def light_client(self, sub: str, workspace: str) -> KeepAliveClient:
        """A bare keep-alive client acting as the executor `sub` (for the throughput rounds)."""
        return KeepAliveClient(self.base_url, {
            "Authorization": f"Bearer {self.token('authenticated', sub, workspace)}",
            "Content-Profile": "ops"})

    def client(self, sub: str, workspace: str) -> httpx.Client:
        """A keep-alive client acting as the executor `sub`, pinned to `workspace`."""
        return httpx.Client(base_url=self.base_url, timeout=60, headers={
            "Authorization": f"Bearer {self.token('authenticated', sub, workspace)}",
            "Content-Profile": "ops"})


@contextlib.contextmanager
def gateway(url: str, *, pool_min: int, pool_max: int, log: Path) -> Iterator[GatewayProcess]:
    """`control-room serve` over `url` in a process of its own, until the block ends."""
    secret = secrets.token_urlsafe(32)
    port = free_port()
    env = dict(os.environ, CONTROL_ROOM_JWT_SECRET=secret,
               CONTROL_ROOM_POOL_MIN_SIZE=str(pool_min), CONTROL_ROOM_POOL_MAX_SIZE=str(pool_max))
    command = [sys.executable, "-m", "control_room", "serve", "--database-url", url,
               "--host", "127.0.0.1", "--port", str(port)]
    with log.open("wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the gateway did not start; its log:\n{log.read_text()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{base}/health", timeout=5).status_code == 200:
                    break
            time.sleep(0.1)
        yield GatewayProcess(base, proc.pid, secret)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def handler_seconds(gw: GatewayProcess) -> dict[str, tuple[float, float]]:
    """function -> (requests, seconds) inside the gateway's handler, from its /metrics."""
    text = httpx.get(f"{gw.base_url}/metrics", timeout=30).text
    out: dict[str, list[float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith("control_room_request_duration_seconds_"):
                kind = sample.name.rsplit("_", 1)[-1]
                if kind in ("count", "sum"):
                    slot = out.setdefault(sample.labels["function"], [0.0, 0.0])
                    slot[0 if kind == "count" else 1] = float(sample.value)
    return {fn: (n, s) for fn, (n, s) in out.items()}


@contextlib.contextmanager
def tracking_functions(url: str) -> Iterator[bool]:
    """track_functions = pl for new sessions of the database (reset afterwards), if we may."""
    name = sql.Identifier(str(conninfo_to_dict(url)["dbname"]))
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(sql.SQL("alter database {} set track_functions = 'pl'").format(name))
    except psycopg.Error as exc:
        console.print(f"no per-function counts ({exc.sqlstate}): {exc}")
        yield False
        return
    try:
        yield True
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(sql.SQL("alter database {} reset track_functions").format(name))


class KeepAliveClient:
    """One keep-alive HTTP/1.1 connection (the standard library's http.client).

    The throughput rounds run the load generator, the gateway and PostgreSQL on the same two
    cores, so the client's own CPU counts against the gateway: httpx costs about twice the CPU
    per request of this, which would measure the client library rather than the gateway.
    """

    def __init__(self, base_url: str, headers: dict[str, str]) -> None:
        parsed = urllib.parse.urlsplit(base_url)
        self._conn = http.client.HTTPConnection(parsed.hostname or "127.0.0.1", parsed.port,
                                                timeout=60)
        self._headers = {**headers, "Content-Type": "application/json"}

    def rpc(self, fn: str, args: dict[str, Any]) -> Any:
        self._conn.request("POST", f"/rest/v1/rpc/{fn}", json.dumps(args), self._headers)
        response = self._conn.getresponse()
        body = response.read()
        if response.status != 200:
            raise RuntimeError(f"{fn}: HTTP {response.status}: {body[:500]!r}")
        return json.loads(body)

    def close(self) -> None:
        self._conn.close()


def rpc(client: httpx.Client, fn: str, args: dict[str, Any],
        headers: dict[str, str] | None = None) -> Any:
    response = client.post(f"/rest/v1/rpc/{fn}", json=args, headers=headers)
    if response.status_code != 200:
        raise RuntimeError(f"{fn}: HTTP {response.status_code}: {response.text[:500]}")
    return response.json()


def as_service(conn: psycopg.Connection[Any], fn: str, args: dict[str, Any]) -> Any:
    with acting_as(conn, role="service_role"):
        return call(conn, fn, args)


def make_workspace(url: str, executors: list[str], phases: int, label: str) -> str:
    """A workspace with the executors as members and `phases` queued noop phases."""
    with psycopg.connect(url) as conn:
        slug = f"bench-{label}-{secrets.token_hex(3)}"
        ws: str = as_service(conn, "create_workspace", {"slug": slug, "name": slug})["id"]
        for k, principal in enumerate(executors):
            as_service(conn, "add_member", {"workspace_id": ws, "principal_id": principal,
                                            "role": "executor", "name": f"{label}-{k}"})
        for r in range(0, phases, PHASES_PER_RUN):
            size = min(PHASES_PER_RUN, phases - r)
            as_service(conn, "create_run", {
                "workspace_id": ws, "spec_slug": "bench-noop", "git_sha": "0123abc",
                "phases": [{"name": f"noop{k}", "kind": "noop"} for k in range(size)]})
    return ws


def succeeded_phases(url: str, ws: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(Q["count_succeeded_phases"], {"workspace_id": ws}).fetchone()
    assert row is not None
    return int(row[0])


def pct(values: list[float], p: int) -> float:
    """The p-th percentile (p50 is the median)."""
    if p == 50:
        return statistics.median(values)
    return statistics.quantiles(values, n=100, method="inclusive")[p - 1]


# --------------------------------------------------------------------------- CPU accounting

def proc_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a process (all its threads), from /proc; None if unreadable."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class CpuMeter:
    """CPU used between start() and stop() by this process, the gateway and the backends."""

    def __init__(self, url: str, gateway_pid: int | None) -> None:
        self.url = url
        self.gateway_pid = gateway_pid
        self.used: dict[str, float | None] = {}

    def _backends(self) -> dict[int, float]:
        with psycopg.connect(self.url) as conn:
            pids = [int(row[0]) for row in conn.execute(Q["backend_pids"]).fetchall()]
        found = {pid: proc_cpu_seconds(pid) for pid in pids}
        return {pid: s for pid, s in found.items() if s is not None}

    def start(self) -> None:
        self._own = own_cpu_seconds()
        self._gw = proc_cpu_seconds(self.gateway_pid) if self.gateway_pid else None
        self._pg = self._backends()

    def stop(self) -> None:
        self.used["load generator"] = own_cpu_seconds() - self._own
        gw = proc_cpu_seconds(self.gateway_pid) if self.gateway_pid else None
        self.used["gateway"] = gw - self._gw if gw is not None and self._gw is not None else None
        after = {pid: proc_cpu_seconds(pid) for pid in self._pg}
        self.used["postgres"] = (
            sum(s - self._pg[pid] for pid, s in after.items() if s is not None)
            if self._pg else None)


# ------------------------------------------------------------------------------- throughput

@dataclass
class Measurement:
    jobs: int = 0
    seconds: float = 0.0
    claim_ms: list[float] = field(default_factory=list)
    complete_ms: list[float] = field(default_factory=list)
    cpu: dict[str, float | None] = field(default_factory=dict)
    handler_ms: dict[str, float] = field(default_factory=dict)   # mean, HTTP only

    @property
    def per_second(self) -> float:
        return self.jobs / self.seconds


def drive(workers: int, loop: Callable[[int], tuple[list[float], list[float]]],
          meter: CpuMeter) -> Measurement:
    """Run `loop(k)` on `workers` threads from a common start; time until the last returns."""
    result = Measurement()
    barrier = threading.Barrier(workers + 1, timeout=120)

    def worker(k: int) -> tuple[list[float], list[float]]:
        barrier.wait()
        return loop(k)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(worker, k) for k in range(workers)]
        meter.start()
        barrier.wait()
        began = time.perf_counter()
        for future in futures:
            claims, completes = future.result()
            result.claim_ms += claims
            result.complete_ms += completes
        result.seconds = time.perf_counter() - began
    meter.stop()
    result.cpu = meter.used
    result.jobs = len(result.complete_ms)
    return result


def measure_sql(url: str, jobs: int, workers: int) -> Measurement:
    executors = [str(uuid.uuid4()) for _ in range(workers)]
    ws = make_workspace(url, executors, jobs, "sql")
    conns = [psycopg.connect(url, autocommit=True) for _ in range(workers)]
    try:
        def loop(k: int) -> tuple[list[float], list[float]]:
            conn, sub = conns[k], executors[k]
            claims: list[float] = []
            completes: list[float] = []
            while True:
                t0 = time.perf_counter()
                claim = call_as(conn, "claim_phase", {**CLAIM, "workspace_id": ws},
                                role="authenticated", sub=sub, claims={"workspaces": [ws]})
                t1 = time.perf_counter()
                if claim is None:
                    return claims, completes
                call_as(conn, "complete_phase", {"lease_token": claim["lease_token"],
                                                 "outcome": "succeeded"},
                        role="authenticated", sub=sub)
                claims.append((t1 - t0) * 1000)
                completes.append((time.perf_counter() - t1) * 1000)

        result = drive(workers, loop, CpuMeter(url, None))
    finally:
        for conn in conns:
            conn.close()
    done = succeeded_phases(url, ws)
    assert done == jobs == result.jobs, (done, jobs, result.jobs)
    return result


def measure_http(gw: GatewayProcess, url: str, jobs: int, workers: int) -> Measurement:
    executors = [str(uuid.uuid4()) for _ in range(workers)]
    ws = make_workspace(url, executors, jobs, "http")
    clients = [gw.light_client(sub, ws) for sub in executors]
    try:
        for client in clients:   # open the keep-alive connections before the clock starts
            for _ in range(3):
                client.rpc("list_workspaces", {})

        def loop(k: int) -> tuple[list[float], list[float]]:
            client = clients[k]
            claims: list[float] = []
            completes: list[float] = []
            while True:
                t0 = time.perf_counter()
                claim = client.rpc("claim_phase", {**CLAIM, "workspace_id": ws})
                t1 = time.perf_counter()
                if claim is None:
                    return claims, completes
                client.rpc("complete_phase", {"lease_token": claim["lease_token"],
                                              "outcome": "succeeded"})
                claims.append((t1 - t0) * 1000)
                completes.append((time.perf_counter() - t1) * 1000)

        before = handler_seconds(gw)
        result = drive(workers, loop, CpuMeter(url, gw.pid))
        after = handler_seconds(gw)
        for fn in ("claim_phase", "complete_phase"):
            n0, s0 = before.get(fn, (0.0, 0.0))
            n1, s1 = after[fn]
            result.handler_ms[fn] = 1000 * (s1 - s0) / (n1 - n0)
    finally:
        for client in clients:
            client.close()
    done = succeeded_phases(url, ws)
    assert done == jobs == result.jobs, (done, jobs, result.jobs)
    return result


# ---------------------------------------------------------------------------------- latency

@dataclass
class Latency:
    enqueue_to_claim_ms: list[float] = field(default_factory=list)
    create_run_ms: list[float] = field(default_factory=list)
    empty_claims: int = 0


def measure_latency(gw: GatewayProcess, url: str, *, waiting: bool, pairs: int,
                    samples: int) -> Latency:
    """`pairs` (worker, enqueuer) pairs, each in a workspace of its own; `samples` in all."""
    result = Latency()
    lock = threading.Lock()
    per_pair = [samples // pairs + (1 if p < samples % pairs else 0) for p in range(pairs)]

    def pair(p: int) -> None:
        executor = str(uuid.uuid4())
        ws = make_workspace(url, [executor], 0, f"{'wait' if waiting else 'poll'}{p}")
        claimed: Queue[tuple[str, float]] = Queue()
        empty = 0

        def worker() -> None:
            nonlocal empty
            with gw.client(executor, ws) as client:
                while True:
                    got = rpc(client, "claim_phase", {**CLAIM, "workspace_id": ws},
                              WAIT_HEADER if waiting else None)
                    if got is None:
                        empty += 1
                        if not waiting:
                            time.sleep(POLL_SECONDS)
                        continue
                    claimed.put((got["run_id"], time.perf_counter()))
                    rpc(client, "complete_phase", {"lease_token": got["lease_token"],
                                                   "outcome": "succeeded"})
                    if got["params"].get("stop"):
                        return

        thread = threading.Thread(target=worker, name=f"claimer-{p}", daemon=True)
        thread.start()
        rng = random.Random(p)
        latencies: list[float] = []
        creates: list[float] = []
        with psycopg.connect(url) as conn:
            time.sleep(rng.uniform(0.2, 1.2))   # let the worker settle into its idle loop
            for i in range(per_pair[p] + 1):
                stop = i == per_pair[p]
                time.sleep(rng.uniform(0.05, 0.15) if waiting else rng.uniform(0.0, POLL_SECONDS))
                t0 = time.perf_counter()
                run = as_service(conn, "create_run", {
                    "workspace_id": ws, "spec_slug": "bench-latency", "git_sha": "0123abc",
                    "phases": [{"name": "only", "kind": "noop", "params": {"stop": stop}}]})
                t1 = time.perf_counter()
                run_id, at = claimed.get(timeout=60)
                assert run_id == run["id"], (run_id, run["id"])
                if not stop:
                    latencies.append((at - t0) * 1000)
                    creates.append((t1 - t0) * 1000)
        thread.join(timeout=60)
        assert not thread.is_alive()
        with lock:
            result.enqueue_to_claim_ms += latencies
            result.create_run_ms += creates
            result.empty_claims += empty

    with ThreadPoolExecutor(max_workers=pairs) as pool:
        for future in [pool.submit(pair, p) for p in range(pairs)]:
            future.result()
    assert len(result.enqueue_to_claim_ms) == samples
    return result


def idle_claims(gw: GatewayProcess, url: str, *, waiting: bool, seconds: float,
                tracked: bool) -> float | None:
    """ops.claim_phase executions per second in the database for one idle worker.

    Read from pg_stat_user_functions (track_functions is set for the benchmark's database before
    the gateway starts); backends publish their counts about once a second, hence a window of
    several seconds. None when the counts are not available.
    """
    executor = str(uuid.uuid4())
    ws = make_workspace(url, [executor], 0, "idle")

    def worker() -> None:
        with gw.client(executor, ws) as client:
            while True:
                got = rpc(client, "claim_phase", {**CLAIM, "workspace_id": ws},
                          WAIT_HEADER if waiting else None)
                if got is not None:   # the phase that tells it to stop
                    return
                if not waiting:
                    time.sleep(POLL_SECONDS)

    def claims(conn: psycopg.Connection[Any]) -> int | None:
        row = conn.execute(Q["claim_phase_calls"]).fetchone()
        return None if row is None else int(row[0])

    thread = threading.Thread(target=worker, daemon=True)
    thread.start()
    with psycopg.connect(url, autocommit=True) as conn:
        time.sleep(2.5)   # the worker is idle, the counters settled
        before = claims(conn)
        time.sleep(seconds)
        after = claims(conn)
    with psycopg.connect(url) as conn:
        as_service(conn, "create_run", {
            "workspace_id": ws, "spec_slug": "bench-idle", "git_sha": "0123abc",
            "phases": [{"name": "stop", "kind": "noop"}]})
    thread.join(timeout=60)
    assert not thread.is_alive()
    if not tracked or before is None or after is None:
        return None
    return (after - before) / seconds


# ---------------------------------------------------------------------------------- py-spy

@contextlib.contextmanager
def py_spy(binary: str | None, pid: int, out: Path | None) -> Iterator[None]:
    """Record `pid` with py-spy for the duration of the block (when `out` is given)."""
    if out is None:
        yield
        return
    exe = binary or shutil.which("py-spy")
    if exe is None:
        raise SystemExit("--py-spy needs py-spy on PATH (pip install py-spy) or --py-spy-bin")
    command = [exe, "record", "--pid", str(pid), "--format", "raw", "--output", str(out),
               "--rate", str(PY_SPY_RATE), "--nonblocking", "--gil"]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(1.0)   # attach before the measurement starts
    try:
        yield
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        if proc.returncode not in (0, -signal.SIGINT) and not out.exists():
            console.print(f"py-spy failed: {err.decode(errors='replace')[-2000:]}")


def _frame(frame: str) -> tuple[str, str]:
    """`func (pkg/module.py:123)` -> (`func`, `pkg/module.py`)."""
    name, _, where = frame.partition(" (")
    return name, where.rstrip(")").rsplit(":", 1)[0]


def _package(path: str) -> str:
    if path.startswith("<"):
        return "python (frozen)"
    head = path.split("/")[0]
    return head.removesuffix(".py") if "/" in path else path.removesuffix(".py")


# steps of a request in the gateway process, as (function, file) frames of a stack (inclusive)
STEPS = (
    ("RequestResponseCycle.run_asgi", "uvicorn/protocols/http/httptools_impl.py",
     "the ASGI app (starlette + the gateway), event loop side"),
    ("Gateway.rpc", "control_room/gateway/app.py", "  the gateway's handler"),
    ("authenticate", "control_room/gateway/auth.py", "    JWT verification (PyJWT)"),
    ("Gateway._arguments", "control_room/gateway/app.py", "    reading and parsing the body"),
    ("run_sync", "anyio/to_thread.py", "    hand-off to a worker thread and back (anyio)"),
    ("Metrics.observe", "control_room/gateway/metrics.py", "    metrics"),
    ("Response.__call__", "starlette/responses.py", "  sending the answer"),
    ("RequestResponseCycle.send", "uvicorn/protocols/http/httptools_impl.py",
     "  socket writes (uvicorn's send)"),
    ("HttpToolsProtocol.data_received", "uvicorn/protocols/http/httptools_impl.py",
     "reading and parsing HTTP requests (uvicorn, httptools)"),
    ("WorkerThread.run", "anyio/_backends/_asyncio.py", "worker threads"),
    ("Gateway._call", "control_room/gateway/app.py", "  the database call (pool, acting_as, call)"),
    ("acting_as", "control_room/db/store.py", "    acting_as: BEGIN, role and claims, COMMIT"),
    ("call", "control_room/db/store.py", "    store.call: build and run the ops call"),
    ("Connection.wait", "psycopg/connection.py", "    psycopg waiting on the socket"),
)


def print_profile(path: Path, seconds: float) -> None:
    """Where the gateway process holds the GIL: by request step, and by innermost package."""
    own: Counter[str] = Counter()
    steps: Counter[tuple[str, str]] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = {_frame(f) for f in stack.split(";")}
        own[_package(_frame(stack.rsplit(";", 1)[-1])[1])] += n
        for name, where, _ in STEPS:
            if (name, where) in frames:
                steps[(name, where)] += n
    if not total:
        console.print("py-spy recorded nothing")
        return
    held = total / (PY_SPY_RATE * seconds)
    table = Table(title=f"gateway process while it holds the GIL (py-spy --gil, {total:,} "
                        f"samples during an extra HTTP round: the GIL was held {held:.0%} "
                        f"of the round)")
    table.add_column("step (inclusive)")
    table.add_column("share", justify="right")
    for name, where, label in STEPS:
        table.add_row(label, f"{100 * steps[(name, where)] / total:.0f}%")
    console.print(table)
    table = Table(title="the same samples by the package of the innermost frame (self time)")
    table.add_column("package")
    table.add_column("share", justify="right")
    for package, n in own.most_common(14):
        table.add_row(package, f"{100 * n / total:.0f}%")
    console.print(table)


# ------------------------------------------------------------------------------------- main

def cpu_cell(m: Measurement, who: str) -> str:
    used = m.cpu.get(who)
    return "n/a" if used is None else f"{1000 * used / m.jobs:.1f} s"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--phases", type=int, default=2000,
                        help="jobs per throughput measurement (default 2000)")
    parser.add_argument("--workers", type=int, default=8, help="concurrent workers (default 8)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="alternating SQL/HTTP throughput rounds; the median is shown "
                             "(default 3)")
    parser.add_argument("--samples", type=int, default=200,
                        help="enqueue-to-claim samples per variant (default 200)")
    parser.add_argument("--pollers", type=int, default=8,
                        help="polling worker/enqueuer pairs sharing the samples (default 8)")
    parser.add_argument("--idle-seconds", type=float, default=8.0,
                        help="window for the idle workers' database load (default 8)")
    parser.add_argument("--pool-max-size", type=int, default=16,
                        help="the gateway's connection pool (default 16)")
    parser.add_argument("--database-url", default=None,
                        help="use this database instead of creating one on 127.0.0.1:5432")
    parser.add_argument("--py-spy", type=Path, default=None, metavar="FILE",
                        help="profile the gateway during an extra HTTP round into FILE")
    parser.add_argument("--py-spy-bin", default=None, help="the py-spy executable")
    parser.add_argument("--gateway-log", type=Path, default=Path("/tmp/bench-gateway.log"),
                        help="where the gateway process logs (default /tmp/bench-gateway.log)")
    args = parser.parse_args(argv)

    with contextlib.ExitStack() as stack:
        url = args.database_url or stack.enter_context(own_database(ADMIN_URL, "bench_gateway"))
        migrate(url, default_migrations_dir())
        with psycopg.connect(url) as conn:
            row = conn.execute(Q["server_version"]).fetchone()
        server = str(row[0]).split()[0] if row else "?"
        tracked = stack.enter_context(tracking_functions(url))
        gw = stack.enter_context(gateway(
            url, pool_min=min(args.workers, args.pool_max_size), pool_max=args.pool_max_size,
            log=args.gateway_log))

        sql_rounds: list[Measurement] = []
        http_rounds: list[Measurement] = []
        for r in range(args.rounds):
            sql_rounds.append(measure_sql(url, args.phases, args.workers))
            http_rounds.append(measure_http(gw, url, args.phases, args.workers))
            console.print(f"round {r + 1}: direct SQL {sql_rounds[-1].per_second:,.0f} jobs/s, "
                          f"HTTP {http_rounds[-1].per_second:,.0f} jobs/s")
        profiled: Measurement | None = None
        if args.py_spy is not None:
            with py_spy(args.py_spy_bin, gw.pid, args.py_spy):
                profiled = measure_http(gw, url, args.phases, args.workers)
            console.print(f"profiled round (not counted): HTTP {profiled.per_second:,.0f} jobs/s")
        sql_m = sorted(sql_rounds, key=lambda m: m.per_second)[len(sql_rounds) // 2]
        http_m = sorted(http_rounds, key=lambda m: m.per_second)[len(http_rounds) // 2]

        waited = measure_latency(gw, url, waiting=True, pairs=1, samples=args.samples)
        console.print(f"waiting claim: p50 {pct(waited.enqueue_to_claim_ms, 50):.1f} ms")
        polled = measure_latency(gw, url, waiting=False, pairs=args.pollers,
                                 samples=args.samples)
        console.print(f"1 s polling: p50 {pct(polled.enqueue_to_claim_ms, 50):.1f} ms")
        idle_wait = idle_claims(gw, url, waiting=True, seconds=args.idle_seconds, tracked=tracked)
        idle_poll = idle_claims(gw, url, waiting=False, seconds=args.idle_seconds,
                                tracked=tracked)

    ratio = http_m.per_second / sql_m.per_second
    table = Table(title=f"Gateway benchmark: PostgreSQL {server}, {os.cpu_count()} CPUs, "
                        f"{args.phases:,} noop phases per measurement, {args.workers} workers")
    table.add_column("measure")
    table.add_column("through the gateway (HTTP)", justify="right")
    table.add_column("baseline", justify="right")
    table.add_column("gateway / baseline", justify="right")
    table.add_row("(a) phases claimed + completed per second",
                  f"{http_m.per_second:,.0f}", f"direct SQL: {sql_m.per_second:,.0f}",
                  f"{ratio:.2f} (goal >= 0.50: {'met' if ratio >= 0.5 else 'NOT met'})")
    for what, h, s in (("claim_phase", http_m.claim_ms, sql_m.claim_ms),
                       ("complete_phase", http_m.complete_ms, sql_m.complete_ms)):
        table.add_row(f"    {what} p50 / p99 ms (client side)",
                      f"{pct(h, 50):.1f} / {pct(h, 99):.1f}",
                      f"{pct(s, 50):.1f} / {pct(s, 99):.1f}", f"{pct(h, 50) / pct(s, 50):.2f}")
        table.add_row(f"    {what} mean ms inside the gateway's handler (/metrics)",
                      f"{http_m.handler_ms[what]:.1f}", "", "")
    for who in ("load generator", "gateway", "postgres"):
        table.add_row(f"    CPU per 1,000 jobs: {who}", cpu_cell(http_m, who),
                      cpu_cell(sql_m, who), "")
    table.add_section()
    for p in (50, 99):
        w, q = pct(waited.enqueue_to_claim_ms, p), pct(polled.enqueue_to_claim_ms, p)
        table.add_row(f"(b) enqueue -> claim p{p} ms, idle worker",
                      f"Prefer: wait=30: {w:,.1f}", f"1 s polling: {q:,.1f}", f"{w / q:.3f}")
    table.add_row("    of which create_run (enqueue) p50 ms",
                  f"{pct(waited.create_run_ms, 50):.1f}", f"{pct(polled.create_run_ms, 50):.1f}",
                  "")
    table.add_row("    empty claims answered while idle", f"{waited.empty_claims:,}",
                  f"{polled.empty_claims:,} ({args.pollers} pollers)", "")
    table.add_row("    claim_phase runs in the database per second, one idle worker",
                  "n/a" if idle_wait is None else f"{idle_wait:.2f}",
                  "n/a" if idle_poll is None else f"{idle_poll:.2f}", "")
    console.print(table)
    console.print(
        f"(a) {args.workers} threads, each its own executor: HTTP = a keep-alive http.client "
        f"connection each "
        f"against `control-room serve` (own process, pool {args.pool_max_size}); direct SQL = "
        f"one psycopg connection each, claim and complete one transaction each "
        f"(call_as, as the gateway). "
        f"{'Median of ' + str(args.rounds) + ' rounds. ' if args.rounds > 1 else ''}"
        f"CPU from /proc: load generator = this process, postgres = the database's backends.\n"
        f"(b) {args.samples} samples per variant; waiting: 1 worker; polling: {args.pollers} "
        f"worker/enqueuer pairs in separate workspaces; latency = claim returned - just before "
        f"create_run was sent. Idle load: ops.claim_phase calls in "
        f"pg_stat_user_functions over {args.idle_seconds:g} s, one worker, nothing to claim.")
    if profiled is not None and args.py_spy is not None and args.py_spy.exists():
        print_profile(args.py_spy, profiled.seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
