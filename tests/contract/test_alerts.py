"""Alerts in the database: rules and destinations, the outbox filled by triggers in the same
transaction as the cause, claim_alerts / record_alert_delivery and their backoff (test clock).

The deliverer over HTTP against a real receiver is tests/test_alerts_delivery.py.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from control_room.db.store import ContractError, acting_as

from .conftest import SERVICE, Contract, World, new_run, phase
from .test_schedules import T0 as SCHEDULES_T0
from .test_schedules import due, register, schedule

T0 = datetime(2031, 5, 4, 10, 0, tzinfo=UTC)


def destination(contract: Contract, world: World, name: str = "ops-hook", *,
                type_: str = "webhook", url: str = "env:ALERT_HOOK_URL",
                ws: str | None = None) -> dict[str, Any]:
    result: dict[str, Any] = contract.call("create_alert_destination", {
        "workspace_id": ws or world.w1, "name": name, "type": type_, "url": url},
        as_=world.admin1 if ws in (None, world.w1) else world.admin2)
    return result


def rule(contract: Contract, world: World, event: str, name: str | None = None, *,
         dest: str = "ops-hook", ws: str | None = None, **extra: Any) -> dict[str, Any]:
    result: dict[str, Any] = contract.call("create_alert_rule", {
        "workspace_id": ws or world.w1, "name": name or event.replace("_", "-"), "event": event,
        "destination": dest, **extra},
        as_=world.admin1 if ws in (None, world.w1) else world.admin2)
    return result


def fail_run(contract: Contract, world: World, *, ws: str | None = None, max_attempts: int = 1,
             now: datetime = T0, **extra: Any) -> str:
    """A run of one phase claimed and failed (out of attempts when max_attempts is 1)."""
    ws = ws or world.w1
    executor = world.exec1 if ws == world.w1 else world.exec2
    run = new_run(contract, ws, [phase("load", max_attempts=max_attempts)], now=now, **extra)
    claim = contract.call("claim_phase", {"run_id": run["id"]}, as_=executor, now=now)
    contract.call("complete_phase", {"lease_token": claim["lease_token"], "outcome": "failed",
                                     "error": {"message": "boom: connection refused"},
                                     "retryable": False}, as_=executor, now=now)
    return str(run["id"])


def alerts(contract: Contract, world: World, ws: str | None = None) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = contract.call(
        "list_alerts", {"workspace_id": ws or world.w1},
        as_=world.viewer1 if ws in (None, world.w1) else world.admin2)
    return result


# ---------------------------------------------------------------------------------------------
# destinations and rules
# ---------------------------------------------------------------------------------------------

def test_destinations_and_rules_are_created_listed_and_deleted(
        contract: Contract, world: World) -> None:
    made = destination(contract, world)
    assert made["name"] == "ops-hook" and made["url"] == "env:ALERT_HOOK_URL"
    slack = contract.call("create_alert_destination", {
        "workspace_id": world.w1, "name": "slack", "type": "slack",
        "url": "file:/run/secrets/slack_hook", "headers": {}}, as_=world.admin1)
    assert slack["type"] == "slack"
    literal = contract.call("create_alert_destination", {
        "workspace_id": world.w1, "name": "receiver", "type": "webhook",
        "url": "https://alerts.example.com/hook",
        "headers": {"Authorization": "env:ALERT_TOKEN"}}, as_=world.admin1)
    assert literal["headers"] == {"Authorization": "env:ALERT_TOKEN"}
    listed = contract.call("list_alert_destinations", {"workspace_id": world.w1}, as_=world.dev1)
    assert [d["name"] for d in listed] == ["ops-hook", "receiver", "slack"]

    made_rule = rule(contract, world, "run_failed", filters={"spec_slug": "demo",
                                                             "labels": {"team": "data"}})
    assert made_rule["destination"] == "ops-hook" and made_rule["enabled"] is True
    rule(contract, world, "lease_expiries", threshold=3, dest="slack")
    rule(contract, world, "slo_breached", dest="slack")
    names = [r["name"] for r in contract.call("list_alert_rules", {"workspace_id": world.w1},
                                              as_=world.dev1)]
    assert names == ["lease-expiries", "run-failed", "slo-breached"]

    err = contract.error("delete_alert_destination", {"workspace_id": world.w1,
                                                      "name": "slack"}, as_=world.admin1)
    assert (err.status, err.code) == (409, "conflict") and "lease-expiries" in err.message
    for name in ("lease-expiries", "slo-breached"):
        contract.call("delete_alert_rule", {"workspace_id": world.w1, "name": name},
                      as_=world.admin1)
    gone = contract.call("delete_alert_destination", {"workspace_id": world.w1, "name": "slack"},
                         as_=world.admin1)
    assert gone["deleted"] is True
    # W2 sees none of it
    assert contract.call("list_alert_rules", {"workspace_id": world.w2}, as_=world.admin2) == []
    err = contract.error("list_alert_rules", {"workspace_id": world.w1}, as_=world.admin2)
    assert err.status == 404


@pytest.mark.parametrize(("args", "argument", "words"), [
    ({"type": "slack", "url": "https://hooks.slack.com/services/T0/B0/XYZSECRET"}, "url",
     "credential"),
    ({"type": "webhook", "url": "https://user:pw@example.com/hook"}, "url", "credential"),
    ({"type": "webhook", "url": "https://example.com/hook?token=XYZSECRET"}, "url",
     "query string"),
    ({"type": "webhook", "url": "ftp://example.com/x"}, "url", "secret reference"),
    ({"type": "webhook", "url": "env:HOOK", "headers": {"Authorization": "Bearer XYZSECRET"}},
     "headers.Authorization", "never stored"),
    ({"type": "pagerduty", "url": "env:HOOK"}, "type", "webhook or slack"),
])
def test_a_destination_that_would_store_a_secret_is_refused(
        sql_contract: Contract, world: World, args: dict[str, Any], argument: str,
        words: str) -> None:
    err = sql_contract.error("create_alert_destination", {
        "workspace_id": world.w1, "name": "bad", **args}, as_=world.admin1)
    assert (err.status, err.code) == (400, "invalid_argument")
    assert err.details is not None and argument in str(err.details)
    assert words in err.message
    assert "XYZSECRET" not in err.message and "pw@" not in err.message


def test_rule_arguments_are_checked(sql_contract: Contract, world: World) -> None:
    destination(sql_contract, world)
    cases: list[tuple[dict[str, Any], str]] = [
        ({"event": "disk_full"}, "event"),
        ({"event": "lease_expiries"}, "threshold"),
        ({"event": "run_failed", "threshold": 3}, "threshold"),
        ({"event": "run_failed", "filters": {"owner": "x"}}, "filters.owner"),
        ({"event": "run_failed", "filters": {"labels": ["x"]}}, "filters.labels"),
        ({"event": "lease_expiries", "threshold": 2, "filters": {"spec_slug": "x"}}, "filters"),
    ]
    for extra, argument in cases:
        err = sql_contract.error("create_alert_rule", {
            "workspace_id": world.w1, "name": "r", "destination": "ops-hook", **extra},
            as_=world.admin1)
        assert (err.status, json.loads(str(err.details))) == (400, {"argument": argument}), (
            extra, err.message)
    err = sql_contract.error("create_alert_rule", {
        "workspace_id": world.w1, "name": "r", "event": "run_failed", "destination": "nowhere"},
        as_=world.admin1)
    assert err.status == 404 and "nowhere" in err.message


# ---------------------------------------------------------------------------------------------
# the outbox, in the same transaction as the cause
# ---------------------------------------------------------------------------------------------

def test_no_rules_no_alerts(sql_contract: Contract, world: World) -> None:
    fail_run(sql_contract, world)
    assert alerts(sql_contract, world) == []


def test_a_failed_run_and_its_dead_letter_raise_alerts(contract: Contract, world: World) -> None:
    destination(contract, world)
    rule(contract, world, "run_failed")
    rule(contract, world, "phase_dead_lettered")
    run_id = fail_run(contract, world, labels={"team": "data"})
    found = {a["event"]: a for a in alerts(contract, world)}
    assert set(found) == {"run_failed", "phase_dead_lettered"}
    failed = found["run_failed"]
    assert failed["subject"] == {"run_id": run_id}
    assert failed["payload"]["spec_slug"] == "demo" and failed["payload"]["state"] == "failed"
    assert failed["payload"]["error"] == "boom: connection refused"
    assert failed["state"] == "pending" and failed["attempts"] == 0 and failed["deliveries"] == []
    dead = found["phase_dead_lettered"]
    assert dead["subject"] == {"run_id": run_id, "phase": "load", "attempt": 1}
    assert dead["payload"]["max_attempts"] == 1
    # W2 has no rules and no alerts
    fail_run(contract, world, ws=world.w2)
    assert alerts(contract, world, world.w2) == []


def test_a_retried_failure_is_no_dead_letter(sql_contract: Contract, world: World) -> None:
    destination(sql_contract, world)
    rule(sql_contract, world, "phase_dead_lettered")
    run = new_run(sql_contract, world.w1, [phase("load", max_attempts=3)], now=T0)
    claim = sql_contract.call("claim_phase", {"run_id": run["id"]}, as_=world.exec1, now=T0)
    sql_contract.call("complete_phase", {"lease_token": claim["lease_token"], "outcome": "failed",
                                         "error": {"message": "flaky"}}, as_=world.exec1, now=T0)
    assert alerts(sql_contract, world) == []


def test_a_terminal_failure_before_the_last_attempt_is_a_dead_letter(
        sql_contract: Contract, world: World) -> None:
    destination(sql_contract, world)
    rule(sql_contract, world, "phase_dead_lettered")
    run = new_run(sql_contract, world.w1, [phase("load", max_attempts=3)], now=T0)
    claim = sql_contract.call("claim_phase", {"run_id": run["id"]}, as_=world.exec1, now=T0)
    sql_contract.call("complete_phase", {"lease_token": claim["lease_token"], "outcome": "failed",
                                         "error": {"message": "bad sql"}, "retryable": False},
                      as_=world.exec1, now=T0)
    [alert] = alerts(sql_contract, world)
    assert alert["event"] == "phase_dead_lettered"
    assert (alert["payload"]["attempt"], alert["payload"]["max_attempts"]) == (1, 3)
    dead = sql_contract.call("list_dead_letters", {"workspace_id": world.w1}, as_=world.viewer1)
    assert [d["phase"] for d in dead["dead_letters"]] == ["load"]    # the same rule


def test_filters_choose_the_runs(sql_contract: Contract, world: World) -> None:
    destination(sql_contract, world)
    rule(sql_contract, world, "run_failed", "by-slug", filters={"spec_slug": "other"})
    rule(sql_contract, world, "run_failed", "by-label", filters={"labels": {"team": "data"}})
    fail_run(sql_contract, world, labels={"team": "data", "tier": "1"})
    fail_run(sql_contract, world, labels={"team": "web"})
    assert [a["rule"] for a in alerts(sql_contract, world)] == ["by-label"]


def test_a_job_filter_chooses_the_runs_of_that_job(sql_contract: Contract,
                                                   world: World) -> None:
    register(sql_contract, world.w1, "nightly")
    register(sql_contract, world.w1, "hourly")
    destination(sql_contract, world)
    rule(sql_contract, world, "run_failed", "nightly-only", filters={"job": "nightly"})
    failed: dict[str, str] = {}
    for job in ("hourly", "nightly"):
        run = sql_contract.call("create_job_run", {"workspace_id": world.w1, "job": job},
                                as_=world.dev1, now=T0)
        claim = sql_contract.call("claim_phase", {"run_id": run["id"]}, as_=world.exec1,
                                  now=T0)
        sql_contract.call("complete_phase", {"lease_token": claim["lease_token"],
                                             "outcome": "failed", "retryable": False,
                                             "error": {"message": "x"}}, as_=world.exec1, now=T0)
        failed[job] = run["id"]
    fail_run(sql_contract, world)   # a run of no job
    assert [a["subject"]["run_id"] for a in alerts(sql_contract, world)] == [failed["nightly"]]


def test_a_rolled_back_failure_leaves_no_alert(conn: psycopg.Connection[Any],
                                               sql_contract: Contract, world: World) -> None:
    destination(sql_contract, world)
    rule(sql_contract, world, "run_failed")
    run = new_run(sql_contract, world.w1, [phase("load", max_attempts=1)])
    claim = sql_contract.call("claim_phase", {"run_id": run["id"]}, as_=world.exec1)
    with pytest.raises(RuntimeError, match="roll it back"), acting_as(
            conn, role="authenticated", sub=str(world.exec1.sub),
            claims={"workspaces": [world.w1]}):
        conn.execute("select ops.complete_phase(%s, 'failed', null, %s::jsonb, false)",
                     (claim["lease_token"], '{"message": "boom"}'))
        inside = conn.execute("select count(*) from ops.alerts").fetchone()
        assert inside is not None and inside[0] == 1      # recorded with the failure ...
        raise RuntimeError("roll it back")
    assert alerts(sql_contract, world) == []             # ... and gone with it
    assert sql_contract.call("get_run", {"run_id": run["id"]})["state"] == "running"


def test_lease_expiries_above_the_threshold_fire_once_an_hour(
        sql_contract: Contract, world: World) -> None:
    destination(sql_contract, world)
    rule(sql_contract, world, "lease_expiries", threshold=2)
    run = new_run(sql_contract, world.w1, [phase("load", max_attempts=10)], now=T0)
    now = T0
    for _ in range(4):   # each claim reaps the previous claim's expired lease
        sql_contract.call("claim_phase", {"run_id": run["id"], "lease_seconds": 5},
                          as_=world.exec1, now=now)
        now += timedelta(seconds=60)
    sql_contract.call("claim_phase", {"run_id": run["id"], "lease_seconds": 5},
                      as_=world.exec1, now=now)   # the fourth expiry
    found = alerts(sql_contract, world)
    assert len(found) == 1, found                       # expiries 2, 3 and 4: one alert
    assert found[0]["event"] == "lease_expiries" and found[0]["payload"]["count"] == 2
    # the next clock hour: the count of the last hour (1 expiry) is under the threshold
    later = T0 + timedelta(hours=1, minutes=30)
    sql_contract.call("claim_phase", {"run_id": run["id"], "lease_seconds": 5},
                      as_=world.exec1, now=later)
    assert len(alerts(sql_contract, world)) == 1
    sql_contract.call("claim_phase", {"run_id": run["id"], "lease_seconds": 5},
                      as_=world.exec1, now=later + timedelta(minutes=1))
    found = alerts(sql_contract, world)
    assert len(found) == 2 and found[0]["payload"]["count"] == 2


def test_a_failed_schedule_tick_raises_an_alert(conn: psycopg.Connection[Any],
                                                sql_contract: Contract, world: World) -> None:
    """The trigger function on a stand-in table of the columns it reads (id, workspace_id,
    schedule_id, scheduled_for, state, error); on ops.schedule_ticks, when the schedules
    migration made it, the same function is attached."""
    destination(sql_contract, world)
    rule(sql_contract, world, "schedule_tick_failed")
    with conn.transaction():
        conn.execute(
            "create table ops_private.ticks_standin (id uuid primary key default"
            " gen_random_uuid(), schedule_id uuid, workspace_id uuid, scheduled_for timestamptz,"
            " state text, error text)")
        conn.execute(
            "create trigger standin_alert after insert on ops_private.ticks_standin for each row"
            " when (new.state = 'failed') execute function"
            " ops_private.alert_schedule_tick_failed()")
        schedule = str(uuid.uuid4())
        for state in ("created", "skipped", "failed"):
            conn.execute("insert into ops_private.ticks_standin (schedule_id, workspace_id,"
                         " scheduled_for, state, error) values (%s, %s, %s, %s, %s)",
                         (schedule, world.w1, T0, state, "create_run: job not found"))
        tick = conn.execute("select id from ops_private.ticks_standin where state = 'failed'"
                            ).fetchone()
        real = conn.execute(
            "select pg_catalog.to_regclass('ops.schedule_ticks') is not null,"
            " (select count(*) from pg_catalog.pg_trigger t where t.tgname in"
            "   ('schedule_ticks_alert_failed', 'schedule_ticks_alert_failed_update')"
            "   and t.tgfoid = 'ops_private.alert_schedule_tick_failed'::regproc)").fetchone()
    assert tick is not None and real is not None
    [alert] = alerts(sql_contract, world)
    assert alert["event"] == "schedule_tick_failed"
    assert alert["subject"] == {"tick_id": str(tick[0]), "schedule_id": schedule,
                                "scheduled_for": "2031-05-04T10:00:00+00:00"}
    assert alert["payload"]["error"] == "create_run: job not found"
    assert real[1] == (2 if real[0] else 0)


def test_a_schedule_whose_run_cannot_be_created_raises_an_alert(
        sql_contract: Contract, world: World) -> None:
    """Through the schedules' own functions: the tick is recorded, then marked failed."""
    register(sql_contract, world.w1)
    destination(sql_contract, world)
    rule(sql_contract, world, "schedule_tick_failed")
    made = schedule(sql_contract, world, "bad", params={"nope": 1})   # an undeclared param
    schedule(sql_contract, world, "good")
    out = due(sql_contract, SCHEDULES_T0 + timedelta(hours=1))
    assert (out["created"], out["failed"]) == (1, 1)
    [alert] = alerts(sql_contract, world)
    assert alert["event"] == "schedule_tick_failed"
    assert alert["subject"]["schedule_id"] == made["id"]
    assert alert["subject"]["scheduled_for"].startswith("2031-03-03T10:00:00")
    assert "run not created" in alert["payload"]["error"] and "nope" in alert["payload"]["error"]


