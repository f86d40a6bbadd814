"""Schedules: cron and interval ticks, catch-up and overlap policies, time zones, racing
schedulers. Everything on the test clock (`now=`): nothing sleeps.
"""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from control_room.db.store import ContractError, acting_as, call

from .conftest import SERVICE, Contract, World, make_world

T0 = datetime(2031, 3, 3, 9, 0, tzinfo=UTC)   # a Monday


def job_spec(slug: str = "nightly") -> dict[str, Any]:
    return {"slug": slug, "version": 1,
            "source": {"path": f"specs/{slug}.yaml", "digest": "blake3:" + "cd" * 32},
            "params": {"day": {"type": "string", "required": False, "default": "today"}},
            "phases": [{"name": "load", "kind": "python",
                        "params": {"entrypoint": "pipelines.example:load",
                                   "day": "${params.day}"}}]}


def register(contract: Contract, ws: str, slug: str = "nightly") -> None:
    contract.call("register_job", {"workspace_id": ws, "slug": slug, "spec": job_spec(slug),
                                   "digest": "blake3:" + "ab" * 32, "git_sha": "0123abc"},
                  now=T0)


@pytest.fixture
def w(sql_contract: Contract) -> World:
    world = make_world(sql_contract)
    register(sql_contract, world.w1)
    return world


def schedule(contract: Contract, w: World, name: str = "s", *, now: datetime = T0,
             **args: Any) -> dict[str, Any]:
    body = {"workspace_id": w.w1, "name": name, "job": "nightly", **args}
    if "cron" not in args and "interval_seconds" not in args:
        body["cron"] = "0 * * * *"
    result: dict[str, Any] = contract.call("create_schedule", body, as_=w.dev1, now=now)
    return result


def due(contract: Contract, now: datetime, **args: Any) -> dict[str, Any]:
    result: dict[str, Any] = contract.call("run_due_schedules", args, now=now)
    return result


def ticks(contract: Contract, w: World, name: str = "s") -> list[dict[str, Any]]:
    page = contract.call("list_schedule_ticks", {"workspace_id": w.w1, "name": name,
                                                 "limit": 1000}, as_=w.viewer1)
    return list(reversed(page["ticks"]))


def finish(contract: Contract, run_id: str) -> None:
    contract.call("cancel_run", {"run_id": run_id})


def iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat()


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


# ---------------------------------------------------------------------------------------------
# creating and parsing
# ---------------------------------------------------------------------------------------------

def test_a_cron_schedule_knows_its_next_tick_and_the_job_list_shows_it(
        sql_contract: Contract, w: World) -> None:
    s = schedule(sql_contract, w, cron="*/15 9-17 * * MON-FRI", timezone="Europe/Berlin")
    # 09:00 UTC on a Monday is 10:00 in Berlin (CET): the next quarter is 10:15 local
    assert at(s["next_tick_at"]) == T0 + timedelta(minutes=15)
    assert s["catchup"] == "latest" and s["overlap"] == "skip" and s["max_concurrent"] == 1
    jobs = sql_contract.call("list_jobs", {"workspace_id": w.w1}, as_=w.viewer1)
    assert at(jobs[0]["next_run_at"]) == T0 + timedelta(minutes=15)
    job = sql_contract.call("get_job", {"workspace_id": w.w1, "slug": "nightly"}, as_=w.viewer1)
    assert at(job["next_run_at"]) == T0 + timedelta(minutes=15)
    shown = sql_contract.call("get_schedule", {"workspace_id": w.w1, "name": "s"}, as_=w.viewer1,
                              now=T0)
    assert [at(t) for t in shown["upcoming"][:3]] == [
        T0 + timedelta(minutes=m) for m in (15, 30, 45)]
    sql_contract.call("update_schedule", {"workspace_id": w.w1, "name": "s", "enabled": False},
                      as_=w.dev1, now=T0)
    assert sql_contract.call("list_jobs", {"workspace_id": w.w1})[0]["next_run_at"] is None


