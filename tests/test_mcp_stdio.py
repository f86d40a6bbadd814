"""End to end: `control-room mcp --allow-writes` as a subprocess, spoken to over stdio by the
SDK's client, against the real gateway: a developer lists the tools, starts a job run, waits
for it (progress notifications over JSON-RPC), reads its event stream and cancels it."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import anyio
import psycopg
from mcp import Client, StdioServerParameters

from control_room.mcp.server import READ_TOOLS, WRITE_TOOLS
from tests.contract.jobspec import job_spec, register
from tests.executor.harness import REPO, gateway_env

JOB = "stdio-job"


def test_control_room_mcp_over_stdio(conn: psycopg.Connection[Any], db_url: str,
                                     tmp_path: Path) -> None:
    with gateway_env(conn, db_url, tmp_path) as env:
        world = env.world
        register(env.contract, world.w1, JOB, as_=world.dev1, spec=job_spec(
            JOB, params={}, phases=[{"name": "only", "kind": "agent", "depends_on": [],
                                     "params": {}}]))
        params = StdioServerParameters(
            command=sys.executable, args=["-m", "control_room.cli", "mcp", "--allow-writes"],
            cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO),
                           "CONTROL_ROOM_GATEWAY_URL": env.rest_url,
                           "CONTROL_ROOM_TOKEN": env.contract.token(world.dev1),
                           "CONTROL_ROOM_STATE_DIR": str(tmp_path / "state")})
        messages: list[str | None] = []

        async def on_progress(progress: float, total: float | None, message: str | None) -> None:
            messages.append(message)

        async def session() -> tuple[Any, ...]:
            async with Client(params, read_timeout_seconds=60) as client:
                tools = [t.name for t in (await client.list_tools()).tools]
                started = await client.call_tool("start_job_run", {
                    "workspace_id": world.w1, "job": JOB})
                run = json.loads(started.content[0].text)  # type: ignore[union-attr]
                waited = await client.call_tool(
                    "wait_for_run", {"run_id": run["run_id"], "timeout_seconds": 1},
                    progress_callback=on_progress)
                cancelled = await client.call_tool("cancel_run", {"run_id": run["run_id"]})
                stream = await client.read_resource(
                    f"control-room://runs/{run['run_id']}/events")
                return tools, run, waited, cancelled, stream

        tools, run, waited, cancelled, stream = anyio.run(session)

    assert set(tools) == set(READ_TOOLS) | set(WRITE_TOOLS)
    assert run["state"] == "queued"
    assert not waited.is_error
    assert json.loads(waited.content[0].text)["outcome"] == "still running"
    assert messages and "phases finished" in (messages[-1] or "")
    assert json.loads(cancelled.content[0].text)["state"] == "cancelled"
    events = json.loads(stream.contents[0].text)["events"]
    assert "RUN_CANCELLED" in {e["type"] for e in events}, events
