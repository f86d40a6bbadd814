"""`control-room users`: create (password from stdin), list, set-password, disable,
add-to-workspace, and the bad input that exits 2 with a message."""

from __future__ import annotations

import json

import httpx
from typer.testing import CliRunner

from control_room.cli import app
from tests.helpers import TEST_JWT_SECRET, running_gateway

runner = CliRunner()
ENV = {"CONTROL_ROOM_JWT_SECRET": TEST_JWT_SECRET}
PASSWORD = "a long enough password"


def cli(db_url: str, *args: str, stdin: str | None = None) -> tuple[int, str, str]:
    result = runner.invoke(app, [*args, "--database-url", db_url], env=ENV, input=stdin)
    return result.exit_code, result.stdout, result.stderr


def sign_in(url: str, email: str, password: str) -> httpx.Response:
    return httpx.post(f"{url}/auth/v1/token", params={"grant_type": "password"},
                      json={"email": email, "password": password})


def test_users_from_the_cli_sign_in(db_url: str) -> None:
    code, out, err = cli(db_url, "workspace", "create", "Lake", "--json")
    assert code == 0, err
    workspace = json.loads(out)
    code, out, err = cli(db_url, "workspace", "create", "Other")
    assert code == 0, err
    code, out, err = cli(db_url, "users", "create", "--email", "Ann@Example.org", "--name",
                         "Ann", "--password-stdin", "--workspace", "lake", "--role", "admin",
                         "--json", stdin=PASSWORD + "\n")
    assert code == 0, err
    created = json.loads(out)
    assert (created["email"], created["role"]) == ("ann@example.org", "admin")
    assert PASSWORD not in out + err
    code, out, err = cli(db_url, "users", "create", "--email", "bob@example.org",
                         stdin=f"{PASSWORD}\n{PASSWORD}\n")     # prompted, confirmed
    assert code == 0, err
    assert "created user bob@example.org" in out and PASSWORD not in out + err

    code, out, err = cli(db_url, "users", "add-to-workspace", "--email", "bob@example.org",
                         "--workspace", workspace["id"], "--role", "viewer")
    assert code == 0, err
    code, out, err = cli(db_url, "users", "list", "--json")
    assert code == 0, err
    listed = {u["email"]: u for u in json.loads(out)}
    assert set(listed) == {"ann@example.org", "bob@example.org"}
    assert listed["ann@example.org"]["memberships"] == [
        {"workspace_id": workspace["id"], "slug": "lake", "role": "admin"}]
    assert [m["role"] for m in listed["bob@example.org"]["memberships"]] == ["viewer"]
    assert "password" not in out and "argon2" not in out
    code, out, err = cli(db_url, "users", "list")
    assert code == 0 and "ann@example.org" in out and "lake:admin" in out

    with running_gateway(db_url) as url:
        session = sign_in(url, "ann@example.org", PASSWORD)
        assert session.status_code == 200, session.text
        token = session.json()["access_token"]
        listed_ws = httpx.post(f"{url}/rest/v1/rpc/list_workspaces", json={},
                               headers={"Authorization": f"Bearer {token}"})
        assert [(w["slug"], w["role"]) for w in listed_ws.json()] == [("lake", "admin")]

        code, out, err = cli(db_url, "users", "set-password", "--email", "ann@example.org",
                             "--password-stdin", stdin="another fine password\n")
        assert code == 0, err
        assert sign_in(url, "ann@example.org", PASSWORD).status_code == 400
        assert sign_in(url, "ann@example.org", "another fine password").status_code == 200

        code, out, err = cli(db_url, "users", "disable", "--email", "bob@example.org")
        assert code == 0, err
        refused = sign_in(url, "bob@example.org", PASSWORD)
        assert refused.status_code == 400
        assert refused.json()["error_code"] == "invalid_credentials"


def test_bad_input_exits_2_with_a_message(db_url: str) -> None:
    code, _, err = cli(db_url, "workspace", "create", "Lake")
    assert code == 0, err
    cases = [
        (("users", "create", "--email", "short@example.org", "--password-stdin"), "short\n",
         "8 to 256 characters"),
        (("users", "create", "--email", "long@example.org", "--password-stdin"),
         "x" * 257 + "\n", "8 to 256 characters"),
        (("users", "create", "--email", "empty@example.org", "--password-stdin"), "",
         "stdin held no password"),
        (("users", "create", "--email", "not-an-email", "--password-stdin"), PASSWORD + "\n",
         "not an email address"),
        (("users", "create", "--email", "w@example.org", "--password-stdin", "--workspace",
          "nowhere"), PASSWORD + "\n", "no workspace 'nowhere'"),
        (("users", "create", "--email", "r@example.org", "--password-stdin", "--workspace",
          "lake", "--role", "executor"), PASSWORD + "\n", "--role must be"),
        (("users", "set-password", "--email", "ghost@example.org", "--password-stdin"),
         PASSWORD + "\n", "no user with email ghost@example.org"),
        (("users", "disable", "--email", "ghost@example.org"), None,
         "no user with email ghost@example.org"),
        (("users", "add-to-workspace", "--email", "ghost@example.org", "--workspace", "lake",
          "--role", "viewer"), None, "no user with email ghost@example.org"),
    ]
    for args, stdin, message in cases:
        code, out, err = cli(db_url, *args, stdin=stdin)
        assert code == 2, (args, out, err)
        assert message in err and "Traceback" not in err, (args, err)
        assert err.startswith("error: ") and (stdin is None or stdin.strip() == ""
                                              or stdin.strip() not in err)
    code, _, err = cli(db_url, "users", "create", "--email", "dup@example.org",
                       "--password-stdin", stdin=PASSWORD + "\n")
    assert code == 0, err
    code, _, err = cli(db_url, "users", "create", "--email", "DUP@example.org",
                       "--password-stdin", stdin=PASSWORD + "\n")
    assert code == 2 and "already exists" in err and PASSWORD not in err
    # nothing half-made: the refused users do not exist
    code, out, _ = cli(db_url, "users", "list", "--json")
    assert [u["email"] for u in json.loads(out)] == ["dup@example.org"]
