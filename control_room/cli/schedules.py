"""`control-room schedules`: cron and interval schedules of jobs and their ticks, and
`control-room scheduler`, the process that fires due ticks (docs/schedules.md, docs/cli.md).

Both speak the contract over HTTP only (`ContractClient`). The scheduler calls
`run_due_schedules` every `--interval`; any number of schedulers can run at once (a tick
fires once, whoever claims it).
"""

from __future__ import annotations

import json
import re
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

app = new_app("Schedules of jobs: create, list, show, enable, disable, delete, ticks.")
scheduler_app = new_app("The scheduler.")

Name = Annotated[str, typer.Argument(help="The schedule's name (1-63 lower-case letters, "
                                          "digits, _ or -).", show_default=False)]
DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")


def parse_duration(option: str, text: str) -> float:
    """Seconds of `15s`, `2m`, `1h`, `500ms` or a plain number of seconds."""
    found = DURATION.match(text)
    if found is None:
        raise BadInput(f"{option} must be a duration such as 15s, 2m, 1h or 500ms, not {text!r}")
    value = float(found.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, None: 1}[
        found.group(2)]
    if value <= 0:
        raise BadInput(f"{option} must be positive, not {text!r}")
    return value


def _job_params(detail: Any, given: dict[str, str], job: str) -> dict[str, Any]:
    """`--param` texts as the types the job's latest version declares (as `runs create
    --job` coerces them), every unknown, malformed or missing required param named."""
    from control_room.specs import SpecError
    from control_room.specs.jobs import coerce_params

    latest = detail.latest
    if latest is None:
        raise BadInput(f"job {job} has no version: register it (`control-room jobs register`)")
    declared = {name: p.model_dump() for name, p in latest.params.items()}
    try:
        return dict(coerce_params(declared, given, job=job))
    except SpecError as exc:
        raise BadInput("; ".join(str(issue) for issue in exc.issues)) from None


def _print_schedule(s: Any) -> None:
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    table.add_row("name", s.name)
    table.add_row("job", s.job)
    table.add_row("when", _when_text(s))
    table.add_row("enabled", "yes" if s.enabled else "no")
    table.add_row("catchup", f"{s.catchup} (max {s.catchup_max})")
    table.add_row("overlap", f"{s.overlap} (max concurrent {s.max_concurrent})")
    if s.params:
        table.add_row("params", json.dumps(s.params, sort_keys=True))
    if s.description:
        table.add_row("description", s.description)
    table.add_row("next tick", when(s.next_tick_at))
    table.add_row("last tick", when(s.last_tick_at))
    upcoming = getattr(s, "upcoming", ())
    if upcoming:
        table.add_row("upcoming", ", ".join(when(t) for t in upcoming))
    out.print(table)


def _when_text(s: Any) -> str:
    if s.cron is not None:
        return f"cron {s.cron} ({s.timezone})"
    return f"every {s.interval_seconds}s"


@app.command("create")
def create_command(
    name: Name,
    job: Annotated[str, typer.Option("--job", help="The job's slug (`control-room jobs list`).",
                                     show_default=False)],
    cron: Annotated[str | None, typer.Option(
        "--cron", help="5 fields: minute hour day-of-month month day-of-week, e.g. "
                       "'*/5 * * * *' (or @hourly, @daily, ...).")] = None,
    timezone: Annotated[str, typer.Option(
        "--timezone", help="The IANA time zone the cron is read in, e.g. Europe/Berlin.")] = "UTC",
    every: Annotated[str | None, typer.Option(
        "--every", help="An interval instead of a cron: 30s, 5m, 1h.")] = None,
    param: Annotated[list[str] | None, typer.Option(
        "--param", help="NAME=VALUE: a param of the job for every run (repeatable).")] = None,
    catchup: Annotated[str, typer.Option(
        "--catchup", help="Missed ticks after downtime: skip, latest or all.")] = "latest",
    catchup_max: Annotated[int, typer.Option(
        "--catchup-max", min=1, max=1000, help="With --catchup all: at most this many.")] = 10,
    max_concurrent: Annotated[int, typer.Option(
        "--max-concurrent", min=1, max=100,
        help="Runs of this schedule queued or running at once.")] = 1,
    overlap: Annotated[str, typer.Option(
        "--overlap", help="A tick while --max-concurrent runs are active: skip, queue or "
                          "cancel_previous.")] = "skip",
    disabled: Annotated[bool, typer.Option("--disabled", help="Create it disabled.")] = False,
    description: Annotated[str | None, typer.Option("--description")] = None,
    workspace: Workspace = None,
    gateway_url: Gateway = None,
    token: Token = None,
    state_dir: StateDir = None,
    as_json: JsonOut = False,
) -> None:
    """Schedule a job (developer or admin): `--cron` in `--timezone`, or `--every`."""
    with guard():
        if (cron is None) == (every is None):
            raise BadInput("give either --cron or --every")
        if catchup not in ("skip", "latest", "all"):
            raise BadInput(f"--catchup must be skip, latest or all, not {catchup!r}")
        if overlap not in ("skip", "queue", "cancel_previous"):
            raise BadInput(f"--overlap must be skip, queue or cancel_previous, not {overlap!r}")
        seconds = None if every is None else parse_duration("--every", every)
        if seconds is not None and seconds != int(seconds):
            raise BadInput("--every must be a whole number of seconds")
        given = pairs("--param", param)
        with gateway(gateway_url, token, workspace, state_dir) as target:
            ws = target.workspace_id()
            values = _job_params(target.client.get_job(ws, job), given, job)
            created = target.client.create_schedule(
                ws, name, job, cron=cron, timezone=timezone if cron else None,
                interval_seconds=None if seconds is None else int(seconds),
                params=values, enabled=not disabled,
                catchup=catchup,  # type: ignore[arg-type]
                catchup_max=catchup_max, max_concurrent=max_concurrent,
                overlap=overlap,  # type: ignore[arg-type]
                description=description)
        if as_json:
            out.print_json(data=dump(created))
        else:
            out.print(f"schedule {created.name} created: {_when_text(created)}, next tick "
                      f"{when(created.next_tick_at)}", markup=False)


