"""Connections and secret references in ops: created, changed, rotated, tested and deleted by
the workspace's admins; named (never declared) by specs; carried by claims as references.

Each rule of docs/contract.md, "Connections", is a test here; most run on direct SQL, the
lifecycle and the typed client run through the real gateway too. Who may call what, across
workspaces, is tests/security/test_connections_rls.py.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest
from psycopg import sql

from control_room.contract import Conflict, ContractClient, InvalidArgument, NotFound
from control_room.contract.models import Claim, Connection, ConnectionDeleted
from control_room.db.store import ContractError
from control_room.gateway.auth import mint_token
from tests.helpers import TEST_JWT_SECRET, running_gateway

from .conftest import Contract, Principal, World, make_world, new_run, phase
from .snapshot import ops_tables, snapshot

PG_CONFIG = {"host": "db.internal", "port": 5432, "database": "erp", "user": "reader",
             "sslmode": "require"}
PG_SECRETS = {"password": "env:ERP_PASSWORD"}
SECRET_VALUE = "hunter2-do-not-store"   # a value callers try to slip in: never stored


@pytest.fixture
def sworld(sql_contract: Contract) -> World:
    """The two workspaces of conftest.World, over direct SQL."""
    return make_world(sql_contract)


def create(contract: Contract, world: World, name: str = "erp", *, type_: str = "postgres",
           config: dict[str, Any] | None = None, secrets: dict[str, Any] | None = None,
           ws: str | None = None, as_: Principal | None = None, **extra: Any) -> dict[str, Any]:
    args: dict[str, Any] = {"workspace_id": ws or world.w1, "name": name, "type": type_,
                            "config": PG_CONFIG if config is None else config,
                            "secrets": PG_SECRETS if secrets is None else secrets, **extra}
    result: dict[str, Any] = contract.call("create_connection", args, as_=as_ or world.admin1)
    return result


def refs_rows(conn: psycopg.Connection[Any], connection_id: str) -> dict[str, str]:
    with conn.transaction():
        rows = conn.execute("select field, reference from ops.secrets_refs"
                            " where connection_id = %s", (connection_id,)).fetchall()
    return {str(f): str(r) for f, r in rows}


def audit_rows(conn: psycopg.Connection[Any], fn: str) -> list[dict[str, Any]]:
    with conn.transaction():
        rows = conn.execute("select target_id, details from ops.audit_log"
                            " where function_name = %s order by id", (fn,)).fetchall()
    return [{"target_id": t, "details": d} for t, d in rows]


def all_stored_text(conn: psycopg.Connection[Any]) -> str:
    """Every row of every ops table as text (read as superuser)."""
    parts: list[str] = []
    with conn.transaction():
        for table in ops_tables(conn):
            rows = conn.execute(sql.SQL("select t::text from ops.{} t").format(
                sql.Identifier(table))).fetchall()
            parts += [str(r[0]) for r in rows]
    return "\n".join(parts)


# ---------------------------------------------------------------------------------------------
# the lifecycle
# ---------------------------------------------------------------------------------------------

def test_create_get_list_update_rotate_test_and_delete(
    contract: Contract, world: World, conn: psycopg.Connection[Any]
) -> None:
    """The whole lifecycle, over direct SQL and through the gateway."""
    made = create(contract, world, description="the ERP replica")
    assert made["name"] == "erp" and made["type"] == "postgres"
    assert made["workspace_id"] == world.w1
    assert made["config"] == PG_CONFIG and made["secrets"] == PG_SECRETS
    assert made["version"] == 1 and made["last_test"] is None
    assert made["description"] == "the ERP replica"
    assert set(made) == {"id", "workspace_id", "name", "type", "config", "secrets",
                         "description", "version", "created_at", "updated_at", "last_test"}
    assert refs_rows(conn, made["id"]) == PG_SECRETS

    for reader in (world.viewer1, world.dev1, world.exec1, world.admin1):
        assert contract.call("get_connection", {"workspace_id": world.w1, "name": "erp"},
                             as_=reader) == made
    create(contract, world, "lake", type_="s3", config={"bucket": "lake", "region": "eu"},
           secrets={"access_key_id": "env:LAKE_KEY_ID",
                    "secret_access_key": "file:/run/secrets/lake"})
    listed = contract.call("list_connections", {"workspace_id": world.w1}, as_=world.viewer1)
    assert [c["name"] for c in listed] == ["erp", "lake"]
    assert listed[0] == made

    # a new config: version 2; the same again: no new version
    wider = {**PG_CONFIG, "application_name": "control-room"}
    changed = contract.call("update_connection", {"workspace_id": world.w1, "name": "erp",
                                                  "config": wider}, as_=world.admin1)
    assert changed["version"] == 2 and changed["config"] == wider
    assert changed["secrets"] == PG_SECRETS and changed["description"] == "the ERP replica"
    same = contract.call("update_connection", {"workspace_id": world.w1, "name": "erp",
                                               "config": wider, "secrets": PG_SECRETS,
                                               "description": "the ERP replica"},
                         as_=world.admin1)
    assert same == changed
    assert contract.call("update_connection", {"workspace_id": world.w1, "name": "erp"},
                         as_=world.admin1) == changed

    # rotation: the whole secrets map is replaced
    rotated = contract.call("update_connection", {
        "workspace_id": world.w1, "name": "erp",
        "secrets": {"password": "file:/run/secrets/erp-2026-12"}}, as_=world.admin1)
    assert rotated["version"] == 3
    assert rotated["secrets"] == {"password": "file:/run/secrets/erp-2026-12"}
    assert refs_rows(conn, made["id"]) == {"password": "file:/run/secrets/erp-2026-12"}

    # a test result is recorded without a new version
    tested = contract.call("record_connection_test", {
        "workspace_id": world.w1, "name": "erp", "ok": True, "message": "select 1: 1"},
        as_=world.dev1)
    assert tested["version"] == 3
    assert tested["last_test"]["ok"] is True and tested["last_test"]["message"] == "select 1: 1"

    gone = contract.call("delete_connection", {"workspace_id": world.w1, "name": "erp"},
                         as_=world.admin1)
    assert gone == {"id": made["id"], "workspace_id": world.w1, "name": "erp", "deleted": True}
    assert refs_rows(conn, made["id"]) == {}
    err = contract.error("get_connection", {"workspace_id": world.w1, "name": "erp"},
                         as_=world.viewer1)
    assert (err.status, err.code) == (404, "not_found") and "erp" in err.message
    err = contract.error("delete_connection", {"workspace_id": world.w1, "name": "erp"},
                         as_=world.admin1)
    assert (err.status, err.code) == (404, "not_found")
    again = create(contract, world)
    assert again["version"] == 1 and again["id"] != made["id"]


def test_versions_count_every_change_and_only_changes(
    sql_contract: Contract, sworld: World
) -> None:
    c, w = sql_contract, sworld
    create(c, w, description="first")

    def update(**args: Any) -> dict[str, Any]:
        result: dict[str, Any] = c.call("update_connection", {"workspace_id": w.w1,
                                                              "name": "erp", **args},
                                        as_=w.admin1)
        return result

    assert update(description="second")["version"] == 2
    assert update(description="second")["version"] == 2
    cleared = update(description="")
    assert cleared["version"] == 3 and cleared["description"] is None
    assert update(secrets={"password": "env:ERP_PASSWORD", "sslkey": "file:/keys/erp.key"}
                  )["version"] == 4
    dropped = update(secrets={"sslkey": "file:/keys/erp.key"})
    assert dropped["version"] == 5 and dropped["secrets"] == {"sslkey": "file:/keys/erp.key"}
    assert update(secrets={})["secrets"] == {}
    assert update(config={})["config"] == {}
    assert update(config={}, secrets={})["version"] == 7


def test_a_duplicate_name_is_a_conflict(sql_contract: Contract, sworld: World,
                                        conn: psycopg.Connection[Any]) -> None:
    create(sql_contract, sworld)
    before = snapshot(conn)
    err = sql_contract.error("create_connection", {
        "workspace_id": sworld.w1, "name": "erp", "type": "http"}, as_=sworld.admin1)
    assert (err.status, err.code) == (409, "conflict") and "erp" in err.message
    assert snapshot(conn) == before
    # the same name in another workspace is another connection
    other = create(sql_contract, sworld, ws=sworld.w2, as_=sworld.admin2)
    assert other["workspace_id"] == sworld.w2


def test_mutations_are_audited_without_config_values_or_references(
    sql_contract: Contract, sworld: World, conn: psycopg.Connection[Any]
) -> None:
    c, w = sql_contract, sworld
    made = create(c, w)
    c.call("update_connection", {"workspace_id": w.w1, "name": "erp",
                                 "secrets": {"password": "env:ERP_PASSWORD_2"}}, as_=w.admin1)
    c.call("record_connection_test", {"workspace_id": w.w1, "name": "erp", "ok": False,
                                      "message": "timeout"}, as_=w.dev1)
    c.call("delete_connection", {"workspace_id": w.w1, "name": "erp"}, as_=w.admin1)
    created = audit_rows(conn, "create_connection")
    assert created == [{"target_id": "erp", "details": {
        "id": made["id"], "type": "postgres", "version": 1,
        "config_keys": sorted(PG_CONFIG), "secret_fields": ["password"]}}]
    updated = audit_rows(conn, "update_connection")
    assert updated == [{"target_id": "erp", "details": {
        "id": made["id"], "version": 2, "changed": ["secrets"],
        "secret_fields_changed": ["password"]}}]
    assert audit_rows(conn, "record_connection_test")[0]["details"]["ok"] is False
    assert audit_rows(conn, "delete_connection")[0]["details"]["version"] == 2
    with conn.transaction():
        text = " ".join(str(r[0]) for r in conn.execute(
            "select details::text from ops.audit_log where function_name like '%connection%'"
        ).fetchall())
    for value in ("db.internal", "reader", "require", "ERP_PASSWORD", "timeout"):
        assert value not in text


def test_a_test_result_is_capped_and_its_passwords_redacted(
    sql_contract: Contract, sworld: World, conn: psycopg.Connection[Any]
) -> None:
    create(sql_contract, sworld)
    message = (f"could not connect to postgresql://reader:{SECRET_VALUE}@db.internal/erp"
               f" (host=db.internal password={SECRET_VALUE} user=reader) " + "x" * 1000)
    tested = sql_contract.call("record_connection_test", {
        "workspace_id": sworld.w1, "name": "erp", "ok": False, "message": message},
        as_=sworld.admin1)
    recorded = tested["last_test"]["message"]
    assert len(recorded) == 500 and tested["last_test"]["ok"] is False
    assert recorded.startswith("could not connect to postgresql://reader:***@db.internal/erp")
    assert "password=***" in recorded
    assert SECRET_VALUE not in all_stored_text(conn)
    cleared = sql_contract.call("record_connection_test", {
        "workspace_id": sworld.w1, "name": "erp", "ok": True, "message": ""},
        as_=sworld.dev1)
    assert cleared["last_test"]["message"] is None and cleared["last_test"]["ok"] is True
    err = sql_contract.error("record_connection_test", {
        "workspace_id": sworld.w1, "name": "erp", "ok": None, "message": "x"},
        as_=sworld.dev1)
    assert (err.status, err.code) == (400, "invalid_argument") and "ok" in err.message


# ---------------------------------------------------------------------------------------------
# refusals: no secret value is ever stored
# ---------------------------------------------------------------------------------------------

REFUSED: list[tuple[str, dict[str, Any], dict[str, Any], int, tuple[str, ...]]] = [
    # (id, config, secrets, status, what the message says)
    ("password-key", {"password": SECRET_VALUE}, {}, 400,
     ("config.password", "looks like a secret", "secrets", "env:NAME")),
    ("upper-case-key", {"PassWord": SECRET_VALUE}, {}, 400, ("config.PassWord", "secrets")),
    ("nested-api-key", {"options": {"Api-Key": SECRET_VALUE}}, {}, 400,
     ("config.options.Api-Key", "looks like a secret")),
    ("key-in-an-array", {"headers": [{"name": "x"}, {"auth_token": SECRET_VALUE}]}, {}, 400,
     ("config.headers[1].auth_token",)),
    ("private-key", {"ssh": {"private_key": SECRET_VALUE}}, {}, 400, ("config.ssh.private_key",)),
    ("credentials", {"credentials_json": SECRET_VALUE}, {}, 400, ("config.credentials_json",)),
    ("client-secret", {"client_secret": SECRET_VALUE}, {}, 400, ("config.client_secret",)),
    ("passwd", {"passwd": SECRET_VALUE}, {}, 400, ("config.passwd",)),
    ("authorization-header", {"headers": {"Authorization": "Bearer " + SECRET_VALUE}}, {}, 400,
     ("config.headers.Authorization",)),
    ("secret-reference-value", {"pass": "secret:env:ERP_PASSWORD"}, {}, 400,
     ("config.pass", "secret reference", "env:NAME or file:/path")),
    ("secret-reference-in-an-array", {"hosts": ["a", "SECRET:file:/etc/shadow"]}, {}, 400,
     ("config.hosts[1]", "secret reference")),
    ("url-with-a-password", {"dsn": f"postgresql://reader:{SECRET_VALUE}@db/erp"}, {}, 400,
     ("config.dsn", "holds a password", "secrets")),
    ("nested-url-with-a-password", {"api": {"base": f"https://u:{SECRET_VALUE}@x.example/v1"}},
     {}, 400, ("config.api.base", "holds a password")),
    ("keyword-dsn-with-a-password", {"dsn": f"host=db user=reader password={SECRET_VALUE}"}, {},
     400, ("config.dsn", "holds a password")),
    ("url-password-in-a-key", {f"postgresql://u:{SECRET_VALUE}@h/db": 1}, {}, 400,
     ("holds a password",)),
    ("field-in-config-and-secrets", {"user": "reader"}, {"user": "env:ERP_USER"}, 400,
     ("user", "config and in secrets")),
    ("secret-value-not-a-reference", {}, {"password": SECRET_VALUE}, 400,
     ("secrets.password", "must be a secret reference", "never stored")),
    ("env-name-with-a-digit-first", {}, {"password": "env:1PASSWORD"}, 400,
     ("secrets.password", "env:NAME")),
    ("env-without-a-name", {}, {"password": "env:"}, 400, ("secrets.password",)),
    ("env-name-too-long", {}, {"password": "env:" + "A" * 129}, 400, ("secrets.password",)),
    ("relative-file", {}, {"password": "file:run/secrets/erp"}, 400,
     ("secrets.password", "file:/absolute/path")),
    ("file-with-dot-dot", {}, {"password": "file:/run/secrets/../../etc/shadow"}, 400,
     ("secrets.password", "no .. segments")),
    ("file-ending-in-dot-dot", {}, {"password": "file:/run/.."}, 400, ("secrets.password",)),
    ("file-too-long", {}, {"password": "file:/" + "a" * 1024}, 400, ("secrets.password",)),
    ("file-with-a-newline", {}, {"password": "file:/run/a\nb"}, 400, ("secrets.password",)),
    ("old-secret-prefix", {}, {"password": "secret:env:ERP_PASSWORD"}, 400,
     ("secrets.password", "without the secret: prefix")),
    ("vault-not-yet", {}, {"password": "vault:kv/erp#password"}, 400, ("secrets.password",)),
    ("reference-not-a-string", {}, {"password": 5}, 400, ("secrets.password",)),
    ("bad-field-name", {}, {"Password": "env:ERP_PASSWORD"}, 400,
     ("secrets.Password", "lower-case")),
    ("config-not-an-object", ["host"], {}, 400, ("config must be a JSON object",)),  # type: ignore[list-item]
    ("secrets-not-an-object", {}, ["env:X"], 400, ("secrets must be a JSON object",)),  # type: ignore[list-item]
    ("config-over-16-kib", {"hosts": ["h" * 1000] * 17}, {}, 413, ("config", "16384")),
    ("65-secret-fields", {}, {f"f{i}": "env:X" for i in range(65)}, 400, ("at most 64",)),
]


@pytest.mark.parametrize(("config", "secrets", "status", "says"),
                         [r[1:] for r in REFUSED], ids=[r[0] for r in REFUSED])
def test_what_could_carry_a_secret_value_is_refused(
    sql_contract: Contract, sworld: World, conn: psycopg.Connection[Any],
    config: Any, secrets: Any, status: int, says: tuple[str, ...]
) -> None:
    """Refused by create_connection and by update_connection alike, naming the path and never
    echoing the value; nothing is written."""
    create(sql_contract, sworld, "existing")
    before = snapshot(conn)
    code = {400: "invalid_argument", 413: "payload_too_large"}[status]
    for fn, args in (
        ("create_connection", {"workspace_id": sworld.w1, "name": "erp", "type": "postgres",
                               "config": config, "secrets": secrets}),
        ("update_connection", {"workspace_id": sworld.w1, "name": "existing",
                               "config": config, "secrets": secrets}),
    ):
        err = sql_contract.error(fn, args, as_=sworld.admin1)
        assert (err.status, err.code) == (status, code), (fn, err)
        for fragment in says:
            assert fragment in err.message, (fn, fragment, err.message)
        assert SECRET_VALUE not in err.message and SECRET_VALUE not in (err.details or "")
    assert snapshot(conn) == before
    assert SECRET_VALUE not in all_stored_text(conn)


def test_the_error_names_the_argument_in_its_details(sql_contract: Contract,
                                                    sworld: World) -> None:
    err = sql_contract.error("create_connection", {
        "workspace_id": sworld.w1, "name": "erp", "type": "postgres",
        "config": {"options": {"token": "x"}}}, as_=sworld.admin1)
    assert json.loads(err.details or "{}") == {"argument": "config.options.token"}
    err = sql_contract.error("create_connection", {
        "workspace_id": sworld.w1, "name": "erp", "type": "postgres",
        "secrets": {"password": "x"}}, as_=sworld.admin1)
    assert json.loads(err.details or "{}") == {"argument": "secrets.password"}


def test_an_update_that_would_put_a_config_key_in_secrets_is_refused(
    sql_contract: Contract, sworld: World
) -> None:
    """The rule holds for the combination: new secrets against the kept config."""
    create(sql_contract, sworld)
    err = sql_contract.error("update_connection", {
        "workspace_id": sworld.w1, "name": "erp", "secrets": {"user": "env:ERP_USER"}},
        as_=sworld.admin1)
    assert (err.status, err.code) == (400, "invalid_argument")
    assert "user is in config and in secrets" in err.message


@pytest.mark.parametrize(("args", "says"), [
    ({"name": "Bad-Name"}, ("name", "lower-case")),
    ({"name": "9lives"}, ("name",)),
    ({"name": "n" * 64}, ("name",)),
    ({"name": None}, ("name", "nothing")),
    ({"type": "mysql"}, ("type", "postgres, s3, trino, spark, http, dbt-profile", "mysql")),
    ({"type": None}, ("type",)),
    ({"description": "d" * 1001}, ("description", "1000")),
], ids=["dash", "digit-first", "64-characters", "null-name", "mysql", "null-type",
        "long-description"])
def test_bad_names_types_and_descriptions_are_refused(
    sql_contract: Contract, sworld: World, args: dict[str, Any], says: tuple[str, ...]
) -> None:
    err = sql_contract.error("create_connection", {
        "workspace_id": sworld.w1, "name": "erp", "type": "postgres", **args},
        as_=sworld.admin1)
    assert (err.status, err.code) == (400, "invalid_argument"), err
    for fragment in says:
        assert fragment in err.message, err.message


def test_every_type_is_accepted(sql_contract: Contract, sworld: World) -> None:
    types = ["postgres", "s3", "trino", "spark", "http", "dbt-profile"]
    for i, type_ in enumerate(types):
        made = create(sql_contract, sworld, f"c{i}", type_=type_, config={"x": i}, secrets={})
        assert made["type"] == type_
    listed = sql_contract.call("list_connections", {"workspace_id": sworld.w1},
                               as_=sworld.viewer1)
    assert [c["type"] for c in listed] == types


def test_nothing_secret_reaches_the_database(
    sql_contract: Contract, sworld: World, conn: psycopg.Connection[Any]
) -> None:
    """Accepted and refused calls alike: the database holds references, never the value."""
    c, w = sql_contract, sworld
    create(c, w, secrets={"password": "env:ERP_PASSWORD"})
    for config, secrets in ((({"password": SECRET_VALUE}), {}),
                            ({"dsn": f"postgres://u:{SECRET_VALUE}@h/d"}, {}),
                            ({}, {"password": SECRET_VALUE})):
        for fn, name in (("create_connection", "other"), ("update_connection", "erp")):
            with pytest.raises(ContractError):
                c.call(fn, {"workspace_id": w.w1, "name": name, "type": "postgres",
                            "config": config, "secrets": secrets} if fn == "create_connection"
                       else {"workspace_id": w.w1, "name": name, "config": config,
                             "secrets": secrets}, as_=w.admin1)
    c.call("record_connection_test", {"workspace_id": w.w1, "name": "erp", "ok": False,
                                      "message": f"postgresql://u:{SECRET_VALUE}@h/d refused"},
           as_=w.admin1)
    stored = all_stored_text(conn)
    assert SECRET_VALUE not in stored
    assert "env:ERP_PASSWORD" in stored


# ---------------------------------------------------------------------------------------------
# runs name connections, claims carry them
# ---------------------------------------------------------------------------------------------

def test_a_claim_carries_the_named_connections_as_references(
    contract: Contract, world: World
) -> None:
    create(contract, world)
    create(contract, world, "lake", type_="s3", config={"bucket": "lake"},
           secrets={"secret_access_key": "file:/run/secrets/lake"})
    create(contract, world, "unused", type_="http", config={"url": "https://x.example"},
           secrets={})
    run = new_run(contract, world.w1, [
        phase("extract", params={"connections": ["erp", "lake"]}),
        phase("plain", params={"entrypoint": "m:f"}),
    ], as_=world.dev1)
    claims = {}
    while (claim := contract.call("claim_phase", {"run_id": run["id"]}, as_=world.exec1)):
        claims[claim["name"]] = claim
    assert claims["extract"]["connections"] == {
        "erp": {"type": "postgres", "config": PG_CONFIG, "secrets": PG_SECRETS, "version": 1},
        "lake": {"type": "s3", "config": {"bucket": "lake"},
                 "secrets": {"secret_access_key": "file:/run/secrets/lake"}, "version": 1},
    }
    assert claims["plain"]["connections"] == {}
    typed = Claim.model_validate(claims["extract"])
    assert typed.connections["erp"].secrets == PG_SECRETS
    assert typed.connections["erp"].version == 1


def test_a_claim_carries_the_connection_as_it_is_at_claim_time(
    sql_contract: Contract, sworld: World
) -> None:
    """A connection rotated after the run was created is claimed at its new version; one
    deleted since is absent (the worker fails the phase naming it)."""
    c, w = sql_contract, sworld
    create(c, w)
    create(c, w, "lake", type_="s3", config={"bucket": "lake"}, secrets={})
    run = new_run(c, w.w1, [phase("a", params={"connections": ["erp", "lake"]})], as_=w.dev1)
    c.call("update_connection", {"workspace_id": w.w1, "name": "erp",
                                 "secrets": {"password": "env:ERP_PASSWORD_NEW"}}, as_=w.admin1)
    c.call("delete_connection", {"workspace_id": w.w1, "name": "lake"}, as_=w.admin1)
    claim = c.call("claim_phase", {"run_id": run["id"]}, as_=w.exec1)
    assert claim["connections"] == {"erp": {
        "type": "postgres", "config": PG_CONFIG,
        "secrets": {"password": "env:ERP_PASSWORD_NEW"}, "version": 2}}


def test_a_claim_never_carries_another_workspaces_connection(
    sql_contract: Contract, sworld: World
) -> None:
    c, w = sql_contract, sworld
    create(c, w, secrets={"password": "env:W1_PASSWORD"})
    create(c, w, ws=w.w2, as_=w.admin2, secrets={"password": "env:W2_PASSWORD"})
    run = new_run(c, w.w2, [phase("a", params={"connections": ["erp"]})], as_=w.dev2)
    claim = c.call("claim_phase", {"run_id": run["id"]}, as_=w.exec2)
    assert claim["connections"]["erp"]["secrets"] == {"password": "env:W2_PASSWORD"}


def test_create_run_refuses_a_connection_the_workspace_does_not_have(
    contract: Contract, world: World, conn: psycopg.Connection[Any]
) -> None:
    create(contract, world, ws=world.w2, as_=world.admin2)   # W2 has erp; W1 does not
    before = snapshot(conn)
    err = contract.error("create_run", {
        "workspace_id": world.w1, "spec_slug": "demo", "git_sha": "0123abc",
        "phases": [phase("first"), phase("extract", "python", "first",
                                         params={"connections": ["erp"]})]}, as_=world.dev1)
    assert (err.status, err.code) == (400, "invalid_argument")
    for fragment in ("phase extract", "connection erp", "workspace w1",
                     "control-room connections create"):
        assert fragment in err.message, err.message
    assert json.loads(err.details or "{}") == {"argument": "phases", "phase": "extract",
                                               "connection": "erp"}
    assert snapshot(conn) == before


@pytest.mark.parametrize(("connections", "says"), [
    ("erp", "must be an array of connection names, got string"),
    ({"erp": {}}, "must be an array of connection names, got object"),
    ([5], "must hold connection names"),
    (["Bad-Name"], "must hold connection names"),
])
def test_create_run_refuses_params_connections_that_are_not_names(
    sql_contract: Contract, sworld: World, connections: Any, says: str
) -> None:
    create(sql_contract, sworld)
    err = sql_contract.error("create_run", {
        "workspace_id": sworld.w1, "spec_slug": "demo", "git_sha": "0123abc",
        "phases": [phase("p", params={"connections": connections})]}, as_=sworld.dev1)
    assert (err.status, err.code) == (400, "invalid_argument")
    assert "phase p" in err.message and says in err.message, err.message


def test_create_run_refuses_connections_in_the_input_manifest(
    contract: Contract, world: World, conn: psycopg.Connection[Any]
) -> None:
    create(contract, world)
    before = snapshot(conn)
    err = contract.error("create_run", {
        "workspace_id": world.w1, "spec_slug": "demo", "git_sha": "0123abc",
        "phases": [phase("p", params={"connections": ["erp"]})],
        "input_manifest": {"connections": {"erp": {"type": "postgres",
                                                   "password": "secret:env:PGPASSWORD"}}}},
        as_=world.dev1)
    assert (err.status, err.code) == (400, "invalid_argument")
    assert "input_manifest carries connections" in err.message
    assert "control-room connections create" in err.message
    assert json.loads(err.details or "{}") == {"argument": "input_manifest.connections"}
    assert snapshot(conn) == before
    # the registered connection is how a run gets it
    run = new_run(contract, world.w1, [phase("p", params={"connections": ["erp"]})],
                  as_=world.dev1, input_manifest={"params": {"day": 1}})
    assert run["created"] is True


def test_a_retry_checks_the_phases_that_run_again(
    sql_contract: Contract, sworld: World
) -> None:
    """retry_run re-creates the phases that did not succeed: a connection deleted since is
    refused the same way; a phase kept from the parent is not checked (it does not run)."""
    c, w = sql_contract, sworld
    create(c, w)
    create(c, w, "lake", type_="s3", config={}, secrets={})
    run = new_run(c, w.w1, [phase("a", params={"connections": ["lake"]}),
                            phase("b", "python", "a", params={"connections": ["erp"]})],
                  as_=w.dev1)
    claim = c.call("claim_phase", {"run_id": run["id"]}, as_=w.exec1)
    c.call("complete_phase", {"lease_token": claim["lease_token"], "outcome": "succeeded"},
           as_=w.exec1)
    c.call("cancel_run", {"run_id": run["id"]}, as_=w.dev1)
    c.call("delete_connection", {"workspace_id": w.w1, "name": "erp"}, as_=w.admin1)
    err = c.error("retry_run", {"run_id": run["id"]}, as_=w.dev1)
    assert (err.status, err.code) == (400, "invalid_argument")
    assert "phase b names connection erp" in err.message
    create(c, w)
    c.call("delete_connection", {"workspace_id": w.w1, "name": "lake"}, as_=w.admin1)
    child = c.call("retry_run", {"run_id": run["id"]}, as_=w.dev1)   # a is kept: not checked
    assert {p["name"]: p["state"] for p in child["phases"]} == {"a": "succeeded", "b": "queued"}


# ---------------------------------------------------------------------------------------------
# the typed client through the real gateway
# ---------------------------------------------------------------------------------------------

@pytest.fixture
def clients(sql_contract: Contract,
            db_url: str) -> Iterator[tuple[World, dict[str, ContractClient]]]:
    world = make_world(sql_contract)
    with running_gateway(db_url) as url:
        made: dict[str, ContractClient] = {}
        for label in ("admin1", "dev1", "viewer1", "admin2"):
            who = world.members[label]
            token = mint_token(TEST_JWT_SECRET, role="authenticated", sub=str(who.sub),
                               ttl_seconds=3600)
            made[label] = ContractClient(f"{url}/rest/v1", token)
        try:
            yield world, made
        finally:
            for client in made.values():
                client.close()


def test_the_typed_client_manages_connections(
    clients: tuple[World, dict[str, ContractClient]]
) -> None:
    world, c = clients
    admin = c["admin1"]
    made = admin.create_connection(world.w1, "erp", "postgres", config=PG_CONFIG,
                                   secrets=PG_SECRETS, description="replica")
    assert isinstance(made, Connection)
    assert (made.version, made.secrets, made.last_test) == (1, PG_SECRETS, None)
    assert c["viewer1"].get_connection(world.w1, "erp") == made
    assert c["viewer1"].list_connections(world.w1) == [made]
    rotated = admin.update_connection(world.w1, "erp", secrets={"password": "env:ERP_2"})
    assert rotated.version == 2 and rotated.secrets == {"password": "env:ERP_2"}
    assert rotated.config == PG_CONFIG and rotated.description == "replica"
    tested = c["dev1"].record_connection_test(world.w1, "erp", False, "connection refused")
    assert tested.last_test is not None
    assert (tested.last_test.ok, tested.last_test.message) == (False, "connection refused")
    with pytest.raises(InvalidArgument, match=r"config\.password looks like a secret"):
        admin.update_connection(world.w1, "erp", config={"password": SECRET_VALUE})
    with pytest.raises(Conflict):
        admin.create_connection(world.w1, "erp", "http")
    with pytest.raises(NotFound, match="workspace not found"):
        c["admin2"].get_connection(world.w1, "erp")
    gone = admin.delete_connection(world.w1, "erp")
    assert isinstance(gone, ConnectionDeleted)
    assert (gone.name, gone.deleted, gone.id) == ("erp", True, made.id)
    assert c["viewer1"].list_connections(world.w1) == []


def test_the_gateway_answers_bad_connection_input_with_400(
    sql_contract: Contract, db_url: str
) -> None:
    """Odd JSON through the gateway: a clean 4xx naming the problem, never a 5xx."""
    world = make_world(sql_contract)
    token = mint_token(TEST_JWT_SECRET, role="authenticated", sub=str(world.admin1.sub),
                       ttl_seconds=3600)
    headers = {"Authorization": f"Bearer {token}", "Content-Profile": "ops"}
    with running_gateway(db_url) as url, httpx.Client(base_url=url, timeout=30) as client:
        for body, fragment in (
            ({"workspace_id": world.w1, "name": "erp", "type": "postgres", "config": "x"},
             "config must be a JSON object"),
            ({"workspace_id": world.w1, "name": "erp", "type": "postgres",
              "secrets": {"password": {"env": "X"}}}, "secrets.password"),
            ({"workspace_id": world.w1, "name": "erp", "type": "postgres",
              "config": {"a": {"b": {"c": {"pwd": "x"}}}}}, "config.a.b.c.pwd"),
            ({"workspace_id": "nope", "name": "erp", "type": "postgres"}, "workspace_id"),
        ):
            response = client.post("/rest/v1/rpc/create_connection", json=body, headers=headers)
            assert response.status_code == 400, response.text
            assert fragment in response.json()["message"]
            assert response.json()["hint"] == "invalid_argument"
    assert sql_contract.call("list_connections", {"workspace_id": world.w1}) == []
    assert uuid.UUID(world.w1)
