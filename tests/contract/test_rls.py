"""The security matrix: who reads which rows, who may call which function, nothing crosses
workspaces, anon calls nothing, nobody writes a table directly.

Tables and functions are enumerated from pg_catalog, so a new table is checked automatically
and a new function fails `test_every_function_is_in_the_matrix` until it is given a row of
expectations here.

Tests of the database itself (row level security, grants, JWT claims) are in `TestDatabase`
and run on direct SQL; the function matrix and the cross-tenant calls run over every
transport of the contract. Data is always set up over direct SQL (`direct`), so what is under
test is only the call being checked.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg import sql

from control_room.db.store import ContractError, acting_as, call

from .conftest import ANON, SERVICE, Contract, Principal, World, new_run, phase, user
from .jobspec import register, register_args
from .snapshot import ops_tables, snapshot

# Which workspaces each row of a table belongs to: a query of (row key, workspace id) pairs.
# A row is visible to the members of any of its workspaces (none: to service_role only).
# Tables not listed have a workspace_id column and belong to that one workspace.
TENANCY = {
    "workspaces": "select id::text, id::text from ops.workspaces",
    "principals": "select p.id::text, m.workspace_id::text from ops.principals p"
                  " left join ops.workspace_members m on m.principal_id = p.id",
}

# Columns of ops.phases that are capabilities: nobody reads them, not even service_role.
SECRET_PHASE_COLUMNS = frozenset({"lease_token", "claim_id"})


def digest_of(text: str) -> str:
    """A well-formed artifact digest (the format is all the control plane checks)."""
    return "blake3:" + hashlib.sha256(text.encode()).hexdigest()


def log_event(phase_name: str | None = None, type_: str = "LOG") -> dict[str, Any]:
    event: dict[str, Any] = {"event_id": str(uuid.uuid4()), "type": type_, "message": "hello"}
    if phase_name is not None:
        event["phase"] = phase_name
    return event


def dataset_args(lease_token: str, name: str, change: str = "INITIAL") -> dict[str, Any]:
    """record_dataset's arguments for a table write with a one-column schema."""
    return {"lease_token": lease_token, "name": name, "location": f"s3://lake/{name}",
            "change": change, "schema": [{"name": "id", "type": "int64", "nullable": False}]}


def tenancy(conn: psycopg.Connection[Any], table: str) -> sql.SQL | sql.Composed:
    if table in TENANCY:
        return sql.SQL(TENANCY[table])
    with conn.transaction():
        row = conn.execute(
            "select count(*) from pg_catalog.pg_attribute where attrelid ="
            " pg_catalog.to_regclass(%s) and attname = 'workspace_id' and not attisdropped",
            (f"ops.{table}",),
        ).fetchone()
    assert row is not None and row[0] == 1, (
        f"ops.{table} has no workspace_id column: describe its tenancy in TENANCY")
    return sql.SQL("select ctid::text, workspace_id::text from ops.{}").format(
        sql.Identifier(table))


def rows_by_workspace(conn: psycopg.Connection[Any], table: str) -> dict[str, set[str]]:
    """Workspace id (or '' for none) -> keys of the rows belonging to it, read as superuser."""
    with conn.transaction():
        rows = conn.execute(tenancy(conn, table)).fetchall()
    out: dict[str, set[str]] = {}
    for key, ws in rows:
        out.setdefault(str(ws or ""), set()).add(str(key))
    return out


def visible_count(by_ws: dict[str, set[str]], workspaces: set[str]) -> int:
    return len(set().union(*(by_ws.get(ws, set()) for ws in workspaces)))


# ---------------------------------------------------------------------------------------------
# data in both workspaces, made through the contract
# ---------------------------------------------------------------------------------------------

@dataclass
class Populated:
    world: World
    both: Principal       # viewer of W1 and admin of W2
    outsider: Principal   # authenticated, member of nothing
    runs: dict[str, list[str]] = field(default_factory=dict)       # "w1"/"w2" -> run ids
    tokens: dict[str, list[str]] = field(default_factory=dict)     # lease tokens ever issued
    claim_ids: dict[str, list[str]] = field(default_factory=dict)
    live_claims: dict[str, dict[str, Any]] = field(default_factory=dict)  # a running phase

    def ws(self, key: str) -> str:
        return self.world.w1 if key == "w1" else self.world.w2


def _fill(contract: Contract, data: Populated, key: str, dev: Principal, executor: Principal,
          extra_runs: int) -> None:
    """Runs with phases, a claimed phase, events, artifacts and audit rows in one workspace."""
    ws = data.ws(key)
    runs: list[str] = []
    tokens: list[str] = []
    claim_ids: list[str] = []
    # a run whose first phase succeeded (events, an artifact) and whose second is claimed
    run = new_run(contract, ws, [phase("a"), phase("b", "sql", "a")], as_=dev)
    runs.append(run["id"])
    first_claim_id = str(uuid.uuid4())
    claim = contract.call("claim_phase", {"run_id": run["id"], "claim_id": first_claim_id},
                          as_=executor)
    assert claim is not None and claim["name"] == "a"
    tokens.append(claim["lease_token"])
    claim_ids.append(first_claim_id)
    contract.call("append_events", {"run_id": run["id"], "lease_token": claim["lease_token"],
                                    "events": [log_event("a", "PHASE_STARTED"), log_event("a")]},
                  as_=executor)
    for i in range(1 + extra_runs):
        contract.call("register_artifact", {
            "lease_token": claim["lease_token"], "digest": digest_of(f"{key}-out-{i}"),
            "uri": f"s3://bucket/{key}/out-{i}", "size_bytes": 10}, as_=executor)
        contract.call("record_dataset", dataset_args(claim["lease_token"], f"bronze.{key}_{i}"),
                      as_=executor)
    contract.call("complete_phase", {"lease_token": claim["lease_token"], "outcome": "succeeded",
                                     "output_manifest": {"rows": 1}}, as_=executor)
    second_claim_id = str(uuid.uuid4())
    claim = contract.call("claim_phase", {"run_id": run["id"], "claim_id": second_claim_id},
                          as_=executor)
    assert claim is not None and claim["name"] == "b"
    tokens.append(claim["lease_token"])
    claim_ids.append(second_claim_id)
    data.live_claims[key] = claim
    # a cancelled run and its retry
    cancelled = new_run(contract, ws, [phase("x")], as_=dev)
    contract.call("cancel_run", {"run_id": cancelled["id"], "reason": "test"}, as_=dev)
    retried = contract.call("retry_run", {"run_id": cancelled["id"]}, as_=dev)
    runs += [cancelled["id"], retried["id"]]
    for i in range(extra_runs):
        runs.append(new_run(contract, ws, [phase(f"e{i}")], as_=dev)["id"])
    # gate runs (labelled with a repository and a commit): a pending commit status each
    for i in range(1 + extra_runs):
        runs.append(new_run(contract, ws, [phase(f"g{i}")], as_=dev, labels={
            "github_repo": f"acme/{key}", "github_sha": f"{i + 1:040x}"})["id"])
    data.runs[key] = runs
    data.tokens[key] = tokens
    data.claim_ids[key] = claim_ids
    # connections, each with a secret reference (W2 has more)
    for i in range(1 + extra_runs):
        contract.call("create_connection", {
            "workspace_id": ws, "name": f"{key}_conn_{i}", "type": "postgres",
            "config": {"host": "db"}, "secrets": {"password": f"env:{key.upper()}_PW_{i}"}})
    # jobs, each with two versions (W2 has more; their runs would change the run counts)
    for i in range(1 + extra_runs):
        register(contract, ws, f"{key}-job-{i}", as_=dev)
        register(contract, ws, f"{key}-job-{i}", as_=dev, git_sha="89abcdef")
    # alerts: destinations, rules, an alert per rule (raised as a later issue's SLO check
    # raises them) and its delivery attempt (W2 has more)
    for i in range(1 + extra_runs):
        contract.call("create_alert_destination", {
            "workspace_id": ws, "name": f"{key}-hook-{i}", "type": "webhook",
            "url": f"env:{key.upper()}_HOOK_{i}"})
        contract.call("create_alert_rule", {
            "workspace_id": ws, "name": f"{key}-slo-{i}", "event": "slo_breached",
            "destination": f"{key}-hook-{i}"})
    raise_alerts(contract.conn, ws)
    for alert in contract.call("claim_alerts", {"limit": 100}):
        contract.call("record_alert_delivery", {"alert_id": alert["id"], "ok": True,
                                                "http_status": 204})
    # schedules of a job, each with a tick skipped as missed (no run: the run counts above
    # stay) (W2 has more)
    register_schedule_job(contract, ws, f"{key}-sched-job")
    for i in range(1 + extra_runs):
        contract.call("create_schedule", {"workspace_id": ws, "name": f"{key}-hourly-{i}",
                                          "job": f"{key}-sched-job", "interval_seconds": 3600,
                                          "catchup": "skip"}, now=SCHEDULE_T0)
    done = contract.call("run_due_schedules", {"workspace_id": ws},
                         now=SCHEDULE_T0 + timedelta(hours=1, minutes=10))
    assert (done["created"], done["skipped"]) == (0, 1 + extra_runs)
    # sensors of that job on the first connection, never evaluated (no run) (W2 has more)
    for i in range(1 + extra_runs):
        contract.call("create_sensor", {"workspace_id": ws, "name": f"{key}-sensor-{i}",
                                        "job": f"{key}-sched-job", "connection": f"{key}_conn_0",
                                        "query": "select max(write_date) from res_partner"})


