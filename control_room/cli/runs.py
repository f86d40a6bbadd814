"""`control-room runs`: create runs from specs, list, show, watch, cancel, retry and repair them
(docs/cli.md).

Every command talks to the contract over HTTP with the typed client, like any other client;
`--json` prints only the contract's answer on stdout, for scripts.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, cast

import typer
from rich.table import Table

from control_room.cli.common import (
    EXIT_BAD_INPUT,
    BadInput,
    Gateway,
    GatewayTarget,
    JsonOut,
    RunId,
    StateDir,
    Token,
    Workspace,
    err,
    gateway,
    guard,
    new_app,
    option_for,
    out,
    pairs,
    parse_run_id,
    state_text,
    when,
)
from control_room.cli.display import counts, dump, duration, show, watch_and_exit
from control_room.settings import ClientSettings

if TYPE_CHECKING:
    from control_room.contract.client import Run, RunCreated
    from control_room.integrations.github.summary import RunLinks

app = new_app("Runs: create them from specs, list, show, watch, cancel, retry, repair.")

RUN_STATES = ("queued", "running", "succeeded", "failed", "cancelled")
Wait = Annotated[bool, typer.Option(
    "--wait", help="Watch the run until it ends; exit 0 when it succeeded, 1 otherwise.")]
Interval = Annotated[float, typer.Option(
    "--interval", min=0.05, help="Seconds between polls while watching.")]
GithubSummary = Annotated[bool, typer.Option(
    "--github-summary",
    help="In GitHub Actions: append a Markdown report of the run (phases, changed datasets, "
         "artifact digests, links) to `$GITHUB_STEP_SUMMARY` and the step outputs `run_id`, "
         "`state`, `ui_url` to `$GITHUB_OUTPUT` (docs/github.md). Without --wait: the outputs "
         "only (`runs watch --github-summary` writes the summary).")]
UiUrl = Annotated[str | None, option_for(
    ClientSettings, "ui_url", "--ui-url",
    help="With --github-summary: the Control Room UI's root; the run's page is "
         "`<ui-url>/runs/<run id>`. Default: the local stack's UI, when it serves one.")]


@dataclass
class GithubGate:
    """`--github-summary`: where the summary and the outputs go, and the UI to link."""

    summary_path: Path
    output_path: Path | None
    ui_url: str | None

    @classmethod
    def from_options(cls, enabled: bool, ui_url: str | None) -> GithubGate | None:
        if not enabled:
            return None
        summary = os.environ.get("GITHUB_STEP_SUMMARY", "").strip()
        if not summary:
            raise BadInput("--github-summary needs GITHUB_STEP_SUMMARY (GitHub Actions sets it "
                           "in every step; elsewhere set it to a file to append to)")
        if ui_url is not None:
            import urllib.parse

            if urllib.parse.urlsplit(ui_url).scheme not in ("http", "https"):
                raise BadInput(f"--ui-url must be an http(s) URL, not {ui_url!r}")
        output = os.environ.get("GITHUB_OUTPUT", "").strip()
        return cls(Path(summary), Path(output) if output else None, ui_url)

    def links(self, target: GatewayTarget, run_id: str) -> RunLinks:
        """The UI given, else the local stack's UI when this is its gateway and it serves run
        pages, else none (the summary links the gateway's get_run and says so)."""
        from control_room.integrations.github.summary import run_links

        if self.ui_url:
            return run_links(run_id, gateway_url=target.url, ui_base=self.ui_url)
        stack = target.stack()
        if stack is None or stack.gateway_url.rstrip("/") != target.url:
            return run_links(run_id, gateway_url=target.url, ui_base=None)
        import httpx

        page = f"{stack.ui_url.rstrip('/')}/runs/{run_id}"
        try:
            answer = httpx.get(page, timeout=3.0, follow_redirects=False)
            serves = (answer.status_code == 200
                      and answer.headers.get("content-type", "").startswith("text/html"))
        except httpx.HTTPError:
            serves = False
        if serves:
            return run_links(run_id, gateway_url=target.url, ui_base=stack.ui_url)
        return run_links(run_id, gateway_url=target.url, ui_base=None,
                         ui_note="the local stack's gateway serves no web UI (not built: "
                                 "make ui): the run is read from the gateway's get_run")

    def started(self, target: GatewayTarget, run: Run) -> None:
        """The outputs as soon as the run exists (a cancelled step still knows its run)."""
        from control_room.integrations.github.summary import github_outputs, write_github_files

        write_github_files(None, self.output_path, None,
                           github_outputs(run, self.links(target, run.id)))

    def final(self, target: GatewayTarget, run: Run) -> None:
        """The summary of the run as it is now, and the outputs again (the last one wins)."""
        from control_room.integrations.github.summary import (
            collect,
            github_outputs,
            render_summary,
            write_github_files,
        )

        links = self.links(target, run.id)
        report = collect(target.client, run)
        write_github_files(self.summary_path, self.output_path,
                           render_summary(run, report, links), github_outputs(run, links))


@contextlib.contextmanager
def spec_errors() -> Iterator[None]:
    """A spec's problems, one line each on stderr, exit 2."""
    from control_room.specs import SpecError

    try:
        yield
    except SpecError as exc:
        for issue in exc.issues:
            err.print(f"error: {issue}", markup=False)
        raise typer.Exit(EXIT_BAD_INPUT) from None


@app.command("create")
def create_command(
    spec: Annotated[Path | None, typer.Option(
        "--spec", help="The spec file (`specs/<slug>.yaml`; docs/specs.md).", dir_okay=False,
        show_default=False)] = None,
    job: Annotated[str | None, typer.Option(
        "--job", help="Instead of --spec: a run of this registered job (docs/jobs.md).",
        show_default=False)] = None,
    version: Annotated[int | None, typer.Option(
        "--version", min=1, help="With --job: the job version to run (default: the latest).",
        show_default=False)] = None,
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
    changed_since: Annotated[str | None, typer.Option(
        "--changed-since", help="With --job: run only the phases whose code, params or spec "
                                "changed since this commit (a sha, a branch, HEAD~1) and "
                                "everything downstream, reusing the outputs of the newest "
                                "succeeded run of the job at that commit for the rest "
                                "(docs/github.md, \"Only what changed\"). Nothing changed: no "
                                "run, exit 0.", show_default=False)] = None,
    repo_dir: Annotated[Path, typer.Option(
        "--repo-dir", help="With --changed-since: the git checkout holding the job's code and "
                           "both commits.", file_okay=False)] = Path("."),
    wait: Wait = False,
    interval: Interval = 1.0,
    github_summary: GithubSummary = False,
    ui_url: UiUrl = None,
    gateway_url: Gateway = None,
    token: Token = None,
    state_dir: StateDir = None,
    as_json: JsonOut = False,
) -> None:
    """Create a run of a spec (its phases, params and connections, at a git sha), or of a
    registered job's version (--job); with --changed-since, of what changed since a commit."""
    from control_room.specs import load_spec

    with guard():
        gate = GithubGate.from_options(github_summary, ui_url)
    if job is not None or spec is None:
        with guard(), spec_errors():
            if spec is not None or job is None:
                raise BadInput("give either --spec FILE or --job SLUG" if spec is None
                               else "--spec and --job exclude each other: a job's version "
                                    "holds its spec")
            if git_sha is not None:
                raise BadInput("--git-sha is for --spec: a job version pins its git sha "
                               "(pick one with --version)")
            _create_job_run(job, version, pairs("--param", param), pairs("--label", label),
                            idempotency_key, wait, interval, workspace, gateway_url, token,
                            state_dir, as_json, gate, changed_since, repo_dir)
        return
    if version is not None:
        with guard():
            raise BadInput("--version is for --job (a spec file has no versions)")
    if changed_since is not None:
        with guard():
            raise BadInput("--changed-since needs --job: it reuses the outputs of a succeeded "
                           "run of a registered job (register the spec with `control-room jobs "
                           "register --spec FILE`, then `runs create --job SLUG`)")
    with guard(), spec_errors():
        loaded = load_spec(spec, git_sha=git_sha)
        params = pairs("--param", param)
        labels = pairs("--label", label)
        loaded.resolve_params(params)       # a bad param is reported before connecting
        with gateway(gateway_url, token, workspace, state_dir) as target:
            args = loaded.create_run_args(target.workspace_id(), params,
                                          idempotency_key=idempotency_key, labels=labels)
            if loaded.dirty and not as_json:
                mark = ", ".join(f"{k}={v}" for k, v in args["labels"].items()
                                 if k in ("git_dirty", "code_version"))
                err.print(f"note: {loaded.file} differs from git (or is outside git): the run "
                          f"records {loaded.git_sha[:12]} with the label {mark}; commit the "
                          "spec for a reproducible run", markup=False)
            created = target.client.create_run(**args)
            if gate is not None:        # the outputs now; the summary when the run ends
                gate.started(target, created)
            if not wait:
                if as_json:
                    out.print_json(data=dump(created))
                else:
                    _print_created(created.id, created.created, created.spec_slug,
                                   created.git_sha, len(created.phases), created.state)
                return
            if not as_json:
                _print_created(created.id, created.created, created.spec_slug,
                               created.git_sha, len(created.phases), created.state)
            watch_and_exit(target, created.id, interval=interval, as_json=as_json,
                           on_final=_on_final(gate, target))


def _on_final(gate: GithubGate | None, target: GatewayTarget) -> Any:
    return None if gate is None else (lambda run: gate.final(target, run))


def _create_job_run(job: str, version: int | None, params: dict[str, str],
                    labels: dict[str, str], idempotency_key: str | None, wait: bool,
                    interval: float, workspace: str | None, gateway_url: str | None,
                    token: str | None, state_dir: Path | None, as_json: bool,
                    gate: GithubGate | None = None, changed_since: str | None = None,
                    repo_dir: Path = Path(".")) -> None:
    """`runs create --job`: the params coerced to the version's declared types here, for a
    friendly error (the control plane checks them again)."""
    from control_room.specs.jobs import coerce_params

    with gateway(gateway_url, token, workspace, state_dir) as target:
        workspace_id = target.workspace_id()
        detail = target.client.get_job(workspace_id, job)
        wanted = version or detail.latest_version
        chosen = next((v for v in detail.versions if v.version == wanted), None)
        if chosen is None:
            raise BadInput(f"job {job} has no version {wanted} (versions 1.."
                           f"{detail.latest_version})")
        declared = {name: p.model_dump() for name, p in chosen.params.items()}
        values = coerce_params(declared, params, job=job)
        created: RunCreated
        extra: dict[str, Any] = {}
        if changed_since is not None:
            from control_room.cli.changed import create_changed

            made = create_changed(target, workspace_id, detail, chosen, values, labels,
                                  idempotency_key, changed_since, repo_dir, as_json=as_json,
                                  gate=gate)
            if made is None:            # nothing changed: no run (the gate passes)
                return
            created, extra = made
        else:
            created = target.client.create_job_run(workspace_id, job, version=version,
                                                   params=values,
                                                   idempotency_key=idempotency_key,
                                                   labels=labels or None)
        if gate is not None:            # the outputs now; the summary when the run ends
            gate.started(target, created)
        if as_json and not wait:
            out.print_json(data={**dump(created), **extra})
            return
        if not as_json:
            _print_created(created.id, created.created, f"{job} v{wanted}", created.git_sha,
                           len(created.phases), created.state)
        if wait:
            watch_and_exit(target, created.id, interval=interval, as_json=as_json,
                           on_final=_on_final(gate, target))


def _print_created(run_id: str, created: bool, spec_slug: str, git_sha: str, phases: int,
                   state: str) -> None:
    verb = "created" if created else "exists (same idempotency key):"
    out.print(f"run {verb} {run_id}  {spec_slug} @ {git_sha}, {phases} phase(s), {state}",
              markup=False)


@app.command("list")
def list_command(
    state: Annotated[str | None, typer.Option(
        "--state", help="Only runs in this state: " + ", ".join(RUN_STATES) + ".")] = None,
    spec: Annotated[str | None, typer.Option("--spec", help="Only runs of this spec slug.")
                    ] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=500, help="At most this many.")
                     ] = 20,
    workspace: Workspace = None,
    gateway_url: Gateway = None,
    token: Token = None,
    state_dir: StateDir = None,
    as_json: JsonOut = False,
) -> None:
    """The newest runs (of every workspace the token sees, unless --workspace)."""
    with guard():
        if state is not None and state not in RUN_STATES:
            raise BadInput(f"--state must be one of {', '.join(RUN_STATES)}, not {state!r}")
        with gateway(gateway_url, token, workspace, state_dir) as target:
            workspace_id = target.workspace_id() if workspace is not None else None
            page = target.client.list_runs(workspace_id, state=cast(Any, state),
                                           spec_slug=spec, limit=limit)
        if as_json:
            out.print_json(data=dump(page.runs))
            return
        if not page.runs:
            out.print("No runs.")
            return
        table = Table("run", "spec", "git sha", "state", "phases", "created", "duration")
        for run in page.runs:
            table.add_row(run.id, run.spec_slug, run.git_sha[:12], state_text(run.state),
                          counts(run.phase_counts), when(run.created_at),
                          duration(run.started_at, run.finished_at))
        out.print(table)


