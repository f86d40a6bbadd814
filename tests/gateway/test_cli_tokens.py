"""`control-room workspace` and `token`: tokens minted by the CLI work against the gateway,
and stop working once revoked."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from control_room.cli import app
from tests.helpers import TEST_JWT_SECRET, running_gateway

runner = CliRunner()
ENV = {"CONTROL_ROOM_JWT_SECRET": TEST_JWT_SECRET}


def cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args), env=env if env is not None else ENV)
    return result.exit_code, result.stdout, result.stderr


def rpc(client: httpx.Client, token: str, fn: str, args: dict[str, object]) -> httpx.Response:
    return client.post(f"/rest/v1/rpc/{fn}", json=args,
                       headers={"Authorization": f"Bearer {token}", "Content-Profile": "ops"})


def test_tokens_from_the_cli_act_as_their_principal(db_url: str) -> None:
    code, out, err = cli("workspace", "create", "Finance Lake", "--env", "prod", "--json",
                         "--database-url", db_url)
    assert code == 0, err
    workspace = json.loads(out)
    assert (workspace["slug"], workspace["env"]) == ("finance-lake", "prod")

    code, out, err = cli("token", "create", "--workspace", "finance-lake", "--role", "developer",
                         "--name", "ci", "--ttl", "1h", "--json", "--database-url", db_url)
    assert code == 0, err
    developer = json.loads(out)
    code, out, err = cli("token", "create", "--workspace", workspace["id"], "--role", "executor",
                         "--json", "--database-url", db_url)
    assert code == 0, err
    executor = json.loads(out)
    assert executor["principal_id"] != developer["principal_id"]

    with running_gateway(db_url) as url, httpx.Client(base_url=url) as client:
        created = rpc(client, developer["token"], "create_run", {
            "workspace_id": workspace["id"], "spec_slug": "nightly", "git_sha": "abcdef1",
            "phases": [{"name": "extract", "kind": "python"}]})
        assert created.status_code == 200, created.text
        claim = rpc(client, executor["token"], "claim_phase", {})
        assert claim.status_code == 200 and claim.json()["name"] == "extract"
        assert claim.json()["run_id"] == created.json()["id"]
        # executors may not create runs
        refused = rpc(client, executor["token"], "create_run", {
            "workspace_id": workspace["id"], "spec_slug": "x", "git_sha": "abcdef1",
            "phases": [{"name": "a", "kind": "python"}]})
        assert refused.status_code == 403

        code, out, err = cli("token", "revoke", executor["principal_id"], "--database-url", db_url)
        assert code == 0, err
        assert "revoked" in out
        after = rpc(client, executor["token"], "heartbeat",
                    {"lease_token": claim.json()["lease_token"]})
        assert after.status_code == 401 and after.json()["hint"] == "unauthorized"
        assert rpc(client, developer["token"], "list_runs", {}).status_code == 200

    code, out, _ = cli("workspace", "list", "--json", "--database-url", db_url)
    assert code == 0 and [w["slug"] for w in json.loads(out)] == ["finance-lake"]


def test_a_service_token(db_url: str) -> None:
    code, out, err = cli("token", "create", "--service", "--ttl", "10m", "--json")
    assert code == 0, err
    token = json.loads(out)["token"]
    with running_gateway(db_url) as url, httpx.Client(base_url=url) as client:
        response = rpc(client, token, "create_workspace", {"slug": "ops", "name": "Ops"})
        assert response.status_code == 200, response.text


@pytest.mark.parametrize(("args", "message"), [
    (["token", "create", "--workspace", "nope", "--role", "executor"], "no workspace 'nope'"),
    (["token", "create", "--workspace", "w", "--role", "root"], "--role must be"),
    (["token", "create", "--workspace", "w", "--ttl", "forever"], "--ttl must be"),
    (["token", "create", "--role", "viewer"], "--workspace is required"),
    (["workspace", "create", "X", "--env", "qa"], "--env must be dev, stage or prod"),
    (["token", "revoke", "not-a-uuid"], "principal_id is not a valid UUID"),
    (["token", "revoke", "00000000-0000-0000-0000-000000000000"], "principal not found"),
])
def test_bad_input_exits_2_with_one_line(db_url: str, args: list[str], message: str) -> None:
    code, out, err = cli(*args, "--database-url", db_url)
    assert code == 2, (out, err)
    assert message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_without_a_configured_secret_one_is_kept_in_the_state_dir(tmp_path: Path) -> None:
    code, first, err = cli("token", "create", "--service", "--json", "--state-dir",
                           str(tmp_path), env={})
    assert code == 0, err
    secret_file = tmp_path / "jwt_secret"
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    secret = secret_file.read_text().strip()
    assert len(secret) >= 48
    code, second, _ = cli("token", "create", "--service", "--json", "--state-dir",
                          str(tmp_path), env={})
    assert code == 0 and secret_file.read_text().strip() == secret
    import jwt

    for out in (first, second):
        claims = jwt.decode(json.loads(out)["token"], secret, algorithms=["HS256"])
        assert claims["role"] == "service_role"
