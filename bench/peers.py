"""This project beside pgqueuer and procrastinate: noop throughput and enqueue -> start latency.

    python bench/peers.py [--jobs 3000] [--connections 1,4,8] [--rounds 3] [--phases-per-run 10]
                          [--wide-phases-per-run N] [--samples 200] [--interval-ms 20]
                          [--systems ROW,...] [--skip-latency] [--json]

Each system has a database of its own on 127.0.0.1:5432 (created here, dropped at the end).
Throughput: `--jobs` noop jobs per measurement, taken by `--connections` concurrent consumers
(one connection each), timed from the consumers' start to the last job done. Every round
measures every system once per connection count, the systems in an order rotated each round;
the table shows the median of the rounds. Before each measurement, outside the timed part, the
jobs are enqueued and the system's database is VACUUM ANALYZEd. The batched calls of ours retry
a deadlock (as a worker retries the gateway's 503), and the output counts them.

- ours, one at a time: `ops.claim_phase` + `ops.complete_phase` per job as an executor
  principal (`call_as`: one round trip and one transaction per call, as PostgREST and the
  gateway make them); a thread per connection. Runs of --phases-per-run phases without
  dependencies (bench/claim_throughput.py's setup).
- ours, batched: `ops.claim_phases(limit => 10)` + `ops.complete_phases` of what it claimed;
  with --wide-phases-per-run N, also on runs of N phases (a row of its own).
- pgqueuer: one `QueueManager` per connection (its asyncpg driver), all in one event loop,
  `run(batch_size=10 | 1, mode=drain)`: its dequeue of a batch, its buffered log of the
  finished jobs (one statement per batch). Its psycopg driver waits for a NOTIFY before each
  query (it reads notifications on the same connection, `notifies(timeout=1.0, stop_after=1)`):
  `--systems pgqueuer_psycopg` measures it at batch 10.
- procrastinate: one `App` over a pool of N connections; N workers of concurrency 1
  (`run_worker_async(wait=False, listen_notify=False)`), each fetching and finishing one job
  at a time (`procrastinate_fetch_job_v2`, `procrastinate_finish_job_v1`);
  `--systems procrastinate_1xn`: one worker of concurrency N (one fetch loop, N job slots).
- bare SQL: the database's limit (bench/claim_throughput.py): per job one transaction
  `UPDATE ... WHERE id = (SELECT ... FOR UPDATE SKIP LOCKED LIMIT 1)`, one marking it done.

Latency, enqueue -> start: one idle consumer waiting for work; `--samples` jobs, each enqueued
`--interval-ms` after the previous one started (so the consumer is waiting again), spread over
the rounds. From just before the enqueuing call (its commit included) to the moment the
consumer has the job in hand:
- ours through the gateway: `control-room serve` in its own process; the consumer an executor
  waiting in `claim_phase` with `Prefer: wait=30`; the enqueue a `create_run` of a one-phase run.
- ours over SQL: the consumer LISTENs on `ops_phase_queued` (ops_private.notify_queued: a phase
  became claimable) and calls `claim_phase` when woken.
- pgqueuer: a `QueueManager` (LISTEN/NOTIFY, asyncpg) in continuous mode; `Queries.enqueue` on
  another connection; the job's function entered.
- procrastinate: a worker with `listen_notify`; `Task.defer_async`; the task entered.

pgqueuer and procrastinate are not dependencies of this project: they run in a venv of their
own, `bench/.peers-venv` (created on the first run from bench/peers_requirements.txt, and again
when that file changes), as subprocesses of this script (`--peer REQUEST`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from queue import Queue
from typing import Any

import psycopg

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
PEERS_VENV = BENCH / ".peers-venv"
REQUIREMENTS = BENCH / "peers_requirements.txt"
ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
BATCH = 10
CLAIM = {"kinds": ["noop"], "lease_seconds": 60}


def peers_queries() -> dict[str, str]:
    # control_room.db.queries is standard library only: the peers' venv imports it from the tree
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from control_room.db.queries import parse_queries

    return parse_queries((BENCH / "peers.sql").read_text("utf-8"))


# ================================================================ the peers (bench/.peers-venv)

async def _vacuum(url: str, q: dict[str, str]) -> None:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute(q["vacuum_analyze"])


async def pgqueuer_install(url: str) -> dict[str, Any]:
    from pgqueuer.db import PsycopgDriver
    from pgqueuer.queries import Queries

    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await Queries(PsycopgDriver(conn)).install()
    import pgqueuer
    return {"version": getattr(pgqueuer, "__version__", "?")}


async def _pgqueuer_queries(url: str, driver: str) -> tuple[Any, Any]:
    """(Queries over a connection of its own, that connection) with pgqueuer's `driver`."""
    from pgqueuer.db import AsyncpgDriver, PsycopgDriver
    from pgqueuer.queries import Queries

    if driver == "asyncpg":
        import asyncpg
        from psycopg.conninfo import conninfo_to_dict

        params = conninfo_to_dict(url)   # asyncpg reads URLs, not key=value conninfo
        aconn = await asyncpg.connect(
            host=params.get("host"), port=int(params.get("port") or 5432),
            user=params.get("user"), password=params.get("password"),
            database=params.get("dbname"))
        return Queries(AsyncpgDriver(aconn)), aconn
    pconn = await psycopg.AsyncConnection.connect(url, autocommit=True)
    return Queries(PsycopgDriver(pconn)), pconn


