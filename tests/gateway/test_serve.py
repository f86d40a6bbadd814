"""`control-room serve` as a user runs it: a process on a port, stopped with a signal."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from control_room.gateway.auth import mint_token
from tests.helpers import TEST_JWT_SECRET


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def environment(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONTROL_ROOM_")}
    env.update(extra)
    return env


def wait_healthy(url: str, process: subprocess.Popen[bytes], seconds: float = 60) -> httpx.Response:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stderr.read().decode() if process.stderr else ""
        try:
            response = httpx.get(f"{url}/health", timeout=2)
            if response.status_code == 200:
                return response
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError("control-room serve did not become healthy")


@pytest.fixture
def serve() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait(10)


def start(serve: list[subprocess.Popen[bytes]], args: list[str],
          env: dict[str, str]) -> subprocess.Popen[bytes]:
    process = subprocess.Popen([sys.executable, "-m", "control_room", "serve", *args], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    serve.append(process)
    return process


def test_serve_a_configured_database(db_url: str, serve: list[subprocess.Popen[bytes]]) -> None:
    port = free_port()
    process = start(serve, ["--port", str(port), "--database-url", db_url],
                    environment(CONTROL_ROOM_JWT_SECRET=TEST_JWT_SECRET))
    url = f"http://127.0.0.1:{port}"
    health = wait_healthy(url, process).json()
    assert health["migrations"] == "current"
    # the change-feed listener connects in the background: "polling" until it has
    deadline = time.monotonic() + 30
    while health["listener"] != "connected" and time.monotonic() < deadline:
        time.sleep(0.1)
        health = httpx.get(f"{url}/health", timeout=2).json()
    assert health["listener"] == "connected", health
    token = mint_token(TEST_JWT_SECRET, role="service_role", ttl_seconds=60)
    response = httpx.post(f"{url}/rest/v1/rpc/create_workspace",
                          json={"slug": "served", "name": "Served"},
                          headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200 and response.json()["slug"] == "served"
    process.send_signal(signal.SIGTERM)
    assert process.wait(20) == 0
    stderr = process.stderr.read().decode() if process.stderr else ""
    assert "Traceback" not in stderr


@pytest.mark.slow
def test_serve_with_nothing_configured(tmp_path: Path,
                                       serve: list[subprocess.Popen[bytes]]) -> None:
    """The embedded database, migrated, and a secret generated into the state directory;
    `token create` finds the same secret there."""
    port = free_port()
    env = environment()
    process = start(serve, ["--port", str(port), "--state-dir", str(tmp_path)], env)
    url = f"http://127.0.0.1:{port}"
    assert wait_healthy(url, process, seconds=120).json()["migrations"] == "current"
    assert (tmp_path / "jwt_secret").exists()
    created = subprocess.run(
        [sys.executable, "-m", "control_room", "token", "create", "--service", "--state-dir",
         str(tmp_path)], env=env, capture_output=True, text=True, timeout=60, check=True)
    token = created.stdout.strip()
    response = httpx.post(f"{url}/rest/v1/rpc/list_workspaces", json={},
                          headers={"Authorization": f"Bearer {token}"})
    assert (response.status_code, response.json()) == (200, [])
    forged = mint_token("not-the-secret-" * 4, role="service_role", ttl_seconds=60)
    response = httpx.post(f"{url}/rest/v1/rpc/list_workspaces", json={},
                          headers={"Authorization": f"Bearer {forged}"})
    assert response.status_code == 401
    process.send_signal(signal.SIGINT)
    assert process.wait(60) == 0
    # the embedded server it started is stopped with it
    port_file = (tmp_path / "port").read_text().strip()
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", int(port_file))) != 0
