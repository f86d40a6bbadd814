"""Bad input: every way a caller can get an argument wrong is a PT4xx error naming the problem,
never an internal error, and writes nothing.

The cases share one database per module (every call here is refused, and each test checks
that nothing changed), over each transport of the contract.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from control_room.db.store import ContractError, acting_as, call
from tests.helpers import running_gateway

from .conftest import SERVICE, Contract, HttpContract, Principal, new_run, phase, user
from .jobspec import job_spec, register, register_args
from .snapshot import snapshot

KIB = 1024
MIB = 1024 * KIB
HEX64 = "0123456789abcdef" * 4


def digest(hex64: str = HEX64) -> str:
    return "blake3:" + hex64


def event(phase_name: str | None = None, **fields: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"event_id": str(uuid.uuid4()), "type": "LOG", "message": "m"}
    if phase_name is not None:
        out["phase"] = phase_name
    out.update(fields)
    return {k: v for k, v in out.items() if v is not DROP}


DROP: Any = object()  # a field to leave out of event()/ph()


def ph(name: Any = "a", kind: Any = "python", **fields: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"name": name, "kind": kind, **fields}
    return {k: v for k, v in out.items() if v is not DROP}


# ---------------------------------------------------------------------------------------------
# one database, one world, both transports, for the whole module
# ---------------------------------------------------------------------------------------------

@dataclass
class Ctx:
    w1: str
    admin: Principal
    dev: Principal
    executor: Principal
    run_id: str          # running: phase a claimed (lease `token`), phase b waits for it
    token: str
    succeeded_run: str
    job_base: str        # a succeeded run of the job nightly (day 2026-12-01)
    job_queued: str      # a queued run of the job nightly
    as_: dict[str, Principal] = field(default_factory=dict)   # who calls each function

    def caller(self, fn: str) -> Principal:
        return self.as_.get(fn, self.dev)


@pytest.fixture(scope="module")
def mconn(module_db_url: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(module_db_url) as connection:
        yield connection


@pytest.fixture(scope="module")
def ctx(mconn: psycopg.Connection[Any]) -> Ctx:
    setup = Contract(mconn)
    admin, dev, executor = user("admin"), user("dev"), user("exec")
    w1 = setup.call("create_workspace", {"slug": "bad-input", "name": "Bad input"},
                    as_=admin)["id"]
    for who, role in ((dev, "developer"), (executor, "executor")):
        setup.call("add_member", {"workspace_id": w1, "principal_id": str(who.sub),
                                  "role": role}, as_=SERVICE)
    executor = executor.pinned(w1)
    run = new_run(setup, w1, [phase("a"), phase("b", "python", "a")], as_=dev)
    claim = setup.call("claim_phase", {"run_id": run["id"], "lease_seconds": 3600},
                       as_=executor)
    done = new_run(setup, w1, [phase("only")], as_=dev)
    only = setup.call("claim_phase", {"run_id": done["id"], "lease_seconds": 3600},
                      as_=executor)
    setup.call("complete_phase", {"lease_token": only["lease_token"], "outcome": "succeeded"},
               as_=executor)
    as_ = {fn: executor for fn in ("claim_phase", "claim_phases", "heartbeat", "append_events",
                                   "register_artifact", "complete_phase", "complete_phases",
                                   "record_dataset")}
    as_.update({"add_member": admin, "remove_member": admin, "revoke_principal": admin,
                "create_principal": SERVICE, "unblock_dataset": admin, "invite_member": admin,
                "revoke_invitation": admin, "list_invitations": admin, "list_audit": admin})
    as_.update({fn: admin for fn in ("create_connection", "update_connection",
                                     "delete_connection")})
    setup.call("create_connection", {"workspace_id": w1, "name": "warehouse", "type": "postgres",
                                     "config": {"host": "dw"},
                                     "secrets": {"password": "env:DW_PASSWORD"}}, as_=admin)
    # alerts: a destination and a rule; the deliverer's calls are service_role's
    as_.update({fn: admin for fn in ("create_alert_destination", "delete_alert_destination",
                                     "create_alert_rule", "delete_alert_rule")})
    as_.update({"claim_alerts": SERVICE, "record_alert_delivery": SERVICE})
    as_.update({"claim_github_statuses": SERVICE, "record_github_status_delivery": SERVICE})
    as_.update({"claim_github_check_runs": SERVICE, "record_github_check_run_delivery": SERVICE})
    setup.call("create_alert_destination", {"workspace_id": w1, "name": "hook", "type": "webhook",
                                            "url": "env:ALERT_HOOK_URL"}, as_=admin)
    setup.call("create_alert_rule", {"workspace_id": w1, "name": "failed", "event": "run_failed",
                                     "destination": "hook"}, as_=admin)
    # jobs: nightly (params n, integer with a default, and day, a required string)
    register(setup, w1, "nightly", as_=dev)
    job_base = setup.call("create_job_run", {"workspace_id": w1, "job": "nightly",
                                             "params": {"day": "2026-12-01"}}, as_=dev)
    held = setup.call("claim_phase", {"run_id": job_base["id"], "lease_seconds": 3600},
                      as_=executor)
    setup.call("complete_phase", {"lease_token": held["lease_token"], "outcome": "succeeded"},
               as_=executor)
    job_queued = setup.call("create_job_run", {"workspace_id": w1, "job": "nightly",
                                               "params": {"day": "2026-12-02"}}, as_=dev)
    # schedules: a job and an hourly schedule of it
    setup.call("register_job", {"workspace_id": w1, "slug": "sched-job",
                                "digest": "blake3:" + "ab" * 32, "git_sha": "0123abc", "spec": {
                                    "slug": "sched-job", "version": 1, "params": {},
                                    "source": {"path": "j.yaml", "digest": "blake3:" + "cd" * 32},
                                    "phases": [ph("a")]}}, as_=dev)
    setup.call("create_schedule", {"workspace_id": w1, "name": "hourly", "job": "sched-job",
                                   "cron": "0 * * * *"}, as_=dev)
    # sensors: one of that job on the warehouse connection; the evaluator's calls are
    # service_role's
    setup.call("create_sensor", {"workspace_id": w1, "name": "watch", "job": "sched-job",
                                 "connection": "warehouse", "query": "select 1"}, as_=dev)
    as_.update({"claim_due_sensors": SERVICE, "record_sensor_value": SERVICE})
    return Ctx(w1=w1, admin=admin, dev=dev, executor=executor, run_id=run["id"],
               token=claim["lease_token"], succeeded_run=done["id"], job_base=job_base["id"],
               job_queued=job_queued["id"], as_=as_)


@pytest.fixture(scope="module", params=["sql", "http"])
def transport(request: pytest.FixtureRequest, mconn: psycopg.Connection[Any],
              module_db_url: str) -> Iterator[Contract]:
    if request.param == "sql":
        yield Contract(mconn)
        return
    with running_gateway(module_db_url) as url, httpx.Client(base_url=url, timeout=60) as client:
        yield HttpContract(mconn, client)


def baseline(ctx: Ctx, fn: str) -> dict[str, Any]:
    """Valid arguments of each function (the cases below spoil one of them)."""
    table: dict[str, Callable[[], dict[str, Any]]] = {
        "create_workspace": lambda: {"slug": "another", "name": "Another"},
        "add_member": lambda: {"workspace_id": ctx.w1, "principal_id": str(ctx.dev.sub),
                               "role": "developer"},
        "invite_member": lambda: {"workspace_id": ctx.w1, "principal_id": str(uuid.uuid4()),
                                  "role": "viewer"},
        "accept_invitation": lambda: {"workspace_id": ctx.w1},
        "revoke_invitation": lambda: {"workspace_id": ctx.w1, "principal_id": str(uuid.uuid4())},
        "list_invitations": lambda: {"workspace_id": ctx.w1},
        "list_audit": lambda: {"workspace_id": ctx.w1},
        "remove_member": lambda: {"workspace_id": ctx.w1, "principal_id": str(ctx.dev.sub)},
        "create_principal": lambda: {"name": "runner"},
        "revoke_principal": lambda: {"principal_id": str(ctx.executor.sub)},
        "create_run": lambda: {"workspace_id": ctx.w1, "spec_slug": "demo",
                               "git_sha": "0123abc", "phases": [ph()]},
        "claim_phase": lambda: {"claim_id": str(uuid.uuid4()), "run_id": ctx.run_id,
                                "workspace_id": ctx.w1, "lease_seconds": 60},
        "claim_phases": lambda: {"claim_id": str(uuid.uuid4()), "run_id": ctx.run_id,
                                 "workspace_id": ctx.w1, "lease_seconds": 60, "limit": 2},
        "complete_phases": lambda: {"completions": [{"lease_token": ctx.token,
                                                     "outcome": "succeeded"}]},
        "heartbeat": lambda: {"lease_token": ctx.token},
        "append_events": lambda: {"run_id": ctx.run_id, "lease_token": ctx.token,
                                  "events": [event("a")]},
        "register_artifact": lambda: {"lease_token": ctx.token, "digest": digest(),
                                      "uri": "s3://bucket/key", "size_bytes": 1},
        "complete_phase": lambda: {"lease_token": ctx.token, "outcome": "succeeded"},
        "complete_run": lambda: {"run_id": ctx.succeeded_run},
        "cancel_run": lambda: {"run_id": ctx.run_id},
        "retry_run": lambda: {"run_id": ctx.run_id},
        "repair_run": lambda: {"run_id": ctx.succeeded_run, "phases": ["only"]},
        "list_dead_letters": lambda: {"workspace_id": ctx.w1},
        "requeue_dead_letters": lambda: {"workspace_id": ctx.w1,
                                         "phase_ids": [str(uuid.uuid4())]},
        "get_run": lambda: {"run_id": ctx.run_id},
        "list_runs": lambda: {"workspace_id": ctx.w1, "parent_run_id": ctx.run_id},
        "list_events": lambda: {"run_id": ctx.run_id},
        "get_run_timeline": lambda: {"run_id": ctx.run_id},
        "get_run_lineage": lambda: {"run_id": ctx.run_id},
        "get_run_grid": lambda: {"workspace_id": ctx.w1},
        "get_health": lambda: {"workspace_id": ctx.w1},
        "list_artifacts": lambda: {"run_id": ctx.run_id, "workspace_id": ctx.w1},
        "list_workspaces": lambda: {},
        "record_dataset": lambda: {"lease_token": ctx.token, "name": "bronze.orders",
                                   "location": "s3://lake/bronze/orders", "change": "INITIAL",
                                   "schema": [{"name": "id", "type": "int64"}]},
        "unblock_dataset": lambda: {"workspace_id": ctx.w1, "name": "bronze.orders",
                                    "resolution": "reject"},
        "list_datasets": lambda: {"workspace_id": ctx.w1},
        "get_dataset": lambda: {"workspace_id": ctx.w1, "name": "bronze.orders"},
        "create_connection": lambda: {"workspace_id": ctx.w1, "name": "fresh", "type": "postgres",
                                      "config": {"host": "db"}},
        "update_connection": lambda: {"workspace_id": ctx.w1, "name": "warehouse",
                                      "config": {"host": "dw2"}},
        "delete_connection": lambda: {"workspace_id": ctx.w1, "name": "warehouse"},
        "list_connections": lambda: {"workspace_id": ctx.w1},
        "get_connection": lambda: {"workspace_id": ctx.w1, "name": "warehouse"},
        "record_connection_test": lambda: {"workspace_id": ctx.w1, "name": "warehouse",
                                           "ok": True, "message": "select 1"},
        "register_job": lambda: register_args(ctx.w1, "nightly", git_sha="fedcba9"),
        "list_jobs": lambda: {"workspace_id": ctx.w1},
        "get_job": lambda: {"workspace_id": ctx.w1, "slug": "nightly"},
        "set_job_slo": lambda: {"workspace_id": ctx.w1, "job": "nightly",
                                "freshness_seconds": 600},
        "evaluate_slos": lambda: {"workspace_id": ctx.w1},
        "set_job_concurrency": lambda: {"workspace_id": ctx.w1, "job": "nightly",
                                        "max_concurrent_runs": 1},
        "create_job_run": lambda: {"workspace_id": ctx.w1, "job": "nightly",
                                   "params": {"day": "2026-12-01"}},
        "create_changed_run": lambda: {"workspace_id": ctx.w1, "job": "nightly",
                                       "base_run_id": ctx.job_base,
                                       "changed": {"extract": "code changed: pipelines/x.py"},
                                       "params": {"day": "2026-12-01"}},
        "create_alert_destination": lambda: {"workspace_id": ctx.w1, "name": "fresh-hook",
                                             "type": "webhook", "url": "env:FRESH_HOOK"},
        "list_alert_destinations": lambda: {"workspace_id": ctx.w1},
        "delete_alert_destination": lambda: {"workspace_id": ctx.w1, "name": "unused"},
        "create_alert_rule": lambda: {"workspace_id": ctx.w1, "name": "fresh-rule",
                                      "event": "run_failed", "destination": "hook"},
        "list_alert_rules": lambda: {"workspace_id": ctx.w1},
        "delete_alert_rule": lambda: {"workspace_id": ctx.w1, "name": "failed"},
        "list_alerts": lambda: {"workspace_id": ctx.w1},
        "claim_alerts": lambda: {"limit": 1},
        "record_alert_delivery": lambda: {"alert_id": str(uuid.uuid4()), "ok": True},
        "list_github_statuses": lambda: {"workspace_id": ctx.w1},
        "claim_github_statuses": lambda: {"limit": 1},
        "record_github_status_delivery": lambda: {"status_id": str(uuid.uuid4()), "ok": True},
        "list_github_check_runs": lambda: {"workspace_id": ctx.w1},
        "claim_github_check_runs": lambda: {"limit": 1},
        "record_github_check_run_delivery": lambda: {"check_id": str(uuid.uuid4()),
                                                     "version": 1, "ok": True},
        "create_schedule": lambda: {"workspace_id": ctx.w1, "name": "fresh", "job": "sched-job",
                                    "cron": "*/5 * * * *"},
        "update_schedule": lambda: {"workspace_id": ctx.w1, "name": "hourly",
                                    "catchup": "all"},
        "delete_schedule": lambda: {"workspace_id": ctx.w1, "name": "hourly"},
        "list_schedules": lambda: {"workspace_id": ctx.w1},
        "get_schedule": lambda: {"workspace_id": ctx.w1, "name": "hourly"},
        "list_schedule_ticks": lambda: {"workspace_id": ctx.w1, "name": "hourly"},
        "run_due_schedules": lambda: {"workspace_id": ctx.w1},
        "create_sensor": lambda: {"workspace_id": ctx.w1, "name": "fresh-sensor",
                                  "job": "sched-job", "connection": "warehouse",
                                  "query": "select max(id) from t"},
        "delete_sensor": lambda: {"workspace_id": ctx.w1, "name": "watch"},
        "list_sensors": lambda: {"workspace_id": ctx.w1},
        "get_sensor": lambda: {"workspace_id": ctx.w1, "name": "watch"},
        "claim_due_sensors": lambda: {"limit": 1},
        "record_sensor_value": lambda: {"sensor_id": str(uuid.uuid4()), "value": "1"},
    }
    return table[fn]()


def refused(transport: Contract, mconn: psycopg.Connection[Any], fn: str, args: dict[str, Any],
            who: Principal) -> ContractError:
    """Call, require a refusal, and require that nothing was written."""
    before = snapshot(mconn)
    err = transport.error(fn, args, as_=who)
    assert snapshot(mconn) == before, f"the refused {fn} wrote something"
    return err


def argument_of(err: ContractError) -> str | None:
    """The `argument` the function named in its structured details, if any."""
    try:
        details = json.loads(err.details or "null")
    except ValueError:
        return None
    return details.get("argument") if isinstance(details, dict) else None


# ---------------------------------------------------------------------------------------------
# the cases
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Bad:
    id: str
    fn: str
    spoil: Callable[[Ctx], dict[str, Any]]   # arguments replacing the baseline's
    names: tuple[str, ...]                   # what the message must name
    status: int = 400
    argument: str | None = None              # the details' argument, when the SQL gives one
    drop: tuple[str, ...] = ()               # baseline arguments to leave out


def bad(id_: str, fn: str, spoil: dict[str, Any] | Callable[[Ctx], dict[str, Any]],
        *names: str, status: int = 400, argument: str | None = None,
        drop: tuple[str, ...] = ()) -> Bad:
    fixed = spoil

    def const(_: Ctx) -> dict[str, Any]:
        assert isinstance(fixed, dict)
        return fixed

    return Bad(id_, fn, spoil if callable(spoil) else const, names, status, argument, drop)


def phases(*items: Any) -> dict[str, Any]:
    return {"phases": list(items)}


def events(*items: Any) -> dict[str, Any]:
    return {"events": list(items)}


CYCLE_4 = [ph("x"), ph("a", depends_on=["d"]), ph("b", depends_on=["a"]),
           ph("c", depends_on=["b"]), ph("d", depends_on=["c"])]

CREATE_RUN = [
    bad("cycle-of-two", "create_run", phases(ph("a", depends_on=["b"]), ph("b", depends_on=["a"])),
        "cycle", "a", "b", argument="phases"),
    bad("cycle-of-four", "create_run", phases(*CYCLE_4), "cycle", "a", "b", "c", "d"),
    bad("unknown-dependency", "create_run", phases(ph("a"), ph("b", depends_on=["a", "zz"])),
        "phases[1]", "zz", argument="phases[1].depends_on"),
    bad("duplicate-names", "create_run", phases(ph("a"), ph("a")), "phases[1].name", "unique",
        argument="phases[1].name"),
    bad("self-dependency", "create_run", phases(ph("a", depends_on=["a"])), "phases[0]", "itself",
        argument="phases[0].depends_on"),
    bad("phases-an-object", "create_run", {"phases": {"name": "a"}}, "phases", "array"),
    bad("phases-a-string", "create_run", {"phases": "a"}, "phases", "array"),
    bad("phases-a-number", "create_run", {"phases": 3}, "phases", "array"),
    bad("phases-null", "create_run", {"phases": None}, "phases"),
    bad("phases-empty", "create_run", phases(), "phases"),
    bad("phase-a-number", "create_run", phases(1), "phases[0]", "object"),
    bad("phase-null", "create_run", phases(None), "phases[0]", "object"),
    bad("phase-a-list", "create_run", phases(["a"]), "phases[0]", "object"),
    bad("phase-unknown-field", "create_run", phases(ph(retries=3)), "phases[0]", "retries",
        argument="phases[0].retries"),
    bad("name-a-number", "create_run", phases(ph(name=1)), "phases[0].name",
        argument="phases[0].name"),
    bad("name-missing", "create_run", phases(ph(name=DROP)), "phases[0].name"),
    bad("name-with-a-space", "create_run", phases(ph(name="a b")), "phases[0].name"),
    bad("name-too-long", "create_run", phases(ph(name="a" * 129)), "phases[0].name"),
    bad("kind-upper-case", "create_run", phases(ph(kind="Python")), "phases[0].kind",
        argument="phases[0].kind"),
    bad("kind-missing", "create_run", phases(ph(kind=DROP)), "phases[0].kind"),
    bad("max-attempts-a-string", "create_run", phases(ph(max_attempts="3")),
        "phases[0].max_attempts", argument="phases[0].max_attempts"),
    bad("max-attempts-fractional", "create_run", phases(ph(max_attempts=2.5)),
        "phases[0].max_attempts"),
    bad("max-attempts-zero", "create_run", phases(ph(max_attempts=0)), "phases[0].max_attempts"),
    bad("max-attempts-101", "create_run", phases(ph(max_attempts=101)),
        "phases[0].max_attempts"),
    bad("max-attempts-a-boolean", "create_run", phases(ph(max_attempts=True)),
        "phases[0].max_attempts"),
    bad("max-attempts-huge", "create_run", phases(ph(max_attempts=10**40)),
        "phases[0].max_attempts"),
    bad("timeout-negative", "create_run", phases(ph(timeout_seconds=-5)),
        "phases[0].timeout_seconds"),
    bad("timeout-zero", "create_run", phases(ph(timeout_seconds=0)), "phases[0].timeout_seconds"),
    bad("timeout-a-string", "create_run", phases(ph(timeout_seconds="60")),
        "phases[0].timeout_seconds"),
    bad("backoff-a-string", "create_run", phases(ph(retry_backoff_seconds="x")),
        "phases[0].retry_backoff_seconds"),
    bad("backoff-negative", "create_run", phases(ph(retry_backoff_seconds=-1)),
        "phases[0].retry_backoff_seconds"),
    bad("backoff-cap-below-base", "create_run",
        phases(ph(retry_backoff_seconds=100, retry_backoff_max_seconds=10)),
        "phases[0].retry_backoff_max_seconds"),
    bad("params-a-list", "create_run", phases(ph(params=[1, 2])), "phases[0].params",
        argument="phases[0].params"),
    bad("params-a-string", "create_run", phases(ph(params="x=1")), "phases[0].params"),
    bad("depends-on-a-string", "create_run", phases(ph("a"), ph("b", depends_on="a")),
        "phases[1].depends_on", argument="phases[1].depends_on"),
    bad("depends-on-numbers", "create_run", phases(ph("a", depends_on=[1])),
        "phases[0].depends_on"),
    bad("depends-on-an-object", "create_run", phases(ph("a", depends_on={"b": 1})),
        "phases[0].depends_on"),
    bad("second-phase-wrong", "create_run", phases(ph("a"), ph("b", max_attempts=0)),
        "phases[1].max_attempts"),
    bad("git-sha-not-hex", "create_run", {"git_sha": "XYZ1234"}, "git_sha", argument="git_sha"),
    bad("git-sha-short", "create_run", {"git_sha": "abc"}, "git_sha"),
    bad("git-sha-upper-case", "create_run", {"git_sha": "ABCDEF0"}, "git_sha"),
    bad("git-sha-null", "create_run", {"git_sha": None}, "git_sha"),
    bad("git-sha-too-long", "create_run", {"git_sha": "a" * 65}, "git_sha"),
    bad("spec-slug-with-a-space", "create_run", {"spec_slug": "Bad Slug"}, "spec_slug",
        argument="spec_slug"),
    bad("spec-slug-empty", "create_run", {"spec_slug": ""}, "spec_slug"),
    bad("spec-slug-null", "create_run", {"spec_slug": None}, "spec_slug"),
    bad("spec-slug-too-long", "create_run", {"spec_slug": "a" * 129}, "spec_slug"),
    bad("spec-slug-an-object", "create_run", {"spec_slug": {"a": 1}}, "spec_slug"),
    bad("priority-too-high", "create_run", {"priority": 1001}, "priority", argument="priority"),
    bad("priority-too-low", "create_run", {"priority": -1001}, "priority"),
    bad("label-not-a-string", "create_run", {"labels": {"team": 1}}, "labels", "team",
        argument="labels.team"),
    bad("label-null", "create_run", {"labels": {"team": None}}, "labels", "team"),
    bad("label-key-too-long", "create_run", {"labels": {"k" * 65: "v"}}, "labels"),
    bad("label-value-too-long", "create_run", {"labels": {"team": "v" * 257}}, "labels", "team"),
    bad("labels-a-list", "create_run", {"labels": ["team"]}, "labels", argument="labels"),
    bad("input-manifest-a-list", "create_run", {"input_manifest": [1]}, "input_manifest",
        argument="input_manifest"),
    bad("input-manifest-a-string", "create_run", {"input_manifest": "s3://x"}, "input_manifest"),
    bad("idempotency-key-empty", "create_run", {"idempotency_key": ""}, "idempotency_key"),
    bad("idempotency-key-too-long", "create_run", {"idempotency_key": "k" * 201},
        "idempotency_key"),
    bad("unknown-workspace", "create_run", {"workspace_id": str(uuid.uuid4())}, "workspace",
        status=404),
    bad("1001-phases", "create_run", phases(*(ph(f"p{i}") for i in range(1001))), "phases",
        "1000", status=413),
    bad("params-over-256-kib", "create_run", phases(ph(params={"x": "y" * (256 * KIB)})),
        "phases[0].params", status=413, argument="phases[0].params"),
    bad("phases-over-4-mib", "create_run",
        phases(*(ph(f"p{i}", params={"x": "y" * (250 * KIB)}) for i in range(17))),
        "phases", status=413, argument="phases"),
    bad("input-manifest-over-1-mib", "create_run", {"input_manifest": {"x": "y" * MIB}},
        "input_manifest", status=413, argument="input_manifest"),
    bad("labels-over-16-kib", "create_run",
        {"labels": {f"k{i}": "v" * 200 for i in range(100)}}, "labels", status=413),
]

CLAIM_AND_LEASE = [
    bad("lease-seconds-zero", "claim_phase", {"lease_seconds": 0}, "lease_seconds",
        argument="lease_seconds"),
    bad("lease-seconds-3601", "claim_phase", {"lease_seconds": 3601}, "lease_seconds"),
    bad("lease-seconds-negative", "claim_phase", {"lease_seconds": -1}, "lease_seconds"),
    bad("kinds-empty", "claim_phase", {"kinds": []}, "kinds", argument="kinds"),
    bad("kinds-upper-case", "claim_phase", {"kinds": ["Python"]}, "kinds"),
    bad("kinds-with-a-dash", "claim_phase", {"kinds": ["py-thon"]}, "kinds"),
    bad("kinds-empty-name", "claim_phase", {"kinds": [""]}, "kinds"),
    bad("kinds-null-name", "claim_phase", {"kinds": [None]}, "kinds"),
    bad("kinds-101", "claim_phase", {"kinds": [f"k{i}" for i in range(101)]}, "kinds"),
    bad("batch-limit-zero", "claim_phases", {"limit": 0}, "limit", argument="limit"),
    bad("batch-limit-33", "claim_phases", {"limit": 33}, "limit", argument="limit"),
    bad("batch-limit-null", "claim_phases", {"limit": None}, "limit", argument="limit"),
    bad("batch-lease-seconds-zero", "claim_phases", {"lease_seconds": 0}, "lease_seconds",
        argument="lease_seconds"),
    bad("batch-kinds-empty", "claim_phases", {"kinds": []}, "kinds", argument="kinds"),
    bad("heartbeat-lease-seconds-zero", "heartbeat", {"lease_seconds": 0}, "lease_seconds"),
    bad("heartbeat-lease-seconds-3601", "heartbeat", {"lease_seconds": 3601}, "lease_seconds"),
    bad("progress-a-list", "heartbeat", {"progress": [1]}, "progress"),
    bad("progress-over-16-kib", "heartbeat", {"progress": {"x": "y" * (16 * KIB)}}, "progress",
        status=413, argument="progress"),
]

APPEND_EVENTS = [
    bad("events-an-object", "append_events", {"events": {"type": "LOG"}}, "events",
        argument="events"),
    bad("events-null", "append_events", {"events": None}, "events"),
    bad("events-a-string", "append_events", {"events": "LOG"}, "events"),
    bad("1001-events", "append_events", lambda c: events(*(event() for _ in range(1001))),
        "events", "1000", status=413, argument="events"),
    bad("events-over-1-mib", "append_events",
        lambda c: events(*(event(payload={"x": "y" * (60 * KIB)}) for _ in range(20))),
        "events", status=413, argument="events"),
    bad("payload-over-64-kib", "append_events",
        lambda c: events(event(payload={"x": "y" * (64 * KIB)})), "events[0].payload",
        status=413, argument="events[0].payload"),
    bad("reserved-phase-succeeded", "append_events",
        lambda c: events(event("a", type="PHASE_SUCCEEDED")), "events[0].type", "PHASE_SUCCEEDED",
        argument="events[0].type"),
    bad("reserved-run-created", "append_events", lambda c: events(event(type="RUN_CREATED")),
        "events[0].type", "RUN_CREATED"),
    bad("reserved-dataset-blocked", "append_events",
        lambda c: events(event(type="DATASET_BLOCKED")), "events[0].type", "DATASET_BLOCKED"),
    bad("reserved-lease-expired", "append_events", lambda c: events(event(type="LEASE_EXPIRED")),
        "events[0].type", "LEASE_EXPIRED"),
    bad("type-lower-case", "append_events", lambda c: events(event(type="log")),
        "events[0].type"),
    bad("type-missing", "append_events", lambda c: events(event(type=DROP)), "events[0].type"),
    bad("type-a-number", "append_events", lambda c: events(event(type=7)), "events[0].type"),
    bad("event-id-missing", "append_events", lambda c: events(event(event_id=DROP)),
        "events[0].event_id", argument="events[0].event_id"),
    bad("event-id-a-number", "append_events", lambda c: events(event(event_id=12)),
        "events[0].event_id"),
    bad("event-id-not-a-uuid", "append_events", lambda c: events(event(event_id="nope")),
        "events[0].event_id", argument="events[0].event_id"),
    bad("level-fatal", "append_events", lambda c: events(event(level="fatal")),
        "events[0].level", argument="events[0].level"),
    bad("level-a-number", "append_events", lambda c: events(event(level=3)), "events[0].level"),
    bad("ts-not-a-time", "append_events", lambda c: events(event(ts="yesterday")),
        "events[0].ts", argument="events[0].ts"),
    bad("ts-a-number", "append_events", lambda c: events(event(ts=1700000000)), "events[0].ts"),
    bad("ts-without-a-time-zone", "append_events",
        lambda c: events(event(ts="2030-01-01T00:00:00")), "events[0].ts"),
    bad("message-a-number", "append_events", lambda c: events(event(message=5)),
        "events[0].message", argument="events[0].message"),
    bad("message-too-long", "append_events", lambda c: events(event(message="m" * 16385)),
        "events[0].message"),
    bad("payload-a-list", "append_events", lambda c: events(event(payload=[1])),
        "events[0].payload", argument="events[0].payload"),
    bad("payload-a-string", "append_events", lambda c: events(event(payload="x")),
        "events[0].payload"),
    bad("event-unknown-field", "append_events", lambda c: events(event(severity="high")),
        "events[0]", "severity", argument="events[0].severity"),
    bad("event-a-number", "append_events", events(1), "events[0]"),
    bad("event-null", "append_events", events(None), "events[0]"),
    bad("phase-a-number", "append_events", lambda c: events(event(phase=1)), "events[0].phase"),
    bad("second-event-wrong", "append_events", lambda c: events(event(), event(level="loud")),
        "events[1].level", argument="events[1].level"),
    bad("events-of-two-phases", "append_events", lambda c: events(event("a"), event("b")),
        "phase", argument="events[1].phase"),
    bad("phase-event-without-a-lease-token", "append_events", lambda c: events(event("a")),
        "lease_token", argument="lease_token", drop=("lease_token",)),
]

REGISTER_ARTIFACT = [
    bad("digest-sha256", "register_artifact", {"digest": "sha256:" + HEX64}, "digest",
        argument="digest"),
    bad("digest-upper-case-hex", "register_artifact", {"digest": digest(HEX64.upper())},
        "digest"),
    bad("digest-short", "register_artifact", {"digest": digest(HEX64[:40])}, "digest"),
    bad("digest-not-hex", "register_artifact", {"digest": digest(HEX64[:63] + "g")}, "digest"),
    bad("digest-bare-hex", "register_artifact", {"digest": HEX64}, "digest"),
    bad("digest-null", "register_artifact", {"digest": None}, "digest"),
    bad("size-negative", "register_artifact", {"size_bytes": -1}, "size_bytes",
        argument="size_bytes"),
    bad("size-null", "register_artifact", {"size_bytes": None}, "size_bytes"),
    bad("media-type-no-slash", "register_artifact", {"media_type": "json"}, "media_type",
        argument="media_type"),
    bad("media-type-empty", "register_artifact", {"media_type": ""}, "media_type"),
    bad("media-type-two-slashes", "register_artifact", {"media_type": "a/b/c"}, "media_type"),
    bad("role-primary", "register_artifact", {"role": "primary"}, "role", argument="role"),
    bad("kind-upper-case", "register_artifact", {"kind": "Blob"}, "kind", argument="kind"),
    bad("uri-empty", "register_artifact", {"uri": ""}, "uri", argument="uri"),
    bad("uri-too-long", "register_artifact", {"uri": "s3://" + "x" * 2044}, "uri"),
    bad("name-empty", "register_artifact", {"name": ""}, "name", argument="name"),
    bad("name-too-long", "register_artifact", {"name": "n" * 513}, "name"),
    bad("metadata-a-list", "register_artifact", {"metadata": [1]}, "metadata",
        argument="metadata"),
    bad("metadata-over-64-kib", "register_artifact", {"metadata": {"x": "y" * (64 * KIB)}},
        "metadata", status=413, argument="metadata"),
]

COMPLETE_AND_RUNS = [
    bad("completions-an-object", "complete_phases", {"completions": {"lease_token": "x"}},
        "completions", argument="completions"),
    bad("completions-empty", "complete_phases", {"completions": []}, "completions",
        argument="completions"),
    bad("completions-101", "complete_phases",
        lambda ctx: {"completions": [{"lease_token": str(uuid.uuid4()), "outcome": "failed"}
                                     for _ in range(101)]}, "completions", "101"),
    bad("completion-a-string", "complete_phases", {"completions": ["done"]}, "completions[0]",
        argument="completions[0]"),
    bad("completion-unknown-field", "complete_phases",
        lambda ctx: {"completions": [{"lease_token": ctx.token, "outcome": "succeeded",
                                      "phase": "a"}]}, "completions[0]", "phase",
        argument="completions[0].phase"),
    bad("completion-without-token", "complete_phases",
        {"completions": [{"outcome": "succeeded"}]}, "completions[0].lease_token",
        argument="completions[0].lease_token"),
    bad("completion-token-twice", "complete_phases",
        lambda ctx: {"completions": [{"lease_token": ctx.token, "outcome": "succeeded"}] * 2},
        "completions[1]", "repeats", argument="completions[1].lease_token"),
    bad("completion-outcome-done", "complete_phases",
        lambda ctx: {"completions": [{"lease_token": ctx.token, "outcome": "done"}]},
        "outcome"),
    bad("completion-retryable-a-string", "complete_phases",
        lambda ctx: {"completions": [{"lease_token": ctx.token, "outcome": "failed",
                                      "retryable": "yes"}]}, "retryable",
        argument="completions[0].retryable"),
    bad("outcome-done", "complete_phase", {"outcome": "done"}, "outcome", argument="outcome"),
    bad("outcome-upper-case", "complete_phase", {"outcome": "SUCCEEDED"}, "outcome"),
    bad("outcome-null", "complete_phase", {"outcome": None}, "outcome"),
    bad("phase-output-manifest-a-list", "complete_phase", {"output_manifest": [1]},
        "output_manifest", argument="output_manifest"),
    bad("phase-output-manifest-over-1-mib", "complete_phase",
        {"output_manifest": {"x": "y" * MIB}}, "output_manifest", status=413,
        argument="output_manifest"),
    bad("error-over-64-kib", "complete_phase",
        {"outcome": "failed", "error": {"message": "e" * (64 * KIB)}}, "error", status=413,
        argument="error"),
    bad("retryable-null", "complete_phase", {"retryable": None}, "retryable",
        argument="retryable"),
    bad("run-output-manifest-a-list", "complete_run", {"output_manifest": [1]},
        "output_manifest", argument="output_manifest"),
    bad("run-output-manifest-over-1-mib", "complete_run", {"output_manifest": {"x": "y" * MIB}},
        "output_manifest", status=413, argument="output_manifest"),
    bad("cancel-reason-too-long", "cancel_run", {"reason": "r" * 2001}, "reason"),
    bad("retry-idempotency-key-empty", "retry_run", {"idempotency_key": ""}, "idempotency_key"),
    bad("list-runs-bad-cursor", "list_runs", {"cursor": "garbage"}, "cursor"),
    bad("list-runs-limit-zero", "list_runs", {"limit": 0}, "limit"),
    bad("list-runs-limit-501", "list_runs", {"limit": 501}, "limit"),
    bad("list-runs-unknown-state", "list_runs", {"state": "done"}, "state"),
    bad("list-runs-labels-a-list", "list_runs", {"labels": ["a"]}, "labels"),
    bad("list-events-negative-after", "list_events", {"after": -1}, "after"),
    bad("list-events-limit-zero", "list_events", {"limit": 0}, "limit"),
    bad("list-events-limit-1001", "list_events", {"limit": 1001}, "limit"),
    bad("list-runs-git-sha-short", "list_runs", {"git_sha": "abc"}, "git_sha", argument="git_sha"),
    bad("list-runs-git-sha-not-hex", "list_runs", {"git_sha": "zzzz"}, "git_sha",
        argument="git_sha"),
    bad("list-runs-created-after-not-a-time", "list_runs", {"created_after": "yesterday"},
        "created_after", argument="created_after"),
    bad("list-runs-created-before-not-a-date", "list_runs", {"created_before": "2026-13-45"},
        "created_before", argument="created_before"),
    bad("list-runs-empty-time-range", "list_runs",
        {"created_after": "2026-12-02", "created_before": "2026-12-01"}, "created_after",
        argument="created_after"),
    bad("list-runs-job-slug-too-long", "list_runs", {"job_slug": "j" * 201}, "job_slug",
        argument="job_slug"),
    bad("list-runs-env-too-long", "list_runs", {"env": "e" * 65}, "env", argument="env"),
    bad("list-events-before-zero", "list_events", {"before": 0}, "before", argument="before"),
    bad("list-events-type-lower-case", "list_events", {"types": ["phase_failed"]}, "types",
        argument="types"),
    bad("list-events-no-types", "list_events", {"types": []}, "types", argument="types"),
    bad("list-events-unknown-level", "list_events", {"levels": ["fatal"]}, "levels",
        argument="levels"),
    bad("list-events-empty-text", "list_events", {"text": ""}, "text", argument="text"),
    bad("list-events-text-too-long", "list_events", {"text": "t" * 201}, "text",
        argument="text"),
    bad("timeline-run-id-not-a-uuid", "get_run_timeline", {"run_id": "nope"}, "run_id"),
    bad("timeline-unknown-run", "get_run_timeline", lambda c: {"run_id": str(uuid.uuid4())},
        status=404),
    bad("lineage-run-id-not-a-uuid", "get_run_lineage", {"run_id": "nope"}, "run_id"),
    bad("lineage-unknown-run", "get_run_lineage", lambda c: {"run_id": str(uuid.uuid4())},
        status=404),
    bad("grid-limit-zero", "get_run_grid", {"limit": 0}, "limit", argument="limit"),
    bad("grid-limit-101", "get_run_grid", {"limit": 101}, "limit", argument="limit"),
    bad("grid-job-and-spec", "get_run_grid", {"job_slug": "a", "spec_slug": "b"}, "spec_slug",
        argument="spec_slug"),
    bad("grid-unknown-job", "get_run_grid", {"job_slug": "no-such-job"}, status=404,
        argument="job_slug"),
    bad("grid-unknown-workspace", "get_run_grid", lambda c: {"workspace_id": str(uuid.uuid4())},
        status=404, argument="workspace_id"),
    bad("health-bucket-too-small", "get_health", {"bucket_seconds": 59}, "bucket_seconds",
        argument="bucket_seconds"),
    bad("health-too-many-buckets", "get_health",
        lambda c: {"since": (datetime.now(UTC) - timedelta(days=30)).isoformat(),
                   "bucket_seconds": 60}, "bucket_seconds", argument="bucket_seconds"),
    bad("health-since-too-old", "get_health",
        lambda c: {"since": (datetime.now(UTC) - timedelta(days=32)).isoformat()}, "since",
        argument="since"),
    bad("health-since-in-the-future", "get_health",
        lambda c: {"since": (datetime.now(UTC) + timedelta(days=1)).isoformat()}, "since",
        argument="since"),
    bad("health-since-not-a-time", "get_health", {"since": "last week"}, "since",
        argument="since"),
    bad("list-artifacts-bad-digest", "list_artifacts", {"digest": "sha256:" + HEX64}, "digest"),
    bad("list-artifacts-limit-zero", "list_artifacts", {"limit": 0}, "limit"),
    bad("list-artifacts-negative-after", "list_artifacts", {"after": -1}, "after"),
    bad("member-role-owner", "add_member", {"role": "owner"}, "role"),
    bad("member-name-too-long", "add_member", {"name": "n" * 201}, "name"),
    bad("workspace-slug-with-a-space", "create_workspace", {"slug": "Bad Slug"}, "slug"),
    bad("workspace-env-qa", "create_workspace", {"env": "qa"}, "env"),
    bad("workspace-name-empty", "create_workspace", {"name": ""}, "name"),
    bad("principal-name-empty", "create_principal", {"name": ""}, "name", argument="name"),
    bad("principal-kind-robot", "create_principal", {"kind": "robot"}, "kind", argument="kind"),
    bad("invite-role-executor", "invite_member", {"role": "executor"}, "role", argument="role"),
    bad("invite-name-too-long", "invite_member", {"name": "n" * 201}, "name", argument="name"),
    bad("invite-expiry-too-short", "invite_member", {"expires_in_seconds": 10},
        "expires_in_seconds", argument="expires_in_seconds"),
    bad("audit-limit-zero", "list_audit", {"limit": 0}, "limit", argument="limit"),
    bad("audit-limit-1001", "list_audit", {"limit": 1001}, "limit", argument="limit"),
    bad("audit-function-name-too-long", "list_audit", {"function_name": "f" * 201},
        "function_name", argument="function_name"),
]

CATALOG = [
    bad("dataset-name-with-a-space", "record_dataset", {"name": "bronze orders"}, "name",
        argument="name"),
    bad("dataset-name-empty", "record_dataset", {"name": ""}, "name", argument="name"),
    bad("dataset-name-too-long", "record_dataset", {"name": "n" * 201}, "name"),
    bad("dataset-name-null", "record_dataset", {"name": None}, "name"),
    bad("location-empty", "record_dataset", {"location": ""}, "location", argument="location"),
    bad("location-too-long", "record_dataset", {"location": "s3://" + "x" * 2044}, "location"),
    bad("layer-platinum", "record_dataset", {"layer": "platinum"}, "layer", argument="layer"),
    bad("format-upper-case", "record_dataset", {"format": "Delta"}, "format",
        argument="format"),
    bad("format-null", "record_dataset", {"format": None}, "format"),
    bad("change-unchanged", "record_dataset", {"change": "UNCHANGED"}, "change",
        argument="change"),
    bad("change-lower-case", "record_dataset", {"change": "initial"}, "change"),
    bad("change-null", "record_dataset", {"change": None}, "change"),
    bad("schema-missing-for-initial", "record_dataset", {"schema": None}, "schema",
        argument="schema"),
    bad("schema-a-string", "record_dataset", {"schema": "id int64"}, "schema",
        argument="schema"),
    bad("schema-over-256-kib", "record_dataset", {"schema": [{"name": "x" * (256 * KIB)}]},
        "schema", status=413, argument="schema"),
    bad("changes-an-object", "record_dataset", {"changes": {"id": "added"}}, "changes",
        argument="changes"),
    bad("changes-over-64-kib", "record_dataset", {"changes": ["x" * (64 * KIB)]}, "changes",
        status=413, argument="changes"),
    bad("table-version-negative", "record_dataset", {"table_version": -1}, "table_version",
        argument="table_version"),
    bad("dataset-digest-sha256", "record_dataset", {"digest": "sha256:" + HEX64}, "digest",
        argument="digest"),
    bad("rows-negative", "record_dataset", {"rows": -1}, "rows", argument="rows"),
    bad("owner-empty", "record_dataset", {"owner": ""}, "owner", argument="owner"),
    bad("owner-too-long", "record_dataset", {"owner": "o" * 201}, "owner"),
    bad("tag-with-a-space", "record_dataset", {"tags": ["has space"]}, "tags",
        argument="tags"),
    bad("tag-null", "record_dataset", {"tags": [None]}, "tags", argument="tags"),
    bad("33-tags", "record_dataset", {"tags": [f"t{i}" for i in range(33)]}, "tags"),
    bad("resolution-approve", "unblock_dataset", {"resolution": "approve"}, "resolution",
        argument="resolution"),
    bad("resolution-null", "unblock_dataset", {"resolution": None}, "resolution"),
    bad("unblock-name-null", "unblock_dataset", {"name": None}, "name", argument="name"),
    bad("note-too-long", "unblock_dataset", {"note": "n" * 2001}, "note", argument="note"),
    bad("unblock-unknown-workspace", "unblock_dataset", {"workspace_id": str(uuid.uuid4())},
        "workspace", status=404),
    bad("unblock-unknown-dataset", "unblock_dataset", {"name": "bronze.nothing"},
        "bronze.nothing", status=404),
    bad("list-datasets-layer-platinum", "list_datasets", {"layer": "platinum"}, "layer",
        argument="layer"),
    bad("list-datasets-unknown-state", "list_datasets", {"schema_state": "broken"},
        "schema_state", argument="schema_state"),
    bad("list-datasets-limit-zero", "list_datasets", {"limit": 0}, "limit", argument="limit"),
    bad("list-datasets-limit-1001", "list_datasets", {"limit": 1001}, "limit"),
    bad("get-dataset-name-null", "get_dataset", {"name": None}, "name", argument="name"),
    bad("get-dataset-unknown", "get_dataset", {"name": "bronze.nothing"}, "bronze.nothing",
        status=404),
]

# connections (each rule of what could carry a secret is tests/contract/test_connections.py)
CONNECTIONS = [
    bad("connection-name-with-a-dash", "create_connection", {"name": "dw-1"}, "name",
        argument="name"),
    bad("connection-type-mysql", "create_connection", {"type": "mysql"}, "type", "mysql",
        argument="type"),
    bad("connection-config-a-list", "create_connection", {"config": ["x"]}, "config",
        argument="config"),
    bad("connection-password-in-config", "create_connection", {"config": {"password": "x"}},
        "config.password", argument="config.password"),
    bad("connection-dsn-with-a-password", "update_connection",
        {"config": {"dsn": "postgresql://u:pw@h/d"}}, "config.dsn", argument="config.dsn"),
    bad("connection-secret-not-a-reference", "update_connection",
        {"secrets": {"password": "pw"}}, "secrets.password", argument="secrets.password"),
    bad("connection-config-over-16-kib", "create_connection", {"config": {"x": "y" * 16384}},
        "config", status=413, argument="config"),
    bad("connection-description-too-long", "update_connection", {"description": "d" * 1001},
        "description", argument="description"),
    bad("connection-unknown", "update_connection", {"name": "nothing"}, "nothing", status=404),
    bad("connection-unknown-workspace", "list_connections", {"workspace_id": str(uuid.uuid4())},
        "workspace", status=404),
    bad("connection-name-null", "get_connection", {"name": None}, "name", argument="name"),
    bad("delete-unknown-connection", "delete_connection", {"name": "nothing"}, "nothing",
        status=404),
    bad("test-ok-null", "record_connection_test", {"ok": None}, "ok", argument="ok"),
    bad("test-unknown-connection", "record_connection_test", {"name": "nothing"}, "nothing",
        status=404),
]

# alerts (what could store a secret is tests/contract/test_alerts.py)
ALERTS = [
    bad("alert-destination-name-upper", "create_alert_destination", {"name": "Hook"}, "name",
        argument="name"),
    bad("alert-destination-type-email", "create_alert_destination", {"type": "email"}, "type",
        "email", argument="type"),
    bad("alert-destination-literal-slack-url", "create_alert_destination",
        {"type": "slack", "url": "https://hooks.slack.com/services/T/B/X"}, "url", "reference",
        argument="url"),
    bad("alert-destination-header-literal", "create_alert_destination",
        {"headers": {"Authorization": "Bearer x"}}, "headers.Authorization",
        argument="headers.Authorization"),
    bad("alert-destination-headers-a-list", "create_alert_destination", {"headers": ["x"]},
        "headers", argument="headers"),
    bad("alert-destination-unknown-workspace", "list_alert_destinations",
        {"workspace_id": str(uuid.uuid4())}, "workspace", status=404),
    bad("delete-unknown-alert-destination", "delete_alert_destination", {"name": "nothing"},
        "nothing", status=404),
    bad("alert-rule-event-unknown", "create_alert_rule", {"event": "disk_full"}, "event",
        "disk_full", argument="event"),
    bad("alert-rule-lease-expiries-without-threshold", "create_alert_rule",
        {"event": "lease_expiries"}, "threshold", argument="threshold"),
    bad("alert-rule-unknown-filter", "create_alert_rule", {"filters": {"owner": "x"}},
        "filters.owner", argument="filters.owner"),
    bad("alert-rule-unknown-destination", "create_alert_rule", {"destination": "nowhere"},
        "nowhere", status=404),
    bad("alert-rules-unknown-workspace", "list_alert_rules", {"workspace_id": str(uuid.uuid4())},
        "workspace", status=404),
    bad("delete-unknown-alert-rule", "delete_alert_rule", {"name": "nothing"}, "nothing",
        status=404),
    bad("list-alerts-state-unknown", "list_alerts", {"state": "lost"}, "state",
        argument="state"),
    bad("list-alerts-limit-zero", "list_alerts", {"limit": 0}, "limit", argument="limit"),
    bad("claim-alerts-limit-zero", "claim_alerts", {"limit": 0}, "limit", argument="limit"),
    bad("claim-alerts-lease-too-short", "claim_alerts", {"lease_seconds": 1}, "lease_seconds",
        argument="lease_seconds"),
    bad("alert-delivery-ok-null", "record_alert_delivery", {"ok": None}, "ok", argument="ok"),
    bad("alert-delivery-status-600", "record_alert_delivery", {"http_status": 600},
        "http_status", argument="http_status"),
    bad("alert-delivery-unknown", "record_alert_delivery", {}, "not found", status=404),
    bad("github-statuses-limit-zero", "list_github_statuses", {"limit": 0}, "limit",
        argument="limit"),
    bad("claim-github-statuses-limit-zero", "claim_github_statuses", {"limit": 0}, "limit",
        argument="limit"),
    bad("github-delivery-ok-null", "record_github_status_delivery", {"ok": None}, "ok",
        argument="ok"),
    bad("github-delivery-unknown", "record_github_status_delivery", {}, "not found",
        status=404),
    bad("github-check-runs-limit-zero", "list_github_check_runs", {"limit": 0}, "limit",
        argument="limit"),
    bad("claim-github-check-runs-lease-too-short", "claim_github_check_runs",
        {"lease_seconds": 1}, "lease_seconds", argument="lease_seconds"),
    bad("github-check-delivery-ok-null", "record_github_check_run_delivery", {"ok": None}, "ok",
        argument="ok"),
    bad("github-check-delivery-version-zero", "record_github_check_run_delivery",
        {"version": 0}, "version", argument="version"),
    bad("github-check-delivery-id-negative", "record_github_check_run_delivery",
        {"check_run": -1}, "check_run", argument="check_run"),
    bad("github-check-delivery-url-userinfo", "record_github_check_run_delivery",
        {"html_url": "https://user:pw@github.com/x"}, "html_url", argument="html_url"),
    bad("github-check-delivery-unknown", "record_github_check_run_delivery", {}, "not found",
        status=404),
]

# schedules (each cron field and policy: tests/contract/test_schedules.py)
SCHEDULES = [
    bad("schedule-name-upper", "create_schedule", {"name": "Nightly"}, "name", argument="name"),
    bad("schedule-cron-four-fields", "create_schedule", {"cron": "* * * *"}, "5 fields",
        argument="cron"),
    bad("schedule-cron-minute-60", "create_schedule", {"cron": "60 * * * *"}, "minute",
        argument="cron"),
    bad("schedule-cron-and-interval", "create_schedule", {"interval_seconds": 60}, "not both",
        argument="interval_seconds"),
    bad("schedule-neither-cron-nor-interval", "create_schedule", {"cron": None}, "cron",
        argument="cron"),
    bad("schedule-timezone-unknown", "create_schedule", {"timezone": "Europe/Atlantis"},
        "timezone", argument="timezone"),
    bad("schedule-catchup-unknown", "create_schedule", {"catchup": "some"}, "catchup",
        argument="catchup"),
    bad("schedule-params-a-list", "create_schedule", {"params": [1]}, "params",
        argument="params"),
    bad("schedule-unknown-job", "create_schedule", {"job": "nothing"}, "nothing", status=404),
    bad("schedule-overlap-unknown", "update_schedule", {"overlap": "wait"}, "overlap",
        argument="overlap"),
    bad("schedule-max-concurrent-zero", "update_schedule", {"max_concurrent": 0},
        "max_concurrent", argument="max_concurrent"),
    bad("schedule-unknown", "update_schedule", {"name": "nothing"}, "nothing", status=404),
    bad("delete-unknown-schedule", "delete_schedule", {"name": "nothing"}, "nothing",
        status=404),
    bad("schedules-unknown-workspace", "list_schedules", {"workspace_id": str(uuid.uuid4())},
        "workspace", status=404),
    bad("get-schedule-name-null", "get_schedule", {"name": None}, "name", argument="name"),
    bad("ticks-before-not-a-time", "list_schedule_ticks", {"before": "yesterday"}, "before",
        argument="before"),
    bad("ticks-state-unknown", "list_schedule_ticks", {"state": "lost"}, "state",
        argument="state"),
    bad("ticks-limit-zero", "list_schedule_ticks", {"limit": 0}, "limit", argument="limit"),
    bad("due-limit-zero", "run_due_schedules", {"limit": 0}, "limit", argument="limit"),
    bad("due-unknown-workspace", "run_due_schedules", {"workspace_id": str(uuid.uuid4())},
        "workspace", status=404),
]

# sensors (the rest: tests/contract/test_sensors.py)
SENSORS = [
    bad("sensor-name-upper", "create_sensor", {"name": "Watch"}, "name", argument="name"),
    bad("sensor-query-not-select", "create_sensor", {"query": "delete from t"}, "SELECT",
        argument="query"),
    bad("sensor-query-two-statements", "create_sensor", {"query": "select 1; select 2"},
        "single", argument="query"),
    bad("sensor-interval-too-short", "create_sensor", {"interval_seconds": 1},
        "interval_seconds", argument="interval_seconds"),
    bad("sensor-unknown-connection", "create_sensor", {"connection": "nothing"}, "nothing",
        status=404),
    bad("sensor-unknown-job", "create_sensor", {"job": "nothing"}, "nothing", status=404),
    bad("sensor-params-a-list", "create_sensor", {"params": [1]}, "params", argument="params"),
    bad("delete-unknown-sensor", "delete_sensor", {"name": "nothing"}, "nothing", status=404),
    bad("get-sensor-name-null", "get_sensor", {"name": None}, "name", argument="name"),
    bad("sensors-unknown-workspace", "list_sensors", {"workspace_id": str(uuid.uuid4())},
        "workspace", status=404),
    bad("claim-sensors-limit-zero", "claim_due_sensors", {"limit": 0}, "limit",
        argument="limit"),
    bad("sensor-value-unknown", "record_sensor_value", {}, "not found", status=404),
    bad("sensor-value-not-a-uuid", "record_sensor_value", {"sensor_id": "x"}, "sensor_id",
        argument="sensor_id"),
]

# repair runs and dead letters (tests/contract/test_repair.py, test_deadletters.py)
REPAIR = [
    bad("repair-unknown-phase", "repair_run", {"phases": ["only", "nope"]}, "nope",
        argument="phases"),
    bad("repair-no-phases", "repair_run", {"phases": []}, "phases", argument="phases"),
    bad("repair-null-phase", "repair_run", {"phases": [None]}, "phases", argument="phases"),
    bad("repair-key-empty", "repair_run", {"idempotency_key": ""}, "idempotency_key",
        argument="idempotency_key"),
    bad("repair-unknown-run", "repair_run", {"run_id": str(uuid.uuid4())}, "run", status=404),
    bad("dead-letters-limit-zero", "list_dead_letters", {"limit": 0}, "limit", argument="limit"),
    bad("dead-letters-since-not-a-time", "list_dead_letters", {"since": "last week"}, "since",
        argument="since"),
    bad("dead-letters-forged-cursor", "list_dead_letters", {"cursor": "1:x"}, "cursor",
        argument="cursor"),
    bad("dead-letters-spec-too-long", "list_dead_letters", {"spec_slug": "s" * 201},
        "spec_slug", argument="spec_slug"),
    bad("requeue-no-ids", "requeue_dead_letters", {"phase_ids": []}, "phase_ids",
        argument="phase_ids"),
    bad("requeue-ids-null", "requeue_dead_letters", {"phase_ids": None}, "phase_ids",
        argument="phase_ids"),
    bad("requeue-id-not-a-uuid", "requeue_dead_letters", {"phase_ids": ["x"]}, "phase_ids[0]",
        argument="phase_ids[0]"),
    bad("requeue-unknown-phase", "requeue_dead_letters", {}, "phase_ids[0]", status=404),
]

# jobs (the spec's shape in detail: tests/contract/test_jobs.py)
JOBS = [
    bad("job-slug-upper-case", "register_job", {"slug": "Nightly"}, "slug", argument="slug"),
    bad("job-digest-md5", "register_job", {"digest": "md5:00"}, "digest", argument="digest"),
    bad("job-git-sha-a-branch", "register_job", {"git_sha": "main"}, "git_sha",
        argument="git_sha"),
    bad("job-spec-a-list", "register_job", {"spec": []}, "spec", argument="spec"),
    bad("job-spec-slug-other", "register_job",
        lambda c: {"spec": job_spec("other")}, "spec.slug", argument="spec.slug"),
    bad("job-param-type-date", "register_job", lambda c: {"spec": job_spec(params={
        "d": {"type": "date", "default": None, "required": True}})}, "spec.params.d.type",
        argument="spec.params.d.type"),
    bad("job-no-phases", "register_job", lambda c: {"spec": job_spec() | {"phases": []}},
        "spec.phases", argument="spec.phases"),
    bad("job-tags-not-strings", "register_job", {"tags": {"a": 1}}, "tags", argument="tags.a"),
    bad("job-spec-over-1-mib", "register_job", lambda c: {"spec": job_spec() | {
        "description": "d" * 1_100_000}}, "spec", status=413, argument="spec"),
    bad("list-jobs-unknown-workspace", "list_jobs", {"workspace_id": str(uuid.uuid4())},
        "workspace", status=404),
    bad("get-job-slug-null", "get_job", {"slug": None}, "job", argument="job"),
    bad("get-job-unknown", "get_job", {"slug": "weekly"}, "weekly", status=404),
    bad("job-run-unknown-param", "create_job_run", {"params": {"day": "d", "rows": 1}},
        "unknown param rows", "day, n", argument="params.rows"),
    bad("job-run-param-of-the-wrong-type", "create_job_run", {"params": {"day": "d", "n": "x"}},
        "param n", "integer", argument="params.n"),
    bad("job-run-required-param-missing", "create_job_run", {"params": {}}, "param day",
        "required", argument="params.day"),
    bad("job-run-params-a-list", "create_job_run", {"params": [1]}, "params",
        argument="params"),
    bad("job-run-unknown-version", "create_job_run", {"version": 9}, "no version 9",
        status=404, argument="version"),
    bad("job-run-unknown-job", "create_job_run", {"job": "weekly"}, "weekly", status=404),
    bad("job-run-priority-2000", "create_job_run", {"priority": 2000}, "priority",
        argument="priority"),
    bad("job-run-label-not-a-string", "create_job_run", {"labels": {"a": 1}}, "labels",
        argument="labels.a"),
    bad("changed-unknown-phase", "create_changed_run", {"changed": {"nope": "x"}},
        "nope is not a phase of job nightly version 1", argument="changed"),
    bad("changed-a-list", "create_changed_run", {"changed": ["extract"]}, "changed",
        "object", argument="changed"),
    bad("changed-null", "create_changed_run", {"changed": None}, "changed", argument="changed"),
    bad("changed-reason-a-number", "create_changed_run", {"changed": {"extract": 1}},
        "changed.extract", argument="changed.extract"),
    bad("changed-reason-empty", "create_changed_run", {"changed": {"extract": ""}},
        "changed.extract", argument="changed.extract"),
    bad("changed-base-not-a-uuid", "create_changed_run", {"base_run_id": "run-1"},
        "base_run_id", argument="base_run_id"),
    bad("changed-base-missing", "create_changed_run", {}, "base_run_id", drop=("base_run_id",)),
    bad("changed-base-unknown", "create_changed_run", {"base_run_id": str(uuid.uuid4())},
        "base run", status=404, argument="base_run_id"),
    bad("changed-base-a-spec-run", "create_changed_run",
        lambda c: {"base_run_id": c.succeeded_run}, "spec demo", "not of job nightly",
        argument="base_run_id"),
    bad("changed-base-not-succeeded", "create_changed_run",
        lambda c: {"base_run_id": c.job_queued}, "is queued", "succeeded", status=409),
    bad("changed-nothing", "create_changed_run", {"changed": {}}, "nothing changed since run",
        status=409),
    bad("changed-unknown-param", "create_changed_run", {"params": {"day": "d", "rows": 1}},
        "unknown param rows", argument="params.rows"),
    bad("changed-unknown-version", "create_changed_run", {"version": 9}, "no version 9",
        status=404, argument="version"),
    bad("changed-unknown-job", "create_changed_run", {"job": "weekly"}, "weekly", status=404),
    bad("slo-too-short", "set_job_slo", {"freshness_seconds": 30}, "freshness_seconds",
        "60", argument="freshness_seconds"),
    bad("slo-unknown-job", "set_job_slo", {"job": "weekly"}, "weekly", status=404),
    bad("concurrency-zero", "set_job_concurrency", {"max_concurrent_runs": 0},
        "max_concurrent_runs", argument="max_concurrent_runs"),
    bad("concurrency-unknown-job", "set_job_concurrency", {"job": "weekly"}, "weekly",
        status=404),
    bad("evaluate-limit-zero", "evaluate_slos", {"limit": 0}, "limit", argument="limit"),
    bad("evaluate-unknown-workspace", "evaluate_slos", {"workspace_id": str(uuid.uuid4())},
        "workspace", status=404),
]

CASES = (CREATE_RUN + CLAIM_AND_LEASE + APPEND_EVENTS + REGISTER_ARTIFACT + COMPLETE_AND_RUNS
         + CATALOG + CONNECTIONS + ALERTS + SCHEDULES + REPAIR + JOBS + SENSORS)


@pytest.mark.parametrize("case", CASES, ids=[f"{c.fn}:{c.id}" for c in CASES])
def test_bad_input_is_a_4xx_naming_the_problem(
    case: Bad, transport: Contract, mconn: psycopg.Connection[Any], ctx: Ctx
) -> None:
    args = baseline(ctx, case.fn)
    for name in case.drop:
        args.pop(name)
    args.update(case.spoil(ctx))
    err = refused(transport, mconn, case.fn, args, ctx.caller(case.fn))
    code = {400: "invalid_argument", 404: "not_found", 409: "conflict",
            413: "payload_too_large"}[case.status]
    assert (err.status, err.code, err.sqlstate) == (case.status, code, f"PT{case.status}"), err
    for name in case.names:
        assert name in err.message, f"the message does not name {name!r}: {err.message!r}"
    if case.argument is not None:
        assert argument_of(err) == case.argument, err.details


def test_every_function_has_bad_input_cases(mconn: psycopg.Connection[Any]) -> None:
    """A function taking arguments without a case here is a gap (new functions included)."""
    with mconn.transaction():
        rows = mconn.execute(
            "select p.proname from pg_catalog.pg_proc p"
            " join pg_catalog.pg_namespace n on n.oid = p.pronamespace"
            " where n.nspname = 'ops' and p.pronargs > 0 order by 1").fetchall()
    with_args = {str(r[0]) for r in rows}
    covered = {c.fn for c in CASES} | {"get_run", "remove_member", "revoke_principal",  # ids only
                                       "accept_invitation", "revoke_invitation",
                                       "list_invitations"}
    assert with_args - covered == set()


# ---------------------------------------------------------------------------------------------
# ids: every argument of every function that takes an id, found in the catalog
# ---------------------------------------------------------------------------------------------

def id_arguments(mconn: psycopg.Connection[Any]) -> list[tuple[str, str]]:
    """(function, argument) for every `*_id` and `*_token` argument of an ops function."""
    with mconn.transaction():
        rows = mconn.execute(
            "select p.proname, a.name from pg_catalog.pg_proc p"
            " join pg_catalog.pg_namespace n on n.oid = p.pronamespace"
            " cross join lateral pg_catalog.unnest(p.proargnames) a(name)"
            " where n.nspname = 'ops' and (a.name like '%\\_id' or a.name like '%\\_token')"
            " order by 1, 2").fetchall()
    return [(str(f), str(a)) for f, a in rows]


def check_bad_ids(transport: Contract, mconn: psycopg.Connection[Any], ctx: Ctx,
                  values: list[str]) -> list[str]:
    wrong: list[str] = []
    pairs = id_arguments(mconn)
    assert {a for _, a in pairs} >= {"workspace_id", "run_id", "lease_token", "claim_id",
                                      "principal_id", "parent_run_id"}
    before = snapshot(mconn)    # each refusal is checked against it (not a snapshot of its own)
    for fn, name in pairs:
        for value in values:
            args = baseline(ctx, fn) | {name: value}
            try:
                err = transport.error(fn, args, as_=ctx.caller(fn))
            except (AssertionError, pytest.fail.Exception) as exc:
                wrong.append(f"{fn}({name}={value!r}): {exc}")
                before = snapshot(mconn)
                continue
            if (after := snapshot(mconn)) != before:
                wrong.append(f"{fn}({name}={value!r}): the refused {fn} wrote something")
                before = after
                continue
            if (err.status, err.code, err.sqlstate) != (400, "invalid_argument", "PT400") or (
                    name not in err.message):
                wrong.append(f"{fn}({name}={value!r}): {err!r}")
    return wrong


def test_an_invalid_uuid_is_a_400_naming_the_argument(
    transport: Contract, mconn: psycopg.Connection[Any], ctx: Ctx
) -> None:
    values = ["not-a-uuid", "", "1234", "0123abcd-0123-0123-0123-0123abcd012",
              "0123abcd-0123-0123-0123-0123abcd0123x", "0123abcd-0123-0123-0123-0123abcd012g",
              "' or 1=1 --"]
    assert check_bad_ids(transport, mconn, ctx, values) == []


def test_a_uuid_with_one_brace_is_a_400_naming_the_argument(
    transport: Contract, mconn: psycopg.Connection[Any], ctx: Ctx
) -> None:
    """ops_private.uuid_arg's pattern takes each brace as optional on its own, so a value with
    only one passes it and the cast (`::uuid`) fails with SQLSTATE 22P02 instead."""
    values = ["{0123abcd-0123-0123-0123-0123abcd0123", "0123abcd-0123-0123-0123-0123abcd0123}"]
    assert check_bad_ids(transport, mconn, ctx, values) == []


def test_an_event_id_with_one_brace_is_a_400_naming_the_event(
    transport: Contract, mconn: psycopg.Connection[Any], ctx: Ctx
) -> None:
    args = baseline(ctx, "append_events") | {
        "events": [event("a", event_id="{" + str(uuid.uuid4()))]}
    err = refused(transport, mconn, "append_events", args, ctx.executor)
    assert (err.status, err.sqlstate) == (400, "PT400"), err
    assert "events[0].event_id" in err.message


# ---------------------------------------------------------------------------------------------
# values that pass a first check and fail later
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("value", [3.0, 100.0])
def test_an_integral_float_is_taken_or_refused_cleanly(
    value: float, transport: Contract, mconn: psycopg.Connection[Any], ctx: Ctx
) -> None:
    """JSON has one number type: 3.0 is 3 to most clients (JavaScript sends it as 3, Python as
    3.0). ops_private.int_field accepts it as an integer, then casts its text `3.0` with
    `::integer`, which fails with SQLSTATE 22P02. Either take it or refuse it with a PT400."""
    for field_name in ("max_attempts", "timeout_seconds"):
        args = baseline(ctx, "create_run") | {"phases": [ph(**{field_name: value})]}
        try:
            run = transport.call("create_run", args, as_=ctx.dev)
        except ContractError as err:
            assert (err.status, err.sqlstate) == (400, "PT400"), err
            assert f"phases[0].{field_name}" in err.message
        else:
            assert run["phases"][0][field_name] == int(value)


@pytest.mark.parametrize("ts", [
    "2030-13-01T00:00:00Z", "2030-02-30T00:00Z", "0000-01-01T00:00Z", "2030-01-01T25:00Z",
    "2030-01-01T00:61Z", "2030-01-01T00:00+99",
])
def test_an_impossible_event_time_is_a_400_naming_it(
    ts: str, transport: Contract, mconn: psycopg.Connection[Any], ctx: Ctx
) -> None:
    """These match append_events' ts pattern, so the cast to timestamptz (at the insert)
    raises 22008/22009 instead of a PT400 naming events[0].ts."""
    args = baseline(ctx, "append_events") | {"events": [event("a", ts=ts)]}
    err = refused(transport, mconn, "append_events", args, ctx.executor)
    assert (err.status, err.sqlstate) == (400, "PT400"), err
    assert "events[0].ts" in err.message


@pytest.mark.parametrize("cursor", [
    "1:------------------------------------",
    "99999999999999999999999:0123abcd-0123-0123-0123-0123abcd0123",
    "1:0123abcd0123-0123-0123-0123abcd0123-",
])
def test_a_forged_list_runs_cursor_is_a_400_naming_it(
    cursor: str, transport: Contract, mconn: psycopg.Connection[Any], ctx: Ctx
) -> None:
    """list_runs checks its cursor with `^\\d+:[0-9a-f-]{36}$`; these pass it, then the uuid
    cast (22P02) or to_timestamp (22008) fails instead of a PT400 naming the cursor."""
    err = refused(transport, mconn, "list_runs", {"cursor": cursor}, ctx.dev)
    assert (err.status, err.sqlstate) == (400, "PT400"), err
    assert "cursor" in err.message


def test_a_cycle_is_reported_without_the_phases_outside_it(
    transport: Contract, mconn: psycopg.Connection[Any], ctx: Ctx
) -> None:
    """The message lists the phases left over by Kahn's algorithm: the cycle, but also every
    phase that merely depends on it (y here), which is not part of the cycle."""
    cyclic = [*CYCLE_4, ph("y", depends_on=["a"])]
    args = baseline(ctx, "create_run") | {"phases": cyclic}
    err = refused(transport, mconn, "create_run", args, ctx.dev)
    assert (err.status, err.sqlstate) == (400, "PT400")
    listed = err.message.split(":", 1)[1]
    assert {n.strip(" ;.") for n in listed.replace("->", ",").split(",")} >= {"a", "b", "c", "d"}
    assert "y" not in listed.replace(",", " ").split(), err.message
    assert "x" not in listed.replace(",", " ").split(), err.message


@pytest.mark.parametrize("shape", ["chain-of-1000", "dense-400"])
def test_create_run_within_the_limits_answers_within_a_statement_timeout(
    shape: str, mconn: psycopg.Connection[Any], ctx: Ctx
) -> None:
    """Every input inside the limits must be answered (a run, or a PT4xx) within Supabase's
    default statement_timeout for `authenticated` (8 s). normalize_phases re-scans every
    phase with array membership tests for each round of its topological sort, which is cubic
    in a dependency chain: 1,000 phases in a line (91 kB) take ~8 s, 400 phases each
    depending on all before them (~0.6 MB) far longer."""
    if shape == "chain-of-1000":
        spec = [ph(f"p{i}", depends_on=[f"p{i - 1}"] if i else []) for i in range(1000)]
    else:
        spec = [ph(f"p{i}", depends_on=[f"p{j}" for j in range(i)]) for i in range(400)]
    args = baseline(ctx, "create_run") | {"phases": spec}
    try:
        with acting_as(mconn, role="authenticated", sub=str(ctx.dev.sub)):
            mconn.execute("set local statement_timeout = '8s'")
            run = call(mconn, "create_run", args)
    except ContractError as err:
        assert err.status in (400, 413) and (err.sqlstate or "").startswith("PT"), err
    else:
        assert len(run["phases"]) == len(spec)


# ---------------------------------------------------------------------------------------------
# values of the wrong SQL type are refused before the function runs
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("fn", "args"), [
    ("create_run", {"priority": "high"}),
    ("create_run", {"priority": 2**31}),
    ("claim_phase", {"lease_seconds": "sixty"}),
    ("claim_phase", {"kinds": "python"}),
    ("register_artifact", {"size_bytes": "big"}),
    ("complete_phase", {"retryable": "maybe"}),
    ("list_events", {"after": "start"}),
    ("record_dataset", {"table_version": "v1"}),
    ("list_datasets", {"limit": "all"}),
], ids=lambda v: v if isinstance(v, str) else "-".join(map(str, v)))
def test_a_value_of_the_wrong_sql_type_is_a_400(
    fn: str, args: dict[str, Any], transport: Contract, mconn: psycopg.Connection[Any], ctx: Ctx
) -> None:
    """Typed (non-JSON) arguments are cast before the function runs, as PostgREST does: the
    answer is PostgreSQL's own 22xxx error (HTTP 400), whose message names the value and the
    type but not the argument."""
    err = refused(transport, mconn, fn, baseline(ctx, fn) | args, ctx.caller(fn))
    assert (err.status, err.code) == (400, "invalid_argument"), err
    assert (err.sqlstate or "").startswith("22"), err


# ---------------------------------------------------------------------------------------------
# properties: any JSON at all as phases or events is a run/append or a PT4xx, never a 5xx
# ---------------------------------------------------------------------------------------------

# PostgreSQL's jsonb refuses \u0000 and lone surrogates before any function runs (22P05, as
# through PostgREST); those are the transport's business, not the contract's.
TEXT = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=12)
SCALARS = (st.none() | st.booleans() | st.integers()
           | st.floats(allow_nan=False, allow_infinity=False) | TEXT)
JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(TEXT, inner, max_size=4), max_leaves=10)
NAMES = st.sampled_from(["a", "b", "c", "d"])
INTEGERS = st.integers(-2, 102) | st.sampled_from([86400, 604800, 604801, 10**20])
NUMBERS = INTEGERS | INTEGERS.map(float) | st.floats(-2, 102, allow_nan=False)


def maybe(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly a plausible value, sometimes any JSON at all."""
    return st.one_of(valid, valid, JSON)


