"""Retry pick-up: how long after its `not_before` a retried phase is claimed again.

    python bench/retry_latency.py [--runs 20] [--together 1] [--database-url URL]

Set-up as bench/worker_latency.py: a database of its own, `control-room serve` in a process
of its own, one `control-room worker --kinds python --concurrency 2` process. Each run has one
python phase (`retry_latency:fail_first`, this file) that fails on its first attempt (an
unknown, so retryable, error) and succeeds on its second, with `retry_backoff_seconds: 1`
(so a not_before 1-2 s after the failure). `--together` runs are created at once, the next
batch once they have all succeeded; the worker has a free slot when each retry becomes due.

Reported, per retried phase, from the events' payloads and `recorded_at` (the database's
clock): PHASE_RETRY_SCHEDULED's `not_before` -> the second PHASE_CLAIMED (the pick-up delay
the issue is about), and PHASE_FAILED -> the second PHASE_CLAIMED.

Measured on this kind of machine (2 cores, loaded), `--runs 10`, not_before -> claimed again:
before (waiting claims polled every claim_poll_seconds = 1 s) p50 0.23 s, p90 0.49 s, max
0.50 s; after (they sleep until ops_private.claim_due_at) p50 0.01 s, p90 0.01 s, max 0.02 s.
"""

from __future__ import annotations

import argparse
import contextlib
import secrets
import shutil
import statistics
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

from common import own_database  # bench/common.py (run as python bench/<script>.py)
from rich.console import Console
from rich.table import Table
from worker_latency import Rpc, gateway, percentile, worker

from control_room.db.migrate import migrate
from control_room.gateway.auth import mint_token
from control_room.settings import default_migrations_dir

ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
BOUND_S = 60.0
console = Console(width=130)


def fail_first(ctx: Any) -> dict[str, Any]:
    """Fails on attempt 1 (retryable), succeeds after."""
    if ctx.attempt == 1:
        raise RuntimeError("first attempt fails")
    return {}


def ts(value: str) -> float:
    return datetime.fromisoformat(value).timestamp()


def batch(dev: Rpc, viewer: Rpc, workspace_id: str, n: int) -> list[tuple[float, float]]:
    spec = [{"name": "f", "kind": "python", "depends_on": [], "max_attempts": 2,
             "retry_backoff_seconds": 1, "params": {"entrypoint": "retry_latency:fail_first"}}]
    runs = [dev("create_run", {"workspace_id": workspace_id, "spec_slug": "retry",
                               "git_sha": "0123abc", "phases": spec,
                               "idempotency_key": str(uuid.uuid4())})["id"] for _ in range(n)]
    samples = []
    deadline = time.monotonic() + BOUND_S
    for run_id in runs:
        while True:
            if time.monotonic() > deadline:
                raise RuntimeError(f"run {run_id} did not succeed in {BOUND_S} s")
            events = viewer("list_events", {"run_id": run_id, "after": 0, "limit": 1000})[
                "events"]
            types = [e["type"] for e in events]
            if "RUN_FAILED" in types:
                raise RuntimeError(f"run {run_id} failed: {types}")
            if "RUN_SUCCEEDED" in types:
                break
            time.sleep(0.05)
        scheduled = next(e for e in events if e["type"] == "PHASE_RETRY_SCHEDULED")
        failed = next(e for e in events if e["type"] == "PHASE_FAILED")
        claimed = [e for e in events if e["type"] == "PHASE_CLAIMED"][1]
        samples.append((ts(claimed["recorded_at"]) - ts(scheduled["payload"]["not_before"]),
                        ts(claimed["recorded_at"]) - ts(failed["recorded_at"])))
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--together", type=int, default=1)
    parser.add_argument("--database-url")
    args = parser.parse_args()

    secret = secrets.token_urlsafe(32)
    admin, dev, viewer, executor = (str(uuid.uuid4()) for _ in range(4))
    samples: list[tuple[float, float]] = []
    with contextlib.ExitStack() as stack:
        tmp = Path(tempfile.mkdtemp(prefix="bench_retry_latency_"))
        stack.callback(shutil.rmtree, tmp, True)
        url = args.database_url or stack.enter_context(
            own_database(ADMIN_URL, "bench_retry_latency"))
        migrate(url, default_migrations_dir())
        base = stack.enter_context(gateway(url, secret, tmp / "gateway.log"))

        def rpc(sub: str) -> Rpc:
            client = Rpc(base, mint_token(secret, role="authenticated", sub=sub,
                                          ttl_seconds=3600))
            stack.callback(client.close)
            return client

        as_admin, as_dev, as_viewer = rpc(admin), rpc(dev), rpc(viewer)
        workspace = as_admin("create_workspace", {"slug": f"retry-{secrets.token_hex(3)}",
                                                  "name": "retry", "env": "dev"})["id"]
        service = Rpc(base, mint_token(secret, role="service_role", ttl_seconds=3600))
        stack.callback(service.close)
        for sub, role in ((dev, "developer"), (viewer, "viewer"), (executor, "executor")):
            service("add_member", {"workspace_id": workspace, "principal_id": sub,
                                    "role": role})
        token = mint_token(secret, role="authenticated", sub=executor, ttl_seconds=3600,
                           workspaces=[workspace])
        stack.enter_context(worker(f"{base}/rest/v1", token, tmp / "worker", tmp / "worker.log",
                                   concurrency=2))
        batch(as_dev, as_viewer, workspace, 1)                  # warm-up
        while len(samples) < args.runs:
            samples += batch(as_dev, as_viewer, workspace, min(args.together,
                                                                args.runs - len(samples)))

    table = Table(title=f"Retry pick-up: {args.runs} phases failing once "
                        f"(retry_backoff_seconds 1), {args.together} at a time, 1 worker "
                        f"with 2 slots")
    table.add_column("measure")
    for column in ("p50 s", "p90 s", "mean s", "min s", "max s"):
        table.add_column(column, justify="right")
    for label, values in (("not_before -> claimed again", [s[0] for s in samples]),
                          ("PHASE_FAILED -> claimed again", [s[1] for s in samples])):
        table.add_row(label, f"{percentile(values, 50):.2f}", f"{percentile(values, 90):.2f}",
                      f"{statistics.fmean(values):.2f}", f"{min(values):.2f}",
                      f"{max(values):.2f}")
    console.print(table)


if __name__ == "__main__":
    main()
