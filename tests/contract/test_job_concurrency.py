"""A job's max_concurrent_runs (docs/jobs.md, "Concurrency"): while the job has that many runs
queued or running, whoever started them, a schedule tick is skipped (`job busy`) and a sensor
whose value moved waits with its cursor kept; create_job_run is not limited. Test clock."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from .conftest import Contract, World, make_world
from .test_schedules import T0, due, schedule, ticks
from .test_sensors import record, runs_of, sensor, setup_ws


@pytest.fixture
def w(sql_contract: Contract) -> World:
    """W1 with job `ingest` (the sensors' fixture), a connection `odoo` for its sensor."""
    world = make_world(sql_contract)
    setup_ws(sql_contract, world, world.w1, world.admin1)
    return world


def limit(contract: Contract, w: World, value: int | None) -> dict[str, Any]:
    result: dict[str, Any] = contract.call("set_job_concurrency", {
        "workspace_id": w.w1, "job": "ingest", "max_concurrent_runs": value}, as_=w.dev1)
    return result


def active(contract: Contract, w: World) -> list[str]:
    with contract.conn.transaction():
        rows = contract.conn.execute(
            "select id::text from ops.runs where workspace_id = %s and state in "
            "('queued', 'running') order by created_at", [w.w1]).fetchall()
    return [r[0] for r in rows]


def test_a_busy_job_skips_its_ticks_whoever_started_the_run(
    sql_contract: Contract, w: World
) -> None:
    c = sql_contract
    assert limit(c, w, 1)["max_concurrent_runs"] == 1
    # a run started by hand (not limited itself) makes the job busy for its schedules
    manual = c.call("create_job_run", {"workspace_id": w.w1, "job": "ingest"}, as_=w.dev1,
                    now=T0)
    # two schedules of the job, each with its own overlap policy that would let them run
    schedule(c, w, "hourly", job="ingest", overlap="queue", max_concurrent=5)
    schedule(c, w, "other", job="ingest", cron="30 * * * *")
    fired = due(c, T0 + timedelta(hours=1, minutes=1))
    assert fired["created"] == 0 and fired["skipped"] == 2
    [tick] = ticks(c, w, "hourly")
    assert tick["state"] == "skipped"
    assert tick["reason"] == ("job busy: job ingest has 1 run(s) queued or running "
                              "(max_concurrent_runs 1)")
    assert active(c, w) == [manual["id"]]

    # the run ends: the next tick fires
    c.call("cancel_run", {"run_id": manual["id"]})
    fired = due(c, T0 + timedelta(hours=2, minutes=1))
    assert fired["created"] == 1                  # one of the two: then the job is busy again
    assert len(active(c, w)) == 1
    assert {t["state"] for t in ticks(c, w, "hourly") + ticks(c, w, "other")} == {
        "created", "skipped"}
    # no limit again: both schedules may fire side by side
    for run_id in active(c, w):
        c.call("cancel_run", {"run_id": run_id})
    assert limit(c, w, None)["max_concurrent_runs"] is None
    fired = due(c, T0 + timedelta(hours=3, minutes=1))
    assert fired["created"] == 2
    # create_job_run is never limited
    limit(c, w, 1)
    extra = c.call("create_job_run", {"workspace_id": w.w1, "job": "ingest"}, as_=w.dev1)
    assert extra["state"] == "queued"


def test_a_sensor_of_a_busy_job_waits_with_its_cursor_then_starts_one_run(
    sql_contract: Contract, w: World
) -> None:
    c = sql_contract
    limit(c, w, 1)
    made = sensor(c, w)
    first = record(c, made["id"], "2031-03-03 08:00:00")
    assert first["moved"] is True and first["waiting"] is None
    run_id = first["run"]["id"]
    # the source moves while that run is queued: no second run, the cursor stays
    waiting = record(c, made["id"], "2031-03-03 08:05:00", now=T0 + timedelta(minutes=1))
    assert (waiting["moved"], waiting["run"], waiting["error"]) == (False, None, None)
    assert waiting["waiting"] == ("job ingest has 1 run(s) queued or running "
                                  "(max_concurrent_runs 1)")
    assert waiting["sensor"]["cursor"] == "2031-03-03 08:00:00"
    assert len(runs_of(c.conn, w.w1)) == 1
    # the run ends: the same value now starts the run it waited for
    c.call("cancel_run", {"run_id": run_id})
    after = record(c, made["id"], "2031-03-03 08:05:00", now=T0 + timedelta(minutes=2))
    assert after["moved"] is True and after["waiting"] is None
    assert after["sensor"]["cursor"] == "2031-03-03 08:05:00"
    assert len(runs_of(c.conn, w.w1)) == 2


def test_set_job_concurrency_is_checked_and_audited(sql_contract: Contract, w: World) -> None:
    c = sql_contract
    for bad in (0, 1001):
        err = c.error("set_job_concurrency", {"workspace_id": w.w1, "job": "ingest",
                                              "max_concurrent_runs": bad}, as_=w.dev1)
        assert (err.status, err.code) == (400, "invalid_argument")
        assert "max_concurrent_runs" in err.message
    assert c.error("set_job_concurrency", {"workspace_id": w.w1, "job": "ingest",
                                           "max_concurrent_runs": 1}, as_=w.viewer1).status == 403
    limit(c, w, 2)
    limit(c, w, 2)                                  # unchanged: not audited again
    shown = c.call("get_job", {"workspace_id": w.w1, "slug": "ingest"}, as_=w.viewer1)
    assert shown["max_concurrent_runs"] == 2
    with c.conn.transaction():
        audited = c.conn.execute("select count(*) from ops.audit_log "
                                 "where function_name = 'set_job_concurrency'").fetchone()
    assert audited == (1,)


def test_a_tick_and_a_sensor_racing_on_a_limited_job_make_one_run(
        sql_contract: Contract, w: World, db_url: str) -> None:
    """The sensor's transaction has made its run but not committed when the scheduler's tick
    comes: the tick waits for the job's lock, then counts that run and is skipped."""
    import threading
    import time

    import psycopg

    from control_room.db.store import acting_as, call

    c = sql_contract
    limit(c, w, 1)
    made = sensor(c, w)
    schedule(c, w, "hourly", job="ingest", overlap="queue", max_concurrent=5)
    made_run = threading.Event()
    answers: dict[str, Any] = {}

    def evaluate() -> None:
        with psycopg.connect(db_url) as conn, \
                acting_as(conn, role="service_role", now=T0 + timedelta(hours=1, minutes=1)):
            answers["sensor"] = call(conn, "record_sensor_value",
                                     {"sensor_id": made["id"], "value": "7"})
            made_run.set()
            time.sleep(1.5)                      # hold the transaction (and the job's lock)

    def tick() -> None:
        made_run.wait(30)
        with psycopg.connect(db_url) as conn, \
                acting_as(conn, role="service_role", now=T0 + timedelta(hours=1, minutes=1)):
            answers["due"] = call(conn, "run_due_schedules", {})

    threads = [threading.Thread(target=evaluate), threading.Thread(target=tick)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert answers["sensor"]["moved"] is True
    assert (answers["due"]["created"], answers["due"]["skipped"]) == (0, 1)
    assert (ticks(c, w, "hourly")[0]["reason"] or "").startswith("job busy")
    assert len(runs_of(c.conn, w.w1)) == 1