async def pgqueuer_throughput(url: str, jobs: int, connections: int, batch: int,
                              driver: str) -> dict[str, Any]:
    from pgqueuer.models import Job
    from pgqueuer.qm import QueueManager
    from pgqueuer.types import QueueExecutionMode

    q = peers_queries()
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute(q["pgqueuer_reset"])
    enqueuer, econn = await _pgqueuer_queries(url, driver)
    await enqueuer.enqueue(["noop"] * jobs, [None] * jobs, [0] * jobs)
    await econn.close()
    await _vacuum(url, q)
    managers, conns = [], []
    try:
        for _ in range(connections):
            queries, conn = await _pgqueuer_queries(url, driver)
            conns.append(conn)
            qm = QueueManager(queries)

            @qm.entrypoint("noop")
            async def noop(job: Job) -> None:
                return None

            managers.append(qm)
        t0 = time.perf_counter()
        await asyncio.gather(*(qm.run(batch_size=batch, mode=QueueExecutionMode.drain)
                               for qm in managers))
        seconds = time.perf_counter() - t0
    finally:
        for c in conns:
            await c.close()
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        row = await (await conn.execute(q["pgqueuer_counts"])).fetchone()
    assert row == (0, jobs), (row, jobs)
    return {"jobs": jobs, "seconds": seconds}


def _procrastinate_app(url: str, pool_size: int) -> Any:
    import procrastinate

    return procrastinate.App(connector=procrastinate.PsycopgConnector(
        conninfo=url, min_size=pool_size, max_size=pool_size))


async def procrastinate_install(url: str) -> dict[str, Any]:
    import procrastinate

    app = _procrastinate_app(url, 1)
    async with app.open_async():
        await app.schema_manager.apply_schema_async()
    return {"version": getattr(procrastinate, "__version__", "?")}


async def procrastinate_throughput(url: str, jobs: int, connections: int,
                                   workers: int) -> dict[str, Any]:
    """`workers` workers sharing `connections` job slots (N x 1 or 1 x N), a pool of N."""
    q = peers_queries()
    app = _procrastinate_app(url, connections)

    @app.task(name="noop")
    async def noop() -> None:
        return None

    async with app.open_async():
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            await conn.execute(q["procrastinate_reset"])
        await noop.batch_defer_async(*([{}] * jobs))
        await _vacuum(url, q)
        t0 = time.perf_counter()
        await asyncio.gather(*(app.run_worker_async(
            concurrency=connections // workers, wait=False, listen_notify=False,
            install_signal_handlers=False, name=f"bench-{k}") for k in range(workers)))
        seconds = time.perf_counter() - t0
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        row = await (await conn.execute(q["procrastinate_succeeded"])).fetchone()
    assert row == (jobs,), (row, jobs)
    return {"jobs": jobs, "seconds": seconds}


