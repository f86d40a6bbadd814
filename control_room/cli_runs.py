"""`control-room runs`: create runs from specs, list, show, watch, cancel and retry them.

Every command talks to the contract over HTTP (`control_room.contract.client`), like any
other client: `--gateway/--token/--workspace` (CONTROL_ROOM_GATEWAY_URL, CONTROL_ROOM_TOKEN,
CONTROL_ROOM_WORKSPACE), else the local stack that `control-room up` wrote. Bad input (a
spec that does not load, a param it does not declare, a malformed or unknown run id, a token
the gateway refuses) is one line per problem on stderr and exit 2; a refusal by the run's
state (cancelling a succeeded run) or an unreachable gateway, exit 1. `--json` prints only
JSON on stdout (the contract's answer), for scripts.
"""

from __future__ import annotations

import contextlib
import time
import urllib.parse
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from control_room.cli import (
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    BadInput,
    JsonOut,
    StateDir,
    _fail,
    _guard,
    app,
    err,
    out,
)
from control_room.contract.client import (
    Conflict,
    ContractClient,
    ContractError,
    Event,
    Forbidden,
    InvalidArgument,
    NotFound,
    Phase,
    RetryPolicy,
    Run,
    TransientError,
    Unauthorized,
)
from control_room.settings import load_settings
from control_room.specs import SpecError, load_spec
from control_room.stack import Stack, StackFileError, load_stack

runs_app = typer.Typer(help="Runs: create them from specs, list, show, watch, cancel, retry.",
                       no_args_is_help=True)
app.add_typer(runs_app, name="runs")

FINAL_STATES = frozenset({"succeeded", "failed", "cancelled"})
RUN_STATES = ("queued", "running", "succeeded", "failed", "cancelled")
# a CLI gives up on an unreachable gateway after seconds, not the worker's half minute
CLI_RETRY = RetryPolicy(attempts=3, initial=0.2, max_wait=1.0, total=5.0)
_STATE_STYLE = {"succeeded": "green", "failed": "red", "running": "cyan", "cancelled": "yellow",
                "queued": "blue", "waiting": "dim", "skipped": "dim"}

Gateway = Annotated[str | None, typer.Option(
    "--gateway", envvar="CONTROL_ROOM_GATEWAY_URL", show_envvar=True,
    help="The contract's REST root, e.g. http://127.0.0.1:8787/rest/v1. Default: the local "
         "stack's (`control-room up`).")]
Token = Annotated[str | None, typer.Option(
    "--token", envvar="CONTROL_ROOM_TOKEN", show_envvar=True,
    help="A developer's (or service) token (`control-room token create`). Default: the "
         "local stack's.")]
Workspace = Annotated[str | None, typer.Option(
    "--workspace", envvar="CONTROL_ROOM_WORKSPACE", show_envvar=True,
    help="The workspace's slug or id. Default: the local stack's, or the only workspace "
         "the token sees.")]
RunId = Annotated[str, typer.Argument(help="The run's id (a UUID).", show_default=False)]
Wait = Annotated[bool, typer.Option(
    "--wait", help="Watch the run until it ends; exit 0 when it succeeded, 1 otherwise.")]
Interval = Annotated[float, typer.Option(
    "--interval", min=0.05, help="Seconds between polls while watching.")]


# ---------------------------------------------------------------------- the connection


