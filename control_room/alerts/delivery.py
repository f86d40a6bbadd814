"""The alert deliverer: claims pending alerts through the contract, POSTs each to its
destination, records every attempt (docs/alerts.md).

A client of the contract over HTTP (service_role token), never a database connection. A
destination's URL and headers are secret references (`env:NAME`, `file:/path`) resolved here,
under this process's own `CONTROL_ROOM_SECRET_ALLOW` (executor/secrets.py, the worker's
policy; `CONTROL_ROOM_*` never resolves); a generic webhook may give a literal URL instead.
The URL is never logged and never put in an error: what is recorded names the destination,
the reference and the HTTP status, and every resolved value is masked out of exception texts.

Delivery is at least once: an alert whose attempt is not recorded (a crash, a lost answer) is
claimed again when its lease expires, so receivers dedupe by the alert id (the body's `id`
and the `X-Control-Room-Alert-Id` header). 2xx is delivered; any other status, a redirect
(never followed), a timeout or a connection error is a failed attempt, retried with backoff
by the control plane (5 s, 30 s, 2 min, 10 min, 30 min, then hourly; failed after 8).
"""

from __future__ import annotations

import logging
import os
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from control_room.contract.client import ContractClient, ContractError
from control_room.contract.models import ClaimedAlert
from executor.secrets import POLICY_VARIABLE, Masker, SecretError, SecretPolicy

__all__ = [
    "ALERT_ID_HEADER",
    "DEFAULT_TIMEOUT",
    "DeliveryReport",
    "DestinationError",
    "alert_body",
    "deliver_pending",
    "policy_from_environment",
    "slack_body",
]

log = logging.getLogger("control_room.alerts")

ALERT_ID_HEADER = "X-Control-Room-Alert-Id"
DEFAULT_TIMEOUT = 10.0
USER_AGENT = "control-room-alerts/0.1"
MAX_ERROR = 500


class _HideResolved(logging.Filter):
    """Masks every destination value this process resolved (URLs, their paths, header
    values) in the records of httpx and httpcore, which log each request's URL."""

    def __init__(self) -> None:
        super().__init__()
        self.masker = Masker()

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.masker:
            return True
        try:
            message = record.getMessage()
        except Exception:       # a bad format: leave it to the handler
            return True
        masked = self.masker.text(message)
        if masked != message:
            record.msg, record.args = masked, None
        return True


_RESOLVED = _HideResolved()
for _name in ("httpx", "httpcore"):
    logging.getLogger(_name).addFilter(_RESOLVED)


class DestinationError(Exception):
    """A destination that cannot be used as configured (a reference the policy refuses, a
    URL that is not http(s)). The message names the destination and the reference, never a
    resolved value."""


@dataclass(frozen=True)
class DeliveryReport:
    """What one `deliver_pending` pass did."""

    claimed: int = 0
    delivered: int = 0
    retried: int = 0
    """Attempts that failed and were recorded (the control plane retries or gives up)."""
    unrecorded: int = 0
    """Attempts whose record was refused (the lease was lost to another deliverer)."""


def policy_from_environment(environ: Mapping[str, str] | None = None) -> SecretPolicy:
    """This process's policy (`CONTROL_ROOM_SECRET_ALLOW`); ValueError naming a bad entry."""
    env = os.environ if environ is None else environ
    return SecretPolicy.parse(env.get(POLICY_VARIABLE))


# ------------------------------------------------------------------------------ the bodies


def alert_body(alert: ClaimedAlert) -> dict[str, Any]:
    """The generic webhook's JSON: `{id, event, workspace, subject, payload, created_at}`."""
    return {"id": alert.id, "event": alert.event, "workspace": alert.workspace,
            "subject": alert.subject, "payload": alert.payload,
            "created_at": alert.created_at.isoformat()}


def _mrkdwn(text: Any) -> str:
    """Text for Slack's mrkdwn: &, < and > escaped (so a message cannot mention or link)."""
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _headline(alert: ClaimedAlert) -> str:
    p = alert.payload
    error = f": {p['error']}" if p.get("error") else ""
    if alert.event == "run_failed":
        return f"Run {p.get('run_id')} ({p.get('spec_slug')}) failed{error}"
    if alert.event == "phase_dead_lettered":
        return (f"Phase {p.get('phase')} of run {p.get('run_id')} ({p.get('spec_slug')}) is "
                f"dead-lettered after {p.get('attempt')}/{p.get('max_attempts')} "
                f"attempts{error}")
    if alert.event == "schedule_tick_failed":
        return (f"Schedule {p.get('schedule_id')}: the tick for {p.get('scheduled_for')} "
                f"failed{error}")
    if alert.event == "lease_expiries":
        return f"{p.get('count')} lease expiries in the last hour (rule {alert.rule})"
    return f"{alert.event.replace('_', ' ')} (rule {alert.rule})"


def slack_body(alert: ClaimedAlert) -> dict[str, Any]:
    """The Slack incoming-webhook shape: `text` (the notification) and `blocks`."""
    headline = f"[{alert.workspace}] {_headline(alert)}"
    context = (f"alert `{alert.id}` · rule {alert.rule} · {alert.event} · "
               f"{alert.created_at.isoformat()}")
    cli = (alert.payload.get("links") or {}).get("cli") if isinstance(
        alert.payload.get("links"), dict) else None
    blocks: list[dict[str, Any]] = [
        {"type": "section", "text": {"type": "mrkdwn", "text": _mrkdwn(headline)}},
        {"type": "context", "elements": [{"type": "mrkdwn", "text": _mrkdwn(context)}]},
    ]
    if cli:
        blocks.append({"type": "context",
                       "elements": [{"type": "mrkdwn", "text": _mrkdwn(f"`{cli}`")}]})
    return {"text": headline, "blocks": blocks}


