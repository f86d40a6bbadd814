"""create_changed_run (docs/github.md, "Only what changed"): a run of a job version that reruns
what changed since a succeeded base run of the job, and everything downstream, reusing the
base's outputs for the rest; the changes the control plane sees itself (a new phase, params,
`${run.git_sha}`); reuse through earlier reuses; idempotency and audit."""

from __future__ import annotations

from typing import Any

from control_room.db.store import ContractError

from .conftest import Contract, World, event_types
from .jobspec import job_spec, register_args

PARAMS = {"n": {"type": "integer", "default": 3, "required": False, "description": None}}


def ph(name: str, kind: str, *deps: str, **params: Any) -> dict[str, Any]:
    return {"name": name, "kind": kind, "depends_on": list(deps), "params": params}


PHASES = [ph("a", "python", entrypoint="pipes.a:run", args={"n": "${params.n}"}),
          ph("b", "sql", "a", query_file="sql/b.sql"),
          ph("c", "sql", "b", query="select * from b"),
          ph("d", "python", entrypoint="pipes.d:run", args={"sha": "${run.git_sha}"})]


def register(contract: Contract, world: World, sha: str, phases: list[dict[str, Any]],
             note: str) -> None:
    spec = job_spec("chain", params=PARAMS, phases=phases, note=note)
    contract.call("register_job", register_args(world.w1, "chain", git_sha=sha, spec=spec),
                  as_=world.dev1)


def finish(contract: Contract, world: World, run_id: str) -> dict[str, str]:
    """Claim and complete every phase that runs; name -> the phase id that ran it."""
    ran: dict[str, str] = {}
    while (claim := contract.call("claim_phase", {"run_id": run_id},
                                  as_=world.exec1)) is not None:
        ran[claim["name"]] = claim["phase_id"]
        contract.call("complete_phase", {"lease_token": claim["lease_token"],
                                         "outcome": "succeeded",
                                         "output_manifest": {"from": claim["name"],
                                                             "run": run_id}},
                      as_=world.exec1)
    assert contract.call("get_run", {"run_id": run_id})["state"] == "succeeded"
    return ran


def base_run(contract: Contract, world: World) -> tuple[str, dict[str, str]]:
    register(contract, world, "1111111", PHASES, "v1")
    run = contract.call("create_job_run", {"workspace_id": world.w1, "job": "chain"},
                        as_=world.dev1)
    return run["id"], finish(contract, world, run["id"])


def test_the_changed_phases_and_downstream_run_the_rest_is_reused(contract: Contract,
                                                                  world: World) -> None:
    base, ids = base_run(contract, world)
    register(contract, world, "2222222", PHASES, "v1")          # the same spec, a new commit
    args = {"workspace_id": world.w1, "job": "chain", "base_run_id": base,
            "changed": {"b": "code changed: sql/b.sql"}, "idempotency_key": "pr-7"}
    made = contract.call("create_changed_run", args, as_=world.dev1)
    assert made["created"] is True and made["job"]["version"] == 2
    assert made["git_sha"] == "2222222" and made["parent_run_id"] is None
    assert made["changed_since"] == {
        "base_run_id": base, "base_git_sha": "1111111",
        "changed": {"b": "code changed: sql/b.sql", "d": "uses ${run.git_sha}, which changed"},
        "rerun": ["d", "b", "c"], "reused": ["a"]}     # ordinal (topological) order
    assert made["input_manifest"]["changed_since"] == made["changed_since"]
    phases = {p["name"]: p for p in made["phases"]}
    assert {n: p["state"] for n, p in phases.items()} == {
        "a": "succeeded", "b": "queued", "c": "waiting", "d": "queued"}
    assert phases["a"]["reused_from_phase_id"] == ids["a"]
    assert phases["a"]["output_manifest"] == {"from": "a", "run": base}
    assert event_types(contract, made["id"], "a") == ["PHASE_REUSED"]
    events = contract.call("list_events", {"run_id": made["id"], "limit": 100})["events"]
    [reused] = [e for e in events if e["type"] == "PHASE_REUSED"]
    assert reused["message"] == f"reused: the output of phase {ids['a']}"
    # b gets a's reused output as its input, as in any run
    claims = [contract.call("claim_phase", {"run_id": made["id"]}, as_=world.exec1)
              for _ in range(2)]
    [claim] = [c for c in claims if c["name"] == "b"]           # and d: both were queued
    assert claim["inputs"] == {"a": {"from": "a", "run": base}}

    # idempotent: the same request answers the same run; another with the same key is a 409
    again = contract.call("create_changed_run", args, as_=world.dev1)
    assert (again["id"], again["created"]) == (made["id"], False)
    assert again["changed_since"]["rerun"] == ["d", "b", "c"]
    try:
        contract.call("create_changed_run", args | {"changed": {"c": "x"}}, as_=world.dev1)
        raise AssertionError("another request with the same key was accepted")
    except ContractError as err:
        assert (err.status, err.code) == (409, "conflict"), err
    audit = contract.call("list_audit", {"workspace_id": world.w1}, as_=world.admin1)["entries"]
    [entry] = [e for e in audit if e["function_name"] == "create_changed_run"]
    assert entry["details"]["base_run_id"] == base
    assert entry["details"]["rerun_phases"] == ["d", "b", "c"]


def test_what_the_control_plane_sees_itself_and_reuse_through_reuse(contract: Contract,
                                                                    world: World) -> None:
    base, ids = base_run(contract, world)
    # version 2: c's query changed, a new phase e after a, and n=5 (a uses ${params.n})
    phases = [*PHASES[:2], ph("c", "sql", "b", query="select 1 from b"), PHASES[3],
              ph("e", "sql", "a", query="select 2")]
    register(contract, world, "3333333", phases, "v2")
    made = contract.call("create_changed_run", {"workspace_id": world.w1, "job": "chain",
                                                "base_run_id": base, "changed": {}},
                         as_=world.dev1)
    assert made["changed_since"]["changed"] == {
        "c": "params changed", "d": "uses ${run.git_sha}, which changed",
        "e": "new: the base run has no phase e"}
    assert made["changed_since"]["reused"] == ["a", "b"]
    with_n = contract.call("create_changed_run", {"workspace_id": world.w1, "job": "chain",
                                                  "base_run_id": base, "changed": {},
                                                  "params": {"n": 5}}, as_=world.dev1)
    assert with_n["changed_since"]["changed"]["a"] == "param n changed: 3 -> 5"
    assert with_n["changed_since"]["rerun"] == ["a", "d", "b", "e", "c"]
    contract.call("cancel_run", {"run_id": with_n["id"]}, as_=world.dev1)

    # the changed run, finished, is a base in turn: a and b still point at the first run's
    ran = finish(contract, world, made["id"])
    assert sorted(ran) == ["c", "d", "e"]
    register(contract, world, "4444444", phases, "v2")
    third = contract.call("create_changed_run", {"workspace_id": world.w1, "job": "chain",
                                                 "base_run_id": made["id"],
                                                 "changed": {"e": "code changed"}},
                          as_=world.dev1)
    by_name = {p["name"]: p for p in third["phases"]}
    assert by_name["a"]["reused_from_phase_id"] == ids["a"]
    assert by_name["b"]["reused_from_phase_id"] == ids["b"]
    assert by_name["c"]["reused_from_phase_id"] == ran["c"]
    assert third["changed_since"]["rerun"] == ["d", "e"]
