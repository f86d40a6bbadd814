"""Alert delivery end to end: the outbox filled by a real failure, the deliverer
(control_room.alerts.deliver_pending) talking to the real gateway with a service_role token,
POSTing to a real local HTTP receiver; the CLI (`control-room alerts ...`) over the same.

The control plane's backoff is driven by the test clock: each pass uses a client whose
requests carry X-Control-Room-Now (the gateway honours it with test_clock=True).
"""

from __future__ import annotations

import ast
import contextlib
import http.server
import json
import logging
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

import psycopg
import pytest
from typer.testing import CliRunner

from control_room.alerts import ALERT_ID_HEADER, deliver_pending
from control_room.cli import app
from control_room.contract.client import ContractClient, Forbidden, RetryPolicy
from control_room.gateway.auth import mint_token
from executor.secrets import SecretPolicy
from tests.contract.conftest import World, new_run, phase
from tests.executor.harness import Env, gateway_env
from tests.helpers import TEST_JWT_SECRET

T0 = datetime(2031, 6, 1, 8, 0, tzinfo=UTC)
HOOK_SECRET = "T0000/B0000/hook-secret-4242"
FAST = RetryPolicy(attempts=2, initial=0.05, max_wait=0.2, total=2.0)
runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------ the receiver

class Receiver:
    """A local HTTP server recording each POST; `script` says how to answer each in turn
    (an HTTP status, or "slow": answer after `slow_seconds`)."""

    def __init__(self, script: list[int | str]) -> None:
        self.script = list(script)
        self.requests: list[tuple[str, dict[str, str], Any]] = []
        self.slow_seconds = 1.5
        self.lock = threading.Lock()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            answers: ClassVar[list[Any]] = []

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"null")
                with receiver.lock:
                    receiver.requests.append((self.path, dict(self.headers.items()), body))
                    answer = receiver.script.pop(0) if receiver.script else 200
                if answer == "slow":
                    time.sleep(receiver.slow_seconds)
                    answer = 200
                self.send_response(int(answer))
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        class Server(http.server.ThreadingHTTPServer):
            def handle_error(self, request: Any, client_address: Any) -> None:
                # a client that closes its kept-alive connection is no error; socketserver
                # would print a traceback to whatever sys.stderr is then (the CLI's captured
                # stderr, which the tests check for tracebacks)
                if not isinstance(sys.exc_info()[1], ConnectionError):
                    super().handle_error(request, client_address)

        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def env(conn: psycopg.Connection[Any], db_url: str, tmp_path: Path) -> Iterator[Env]:
    with gateway_env(conn, db_url, tmp_path) as environment:
        yield environment


@contextlib.contextmanager
def deliverer(env: Env, now: datetime) -> Iterator[ContractClient]:
    """A service_role client whose calls happen at `now` on the control plane's clock."""
    token = mint_token(TEST_JWT_SECRET, role="service_role", ttl_seconds=600)
    with ContractClient(env.rest_url, token, retry=FAST,
                        headers={"X-Control-Room-Now": now.isoformat()}) as client:
        yield client


def setup_alerting(env: Env, kind: str, url: str, event: str = "run_failed",
                   **rule: Any) -> None:
    admin = env.client(env.world.admin1)
    admin.create_alert_destination(env.world.w1, "hook", kind, url)
    admin.create_alert_rule(env.world.w1, "on-failure", event, "hook", **rule)


def fail_a_run(env: Env, world: World, now: datetime = T0) -> str:
    contract = env.contract
    run = new_run(contract, world.w1, [phase("load", max_attempts=1)], now=now)
    claim = contract.call("claim_phase", {"run_id": run["id"]}, as_=world.exec1, now=now)
    contract.call("complete_phase", {"lease_token": claim["lease_token"], "outcome": "failed",
                                     "error": {"message": "upstream timed out"},
                                     "retryable": False}, as_=world.exec1, now=now)
    return str(run["id"])


def policy() -> SecretPolicy:
    return SecretPolicy.parse("env:ALERT_TEST_")


# ---------------------------------------------------------------------------------- delivery

