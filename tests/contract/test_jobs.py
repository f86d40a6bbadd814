"""Jobs: versioned job definitions (register_job, list_jobs, get_job) and runs of a job
(create_job_run, ops_private.start_job_run), over every transport (docs/jobs.md)."""

from __future__ import annotations

import json
import threading
from typing import Any

import psycopg
import pytest

from control_room.db.store import acting_as

from .conftest import SERVICE, Contract, World, user
from .jobspec import job_spec, register, register_args
from .snapshot import snapshot


def run_args(world: World, **extra: Any) -> dict[str, Any]:
    return {"workspace_id": world.w1, "job": "nightly", "params": {"day": "2026-12-01"}, **extra}


# ------------------------------------------------------------------------------- registering

def test_register_is_idempotent_and_versions_on_digest_or_git_sha(
    contract: Contract, world: World
) -> None:
    first = register(contract, world.w1, as_=world.dev1, owner="data team",
                     tags={"team": "data"})
    assert first["created"] is True
    job, version = first["job"], first["version"]
    assert (job["slug"], job["latest_version"], job["owner"], job["tags"]) == (
        "nightly", 1, "data team", {"team": "data"})
    assert job["description"] == "nightly"            # the spec's, when none is given
    assert (version["version"], version["git_sha"]) == (1, "0123abc")
    assert version["spec"]["params"]["n"] == {"type": "integer", "default": 3,
                                              "required": False, "description": "rows"}

    again = register(contract, world.w1, as_=world.dev1)
    assert again["created"] is False
    assert again["version"]["id"] == version["id"]
    assert again["job"]["tags"] == {"team": "data"}     # {} keeps the tags
    assert again["job"]["owner"] == "data team"         # null keeps the owner

    # the same spec at a new commit is a new version: a version pins the code it runs
    moved = register(contract, world.w1, as_=world.dev1, git_sha="89abcdef")
    assert (moved["created"], moved["version"]["version"]) == (True, 2)
    # a changed spec (digest) at the same commit too
    changed = register(contract, world.w1, as_=world.admin1, git_sha="89abcdef",
                       spec=job_spec(note="edited"))
    assert (changed["created"], changed["version"]["version"]) == (True, 3)
    assert changed["job"]["latest_version"] == 3
    # unchanged again: still 3
    assert register(contract, world.w1, git_sha="89abcdef", spec=job_spec(note="edited"))[
        "version"]["version"] == 3

    detail = contract.call("get_job", {"workspace_id": world.w1, "slug": "nightly"},
                           as_=world.viewer1)
    assert [v["version"] for v in detail["versions"]] == [3, 2, 1]
    assert [v["git_sha"] for v in detail["versions"]] == ["89abcdef", "89abcdef", "0123abc"]
    assert detail["latest"]["version"] == 3 and detail["latest"]["spec"]["slug"] == "nightly"
    assert "spec" not in detail["versions"][0]
    assert detail["versions"][0]["params"]["day"]["required"] is True
    assert all(isinstance(v["created_by_name"], str) for v in detail["versions"])
    assert detail["recent_runs"] == [] and detail["last_run"] is None
    assert detail["next_run_at"] is None
    # the same slug in another workspace is another job
    other = register(contract, world.w2, as_=world.dev2)
    assert other["created"] is True and other["job"]["id"] != job["id"]
    assert other["version"]["version"] == 1


def test_description_owner_and_tags_are_the_jobs_not_versioned(
    contract: Contract, world: World
) -> None:
    register(contract, world.w1)
    changed = register(contract, world.w1, description="the nightly load", owner="ana@x.io",
                       tags={"tier": "gold"})
    assert changed["created"] is False                      # same digest and sha: no version
    assert (changed["job"]["description"], changed["job"]["owner"],
            changed["job"]["tags"]) == ("the nightly load", "ana@x.io", {"tier": "gold"})
    listed = contract.call("list_jobs", {"workspace_id": world.w1}, as_=world.viewer1)
    assert [(j["slug"], j["latest_version"], j["owner"]) for j in listed] == [
        ("nightly", 1, "ana@x.io")]


