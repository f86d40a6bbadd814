"""Commit statuses of gate runs (docs/github.md): claims the statuses the control plane
recorded (a run labelled `github_repo` and `github_sha` changed state) and posts each to
GitHub's REST API, `POST {api}/repos/{owner}/{repo}/statuses/{sha}` with `state`,
`target_url`, `description` and `context`, recording every attempt.

A client of the contract over HTTP (service_role token), never a database connection. The
GitHub token is a secret reference (`env:NAME`, `file:/path`) resolved here under this process's
`CONTROL_ROOM_SECRET_ALLOW` (executor/secrets.py); it is never logged, recorded or put in an
error. Only repositories matching the deliverer's `repos` patterns are posted to (any member who
may create runs may label one with any repository: the deliverer's token must not be theirs to
aim).

GitHub's answers: 201 is delivered; 422 (validation failed: an unknown sha, 1000 statuses for a
sha and context) and 404 (no such repository, or not visible to the token) fail at once; 403 or
429 with `x-ratelimit-remaining: 0` or `retry-after` are retried after the reset; anything else
(401 bad credentials, another 403, 5xx, a timeout) is retried with the control plane's backoff.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from control_room.contract.client import ContractClient, ContractError
from control_room.contract.models import ClaimedGithubStatus
from executor.secrets import POLICY_VARIABLE, Masker, SecretError, SecretPolicy

__all__ = [
    "API_URL",
    "API_VERSION",
    "Attempt",
    "GithubConfigError",
    "StatusReport",
    "classify",
    "deliver_statuses",
    "repo_allowed",
    "resolve_token",
    "status_body",
]

log = logging.getLogger("control_room.github")

API_URL = "https://api.github.com"
API_VERSION = "2022-11-28"
USER_AGENT = "control-room-github/0.1"
MAX_ERROR = 500
FINAL_STATUSES = frozenset({404, 422})


class GithubConfigError(Exception):
    """The deliverer cannot run as configured (a token reference the policy refuses, no
    repository pattern). The message never holds the token."""


@dataclass(frozen=True)
class StatusReport:
    claimed: int = 0
    delivered: int = 0
    retried: int = 0
    """Failed attempts recorded (the control plane retries, supersedes or gives up)."""
    refused: int = 0
    """Statuses failed at once (422, 404, a repository outside the patterns)."""
    unrecorded: int = 0

    @classmethod
    def of(cls, claimed: int, counts: Counter[str]) -> StatusReport:
        """The report of a pass that claimed `claimed`, from its attempts' outcomes."""
        return cls(claimed, counts["delivered"], counts["retried"], counts["refused"],
                   counts["unrecorded"])


@dataclass(frozen=True)
class Attempt:
    ok: bool
    http_status: int | None
    error: str | None
    retry: bool = True
    retry_after_seconds: int | None = None

    @property
    def outcome(self) -> str:
        """How a recorded attempt counts in the pass's report."""
        return "delivered" if self.ok else "retried" if self.retry else "refused"


def resolve_token(reference: str, policy: SecretPolicy,
                  environ: Mapping[str, str] | None = None) -> str:
    """The GitHub token `reference` names, under `policy`."""
    if not reference.startswith(("env:", "file:")):
        raise GithubConfigError("the GitHub token must be a secret reference (env:NAME or "
                                "file:/absolute/path), never the token itself")
    try:
        token = policy.resolve(reference, environ).strip()
    except SecretError as exc:
        raise GithubConfigError(f"GitHub token {reference}: {exc.message}") from None
    if not token or any(ch in token for ch in "\r\n "):
        raise GithubConfigError(f"GitHub token {reference}: empty or not one line")
    return token


def repo_allowed(repo: str, patterns: Sequence[str]) -> bool:
    """Whether `owner/name` matches one of `patterns` (`owner/name`, `owner/*`), case-blind."""
    return any(fnmatch.fnmatchcase(repo.lower(), pattern.lower()) for pattern in patterns)


def status_body(status: ClaimedGithubStatus) -> dict[str, Any]:
    """The documented request body: state, target_url (when known), description, context."""
    body: dict[str, Any] = {"state": status.state, "description": status.description[:140],
                            "context": status.context}
    if status.target_url:
        body["target_url"] = status.target_url
    return body


def _cap(text: str) -> str:
    return text if len(text) <= MAX_ERROR else text[:MAX_ERROR - 3] + "..."


