"""Issue 10, item 3: a run's connection cannot make the worker resolve a secret of its own.

Through the real gateway and a real worker: connections are registered in ops (references
only), and the worker resolves a reference only when its workspace registered it AND the
worker's CONTROL_ROOM_SECRET_ALLOW allows it; its own CONTROL_ROOM_* never. A refused
reference fails the phase terminally naming the missing policy entry, and the value it
points at appears nowhere: not in events, the phase error, artifacts, the worker's log, or
any table of the control plane's database. Resolved values are masked (`***`) in whatever
the attempt sends, and the python phase's process has neither the worker's token nor the
variables the policy allows in its environment.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from control_room.contract.client import InvalidArgument
from executor.kinds.python import PythonContext
from tests.contract.conftest import phase
from tests.executor.harness import Env, Running, gateway_env

TOKEN_VALUE = "eyJ-the-workers-own-token-" + uuid.uuid4().hex
JWT_VALUE = "the-gateways-jwt-signing-secret-" + uuid.uuid4().hex
OUTSIDE_VALUE = "a-file-outside-the-allowed-dir-" + uuid.uuid4().hex
ENV_VALUE = "an-allowed-env-secret-" + uuid.uuid4().hex
FILE_VALUE = "an-allowed-file-secret-" + uuid.uuid4().hex
W2_VALUE = "the-other-workspaces-secret-" + uuid.uuid4().hex
NEVER = (TOKEN_VALUE, JWT_VALUE, OUTSIDE_VALUE, W2_VALUE)


# ------------------------------------------------------------------- what the phases run

def report(ctx: PythonContext) -> dict[str, Any]:
    """What the phase's process sees: its connection's secrets (lengths only), and whether
    its environment (os.environ and the kernel's /proc/self/environ) holds the worker's
    token or the policy's variables."""
    with open("/proc/self/environ", "rb") as handle:
        initial = handle.read().decode(errors="replace")
    conn = ctx.connections["vault"]
    return {
        "password_length": len(conn.config["password"]),
        "key_length": len(conn.config["key"]),
        "region": conn.config["region"],
        "token_in_environ": "CONTROL_ROOM_TOKEN" in os.environ,
        "control_room_vars": sorted(k for k in os.environ if k.startswith("CONTROL_ROOM_")),
        "policy_var_in_environ": "CRSEC_PW" in os.environ,
        "token_in_proc_environ": TOKEN_VALUE in initial or "CONTROL_ROOM_TOKEN=" in initial,
        "policy_var_in_proc_environ": ENV_VALUE in initial,
        "echo": conn.config["password"],        # a careless manifest: masked
    }


def leak(ctx: PythonContext) -> None:
    """A phase that tries every way out for its password: stdout, stderr, an event, progress,
    a report file, and an exception (message and traceback)."""
    password = ctx.connections["vault"].config["password"]
    print(f"the password is {password}")
    print(f"stderr too: {password}", file=sys.stderr)
    ctx.emit("LOG", f"event {password}", payload={"nested": [f"x{password}x"], password: 1})
    ctx.progress({"note": password})
    (ctx.output_dir / "debug.log").write_text(f"connecting with {password}\n")
    (ctx.output_dir / "report.json").write_text(json.dumps({"password": password}))
    raise RuntimeError(f"cannot connect with password {password}")


# ------------------------------------------------------------------------------- fixtures

@pytest.fixture
def env(conn: psycopg.Connection[Any], db_url: str, tmp_path: Path) -> Iterator[Env]:
    with gateway_env(conn, db_url, tmp_path) as environment:
        yield environment


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    """An allowed secrets directory with one secret and a symlink out of it; the gateway's
    JWT secret and another file outside it."""
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    (allowed / "key").write_text(FILE_VALUE + "\n")
    state = tmp_path / "state"
    state.mkdir()
    (state / "jwt_secret").write_text(JWT_VALUE)
    (tmp_path / "outside").write_text(OUTSIDE_VALUE)
    (allowed / "escape").symlink_to(state / "jwt_secret")
    return {"allowed": allowed, "state": state, "outside": tmp_path / "outside"}


def register(env: Env, name: str, secrets: dict[str, str], workspace: str | None = None,
             admin: Any = None) -> None:
    client = env.client(admin or env.world.admin1)
    client.create_connection(workspace or env.world.w1, name, "postgres",
                             config={"dsn": "host=127.0.0.1 dbname=nowhere",
                                     "region": "eu"}, secrets=secrets)


def new_run(env: Env, name: str, connection: str, entrypoint: str,
            max_attempts: int = 3) -> str:
    run = env.client(env.world.dev1).create_run(
        env.world.w1, "secrets", "0123abc",
        [phase(name, params={"entrypoint": f"{__name__}:{entrypoint}",
                             "connections": [connection]}, max_attempts=max_attempts)],
        idempotency_key=str(uuid.uuid4()))
    return run.id


def everything_kept(env: Env, conn: psycopg.Connection[Any], run_ids: list[str],
                    logs: str) -> str:
    """All the control plane and the worker keep, as one text: every table of the database
    (as text), the runs' events and phases through the gateway, the artifact store's files,
    the worker's log lines."""
    parts = [logs]
    tables = conn.execute(
        "select format('%I.%I', schemaname, tablename) from pg_catalog.pg_tables "
        "where schemaname not in ('pg_catalog', 'information_schema')").fetchall()
    for (table,) in tables:
        rows = conn.execute(f"select t::text from {table} t").fetchall()
        parts.extend(str(row[0]) for row in rows)
    conn.rollback()
    for run_id in run_ids:
        parts.append(json.dumps([e.model_dump(mode="json") for e in env.events(run_id)]))
        parts.append(env.get_run(run_id).model_dump_json())
        parts.append(json.dumps(env.artifacts(run_id)))
    for blob in (env.tmp / "blobs").rglob("*"):
        if blob.is_file():
            parts.append(blob.read_bytes().decode(errors="replace"))
    return "\n".join(parts)


# ---------------------------------------------------------------------------------- tests

def test_a_run_cannot_make_the_worker_resolve_its_own_secrets(
        env: Env, conn: psycopg.Connection[Any], files: dict[str, Path],
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("CONTROL_ROOM_TOKEN", TOKEN_VALUE)   # what a worker process holds
    monkeypatch.setenv("CRSEC_OUTSIDE", OUTSIDE_VALUE)
    allowed, state = files["allowed"], files["state"]
    monkeypatch.chdir(state.parent)                         # /proc/self/cwd/state/jwt_secret
    attacks = {
        "token": ("env:CONTROL_ROOM_TOKEN", "CONTROL_ROOM_* variables are the process's own "
                                            "settings and never resolve"),
        "unlisted": ("env:CRSEC_OUTSIDE", "no env: entry is a prefix of CRSEC_OUTSIDE "
                                          "(add env:CRSEC_OUTSIDE or a prefix of it)"),
        "jwt": (f"file:{state}/jwt_secret", f"{state}/jwt_secret is in no allowed directory "
                                            f"(add file:{state} or move the file)"),
        "outside": (f"file:{files['outside']}", "is in no allowed directory"),
        "cwd": ("file:/proc/self/cwd/state/jwt_secret",
                f"/proc/self/cwd/state/jwt_secret (really {state}/jwt_secret) is in no "
                "allowed directory"),
        "environ": ("file:/proc/self/environ", "is in no allowed directory"),
        "escape": (f"file:{allowed}/escape", f"{allowed}/escape (really {state}/jwt_secret) "
                                             "is in no allowed directory"),
    }
    runs: dict[str, str] = {}
    for name, (reference, _) in attacks.items():
        register(env, name, {"password": reference})
        runs[name] = new_run(env, "steal", name, "report")
    policy = f"env:CRSEC_PW,file:{allowed}"
    stats = Running(env.worker(secret_allow=policy, python_spares=1),
                    max_phases=len(runs)).join()
    assert (stats.claimed, stats.failed) == (len(runs), len(runs))

    for name, (reference, why) in attacks.items():
        failed = env.get_run(runs[name]).phase("steal")
        assert (failed.state, failed.attempt) == ("failed", 1), name    # terminal: no retry
        assert failed.error is not None
        message = failed.error["message"]
        assert message.startswith(f"connection {name!r}: secret password: {reference} is "
                                  "refused by this process's CONTROL_ROOM_SECRET_ALLOW "
                                  f"(env:CRSEC_PW,file:{allowed}): "), (name, message)
        assert why in message, (name, message)
    kept = everything_kept(env, conn, list(runs.values()), caplog.text)
    for value in NEVER:
        assert value not in kept


def test_only_the_runs_workspace_connections_are_claimed(
        env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """A connection of another workspace cannot be named: create_run refuses the name, and a
    claim carries only the run's workspace's connections."""
    monkeypatch.setenv("CRSEC_W2_PW", W2_VALUE)
    register(env, "w2vault", {"password": "env:CRSEC_W2_PW"}, workspace=env.world.w2,
             admin=env.world.admin2)
    with pytest.raises(InvalidArgument, match="names connection w2vault, which workspace"):
        new_run(env, "steal", "w2vault", "report")


def test_allowed_references_resolve_and_the_python_child_has_no_token(
        env: Env, conn: psycopg.Connection[Any], files: dict[str, Path],
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("CONTROL_ROOM_TOKEN", TOKEN_VALUE)
    monkeypatch.setenv("CRSEC_PW", ENV_VALUE)
    register(env, "vault", {"password": "env:CRSEC_PW", "key": f"file:{files['allowed']}/key"})
    good = new_run(env, "use", "vault", "report")
    leaky = new_run(env, "leak", "vault", "leak", max_attempts=1)
    # spares are started before any claim: their environment must be scrubbed too
    worker = env.worker(secret_allow=f"env:CRSEC_,file:{files['allowed']}", python_spares=2)
    stats = Running(worker, max_phases=2).join()
    assert (stats.succeeded, stats.failed) == (1, 1)

    used = env.get_run(good).phase("use")
    assert used.state == "succeeded", used.error
    assert used.output_manifest == {
        "password_length": len(ENV_VALUE), "key_length": len(FILE_VALUE), "region": "eu",
        "token_in_environ": False, "control_room_vars": [], "policy_var_in_environ": False,
        "token_in_proc_environ": False, "policy_var_in_proc_environ": False,
        "echo": "***"}

    # everything the leaking phase sent is masked
    leaked = env.get_run(leaky).phase("leak")
    assert (leaked.state, leaked.attempt) == ("failed", 1)
    assert leaked.error is not None
    assert leaked.error["message"] == (
        f"{__name__}:leak raised RuntimeError: cannot connect with password ***")
    assert "***" in leaked.error["detail"] and ENV_VALUE not in leaked.error["detail"]
    messages = [e.message for e in env.events(leaky) if e.phase == "leak"]
    assert "the password is ***" in messages and "stderr too: ***" in messages
    assert "event ***" in messages
    [event] = [e for e in env.events(leaky) if e.message == "event ***"]
    assert event.payload == {"nested": ["x***x"], "***": 1}
    artifacts = {a["name"] for a in env.artifacts(leaky)}
    assert {"debug.log", "report.json"} <= artifacts
    blobs = [p.read_bytes() for p in (env.tmp / "blobs").rglob("*") if p.is_file()]
    assert b"connecting with ***\n" in blobs and b'{"password": "***"}' in blobs

    kept = everything_kept(env, conn, [good, leaky], caplog.text)
    for value in (ENV_VALUE, FILE_VALUE, TOKEN_VALUE):
        assert value not in kept