# ---------------------------------------------------------------------------------------------
# delivery bookkeeping (the deliverer's RPCs)
# ---------------------------------------------------------------------------------------------

def test_claim_and_record_with_backoff_then_failed(contract: Contract, world: World) -> None:
    destination(contract, world)
    rule(contract, world, "run_failed")
    fail_run(contract, world)
    claimed = contract.call("claim_alerts", {"limit": 5, "lease_seconds": 30}, now=T0)
    assert len(claimed) == 1
    alert = claimed[0]
    assert alert["destination"] == {"name": "ops-hook", "type": "webhook",
                                    "url": "env:ALERT_HOOK_URL", "headers": {}}
    assert alert["attempt"] == 1 and alert["workspace"] == "w1"
    assert contract.call("claim_alerts", {}, now=T0) == []          # leased
    after = contract.call("record_alert_delivery", {
        "alert_id": alert["id"], "ok": False, "http_status": 503, "error": "HTTP 503",
        "duration_ms": 12}, now=T0)
    assert after["state"] == "pending" and after["attempts"] == 1
    assert after["next_attempt_at"].startswith("2031-05-04T10:00:05")
    assert contract.call("claim_alerts", {}, now=T0 + timedelta(seconds=4)) == []
    delays = [5, 30, 120, 600, 1800, 3600, 3600]
    now = T0
    for attempt, delay in enumerate(delays, start=2):
        now += timedelta(seconds=delay)
        [again] = contract.call("claim_alerts", {}, now=now)
        assert again["id"] == alert["id"] and again["attempt"] == attempt
        after = contract.call("record_alert_delivery", {
            "alert_id": alert["id"], "ok": False, "error": "timed out"}, now=now)
    assert after["state"] == "failed" and after["attempts"] == 8
    assert [d["attempt"] for d in after["deliveries"]] == list(range(1, 9))
    assert after["deliveries"][0]["http_status"] == 503
    assert after["last_error"] == "timed out"
    err = contract.error("record_alert_delivery", {"alert_id": alert["id"], "ok": True}, now=now)
    assert (err.status, err.code) == (409, "conflict")