async def pgqueuer_latency(url: str, samples: int, interval: float,
                           driver: str) -> dict[str, Any]:
    from pgqueuer.models import Job
    from pgqueuer.qm import QueueManager

    q = peers_queries()
    started: asyncio.Queue[tuple[bytes | None, float]] = asyncio.Queue()
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute(q["pgqueuer_reset"])
    enqueuer, econn = await _pgqueuer_queries(url, driver)
    queries, wconn = await _pgqueuer_queries(url, driver)
    try:
        qm = QueueManager(queries)

        @qm.entrypoint("stamp")
        async def stamp(job: Job) -> None:
            started.put_nowait((job.payload, time.perf_counter()))

        task = asyncio.create_task(qm.run())
        await asyncio.sleep(1.0)   # let it settle into waiting
        latencies, enqueues = [], []
        for i in range(samples):
            await asyncio.sleep(interval)
            t0 = time.perf_counter()
            await enqueuer.enqueue("stamp", str(i).encode())
            t1 = time.perf_counter()
            payload, at = await asyncio.wait_for(started.get(), 60)
            assert payload == str(i).encode(), (payload, i)
            latencies.append((at - t0) * 1000)
            enqueues.append((t1 - t0) * 1000)
        qm.shutdown.set()
        await asyncio.wait_for(task, 60)
    finally:
        await econn.close()
        await wconn.close()
    return {"latency_ms": latencies, "enqueue_ms": enqueues}


async def procrastinate_latency(url: str, samples: int, interval: float) -> dict[str, Any]:
    q = peers_queries()
    app = _procrastinate_app(url, 3)
    started: asyncio.Queue[tuple[int, float]] = asyncio.Queue()

    @app.task(name="stamp")
    async def stamp(i: int) -> None:
        started.put_nowait((i, time.perf_counter()))

    async with app.open_async():
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            await conn.execute(q["procrastinate_reset"])
        worker = asyncio.create_task(app.run_worker_async(
            concurrency=1, wait=True, listen_notify=True, install_signal_handlers=False))
        await asyncio.sleep(1.0)
        latencies, enqueues = [], []
        for i in range(samples):
            await asyncio.sleep(interval)
            t0 = time.perf_counter()
            await stamp.defer_async(i=i)
            t1 = time.perf_counter()
            got, at = await asyncio.wait_for(started.get(), 60)
            assert got == i, (got, i)
            latencies.append((at - t0) * 1000)
            enqueues.append((t1 - t0) * 1000)
        worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await worker
    return {"latency_ms": latencies, "enqueue_ms": enqueues}


def peer_main(request: dict[str, Any]) -> dict[str, Any]:
    import logging
    logging.basicConfig(level=logging.WARNING)
    system, what, url = request["system"], request["what"], request["url"]
    coro: Any
    if what == "install":
        coro = pgqueuer_install(url) if system == "pgqueuer" else procrastinate_install(url)
    elif what == "throughput" and system == "pgqueuer":
        coro = pgqueuer_throughput(url, request["jobs"], request["connections"],
                                   request["batch"], request["driver"])
    elif what == "throughput":
        coro = procrastinate_throughput(url, request["jobs"], request["connections"],
                                        request["workers"])
    elif system == "pgqueuer":
        coro = pgqueuer_latency(url, request["samples"], request["interval"], "asyncpg")
    else:
        coro = procrastinate_latency(url, request["samples"], request["interval"])
    return dict(asyncio.run(coro))


# ============================================================ plumbing of this side (.venv)

def peers_python() -> Path:
    """bench/.peers-venv's python, the venv (re)made when peers_requirements.txt changed."""
    stamp = PEERS_VENV / "requirements.sha256"
    digest = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()
    python = PEERS_VENV / "bin" / "python"
    if python.exists() and stamp.exists() and stamp.read_text().strip() == digest:
        return python
    print(f"making {PEERS_VENV.relative_to(ROOT)} from {REQUIREMENTS.name} ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(PEERS_VENV)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "-r", str(REQUIREMENTS)],
                   check=True)
    stamp.write_text(digest + "\n")
    return python


