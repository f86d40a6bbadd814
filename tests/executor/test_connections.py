"""Connections: a claim's registered connections resolved under the worker's secret policy,
Postgres read into Arrow (a real database), the sql kind's Postgres inputs, and all of it
through a real worker. The attacks on the policy: tests/security/test_secrets.py."""

from __future__ import annotations

import datetime as dt
import decimal
import json
import os
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pyarrow as pa
import pytest
from deltalake import DeltaTable

from executor.connections import postgres_connect, read_postgres, resolve_connections
from executor.kinds import Connection, PhaseCancelled, PhaseContext, TerminalPhaseError
from executor.kinds.python import PythonContext
from executor.kinds.sql import SqlKind
from executor.secrets import MASK, Masker, SecretError, SecretPolicy, child_environment
from tests.contract.conftest import phase
from tests.executor.harness import Env, Running, gateway_env

SECRET = "s3cret-Value-that-must-not-leak"


def registered(secrets: dict[str, str], **config: Any) -> dict[str, Any]:
    return {"type": "postgres", "config": config, "secrets": secrets, "version": 1}


# ----------------------------------------------------------------------------- the policy

def test_the_policy_is_parsed_from_its_entries() -> None:
    policy = SecretPolicy.parse(" env:ODOO_, file:/run/secrets/ ,,env:PG_PW,env:ODOO_")
    assert policy.env_prefixes == ("ODOO_", "PG_PW")
    assert policy.file_dirs == ("/run/secrets",)
    assert policy.describe() == "env:ODOO_,env:PG_PW,file:/run/secrets"
    assert SecretPolicy.parse(None) == SecretPolicy.parse("") == SecretPolicy()
    assert SecretPolicy().describe() == "unset"


@pytest.mark.parametrize(("text", "problem"), [
    ("env:", "is not env:PREFIX"),
    ("env:A-B", "is not env:PREFIX"),
    ("env:CONTROL_ROOM_", "would allow CONTROL_ROOM_* variables"),
    ("env:CONTROL_ROOM_TOKEN", "would allow CONTROL_ROOM_* variables"),
    ("file:relative/dir", "is not file:/absolute/dir"),
    ("vault:kv/x", "is not env:PREFIX or file:/dir"),
])
def test_a_bad_policy_entry_is_refused_naming_it(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match="CONTROL_ROOM_SECRET_ALLOW") as info:
        SecretPolicy.parse(text)
    assert problem in str(info.value)


def test_env_references_resolve_only_under_an_allowed_prefix() -> None:
    policy = SecretPolicy.parse("env:PG_")
    environ = {"PG_PW": SECRET, "OTHER_PW": "other", "CONTROL_ROOM_TOKEN": "tok"}
    assert policy.resolve("env:PG_PW", environ) == SECRET
    with pytest.raises(SecretError) as info:
        policy.resolve("env:OTHER_PW", environ)
    assert info.value.message == (
        "env:OTHER_PW is refused by this process's CONTROL_ROOM_SECRET_ALLOW (env:PG_): no "
        "env: entry is a prefix of OTHER_PW (add env:OTHER_PW or a prefix of it)")
    with pytest.raises(SecretError, match="CONTROL_ROOM_\\* variables are the process's own"):
        SecretPolicy.parse("env:C,env:PG_").resolve("env:CONTROL_ROOM_TOKEN", environ)
    with pytest.raises(SecretError, match="the environment has no variable PG_MISSING"):
        policy.resolve("env:PG_MISSING", environ)
    with pytest.raises(SecretError, match="malformed secret reference 'secret:env:PG_PW'"):
        policy.resolve("secret:env:PG_PW", environ)