def test_a_lost_lease_is_claimed_again_and_delivered_once(
        sql_contract: Contract, world: World) -> None:
    destination(sql_contract, world)
    rule(sql_contract, world, "run_failed")
    fail_run(sql_contract, world)
    [first] = sql_contract.call("claim_alerts", {"lease_seconds": 30}, now=T0)
    # the deliverer died: after the lease the alert is claimed again (at least once)
    [second] = sql_contract.call("claim_alerts", {}, now=T0 + timedelta(seconds=31))
    assert second["id"] == first["id"]
    done = sql_contract.call("record_alert_delivery", {"alert_id": second["id"], "ok": True,
                                                       "http_status": 204},
                             now=T0 + timedelta(seconds=32))
    assert done["state"] == "delivered" and done["delivered_at"] is not None
    assert sql_contract.call("claim_alerts", {}, now=T0 + timedelta(hours=2)) == []


def test_delivery_errors_are_capped_and_redacted(sql_contract: Contract, world: World) -> None:
    destination(sql_contract, world)
    rule(sql_contract, world, "run_failed")
    fail_run(sql_contract, world)
    [alert] = sql_contract.call("claim_alerts", {}, now=T0)
    after = sql_contract.call("record_alert_delivery", {
        "alert_id": alert["id"], "ok": False,
        "error": "proxy https://u:hunter2@proxy.example said " + "x" * 2000}, now=T0)
    assert "hunter2" not in after["last_error"] and len(after["last_error"]) == 500
    assert "hunter2" not in after["deliveries"][0]["error"]


