"""Check runs of gate runs (docs/github.md, Check runs): claims the check runs the control plane
keeps current (one per gate run and context; a trigger on ops.runs updates it in the run's
transaction, queued -> running included) and creates or updates each on GitHub's REST API:

- the first delivery of a run's check creates it, `POST {api}/repos/{owner}/{repo}/check-runs`
  with `name` (the context), `head_sha`, `external_id` (the run id), `details_url`, `status`
  (`queued`, `in_progress`, `completed` with a `conclusion`), `started_at`, `completed_at` and an
  `output` whose `summary` is the run's Markdown report (summary.py: phases with states and
  durations, datasets changed, artifacts, links) kept under GitHub's 65,535 characters;
- GitHub's check run id is recorded in the control plane, so every later state of the run
  PATCHes `{api}/repos/{owner}/{repo}/check-runs/{id}`, the same check run;
- a create whose answer was lost (a timeout, a deliverer that died before recording) must not
  create a second check run: a check claimed before without a known id is first looked up,
  `GET {api}/repos/{owner}/{repo}/commits/{sha}/check-runs?check_name=...&filter=all`, by its
  `external_id`.

Check runs need a GitHub App installation token with Checks read & write, or the workflow's
`GITHUB_TOKEN` with `checks: write`; any other token gets `403 Resource not accessible by
integration` (or `You must authenticate via a GitHub App`), which fails at once with that said
rather than being retried. 422 and 404 fail at once; rate limits (403/429 with
`x-ratelimit-remaining: 0` or `retry-after`) are retried at the reset; anything else with the
control plane's backoff (statuses.py's rules). The token is a secret reference resolved under
this process's policy and never logged, recorded or put in an error.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import httpx

from control_room.contract.client import ContractClient, ContractError
from control_room.contract.models import ClaimedGithubCheckRun, Run
from control_room.integrations.github.statuses import (
    API_URL,
    API_VERSION,
    USER_AGENT,
    Attempt,
    GithubConfigError,
    StatusReport,
    classify,
    repo_allowed,
    resolve_token,
)
from control_room.integrations.github.summary import (
    GateReport,
    collect,
    render_summary,
    run_links,
)
from executor.secrets import POLICY_VARIABLE, Masker, SecretPolicy

__all__ = [
    "OUTPUT_SUMMARY_LIMIT",
    "PERMISSION_HINT",
    "check_run_body",
    "classify_check",
    "deliver_check_runs",
]

log = logging.getLogger("control_room.github")

OUTPUT_SUMMARY_LIMIT = 65535
"""GitHub's limit of a check run's `output.summary` (characters; the summary is cut to as many
UTF-8 bytes, so it is under the limit whatever it holds)."""
PERMISSION_HINT = ("check runs need a GitHub App installation token with Checks read & write, "
                   "or the workflow's GITHUB_TOKEN with `permissions: checks: write` "
                   "(docs/github.md, Check runs)")
_NOT_PERMITTED = re.compile(r"resource not accessible|must authenticate via a github app",
                            re.IGNORECASE)
_URL = re.compile(r"^https?://[^\s@]+$")
MAX_ERROR = 500


def _iso(value: datetime | None) -> str | None:
    """GitHub's timestamp format: ISO 8601 in UTC, `YYYY-MM-DDTHH:MM:SSZ`."""
    if value is None:
        return None
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def check_run_body(check: ClaimedGithubCheckRun, *, summary: str, details_url: str | None,
                   create: bool) -> dict[str, Any]:
    """The documented body of a create (`head_sha` too) or an update: name, external_id,
    details_url, status, started_at, conclusion and completed_at once completed, output."""
    body: dict[str, Any] = {"name": check.context, "external_id": check.external_id,
                            "status": check.status}
    if create:
        body["head_sha"] = check.sha
    if details_url:
        body["details_url"] = details_url
    if check.started_at is not None:
        body["started_at"] = _iso(check.started_at)
    if check.status == "completed":
        body["conclusion"] = check.conclusion or "failure"
        body["completed_at"] = _iso(check.completed_at or datetime.now(UTC))
    body["output"] = {"title": check.title[:140] or "Control Room run",
                      "summary": summary[:OUTPUT_SUMMARY_LIMIT]}
    return body


def _message(response: httpx.Response) -> str:
    try:
        return str(response.json().get("message") or "")
    except (ValueError, AttributeError):
        return ""


