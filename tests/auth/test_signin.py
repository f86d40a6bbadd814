"""/auth/v1 (GoTrue's shape) on the real gateway: sign-in, refresh rotation and reuse,
logout that takes effect at once, expiry, rate limits, and the audit log of it all."""

from __future__ import annotations

import base64
import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from control_room.users import disable_user, set_password
from tests.auth.conftest import Auth, bearer
from tests.helpers import running_gateway


def claims_of(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    padded = payload + "=" * (-len(payload) % 4)
    decoded: dict[str, Any] = json.loads(base64.urlsafe_b64decode(padded))
    return decoded


def gotrue_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert (body["code"], body["error_code"]) == (status, code), body
    assert isinstance(body["msg"], str) and body["msg"]


def test_sign_in_answers_a_session_whose_token_works_on_the_contract(auth: Auth) -> None:
    ws = auth.workspace()
    email, principal = auth.user("developer", ws, name="Dana")
    response = auth.sign_in(email.upper())            # emails are case-insensitive
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    session = response.json()
    assert session["token_type"] == "bearer"
    assert session["expires_in"] == 900
    assert abs(session["expires_at"] - (time.time() + 900)) < 30
    assert isinstance(session["refresh_token"], str) and len(session["refresh_token"]) >= 32
    user = session["user"]
    assert (user["id"], user["email"], user["aud"], user["role"]) == (
        principal, email, "authenticated", "authenticated")
    assert user["app_metadata"] == {"provider": "email", "providers": ["email"]}
    assert user["user_metadata"] == {"name": "Dana"}
    assert user["identities"] == [] and user["last_sign_in_at"] is not None
    claims = claims_of(session["access_token"])
    assert (claims["role"], claims["aud"], claims["sub"], claims["email"], claims["aal"]) == (
        "authenticated", "authenticated", principal, email, "aal1")
    assert claims["exp"] - claims["iat"] == 900 and claims["iss"]
    assert claims["amr"][0]["method"] == "password" and claims["session_id"]

    listed = auth.rpc(session["access_token"], "list_workspaces")
    assert listed.status_code == 200, listed.text
    assert [(w["id"], w["role"]) for w in listed.json()] == [(ws, "developer")]

    with auth.client() as c:
        me = c.get("/auth/v1/user", headers=bearer(session["access_token"]))
    assert me.status_code == 200, me.text
    assert (me.json()["id"], me.json()["email"]) == (principal, email)


def test_wrong_password_unknown_email_and_disabled_user_look_the_same(auth: Auth) -> None:
    email, _ = auth.user()
    disabled, _ = auth.user()
    disable_user(auth.db_url, disabled)
    answers = [auth.sign_in(email, "not the password"), auth.sign_in("nobody@example.org"),
               auth.sign_in(disabled)]
    bodies = []
    for answer in answers:
        gotrue_error(answer, 400, "invalid_credentials")
        bodies.append(answer.json())
    assert bodies[0] == bodies[1] == bodies[2]
    # the right password still works for the enabled user
    assert auth.sign_in(email).status_code == 200


@pytest.mark.parametrize(("params", "body", "code"), [
    ({"grant_type": "magic"}, {"email": "a@b.c", "password": "x"}, "unsupported_grant_type"),
    ({}, {"email": "a@b.c", "password": "x"}, "unsupported_grant_type"),
    ({"grant_type": "password"}, {"email": "a@b.c"}, "validation_failed"),
    ({"grant_type": "password"}, {"password": "12345678"}, "validation_failed"),
    ({"grant_type": "password"}, {"email": 5, "password": "12345678"}, "validation_failed"),
    ({"grant_type": "password"}, [1, 2], "validation_failed"),
    ({"grant_type": "refresh_token"}, {}, "validation_failed"),
    ({"grant_type": "refresh_token"}, {"refresh_token": "never-issued"},
     "refresh_token_not_found"),
])
def test_bad_requests_are_400_with_a_code(auth: Auth, params: dict[str, str], body: Any,
                                          code: str) -> None:
    with auth.client() as c:
        gotrue_error(c.post("/auth/v1/token", params=params, json=body), 400, code)


def test_malformed_json_and_tokens(auth: Auth) -> None:
    with auth.client() as c:
        gotrue_error(c.post("/auth/v1/token", params={"grant_type": "password"},
                            content=b"{not json"), 400, "validation_failed")
        gotrue_error(c.get("/auth/v1/user"), 401, "no_authorization")
        gotrue_error(c.get("/auth/v1/user", headers=bearer("a.b.c")), 401, "bad_jwt")
        gotrue_error(c.post("/auth/v1/logout"), 401, "no_authorization")
        gotrue_error(c.post("/auth/v1/logout", params={"scope": "everything"},
                            headers=bearer("a.b.c")), 400, "validation_failed")


def test_refresh_rotates_and_reuse_after_the_grace_revokes_the_session(auth: Auth) -> None:
    email, _ = auth.user("viewer", auth.workspace())
    t0 = datetime(2031, 1, 1, tzinfo=UTC)
    first = auth.sign_in(email, now=t0).json()
    second = auth.refresh(first["refresh_token"], now=t0 + timedelta(seconds=1))
    assert second.status_code == 200, second.text
    rotated = second.json()
    assert rotated["refresh_token"] != first["refresh_token"]
    assert claims_of(rotated["access_token"])["session_id"] == claims_of(
        first["access_token"])["session_id"]
    # within the grace (two tabs refreshing at once) the used token gets another successor
    again = auth.refresh(first["refresh_token"], now=t0 + timedelta(seconds=5))
    assert again.status_code == 200, again.text
    # later, its reuse is a stolen token's: the session is revoked
    reused = auth.refresh(first["refresh_token"], now=t0 + timedelta(seconds=30))
    gotrue_error(reused, 400, "refresh_token_already_used")
    gotrue_error(auth.refresh(rotated["refresh_token"], now=t0 + timedelta(seconds=31)),
                 400, "refresh_token_not_found")
    refused = auth.rpc(rotated["access_token"], "list_workspaces")
    assert refused.status_code == 401 and refused.json()["hint"] == "unauthorized"
    with auth.client() as c:
        gotrue_error(c.get("/auth/v1/user", headers=bearer(rotated["access_token"])),
                     403, "session_not_found")


def test_logout_refuses_the_access_token_at_once(auth: Auth) -> None:
    email, _ = auth.user("admin", auth.workspace())
    session = auth.sign_in(email).json()
    other = auth.sign_in(email).json()
    token = session["access_token"]
    assert auth.rpc(token, "list_workspaces").status_code == 200
    with auth.client() as c:
        out = c.post("/auth/v1/logout", headers=bearer(token))
        assert out.status_code == 204, out.text
        refused = auth.rpc(token, "list_workspaces")
        assert refused.status_code == 401, refused.text
        assert refused.json()["hint"] == "unauthorized"
        gotrue_error(c.get("/auth/v1/user", headers=bearer(token)), 403, "session_not_found")
        gotrue_error(auth.refresh(session["refresh_token"]), 400, "refresh_token_not_found")
        # scope local: the other session lives on; global ends it too
        assert auth.rpc(other["access_token"], "list_workspaces").status_code == 200
        third = auth.sign_in(email).json()
        assert c.post("/auth/v1/logout", params={"scope": "global"},
                      headers=bearer(third["access_token"])).status_code == 204
    assert auth.rpc(other["access_token"], "list_workspaces").status_code == 401


def test_password_change_and_disabling_end_sessions(auth: Auth) -> None:
    email, _ = auth.user("viewer", auth.workspace())
    token = auth.sign_in(email).json()["access_token"]
    set_password(auth.db_url, email, "a brand new password")
    assert auth.rpc(token, "list_workspaces").status_code == 401
    gotrue_error(auth.sign_in(email), 400, "invalid_credentials")
    token = auth.sign_in(email, "a brand new password").json()["access_token"]
    assert auth.rpc(token, "list_workspaces").status_code == 200
    disable_user(auth.db_url, email)
    assert auth.rpc(token, "list_workspaces").status_code == 401
    gotrue_error(auth.sign_in(email, "a brand new password"), 400, "invalid_credentials")


def test_sessions_end_after_the_session_ttl_without_a_refresh(auth: Auth) -> None:
    email, _ = auth.user("viewer", auth.workspace())
    t0 = datetime(2032, 1, 1, tzinfo=UTC)
    session = auth.sign_in(email, now=t0).json()
    week = timedelta(days=7)
    # a refresh before the end pushes it back
    refreshed = auth.refresh(session["refresh_token"], now=t0 + week - timedelta(hours=1))
    assert refreshed.status_code == 200, refreshed.text
    later = t0 + week + timedelta(hours=1)
    assert auth.rpc(refreshed.json()["access_token"], "list_workspaces",
                    now=later).status_code == 200
    ended = t0 + 2 * week
    assert auth.rpc(refreshed.json()["access_token"], "list_workspaces",
                    now=ended).status_code == 401
    gotrue_error(auth.refresh(refreshed.json()["refresh_token"], now=ended),
                 400, "refresh_token_not_found")


def test_an_expired_access_token_is_refused_and_a_refresh_renews_it(module_db_url: str,
                                                                     auth: Auth) -> None:
    email, _ = auth.user("viewer", auth.workspace())
    with running_gateway(module_db_url, auth_access_ttl_seconds=3) as url:
        short = Auth(url, module_db_url)
        session = short.sign_in(email).json()
        assert session["expires_in"] == 3
        assert short.rpc(session["access_token"], "list_workspaces").status_code == 200
        time.sleep(max(0.0, session["expires_at"] + 1.05 - time.time()))
        expired = short.rpc(session["access_token"], "list_workspaces")
        assert expired.status_code == 401 and "expired" in expired.json()["message"]
        with short.client() as c:
            gotrue_error(c.get("/auth/v1/user", headers=bearer(session["access_token"])),
                         401, "bad_jwt")
        renewed = short.refresh(session["refresh_token"])
        assert renewed.status_code == 200, renewed.text
        assert short.rpc(renewed.json()["access_token"], "list_workspaces").status_code == 200


def test_failed_sign_ins_are_rate_limited_per_email_and_recover(auth: Auth) -> None:
    email, _ = auth.user()
    t0 = datetime(2033, 1, 1, tzinfo=UTC)
    for second in range(3):
        gotrue_error(auth.sign_in(email, "wrong password", now=t0 + timedelta(seconds=second)),
                     400, "invalid_credentials")
    limited = auth.sign_in(email, now=t0 + timedelta(seconds=10))    # even the right one
    gotrue_error(limited, 429, "over_request_rate_limit")
    # the first failure (t0) leaves the 300 s window at t0+300: 290 s from t0+10
    assert limited.headers["retry-after"] == "290"
    # another email from the same address is not limited by this one's failures
    other, _ = auth.user()
    assert auth.sign_in(other, now=t0 + timedelta(seconds=11)).status_code == 200
    still = auth.sign_in(email, now=t0 + timedelta(seconds=299))
    gotrue_error(still, 429, "over_request_rate_limit")
    assert still.headers["retry-after"] == "1"
    assert auth.sign_in(email, now=t0 + timedelta(seconds=301)).status_code == 200


def test_failed_sign_ins_are_rate_limited_per_client_ip(db_url: str) -> None:
    with running_gateway(db_url, auth_max_failures_per_email=100,
                         auth_max_failures_per_ip=4) as url:
        ip = Auth(url, db_url)
        email, _ = ip.user()
        t0 = datetime(2034, 1, 1, tzinfo=UTC)
        for n in range(4):
            gotrue_error(ip.sign_in(f"nobody{n}@example.org", now=t0), 400,
                         "invalid_credentials")
        limited = ip.sign_in(email, now=t0 + timedelta(seconds=60))
        gotrue_error(limited, 429, "over_request_rate_limit")
        assert limited.headers["retry-after"] == "240"
        assert ip.sign_in(email, now=t0 + timedelta(seconds=301)).status_code == 200


def test_the_audit_log_is_for_the_workspaces_admins(auth: Auth) -> None:
    ws_a, ws_b = auth.workspace(), auth.workspace()
    admin_a, admin_a_id = auth.user("admin", ws_a, name="Ada")
    viewer_a, viewer_a_id = auth.user("viewer", ws_a)
    admin_b, admin_b_id = auth.user("admin", ws_b)
    tokens = {email: auth.sign_in(email).json()["access_token"]
              for email in (admin_a, viewer_a, admin_b)}
    gotrue_error(auth.sign_in(viewer_a, "guessing wrong"), 400, "invalid_credentials")
    gotrue_error(auth.sign_in("stranger@example.org", "guessing wrong"), 400,
                 "invalid_credentials")
    with auth.client() as c:
        assert c.post("/auth/v1/logout", headers=bearer(tokens[viewer_a])).status_code == 204

    page = auth.rpc(tokens[admin_a], "list_audit", {"workspace_id": ws_a})
    assert page.status_code == 200, page.text
    entries = page.json()["entries"]
    ids = [e["id"] for e in entries]
    assert ids == sorted(ids, reverse=True) and page.json()["next_before"] is None
    seen = {(e["function_name"], (e["actor"] or {}).get("id")) for e in entries}
    assert {("auth.signin", admin_a_id), ("auth.signin", viewer_a_id),
            ("auth.signin_failed", viewer_a_id), ("auth.logout", viewer_a_id),
            ("add_member", None)} <= seen
    assert {e["target_id"] for e in entries if e["function_name"] == "add_member"} == {
        admin_a_id, viewer_a_id}
    assert admin_b_id not in {(e["actor"] or {}).get("id") for e in entries}
    [failed] = [e for e in entries if e["function_name"] == "auth.signin_failed"]
    assert failed["details"]["reason"] == "wrong_password"
    assert failed["details"]["email"] == viewer_a and failed["target_type"] == "user"
    [mine] = [e for e in entries if e["function_name"] == "auth.signin"
              and e["actor"]["id"] == admin_a_id]
    assert mine["actor"] == {"id": admin_a_id, "name": "Ada", "email": admin_a}
    assert "stranger@example.org" not in json.dumps(entries)
    assert "guessing wrong" not in json.dumps(entries)

    # filters and paging
    only = auth.rpc(tokens[admin_a], "list_audit", {"workspace_id": ws_a,
                                                    "function_name": "auth.signin",
                                                    "principal_id": viewer_a_id}).json()
    assert [(e["function_name"], e["actor"]["id"]) for e in only["entries"]] == [
        ("auth.signin", viewer_a_id)]
    first = auth.rpc(tokens[admin_a], "list_audit", {"workspace_id": ws_a, "limit": 2}).json()
    assert [e["id"] for e in first["entries"]] == ids[:2] and first["next_before"] == ids[1]
    rest = auth.rpc(tokens[admin_a], "list_audit",
                    {"workspace_id": ws_a, "before": first["next_before"]}).json()
    assert [e["id"] for e in rest["entries"]] == ids[2:]

    # a viewer, and another workspace's admin, are refused; b's own log holds nothing of a's
    viewer = auth.sign_in(viewer_a).json()["access_token"]
    for token in (viewer, tokens[admin_b]):
        refused = auth.rpc(token, "list_audit", {"workspace_id": ws_a})
        assert refused.status_code == 403 and refused.json()["hint"] == "forbidden"
    theirs = auth.rpc(tokens[admin_b], "list_audit", {"workspace_id": ws_b}).json()["entries"]
    assert theirs and {(e["actor"] or {}).get("id") for e in theirs} == {admin_b_id, None}
    assert {e["target_id"] for e in theirs if e["target_type"] != "workspace"} == {admin_b_id}
    bad = auth.rpc(tokens[admin_a], "list_audit", {"workspace_id": ws_a, "limit": 0})
    assert bad.status_code == 400 and bad.json()["hint"] == "invalid_argument"