def test_file_references_resolve_only_inside_an_allowed_directory(tmp_path: Path) -> None:
    allowed = tmp_path / "secrets"
    (allowed / "sub").mkdir(parents=True)
    (allowed / "pw").write_text(SECRET + "\n")
    (allowed / "sub" / "key").write_text("k3y-value")
    (tmp_path / "outside").write_text("outside-value")
    (allowed / "link").symlink_to(tmp_path / "outside")
    policy = SecretPolicy.parse(f"file:{allowed}")
    assert policy.resolve(f"file:{allowed}/pw") == SECRET            # one newline dropped
    assert policy.resolve(f"file:{allowed}/sub/key") == "k3y-value"
    for reference in (f"file:{tmp_path}/outside", f"file:{allowed}/link",
                      f"file:{allowed}/../outside", f"file:{allowed}"):
        with pytest.raises(SecretError, match="is in no allowed directory") as info:
            policy.resolve(reference)
        assert "outside-value" not in info.value.message
    with pytest.raises(SecretError, match="no file: entry allows any file"):
        SecretPolicy().resolve(f"file:{allowed}/pw")
    with pytest.raises(SecretError, match="No such file or directory"):
        policy.resolve(f"file:{allowed}/missing")
    with pytest.raises(SecretError, match="is not a regular file"):
        policy.resolve(f"file:{allowed}/sub")
    os.mkfifo(allowed / "fifo")                 # opening it must not block the worker
    with pytest.raises(SecretError, match="is not a regular file"):
        policy.resolve(f"file:{allowed}/fifo")
    (allowed / "big").write_bytes(b"x" * (64 * 1024 + 1))
    with pytest.raises(SecretError, match="larger than 65536 bytes"):
        policy.resolve(f"file:{allowed}/big")


def test_proc_is_never_reached_through_a_wider_directory(tmp_path: Path) -> None:
    wide = SecretPolicy.parse("file:/")
    (tmp_path / "x").write_text("x-value")
    assert wide.resolve(f"file:{tmp_path}/x") == "x-value"
    with pytest.raises(SecretError, match="/proc is never allowed by a directory outside it"):
        wide.resolve("file:/proc/self/environ")
    with pytest.raises(SecretError, match="is in no allowed directory"):
        wide.resolve("file:/dev/zero")
    # /proc/self/cwd is the worker's working directory: its real path decides
    cwd = os.getcwd()
    try:
        os.chdir(tmp_path)
        narrow = SecretPolicy.parse(f"file:{tmp_path / 'secrets'}")
        with pytest.raises(SecretError, match=f"really {tmp_path}/x"):
            narrow.resolve("file:/proc/self/cwd/x")
        assert wide.resolve("file:/proc/self/cwd/x") == "x-value"   # it is tmp_path/x
    finally:
        os.chdir(cwd)


def test_the_child_environment_has_no_token_nor_allowed_variables() -> None:
    environ = {"CONTROL_ROOM_TOKEN": "t", "CONTROL_ROOM_GATEWAY_URL": "u", "ODOO_PASSWORD": "p",
               "ODOO_HOST": "h", "PATH": "/bin", "HOME": "/root"}
    assert child_environment(environ, SecretPolicy.parse("env:ODOO_")) == {
        "PATH": "/bin", "HOME": "/root"}
    assert child_environment(environ, SecretPolicy()) == {
        "ODOO_PASSWORD": "p", "ODOO_HOST": "h", "PATH": "/bin", "HOME": "/root"}


def test_the_masker_replaces_every_resolved_value() -> None:
    masker = Masker(["abc", SECRET, "pw-1234"])      # "abc" is too short to mask
    assert masker.values == (SECRET, "pw-1234")
    assert masker.text(f"x {SECRET} y pw-1234 abc") == f"x {MASK} y {MASK} abc"
    assert masker.json({"a": [f"<{SECRET}>", 3, None], SECRET: True}) == {
        "a": [f"<{MASK}>", 3, None], MASK: True}
    assert masker.data(b"pw-1234\n") == b"***\n"
    assert not Masker() and Masker().json({"x": 1}) == {"x": 1}


# ----------------------------------------------------------------------------- resolving

