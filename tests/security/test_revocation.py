"""Revocation and what members read, through the real gateway over HTTP.

- An admin revokes only principals its workspace owns: W2's admin cannot revoke W1's admin,
  even once that admin is also a member of W2 (it used to: "principals of my workspaces").
- A revoked principal is refused with 401 on every call, reads included (the gateway runs
  ops_private.pre_request with the request's settings, as PostgREST's db-pre-request).
- list_runs answers summaries (no manifests) in pages capped in bytes, and an error never
  echoes a huge bad value.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest

from control_room.db.queries import query
from control_room.db.store import ContractError
from control_room.gateway.auth import mint_token
from tests.contract.conftest import SERVICE, HttpContract, Principal, new_run, phase
from tests.contract.snapshot import snapshot
from tests.helpers import TEST_JWT_SECRET, running_gateway


@pytest.fixture
def gateway(db_url: str) -> Iterator[str]:
    with running_gateway(db_url) as url:
        yield url


@pytest.fixture
def api(conn: psycopg.Connection[Any], gateway: str) -> Iterator[HttpContract]:
    with httpx.Client(base_url=gateway, timeout=60) as client:
        yield HttpContract(conn, client)


def principal(api: HttpContract, name: str, kind: str = "user",
              workspace_id: str | None = None, as_: Principal | None = None) -> Principal:
    args: dict[str, Any] = {"name": name, "kind": kind, "workspace_id": workspace_id}
    made = api.call("create_principal", args, as_=as_ or SERVICE)
    pins = (workspace_id,) if kind == "executor" and workspace_id else None
    return Principal("authenticated", uuid.UUID(made["id"]), name, pins=pins)


def refusal(api: HttpContract, fn: str, args: dict[str, Any], who: Principal) -> ContractError:
    with pytest.raises(ContractError) as info:
        api.call(fn, args, as_=who)
    return info.value


def test_another_workspaces_admin_cannot_revoke_this_ones_admin(api: HttpContract) -> None:
    alice, mallory = principal(api, "alice"), principal(api, "mallory")
    w1 = api.call("create_workspace", {"slug": "w1", "name": "W1"}, as_=alice)["id"]
    w2 = api.call("create_workspace", {"slug": "w2", "name": "W2"}, as_=mallory)["id"]
    # alice even joins W2 (she accepts mallory's invitation): W2's admin gains nothing
    api.call("invite_member", {"workspace_id": w2, "principal_id": str(alice.sub),
                               "role": "viewer"}, as_=mallory)
    api.call("accept_invitation", {"workspace_id": w2}, as_=alice)
    w1_runner = principal(api, "w1-runner", "executor", w1, as_=alice)
    api.call("add_member", {"workspace_id": w1, "principal_id": str(w1_runner.sub),
                            "role": "executor"}, as_=alice)
    nobodys = principal(api, "nobodys")
    before = snapshot(api.conn)
    for victim in (alice, w1_runner, nobodys):
        err = refusal(api, "revoke_principal", {"principal_id": str(victim.sub)}, mallory)
        assert (err.status, err.code) == (404, "not_found"), victim
        assert err.message == "principal not found"     # the same answer for every victim
    err = refusal(api, "revoke_principal", {"principal_id": str(uuid.uuid4())}, mallory)
    assert (err.status, err.code, err.message) == (404, "not_found", "principal not found")
    assert snapshot(api.conn) == before
    assert api.call("list_workspaces", {}, as_=alice)      # alice still works
    # W1's admin revokes what W1 owns; service_role revokes anyone
    assert api.call("revoke_principal", {"principal_id": str(w1_runner.sub)},
                    as_=alice)["revoked_at"] is not None
    err = refusal(api, "revoke_principal", {"principal_id": str(mallory.sub)}, alice)
    assert (err.status, err.code) == (404, "not_found")
    assert api.call("revoke_principal", {"principal_id": str(mallory.sub)})["revoked_by"] is None


def test_a_revoked_principal_gets_401_on_every_call(api: HttpContract, gateway: str) -> None:
    alice = principal(api, "alice")
    w1 = api.call("create_workspace", {"slug": "w1", "name": "W1"}, as_=alice)["id"]
    dev = principal(api, "dev", "user", w1, as_=alice)
    runner = principal(api, "runner", "executor", w1, as_=alice)
    for who, role in ((dev, "developer"), (runner, "executor")):
        api.call("add_member", {"workspace_id": w1, "principal_id": str(who.sub), "role": role},
                 as_=alice)
    run = new_run(api, w1, [phase("a"), phase("b")], as_=dev)
    claim = api.call("claim_phase", {}, as_=runner)
    assert claim["run_id"] == run["id"]
    for who in (dev, runner):
        api.call("revoke_principal", {"principal_id": str(who.sub)}, as_=alice)
    before = snapshot(api.conn)
    reads: list[tuple[str, dict[str, Any]]] = [
        ("list_runs", {}), ("list_runs", {"workspace_id": w1}), ("get_run", {"run_id": run["id"]}),
        ("list_events", {"run_id": run["id"]}), ("list_artifacts", {"run_id": run["id"]}),
        ("list_workspaces", {}), ("list_datasets", {}),
        ("get_run", {"run_id": str(uuid.uuid4())}),          # even what does not exist
    ]
    writes: list[tuple[str, dict[str, Any]]] = [
        ("create_run", {"workspace_id": w1, "spec_slug": "x", "git_sha": "0123abc",
                        "phases": [phase("z")]}),
        ("cancel_run", {"run_id": run["id"]}),
        ("create_workspace", {"slug": "escape", "name": "x"}),
        ("claim_phase", {}),
        ("heartbeat", {"lease_token": claim["lease_token"]}),
        ("complete_phase", {"lease_token": claim["lease_token"], "outcome": "succeeded"}),
        ("accept_invitation", {"workspace_id": w1}),
    ]
    for who in (dev, runner):
        for fn, args in reads + writes:
            err = refusal(api, fn, args, who)
            assert (err.status, err.code) == (401, "unauthorized"), f"{fn} as {who}: {err!r}"
    assert snapshot(api.conn) == before
    # the answer is PostgREST's: 401 with a Bearer challenge, the machine code in hint
    token = mint_token(TEST_JWT_SECRET, role="authenticated", sub=str(dev.sub), ttl_seconds=60)
    response = httpx.post(f"{gateway}/rest/v1/rpc/list_runs", json={}, headers={
        "Authorization": f"Bearer {token}", "Content-Profile": "ops"})
    assert response.status_code == 401, response.text
    assert response.json()["hint"] == "unauthorized"
    # the others are not affected
    assert api.call("get_run", {"run_id": run["id"]}, as_=alice)["id"] == run["id"]


def test_the_gateway_runs_the_pre_request_hook_with_the_request_settings() -> None:
    """One round trip: the hook is part of the statement that sets the request's settings."""
    for name in ("set_request_context", "set_request_context_positional"):
        text = query(name)
        assert text.index("request.jwt.claims") < text.index("ops_private.pre_request()"), name


