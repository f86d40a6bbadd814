"""`control-room sensors`: source-changed sensors of jobs (create, list, show, delete) and
`sensors evaluate`, the evaluator that runs beside the scheduler (docs/sensors.md).

Everything speaks the contract over HTTP (`ContractClient`). The evaluator also connects to
the sources, read-only, with the secrets its own CONTROL_ROOM_SECRET_ALLOW policy resolves.
"""

from __future__ import annotations

import json
import os
import signal
from typing import Annotated, Any

import typer
from rich.table import Table

from control_room.cli.common import (
    BadInput,
    Gateway,
    JsonOut,
    StateDir,
    Token,
    Workspace,
    err,
    gateway,
    guard,
    new_app,
    out,
    pairs,
    when,
)
from control_room.cli.display import dump
from control_room.cli.schedules import _job_params, parse_duration

app = new_app("Source-changed sensors of jobs: create, list, show, delete, evaluate.")

Name = Annotated[str, typer.Argument(help="The sensor's name (1-63 lower-case letters, "
                                          "digits, _ or -).", show_default=False)]


def _print_sensor(s: Any) -> None:
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    table.add_row("name", s.name)
    table.add_row("job", s.job)
    table.add_row("connection", s.connection)
    table.add_row("query", s.query)
    table.add_row("every", f"{s.interval_seconds}s")
    table.add_row("enabled", "yes" if s.enabled else "no")
    if s.params:
        table.add_row("params", json.dumps(s.params, sort_keys=True))
    table.add_row("cursor", s.cursor if s.cursor is not None else "-")
    table.add_row("evaluations", str(s.evaluations))
    table.add_row("last evaluated", when(s.last_evaluated_at))
    table.add_row("last moved", when(s.last_moved_at))
    table.add_row("last run", s.last_run_id or "-")
    table.add_row("next evaluation", when(s.next_evaluation_at))
    if s.last_error:
        table.add_row("last error", s.last_error)
    out.print(table)


@app.command("create")
def create_command(
    name: Name,
    job: Annotated[str, typer.Option("--job", help="The job's slug (`control-room jobs list`).",
                                     show_default=False)],
    connection: Annotated[str, typer.Option(
        "--connection", help="A postgres connection of the workspace (`control-room "
                             "connections list`).", show_default=False)],
    query: Annotated[str, typer.Option(
        "--query", help="One SELECT whose first column of the first row is the cursor, e.g. "
                        "'select max(write_date) from res_partner'.", show_default=False)],
    every: Annotated[str, typer.Option("--every", help="How often to evaluate it (at least "
                                                       "10s): 30s, 1m.")] = "60s",
    param: Annotated[list[str] | None, typer.Option(
        "--param", help="NAME=VALUE: a param of the job for every run (repeatable).")] = None,
    disabled: Annotated[bool, typer.Option("--disabled", help="Create it disabled.")] = False,
    workspace: Workspace = None,
    gateway_url: Gateway = None,
    token: Token = None,
    state_dir: StateDir = None,
    as_json: JsonOut = False,
) -> None:
    """Watch a source (developer or admin): a run of the job starts when the value moves."""
    with guard():
        seconds = parse_duration("--every", every)
        if seconds != int(seconds) or seconds < 10:
            raise BadInput("--every must be a whole number of seconds, at least 10s")
        given = pairs("--param", param)
        with gateway(gateway_url, token, workspace, state_dir) as target:
            ws = target.workspace_id()
            values = _job_params(target.client.get_job(ws, job), given, job)
            created = target.client.create_sensor(ws, name, job, connection, query,
                                                  params=values, interval_seconds=int(seconds),
                                                  enabled=not disabled)
        if as_json:
            out.print_json(data=dump(created))
        else:
            out.print(f"sensor {created.name} created: {created.connection} every "
                      f"{created.interval_seconds}s starts {created.job}", markup=False)


@app.command("list")
def list_command(
    job: Annotated[str | None, typer.Option("--job", help="Only this job's.")] = None,
    workspace: Workspace = None,
    gateway_url: Gateway = None,
    token: Token = None,
    state_dir: StateDir = None,
    as_json: JsonOut = False,
) -> None:
    """The workspace's sensors (any member), with their cursors."""
    with guard(), gateway(gateway_url, token, workspace, state_dir) as target:
        found = target.client.list_sensors(target.workspace_id(), job)
    if as_json:
        out.print_json(data=dump(found))
        return
    if not found:
        out.print("No sensors.")
        return
    table = Table("name", "job", "connection", "every", "cursor", "last evaluated",
                  "last error")
    for s in found:
        table.add_row(s.name, s.job, s.connection, f"{s.interval_seconds}s", s.cursor or "-",
                      when(s.last_evaluated_at), s.last_error or "")
    out.print(table)


