"""`control-room alerts`: alert rules and webhook destinations of a workspace, recent alerts
with their delivery state, and the deliverer (docs/alerts.md, docs/cli.md).

A destination's URL is a secret reference (`env:NAME`, `file:/path`): a Slack incoming-webhook
URL is a credential, so a literal one is refused here, before anything is sent. `deliver`
resolves references in this process under its own `CONTROL_ROOM_SECRET_ALLOW` and needs a
service_role token (`control-room token create --service`).
"""

from __future__ import annotations

import json
import signal
import threading
import urllib.parse
from typing import Annotated, Any, get_args

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
from control_room.contract.vocabulary import AlertDestinationType, AlertEvent, AlertState

app = new_app("Alerts: rules, webhook destinations, recent alerts, the deliverer.")
rules_app = new_app("Alert rules of a workspace: which events raise an alert, sent where.")
destinations_app = new_app("Where alerts go: generic JSON webhooks and Slack incoming "
                           "webhooks, their URLs by secret reference.")
app.add_typer(rules_app, name="rules")
app.add_typer(destinations_app, name="destinations")

EVENTS: tuple[str, ...] = get_args(AlertEvent)
TYPES: tuple[str, ...] = get_args(AlertDestinationType)
STATES: tuple[str, ...] = get_args(AlertState)

Name = Annotated[str, typer.Argument(help="The name (1-63 lower-case letters, digits, _ or "
                                          "-).", show_default=False)]
Description = Annotated[str | None, typer.Option("--description", help="What it is for.")]