def test_the_hook_is_one_lookup_in_the_revoked_index(conn: psycopg.Connection[Any]) -> None:
    """pre_request's query reads the partial index of revoked principals, however many
    principals there are (an index-only lookup of a small index)."""
    with conn.transaction():
        conn.execute("insert into ops.principals (kind, name) select 'user', 'p' || g"
                     " from generate_series(1, 20000) g")
        conn.execute("update ops.principals set revoked_at = now()"
                     " where name in ('p1', 'p2', 'p3')")
        conn.execute("analyze ops.principals")
        plan = "\n".join(str(r[0]) for r in conn.execute(
            "explain select 1 from ops.principals p where p.id = %s::uuid"
            " and p.revoked_at is not null", (str(uuid.uuid4()),)).fetchall())
    assert "principals_revoked_idx" in plan, plan
    assert "Seq Scan" not in plan, plan


# ---------------------------------------------------------------------------------------------
# what members read: summaries, capped errors
# ---------------------------------------------------------------------------------------------

def test_list_runs_answers_summaries_without_manifests(api: HttpContract, gateway: str) -> None:
    alice = principal(api, "alice")
    w1 = api.call("create_workspace", {"slug": "big", "name": "Big"}, as_=alice)["id"]
    manifest = {"rows": ["x" * 1000] * 1000}          # about 1 MB each
    ids = [new_run(api, w1, [phase("a")], as_=alice, input_manifest=manifest)["id"]
           for _ in range(10)]
    token = mint_token(TEST_JWT_SECRET, role="authenticated", sub=str(alice.sub), ttl_seconds=60)
    response = httpx.post(f"{gateway}/rest/v1/rpc/list_runs", json={"workspace_id": w1},
                          headers={"Authorization": f"Bearer {token}", "Content-Profile": "ops"},
                          timeout=60)
    assert response.status_code == 200
    assert len(response.content) < 20_000, len(response.content)
    runs = response.json()["runs"]
    assert sorted(r["id"] for r in runs) == sorted(ids)
    assert not {"input_manifest", "output_manifest", "phases"} & set(runs[0])
    assert runs[0]["phase_counts"] == {"queued": 1}
    # the manifest is get_run's
    assert api.call("get_run", {"run_id": ids[0]}, as_=alice)["input_manifest"] == manifest


