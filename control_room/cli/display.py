"""How a run looks on the terminal, and watching one until it ends: shared by `runs` and
`demo` (imports only `common`)."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from control_room.cli.common import (
    EXIT_FAILED,
    FINAL_STATES,
    STATE_STYLE,
    GatewayTarget,
    err,
    out,
    state_text,
    when,
)

if TYPE_CHECKING:
    from control_room.contract.client import ContractClient, Event, Phase, Run

BAR_CELLS = 12
LOG_WIDTH = 140
"""Columns of the final table printed to a log (not a terminal): wide enough for phase names,
states and the latest event side by side."""


def duration(start: datetime | None, end: datetime | None) -> str:
    if start is None:
        return "-"
    seconds = ((end or datetime.now(UTC)) - start).total_seconds()
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def fraction_of(progress: Mapping[str, Any] | None) -> float | None:
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
    return from_events if from_events is not None else fraction_of(phase.progress)


def error_text(error: Mapping[str, Any] | None) -> str | None:
    if not error:
        return None
    inner = error.get("error") if isinstance(error.get("error"), Mapping) else error
    message = inner.get("message") if isinstance(inner, Mapping) else None
    phase = error.get("phase")
    text = str(message) if message else str(dict(error))
    return f"phase {phase}: {text}" if phase else text


def run_header(run: Run) -> Table:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    grid.add_row("run", run.id)
    grid.add_row("spec", f"{run.spec_slug} @ {run.git_sha}")
    if run.job is not None:
        grid.add_row("job", f"{run.job.slug} version {run.job.version}")
    grid.add_row("state", state_text(run.state))
    grid.add_row("created", when(run.created_at))
    grid.add_row("duration", duration(run.started_at, run.finished_at))
    if run.labels:
        grid.add_row("labels", ", ".join(f"{k}={v}" for k, v in sorted(run.labels.items())))
    if run.parent_run_id:
        grid.add_row("retry of", run.parent_run_id)
    if run.cancel_reason:
        grid.add_row("cancelled", run.cancel_reason)
    error = error_text(run.error)
    if error:
        grid.add_row("error", Text(error, style="red"))
    return grid


def phases_table(run: Run, *, live: Mapping[tuple[str, int], float] | None = None,
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
            phase.name, phase.kind, state_text(phase.state),
            f"{phase.attempt}/{phase.max_attempts}",
            duration(phase.started_at, phase.finished_at),
            bar(_phase_fraction(phase, live or {}))]
        if latest is not None:
            row.append(latest.get(phase.name, ""))
        table.add_row(*row)
    return table


def bar(fraction: float | None) -> RenderableType:
    """A fixed-width text bar (a nested renderable would make the table's column widths
    collapse on narrow consoles and in logs)."""
    if fraction is None:
        return "-"
    filled = round(max(0.0, min(1.0, fraction)) * BAR_CELLS)
    text = Text("━" * filled, style="green" if filled == BAR_CELLS else "magenta")
    text.append("━" * (BAR_CELLS - filled), style="grey23")
    text.append(f" {fraction:>4.0%}")
    return text


def phase_errors(run: Run) -> list[str]:
    """Errors of phases that failed, or failed an attempt and wait for a retry, except the
    one the run's own error already names."""
    named = (run.error or {}).get("phase")
    return [f"{phase.name}: {error_text(phase.error)}" for phase in run.phases
            if phase.error and phase.state in ("failed", "queued", "waiting")
            and phase.name != named]


def show(run: Run) -> RenderableType:
    parts: list[RenderableType] = [run_header(run), phases_table(run)]
    parts += [Text(f"error in {line}", style="red") for line in phase_errors(run)]
    return Group(*parts)


def counts(by_state: Mapping[Any, int]) -> str:
    order = ("succeeded", "running", "queued", "waiting", "failed", "cancelled", "skipped")
    ranked = sorted(by_state.items(),
                    key=lambda kv: order.index(kv[0]) if kv[0] in order else 99)
    return ", ".join(f"{n} {state}" for state, n in ranked) or "-"


def dump(model: Any) -> Any:
    """A contract result as the JSON it came as (`--json`)."""
    if isinstance(model, list | tuple):
        return [dump(item) for item in model]
    return model.model_dump(mode="json", by_alias=True)


# ------------------------------------------------------------------------------ watch


@dataclass
class Watch:
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
            fraction = fraction_of(event.payload)
            if fraction is not None and event.attempt is not None:
                self.progress[(event.phase, event.attempt)] = fraction
            return
        text = f"{event.type}: {event.message}" if event.message else event.type
        self.latest[event.phase] = " ".join(text.split())

    def render(self, run: Run) -> RenderableType:
        return Group(run_header(run), phases_table(run, live=self.progress,
                                                   latest=self.latest))


def watch(client: ContractClient, run_id: str, *, interval: float, quiet: bool,
          alive: Callable[[], None] | None = None) -> Run:
    """Poll the run until it is final: a live table of its phases and their latest events
    on a terminal, the final table elsewhere (a CI log), nothing when `quiet`.

    `alive` is called before every poll and may raise to stop watching (the local stack's
    check that its workers still run: a run nobody can execute would be watched forever)."""
    from rich.live import Live

    check = alive or (lambda: None)
    seen = Watch(run_id)
    if quiet or not out.is_terminal:
        run = client.get_run(run_id)
        while run.state not in FINAL_STATES:
            time.sleep(interval)
            check()
            run = client.get_run(run_id)
        if not quiet:           # a log, not a screen: the last frame only
            seen.read(client)
            Console(file=out.file, width=max(out.width, LOG_WIDTH), highlight=False,
                    color_system=None).print(seen.render(run))
        return run
    with Live(console=out, auto_refresh=False) as live:
        while True:
            check()
            run = client.get_run(run_id)
            seen.read(client)
            live.update(seen.render(run), refresh=True)
            if run.state in FINAL_STATES:
                return run
            time.sleep(interval)


def watch_and_exit(target: GatewayTarget, run_id: str, *, interval: float,
                   as_json: bool, on_final: Callable[[Run], None] | None = None) -> None:
    """Watch the run to its end, print it, exit 0 when it succeeded, 1 otherwise
    (`on_final`: called with the final run first, e.g. to write a GitHub summary)."""
    try:
        run = watch(target.client, run_id, interval=interval, quiet=as_json)
    except KeyboardInterrupt:
        err.print(f"stopped watching; the run goes on (`control-room runs watch {run_id}`)",
                  markup=False)
        raise typer.Exit(130) from None
    if on_final is not None:
        on_final(run)
    if as_json:
        out.print_json(data=dump(run))
    else:
        summary = f"run {run.id} {run.state} in {duration(run.started_at, run.finished_at)}"
        out.print(Text(summary, style=STATE_STYLE.get(run.state, "")))
    if run.state != "succeeded":
        raise typer.Exit(EXIT_FAILED)