SCHEDULE_T0 = datetime(2031, 1, 1, tzinfo=UTC)


def register_schedule_job(contract: Contract, ws: str, slug: str) -> None:
    """A job of one python phase, for schedules to run."""
    contract.call("register_job", {
        "workspace_id": ws, "slug": slug, "digest": "blake3:" + "ab" * 32, "git_sha": "0123abc",
        "spec": {"slug": slug, "version": 1, "params": {},
                 "source": {"path": f"{slug}.yaml", "digest": "blake3:" + "cd" * 32},
                 "phases": [phase("a")]}})


def raise_alerts(conn: psycopg.Connection[Any], workspace_id: str) -> None:
    """An slo_breached alert for each such rule of the workspace (as superuser: no function
    of this issue raises them; the SLO checks of a later one will, the same way)."""
    with conn.transaction():
        conn.execute("select ops_private.raise_alerts(%s::uuid, 'slo_breached',"
                     " '{}'::jsonb, '{\"dataset\": \"gold.orders\"}'::jsonb)", (workspace_id,))


@pytest.fixture
def direct(conn: psycopg.Connection[Any]) -> Contract:
    """Direct SQL, for making the data a test needs whatever transport it checks."""
    return Contract(conn)


@pytest.fixture
def populated(direct: Contract, world: World) -> Populated:
    contract = direct
    data = Populated(world=world, both=user("both"), outsider=user("outsider"))
    for ws, role in ((world.w1, "viewer"), (world.w2, "admin")):
        contract.call("add_member", {"workspace_id": ws, "principal_id": str(data.both.sub),
                                     "role": role})
    # minted principals (ops.principals): one in W1, two in W2, one in no workspace
    for home in (world.w1, world.w2, world.w2, None):
        minted = contract.call("create_principal", {"name": "runner", "kind": "executor",
                                                    "workspace_id": home})
        if home is not None:
            contract.call("add_member", {"workspace_id": home, "principal_id": minted["id"],
                                         "role": "executor"})
    # pending invitations: one to W1, two to W2 (admins read them)
    for ws in (world.w1, world.w2, world.w2):
        contract.call("invite_member", {"workspace_id": ws, "principal_id": str(uuid.uuid4()),
                                        "role": "viewer"})
    _fill(contract, data, "w1", world.dev1, world.exec1, extra_runs=0)
    _fill(contract, data, "w2", world.dev2, world.exec2, extra_runs=2)  # W2 holds more rows
    return data


@dataclass(frozen=True)
class Reader:
    principal: Principal
    member_of: frozenset[str]   # "w1", "w2"
    admin_of: frozenset[str]


def readers(data: Populated) -> list[Reader]:
    w = data.world
    one, two, both = frozenset({"w1"}), frozenset({"w2"}), frozenset({"w1", "w2"})
    none: frozenset[str] = frozenset()
    return [
        Reader(w.admin1, one, one), Reader(w.dev1, one, none), Reader(w.viewer1, one, none),
        Reader(w.exec1, one, none),
        Reader(w.admin2, two, two), Reader(w.dev2, two, none), Reader(w.viewer2, two, none),
        Reader(w.exec2, two, none),
        Reader(data.both, both, two), Reader(data.outsider, none, none),
    ]


def count_as(conn: psycopg.Connection[Any], who: Principal, table: str) -> int:
    with acting_as(conn, role=who.role, sub=str(who.sub) if who.sub else None):
        row = conn.execute(
            sql.SQL("select count(*) from ops.{}").format(sql.Identifier(table))).fetchone()
    assert row is not None
    return int(row[0])

def ops_functions(conn: psycopg.Connection[Any], schema: str = "ops") -> list[tuple[int, str]]:
    """(oid, name) of every function and procedure of the schema."""
    with conn.transaction():
        rows = conn.execute(
            "select p.oid::bigint, p.proname from pg_catalog.pg_proc p"
            " join pg_catalog.pg_namespace n on n.oid = p.pronamespace"
            " where n.nspname = %s order by 2, 1",
            (schema,),
        ).fetchall()
    return [(int(o), str(n)) for o, n in rows]


def write_statements(conn: psycopg.Connection[Any], table: str) -> dict[str, sql.Composed]:
    """INSERT, UPDATE, DELETE and TRUNCATE of a table (the privilege check comes first)."""
    with conn.transaction():
        row = conn.execute(
            "select attname from pg_catalog.pg_attribute"
            " where attrelid = pg_catalog.to_regclass(%s) and attnum > 0 and not attisdropped"
            "   and attidentity = '' and attgenerated = '' order by attnum limit 1",
            (f"ops.{table}",),
        ).fetchone()
    assert row is not None
    ident, col = sql.Identifier(table), sql.Identifier(str(row[0]))
    return {
        "insert": sql.SQL("insert into ops.{} default values").format(ident),
        "update": sql.SQL("update ops.{} set {} = {}").format(ident, col, col),
        "delete": sql.SQL("delete from ops.{}").format(ident),
        "truncate": sql.SQL("truncate ops.{} cascade").format(ident),
    }


def everything_readable(conn: psycopg.Connection[Any], contract: Contract,
                        data: Populated) -> Iterator[tuple[str, str]]:
    """(where, text) of every row that service_role and members can select, and of every
    answer of the read functions."""
    tables = ops_tables(conn)
    for who in (SERVICE, data.world.admin1, data.world.viewer1, data.world.exec2):
        sub = str(who.sub) if who.sub else None
        for table in tables:
            with conn.transaction():
                cols = [str(r[0]) for r in conn.execute(
                    "select a.attname from pg_catalog.pg_attribute a"
                    " where a.attrelid = pg_catalog.to_regclass(%s) and a.attnum > 0"
                    "   and not a.attisdropped"
                    "   and pg_catalog.has_column_privilege(%s, a.attrelid, a.attnum, 'select')"
                    " order by a.attnum",
                    (f"ops.{table}", who.role)).fetchall()]
            with acting_as(conn, role=who.role, sub=sub):
                rows = conn.execute(sql.SQL("select {} from ops.{}").format(
                    sql.SQL(", ").join(sql.Identifier(c) for c in cols), sql.Identifier(table))
                ).fetchall()
            yield f"{who}: ops.{table}", repr(rows)
        listing = contract.call("list_runs", {"limit": 500}, as_=who)
        yield f"{who}: list_runs", json.dumps(listing)
        yield f"{who}: list_artifacts", json.dumps(contract.call("list_artifacts", {}, as_=who))
        for item in contract.call("list_datasets", {"limit": 1000}, as_=who):
            yield f"{who}: get_dataset", json.dumps(contract.call(
                "get_dataset", {"workspace_id": item["workspace_id"], "name": item["name"]},
                as_=who))
        for run in listing["runs"]:
            yield f"{who}: get_run", json.dumps(
                contract.call("get_run", {"run_id": run["id"]}, as_=who))
            yield f"{who}: list_events", json.dumps(contract.call(
                "list_events", {"run_id": run["id"], "limit": 1000}, as_=who))


# ops_private helpers the API roles may execute: each must write nothing and reveal nothing
# beyond what the caller may read (they run as the caller, or read only the caller's own
# memberships). Granting another helper must be a reviewed change of this list.
PRIVATE_HELPERS_FOR_API_ROLES = frozenset({
    "admin_workspaces", "member_workspaces", "check_object", "fail", "is_privileged", "now",
    "phases_json", "run_json", "uid", "uuid_arg",
    # the pre-request hook (it reads only whether the caller itself is revoked), and helpers
    # of the reads: whether the caller administers a workspace, a run's summary, an invitation
    "pre_request", "sees_principals", "run_summary_json", "invitation_json",
    # a run's job (get_run and list_runs show it)
    "run_job_json",
    # get_run's lineage and list_dead_letters (reads of the caller's runs and phases, as RLS
    # lets it see them)
    "lineage_json", "active_child", "rerun_to_an_end", "dead_letters",
    # the web UI's reads (all security invoker, so RLS applies): argument checks (a time, a
    # limit), an event row the caller already read as JSON, a manifest's table entries, and
    # whether a workspace is visible to the caller (its row under RLS)
    "time_arg", "limit_arg", "event_json", "manifest_tables", "readable_workspace",
})
# PostgREST runs its pre-request hook as the request's role, anon included
PRIVATE_HELPERS_FOR_ANON = frozenset({"pre_request"})
# the gateway's /auth/v1 calls these as service_role (service_role only: they read password
# hashes and write sessions, refresh tokens and failed sign-ins; docs/auth.md)
PRIVATE_HELPERS_FOR_SERVICE_ROLE = PRIVATE_HELPERS_FOR_API_ROLES | frozenset({
    "auth_signin_lookup", "auth_signin_failed", "auth_signin_ok", "auth_refresh",
    "auth_get_user", "auth_logout",
})