def test_a_registered_connection_is_its_config_and_its_resolved_secrets(
        tmp_path: Path) -> None:
    (tmp_path / "key").write_text("k3y-value\n")
    policy = SecretPolicy.parse(f"env:PG_,file:{tmp_path}")
    masker = Masker()
    conns = resolve_connections(
        ["odoo", "files", "odoo"],
        {"odoo": registered({"password": "env:PG_PW"}, dsn="postgresql://h/odoo"),
         "files": {"type": "s3", "config": {"bucket": "b", "nested": {"n": 1}},
                   "secrets": {"secret_key": f"file:{tmp_path}/key"}, "version": 3},
         "unused": registered({"password": "env:NOT_ALLOWED"})},
        policy=policy, environ={"PG_PW": SECRET}, masker=masker)
    assert list(conns) == ["odoo", "files"]
    odoo, files = conns["odoo"], conns["files"]
    assert (odoo.name, odoo.type) == ("odoo", "postgres")
    assert dict(odoo.config) == {"dsn": "postgresql://h/odoo", "password": SECRET}
    assert dict(files.config) == {"bucket": "b", "nested": {"n": 1}, "secret_key": "k3y-value"}
    assert SECRET not in repr(odoo) and SECRET not in repr(conns)
    assert set(masker.values) == {SECRET, "k3y-value"}
    assert resolve_connections(None, {}, policy=policy) == {}
    assert resolve_connections([], {}, policy=policy) == {}


@pytest.mark.parametrize(("names", "expected"), [
    (["odoo"], "connection 'odoo': secret password: env:PG_PW is refused by this process's "
               "CONTROL_ROOM_SECRET_ALLOW (unset): no env: entry is a prefix of PG_PW"),
    (["warehouse"], "connection 'warehouse': not registered in workspace ws-1 (register it "
                    "with `control-room connections create`)"),
    ("odoo", "params.connections must be a list of connection names"),
    (["${params.conn}"], "params.connections: '${params.conn}' is not a connection name"),
])
def test_a_connection_that_cannot_be_resolved_is_a_terminal_error(
        names: Any, expected: str) -> None:
    with pytest.raises(TerminalPhaseError) as info:
        resolve_connections(names, {"odoo": registered({"password": "env:PG_PW"}, dsn="x")},
                            policy=SecretPolicy(), environ={"PG_PW": SECRET},
                            workspace="ws-1")
    assert not info.value.retryable
    assert info.value.message.startswith(expected)
    assert SECRET not in info.value.message


# ------------------------------------------------------------------ Postgres into Arrow

CREATE = """
create table public.partners (
    id serial primary key, name text, code varchar(8), active bool, born date,
    created timestamp, seen timestamptz, credit numeric(12, 2), ratio numeric, score float8,
    small int2, big int8, meta jsonb, uid uuid, tags text[]);
insert into public.partners (name, code, active, born, created, seen, credit, ratio, score,
                             small, big, meta, uid, tags) values
    ('ada', 'A1', true, '1815-12-10', '2026-01-02 03:04:05.123456',
     '2026-01-02 03:04:05+02', 1234.5, 0.125, 2.5, 7, 9000000000,
     '{"en_US": "Ada", "b": [1, 2]}', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{x,y}'),
    ('bob', null, false, null, null, null, null, null, null, null, null, null, null, null);
"""


@pytest.fixture
def pg(db_url: str) -> Connection:
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(CREATE)
    return Connection("erp", "postgres", {"dsn": db_url, "password": "ignored-by-trust"})


def test_postgres_connect_opens_the_connection(pg: Connection) -> None:
    with postgres_connect(pg) as conn:
        row = conn.execute("select count(*) from public.partners").fetchone()
    assert row == (2,)
    with pytest.raises(TerminalPhaseError, match="not postgres"):
        postgres_connect(Connection("x", "s3", {}))


def test_a_table_is_read_with_types_mapped_from_postgres(pg: Connection) -> None:
    table = read_postgres(pg, table="public.partners")
    assert table.schema == pa.schema([
        ("id", pa.int32()), ("name", pa.string()), ("code", pa.string()),
        ("active", pa.bool_()), ("born", pa.date32()), ("created", pa.timestamp("us")),
        ("seen", pa.timestamp("us", tz="UTC")), ("credit", pa.decimal128(12, 2)),
        ("ratio", pa.float64()), ("score", pa.float64()), ("small", pa.int16()),
        ("big", pa.int64()), ("meta", pa.string()), ("uid", pa.string()),
        ("tags", pa.string())])
    ada, bob = sorted(table.to_pylist(), key=lambda row: row["id"])
    assert ada == {
        "id": 1, "name": "ada", "code": "A1", "active": True, "born": dt.date(1815, 12, 10),
        "created": dt.datetime(2026, 1, 2, 3, 4, 5, 123456),
        "seen": dt.datetime(2026, 1, 2, 1, 4, 5, tzinfo=dt.UTC),
        "credit": decimal.Decimal("1234.50"), "ratio": 0.125, "score": 2.5, "small": 7,
        "big": 9000000000, "meta": '{"b": [1, 2], "en_US": "Ada"}',
        "uid": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "tags": '["x", "y"]'}
    assert json.loads(ada["meta"]) == {"en_US": "Ada", "b": [1, 2]}
    assert bob["name"] == "bob" and all(bob[k] is None for k in bob if k not in (
        "id", "name", "active"))