def run_peer(request: dict[str, Any]) -> dict[str, Any]:
    """One peer request in a subprocess of bench/.peers-venv; its answer is its last line."""
    proc = subprocess.run([str(peers_python()), str(Path(__file__).resolve()), "--peer",
                           json.dumps(request)], capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"peer {request['system']} {request['what']} failed "
                           f"({proc.returncode}):\n{proc.stderr[-4000:]}")
    answer: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return answer


def load() -> str:
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


def pct(values: list[float], p: int) -> float:
    if p == 50:
        return statistics.median(values)
    return statistics.quantiles(values, n=100, method="inclusive")[p - 1]


@dataclass
class Databases:
    ours: str
    bare: str
    pgqueuer: str
    procrastinate: str


@dataclass
class Results:
    """jobs/s per system and connection count, one figure per round."""

    throughput: dict[str, dict[int, list[float]]] = field(default_factory=dict)
    latency: dict[str, list[float]] = field(default_factory=dict)
    enqueue: dict[str, list[float]] = field(default_factory=dict)   # the enqueuing call alone
    deadlocks: dict[str, dict[int, int]] = field(default_factory=dict)   # retried, all rounds
    loads: list[str] = field(default_factory=list)

    def add(self, system: str, connections: int, per_second: float) -> None:
        self.throughput.setdefault(system, {}).setdefault(connections, []).append(per_second)

    def median(self, system: str, connections: int) -> float | None:
        values = self.throughput.get(system, {}).get(connections)
        return statistics.median(values) if values else None


# ================================================================ this project and bare SQL

def vacuum(url: str, q: dict[str, str]) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(q["vacuum_analyze"])


def prepare_ours(url: str, jobs: int, connections: int, per_run: int) -> tuple[str, list[str]]:
    import claim_throughput  # bench/claim_throughput.py: its workspace, executors and runs

    claim_throughput.PHASES_PER_RUN = per_run   # read by prepare_functions when it runs
    return claim_throughput.prepare_functions(url, jobs, connections)


def measure_ours(url: str, jobs: int, connections: int, *, per_run: int, batch: int | None,
                 q: dict[str, str], deadlocks: list[str]) -> float:
    """jobs/s: claim_phase + complete_phase per job, or claim_phases + complete_phases.

    Deadlocks of the batched calls are retried, and appended to `deadlocks`.
    """
    from claim_throughput import run_threads

    from control_room.db.store import call_as

    ws, executors = prepare_ours(url, jobs, connections, per_run)
    vacuum(url, q)
    done = [0] * connections
    lock = threading.Lock()
    conns = [psycopg.connect(url, autocommit=True) for _ in range(connections)]
    try:
        def one_at_a_time(k: int, barrier: threading.Barrier) -> None:
            conn, sub = conns[k], executors[k]
            barrier.wait()
            while True:
                claim = call_as(conn, "claim_phase", {**CLAIM, "workspace_id": ws},
                                role="authenticated", sub=sub, claims={"workspaces": [ws]})
                if claim is None:
                    return
                call_as(conn, "complete_phase", {"lease_token": claim["lease_token"],
                                                 "outcome": "succeeded"},
                        role="authenticated", sub=sub)
                done[k] += 1

        def retrying(fn: Callable[[], Any]) -> Any:
            # a deadlock rolls the call back (the gateway answers 503): a worker calls again
            while True:
                try:
                    return fn()
                except Exception as exc:
                    if not isinstance(exc.__cause__, psycopg.errors.DeadlockDetected):
                        raise
                    with lock:
                        deadlocks.append(str(exc.__cause__).splitlines()[0])

        def batched(k: int, barrier: threading.Barrier) -> None:
            conn, sub = conns[k], executors[k]
            barrier.wait()
            while True:
                claims = retrying(functools.partial(
                    call_as, conn, "claim_phases", {**CLAIM, "limit": batch, "workspace_id": ws},
                    role="authenticated", sub=sub, claims={"workspaces": [ws]}))
                if not claims:
                    return
                completions = [{"lease_token": c["lease_token"], "outcome": "succeeded"}
                               for c in claims]
                answers = retrying(functools.partial(
                    call_as, conn, "complete_phases", {"completions": completions},
                    role="authenticated", sub=sub))
                assert len(answers) == len(claims) and not any(
                    "error" in a for a in answers), answers
                done[k] += len(claims)

        seconds = run_threads(connections, batched if batch else one_at_a_time)
    finally:
        for conn in conns:
            conn.close()
    with psycopg.connect(url) as conn:
        row = conn.execute(q["succeeded_phases"], {"workspace_id": ws}).fetchone()
    assert row is not None and row[0] == jobs == sum(done), (row, jobs, done)
    return jobs / seconds


