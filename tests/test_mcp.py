"""The MCP server (control_room.mcp) in process, through the SDK's client over memory streams,
against the real gateway over real HTTP and a real PostgreSQL: one database, gateway and set
of members for the whole module. An executor token claims, reports and completes a phase; a
developer token starts a job run, waits for it (progress notifications) and cancels one; a
viewer's write call is the contract's 403 as a tool error."""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx2
import psycopg
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp_types import CallToolResult
from typer.testing import CliRunner

from control_room.cli import app
from control_room.contract import ContractClient
from control_room.gateway.app import serving
from control_room.mcp import build_server
from control_room.mcp.descriptions import operations
from control_room.mcp.server import READ_TOOLS, WRITE_TOOLS, BearerClients
from tests.contract.conftest import Principal
from tests.contract.jobspec import job_spec, register
from tests.executor.harness import Env, gateway_env
from tests.helpers import running_gateway, temporary_database
from tests.semantic.gold import RUN_ID, TODAY, create_gold

JOB = "mcp-job"
DIGEST = "blake3:" + "ab" * 32


@pytest.fixture(scope="module")
def env(module_db_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    with psycopg.connect(module_db_url) as conn, \
            gateway_env(conn, module_db_url, tmp_path_factory.mktemp("mcp")) as environment:
        register(environment.contract, environment.world.w1, JOB, as_=environment.world.dev1,
                 spec=job_spec(JOB, params={}, phases=[{
                     "name": "only", "kind": "agent", "depends_on": [], "max_attempts": 1,
                     "timeout_seconds": 60, "retry_backoff_seconds": 1, "params": {}}]))
        yield environment


def with_client(env: Env, who: Principal, body: Callable[[Client], Awaitable[Any]], *,
                writes: bool = False) -> Any:
    """Run `body` with an MCP client of a server holding `who`'s token."""
    server = build_server(env.client(who), allow_writes=writes)

    async def main() -> Any:
        async with Client(server, mode="legacy") as client:
            return await body(client)

    return anyio.run(main)


def answer(result: CallToolResult) -> dict[str, Any]:
    assert not result.is_error, result.content
    text = result.content[0]
    assert text.type == "text"
    value: dict[str, Any] = json.loads(text.text)
    return value


def error(result: CallToolResult) -> str:
    assert result.is_error
    text = result.content[0]
    assert text.type == "text"
    return text.text


def test_tools_are_read_only_unless_writes_are_allowed(env: Env) -> None:
    async def listing(client: Client) -> Any:
        return (await client.list_tools()).tools

    read_only = with_client(env, env.world.viewer1, listing)
    assert [t.name for t in read_only] == list(READ_TOOLS)
    for t in read_only:
        assert t.annotations is not None and t.annotations.read_only_hint is True, t.name
        assert t.input_schema["type"] == "object"
    described = {t.name: t.description or "" for t in read_only}
    assert described["list_events"].startswith(operations()["list_events"].summary)
    assert "still running" in described["wait_for_run"]
    schema = next(t for t in read_only if t.name == "wait_for_run").input_schema
    assert schema["required"] == ["run_id"] and schema["properties"]["timeout_seconds"][
        "maximum"] < 60

    writable = with_client(env, env.world.dev1, listing, writes=True)
    by_name = {t.name: t for t in writable}
    assert set(by_name) == set(READ_TOOLS) | set(WRITE_TOOLS)
    for name in WRITE_TOOLS:
        hints = by_name[name].annotations
        assert hints is not None and hints.read_only_hint is False, name
        assert hints.destructive_hint is (name == "cancel_run"), name
    assert by_name["complete_phase"].annotations.idempotent_hint is True
    assert by_name["start_job_run"].annotations.idempotent_hint is False
    assert (by_name["claim_phase"].description or "").startswith(
        operations()["claim_phase"].summary)


def test_an_executor_claims_reports_and_completes_a_phase(env: Env) -> None:
    run_id = env.new_run({"name": "only", "kind": "agent", "depends_on": []})

    async def work(client: Client) -> dict[str, Any]:
        claim = answer(await client.call_tool("claim_phase", {
            "kinds": ["agent"], "run_id": run_id, "lease_seconds": 120}))
        assert claim["claimed"] is True and claim["run_id"] == run_id
        token = claim["lease_token"]
        beat = answer(await client.call_tool("heartbeat", {"lease_token": token,
                                                           "progress": {"done": 1}}))
        assert beat["cancel_requested"] is False
        appended = answer(await client.call_tool("append_events", {
            "run_id": run_id, "lease_token": token,
            "events": [{"type": "LOG", "message": "the agent did it", "level": "info"}]}))
        assert len(appended["event_ids"]) == 1
        artifact = answer(await client.call_tool("register_artifact", {
            "lease_token": token, "digest": DIGEST, "uri": "file:///tmp/answer.txt",
            "size_bytes": 42, "media_type": "text/plain", "name": "answer"}))
        assert artifact["digest"] == DIGEST
        done = answer(await client.call_tool("complete_phase", {
            "lease_token": token, "outcome": "succeeded", "output_manifest": {"rows": 1}}))
        again = answer(await client.call_tool("complete_phase", {
            "lease_token": token, "outcome": "succeeded", "output_manifest": {"rows": 1}}))
        assert again["replayed"] is True
        none = answer(await client.call_tool("claim_phase", {"run_id": run_id}))
        assert none == {"claimed": False}
        return done

    with_client(env, env.world.exec1, work, writes=True)

    async def read(client: Client) -> tuple[Any, ...]:
        run = answer(await client.call_tool("get_run", {"run_id": run_id}))
        events = answer(await client.call_tool("list_events", {"run_id": run_id, "limit": 2}))
        more = answer(await client.call_tool("list_events", {
            "run_id": run_id, "after": events["next_after"]}))
        artifacts = answer(await client.call_tool("list_artifacts", {"run_id": run_id}))
        stream = await client.read_resource(f"control-room://runs/{run_id}/events")
        tail = await client.read_resource(
            f"control-room://runs/{run_id}/events?after={events['next_after']}")
        return run, events, more, artifacts, stream, tail

    run, events, more, artifacts, stream, tail = with_client(env, env.world.viewer1, read)
    assert run["state"] == "succeeded"
    assert len(events["events"]) == 2
    seqs = [e["seq"] for e in events["events"] + more["events"]]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert "the agent did it" in [e["message"] for e in more["events"] + events["events"]]
    assert [a["digest"] for a in artifacts["artifacts"]] == [DIGEST]
    whole = json.loads(stream.contents[0].text)
    assert whole["complete"] is True
    assert [e["seq"] for e in whole["events"]] == seqs
    assert [e["seq"] for e in json.loads(tail.contents[0].text)["events"]] == seqs[2:]


def test_a_developer_starts_waits_for_and_cancels_job_runs(env: Env) -> None:
    seen: list[tuple[float, float | None, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append((progress, total, message))

    async def start(client: Client) -> tuple[dict[str, Any], dict[str, Any]]:
        run = answer(await client.call_tool("start_job_run", {
            "workspace_id": env.world.w1, "job": JOB, "labels": {"by": "mcp"}}))
        assert run["state"] == "queued" and run["created"] is True
        waited = answer(await client.call_tool(
            "wait_for_run", {"run_id": run["run_id"], "timeout_seconds": 1.2},
            progress_callback=on_progress))
        return run, waited

    run, waited = with_client(env, env.world.dev1, start, writes=True)
    assert waited["outcome"] == "still running" and waited["state"] == "queued"
    assert 1.2 <= waited["waited_seconds"] < 5
    assert len(seen) >= 2
    assert all(total == 1.2 for _, total, _ in seen)
    assert [p for p, _, _ in seen] == sorted(p for p, _, _ in seen)
    assert "0 of 1 phases finished" in (seen[-1][2] or "")

    # an executor does the work; the next wait sees the end
    executor = env.client(env.world.exec1)
    claim = executor.claim_phase(["agent"], run_id=run["run_id"])
    assert claim is not None
    executor.complete_phase(claim.lease_token, "succeeded")

    async def finish_and_cancel(client: Client) -> tuple[Any, ...]:
        finished = answer(await client.call_tool("wait_for_run", {"run_id": run["run_id"]}))
        other = answer(await client.call_tool("start_job_run", {
            "workspace_id": env.world.w1, "job": JOB}))
        cancelled = answer(await client.call_tool("cancel_run", {
            "run_id": other["run_id"], "reason": "not needed"}))
        after = answer(await client.call_tool("wait_for_run", {"run_id": other["run_id"]}))
        jobs = answer(await client.call_tool("list_jobs", {"workspace_id": env.world.w1}))
        runs = answer(await client.call_tool("list_runs", {
            "workspace_id": env.world.w1, "labels": {"by": "mcp"}}))
        return finished, cancelled, after, jobs, runs

    finished, cancelled, after, jobs, runs = with_client(env, env.world.dev1,
                                                         finish_and_cancel, writes=True)
    assert (finished["outcome"], finished["state"]) == ("finished", "succeeded")
    assert finished["waited_seconds"] < 1
    assert cancelled["state"] == "cancelled"
    assert (after["outcome"], after["state"]) == ("finished", "cancelled")
    assert JOB in [j["slug"] for j in jobs["jobs"]]
    assert [r["id"] for r in runs["runs"]] == [run["run_id"]]


def test_refusals_are_tool_errors_naming_the_code(env: Env) -> None:
    async def refused(client: Client) -> tuple[str, ...]:
        start = error(await client.call_tool("start_job_run", {
            "workspace_id": env.world.w1, "job": JOB}))
        claim = error(await client.call_tool("claim_phase", {"kinds": ["agent"]}))
        missing = error(await client.call_tool("get_run", {"run_id": str(uuid.uuid4())}))
        bound = error(await client.call_tool("wait_for_run", {"run_id": str(uuid.uuid4()),
                                                             "timeout_seconds": 600}))
        return start, claim, missing, bound

    start, claim, missing, bound = with_client(env, env.world.viewer1, refused, writes=True)
    assert ": forbidden (HTTP 403) in create_job_run: " in start, start
    assert ": forbidden (HTTP 403) in claim_phase: " in claim, claim
    assert ": not_found (HTTP 404) in get_run: " in missing, missing
    assert "timeout_seconds" in bound
    for text in (start, claim, missing):
        assert "Traceback" not in text and env.contract.token(env.world.viewer1) not in text

    async def unlisted(client: Client) -> str:
        return error(await client.call_tool("start_job_run", {
            "workspace_id": env.world.w1, "job": JOB}))

    assert "start_job_run" in with_client(env, env.world.dev1, unlisted)   # read-only server



def test_over_http_each_request_calls_with_its_own_token(env: Env) -> None:
    """`control-room mcp --http`'s server (BearerClients): the token is each request's own."""
    clients = BearerClients(env.rest_url)
    mcp_app = build_server(clients, allow_writes=True).streamable_http_app()
    run_id = env.new_run({"name": "only", "kind": "agent", "depends_on": []})

    async def as_(token: str | None) -> tuple[str, str, str]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with httpx2.AsyncClient(headers=headers, timeout=30) as http, \
                Client(streamable_http_client(f"{url}/mcp", http_client=http)) as client:
            got = await client.call_tool("get_run", {"run_id": run_id})
            start = await client.call_tool("start_job_run", {"workspace_id": env.world.w1,
                                                             "job": JOB})
            listed = await client.list_tools()
            assert {t.name for t in listed.tools} >= set(WRITE_TOOLS)
            texts = [r.content[0].text for r in (got, start)]  # type: ignore[union-attr]
            return texts[0], texts[1], ("error" if start.is_error else "ok")

    try:
        with serving(mcp_app) as url:
            viewer = anyio.run(as_, env.contract.token(env.world.viewer1))
            developer = anyio.run(as_, env.contract.token(env.world.dev1))
            nobody = anyio.run(as_, None)
    finally:
        clients.close()
    assert json.loads(viewer[0])["state"] == "queued"
    assert ": forbidden (HTTP 403) in create_job_run: " in viewer[1] and viewer[2] == "error"
    assert json.loads(developer[1])["state"] == "queued" and developer[2] == "ok"
    assert "unauthorized (HTTP 401)" in nobody[0] and "Authorization: Bearer" in nobody[0]


def test_the_command_reports_bad_input_without_a_traceback(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    environment = {"CONTROL_ROOM_GATEWAY_URL": None, "CONTROL_ROOM_TOKEN": None,
                   "CONTROL_ROOM_STATE_DIR": str(tmp_path / "state")}
    for args in (["mcp"], ["mcp", "--http"], ["mcp", "--http", "--gateway", "ftp://x"]):
        result = CliRunner().invoke(app, args, env=environment)
        assert result.exit_code == 2, (args, result.output)
        assert "Traceback" not in result.output and "error: " in result.stderr
    assert "no gateway configured" in CliRunner().invoke(app, ["mcp"], env=environment).stderr
    # without the extra: the SDK (and so the server package) cannot be imported
    monkeypatch.setitem(sys.modules, "control_room.mcp", None)
    result = CliRunner().invoke(app, ["mcp"], env=environment)
    assert result.exit_code == 2
    assert "needs the mcp extra: pip install 'lakehouse-control-room[mcp]'" in result.stderr


def test_ask_answers_with_its_sql_and_asks_back_when_unsure(
        env: Env, pg_admin_url: str, module_db_url: str) -> None:
    """The ask tool (ContractClient.ask) through a gateway with a warehouse over a real gold
    schema; without a warehouse the 503 is a tool error naming its code."""
    async def questions(client: Client) -> tuple[Any, ...]:
        tools = {t.name: t for t in (await client.list_tools()).tools}
        answered = answer(await client.call_tool("ask", {
            "workspace_id": env.world.w1, "question": "revenue by month for Oak Labs in 2026",
            "today": TODAY.isoformat()}))
        unsure = answer(await client.call_tool("ask", {
            "workspace_id": env.world.w1, "question": "invoices by month",
            "today": TODAY.isoformat()}))
        other = error(await client.call_tool("ask", {"workspace_id": env.world.w2,
                                                     "question": "revenue"}))
        return tools["ask"], answered, unsure, other

    async def main(server: Any) -> tuple[Any, ...]:
        async with Client(server, mode="legacy") as client:
            return await questions(client)

    with temporary_database(pg_admin_url, suffix="gold") as gold:
        create_gold(gold)
        with running_gateway(module_db_url, warehouse_read_url=gold) as url, \
                ContractClient(f"{url}/rest/v1", env.contract.token(env.world.viewer1)) as viewer:
            listed, answered, unsure, other = anyio.run(main, build_server(viewer))
    assert listed.annotations.read_only_hint is True
    assert (listed.description or "").startswith("Ask a question about the workspace's gold")
    assert answered["status"] == "answer" and answered["certified"] is True
    assert answered["columns"] == ["month", "currency", "revenue"]
    assert "'Oak Labs'" in answered["sql"] and answered["lineage"][0]["run_id"] == RUN_ID
    assert unsure["status"] == "clarify" and len(unsure["readings"]) >= 2
    assert ": forbidden (HTTP 403) in ask: " in other

    async def without(client: Client) -> str:
        return error(await client.call_tool("ask", {"workspace_id": env.world.w1,
                                                    "question": "revenue"}))

    assert "(HTTP 503) in ask: " in with_client(env, env.world.viewer1, without)


def test_the_gateway_serves_mcp_at_slash_mcp_with_each_requests_token(
        env: Env, module_db_url: str) -> None:
    """CONTROL_ROOM_MCP=write: /mcp on the gateway itself; its tools call back into the same
    gateway with the request's own token (a viewer's write is the contract's 403)."""
    run_id = env.new_run({"name": "only", "kind": "agent", "depends_on": []})

    async def as_(url: str, token: str | None) -> tuple[str, str, list[str]]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with httpx2.AsyncClient(headers=headers, timeout=30) as http, \
                Client(streamable_http_client(f"{url}/mcp", http_client=http)) as client:
            # concurrent calls: the tools wait on RPCs served by this same process
            results: list[CallToolResult] = []

            async def get() -> None:
                results.append(await client.call_tool("get_run", {"run_id": run_id}))

            async with anyio.create_task_group() as group:
                for _ in range(8):
                    group.start_soon(get)
            start = await client.call_tool("start_job_run", {"workspace_id": env.world.w1,
                                                             "job": JOB})
            tools = [t.name for t in (await client.list_tools()).tools]
            texts = [r.content[0].text for r in (results[0], start)]  # type: ignore[union-attr]
            assert len({r.is_error for r in results}) == 1   # all answered alike
            return texts[0], texts[1], tools

    with running_gateway(module_db_url, mcp="write") as url:
        viewer = anyio.run(as_, url, env.contract.token(env.world.viewer1))
        developer = anyio.run(as_, url, env.contract.token(env.world.dev1))
        nobody = anyio.run(as_, url, None)
        # the contract is still served beside it
        assert httpx2.get(f"{url}/health").status_code == 200
    assert json.loads(viewer[0])["id"] == run_id
    assert ": forbidden (HTTP 403) in create_job_run: " in viewer[1]
    assert json.loads(developer[1])["state"] == "queued"
    assert set(developer[2]) == set(READ_TOOLS) | set(WRITE_TOOLS)
    assert "unauthorized (HTTP 401)" in nobody[0]
    with running_gateway(module_db_url, mcp="read") as url:
        read_only = anyio.run(as_, url, env.contract.token(env.world.dev1))
    assert set(read_only[2]) == set(READ_TOOLS)
    assert "Unknown tool" in read_only[1] or "start_job_run" in read_only[1]
    with running_gateway(module_db_url) as url:   # off by default: no /mcp
        assert httpx2.post(f"{url}/mcp", json={}).status_code == 404
