"""`control-room schedules` and `control-room scheduler` against the real gateway, and the
scheduler process that `control-room up` (LocalStack) starts beside its workers.

The SQL policies are tested on the test clock in tests/contract/test_schedules.py; here real
processes fire interval schedules of a second or two, so these tests wait real seconds (each
wait is bounded and polls).
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from typer.testing import CliRunner

from control_room.cli import app
from control_room.contract import ContractClient
from control_room.contract.client import RetryPolicy
from control_room.localstack import LocalStack
from control_room.settings import load_settings
from control_room.specs.jobs import job_digest
from tests.contract.conftest import SERVICE
from tests.executor.harness import Env, gateway_env
from tests.helpers import TEST_JWT_SECRET
from tests.test_alerts_delivery import Receiver

runner = CliRunner()
BOUND = 60.0


@pytest.fixture
def env(conn: psycopg.Connection[Any], db_url: str, tmp_path: Path) -> Iterator[Env]:
    with gateway_env(conn, db_url, tmp_path) as environment:
        yield environment


def example_job(slug: str = "orders") -> tuple[dict[str, Any], str]:
    """A job of one python phase writing bronze.orders into the run's lake, and its digest."""
    spec = {
        "slug": slug, "version": 1, "description": "orders every few seconds",
        "params": {"orders": {"type": "integer", "default": 5, "required": False,
                              "description": None}},
        "phases": [{"name": "extract", "kind": "python", "depends_on": [], "max_attempts": 1,
                    "timeout_seconds": 120, "retry_backoff_seconds": 1,
                    "params": {"entrypoint": "pipelines.example:extract_orders",
                               "args": {"lake": "${run.lake}", "orders": "${params.orders}"}}}],
        "source": {"path": f"specs/{slug}.yaml", "digest": "blake3:" + "cd" * 32},
    }
    return spec, job_digest(spec)


def register(client: ContractClient, workspace_id: str, slug: str = "orders") -> None:
    spec, digest = example_job(slug)
    client.register_job(workspace_id, slug, spec, digest, "0123abc")


def cli(env: Env, *args: str, principal: Any = None) -> tuple[int, str, str]:
    variables = {
        "CONTROL_ROOM_GATEWAY_URL": env.rest_url,
        "CONTROL_ROOM_TOKEN": env.contract.token(principal or env.world.dev1),
        "CONTROL_ROOM_WORKSPACE": env.world.w1,
        "CONTROL_ROOM_STATE_DIR": str(env.tmp / "state"),
        "COLUMNS": "200",
    }
    result = runner.invoke(app, list(args), env=variables)
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        result.exception)
    assert "Traceback" not in result.stderr
    return result.exit_code, result.stdout, result.stderr


def ok_json(env: Env, *args: str, **extra: Any) -> Any:
    code, out, err = cli(env, *args, "--json", **extra)
    assert code == 0, err
    return json.loads(out)


def until(what: str, check: Callable[[], Any], bound: float = BOUND) -> Any:
    deadline = time.monotonic() + bound
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


# ------------------------------------------------------------------------------ the CLI

def test_schedules_create_list_show_enable_disable_ticks_delete(env: Env) -> None:
    register(env.client(env.world.dev1), env.world.w1)
    created = ok_json(env, "schedules", "create", "nightly", "--job", "orders",
                      "--cron", "30 2 * * *", "--timezone", "Europe/Berlin",
                      "--param", "orders=7", "--catchup", "all", "--catchup-max", "3",
                      "--overlap", "queue", "--max-concurrent", "2")
    assert (created["cron"], created["timezone"], created["params"]) == (
        "30 2 * * *", "Europe/Berlin", {"orders": 7})
    assert (created["catchup"], created["catchup_max"], created["overlap"]) == ("all", 3, "queue")
    ok_json(env, "schedules", "create", "often", "--job", "orders", "--every", "1s")
    listed = ok_json(env, "schedules", "list")
    assert [s["name"] for s in listed] == ["nightly", "often"]
    shown = ok_json(env, "schedules", "show", "nightly")
    assert len(shown["upcoming"]) == 5
    code, out, _ = cli(env, "schedules", "show", "nightly")
    assert code == 0 and "cron 30 2 * * * (Europe/Berlin)" in out
    assert ok_json(env, "schedules", "disable", "nightly")["next_tick_at"] is None
    assert ok_json(env, "schedules", "enable", "nightly")["next_tick_at"] is not None

    # the interval schedule is due within a second: one scheduler call fires it
    time.sleep(1.2)
    code, out, err = cli(env, "scheduler", "--once")
    assert code == 0, err
    assert "1 created" in out or "2 created" in out, out
    ticks = ok_json(env, "schedules", "ticks", "often")["ticks"]
    # the newest due tick ran (catch-up latest), any older one was skipped
    assert ticks[0]["state"] == "created" and ticks[0]["run_id"]
    assert all(t["state"] == "skipped" and t["reason"].startswith("catchup latest")
               for t in ticks[1:])
    run = env.client(env.world.viewer1).get_run(ticks[0]["run_id"])
    assert run.labels == {"schedule": "often"}
    code, out, _ = cli(env, "schedules", "ticks", "often")
    assert code == 0 and "created" in out

    assert ok_json(env, "schedules", "delete", "often")["deleted"] is True
    assert [s["name"] for s in ok_json(env, "schedules", "list")] == ["nightly"]