def measure_bare(url: str, jobs: int, connections: int) -> float:
    from claim_throughput import measure_bare_sql  # truncates, fills and analyzes bench.jobs

    return measure_bare_sql(url, jobs, connections).per_second


def ours_latency_gateway(gw: Any, url: str, samples: int,
                         interval: float) -> dict[str, list[float]]:
    """create_run of a one-phase run -> the waiting claim_phase (Prefer: wait=30) returns it."""
    from gateway_throughput import WAIT_HEADER, as_service, make_workspace, rpc

    executor = str(uuid.uuid4())
    ws = make_workspace(url, [executor], 0, "latency")
    claimed: Queue[tuple[str, float]] = Queue()

    def consumer() -> None:
        with gw.client(executor, ws) as client:
            while True:
                got = rpc(client, "claim_phase", {**CLAIM, "workspace_id": ws}, WAIT_HEADER)
                if got is None:
                    continue
                claimed.put((got["run_id"], time.perf_counter()))
                rpc(client, "complete_phase", {"lease_token": got["lease_token"],
                                               "outcome": "succeeded"})
                if got["params"].get("stop"):
                    return

    return _enqueue_loop(url, ws, samples, interval, consumer, claimed, as_service)


def ours_latency_listen(url: str, samples: int, interval: float,
                        q: dict[str, str]) -> dict[str, list[float]]:
    """create_run -> a consumer LISTENing on ops_phase_queued is woken and claims it."""
    from gateway_throughput import as_service, make_workspace

    from control_room.db.store import call_as

    executor = str(uuid.uuid4())
    ws = make_workspace(url, [executor], 0, "listen")
    claimed: Queue[tuple[str, float]] = Queue()

    def consumer() -> None:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(q["listen_phase_queued"])
            while True:
                got = call_as(conn, "claim_phase", {**CLAIM, "workspace_id": ws},
                              role="authenticated", sub=executor, claims={"workspaces": [ws]})
                if got is None:
                    # a notification that came in during the claim is kept for notifies()
                    for _ in conn.notifies(timeout=5.0, stop_after=1):
                        pass
                    continue
                claimed.put((got["run_id"], time.perf_counter()))
                call_as(conn, "complete_phase", {"lease_token": got["lease_token"],
                                                 "outcome": "succeeded"},
                        role="authenticated", sub=executor)
                if got["params"].get("stop"):
                    return

    return _enqueue_loop(url, ws, samples, interval, consumer, claimed, as_service)


def _enqueue_loop(url: str, ws: str, samples: int, interval: float,
                  consumer: Callable[[], None], claimed: Queue[tuple[str, float]],
                  as_service: Callable[..., Any]) -> dict[str, list[float]]:
    thread = threading.Thread(target=consumer, name="consumer", daemon=True)
    thread.start()
    latencies, enqueues = [], []
    with psycopg.connect(url) as conn:
        time.sleep(1.0)   # let the consumer settle into waiting
        for i in range(samples + 1):
            stop = i == samples
            time.sleep(interval)
            t0 = time.perf_counter()
            run = as_service(conn, "create_run", {
                "workspace_id": ws, "spec_slug": "bench-latency", "git_sha": "0123abc",
                "phases": [{"name": "only", "kind": "noop", "params": {"stop": stop}}]})
            t1 = time.perf_counter()
            run_id, at = claimed.get(timeout=60)
            assert run_id == run["id"], (run_id, run["id"])
            if not stop:
                latencies.append((at - t0) * 1000)
                enqueues.append((t1 - t0) * 1000)
    thread.join(timeout=60)
    assert not thread.is_alive()
    return {"latency_ms": latencies, "enqueue_ms": enqueues}


