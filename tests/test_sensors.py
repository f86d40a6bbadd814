"""The sensor evaluator against a real source database and the real gateway: a connection
registered in ops with a `file:` password reference under an allowed directory (the test
server trusts local connections, so any password works), a sensor on `max(write_date)` of a
table: the first evaluation starts a run, the same value again none, a change of the table a
new one; a reference the policy refuses is recorded as an error without the value; the CLI
creates, lists and evaluates (`--once`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from control_room.scheduler.sensors import _masked, evaluate_due_sensors
from executor.secrets import Masker, SecretPolicy
from tests.executor.harness import Env, gateway_env
from tests.test_cli_runs import cli, ok_json

QUERY = "select max(write_date) from res_partner"
SECRET_VALUE = "pw-of-the-source-4711"
REFUSED_VALUE = "refused-secret-0815"


@pytest.fixture
def env(conn: psycopg.Connection[Any], db_url: str, tmp_path: Path) -> Iterator[Env]:
    with gateway_env(conn, db_url, tmp_path) as environment:
        yield environment


@pytest.fixture
def source(empty_db_url: str) -> str:
    """A source database with a res_partner table of two rows."""
    with psycopg.connect(empty_db_url, autocommit=True) as c:
        c.execute("create table res_partner (id int primary key, name text,"
                  " write_date timestamp not null)")
        c.execute("insert into res_partner values (1, 'a', '2031-03-03 08:00:00'),"
                  " (2, 'b', '2031-03-03 08:30:00')")
    return empty_db_url


@pytest.fixture
def secrets_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "secrets"
    directory.mkdir(mode=0o700)
    secret = directory / "source-password"
    secret.write_text(SECRET_VALUE)
    os.chmod(secret, 0o600)
    return directory


def setup(env: Env, source: str, secrets_dir: Path) -> None:
    env.contract.call("register_job", {
        "workspace_id": env.world.w1, "slug": "ingest", "digest": "blake3:" + "ab" * 32,
        "git_sha": "0123abc",
        "spec": {"slug": "ingest", "version": 1, "params": {},
                 "source": {"path": "specs/ingest.yaml", "digest": "blake3:" + "cd" * 32},
                 "phases": [{"name": "load", "kind": "python",
                             "params": {"entrypoint": "pipelines.example:load"}}]}},
        as_=env.world.dev1)
    for name, reference in (("src", f"file:{secrets_dir}/source-password"),
                            ("refused", "env:REFUSED_PW")):
        env.contract.call("create_connection", {
            "workspace_id": env.world.w1, "name": name, "type": "postgres",
            "config": {"dsn": source}, "secrets": {"password": reference}},
            as_=env.world.admin1)


def make_due(conn: psycopg.Connection[Any]) -> None:
    """The sensors' intervals passed (the real gateway keeps real time)."""
    with conn.transaction():
        conn.execute("update ops.sensors set next_evaluation_at = now() - interval '1 second'")


def runs_of(conn: psycopg.Connection[Any], ws: str) -> list[tuple[Any, ...]]:
    with conn.transaction():
        return conn.execute("select id, labels from ops.runs where workspace_id = %s"
                            " order by created_at, id", (ws,)).fetchall()


def test_evaluate_starts_a_run_only_when_the_source_changed(
        env: Env, source: str, secrets_dir: Path, conn: psycopg.Connection[Any]) -> None:
    setup(env, source, secrets_dir)
    dev = env.client(env.world.dev1)
    dev.create_sensor(env.world.w1, "partners", "ingest", "src", QUERY, interval_seconds=10)
    dev.create_sensor(env.world.w1, "blocked", "ingest", "refused", QUERY, interval_seconds=10)
    policy = SecretPolicy.parse(f"file:{secrets_dir}")
    environ = {"REFUSED_PW": REFUSED_VALUE}

    first = evaluate_due_sensors(dev, policy=policy, environ=environ)
    by_name = {o.name: o for o in first.outcomes}
    assert (first.claimed, first.moved, first.errors) == (2, 1, 1), first
    assert by_name["partners"].outcome == "moved" and by_name["partners"].run_id
    assert len(runs_of(conn, env.world.w1)) == 1
    assert runs_of(conn, env.world.w1)[0][1] == {"sensor": "partners"}
    shown = dev.get_sensor(env.world.w1, "partners")
    assert shown.cursor == "2031-03-03 08:30:00" and shown.last_run_id == by_name[
        "partners"].run_id
    blocked = dev.get_sensor(env.world.w1, "blocked")
    assert blocked.last_error is not None and "REFUSED_PW" in blocked.last_error
    assert REFUSED_VALUE not in blocked.last_error and blocked.cursor is None
    assert SECRET_VALUE not in repr(dev.list_sensors(env.world.w1))

    # not due again before the interval: nothing claimed
    assert evaluate_due_sensors(dev, policy=policy, environ=environ).claimed == 0
    # due, unchanged: no run
    make_due(conn)
    again = evaluate_due_sensors(dev, policy=policy, environ=environ)
    assert (again.claimed, again.moved, again.unchanged) == (2, 0, 1), again
    assert len(runs_of(conn, env.world.w1)) == 1
    # the source changes: a new run
    with psycopg.connect(source, autocommit=True) as c:
        c.execute("update res_partner set write_date = '2031-03-03 09:15:00' where id = 1")
    make_due(conn)
    changed = evaluate_due_sensors(dev, policy=policy, environ=environ)
    assert changed.moved == 1, changed
    assert len(runs_of(conn, env.world.w1)) == 2
    assert dev.get_sensor(env.world.w1, "partners").cursor == "2031-03-03 09:15:00"