@app.command("list")
def list_command(
    job: Annotated[str | None, typer.Option("--job", help="Only this job's.")] = None,
    workspace: Workspace = None,
    gateway_url: Gateway = None,
    token: Token = None,
    state_dir: StateDir = None,
    as_json: JsonOut = False,
) -> None:
    """The workspace's schedules (any member), with their next ticks."""
    with guard(), gateway(gateway_url, token, workspace, state_dir) as target:
        found = target.client.list_schedules(target.workspace_id(), job)
    if as_json:
        out.print_json(data=dump(found))
        return
    if not found:
        out.print("No schedules.")
        return
    table = Table("name", "job", "when", "enabled", "catchup", "overlap", "next tick",
                  "last tick")
    for s in found:
        table.add_row(s.name, s.job, _when_text(s), "yes" if s.enabled else "no", s.catchup,
                      s.overlap, when(s.next_tick_at), when(s.last_tick_at))
    out.print(table)


@app.command("show")
def show_command(
    name: Name,
    workspace: Workspace = None,
    gateway_url: Gateway = None,
    token: Token = None,
    state_dir: StateDir = None,
    as_json: JsonOut = False,
) -> None:
    """One schedule and its next fire times."""
    with guard(), gateway(gateway_url, token, workspace, state_dir) as target:
        found = target.client.get_schedule(target.workspace_id(), name)
    if as_json:
        out.print_json(data=dump(found))
    else:
        _print_schedule(found)


def _set_enabled(name: str, enabled: bool, workspace: str | None, gateway_url: str | None,
                 token: str | None, state_dir: Any, as_json: bool) -> None:
    with guard(), gateway(gateway_url, token, workspace, state_dir) as target:
        changed = target.client.update_schedule(target.workspace_id(), name, enabled=enabled)
    if as_json:
        out.print_json(data=dump(changed))
    else:
        out.print(f"schedule {changed.name} {'enabled' if enabled else 'disabled'}"
                  + (f": next tick {when(changed.next_tick_at)}" if enabled else ""),
                  markup=False)


@app.command("enable")
def enable_command(name: Name, workspace: Workspace = None, gateway_url: Gateway = None,
                   token: Token = None, state_dir: StateDir = None,
                   as_json: JsonOut = False) -> None:
    """Enable a schedule from now (the ticks it missed while disabled are not caught up)."""
    _set_enabled(name, True, workspace, gateway_url, token, state_dir, as_json)


@app.command("disable")
def disable_command(name: Name, workspace: Workspace = None, gateway_url: Gateway = None,
                    token: Token = None, state_dir: StateDir = None,
                    as_json: JsonOut = False) -> None:
    """Disable a schedule: no tick fires until it is enabled."""
    _set_enabled(name, False, workspace, gateway_url, token, state_dir, as_json)


@app.command("delete")
def delete_command(name: Name, workspace: Workspace = None, gateway_url: Gateway = None,
                   token: Token = None, state_dir: StateDir = None,
                   as_json: JsonOut = False) -> None:
    """Delete a schedule and its ticks (developer or admin); the runs it made stay."""
    with guard(), gateway(gateway_url, token, workspace, state_dir) as target:
        gone = target.client.delete_schedule(target.workspace_id(), name)
    if as_json:
        out.print_json(data=dump(gone))
    else:
        out.print(f"schedule {gone.name} deleted", markup=False)


