"""The UI's read functions over the real gateway: timeline, grid, lineage, health, the event
log's filters and paging both ways, the runs list's new filters, row level security and bad
arguments."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import pytest

from control_room.contract.errors import ContractError
from tests.contract.conftest import phase

from .conftest import T0, Site, append, claim, complete, create_run


def refusal(site: Site, fn: str, args: dict[str, Any], who: Any) -> ContractError:
    with pytest.raises(ContractError) as caught:
        site.http.call(fn, args, as_=who)
    return caught.value


def test_timeline_shows_a_lease_expiry_a_retry_and_the_running_attempt(site: Site) -> None:
    run = create_run(site, [phase("a", max_attempts=3, retry_backoff_seconds=1),
                            phase("b", "python", "a"), phase("c", "python", "b")], now=T0)
    first = claim(site, run["id"], now=T0, lease_seconds=30)            # a, attempt 1
    append(site, run["id"], first, {"type": "PHASE_STARTED", "phase": "a"},
           now=T0 + timedelta(seconds=2))
    second = claim(site, run["id"], now=T0 + timedelta(seconds=60))     # lease expired
    assert (second["name"], second["attempt"]) == ("a", 2)
    complete(site, second, "failed", error={"message": "flaky"}, now=T0 + timedelta(seconds=70))
    third = claim(site, run["id"], now=T0 + timedelta(seconds=80))
    assert third["attempt"] == 3
    complete(site, third, now=T0 + timedelta(seconds=90))
    b = claim(site, run["id"], now=T0 + timedelta(seconds=95))
    assert b["name"] == "b"

    timeline = site.http.call("get_run_timeline", {"run_id": run["id"]},
                              as_=site.world.viewer1)
    phases = {p["name"]: p for p in timeline["phases"]}
    assert [p["name"] for p in timeline["phases"]] == ["a", "b", "c"]
    a = phases["a"]["attempts"]
    assert [(x["attempt"], x["outcome"]) for x in a] == [
        (1, "lease_expired"), (2, "failed"), (3, "succeeded")]
    assert a[0]["claimed_at"].startswith("2031-05-01T10:00:00")
    assert a[0]["started_at"].startswith("2031-05-01T10:00:02")       # PHASE_STARTED
    assert a[0]["ended_at"].startswith("2031-05-01T10:01:00")          # when it was reclaimed
    assert a[2]["ended_at"].startswith("2031-05-01T10:01:30")
    assert [(x["attempt"], x["outcome"], x["ended_at"]) for x in phases["b"]["attempts"]] == [
        (1, "running", None)]
    assert phases["c"]["attempts"] == [] and phases["c"]["state"] == "waiting"


def test_grid_is_runs_by_phases_newest_first(site: Site) -> None:
    older = create_run(site, [phase("x"), phase("y", "python", "x")], spec="ui.grid")
    newer = create_run(site, [phase("x"), phase("z", "python", "x")], spec="ui.grid")
    lease = claim(site, newer["id"])
    complete(site, lease)
    grid = site.http.call("get_run_grid", {"workspace_id": site.world.w1, "spec_slug": "ui.grid"},
                          as_=site.world.viewer1)
    assert grid["phase_names"] == ["x", "y", "z"]
    assert [r["id"] for r in grid["runs"]] == [newer["id"], older["id"]]
    cells = grid["runs"][0]["phases"]
    assert set(cells) == {"x", "z"}
    assert (cells["x"]["state"], cells["x"]["attempt"]) == ("succeeded", 1)
    assert cells["z"]["state"] == "queued" and cells["z"]["started_at"] is None
    assert set(grid["runs"][1]["phases"]) == {"x", "y"}
    one = site.http.call("get_run_grid", {"workspace_id": site.world.w1, "spec_slug": "ui.grid",
                                          "limit": 1}, as_=site.world.viewer1)
    assert [r["id"] for r in one["runs"]] == [newer["id"]]


def test_lineage_from_manifests_lineage_events_and_dependencies(site: Site) -> None:
    run = create_run(site, [phase("extract"), phase("model", "python", "extract")],
                     spec="ui.lineage")
    lease = claim(site, run["id"])
    complete(site, lease, output_manifest={"tables": [
        {"name": "bronze.orders", "uri": "file:///lake/bronze/orders", "layer": "bronze"}]})
    lease = claim(site, run["id"])
    append(site, run["id"], lease, {"type": "LOG", "message": "reading"})
    complete(site, lease, output_manifest={"tables": [
        {"name": "gold.revenue", "uri": "file:///lake/gold/revenue", "layer": "gold"}]})
    lineage = site.http.call("get_run_lineage", {"run_id": run["id"]}, as_=site.world.viewer1)
    edges = {(e["from"], e["to"]) for e in lineage["edges"]}
    assert edges == {("phase:extract", "dataset:bronze.orders"),
                     ("dataset:bronze.orders", "phase:model"),
                     ("phase:model", "dataset:gold.revenue")}
    nodes = {n["id"]: n for n in lineage["nodes"]}
    assert nodes["dataset:gold.revenue"]["layer"] == "gold"
    assert nodes["phase:model"]["type"] == "phase"
    assert set(nodes) == {"phase:extract", "phase:model", "dataset:bronze.orders",
                          "dataset:gold.revenue"}


def test_health_numbers_on_a_known_fixture(site: Site) -> None:
    w = site.world
    ws = site.http.call("create_workspace", {"slug": "health", "name": "Health"}, as_=w.admin1)
    site.http.call("add_member", {"workspace_id": ws["id"], "principal_id": str(w.exec1.sub),
                                  "role": "executor"})
    exe = w.exec1.pinned(w.w1, ws["id"])

    def run(phases: list[dict[str, Any]]) -> str:
        return str(site.http.call("create_run", {"workspace_id": ws["id"], "spec_slug": "h",
                                                 "git_sha": "abcdef0", "phases": phases},
                                  as_=w.admin1, now=T0)["id"])

    def take(run_id: str, at: timedelta, lease_seconds: int = 60) -> Any:
        return site.http.call("claim_phase", {"run_id": run_id, "claim_id": str(uuid.uuid4()),
                                              "workspace_id": ws["id"],
                                              "lease_seconds": lease_seconds},
                              as_=exe, now=T0 + at)

    def end(lease: Any, at: timedelta, outcome: str = "succeeded", **extra: Any) -> None:
        site.http.call("complete_phase", {"lease_token": lease["lease_token"],
                                          "outcome": outcome, **extra}, as_=exe, now=T0 + at)

    done = run([phase("p1"), phase("p2", "sql", "p1", max_attempts=1), phase("p3", "python", "p2")])
    end(take(done, timedelta(0)), timedelta(seconds=10))
    end(take(done, timedelta(seconds=10)), timedelta(seconds=40), "failed",
        error={"message": "boom"}, retryable=False)
    busy = run([phase("q1"), phase("q2")])
    take(busy, timedelta(seconds=50))                       # q1 running, q2 queued
    expiring = run([phase("e", max_attempts=2)])
    take(expiring, timedelta(seconds=5), lease_seconds=30)
    take(expiring, timedelta(seconds=60))                   # lease expired: attempt 2 runs

    health = site.http.call("get_health", {"workspace_id": ws["id"],
                                           "since": (T0 - timedelta(seconds=60)).isoformat(),
                                           "bucket_seconds": 60},
                            as_=w.admin1, now=T0 + timedelta(seconds=120))
    assert (health["queue_depth"], health["running"], health["lease_expiries_last_hour"]) == (
        1, 2, 1)
    assert health["dead_letters"] == 1
    series = health["series"]
    assert [s["bucket"][11:19] for s in series] == ["09:59:00", "10:00:00", "10:01:00",
                                                    "10:02:00"]
    assert [(s["succeeded"], s["failed"], s["lease_expiries"]) for s in series] == [
        (0, 0, 0), (1, 1, 0), (0, 0, 1), (0, 0, 0)]
    assert series[1]["p50_s"] == 20.0 and series[0]["p50_s"] is None
    kinds = {k["kind"]: k for k in health["by_kind"]}
    assert (kinds["python"]["succeeded"], kinds["python"]["failed"],
            kinds["python"]["success_rate"], kinds["python"]["p50_s"]) == (1, 0, 1.0, 10.0)
    assert (kinds["sql"]["succeeded"], kinds["sql"]["failed"],
            kinds["sql"]["success_rate"], kinds["sql"]["p95_s"]) == (0, 1, 0.0, 30.0)
    assert [(p["name"], p["succeeded"] + p["failed"]) for p in health["by_phase"]] == [
        ("p1", 1), ("p2", 1)]
    assert health["alerts"] == {"open": 0, "recent": []}


def test_event_log_filters_and_pages_both_ways(site: Site) -> None:
    run = create_run(site, [phase("log")], spec="ui.events")
    lease = claim(site, run["id"])
    append(site, run["id"], lease, *[
        {"type": "LOG", "message": f"Batch {i} written", "level": "info"} for i in range(30)])
    append(site, run["id"], lease, {"type": "LOG", "message": "a NEEDLE here", "level": "error"},
           {"type": "CUSTOM_THING", "message": "custom", "level": "warning"})
    v = site.world.viewer1
    everything = site.http.call("list_events", {"run_id": run["id"], "limit": 1000}, as_=v)
    last = everything["events"][-1]["seq"]
    tail = site.http.call("list_events", {"run_id": run["id"], "before": last + 1, "limit": 5},
                          as_=v)
    seqs = [e["seq"] for e in tail["events"]]
    assert seqs == list(range(last - 4, last + 1))                 # ascending, the last five
    assert tail["prev_before"] == last - 4 and tail["next_after"] == last
    back = site.http.call("list_events", {"run_id": run["id"], "before": tail["prev_before"],
                                          "limit": 5}, as_=v)
    assert [e["seq"] for e in back["events"]] == list(range(last - 9, last - 4))
    forward = site.http.call("list_events", {"run_id": run["id"], "after": back["next_after"],
                                             "limit": 5}, as_=v)
    assert [e["seq"] for e in forward["events"]] == seqs
    start = site.http.call("list_events", {"run_id": run["id"], "before": 1}, as_=v)
    assert start["events"] == [] and start["prev_before"] is None

    def only(**filters: Any) -> list[str]:
        page = site.http.call("list_events", {"run_id": run["id"], **filters}, as_=v)
        return [e["message"] for e in page["events"]]

    assert only(text="needle") == ["a NEEDLE here"]
    assert only(text="100%") == []                       # % is a character, not a wildcard
    assert only(levels=["error", "warning"]) == ["a NEEDLE here", "custom"]
    assert only(types=["CUSTOM_THING"]) == ["custom"]
    assert only(types=["LOG"], text="batch 2 ") == ["Batch 2 written"]
    claimed = only(types=["PHASE_CLAIMED"])
    assert len(claimed) == 1
    assert only(phase="log") == ["queued", *claimed]   # the events appended above name none
    assert len(only(types=["LOG"], limit=1000)) == 31


def test_runs_filter_by_sha_prefix_env_time_and_job(site: Site) -> None:
    w = site.world
    a = create_run(site, [phase("one")], spec="ui.filters", git_sha="feedface01",
                   now=T0 - timedelta(days=2))
    b = create_run(site, [phase("one")], spec="ui.filters", git_sha="beefcafe02",
                   now=T0 - timedelta(days=1))

    def ids(**filters: Any) -> list[str]:
        page = site.http.call("list_runs", {"workspace_id": w.w1, "spec_slug": "ui.filters",
                                            **filters}, as_=w.viewer1)
        return [r["id"] for r in page["runs"]]

    assert ids() == [b["id"], a["id"]]
    assert ids(git_sha="FEED") == [a["id"]]
    assert ids(env="dev") == [b["id"], a["id"]] and ids(env="prod") == []
    assert ids(created_after=(T0 - timedelta(days=1, hours=1)).isoformat()) == [b["id"]]
    assert ids(created_before=(T0 - timedelta(days=1, hours=1)).isoformat()) == [a["id"]]
    assert ids(job_slug="no-such-job") == []
    assert all(r["job"] is None for r in site.http.call(
        "list_runs", {"workspace_id": w.w1, "spec_slug": "ui.filters"}, as_=w.viewer1)["runs"])


def test_another_workspace_sees_nothing_and_bad_arguments_name_themselves(site: Site) -> None:
    w = site.world
    run = create_run(site, [phase("secret")], spec="ui.rls")
    for fn, args in (("get_run_timeline", {"run_id": run["id"]}),
                     ("get_run_lineage", {"run_id": run["id"]}),
                     ("list_events", {"run_id": run["id"]}),
                     ("get_run_grid", {"workspace_id": w.w1}),
                     ("get_health", {"workspace_id": w.w1})):
        err = refusal(site, fn, args, w.admin2)
        assert (err.status, err.code) == (404, "not_found"), (fn, err)
    assert site.http.call("list_runs", {"workspace_id": w.w1}, as_=w.admin2)["runs"] == []
    for fn, args, name in (
            ("get_health", {"workspace_id": w.w1, "bucket_seconds": 5}, "bucket_seconds"),
            ("get_health", {"workspace_id": w.w1, "since": "soon"}, "since"),
            ("get_run_grid", {"workspace_id": w.w1, "limit": 0}, "limit"),
            ("get_run_timeline", {"run_id": "x"}, "run_id"),
            ("list_events", {"run_id": run["id"], "levels": ["loud"]}, "levels"),
            ("list_runs", {"git_sha": "xyz"}, "git_sha")):
        err = refusal(site, fn, args, w.viewer1)
        assert (err.status, err.code) == (400, "invalid_argument"), (fn, err)
        assert name in err.message, (fn, err.message)