def test_a_receiver_failing_twice_gets_the_same_alert_three_times_then_it_is_delivered(
        env: Env, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    # other tests (the worker command, in-process) may have quietened httpx's own logger
    caplog.set_level(logging.DEBUG, logger="httpx")
    with Receiver([503, "slow"]) as receiver:
        environ = {"ALERT_TEST_HOOK": f"{receiver.url}/services/{HOOK_SECRET}"}
        setup_alerting(env, "webhook", "env:ALERT_TEST_HOOK")
        run_id = fail_a_run(env, env.world)
        passes = []
        for now in (T0, T0 + timedelta(seconds=2), T0 + timedelta(seconds=6),
                    T0 + timedelta(seconds=20), T0 + timedelta(seconds=40),
                    T0 + timedelta(hours=3)):
            with deliverer(env, now) as client:
                passes.append(deliver_pending(client, policy=policy(), environ=environ,
                                              timeout=0.5))
        # 503; not due yet (5 s backoff); a timeout; not due (30 s); delivered; nothing left
        assert [(p.claimed, p.delivered, p.retried) for p in passes] == [
            (1, 0, 1), (0, 0, 0), (1, 0, 1), (0, 0, 0), (1, 1, 0), (0, 0, 0)]
    ids = {headers[ALERT_ID_HEADER] for _, headers, _ in receiver.requests}
    assert len(receiver.requests) == 3 and len(ids) == 1
    [alert_id] = ids
    for path, headers, body in receiver.requests:
        assert path == f"/services/{HOOK_SECRET}"
        assert headers["Content-Type"] == "application/json"
        assert set(body) == {"id", "event", "workspace", "subject", "payload", "created_at"}
        assert (body["id"], body["event"], body["workspace"]) == (alert_id, "run_failed", "w1")
        assert body["subject"] == {"run_id": run_id}
        assert body["payload"]["error"] == "upstream timed out"
    [alert] = env.client(env.world.viewer1).list_alerts(env.world.w1)
    assert (alert.id, alert.state, alert.attempts) == (alert_id, "delivered", 3)
    assert [(d.attempt, d.ok, d.http_status) for d in alert.deliveries] == [
        (1, False, 503), (2, False, None), (3, True, 200)]
    assert alert.deliveries[1].error == "timed out after 0.5 s"
    assert all(d.duration_ms is not None and d.duration_ms >= 0 for d in alert.deliveries)
    shown = alert.model_dump_json()
    assert HOOK_SECRET not in shown and receiver.url not in shown
    # httpx logs every request's URL: the deliverer masks what it resolved
    assert "HTTP Request: POST" in caplog.text and alert_id in caplog.text
    assert HOOK_SECRET not in caplog.text


def test_the_slack_shape(env: Env) -> None:
    with Receiver([200]) as receiver:
        environ = {"ALERT_TEST_SLACK": f"{receiver.url}/services/{HOOK_SECRET}"}
        setup_alerting(env, "slack", "env:ALERT_TEST_SLACK", event="phase_dead_lettered")
        run_id = fail_a_run(env, env.world)
        with deliverer(env, T0) as client:
            report = deliver_pending(client, policy=policy(), environ=environ)
    assert report.delivered == 1
    [(_, headers, body)] = receiver.requests
    assert set(body) == {"text", "blocks"}
    assert body["text"] == (f"[w1] Phase load of run {run_id} (demo) is dead-lettered after "
                            "1/1 attempts: upstream timed out")
    assert [b["type"] for b in body["blocks"]] == ["section", "context", "context"]
    assert body["blocks"][0]["text"] == {"type": "mrkdwn", "text": body["text"]}
    assert headers[ALERT_ID_HEADER] in body["blocks"][1]["elements"][0]["text"]
    assert f"control-room runs show {run_id}" in body["blocks"][2]["elements"][0]["text"]


@pytest.mark.parametrize(("reference", "says"), [
    ("env:OTHER_HOOK", "no env: entry is a prefix of OTHER_HOOK"),
    ("env:CONTROL_ROOM_TOKEN", "never resolve"),
    ("file:/etc/hostname", "no file: entry allows any file"),
])
def test_a_reference_the_policy_refuses_fails_clearly_without_the_url(
        env: Env, reference: str, says: str, caplog: pytest.LogCaptureFixture) -> None:
    secret_url = f"https://hooks.example.com/services/{HOOK_SECRET}"
    environ = {"OTHER_HOOK": secret_url, "CONTROL_ROOM_TOKEN": secret_url,
               "ALERT_TEST_HOOK": secret_url}
    setup_alerting(env, "slack", reference)
    fail_a_run(env, env.world)
    with caplog.at_level(logging.DEBUG), deliverer(env, T0) as client:
        report = deliver_pending(client, policy=policy(), environ=environ)
    assert (report.claimed, report.delivered, report.retried) == (1, 0, 1)
    [alert] = env.client(env.world.viewer1).list_alerts(env.world.w1)
    assert alert.state == "pending" and alert.attempts == 1
    error = alert.deliveries[0].error or ""
    assert error.startswith(f"destination hook: {reference} is refused") or \
        error.startswith(f"destination hook: {reference}"), error
    assert says in error
    everything = alert.model_dump_json() + caplog.text
    assert HOOK_SECRET not in everything and "hooks.example.com" not in everything


def test_a_reference_to_something_that_is_not_a_url_names_the_reference(env: Env) -> None:
    setup_alerting(env, "webhook", "env:ALERT_TEST_HOOK")
    fail_a_run(env, env.world)
    with deliverer(env, T0) as client:
        deliver_pending(client, policy=policy(), environ={"ALERT_TEST_HOOK": "hunter2-secret"})
    [alert] = env.client(env.world.viewer1).list_alerts(env.world.w1)
    assert alert.last_error == ("destination hook: env:ALERT_TEST_HOOK does not hold an "
                                "http(s) URL")


def test_a_connection_error_does_not_carry_the_url(env: Env) -> None:
    with Receiver([]) as closed:
        url = f"{closed.url}/services/{HOOK_SECRET}"
    setup_alerting(env, "webhook", "env:ALERT_TEST_HOOK")    # nobody listens there any more
    fail_a_run(env, env.world)
    with deliverer(env, T0) as client:
        report = deliver_pending(client, policy=policy(), environ={"ALERT_TEST_HOOK": url},
                                 timeout=2)
    assert report.retried == 1
    [alert] = env.client(env.world.viewer1).list_alerts(env.world.w1)
    assert alert.last_error and alert.last_error.startswith("ConnectError")
    assert HOOK_SECRET not in alert.last_error


def test_a_literal_webhook_url_and_header_references(env: Env) -> None:
    with Receiver([200]) as receiver:
        admin = env.client(env.world.admin1)
        admin.create_alert_destination(env.world.w1, "hook", "webhook", f"{receiver.url}/hook",
                                       headers={"Authorization": "env:ALERT_TEST_TOKEN"})
        admin.create_alert_rule(env.world.w1, "on-failure", "run_failed", "hook")
        fail_a_run(env, env.world)
        with deliverer(env, T0) as client:
            report = deliver_pending(client, policy=policy(),
                                     environ={"ALERT_TEST_TOKEN": "Bearer tok-4242"})
    assert report.delivered == 1
    [(path, headers, _)] = receiver.requests
    assert (path, headers["Authorization"]) == ("/hook", "Bearer tok-4242")


def test_only_a_service_role_token_delivers(env: Env) -> None:
    setup_alerting(env, "webhook", "env:ALERT_TEST_HOOK")
    fail_a_run(env, env.world)
    with pytest.raises(Forbidden):
        deliver_pending(env.client(env.world.admin1), policy=policy(), environ={})
    [alert] = env.client(env.world.viewer1).list_alerts(env.world.w1)
    assert alert.state == "pending" and alert.attempts == 0


def test_the_deliverer_never_touches_the_database() -> None:
    """control_room/alerts is a client of the contract: no psycopg, no control_room.db."""
    imported: set[str] = set()
    for path in (ROOT / "control_room" / "alerts").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module)
    assert imported, "no imports found"
    bad = {m for m in imported if m.split(".")[0] == "psycopg"
           or m.startswith(("control_room.db", "control_room.gateway", "control_room.settings"))}
    assert bad == set()


