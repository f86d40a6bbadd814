"""Claim throughput: noop phases claimed and completed per second through the contract.

    python bench/claim_throughput.py [--phases N] [--connections 1,4,8] [--database-url URL]
                                     [--profile]

For each connection count, two measurements of the same number of jobs on the same database:

- functions: a job is `claim_phase` + `complete_phase` as an executor principal, each call its
  own transaction with the role and JWT claims set as PostgREST sets them (`call_as`: the
  settings and the call in one round trip, as the gateway makes them). The
  phases are created beforehand (runs of 10 phases without dependencies), one workspace per
  measurement so measurements do not see each other's work.
- bare SQL: the database's limit, pgbench-style. A tiny table of queued rows; a job is one
  transaction claiming a row (`UPDATE ... WHERE id = (SELECT ... FOR UPDATE SKIP LOCKED LIMIT
  1)`) and one marking it done: two commits per job, as for the functions.

Without --database-url it creates a database on 127.0.0.1:5432, migrates it with
`control_room.db.migrate` and drops it at the end. With --database-url it migrates that
database (a no-op when it is up to date), and leaves the runs it made there.
--profile adds, per connection count, where the functions' time goes: per function
(pg_stat_user_functions with track_functions = all) and per statement (auto_explain with
actual times and buffers on the first connection, which slows that connection down: read the
throughput of a --profile run as a diagnostic, not a figure).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import secrets
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from common import own_database  # bench/common.py (run as python bench/<script>.py)
from rich.console import Console
from rich.table import Table

from control_room.db.migrate import migrate
from control_room.db.queries import parse_queries
from control_room.db.store import acting_as, call, call_as
from control_room.settings import default_migrations_dir

Q = parse_queries((Path(__file__).parent / "claim_throughput.sql").read_text("utf-8"))
ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
PHASES_PER_RUN = 10


@dataclass
class Measurement:
    jobs: int
    seconds: float
    claim_ms: list[float] = field(default_factory=list)
    complete_ms: list[float] = field(default_factory=list)

    @property
    def per_second(self) -> float:
        return self.jobs / self.seconds


@dataclass
class StatementProfile:
    """auto_explain's plans of one connection, summed per statement text."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    calls: dict[str, int] = field(default_factory=dict)
    total_ms: dict[str, float] = field(default_factory=dict)
    max_blocks: dict[str, int] = field(default_factory=dict)
    phases_scans: dict[str, set[str]] = field(default_factory=dict)

    def add(self, notice: str) -> None:
        if "plan:" not in notice:
            return
        doc = json.loads(notice[notice.index("{"):])
        query = " ".join(doc["Query Text"].split())[:80]
        plan = doc["Plan"]
        scans: set[str] = set()

        def walk(node: dict[str, Any]) -> None:
            if node.get("Relation Name") == "phases" and node["Node Type"].endswith("Scan"):
                scans.add(f"{node['Node Type']} {node.get('Index Name') or ''}".strip())
            for child in node.get("Plans", []):
                walk(child)

        walk(plan)
        with self.lock:
            self.calls[query] = self.calls.get(query, 0) + 1
            self.total_ms[query] = self.total_ms.get(query, 0.0) + plan.get(
                "Actual Total Time", 0.0)
            self.max_blocks[query] = max(self.max_blocks.get(query, 0),
                                         plan.get("Shared Hit Blocks", 0)
                                         + plan.get("Shared Read Blocks", 0))
            self.phases_scans.setdefault(query, set()).update(scans)

    def print(self, connections: int) -> None:
        table = Table(title=f"statements of connection 1 of {connections}, by total time "
                            "(a statement's time includes the statements nested in it)")
        for column in ("statement", "calls", "total ms", "mean ms", "max blocks",
                       "scans of phases"):
            table.add_column(column, justify="left" if column in (
                "statement", "scans of phases") else "right", no_wrap=True)
        top = sorted(self.total_ms, key=lambda q: -self.total_ms[q])[:14]
        for q in top:
            table.add_row(q, str(self.calls[q]), f"{self.total_ms[q]:.0f}",
                          f"{self.total_ms[q] / self.calls[q]:.3f}", str(self.max_blocks[q]),
                          ", ".join(sorted(self.phases_scans[q])))
        Console(width=200).print(table)