@pytest.mark.parametrize(("args", "words"), [
    (("--cron", "61 * * * *"), "cron field minute"),
    (("--cron", "* * *"), "5 fields"),
    (("--cron", "0 * * * *", "--timezone", "Mars/Olympus"), "timezone"),
    (("--cron", "0 * * * *", "--every", "5m"), "either --cron or --every"),
    (("--every", "soon"), "--every must be a duration"),
    (("--cron", "0 * * * *", "--catchup", "some"), "--catchup"),
    (("--cron", "0 * * * *", "--param", "orders=many"), "param orders is integer"),
    (("--cron", "0 * * * *", "--param", "nope=1"), "unknown param 'nope'"),
])
def test_bad_schedule_input_exits_2_naming_it(env: Env, args: tuple[str, ...],
                                              words: str) -> None:
    register(env.client(env.world.dev1), env.world.w1)
    code, _, err = cli(env, "schedules", "create", "bad", "--job", "orders", *args)
    assert code == 2, err
    assert words in " ".join(err.split())


def test_a_viewer_may_read_but_not_schedule_or_fire(env: Env) -> None:
    register(env.client(env.world.dev1), env.world.w1)
    ok_json(env, "schedules", "create", "often", "--job", "orders", "--every", "60s")
    assert len(ok_json(env, "schedules", "list", principal=env.world.viewer1)) == 1
    code, _, err = cli(env, "schedules", "disable", "often", principal=env.world.viewer1)
    assert code == 2 and "forbidden" in err
    code, _, err = cli(env, "scheduler", "--once", principal=env.world.viewer1)
    assert code == 2 and "forbidden" in err


# ------------------------------------------------------------------------------ processes

def scheduler_process(env: Env, log: Path, interval: str = "0.2s") -> subprocess.Popen[str]:
    variables = {**os.environ, "CONTROL_ROOM_TOKEN": env.contract.token(SERVICE),
                 "CONTROL_ROOM_STATE_DIR": str(env.tmp / "state")}
    handle = log.open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "control_room", "scheduler", "--gateway", env.rest_url,
         "--interval", interval], env=variables, stdout=handle, stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL, text=True)
    handle.close()
    env.processes.append(process)
    return process


def test_two_scheduler_processes_fire_each_tick_once_and_stop_on_sigterm(env: Env) -> None:
    dev = env.client(env.world.dev1)
    register(dev, env.world.w1)
    for name in ("a", "b"):
        dev.create_schedule(env.world.w1, name, "orders", interval_seconds=1, catchup="all",
                            catchup_max=100, overlap="queue", max_concurrent=100)
    logs = [env.tmp / "scheduler-1.log", env.tmp / "scheduler-2.log"]
    processes = [scheduler_process(env, log) for log in logs]

    def created() -> int:
        return sum(len([t for t in dev.list_schedule_ticks(env.world.w1, n, limit=1000).ticks
                        if t.state == "created"]) for n in ("a", "b"))

    until("6 ticks fired", lambda: created() >= 6)
    # both have installed their SIGTERM handler (they say so once they have): on a loaded
    # machine one may still be starting when the other has fired six ticks
    until("both schedulers started",
          lambda: all("Scheduler: every" in log.read_text() for log in logs))
    for process in processes:
        process.send_signal(signal.SIGTERM)
    for process in processes:
        assert process.wait(timeout=BOUND) == 0
    texts = [log.read_text() for log in logs]
    assert all("Scheduler stopped" in text for text in texts), texts

    ticks = [t for n in ("a", "b") for t in dev.list_schedule_ticks(env.world.w1, n,
                                                                     limit=1000).ticks]
    fired = [t for t in ticks if t.state == "created"]
    runs = dev.list_runs(env.world.w1, limit=500).runs
    assert len(runs) == len(fired)
    assert {t.run_id for t in fired} == {r.id for r in runs}
    # each tick was reported by exactly one of the two processes
    for t in fired:
        said = [text.count(str(t.run_id)) for text in texts]
        assert sorted(said) == [0, 1], (t, said)