@dataclass
class _Gateway:
    """A client of the gateway, and how to find the workspace meant."""

    client: ContractClient
    url: str
    workspace: str | None
    state_dir: Path | None
    _stack: Stack | None = field(default=None, init=False)

    def stack(self) -> Stack | None:
        if self._stack is None:
            self._stack = _load_stack(self.state_dir)
        return self._stack

    def workspace_id(self) -> str:
        """The id of `--workspace` (slug or id), else the stack's workspace when this is the
        stack's gateway, else the only workspace the token sees."""
        listed: list[dict[str, Any]] = self.client.call("list_workspaces", {})
        names = ", ".join(str(ws["slug"]) for ws in listed) or "none"
        if self.workspace is not None:
            wanted = self.workspace.strip().lower()
            for ws in listed:
                if wanted in (str(ws["id"]).lower(), str(ws["slug"]).lower()):
                    return str(ws["id"])
            raise BadInput(f"no workspace {self.workspace!r} visible to this token "
                           f"(workspaces: {names})")
        stack = self.stack()
        if stack is not None and stack.gateway_url.rstrip("/") == self.url:
            return stack.workspace_id
        if len(listed) == 1:
            return str(listed[0]["id"])
        raise BadInput(f"--workspace is required: this token sees workspaces {names}")


def _load_stack(state_dir: Path | None) -> Stack | None:
    try:
        return load_stack(load_settings(state_dir=state_dir).state_dir)
    except StackFileError as exc:
        raise BadInput(str(exc)) from None


@contextlib.contextmanager
def _gateway(gateway: str | None, token: str | None, workspace: str | None,
             state_dir: Path | None, *, run_id: str | None = None) -> Iterator[_Gateway]:
    """A client of the configured gateway; its refusals reported as the CLI reports them
    (`run_id`: the run the command is about, named when the gateway does not find it)."""
    stack = _load_stack(state_dir) if not (gateway and token) else None
    url = gateway or (stack.gateway_url if stack else None)
    secret = token or (stack.token.get_secret_value() if stack else None)
    if not url or not secret:
        raise BadInput("no gateway configured: run `control-room up`, or pass --gateway and "
                       "--token (CONTROL_ROOM_GATEWAY_URL, CONTROL_ROOM_TOKEN)")
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise BadInput(f"--gateway must be an http(s) URL, not {url!r}")
    with ContractClient(url, secret, retry=CLI_RETRY) as client:
        target = _Gateway(client, url.rstrip("/"), workspace, state_dir)
        target._stack = stack
        with _contract_errors(target.url, run_id):
            yield target


@contextlib.contextmanager
def _contract_errors(url: str, run_id: str | None) -> Iterator[None]:
    """The gateway's refusals as the CLI reports them: the caller's mistakes exit 2, the
    run's state or an unreachable gateway exit 1."""
    try:
        yield
    except NotFound as exc:
        if run_id is None:
            raise BadInput(f"{exc.function or 'gateway'}: {exc.message} ({exc.code})") from None
        raise BadInput(f"run {run_id} not found (or not visible to this token)") from None
    except (InvalidArgument, Unauthorized, Forbidden) as exc:
        raise BadInput(f"{exc.function or 'gateway'}: {exc.message} ({exc.code})") from None
    except Conflict as exc:
        _fail(f"{exc.function or 'gateway'}: {exc.message} (conflict)", EXIT_FAILED)
    except TransientError as exc:
        _fail(f"cannot reach the gateway at {url} ({exc}); is it running (`control-room up`)?",
              EXIT_FAILED)
    except ContractError as exc:
        _fail(str(exc), EXIT_FAILED)


@contextlib.contextmanager
def _spec_errors() -> Iterator[None]:
    """A spec's problems, one line each on stderr, exit 2."""
    try:
        yield
    except SpecError as exc:
        for issue in exc.issues:
            err.print(f"error: {issue}", markup=False)
        raise typer.Exit(EXIT_BAD_INPUT) from None


def _run_id(text: str) -> str:
    try:
        return str(uuid.UUID(text.strip()))
    except ValueError:
        raise BadInput(f"malformed run id {text!r}: expected a UUID such as "
                       "0f8e5a7c-3b1d-4c2e-9a6f-1d2e3f4a5b6c") from None


def _pairs(option: str, values: list[str] | None) -> dict[str, str]:
    """`--param k=v` options as a dict (a later repeat of a name wins)."""
    pairs: dict[str, str] = {}
    for value in values or []:
        name, sep, text = value.partition("=")
        if not sep or not name.strip():
            raise BadInput(f"{option} must be NAME=VALUE, not {value!r}")
        pairs[name.strip()] = text
    return pairs