class TestDatabase:
    """Row level security, grants and claims, checked in the database (direct SQL only)."""

    @pytest.fixture
    def contract(self, sql_contract: Contract) -> Contract:
        return sql_contract

    def test_every_table_has_rls_and_a_tenancy(self, conn: psycopg.Connection[Any]) -> None:
        tables = ops_tables(conn)
        assert {"workspaces", "workspace_members", "runs", "phases", "run_events", "artifacts",
                "run_artifacts", "audit_log"} <= set(tables)
        with conn.transaction():
            no_rls = conn.execute(
                "select c.relname from pg_catalog.pg_class c"
                " join pg_catalog.pg_namespace n on n.oid = c.relnamespace"
                " where n.nspname = 'ops' and c.relkind in ('r', 'p') and not c.relrowsecurity"
            ).fetchall()
            others = conn.execute(
                "select c.relname from pg_catalog.pg_class c"
                " join pg_catalog.pg_namespace n on n.oid = c.relnamespace"
                " where n.nspname = 'ops' and c.relkind in ('v', 'm', 'f')"
            ).fetchall()
        assert no_rls == []
        assert others == [], "a view or foreign table in ops needs its own rows in this matrix"
        for table in tables:
            tenancy(conn, table)

    def test_members_read_exactly_their_workspaces_rows(
        self, conn: psycopg.Connection[Any], populated: Populated
    ) -> None:
        ids = {"w1": populated.world.w1, "w2": populated.world.w2}
        for table in ops_tables(conn):
            by_ws = rows_by_workspace(conn, table)
            # the matrix only proves something if both workspaces have rows, different numbers
            # of them (so a policy showing the other workspace's rows is caught)
            n1, n2 = len(by_ws.get(ids["w1"], ())), len(by_ws.get(ids["w2"], ()))
            assert n1 > 0 and n2 > 0, (table, n1, n2)
            assert n1 != n2 or table == "workspaces", (table, n1, n2)
            assert set(by_ws) <= {ids["w1"], ids["w2"], ""}, table
            for reader in readers(populated):
                # the audit log, invitations, who the members are and which principals exist
                # are for admins; a member reads its own membership (its principal row too,
                # but these readers have none)
                admins_only = table in ("audit_log", "invitations", "workspace_members",
                                        "principals")
                visible = reader.admin_of if admins_only else reader.member_of
                expected = visible_count(by_ws, {ids[k] for k in visible})
                if table == "workspace_members":
                    expected += len(reader.member_of - reader.admin_of)   # its own rows
                assert count_as(conn, reader.principal, table) == expected, (
                    f"{reader.principal} reading ops.{table}")
            everything = visible_count(by_ws, set(by_ws))
            assert count_as(conn, SERVICE, table) == everything, f"service_role, {table}"

    def test_only_admins_read_the_audit_log(
        self, conn: psycopg.Connection[Any], populated: Populated
    ) -> None:
        w = populated.world
        by_ws = rows_by_workspace(conn, "audit_log")
        assert count_as(conn, w.admin1, "audit_log") == len(by_ws[w.w1])
        assert count_as(conn, w.admin2, "audit_log") == len(by_ws[w.w2])
        assert count_as(conn, populated.both, "audit_log") == len(by_ws[w.w2])  # W2's admin
        for who in (w.dev1, w.viewer1, w.exec1, w.dev2, w.viewer2, w.exec2, populated.outsider):
            assert count_as(conn, who, "audit_log") == 0, str(who)
        with acting_as(conn, role="authenticated", sub=str(w.admin1.sub)):
            seen = {str(r[0]) for r in conn.execute(
                "select distinct workspace_id from ops.audit_log").fetchall()}
        assert seen == {w.w1}

    def test_anon_reads_no_table(self, conn: psycopg.Connection[Any], populated: Populated) -> None:
        for table in ops_tables(conn):
            with pytest.raises(psycopg.errors.InsufficientPrivilege), acting_as(conn, role="anon"):
                conn.execute(sql.SQL("select count(*) from ops.{}").format(sql.Identifier(table)))

    def test_authenticated_without_a_sub_reads_nothing(
        self, conn: psycopg.Connection[Any], populated: Populated
    ) -> None:
        for table in ops_tables(conn):
            assert count_as(conn, Principal("authenticated", None, "no-sub"), table) == 0, table

    def test_nobody_writes_a_table_directly(
        self, conn: psycopg.Connection[Any], populated: Populated
    ) -> None:
        w = populated.world
        writers = [ANON, SERVICE, w.admin1, w.dev1, w.viewer1, w.exec1, w.admin2, w.exec2,
                   populated.both]
        before = snapshot(conn)
        for table in ops_tables(conn):
            for verb, statement in write_statements(conn, table).items():
                for who in writers:
                    with pytest.raises(psycopg.errors.InsufficientPrivilege), acting_as(
                        conn, role=who.role, sub=str(who.sub) if who.sub else None
                    ):
                        conn.execute(statement)
                        pytest.fail(f"{who} could {verb} ops.{table}")
        assert snapshot(conn) == before

    def test_lease_token_and_claim_id_are_not_selectable(
        self, conn: psycopg.Connection[Any], populated: Populated
    ) -> None:
        w = populated.world
        for who in (SERVICE, w.admin1, w.exec1, w.viewer1):
            sub = str(who.sub) if who.sub else None
            for column in sorted(SECRET_PHASE_COLUMNS):
                with pytest.raises(psycopg.errors.InsufficientPrivilege), acting_as(
                    conn, role=who.role, sub=sub
                ):
                    conn.execute(
                        sql.SQL("select {} from ops.phases").format(sql.Identifier(column)))
                    pytest.fail(f"{who} selected phases.{column}")
            with pytest.raises(psycopg.errors.InsufficientPrivilege), acting_as(
                conn, role=who.role, sub=sub
            ):
                conn.execute("select * from ops.phases")
            with acting_as(conn, role=who.role, sub=sub):
                assert conn.execute("select id, state, lease_expires_at from ops.phases"
                                    ).fetchall()
        # every other column is readable: the hidden ones are exactly the two capabilities
        with conn.transaction():
            hidden = conn.execute(
                "select a.attname, r.rolname from pg_catalog.pg_attribute a"
                " cross join (values ('authenticated'), ('service_role')) r(rolname)"
                " where a.attrelid = 'ops.phases'::regclass and a.attnum > 0"
                "   and not a.attisdropped"
                "   and not pg_catalog.has_column_privilege(r.rolname, a.attrelid, a.attnum,"
                "                                           'select')"
            ).fetchall()
        assert {(str(c), str(r)) for c, r in hidden} == {
            (c, r) for c in SECRET_PHASE_COLUMNS for r in ("authenticated", "service_role")}

    def test_lease_tokens_are_never_readable(
        self, conn: psycopg.Connection[Any], contract: Contract, populated: Populated
    ) -> None:
        tokens = populated.tokens["w1"] + populated.tokens["w2"]
        assert len(tokens) == 4
        leaks = sorted({where for where, text in everything_readable(conn, contract, populated)
                        for token in tokens if token in text})
        assert leaks == [], "lease tokens are readable here"

    def test_claim_ids_are_never_readable(
        self, conn: psycopg.Connection[Any], contract: Contract, populated: Populated
    ) -> None:
        """The schema calls claim ids capabilities and hides ops.phases.claim_id; they must not
        come back through another door (an event payload, say) either."""
        claim_ids = populated.claim_ids["w1"] + populated.claim_ids["w2"]
        leaks = sorted({where for where, text in everything_readable(conn, contract, populated)
                        for claim_id in claim_ids if claim_id in text})
        assert leaks == [], "claim ids are readable here"

    def test_anon_executes_no_function(self, conn: psycopg.Connection[Any], world: World) -> None:
        functions = ops_functions(conn)
        assert len(functions) >= 17
        with conn.transaction():
            row = conn.execute(
                "select pg_catalog.has_schema_privilege('anon', 'ops', 'usage')").fetchone()
        assert row is not None and row[0] is False
        before = snapshot(conn)
        for oid, name in functions:
            with conn.transaction():
                granted = conn.execute(
                    "select pg_catalog.has_function_privilege('anon', %s::oid, 'execute'),"
                    " array(select pg_catalog.format_type(t, null)"
                    "       from pg_catalog.unnest(p.proargtypes) t)"
                    " from pg_catalog.pg_proc p where p.oid = %s::oid",
                    (oid, oid),
                ).fetchone()
            assert granted is not None
            assert granted[0] is False, f"anon may execute ops.{name}"
            # and calling it, every argument null, is refused before anything runs
            statement = sql.SQL("select ops.{}({})").format(
                sql.Identifier(name),
                sql.SQL(", ").join(sql.SQL("null::" + t) for t in granted[1]))
            with pytest.raises(psycopg.errors.InsufficientPrivilege), acting_as(conn, role="anon"):
                conn.execute(statement)
        assert snapshot(conn) == before

    def test_private_helpers_granted_to_api_roles_are_reviewed(
        self, conn: psycopg.Connection[Any]
    ) -> None:
        granted: dict[str, set[str]] = {"anon": set(), "authenticated": set(),
                                        "service_role": set()}
        with conn.transaction():
            for oid, name in ops_functions(conn, "ops_private"):
                for role, names in granted.items():
                    row = conn.execute(
                        "select pg_catalog.has_function_privilege(%s, %s::oid, 'execute')",
                        (role, oid)).fetchone()
                    if row is not None and row[0]:
                        names.add(name)
        assert granted["anon"] == PRIVATE_HELPERS_FOR_ANON
        assert granted["authenticated"] == PRIVATE_HELPERS_FOR_API_ROLES
        assert granted["service_role"] == PRIVATE_HELPERS_FOR_SERVICE_ROLE

    def test_a_forged_role_claim_is_not_privileged(
        self, conn: psycopg.Connection[Any], populated: Populated
    ) -> None:
        """is_privileged() reads the database role, not the JWT's role claim: an
        `authenticated` session whose claims say role=service_role is an ordinary user."""
        w = populated.world
        forger = populated.outsider
        forged = json.dumps({"role": "service_role", "sub": str(forger.sub)})

        def as_forger(fn: str, args: dict[str, Any]) -> ContractError:
            with pytest.raises(ContractError) as info, acting_as(
                conn, role="authenticated", sub=str(forger.sub)
            ):
                conn.execute("select pg_catalog.set_config('request.jwt.claims', %s, true)",
                             (forged,))
                call(conn, fn, args)
            return info.value

        with acting_as(conn, role="authenticated", sub=str(forger.sub)):
            conn.execute("select pg_catalog.set_config('request.jwt.claims', %s, true)",
                         (forged,))
            row = conn.execute("select auth.role(), ops_private.is_privileged(),"
                               " (select count(*) from ops.runs)").fetchone()
        assert row == ("service_role", False, 0)

        before = snapshot(conn)
        for fn, args, status in (
            ("create_run", {"workspace_id": w.w1, "spec_slug": "demo", "git_sha": "0123abc",
                            "phases": [phase("a")]}, 404),
            ("claim_phase", {}, 403),
            ("create_principal", {"name": "forged"}, 403),
            ("cancel_run", {"run_id": populated.runs["w1"][0]}, 404),
            ("add_member", {"workspace_id": w.w1, "principal_id": str(forger.sub),
                            "role": "admin"}, 404),
            ("heartbeat", {"lease_token": populated.live_claims["w1"]["lease_token"]}, 404),
        ):
            err = as_forger(fn, args)
            assert err.status == status, f"{fn}: {err!r}"
        assert snapshot(conn) == before


