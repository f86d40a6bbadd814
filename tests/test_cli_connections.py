"""`control-room connections` against the real gateway over a fresh database: create, list,
show, update (rotate), delete, and `test` making real connections (Postgres, moto's S3
server, a local server speaking Trino's client protocol, HTTP), under the CLI's own secret
policy; bad input exits 2, a failed connection 1, and no message carries a secret value."""

from __future__ import annotations

import contextlib
import http.server
import json
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import boto3
import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from typer.testing import CliRunner

from control_room.cli import app
from control_room.cli.connections import PROBES
from control_room.contract.vocabulary import CONNECTION_TYPES
from tests.executor.harness import Env, gateway_env
from tests.executor.test_artifacts import running_moto_server

runner = CliRunner()
SECRET = "Pw-of-the-cli-test-4242"


@pytest.fixture
def env(conn: psycopg.Connection[Any], db_url: str, tmp_path: Path) -> Iterator[Env]:
    with gateway_env(conn, db_url, tmp_path) as environment:
        yield environment


def cli(env: Env, *args: str, principal: Any = None, allow: str | None = None,
        **extra: str | None) -> tuple[int, str, str]:
    """`control-room ARGS` as w1's admin (or `principal`), secret policy `allow`."""
    variables: dict[str, str | None] = {
        "CONTROL_ROOM_GATEWAY_URL": env.rest_url,
        "CONTROL_ROOM_TOKEN": env.contract.token(principal or env.world.admin1),
        "CONTROL_ROOM_WORKSPACE": env.world.w1,
        "CONTROL_ROOM_STATE_DIR": str(env.tmp / "state"),
        "CONTROL_ROOM_SECRET_ALLOW": allow,
        "COLUMNS": "200",
    }
    variables.update(extra)
    result = runner.invoke(app, list(args), env=variables)
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        result.exception)
    assert "Traceback" not in result.stderr
    return result.exit_code, result.stdout, result.stderr


def ok_json(env: Env, *args: str, **extra: Any) -> Any:
    code, out, err = cli(env, *args, "--json", **extra)
    assert code == 0, err
    return json.loads(out)


def bad(env: Env, *args: str, **extra: Any) -> str:
    code, out, err = cli(env, *args, **extra)
    assert code == 2, (code, out, err)
    return " ".join(err.split())


# ------------------------------------------------------------------------------ registering

def test_create_list_show_update_delete(env: Env) -> None:
    created = ok_json(env, "connections", "create", "odoo", "--type", "postgres",
                      "--config", "dsn=postgresql://odoo@db:5432/odoo",
                      "--config", "options={\"sslmode\": \"require\"}",
                      "--secret", "password=env:ODOO_PASSWORD",
                      "--description", "the ERP")
    assert (created["name"], created["type"], created["version"]) == ("odoo", "postgres", 1)
    assert created["config"] == {"dsn": "postgresql://odoo@db:5432/odoo",
                                 "options": {"sslmode": "require"}}
    assert created["secrets"] == {"password": "env:ODOO_PASSWORD"}
    ok_json(env, "connections", "create", "lake", "--type", "s3", "--config", "bucket=b")

    listed = ok_json(env, "connections", "list", principal=env.world.viewer1)
    assert [c["name"] for c in listed] == ["lake", "odoo"]
    code, out, err = cli(env, "connections", "list")
    assert code == 0, err
    assert "password=env:ODOO_PASSWORD" in out and "the ERP" in out
    code, out, err = cli(env, "connections", "show", "odoo", principal=env.world.viewer1)
    assert code == 0, err
    assert "config.dsn" in out and "secret.password" in out and "env:ODOO_PASSWORD" in out

    # rotate: a new reference for one field, the rest kept (merged); --replace replaces all
    rotated = ok_json(env, "connections", "update", "odoo",
                      "--secret", "password=file:/run/secrets/odoo")
    assert rotated["version"] == 2
    assert rotated["secrets"] == {"password": "file:/run/secrets/odoo"}
    assert rotated["config"]["dsn"] == "postgresql://odoo@db:5432/odoo"
    assert rotated["description"] == "the ERP"
    replaced = ok_json(env, "connections", "update", "odoo", "--replace",
                       "--config", "dsn=postgresql://db/odoo")
    assert replaced["config"] == {"dsn": "postgresql://db/odoo"}
    assert replaced["secrets"] == {"password": "file:/run/secrets/odoo"}   # not given: kept

    deleted = ok_json(env, "connections", "delete", "lake")
    assert deleted["name"] == "lake"
    assert [c["name"] for c in ok_json(env, "connections", "list")] == ["odoo"]