# plausible values: the right JSON types, within and just outside the bounds
PHASE_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "params": st.dictionaries(TEXT, JSON, max_size=3),
    "depends_on": st.lists(NAMES, max_size=3),
    "max_attempts": NUMBERS,
    "timeout_seconds": NUMBERS,
    "retry_backoff_seconds": NUMBERS,
    "retry_backoff_max_seconds": NUMBERS,
}
# phases that get past the name and kind checks, so the later fields are reached
PLAUSIBLE_PHASE = st.fixed_dictionaries(
    {"name": NAMES, "kind": st.sampled_from(["python", "sql"])}, optional=PHASE_FIELDS)
ANY_PHASE = st.fixed_dictionaries({}, optional={
    "name": maybe(NAMES), "kind": maybe(st.sampled_from(["python", "Bad"])), "extra": JSON,
    **{k: maybe(v) for k, v in PHASE_FIELDS.items()}})
PLAUSIBLE_PHASES = st.lists(PLAUSIBLE_PHASE, min_size=1, max_size=4,
                            unique_by=lambda p: str(p["name"]))
PHASES = st.one_of(PLAUSIBLE_PHASES, PLAUSIBLE_PHASES, PLAUSIBLE_PHASES,
                   st.lists(ANY_PHASE, max_size=4), st.lists(JSON, max_size=3), JSON)