@pytest.mark.parametrize(("cron", "field"), [
    ("61 * * * *", "minute"), ("* 24 * * *", "hour"), ("* * 0 * *", "day-of-month"),
    ("* * * 13 *", "month"), ("* * * FOO *", "month"), ("* * * * 8", "day-of-week"),
    ("*/0 * * * *", "minute"), ("5-1 * * * *", "minute"), ("a * * * *", "minute"),
])
def test_a_bad_cron_field_is_a_400_naming_the_field(sql_contract: Contract, w: World,
                                                    cron: str, field: str) -> None:
    err = sql_contract.error("create_schedule", {"workspace_id": w.w1, "name": "bad",
                                                 "job": "nightly", "cron": cron}, as_=w.dev1)
    assert (err.status, err.code) == (400, "invalid_argument")
    assert f"cron field {field}" in err.message
    assert json.loads(str(err.details)) == {"argument": "cron", "field": field}


@pytest.mark.parametrize(("args", "argument", "words"), [
    ({"cron": "* * *"}, "cron", "5 fields"),
    ({"cron": "0 0 30 2 *"}, "cron", "never fires"),
    ({"cron": "0 * * * *", "timezone": "Mars/Olympus"}, "timezone", "IANA"),
    ({"cron": "0 * * * *", "interval_seconds": 60}, "interval_seconds", "not both"),
    ({"interval_seconds": 0}, "interval_seconds", "between 1"),
    ({"cron": "0 * * * *", "catchup": "some"}, "catchup", "skip, latest, all"),
    ({"cron": "0 * * * *", "overlap": "wait"}, "overlap", "cancel_previous"),
    ({"cron": "0 * * * *", "max_concurrent": 0}, "max_concurrent", "between 1"),
    ({"cron": "0 * * * *", "catchup_max": 5000}, "catchup_max", "between 1"),
])
def test_bad_schedule_arguments_are_400s_naming_them(sql_contract: Contract, w: World,
                                                     args: dict[str, Any], argument: str,
                                                     words: str) -> None:
    err = sql_contract.error("create_schedule", {"workspace_id": w.w1, "name": "bad",
                                                 "job": "nightly", **args}, as_=w.dev1)
    assert (err.status, err.code) == (400, "invalid_argument"), err
    assert json.loads(str(err.details))["argument"] == argument
    assert words in err.message


def test_an_unknown_job_is_a_404_and_a_repeated_name_a_409(sql_contract: Contract,
                                                          w: World) -> None:
    err = sql_contract.error("create_schedule", {"workspace_id": w.w1, "name": "x", "job": "nope",
                                                 "cron": "0 * * * *"}, as_=w.dev1)
    assert (err.status, err.code) == (404, "not_found") and "nope" in err.message
    schedule(sql_contract, w, "x")
    err = sql_contract.error("create_schedule", {"workspace_id": w.w1, "name": "x",
                                                 "job": "nightly", "cron": "0 * * * *"},
                             as_=w.dev1)
    assert (err.status, err.code) == (409, "conflict")


def test_macros_names_steps_and_the_dom_dow_or_rule(sql_contract: Contract, w: World) -> None:
    s = schedule(sql_contract, w, "daily", cron="@daily")
    assert s["cron"] == "@daily" and at(s["next_tick_at"]) == datetime(2031, 3, 4, tzinfo=UTC)
    # the 13th of the month OR a Friday (both restricted): Fri 7 March comes first
    s = schedule(sql_contract, w, "friday13", cron="0 0 13 * FRI")
    shown = sql_contract.call("get_schedule", {"workspace_id": w.w1, "name": "friday13"}, now=T0)
    assert [at(t).date().isoformat() for t in shown["upcoming"][:3]] == [
        "2031-03-07", "2031-03-13", "2031-03-14"]
    # dow restricted, dom `*`: Fridays only
    schedule(sql_contract, w, "fridays", cron="0 0 * JAN-DEC 5,7")
    shown = sql_contract.call("get_schedule", {"workspace_id": w.w1, "name": "fridays"}, now=T0)
    assert [at(t).date().isoformat() for t in shown["upcoming"][:3]] == [
        "2031-03-07", "2031-03-09", "2031-03-14"]   # 7 is Sunday, as 0