def test_bad_input_exits_2_naming_the_problem(env: Env) -> None:
    assert "--type must be one of postgres, s3, trino, spark, http, dbt-profile, not 'mysql'" \
        in bad(env, "connections", "create", "x", "--type", "mysql")
    assert "--secret password: malformed secret reference 'hunter2'" in bad(
        env, "connections", "create", "x", "--type", "postgres", "--secret",
        "password=hunter2")
    assert "--config must be NAME=VALUE" in bad(env, "connections", "create", "x", "--type",
                                                "http", "--config", "url")
    # the server refuses a secret value in config, without echoing it
    refused = bad(env, "connections", "create", "x", "--type", "postgres", "--config",
                  f"dsn=postgresql://u:{SECRET}@h/db")
    assert "config.dsn holds a password" in refused and SECRET not in refused
    assert "(forbidden)" in bad(env, "connections", "create", "x", "--type", "http",
                                "--config", "url=http://h", principal=env.world.viewer1)
    assert "not_found" in bad(env, "connections", "show", "nope")
    assert "nothing to change" in bad(env, "connections", "update", "nope")


# ------------------------------------------------------------------------------------ test

def test_every_connection_type_has_a_test() -> None:
    assert set(PROBES) == CONNECTION_TYPES


def without_password(url: str, **changes: str) -> str:
    params = {k: v for k, v in conninfo_to_dict(url).items() if k != "password" and v}
    return make_conninfo("", **{**params, **changes})


def test_postgres_is_tested_for_real_and_recorded(env: Env, db_url: str,
                                                 tmp_path: Path) -> None:
    secrets_dir = tmp_path / "secrets"
    secrets_dir.mkdir()
    (secrets_dir / "pg").write_text(SECRET + "\n")
    dsn = without_password(db_url)      # trust: the password is sent, not needed
    ok_json(env, "connections", "create", "pg", "--type", "postgres", "--config", f"dsn={dsn}",
            "--secret", f"password=file:{secrets_dir}/pg")
    allow = f"file:{secrets_dir}"
    code, out, err = cli(env, "connections", "test", "pg", allow=allow)
    assert code == 0, err
    assert "connection pg: ok" in out and "select 1 answered 1" in out
    shown = ok_json(env, "connections", "show", "pg")
    assert shown["last_test"]["ok"] is True
    assert "connected, select 1 answered 1" in shown["last_test"]["message"]

    # a database named like the secret: the server's error quotes it, the CLI masks it
    ok_json(env, "connections", "update", "pg", "--config",
            f"dsn={without_password(db_url, dbname=SECRET)}")
    code, out, err = cli(env, "connections", "test", "pg", "--json", allow=allow)
    assert code == 1
    answer = json.loads(out)
    assert answer["ok"] is False and "***" in answer["message"]
    assert SECRET not in out + err
    recorded = ok_json(env, "connections", "show", "pg")["last_test"]
    assert recorded["ok"] is False and SECRET not in json.dumps(recorded)
    code, out, err = cli(env, "connections", "test", "pg", allow=allow)
    assert code == 1 and err.startswith("error: connection pg: postgres ")
    assert SECRET not in out + err
    recorded = ok_json(env, "connections", "show", "pg")["last_test"]

    # refused by the CLI's own policy: exit 2 naming the missing entry, nothing recorded
    message = bad(env, "connections", "test", "pg")
    assert f"secret password: file:{secrets_dir}/pg is refused by this process's " \
           "CONTROL_ROOM_SECRET_ALLOW (unset): no file: entry allows any file" in message
    ok_json(env, "connections", "update", "pg", "--secret", "password=env:CONTROL_ROOM_TOKEN")
    message = bad(env, "connections", "test", "pg", allow="env:CONTROL_,file:/")
    assert "CONTROL_ROOM_* variables are the process's own settings and never resolve" in message
    assert ok_json(env, "connections", "show", "pg")["last_test"] == recorded
    assert "is not env:PREFIX or file:/dir" in bad(env, "connections", "test", "pg",
                                                   allow="vault:x")