TS = st.from_regex(r"\A[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}(:[0-9]{2})?Z\Z")
EVENT_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "phase": st.sampled_from(["a", "b"]),
    "ts": TS | st.sampled_from(["2030-01-01T00:00:00Z", "2030-01-01 00:00:00.5+02:00"]),
    "level": st.sampled_from(["debug", "info", "warning", "error", "loud"]),
    "message": TEXT,
    "payload": st.dictionaries(TEXT, JSON, max_size=3),
}
# events that get past the event_id and type checks, so the later fields are reached
PLAUSIBLE_EVENT = st.fixed_dictionaries(
    {"event_id": st.uuids().map(str), "type": st.sampled_from(["LOG", "PHASE_STARTED"])},
    optional=EVENT_FIELDS)
ANY_EVENT = st.fixed_dictionaries({}, optional={
    "event_id": maybe(st.uuids().map(str)),
    "type": maybe(st.sampled_from(["LOG", "PHASE_SUCCEEDED", "log"])), "extra": JSON,
    **{k: maybe(v) for k, v in EVENT_FIELDS.items()}})
PLAUSIBLE_EVENTS = st.lists(PLAUSIBLE_EVENT, min_size=1, max_size=4)
EVENTS = st.one_of(PLAUSIBLE_EVENTS, PLAUSIBLE_EVENTS, PLAUSIBLE_EVENTS,
                   st.lists(ANY_EVENT, max_size=4), st.lists(JSON, max_size=3), JSON)