# ---------------------------------------------------------------------------------------------
# firing and catch-up
# ---------------------------------------------------------------------------------------------

def test_a_due_tick_creates_one_run_with_the_schedule_key_and_label(sql_contract: Contract,
                                                                   w: World) -> None:
    schedule(sql_contract, w, params={"day": "monday"})
    assert due(sql_contract, T0 + timedelta(minutes=59))["created"] == 0
    out = due(sql_contract, T0 + timedelta(hours=1, seconds=5))
    assert (out["created"], out["skipped"], out["failed"]) == (1, 0, 0)
    tick = out["ticks"][0]
    assert tick["state"] == "created" and at(tick["scheduled_for"]) == T0 + timedelta(hours=1)
    run = sql_contract.call("get_run", {"run_id": tick["run_id"]})
    assert run["labels"] == {"schedule": "s"}
    assert run["idempotency_key"] == f"schedule:{tick['schedule_id']}:2031-03-03T10:00:00Z"
    assert run["input_manifest"]["params"] == {"day": "monday"}
    # called again at the same time: nothing more is due
    assert due(sql_contract, T0 + timedelta(hours=1, seconds=6))["created"] == 0
    s = sql_contract.call("get_schedule", {"workspace_id": w.w1, "name": "s"})
    assert at(s["next_tick_at"]) == T0 + timedelta(hours=2)


@pytest.mark.parametrize(("policy", "created", "skipped"), [
    ("skip", [], list(range(1, 6))),
    ("latest", [5], [1, 2, 3, 4]),
    ("all", [3, 4, 5], [1, 2]),
])
def test_missed_ticks_after_downtime_follow_the_catchup_policy(
        sql_contract: Contract, w: World, policy: str, created: list[int],
        skipped: list[int]) -> None:
    """Hourly from 10:00; the scheduler is down until 14:30: ticks 10..14 are due."""
    schedule(sql_contract, w, catchup=policy, catchup_max=3, overlap="queue", max_concurrent=10)
    out = due(sql_contract, T0 + timedelta(hours=5, minutes=30))
    recorded = ticks(sql_contract, w)
    hour = {at(t["scheduled_for"]).hour - 9: t for t in recorded}
    assert sorted(hour) == [1, 2, 3, 4, 5]
    assert [h for h, t in sorted(hour.items()) if t["state"] == "created"] == created
    assert [h for h, t in sorted(hour.items()) if t["state"] == "skipped"] == skipped
    assert (out["created"], out["skipped"]) == (len(created), len(skipped))
    for h in skipped:
        assert hour[h]["reason"].startswith(f"catchup {policy}") and hour[h]["run_id"] is None
    # oldest first: the runs were created in tick order
    runs = [hour[h]["run_id"] for h in created]
    assert all(runs)
    s = sql_contract.call("get_schedule", {"workspace_id": w.w1, "name": "s"})
    assert at(s["next_tick_at"]) == T0 + timedelta(hours=6)


def test_skip_fires_a_tick_that_is_only_a_little_late(sql_contract: Contract, w: World) -> None:
    schedule(sql_contract, w, catchup="skip")
    out = due(sql_contract, T0 + timedelta(hours=1, seconds=90))
    assert out["created"] == 1