@app.command("show")
def show_command(
    run_id: RunId,
    gateway_url: Gateway = None,
    token: Token = None,
    state_dir: StateDir = None,
    as_json: JsonOut = False,
) -> None:
    """A run, its phases (state, attempt, duration, progress) and its error."""
    with guard():
        wanted = parse_run_id(run_id)
        with gateway(gateway_url, token, None, state_dir, run_id=wanted) as target:
            run = target.client.get_run(wanted)
        if as_json:
            out.print_json(data=dump(run))
        else:
            out.print(show(run))
            # the lineage: what this run repairs, and its repairs (docs/repair.md)
            if run.parent_run_id is not None:
                root = f" (first run {run.root_run_id})" if run.root_run_id != run.parent_run_id \
                    else ""
                out.print(f"repair of {run.parent_run_id}{root}", markup=False)
            for child in run.repairs:
                out.print(f"repaired by {child.id} {child.state} ({when(child.created_at)})",
                          markup=False)


@app.command("watch")
def watch_command(
    run_id: RunId,
    interval: Interval = 1.0,
    github_summary: GithubSummary = False,
    ui_url: UiUrl = None,
    gateway_url: Gateway = None,
    token: Token = None,
    state_dir: StateDir = None,
    as_json: JsonOut = False,
) -> None:
    """Follow a run live until it ends: exit 0 when it succeeded, 1 otherwise."""
    with guard():
        wanted = parse_run_id(run_id)
        gate = GithubGate.from_options(github_summary, ui_url)
        with gateway(gateway_url, token, None, state_dir, run_id=wanted) as target:
            if gate is not None:
                gate.started(target, target.client.get_run(wanted))
            watch_and_exit(target, wanted, interval=interval, as_json=as_json,
                           on_final=_on_final(gate, target))


