"""`control-room jobs`: versioned job definitions (docs/jobs.md).

    control-room jobs register --spec specs/example.yaml [--owner ana@x.io] [--tag tier=gold]
    control-room jobs list
    control-room jobs show example            # versions, params, recent runs, freshness
    control-room jobs slo example --freshness 15m   # the freshness SLO (default 15 minutes)
    control-room runs create --job example [--version 2] --param orders=20 [--wait]

`register` loads the spec with the spec loader (every problem reported, exit 2), sends its
validated JSON and the blake3 of that JSON's canonical form with the git sha it was read at;
the control plane adds a version only when the digest or the git sha changed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from control_room.cli.common import (
    EXIT_BAD_INPUT,
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
    state_text,
    when,
)
from control_room.cli.display import dump, duration
from control_room.cli.schedules import parse_duration
from control_room.contract.models import JobFreshness

app = new_app("Jobs: versioned job definitions (register, list, show); run one with "
              "`runs create --job`.")



@contextlib.contextmanager
def spec_errors() -> Iterator[None]:
    """A spec's problems, one line each on stderr, exit 2 (as `runs create --spec`)."""
    from control_room.specs import SpecError

    try:
        yield
    except SpecError as exc:
        for issue in exc.issues:
            err.print(f"error: {issue}", markup=False)
        raise typer.Exit(EXIT_BAD_INPUT) from None


Slug = Annotated[str, typer.Argument(help="The job's slug (its spec's slug).",
                                     show_default=False)]


@app.command("register")
def register_command(
    spec: Annotated[Path, typer.Option(
        "--spec", help="The spec file (`specs/<slug>.yaml`; docs/specs.md).", dir_okay=False,
        show_default=False)],
    git_sha: Annotated[str | None, typer.Option(
        "--git-sha", help="Read the spec at this commit (`git show SHA:FILE`). Default: HEAD "
                          "when the file is clean in git, else the working file (HEAD's sha, "
                          "marked dirty).")] = None,
    description: Annotated[str | None, typer.Option(
        "--description", help="The job's description (default: the spec's).")] = None,
    owner: Annotated[str | None, typer.Option(
        "--owner", help="Who owns the job: a name or an email.")] = None,
    tag: Annotated[list[str] | None, typer.Option(
        "--tag", help="KEY=VALUE: a tag of the job (repeatable; given tags replace the "
                      "job's).")] = None,
    workspace: Workspace = None,
    gateway_url: Gateway = None,
    token: Token = None,
    state_dir: StateDir = None,
    as_json: JsonOut = False,
) -> None:
    """Register a spec as a job: a new version when its content or git sha changed."""
    from control_room.specs import load_spec
    from control_room.specs.jobs import job_digest, job_spec_json

    with guard(), spec_errors():
        loaded = load_spec(spec, git_sha=git_sha)
        tags = pairs("--tag", tag)
        body = job_spec_json(loaded)
        with gateway(gateway_url, token, workspace, state_dir) as target:
            if loaded.dirty and not as_json:
                err.print(f"note: {loaded.file} differs from git (or is outside git): the "
                          f"version records {loaded.git_sha[:12]} marked dirty; commit the spec "
                          "so that the version pins the code it runs", markup=False)
            result = target.client.register_job(
                target.workspace_id(), loaded.spec.slug, body, job_digest(body), loaded.git_sha,
                description=description, owner=owner, tags=tags)
        if as_json:
            out.print_json(data=dump(result))
            return
        version = result.version
        if result.created:
            verb = "registered" if version.version == 1 else "new version"
            out.print(f"job {result.job.slug}: {verb} {version.version} @ "
                      f"{version.git_sha[:12]} ({version.digest[:19]})", markup=False)
        else:
            out.print(f"job {result.job.slug}: unchanged, version {version.version} @ "
                      f"{version.git_sha[:12]} (same digest and git sha)", markup=False)


@app.command("list")
def list_command(
    workspace: Workspace = None,
    gateway_url: Gateway = None,
    token: Token = None,
    state_dir: StateDir = None,
    as_json: JsonOut = False,
) -> None:
    """The workspace's jobs: latest version, owner, last run, next scheduled run."""
    with guard():
        with gateway(gateway_url, token, workspace, state_dir) as target:
            jobs = target.client.list_jobs(target.workspace_id())
        if as_json:
            out.print_json(data=dump(jobs))
            return
        if not jobs:
            out.print("No jobs. Register one: control-room jobs register --spec FILE")
            return
        table = Table("job", "version", "owner", "last run", "state", "next run", "freshness",
                      "description")
        for job in jobs:
            last = job.last_run
            table.add_row(job.slug, str(job.latest_version), job.owner or "-",
                          when(last.created_at) if last else "-",
                          state_text(last.state) if last else "-",
                          when(job.next_run_at) if job.next_run_at else "-",
                          freshness_text(job.freshness), job.description or "")
        out.print(table)


def seconds_text(seconds: float | None) -> str:
    """`42 s`, `12.5 min`, `3.2 h`, `2.1 d`; `-` for None."""
    if seconds is None:
        return "-"
    if abs(seconds) < 120:
        return f"{seconds:.0f} s"
    if abs(seconds) < 7200:
        return f"{seconds / 60:.1f} min"
    if abs(seconds) < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


FRESHNESS_STYLE = {"ok": "green", "breached": "bold red", "unknown": "dim"}


def freshness_text(freshness: JobFreshness) -> Text:
    """`ok 3.2 min / 15.0 min`: the state, the stalest dataset's lag and the SLO."""
    if freshness.state == "unknown":
        return Text(f"unknown / {seconds_text(freshness.slo_seconds)}", style="dim")
    return Text(f"{freshness.state} {seconds_text(freshness.lag_seconds)} / "
                f"{seconds_text(freshness.slo_seconds)}",
                style=FRESHNESS_STYLE.get(freshness.state, ""))


