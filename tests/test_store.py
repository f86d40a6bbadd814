"""control_room.db.store against throwaway `ops` functions in a shimmed database."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest

from control_room.db.migrate import migrate
from control_room.db.store import (
    ContractError,
    acting_as,
    call,
    call_as,
    contract_error,
    http_status,
    wrap_errors,
)
from tests.helpers import temporary_database

FUNCTIONS = """
create schema ops;
-- the pre-request hook every request runs (the migrations' refuses revoked principals)
create schema ops_private;
create function ops_private.pre_request() returns void language sql as $$ select $$;
grant usage on schema ops_private to anon, authenticated, service_role;
grant execute on function ops_private.pre_request() to anon, authenticated, service_role;
create table ops.calls (fn text not null, at timestamptz not null default now());
grant usage on schema ops to anon, authenticated, service_role;
grant insert on ops.calls to anon, authenticated, service_role;

create function ops.echo(p_payload jsonb, p_tags text[] default '{}', p_n int default 1)
returns jsonb language sql volatile as $$
    insert into ops.calls (fn) values ('echo');
    select jsonb_build_object('payload', p_payload, 'tags', to_jsonb(p_tags), 'n', p_n)
$$;

create function ops.lose_lease(p_phase_id uuid) returns jsonb language plpgsql as $$
begin
    raise sqlstate 'PT409' using message = 'lease lost', detail = p_phase_id::text,
        hint = 'lease_lost';
end $$;

create function ops.plain_raise() returns void language plpgsql as $$
begin
    raise exception 'something is wrong';
end $$;

create function ops.noop() returns void language plpgsql as $$ begin end $$;

create function ops.take_int(p_n int) returns int language sql as $$ select p_n * 2 $$;

create function ops.take_text(p_text text) returns text language sql as $$ select p_text $$;

create function ops.whoami() returns jsonb language sql stable as $$
    select jsonb_build_object(
        'uid', auth.uid(), 'role', current_setting('role'), 'jwt_role', auth.role(),
        'claims', auth.jwt(), 'now', current_setting('control_room.now', true),
        'search_path', current_setting('search_path'))
$$;

create function ops.rows(p_count int) returns table (n int, label text) language sql as $$
    select g, 'row ' || g from generate_series(1, p_count) as g
$$;

create function ops.secret() returns int language sql as $$ select 42 $$;
revoke execute on function ops.secret() from public;

grant execute on all functions in schema ops to anon, authenticated, service_role;
revoke execute on function ops.secret() from anon, authenticated, service_role;
"""


@pytest.fixture(scope="module")
def ops_db_url(pg_admin_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A database with the shim (no migrations) and the throwaway functions above."""
    empty_migrations: Path = tmp_path_factory.mktemp("no-migrations")
    with temporary_database(pg_admin_url, suffix="store") as url:
        migrate(url, empty_migrations)
        with psycopg.connect(url) as setup:
            setup.execute(FUNCTIONS.encode())
        yield url


@pytest.fixture
def ops_conn(ops_db_url: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(ops_db_url) as connection:
        yield connection


def calls_made(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("select count(*) from ops.calls").fetchone()
    conn.rollback()
    assert row is not None
    return int(row[0])


def test_call_with_named_arguments(ops_conn: psycopg.Connection[Any]) -> None:
    with acting_as(ops_conn, role="service_role"):
        result = call(ops_conn, "echo", {"p_payload": {"a": [1, 2]}, "p_tags": ["x", "y"]})
        assert result == {"payload": {"a": [1, 2]}, "tags": ["x", "y"], "n": 1}
        assert call(ops_conn, "echo", {"p_payload": "s", "p_tags": [], "p_n": 3})["n"] == 3
        assert call(ops_conn, "echo", {"p_payload": None}) == {
            "payload": None, "tags": [], "n": 1,
        }
        assert call(ops_conn, "rows", {"p_count": 2}) == [
            {"n": 1, "label": "row 1"}, {"n": 2, "label": "row 2"},
        ]
        assert call(ops_conn, "noop") is None


def test_pt409_with_hint_is_lease_lost(ops_conn: psycopg.Connection[Any]) -> None:
    phase = uuid.uuid4()
    with pytest.raises(ContractError) as caught, acting_as(ops_conn, role="authenticated"):
        call(ops_conn, "lose_lease", {"p_phase_id": str(phase)})
    error = caught.value
    assert (error.status, error.code, error.sqlstate) == (409, "lease_lost", "PT409")
    assert error.message == "lease lost"
    assert error.details == str(phase)
    assert error.hint == "lease_lost"
    assert isinstance(error.__cause__, psycopg.Error)
    assert error.body() == {
        "code": "PT409", "message": "lease lost", "details": str(phase), "hint": "lease_lost",
    }


def test_plain_raise_is_400(ops_conn: psycopg.Connection[Any]) -> None:
    with pytest.raises(ContractError) as caught, acting_as(ops_conn, role="service_role"):
        call(ops_conn, "plain_raise")
    assert (caught.value.status, caught.value.sqlstate) == (400, "P0001")
    assert caught.value.code == "internal"
    assert caught.value.message == "something is wrong"


def test_invalid_input_is_400_invalid_argument(ops_conn: psycopg.Connection[Any]) -> None:
    with pytest.raises(ContractError) as caught, acting_as(ops_conn, role="service_role"):
        call(ops_conn, "take_int", {"p_n": "not a number"})
    assert (caught.value.status, caught.value.code, caught.value.sqlstate) == (
        400, "invalid_argument", "22P02",
    )
    with pytest.raises(ContractError) as caught, acting_as(ops_conn, role="service_role"):
        call(ops_conn, "lose_lease", {"p_phase_id": "not-a-uuid"})
    assert (caught.value.status, caught.value.code) == (400, "invalid_argument")


def test_unknown_function_is_404(ops_conn: psycopg.Connection[Any]) -> None:
    with pytest.raises(ContractError) as caught, acting_as(ops_conn, role="service_role"):
        call(ops_conn, "no_such_function", {"p_x": 1})
    assert (caught.value.status, caught.value.code) == (404, "not_found")
    assert "ops.no_such_function" in caught.value.message


def test_unknown_argument_is_400_and_calls_nothing(ops_conn: psycopg.Connection[Any]) -> None:
    before = calls_made(ops_conn)
    with pytest.raises(ContractError) as caught, acting_as(ops_conn, role="service_role"):
        call(ops_conn, "echo", {"p_payload": {}, "p_bogus": 1})
    assert (caught.value.status, caught.value.code) == (400, "invalid_argument")
    assert "p_bogus" in caught.value.message
    with pytest.raises(ContractError) as caught, acting_as(ops_conn, role="service_role"):
        call(ops_conn, "echo", {"p_tags": ["x"]})
    assert (caught.value.status, caught.value.code) == (400, "invalid_argument")
    assert "p_payload" in caught.value.message
    assert calls_made(ops_conn) == before


def test_privilege_errors_are_401_for_anon_and_403_otherwise(
    ops_conn: psycopg.Connection[Any],
) -> None:
    with pytest.raises(ContractError) as caught, acting_as(ops_conn, role="anon"):
        call(ops_conn, "secret")
    assert (caught.value.status, caught.value.code, caught.value.sqlstate) == (
        401, "unauthorized", "42501",
    )
    with pytest.raises(ContractError) as caught, acting_as(ops_conn, role="authenticated"):
        call(ops_conn, "secret")
    assert (caught.value.status, caught.value.code) == (403, "forbidden")


def test_acting_as_sets_role_claims_and_clock(ops_conn: psycopg.Connection[Any]) -> None:
    user = uuid.uuid4()
    now = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    with acting_as(
        ops_conn, role="authenticated", sub=str(user), claims={"email": "a@b.c"}, now=now
    ):
        seen = call(ops_conn, "whoami")
        row = ops_conn.execute("select auth.uid(), current_setting('role')").fetchone()
    assert row == (user, "authenticated")
    assert seen["uid"] == str(user)
    assert seen["role"] == "authenticated"
    assert seen["jwt_role"] == "authenticated"
    assert seen["claims"] == {"email": "a@b.c", "role": "authenticated", "sub": str(user)}
    assert seen["now"] == now.isoformat()
    assert seen["search_path"] == "ops, public, extensions"
    # Everything was transaction-local: gone after the block.
    after = ops_conn.execute(
        "select auth.uid(), current_setting('role'), current_setting('control_room.now', true)"
    ).fetchone()
    ops_conn.rollback()
    assert after is not None
    assert after[0] is None and after[1] == "none" and not after[2]


def test_acting_as_commits_and_rolls_back(ops_conn: psycopg.Connection[Any]) -> None:
    before = calls_made(ops_conn)
    with acting_as(ops_conn, role="service_role"):
        call(ops_conn, "echo", {"p_payload": 1})
    assert calls_made(ops_conn) == before + 1
    with pytest.raises(RuntimeError, match="boom"), acting_as(ops_conn, role="service_role"):
        call(ops_conn, "echo", {"p_payload": 2})
        raise RuntimeError("boom")
    assert calls_made(ops_conn) == before + 1


def test_acting_as_refuses_unknown_roles_and_open_transactions(
    ops_conn: psycopg.Connection[Any],
) -> None:
    with pytest.raises(ValueError, match="role"), acting_as(ops_conn, role="postgres"):
        pass
    ops_conn.execute("select 1")
    with pytest.raises(RuntimeError, match="outside any transaction"), acting_as(
        ops_conn, role="anon"
    ):
        pass
    ops_conn.rollback()


def test_wrap_errors_keeps_the_cause(ops_conn: psycopg.Connection[Any]) -> None:
    with pytest.raises(ContractError) as caught, wrap_errors(role="service_role"):
        ops_conn.execute("insert into ops.calls (fn) values (null)")
    ops_conn.rollback()
    assert caught.value.sqlstate == "23502"
    assert caught.value.status == 400
    assert isinstance(caught.value.__cause__, psycopg.errors.NotNullViolation)


@pytest.mark.parametrize(
    ("sqlstate", "authenticated", "status"),
    [
        ("PT409", True, 409), ("PT404", True, 404), ("PT413", False, 413),
        ("P0001", True, 400), ("P0002", True, 500),
        ("23505", True, 409), ("23503", True, 409),
        ("42501", True, 403), ("42501", False, 401),
        ("42883", True, 404), ("42P01", True, 404),
        ("25006", True, 405),
        ("22P02", True, 400), ("22023", True, 400), ("22003", True, 400), ("22012", True, 400),
        ("40001", True, 503), ("40P01", True, 503), ("53300", True, 503), ("57014", True, 503),
        ("58000", True, 503),
        ("42703", True, 400), ("XX000", True, 400),
    ],
)
def test_http_status_mapping(sqlstate: str, authenticated: bool, status: int) -> None:
    assert http_status(sqlstate, authenticated=authenticated) == status


def test_derived_codes(ops_conn: psycopg.Connection[Any]) -> None:
    cases = {
        "select 1/0": ("22012", 400, "invalid_argument"),
        "select 'x'::int": ("22P02", 400, "invalid_argument"),
        "select * from ops.nope": ("42P01", 404, "not_found"),
        "create table ops.calls (x int)": ("42P07", 400, "internal"),
    }
    for statement, expected in cases.items():
        with pytest.raises(psycopg.Error) as caught:
            ops_conn.execute(statement.encode())
        ops_conn.rollback()
        error = contract_error(caught.value)
        assert (error.sqlstate, error.status, error.code) == expected, statement


def test_call_as_is_one_request_in_one_transaction(ops_db_url: str) -> None:
    user = uuid.uuid4()
    now = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    with psycopg.connect(ops_db_url, autocommit=True) as conn:
        seen = call_as(conn, "whoami", role="authenticated", sub=str(user),
                       claims={"email": "a@b.c"}, now=now)
        assert (seen["uid"], seen["role"], seen["now"]) == (str(user), "authenticated",
                                                            now.isoformat())
        assert seen["claims"] == {"email": "a@b.c", "role": "authenticated", "sub": str(user)}
        # nothing outlives the request
        after = conn.execute("select auth.uid(), current_setting('role'),"
                             " current_setting('control_room.now', true)").fetchone()
        assert after is not None and after[0] is None and after[1] == "none" and not after[2]
        # arguments are quoted client-side, never spliced
        hostile = "x'); drop table ops.calls; --"
        echoed = call_as(conn, "echo", {"p_payload": {"s": hostile}, "p_tags": [hostile]},
                         role="service_role")
        assert echoed["payload"] == {"s": hostile} and echoed["tags"] == [hostile]
        before = calls_made(conn)
        # an error rolls the whole request back, and maps like call()'s
        with pytest.raises(ContractError) as caught:
            call_as(conn, "lose_lease", {"p_phase_id": str(uuid.uuid4())}, role="service_role")
        assert (caught.value.status, caught.value.code) == (409, "lease_lost")
        with pytest.raises(ContractError) as caught:
            call_as(conn, "secret", role="anon")
        assert (caught.value.status, caught.value.code) == (401, "unauthorized")
        assert calls_made(conn) == before
        # a number is not text (strict JSON types): refused before anything is sent
        with pytest.raises(ContractError) as caught:
            call_as(conn, "take_text", {"p_text": -35184372088833}, role="service_role")
        assert (caught.value.status, caught.value.code) == (400, "invalid_argument")
        # values are bound client-side: a negative number must stay one value before its cast
        # (`-5::integer` would parse as minus applied to the cast)
        assert call_as(conn, "take_int", {"p_n": -5}, role="service_role") == -10
    with psycopg.connect(ops_db_url) as conn, pytest.raises(RuntimeError, match="autocommit"):
        call_as(conn, "noop", role="service_role")
