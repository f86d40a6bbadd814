"""The results of real calls validate against contract/openapi.yaml's response schemas.

One scenario calls every function of the contract through `contract.call` on a fresh
database and checks each result against its operation's 200 schema (closed objects: a field
the SQL returns but the document does not declare fails too), and a few refusals against the
operation's declared error responses and the `Error` schema.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from control_room.db.store import ContractError
from tests.openapi_doc import MACHINE_CODES, load_openapi, response_errors, rpc_operations

from .conftest import SERVICE, Contract, Principal, phase, user
from .jobspec import register_args

T0 = datetime(2031, 3, 1, 9, 0, tzinfo=UTC)


class Recorder:
    """Calls the contract and records how each result disagrees with the document."""

    def __init__(self, contract: Contract) -> None:
        self.contract = contract
        self.now = T0
        self.called: set[str] = set()
        self.checked = 0
        self.problems: list[str] = []

    def call(self, fn: str, args: dict[str, Any] | None = None, *,
             as_: Principal = SERVICE, label: str = "") -> Any:
        result = self.contract.call(fn, args, as_=as_, now=self.now)
        self.called.add(fn)
        self.checked += 1
        for error in response_errors(fn, 200, result):
            self.problems.append(f"{fn}{f' ({label})' if label else ''} 200: {error}")
        return result

    def refused(self, fn: str, args: dict[str, Any], *, status: int, code: str,
                as_: Principal = SERVICE) -> ContractError:
        err = self.contract.error(fn, args, as_=as_, now=self.now)
        where = f"{fn} refusal {code}"
        if (err.status, err.code) != (status, code):
            self.problems.append(f"{where}: got {err.status} {err.code} ({err.message})")
        declared = rpc_operations(load_openapi())[fn]["responses"]
        if str(err.status) not in declared:
            self.problems.append(f"{where}: status {err.status} is not declared "
                                 f"(declared: {sorted(declared)})")
        else:
            for error in response_errors(fn, str(err.status), err.body()):
                self.problems.append(f"{where} body: {error}")
        if err.hint not in MACHINE_CODES:
            self.problems.append(f"{where}: hint {err.hint!r} is not a documented machine code")
        self.checked += 1
        return err


def test_every_result_matches_its_response_schema(contract: Contract) -> None:
    r = Recorder(contract)
    admin, executor, viewer = user("admin"), user("executor"), user("viewer")

    # workspaces and members
    ws = r.call("create_workspace", {"slug": "shapes", "name": "Shapes", "env": "stage"})
    executor = executor.pinned(ws["id"])
    own = r.call("create_workspace", {"slug": "owned", "name": "Owned"}, as_=admin,
                 label="by a user")
    assert own["created_by"] == str(admin.sub)
    for who, role in ((executor, "executor"), (viewer, "viewer"), (admin, "admin")):
        r.call("add_member", {"workspace_id": ws["id"], "principal_id": str(who.sub),
                              "role": role, "name": role})
    gone = r.call("add_member", {"workspace_id": own["id"], "principal_id": str(viewer.sub),
                                 "role": "viewer"})
    assert gone["name"] is None
    r.call("remove_member", {"workspace_id": own["id"], "principal_id": str(viewer.sub)},
           as_=admin)
    bot = r.call("create_principal", {"name": "ci-bot", "workspace_id": ws["id"]}, as_=admin)
    assert bot["owner_workspace_id"] == ws["id"]
    # invitations: a principal the workspace does not own joins by accepting one
    guest = user("guest")
    invited = r.call("invite_member", {"workspace_id": own["id"], "principal_id": str(guest.sub),
                                       "role": "viewer", "name": "guest"}, as_=admin)
    assert invited["state"] == "pending"
    r.call("list_invitations", {"workspace_id": own["id"]}, as_=admin)
    r.call("accept_invitation", {"workspace_id": own["id"]}, as_=guest)
    r.call("invite_member", {"workspace_id": own["id"], "principal_id": str(uuid.uuid4()),
                             "role": "developer"}, as_=admin, label="second")
    r.refused("add_member", {"workspace_id": own["id"], "principal_id": str(uuid.uuid4()),
                             "role": "viewer"}, status=403, code="forbidden", as_=admin)
    pending = r.call("list_invitations", {"workspace_id": own["id"]}, label="service_role")
    [second] = [i for i in pending if i["state"] == "pending"]
    r.call("revoke_invitation", {"workspace_id": own["id"],
                                 "principal_id": second["principal_id"]}, as_=admin)
    # the audit log of those calls (an actor on each), a page of one and the rest
    audit = r.call("list_audit", {"workspace_id": own["id"], "limit": 1}, as_=admin)
    assert audit["entries"][0]["actor"] is not None and audit["next_before"] is not None
    r.call("list_audit", {"workspace_id": own["id"], "before": audit["next_before"]},
           label="service_role")
    r.call("add_member", {"workspace_id": ws["id"], "principal_id": bot["id"],
                          "role": "executor"}, label="principal")
    revoked = r.call("revoke_principal", {"principal_id": bot["id"]}, as_=admin)
    assert revoked["revoked_at"] is not None
    assert r.call("list_workspaces", {}, label="service_role")[0]["role"] is None
    assert r.call("list_workspaces", {}, as_=executor, label="executor")[0]["role"] == "executor"

    # a run: a -> (b, c); a fails once and is retried, b fails for good, c is skipped
    run_args = {
        "workspace_id": ws["id"], "spec_slug": "shapes.demo", "git_sha": "0123abcd",
        "phases": [phase("a", "python", max_attempts=2, retry_backoff_seconds=30,
                         params={"entrypoint": "m:f"}),
                   phase("b", "sql", "a"), phase("c", "dbt", "a")],
        "labels": {"team": "data"}, "idempotency_key": "shapes-1", "input_manifest": {"day": 1},
    }
    run = r.call("create_run", run_args, as_=admin, label="created")
    assert r.call("create_run", run_args, as_=admin, label="replay")["created"] is False
    claim_id = str(uuid.uuid4())
    a1 = r.call("claim_phase", {"kinds": ["python"], "claim_id": claim_id}, as_=executor)
    assert a1["claim_id"] == claim_id
    r.call("claim_phase", {"kinds": ["python"], "claim_id": claim_id}, as_=executor,
           label="replay")
    r.call("heartbeat", {"lease_token": a1["lease_token"], "progress": {"pct": 10},
                         "lease_seconds": 120}, as_=executor)
    r.call("append_events", {"run_id": run["id"], "lease_token": a1["lease_token"], "events": [
        {"event_id": str(uuid.uuid4()), "phase": "a", "type": "PHASE_STARTED"},
        {"event_id": str(uuid.uuid4()), "type": "LOG", "level": "debug", "message": "hello",
         "payload": {"k": [1, 2]}, "ts": "2031-03-01T09:00:00Z"},
    ]}, as_=executor)
    digest = "blake3:" + "ab" * 32
    artifact = {"lease_token": a1["lease_token"], "digest": digest, "uri": "file:///tmp/x",
                "size_bytes": 12, "media_type": "application/json", "kind": "table",
                "name": "orders", "metadata": {"rows": 3}}
    assert r.call("register_artifact", artifact, as_=executor, label="new")["linked"] is True
    assert r.call("register_artifact", artifact, as_=executor, label="again")["linked"] is False
    retry = r.call("complete_phase", {"lease_token": a1["lease_token"], "outcome": "failed",
                                      "error": {"message": "flaky", "code": 7}}, as_=executor)
    assert retry["phase_state"] == "queued" and retry["not_before"] is not None
    r.call("complete_phase", {"lease_token": a1["lease_token"], "outcome": "failed",
                              "error": {"message": "flaky", "code": 7}}, as_=executor,
           label="replay")
    assert r.call("claim_phase", {"run_id": run["id"]}, as_=executor, label="nothing") is None
    r.now += timedelta(hours=1)
    a2 = r.call("claim_phase", {"run_id": run["id"], "lease_seconds": 30}, as_=executor,
                label="second attempt")
    done = r.call("complete_phase", {"lease_token": a2["lease_token"], "outcome": "succeeded",
                                     "output_manifest": {"orders": digest}}, as_=executor,
                  label="success")
    assert sorted(done["released"]) == ["b", "c"]
    b = r.call("claim_phase", {"kinds": ["sql"]}, as_=executor, label="with inputs")
    assert b["inputs"] == {"a": {"orders": digest}}
    final = r.call("complete_phase", {"lease_token": b["lease_token"], "outcome": "failed",
                                      "error": "syntax error", "retryable": False},
                   as_=executor, label="final failure")
    assert (final["phase_state"], final["run_state"]) == ("failed", "failed")
    failed = r.call("get_run", {"run_id": run["id"]}, as_=viewer)
    assert {p["name"]: p["state"] for p in failed["phases"]} == {
        "a": "succeeded", "b": "failed", "c": "skipped"}
    page = r.call("list_runs", {"workspace_id": ws["id"], "limit": 1}, as_=viewer)
    assert page["next_cursor"] is not None
    r.call("list_runs", {"labels": {"team": "data"}, "state": "failed"}, label="filtered")
    events = r.call("list_events", {"run_id": run["id"], "limit": 1000}, as_=viewer)
    types = {e["type"] for e in events["events"]}
    assert {"RUN_CREATED", "PHASE_CLAIMED", "PHASE_RETRY_SCHEDULED", "PHASE_SKIPPED",
            "ARTIFACT_REGISTERED", "RUN_FAILED", "LOG"} <= types, types
    r.call("list_events", {"run_id": run["id"], "after": 3, "limit": 2, "phase": "a"},
           label="page")
    r.call("list_artifacts", {"run_id": run["id"]}, as_=viewer)
    r.call("list_artifacts", {"workspace_id": ws["id"], "digest": digest, "after": 0},
           label="by digest")
    # the UI's reads
    r.call("list_runs", {"workspace_id": ws["id"], "git_sha": "0123", "env": "stage",
                         "created_after": "2031-03-01T00:00:00Z",
                         "created_before": "2031-03-02T00:00:00Z"}, label="ui filters")
    tail = r.call("list_events", {"run_id": run["id"], "before": 1000000, "limit": 3,
                                  "types": ["PHASE_CLAIMED", "PHASE_FAILED", "LOG"],
                                  "levels": ["info", "warning", "debug"], "text": "e"},
                  label="ui filters")
    assert tail["prev_before"] == tail["events"][0]["seq"]
    timeline = r.call("get_run_timeline", {"run_id": run["id"]}, as_=viewer)
    outcomes = {p["name"]: [a["outcome"] for a in p["attempts"]] for p in timeline["phases"]}
    assert outcomes == {"a": ["failed", "succeeded"], "b": ["failed"], "c": []}, outcomes
    grid = r.call("get_run_grid", {"workspace_id": ws["id"], "spec_slug": "shapes.demo"},
                  as_=viewer)
    assert grid["phase_names"] == ["a", "b", "c"]
    r.call("get_run_lineage", {"run_id": run["id"]}, as_=viewer)
    health = r.call("get_health", {"workspace_id": ws["id"], "bucket_seconds": 600}, as_=viewer)
    assert health["dead_letters"] == 1 and health["by_kind"], health

    # retry the failed run, cancel the child while b runs, let b's executor stop
    child = r.call("retry_run", {"run_id": run["id"]}, as_=admin)
    assert child["parent_run_id"] == run["id"]
    b2 = r.call("claim_phase", {"run_id": child["id"], "kinds": ["sql"]}, as_=executor,
                label="child")
    cancelled = r.call("cancel_run", {"run_id": child["id"], "reason": "enough"}, as_=admin)
    assert cancelled["state"] == "cancelled"
    beat = r.call("heartbeat", {"lease_token": b2["lease_token"]}, as_=executor,
                  label="cancel requested")
    assert beat["cancel_requested"] is True
    stopped = r.call("complete_phase", {"lease_token": b2["lease_token"],
                                        "outcome": "succeeded"}, as_=executor, label="stopped")
    assert stopped["phase_state"] == "cancelled"
    r.call("list_events", {"run_id": child["id"]}, label="child")

    # dead letters and a repair of the failed run (its retry was cancelled, so none is active)
    letters = r.call("list_dead_letters", {"workspace_id": ws["id"], "limit": 10}, as_=viewer)
    assert [x["phase"] for x in letters["dead_letters"]] == ["b"]
    repair = r.call("repair_run", {"run_id": run["id"], "phases": ["a"]}, as_=admin)
    assert repair["rerun_phases"] == ["a", "b", "c"]
    requeued = r.call("requeue_dead_letters", {"workspace_id": ws["id"], "phase_ids": [
        letters["dead_letters"][0]["phase_id"]]}, as_=admin)
    assert requeued["requeued"][0]["repair_run_id"] == repair["id"]
    lineage = r.call("get_run", {"run_id": run["id"]}, as_=viewer, label="lineage")
    assert {c["id"] for c in lineage["repairs"]} == {child["id"], repair["id"]}
    r.refused("repair_run", {"run_id": run["id"]}, status=409, code="conflict", as_=admin)
    r.call("cancel_run", {"run_id": repair["id"]}, as_=admin, label="repair")

    single = r.call("create_run", {"workspace_id": ws["id"], "spec_slug": "one",
                                   "git_sha": "abcdef0", "phases": [phase("only")]},
                    label="single")
    only = r.call("claim_phase", {"run_id": single["id"]}, label="service_role")
    r.call("complete_phase", {"lease_token": only["lease_token"], "outcome": "succeeded"},
           label="last phase")
    # batches: three phases claimed in one call, completed in one (a lost lease answered in
    # its place), nothing left to claim
    wide = r.call("create_run", {"workspace_id": ws["id"], "spec_slug": "wide",
                                 "git_sha": "abcdef0",
                                 "phases": [phase("w1"), phase("w2"), phase("w3")]},
                  label="wide")
    batch = r.call("claim_phases", {"run_id": wide["id"], "limit": 5}, as_=executor,
                   label="batch")
    assert sorted(c["name"] for c in batch) == ["w1", "w2", "w3"]
    answers = r.call("complete_phases", {"completions": [
        {"lease_token": batch[0]["lease_token"], "outcome": "succeeded"},
        {"lease_token": str(uuid.uuid4()), "outcome": "succeeded"},
        {"lease_token": batch[1]["lease_token"], "outcome": "failed", "retryable": False},
        {"lease_token": batch[2]["lease_token"], "outcome": "succeeded"}]}, as_=executor,
        label="batch")
    assert ["error" in a for a in answers] == [False, True, False, False]
    assert answers[1]["error"]["code"] == "lease_lost"
    assert [a.get("phase_state") for a in answers] == ["succeeded", None, "failed", "succeeded"]
    assert r.call("claim_phases", {"run_id": wide["id"]}, as_=executor, label="nothing") == []
    finalized = r.call("complete_run", {"run_id": single["id"],
                                        "output_manifest": {"gold": digest}}, as_=executor)
    assert finalized["finalized_at"] is not None

    # the catalog: a table written, widened, kept, then blocked by a breaking change
    load = r.call("create_run", {"workspace_id": ws["id"], "spec_slug": "catalog",
                                 "git_sha": "abcdef0", "phases": [phase("load")]},
                  label="catalog")
    lease = r.call("claim_phase", {"run_id": load["id"]}, as_=executor, label="catalog")
    columns = [{"name": "id", "type": "int64", "nullable": False, "key": 1}]
    table = {"lease_token": lease["lease_token"], "name": "silver.orders",
             "location": "/lake/silver/orders"}
    r.call("record_dataset", {**table, "change": "INITIAL", "schema": columns, "table_version": 0,
                              "digest": digest, "rows": 3, "owner": "sales", "tags": ["odoo"]},
           as_=executor, label="INITIAL")
    wider = [*columns, {"name": "note", "type": "string", "nullable": True}]
    r.call("record_dataset", {**table, "change": "NON_BREAKING", "schema": wider,
                              "changes": [{"column": "note", "change": "added"}],
                              "table_version": 1}, as_=executor, label="NON_BREAKING")
    r.call("record_dataset", {**table, "table_version": 2}, as_=executor, label="NONE")
    refused = r.call("record_dataset", {**table, "change": "BREAKING", "schema": columns[:0],
                                        "changes": [{"column": "id", "change": "removed"}]},
                     as_=executor, label="BREAKING")
    assert refused["schema_state"] == "blocked"
    r.refused("record_dataset", {**table, "table_version": 3}, status=409, code="conflict",
              as_=executor)
    assert r.call("list_datasets", {"schema_state": "blocked"}, as_=viewer)[0]["name"] == (
        "silver.orders")
    r.call("list_datasets", {"workspace_id": ws["id"], "layer": "silver", "name": "silver.",
                             "limit": 10}, label="filtered")
    detail = r.call("get_dataset", {"workspace_id": ws["id"], "name": "silver.orders"},
                    as_=viewer)
    assert [v["version"] for v in detail["versions"]] == [3, 2, 1]
    accepted = r.call("unblock_dataset", {"workspace_id": ws["id"], "name": "silver.orders",
                                          "resolution": "accept", "note": "ids dropped"},
                      as_=admin)
    assert accepted["schema_state"] == "accepted"
    r.call("get_dataset", {"workspace_id": ws["id"], "name": "silver.orders"}, label="accepted")
    r.refused("unblock_dataset", {"workspace_id": ws["id"], "name": "silver.orders",
                                  "resolution": "accept"}, status=403, code="forbidden",
              as_=viewer)
    r.call("complete_phase", {"lease_token": lease["lease_token"], "outcome": "succeeded"},
           as_=executor, label="catalog")

    # connections: registered, named by a phase, carried by its claim, rotated, tested, deleted
    place = {"workspace_id": ws["id"], "name": "warehouse"}
    r.call("create_connection", {**place, "type": "postgres",
                                 "config": {"host": "dw", "port": 5432},
                                 "secrets": {"password": "env:DW_PASSWORD"},
                                 "description": "the warehouse"}, as_=admin)
    r.call("update_connection", {**place, "secrets": {"password": "file:/run/secrets/dw"}},
           as_=admin)
    r.call("record_connection_test", {**place, "ok": True, "message": "select 1"}, as_=admin)
    assert r.call("list_connections", {"workspace_id": ws["id"]}, as_=viewer)[0]["version"] == 2
    r.call("get_connection", place, as_=executor)
    uses = r.call("create_run", {
        "workspace_id": ws["id"], "spec_slug": "uses", "git_sha": "abcdef0",
        "phases": [phase("load", params={"connections": ["warehouse"]})]}, label="connections")
    named = r.call("claim_phase", {"run_id": uses["id"]}, as_=executor, label="connections")
    assert named["connections"]["warehouse"]["secrets"] == {"password": "file:/run/secrets/dw"}
    r.call("complete_phase", {"lease_token": named["lease_token"], "outcome": "succeeded"},
           as_=executor, label="connections")
    r.refused("create_connection", {**place, "type": "http"}, status=409, code="conflict",
              as_=admin)
    r.refused("create_connection", {**place, "type": "http", "config": {"token": "x"}},
              status=400, code="invalid_argument", as_=admin)
    r.refused("get_connection", {**place, "name": "nothing"}, status=404, code="not_found",
              as_=viewer)
    r.call("delete_connection", place, as_=admin)

    # jobs: registered (again: unchanged; at a new commit: version 2), listed, shown, run
    job_args = register_args(ws["id"], "shapes-job", owner="data team", tags={"tier": "gold"})
    r.call("register_job", job_args, as_=admin)
    r.call("register_job", job_args, as_=admin, label="unchanged")
    r.call("register_job", {**job_args, "git_sha": "fedcba9"}, as_=admin, label="new commit")
    job_run = r.call("create_job_run", {"workspace_id": ws["id"], "job": "shapes-job",
                                        "version": 1, "params": {"day": "d"},
                                        "idempotency_key": "shapes-job-1"}, as_=admin)
    assert job_run["job"]["version"] == 1
    r.call("get_run", {"run_id": job_run["id"]}, as_=viewer, label="a job's run")
    assert r.call("list_jobs", {"workspace_id": ws["id"]}, as_=viewer)[0]["last_run"]
    assert r.call("get_job", {"workspace_id": ws["id"], "slug": "shapes-job"},
                  as_=viewer)["recent_runs"]
    r.refused("create_job_run", {"workspace_id": ws["id"], "job": "shapes-job",
                                 "params": {"day": 1}}, status=400, code="invalid_argument",
              as_=admin)
    r.refused("create_job_run", {"workspace_id": ws["id"], "job": "shapes-job",
                                 "params": {"day": "other"}, "idempotency_key": "shapes-job-1"},
              status=409, code="conflict", as_=admin)
    r.refused("get_job", {"workspace_id": ws["id"], "slug": "nothing"}, status=404,
              code="not_found", as_=viewer)
    r.refused("register_job", job_args, status=403, code="forbidden", as_=viewer)

    # freshness: the job's run writes a gold table and says how fresh it is; the SLO is set,
    # evaluated within it, then breached
    held = r.call("claim_phase", {"run_id": job_run["id"]}, as_=executor, label="job run")
    r.call("record_dataset", {"lease_token": held["lease_token"], "name": "gold.shapes.mart",
                              "location": "/lake/gold/mart", "change": "INITIAL",
                              "schema": [{"name": "id", "type": "int64", "nullable": False}]},
           as_=executor, label="gold")
    r.call("append_events", {"run_id": job_run["id"], "lease_token": held["lease_token"],
                             "events": [{"event_id": str(uuid.uuid4()), "phase": "extract",
                                         "type": "FRESHNESS", "payload": {
                                             "data_time": r.now.isoformat(),
                                             "source_cursor": "2026-12-01T00:00:00",
                                             "datasets": ["gold.shapes.mart"]}}]},
           as_=executor, label="freshness")
    r.call("complete_phase", {"lease_token": held["lease_token"], "outcome": "succeeded"},
           as_=executor, label="job run")
    # only what changed since that run: version 2 with its phase's code changed; nothing
    # changed is a 409 (the run is cancelled at once: nothing below claims it)
    changed = r.call("create_changed_run", {
        "workspace_id": ws["id"], "job": "shapes-job", "base_run_id": job_run["id"],
        "changed": {"extract": "code changed: pipelines/example.py"}, "params": {"day": "d"}},
        as_=admin)
    assert changed["changed_since"]["rerun"] == ["extract"]
    r.call("cancel_run", {"run_id": changed["id"]}, as_=admin, label="a changed run")
    r.refused("create_changed_run", {"workspace_id": ws["id"], "job": "shapes-job",
                                     "base_run_id": job_run["id"], "changed": {},
                                     "params": {"day": "d"}},
              status=409, code="conflict", as_=admin)
    slo = r.call("set_job_slo", {"workspace_id": ws["id"], "job": "shapes-job",
                                 "freshness_seconds": 600}, as_=admin)
    assert slo["freshness"]["datasets"][0]["name"] == "gold.shapes.mart"
    assert r.call("set_job_concurrency", {"workspace_id": ws["id"], "job": "shapes-job",
                                          "max_concurrent_runs": 1},
                  as_=admin)["max_concurrent_runs"] == 1
    r.call("set_job_concurrency", {"workspace_id": ws["id"], "job": "shapes-job"}, as_=admin,
           label="no limit")
    assert r.call("evaluate_slos", {"workspace_id": ws["id"]}, as_=admin)["checked"] == 1
    r.now += timedelta(minutes=11)
    late = r.call("evaluate_slos", {}, label="breached")
    assert late["changes"][0]["state"] == "breached"
    assert r.call("get_job", {"workspace_id": ws["id"], "slug": "shapes-job"}, as_=viewer,
                  label="breached")["freshness"]["state"] == "breached"
    r.refused("set_job_slo", {"workspace_id": ws["id"], "job": "shapes-job",
                              "freshness_seconds": 10}, status=400, code="invalid_argument",
              as_=admin)
    r.refused("evaluate_slos", {}, status=403, code="forbidden", as_=viewer)

    # alerts: a destination and rules, a failed run raises one, the deliverer fails then
    # delivers it, members read it with its attempts
    hook = {"workspace_id": ws["id"], "name": "ops-hook"}
    r.call("create_alert_destination", {**hook, "type": "webhook",
                                        "url": "https://alerts.example.com/hook",
                                        "headers": {"Authorization": "env:ALERT_TOKEN"},
                                        "description": "the on-call receiver"}, as_=admin)
    r.call("create_alert_destination", {"workspace_id": ws["id"], "name": "slack",
                                        "type": "slack", "url": "env:SLACK_HOOK"}, as_=admin,
           label="slack")
    r.call("list_alert_destinations", {"workspace_id": ws["id"]}, as_=admin)
    r.call("create_alert_rule", {"workspace_id": ws["id"], "name": "failed", "event": "run_failed",
                                 "destination": "ops-hook", "filters": {"spec_slug": "boom"}},
           as_=admin)
    r.call("create_alert_rule", {"workspace_id": ws["id"], "name": "expiries",
                                 "event": "lease_expiries", "threshold": 5,
                                 "destination": "slack"}, as_=admin, label="threshold")
    r.call("list_alert_rules", {"workspace_id": ws["id"]}, as_=admin)
    boom = r.call("create_run", {"workspace_id": ws["id"], "spec_slug": "boom",
                                 "git_sha": "abcdef0", "phases": [phase("x", max_attempts=1)]},
                  label="alerts")
    lease = r.call("claim_phase", {"run_id": boom["id"]}, as_=executor, label="alerts")
    r.call("complete_phase", {"lease_token": lease["lease_token"], "outcome": "failed",
                              "error": {"message": "boom"}}, as_=executor, label="alerts")
    [claimed] = r.call("claim_alerts", {"limit": 10, "lease_seconds": 30})
    r.call("record_alert_delivery", {"alert_id": claimed["id"], "ok": False, "http_status": 500,
                                     "error": "HTTP 500", "duration_ms": 3})
    r.now += timedelta(seconds=10)
    r.call("claim_alerts", {}, label="again")
    r.call("record_alert_delivery", {"alert_id": claimed["id"], "ok": True, "http_status": 200},
           label="delivered")
    [shown] = r.call("list_alerts", {"workspace_id": ws["id"]}, as_=viewer)
    assert shown["state"] == "delivered" and len(shown["deliveries"]) == 2
    r.refused("record_alert_delivery", {"alert_id": claimed["id"], "ok": True}, status=409,
              code="conflict")
    r.refused("claim_alerts", {}, status=403, code="forbidden", as_=admin)
    # GitHub commit statuses of a gate run (docs/github.md)
    gate = r.call("create_run", {"workspace_id": ws["id"], "spec_slug": "gate",
                                 "git_sha": "0123abc", "phases": [{"name": "a", "kind": "python"}],
                                 "labels": {"github_repo": "acme/lake", "github_sha": "a" * 40}},
                  label="gate")
    [gh] = r.call("claim_github_statuses", {"limit": 10, "lease_seconds": 30})
    assert gh["run_id"] == gate["id"] and gh["state"] == "pending"
    r.call("record_github_status_delivery", {"status_id": gh["id"], "ok": False, "http_status": 403,
                                             "error": "HTTP 403", "retry_after_seconds": 60})
    [listed] = r.call("list_github_statuses", {"workspace_id": ws["id"], "run_id": gate["id"]},
                      as_=viewer)
    assert listed["delivery"] == "pending" and listed["attempts"] == 1
    r.refused("record_github_status_delivery", {"status_id": gh["id"], "ok": True}, status=409,
              code="conflict")
    r.refused("claim_github_statuses", {}, status=403, code="forbidden", as_=admin)
    # its check run (docs/github.md, Check runs): created on GitHub, then the id remembered
    [check] = r.call("claim_github_check_runs", {"limit": 10, "lease_seconds": 30})
    assert check["run_id"] == gate["id"] and check["status"] == "queued"
    assert check["external_id"] == gate["id"] and check["claims"] == 1
    r.call("record_github_check_run_delivery", {
        "check_id": check["id"], "version": check["version"], "ok": True, "check_run": 4,
        "html_url": "https://github.com/acme/lake/runs/4", "http_status": 201})
    [shown_check] = r.call("list_github_check_runs", {"workspace_id": ws["id"],
                                                      "run_id": gate["id"]}, as_=viewer)
    assert (shown_check["check_run_id"], shown_check["delivery"]) == (4, "delivered")
    [listed] = r.call("list_github_statuses", {"workspace_id": ws["id"], "run_id": gate["id"]},
                      as_=viewer, label="with its check run")
    assert listed["check_run_id"] == 4
    r.refused("record_github_check_run_delivery", {"check_id": check["id"], "version": 1,
                                                   "ok": True}, status=409, code="conflict")
    r.refused("claim_github_check_runs", {}, status=403, code="forbidden", as_=admin)
    r.refused("delete_alert_destination", {"workspace_id": ws["id"], "name": "slack"},
              status=409, code="conflict", as_=admin)
    r.call("delete_alert_rule", {"workspace_id": ws["id"], "name": "expiries"}, as_=admin)
    r.call("delete_alert_destination", {"workspace_id": ws["id"], "name": "slack"}, as_=admin)

    # schedules: a cron and an interval schedule of the job, fired after an hour of downtime,
    # their ticks paged, changed, disabled, deleted
    when_ = {"workspace_id": ws["id"], "name": "hourly"}
    r.call("create_schedule", {**when_, "job": "shapes-job", "cron": "0 * * * *",
                               "timezone": "Europe/Berlin", "params": {"day": "d"},
                               "catchup": "all", "catchup_max": 2, "overlap": "queue",
                               "max_concurrent": 5, "description": "every hour"}, as_=admin)
    r.call("create_schedule", {"workspace_id": ws["id"], "name": "often", "job": "shapes-job",
                               "interval_seconds": 600, "params": {"day": "1"},
                               "overlap": "skip"}, as_=admin, label="interval")
    r.call("list_schedules", {"workspace_id": ws["id"], "job": "shapes-job"}, as_=viewer)
    r.call("get_schedule", when_, as_=viewer)
    fired = r.call("run_due_schedules", {"limit": 10}, label="nothing due")
    assert fired["created"] == 0
    r.now += timedelta(hours=3)
    fired = r.call("run_due_schedules", {"workspace_id": ws["id"]}, as_=admin)
    assert fired["created"] >= 2 and fired["skipped"] >= 1
    page = r.call("list_schedule_ticks", {**when_, "limit": 2}, as_=viewer)
    r.call("list_schedule_ticks", {**when_, "state": "skipped", "before": page["next_before"]},
           as_=viewer, label="next page")
    r.call("update_schedule", {**when_, "enabled": False}, as_=admin)
    r.call("get_schedule", when_, as_=viewer, label="disabled")
    r.refused("create_schedule", {**when_, "job": "shapes-job", "cron": "61 * * * *"},
              status=400, code="invalid_argument", as_=admin)
    r.refused("run_due_schedules", {"workspace_id": ws["id"]}, status=403, code="forbidden",
              as_=viewer)
    r.call("delete_schedule", when_, as_=admin)

    # sensors: one on a postgres connection, claimed, a value recorded (a run), the same
    # value again (no run), an error, listed, shown, deleted
    r.call("create_connection", {"workspace_id": ws["id"], "name": "source", "type": "postgres",
                                 "config": {"dsn": "postgresql://odoo@src/odoo"},
                                 "secrets": {"password": "env:SRC_PASSWORD"}}, as_=admin,
           label="sensor source")
    watch = {"workspace_id": ws["id"], "name": "partners"}
    made = r.call("create_sensor", {**watch, "job": "shapes-job", "connection": "source",
                                    "query": "select max(write_date) from res_partner",
                                    "params": {"day": "d"}, "interval_seconds": 30}, as_=admin)
    assert r.call("claim_due_sensors", {"limit": 5})[0]["id"] == made["id"]
    assert r.call("record_sensor_value", {"sensor_id": made["id"], "value": "1"},
                  as_=admin)["moved"] is True
    r.call("record_sensor_value", {"sensor_id": made["id"], "value": "1"}, label="unchanged")
    r.call("record_sensor_value", {"sensor_id": made["id"], "error": "no value"},
           label="error")
    r.call("list_sensors", {"workspace_id": ws["id"]}, as_=viewer)
    r.call("get_sensor", watch, as_=viewer)
    r.refused("create_sensor", {**watch, "name": "other", "job": "shapes-job",
                                "connection": "source", "query": "drop table x"},
              status=400, code="invalid_argument", as_=admin)
    r.call("delete_sensor", watch, as_=admin)

    # refusals carry PostgREST's error body with a documented status and machine code
    r.refused("get_run", {"run_id": "not-a-uuid"}, status=400, code="invalid_argument")
    r.refused("get_run", {"run_id": str(uuid.uuid4())}, status=404, code="not_found")
    r.refused("heartbeat", {"lease_token": a1["lease_token"]}, status=409, code="lease_lost",
              as_=executor)
    r.refused("create_run", {**run_args, "idempotency_key": "shapes-2"}, status=403,
              code="forbidden", as_=viewer)
    r.refused("create_run", {**run_args, "priority": 5}, status=409, code="conflict")
    r.refused("create_run", {**run_args, "idempotency_key": None,
                             "phases": [phase("big", params={"x": "y" * 300_000})]},
              status=413, code="payload_too_large")
    r.refused("create_workspace", {"slug": "nosub", "name": "No sub"}, status=401,
              code="unauthorized", as_=Principal("authenticated"))
    r.refused("claim_phase", {}, status=401, code="unauthorized",
              as_=Principal("authenticated", uuid.UUID(bot["id"])))
    r.refused("create_principal", {"name": "not allowed"}, status=403, code="forbidden",
              as_=admin)

    unexercised = set(rpc_operations(load_openapi())) - r.called
    assert not unexercised, f"add a call of {sorted(unexercised)} to this scenario"
    assert r.checked >= 45
    assert not r.problems, "results that disagree with contract/openapi.yaml:\n" + "\n".join(
        r.problems)