def _retry_after(response: httpx.Response, now: float) -> int | None:
    """Seconds until a rate limit resets (`retry-after`, or `x-ratelimit-reset` when
    `x-ratelimit-remaining` is 0), None when the answer is not a rate limit."""
    headers = response.headers
    if headers.get("retry-after", "").strip().isdigit():
        return min(int(headers["retry-after"]), 86400)
    if headers.get("x-ratelimit-remaining") == "0" and headers.get(
            "x-ratelimit-reset", "").strip().isdigit():
        return max(0, min(int(headers["x-ratelimit-reset"]) - int(now), 86400))
    return None


def classify(response: httpx.Response, masker: Masker, *, now: float | None = None) -> Attempt:
    """One GitHub answer as an attempt to record (GitHub's `message` quoted, masked)."""
    status = response.status_code
    if 200 <= status < 300:
        return Attempt(True, status, None)
    try:
        message = str(response.json().get("message") or "")
    except (ValueError, AttributeError):
        message = ""
    text = masker.text(" ".join(f"HTTP {status} {message}".split()))
    if status in FINAL_STATUSES:
        return Attempt(False, status, _cap(text), retry=False)
    if status in (403, 429):
        wait = _retry_after(response, time.time() if now is None else now)
        if wait is not None:
            return Attempt(False, status, _cap(f"{text} (rate limited: retry in {wait} s)"),
                           retry_after_seconds=wait)
    return Attempt(False, status, _cap(text))


def _post(status: ClaimedGithubStatus, http: httpx.Client, api_url: str, token: str,
          timeout: float, masker: Masker) -> Attempt:
    url = f"{api_url.rstrip('/')}/repos/{status.repo}/statuses/{status.sha}"
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/vnd.github+json",
               "X-GitHub-Api-Version": API_VERSION, "User-Agent": USER_AGENT}
    try:
        response = http.post(url, json=status_body(status), headers=headers, timeout=timeout,
                             follow_redirects=False)
    except httpx.TimeoutException:
        return Attempt(False, None, f"timed out after {timeout:g} s")
    except httpx.HTTPError as exc:
        return Attempt(False, None, _cap(f"{type(exc).__name__}: {masker.text(str(exc))}"))
    return classify(response, masker)


def deliver_statuses(client: ContractClient, *, token_ref: str, repos: Sequence[str],
                     api_url: str = API_URL, policy: SecretPolicy | None = None,
                     environ: Mapping[str, str] | None = None,
                     http: httpx.Client | None = None, limit: int = 20,
                     lease_seconds: int = 60, timeout: float = 10.0) -> StatusReport:
    """Claim up to `limit` due statuses (`client` holds a service_role token), post each once
    and record the attempt. GithubConfigError before claiming when the token reference does
    not resolve or no repository pattern is given; contract errors of the claim propagate
    (Forbidden: not a service_role token)."""
    if not repos:
        raise GithubConfigError("no repository pattern: give --repo OWNER/NAME or OWNER/* (the "
                                "repositories this deliverer's token may post statuses to)")
    if policy is None:
        policy = SecretPolicy.parse((os.environ if environ is None else environ).get(
            POLICY_VARIABLE))
    token = resolve_token(token_ref, policy, environ)
    masker = Masker([token])
    claimed = client.claim_github_statuses(limit=limit, lease_seconds=lease_seconds)
    if not claimed:
        return StatusReport()
    counts: Counter[str] = Counter()
    own = http is None
    poster = httpx.Client() if http is None else http
    try:
        for status in claimed:
            if not repo_allowed(status.repo, repos):
                attempt = Attempt(False, None, f"repository {status.repo} is not one this "
                                  "deliverer posts to (its --repo patterns)", retry=False)
            else:
                attempt = _post(status, poster, api_url, token, timeout, masker)
            try:
                client.record_github_status_delivery(
                    status.id, attempt.ok, http_status=attempt.http_status,
                    error=attempt.error, retry=attempt.retry,
                    retry_after_seconds=attempt.retry_after_seconds)
            except ContractError as exc:
                counts["unrecorded"] += 1
                log.warning("status %s (%s %s): the attempt was not recorded: %s", status.id,
                            status.repo, status.state, exc.message)
                continue
            counts[attempt.outcome] += 1
            log.info("status %s %s@%s %s: %s", status.id, status.repo, status.sha[:12],
                     status.state, "delivered" if attempt.ok else attempt.error)
    finally:
        if own:
            poster.close()
    return StatusReport.of(len(claimed), counts)