def test_versions_are_immutable(sql_contract: Contract, world: World,
                                conn: psycopg.Connection[Any]) -> None:
    """No function updates or deletes a version, and a trigger refuses it even to the
    owner of the tables."""
    register(sql_contract, world.w1)
    with conn.transaction():
        sources = conn.execute(
            "select p.proname, p.prosrc from pg_catalog.pg_proc p"
            " join pg_catalog.pg_namespace n on n.oid = p.pronamespace"
            " where n.nspname in ('ops', 'ops_private')").fetchall()
    writers = [name for name, src in sources
               if "update ops.job_versions" in src.lower()
               or "delete from ops.job_versions" in src.lower()]
    assert writers == []
    for statement in ("update ops.job_versions set git_sha = 'fedcba9'",
                      "delete from ops.job_versions"):
        with pytest.raises(psycopg.Error) as info, conn.transaction():
            conn.execute(statement)
        assert "immutable" in str(info.value)
    for statement in ("update ops.job_versions set git_sha = 'fedcba9'",
                      "update ops.jobs set latest_version = 7"):
        with pytest.raises(psycopg.errors.InsufficientPrivilege), acting_as(
                conn, role="authenticated", sub=str(world.admin1.sub)):
            conn.execute(statement)


@pytest.mark.parametrize(("spoil", "names"), [
    (lambda s: s | {"extra": 1}, ["spec", "extra"]),
    (lambda s: s | {"slug": "other"}, ["spec.slug", "nightly"]),
    (lambda s: s | {"version": 1.5}, ["spec.version"]),
    (lambda s: s | {"phases": []}, ["spec.phases", "non-empty"]),
    (lambda s: s | {"phases": "extract"}, ["spec.phases"]),
    (lambda s: s | {"phases": [{"name": "a", "kind": "python", "depends_on": ["zz"]}]},
     ["zz"]),
    (lambda s: s | {"params": {"n": {"type": "date", "default": 1, "required": False}}},
     ["spec.params.n.type", "date"]),
    (lambda s: s | {"params": {"n": {"type": "integer", "default": "three",
                                     "required": False}}},
     ["spec.params.n.default", "integer"]),
    (lambda s: s | {"params": {"n": {"type": "integer", "default": None, "required": False}}},
     ["spec.params.n", "required"]),
    (lambda s: s | {"params": {"1n": {"type": "integer", "default": 1, "required": False}}},
     ["1n"]),
    (lambda s: s | {"params": {}}, ["params.n", "does not declare"]),
    (lambda s: s | {"source": {"path": "x.yaml", "digest": "md5:1"}}, ["spec.source"]),
    (lambda s: {k: v for k, v in s.items() if k != "source"}, ["spec.source"]),
])
def test_register_checks_the_spec_it_is_sent(
    contract: Contract, world: World, conn: psycopg.Connection[Any], spoil: Any,
    names: list[str]
) -> None:
    spec = spoil(job_spec())
    before = snapshot(conn)
    err = contract.error("register_job", register_args(world.w1, spec=spec), as_=world.dev1)
    assert (err.status, err.code) == (400, "invalid_argument"), err
    for name in names:
        assert name in err.message, err.message
    assert snapshot(conn) == before


def test_register_refuses_bad_arguments(contract: Contract, world: World) -> None:
    args = register_args(world.w1)
    cases: list[tuple[dict[str, Any], int, str]] = [
        ({"slug": "Nightly"}, 400, "slug"),
        ({"digest": "blake3:xyz"}, 400, "digest"),
        ({"git_sha": "main"}, 400, "git_sha"),
        ({"owner": ""}, 400, "owner"),
        ({"tags": {"a": 1}}, 400, "tags"),
        ({"tags": {f"t{i}": "x" for i in range(51)}}, 400, "tags"),
        ({"spec": job_spec(description="d" * 3000)}, 400, "description"),
        ({"spec": job_spec() | {"phases": [{"name": "a", "kind": "python",
                                             "params": {"x": "y" * 1_100_000}}]}},
         413, "spec"),
    ]
    for spoil, status, name in cases:
        err = contract.error("register_job", args | spoil, as_=world.dev1)
        assert err.status == status and name in err.message, (spoil.keys(), err)


# ------------------------------------------------------------------------------ runs of a job