def _choice(option: str, value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise BadInput(f"{option} must be one of {', '.join(allowed)}, not {value!r}")
    return value


def _check_url(kind: str, url: str) -> str:
    """A reference, or (webhook) a literal http(s) URL without credentials. A refused
    literal URL is never echoed: it may be the credential."""
    from executor.secrets import SecretError, parse_reference

    if url.startswith(("env:", "file:")):
        try:
            parse_reference(url)
        except SecretError as exc:
            raise BadInput(f"--url: {exc.message}") from None
        return url
    if kind == "slack":
        raise BadInput("--url of a slack destination must be a secret reference (env:NAME or "
                       "file:/absolute/path): a Slack webhook URL is a credential and is never "
                       "stored; put it in an environment variable or a file the deliverer may "
                       "read (its CONTROL_ROOM_SECRET_ALLOW)")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise BadInput("--url must be a secret reference (env:NAME or file:/absolute/path) or "
                       "an http(s):// URL")
    if "@" in parts.netloc or parts.query or parts.fragment:
        raise BadInput("--url: a literal webhook URL carries no user:password@, query string "
                       "or fragment; a URL with a credential goes in a secret reference "
                       "(env:NAME or file:/absolute/path)")
    return url


def _headers(values: list[str] | None) -> dict[str, str]:
    from executor.secrets import SecretError, parse_reference

    found = pairs("--header", values)
    for name, reference in found.items():
        try:
            parse_reference(reference)
        except SecretError:
            raise BadInput(f"--header {name}: the value must be a secret reference (env:NAME or "
                           "file:/absolute/path); header values are never stored") from None
    return found


# ------------------------------------------------------------------------------ destinations


@destinations_app.command("create")
def destination_create(
    name: Name,
    kind: Annotated[str, typer.Option("--type", help="webhook (generic JSON) or slack "
                                                      "(incoming webhook).")] = "webhook",
    url: Annotated[str, typer.Option(
        "--url", help="env:NAME or file:/absolute/path holding the URL; a webhook without "
                      "credentials may give https://host/path itself.",
        show_default=False)] = "",
    header: Annotated[list[str] | None, typer.Option(
        "--header", help="NAME=REFERENCE: a header sent with each alert, its value by "
                         "reference (repeatable), e.g. Authorization=env:HOOK_TOKEN.")] = None,
    description: Description = None,
    workspace: Workspace = None,
    gateway_url: Gateway = None,
    token: Token = None,
    state_dir: StateDir = None,
    as_json: JsonOut = False,
) -> None:
    """Register an alert destination (admin)."""
    with guard():
        kind = _choice("--type", kind, TYPES)
        if not url:
            raise BadInput("--url is required (env:NAME or file:/absolute/path)")
        checked, headers = _check_url(kind, url), _headers(header)
        with gateway(gateway_url, token, workspace, state_dir) as target:
            made = target.client.create_alert_destination(
                target.workspace_id(), name, kind, checked, headers=headers,
                description=description)
        if as_json:
            out.print_json(data=dump(made))
        else:
            out.print(f"alert destination {made.name} created ({made.type})", markup=False)


@destinations_app.command("list")
def destination_list(
    workspace: Workspace = None,
    gateway_url: Gateway = None,
    token: Token = None,
    state_dir: StateDir = None,
    as_json: JsonOut = False,
) -> None:
    """The workspace's alert destinations (developer or admin): references, never values."""
    with guard(), gateway(gateway_url, token, workspace, state_dir) as target:
        found = target.client.list_alert_destinations(target.workspace_id())
    if as_json:
        out.print_json(data=dump(found))
        return
    if not found:
        out.print("No alert destinations.")
        return
    table = Table("name", "type", "url", "headers", "description")
    for d in found:
        table.add_row(d.name, d.type, d.url,
                      ", ".join(f"{k}={v}" for k, v in sorted(d.headers.items())) or "-",
                      d.description or "")
    out.print(table)


@destinations_app.command("delete")
def destination_delete(
    name: Name,
    workspace: Workspace = None,
    gateway_url: Gateway = None,
    token: Token = None,
    state_dir: StateDir = None,
    as_json: JsonOut = False,
) -> None:
    """Delete a destination no rule uses, with its alerts (admin)."""
    with guard(), gateway(gateway_url, token, workspace, state_dir) as target:
        deleted = target.client.delete_alert_destination(target.workspace_id(), name)
    if as_json:
        out.print_json(data=dump(deleted))
    else:
        out.print(f"alert destination {deleted.name} deleted", markup=False)


# ------------------------------------------------------------------------------------ rules


@rules_app.command("create")
def rule_create(
    name: Name,
    event: Annotated[str, typer.Option("--event", help=f"One of {', '.join(EVENTS)}.",
                                       show_default=False)],
    destination: Annotated[str, typer.Option("--destination", help="The destination's name.",
                                             show_default=False)],
    threshold: Annotated[int | None, typer.Option(
        "--threshold", min=1, help="lease_expiries: the expiries per hour that raise it.")] = None,
    spec_slug: Annotated[str | None, typer.Option(
        "--spec-slug", help="Only runs of this spec (run_failed, phase_dead_lettered).")] = None,
    job: Annotated[str | None, typer.Option("--job", help="Only runs of this job.")] = None,
    label: Annotated[list[str] | None, typer.Option(
        "--label", help="KEY=VALUE: only runs with this label (repeatable).")] = None,
    disabled: Annotated[bool, typer.Option("--disabled", help="Create it disabled.")] = False,
    description: Description = None,
    workspace: Workspace = None,
    gateway_url: Gateway = None,
    token: Token = None,
    state_dir: StateDir = None,
    as_json: JsonOut = False,
) -> None:
    """Add an alert rule (admin). slo_breached rules are accepted now and raised by the SLO
    checks of a later release."""
    with guard():
        event = _choice("--event", event, EVENTS)
        filters: dict[str, Any] = {}
        if spec_slug is not None:
            filters["spec_slug"] = spec_slug
        if job is not None:
            filters["job"] = job
        if label:
            filters["labels"] = pairs("--label", label)
        with gateway(gateway_url, token, workspace, state_dir) as target:
            made = target.client.create_alert_rule(
                target.workspace_id(), name, event, destination, threshold=threshold,
                filters=filters, enabled=not disabled, description=description)
        if as_json:
            out.print_json(data=dump(made))
        else:
            out.print(f"alert rule {made.name} created ({made.event} -> {made.destination})",
                      markup=False)


@rules_app.command("list")
def rule_list(
    workspace: Workspace = None,
    gateway_url: Gateway = None,
    token: Token = None,
    state_dir: StateDir = None,
    as_json: JsonOut = False,
) -> None:
    """The workspace's alert rules (developer or admin)."""
    with guard(), gateway(gateway_url, token, workspace, state_dir) as target:
        found = target.client.list_alert_rules(target.workspace_id())
    if as_json:
        out.print_json(data=dump(found))
        return
    if not found:
        out.print("No alert rules.")
        return
    table = Table("name", "event", "threshold", "filters", "destination", "enabled")
    for r in found:
        table.add_row(r.name, r.event, "-" if r.threshold is None else str(r.threshold),
                      json.dumps(r.filters, sort_keys=True) if r.filters else "-",
                      r.destination, "yes" if r.enabled else "no")
    out.print(table)


@rules_app.command("delete")
def rule_delete(
    name: Name,
    workspace: Workspace = None,
    gateway_url: Gateway = None,
    token: Token = None,
    state_dir: StateDir = None,
    as_json: JsonOut = False,
) -> None:
    """Delete an alert rule (admin); the alerts it raised stay."""
    with guard(), gateway(gateway_url, token, workspace, state_dir) as target:
        deleted = target.client.delete_alert_rule(target.workspace_id(), name)
    if as_json:
        out.print_json(data=dump(deleted))
    else:
        out.print(f"alert rule {deleted.name} deleted", markup=False)


# ----------------------------------------------------------------------------------- alerts


def _subject(subject: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in subject.items() if v is not None) or "-"


@app.command("list")
def alerts_list(
    state: Annotated[str | None, typer.Option("--state", help=f"One of {', '.join(STATES)}."
                                              )] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=500)] = 50,
    workspace: Workspace = None,
    gateway_url: Gateway = None,
    token: Token = None,
    state_dir: StateDir = None,
    as_json: JsonOut = False,
) -> None:
    """Recent alerts, newest first, with their delivery state and attempts."""
    with guard():
        if state is not None:
            _choice("--state", state, STATES)
        with gateway(gateway_url, token, workspace, state_dir) as target:
            found = target.client.list_alerts(target.workspace_id(), state=state, limit=limit)
    if as_json:
        out.print_json(data=dump(found))
        return
    if not found:
        out.print("No alerts.")
        return
    table = Table("created", "event", "subject", "rule", "destination", "state", "attempts",
                  "last error", "id")
    for a in found:
        table.add_row(when(a.created_at), a.event, _subject(a.subject), a.rule, a.destination,
                      a.state, f"{a.attempts}/{a.max_attempts}", a.last_error or "", a.id)
    out.print(table)