def test_interval_schedules_tick_every_n_seconds_from_their_creation(sql_contract: Contract,
                                                                     w: World) -> None:
    s = schedule(sql_contract, w, interval_seconds=300, catchup="all", catchup_max=100,
                 overlap="queue", max_concurrent=100)
    assert at(s["next_tick_at"]) == T0 + timedelta(minutes=5)
    assert s["cron"] is None and s["interval_seconds"] == 300
    out = due(sql_contract, T0 + timedelta(minutes=16))
    assert [at(t["scheduled_for"]) for t in out["ticks"]] == [
        T0 + timedelta(minutes=m) for m in (5, 10, 15)]
    s = sql_contract.call("get_schedule", {"workspace_id": w.w1, "name": "s"})
    assert at(s["next_tick_at"]) == T0 + timedelta(minutes=20)


def test_a_disabled_schedule_does_not_fire_and_is_not_caught_up_when_enabled(
        sql_contract: Contract, w: World) -> None:
    schedule(sql_contract, w, catchup="all")
    sql_contract.call("update_schedule", {"workspace_id": w.w1, "name": "s", "enabled": False},
                      as_=w.dev1, now=T0)
    assert due(sql_contract, T0 + timedelta(hours=3, minutes=30))["schedules"] == 0
    s = sql_contract.call("update_schedule", {"workspace_id": w.w1, "name": "s",
                                              "enabled": True},
                          as_=w.dev1, now=T0 + timedelta(hours=3, minutes=30))
    assert at(s["next_tick_at"]) == T0 + timedelta(hours=4)
    assert ticks(sql_contract, w) == []


def test_a_failing_run_creation_is_a_failed_tick_and_other_schedules_go_on(
        sql_contract: Contract, w: World) -> None:
    schedule(sql_contract, w, "bad", params={"nope": 1})   # an undeclared param
    schedule(sql_contract, w, "good")
    out = due(sql_contract, T0 + timedelta(hours=1))
    assert (out["created"], out["failed"]) == (1, 1)
    failed = ticks(sql_contract, w, "bad")[0]
    assert failed["state"] == "failed" and failed["run_id"] is None
    assert "nope" in failed["reason"] and len(failed["reason"]) <= 1000
    assert ticks(sql_contract, w, "good")[0]["state"] == "created"


# ---------------------------------------------------------------------------------------------
# overlap
# ---------------------------------------------------------------------------------------------

def test_overlap_skip_skips_while_a_run_is_active(sql_contract: Contract, w: World) -> None:
    schedule(sql_contract, w, overlap="skip")
    first = due(sql_contract, T0 + timedelta(hours=1))["ticks"][0]
    out = due(sql_contract, T0 + timedelta(hours=2))
    assert (out["created"], out["skipped"]) == (0, 1)
    assert out["ticks"][0]["reason"].startswith("overlap")
    finish(sql_contract, first["run_id"])
    assert due(sql_contract, T0 + timedelta(hours=3))["created"] == 1


def test_overlap_queue_creates_the_run_anyway(sql_contract: Contract, w: World) -> None:
    schedule(sql_contract, w, overlap="queue")
    due(sql_contract, T0 + timedelta(hours=1))
    out = due(sql_contract, T0 + timedelta(hours=2))
    assert out["created"] == 1
    runs = sql_contract.call("list_runs", {"workspace_id": w.w1,
                                           "labels": {"schedule": "s"}})["runs"]
    assert sorted(r["state"] for r in runs) == ["queued", "queued"]


def test_overlap_cancel_previous_cancels_the_running_run(sql_contract: Contract,
                                                         w: World) -> None:
    schedule(sql_contract, w, overlap="cancel_previous")
    first = due(sql_contract, T0 + timedelta(hours=1))["ticks"][0]["run_id"]
    claim = sql_contract.call("claim_phase", {"run_id": first}, as_=w.exec1,
                              now=T0 + timedelta(hours=1))
    assert claim is not None
    out = due(sql_contract, T0 + timedelta(hours=2))
    assert out["created"] == 1
    old = sql_contract.call("get_run", {"run_id": first})
    assert old["state"] == "cancelled" and "cancel_previous" in old["cancel_reason"]
    new = sql_contract.call("get_run", {"run_id": out["ticks"][0]["run_id"]})
    assert new["state"] == "queued"