def test_params_are_checked_against_the_declared_types(contract: Contract, world: World,
                                                       conn: psycopg.Connection[Any]) -> None:
    register(contract, world.w1)
    before = snapshot(conn)
    unknown = contract.error("create_job_run", run_args(world, params={"day": "x", "rows": 1}),
                             as_=world.dev1)
    assert (unknown.status, unknown.code) == (400, "invalid_argument")
    assert "unknown param rows" in unknown.message and "(params: day, n)" in unknown.message
    assert json.loads(unknown.details or "{}")["argument"] == "params.rows"

    wrong = contract.error("create_job_run", run_args(world, params={"day": "x", "n": "three"}),
                           as_=world.dev1)
    assert wrong.status == 400
    assert "param n must be integer, got string \"three\"" in wrong.message, wrong.message
    assert json.loads(wrong.details or "{}") == {"argument": "params.n", "param": "n",
                                                 "type": "integer"}
    for value in (1.5, True, None, [1]):
        err = contract.error("create_job_run", run_args(world, params={"day": "x", "n": value}),
                             as_=world.dev1)
        assert "param n must be integer" in err.message, (value, err)
    long = contract.error("create_job_run", run_args(world, params={"day": 7 * 10**50}),
                          as_=world.dev1)
    assert "param day must be string, got number" in long.message
    assert len(long.message) < 200                        # a short prefix of the value

    missing = contract.error("create_job_run", run_args(world, params={}), as_=world.dev1)
    assert missing.status == 400 and "param day is required" in missing.message
    assert snapshot(conn) == before

    run = contract.call("create_job_run", run_args(world), as_=world.dev1)
    assert run["input_manifest"]["params"] == {"day": "2026-12-01", "n": 3}   # default filled
    run = contract.call("create_job_run", run_args(world, params={"day": "d", "n": 4.0}),
                        as_=world.dev1)
    assert run["input_manifest"]["params"]["n"] == 4          # an integral number is an integer


def test_every_param_type(contract: Contract, world: World) -> None:
    declared = {name: {"type": kind, "default": None, "required": True, "description": None}
                for name, kind in (("s", "string"), ("p", "path"), ("i", "integer"),
                                   ("x", "number"), ("b", "boolean"))}
    register(contract, world.w1, "types", spec=job_spec("types", params=declared, phases=[
        {"name": "a", "kind": "python"}]))
    good = {"s": "", "p": "/data/in", "i": -3, "x": 2.5, "b": False}
    run = contract.call("create_job_run", {"workspace_id": world.w1, "job": "types",
                                           "params": good}, as_=world.dev1)
    assert run["input_manifest"]["params"] == good
    for name, value in (("s", 1), ("p", ""), ("i", "1"), ("x", "2.5"), ("b", "true")):
        err = contract.error("create_job_run", {"workspace_id": world.w1, "job": "types",
                                                "params": good | {name: value}}, as_=world.dev1)
        assert err.status == 400 and f"param {name} must be" in err.message, (name, err)


def test_create_job_run_is_idempotent(contract: Contract, world: World) -> None:
    register(contract, world.w1)
    first = contract.call("create_job_run", run_args(world, idempotency_key="k1"),
                          as_=world.dev1)
    again = contract.call("create_job_run", run_args(world, idempotency_key="k1"),
                          as_=world.dev1)
    assert (first["created"], again["created"], again["id"]) == (True, False, first["id"])
    # defaults are part of the request: giving the default explicitly is the same request
    same = contract.call("create_job_run", run_args(
        world, idempotency_key="k1", params={"day": "2026-12-01", "n": 3}), as_=world.dev1)
    assert same["id"] == first["id"]
    for spoil in ({"params": {"day": "2026-12-02"}}, {"priority": 5}, {"labels": {"a": "b"}}):
        err = contract.error("create_job_run", run_args(world, idempotency_key="k1") | spoil,
                             as_=world.dev1)
        assert (err.status, err.code) == (409, "conflict"), (spoil, err)
    # a new version under the same key is another request
    register(contract, world.w1, git_sha="89abcdef")
    err = contract.error("create_job_run", run_args(world, idempotency_key="k1"),
                         as_=world.dev1)
    assert err.status == 409
    # the key is the workspace's, shared with create_run
    err = contract.error("create_run", {"workspace_id": world.w1, "spec_slug": "nightly",
                                        "git_sha": "0123abc", "idempotency_key": "k1",
                                        "phases": [{"name": "a", "kind": "python"}]},
                         as_=world.dev1)
    assert err.status == 409