def test_a_query_error_and_an_empty_table_are_recorded_errors(
        env: Env, source: str, secrets_dir: Path, conn: psycopg.Connection[Any]) -> None:
    setup(env, source, secrets_dir)
    dev = env.client(env.world.dev1)
    dev.create_sensor(env.world.w1, "missing", "ingest", "src",
                      "select max(write_date) from no_such_table")
    dev.create_sensor(env.world.w1, "empty", "ingest", "src",
                      "select write_date from res_partner where false")
    # a write is refused by the read-only transaction, even one hidden in a function call
    dev.create_sensor(env.world.w1, "writes", "ingest", "src",
                      "select count(*) from (select pg_catalog.nextval('s')) x")
    # an error quoting the resolved password: masked before it is recorded
    dev.create_sensor(env.world.w1, "quotes", "ingest", "src",
                      f"select '{SECRET_VALUE}'::int")
    with psycopg.connect(source, autocommit=True) as c:
        c.execute("create sequence s")
    report = evaluate_due_sensors(dev, policy=SecretPolicy.parse(f"file:{secrets_dir}"))
    assert (report.claimed, report.errors, report.moved) == (4, 4, 0), report
    errors = {s.name: s.last_error or "" for s in dev.list_sensors(env.world.w1)}
    assert "no_such_table" in errors["missing"]
    assert errors["empty"].startswith("no value")
    assert "read-only" in errors["writes"]
    assert "invalid input syntax" in errors["quotes"] and "***" in errors["quotes"]
    assert all(SECRET_VALUE not in e for e in errors.values())
    assert runs_of(conn, env.world.w1) == []


def test_errors_are_masked_before_they_are_recorded() -> None:
    masker = Masker([SECRET_VALUE])
    text = _masked(f"could not connect to postgresql://odoo:hunter22@db/odoo password=abc "
                   f"{SECRET_VALUE} " + "x" * 2000, masker)
    assert "hunter22" not in text and "abc" not in text and SECRET_VALUE not in text
    assert "postgresql://odoo:***@db/odoo" in text and len(text) <= 1000


def test_the_cli_creates_lists_and_evaluates(
        env: Env, source: str, secrets_dir: Path, conn: psycopg.Connection[Any]) -> None:
    setup(env, source, secrets_dir)
    code, out, err = cli(env, "sensors", "create", "partners", "--job", "ingest",
                         "--connection", "src", "--query", QUERY, "--every", "30s")
    assert code == 0, err
    assert "sensor partners created" in out
    listed = ok_json(env, "sensors", "list")
    assert [(s["name"], s["connection"], s["interval_seconds"]) for s in listed] == [
        ("partners", "src", 30)]
    code, out, err = cli(env, "sensors", "evaluate", "--once",
                         CONTROL_ROOM_SECRET_ALLOW=f"file:{secrets_dir}")
    assert code == 0, err
    assert "1 sensor(s) due: 1 moved, 0 unchanged, 0 waiting, 0 error(s)" in out, (out, err)
    assert len(runs_of(conn, env.world.w1)) == 1
    shown = ok_json(env, "sensors", "show", "partners")
    assert shown["cursor"] == "2031-03-03 08:30:00"
    # without the policy the reference is refused: an error, no run, exit 0
    make_due(conn)
    code, out, err = cli(env, "sensors", "evaluate", "--once", CONTROL_ROOM_SECRET_ALLOW=None)
    assert code == 0 and "1 error(s)" in out, (out, err)
    assert SECRET_VALUE not in out + err
    # bad input exits 2
    code, out, err = cli(env, "sensors", "create", "other", "--job", "ingest",
                         "--connection", "src", "--query", QUERY, "--every", "5s")
    assert code == 2 and "at least 10s" in err
    code, out, err = cli(env, "sensors", "create", "other", "--job", "ingest",
                         "--connection", "nothing", "--query", QUERY)
    assert code == 2 and "nothing" in err, (code, out, err)
    code, out, err = cli(env, "sensors", "delete", "partners")
    assert code == 0 and "sensor partners deleted" in out