# ---------------------------------------------------------------------------------------------
# functions: the role matrix
# ---------------------------------------------------------------------------------------------

LABELS = ("anon", "viewer1", "dev1", "admin1", "exec1", "admin2", "exec2", "service_role")
W1_MEMBERS = frozenset({"viewer1", "dev1", "admin1", "exec1"})
W2_MEMBERS = frozenset({"admin2", "exec2"})
AUTHENTICATED = W1_MEMBERS | W2_MEMBERS
SVC = frozenset({"service_role"})
READERS_OF_W1 = W1_MEMBERS | SVC
DEVELOPERS = frozenset({"dev1", "admin1"}) | SVC
EXECUTORS = frozenset({"exec1"}) | SVC


class Targets:
    """Fresh objects of W1 for one call each, made over direct SQL."""

    def __init__(self, contract: Contract, world: World) -> None:
        self.contract = contract
        self.world = world
        self._made: set[str] = set()   # the shared objects made once: "sched-job", "source"

    @property
    def w1(self) -> str:
        return self.world.w1

    def run(self) -> str:
        return str(new_run(self.contract, self.world.w1, [phase("a")])["id"])

    def claimed(self) -> dict[str, Any]:
        claim: dict[str, Any] | None = self.contract.call(
            "claim_phase", {"run_id": self.run()}, as_=self.world.exec1)
        assert claim is not None
        return claim

    def succeeded_run(self) -> str:
        claim = self.claimed()
        self.contract.call("complete_phase", {"lease_token": claim["lease_token"],
                                              "outcome": "succeeded"}, as_=self.world.exec1)
        return str(claim["run_id"])

    def cancelled_run(self) -> str:
        run_id = self.run()
        self.contract.call("cancel_run", {"run_id": run_id})
        return run_id

    def dead_letter(self) -> str:
        """The id of a phase of W1 that failed for good: a dead letter."""
        claim = self.claimed()
        self.contract.call("complete_phase", {"lease_token": claim["lease_token"],
                                              "outcome": "failed", "retryable": False},
                           as_=self.world.exec1)
        return str(claim["phase_id"])

    def minted_member(self, owned: bool = True) -> str:
        """A principal of ops.principals, executor of W1 (and owned by W1 when `owned`)."""
        minted = self.owned_principal() if owned else str(
            self.contract.call("create_principal", {"name": "runner"})["id"])
        self.contract.call("add_member", {"workspace_id": self.world.w1,
                                          "principal_id": minted, "role": "executor"})
        return minted

    def owned_principal(self) -> str:
        """A principal owned by W1, member of nothing."""
        return str(self.contract.call("create_principal", {
            "name": "runner", "workspace_id": self.world.w1})["id"])

    def invited(self) -> str:
        """A principal with a pending invitation to W1."""
        sub = str(uuid.uuid4())
        self.contract.call("invite_member", {"workspace_id": self.world.w1, "principal_id": sub,
                                             "role": "viewer"})
        return sub

    def inviting_everyone(self) -> str:
        """A new workspace that invited every principal of the world."""
        ws = self.contract.call("create_workspace", {
            "slug": "inv-" + uuid.uuid4().hex[:12], "name": "Inviting"})["id"]
        for who in self.world.members.values():
            self.contract.call("invite_member", {"workspace_id": ws, "principal_id": str(who.sub),
                                                 "role": "viewer"})
        return str(ws)

    def dataset(self, change: str = "INITIAL") -> str:
        """The name of a new dataset of W1 (blocked when `change` is BREAKING)."""
        name = f"bronze.t_{uuid.uuid4().hex[:12]}"
        self.contract.call("record_dataset", dataset_args(self.claimed()["lease_token"], name,
                                                          change), as_=self.world.exec1)
        return name

    def job(self) -> str:
        """The slug of a new job of W1 (one version: a param `day` required, `n` defaulted)."""
        slug = f"job-{uuid.uuid4().hex[:12]}"
        register(self.contract, self.world.w1, slug)
        return slug

    def job_base(self) -> dict[str, Any]:
        """A new job of W1 and a succeeded run of it: a base for create_changed_run."""
        slug = self.job()
        run = self.contract.call("create_job_run", {"workspace_id": self.world.w1, "job": slug,
                                                    "params": {"day": "d"}})
        claim = self.contract.call("claim_phase", {"run_id": run["id"]}, as_=self.world.exec1)
        self.contract.call("complete_phase", {"lease_token": claim["lease_token"],
                                              "outcome": "succeeded"}, as_=self.world.exec1)
        return {"workspace_id": self.world.w1, "job": slug, "base_run_id": run["id"]}

    def connection(self) -> str:
        """The name of a new connection of W1, with a secret reference."""
        name = f"c_{uuid.uuid4().hex[:12]}"
        self.contract.call("create_connection", {
            "workspace_id": self.world.w1, "name": name, "type": "postgres",
            "config": {"host": "db"}, "secrets": {"password": "env:PGPASSWORD"}})
        return name

    def alert_destination(self) -> str:
        """The name of a new alert destination of W1 (no rule uses it)."""
        name = f"d-{uuid.uuid4().hex[:12]}"
        self.contract.call("create_alert_destination", {
            "workspace_id": self.world.w1, "name": name, "type": "webhook",
            "url": "env:ALERT_HOOK"})
        return name

    def alert_rule(self) -> str:
        """The name of a new slo_breached rule of W1 (and of its destination)."""
        name = f"r-{uuid.uuid4().hex[:12]}"
        self.contract.call("create_alert_rule", {
            "workspace_id": self.world.w1, "name": name, "event": "slo_breached",
            "destination": self.alert_destination()})
        return name

    def delivering_alert(self) -> str:
        """The id of a new alert of W1, claimed by the deliverer."""
        name = self.alert_rule()
        raise_alerts(self.contract.conn, self.world.w1)
        claimed = self.contract.call("claim_alerts", {"limit": 500})
        return str(next(a["id"] for a in claimed if a["rule"] == name))

    def delivering_github_status(self) -> str:
        """The id of the pending commit status of a new gate run of W1, claimed by the
        deliverer."""
        run = self.contract.call("create_run", {
            "workspace_id": self.world.w1, "spec_slug": "gate", "git_sha": "0123abc",
            "phases": [{"name": "a", "kind": "python"}],
            "labels": {"github_repo": "acme/lake", "github_sha": "b" * 40}})
        claimed = self.contract.call("claim_github_statuses", {"limit": 500})
        return str(next(s["id"] for s in claimed if s["run_id"] == run["id"]))

    def delivering_github_check_run(self) -> tuple[str, int]:
        """The id and version of the check run of a new gate run of W1, claimed by the
        deliverer."""
        run = self.contract.call("create_run", {
            "workspace_id": self.world.w1, "spec_slug": "gate", "git_sha": "0123abc",
            "phases": [{"name": "a", "kind": "python"}],
            "labels": {"github_repo": "acme/lake", "github_sha": "c" * 40}})
        claimed = self.contract.call("claim_github_check_runs", {"limit": 500})
        found = next(c for c in claimed if c["run_id"] == run["id"])
        return str(found["id"]), int(found["version"])

    def _sched_job(self) -> None:
        """Job rls-sched-job of W1, registered by the first schedule or sensor that needs it
        (remembered here: listing the jobs before each one cost as much as making it)."""
        if "sched-job" not in self._made:
            register_schedule_job(self.contract, self.world.w1, "rls-sched-job")
            self._made.add("sched-job")

    def schedule(self) -> str:
        """The name of a new hourly schedule of W1 (of job rls-sched-job)."""
        self._sched_job()
        name = f"s-{uuid.uuid4().hex[:12]}"
        self.contract.call("create_schedule", {"workspace_id": self.world.w1, "name": name,
                                               "job": "rls-sched-job", "cron": "0 * * * *"})
        return name

    def sensor(self) -> str:
        """The name of a new sensor of W1 (of job rls-sched-job, on postgres connection
        rls_source)."""
        self._sched_job()
        if "source" not in self._made:
            self.contract.call("create_connection", {
                "workspace_id": self.world.w1, "name": "rls_source", "type": "postgres",
                "config": {"dsn": "postgresql://src@127.0.0.1/src"}, "secrets": {}})
            self._made.add("source")
        name = f"sn-{uuid.uuid4().hex[:12]}"
        self.contract.call("create_sensor", {"workspace_id": self.world.w1, "name": name,
                                             "job": "rls-sched-job", "connection": "rls_source",
                                             "query": "select 1"})
        return name

    def sensor_id(self) -> str:
        """The id of a new sensor of W1."""
        name = self.sensor()
        found = self.contract.call("get_sensor", {"workspace_id": self.world.w1, "name": name})
        return str(found["id"])

    def new_member(self) -> str:
        sub = str(uuid.uuid4())
        self.contract.call("add_member", {"workspace_id": self.world.w1, "principal_id": sub,
                                          "role": "viewer"})
        return sub