# ======================================================================== the benchmark

THROUGHPUT_ROWS = [
    # key, label, measured by default
    ("ours_single", "ours: claim_phase + complete_phase", True),
    ("ours_batched", "ours: claim_phases + complete_phases (10)", True),
    ("ours_batched_wide", "ours: batched (10), wide runs", True),
    ("pgqueuer_batched", "pgqueuer: QueueManager, batch_size 10", True),
    ("pgqueuer_single", "pgqueuer: QueueManager, batch_size 1", True),
    ("pgqueuer_psycopg", "pgqueuer: batch_size 10, psycopg driver", False),
    ("procrastinate", "procrastinate: N workers x concurrency 1", True),
    ("procrastinate_1xn", "procrastinate: 1 worker x concurrency N", False),
    ("bare", "bare SQL: SKIP LOCKED update + done", True),
]
LATENCY_ROWS = [
    ("ours_gateway", "ours: gateway, claim_phase with Prefer: wait=30"),
    ("ours_listen", "ours: SQL, LISTEN ops_phase_queued + claim_phase"),
    ("pgqueuer", "pgqueuer: QueueManager (LISTEN/NOTIFY)"),
    ("procrastinate", "procrastinate: worker with listen_notify"),
]


def measure_throughput(key: str, db: Databases, jobs: int, n: int, args: argparse.Namespace,
                       q: dict[str, str], deadlocks: list[str]) -> float:
    if key == "ours_single":
        return measure_ours(db.ours, jobs, n, per_run=args.phases_per_run, batch=None, q=q,
                            deadlocks=deadlocks)
    if key == "ours_batched":
        return measure_ours(db.ours, jobs, n, per_run=args.phases_per_run, batch=BATCH, q=q,
                            deadlocks=deadlocks)
    if key == "ours_batched_wide":
        return measure_ours(db.ours, jobs, n, per_run=args.wide_phases_per_run, batch=BATCH,
                            q=q, deadlocks=deadlocks)
    if key == "bare":
        return measure_bare(db.bare, jobs, n)
    if key.startswith("pgqueuer"):
        answer = run_peer({"system": "pgqueuer", "what": "throughput", "url": db.pgqueuer,
                           "jobs": jobs, "connections": n,
                           "batch": 1 if key == "pgqueuer_single" else BATCH,
                           "driver": "psycopg" if key == "pgqueuer_psycopg" else "asyncpg"})
    else:
        answer = run_peer({"system": "procrastinate", "what": "throughput",
                           "url": db.procrastinate, "jobs": jobs, "connections": n,
                           "workers": 1 if key == "procrastinate_1xn" else n})
    return float(answer["jobs"]) / float(answer["seconds"])


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}" if a and b else "-"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--jobs", type=int, default=3000, help="jobs per measurement (3000)")
    parser.add_argument("--connections", default="1,4,8", help="connection counts (1,4,8)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (3)")
    parser.add_argument("--phases-per-run", type=int, default=10,
                        help="phases per run of ours (10)")
    parser.add_argument("--wide-phases-per-run", type=int, default=0,
                        help="also batched on runs of this many phases (default 0: not)")
    parser.add_argument("--samples", type=int, default=200,
                        help="latency samples per system, over all rounds (200)")
    parser.add_argument("--interval-ms", type=float, default=20.0,
                        help="pause before each enqueue of the latency measurement (20)")
    parser.add_argument("--systems", default=None,
                        help="comma-separated throughput rows to run: "
                             + ",".join(k for k, _, _ in THROUGHPUT_ROWS)
                             + " (default: all but pgqueuer_psycopg and procrastinate_1xn)")
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--peer", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.peer is not None:
        print(json.dumps(peer_main(json.loads(args.peer))))
        return 0
    return bench(args)


