"""Freshness and freshness SLOs (docs/jobs.md, "Freshness and SLOs"): FRESHNESS events move
the catalog's data time forward, a job shows its datasets' lag, evaluate_slos raises
`slo_breached` once per breach and resets on recovery. Everything on the test clock."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from .conftest import SERVICE, Contract, World
from .jobspec import register

T0 = datetime(2031, 6, 2, 9, 0, tzinfo=UTC)
GOLD = ["gold.odoo.revenue", "gold.odoo.receivables_ageing"]


class JobRun:
    """A run of job `nightly` of W1 whose one phase an executor holds; it wrote `GOLD`."""

    def __init__(self, contract: Contract, world: World, *, now: datetime = T0,
                 ws: str | None = None, names: list[str] | None = None) -> None:
        self.contract, self.world = contract, world
        self.ws = ws or world.w1
        self.executor = world.exec1 if self.ws == world.w1 else world.exec2
        dev = world.dev1 if self.ws == world.w1 else world.dev2
        run = contract.call("create_job_run", {
            "workspace_id": self.ws, "job": "nightly", "params": {"day": "2031-06-01"},
            "idempotency_key": str(uuid.uuid4())}, as_=dev, now=now)
        self.run_id = str(run["id"])
        claim = contract.call("claim_phase", {"run_id": self.run_id}, as_=self.executor, now=now)
        assert claim is not None
        self.token = str(claim["lease_token"])
        for name in names if names is not None else GOLD:
            contract.call("record_dataset", {
                "lease_token": self.token, "name": name, "location": f"/lake/{name}",
                "change": "INITIAL",
                "schema": [{"name": "id", "type": "int64", "nullable": False}]},
                as_=self.executor, now=now)

    def freshness(self, payload: dict[str, Any], *, now: datetime) -> dict[str, Any]:
        result: dict[str, Any] = self.contract.call("append_events", {
            "run_id": self.run_id, "lease_token": self.token, "events": [{
                "event_id": str(uuid.uuid4()), "phase": "extract", "type": "FRESHNESS",
                "message": "gold published", "payload": payload}]},
            as_=self.executor, now=now)
        return result

    def refused(self, payload: dict[str, Any], *, now: datetime = T0) -> Any:
        return self.contract.error("append_events", {
            "run_id": self.run_id, "lease_token": self.token, "events": [{
                "event_id": str(uuid.uuid4()), "phase": "extract", "type": "FRESHNESS",
                "payload": payload}]}, as_=self.executor, now=now)


def rows(contract: Contract, statement: str, params: list[Any] | None = None) -> list[Any]:
    """What the database holds, read outside the contract (and the transaction ended)."""
    try:
        return contract.conn.execute(statement, params).fetchall()
    finally:
        contract.conn.rollback()


def fresh(data_time: datetime, names: list[str] | None = None,
          cursor: str | None = "2031-06-02T08:59:00") -> dict[str, Any]:
    return {"data_time": data_time.isoformat(), "source_cursor": cursor,
            "datasets": names if names is not None else GOLD}


def job(contract: Contract, world: World, *, now: datetime, ws: str | None = None
        ) -> dict[str, Any]:
    result: dict[str, Any] = contract.call(
        "get_job", {"workspace_id": ws or world.w1, "slug": "nightly"}, as_=world.viewer1
        if ws in (None, world.w1) else world.viewer2, now=now)
    return result


def alerts_raised(contract: Contract, world: World) -> list[dict[str, Any]]:
    listed: list[dict[str, Any]] = contract.call(
        "list_alerts", {"workspace_id": world.w1}, as_=world.admin1)
    return [a for a in listed if a["event"] == "slo_breached"]


@pytest.fixture
def slo_world(contract: Contract, world: World) -> World:
    register(contract, world.w1, as_=world.dev1)
    contract.call("create_alert_destination", {
        "workspace_id": world.w1, "name": "ops-hook", "type": "webhook",
        "url": "env:ALERT_HOOK_URL"}, as_=world.admin1)
    contract.call("create_alert_rule", {
        "workspace_id": world.w1, "name": "stale", "event": "slo_breached",
        "destination": "ops-hook"}, as_=world.admin1)
    return world


# ---------------------------------------------------------------------------- FRESHNESS events

def test_a_freshness_event_moves_the_named_datasets_data_time_forward_only(
    contract: Contract, slo_world: World
) -> None:
    w = slo_world
    before = job(contract, w, now=T0)["freshness"]
    assert (before["state"], before["slo_seconds"], before["datasets"]) == ("unknown", 900, [])
    assert before["lag_seconds"] is None and before["data_time"] is None

    run = JobRun(contract, w)
    read_at = T0 - timedelta(minutes=2)
    appended = run.freshness(fresh(read_at), now=T0)
    assert appended["appended"] == 1
    shown = job(contract, w, now=T0 + timedelta(minutes=1))["freshness"]
    assert shown["state"] == "ok"
    assert shown["lag_seconds"] == 180.0                  # 2 min old at T0, read 1 min later
    assert datetime.fromisoformat(shown["data_time"]) == read_at
    assert [d["name"] for d in shown["datasets"]] == sorted(GOLD)
    first = shown["datasets"][0]
    assert (first["layer"], first["source_cursor"], first["run_id"]) == (
        "gold", "2031-06-02T08:59:00", run.run_id)

    # an older data time (a late duplicate, a slower concurrent run) never moves it back
    run.freshness(fresh(read_at - timedelta(hours=1), cursor="older"), now=T0)
    again = job(contract, w, now=T0 + timedelta(minutes=1))["freshness"]
    assert datetime.fromisoformat(again["data_time"]) == read_at
    assert {d["source_cursor"] for d in again["datasets"]} == {"2031-06-02T08:59:00"}

    # a later one moves only the datasets it names: the job's lag is its stalest dataset's
    run.freshness(fresh(T0, names=[GOLD[0]], cursor="newer"), now=T0)
    moved = job(contract, w, now=T0 + timedelta(minutes=1))["freshness"]
    by_name = {d["name"]: d for d in moved["datasets"]}
    assert by_name[GOLD[0]]["lag_seconds"] == 60.0
    assert by_name[GOLD[1]]["lag_seconds"] == 180.0
    assert moved["lag_seconds"] == 180.0

    # the catalog shows it too
    assert rows(contract,
                "select data_time, source_cursor, data_time_run_id::text from ops.datasets "
                "where workspace_id = %s and name = %s", [w.w1, GOLD[0]]) == [
        (T0, "newer", run.run_id)]


def test_freshness_touches_only_the_runs_own_workspace(
    contract: Contract, slo_world: World
) -> None:
    w = slo_world
    register(contract, w.w2, as_=w.dev2)
    theirs = JobRun(contract, w, ws=w.w2)
    theirs.freshness(fresh(T0 - timedelta(hours=3)), now=T0)
    mine = JobRun(contract, w)
    # naming the same datasets from W1 changes W1's rows only
    mine.freshness(fresh(T0), now=T0)
    found = dict(rows(contract,
                      "select workspace_id::text, min(data_time) from ops.datasets "
                      "where name = any(%s) group by workspace_id", [GOLD]))
    assert found == {w.w2: T0 - timedelta(hours=3), w.w1: T0}
    # unknown names are ignored: nothing is created
    mine.freshness(fresh(T0, names=["gold.odoo.nothing_here"]), now=T0)
    assert rows(contract, "select count(*) from ops.datasets "
                          "where name = 'gold.odoo.nothing_here'") == [(0,)]


def test_a_freshness_event_without_data_time_is_only_a_log_line(
    contract: Contract, slo_world: World
) -> None:
    run = JobRun(contract, slo_world)
    run.freshness({"seconds": 12.5, "newest_source_write_date": "2031-06-01T00:00:00"}, now=T0)
    run.freshness({"data_time": None, "datasets": GOLD}, now=T0)
    assert job(contract, slo_world, now=T0)["freshness"]["state"] == "unknown"


@pytest.mark.parametrize(("payload", "argument", "words"), [
    ({"data_time": "yesterday", "datasets": GOLD}, "data_time", "ISO 8601"),
    ({"data_time": "2031-06-02T09:00:00", "datasets": GOLD}, "data_time", "with a zone"),
    ({"data_time": "2031-02-30T09:00:00Z", "datasets": GOLD}, "data_time", "not a valid time"),
    ({"data_time": 1780000000, "datasets": GOLD}, "data_time", "ISO 8601"),
    ({"data_time": "2031-06-02T10:00:00Z", "datasets": GOLD}, "data_time", "in the future"),
    ({"data_time": "2031-06-02T08:00:00Z"}, "datasets", "dataset names"),
    ({"data_time": "2031-06-02T08:00:00Z", "datasets": []}, "datasets", "dataset names"),
    ({"data_time": "2031-06-02T08:00:00Z", "datasets": "gold.odoo.revenue"}, "datasets",
     "dataset names"),
    ({"data_time": "2031-06-02T08:00:00Z", "datasets": ["../etc"]}, "datasets", "dataset names"),
    ({"data_time": "2031-06-02T08:00:00Z", "datasets": [7]}, "datasets", "dataset names"),
    ({"data_time": "2031-06-02T08:00:00Z", "datasets": GOLD, "source_cursor": {"a": 1}},
     "source_cursor", "string or number"),
    ({"data_time": "2031-06-02T08:00:00Z", "datasets": GOLD, "source_cursor": "x" * 201},
     "source_cursor", "at most 200"),
])
def test_a_malformed_freshness_event_is_refused_with_its_batch(
    contract: Contract, slo_world: World, payload: dict[str, Any], argument: str, words: str
) -> None:
    run = JobRun(contract, slo_world)
    err = run.refused(payload)
    assert (err.status, err.code) == (400, "invalid_argument")
    assert words in err.message
    assert err.details is not None and argument in str(err.details)
    assert rows(contract, "select count(*) from ops.run_events where run_id = %s "
                          "and type = 'FRESHNESS'", [run.run_id]) == [(0,)]  # nor its batch
    assert job(contract, slo_world, now=T0)["freshness"]["state"] == "unknown"


# ------------------------------------------------------------------------------------ SLOs

def test_a_breach_raises_slo_breached_once_and_a_recovery_resets_it(
    contract: Contract, slo_world: World
) -> None:
    w = slo_world
    run = JobRun(contract, w)
    run.freshness(fresh(T0), now=T0)
    ok = contract.call("evaluate_slos", {}, now=T0 + timedelta(minutes=10))
    assert (ok["checked"], ok["breached"], ok["recovered"], ok["alerts"]) == (1, 0, 0, 0)
    assert job(contract, w, now=T0 + timedelta(minutes=10))["freshness"]["state"] == "ok"

    late = T0 + timedelta(minutes=15, seconds=1)
    breached = contract.call("evaluate_slos", {}, now=late)
    assert (breached["breached"], breached["alerts"]) == (1, 1)
    assert breached["changes"] == [{"job": "nightly", "workspace_id": w.w1,
                                    "state": "breached", "lag_seconds": 901.0}]
    shown = job(contract, w, now=late)["freshness"]
    assert shown["state"] == "breached"
    assert datetime.fromisoformat(shown["breached_since"]) == late
    [alert] = alerts_raised(contract, w)
    assert alert["payload"]["job"] == "nightly"
    assert alert["payload"]["lag_seconds"] == 901.0 and alert["payload"]["slo_seconds"] == 900
    assert [d["name"] for d in alert["payload"]["stalest"]] == sorted(GOLD)
    assert "901 s behind its source (SLO 900 s)" in alert["payload"]["message"]

    # still breached: evaluated again (by this or another scheduler), nothing more is raised
    for minutes in (16, 30, 60):
        again = contract.call("evaluate_slos", {}, now=T0 + timedelta(minutes=minutes))
        assert (again["breached"], again["alerts"]) == (0, 0)
    assert len(alerts_raised(contract, w)) == 1

    # a new publication: back within the SLO, reset without an alert
    run.freshness(fresh(T0 + timedelta(minutes=61)), now=T0 + timedelta(minutes=61))
    recovered = contract.call("evaluate_slos", {}, now=T0 + timedelta(minutes=62))
    assert (recovered["recovered"], recovered["alerts"]) == (1, 0)
    assert job(contract, w, now=T0 + timedelta(minutes=62))["freshness"]["breached_since"] is None
    # and the next breach is a new alert
    second = contract.call("evaluate_slos", {}, now=T0 + timedelta(minutes=80))
    assert (second["breached"], second["alerts"]) == (1, 1)
    assert len(alerts_raised(contract, w)) == 2


def test_set_job_slo_changes_the_threshold_and_is_checked(
    contract: Contract, slo_world: World
) -> None:
    w = slo_world
    run = JobRun(contract, w)
    run.freshness(fresh(T0), now=T0)
    answer = contract.call("set_job_slo", {"workspace_id": w.w1, "job": "nightly",
                                           "freshness_seconds": 300}, as_=w.dev1, now=T0)
    assert answer["freshness"]["slo_seconds"] == 300 and answer["slug"] == "nightly"
    assert contract.call("evaluate_slos", {"workspace_id": w.w1}, as_=w.admin1,
                         now=T0 + timedelta(minutes=6))["breached"] == 1
    audit = "select count(*) from ops.audit_log where function_name = 'set_job_slo'"
    assert rows(contract, audit) == [(1,)]
    # the same value again changes nothing (no audit row)
    contract.call("set_job_slo", {"workspace_id": w.w1, "job": "nightly",
                                  "freshness_seconds": 300}, as_=w.admin1, now=T0)
    assert rows(contract, audit) == [(1,)]

    for bad in (59, 31622401, None):
        err = contract.error("set_job_slo", {"workspace_id": w.w1, "job": "nightly",
                                             "freshness_seconds": bad}, as_=w.dev1)
        assert (err.status, err.code) == (400, "invalid_argument")
        assert "freshness_seconds" in err.message
    for who, status in ((w.viewer1, 403), (w.exec1, 403), (w.dev2, 404)):
        err = contract.error("set_job_slo", {"workspace_id": w.w1, "job": "nightly",
                                             "freshness_seconds": 600}, as_=who)
        assert err.status == status
    err = contract.error("set_job_slo", {"workspace_id": w.w1, "job": "nope",
                                         "freshness_seconds": 600}, as_=w.dev1)
    assert (err.status, err.code) == (404, "not_found") and "nope" in err.message


def test_evaluate_slos_is_for_the_scheduler_or_a_workspaces_developers(
    contract: Contract, slo_world: World
) -> None:
    w = slo_world
    JobRun(contract, w).freshness(fresh(T0), now=T0)
    register(contract, w.w2, as_=w.dev2)
    JobRun(contract, w, ws=w.w2).freshness(fresh(T0), now=T0)
    assert contract.call("evaluate_slos", {}, as_=SERVICE, now=T0)["checked"] == 2
    assert contract.call("evaluate_slos", {"workspace_id": w.w2}, as_=w.dev2,
                         now=T0)["checked"] == 1
    # without a workspace a developer evaluates the workspaces where it is one
    assert contract.call("evaluate_slos", {}, as_=w.dev1, now=T0)["checked"] == 1
    assert contract.error("evaluate_slos", {}, as_=w.viewer1).status == 403
    assert contract.error("evaluate_slos", {}, as_=w.exec1).status == 403
    assert contract.error("evaluate_slos", {"workspace_id": w.w1}, as_=w.viewer1).status == 403
    assert contract.error("evaluate_slos", {"workspace_id": w.w1}, as_=w.dev2).status == 404
    err = contract.error("evaluate_slos", {"limit": 0})
    assert (err.status, err.code) == (400, "invalid_argument") and "limit" in err.message


# ------------------------------------------------------------------------------------ /metrics

def test_metrics_export_each_datasets_freshness_and_each_jobs_slo_to_its_members(
    conn: Any, db_url: str
) -> None:
    """On the real clock (/metrics reads now()): W1's gold 20 minutes behind, past the 15
    minute SLO; W2's 1 minute behind. A member sees its own workspace's series only."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    from tests.contract.conftest import HttpContract, make_world
    from tests.helpers import running_gateway

    with running_gateway(db_url) as url, httpx.Client(base_url=url, timeout=30) as client:
        contract = HttpContract(conn, client)
        w = make_world(contract)
        now = datetime.now(UTC)
        for ws, dev, behind in ((w.w1, w.dev1, 20), (w.w2, w.dev2, 1)):
            register(contract, ws, as_=dev)
            run = JobRun(contract, w, ws=ws, now=now)
            run.freshness(fresh(now - timedelta(minutes=behind)), now=now)

        def scrape(who: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
            response = client.get("/metrics",
                                  headers={"Authorization": f"Bearer {contract.token(who)}"})
            assert response.status_code == 200, response.text
            return {(s.name, tuple(sorted(s.labels.items()))): s.value
                    for f in text_string_to_metric_families(response.text) for s in f.samples}

        everything = scrape(SERVICE)
        revenue = everything[("control_room_dataset_freshness_seconds", (
            ("dataset", "gold.odoo.revenue"), ("job", "nightly"), ("workspace", "w1")))]
        assert 20 * 60 <= revenue < 20 * 60 + 120
        job = (("job", "nightly"), ("workspace", "w1"))
        assert everything[("control_room_job_freshness_slo_seconds", job)] == 900
        assert everything[("control_room_job_slo_breached", job)] == 1.0
        assert everything[("control_room_job_slo_breached", (
            ("job", "nightly"), ("workspace", "w2")))] == 0.0
        assert 60 <= everything[("control_room_job_freshness_seconds", (
            ("job", "nightly"), ("workspace", "w2")))] < 180

        theirs = scrape(w.viewer2)
        assert not any(dict(labels).get("workspace") == "w1" for _, labels in theirs)
        assert ("control_room_job_slo_breached", (("job", "nightly"), ("workspace", "w2"))) \
            in theirs


# ----------------------------------------------------------------------- lineage (the same path)

def lineage(run: JobRun, payload: dict[str, Any]) -> Any:
    return run.contract.call("append_events", {
        "run_id": run.run_id, "lease_token": run.token, "events": [{
            "event_id": str(uuid.uuid4()), "phase": "extract", "type": "DATASET_LINEAGE",
            "payload": payload}]}, as_=run.executor, now=T0)


def test_a_lineage_event_sets_the_datasets_upstream_in_its_own_workspace(
    contract: Contract, slo_world: World
) -> None:
    w = slo_world
    register(contract, w.w2, as_=w.dev2)
    theirs = JobRun(contract, w, ws=w.w2)
    mine = JobRun(contract, w)
    lineage(mine, {"dataset": GOLD[0], "model": "revenue", "datasets": ["silver.odoo.lines",
                   "silver.odoo.partner", "silver.odoo.lines"], "sources": ["odoo.rates"]})
    shown = contract.call("get_dataset", {"workspace_id": w.w1, "name": GOLD[0]},
                          as_=w.viewer1)
    assert shown["upstream"] == ["silver.odoo.lines", "silver.odoo.partner", "source:odoo.rates"]
    theirs_shown = contract.call("get_dataset", {"workspace_id": w.w2, "name": GOLD[0]},
                                 as_=w.viewer2)
    assert theirs_shown["upstream"] is None                 # W2's dataset of the same name
    # the next write's lineage replaces it
    lineage(mine, {"dataset": GOLD[0], "datasets": ["silver.odoo.lines"]})
    assert contract.call("get_dataset", {"workspace_id": w.w1, "name": GOLD[0]},
                         as_=w.viewer1)["upstream"] == ["silver.odoo.lines"]
    del theirs


@pytest.mark.parametrize(("payload", "argument"), [
    ({"datasets": ["silver.a"]}, "dataset"),
    ({"dataset": "../x", "datasets": []}, "dataset"),
    ({"dataset": GOLD[0], "datasets": "silver.a"}, "datasets"),
    ({"dataset": GOLD[0], "sources": [1]}, "sources"),
    ({"dataset": GOLD[0], "datasets": ["x y"]}, "datasets"),
])
def test_a_malformed_lineage_event_is_refused(
    sql_contract: Contract, payload: dict[str, Any], argument: str
) -> None:
    from .conftest import make_world

    w = make_world(sql_contract)
    register(sql_contract, w.w1, as_=w.dev1)
    run = JobRun(sql_contract, w)
    err = sql_contract.error("append_events", {
        "run_id": run.run_id, "lease_token": run.token, "events": [{
            "event_id": str(uuid.uuid4()), "phase": "extract", "type": "DATASET_LINEAGE",
            "payload": payload}]}, as_=w.exec1, now=T0)
    assert (err.status, err.code) == (400, "invalid_argument")
    assert err.details is not None and argument in str(err.details)
