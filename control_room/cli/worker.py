"""`control-room worker`: claim and run phases (docs/kinds.md, docs/settings.md)."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Annotated, Any

from pydantic import SecretStr

from control_room.cli.common import (
    BadInput,
    StateDir,
    check_http_url,
    defaults,
    err,
    guard,
    load_local_stack,
    new_app,
    option_for,
)
from control_room.settings import load_settings
from executor.secrets import SecretPolicy
from executor.settings import WorkerSettings

app = new_app("The worker.")

W = WorkerSettings
WORKER = defaults(W)
Kinds = Annotated[str | None, option_for(W, "kinds", "--kinds")]
Concurrency = Annotated[int, option_for(W, "concurrency", "--concurrency")]
LeaseSeconds = Annotated[int, option_for(W, "lease_seconds", "--lease-seconds")]
Artifacts = Annotated[str | None, option_for(W, "artifacts_url", "--artifacts")]
WorkDir = Annotated[Path | None, option_for(W, "work_dir", "--work-dir", file_okay=False)]
WorkspaceId = Annotated[str | None, option_for(W, "workspace_id", "--workspace-id")]
GraceSeconds = Annotated[float, option_for(W, "grace_seconds", "--grace-seconds")]
Repo = Annotated[str | None, option_for(W, "repo", "--repo")]


def check_kinds(kinds: str | None) -> list[str]:
    """The kind names of `--kinds` (default: every registered kind whose extra is
    installed), all known and installed: a kind whose extra is missing names the extra."""
    from executor.kinds.registry import KINDS, available_kinds, missing_extra

    names = [k.strip() for k in (kinds or ",".join(available_kinds())).split(",")
             if k.strip()]
    unknown = sorted(set(names) - set(KINDS))
    if not names or unknown:
        raise BadInput(f"--kinds: unknown kind(s) {', '.join(unknown) or '(none given)'} "
                       f"(this worker has: {', '.join(sorted(KINDS))})")
    for name in names:
        missing = missing_extra(name)
        if missing is not None:
            raise BadInput(f"--kinds: {missing.message}")
    return names


@app.command("worker")
def worker_command(
    gateway_url: Annotated[str | None, option_for(W, "gateway_url", "--gateway")] = None,
    token: Annotated[str | None, option_for(W, "token", "--token")] = None,
    kinds: Kinds = None,
    concurrency: Concurrency = WORKER.concurrency,
    lease_seconds: LeaseSeconds = WORKER.lease_seconds,
    artifacts: Artifacts = None,
    work_dir: WorkDir = None,
    workspace: WorkspaceId = None,
    grace_seconds: GraceSeconds = WORKER.grace_seconds,
    repo: Repo = None,
    state_dir: StateDir = None,
) -> None:
    """Run phases: claim, heartbeat, run the kind, register artifacts, complete.

    SIGTERM or Ctrl-C stops gracefully: no more claims, running phases get --grace-seconds
    to finish, the rest are given back to the queue. Without `--gateway` and `--token`, the local
    stack's gateway and executor token (`control-room up`).
    """
    import logging
    import threading

    from control_room.contract.client import ContractClient
    from control_room.secretfile import ensure_private_dir
    from executor.artifacts import artifact_store_from_url
    from executor.worker import Worker

    with guard():
        settings = load_settings(state_dir=state_dir)
        if not (gateway_url and token):
            stack = load_local_stack(state_dir)
            if stack is not None:
                gateway_url = gateway_url or stack.gateway_url
                if not token and stack.executor_token is not None:
                    token = stack.executor_token.get_secret_value()
        if not token:
            raise BadInput("--token (or CONTROL_ROOM_TOKEN) is required: an executor token")
        if not gateway_url:
            raise BadInput("--gateway (or CONTROL_ROOM_GATEWAY_URL) is required: the "
                           "contract's REST root, e.g. http://127.0.0.1:8787/rest/v1")
        check_http_url(gateway_url)
        worker_settings = WorkerSettings(
            gateway_url=gateway_url, token=SecretStr(token), kinds=kinds, concurrency=concurrency,
            lease_seconds=lease_seconds, artifacts_url=artifacts, work_dir=work_dir,
            workspace_id=workspace, grace_seconds=grace_seconds, repo=repo)
        names = check_kinds(kinds)
        try:
            SecretPolicy.parse(worker_settings.secret_allow)
        except ValueError as exc:
            raise BadInput(f"CONTROL_ROOM_SECRET_ALLOW: {exc}") from None
        if not (artifacts and work_dir):
            # a default under the state directory: it is private (0700) like everywhere else
            ensure_private_dir(settings.state_dir)
        try:
            store = artifact_store_from_url(artifacts or str(settings.state_dir / "artifacts"))
        except ValueError as exc:
            raise BadInput(f"--artifacts: {exc}") from None
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
        logging.getLogger("httpx").setLevel(logging.WARNING)   # not a line per request
        stop = threading.Event()

        def _stop(signum: int, frame: Any) -> None:
            err.print(f"{signal.Signals(signum).name}: stopping gracefully ...", markup=False)
            stop.set()

        with ContractClient(gateway_url, token) as client:
            try:
                worker = Worker(client, kinds=names, concurrency=worker_settings.concurrency,
                                lease_seconds=worker_settings.lease_seconds, store=store,
                                work_dir=work_dir or settings.state_dir / "work",
                                workspace_id=workspace,
                                grace_seconds=worker_settings.grace_seconds, repo=repo,
                                python_spares=worker_settings.python_spares,
                                lake_root=worker_settings.lake_root,
                                secret_allow=worker_settings.secret_allow)
            except ValueError as exc:
                raise BadInput(f"--repo: {exc}") from None
            err.print(f"Worker {worker.name}: kinds {','.join(names)}, {concurrency} slot(s), "
                      f"claiming from {gateway_url}", markup=False)
            previous = {sig: signal.signal(sig, _stop) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                stats = worker.run(stop)
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)
        err.print(f"Worker stopped: {stats.claimed} claimed, {stats.succeeded} succeeded, "
                  f"{stats.failed} failed, {stats.abandoned} abandoned", markup=False)