def bench(args: argparse.Namespace) -> int:
    from common import own_database  # bench/common.py (run as python bench/<script>.py)
    from gateway_throughput import gateway
    from rich.console import Console
    from rich.table import Table

    from control_room.db.migrate import migrate
    from control_room.settings import default_migrations_dir

    console = Console(width=160, stderr=args.json)
    q = peers_queries()
    counts = [int(c) for c in args.connections.split(",")]
    keys = [k for k, _, default in THROUGHPUT_ROWS
            if (k in args.systems.split(",") if args.systems else default)
            and not (k == "ours_batched_wide" and not args.wide_phases_per_run)]
    results = Results()
    started = time.monotonic()
    console.print(f"load average {load()} (1/5/15 min), {os.cpu_count()} CPUs")
    peers_python()

    with contextlib.ExitStack() as stack:
        db = Databases(*(stack.enter_context(own_database(ADMIN_URL, f"bench_peers_{name}"))
                         for name in ("ours", "bare", "pgqueuer", "procrastinate")))
        migrate(db.ours, default_migrations_dir())
        migrate(db.bare, default_migrations_dir())   # bench.jobs lives beside nothing else
        with psycopg.connect(db.bare, autocommit=True) as conn:
            import claim_throughput
            conn.execute(claim_throughput.Q["create_jobs_table"])
            row = conn.execute(q["server_version"]).fetchone()
            server = row[0] if row else "?"
        versions = {s: run_peer({"system": s, "what": "install", "url": getattr(db, s)})
                    ["version"] for s in ("pgqueuer", "procrastinate")}
        console.print(f"PostgreSQL {server}, pgqueuer {versions['pgqueuer']}, "
                      f"procrastinate {versions['procrastinate']}")

        for r in range(args.rounds):
            order = keys[r % len(keys):] + keys[:r % len(keys)]
            for n in counts:
                for key in order:
                    t0 = time.monotonic()
                    deadlocks: list[str] = []
                    per_second = measure_throughput(key, db, args.jobs, n, args, q, deadlocks)
                    results.add(key, n, per_second)
                    if deadlocks:
                        results.deadlocks.setdefault(key, {})[n] = (
                            results.deadlocks.get(key, {}).get(n, 0) + len(deadlocks))
                    timed = args.jobs / per_second
                    console.print(f"round {r + 1}, {n} connection(s): {key} "
                                  f"{per_second:,.0f} jobs/s ({timed:.1f} s timed, "
                                  f"{time.monotonic() - t0 - timed:.1f} s setup)"
                                  + (f", {len(deadlocks)} deadlock(s) retried" if deadlocks
                                     else ""))
            results.loads.append(load())
            console.print(f"round {r + 1} done at {time.monotonic() - started:.0f} s, "
                          f"load average {results.loads[-1]}")

        if not args.skip_latency:
            per_round = [args.samples // args.rounds + (1 if r < args.samples % args.rounds
                                                        else 0) for r in range(args.rounds)]
            interval = args.interval_ms / 1000
            lkeys = [k for k, _ in LATENCY_ROWS]
            log = Path(tempfile.mkdtemp(prefix="bench-peers-")) / "gateway.log"
            gw = stack.enter_context(gateway(db.ours, pool_min=2, pool_max=4, log=log))
            for r, samples in enumerate(per_round):
                for key in lkeys[r % len(lkeys):] + lkeys[:r % len(lkeys)]:
                    if key == "ours_gateway":
                        got = ours_latency_gateway(gw, db.ours, samples, interval)
                    elif key == "ours_listen":
                        got = ours_latency_listen(db.ours, samples, interval, q)
                    else:
                        got = run_peer({"system": key, "what": "latency",
                                        "url": getattr(db, key), "samples": samples,
                                        "interval": interval})
                    results.latency.setdefault(key, []).extend(got["latency_ms"])
                    results.enqueue.setdefault(key, []).extend(got["enqueue_ms"])
                    console.print(f"latency round {r + 1}: {key} p50 "
                                  f"{statistics.median(got['latency_ms']):.1f} ms")
            results.loads.append(load())

    elapsed = time.monotonic() - started
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    title = (f"noop jobs per second, {args.jobs:,} jobs per measurement, median of "
             f"{args.rounds} rounds (PostgreSQL {server}, {os.cpu_count()} CPUs, {when})")
    table = Table(title=title)
    table.add_column("system")
    for n in counts:
        table.add_column(f"{n} conn", justify="right")
    labels = {k: label for k, label, _ in THROUGHPUT_ROWS}
    labels["ours_batched_wide"] = (f"ours: batched (10), runs of {args.wide_phases_per_run}")
    for key in keys:
        cells = []
        for n in counts:
            m = results.median(key, n)
            cells.append(f"{m:,.0f}" if m is not None else "-")
        table.add_row(labels[key], *cells)
    ratios = [
        ("ours batched / pgqueuer batch 10", "ours_batched", "pgqueuer_batched"),
        ("ours one at a time / procrastinate", "ours_single", "procrastinate"),
        ("ours one at a time / pgqueuer batch 1", "ours_single", "pgqueuer_single"),
        ("ours one at a time / bare SQL", "ours_single", "bare"),
    ]
    table.add_section()
    for label, a, b in ratios:
        if a in keys and b in keys:
            table.add_row(label, *(ratio(results.median(a, n), results.median(b, n))
                                   for n in counts))
    console.print(table)
    for key, per in results.deadlocks.items():
        console.print(f"{labels[key]}: deadlocks retried (all rounds): "
                      + ", ".join(f"{c} at {n} connections" for n, c in sorted(per.items())))

    if results.latency:
        ltable = Table(title=f"enqueue -> start, one idle consumer, {args.samples} jobs, "
                             f"each {args.interval_ms:.0f} ms after the previous one started; "
                             "'after it': from the enqueuing call's return")
        for column in ("system", "p50 ms", "p90 ms", "p99 ms", "max ms",
                       "enqueue call p50 ms", "after it p50 ms"):
            ltable.add_column(column, justify="left" if column == "system" else "right")
        for key, label in LATENCY_ROWS:
            v = results.latency[key]
            after = [a - e for a, e in zip(v, results.enqueue[key], strict=True)]
            ltable.add_row(label, f"{pct(v, 50):.1f}", f"{pct(v, 90):.1f}",
                           f"{pct(v, 99):.1f}", f"{max(v):.1f}",
                           f"{pct(results.enqueue[key], 50):.1f}", f"{pct(after, 50):.1f}")
        ltable.add_section()
        pq = pct(results.latency["pgqueuer"], 50)
        for key in ("ours_gateway", "ours_listen"):
            ltable.add_row(f"p50 {key} / pgqueuer", f"{pct(results.latency[key], 50) / pq:.2f}",
                           "", "", "", "", "")
        console.print(ltable)
    console.print(f"load average after each round: {'; '.join(results.loads)}; "
                  f"{elapsed:.0f} s in all")

    if args.json:
        print(json.dumps({
            "when": when, "postgres": server, "versions": versions, "cpus": os.cpu_count(),
            "jobs": args.jobs, "rounds": args.rounds, "phases_per_run": args.phases_per_run,
            "wide_phases_per_run": args.wide_phases_per_run, "loads": results.loads,
            "deadlocks": {k: {str(n): c for n, c in per.items()}
                          for k, per in results.deadlocks.items()},
            "throughput": {k: {str(n): {"median": results.median(k, n), "rounds": v}
                               for n, v in per.items()}
                           for k, per in results.throughput.items()},
            "latency_ms": {k: {"p50": pct(v, 50), "p90": pct(v, 90), "p99": pct(v, 99),
                               "max": max(v), "enqueue_p50": pct(results.enqueue[k], 50),
                               "samples": v}
                           for k, v in results.latency.items()},
            "seconds": elapsed}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