# ------------------------------------------------------------------------- a destination


def _is_reference(value: str) -> bool:
    return value.startswith(("env:", "file:"))


def _resolve(alert: ClaimedAlert, policy: SecretPolicy, environ: Mapping[str, str] | None,
             masker: Masker) -> tuple[str, dict[str, str]]:
    """The destination's URL and headers, resolved under `policy`."""
    dest = alert.destination
    where = f"destination {dest.name}"
    try:
        url = policy.resolve(dest.url, environ) if _is_reference(dest.url) else dest.url
        masker.add([url])
        headers: dict[str, str] = {}
        for name, reference in sorted(dest.headers.items()):
            try:
                value = policy.resolve(reference, environ)
            except SecretError as exc:
                raise SecretError(f"header {name}: {exc.message}") from None
            masker.add([value])
            headers[name] = value
    except SecretError as exc:
        raise DestinationError(f"{where}: {exc.message}") from None
    url = url.strip()
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        shown = dest.url if _is_reference(dest.url) else "its url"
        raise DestinationError(f"{where}: {shown} does not hold an http(s) URL")
    # the path and query of a webhook URL are its credential (Slack: /services/T/B/secret)
    masker.add([p for p in (parts.path, parts.query, parts.netloc + parts.path) if len(p) > 1])
    _RESOLVED.masker.add(masker.values)
    if any(ch in value for value in headers.values() for ch in "\r\n"):
        raise DestinationError(f"{where}: a header value holds a line break")
    return url, headers


def _cap(text: str) -> str:
    return text if len(text) <= MAX_ERROR else text[:MAX_ERROR - 3] + "..."


def _attempt(alert: ClaimedAlert, http: httpx.Client, policy: SecretPolicy,
             environ: Mapping[str, str] | None,
             timeout: float) -> tuple[bool, int | None, str | None]:
    """POST one alert: (ok, HTTP status, error). The error names no resolved value."""
    masker = Masker()
    try:
        url, extra = _resolve(alert, policy, environ, masker)
    except DestinationError as exc:
        return False, None, _cap(str(exc))
    body = slack_body(alert) if alert.destination.type == "slack" else alert_body(alert)
    headers = {**extra, "Content-Type": "application/json", "User-Agent": USER_AGENT,
               ALERT_ID_HEADER: alert.id}
    try:
        # the answer's body is never read: only its status counts
        with http.stream("POST", url, json=body, headers=headers, timeout=timeout,
                         follow_redirects=False) as response:
            status, phrase = response.status_code, response.reason_phrase
    except httpx.TimeoutException:
        return False, None, f"timed out after {timeout:g} s"
    except httpx.HTTPError as exc:
        detail = masker.text(str(exc)) or "no detail"
        return False, None, _cap(f"{type(exc).__name__}: {detail}")
    if 200 <= status < 300:
        return True, status, None
    if 300 <= status < 400:
        return False, status, f"HTTP {status}: a redirect (never followed)"
    reason = masker.text(phrase or "")
    return False, status, _cap(f"HTTP {status}{' ' + reason if reason else ''}")


def deliver_pending(client: ContractClient, *, policy: SecretPolicy | None = None,
                    environ: Mapping[str, str] | None = None, http: httpx.Client | None = None,
                    limit: int = 20, lease_seconds: int = 60,
                    timeout: float = DEFAULT_TIMEOUT) -> DeliveryReport:
    """Claim up to `limit` due alerts (`client` holds a service_role token), POST each once
    and record the attempt; answers what was done. `policy`: the secret policy (default
    `CONTROL_ROOM_SECRET_ALLOW` of `environ`, or of this process); `http`: the client to post
    with (default: a new one); `timeout`: seconds per POST (keep it under `lease_seconds`).

    Safe to call from any loop (`control-room alerts deliver`, a scheduler): several
    deliverers never hold the same alert (claims SKIP LOCKED), and an attempt not recorded is
    claimed again after the lease. Contract errors of `claim_alerts` propagate (a token that
    is not service_role is Forbidden); a refused record (a lost lease) is counted and
    logged."""
    if policy is None:
        policy = policy_from_environment(environ)
    claimed = client.claim_alerts(limit=limit, lease_seconds=lease_seconds)
    if not claimed:
        return DeliveryReport()
    delivered = retried = unrecorded = 0
    own = http is None
    poster = httpx.Client() if http is None else http
    try:
        for alert in claimed:
            started = time.monotonic()
            ok, status, error = _attempt(alert, poster, policy, environ, timeout)
            duration = int((time.monotonic() - started) * 1000)
            try:
                client.record_alert_delivery(alert.id, ok, http_status=status, error=error,
                                             duration_ms=duration)
            except ContractError as exc:
                unrecorded += 1
                log.warning("alert %s (%s to %s): the attempt was not recorded: %s",
                            alert.id, alert.event, alert.destination.name, exc.message)
                continue
            if ok:
                delivered += 1
                log.info("alert %s (%s) delivered to %s (HTTP %s, attempt %d)", alert.id,
                         alert.event, alert.destination.name, status, alert.attempt)
            else:
                retried += 1
                log.warning("alert %s (%s) to %s: attempt %d/%d failed: %s", alert.id,
                            alert.event, alert.destination.name, alert.attempt,
                            alert.max_attempts, error)
    finally:
        if own:
            poster.close()
    return DeliveryReport(claimed=len(claimed), delivered=delivered, retried=retried,
                          unrecorded=unrecorded)