def test_a_query_is_read_in_batches(pg: Connection) -> None:
    table = read_postgres(pg, query="select g as n, g * 1.5 as x from generate_series(1, 25) g",
                          batch_rows=10)
    assert table.num_rows == 25
    assert table.schema == pa.schema([("n", pa.int32()), ("x", pa.float64())])
    assert sorted(table.column("n").to_pylist()) == list(range(1, 26))


def test_bad_sql_is_terminal_and_a_cancel_stops_the_read(pg: Connection) -> None:
    with pytest.raises(TerminalPhaseError, match="no_such_table"):
        read_postgres(pg, table="public.no_such_table")
    with pytest.raises(TerminalPhaseError, match="duplicated column names"):
        read_postgres(pg, query="select 1 as a, 2 as a")
    with pytest.raises(TerminalPhaseError, match=r"not 'name' or 'schema\.name'"):
        read_postgres(pg, table="a.b.c")
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(PhaseCancelled):
        read_postgres(pg, table="public.partners", cancel=cancel)


# --------------------------------------------------------------- the sql kind's inputs

def sql_ctx(tmp_path: Path, params: dict[str, Any],
            connections: dict[str, Connection]) -> PhaseContext:
    return PhaseContext(
        run_id="run-1", phase="silver", attempt=1, kind="sql", params=params, inputs={},
        git_sha=None, input_manifest={}, output_dir=tmp_path / "out",
        emit=lambda *a, **k: None, progress=lambda value: None, connections=connections,
        timeout_s=60)


def test_the_sql_kind_reads_a_postgres_input(pg: Connection, tmp_path: Path) -> None:
    out = str(tmp_path / "lake" / "silver" / "partners")
    params: dict[str, Any] = {
        "query": "select p.name, p.credit, o.n from partners p join numbers o on o.n = p.id",
        "connections": ["erp"],
        "inputs": {"partners": {"postgres": {"connection": "erp", "table": "public.partners"}},
                   "numbers": {"postgres": {"connection": "erp", "query": "select 1 as n"}}},
        "output": {"delta": out, "mode": "overwrite", "name": "silver.partners"}}
    result = SqlKind().run(sql_ctx(tmp_path, params, {"erp": pg}))
    assert result.output_manifest["table"]["rows"] == 1
    assert DeltaTable(out).to_pyarrow_table().to_pylist() == [
        {"name": "ada", "credit": decimal.Decimal("1234.50"), "n": 1}]

    with pytest.raises(TerminalPhaseError, match="connection 'erp' is not one of the phase"):
        SqlKind().run(sql_ctx(tmp_path, params, {}))
    params["inputs"]["numbers"]["postgres"]["table"] = "t"
    with pytest.raises(TerminalPhaseError, match="exactly one of 'query' and 'table'"):
        SqlKind().run(sql_ctx(tmp_path, params, {"erp": pg}))


# --------------------------------------------------------------------- through a worker

def describe(ctx: PythonContext) -> dict[str, Any]:
    """What the entrypoint got (never the secret itself)."""
    conn = ctx.connections["erp"]
    return {"type": conn.type, "dsn": conn.config["dsn"],
            "password_length": len(conn.config["password"])}


@pytest.fixture
def env(conn: psycopg.Connection[Any], db_url: str, tmp_path: Path) -> Iterator[Env]:
    with gateway_env(conn, db_url, tmp_path) as environment:
        yield environment


