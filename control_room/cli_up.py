"""`control-room up`: the whole local stack in one process tree (and `demo`, built on it)."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Annotated, Any

import typer

from control_room.cli import (
    EXIT_FAILED,
    BadInput,
    DatabaseUrl,
    StateDir,
    _fail,
    _guard,
    app,
    err,
    out,
)
from control_room.localstack import LocalStack, LocalStackError
from control_room.settings import env_var, load_settings

Port = Annotated[int | None, typer.Option(
    "--port", envvar=env_var("port"), show_envvar=True,
    help="The gateway's port. Default: 8787")]
Workers = Annotated[int, typer.Option(
    "--workers", envvar="CONTROL_ROOM_UP_WORKERS", show_envvar=True, min=0, max=64,
    help="Worker processes to start.")]
Concurrency = Annotated[int, typer.Option(
    "--concurrency", envvar="CONTROL_ROOM_WORKER_CONCURRENCY", show_envvar=True, min=1,
    max=256, help="Phases each worker runs at once.")]
Repo = Annotated[Path | None, typer.Option(
    "--repo", envvar="CONTROL_ROOM_WORKER_REPO", show_envvar=True,
    help="Git repository the workers check a run's git_sha out of. Default: none (the "
         "workers' own code).")]


@app.command("up")
def up_command(
    port: Port = None,
    workers: Workers = 2,
    concurrency: Concurrency = 2,
    repo: Repo = None,
    database_url: DatabaseUrl = None,
    state_dir: StateDir = None,
) -> None:
    """Start the database, migrations, the gateway and local workers; Ctrl-C stops them all.

    Writes <state-dir>/stack.json so that `control-room runs ...` finds the stack without
    options. A second `up` reuses the state directory (database, lake, artifacts).
    """
    with _guard():
        settings = load_settings(port=port, database_url=database_url, state_dir=state_dir)
        if not settings.migrations_dir.is_dir():
            raise BadInput(f"migrations directory not found: {settings.migrations_dir}")
        stop = threading.Event()

        def _stop(signum: int, frame: Any) -> None:
            err.print(f"{signal.Signals(signum).name}: stopping the stack ...", markup=False)
            stop.set()

        previous = {sig: signal.signal(sig, _stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            with LocalStack(settings, workers=workers, concurrency=concurrency, repo=repo,
                            log=lambda line: err.print(line, markup=False)) as stack:
                assert stack.info is not None
                out.print(f"Control Room is up: gateway {stack.info.gateway_url}, workspace "
                          f"{stack.info.workspace_slug}, lake {stack.info.lake}", markup=False)
                out.print(f"State in {settings.state_dir} (stack.json, logs in log/). "
                          "Ctrl-C stops everything.", markup=False)
                stack.wait(stop)
        except LocalStackError as exc:
            _fail(str(exc), EXIT_FAILED)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        err.print("Stopped.", markup=False)