def test_runs_record_their_job_version(contract: Contract, world: World) -> None:
    v1 = register(contract, world.w1)["version"]
    v2 = register(contract, world.w1, git_sha="89abcdef")["version"]
    latest = contract.call("create_job_run", run_args(world), as_=world.dev1)
    old = contract.call("create_job_run", run_args(world, version=1), as_=world.dev1)
    job_id = v1["job_id"]
    assert latest["job"] == {"id": job_id, "slug": "nightly", "version": 2,
                             "version_id": v2["id"]}
    assert old["job"] == {"id": job_id, "slug": "nightly", "version": 1, "version_id": v1["id"]}
    assert (latest["git_sha"], old["git_sha"]) == ("89abcdef", "0123abc")
    assert latest["spec_slug"] == "nightly"
    assert latest["input_manifest"]["job"] == {"slug": "nightly", "version": 2}
    spec = latest["input_manifest"]["spec"]
    assert (spec["slug"], spec["version"], spec["path"], spec["dirty"]) == (
        "nightly", 1, "specs/nightly.yaml", False)
    assert spec["digest"].startswith("blake3:")
    assert [p["name"] for p in latest["phases"]] == ["extract"]
    assert latest["phases"][0]["params"]["args"] == {"n": "${params.n}", "day": "${params.day}"}

    got = contract.call("get_run", {"run_id": old["id"]}, as_=world.viewer1)
    assert got["job"] == old["job"]
    page = contract.call("list_runs", {"workspace_id": world.w1}, as_=world.viewer1)
    assert {r["id"]: r["job"]["version"] for r in page["runs"]} == {latest["id"]: 2,
                                                                    old["id"]: 1}
    plain = contract.call("create_run", {"workspace_id": world.w1, "spec_slug": "demo",
                                         "git_sha": "0123abc",
                                         "phases": [{"name": "a", "kind": "python"}]},
                          as_=world.dev1)
    assert plain["job"] is None

    detail = contract.call("get_job", {"workspace_id": world.w1, "slug": "nightly"},
                           as_=world.viewer1)
    assert [r["id"] for r in detail["recent_runs"]] == [old["id"], latest["id"]]
    assert detail["last_run"] == {"id": old["id"], "state": "queued",
                                  "created_at": old["created_at"]}
    listed = contract.call("list_jobs", {"workspace_id": world.w1}, as_=world.exec1)
    assert listed[0]["last_run"]["id"] == old["id"] and listed[0]["next_run_at"] is None

    for version in (0, 3):
        err = contract.error("create_job_run", run_args(world, version=version),
                             as_=world.dev1)
        assert err.status in (400, 404), err
    err = contract.error("create_job_run", run_args(world, version=3), as_=world.dev1)
    assert err.status == 404 and "no version 3 (versions 1..2)" in err.message
    err = contract.error("create_job_run", run_args(world, job="weekly"), as_=world.dev1)
    assert err.status == 404 and "weekly" in err.message


def test_a_job_run_runs(contract: Contract, world: World) -> None:
    """An executor claims the run's phase with the run's params and completes it."""
    register(contract, world.w1)
    run = contract.call("create_job_run", run_args(world, params={"day": "d1", "n": 5}),
                        as_=world.dev1)
    claim = contract.call("claim_phase", {"run_id": run["id"]}, as_=world.exec1)
    assert claim is not None and claim["name"] == "extract"
    assert claim["run"]["input_manifest"]["params"] == {"day": "d1", "n": 5}
    assert claim["run"]["git_sha"] == "0123abc"
    assert claim["max_attempts"] == 2 and claim["timeout_seconds"] == 60
    contract.call("complete_phase", {"lease_token": claim["lease_token"],
                                     "outcome": "succeeded", "output_manifest": {"rows": 5}},
                  as_=world.exec1)
    done = contract.call("get_run", {"run_id": run["id"]}, as_=world.viewer1)
    assert done["state"] == "succeeded" and done["job"]["slug"] == "nightly"
    listed = contract.call("list_jobs", {"workspace_id": world.w1}, as_=world.viewer1)
    assert listed[0]["last_run"]["state"] == "succeeded"


# ------------------------------------------------------------------------------------- roles