def test_s3_lists_the_bucket_on_moto(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    with running_moto_server() as endpoint:
        bucket = f"lake-{uuid.uuid4().hex[:10]}"
        s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="test",
                          aws_secret_access_key="test", region_name="us-east-1")
        s3.create_bucket(Bucket=bucket)
        s3.put_object(Bucket=bucket, Key="bronze/a.parquet", Body=b"x")
        monkeypatch.setenv("CRT_S3_KEY_ID", "test")
        monkeypatch.setenv("CRT_S3_SECRET", "test")
        ok_json(env, "connections", "create", "lake", "--type", "s3",
                "--config", f"bucket={bucket}", "--config", f"endpoint_url={endpoint}",
                "--config", "region=us-east-1",
                "--secret", "access_key_id=env:CRT_S3_KEY_ID",
                "--secret", "secret_access_key=env:CRT_S3_SECRET")
        answer = ok_json(env, "connections", "test", "lake", allow="env:CRT_S3_")
        assert answer["ok"] is True
        assert answer["message"] == f"s3://{bucket}/ at {endpoint}: listed, 1 object(s)"
        ok_json(env, "connections", "update", "lake", "--config", "bucket=no-such-bucket")
        code, _, err = cli(env, "connections", "test", "lake", allow="env:CRT_S3_")
        assert code == 1 and "NoSuchBucket" in err
    assert ok_json(env, "connections", "show", "lake")["last_test"]["ok"] is False