# --------------------------------------------------------------------------------- the CLI

def cli(env: Env, *args: str, token: str | None = None, **extra: str) -> tuple[int, str, str]:
    variables = {
        "CONTROL_ROOM_GATEWAY_URL": env.rest_url,
        "CONTROL_ROOM_TOKEN": token or env.contract.token(env.world.admin1),
        "CONTROL_ROOM_WORKSPACE": env.world.w1,
        "CONTROL_ROOM_STATE_DIR": str(env.tmp / "state"),
        "COLUMNS": "200",
        **extra,
    }
    result = runner.invoke(app, list(args), env=variables)
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        result.exception)
    assert "Traceback" not in result.stderr
    return result.exit_code, result.stdout, result.stderr


def test_cli_rules_destinations_list_and_deliver(env: Env) -> None:
    code, _, err = cli(env, "alerts", "destinations", "create", "slack", "--type", "slack",
                       "--url", f"https://hooks.slack.com/services/{HOOK_SECRET}")
    assert code == 2 and "secret reference" in err and HOOK_SECRET not in err
    code, _, err = cli(env, "alerts", "destinations", "create", "hook",
                       "--url", "https://h.example.com/x?token=abc")
    assert code == 2 and "query string" in err and "abc" not in err
    with Receiver([500]) as receiver:
        code, out, err = cli(env, "alerts", "destinations", "create", "hook", "--type", "slack",
                             "--url", "env:ALERT_TEST_SLACK", "--json")
        assert code == 0, err
        assert json.loads(out)["url"] == "env:ALERT_TEST_SLACK"
        code, out, err = cli(env, "alerts", "rules", "create", "failures", "--event",
                             "run_failed", "--destination", "hook", "--label", "team=data")
        assert code == 0 and "failures created (run_failed -> hook)" in out, err
        code, _, err = cli(env, "alerts", "rules", "create", "x", "--event", "disk_full",
                           "--destination", "hook")
        assert code == 2 and "--event must be one of" in err
        code, out, _ = cli(env, "alerts", "rules", "list", "--json")
        assert [r["filters"] for r in json.loads(out)] == [{"labels": {"team": "data"}}]
        run = env.client(env.world.dev1).create_run(
            env.world.w1, "demo", "0123abc", [{"name": "load", "kind": "python",
                                               "max_attempts": 1}], labels={"team": "data"})
        claim = env.client(env.world.exec1).claim_phase(run_id=run.id)
        assert claim is not None
        env.client(env.world.exec1).complete_phase(claim.lease_token, "failed",
                                                   error={"message": "boom"}, retryable=False)
        # an admin's token is refused clearly; the service token delivers (the receiver: 500)
        code, _, err = cli(env, "alerts", "deliver", "--once")
        assert code == 2 and "service_role token" in err
        service = mint_token(TEST_JWT_SECRET, role="service_role", ttl_seconds=600)
        hook = {"ALERT_TEST_SLACK": f"{receiver.url}/services/{HOOK_SECRET}",
                "CONTROL_ROOM_SECRET_ALLOW": "env:ALERT_TEST_"}
        code, out, err = cli(env, "alerts", "deliver", "--once", "--json", token=service,
                             **hook)
        assert code == 0, err
        assert json.loads(out) == {"claimed": 1, "delivered": 0, "retried": 1, "unrecorded": 0}
        assert len(receiver.requests) == 1
    code, out, _ = cli(env, "alerts", "list", "--json")
    [alert] = json.loads(out)
    assert (alert["state"], alert["attempts"], alert["last_error"]) == (
        "pending", 1, "HTTP 500 Internal Server Error")
    assert HOOK_SECRET not in out
    code, out, _ = cli(env, "alerts", "list")
    assert code == 0 and "run_failed" in out and "1/8" in out
    code, _, err = cli(env, "alerts", "destinations", "delete", "hook")
    assert code == 1 and "used by rules failures" in err
    assert cli(env, "alerts", "rules", "delete", "failures")[0] == 0
    assert cli(env, "alerts", "destinations", "delete", "hook")[0] == 0
    code, out, _ = cli(env, "alerts", "destinations", "list")
    assert (code, out.strip()) == (0, "No alert destinations.")
