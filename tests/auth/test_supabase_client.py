"""supabase-py's auth client (the Python twin of supabase-js) signs in, reads the user,
refreshes and signs out against the gateway's /auth/v1, as against a Supabase project."""

from __future__ import annotations

import pytest
from supabase_auth.errors import AuthApiError

from supabase import create_client
from tests.auth.conftest import PASSWORD, Auth


def test_supabase_auth_client_against_the_gateway(auth: Auth) -> None:
    ws = auth.workspace()
    email, principal = auth.user("developer", ws)
    sb = create_client(auth.url, "an-anon-key")
    signed = sb.auth.sign_in_with_password({"email": email, "password": PASSWORD})
    assert signed.user is not None and signed.session is not None
    assert (signed.user.id, signed.user.email) == (principal, email)
    assert signed.session.expires_in == 900
    got = sb.auth.get_user()
    assert got is not None and got.user.id == principal
    refreshed = sb.auth.refresh_session()
    assert refreshed.session is not None
    assert refreshed.session.refresh_token != signed.session.refresh_token
    token = refreshed.session.access_token
    assert auth.rpc(token, "list_workspaces").json()[0]["id"] == ws
    with pytest.raises(AuthApiError) as info:
        create_client(auth.url, "an-anon-key").auth.sign_in_with_password(
            {"email": email, "password": "not the password"})
    assert (info.value.status, info.value.code) == (400, "invalid_credentials")
    sb.auth.sign_out()
    assert auth.rpc(token, "list_workspaces").status_code == 401