@app.command("show")
def show_command(name: Name, workspace: Workspace = None, gateway_url: Gateway = None,
                 token: Token = None, state_dir: StateDir = None,
                 as_json: JsonOut = False) -> None:
    """One sensor: its query, cursor and last evaluation."""
    with guard(), gateway(gateway_url, token, workspace, state_dir) as target:
        found = target.client.get_sensor(target.workspace_id(), name)
    if as_json:
        out.print_json(data=dump(found))
    else:
        _print_sensor(found)


@app.command("delete")
def delete_command(name: Name, workspace: Workspace = None, gateway_url: Gateway = None,
                   token: Token = None, state_dir: StateDir = None,
                   as_json: JsonOut = False) -> None:
    """Delete a sensor (developer or admin); the runs it started stay."""
    with guard(), gateway(gateway_url, token, workspace, state_dir) as target:
        gone = target.client.delete_sensor(target.workspace_id(), name)
    if as_json:
        out.print_json(data=dump(gone))
    else:
        out.print(f"sensor {gone.name} deleted", markup=False)


@app.command("evaluate")
def evaluate_command(
    interval: Annotated[str, typer.Option(
        "--interval", help="How often to look for due sensors: 10s, 1m.")] = "10s",
    workspace_id: Annotated[str | None, typer.Option(
        "--workspace-id", help="Only this workspace's sensors (default: every one the token "
                               "may evaluate).")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=1000,
                                       help="Sensors claimed per call.")] = 20,
    once: Annotated[bool, typer.Option("--once", help="One call, then exit.")] = False,
    gateway_url: Gateway = None,
    token: Token = None,
    state_dir: StateDir = None,
) -> None:
    """Evaluate due sensors: claim them, run each query read-only on its source, report.

    Runs beside `control-room scheduler` (`up` starts one of each). The token is a
    service_role token (every workspace's sensors) or a developer's or admin's (its
    workspaces'). Secret references resolve under this process's CONTROL_ROOM_SECRET_ALLOW.
    Several evaluators may run at once: a sensor is claimed by one per interval.
    """
    import logging
    import threading

    from control_room.contract.client import Forbidden, Unauthorized
    from control_room.scheduler.sensors import SensorReport, evaluate_due_sensors, run_evaluator
    from executor.secrets import POLICY_VARIABLE, SecretPolicy

    def report(result: SensorReport) -> None:
        for o in result.outcomes:
            detail = o.run_id if o.outcome == "moved" else (o.error or "")
            err.print(f"sensor {o.name}: {o.outcome} {detail}".rstrip(), markup=False)

    with guard():
        seconds = parse_duration("--interval", interval)
        try:
            policy = SecretPolicy.parse(os.environ.get(POLICY_VARIABLE))
        except ValueError as exc:
            raise BadInput(str(exc)) from None
        with gateway(gateway_url, token, None, state_dir) as target:
            logging.basicConfig(level=logging.INFO,
                                format="%(asctime)s %(levelname)s %(message)s")
            logging.getLogger("httpx").setLevel(logging.WARNING)
            try:
                if once:
                    result = evaluate_due_sensors(target.client, policy=policy, limit=limit,
                                                  workspace_id=workspace_id)
                    report(result)
                    out.print(f"{result.claimed} sensor(s) due: {result.moved} moved, "
                              f"{result.unchanged} unchanged, {result.waiting} waiting, "
                              f"{result.errors} error(s)", markup=False)
                    return
                stop = threading.Event()

                def _stop(signum: int, frame: Any) -> None:
                    err.print(f"{signal.Signals(signum).name}: stopping ...", markup=False)
                    stop.set()

                previous = {sig: signal.signal(sig, _stop)
                            for sig in (signal.SIGINT, signal.SIGTERM)}
                err.print(f"Sensor evaluator: every {seconds:g}s against {target.url}",
                          markup=False)
                try:
                    calls = run_evaluator(target.client, stop, policy=policy, interval=seconds,
                                          limit=limit, workspace_id=workspace_id,
                                          on_report=report)
                finally:
                    for sig, handler in previous.items():
                        signal.signal(sig, handler)
            except (Unauthorized, Forbidden) as exc:
                raise BadInput(f"sensors: {exc.message} ({exc.code})") from None
        err.print(f"Sensor evaluator stopped after {calls} call(s)", markup=False)
