"""`control-room github`: the commit statuses and check runs of gate runs (docs/github.md): list
them, and the deliverer that posts them to GitHub."""

from __future__ import annotations

import signal
import threading
from typing import Annotated

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
    option_for,
    out,
    parse_run_id,
    when,
)
from control_room.cli.display import dump
from control_room.settings import ClientSettings

app = new_app("GitHub: commit statuses and check runs of gate runs and their deliverer "
              "(docs/github.md).")

DELIVERIES = ("statuses", "check-runs")


@app.command("statuses")
def statuses_command(
    run: Annotated[str | None, typer.Option("--run", help="Only the statuses of this run.")
                   ] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=500)] = 50,
    workspace: Workspace = None,
    gateway_url: Gateway = None,
    token: Token = None,
    state_dir: StateDir = None,
    as_json: JsonOut = False,
) -> None:
    """The commit statuses of the workspace's gate runs, newest first, with their delivery and
    the run's check run (GitHub's id and page) when it has one."""
    with guard():
        run_id = parse_run_id(run) if run is not None else None
        with gateway(gateway_url, token, workspace, state_dir) as target:
            found = target.client.list_github_statuses(target.workspace_id(), run_id=run_id,
                                                       limit=limit)
    if as_json:
        out.print_json(data=dump(found))
        return
    if not found:
        out.print("No commit statuses.")
        return
    table = Table("created", "repo", "sha", "context", "state", "delivery", "attempts",
                  "last error", "run", "check run")
    for s in found:
        check = (f"{s.check_run_id} {s.check_run_url or ''}".strip()
                 if s.check_run_id is not None else "")
        table.add_row(when(s.created_at), s.repo, s.sha[:12], s.context, s.state, s.delivery,
                      f"{s.attempts}/{s.max_attempts}", s.last_error or "", s.run_id, check)
    out.print(table)


@app.command("check-runs")
def check_runs_command(
    run: Annotated[str | None, typer.Option("--run", help="Only the check run of this run.")
                   ] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=500)] = 50,
    workspace: Workspace = None,
    gateway_url: Gateway = None,
    token: Token = None,
    state_dir: StateDir = None,
    as_json: JsonOut = False,
) -> None:
    """The check runs of the workspace's gate runs, newest first: their status and conclusion,
    GitHub's check run id and page, and their delivery (`github deliver --as check-runs`)."""
    with guard():
        run_id = parse_run_id(run) if run is not None else None
        with gateway(gateway_url, token, workspace, state_dir) as target:
            found = target.client.list_github_check_runs(target.workspace_id(), run_id=run_id,
                                                         limit=limit)
    if as_json:
        out.print_json(data=dump(found))
        return
    if not found:
        out.print("No check runs.")
        return
    table = Table("updated", "repo", "sha", "name", "status", "conclusion", "check run",
                  "delivery", "attempts", "last error", "run")
    for c in found:
        check = (f"{c.check_run_id} {c.html_url or ''}".strip()
                 if c.check_run_id is not None else "")
        table.add_row(when(c.updated_at), c.repo, c.sha[:12], c.context, c.status,
                      c.conclusion or "", check,
                      f"{c.delivery} (v{c.delivered_version}/{c.version})",
                      f"{c.attempts}/{c.max_attempts}", c.last_error or "", c.run_id)
    out.print(table)