Check = Callable[[Any, str], None]


@dataclass(frozen=True)
class Case:
    name: str
    fn: str
    prepare: Callable[[Targets], dict[str, Any]]
    allowed: frozenset[str]
    not_found: frozenset[str] = W2_MEMBERS   # refused with 404 (the W1 id is hidden), not 403
    check: Check | None = None

    def expect(self, label: str) -> int:
        """0 for success, else the HTTP status of the refusal."""
        if label == "anon":
            return 401
        if label in self.allowed:
            return 0
        return 404 if label in self.not_found else 403


def _check_list_runs(result: Any, label: str) -> None:
    if label in W2_MEMBERS:
        assert result["runs"] == [], "a W2 member listed W1's runs"
    else:
        assert len(result["runs"]) >= 1


def _check_list_workspaces(result: Any, label: str) -> None:
    slugs = {w["slug"] for w in result}
    if label == "service_role":
        assert {"w1", "w2"} <= slugs
    else:  # the case runs before create_workspace's
        assert slugs == ({"w2"} if label in W2_MEMBERS else {"w1"}), slugs


def _check_claim(result: Any, label: str) -> None:
    assert result["lease_token"] and result["name"] == "a"


def _check_claims(result: Any, label: str) -> None:
    assert [c["name"] for c in result][:1] == ["a"] and all(c["lease_token"] for c in result)


def _w1_with_a_run(targets: Targets) -> dict[str, Any]:
    targets.run()
    return {"workspace_id": targets.w1}


def _check_list_datasets(result: Any, label: str) -> None:
    if label in W2_MEMBERS:
        assert result == [], "a W2 member listed W1's datasets"
    else:
        assert len(result) >= 1


def _w1_with_a_dataset(targets: Targets) -> dict[str, Any]:
    targets.dataset()
    return {"workspace_id": targets.w1}


def _phase_events(targets: Targets) -> dict[str, Any]:
    claim = targets.claimed()
    return {"run_id": claim["run_id"], "lease_token": claim["lease_token"],
            "events": [log_event("a")]}