@app.command("ticks")
def ticks_command(
    name: Name,
    state: Annotated[str | None, typer.Option(
        "--state", help="Only created, skipped or failed ticks.")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=1000)] = 20,
    workspace: Workspace = None,
    gateway_url: Gateway = None,
    token: Token = None,
    state_dir: StateDir = None,
    as_json: JsonOut = False,
) -> None:
    """A schedule's ticks, newest first: created (its run), skipped (why), failed (the error)."""
    with guard():
        if state is not None and state not in ("created", "skipped", "failed"):
            raise BadInput(f"--state must be created, skipped or failed, not {state!r}")
        with gateway(gateway_url, token, workspace, state_dir) as target:
            page = target.client.list_schedule_ticks(
                target.workspace_id(), name, state=state,  # type: ignore[arg-type]
                limit=limit)
    if as_json:
        out.print_json(data=dump(page))
        return
    if not page.ticks:
        out.print("No ticks.")
        return
    table = Table("scheduled for", "state", "run", "reason")
    for t in page.ticks:
        table.add_row(when(t.scheduled_for), t.state, t.run_id or "-", t.reason or "")
    out.print(table)


@scheduler_app.command("scheduler")
def scheduler_command(
    interval: Annotated[str, typer.Option(
        "--interval", help="How often to look for due ticks: 15s, 1m, 500ms.")] = "15s",
    workspace_id: Annotated[str | None, typer.Option(
        "--workspace-id", help="Fire only this workspace's schedules (default: every one "
                               "the token may fire).")] = None,
    limit: Annotated[int, typer.Option(
        "--limit", min=1, max=1000, help="Schedules claimed per call.")] = 100,
    once: Annotated[bool, typer.Option("--once", help="One call, then exit.")] = False,
    slos: Annotated[bool, typer.Option(
        "--slos/--no-slos", help="After each round, compare the jobs' freshness with their "
                                 "SLOs (evaluate_slos: a breach raises slo_breached).")] = True,
    gateway_url: Gateway = None,
    token: Token = None,
    state_dir: StateDir = None,
) -> None:
    """Fire due schedule ticks: call `run_due_schedules` every `--interval`, then
    `evaluate_slos` (freshness SLOs; `--no-slos` leaves them to another scheduler).

    The token is a service_role token (every workspace's schedules; `control-room up` starts
    one scheduler with one) or a developer's or admin's (its workspaces'), from `--token` /
    CONTROL_ROOM_TOKEN, else the local stack's operator token. Several schedulers may run at
    once: a tick fires once. SIGTERM or Ctrl-C stops after the call under way.
    """
    import logging
    import threading

    from control_room.contract.client import DueResult, Forbidden, Unauthorized
    from control_room.contract.models import SloEvaluation
    from control_room.scheduler import Scheduler

    def report(result: DueResult) -> None:
        for t in result.ticks:
            detail = t.run_id if t.state == "created" else (t.reason or "")
            err.print(f"tick {t.schedule or t.schedule_id} {t.scheduled_for.isoformat()}: "
                      f"{t.state} {detail}", markup=False)

    def slo_report(result: SloEvaluation) -> None:
        for change in result.changes:
            err.print(f"slo {change.job}: {change.state} ({change.lag_seconds:.0f} s behind)",
                      markup=False)

    with guard():
        seconds = parse_duration("--interval", interval)
        with gateway(gateway_url, token, None, state_dir) as target:
            logging.basicConfig(level=logging.INFO,
                                format="%(asctime)s %(levelname)s %(message)s")
            logging.getLogger("httpx").setLevel(logging.WARNING)
            scheduler = Scheduler(target.client, interval=seconds, workspace_id=workspace_id,
                                  limit=limit, report=report, slos=slos,
                                  slo_report=slo_report)
            if once:
                result = scheduler.tick()
                out.print(f"{result.schedules} schedule(s) due: {result.created} created, "
                          f"{result.skipped} skipped, {result.failed} failed", markup=False)
                return
            stop = threading.Event()

            def _stop(signum: int, frame: Any) -> None:
                err.print(f"{signal.Signals(signum).name}: stopping ...", markup=False)
                stop.set()

            previous = {sig: signal.signal(sig, _stop) for sig in (signal.SIGINT, signal.SIGTERM)}
            err.print(f"Scheduler: every {seconds:g}s against {target.url}", markup=False)
            try:
                stats = scheduler.run(stop)
            except (Unauthorized, Forbidden) as exc:
                raise BadInput(f"run_due_schedules: {exc.message} ({exc.code})") from None
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)
        err.print(f"Scheduler stopped: {stats.calls} call(s), {stats.created} run(s) created, "
                  f"{stats.skipped} skipped, {stats.failed} failed, "
                  f"{stats.slo_breaches} SLO breach(es)", markup=False)