@app.command("concurrency")
def concurrency_command(
    slug: Slug,
    max_runs: Annotated[int | None, typer.Option(
        "--max", min=1, max=1000, help="At most this many runs queued or running that the "
                                       "job's schedules and sensors start.")] = None,
    unlimited: Annotated[bool, typer.Option(
        "--unlimited", help="Remove the limit (the default of every job).")] = False,
    workspace: Workspace = None,
    gateway_url: Gateway = None,
    token: Token = None,
    state_dir: StateDir = None,
    as_json: JsonOut = False,
) -> None:
    """Limit a job's concurrent runs started by its schedules and sensors (a tick of a busy
    job is skipped, a sensor waits); `runs create --job` is not limited."""
    with guard():
        if (max_runs is None) == (not unlimited):
            raise BadInput("give --max N or --unlimited")
        with gateway(gateway_url, token, workspace, state_dir) as target:
            job = target.client.set_job_concurrency(target.workspace_id(), slug, max_runs)
        if as_json:
            out.print_json(data=dump(job))
            return
        limit = job.max_concurrent_runs
        out.print(f"job {job.slug}: " + (f"at most {limit} run(s) at once from its schedules "
                                         "and sensors" if limit else "no concurrency limit"),
                  markup=False)


@app.command("slo")
def slo_command(
    slug: Slug,
    freshness: Annotated[str, typer.Option(
        "--freshness", help="How far the job's stalest dataset may be behind its source: "
                            "15m, 1h, 900s (1 minute to 366 days).", show_default=False)],
    workspace: Workspace = None,
    gateway_url: Gateway = None,
    token: Token = None,
    state_dir: StateDir = None,
    as_json: JsonOut = False,
) -> None:
    """Set a job's freshness SLO (default 15 minutes); the scheduler raises `slo_breached`
    when it is passed (docs/jobs.md, "Freshness and SLOs")."""
    with guard():
        seconds = parse_duration("--freshness", freshness)
        if seconds != int(seconds) or not 60 <= seconds <= 31622400:
            raise BadInput(f"--freshness must be a whole number of seconds from 1 minute to "
                           f"366 days, not {freshness!r}")
        with gateway(gateway_url, token, workspace, state_dir) as target:
            job = target.client.set_job_slo(target.workspace_id(), slug, int(seconds))
        if as_json:
            out.print_json(data=dump(job))
            return
        out.print(f"job {job.slug}: freshness SLO {seconds_text(job.freshness.slo_seconds)}, "
                  f"now {freshness_text(job.freshness)}", markup=False)


@app.command("show")
def show_command(
    slug: Slug,
    workspace: Workspace = None,
    gateway_url: Gateway = None,
    token: Token = None,
    state_dir: StateDir = None,
    as_json: JsonOut = False,
) -> None:
    """A job: its versions (newest first), the latest version's params, its recent runs."""
    with guard():
        with gateway(gateway_url, token, workspace, state_dir) as target:
            job = target.client.get_job(target.workspace_id(), slug)
        if as_json:
            out.print_json(data=dump(job))
            return
        head = Table.grid(padding=(0, 2))
        head.add_row("job", job.slug)
        head.add_row("description", job.description or "-")
        head.add_row("owner", job.owner or "-")
        head.add_row("tags", ", ".join(f"{k}={v}" for k, v in sorted(job.tags.items())) or "-")
        head.add_row("latest version", str(job.latest_version))
        head.add_row("next run", when(job.next_run_at) if job.next_run_at else "-")
        head.add_row("max concurrent runs", str(job.max_concurrent_runs or "no limit"))
        head.add_row("freshness", freshness_text(job.freshness))
        if job.freshness.breached_since:
            head.add_row("breached since", when(job.freshness.breached_since))
        fresh = Table("dataset", "layer", "behind", "data time", "newest source change",
                      "run", title=f"freshness (SLO {seconds_text(job.freshness.slo_seconds)})")
        for d in job.freshness.datasets:
            late = d.lag_seconds > job.freshness.slo_seconds
            fresh.add_row(d.name, d.layer, Text(seconds_text(d.lag_seconds),
                                                style="bold red" if late else "green"),
                          when(d.data_time), d.source_cursor or "-", d.run_id)
        versions = Table("version", "git sha", "digest", "source", "created", "by",
                         title="versions")
        for v in job.versions:
            versions.add_row(str(v.version), v.git_sha[:12], v.digest[:19],
                             (v.source.path + (" (dirty)" if v.source.dirty else ""))
                             if v.source else "-",
                             when(v.created_at), v.created_by_name or "-")
        params = Table("param", "type", "default", "required", "description",
                       title=f"params of version {job.latest_version}")
        latest = job.latest
        for name, p in sorted((latest.params if latest else {}).items()):
            params.add_row(name, p.type, "-" if p.default is None else str(p.default),
                           "yes" if p.required else "no", p.description or "")
        runs = Table("run", "version", "state", "git sha", "created", "duration",
                     title="recent runs")
        for r in job.recent_runs:
            runs.add_row(r.id, str(r.job.version) if r.job else "-", state_text(r.state),
                         r.git_sha[:12], when(r.created_at), duration(r.started_at,
                                                                      r.finished_at))
        parts: list[RenderableType] = [head, versions]
        if latest and latest.params:
            parts.append(params)
        parts.append(runs if job.recent_runs else Text("No runs yet."))
        if job.freshness.datasets:
            parts.append(fresh)
        out.print(Group(*parts))