def test_max_concurrent_allows_that_many_runs(sql_contract: Contract, w: World) -> None:
    schedule(sql_contract, w, max_concurrent=2, overlap="skip", catchup="all")
    out = due(sql_contract, T0 + timedelta(hours=3, minutes=1))
    assert (out["created"], out["skipped"]) == (2, 1)
    assert [t["state"] for t in ticks(sql_contract, w)] == ["created", "created", "skipped"]


# ---------------------------------------------------------------------------------------------
# time zones and DST
# ---------------------------------------------------------------------------------------------

def test_berlin_spring_forward_fires_the_missing_time_once_shifted(sql_contract: Contract,
                                                                  w: World) -> None:
    """2031-03-30: Berlin's clocks jump from 02:00 to 03:00. 02:30 does not exist that day: it
    fires once, at 03:30 CEST (01:30 UTC), the wall time shifted by the gap."""
    start = datetime(2031, 3, 28, 12, 0, tzinfo=UTC)
    schedule(sql_contract, w, cron="30 2 * * *", timezone="Europe/Berlin", now=start,
             catchup="all", overlap="queue", max_concurrent=10)
    due(sql_contract, start + timedelta(days=3))
    assert [t["scheduled_for"] for t in ticks(sql_contract, w)] == [
        "2031-03-29T01:30:00+00:00",     # 02:30 CET
        "2031-03-30T01:30:00+00:00",     # 02:30 does not exist: 03:30 CEST
        "2031-03-31T00:30:00+00:00"]     # 02:30 CEST


def test_berlin_fall_back_fires_a_repeated_time_once(sql_contract: Contract, w: World) -> None:
    """2031-10-26: Berlin's 02:00-03:00 happens twice; 02:30 fires once (the second, CET)."""
    start = datetime(2031, 10, 24, 12, 0, tzinfo=UTC)
    schedule(sql_contract, w, cron="30 2 * * *", timezone="Europe/Berlin", now=start,
             catchup="all", overlap="queue", max_concurrent=10)
    due(sql_contract, start + timedelta(days=3))
    assert [t["scheduled_for"] for t in ticks(sql_contract, w)] == [
        "2031-10-25T00:30:00+00:00",     # 02:30 CEST
        "2031-10-26T01:30:00+00:00",     # 02:30 CET, once
        "2031-10-27T01:30:00+00:00"]


def test_new_york_hourly_across_both_changes(sql_contract: Contract, w: World) -> None:
    """Hourly in America/New_York: 23 ticks on the spring-forward day, 24 (not 25) distinct
    local times on the fall-back day, each once."""
    for day, count in ((datetime(2031, 3, 9), 23), (datetime(2031, 11, 2), 24)):
        name = f"ny-{day.month}"
        start = datetime(day.year, day.month, day.day - 1, 12, tzinfo=UTC)
        schedule(sql_contract, w, name, cron="0 * * * *", timezone="America/New_York",
                 now=start, catchup="all", catchup_max=100, overlap="queue",
                 max_concurrent=100)
        due(sql_contract, start + timedelta(days=3))
        local = [at(t["scheduled_for"]).astimezone(
                     __import__("zoneinfo").ZoneInfo("America/New_York"))
                 for t in ticks(sql_contract, w, name)]
        on_day = [t for t in local if t.date() == day.date()]
        assert len(on_day) == count, (name, on_day)
        assert len({t.hour for t in on_day}) == count


# ---------------------------------------------------------------------------------------------
# two schedulers
# ---------------------------------------------------------------------------------------------