def test_a_failed_runs_summary_carries_a_short_error(api: HttpContract) -> None:
    alice = principal(api, "alice")
    w1 = api.call("create_workspace", {"slug": "fails", "name": "Fails"}, as_=alice)["id"]
    runner = principal(api, "runner", "executor", w1, as_=alice)
    api.call("add_member", {"workspace_id": w1, "principal_id": str(runner.sub),
                            "role": "executor"}, as_=alice)
    run = new_run(api, w1, [phase("a", max_attempts=1)], as_=alice)
    claim = api.call("claim_phase", {}, as_=runner)
    api.call("complete_phase", {"lease_token": claim["lease_token"], "outcome": "failed",
                                "error": {"message": "boom " * 2000, "trace": "t" * 30000}},
             as_=runner)
    [summary] = api.call("list_runs", {"workspace_id": w1}, as_=alice)["runs"]
    assert summary["id"] == run["id"] and summary["state"] == "failed"
    assert summary["error"]["phase"] == "a"
    assert summary["error"]["message"].startswith("boom boom")
    assert len(summary["error"]["message"]) == 500
    assert "trace" not in json.dumps(summary)
    full = api.call("get_run", {"run_id": run["id"]}, as_=alice)
    assert full["error"]["error"]["trace"] == "t" * 30000


def test_a_page_of_runs_is_capped_in_bytes(api: HttpContract) -> None:
    """Labels are up to 16 KiB a run: 100 such runs would be 1.6 MB in one page of 500; the
    page stops at about 1 MiB and its cursor leads to the rest."""
    alice = principal(api, "alice")
    w1 = api.call("create_workspace", {"slug": "labels", "name": "Labels"}, as_=alice)["id"]
    labels = {f"k{i:02d}": "v" * 250 for i in range(60)}     # ~15.6 KiB of labels
    ids = {new_run(api, w1, [phase("a")], as_=alice, labels=labels)["id"] for _ in range(100)}
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        args: dict[str, Any] = {"workspace_id": w1, "limit": 500}
        if cursor:
            args["cursor"] = cursor
        page = api.call("list_runs", args, as_=alice)
        pages += 1
        assert len(json.dumps(page["runs"])) < 1_100_000
        seen += [r["id"] for r in page["runs"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
        assert page["runs"], "a page with a cursor has runs"
    assert pages >= 2
    assert len(seen) == len(set(seen)) and set(seen) == ids


def test_an_error_never_echoes_a_huge_value(api: HttpContract) -> None:
    alice = principal(api, "alice")
    w1 = api.call("create_workspace", {"slug": "w1", "name": "W1"}, as_=alice)["id"]
    huge = "A" * (7 * 1024 * 1024)
    for fn, args in (("create_workspace", {"slug": huge, "name": "x"}),
                     ("create_workspace", {"slug": "fine", "name": "x", "env": huge}),
                     ("create_principal", {"name": "x", "kind": huge, "workspace_id": w1}),
                     ("add_member", {"workspace_id": w1, "principal_id": str(alice.sub),
                                     "role": huge})):
        err = refusal(api, fn, args, alice)
        assert (err.status, err.code) == (400, "invalid_argument"), err
        assert len(err.message) <= 1100, (fn, len(err.message))
        assert len(str(err.details or "")) <= 2100


def test_fail_caps_the_message_and_the_details(conn: psycopg.Connection[Any]) -> None:
    """ops_private.fail, the one way the functions raise: 1000 characters of message (marked),
    details of at most 2 KiB (long members dropped, short ones such as `argument` kept)."""
    with pytest.raises(psycopg.Error) as info, conn.transaction():
        conn.execute("select ops_private.fail(400, 'invalid_argument', repeat('m', 5000000),"
                     " jsonb_build_object('argument', 'slug', 'value', repeat('v', 5000000)))")
    diag = info.value.diag
    assert diag.sqlstate == "PT400" and diag.message_hint == "invalid_argument"
    assert diag.message_primary is not None and diag.message_detail is not None
    assert len(diag.message_primary) < 1100
    assert diag.message_primary.endswith("(truncated)")
    assert json.loads(diag.message_detail) == {"argument": "slug", "truncated": True}
    with pytest.raises(psycopg.Error) as info, conn.transaction():
        conn.execute("select ops_private.fail(404, 'not_found', 'run not found',"
                     " '{\"argument\": \"run_id\"}'::jsonb)")
    assert info.value.diag.message_primary == "run not found"            # short: untouched
    assert json.loads(str(info.value.diag.message_detail)) == {"argument": "run_id"}