def run_threads(n: int, job: Callable[[int, threading.Barrier], None]) -> float:
    """Run `job(k, barrier)` on n threads; time from the barrier's release to the last return."""
    began: list[float] = []
    barrier = threading.Barrier(n + 1)
    with ThreadPoolExecutor(max_workers=n) as pool:
        futures = [pool.submit(job, k, barrier) for k in range(n)]
        barrier.wait()
        began.append(time.perf_counter())
        for f in futures:
            f.result()
    return time.perf_counter() - began[0]


def prepare_functions(url: str, jobs: int, connections: int) -> tuple[str, list[str]]:
    """A workspace with one executor per connection and `jobs` queued phases."""
    executors = [str(uuid.uuid4()) for _ in range(connections)]
    with psycopg.connect(url) as conn:
        def service(fn: str, args: dict[str, Any]) -> Any:
            with acting_as(conn, role="service_role"):
                return call(conn, fn, args)

        slug = f"bench-{connections}-{secrets.token_hex(3)}"
        ws: str = service("create_workspace", {"slug": slug, "name": slug})["id"]
        for k, principal in enumerate(executors):
            service("add_member", {"workspace_id": ws, "principal_id": principal,
                                   "role": "executor", "name": f"bench-executor-{k}"})
        for r in range(0, jobs, PHASES_PER_RUN):
            size = min(PHASES_PER_RUN, jobs - r)
            service("create_run", {
                "workspace_id": ws, "spec_slug": "bench-noop", "git_sha": "0123abc",
                "phases": [{"name": f"noop{k}", "kind": "noop"} for k in range(size)]})
    return ws, executors


def measure_functions(url: str, jobs: int, connections: int, *, profile: bool) -> Measurement:
    ws, executors = prepare_functions(url, jobs, connections)
    result = Measurement(jobs=0, seconds=0.0)
    lock = threading.Lock()
    conns = [psycopg.connect(url, autocommit=True) for _ in range(connections)]
    statements = StatementProfile()
    try:
        if profile:
            for conn in conns:
                conn.execute(Q["track_functions"])
                conn.commit()
            conns[0].execute(Q["reset_function_stats"])
            conns[0].commit()
            conns[0].execute(Q["load_auto_explain"])
            conns[0].add_notice_handler(lambda diag: statements.add(diag.message_primary or ""))

        def work(k: int, barrier: threading.Barrier) -> None:
            conn, sub = conns[k], executors[k]
            done, claims, completes = 0, [], []
            barrier.wait()
            while True:
                t0 = time.perf_counter()
                claim = call_as(conn, "claim_phase", {"kinds": ["noop"], "lease_seconds": 60,
                                                      "workspace_id": ws},
                                role="authenticated", sub=sub, claims={"workspaces": [ws]})
                t1 = time.perf_counter()
                if claim is None:
                    break
                call_as(conn, "complete_phase", {"lease_token": claim["lease_token"],
                                                 "outcome": "succeeded"},
                        role="authenticated", sub=sub)
                t2 = time.perf_counter()
                done += 1
                claims.append((t1 - t0) * 1000)
                completes.append((t2 - t1) * 1000)
            with lock:
                result.jobs += done
                result.claim_ms += claims
                result.complete_ms += completes

        result.seconds = run_threads(connections, work)
    finally:
        for conn in conns:
            conn.close()
    with psycopg.connect(url) as conn:
        row = conn.execute(Q["count_succeeded_phases"], {"workspace_id": ws}).fetchone()
        if profile:
            time.sleep(0.6)   # backends flush their function statistics when idle
            print_profile(conn, connections)
            statements.print(connections)
    assert row is not None and row[0] == jobs == result.jobs, (row, jobs, result.jobs)
    return result