def test_two_schedulers_racing_on_one_tick_make_exactly_one_run(db_url: str,
                                                                sql_contract: Contract,
                                                                w: World) -> None:
    for i in range(5):
        schedule(sql_contract, w, f"s{i}", cron="* * * * *")
    when = T0 + timedelta(minutes=1)
    barrier = threading.Barrier(2)
    results: list[dict[str, Any]] = []
    errors: list[BaseException] = []

    def scheduler() -> None:
        try:
            with psycopg.connect(db_url) as conn:
                barrier.wait()
                with acting_as(conn, role="service_role", now=when):
                    results.append(call(conn, "run_due_schedules", {}))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=scheduler) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert sum(r["created"] for r in results) == 5
    runs = sql_contract.call("list_runs", {"workspace_id": w.w1, "limit": 100})["runs"]
    assert len(runs) == 5


def test_a_tick_replayed_by_a_stale_scheduler_makes_no_second_run(
        conn: psycopg.Connection[Any], sql_contract: Contract, w: World) -> None:
    s = schedule(sql_contract, w)
    assert due(sql_contract, T0 + timedelta(hours=1))["created"] == 1
    # a scheduler that read the schedule before the first one moved it on
    with conn.transaction():
        conn.execute("update ops.schedules set next_tick_at = %s where id = %s",
                     (T0 + timedelta(hours=1), s["id"]))
    out = due(sql_contract, T0 + timedelta(hours=1, seconds=10))
    assert out["created"] == 0 and out["schedules"] == 1
    assert len(ticks(sql_contract, w)) == 1
    runs = sql_contract.call("list_runs", {"workspace_id": w.w1})["runs"]
    assert len(runs) == 1


# ---------------------------------------------------------------------------------------------
# who
# ---------------------------------------------------------------------------------------------

def test_who_runs_due_schedules(sql_contract: Contract, w: World) -> None:
    schedule(sql_contract, w)
    register(sql_contract, w.w2)
    sql_contract.call("create_schedule", {"workspace_id": w.w2, "name": "s", "job": "nightly",
                                          "cron": "0 * * * *"}, as_=w.dev2, now=T0)
    later = T0 + timedelta(hours=1)
    for who, args, status in ((w.viewer1, {"workspace_id": w.w1}, 403),
                              (w.exec1, {"workspace_id": w.w1}, 403),
                              (w.dev2, {"workspace_id": w.w1}, 404),
                              (w.viewer1, {}, 403)):
        err = sql_contract.error("run_due_schedules", args, as_=who, now=later)
        assert err.status == status, (who, err)
    # a developer fires its own workspaces only
    out = sql_contract.call("run_due_schedules", {}, as_=w.dev1, now=later)
    assert out["created"] == 1 and {t["workspace_id"] for t in out["ticks"]} == {w.w1}
    out = sql_contract.call("run_due_schedules", {}, as_=SERVICE, now=later)
    assert out["created"] == 1 and {t["workspace_id"] for t in out["ticks"]} == {w.w2}


def test_viewers_read_schedules_and_ticks_but_do_not_change_them(sql_contract: Contract,
                                                                 w: World) -> None:
    schedule(sql_contract, w)
    listed = sql_contract.call("list_schedules", {"workspace_id": w.w1}, as_=w.viewer1)
    assert [s["name"] for s in listed] == ["s"]
    for fn, args in (("update_schedule", {"name": "s", "enabled": False}),
                     ("delete_schedule", {"name": "s"}),
                     ("create_schedule", {"name": "t", "job": "nightly", "cron": "0 * * * *"})):
        err = sql_contract.error(fn, {"workspace_id": w.w1, **args}, as_=w.viewer1)
        assert (err.status, err.code) == (403, "forbidden")
    for fn, args in (("get_schedule", {"name": "s"}), ("list_schedule_ticks", {"name": "s"}),
                     ("list_schedules", {})):
        err = sql_contract.error(fn, {"workspace_id": w.w1, **args}, as_=w.viewer2)
        assert (err.status, err.code) == (404, "not_found")
    gone = sql_contract.call("delete_schedule", {"workspace_id": w.w1, "name": "s"},
                             as_=w.admin1)
    assert gone["deleted"] is True
    with pytest.raises(ContractError):
        sql_contract.call("get_schedule", {"workspace_id": w.w1, "name": "s"})


