"""Connections: secret references resolved by the worker, Postgres read into Arrow (a real
database), the sql kind's Postgres inputs, and all of it through a real worker."""

from __future__ import annotations

import datetime as dt
import decimal
import json
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
from tests.contract.conftest import phase
from tests.executor.harness import Env, Running, gateway_env

SECRET = "s3cret-Value-that-must-not-leak"
RUN = {"id": "run-1", "git_sha": "0123abc", "spec_slug": "demo"}
DECLARED = {
    "odoo": {"type": "postgres", "dsn": "${params.odoo_dsn}", "password": "secret:env:PG_PW"},
    "files": {"type": "s3", "key": "secret:file:/nonexistent/cr-test/key",
              "bucket": "b-${run.spec_slug}"},
    "odd": {"type": "postgres", "dsn": "x", "password": "secret:vault:kv/pg"},
}


def resolve(names: Any, environ: dict[str, str], declared: Any = None) -> dict[str, Connection]:
    return resolve_connections(names, DECLARED if declared is None else declared,
                               params={"odoo_dsn": "postgresql://h/odoo"}, run=RUN,
                               environ=environ)


# ----------------------------------------------------------------------------- resolving

def test_an_env_secret_and_templated_fields_are_resolved() -> None:
    conns = resolve(["odoo"], {"PG_PW": SECRET})
    odoo = conns["odoo"]
    assert (odoo.name, odoo.type) == ("odoo", "postgres")
    assert dict(odoo.config) == {"dsn": "postgresql://h/odoo", "password": SECRET}
    assert SECRET not in repr(odoo) and SECRET not in repr(conns)


def test_a_file_secret_loses_its_trailing_newline(tmp_path: Path) -> None:
    key = tmp_path / "key"
    key.write_text(SECRET + "\n")
    declared = {"files": {"type": "s3", "key": f"secret:file:{key}", "bucket": "b-${run.id}",
                          "nested": {"token": f"secret:file:{key}"}}}
    files = resolve(["files"], {}, declared)["files"]
    assert dict(files.config) == {"key": SECRET, "bucket": "b-run-1",
                                  "nested": {"token": SECRET}}


def test_only_the_named_connections_are_resolved() -> None:
    # "odd" has a malformed reference and "files" a missing file: neither is touched
    assert list(resolve(["odoo", "odoo"], {"PG_PW": "x"})) == ["odoo"]
    assert resolve(None, {}) == {}
    assert resolve([], {}) == {}


@pytest.mark.parametrize(("names", "environ", "expected"), [
    (["odoo"], {}, "connection 'odoo': secret secret:env:PG_PW: the worker has no "
                   "environment variable PG_PW"),
    (["files"], {}, "connection 'files': secret secret:file:/nonexistent/cr-test/key: "
                    "No such file or directory"),
    (["odd"], {}, "connection 'odd': malformed secret reference 'secret:vault:kv/pg'"),
    (["warehouse"], {}, "connection 'warehouse': not declared in the run's input manifest "
                        "(its connections: files, odd, odoo)"),
    ("odoo", {}, "params.connections must be a list of connection names"),
])
def test_a_connection_that_cannot_be_resolved_is_a_terminal_error(
        names: Any, environ: dict[str, str], expected: str) -> None:
    with pytest.raises(TerminalPhaseError) as info:
        resolve(names, environ)
    assert not info.value.retryable
    assert expected in info.value.message


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


def new_run(env: Env, *phases: dict[str, Any], connections: dict[str, Any],
            params: dict[str, Any]) -> str:
    run = env.client(env.world.dev1).create_run(
        env.world.w1, "demo", "0123abc", list(phases),
        input_manifest={"params": params, "connections": connections},
        idempotency_key=str(uuid.uuid4()))
    return run.id


def test_a_worker_resolves_connections_for_python_and_sql_phases(
        env: Env, pg: Connection, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CR_TEST_ERP_PASSWORD", SECRET)
    connections = {"erp": {"type": "postgres", "dsn": "${params.erp_dsn}",
                           "password": "secret:env:CR_TEST_ERP_PASSWORD"},
                   "nopw": {"type": "postgres", "dsn": "${params.erp_dsn}",
                            "password": "secret:env:CR_TEST_UNSET_PASSWORD"},
                   "lake": {"type": "s3", "bucket": "b"}}
    params = {"erp_dsn": pg.config["dsn"], "lake": str(env.tmp / "lake")}
    good = new_run(
        env,
        phase("who", params={"entrypoint": f"{__name__}:describe", "connections": ["erp"]}),
        phase("read", "sql", params={
            "query": "select name from partners", "connections": ["erp"],
            "inputs": {"partners": {"postgres": {"connection": "erp",
                                                 "table": "public.partners"}}},
            "output": {"delta": "${params.lake}/bronze/partners", "mode": "overwrite",
                       "name": "bronze.partners"}}),
        connections=connections, params=params)
    missing = new_run(env, phase("who", params={"entrypoint": f"{__name__}:describe",
                                                "connections": ["nopw"]}, max_attempts=3),
                      connections=connections, params=params)
    wrong = new_run(env, phase("read", "sql", max_attempts=3, params={
        "query": "select 1", "connections": ["lake"],
        "output": {"delta": "${params.lake}/x", "name": "x"}}),
        connections=connections, params=params)
    stats = Running(env.worker(kinds=["python", "sql"]), max_phases=4).join()
    assert (stats.succeeded, stats.failed) == (2, 2)

    run = env.get_run(good)
    assert run.state == "succeeded"
    assert run.phase("who").output_manifest == {
        "type": "postgres", "dsn": pg.config["dsn"], "password_length": len(SECRET)}
    assert sorted(DeltaTable(str(env.tmp / "lake" / "bronze" / "partners"))
                  .to_pyarrow_table().column("name").to_pylist()) == ["ada", "bob"]

    failed = env.get_run(missing).phase("who")
    assert (failed.state, failed.attempt) == ("failed", 1)
    assert failed.error is not None and failed.error["message"] == (
        "connection 'nopw': secret secret:env:CR_TEST_UNSET_PASSWORD: the worker has no "
        "environment variable CR_TEST_UNSET_PASSWORD")
    refused = env.get_run(wrong).phase("read")
    assert (refused.state, refused.attempt) == ("failed", 1)
    assert refused.error is not None
    assert "connection 'lake' is of type 's3'; the sql kind takes postgres" in \
        refused.error["message"]

    # the secret appears nowhere the control plane keeps
    for run_id in (good, missing, wrong):
        trail = json.dumps([e.model_dump(mode="json") for e in env.events(run_id)])
        stored = env.get_run(run_id).model_dump_json()
        assert SECRET not in trail and SECRET not in stored