CASES = [
    Case("get_run", "get_run", lambda t: {"run_id": t.run()}, READERS_OF_W1),
    Case("list_events", "list_events", lambda t: {"run_id": t.run()}, READERS_OF_W1),
    # the UI's reads (20261204000100_ui_reads.sql): a run or workspace of W1 is hidden from W2
    Case("get_run_timeline", "get_run_timeline", lambda t: {"run_id": t.run()}, READERS_OF_W1),
    Case("get_run_lineage", "get_run_lineage", lambda t: {"run_id": t.run()}, READERS_OF_W1),
    Case("get_run_grid", "get_run_grid", lambda t: {"workspace_id": t.w1}, READERS_OF_W1),
    Case("get_health", "get_health", lambda t: {"workspace_id": t.w1}, READERS_OF_W1),
    Case("list_artifacts", "list_artifacts", lambda t: {"run_id": t.run()}, READERS_OF_W1),
    Case("list_runs", "list_runs", _w1_with_a_run, AUTHENTICATED | SVC, frozenset(),
         _check_list_runs),
    Case("list_workspaces", "list_workspaces", lambda t: {}, AUTHENTICATED | SVC, frozenset(),
         _check_list_workspaces),
    Case("create_workspace", "create_workspace",
         lambda t: {"slug": "ws-" + uuid.uuid4().hex[:12], "name": "New"},
         AUTHENTICATED | SVC, frozenset()),
    # an admin enrols a principal its workspace owns; anyone else only service_role
    Case("add_member", "add_member",
         lambda t: {"workspace_id": t.w1, "principal_id": t.owned_principal(), "role": "viewer"},
         frozenset({"admin1"}) | SVC),
    Case("add_member[not owned]", "add_member",
         lambda t: {"workspace_id": t.w1, "principal_id": str(uuid.uuid4()), "role": "viewer"},
         SVC),
    Case("remove_member", "remove_member",
         lambda t: {"workspace_id": t.w1, "principal_id": t.new_member()},
         frozenset({"admin1"}) | SVC),
    # only service_role makes principals owned by nobody; an admin makes its workspace's
    Case("create_principal", "create_principal", lambda t: {"name": "runner"}, SVC, frozenset()),
    Case("create_principal[owned]", "create_principal",
         lambda t: {"name": "runner", "workspace_id": t.w1}, frozenset({"admin1"}) | SVC),
    # an admin of the workspace that owns the principal may revoke it; to anyone else the
    # principal does not exist (a member of W1 owned by nobody: service_role only)
    Case("revoke_principal", "revoke_principal",
         lambda t: {"principal_id": t.minted_member()}, frozenset({"admin1"}) | SVC,
         AUTHENTICATED - {"admin1"}),
    Case("revoke_principal[not owned]", "revoke_principal",
         lambda t: {"principal_id": t.minted_member(owned=False)}, SVC, AUTHENTICATED),
    Case("invite_member", "invite_member",
         lambda t: {"workspace_id": t.w1, "principal_id": str(uuid.uuid4()), "role": "viewer"},
         frozenset({"admin1"}) | SVC),
    Case("revoke_invitation", "revoke_invitation",
         lambda t: {"workspace_id": t.w1, "principal_id": t.invited()},
         frozenset({"admin1"}) | SVC),
    Case("list_invitations", "list_invitations", lambda t: {"workspace_id": t.w1},
         frozenset({"admin1"}) | SVC, AUTHENTICATED - {"admin1"}),
    # the audit log: W1's admins (everyone else, members of W1 included: 403)
    Case("list_audit", "list_audit", lambda t: {"workspace_id": t.w1},
         frozenset({"admin1"}) | SVC, frozenset()),
    # the invitee itself accepts; executors (pinned tokens) and service_role have nothing to
    # accept
    Case("accept_invitation", "accept_invitation",
         lambda t: {"workspace_id": t.inviting_everyone()},
         frozenset({"viewer1", "dev1", "admin1", "admin2"}), frozenset()),
    Case("create_run", "create_run",
         lambda t: {"workspace_id": t.w1, "spec_slug": "demo", "git_sha": "0123abc",
                    "phases": [phase("a")]}, DEVELOPERS),
    Case("cancel_run", "cancel_run", lambda t: {"run_id": t.run()}, DEVELOPERS),
    Case("retry_run", "retry_run", lambda t: {"run_id": t.cancelled_run()}, DEVELOPERS),
    Case("repair_run", "repair_run", lambda t: {"run_id": t.cancelled_run()}, DEVELOPERS),
    # dead letters: members read (another workspace's list is an empty page); developers and
    # admins requeue (outside W1 the workspace does not exist)
    Case("list_dead_letters", "list_dead_letters",
         lambda t: {"workspace_id": t.w1} if t.dead_letter() else {}, AUTHENTICATED | SVC,
         frozenset()),
    Case("requeue_dead_letters", "requeue_dead_letters",
         lambda t: {"workspace_id": t.w1, "phase_ids": [t.dead_letter()]}, DEVELOPERS),
    Case("complete_run", "complete_run", lambda t: {"run_id": t.succeeded_run()},
         DEVELOPERS | EXECUTORS),
    # not an executor anywhere: 403; an executor of W2 only: W1's run is not found
    Case("claim_phase", "claim_phase", lambda t: {"run_id": t.run(), "lease_seconds": 60},
         EXECUTORS, frozenset({"exec2"}), _check_claim),
    Case("claim_phases", "claim_phases",
         lambda t: {"run_id": t.run(), "lease_seconds": 60, "limit": 2},
         EXECUTORS, frozenset({"exec2"}), _check_claims),
    Case("heartbeat", "heartbeat", lambda t: {"lease_token": t.claimed()["lease_token"]},
         EXECUTORS),
    Case("append_events[phase]", "append_events", _phase_events, EXECUTORS),
    # run-level events (no phase, no token): the SQL lets developers and admins add them too
    Case("append_events[run]", "append_events",
         lambda t: {"run_id": t.run(), "events": [log_event()]}, DEVELOPERS | EXECUTORS),
    Case("register_artifact", "register_artifact",
         lambda t: {"lease_token": t.claimed()["lease_token"], "digest": digest_of("x"),
                    "uri": "s3://b/x", "size_bytes": 1}, EXECUTORS),
    Case("complete_phase", "complete_phase",
         lambda t: {"lease_token": t.claimed()["lease_token"], "outcome": "succeeded"},
         EXECUTORS),
    Case("complete_phases", "complete_phases",
         lambda t: {"completions": [{"lease_token": t.claimed()["lease_token"],
                                     "outcome": "succeeded"}]}, EXECUTORS),
    Case("record_dataset", "record_dataset",
         lambda t: dataset_args(t.claimed()["lease_token"], "bronze.orders"), EXECUTORS),
    Case("list_datasets", "list_datasets", _w1_with_a_dataset, AUTHENTICATED | SVC, frozenset(),
         _check_list_datasets),
    Case("get_dataset", "get_dataset",
         lambda t: {"workspace_id": t.w1, "name": t.dataset()}, READERS_OF_W1),
    # an admin of the dataset's workspace resolves a breaking change; to others outside it the
    # workspace does not exist
    Case("unblock_dataset", "unblock_dataset",
         lambda t: {"workspace_id": t.w1, "name": t.dataset("BREAKING"), "resolution": "accept"},
         frozenset({"admin1"}) | SVC),
    # connections: admins write, developers record tests, members read; outside W1 the
    # workspace does not exist (tests/security/test_connections_rls.py has the details)
    # jobs: developers and admins register and run them, members read; outside W1 the
    # workspace does not exist
    Case("register_job", "register_job",
         lambda t: register_args(t.w1, f"job-{uuid.uuid4().hex[:12]}"), DEVELOPERS),
    Case("list_jobs", "list_jobs", lambda t: {"workspace_id": t.w1} if t.job() else {},
         READERS_OF_W1),
    Case("get_job", "get_job", lambda t: {"workspace_id": t.w1, "slug": t.job()},
         READERS_OF_W1),
    Case("create_job_run", "create_job_run",
         lambda t: {"workspace_id": t.w1, "job": t.job(), "params": {"day": "d"}}, DEVELOPERS),
    Case("create_changed_run", "create_changed_run",
         lambda t: t.job_base() | {"changed": {"extract": "code changed"},
                                   "params": {"day": "d"}}, DEVELOPERS),
    Case("set_job_slo", "set_job_slo",
         lambda t: {"workspace_id": t.w1, "job": t.job(), "freshness_seconds": 600}, DEVELOPERS),
    Case("set_job_concurrency", "set_job_concurrency",
         lambda t: {"workspace_id": t.w1, "job": t.job(), "max_concurrent_runs": 2}, DEVELOPERS),
    Case("evaluate_slos", "evaluate_slos",
         lambda t: {"workspace_id": t.w1} if t.job() else {}, DEVELOPERS),
    Case("create_connection", "create_connection",
         lambda t: {"workspace_id": t.w1, "name": f"c_{uuid.uuid4().hex[:12]}", "type": "http",
                    "config": {"url": "https://x.example"}}, frozenset({"admin1"}) | SVC),
    Case("update_connection", "update_connection",
         lambda t: {"workspace_id": t.w1, "name": t.connection(), "config": {"host": "db2"}},
         frozenset({"admin1"}) | SVC),
    Case("delete_connection", "delete_connection",
         lambda t: {"workspace_id": t.w1, "name": t.connection()}, frozenset({"admin1"}) | SVC),
    Case("list_connections", "list_connections",
         lambda t: {"workspace_id": t.w1} if t.connection() else {}, READERS_OF_W1),
    Case("get_connection", "get_connection",
         lambda t: {"workspace_id": t.w1, "name": t.connection()}, READERS_OF_W1),
    Case("record_connection_test", "record_connection_test",
         lambda t: {"workspace_id": t.w1, "name": t.connection(), "ok": True, "message": "ok"},
         DEVELOPERS),
    # alerts: admins write rules and destinations, developers read them, members but executors
    # read alerts; only the deliverer (service_role) claims and records deliveries
    Case("create_alert_destination", "create_alert_destination",
         lambda t: {"workspace_id": t.w1, "name": f"d-{uuid.uuid4().hex[:12]}",
                    "type": "slack", "url": "env:SLACK_HOOK"}, frozenset({"admin1"}) | SVC),
    Case("list_alert_destinations", "list_alert_destinations",
         lambda t: {"workspace_id": t.w1} if t.alert_destination() else {}, DEVELOPERS),
    Case("delete_alert_destination", "delete_alert_destination",
         lambda t: {"workspace_id": t.w1, "name": t.alert_destination()},
         frozenset({"admin1"}) | SVC),
    Case("create_alert_rule", "create_alert_rule",
         lambda t: {"workspace_id": t.w1, "name": f"r-{uuid.uuid4().hex[:12]}",
                    "event": "run_failed", "destination": t.alert_destination()},
         frozenset({"admin1"}) | SVC),
    Case("list_alert_rules", "list_alert_rules",
         lambda t: {"workspace_id": t.w1} if t.alert_rule() else {}, DEVELOPERS),
    Case("delete_alert_rule", "delete_alert_rule",
         lambda t: {"workspace_id": t.w1, "name": t.alert_rule()}, frozenset({"admin1"}) | SVC),
    Case("list_alerts", "list_alerts",
         lambda t: {"workspace_id": t.w1} if t.delivering_alert() else {},
         frozenset({"viewer1", "dev1", "admin1"}) | SVC),
    Case("claim_alerts", "claim_alerts", lambda t: {"limit": 1}, SVC, frozenset()),
    Case("list_github_statuses", "list_github_statuses",
         lambda t: {"workspace_id": t.w1} if t.delivering_github_status() else {},
         frozenset({"viewer1", "dev1", "admin1"}) | SVC),
    Case("claim_github_statuses", "claim_github_statuses", lambda t: {"limit": 1}, SVC,
         frozenset()),
    Case("record_github_status_delivery", "record_github_status_delivery",
         lambda t: {"status_id": t.delivering_github_status(), "ok": False, "error": "HTTP 500"},
         SVC, frozenset()),
    Case("list_github_check_runs", "list_github_check_runs",
         lambda t: {"workspace_id": t.w1} if t.delivering_github_check_run() else {},
         frozenset({"viewer1", "dev1", "admin1"}) | SVC),
    Case("claim_github_check_runs", "claim_github_check_runs", lambda t: {"limit": 1}, SVC,
         frozenset()),
    Case("record_github_check_run_delivery", "record_github_check_run_delivery",
         lambda t: dict(zip(("check_id", "version"), t.delivering_github_check_run(),
                            strict=True)) | {"ok": False, "error": "HTTP 500"},
         SVC, frozenset()),
    Case("record_alert_delivery", "record_alert_delivery",
         lambda t: {"alert_id": t.delivering_alert(), "ok": False, "error": "HTTP 500"}, SVC,
         frozenset()),
    # schedules: developers and admins change them and fire due ticks, members read them;
    # outside W1 the workspace does not exist (tests/contract/test_schedules.py has the rest)
    Case("create_schedule", "create_schedule",
         lambda t: {"workspace_id": t.w1, "name": t.schedule() + "-new", "job": "rls-sched-job",
                    "interval_seconds": 60}, DEVELOPERS),
    Case("update_schedule", "update_schedule",
         lambda t: {"workspace_id": t.w1, "name": t.schedule(), "enabled": False}, DEVELOPERS),
    Case("delete_schedule", "delete_schedule",
         lambda t: {"workspace_id": t.w1, "name": t.schedule()}, DEVELOPERS),
    Case("list_schedules", "list_schedules",
         lambda t: {"workspace_id": t.w1} if t.schedule() else {}, READERS_OF_W1),
    Case("get_schedule", "get_schedule",
         lambda t: {"workspace_id": t.w1, "name": t.schedule()}, READERS_OF_W1),
    Case("list_schedule_ticks", "list_schedule_ticks",
         lambda t: {"workspace_id": t.w1, "name": t.schedule()}, READERS_OF_W1),
    Case("run_due_schedules", "run_due_schedules",
         lambda t: {"workspace_id": t.w1} if t.schedule() else {}, DEVELOPERS),
    # sensors: developers and admins change them and report values, members read them; any
    # developer or admin (of its own workspaces) or service_role claims due ones
    Case("create_sensor", "create_sensor",
         lambda t: {"workspace_id": t.w1, "name": t.sensor() + "-new", "job": "rls-sched-job",
                    "connection": "rls_source", "query": "select 2"}, DEVELOPERS),
    Case("delete_sensor", "delete_sensor",
         lambda t: {"workspace_id": t.w1, "name": t.sensor()}, DEVELOPERS),
    Case("list_sensors", "list_sensors",
         lambda t: {"workspace_id": t.w1} if t.sensor() else {}, READERS_OF_W1),
    Case("get_sensor", "get_sensor",
         lambda t: {"workspace_id": t.w1, "name": t.sensor()}, READERS_OF_W1),
    Case("claim_due_sensors", "claim_due_sensors",
         lambda t: {"workspace_id": t.w1, "limit": 1} if t.sensor() else {}, DEVELOPERS),
    Case("record_sensor_value", "record_sensor_value",
         lambda t: {"sensor_id": t.sensor_id(), "value": "1"}, DEVELOPERS),
]