def new_run(env: Env, *phases: dict[str, Any], params: dict[str, Any]) -> str:
    run = env.client(env.world.dev1).create_run(
        env.world.w1, "demo", "0123abc", list(phases), input_manifest={"params": params},
        idempotency_key=str(uuid.uuid4()))
    return run.id


def test_a_worker_resolves_connections_for_python_and_sql_phases(
        env: Env, pg: Connection, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CR_TEST_ERP_PASSWORD", SECRET)
    admin = env.client(env.world.admin1)
    dsn = pg.config["dsn"]
    admin.create_connection(env.world.w1, "erp", "postgres", config={"dsn": dsn},
                            secrets={"password": "env:CR_TEST_ERP_PASSWORD"})
    admin.create_connection(env.world.w1, "nopw", "postgres", config={"dsn": dsn},
                            secrets={"password": "env:CR_TEST_UNSET_PASSWORD"})
    admin.create_connection(env.world.w1, "lake", "s3", config={"bucket": "b"})
    admin.create_connection(env.world.w1, "scratch", "s3", config={"bucket": "s"})
    params = {"lake": str(env.tmp / "lake")}
    good = new_run(
        env,
        phase("who", params={"entrypoint": f"{__name__}:describe", "connections": ["erp"]}),
        phase("read", "sql", params={
            "query": "select name from partners", "connections": ["erp"],
            "inputs": {"partners": {"postgres": {"connection": "erp",
                                                 "table": "public.partners"}}},
            "output": {"delta": "${run.lake}/bronze/partners", "mode": "overwrite",
                       "name": "bronze.partners"}}),
        params=params)
    missing = new_run(env, phase("who", params={"entrypoint": f"{__name__}:describe",
                                                "connections": ["nopw"]}, max_attempts=3),
                      params=params)
    wrong = new_run(env, phase("read", "sql", max_attempts=3, params={
        "query": "select 1", "connections": ["lake"],
        "output": {"delta": "${run.lake}/x", "name": "x"}}), params=params)
    gone = new_run(env, phase("who", params={"entrypoint": f"{__name__}:describe",
                                             "connections": ["erp", "scratch"]}, max_attempts=3),
                   params=params)
    admin.delete_connection(env.world.w1, "scratch")    # after the run was made
    worker = env.worker(kinds=["python", "sql"], lake_root=env.tmp / "lakes",
                        secret_allow="env:CR_TEST_")
    stats = Running(worker, max_phases=5).join()
    assert (stats.succeeded, stats.failed) == (2, 3)

    run = env.get_run(good)
    assert run.state == "succeeded", [p.error for p in run.phases]
    assert run.phase("who").output_manifest == {
        "type": "postgres", "dsn": dsn, "password_length": len(SECRET)}
    lake = env.tmp / "lakes" / env.world.w1
    assert sorted(DeltaTable(str(lake / "bronze" / "partners"))
                  .to_pyarrow_table().column("name").to_pylist()) == ["ada", "bob"]

    failed = env.get_run(missing).phase("who")
    assert (failed.state, failed.attempt) == ("failed", 1)
    assert failed.error is not None and failed.error["message"] == (
        "connection 'nopw': secret password: env:CR_TEST_UNSET_PASSWORD: the environment has "
        "no variable CR_TEST_UNSET_PASSWORD")
    refused = env.get_run(wrong).phase("read")
    assert (refused.state, refused.attempt) == ("failed", 1)
    assert refused.error is not None
    assert "connection 'lake' is of type 's3'; the sql kind takes postgres" in \
        refused.error["message"]
    deleted = env.get_run(gone).phase("who")
    assert (deleted.state, deleted.attempt) == ("failed", 1)
    assert deleted.error is not None and deleted.error["message"] == (
        f"connection 'scratch': not registered in workspace {env.world.w1} (register it with "
        "`control-room connections create`)")

    # the secret appears nowhere the control plane keeps
    for run_id in (good, missing, wrong, gone):
        trail = json.dumps([e.model_dump(mode="json") for e in env.events(run_id)])
        stored = env.get_run(run_id).model_dump_json()
        assert SECRET not in trail and SECRET not in stored
