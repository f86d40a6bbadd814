"""`control-room deadletters`: list the phases that failed for good and requeue them after a
fix, one repair run per run (docs/repair.md, docs/cli.md).

Like every command group it talks to the contract over HTTP with the typed client; `--json`
prints only the contract's answer on stdout.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Annotated

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
    when,
)
from control_room.cli.display import dump

if TYPE_CHECKING:
    from control_room.contract.models import DeadLetter

app = new_app("Dead letters: phases that failed for good; requeue them after a fix.")

Spec = Annotated[str | None, typer.Option("--spec", help="Only dead letters of this spec slug.")]


def _short(text: str, width: int = 80) -> str:
    line = " ".join(text.split())
    return line if len(line) <= width else line[: width - 1] + "…"


@app.command("list")
def list_command(
    spec: Spec = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=500, help="At most this many.")
                     ] = 100,
    workspace: Workspace = None,
    gateway_url: Gateway = None,
    token: Token = None,
    state_dir: StateDir = None,
    as_json: JsonOut = False,
) -> None:
    """The dead letters of the workspace, newest failure first, with their last error."""
    with guard():
        with gateway(gateway_url, token, workspace, state_dir) as target:
            page = target.client.list_dead_letters(target.workspace_id(), spec_slug=spec,
                                                   limit=limit)
        if as_json:
            out.print_json(data=dump(page.dead_letters))
            return
        if not page.dead_letters:
            out.print("No dead letters.")
            return
        table = Table("phase id", "run", "spec", "phase", "kind", "attempts", "failed",
                      "error", "repair")
        for letter in page.dead_letters:
            error = letter.error.message
            if letter.error.type:
                error = f"{letter.error.type}: {error}"
            table.add_row(letter.phase_id, letter.run_id, letter.spec_slug, letter.phase,
                          letter.kind, f"{letter.attempts}/{letter.max_attempts}",
                          when(letter.failed_at), _short(error),
                          letter.active_repair_id or "-")
        out.print(table)
        if page.next_cursor is not None:
            out.print(f"(the first {len(page.dead_letters)}; more with --limit)")


def _phase_ids(values: list[str]) -> list[str]:
    ids = []
    for text in values:
        try:
            ids.append(str(uuid.UUID(text.strip())))
        except ValueError:
            raise BadInput(f"malformed phase id {text!r}: expected a UUID (the `phase id` "
                           "column of `control-room deadletters list`)") from None
    return ids


@app.command("requeue")
def requeue_command(
    phase_ids: Annotated[list[str] | None, typer.Argument(
        help="Dead letters to requeue (their phase ids).", show_default=False)] = None,
    all_: Annotated[bool, typer.Option(
        "--all", help="Requeue every dead letter of the workspace (of --spec, if given).")
    ] = False,
    spec: Spec = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")
                   ] = False,
    workspace: Workspace = None,
    gateway_url: Gateway = None,
    token: Token = None,
    state_dir: StateDir = None,
    as_json: JsonOut = False,
) -> None:
    """Requeue dead letters: one repair run per run, rerunning them and what depends on
    them (a run that already has an active repair answers that one)."""
    with guard():
        if all_ and phase_ids:
            raise BadInput("give phase ids or --all, not both")
        if not all_ and not phase_ids:
            raise BadInput("give the phase ids to requeue, or --all")
        if spec is not None and not all_:
            raise BadInput("--spec selects dead letters for --all; it needs --all")
        wanted = _phase_ids(phase_ids or [])
        with gateway(gateway_url, token, workspace, state_dir) as target:
            workspace_id = target.workspace_id()
            letters: list[DeadLetter] = list(target.client.iter_dead_letters(
                workspace_id, spec_slug=spec))
            if all_:
                chosen = letters
            else:
                by_id = {x.phase_id: x for x in letters}
                missing = [i for i in wanted if i not in by_id]
                if missing:
                    raise BadInput(f"not a dead letter of this workspace: {', '.join(missing)}")
                chosen = [by_id[i] for i in dict.fromkeys(wanted)]
            if not chosen:
                out.print("No dead letters.")
                return
            runs = sorted({x.run_id for x in chosen})
            summary = Table("run", "spec", "phase", "error")
            for x in chosen:
                summary.add_row(x.run_id, x.spec_slug, x.phase, _short(x.error.message, 60))
            console = err if as_json else out    # --json keeps stdout for the answer
            console.print(summary)
            console.print(f"requeue {len(chosen)} dead letter(s): one repair of each of "
                          f"{len(runs)} run(s)", markup=False)
            if not yes and not typer.confirm("Requeue?", default=False, err=True):
                raise typer.Exit(1)
            result = target.client.requeue_dead_letters(workspace_id,
                                                        [x.phase_id for x in chosen])
        if as_json:
            out.print_json(data=dump(result))
            return
        for item in result.requeued:
            verb = "created" if item.created else "exists:"
            out.print(f"repair {verb} {item.repair_run_id} of {item.run_id} "
                      f"({', '.join(item.phases)}; reruns {', '.join(item.rerun_phases)}) "
                      f"{item.state}", markup=False)
