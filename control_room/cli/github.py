"""`control-room github`: the commit statuses of gate runs (docs/github.md): list them, and
the deliverer that posts them to GitHub."""

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
    out,
    parse_run_id,
    when,
)
from control_room.cli.display import dump

app = new_app("GitHub: commit statuses of gate runs and their deliverer (docs/github.md).")


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
    """The commit statuses of the workspace's gate runs, newest first, with their delivery."""
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
                  "last error", "run")
    for s in found:
        table.add_row(when(s.created_at), s.repo, s.sha[:12], s.context, s.state, s.delivery,
                      f"{s.attempts}/{s.max_attempts}", s.last_error or "", s.run_id)
    out.print(table)


@app.command("deliver")
def deliver_command(
    repo: Annotated[list[str] | None, typer.Option(
        "--repo", help="OWNER/NAME or OWNER/*: a repository this deliverer posts statuses to "
                       "(repeatable; statuses of other repositories fail at once).")] = None,
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
    """Post the commit statuses of gate runs to GitHub (a service_role token), recording every
    attempt; failed ones are retried with backoff. Runs until stopped, or `--once`."""
    from control_room.contract.client import Forbidden
    from control_room.integrations.github.statuses import (
        GithubConfigError,
        deliver_statuses,
        resolve_token,
    )
    from executor.secrets import POLICY_VARIABLE, SecretPolicy

    with guard():
        import os

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
        totals = {"claimed": 0, "delivered": 0, "retried": 0, "refused": 0, "unrecorded": 0}
        with gateway(gateway_url, token, None, state_dir) as target:
            try:
                while not stop.is_set():
                    report = deliver_statuses(target.client, token_ref=github_token,
                                              repos=repo, api_url=api_url, policy=policy,
                                              limit=limit, timeout=timeout,
                                              lease_seconds=max(60, int(timeout * 3)))
                    for key in totals:
                        totals[key] += getattr(report, key)
                    if not as_json and report.claimed:
                        err.print(f"delivered {report.delivered}, retrying {report.retried}, "
                                  f"refused {report.refused} of {report.claimed} claimed",
                                  markup=False)
                    if once:
                        break
                    if report.claimed < limit:
                        stop.wait(interval)
            except Forbidden:
                raise BadInput("github deliver needs a service_role token (`control-room token "
                               "create --service`, CONTROL_ROOM_TOKEN)") from None
            except GithubConfigError as exc:
                raise BadInput(str(exc)) from None
            except KeyboardInterrupt:
                pass
        if as_json:
            out.print_json(data=totals)
        else:
            out.print(f"github statuses: {totals['delivered']} delivered, {totals['retried']} "
                      f"failed attempts, {totals['refused']} refused, {totals['claimed']} "
                      "claimed", markup=False)