@app.command("cancel")
def cancel_command(
    run_id: RunId,
    reason: Annotated[str | None, typer.Option("--reason", help="Why, for the record.")
                      ] = None,
    gateway_url: Gateway = None,
    token: Token = None,
    state_dir: StateDir = None,
    as_json: JsonOut = False,
) -> None:
    """Cancel a queued or running run (running phases stop at their next heartbeat)."""
    with guard():
        wanted = parse_run_id(run_id)
        with gateway(gateway_url, token, None, state_dir, run_id=wanted) as target:
            run = target.client.cancel_run(wanted, reason=reason)
        if as_json:
            out.print_json(data=dump(run))
        else:
            out.print(f"run {run.id} {run.state}", markup=False)


@app.command("retry")
def retry_command(
    run_id: RunId,
    wait: Wait = False,
    interval: Interval = 1.0,
    gateway_url: Gateway = None,
    token: Token = None,
    state_dir: StateDir = None,
    as_json: JsonOut = False,
) -> None:
    """A new run of a failed or cancelled one that keeps its succeeded phases."""
    with guard():
        wanted = parse_run_id(run_id)
        with gateway(gateway_url, token, None, state_dir, run_id=wanted) as target:
            child = target.client.retry_run(wanted)
            reused = sum(1 for p in child.phases if p.reused_from_phase_id)
            if as_json and not wait:
                out.print_json(data=dump(child))
                return
            if not as_json:
                verb = "created" if child.created else "exists:"
                out.print(f"retry {verb} {child.id} of {wanted} ({reused} phase(s) kept)",
                          markup=False)
            if wait:
                watch_and_exit(target, child.id, interval=interval, as_json=as_json)