def measure_bare_sql(url: str, jobs: int, connections: int) -> Measurement:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(Q["truncate_jobs"])
        conn.execute(Q["fill_jobs"], {"n": jobs})
        conn.execute("analyze bench.jobs")
    result = Measurement(jobs=0, seconds=0.0)
    lock = threading.Lock()
    conns = [psycopg.connect(url, autocommit=True) for _ in range(connections)]
    try:
        def work(k: int, barrier: threading.Barrier) -> None:
            conn, done = conns[k], 0
            barrier.wait()
            while True:
                row = conn.execute(Q["claim_job"], {"worker": k}).fetchone()
                if row is None:
                    break
                conn.execute(Q["finish_job"], {"id": row[0]})
                done += 1
            with lock:
                result.jobs += done

        result.seconds = run_threads(connections, work)
    finally:
        for conn in conns:
            conn.close()
    with psycopg.connect(url) as conn:
        row = conn.execute(Q["count_done_jobs"]).fetchone()
    assert row is not None and row[0] == jobs == result.jobs, (row, jobs, result.jobs)
    return result


def print_profile(conn: psycopg.Connection[Any], connections: int) -> None:
    table = Table(title=f"where the functions' time goes ({connections} connections)")
    for column in ("function", "calls", "total ms", "self ms"):
        table.add_column(column, justify="left" if column == "function" else "right")
    for name, calls, total, self_ms in conn.execute(Q["function_stats"]).fetchall()[:15]:
        table.add_row(name, str(calls), str(total), str(self_ms))
    Console(width=200).print(table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--phases", type=int, default=4000,
                        help="jobs per measurement (default 4000)")
    parser.add_argument("--connections", default="1,4,8",
                        help="comma-separated connection counts (default 1,4,8)")
    parser.add_argument("--database-url", default=None,
                        help="use this database instead of creating one on 127.0.0.1:5432")
    parser.add_argument("--profile", action="store_true",
                        help="also show per-function times of the contract calls")
    args = parser.parse_args(argv)
    counts = [int(c) for c in args.connections.split(",")]
    console = Console()

    with contextlib.ExitStack() as stack:
        url = args.database_url or stack.enter_context(own_database(ADMIN_URL, "bench_claims"))
        migrate(url, default_migrations_dir())
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(Q["create_jobs_table"])
            server = conn.execute("show server_version").fetchone()
        rows = []
        for n in counts:
            bare = measure_bare_sql(url, args.phases, n)
            functions = measure_functions(url, args.phases, n, profile=args.profile)
            rows.append((n, functions, bare))
            console.print(f"{n} connection(s): functions {functions.per_second:,.0f} jobs/s, "
                          f"bare SQL {bare.per_second:,.0f} jobs/s")
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(Q["drop_jobs_schema"])

    table = Table(title=f"noop jobs per second, {args.phases:,} jobs per measurement "
                        f"(PostgreSQL {server[0] if server else '?'})")
    for column in ("connections", "functions jobs/s", "bare SQL jobs/s", "ratio",
                   "claim p50 ms", "complete p50 ms"):
        table.add_column(column, justify="right")
    for n, functions, bare in rows:
        table.add_row(
            str(n), f"{functions.per_second:,.0f}", f"{bare.per_second:,.0f}",
            f"{functions.per_second / bare.per_second:.2f}",
            f"{statistics.median(functions.claim_ms):.2f}",
            f"{statistics.median(functions.complete_ms):.2f}")
    console.print(table)
    console.print("functions: claim_phase + complete_phase as an executor, one transaction "
                  "each (call_as, as PostgREST and the gateway make them).\n"
                  "bare SQL: UPDATE ... FOR UPDATE SKIP LOCKED "
                  "LIMIT 1 + UPDATE ... SET state = 'done', one transaction each.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