# ---------------------------------------------------------------------------- display


def _when(value: datetime | None) -> str:
    return value.astimezone().strftime("%Y-%m-%d %H:%M:%S") if value else "-"


def _duration(start: datetime | None, end: datetime | None) -> str:
    if start is None:
        return "-"
    seconds = ((end or datetime.now(UTC)) - start).total_seconds()
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def _state(state: str) -> Text:
    return Text(state, style=_STATE_STYLE.get(state, ""))


def _fraction(progress: Mapping[str, Any] | None) -> float | None:
    """A progress object's fraction: `fraction`, or `done`/`total`."""
    if not progress:
        return None
    value = progress.get("fraction")
    if isinstance(value, int | float):
        return min(max(float(value), 0.0), 1.0)
    done, total = progress.get("done"), progress.get("total")
    if isinstance(done, int | float) and isinstance(total, int | float) and total > 0:
        return min(max(float(done) / float(total), 0.0), 1.0)
    return None


def _phase_fraction(phase: Phase, live: Mapping[tuple[str, int], float]) -> float | None:
    if phase.state == "succeeded":
        return 1.0
    from_events = live.get((phase.name, phase.attempt))
    return from_events if from_events is not None else _fraction(phase.progress)


def _error_text(error: Mapping[str, Any] | None) -> str | None:
    if not error:
        return None
    inner = error.get("error") if isinstance(error.get("error"), Mapping) else error
    message = inner.get("message") if isinstance(inner, Mapping) else None
    phase = error.get("phase")
    text = str(message) if message else str(dict(error))
    return f"phase {phase}: {text}" if phase else text


def _run_header(run: Run) -> Table:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    grid.add_row("run", run.id)
    grid.add_row("spec", f"{run.spec_slug} @ {run.git_sha}")
    grid.add_row("state", _state(run.state))
    grid.add_row("created", _when(run.created_at))
    grid.add_row("duration", _duration(run.started_at, run.finished_at))
    if run.labels:
        grid.add_row("labels", ", ".join(f"{k}={v}" for k, v in sorted(run.labels.items())))
    if run.parent_run_id:
        grid.add_row("retry of", run.parent_run_id)
    if run.cancel_reason:
        grid.add_row("cancelled", run.cancel_reason)
    error = _error_text(run.error)
    if error:
        grid.add_row("error", Text(error, style="red"))
    return grid


def _phases_table(run: Run, *, live: Mapping[tuple[str, int], float] | None = None,
                  latest: Mapping[str, str] | None = None) -> Table:
    table = Table()
    for column, width in (("phase", 12), ("kind", 6), ("state", 9), ("attempt", 7),
                          ("duration", 8)):
        table.add_column(column, no_wrap=True, min_width=width)
    table.add_column("progress", no_wrap=True, min_width=BAR_CELLS + 5)
    if latest is not None:       # the column that gives way on a narrow screen or a CI log
        table.add_column("latest event", overflow="ellipsis", no_wrap=True, max_width=60)
    for phase in run.phases:
        row: list[RenderableType] = [
            phase.name, phase.kind, _state(phase.state), f"{phase.attempt}/{phase.max_attempts}",
            _duration(phase.started_at, phase.finished_at),
            _bar(_phase_fraction(phase, live or {}))]
        if latest is not None:
            row.append(latest.get(phase.name, ""))
        table.add_row(*row)
    return table


BAR_CELLS = 12


def _bar(fraction: float | None) -> RenderableType:
    """A fixed-width text bar (a nested renderable would make the table's column widths
    collapse on narrow consoles and in logs)."""
    if fraction is None:
        return "-"
    filled = round(max(0.0, min(1.0, fraction)) * BAR_CELLS)
    bar = Text("━" * filled, style="green" if filled == BAR_CELLS else "magenta")
    bar.append("━" * (BAR_CELLS - filled), style="grey23")
    bar.append(f" {fraction:>4.0%}")
    return bar