def test_roles_and_workspaces(contract: Contract, world: World,
                              conn: psycopg.Connection[Any]) -> None:
    """Developers and admins change jobs; every member reads; other workspaces' members find
    nothing; principal ids are for admins."""
    for who in (world.viewer1, world.exec1):
        err = contract.error("register_job", register_args(world.w1), as_=who)
        assert (err.status, err.code) == (403, "forbidden"), (who, err)
    for who in (world.dev2, world.admin2, user("outsider")):
        err = contract.error("register_job", register_args(world.w1), as_=who)
        assert (err.status, err.code) == (404, "not_found"), (who, err)
    register(contract, world.w1, as_=world.dev1)
    register(contract, world.w2, "weekly", as_=world.dev2, spec=job_spec("weekly"))
    for who in (world.viewer1, world.exec1, world.dev1, world.admin1, SERVICE):
        assert [j["slug"] for j in contract.call("list_jobs", {"workspace_id": world.w1},
                                                 as_=who)] == ["nightly"]
        assert contract.call("get_job", {"workspace_id": world.w1, "slug": "nightly"},
                             as_=who)["slug"] == "nightly"
    before = snapshot(conn)
    for who in (world.viewer2, world.dev2, world.admin2, world.exec2):
        for fn, args in (("list_jobs", {"workspace_id": world.w1}),
                         ("get_job", {"workspace_id": world.w1, "slug": "nightly"}),
                         ("create_job_run", run_args(world)),
                         ("register_job", register_args(world.w1))):
            err = contract.error(fn, args, as_=who)
            assert (err.status, err.code) == (404, "not_found"), (fn, who, err)
        # W2's job is not W1's
        err = contract.error("get_job", {"workspace_id": world.w1, "slug": "weekly"},
                             as_=world.admin1)
        assert err.status == 404
    for who in (world.viewer1, world.exec1):
        err = contract.error("create_job_run", run_args(world), as_=who)
        assert (err.status, err.code) == (403, "forbidden"), (who, err)
    assert snapshot(conn) == before
    for who in (world.dev1, world.admin1):
        assert contract.call("create_job_run", run_args(world), as_=who)["created"] is True

    as_admin = contract.call("get_job", {"workspace_id": world.w1, "slug": "nightly"},
                             as_=world.admin1)
    as_viewer = contract.call("get_job", {"workspace_id": world.w1, "slug": "nightly"},
                              as_=world.viewer1)
    assert as_admin["created_by"] == str(world.dev1.sub)
    assert as_admin["versions"][0]["created_by"] == str(world.dev1.sub)
    assert as_viewer["created_by"] is None and as_viewer["versions"][0]["created_by"] is None
    assert as_viewer["versions"][0]["created_by_name"] == as_admin["versions"][0][
        "created_by_name"]


def test_start_job_run_is_private(sql_contract: Contract, world: World,
                                  conn: psycopg.Connection[Any]) -> None:
    version = register(sql_contract, world.w1)["version"]
    for role in ("authenticated", "anon", "service_role"):
        with pytest.raises(psycopg.errors.InsufficientPrivilege), acting_as(
                conn, role=role, sub=str(world.admin1.sub) if role == "authenticated" else None):
            conn.execute("select ops_private.start_job_run(%s, '{}', null, '{}', 0)",
                         (version["id"],))
    # as the owner (the scheduler's path runs inside SECURITY DEFINER functions) it works
    with conn.transaction():
        row = conn.execute("select ops_private.start_job_run(%s, %s, 'sched:1', '{}', 0)",
                           (version["id"], json.dumps({"day": "d"}))).fetchone()
    assert row is not None and row[0]["job"]["version_id"] == version["id"]
    assert row[0]["created"] is True
    with conn.transaction():
        again = conn.execute("select ops_private.start_job_run(%s, %s, 'sched:1', '{}', 0)",
                             (version["id"], json.dumps({"day": "d"}))).fetchone()
    assert again is not None and again[0]["id"] == row[0]["id"] and again[0]["created"] is False


def test_a_retry_of_a_job_run_is_a_run_of_the_same_version(contract: Contract,
                                                           world: World) -> None:
    version = register(contract, world.w1)["version"]
    register(contract, world.w1, git_sha="89abcdef")         # the latest is another version
    run = contract.call("create_job_run", run_args(world, version=1), as_=world.dev1)
    contract.call("cancel_run", {"run_id": run["id"]}, as_=world.dev1)
    child = contract.call("retry_run", {"run_id": run["id"]}, as_=world.dev1)
    assert child["parent_run_id"] == run["id"]
    assert child["job"] == run["job"] and child["job"]["version_id"] == version["id"]
    detail = contract.call("get_job", {"workspace_id": world.w1, "slug": "nightly"},
                           as_=world.viewer1)
    assert [r["id"] for r in detail["recent_runs"]] == [child["id"], run["id"]]


def test_concurrent_registrations_make_one_version(db_url: str, world: World) -> None:
    """Two registrations of a new job racing: one job, one version, one `created`."""
    args = register_args(world.w1, "raced")
    barrier = threading.Barrier(2)
    results: list[Any] = []

    def register_once() -> None:
        with psycopg.connect(db_url, autocommit=True) as own:
            barrier.wait()
            row = own.execute(
                "select ops.register_job(%s, %s, %s, %s, %s)",
                (args["workspace_id"], args["slug"], json.dumps(args["spec"]), args["digest"],
                 args["git_sha"])).fetchone()
            assert row is not None
            results.append(row[0])

    threads = [threading.Thread(target=register_once) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(results) == 2
    assert sorted(r["created"] for r in results) == [False, True]
    assert {r["version"]["id"] for r in results} == {results[0]["version"]["id"]}
    assert {r["version"]["version"] for r in results} == {1}