def test_up_starts_a_scheduler_whose_ticks_run_the_job_to_success(db_url: str,
                                                                  tmp_path: Path) -> None:
    settings = load_settings(database_url=db_url, state_dir=tmp_path / "state", port=0,
                             jwt_secret=TEST_JWT_SECRET)
    said: list[str] = []
    with LocalStack(settings, workers=1, kinds="python", scheduler_interval=0.5,
                    log=said.append) as stack:
        assert stack.info is not None
        assert any(line.startswith("scheduler: every 0.5s") for line in said), said
        client = ContractClient(stack.info.gateway_url, stack.info.token.get_secret_value(),
                                retry=RetryPolicy(attempts=2, total=5))
        with client:
            ws = stack.info.workspace_id
            register(client, ws)
            client.create_schedule(ws, "every-2s", "orders", interval_seconds=2,
                                   params={"orders": 3})

            def succeeded() -> list[Any]:
                ticks = client.list_schedule_ticks(ws, "every-2s").ticks
                done = [t for t in ticks if t.run_id is not None
                        and client.get_run(t.run_id).state == "succeeded"]
                return done if len(done) >= 2 else []

            done = until("two scheduled runs succeeded", succeeded, bound=120)
            run = client.get_run(done[0].run_id)
            assert run.labels == {"schedule": "every-2s"}
            assert str(run.idempotency_key).startswith("schedule:")
            stack.check_workers()              # the scheduler process is alive

            # the stack's alert deliverer: a run that fails reaches a webhook
            with Receiver([]) as receiver:
                client.create_alert_destination(ws, "hook", "webhook", receiver.url + "/h")
                client.create_alert_rule(ws, "failures", "run_failed", "hook")
                failing = client.create_run(ws, "broken", "0" * 40, [{
                    "name": "boom", "kind": "python", "max_attempts": 1,
                    "params": {"entrypoint": "pipelines.example:no_such_function"}}])
                until("the failed run's alert delivered",
                      lambda: receiver.requests, bound=60)
                [(_, headers, body)] = receiver.requests
                assert body["event"] == "run_failed"
                assert body["subject"] == {"run_id": failing.id}
                # the receiver answered before the deliverer recorded it: wait for the record
                until("the delivery recorded", lambda: [
                    a for a in client.list_alerts(ws) if a.state == "delivered"], bound=30)
                [alert] = client.list_alerts(ws)
                assert alert.state == "delivered" and alert.attempts == 1
                assert headers["X-Control-Room-Alert-Id"] == alert.id
            stack.check_workers()              # the deliverer too
            stack_file = (settings.state_dir / "stack.json").read_text()
    log = (settings.state_dir / "log" / "scheduler.log").read_text()
    assert "Scheduler stopped" in log, log          # SIGTERM: a graceful stop
    assert "tick every-2s" in log
    assert any(line.startswith("alerts: delivered by one process") for line in said), said
    assert any(line.startswith("sensors: evaluated every 10s") for line in said), said
    assert "Sensor evaluator stopped" in (settings.state_dir / "log" / "sensors.log").read_text()
    # the scheduler's service_role token stays in its environment: no token of the stack
    # file is one
    tokens = [v for v in json.loads(stack_file).values()
              if isinstance(v, str) and v.count(".") == 2]
    assert tokens and all(claims_of(t)["role"] == "authenticated" for t in tokens)


def claims_of(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    padded = payload + "=" * (-len(payload) % 4)
    decoded: dict[str, Any] = json.loads(base64.urlsafe_b64decode(padded))
    return decoded


# ------------------------------------------------------------------------------ the loop

def test_the_loop_calls_again_at_once_while_limit_schedules_were_due(env: Env) -> None:
    import threading

    from control_room.scheduler import Scheduler

    dev = env.client(env.world.dev1)
    register(dev, env.world.w1)
    for name in ("a", "b", "c"):
        dev.create_schedule(env.world.w1, name, "orders", interval_seconds=1)
    time.sleep(1.1)
    stop = threading.Event()
    seen: list[int] = []
    scheduler = Scheduler(dev, interval=30, limit=1,
                          report=lambda result: seen.append(result.created))
    worker = threading.Thread(target=scheduler.run, args=(stop,))
    worker.start()
    try:
        until("three schedules fired", lambda: sum(seen) >= 3, bound=10)
    finally:
        stop.set()
        worker.join(BOUND)
    # one schedule per call, without waiting the 30 s interval between them
    assert scheduler.stats.calls >= 3 and scheduler.stats.created >= 3
    assert not worker.is_alive()


def test_the_loop_retries_an_unreachable_gateway_and_stops_on_a_refused_token(
        env: Env) -> None:
    import socket
    import threading

    from control_room.contract.client import Forbidden
    from control_room.scheduler import Scheduler

    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    nowhere = ContractClient(f"http://127.0.0.1:{port}/rest/v1", "x",
                             retry=RetryPolicy(attempts=1, total=1))
    with nowhere:
        scheduler = Scheduler(nowhere, interval=0.05)
        stop = threading.Event()
        worker = threading.Thread(target=scheduler.run, args=(stop,))
        worker.start()
        until("two failed calls", lambda: scheduler.stats.errors >= 2, bound=20)
        stop.set()
        worker.join(BOUND)
    assert scheduler.stats.calls == 0
    viewer = Scheduler(env.client(env.world.viewer1), interval=0.05,
                       workspace_id=env.world.w1)
    with pytest.raises(Forbidden):
        viewer.run(threading.Event())
    with pytest.raises(ValueError, match="interval"):
        Scheduler(nowhere, interval=0)
