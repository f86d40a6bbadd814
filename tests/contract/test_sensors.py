"""Sensors: create validation, RLS across workspaces, claim semantics with two callers,
record_sensor_value moved / unchanged / error, idempotent runs. On the test clock: no sleeps.
The evaluator against a real source database: tests/test_sensors.py.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from control_room.db.store import ContractError, acting_as, call

from .conftest import Contract, World, make_world

T0 = datetime(2031, 3, 3, 9, 0, tzinfo=UTC)
QUERY = "select max(write_date) from res_partner"


def job_spec(slug: str) -> dict[str, Any]:
    return {"slug": slug, "version": 1,
            "source": {"path": f"specs/{slug}.yaml", "digest": "blake3:" + "cd" * 32},
            "params": {"day": {"type": "string", "required": False, "default": "today"}},
            "phases": [{"name": "load", "kind": "python",
                        "params": {"entrypoint": "pipelines.example:load",
                                   "day": "${params.day}"}}]}


def setup_ws(contract: Contract, w: World, ws: str, admin: Any) -> None:
    contract.call("register_job", {"workspace_id": ws, "slug": "ingest", "spec": job_spec("ingest"),
                                   "digest": "blake3:" + "ab" * 32, "git_sha": "0123abc"}, now=T0)
    contract.call("create_connection", {"workspace_id": ws, "name": "odoo", "type": "postgres",
                                        "config": {"dsn": "postgresql://odoo@127.0.0.1/odoo"},
                                        "secrets": {"password": "env:ODOO_PASSWORD"}}, as_=admin)
    contract.call("create_connection", {"workspace_id": ws, "name": "files", "type": "s3",
                                        "config": {"bucket": "b"}, "secrets": {}}, as_=admin)


@pytest.fixture
def w(sql_contract: Contract) -> World:
    world = make_world(sql_contract)
    setup_ws(sql_contract, world, world.w1, world.admin1)
    setup_ws(sql_contract, world, world.w2, world.admin2)
    return world


def sensor(contract: Contract, w: World, name: str = "partners", **args: Any) -> dict[str, Any]:
    body = {"workspace_id": w.w1, "name": name, "job": "ingest", "connection": "odoo",
            "query": QUERY, **args}
    result: dict[str, Any] = contract.call("create_sensor", body, as_=w.dev1, now=T0)
    return result


def record(contract: Contract, sensor_id: str, value: str | None, error: str | None = None,
           now: datetime = T0) -> dict[str, Any]:
    result: dict[str, Any] = contract.call(
        "record_sensor_value", {"sensor_id": sensor_id, "value": value, "error": error}, now=now)
    return result


def runs_of(conn: psycopg.Connection[Any], ws: str) -> list[tuple[Any, ...]]:
    with conn.transaction():
        return conn.execute("select id, job_version_id, labels, idempotency_key from ops.runs"
                            " where workspace_id = %s order by created_at, id", (ws,)).fetchall()


def test_create_validates_and_answers_the_sensor(sql_contract: Contract, w: World) -> None:
    made = sensor(sql_contract, w, params={"day": "2031-03-03"}, interval_seconds=30)
    assert made["job"] == "ingest" and made["connection"] == "odoo" and made["query"] == QUERY
    assert made["cursor"] is None and made["enabled"] is True and made["interval_seconds"] == 30
    assert made["next_evaluation_at"] is not None and made["params"] == {"day": "2031-03-03"}
    cases: list[tuple[dict[str, Any], int, str]] = [
        ({"name": "Bad"}, 400, "name"),
        ({"job": "nope"}, 404, "job"),
        ({"connection": "nope"}, 404, "connection"),
        ({"connection": "files"}, 400, "connection"),
        ({"query": "delete from res_partner"}, 400, "query"),
        ({"query": "select 1; drop table x"}, 400, "query"),
        ({"query": "select " + "x" * 4100}, 400, "query"),
        ({"interval_seconds": 5}, 400, "interval_seconds"),
        ({"params": [1]}, 400, "params"),
    ]
    for i, (args, status, argument) in enumerate(cases):
        body = {"workspace_id": w.w1, "name": f"s{i}", "job": "ingest", "connection": "odoo",
                "query": QUERY, **args}
        err = sql_contract.error("create_sensor", body, as_=w.dev1)
        assert err.status == status, (args, err)
        assert err.argument == argument, (args, err)
    dup = sql_contract.error("create_sensor", {"workspace_id": w.w1, "name": "partners",
                                               "job": "ingest", "connection": "odoo",
                                               "query": QUERY}, as_=w.dev1)
    assert dup.status == 409
    # a trailing ; is accepted and dropped
    assert sensor(sql_contract, w, "trail", query=QUERY + " ;")["query"] == QUERY


def test_rls_members_read_developers_change_other_workspaces_see_nothing(
        sql_contract: Contract, w: World) -> None:
    made = sensor(sql_contract, w)
    viewer_err = sql_contract.error("create_sensor", {"workspace_id": w.w1, "name": "v",
                                                      "job": "ingest", "connection": "odoo",
                                                      "query": QUERY}, as_=w.viewer1)
    assert viewer_err.status == 403
    assert [s["name"] for s in sql_contract.call("list_sensors", {"workspace_id": w.w1},
                                                 as_=w.viewer1)] == ["partners"]
    assert sql_contract.call("get_sensor", {"workspace_id": w.w1, "name": "partners"},
                             as_=w.viewer1)["id"] == made["id"]
    assert sql_contract.error("list_sensors", {"workspace_id": w.w1}, as_=w.dev2).status == 404
    assert sql_contract.error("get_sensor", {"workspace_id": w.w1, "name": "partners"},
                              as_=w.viewer2).status == 404
    # another workspace's developer can neither record nor claim W1's sensor
    err = sql_contract.error("record_sensor_value", {"sensor_id": made["id"], "value": "x"},
                             as_=w.dev2)
    assert err.status == 404
    assert sql_contract.call("claim_due_sensors", {}, as_=w.dev2, now=T0) == []
    assert sql_contract.error("record_sensor_value", {"sensor_id": made["id"], "value": "x"},
                              as_=w.viewer1).status == 403
    assert sql_contract.error("claim_due_sensors", {}, as_=w.viewer1).status == 403
    # the table itself: RLS per workspace
    with acting_as(sql_contract.conn, role="authenticated", sub=str(w.viewer2.sub)):
        rows = sql_contract.conn.execute("select count(*) from ops.sensors").fetchone()
    assert rows is not None and rows[0] == 0
    gone = sql_contract.call("delete_sensor", {"workspace_id": w.w1, "name": "partners"},
                             as_=w.dev1)
    assert gone["deleted"] is True
    assert sql_contract.error("delete_sensor", {"workspace_id": w.w1, "name": "partners"},
                              as_=w.dev1).status == 404


def test_claim_pushes_the_next_evaluation_and_two_callers_never_share_a_sensor(
        sql_contract: Contract, w: World, db_url: str) -> None:
    for i in range(6):
        sensor(sql_contract, w, f"s{i}", interval_seconds=60)
    # two evaluators at once, each in its own open transaction
    with (psycopg.connect(db_url) as a, psycopg.connect(db_url) as b,
          acting_as(a, role="service_role", now=T0)):
        first = call(a, "claim_due_sensors", {"limit": 4})
        with acting_as(b, role="service_role", now=T0):
            second = call(b, "claim_due_sensors", {"limit": 4})
    ids_a = {s["id"] for s in first}
    ids_b = {s["id"] for s in second}
    assert len(ids_a) == 4 and len(ids_b) == 2 and not ids_a & ids_b
    # claimed ones are not due again before their interval
    assert sql_contract.call("claim_due_sensors", {}, now=T0 + timedelta(seconds=59)) == []
    again = sql_contract.call("claim_due_sensors", {}, now=T0 + timedelta(seconds=60))
    assert len(again) == 6
    assert {"id", "workspace_id", "name", "connection", "query", "cursor"} <= set(again[0])
    # a developer claims only its own workspaces'
    sql_contract.call("create_sensor", {"workspace_id": w.w2, "name": "other", "job": "ingest",
                                        "connection": "odoo", "query": QUERY}, as_=w.dev2, now=T0)
    mine = sql_contract.call("claim_due_sensors", {}, as_=w.dev1, now=T0 + timedelta(hours=1))
    assert {s["workspace_id"] for s in mine} == {w.w1}
    assert sql_contract.error("claim_due_sensors", {"limit": 0}).status == 400


def test_record_moved_unchanged_error_and_idempotent_runs(
        sql_contract: Contract, w: World) -> None:
    made = sensor(sql_contract, w, params={"day": "2031-03-03"})
    # the first evaluation (no cursor yet) starts a run
    first = record(sql_contract, made["id"], "2031-03-03 08:00:00")
    assert first["moved"] is True and first["run"]["created"] is True
    assert first["sensor"]["cursor"] == "2031-03-03 08:00:00"
    runs = runs_of(sql_contract.conn, w.w1)
    assert len(runs) == 1
    run_id, version_id, labels, key = runs[0]
    assert str(run_id) == first["run"]["id"] and labels == {"sensor": "partners"}
    assert key.startswith(f"sensor:{made['id']}:")
    with sql_contract.conn.transaction():
        latest = sql_contract.conn.execute(
            "select v.id from ops.job_versions v join ops.jobs j on j.id = v.job_id"
            " and v.version = j.latest_version where j.slug = 'ingest' and j.workspace_id = %s",
            (w.w1,)).fetchone()
    assert latest is not None and version_id == latest[0]
    # the same value again (a retry, or a second evaluator): no new run
    same = record(sql_contract, made["id"], "2031-03-03 08:00:00")
    assert same["moved"] is False and same["run"] is None
    assert len(runs_of(sql_contract.conn, w.w1)) == 1
    # an error: recorded, passwords redacted, the cursor kept, no run
    failed = record(sql_contract, made["id"], None,
                    "could not connect to postgresql://odoo:hunter22@db/odoo " + "x" * 3000)
    assert failed["moved"] is False and "hunter22" not in failed["error"]
    assert len(failed["sensor"]["last_error"]) <= 1000
    assert failed["sensor"]["cursor"] == "2031-03-03 08:00:00"
    # a moved value: a new run; the error is cleared
    moved = record(sql_contract, made["id"], "2031-03-03 09:00:00",
                   now=T0 + timedelta(minutes=1))
    assert moved["moved"] is True and moved["run"]["id"] != first["run"]["id"]
    assert moved["sensor"]["last_error"] is None
    assert moved["sensor"]["last_run_id"] == moved["run"]["id"]
    assert len(runs_of(sql_contract.conn, w.w1)) == 2
    # back to an earlier value is a move too (a new run, not the old one's)
    back = record(sql_contract, made["id"], "2031-03-03 08:00:00")
    assert back["moved"] is True and back["run"]["created"] is True
    assert len(runs_of(sql_contract.conn, w.w1)) == 3
    assert sql_contract.error("record_sensor_value", {"sensor_id": made["id"]}).status == 400
    assert sql_contract.error("record_sensor_value",
                              {"sensor_id": made["id"], "value": "v" * 1001}).status == 400
    assert sql_contract.error("record_sensor_value",
                              {"sensor_id": "nope", "value": "1"}).status == 400


def test_two_recorders_of_one_moved_value_make_one_run(
        sql_contract: Contract, w: World, db_url: str) -> None:
    made = sensor(sql_contract, w)
    results: list[Any] = []
    barrier = threading.Barrier(2)

    def go() -> None:
        with psycopg.connect(db_url) as c:
            barrier.wait()
            with acting_as(c, role="service_role", now=T0):
                results.append(call(c, "record_sensor_value", {"sensor_id": made["id"],
                                                               "value": "42"}))

    threads = [threading.Thread(target=go) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r["moved"] for r in results) == [False, True]
    assert len(runs_of(sql_contract.conn, w.w1)) == 1


def test_a_run_that_cannot_be_made_is_an_error_and_the_cursor_stays(
        sql_contract: Contract, w: World) -> None:
    made = sensor(sql_contract, w, params={"unknown": 1})
    got = record(sql_contract, made["id"], "1")
    assert got["moved"] is False and "run not created" in got["error"]
    assert "unknown" in got["error"] and got["sensor"]["cursor"] is None
    with pytest.raises(ContractError):
        sql_contract.call("get_sensor", {"workspace_id": w.w1, "name": "nope"})