def classify_check(response: httpx.Response, masker: Masker, *,
                   now: float | None = None) -> Attempt:
    """statuses.classify's rules, and a 403 that is not a rate limit but a token without the
    permission to write check runs fails at once, saying what the token needs."""
    attempt = classify(response, masker, now=now)
    if (response.status_code == 403 and attempt.retry and attempt.retry_after_seconds is None
            and _NOT_PERMITTED.search(_message(response))):
        text = f"{attempt.error}: {PERMISSION_HINT}"
        return Attempt(False, 403, text[:MAX_ERROR], retry=False)
    return attempt


def _headers(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "Accept": "application/vnd.github+json",
            "X-GitHub-Api-Version": API_VERSION, "User-Agent": USER_AGENT}


def _failed_request(exc: httpx.HTTPError, timeout: float, masker: Masker) -> Attempt:
    if isinstance(exc, httpx.TimeoutException):
        return Attempt(False, None, f"timed out after {timeout:g} s")
    return Attempt(False, None, f"{type(exc).__name__}: {masker.text(str(exc))}"[:MAX_ERROR])


def _found(item: Any) -> tuple[int, str | None] | None:
    """(id, html_url) of a check run object of GitHub's answer, None when it has no id."""
    if not isinstance(item, Mapping):
        return None
    ident = item.get("id")
    if not isinstance(ident, int) or isinstance(ident, bool) or ident < 1:
        return None
    url = item.get("html_url")
    return ident, url if isinstance(url, str) and _URL.match(url) and len(url) <= 2048 else None


def _lookup(check: ClaimedGithubCheckRun, http: httpx.Client, api: str, token: str,
            timeout: float, masker: Masker) -> tuple[tuple[int, str | None] | None,
                                                     Attempt | None]:
    """The check run an earlier create made (this run's external_id, at the commit, by name),
    or an attempt to record when GitHub did not answer the lookup."""
    url = f"{api}/repos/{check.repo}/commits/{check.sha}/check-runs"
    params = {"check_name": check.context, "filter": "all", "per_page": "100"}
    try:
        response = http.get(url, params=params, headers=_headers(token), timeout=timeout,
                            follow_redirects=False)
    except httpx.HTTPError as exc:
        return None, _failed_request(exc, timeout, masker)
    if response.status_code != 200:
        return None, classify_check(response, masker)
    try:
        runs = response.json().get("check_runs") or []
    except (ValueError, AttributeError):
        runs = []
    for item in runs if isinstance(runs, list) else []:
        if isinstance(item, Mapping) and item.get("external_id") == check.external_id:
            found = _found(item)
            if found is not None:
                return found, None
    return None, None


def _summary(client: ContractClient, check: ClaimedGithubCheckRun, *, gateway_url: str,
             ui_url: str | None) -> tuple[str, str | None]:
    """The run's Markdown report (as `--github-summary` writes it) and its UI page."""
    run: Run = client.get_run(check.run_id)
    try:
        report = collect(client, run)
    except ContractError as exc:
        report = GateReport(notes=(f"the catalog was not read: {exc.message}",))
    links = run_links(check.run_id, gateway_url=gateway_url, ui_base=ui_url)
    return render_summary(run, report, links, limit=OUTPUT_SUMMARY_LIMIT), links.ui_url


def _deliver(check: ClaimedGithubCheckRun, client: ContractClient, http: httpx.Client,
             api: str, token: str, timeout: float, masker: Masker, *, gateway_url: str,
             ui_url: str | None) -> tuple[Attempt, int | None, str | None]:
    """One attempt: the attempt to record and GitHub's check run (id, html_url) if known."""
    check_run_id, html_url = check.check_run_id, check.html_url
    try:
        summary, ui_page = _summary(client, check, gateway_url=gateway_url, ui_url=ui_url)
    except ContractError as exc:
        return Attempt(False, None, f"the run was not read: {exc.message}"[:MAX_ERROR]), \
            check_run_id, html_url
    if check_run_id is None and check.claims > 1:
        found, failed = _lookup(check, http, api, token, timeout, masker)
        if failed is not None:
            return failed, None, None
        if found is not None:
            check_run_id, html_url = found
    body = check_run_body(check, summary=summary, details_url=check.details_url or ui_page,
                          create=check_run_id is None)
    try:
        if check_run_id is None:
            response = http.post(f"{api}/repos/{check.repo}/check-runs", json=body,
                                 headers=_headers(token), timeout=timeout,
                                 follow_redirects=False)
        else:
            response = http.patch(f"{api}/repos/{check.repo}/check-runs/{check_run_id}",
                                  json=body, headers=_headers(token), timeout=timeout,
                                  follow_redirects=False)
    except httpx.HTTPError as exc:
        return _failed_request(exc, timeout, masker), check_run_id, html_url
    attempt = classify_check(response, masker)
    if attempt.ok:
        try:
            created = _found(response.json())
        except ValueError:
            created = None
        if created is not None:
            check_run_id, html_url = created[0], created[1] or html_url
        elif check_run_id is None:
            return (Attempt(False, response.status_code,
                            f"HTTP {response.status_code}: GitHub's answer holds no check run id"),
                    None, None)
    return attempt, check_run_id, html_url