@app.command("deliver")
def deliver_command(
    repo: Annotated[list[str] | None, typer.Option(
        "--repo", help="OWNER/NAME or OWNER/*: a repository this deliverer posts statuses to "
                       "(repeatable; statuses of other repositories fail at once).")] = None,
    deliver_as: Annotated[list[str] | None, typer.Option(
        "--as", help="What to post: `statuses` (commit statuses, the default) or `check-runs` "
                     "(check runs with a summary: a GitHub App token or GITHUB_TOKEN with "
                     "checks: write); repeat it for both.")] = None,
    ui_url: Annotated[str | None, option_for(
        ClientSettings, "ui_url", "--ui-url",
        help="With --as check-runs: the Control Room UI's root; a check run's details_url is "
             "its run's github_run_url label, else `<ui-url>/runs/<run id>`.")] = None,
    github_token: Annotated[str, typer.Option(
        "--github-token", help="The GitHub token as a secret reference (`env:NAME` or "
                               "`file:/path`), resolved under CONTROL_ROOM_SECRET_ALLOW.")
    ] = "env:GITHUB_TOKEN",
    api_url: Annotated[str, typer.Option(
        "--api-url", help="GitHub's REST API (GitHub Enterprise: https://HOST/api/v3).")
    ] = "https://api.github.com",
    once: Annotated[bool, typer.Option("--once", help="One pass, then exit.")] = False,
    interval: Annotated[float, typer.Option(
        "--interval", min=0.1, max=3600, help="Seconds to wait when nothing was due.")] = 5.0,
    limit: Annotated[int, typer.Option("--limit", min=1, max=500,
                                       help="Statuses claimed per pass.")] = 20,
    timeout: Annotated[float, typer.Option("--timeout", min=0.5, max=300,
                                           help="Seconds each POST may take.")] = 10.0,
    gateway_url: Gateway = None,
    token: Token = None,
    state_dir: StateDir = None,
    as_json: JsonOut = False,
) -> None:
    """Post the commit statuses (or check runs) of gate runs to GitHub (a service_role token),
    recording every attempt; failed ones are retried with backoff. Runs until stopped, or
    `--once`."""
    from control_room.contract.client import Forbidden
    from control_room.integrations.github.checks import deliver_check_runs
    from control_room.integrations.github.statuses import (
        GithubConfigError,
        StatusReport,
        deliver_statuses,
        resolve_token,
    )
    from executor.secrets import POLICY_VARIABLE, SecretPolicy

    with guard():
        import os

        modes = list(dict.fromkeys(deliver_as or ["statuses"]))
        for mode in modes:
            if mode not in DELIVERIES:
                raise BadInput(f"--as must be statuses or check-runs, not {mode!r}")
        if ui_url is not None and not ui_url.startswith(("https://", "http://")):
            raise BadInput(f"--ui-url must be an http(s) URL, not {ui_url!r}")
        try:
            policy = SecretPolicy.parse(os.environ.get(POLICY_VARIABLE))
            if not repo:
                raise GithubConfigError("give --repo OWNER/NAME or OWNER/* (the repositories "
                                        "this deliverer's token may post statuses to)")
            resolve_token(github_token, policy)        # refused before anything is claimed
        except (ValueError, GithubConfigError) as exc:
            raise BadInput(str(exc)) from None
        if not api_url.startswith(("https://", "http://")):
            raise BadInput(f"--api-url must be an http(s) URL, not {api_url!r}")
        stop = threading.Event()
        if not once:
            signal.signal(signal.SIGTERM, lambda *_: stop.set())
        keys = ("claimed", "delivered", "retried", "refused", "unrecorded")
        totals = {mode: dict.fromkeys(keys, 0) for mode in modes}
        with gateway(gateway_url, token, None, state_dir) as target:
            try:
                while not stop.is_set():
                    busy = False
                    for mode in modes:
                        report: StatusReport
                        if mode == "statuses":
                            report = deliver_statuses(
                                target.client, token_ref=github_token, repos=repo,
                                api_url=api_url, policy=policy, limit=limit, timeout=timeout,
                                lease_seconds=max(60, int(timeout * 3)))
                        else:
                            report = deliver_check_runs(
                                target.client, token_ref=github_token, repos=repo,
                                api_url=api_url, policy=policy, limit=limit, timeout=timeout,
                                lease_seconds=min(3600, max(120, int(timeout * 12))),
                                gateway_url=target.url, ui_url=ui_url)
                        for key in keys:
                            totals[mode][key] += getattr(report, key)
                        busy = busy or report.claimed >= limit
                        if not as_json and report.claimed:
                            what = "statuses" if mode == "statuses" else "check runs"
                            err.print(f"{what}: delivered {report.delivered}, retrying "
                                      f"{report.retried}, refused {report.refused} of "
                                      f"{report.claimed} claimed", markup=False)
                    if once:
                        break
                    if not busy:
                        stop.wait(interval)
            except Forbidden:
                raise BadInput("github deliver needs a service_role token (`control-room token "
                               "create --service`, CONTROL_ROOM_TOKEN)") from None
            except GithubConfigError as exc:
                raise BadInput(str(exc)) from None
            except KeyboardInterrupt:
                pass
        if as_json:
            # one kind: its counts; both: {"statuses": {...}, "check_runs": {...}}
            out.print_json(data=totals[modes[0]] if len(modes) == 1 else {
                mode.replace("-", "_"): counts for mode, counts in totals.items()})
        else:
            for mode, counts in totals.items():
                what = "statuses" if mode == "statuses" else "check runs"
                out.print(f"github {what}: {counts['delivered']} delivered, "
                          f"{counts['retried']} failed attempts, {counts['refused']} refused, "
                          f"{counts['claimed']} claimed", markup=False)