def test_only_service_role_delivers(sql_contract: Contract, world: World) -> None:
    for who in (world.admin1, world.exec1):
        for fn, args in (("claim_alerts", {}),
                         ("record_alert_delivery", {"alert_id": str(uuid.uuid4()), "ok": True})):
            err = sql_contract.error(fn, args, as_=who)
            assert (err.status, err.code) == (403, "forbidden"), (fn, str(who))
    err = sql_contract.error("record_alert_delivery", {"alert_id": str(uuid.uuid4()), "ok": True},
                             as_=SERVICE)
    assert err.status == 404


def test_members_read_alerts_of_their_workspace_only(sql_contract: Contract,
                                                     world: World) -> None:
    destination(sql_contract, world)
    rule(sql_contract, world, "run_failed")
    fail_run(sql_contract, world)
    assert len(alerts(sql_contract, world)) == 1
    err = sql_contract.error("list_alerts", {"workspace_id": world.w1}, as_=world.admin2)
    assert err.status == 404
    err = sql_contract.error("list_alerts", {"workspace_id": world.w1}, as_=world.exec1)
    assert err.status == 403
    with pytest.raises(ContractError):
        sql_contract.call("list_alerts", {"workspace_id": world.w1, "state": "lost"},
                          as_=world.viewer1)