@app.command("deliver")
def alerts_deliver(
    once: Annotated[bool, typer.Option("--once", help="One pass, then exit.")] = False,
    interval: Annotated[float, typer.Option(
        "--interval", min=0.1, max=3600, help="Seconds to wait when nothing was due.")] = 5.0,
    limit: Annotated[int, typer.Option("--limit", min=1, max=500,
                                       help="Alerts claimed per pass.")] = 20,
    timeout: Annotated[float, typer.Option("--timeout", min=0.5, max=300,
                                           help="Seconds each POST may take.")] = 10.0,
    gateway_url: Gateway = None,
    token: Token = None,
    state_dir: StateDir = None,
    as_json: JsonOut = False,
) -> None:
    """Deliver pending alerts (a service_role token): POST each to its destination, record
    every attempt; failed ones are retried with backoff. Runs until stopped, or `--once`."""
    from control_room.alerts import deliver_pending, policy_from_environment
    from control_room.contract.client import Forbidden

    with guard():
        try:
            policy = policy_from_environment()
        except ValueError as exc:
            raise BadInput(str(exc)) from None
        stop = threading.Event()
        if not once:
            signal.signal(signal.SIGTERM, lambda *_: stop.set())
        totals = {"claimed": 0, "delivered": 0, "retried": 0, "unrecorded": 0}
        with gateway(gateway_url, token, None, state_dir) as target:
            try:
                while not stop.is_set():
                    report = deliver_pending(target.client, policy=policy, limit=limit,
                                             lease_seconds=max(60, int(timeout * 3)),
                                             timeout=timeout)
                    for key in totals:
                        totals[key] += getattr(report, key)
                    if not as_json and report.claimed:
                        err.print(f"delivered {report.delivered}, failed {report.retried} of "
                                  f"{report.claimed} claimed", markup=False)
                    if once:
                        break
                    if report.claimed < limit:
                        stop.wait(interval)
            except Forbidden:
                raise BadInput("alerts deliver needs a service_role token (`control-room "
                               "token create --service`, CONTROL_ROOM_TOKEN): only the "
                               "deliverer claims alerts") from None
            except KeyboardInterrupt:
                pass
        if as_json:
            out.print_json(data=totals)
        else:
            out.print(f"alerts: {totals['delivered']} delivered, {totals['retried']} failed "
                      f"attempts, {totals['claimed']} claimed", markup=False)
