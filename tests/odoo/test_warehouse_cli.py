"""`control-room warehouse grant-reader ROLE`: through the workspace's `warehouse` connection
(the real gateway; its password reference resolved under the CLI's own secret policy) or a
`--database-url`; the role reads gold and nothing more, and keeps it across publications."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake
from psycopg import sql
from typer.testing import CliRunner

from control_room.cli import app
from pipelines.odoo.publish import Mart, publish
from tests.executor.harness import Env, gateway_env

runner = CliRunner()


@pytest.fixture
def env(conn: psycopg.Connection[Any], db_url: str, tmp_path: Path) -> Iterator[Env]:
    with gateway_env(conn, db_url, tmp_path) as environment:
        yield environment


@pytest.fixture
def role(warehouse_dsn: str) -> Iterator[str]:
    name = f"bi_{uuid.uuid4().hex[:10]}"
    yield name
    with psycopg.connect(warehouse_dsn, autocommit=True) as conn:
        if conn.execute("select 1 from pg_roles where rolname = %s", [name]).fetchone():
            conn.execute(sql.SQL("drop owned by {}").format(sql.Identifier(name)))
            conn.execute(sql.SQL("drop role {}").format(sql.Identifier(name)))


def cli(*args: str, env: Env | None = None, allow: str | None = None,
        **extra: str) -> tuple[int, str, str]:
    variables: dict[str, str | None] = {"COLUMNS": "200", "CONTROL_ROOM_SECRET_ALLOW": allow,
                                        **extra}
    if env is not None:
        variables.update({"CONTROL_ROOM_GATEWAY_URL": env.rest_url,
                          "CONTROL_ROOM_TOKEN": env.contract.token(env.world.admin1),
                          "CONTROL_ROOM_WORKSPACE": env.world.w1,
                          "CONTROL_ROOM_STATE_DIR": str(env.tmp / "state")})
    result = runner.invoke(app, list(args), env=variables)
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        result.exception)
    assert "Traceback" not in result.stderr
    return result.exit_code, result.stdout, " ".join(result.stderr.split())


def _publish(dsn: str, path: Path, value: int) -> None:
    write_deltalake(str(path), pa.table({"x": pa.array([value], pa.int64())}), mode="overwrite")
    with psycopg.connect(dsn) as pg:
        mart = Mart("gold.odoo.revenue", str(path), DeltaTable(str(path)).version(), None)
        publish(pg, "gold", [mart], run_id=str(uuid.uuid4()), as_of=dt.date(2026, 1, 1),
                newest=None)


def _read_as(dsn: str, role: str, query: str) -> Any:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("set role {}").format(sql.Identifier(role)))
        return conn.execute(query).fetchall()


def test_grant_reader_through_a_database_url(warehouse_dsn: str, role: str,
                                             tmp_path: Path) -> None:
    code, _, err = cli("warehouse", "grant-reader", role, "--database-url", warehouse_dsn)
    assert code == 2 and f"role '{role}' does not exist" in err and "--create" in err
    code, out, err = cli("warehouse", "grant-reader", role, "--create", "--database-url",
                         warehouse_dsn, "--json")
    assert code == 0, err
    assert json.loads(out)["created"] is True
    # published after the grant, three times: the role reads the newest, and cannot write
    for value in (1, 2, 3):
        _publish(warehouse_dsn, tmp_path / "revenue", value)
        assert _read_as(warehouse_dsn, role, "select x from gold.revenue") == [(value,)]
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        _read_as(warehouse_dsn, role, "insert into gold.revenue values (9)")
    code, _, err = cli("warehouse", "grant-reader", "Bad Role", "--database-url",
                       warehouse_dsn)
    assert code == 2 and "lower-case Postgres role name" in err


def test_grant_reader_through_the_workspace_connection(env: Env, warehouse_dsn: str,
                                                       role: str, tmp_path: Path) -> None:
    env.client(env.world.admin1).create_connection(
        env.world.w1, "warehouse", "postgres", config={"dsn": warehouse_dsn},
        secrets={"password": "env:WAREHOUSE_PASSWORD"})
    _publish(warehouse_dsn, tmp_path / "revenue", 7)
    # the password reference is resolved here, under this process's policy
    code, _, err = cli("warehouse", "grant-reader", role, "--create", env=env)
    assert code == 2 and "WAREHOUSE_PASSWORD" in err and "CONTROL_ROOM_SECRET_ALLOW" in err
    code, out, err = cli("warehouse", "grant-reader", role, "--create", env=env,
                         allow="env:WAREHOUSE_", WAREHOUSE_PASSWORD="")
    assert code == 0, err
    assert f"role {role} (created) may read schema gold" in " ".join(out.split())
    assert _read_as(warehouse_dsn, role, "select x from gold.revenue") == [(7,)]
    code, _, err = cli("warehouse", "grant-reader", role, "--connection", "nope", env=env)
    assert code == 2, err
