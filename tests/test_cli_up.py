"""`control-room up` as a real process tree: the embedded database, the gateway on a real
port, worker processes; a run goes through it; SIGINT stops everything; a second `up`
reuses the state directory."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.executor.harness import REPO, wait_for


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_up(state: Path, port: int, *args: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONTROL_ROOM_")}
    return subprocess.Popen(
        [sys.executable, "-m", "control_room", "up", "--state-dir", str(state),
         "--port", str(port), "--workers", "1", *args],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True)


def stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=60)
    return output


def rpc(stack: dict[str, Any], fn: str, args: dict[str, Any]) -> Any:
    answer = httpx.post(f"{stack['gateway_url']}/rpc/{fn}", json=args, timeout=10,
                        headers={"Authorization": f"Bearer {stack['token']}",
                                 "Content-Profile": "ops", "Accept-Profile": "ops"})
    assert answer.status_code == 200, answer.text
    return answer.json()


def alive_children(pid: int) -> list[str]:
    """Live (not zombie) processes still in the stack's session (workers, the database)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            if os.getsid(int(entry.name)) == pid and status != "Z":
                found.append((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode())
        except (ProcessLookupError, PermissionError, FileNotFoundError):
            continue
    return found


@pytest.mark.timeout(240)
def test_up_runs_phases_and_stops_cleanly_and_a_second_up_reuses_state(tmp_path: Path) -> None:
    state = tmp_path / "state"
    port = free_port()
    proc = start_up(state, port)
    try:
        stack_file = state / "stack.json"
        wait_for("stack.json", stack_file.exists, bound=120)
        assert stack_file.stat().st_mode & 0o777 == 0o600
        stack = json.loads(stack_file.read_text())
        assert stack["gateway_url"] == f"http://127.0.0.1:{port}/rest/v1"
        health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).json()
        assert health["status"] == "ok" and health["migrations"] == "current"

        # `runs create --wait` and `verify` find the stack through stack.json alone
        cli = [sys.executable, "-m", "control_room"]
        env = {k: v for k, v in os.environ.items() if not k.startswith("CONTROL_ROOM_")}
        created = subprocess.run(
            [*cli, "runs", "create", "--spec", "specs/example.yaml",
             "--wait", "--json", "--state-dir", str(state)],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
        assert created.returncode == 0, created.stderr
        example = json.loads(created.stdout)
        assert example["state"] == "succeeded"
        verified = subprocess.run(
            [*cli, "verify", example["id"], "--json", "--state-dir", str(state)],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
        assert verified.returncode == 0, verified.stderr + verified.stdout

        # the operator token creates a run over HTTP; a worker of the stack runs it
        run = rpc(stack, "create_run", {
            "workspace_id": stack["workspace_id"], "spec_slug": "up-test", "git_sha": "abc1234",
            "phases": [{"name": "hello", "kind": "python", "params": {
                "entrypoint": "tests.executor.worker_entrypoints:produce"}}]})

        def finished() -> bool:
            state_now = rpc(stack, "get_run", {"run_id": run["id"]})["state"]
            return state_now in ("succeeded", "failed", "cancelled")

        wait_for("the run to finish", finished, bound=60)
        assert rpc(stack, "get_run", {"run_id": run["id"]})["state"] == "succeeded"
    finally:
        output = stop(proc)
    assert proc.returncode == 0, output
    assert "Stopped." in output
    assert not (state / "stack.json").exists()
    assert alive_children(proc.pid) == []

    # a second `up` on the same state directory: same workspace, the earlier run is there
    proc = start_up(state, port)
    try:
        wait_for("stack.json again", (state / "stack.json").exists, bound=120)
        again = json.loads((state / "stack.json").read_text())
        assert again["workspace_id"] == stack["workspace_id"]
        runs = rpc(again, "list_runs", {"workspace_id": again["workspace_id"]})
        assert {r["id"] for r in runs["runs"]} >= {run["id"], example["id"]}
    finally:
        output = stop(proc)
    assert proc.returncode == 0, output


def test_up_on_a_taken_port_says_so(tmp_path: Path, db_url: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if not k.startswith("CONTROL_ROOM_")}
        result = subprocess.run(
            [sys.executable, "-m", "control_room", "up", "--state-dir", str(tmp_path),
             "--port", str(port), "--workers", "0", "--database-url", db_url],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "stack.json").exists()