@app.command("repair")
def repair_command(
    run_id: RunId,
    phase: Annotated[list[str] | None, typer.Option(
        "--phase", help="Rerun this phase and everything downstream of it too (repeatable); "
                        "what did not succeed is always rerun.")] = None,
    idempotency_key: Annotated[str | None, typer.Option(
        "--idempotency-key", help="Repair once: a repeat with the same key answers the same "
                                  "repair.")] = None,
    wait: Wait = False,
    interval: Interval = 1.0,
    gateway_url: Gateway = None,
    token: Token = None,
    state_dir: StateDir = None,
    as_json: JsonOut = False,
) -> None:
    """A repair run of a finished run: reruns what failed, the --phase phases and everything
    downstream of them, keeping the succeeded upstream outputs (docs/repair.md)."""
    with guard():
        wanted = parse_run_id(run_id)
        names = [name.strip() for name in phase or []]
        if any(not name for name in names):
            raise BadInput("--phase needs a phase name")
        with gateway(gateway_url, token, None, state_dir, run_id=wanted) as target:
            child = target.client.repair_run(wanted, names or None,
                                             idempotency_key=idempotency_key)
            if as_json and not wait:
                out.print_json(data=dump(child))
                return
            if not as_json:
                verb = "created" if child.created else "exists:"
                kept = len(child.phases) - len(child.rerun_phases)
                out.print(f"repair {verb} {child.id} of {wanted}: reruns "
                          f"{', '.join(child.rerun_phases)} ({kept} phase(s) kept)",
                          markup=False)
            if wait:
                watch_and_exit(target, child.id, interval=interval, as_json=as_json)