class FakeTrino(http.server.BaseHTTPRequestHandler):
    """Trino's client protocol as documented (POST /v1/statement, then nextUri until none),
    and a plain HTTP endpoint: /health 200, anything else 404."""

    seen: ClassVar[list[tuple[str, str, dict[str, str]]]] = []
    fail_query: ClassVar[bool] = False

    server: http.server.HTTPServer

    def log_message(self, *args: Any) -> None:
        pass

    def _answer(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", 0))
        query = self.rfile.read(length).decode()
        FakeTrino.seen.append(("POST", self.path, {**dict(self.headers), "query": query}))
        if self.path != "/v1/statement":
            self._answer(404, {})
            return
        base = f"http://127.0.0.1:{self.server.server_port}"
        self._answer(200, {"id": "q1", "infoUri": f"{base}/ui/q1",
                           "nextUri": f"{base}/v1/statement/queued/q1/1",
                           "stats": {"state": "QUEUED"}})

    def do_GET(self) -> None:
        FakeTrino.seen.append(("GET", self.path, dict(self.headers)))
        base = f"http://127.0.0.1:{self.server.server_port}"
        if self.path == "/health":
            self._answer(200, {"ok": True})
        elif self.path == "/v1/statement/queued/q1/1":
            if FakeTrino.fail_query:
                self._answer(200, {"id": "q1", "stats": {"state": "FAILED"}, "error": {
                    "message": "line 1:1: mismatched input", "errorName": "SYNTAX_ERROR"}})
                return
            self._answer(200, {"id": "q1", "nextUri": f"{base}/v1/statement/executing/q1/2",
                               "columns": [{"name": "_col0", "type": "integer"}],
                               "data": [[1]], "stats": {"state": "RUNNING"}})
        elif self.path == "/v1/statement/executing/q1/2":
            self._answer(200, {"id": "q1", "columns": [{"name": "_col0", "type": "integer"}],
                               "stats": {"state": "FINISHED"}})
        else:
            self._answer(404, {"error": "not found"})


@contextlib.contextmanager
def fake_trino() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeTrino)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_trino_follows_the_client_protocol_and_http_gets_its_url(
        env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRT_TRINO_PASSWORD", SECRET)
    FakeTrino.seen, FakeTrino.fail_query = [], False
    with fake_trino() as base:
        ok_json(env, "connections", "create", "trino", "--type", "trino", "--config",
                f"url={base}", "--config", "user=analyst", "--config", "catalog=lake",
                "--secret", "password=env:CRT_TRINO_PASSWORD")
        answer = ok_json(env, "connections", "test", "trino", allow="env:CRT_")
        assert answer["ok"] is True, answer
        assert answer["message"] == f"trino {base}: select 1 answered 1 (state FINISHED)"
        assert [(m, p) for m, p, _ in FakeTrino.seen] == [
            ("POST", "/v1/statement"), ("GET", "/v1/statement/queued/q1/1"),
            ("GET", "/v1/statement/executing/q1/2")]
        post = FakeTrino.seen[0][2]
        assert (post["query"], post["X-Trino-User"], post["X-Trino-Catalog"]) == (
            "select 1", "analyst", "lake")
        assert post["Authorization"].startswith("Basic ")
        FakeTrino.fail_query = True
        code, _, err = cli(env, "connections", "test", "trino", allow="env:CRT_")
        assert code == 1 and "query failed: SYNTAX_ERROR: line 1:1: mismatched input" in err

        ok_json(env, "connections", "create", "api", "--type", "http", "--config",
                f"url={base}/health")
        assert ok_json(env, "connections", "test", "api")["message"] == (
            f"GET {base}/health: HTTP 200 OK")
        ok_json(env, "connections", "update", "api", "--config", f"url={base}/missing")
        code, _, err = cli(env, "connections", "test", "api")
        assert code == 1 and f"GET {base}/missing: HTTP 404 Not Found" in err
    ok_json(env, "connections", "create", "ftp", "--type", "http", "--config", "url=ftp://h/x")
    assert "connection 'ftp': config.url must be an http(s) URL" in bad(
        env, "connections", "test", "ftp")
    code, _, err = cli(env, "connections", "test", "api")     # the server is gone
    assert code == 1 and "ConnectError" in err


def test_spark_and_dbt_profiles_have_their_config_checked(env: Env, tmp_path: Path) -> None:
    (tmp_path / "profiles.yml").write_text("lake: {}\n")
    ok_json(env, "connections", "create", "spark", "--type", "spark", "--config",
            "master=spark://spark:7077", "--config", 'conf={"spark.executor.memory": "2g"}')
    answer = ok_json(env, "connections", "test", "spark")
    assert answer["message"] == ("spark: config checked (master spark://spark:7077, 1 conf "
                                 "setting(s)); no Spark session was started")
    ok_json(env, "connections", "update", "spark", "--config", "master=nowhere")
    assert "config.master must be local, local[N], yarn" in bad(env, "connections", "test",
                                                                "spark")
    ok_json(env, "connections", "create", "dbt", "--type", "dbt-profile", "--config",
            "profile=lake", "--config", "target=prod", "--config", f"profiles_dir={tmp_path}")
    assert ok_json(env, "connections", "test", "dbt")["message"] == (
        f"dbt-profile: config checked (profile lake, target prod, {tmp_path}/profiles.yml "
        "found); dbt was not run")
    ok_json(env, "connections", "update", "dbt", "--replace", "--config", "target=prod")
    assert "config.profile is required" in bad(env, "connections", "test", "dbt")
