"""Check runs of gate runs (docs/github.md, Check runs): kept current by the control plane when a
run labelled github_repo and github_sha changes state (the real gateway over a fresh database),
and created then updated by `deliver_check_runs` / `control-room github deliver --as check-runs`
on GitHub's REST API, answered by respx in GitHub's documented shapes
(https://docs.github.com/en/rest/checks/runs: 201 Created with the check run, 200 on update, the
list of a commit's check runs, 422 Validation Failed, 403 Resource not accessible by
integration, 403/429 rate limits)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import respx
from typer.testing import CliRunner

from control_room.cli import app
from control_room.cli.common import out as console
from control_room.contract.client import ContractClient, RetryPolicy
from control_room.gateway.auth import mint_token
from control_room.integrations.github.checks import OUTPUT_SUMMARY_LIMIT, deliver_check_runs
from control_room.integrations.github.statuses import deliver_statuses
from executor.secrets import SecretPolicy
from tests.cli_lines import resolve, shell_calls
from tests.contract.conftest import new_run, phase
from tests.executor.harness import Env, gateway_env
from tests.helpers import TEST_JWT_SECRET

FAST = RetryPolicy(attempts=2, initial=0.05, max_wait=0.2, total=5.0)
T0 = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
SHA = "9e1d2c3" + "0" * 33
REPO = "acme/lakehouse"
GH_TOKEN = "ghs_" + "y" * 36
API = "https://api.github.com"
CREATE_URL = f"{API}/repos/{REPO}/check-runs"
LIST_URL = f"{API}/repos/{REPO}/commits/{SHA}/check-runs"
STATUS_URL = f"{API}/repos/{REPO}/statuses/{SHA}"
RUN_URL = "https://github.com/acme/lakehouse/actions/runs/42"
DOCS = "https://docs.github.com/rest/checks/runs#create-a-check-run"
ENVIRON = {"GH_CHECK_TOKEN": GH_TOKEN, "CONTROL_ROOM_SECRET_ALLOW": "env:GH_CHECK_"}
POLICY = SecretPolicy.parse("env:GH_CHECK_")


def check_run(ident: int, body: dict[str, Any], **more: Any) -> dict[str, Any]:
    """A check run object as GitHub documents it, echoing what was sent."""
    output = body.get("output") or {}
    return {
        "id": ident, "head_sha": body.get("head_sha", SHA), "node_id": f"CR_kwDO{ident}",
        "external_id": body.get("external_id", ""),
        "url": f"{API}/repos/{REPO}/check-runs/{ident}",
        "html_url": f"https://github.com/{REPO}/runs/{ident}",
        "details_url": body.get("details_url"), "status": body.get("status", "queued"),
        "conclusion": body.get("conclusion"), "started_at": body.get("started_at"),
        "completed_at": body.get("completed_at"),
        "output": {"title": output.get("title"), "summary": output.get("summary"),
                   "text": None, "annotations_count": 0,
                   "annotations_url": f"{API}/repos/{REPO}/check-runs/{ident}/annotations"},
        "name": body.get("name", ""), "check_suite": {"id": 5},
        "app": {"id": 1, "slug": "github-actions", "name": "GitHub Actions"},
        "pull_requests": [], **more}


class FakeChecks:
    """GitHub's check runs of one repository: create (201), update (200), list by commit."""

    def __init__(self) -> None:
        self.runs: dict[int, dict[str, Any]] = {}
        self.creates: list[dict[str, Any]] = []
        self.updates: list[tuple[int, dict[str, Any]]] = []
        self.lookups: list[httpx.Request] = []

    def create(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        self.creates.append(body)
        ident = 4000 + len(self.runs)
        self.runs[ident] = check_run(ident, body)
        return httpx.Response(201, json=self.runs[ident])

    def update(self, request: httpx.Request) -> httpx.Response:
        ident = int(request.url.path.rsplit("/", 1)[1])
        body = json.loads(request.content)
        self.updates.append((ident, body))
        if ident not in self.runs:
            return httpx.Response(404, json={"message": "Not Found", "documentation_url": DOCS})
        merged = {**self.runs[ident], **{k: v for k, v in body.items() if k != "output"}}
        self.runs[ident] = check_run(ident, {**merged, "output": body.get("output", {})})
        return httpx.Response(200, json=self.runs[ident])

    def lookup(self, request: httpx.Request) -> httpx.Response:
        self.lookups.append(request)
        name = request.url.params.get("check_name")
        found = [r for r in self.runs.values() if name is None or r["name"] == name]
        return httpx.Response(200, json={"total_count": len(found), "check_runs": found})

    def router(self) -> respx.MockRouter:
        router = respx.MockRouter(assert_all_called=False)
        self.mount(router)
        return router

    def mount(self, router: respx.MockRouter) -> None:
        router.post(CREATE_URL).mock(side_effect=self.create)
        router.patch(url__regex=rf"^{CREATE_URL}/\d+$").mock(side_effect=self.update)
        router.get(url__startswith=LIST_URL).mock(side_effect=self.lookup)


@pytest.fixture
def env(conn: psycopg.Connection[Any], db_url: str, tmp_path: Path) -> Iterator[Env]:
    with gateway_env(conn, db_url, tmp_path) as environment:
        yield environment


@contextlib.contextmanager
def service(env: Env, now: datetime) -> Iterator[ContractClient]:
    token = mint_token(TEST_JWT_SECRET, role="service_role", ttl_seconds=600)
    with ContractClient(env.rest_url, token, retry=FAST,
                        headers={"X-Control-Room-Now": now.isoformat()}) as client:
        yield client


def gate_run(env: Env, phases: list[dict[str, Any]] | None = None, now: datetime = T0,
             **labels: str) -> str:
    run = new_run(env.contract, env.world.w1, phases or [phase("load", max_attempts=1)],
                  now=now, labels={"github_repo": REPO, "github_sha": SHA,
                                   "github_run_url": RUN_URL, "github_pr": "7", **labels})
    return str(run["id"])


def claim(env: Env, run_id: str, now: datetime = T0) -> str:
    found = env.contract.call("claim_phase", {"run_id": run_id}, as_=env.world.exec1, now=now)
    return str(found["lease_token"])


def complete(env: Env, lease: str, outcome: str, now: datetime = T0,
             message: str = "upstream timed out", retryable: bool = False) -> None:
    args: dict[str, Any] = {"lease_token": lease, "outcome": outcome}
    if outcome == "failed":
        args |= {"error": {"message": message}, "retryable": retryable}
    env.contract.call("complete_phase", args, as_=env.world.exec1, now=now)


def deliver(env: Env, router: respx.MockRouter, now: datetime, **extra: Any) -> Any:
    with service(env, now) as client, httpx.Client(
            transport=httpx.MockTransport(router.handler)) as http:
        return deliver_check_runs(client, token_ref="env:GH_CHECK_TOKEN", repos=["acme/*"],
                                  policy=POLICY, environ=ENVIRON, http=http, **extra)


def checks(env: Env, run_id: str | None = None) -> list[Any]:
    return env.client(env.world.viewer1).list_github_check_runs(env.world.w1, run_id=run_id)


def statuses(env: Env, run_id: str | None = None) -> list[Any]:
    return env.client(env.world.viewer1).list_github_statuses(env.world.w1, run_id=run_id)


def test_one_check_run_created_then_updated_across_the_run_s_life(env: Env) -> None:
    run_id = gate_run(env, [phase("load", max_attempts=1),
                            phase("publish", "python", "load", max_attempts=1)])
    gh = FakeChecks()
    router = gh.router()
    status_route = router.post(STATUS_URL).mock(return_value=httpx.Response(201, json={
        "id": 1, "state": "pending", "context": "control-room/demo"}))

    def both(now: datetime) -> None:
        report = deliver(env, router, now)
        assert (report.claimed, report.delivered) == (1, 1)
        with service(env, now) as client, httpx.Client(
                transport=httpx.MockTransport(router.handler)) as http:
            deliver_statuses(client, token_ref="env:GH_CHECK_TOKEN", repos=["acme/*"],
                             policy=POLICY, environ=ENVIRON, http=http)

    both(T0)
    [created] = gh.creates
    assert created["name"] == "control-room/demo" and created["head_sha"] == SHA
    assert created["external_id"] == run_id and created["details_url"] == RUN_URL
    assert created["status"] == "queued" and "conclusion" not in created
    assert created["started_at"] == "2026-12-05T12:00:00Z"
    assert created["output"]["title"] == "Control Room run queued"
    assert "### Phases (2)" in created["output"]["summary"]
    [ident] = gh.runs
    [row] = checks(env, run_id)
    assert (row.check_run_id, row.html_url, row.delivery) == (
        ident, f"https://github.com/{REPO}/runs/{ident}", "delivered")
    assert (row.version, row.delivered_version, row.status) == (1, 1, "queued")
    request = router.routes[0].calls[0].request
    assert request.headers["authorization"] == f"Bearer {GH_TOKEN}"
    assert request.headers["accept"] == "application/vnd.github+json"
    assert request.headers["x-github-api-version"] == "2022-11-28"

    # queued -> running: the same check run goes in_progress (the commit status stays pending:
    # no second, identical pending status is posted)
    later = T0 + timedelta(seconds=30)
    lease = claim(env, run_id, later)
    both(later)
    assert len(gh.creates) == 1 and gh.lookups == []
    patched_id, patched = gh.updates[-1]
    assert patched_id == ident and patched["status"] == "in_progress"
    assert "head_sha" not in patched and patched["external_id"] == run_id
    assert patched["output"]["title"] == "Control Room run running"
    assert status_route.call_count == 1

    complete(env, lease, "succeeded", later)
    done = T0 + timedelta(minutes=2)
    complete(env, claim(env, run_id, done), "succeeded", done)
    both(done)
    patched_id, patched = gh.updates[-1]
    assert patched_id == ident and len(gh.creates) == 1 and len(gh.updates) == 2
    assert (patched["status"], patched["conclusion"]) == ("completed", "success")
    assert patched["completed_at"] == "2026-12-05T12:02:00Z"
    assert patched["output"]["title"].startswith("Control Room run succeeded in ")
    summary = patched["output"]["summary"]
    assert "| load | python | ✅ succeeded | 1/1 |" in summary
    assert "| publish | python | ✅ succeeded | 1/1 |" in summary
    assert gh.runs[ident]["status"] == "completed" and gh.runs[ident]["conclusion"] == "success"
    [row] = checks(env, run_id)
    assert (row.version, row.delivered_version, row.conclusion) == (3, 3, "success")
    # the commit statuses: pending then success, each once; each shows the check run
    assert [json.loads(c.request.content)["state"] for c in status_route.calls] == [
        "pending", "success"]
    shown = statuses(env, run_id)
    assert [s.state for s in shown] == ["success", "pending"]
    assert {(s.check_run_id, s.check_run_url) for s in shown} == {(ident, row.html_url)}
    everything = json.dumps([r.model_dump(mode="json") for r in checks(env) + statuses(env)])
    assert GH_TOKEN not in everything


def test_a_failed_run_concludes_failure_with_the_failing_phase(env: Env) -> None:
    run_id = gate_run(env, [phase("load", max_attempts=1),
                            phase("audit", "python", "load", max_attempts=1)])
    lease = claim(env, run_id)
    complete(env, lease, "failed")
    gh = FakeChecks()
    report = deliver(env, gh.router(), T0 + timedelta(seconds=5))
    assert report.delivered == 1
    # queued, running and failed before the first delivery: one create, completed at once
    [created] = gh.creates
    assert (created["status"], created["conclusion"]) == ("completed", "failure")
    assert created["output"]["title"] == "Control Room run failed: phase load"
    summary = created["output"]["summary"]
    assert "| load | python | ❌ failed | 1/1 |" in summary and "upstream timed out" in summary
    assert "error | phase load: upstream timed out" in summary
    [row] = checks(env, run_id)
    assert (row.status, row.conclusion, row.delivery) == ("completed", "failure", "delivered")


def test_a_cancelled_run_concludes_cancelled_and_links_the_ui(env: Env) -> None:
    run_id = gate_run(env, github_run_url="http://not-https.example")
    gh = FakeChecks()
    router = gh.router()
    deliver(env, router, T0, ui_url="https://control-room.example.com")
    env.contract.call("cancel_run", {"run_id": run_id, "reason": "superseded by a newer push"},
                      as_=env.world.dev1, now=T0 + timedelta(seconds=9))
    deliver(env, router, T0 + timedelta(seconds=10), ui_url="https://control-room.example.com")
    [created] = gh.creates
    page = f"https://control-room.example.com/runs/{run_id}"
    assert created["details_url"] == page        # no usable github_run_url: the UI's page
    [(ident, patched)] = gh.updates
    assert ident in gh.runs
    assert (patched["status"], patched["conclusion"]) == ("completed", "cancelled")
    assert patched["output"]["title"] == "Control Room run cancelled"
    assert "superseded by a newer push" in patched["output"]["summary"]
    assert page in patched["output"]["summary"]


def test_rate_limits_are_retried_at_the_reset_and_refusals_fail_at_once(env: Env) -> None:
    run_id = gate_run(env)
    gh = FakeChecks()
    router = respx.MockRouter(assert_all_called=False)
    answers = iter([
        httpx.Response(429, json={"message": "API rate limit exceeded for installation ID 9.",
                                  "documentation_url": DOCS},
                       headers={"retry-after": "900", "x-ratelimit-remaining": "0"}),
    ])
    gh.mount(router)           # then the create route replaced: a rate limit first
    router.post(CREATE_URL).mock(side_effect=lambda r: next(answers, None) or gh.create(r))
    report = deliver(env, router, T0)
    assert (report.claimed, report.retried, report.delivered) == (1, 1, 0)
    [row] = checks(env, run_id)
    assert (row.delivery, row.http_status, row.attempts) == ("pending", 429, 1)
    assert "rate limited: retry in 900 s" in (row.last_error or "")
    assert row.next_attempt_at == T0 + timedelta(seconds=900)      # not the 5 s backoff
    assert deliver(env, router, T0 + timedelta(seconds=60)).claimed == 0
    # the retry after a failed create looks the check run up first (none: it creates)
    report = deliver(env, router, T0 + timedelta(seconds=900))
    assert report.delivered == 1 and len(gh.creates) == 1 and len(gh.lookups) == 1
    assert gh.lookups[0].url.params["check_name"] == "control-room/demo"
    assert gh.lookups[0].url.params["filter"] == "all"

    # 422: failed at once, never claimed again for that state
    other = gate_run(env, github_context="ci/validation")
    router.post(CREATE_URL).mock(return_value=httpx.Response(422, json={
        "message": "Validation Failed", "errors": [
            {"resource": "CheckRun", "code": "invalid", "field": "head_sha"}],
        "documentation_url": DOCS}))
    report = deliver(env, router, T0 + timedelta(seconds=901))
    assert (report.claimed, report.refused, report.retried) == (1, 1, 0)
    [row] = checks(env, other)
    assert (row.delivery, row.http_status, row.next_attempt_at) == ("failed", 422, None)
    assert row.last_error == "HTTP 422 Validation Failed"
    assert deliver(env, router, T0 + timedelta(hours=2)).claimed == 0

    # a token that may not write check runs: 403 explained, not retried
    third = gate_run(env, github_context="ci/permissions")
    router.post(CREATE_URL).mock(return_value=httpx.Response(403, json={
        "message": "Resource not accessible by integration",
        "documentation_url": "https://docs.github.com/rest/checks/runs#create-a-check-run"},
        headers={"x-ratelimit-remaining": "4999", "x-ratelimit-limit": "5000"}))
    report = deliver(env, router, T0 + timedelta(hours=2))
    assert (report.claimed, report.refused) == (1, 1)
    [row] = checks(env, third)
    assert (row.delivery, row.http_status) == ("failed", 403)
    assert row.last_error is not None
    assert row.last_error.startswith("HTTP 403 Resource not accessible by integration: ")
    assert "checks: write" in row.last_error and "GitHub App" in row.last_error
    assert deliver(env, router, T0 + timedelta(hours=3)).claimed == 0
    assert GH_TOKEN not in json.dumps([r.model_dump(mode="json") for r in checks(env)])


def test_a_lost_create_answer_creates_no_second_check_run(env: Env) -> None:
    run_id = gate_run(env)
    gh = FakeChecks()
    router = respx.MockRouter(assert_all_called=False)

    lost: list[httpx.Request] = []

    def created_then_lost(request: httpx.Request) -> httpx.Response:
        lost.append(request)
        gh.create(request)                        # GitHub made it; the answer never came back
        raise httpx.ReadTimeout("read timed out", request=request)

    gh.mount(router)
    router.post(CREATE_URL).mock(side_effect=created_then_lost)     # replaces gh's create
    report = deliver(env, router, T0)
    assert report.retried == 1 and len(lost) == 1
    [row] = checks(env, run_id)
    assert row.check_run_id is None and row.last_error == "timed out after 10 s"
    [ident] = gh.runs
    # the next attempt finds it by external_id and updates it instead of creating another
    report = deliver(env, router, T0 + timedelta(seconds=5))
    assert report.delivered == 1
    assert len(lost) == 1 and len(gh.runs) == 1 and len(gh.lookups) == 1
    assert [i for i, _ in gh.updates] == [ident]
    [row] = checks(env, run_id)
    assert (row.check_run_id, row.delivery) == (ident, "delivered")

    # a deliverer that died after its create, before recording: the lease expires, the next
    # one looks up first too (another run: nothing found, so it creates)
    second = gate_run(env, github_context="ci/second")
    with service(env, T0) as client:
        [leased] = client.claim_github_check_runs(limit=10, lease_seconds=30)
        assert (leased.run_id, leased.claims) == (second, 1)
        # while it is leased the run's newer state waits: never two deliverers on one check
        complete(env, claim(env, second), "succeeded")
        assert client.claim_github_check_runs(limit=10) == []
    gh.mount(router)                                                # GitHub answers again
    report = deliver(env, router, T0 + timedelta(seconds=31))
    assert report.delivered == 1 and len(gh.lookups) == 2 and len(gh.runs) == 2
    assert gh.creates[-1]["status"] == "completed"            # the newest state at once
    assert gh.creates[-1]["conclusion"] == "success"


def test_the_summary_of_a_run_with_many_phases_stays_under_github_s_limit(env: Env) -> None:
    count = 260
    run_id = gate_run(env, [phase(f"step_{i:03d}", max_attempts=3) for i in range(count)])
    long_error = "the source answered 503 " + "x" * 600
    for _ in range(count):        # every phase failed once: back in the queue, with its error
        complete(env, claim(env, run_id, T0), "failed", T0, message=long_error, retryable=True)
    gh = FakeChecks()
    deliver(env, gh.router(), T0 + timedelta(seconds=1))
    [created] = gh.creates
    summary = created["output"]["summary"]
    assert len(summary) <= OUTPUT_SUMMARY_LIMIT and len(summary.encode()) <= OUTPUT_SUMMARY_LIMIT
    assert created["status"] == "in_progress"
    assert f"### Phases ({count})" in summary
    assert "more row(s) not shown (of 260)" in summary
    assert f"control-room runs show {run_id}" in summary


def test_the_cli_delivers_check_runs_and_shows_them(env: Env,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    runner = CliRunner()
    service_token = mint_token(TEST_JWT_SECRET, role="service_role", ttl_seconds=600)
    base = {"CONTROL_ROOM_GATEWAY_URL": env.rest_url, "CONTROL_ROOM_TOKEN": service_token,
            "CONTROL_ROOM_STATE_DIR": str(env.tmp / "state"), **ENVIRON}

    def run(*args: str, **extra: str) -> tuple[int, str, str]:
        result = runner.invoke(app, ["github", *args], env={**base, **extra})
        assert result.exception is None or isinstance(result.exception, SystemExit)
        assert "Traceback" not in result.output and GH_TOKEN not in result.output
        return result.exit_code, result.stdout, result.stderr

    deliver_args = ("deliver", "--once", "--repo", "acme/*", "--github-token",
                    "env:GH_CHECK_TOKEN")
    code, _, err = run(*deliver_args, "--as", "checks")
    assert code == 2 and "--as must be statuses or check-runs, not 'checks'" in err
    assert len(err.strip().splitlines()) == 1
    code, _, err = run(*deliver_args, "--as", "check-runs", "--ui-url", "ftp://x")
    assert code == 2 and "--ui-url" in err and len(err.strip().splitlines()) == 1

    run_id = gate_run(env, now=datetime.now(UTC))
    gh = FakeChecks()
    with respx.mock(assert_all_called=False) as mock:
        mock.route(host="127.0.0.1").pass_through()
        gh.mount(mock)
        status_route = mock.post(STATUS_URL).mock(return_value=httpx.Response(201, json={
            "id": 1, "state": "pending"}))
        code, out, err = run(*deliver_args, "--as", "check-runs", "--json")
        assert code == 0, err
        assert json.loads(out) == {"claimed": 1, "delivered": 1, "retried": 0, "refused": 0,
                                   "unrecorded": 0}
        assert status_route.call_count == 0           # check runs only
        code, out, err = run(*deliver_args, "--as", "statuses", "--as", "check-runs", "--json")
        assert code == 0, err
        assert json.loads(out)["statuses"]["delivered"] == 1
        assert json.loads(out)["check_runs"]["claimed"] == 0
    [ident] = gh.runs
    viewer = env.contract.token(env.world.viewer1)
    code, out, err = run("check-runs", "--run", run_id, "--json", CONTROL_ROOM_TOKEN=viewer)
    assert code == 0, err
    [shown] = json.loads(out)
    assert (shown["check_run_id"], shown["delivery"], shown["status"]) == (
        ident, "delivered", "queued")
    code, out, err = run("statuses", "--json", CONTROL_ROOM_TOKEN=viewer)
    assert code == 0, err
    assert [s["check_run_id"] for s in json.loads(out)] == [ident]
    monkeypatch.setattr(console, "_width", 400)          # the table's every column in full
    code, out, err = run("statuses", CONTROL_ROOM_TOKEN=viewer)
    assert code == 0, err
    assert "check run" in out and f"{ident} https://github.com/{REPO}/runs/{ident}" in out


def test_a_check_run_of_another_repository_fails_without_a_request(env: Env) -> None:
    run_id = gate_run(env, github_repo="evil/elsewhere")
    gh = FakeChecks()
    calls: list[httpx.Request] = []
    router = respx.MockRouter(assert_all_called=False)
    router.route().mock(side_effect=_recording(calls))
    report = deliver(env, router, T0)
    assert (report.claimed, report.refused) == (1, 1) and calls == [] and gh.creates == []
    [row] = checks(env, run_id)
    assert row.delivery == "failed" and "not one this deliverer posts to" in (row.last_error or "")


def _recording(calls: list[httpx.Request]) -> Callable[[httpx.Request], httpx.Response]:
    def answer(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(500)
    return answer


def test_the_documented_commands_exist_with_their_options() -> None:
    text = (Path(__file__).resolve().parents[1] / "docs" / "github.md").read_text("utf-8")
    section = text.split("## Check runs", 1)[1].split("\n## ", 1)[0]
    blocks = section.split("```sh\n")[1:]
    calls = [resolve(argv, "docs/github.md, Check runs")
             for block in blocks for argv in shell_calls(block.split("```", 1)[0], "sh")]
    deliver = next(c for c in calls if c.path == ("github", "deliver"))
    assert {"--as", "--repo", "--github-token", "--ui-url"} <= set(deliver.options)
    assert {" ".join(c.path) for c in calls} >= {"github check-runs", "github statuses",
                                                  "token create"}


def test_checks_left_when_the_lease_is_nearly_spent_are_not_posted(env: Env) -> None:
    first, second = gate_run(env), gate_run(env, github_context="ci/second")
    gh = FakeChecks()
    ticks = iter([0.0, 50.0])         # the claim, then the second check: 50 s of a 60 s lease
    report = deliver(env, gh.router(), T0, lease_seconds=60, clock=lambda: next(ticks))
    assert (report.claimed, report.delivered, report.unrecorded) == (2, 1, 1)
    [created] = gh.creates
    assert created["external_id"] == first
    [left] = checks(env, second)
    assert (left.delivery, left.attempts, left.check_run_id) == ("delivering", 0, None)
    # after the lease: claimed again, looked up (nothing there), created once
    report = deliver(env, gh.router(), T0 + timedelta(seconds=61))
    assert report.delivered == 1 and len(gh.creates) == 2 and len(gh.lookups) == 1
    assert gh.creates[1]["external_id"] == second
