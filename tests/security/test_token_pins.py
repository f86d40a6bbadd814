"""Executor tokens are pinned to their workspaces when minted (JWT claim `workspaces`).

`mint_token(..., workspaces=[...])` writes the claim; `control-room token create --role
executor` pins the token to its `--workspace` (repeatable) and creates the principal owned by
the first one, so that workspace's admins may revoke it; the local stack pins its executor to
the `local` workspace. The claims those tokens make are checked in test_enrolment.py; here the
minting, and the CLI's tokens against the real gateway.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
import jwt
import psycopg
import pytest
from typer.testing import CliRunner

from control_room.cli import app
from control_room.gateway.auth import mint_token
from tests.helpers import TEST_JWT_SECRET, running_gateway

runner = CliRunner()
ENV = {"CONTROL_ROOM_JWT_SECRET": TEST_JWT_SECRET}


def cli(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args), env=ENV)
    return result.exit_code, result.stdout, result.stderr


def claims_of(token: str) -> dict[str, Any]:
    decoded: dict[str, Any] = jwt.decode(token, TEST_JWT_SECRET, algorithms=["HS256"],
                                         options={"verify_aud": False})
    return decoded


def rpc(client: httpx.Client, token: str, fn: str, args: dict[str, Any]) -> httpx.Response:
    return client.post(f"/rest/v1/rpc/{fn}", json=args,
                       headers={"Authorization": f"Bearer {token}", "Content-Profile": "ops"})


def test_mint_token_writes_the_pins() -> None:
    a, b = str(uuid.uuid4()), str(uuid.uuid4())
    token = mint_token(TEST_JWT_SECRET, role="authenticated", sub=str(uuid.uuid4()),
                       workspaces=[b, a, a])
    assert claims_of(token)["workspaces"] == sorted({a, b})
    unpinned = mint_token(TEST_JWT_SECRET, role="authenticated", sub=str(uuid.uuid4()))
    assert "workspaces" not in claims_of(unpinned)
    with pytest.raises(ValueError, match="UUID"):
        mint_token(TEST_JWT_SECRET, role="authenticated", workspaces=["finance"])
    with pytest.raises(ValueError, match="list"):
        mint_token(TEST_JWT_SECRET, role="authenticated", workspaces=a)


def test_cli_executor_tokens_are_pinned_and_owned(db_url: str) -> None:
    ids = {}
    for name in ("finance", "sales", "hr"):
        code, out, err = cli("workspace", "create", name, "--json", "--database-url", db_url)
        assert code == 0, err
        ids[name] = json.loads(out)["id"]
    code, out, err = cli("token", "create", "--workspace", "finance", "--workspace", "sales",
                         "--role", "executor", "--name", "etl", "--json",
                         "--database-url", db_url)
    assert code == 0, err
    executor = json.loads(out)
    assert claims_of(executor["token"])["workspaces"] == sorted([ids["finance"], ids["sales"]])
    assert executor["workspaces"] == [ids["finance"], ids["sales"]]
    code, out, err = cli("token", "create", "--workspace", "finance", "--role", "admin",
                         "--json", "--database-url", db_url)
    assert code == 0, err
    admin = json.loads(out)
    assert "workspaces" not in claims_of(admin["token"])     # users are not pinned
    # one workspace for a user token
    code, _, err = cli("token", "create", "--workspace", "finance", "--workspace", "sales",
                       "--role", "viewer", "--database-url", db_url)
    assert code == 2 and "only an executor token serves several workspaces" in err

    with psycopg.connect(db_url) as conn:
        owners: dict[str, str] = dict(conn.execute(
            "select id::text, owner_workspace_id::text from ops.principals").fetchall())
        memberships = sorted(str(r[0]) for r in conn.execute(
            "select workspace_id from ops.workspace_members where principal_id = %s",
            (executor["principal_id"],)).fetchall())
    assert owners[executor["principal_id"]] == ids["finance"]
    assert owners[admin["principal_id"]] == ids["finance"]
    assert memberships == sorted([ids["finance"], ids["sales"]])

    with running_gateway(db_url) as url, httpx.Client(base_url=url, timeout=30) as client:
        developer = cli("token", "create", "--workspace", "hr", "--role", "developer", "--json",
                        "--database-url", db_url)
        dev_token = json.loads(developer[1])["token"]
        created = rpc(client, dev_token, "create_run", {
            "workspace_id": ids["hr"], "spec_slug": "payroll", "git_sha": "abcdef1",
            "phases": [{"name": "p", "kind": "python"}]})
        assert created.status_code == 200, created.text
        # enrolled in hr later by an operator: the token still claims nothing there
        with psycopg.connect(db_url) as conn:
            conn.execute("select ops.add_member(%s, %s, 'executor')",
                         (ids["hr"], executor["principal_id"]))
        assert rpc(client, executor["token"], "claim_phase", {}).json() is None
        refused = rpc(client, executor["token"], "claim_phase", {"workspace_id": ids["hr"]})
        assert refused.status_code == 403
        assert json.loads(refused.json()["details"])["reason"] == "workspace_not_pinned"
        # finance's admin revokes the executor finance owns; its token stops at once
        revoked = rpc(client, admin["token"], "revoke_principal",
                      {"principal_id": executor["principal_id"]})
        assert revoked.status_code == 200, revoked.text
        assert rpc(client, executor["token"], "list_workspaces", {}).status_code == 401


def test_the_local_stacks_executor_is_pinned_to_the_local_workspace(
        db_url: str, tmp_path: Any) -> None:
    from control_room.localstack import LocalStack
    from control_room.settings import load_settings

    settings = load_settings(database_url=db_url, state_dir=tmp_path / "state", port=0,
                             jwt_secret=TEST_JWT_SECRET)
    with LocalStack(settings, workers=0) as stack:
        assert stack.info is not None
        assert stack.info.executor_token is not None
        pins = claims_of(stack.info.executor_token.get_secret_value())["workspaces"]
        assert pins == [stack.info.workspace_id]
        assert "workspaces" not in claims_of(stack.info.token.get_secret_value())
        with psycopg.connect(db_url) as conn:
            owners = {str(r[0]) for r in conn.execute(
                "select owner_workspace_id from ops.principals"
                " where name in ('local-operator', 'local-executor')").fetchall()}
        assert owners == {stack.info.workspace_id}
