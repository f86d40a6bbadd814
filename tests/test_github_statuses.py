"""Commit statuses of gate runs: recorded by the control plane when a run labelled github_repo
and github_sha changes state (the real gateway over a fresh database), and posted by
`deliver_statuses` / `control-room github deliver` to GitHub's REST API, answered by respx in
GitHub's documented shapes (201 Created, 401 Bad credentials, 403 rate limit, 404, 422)."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import respx
from typer.testing import CliRunner

from control_room.cli import app
from control_room.contract.client import ContractClient, Forbidden, RetryPolicy
from control_room.gateway.auth import mint_token
from control_room.integrations.github.statuses import deliver_statuses, repo_allowed
from executor.secrets import SecretPolicy
from tests.contract.conftest import new_run, phase
from tests.executor.harness import Env, gateway_env
from tests.helpers import TEST_JWT_SECRET

FAST = RetryPolicy(attempts=2, initial=0.05, max_wait=0.2, total=5.0)
T0 = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
SHA = "3f2c1ab" + "0" * 33
REPO = "acme/lakehouse"
GH_TOKEN = "ghp_" + "x" * 36
STATUS_URL = f"https://api.github.com/repos/{REPO}/statuses/{SHA}"
RUN_URL = "https://github.com/acme/lakehouse/actions/runs/42"
# GitHub's documented answer to POST /repos/{owner}/{repo}/statuses/{sha}: 201 Created
CREATED = {"url": STATUS_URL, "id": 1, "node_id": "MDY6U3RhdHVzMQ==", "state": "success",
           "description": "Control Room run succeeded", "target_url": RUN_URL,
           "context": "control-room/demo", "created_at": "2026-12-03T12:00:00Z",
           "updated_at": "2026-12-03T12:00:00Z"}
DOCS = "https://docs.github.com/rest/commits/statuses#create-a-commit-status"


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


def gate_run(env: Env, now: datetime = T0, **labels: str) -> str:
    run = new_run(env.contract, env.world.w1, [phase("load", max_attempts=1)], now=now,
                  labels={"github_repo": REPO, "github_sha": SHA, "github_run_url": RUN_URL,
                          "github_pr": "7", **labels})
    return str(run["id"])


def finish(env: Env, run_id: str, outcome: str, now: datetime = T0) -> None:
    world = env.world
    claim = env.contract.call("claim_phase", {"run_id": run_id}, as_=world.exec1, now=now)
    args: dict[str, Any] = {"lease_token": claim["lease_token"], "outcome": outcome}
    if outcome == "failed":
        args |= {"error": {"message": "upstream timed out"}, "retryable": False}
    env.contract.call("complete_phase", args, as_=world.exec1, now=now)


def github(router: respx.MockRouter) -> httpx.Client:
    return httpx.Client(transport=httpx.MockTransport(router.handler))


ENVIRON = {"GH_STATUS_TOKEN": GH_TOKEN, "CONTROL_ROOM_SECRET_ALLOW": "env:GH_STATUS_"}
POLICY = SecretPolicy.parse("env:GH_STATUS_")


def deliver(env: Env, router: respx.MockRouter, now: datetime, **extra: Any) -> Any:
    with service(env, now) as client, github(router) as http:
        return deliver_statuses(client, token_ref="env:GH_STATUS_TOKEN", repos=["acme/*"],
                                policy=POLICY, environ=ENVIRON, http=http, **extra)


def statuses(env: Env, run_id: str | None = None) -> list[Any]:
    return env.client(env.world.viewer1).list_github_statuses(env.world.w1, run_id=run_id)


def test_a_gate_run_records_one_status_per_github_state(env: Env) -> None:
    run_id = gate_run(env)
    plain = new_run(env.contract, env.world.w1, [phase("load")], labels={"github_pr": "7"})
    [queued] = statuses(env)
    assert (queued.run_id, queued.repo, queued.sha, queued.state, queued.run_state) == (
        run_id, REPO, SHA, "pending", "queued")
    assert (queued.context, queued.target_url, queued.delivery) == (
        "control-room/demo", RUN_URL, "pending")
    assert queued.description == "Control Room run queued"
    # queued -> running is still pending: no new status; running -> failed: failure, and the
    # undelivered pending one is superseded (GitHub never sees a stale state last)
    finish(env, run_id, "failed")
    newest, older = statuses(env, run_id)
    assert (newest.state, newest.run_state, newest.delivery) == ("failure", "failed", "pending")
    assert newest.description == "Control Room run failed: phase load"
    assert (older.id, older.delivery) == (queued.id, "superseded")
    assert statuses(env, str(plain["id"])) == []
    # a bad github_sha or github_repo is no gate run; github_context names the context
    bad = new_run(env.contract, env.world.w1, [phase("x")],
                  labels={"github_repo": "acme/lakehouse", "github_sha": "main"})
    assert statuses(env, str(bad["id"])) == []
    custom = gate_run(env, github_context="ci/medallion", github_run_url="http://insecure")
    [status] = statuses(env, custom)
    assert (status.context, status.target_url) == ("ci/medallion", None)
    # members of another workspace see nothing; executors and outsiders are refused
    assert env.client(env.world.viewer2).list_github_statuses(env.world.w2) == []
    with pytest.raises(Forbidden):
        env.client(env.world.dev1).claim_github_statuses()


def test_delivery_posts_the_documented_request_and_retries(env: Env) -> None:
    run_id = gate_run(env)
    router = respx.MockRouter(assert_all_called=False)
    route = router.post(STATUS_URL).mock(side_effect=[
        httpx.Response(401, json={"message": "Bad credentials", "documentation_url": DOCS}),
        httpx.Response(403, json={"message": "API rate limit exceeded for installation ID 1.",
                                  "documentation_url": DOCS},
                       headers={"x-ratelimit-limit": "5000", "x-ratelimit-remaining": "0",
                                # epoch seconds of the reset, on the deliverer's clock
                                "x-ratelimit-reset": str(int(time.time()) + 1200)}),
        httpx.Response(201, json={**CREATED, "state": "pending"}),
    ])
    report = deliver(env, router, T0)
    assert (report.claimed, report.delivered, report.retried) == (1, 0, 1)
    request = route.calls[0].request
    assert request.headers["authorization"] == f"Bearer {GH_TOKEN}"
    assert request.headers["accept"] == "application/vnd.github+json"
    assert request.headers["x-github-api-version"] == "2022-11-28"
    assert json.loads(request.content) == {
        "state": "pending", "description": "Control Room run queued",
        "context": "control-room/demo", "target_url": RUN_URL}
    [status] = statuses(env, run_id)
    assert (status.delivery, status.attempts, status.http_status) == ("pending", 1, 401)
    assert status.last_error == "HTTP 401 Bad credentials"
    assert status.next_attempt_at == T0 + timedelta(seconds=5)
    # not due yet: nothing is claimed
    assert deliver(env, router, T0 + timedelta(seconds=1)).claimed == 0
    # the rate limit: retried at its reset (20 minutes), not after the 30 s backoff
    report = deliver(env, router, T0 + timedelta(seconds=5))
    assert report.retried == 1
    [status] = statuses(env, run_id)
    assert status.http_status == 403 and "rate limited: retry in" in (status.last_error or "")
    assert status.next_attempt_at is not None
    assert status.next_attempt_at >= T0 + timedelta(minutes=20)
    report = deliver(env, router, T0 + timedelta(minutes=21))
    assert (report.claimed, report.delivered) == (1, 1)
    [status] = statuses(env, run_id)
    assert (status.delivery, status.attempts, status.http_status) == ("delivered", 3, 201)
    assert route.call_count == 3
    # no token in anything the control plane recorded
    assert GH_TOKEN not in json.dumps([s.model_dump(mode="json") for s in statuses(env)])


def test_422_and_unlisted_repositories_fail_at_once_and_order_is_kept(env: Env) -> None:
    run_id = gate_run(env)
    router = respx.MockRouter(assert_all_called=False)
    router.post(STATUS_URL).mock(return_value=httpx.Response(
        422, json={"message": "Validation Failed", "errors": [
            {"resource": "Status", "code": "custom", "message": "No commit found for SHA: x"}],
            "documentation_url": DOCS}))
    report = deliver(env, router, T0)
    assert (report.claimed, report.refused, report.retried) == (1, 1, 0)
    [status] = statuses(env, run_id)
    assert (status.delivery, status.http_status, status.next_attempt_at) == ("failed", 422, None)
    assert status.last_error == "HTTP 422 Validation Failed"

    other = gate_run(env, github_repo="evil/elsewhere")
    report = deliver(env, router, T0)
    assert report.refused == 1
    [status] = statuses(env, other)
    assert status.delivery == "failed"
    assert "not one this deliverer posts to" in (status.last_error or "")
    assert repo_allowed("ACME/Lake", ["acme/*"]) and not repo_allowed("acme2/x", ["acme/*"])

    # while a run's status is leased, its newer status waits: GitHub sees them in order
    third = gate_run(env)
    with service(env, T0) as client:
        [leased] = client.claim_github_statuses(limit=10)
        assert leased.run_id == third
        finish(env, third, "succeeded")
        assert client.claim_github_statuses(limit=10) == []
        after = client.record_github_status_delivery(leased.id, False, http_status=502,
                                                     error="HTTP 502")
        assert after.delivery == "superseded"          # a newer status exists: not retried
        [success] = client.claim_github_statuses(limit=10)
        assert (success.run_id, success.state) == (third, "success")
        assert success.description.startswith("Control Room run succeeded in ")


def test_the_deliver_command(env: Env) -> None:
    runner = CliRunner()
    service_token = mint_token(TEST_JWT_SECRET, role="service_role", ttl_seconds=600)
    base = {"CONTROL_ROOM_GATEWAY_URL": env.rest_url, "CONTROL_ROOM_TOKEN": service_token,
            "CONTROL_ROOM_STATE_DIR": str(env.tmp / "state"),
            "CONTROL_ROOM_SECRET_ALLOW": "env:GH_STATUS_", "GH_STATUS_TOKEN": GH_TOKEN}

    def run(*args: str, **extra: str | None) -> tuple[int, str, str]:
        result = runner.invoke(app, ["github", *args], env={**base, **extra})
        assert result.exception is None or isinstance(result.exception, SystemExit)
        assert "Traceback" not in result.stderr and GH_TOKEN not in result.output
        return result.exit_code, result.stdout, result.stderr

    code, _, err = run("deliver", "--once", "--github-token", "env:GH_STATUS_TOKEN")
    assert code == 2 and "give --repo" in err
    code, _, err = run("deliver", "--once", "--repo", "acme/*", "--github-token", GH_TOKEN)
    assert code == 2 and "secret reference" in err and GH_TOKEN not in err
    code, _, err = run("deliver", "--once", "--repo", "acme/*",
                       "--github-token", "env:OTHER_TOKEN")
    assert code == 2 and "OTHER_TOKEN" in err
    code, _, err = run("deliver", "--once", "--repo", "acme/*", "--github-token",
                       "env:GH_STATUS_TOKEN", CONTROL_ROOM_TOKEN=env.contract.token(
                           env.world.admin1))
    assert code == 2 and "service_role token" in err

    gate_run(env, now=datetime.now(UTC))
    with respx.mock(assert_all_called=False) as mock:
        mock.route(host="127.0.0.1").pass_through()
        route = mock.post(STATUS_URL).mock(return_value=httpx.Response(201, json=CREATED))
        code, out, err = run("deliver", "--once", "--repo", "acme/*", "--github-token",
                             "env:GH_STATUS_TOKEN", "--json")
    assert code == 0, err
    assert json.loads(out) == {"claimed": 1, "delivered": 1, "retried": 0, "refused": 0,
                               "unrecorded": 0}
    assert route.call_count == 1
    code, out, err = run("statuses", "--json", CONTROL_ROOM_TOKEN=env.contract.token(
        env.world.viewer1))
    assert code == 0, err
    assert [s["delivery"] for s in json.loads(out)] == ["delivered"]