PROPERTY = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def counts(mconn: psycopg.Connection[Any]) -> tuple[Any, ...]:
    """A cheap stand-in for snapshot() in the property tests (they run many calls)."""
    with mconn.transaction():
        row = mconn.execute(
            "select (select count(*) from ops.runs), (select count(*) from ops.phases),"
            " (select coalesce(sum(last_event_seq), 0) from ops.runs),"
            " (select count(*) from ops.run_events), (select count(*) from ops.audit_log)"
        ).fetchone()
    assert row is not None
    return tuple(row)


def assert_clean_refusal(err: ContractError, what: str) -> None:
    assert err.status is not None and 400 <= err.status < 500, f"{what}: {err!r}"
    assert (err.sqlstate or "").startswith("PT"), f"{what}: {err!r}"
    assert err.code != "internal", f"{what}: {err!r}"


@PROPERTY
@given(value=PHASES)
def test_any_phases_value_is_a_run_or_a_clean_refusal(
    value: Any, transport: Contract, mconn: psycopg.Connection[Any], ctx: Ctx
) -> None:
    args = baseline(ctx, "create_run") | {"phases": value}
    before = counts(mconn)
    try:
        run = transport.call("create_run", args, as_=ctx.dev)
    except ContractError as err:
        assert_clean_refusal(err, f"phases={value!r}")
        assert counts(mconn) == before
    else:
        assert isinstance(value, list) and len(run["phases"]) == len(value)


def fresh_event_ids(value: Any) -> Any:
    """The events with new (consistently renamed) event ids: an id stored by an earlier example
    would make this one a duplicate, which is skipped before its other fields are used."""
    if not isinstance(value, list):
        return value
    renamed: dict[str, str] = {}
    out: list[Any] = []
    for item in value:
        if isinstance(item, dict) and isinstance(item.get("event_id"), str):
            try:
                uuid.UUID(item["event_id"])
            except ValueError:
                pass
            else:
                new = renamed.setdefault(item["event_id"], str(uuid.uuid4()))
                item = item | {"event_id": new}
        out.append(item)
    return out


@PROPERTY
@given(value=EVENTS)
def test_any_events_value_is_an_append_or_a_clean_refusal(
    value: Any, transport: Contract, mconn: psycopg.Connection[Any], ctx: Ctx
) -> None:
    args = baseline(ctx, "append_events") | {"events": fresh_event_ids(value)}
    before = counts(mconn)
    try:
        result = transport.call("append_events", args, as_=ctx.executor)
    except ContractError as err:
        assert_clean_refusal(err, f"events={value!r}")
        assert counts(mconn) == before
    else:
        assert isinstance(value, list)
        assert result["appended"] + result["duplicates"] == len(value)