def _phase_errors(run: Run) -> list[str]:
    """Errors of phases that failed, or failed an attempt and wait for a retry, except the
    one the run's own error already names."""
    named = (run.error or {}).get("phase")
    return [f"{phase.name}: {_error_text(phase.error)}" for phase in run.phases
            if phase.error and phase.state in ("failed", "queued", "waiting")
            and phase.name != named]


def _show(run: Run) -> RenderableType:
    parts: list[RenderableType] = [_run_header(run), _phases_table(run)]
    parts += [Text(f"error in {line}", style="red") for line in _phase_errors(run)]
    return Group(*parts)


def _counts(counts: Mapping[str, int]) -> str:
    order = ("succeeded", "running", "queued", "waiting", "failed", "cancelled", "skipped")
    ranked = sorted(counts.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else 99)
    return ", ".join(f"{n} {state}" for state, n in ranked) or "-"


# ------------------------------------------------------------------------------ watch


@dataclass
class _Watch:
    """What the events said so far: the cursor, each phase's latest event and progress."""

    run_id: str
    after: int = 0
    latest: dict[str, str] = field(default_factory=dict)
    progress: dict[tuple[str, int], float] = field(default_factory=dict)

    def read(self, client: ContractClient) -> None:
        for event in client.iter_events(self.run_id, after=self.after, page_size=500):
            self.after = event.seq
            self._take(event)

    def _take(self, event: Event) -> None:
        if event.phase is None:
            return
        if event.type == "PHASE_PROGRESS":
            fraction = _fraction(event.payload)
            if fraction is not None and event.attempt is not None:
                self.progress[(event.phase, event.attempt)] = fraction
            return
        text = f"{event.type}: {event.message}" if event.message else event.type
        self.latest[event.phase] = " ".join(text.split())

    def render(self, run: Run) -> RenderableType:
        return Group(_run_header(run), _phases_table(run, live=self.progress,
                                                     latest=self.latest))


LOG_WIDTH = 140
"""Columns of the final table printed to a log (not a terminal): wide enough for phase names,
states and the latest event side by side."""


def _poll(client: ContractClient, run_id: str) -> tuple[dict[str, Any], Run]:
    raw: dict[str, Any] = client.call("get_run", {"run_id": run_id})
    return raw, Run.model_validate(raw)


def _watch(client: ContractClient, run_id: str, *, interval: float,
           quiet: bool) -> tuple[dict[str, Any], Run]:
    """Poll the run until it is final: a live table of its phases and their latest events
    on a terminal, the final table elsewhere (a CI log), nothing when `quiet`."""
    watch = _Watch(run_id)
    if quiet or not out.is_terminal:
        raw, run = _poll(client, run_id)
        while run.state not in FINAL_STATES:
            time.sleep(interval)
            raw, run = _poll(client, run_id)
        if not quiet:           # a log, not a screen: the last frame only
            watch.read(client)
            Console(file=out.file, width=max(out.width, LOG_WIDTH), highlight=False,
                    color_system=None).print(watch.render(run))
        return raw, run
    with Live(console=out, auto_refresh=False) as live:
        while True:
            raw, run = _poll(client, run_id)
            watch.read(client)
            live.update(watch.render(run), refresh=True)
            if run.state in FINAL_STATES:
                return raw, run
            time.sleep(interval)


def _watch_and_exit(target: _Gateway, run_id: str, *, interval: float,
                    as_json: bool) -> None:
    try:
        raw, run = _watch(target.client, run_id, interval=interval, quiet=as_json)
    except KeyboardInterrupt:
        err.print(f"stopped watching; the run goes on (`control-room runs watch {run_id}`)",
                  markup=False)
        raise typer.Exit(130) from None
    if as_json:
        out.print_json(data=raw)
    else:
        summary = f"run {run.id} {run.state} in {_duration(run.started_at, run.finished_at)}"
        out.print(Text(summary, style=_STATE_STYLE.get(run.state, "")))
    if run.state != "succeeded":
        raise typer.Exit(EXIT_FAILED)


