"""append_events throughput: events per second in batches, with de-duplication.

    python bench/events_throughput.py [--events N] [--batch B] [--connections 1,2]
                                      [--database-url URL]

Issue 17's figure: batches of `append_events` sustain >= 50,000 events/s with de-duplication.
Each connection appends to a run of its own (events of one run are numbered under its row lock,
so connections on one run would queue), N events in batches of B, each event as a worker sends
it (client-made event_id, type LOG, a level, a message, a small payload, a timestamp, the phase
with its lease token), each call one transaction as the gateway makes it (`call_as`). Then
the same batches again: every event a duplicate (a retried call), which must be dropped as
fast. Printed beside the target and the load average (the machine is shared: read it with the
load). Before the set-based append_events (20261208000100_append_events_batch.sql) the same
measurement gave 2,609 events/s (new) and 2,803 events/s (duplicates) on this machine kind.

Without --database-url it makes (and drops) a database on 127.0.0.1:5432, as the other
benchmarks do.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import psycopg
from common import own_database  # bench/common.py (run as python bench/<script>.py)
from rich.console import Console
from rich.table import Table

from control_room.db.migrate import migrate
from control_room.db.store import call_as
from control_room.settings import default_migrations_dir

ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
TARGET = 50_000


def batches(events: int, size: int, phase: str) -> list[list[dict[str, Any]]]:
    now = datetime.now(UTC).isoformat()
    out = []
    for start in range(0, events, size):
        out.append([{"event_id": str(uuid.uuid4()), "type": "LOG", "level": "info",
                     "message": f"processed chunk {i}", "payload": {"rows": i, "chunk": i},
                     "ts": now, "phase": phase}
                    for i in range(start, min(start + size, events))])
    return out


def setup(url: str, connections: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A workspace with an executor; one run per connection, its phase claimed."""
    with psycopg.connect(url, autocommit=True) as conn:
        ws = call_as(conn, "create_workspace", {"slug": f"ev-{uuid.uuid4().hex[:8]}",
                                                "name": "events"}, role="service_role")["id"]
        executor = str(uuid.uuid4())
        call_as(conn, "add_member", {"workspace_id": ws, "principal_id": executor,
                                     "role": "executor"}, role="service_role")
        who = {"role": "authenticated", "sub": executor, "claims": {"workspaces": [ws]}}
        claims = []
        for _ in range(connections):
            run = call_as(conn, "create_run", {"workspace_id": ws, "spec_slug": "events",
                                               "git_sha": "0123abc",
                                               "phases": [{"name": "load", "kind": "python"}]},
                          role="service_role")
            claims.append(call_as(conn, "claim_phase", {"run_id": run["id"],
                                                        "lease_seconds": 3600}, **who))
    return who, claims


def append_all(url: str, who: dict[str, Any], claim: dict[str, Any],
               work: list[list[dict[str, Any]]]) -> tuple[int, int, list[float]]:
    appended = duplicates = 0
    times: list[float] = []
    with psycopg.connect(url, autocommit=True) as conn:
        for batch in work:
            began = time.perf_counter()
            answer = call_as(conn, "append_events", {"run_id": claim["run_id"], "events": batch,
                                                     "lease_token": claim["lease_token"]}, **who)
            times.append(time.perf_counter() - began)
            appended += answer["appended"]
            duplicates += answer["duplicates"]
    return appended, duplicates, times


def measure(url: str, events: int, size: int, connections: int) -> dict[str, Any]:
    who, claims = setup(url, connections)
    work = [batches(events // connections, size, "load") for _ in claims]
    out: dict[str, Any] = {"connections": connections}
    for label in ("new", "duplicates"):
        began = time.perf_counter()
        with ThreadPoolExecutor(connections) as pool:
            results = list(pool.map(lambda cw: append_all(url, who, *cw), zip(claims, work,
                                                                              strict=True)))
        elapsed = time.perf_counter() - began
        stored = sum(r[0] for r in results)
        dropped = sum(r[1] for r in results)
        total = sum(len(batch) for per_run in work for batch in per_run)
        expected = (total, 0) if label == "new" else (0, total)
        assert (stored, dropped) == expected, (label, stored, dropped, expected)
        per_call = [t for r in results for t in r[2]]
        out[label] = {"events_per_s": (stored + dropped) / elapsed,
                      "call_p50_ms": statistics.median(per_call) * 1000}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--connections", default="1,2")
    parser.add_argument("--database-url")
    args = parser.parse_args()
    counts = [int(c) for c in args.connections.split(",")]
    console = Console()

    def run(url: str) -> list[dict[str, Any]]:
        migrate(url, default_migrations_dir())
        return [measure(url, args.events, args.batch, n) for n in counts]

    if args.database_url:
        results = run(args.database_url)
    else:
        with own_database(ADMIN_URL, "events_bench") as url:
            results = run(url)
    table = Table(title=f"append_events, {args.events:,} events in batches of {args.batch}")
    for column in ("connections", "new events/s", "p50 per call", "duplicates events/s",
                   "p50 per call ", "target"):
        table.add_column(column, justify="right")
    for r in results:
        table.add_row(str(r["connections"]), f"{r['new']['events_per_s']:,.0f}",
                      f"{r['new']['call_p50_ms']:.1f} ms",
                      f"{r['duplicates']['events_per_s']:,.0f}",
                      f"{r['duplicates']['call_p50_ms']:.1f} ms", f">= {TARGET:,}")
    console.print(table)
    load = os.getloadavg()
    console.print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on "
                  f"{os.cpu_count()} cores; before this change: 2,609 new / 2,803 duplicate "
                  "events/s (1 connection)")


if __name__ == "__main__":
    main()