def deliver_check_runs(client: ContractClient, *, token_ref: str, repos: Sequence[str],
                       api_url: str = API_URL, policy: SecretPolicy | None = None,
                       environ: Mapping[str, str] | None = None,
                       http: httpx.Client | None = None, limit: int = 20,
                       lease_seconds: int = 60, timeout: float = 10.0,
                       gateway_url: str | None = None, ui_url: str | None = None,
                       clock: Callable[[], float] = time.monotonic) -> StatusReport:
    """Claim up to `limit` due check runs (`client` holds a service_role token), create or
    update each once and record the attempt with GitHub's check run id. `ui_url`: the Control
    Room UI's root (the details_url of a run without a `github_run_url`, and the summary's
    link). Once three quarters of the lease are spent, the checks not yet begun are left to
    their lease's expiry (another claim then looks each up before creating it), so no check is
    posted while another deliverer may hold it. GithubConfigError before claiming when the
    token reference does not resolve or no repository pattern is given; contract errors of
    the claim propagate."""
    if not repos:
        raise GithubConfigError("no repository pattern: give --repo OWNER/NAME or OWNER/* (the "
                                "repositories this deliverer's token may post check runs to)")
    if policy is None:
        policy = SecretPolicy.parse((os.environ if environ is None else environ).get(
            POLICY_VARIABLE))
    token = resolve_token(token_ref, policy, environ)
    masker = Masker([token])
    claimed = client.claim_github_check_runs(limit=limit, lease_seconds=lease_seconds)
    started = clock()
    if not claimed:
        return StatusReport()
    api = api_url.rstrip("/")
    gateway = gateway_url or client.base_url
    counts: Counter[str] = Counter()
    own = http is None
    poster = httpx.Client() if http is None else http
    try:
        for index, check in enumerate(claimed):
            if index and clock() - started > lease_seconds * 0.75:
                counts["unrecorded"] += len(claimed) - index
                log.warning("check runs: %d left for their lease's expiry (the lease of %d s "
                            "is nearly spent)", len(claimed) - index, lease_seconds)
                break
            check_run_id, html_url = check.check_run_id, check.html_url
            if not repo_allowed(check.repo, repos):
                attempt = Attempt(False, None, f"repository {check.repo} is not one this "
                                  "deliverer posts to (its --repo patterns)", retry=False)
            else:
                attempt, check_run_id, html_url = _deliver(
                    check, client, poster, api, token, timeout, masker,
                    gateway_url=gateway, ui_url=ui_url)
            try:
                client.record_github_check_run_delivery(
                    check.id, check.version, attempt.ok, check_run=check_run_id,
                    html_url=html_url, http_status=attempt.http_status, error=attempt.error,
                    retry=attempt.retry, retry_after_seconds=attempt.retry_after_seconds)
            except ContractError as exc:
                counts["unrecorded"] += 1
                log.warning("check run %s (%s %s): the attempt was not recorded: %s", check.id,
                            check.repo, check.status, exc.message)
                continue
            counts[attempt.outcome] += 1
            log.info("check run %s %s@%s %s%s: %s", check.id, check.repo, check.sha[:12],
                     check.status, f" {check.conclusion}" if check.conclusion else "",
                     "delivered" if attempt.ok else attempt.error)
    finally:
        if own:
            poster.close()
    return StatusReport.of(len(claimed), counts)