def principal_of(world: World, label: str) -> Principal:
    if label == "anon":
        return ANON
    if label == "service_role":
        return SERVICE
    return world.members[label]


def test_every_function_is_in_the_matrix(conn: psycopg.Connection[Any]) -> None:
    in_catalog = {name for _, name in ops_functions(conn)}
    in_matrix = {case.fn for case in CASES}
    assert in_catalog - in_matrix == set(), "give these functions rows in CASES"
    assert in_matrix - in_catalog == set(), "CASES names functions that do not exist"


def outcome(contract: Contract, fn: str, args: dict[str, Any], who: Principal) -> tuple[Any, ...]:
    """(0, result) on success, else (status, code, sqlstate) of the refusal."""
    try:
        return (0, contract.call(fn, args, as_=who))
    except ContractError as err:
        return (err.status, err.code, err.sqlstate)


def test_who_may_call(conn: psycopg.Connection[Any], contract: Contract, direct: Contract,
                      world: World) -> None:
    """Every case of the matrix as every principal; all mismatches are reported together.

    Each call gets objects of its own (`case.prepare`). The refused calls of a case come first,
    their objects all made before them: nothing may change from one snapshot taken after those
    preparations to the snapshot after each refusal (a snapshot costs as much as a call, and
    one before each call made this test twice as long). The allowed calls follow, each right
    after its own preparation."""
    targets = Targets(direct, world)
    wrong: list[str] = []
    for case in CASES:
        refused = [label for label in LABELS if case.expect(label) != 0]
        prepared = {label: case.prepare(targets) for label in refused}
        before = snapshot(conn)
        for label in refused:
            status = case.expect(label)
            got = outcome(contract, case.fn, prepared[label], principal_of(world, label))
            if status == 401:
                expected: tuple[Any, ...] = (401, got[1], "42501")  # permission denied
            else:
                expected = (status, {403: "forbidden", 404: "not_found"}[status], got[2])
            if got != expected:
                wrong.append(f"{case.name} as {label}: expected {expected[:2]}, got {got}")
            if (after := snapshot(conn)) != before:
                wrong.append(f"{case.name} as {label}: refused, but it wrote something")
                before = after
        for label in LABELS:
            if label in refused:
                continue
            got = outcome(contract, case.fn, case.prepare(targets), principal_of(world, label))
            if got[0] != 0 or got[1] is None:
                wrong.append(f"{case.name} as {label}: expected success, got {got}")
            elif case.check is not None:
                try:
                    case.check(got[1], label)
                except AssertionError as exc:
                    wrong.append(f"{case.name} as {label}: {exc}")
    assert wrong == []


# ---------------------------------------------------------------------------------------------
# cross-tenant
# ---------------------------------------------------------------------------------------------

def test_w2_members_do_not_find_w1_runs(
    conn: psycopg.Connection[Any], contract: Contract, populated: Populated
) -> None:
    w = populated.world
    runs = populated.runs["w1"]
    succeeded_parent, cancelled = runs[0], runs[1]
    before = snapshot(conn)
    for who in (w.admin2, w.dev2, w.viewer2, w.exec2):
        for fn, args in (
            ("get_run", {"run_id": succeeded_parent}),
            ("list_events", {"run_id": succeeded_parent}),
            ("list_artifacts", {"run_id": succeeded_parent}),
            ("cancel_run", {"run_id": succeeded_parent}),
            ("retry_run", {"run_id": cancelled}),
            ("repair_run", {"run_id": cancelled}),
            ("complete_run", {"run_id": succeeded_parent}),
            ("append_events", {"run_id": succeeded_parent, "events": [log_event()]}),
            ("get_dataset", {"workspace_id": w.w1, "name": "bronze.w1_0"}),
            ("unblock_dataset", {"workspace_id": w.w1, "name": "bronze.w1_0",
                                 "resolution": "reject"}),
        ):
            err = contract.error(fn, args, as_=who)
            assert (err.status, err.code) == (404, "not_found"), f"{fn} as {who}: {err!r}"
    assert snapshot(conn) == before


def test_listings_show_only_the_callers_workspaces(
    contract: Contract, populated: Populated
) -> None:
    w = populated.world
    w1_runs, w2_runs = set(populated.runs["w1"]), set(populated.runs["w2"])
    assert (len(w1_runs), len(w2_runs)) == (4, 8)      # gate runs included

    def run_ids(who: Principal) -> set[str]:
        return {r["id"] for r in contract.call("list_runs", {"limit": 500}, as_=who)["runs"]}

    def artifact_workspaces(who: Principal) -> set[str]:
        items = contract.call("list_artifacts", {}, as_=who)["artifacts"]
        return {a["workspace_id"] for a in items}

    def datasets(who: Principal) -> set[str]:
        return {d["name"] for d in contract.call("list_datasets", {}, as_=who)}

    w1_datasets, w2_datasets = {"bronze.w1_0"}, {"bronze.w2_0", "bronze.w2_1", "bronze.w2_2"}
    for who in (w.admin1, w.dev1, w.viewer1, w.exec1):
        assert run_ids(who) == w1_runs, str(who)
        assert artifact_workspaces(who) == {w.w1}
        assert datasets(who) == w1_datasets, str(who)
    for who in (w.admin2, w.dev2, w.viewer2, w.exec2):
        assert run_ids(who) == w2_runs, str(who)
        assert artifact_workspaces(who) == {w.w2}
        assert datasets(who) == w2_datasets, str(who)
    assert datasets(populated.both) == datasets(SERVICE) == w1_datasets | w2_datasets
    assert datasets(populated.outsider) == set()
    assert contract.call("list_datasets", {"workspace_id": w.w1}, as_=w.dev2) == []
    assert run_ids(populated.both) == w1_runs | w2_runs
    assert run_ids(SERVICE) == w1_runs | w2_runs
    assert run_ids(populated.outsider) == set()
    assert contract.call("list_workspaces", {}, as_=populated.outsider) == []
    # a filter on another tenant's workspace is an empty page, not a leak
    assert contract.call("list_runs", {"workspace_id": w.w1}, as_=w.dev2)["runs"] == []
    assert contract.call("list_artifacts", {"workspace_id": w.w1}, as_=w.dev2)["artifacts"] == []


