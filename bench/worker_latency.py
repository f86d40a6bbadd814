"""Worker benchmark: enqueue -> PHASE_STARTED latency through the gateway and one idle worker.

    python bench/worker_latency.py [--runs 100] [--warmup 5] [--database-url URL]

Set-up: a database of its own on 127.0.0.1:5432 (created, migrated, dropped at the end; with
--database-url, that database is migrated and left with what the benchmark made there);
`control-room serve` in a process of its own (uvicorn, CONTROL_ROOM_JWT_SECRET set); one
`control-room worker --kinds python --concurrency 1` process, idle and waiting for work on the
gateway (`Prefer: wait`, woken by the gateway's LISTEN on queued phases). Each run has one
python phase whose entrypoint (`worker_latency:noop`, this file) returns `{}` at once.

Measurement: `--runs` one-phase runs, created one at a time over HTTP (`create_run` as a
developer); each is waited for (its run succeeded) before the next is created, so the worker is
idle at every enqueue. t0 is the wall clock just before the `create_run` request. Reported:
- enqueue -> PHASE_STARTED (recorded_at): the event's `recorded_at` (the database's clock, when
  the worker's first event batch of the attempt was appended) minus t0. Same host, same clock;
- enqueue -> PHASE_STARTED (client sees it): when the benchmark's own `list_events` polling
  (every 5 ms, from the first event after the run's creation) first returns the event, minus
  t0: the above plus up to one polling interval and a request;
- enqueue -> PHASE_CLAIMED (recorded_at) and PHASE_CLAIMED -> PHASE_STARTED (both
  recorded_at), to show where the time goes; and enqueue -> RUN_SUCCEEDED (recorded_at).
The first `--warmup` runs are not counted (the worker's first spawn imports everything).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from common import own_database  # bench/common.py (run as python bench/<script>.py)
from rich.console import Console
from rich.table import Table

from control_room.db.migrate import migrate
from control_room.gateway.auth import mint_token
from control_room.settings import default_migrations_dir

ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
POLL_S = 0.005
BOUND_S = 60.0

console = Console(width=130)


def noop(ctx: Any) -> dict[str, Any]:
    """The benchmark's phase: nothing at all."""
    return {}