# ----------------------------------------------------------------------------- commands


@runs_app.command("create")
def create_command(
    spec: Annotated[Path, typer.Option(
        "--spec", help="The spec file (specs/<slug>.yaml; docs/specs.md).", dir_okay=False,
        show_default=False)],
    git_sha: Annotated[str | None, typer.Option(
        "--git-sha", help="Read the spec at this commit (`git show SHA:FILE`). Default: HEAD "
                          "when the file is clean in git, else the working file "
                          "(HEAD's sha, labelled git_dirty=true).")] = None,
    param: Annotated[list[str] | None, typer.Option(
        "--param", help="NAME=VALUE: a param of the spec (repeatable); coerced to its type.")
    ] = None,
    workspace: Workspace = None,
    idempotency_key: Annotated[str | None, typer.Option(
        "--idempotency-key", help="Create the run once: a repeat with the same key and "
                                  "arguments answers the same run.")] = None,
    label: Annotated[list[str] | None, typer.Option(
        "--label", help="KEY=VALUE: a label of the run (repeatable).")] = None,
    wait: Wait = False,
    interval: Interval = 1.0,
    gateway: Gateway = None,
    token: Token = None,
    state_dir: StateDir = None,
    as_json: JsonOut = False,
) -> None:
    """Create a run of a spec: its phases, params and connections, at a git sha."""
    with _guard(), _spec_errors():
        loaded = load_spec(spec, git_sha=git_sha)
        params = _pairs("--param", param)
        labels = _pairs("--label", label)
        loaded.resolve_params(params)       # a bad param is reported before connecting
        with _gateway(gateway, token, workspace, state_dir) as target:
            args = loaded.create_run_args(target.workspace_id(), params,
                                          idempotency_key=idempotency_key, labels=labels)
            if loaded.dirty and not as_json:
                mark = ", ".join(f"{k}={v}" for k, v in args["labels"].items()
                                 if k in ("git_dirty", "code_version"))
                err.print(f"note: {loaded.file} differs from git (or is outside git): the run "
                          f"records {loaded.git_sha[:12]} with the label {mark}; commit the "
                          "spec for a reproducible run", markup=False)
            created: dict[str, Any] = target.client.call("create_run", args)
            if not wait:
                if as_json:
                    out.print_json(data=created)
                else:
                    _print_created(created)
                return
            if not as_json:
                _print_created(created)
            _watch_and_exit(target, str(created["id"]), interval=interval, as_json=as_json)


def _print_created(created: Mapping[str, Any]) -> None:
    verb = "created" if created.get("created", True) else "exists (same idempotency key):"
    out.print(f"run {verb} {created['id']}  {created['spec_slug']} @ {created['git_sha']}, "
              f"{len(created.get('phases') or [])} phase(s), {created['state']}", markup=False)