def test_an_executor_cannot_claim_in_another_workspace(
    conn: psycopg.Connection[Any], contract: Contract, direct: Contract, populated: Populated
) -> None:
    w = populated.world
    new_run(direct, w.w2, [phase("only-in-w2")], as_=w.dev2)
    before = snapshot(conn)
    err = contract.error("claim_phase", {"workspace_id": w.w2}, as_=w.exec1)
    assert (err.status, err.code) == (403, "forbidden")
    assert w.w2 in err.message
    err = contract.error("claim_phase", {"run_id": populated.runs["w2"][-1]}, as_=w.exec1)
    assert (err.status, err.code) == (404, "not_found")
    assert snapshot(conn) == before


def test_an_executor_never_claims_another_workspaces_phases(
    contract: Contract, direct: Contract, world: World
) -> None:
    w2_runs = [new_run(direct, world.w2, [phase("p"), phase("q")], as_=world.dev2)["id"]
               for _ in range(3)]
    assert contract.call("claim_phase", {}, as_=world.exec1) is None
    assert contract.call("claim_phase", {"kinds": ["python"]}, as_=world.exec1) is None
    w1_run = new_run(direct, world.w1, [phase("p"), phase("q")], as_=world.dev1)["id"]
    claimed = []
    while (claim := contract.call("claim_phase", {}, as_=world.exec1)) is not None:
        claimed.append(claim)
    assert [(c["workspace_id"], c["run_id"]) for c in claimed] == [(world.w1, w1_run)] * 2
    for run_id in w2_runs:
        run = direct.call("get_run", {"run_id": run_id})
        assert [p["state"] for p in run["phases"]] == ["queued", "queued"]
    # W2's executor still gets them
    assert contract.call("claim_phase", {}, as_=world.exec2)["workspace_id"] == world.w2


def test_a_lease_token_of_another_workspace_is_not_found(
    conn: psycopg.Connection[Any], contract: Contract, populated: Populated
) -> None:
    """A lease token is a capability, but only in the hands of an executor of its workspace.

    exec1 holding (say, stolen from a log) the token of a phase of W2 gets 404 not_found from
    every call that takes a token: the functions find the phase by its token, then
    require_role(..., p_hide => true) refuses a non-member as if the phase did not exist, so the
    caller learns nothing about W2. append_events checks the run first: W2's run id is not
    found; W1's run id with W2's token is lease_lost (the token is not one of this run's).
    """
    w = populated.world
    claim = populated.live_claims["w2"]
    token = claim["lease_token"]
    before = snapshot(conn)
    for fn, args in (
        ("heartbeat", {"lease_token": token}),
        ("register_artifact", {"lease_token": token, "digest": digest_of("stolen"),
                               "uri": "s3://b/stolen", "size_bytes": 1}),
        ("complete_phase", {"lease_token": token, "outcome": "succeeded"}),
        ("append_events", {"run_id": claim["run_id"], "lease_token": token,
                           "events": [log_event(claim["name"])]}),
        ("record_dataset", dataset_args(token, "bronze.stolen")),
    ):
        err = contract.error(fn, args, as_=w.exec1)
        assert (err.status, err.code) == (404, "not_found"), f"{fn}: {err!r}"
    err = contract.error("append_events", {"run_id": populated.runs["w1"][0], "lease_token": token,
                                           "events": [log_event(claim["name"])]}, as_=w.exec1)
    assert (err.status, err.code) == (409, "lease_lost")
    assert snapshot(conn) == before
    # the rightful holder's lease is untouched
    beat = contract.call("heartbeat", {"lease_token": token}, as_=w.exec2)
    assert beat["phase_id"] == claim["phase_id"] and beat["cancel_requested"] is False


def test_a_caller_without_a_sub_may_not_change_anything(
    conn: psycopg.Connection[Any], contract: Contract, populated: Populated
) -> None:
    w = populated.world
    nobody = Principal("authenticated", None, "no-sub")
    before = snapshot(conn)
    for fn, args in (
        ("create_workspace", {"slug": "nobodys", "name": "x"}),
        ("create_run", {"workspace_id": w.w1, "spec_slug": "demo", "git_sha": "0123abc",
                        "phases": [phase("a")]}),
        ("claim_phase", {}),
        ("add_member", {"workspace_id": w.w1, "principal_id": str(uuid.uuid4()),
                        "role": "viewer"}),
    ):
        err = contract.error(fn, args, as_=nobody)
        assert (err.status, err.code) == (401, "unauthorized"), f"{fn}: {err!r}"
    assert snapshot(conn) == before
    assert contract.call("list_runs", {}, as_=nobody)["runs"] == []
    assert contract.call("list_workspaces", {}, as_=nobody) == []


def test_the_last_admin_cannot_demote_itself(
    conn: psycopg.Connection[Any], contract: Contract, world: World
) -> None:
    """remove_member refuses to remove a workspace's last admin; changing that admin's role
    with add_member must be refused the same way, or the workspace is left without an admin."""
    err = contract.error("remove_member", {"workspace_id": world.w1,
                                           "principal_id": str(world.admin1.sub)}, as_=world.admin1)
    assert (err.status, err.code) == (409, "conflict")
    before = snapshot(conn)
    err = contract.error("add_member", {"workspace_id": world.w1,
                                        "principal_id": str(world.admin1.sub), "role": "viewer"},
                         as_=world.admin1)
    assert (err.status, err.code) == (409, "conflict")
    assert snapshot(conn) == before


def test_a_revoked_principal_reads_nothing_and_calls_nothing(
    conn: psycopg.Connection[Any], contract: Contract, direct: Contract, world: World
) -> None:
    """A minted executor revoked by its workspace's admin while it holds a lease: from then on
    it reads no row and every call it makes is refused with 401, its live lease included."""
    minted = direct.call("create_principal", {"name": "runner", "workspace_id": world.w1})
    direct.call("add_member", {"workspace_id": world.w1, "principal_id": minted["id"],
                              "role": "executor"})
    runner = Principal("authenticated", uuid.UUID(minted["id"]), "runner", pins=(world.w1,))
    run = new_run(direct, world.w1, [phase("a"), phase("b")])
    claim = direct.call("claim_phase", {"run_id": run["id"]}, as_=runner)
    assert claim is not None
    contract.call("revoke_principal", {"principal_id": minted["id"]}, as_=world.admin1)
    # the pre-request hook refuses it before anything runs, a table read included
    for table in ops_tables(conn):
        with pytest.raises(ContractError) as info:
            count_as(conn, runner, table)
        assert (info.value.status, info.value.code) == (401, "unauthorized"), table
    before = snapshot(conn)
    token = claim["lease_token"]
    for fn, args in (
        ("claim_phase", {}),
        ("heartbeat", {"lease_token": token}),
        ("append_events", {"run_id": run["id"], "lease_token": token,
                           "events": [log_event("a")]}),
        ("register_artifact", {"lease_token": token, "digest": digest_of("r"), "uri": "s3://b/r",
                               "size_bytes": 1}),
        ("complete_phase", {"lease_token": token, "outcome": "succeeded"}),
        ("record_dataset", dataset_args(token, "bronze.revoked")),
        ("complete_run", {"run_id": run["id"]}),
        ("create_workspace", {"slug": "runners-own", "name": "x"}),
    ):
        err = contract.error(fn, args, as_=runner)
        assert (err.status, err.code) == (401, "unauthorized"), f"{fn}: {err!r}"
    assert snapshot(conn) == before
    for fn, args in (("list_runs", {}), ("get_run", {"run_id": run["id"]}),
                     ("list_events", {"run_id": run["id"]}), ("list_workspaces", {})):
        err = contract.error(fn, args, as_=runner)
        assert (err.status, err.code) == (401, "unauthorized"), f"{fn}: {err!r}"