def test_ticks_are_paged_newest_first(sql_contract: Contract, w: World) -> None:
    schedule(sql_contract, w, interval_seconds=60, catchup="all", catchup_max=10,
             overlap="queue", max_concurrent=100)
    due(sql_contract, T0 + timedelta(minutes=7))
    page = sql_contract.call("list_schedule_ticks", {"workspace_id": w.w1, "name": "s",
                                                     "limit": 4})
    assert [at(t["scheduled_for"]).minute for t in page["ticks"]] == [7, 6, 5, 4]
    page = sql_contract.call("list_schedule_ticks", {"workspace_id": w.w1, "name": "s",
                                                     "limit": 4,
                                                     "before": page["next_before"]})
    assert [at(t["scheduled_for"]).minute for t in page["ticks"]] == [3, 2, 1]
    assert page["next_before"] is None


def test_a_failed_tick_raises_a_schedule_tick_failed_alert(sql_contract: Contract,
                                                           w: World) -> None:
    sql_contract.call("create_alert_destination", {"workspace_id": w.w1, "name": "hook",
                                                   "type": "webhook", "url": "env:HOOK"},
                      as_=w.admin1)
    sql_contract.call("create_alert_rule", {"workspace_id": w.w1, "name": "ticks",
                                            "event": "schedule_tick_failed",
                                            "destination": "hook"}, as_=w.admin1)
    schedule(sql_contract, w, "bad", params={"nope": 1})
    assert due(sql_contract, T0 + timedelta(hours=1))["failed"] == 1
    [tick] = ticks(sql_contract, w, "bad")
    alerts = sql_contract.call("list_alerts", {"workspace_id": w.w1}, as_=w.admin1)
    assert [a["event"] for a in alerts] == ["schedule_tick_failed"]
    assert alerts[0]["payload"]["tick_id"] == tick["id"]
    assert "nope" in alerts[0]["payload"]["error"]


def test_update_changes_only_what_is_given(sql_contract: Contract, w: World) -> None:
    schedule(sql_contract, w)                                   # hourly, next 10:00
    later = T0 + timedelta(hours=2, minutes=30)                 # 10:00 and 11:00 missed
    s = sql_contract.call("update_schedule", {"workspace_id": w.w1, "name": "s",
                                              "catchup": "all", "overlap": "queue",
                                              "max_concurrent": 5},
                          as_=w.dev1, now=later)
    assert at(s["next_tick_at"]) == T0 + timedelta(hours=1)     # policies only: kept
    assert s["cron"] == "0 * * * *" and s["catchup"] == "all"
    s = sql_contract.call("update_schedule", {"workspace_id": w.w1, "name": "s",
                                              "interval_seconds": 600},
                          as_=w.dev1, now=later)
    assert (s["cron"], s["interval_seconds"]) == (None, 600)
    assert at(s["next_tick_at"]) == later + timedelta(minutes=10)   # when: from now
    s = sql_contract.call("update_schedule", {"workspace_id": w.w1, "name": "s",
                                              "cron": "15 * * * *",
                                              "timezone": "America/New_York"},
                          as_=w.dev1, now=later)
    assert (s["cron"], s["interval_seconds"], s["timezone"]) == (
        "15 * * * *", None, "America/New_York")
    assert at(s["next_tick_at"]) == T0 + timedelta(hours=3, minutes=15)
    err = sql_contract.error("update_schedule", {"workspace_id": w.w1, "name": "s",
                                                 "cron": "0 * * * *", "interval_seconds": 60},
                             as_=w.dev1)
    assert (err.status, err.code) == (400, "invalid_argument") and "not both" in err.message