# --------------------------------------------------------------------------------- plumbing

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def stop_process(proc: subprocess.Popen[bytes], sig_term_wait: float = 20) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=sig_term_wait)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def gateway(url: str, secret: str, log: Path) -> Iterator[str]:
    """`control-room serve` over `url` in a process of its own; yields its base URL."""
    port = free_port()
    env = dict(os.environ, CONTROL_ROOM_JWT_SECRET=secret)
    command = [sys.executable, "-m", "control_room", "serve", "--database-url", url,
               "--host", "127.0.0.1", "--port", str(port)]
    with log.open("wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + BOUND_S
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the gateway did not start; its log:\n{log.read_text()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{base}/health", timeout=5).status_code == 200:
                    break
            time.sleep(0.1)
        yield base
    finally:
        stop_process(proc)


@contextlib.contextmanager
def worker(rest_url: str, token: str, state: Path, log: Path,
           concurrency: int = 1) -> Iterator[int]:
    """One `control-room worker --kinds python` process; yields its pid."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(BENCH_DIR), str(REPO)]),
               CONTROL_ROOM_GATEWAY_URL=rest_url, CONTROL_ROOM_TOKEN=token,
               CONTROL_ROOM_STATE_DIR=str(state),
               CONTROL_ROOM_ARTIFACTS_URL=(state / "blobs").as_uri())
    command = [sys.executable, "-m", "control_room.cli", "worker", "--kinds", "python",
               "--concurrency", str(concurrency), "--grace-seconds", "1"]
    with log.open("wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env,
                                cwd=REPO)
    try:
        time.sleep(0.5)
        if proc.poll() is not None:
            raise RuntimeError(f"the worker did not start; its log:\n{log.read_text()}")
        yield proc.pid
    finally:
        stop_process(proc)


class Rpc:
    """`POST /rest/v1/rpc/<fn>` as one principal, on one keep-alive connection."""

    def __init__(self, base: str, token: str) -> None:
        self.http = httpx.Client(base_url=f"{base}/rest/v1", timeout=60, headers={
            "Authorization": f"Bearer {token}", "Content-Profile": "ops"})

    def __call__(self, fn: str, args: dict[str, Any]) -> Any:
        response = self.http.post(f"/rpc/{fn}", json=args)
        if response.status_code >= 400:
            raise RuntimeError(f"{fn}: {response.status_code} {response.text}")
        return response.json()

    def close(self) -> None:
        self.http.close()


# ------------------------------------------------------------------------------ measurement

@dataclass
class Sample:
    started_recorded: float     # enqueue -> PHASE_STARTED.recorded_at
    started_seen: float         # enqueue -> the client's polling returned PHASE_STARTED
    claimed_recorded: float     # enqueue -> PHASE_CLAIMED.recorded_at
    claim_to_start: float       # PHASE_CLAIMED.recorded_at -> PHASE_STARTED.recorded_at
    succeeded_recorded: float   # enqueue -> RUN_SUCCEEDED.recorded_at


def recorded(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(event["recorded_at"]).timestamp()


def one_run(dev: Rpc, viewer: Rpc, workspace_id: str) -> Sample:
    spec = [{"name": "noop", "kind": "python", "depends_on": [],
             "params": {"entrypoint": "worker_latency:noop"}}]
    t0 = time.time()
    run = dev("create_run", {"workspace_id": workspace_id, "spec_slug": "latency",
                             "git_sha": "0123abc", "phases": spec,
                             "idempotency_key": str(uuid.uuid4())})
    run_id = run["id"]
    events: dict[str, dict[str, Any]] = {}
    seen: float | None = None
    after = 0
    deadline = time.monotonic() + BOUND_S
    while "RUN_SUCCEEDED" not in events:
        if time.monotonic() > deadline:
            raise RuntimeError(f"run {run_id} did not succeed in {BOUND_S} s: {sorted(events)}")
        page = viewer("list_events", {"run_id": run_id, "after": after, "limit": 1000})
        now = time.time()
        for event in page["events"]:
            events.setdefault(event["type"], event)
            if event["type"] == "PHASE_STARTED" and seen is None:
                seen = now
            if event["type"] in ("PHASE_FAILED", "RUN_FAILED"):
                raise RuntimeError(f"run {run_id} failed: {event}")
        after = page["next_after"]
        if "RUN_SUCCEEDED" not in events:
            time.sleep(POLL_S)
    assert seen is not None
    claimed, started = recorded(events["PHASE_CLAIMED"]), recorded(events["PHASE_STARTED"])
    return Sample(started_recorded=started - t0, started_seen=seen - t0,
                  claimed_recorded=claimed - t0, claim_to_start=started - claimed,
                  succeeded_recorded=recorded(events["RUN_SUCCEEDED"]) - t0)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1))))
    return ordered[rank]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--database-url")
    args = parser.parse_args()

    secret = secrets.token_urlsafe(32)
    admin, dev, viewer, executor = (str(uuid.uuid4()) for _ in range(4))
    samples: list[Sample] = []
    with contextlib.ExitStack() as stack:
        tmp = Path(tempfile.mkdtemp(prefix="bench_worker_latency_"))
        stack.callback(shutil.rmtree, tmp, True)
        url = args.database_url or stack.enter_context(
            own_database(ADMIN_URL, "bench_worker_latency"))
        migrate(url, default_migrations_dir())
        base = stack.enter_context(gateway(url, secret, tmp / "gateway.log"))

        def rpc(sub: str) -> Rpc:
            client = Rpc(base, mint_token(secret, role="authenticated", sub=sub,
                                          ttl_seconds=3600))
            stack.callback(client.close)
            return client

        as_admin, as_dev, as_viewer = rpc(admin), rpc(dev), rpc(viewer)
        workspace = as_admin("create_workspace", {"slug": f"lat-{secrets.token_hex(3)}",
                                                  "name": "latency", "env": "dev"})["id"]
        operator = Rpc(base, mint_token(secret, role="service_role", ttl_seconds=3600))
        stack.callback(operator.close)
        # principals the workspace does not own are added by an operator (docs/security.md)
        for sub, role in ((dev, "developer"), (viewer, "viewer"), (executor, "executor")):
            operator("add_member", {"workspace_id": workspace, "principal_id": sub,
                                    "role": role})
        token = mint_token(secret, role="authenticated", sub=executor, ttl_seconds=3600,
                           workspaces=[workspace])
        stack.enter_context(worker(f"{base}/rest/v1", token, tmp / "worker", tmp / "worker.log"))

        for _ in range(args.warmup):
            one_run(as_dev, as_viewer, workspace)
        for _ in range(args.runs):
            samples.append(one_run(as_dev, as_viewer, workspace))
            time.sleep(0.05)    # the worker is back in its waiting claim

    table = Table(title=f"Enqueue -> PHASE_STARTED: {args.runs} one-phase runs, one at a time, "
                        f"1 idle worker (python kind), {os.cpu_count()} CPUs")
    table.add_column("measure")
    for column in ("p50 ms", "p99 ms", "mean ms", "min ms", "max ms"):
        table.add_column(column, justify="right")
    rows = [
        ("enqueue -> PHASE_STARTED (recorded_at)", [s.started_recorded for s in samples]),
        ("enqueue -> PHASE_STARTED (client sees it, 5 ms polling)",
         [s.started_seen for s in samples]),
        ("  of which enqueue -> PHASE_CLAIMED (recorded_at)",
         [s.claimed_recorded for s in samples]),
        ("  of which PHASE_CLAIMED -> PHASE_STARTED (recorded_at)",
         [s.claim_to_start for s in samples]),
        ("enqueue -> RUN_SUCCEEDED (recorded_at)", [s.succeeded_recorded for s in samples]),
    ]
    for label, values in rows:
        ms = [v * 1000 for v in values]
        table.add_row(label, f"{percentile(ms, 50):.1f}", f"{percentile(ms, 99):.1f}",
                      f"{statistics.fmean(ms):.1f}", f"{min(ms):.1f}", f"{max(ms):.1f}")
    console.print(table)
    console.print(
        "enqueue = the wall clock just before the create_run request (over HTTP, as a "
        "developer); recorded_at = the database's clock when the event was appended (same "
        f"host). Warm-up runs not counted: {args.warmup}.")


if __name__ == "__main__":
    main()
