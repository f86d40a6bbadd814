"""Supabase's own clients (supabase-py and postgrest-py) against the gateway, unchanged:
what works against a Supabase project works against `control-room serve`."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from postgrest import SyncPostgrestClient
from postgrest.exceptions import APIError

from control_room.gateway.auth import mint_token
from supabase import ClientOptions, create_client
from tests.helpers import TEST_JWT_SECRET, running_gateway

# supabase-py 2.34 passes these to postgrest-py itself; nothing of ours to change
pytestmark = [
    pytest.mark.filterwarnings("ignore:The 'timeout' parameter is deprecated"),
    pytest.mark.filterwarnings("ignore:The 'verify' parameter is deprecated"),
]


@pytest.fixture
def gateway_url(db_url: str) -> Iterator[str]:
    with running_gateway(db_url) as url:
        yield url


def rpc(client: Any, fn: str, args: dict[str, Any]) -> Any:
    """`client.rpc(fn, args).execute().data`, untyped: postgrest-py types results as JSON."""
    return client.rpc(fn, args).execute().data


def token(role: str, sub: str | None = None, workspaces: list[str] | None = None) -> str:
    return mint_token(TEST_JWT_SECRET, role=role, sub=sub, ttl_seconds=600,
                      workspaces=workspaces)


def setup_workspace(url: str) -> dict[str, Any]:
    """A workspace with a developer and an executor, made with supabase-py as service_role."""
    service = create_client(url, token("service_role"), options=ClientOptions(schema="ops"))
    ws = rpc(service, "create_workspace", {"slug": "lake", "name": "Lake"})
    ids: dict[str, Any] = {"workspace_id": ws["id"]}
    for role in ("developer", "executor"):
        principal = rpc(service, "create_principal", {"name": role})
        rpc(service, "add_member", {"workspace_id": ws["id"], "principal_id": principal["id"],
                                   "role": role})
        ids[role] = principal["id"]
    return ids


def test_supabase_py_runs_the_executor_protocol(gateway_url: str) -> None:
    ids = setup_workspace(gateway_url)
    anon_key = token("anon")

    def as_(principal: str, workspaces: list[str] | None = None) -> Any:
        bearer = token("authenticated", principal, workspaces)
        return create_client(gateway_url, anon_key, options=ClientOptions(
            schema="ops", headers={"Authorization": f"Bearer {bearer}"}))

    # the executor's token is pinned to its workspace, as `control-room token create` mints it
    developer = as_(ids["developer"])
    executor = as_(ids["executor"], [ids["workspace_id"]])
    run = rpc(developer, "create_run", {
        "workspace_id": ids["workspace_id"], "spec_slug": "odoo-medallion", "git_sha": "abcdef1",
        "phases": [{"name": "bronze", "kind": "python"}]})
    claim = rpc(executor, "claim_phase", {"kinds": ["python"], "lease_seconds": 30})
    assert claim["run_id"] == run["id"]
    beat = rpc(executor, "heartbeat", {"lease_token": claim["lease_token"],
                                      "progress": {"pct": 50}})
    assert beat["cancel_requested"] is False
    appended = rpc(executor, "append_events", {
        "run_id": run["id"], "lease_token": claim["lease_token"],
        "events": [{"event_id": str(uuid.uuid4()), "phase": "bronze", "type": "PHASE_STARTED"}],
    })
    assert appended["appended"] == 1
    artifact = rpc(executor, "register_artifact", {
        "lease_token": claim["lease_token"], "digest": "blake3:" + "9" * 64,
        "uri": "file:///lake/bronze", "size_bytes": 10, "kind": "table"})
    assert artifact["created"] is True
    done = rpc(executor, "complete_phase", {"lease_token": claim["lease_token"],
                                           "outcome": "succeeded"})
    assert done["run_state"] == "succeeded"
    events = rpc(developer, "list_events", {"run_id": run["id"]})["events"]
    assert [e["type"] for e in events][-1] == "RUN_SUCCEEDED"

    with pytest.raises(APIError) as info:
        rpc(executor, "heartbeat", {"lease_token": claim["lease_token"]})
    assert (info.value.code, info.value.hint) == ("PT409", "lease_lost")
    with pytest.raises(APIError) as info:
        rpc(developer, "get_run", {"run_id": "nope"})
    assert (info.value.code, info.value.hint) == ("PT400", "invalid_argument")
    assert "run_id" in (info.value.message or "")


def test_postgrest_py_against_the_gateway(gateway_url: str, conn: psycopg.Connection[Any]) -> None:
    ids = setup_workspace(gateway_url)
    headers = {"Authorization": f"Bearer {token('authenticated', ids['developer'])}"}
    with SyncPostgrestClient(f"{gateway_url}/rest/v1", schema="ops", headers=headers) as client:
        run = rpc(client, "create_run", {
            "workspace_id": ids["workspace_id"], "spec_slug": "demo", "git_sha": "abcdef1",
            "phases": [{"name": "a", "kind": "sql"}]})
        assert run["state"] == "queued"
        listed = rpc(client, "list_runs", {"workspace_id": ids["workspace_id"]})
        assert [r["id"] for r in listed["runs"]] == [run["id"]]
        with pytest.raises(APIError) as info:
            rpc(client, "claim_phase", {})      # a developer is not an executor
        assert (info.value.code, info.value.hint) == ("PT403", "forbidden")
        with pytest.raises(APIError) as info:
            rpc(client, "create_run", {"workspace_id": ids["workspace_id"], "spec_slug": "demo",
                                      "git_sha": "abcdef1", "phases": [
                                          {"name": "a", "kind": "sql", "depends_on": ["a"]}]}
                       )
        assert info.value.code == "PT400" and "depends on itself" in (info.value.message or "")
    with conn.transaction():
        count = conn.execute("select count(*) from ops.runs").fetchone()
    assert count == (1,)