@runs_app.command("list")
def list_command(
    state: Annotated[str | None, typer.Option(
        "--state", help="Only runs in this state: " + ", ".join(RUN_STATES) + ".")] = None,
    spec: Annotated[str | None, typer.Option("--spec", help="Only runs of this spec slug.")
                    ] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=500, help="At most this many.")
                     ] = 20,
    workspace: Workspace = None,
    gateway: Gateway = None,
    token: Token = None,
    state_dir: StateDir = None,
    as_json: JsonOut = False,
) -> None:
    """The newest runs (of every workspace the token sees, unless --workspace)."""
    with _guard():
        if state is not None and state not in RUN_STATES:
            raise BadInput(f"--state must be one of {', '.join(RUN_STATES)}, not {state!r}")
        with _gateway(gateway, token, workspace, state_dir) as target:
            args: dict[str, Any] = {"limit": limit}
            if workspace is not None:
                args["workspace_id"] = target.workspace_id()
            if state is not None:
                args["state"] = state
            if spec is not None:
                args["spec_slug"] = spec
            page: dict[str, Any] = target.client.call("list_runs", args)
        runs: list[dict[str, Any]] = page["runs"]
        if as_json:
            out.print_json(data=runs)
            return
        if not runs:
            out.print("No runs.")
            return
        table = Table("run", "spec", "git sha", "state", "phases", "created", "duration")
        for raw in runs:
            run = Run.model_validate({**raw, "phases": []})
            table.add_row(run.id, run.spec_slug, run.git_sha[:12], _state(run.state),
                          _counts(raw.get("phase_counts") or {}), _when(run.created_at),
                          _duration(run.started_at, run.finished_at))
        out.print(table)


@runs_app.command("show")
def show_command(
    run_id: RunId,
    gateway: Gateway = None,
    token: Token = None,
    state_dir: StateDir = None,
    as_json: JsonOut = False,
) -> None:
    """A run, its phases (state, attempt, duration, progress) and its error."""
    with _guard():
        wanted = _run_id(run_id)
        with _gateway(gateway, token, None, state_dir, run_id=wanted) as target:
            raw, run = _poll(target.client, wanted)
        if as_json:
            out.print_json(data=raw)
        else:
            out.print(_show(run))


@runs_app.command("watch")
def watch_command(
    run_id: RunId,
    interval: Interval = 1.0,
    gateway: Gateway = None,
    token: Token = None,
    state_dir: StateDir = None,
    as_json: JsonOut = False,
) -> None:
    """Follow a run live until it ends: exit 0 when it succeeded, 1 otherwise."""
    with _guard():
        wanted = _run_id(run_id)
        with _gateway(gateway, token, None, state_dir, run_id=wanted) as target:
            _watch_and_exit(target, wanted, interval=interval, as_json=as_json)


@runs_app.command("cancel")
def cancel_command(
    run_id: RunId,
    reason: Annotated[str | None, typer.Option("--reason", help="Why, for the record.")
                      ] = None,
    gateway: Gateway = None,
    token: Token = None,
    state_dir: StateDir = None,
    as_json: JsonOut = False,
) -> None:
    """Cancel a queued or running run (running phases stop at their next heartbeat)."""
    with _guard():
        wanted = _run_id(run_id)
        with _gateway(gateway, token, None, state_dir, run_id=wanted) as target:
            args: dict[str, Any] = {"run_id": wanted}
            if reason is not None:
                args["reason"] = reason
            raw: dict[str, Any] = target.client.call("cancel_run", args)
        if as_json:
            out.print_json(data=raw)
        else:
            out.print(f"run {raw['id']} {raw['state']}", markup=False)


@runs_app.command("retry")
def retry_command(
    run_id: RunId,
    wait: Wait = False,
    interval: Interval = 1.0,
    gateway: Gateway = None,
    token: Token = None,
    state_dir: StateDir = None,
    as_json: JsonOut = False,
) -> None:
    """A new run of a failed or cancelled one that keeps its succeeded phases."""
    with _guard():
        wanted = _run_id(run_id)
        with _gateway(gateway, token, None, state_dir, run_id=wanted) as target:
            child: dict[str, Any] = target.client.call("retry_run", {"run_id": wanted})
            reused = sum(1 for p in child.get("phases") or [] if p.get("reused_from_phase_id"))
            if as_json and not wait:
                out.print_json(data=child)
                return
            if not as_json:
                verb = "created" if child.get("created", True) else "exists:"
                out.print(f"retry {verb} {child['id']} of {wanted} ({reused} phase(s) kept)",
                          markup=False)
            if wait:
                _watch_and_exit(target, str(child["id"]), interval=interval, as_json=as_json)
