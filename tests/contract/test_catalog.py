"""The data catalog: a dataset's schema states and versions through record_dataset and
unblock_dataset (docs/catalog.md), over every transport of the contract.

INITIAL is version 1; NON_BREAKING adds an applied version; NONE adds none; BREAKING is recorded
as a refused version that blocks the dataset (event DATASET_BLOCKED) until an admin accepts it
(the next breaking write is applied) or rejects it (back to active, schema unchanged).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from typing import Any

import psycopg

from .conftest import Contract, Principal, World, new_run, phase
from .snapshot import snapshot

V1 = [{"name": "id", "type": "int64", "nullable": False, "key": 1}]
V2 = [*V1, {"name": "note", "type": "string", "nullable": True}]
V_BAD = [{"name": "id", "type": "string", "nullable": False, "key": 1}]
ADDED = [{"column": "note", "change": "added", "old_type": None, "new_type": "string"}]
RETYPED = [{"column": "id", "change": "type_changed", "old_type": "int64", "new_type": "string"}]
NAME = "bronze.sale_order"


def digest_of(text: str) -> str:
    return "blake3:" + hashlib.sha256(text.encode()).hexdigest()


class Writer:
    """An executor of W1 holding the lease of a fresh run's only phase."""

    def __init__(self, contract: Contract, world: World) -> None:
        self.contract = contract
        self.world = world
        self.run_id = str(new_run(contract, world.w1, [phase("load")], as_=world.dev1)["id"])
        claim = contract.call("claim_phase", {"run_id": self.run_id}, as_=world.exec1)
        assert claim is not None
        self.token = str(claim["lease_token"])

    def args(self, change: str = "NONE", schema: Any = None, *, name: str = NAME,
             **extra: Any) -> dict[str, Any]:
        return {"lease_token": self.token, "name": name, "location": f"/lake/{name}",
                "change": change, "schema": schema, **extra}

    def record(self, change: str = "NONE", schema: Any = None, **extra: Any) -> dict[str, Any]:
        result: dict[str, Any] = self.contract.call(
            "record_dataset", self.args(change, schema, **extra), as_=self.world.exec1)
        return result

    def refused(self, change: str = "NONE", schema: Any = None, **extra: Any) -> Any:
        return self.contract.error("record_dataset", self.args(change, schema, **extra),
                                   as_=self.world.exec1)

    def events(self, type_: str) -> list[dict[str, Any]]:
        page = self.contract.call("list_events", {"run_id": self.run_id, "limit": 1000})
        return [e for e in page["events"] if e["type"] == type_]

    def finish(self) -> None:
        self.contract.call("complete_phase", {"lease_token": self.token, "outcome": "succeeded"},
                           as_=self.world.exec1)


def dataset(contract: Contract, world: World, name: str = NAME,
            who: Principal | None = None) -> dict[str, Any]:
    result: dict[str, Any] = contract.call(
        "get_dataset", {"workspace_id": world.w1, "name": name}, as_=who or world.viewer1)
    return result


def blocked(contract: Contract, world: World) -> Writer:
    """A dataset with version 1 applied and a breaking change (version 2) blocking it."""
    writer = Writer(contract, world)
    writer.record("INITIAL", V1, table_version=0)
    assert writer.record("BREAKING", V_BAD, changes=RETYPED)["schema_state"] == "blocked"
    return writer


def test_the_first_write_is_version_1(contract: Contract, world: World) -> None:
    writer = Writer(contract, world)
    answer = writer.record("INITIAL", V1, table_version=0, digest=digest_of("v0"), rows=3,
                           owner="sales-data", tags=["pii", "odoo", "pii"])
    assert answer == {
        "dataset_id": answer["dataset_id"], "workspace_id": world.w1, "name": NAME,
        "layer": "bronze", "schema_state": "active", "schema_version": 1, "recorded": True,
        "version": 1, "change": "INITIAL"}
    got = dataset(contract, world)
    assert (got["id"], got["location"], got["format"], got["owner"], got["tags"]) == (
        answer["dataset_id"], f"/lake/{NAME}", "delta", "sales-data", ["odoo", "pii"])
    assert (got["last_run_id"], got["last_table_version"], got["last_digest"],
            got["last_rows"]) == (writer.run_id, 0, digest_of("v0"), 3)
    assert got["blocked_change"] is None and got["last_written_at"] is not None
    [version] = got["versions"]
    assert (version["version"], version["change"], version["applied"], version["schema"],
            version["phase"], version["recorded_by"]) == (
        1, "INITIAL", True, V1, "load", str(world.exec1.sub))
    [event] = writer.events("DATASET_SCHEMA_CHANGED")
    assert (event["phase"], event["level"]) == ("load", "info")
    assert event["payload"] | {"dataset_id": None} == {
        "dataset_id": None, "name": NAME, "layer": "bronze", "change": "INITIAL", "version": 1,
        "changes": [], "table_version": 0, "digest": digest_of("v0")}


def test_a_non_breaking_change_is_applied_as_a_new_version(
    contract: Contract, world: World
) -> None:
    writer = Writer(contract, world)
    writer.record("INITIAL", V1, table_version=0)
    answer = writer.record("NON_BREAKING", V2, changes=ADDED, table_version=1)
    assert (answer["schema_version"], answer["version"], answer["change"],
            answer["schema_state"]) == (2, 2, "NON_BREAKING", "active")
    got = dataset(contract, world)
    assert [(v["version"], v["change"], v["applied"]) for v in got["versions"]] == [
        (2, "NON_BREAKING", True), (1, "INITIAL", True)]
    assert got["versions"][0]["schema"] == V2 and got["versions"][0]["changes"] == ADDED
    assert [e["payload"]["version"] for e in writer.events("DATASET_SCHEMA_CHANGED")] == [1, 2]


def test_a_write_that_keeps_the_schema_records_no_version(
    contract: Contract, world: World
) -> None:
    writer = Writer(contract, world)
    writer.record("INITIAL", V1, table_version=0, rows=3)
    answer = writer.record("NONE", V1, table_version=1, digest=digest_of("v1"), rows=5)
    assert (answer["recorded"], answer["version"], answer["change"],
            answer["schema_version"]) == (False, None, "NONE", 1)
    got = dataset(contract, world)
    assert len(got["versions"]) == 1
    assert (got["last_table_version"], got["last_digest"], got["last_rows"]) == (
        1, digest_of("v1"), 5)
    assert len(writer.events("DATASET_SCHEMA_CHANGED")) == 1


def test_the_first_schema_the_catalog_sees_is_initial(contract: Contract, world: World) -> None:
    """A table the catalog never saw: its first schema is version 1 whatever the writer
    compared it with; a write without a schema registers the dataset with version 0."""
    writer = Writer(contract, world)
    answer = writer.record("NON_BREAKING", V2, name="silver.orders", changes=ADDED)
    assert (answer["version"], answer["change"], answer["layer"]) == (1, "INITIAL", "silver")
    bare = writer.record("NONE", name="orders")
    assert (bare["schema_version"], bare["recorded"], bare["layer"]) == (0, False, "other")
    assert dataset(contract, world, "orders")["versions"] == []
    later = writer.record("NONE", V1, name="orders", table_version=4)
    assert (later["version"], later["change"], later["schema_version"]) == (1, "INITIAL", 1)


def test_layer_owner_and_tags_are_kept_unless_given(contract: Contract, world: World) -> None:
    writer = Writer(contract, world)
    writer.record("INITIAL", V1, layer="raw", owner="ops", tags=["b", "a"], format="parquet")
    writer.record("NONE", location="/moved", format="delta")
    got = dataset(contract, world)
    assert (got["layer"], got["owner"], got["tags"], got["location"], got["format"]) == (
        "raw", "ops", ["a", "b"], "/moved", "delta")
    writer.record("NONE", layer="gold", owner="finance", tags=[])
    got = dataset(contract, world)
    assert (got["layer"], got["owner"], got["tags"]) == ("gold", "finance", [])


def test_a_breaking_change_blocks_the_dataset(contract: Contract, world: World) -> None:
    writer = Writer(contract, world)
    writer.record("INITIAL", V1, table_version=0, digest=digest_of("v0"))
    answer = writer.record("BREAKING", V_BAD, changes=RETYPED)
    assert (answer["schema_state"], answer["schema_version"], answer["recorded"],
            answer["version"], answer["change"]) == ("blocked", 1, True, 2, "BREAKING")
    got = dataset(contract, world)
    assert (got["schema_state"], got["schema_version"], got["blocked_at"] is not None) == (
        "blocked", 1, True)
    assert got["blocked_change"] | {"recorded_at": None} == {
        "version": 2, "schema_version": 1, "changes": RETYPED, "run_id": writer.run_id,
        "phase_id": got["last_phase_id"], "phase": "load", "table_version": None,
        "digest": None, "recorded_at": None}
    # nothing was written: the last write is still version 1's
    assert (got["last_table_version"], got["last_digest"]) == (0, digest_of("v0"))
    assert [(v["version"], v["change"], v["applied"]) for v in got["versions"]] == [
        (2, "BREAKING", False), (1, "INITIAL", True)]
    [event] = writer.events("DATASET_BLOCKED")
    assert (event["level"], event["phase"]) == ("error", "load")
    assert NAME in event["message"]
    assert event["payload"] | {"dataset_id": None} == {
        "dataset_id": None, "name": NAME, "layer": "bronze", "version": 2, "schema_version": 1,
        "changes": RETYPED, "table_version": None, "digest": None}
    listed = contract.call("list_datasets", {"workspace_id": world.w1, "schema_state": "blocked"},
                           as_=world.exec1)
    assert [d["name"] for d in listed] == [NAME]


def test_a_blocked_dataset_refuses_every_other_write(
    conn: psycopg.Connection[Any], contract: Contract, world: World
) -> None:
    writer = blocked(contract, world)
    before = snapshot(conn)
    for change, schema in (("NONE", V1), ("NON_BREAKING", V2), ("INITIAL", V1)):
        err = writer.refused(change, schema, table_version=7)
        assert (err.status, err.code) == (409, "conflict"), err
        assert NAME in err.message and "blocked" in err.message
        assert json.loads(err.details or "{}")["schema_state"] == "blocked"
    assert snapshot(conn) == before
    # another breaking write stays blocked, recorded as one more refused version
    again = writer.record("BREAKING", V_BAD + V2[1:], changes=RETYPED)
    assert (again["schema_state"], again["version"], again["schema_version"]) == (
        "blocked", 3, 1)
    assert dataset(contract, world)["blocked_change"]["version"] == 3
    assert len(writer.events("DATASET_BLOCKED")) == 2


def test_accepting_lets_the_next_breaking_write_apply_it(
    conn: psycopg.Connection[Any], contract: Contract, world: World
) -> None:
    writer = blocked(contract, world)
    events_before = writer.events("DATASET_BLOCKED") + writer.events("DATASET_SCHEMA_CHANGED")
    accepted = contract.call("unblock_dataset", {"workspace_id": world.w1, "name": NAME,
                                                 "resolution": "accept", "note": "new ids"},
                             as_=world.admin1)
    assert (accepted["schema_state"], accepted["schema_version"]) == ("accepted", 1)
    assert accepted["blocked_change"]["accepted_by"] == str(world.admin1.sub)
    assert accepted["blocked_change"]["note"] == "new ids"
    assert writer.events("DATASET_BLOCKED") + writer.events(
        "DATASET_SCHEMA_CHANGED") == events_before
    with conn.transaction():
        audit = conn.execute(
            "select principal_id::text, target_id, details from ops.audit_log"
            " where function_name = 'unblock_dataset'").fetchall()
    assert audit == [(str(world.admin1.sub), accepted["id"], {
        "name": NAME, "resolution": "accept", "note": "new ids", "was": "blocked",
        "schema_version": 1})]
    before = snapshot(conn)
    retried = contract.call("unblock_dataset", {"workspace_id": world.w1, "name": NAME,
                                                "resolution": "accept"}, as_=world.admin1)
    assert retried == accepted and snapshot(conn) == before

    writer.finish()
    nightly = Writer(contract, world)
    answer = nightly.record("BREAKING", V_BAD, changes=RETYPED, table_version=1)
    assert (answer["schema_state"], answer["schema_version"], answer["version"],
            answer["change"]) == ("active", 3, 3, "BREAKING")
    got = dataset(contract, world)
    assert (got["blocked_change"], got["blocked_at"], got["last_table_version"]) == (
        None, None, 1)
    assert [(v["version"], v["change"], v["applied"]) for v in got["versions"]] == [
        (3, "BREAKING", True), (2, "BREAKING", False), (1, "INITIAL", True)]
    [event] = nightly.events("DATASET_SCHEMA_CHANGED")
    assert (event["payload"]["change"], event["payload"]["version"]) == ("BREAKING", 3)


def test_rejecting_returns_to_active_with_the_schema_unchanged(
    conn: psycopg.Connection[Any], contract: Contract, world: World
) -> None:
    writer = blocked(contract, world)
    rejected = contract.call("unblock_dataset", {"workspace_id": world.w1, "name": NAME,
                                                 "resolution": "reject"})
    assert (rejected["schema_state"], rejected["schema_version"], rejected["blocked_change"],
            rejected["blocked_at"]) == ("active", 1, None, None)
    before = snapshot(conn)
    assert contract.call("unblock_dataset", {"workspace_id": world.w1, "name": NAME,
                                             "resolution": "reject"}) == rejected
    assert snapshot(conn) == before
    err = contract.error("unblock_dataset", {"workspace_id": world.w1, "name": NAME,
                                             "resolution": "accept"}, as_=world.admin1)
    assert (err.status, err.code) == (409, "conflict")
    assert snapshot(conn) == before
    # the fixed source writes the old schema again
    answer = writer.record("NONE", V1, table_version=1)
    assert (answer["schema_state"], answer["schema_version"]) == ("active", 1)
    writer.finish()
    # the next run's breaking change blocks it again: the rejection accepted nothing
    again = Writer(contract, world).record("BREAKING", V_BAD, changes=RETYPED)
    assert (again["schema_state"], again["version"]) == ("blocked", 3)


def test_a_rejection_withdraws_an_acceptance(contract: Contract, world: World) -> None:
    blocked(contract, world)
    for resolution, state in (("accept", "accepted"), ("reject", "active")):
        result = contract.call("unblock_dataset", {"workspace_id": world.w1, "name": NAME,
                                                   "resolution": resolution}, as_=world.admin1)
        assert result["schema_state"] == state


def test_a_retried_record_gets_the_same_answer(
    conn: psycopg.Connection[Any], contract: Contract, world: World
) -> None:
    writer = Writer(contract, world)
    steps: list[tuple[str, Any, dict[str, Any]]] = [
        ("INITIAL", V1, {"table_version": 0, "digest": digest_of("v0"), "rows": 1}),
        ("NON_BREAKING", V2, {"table_version": 1, "digest": digest_of("v1"), "changes": ADDED}),
        ("NONE", V2, {"table_version": 2, "digest": digest_of("v2")}),
        ("BREAKING", V_BAD, {"changes": RETYPED}),
    ]
    for change, schema, extra in steps:
        first = writer.record(change, schema, **extra)
        before = snapshot(conn)
        assert writer.record(change, schema, **extra) == first, change
        assert snapshot(conn) == before, f"the retried {change} record wrote something"
    assert [v["version"] for v in dataset(contract, world)["versions"]] == [3, 2, 1]


def test_a_stale_lease_is_lease_lost(
    conn: psycopg.Connection[Any], contract: Contract, world: World
) -> None:
    writer = Writer(contract, world)
    writer.record("INITIAL", V1)
    writer.finish()
    before = snapshot(conn)
    for change, schema in (("NONE", V1), ("NON_BREAKING", V2), ("BREAKING", V_BAD)):
        err = writer.refused(change, schema, table_version=1)
        assert (err.status, err.code) == (409, "lease_lost"), err
    err = contract.error("record_dataset", writer.args("INITIAL", V1) | {
        "lease_token": str(uuid.uuid4())}, as_=world.exec1)
    assert (err.status, err.code) == (409, "lease_lost"), err
    assert snapshot(conn) == before


def test_only_admins_and_service_role_unblock(
    conn: psycopg.Connection[Any], contract: Contract, world: World
) -> None:
    blocked(contract, world)
    args = {"workspace_id": world.w1, "name": NAME, "resolution": "accept"}
    before = snapshot(conn)
    for who in (world.viewer1, world.dev1, world.exec1):
        err = contract.error("unblock_dataset", args, as_=who)
        assert (err.status, err.code) == (403, "forbidden"), f"{who}: {err!r}"
    for who in (world.admin2, world.exec2):
        err = contract.error("unblock_dataset", args, as_=who)
        assert (err.status, err.code) == (404, "not_found"), f"{who}: {err!r}"
    err = contract.error("unblock_dataset", args | {"name": "bronze.nothing"},
                         as_=world.admin1)
    assert (err.status, err.code) == (404, "not_found")
    assert snapshot(conn) == before
    assert contract.call("unblock_dataset", args)["schema_state"] == "accepted"


def test_reads_follow_the_workspaces(contract: Contract, world: World) -> None:
    writer = Writer(contract, world)
    for name in ("bronze.a", "bronze.b", "silver.a", "gold.a"):
        writer.record("INITIAL", V1, name=name)
    names = [d["name"] for d in contract.call("list_datasets", {}, as_=world.viewer1)]
    assert names == ["bronze.a", "bronze.b", "gold.a", "silver.a"]
    assert contract.call("list_datasets", {}, as_=world.viewer2) == []
    assert contract.call("list_datasets", {"workspace_id": world.w1}, as_=world.dev2) == []
    err = contract.error("get_dataset", {"workspace_id": world.w1, "name": "bronze.a"},
                         as_=world.exec2)
    assert (err.status, err.code) == (404, "not_found")

    def listed(**filters: Any) -> list[str]:
        return [d["name"] for d in contract.call("list_datasets", filters, as_=world.viewer1)]

    assert listed(layer="bronze") == ["bronze.a", "bronze.b"]
    assert listed(name="bronze.") == ["bronze.a", "bronze.b"]
    assert listed(name="bronze.a") == ["bronze.a"]
    assert listed(limit=2) == ["bronze.a", "bronze.b"]
    assert listed(schema_state="active", layer="gold") == ["gold.a"]
    assert listed(schema_state="blocked") == []


BAD: list[tuple[str, dict[str, Any], str]] = [
    ("record_dataset", {"name": "bad name"}, "name"),
    ("record_dataset", {"name": ""}, "name"),
    ("record_dataset", {"location": ""}, "location"),
    ("record_dataset", {"layer": "platinum"}, "layer"),
    ("record_dataset", {"format": "Delta"}, "format"),
    ("record_dataset", {"format": None}, "format"),
    ("record_dataset", {"change": "UNCHANGED"}, "change"),
    ("record_dataset", {"change": None}, "change"),
    ("record_dataset", {"change": "INITIAL", "schema": None}, "schema"),
    ("record_dataset", {"change": "NON_BREAKING", "schema": None}, "schema"),
    ("record_dataset", {"schema": "id int"}, "schema"),
    ("record_dataset", {"changes": {"id": "added"}}, "changes"),
    ("record_dataset", {"table_version": -1}, "table_version"),
    ("record_dataset", {"digest": "sha256:00"}, "digest"),
    ("record_dataset", {"rows": -1}, "rows"),
    ("record_dataset", {"owner": ""}, "owner"),
    ("record_dataset", {"tags": ["has space"]}, "tags"),
    ("record_dataset", {"tags": [f"t{i}" for i in range(33)]}, "tags"),
    ("record_dataset", {"lease_token": "nope"}, "lease_token"),
    ("unblock_dataset", {"resolution": "approve"}, "resolution"),
    ("unblock_dataset", {"resolution": None}, "resolution"),
    ("unblock_dataset", {"note": "n" * 2001}, "note"),
    ("unblock_dataset", {"name": None}, "name"),
    ("unblock_dataset", {"workspace_id": "w1"}, "workspace_id"),
    ("list_datasets", {"layer": "platinum"}, "layer"),
    ("list_datasets", {"schema_state": "broken"}, "schema_state"),
    ("list_datasets", {"limit": 0}, "limit"),
    ("list_datasets", {"limit": 1001}, "limit"),
    ("list_datasets", {"workspace_id": "w1"}, "workspace_id"),
    ("get_dataset", {"name": None}, "name"),
    ("get_dataset", {"workspace_id": "w1"}, "workspace_id"),
]


def test_bad_input_is_a_400_naming_the_argument(
    conn: psycopg.Connection[Any], contract: Contract, world: World
) -> None:
    writer = blocked(contract, world)
    baselines: dict[str, tuple[dict[str, Any], Principal]] = {
        "record_dataset": (writer.args("BREAKING", V_BAD), world.exec1),
        "unblock_dataset": ({"workspace_id": world.w1, "name": NAME, "resolution": "accept"},
                            world.admin1),
        "list_datasets": ({"workspace_id": world.w1}, world.viewer1),
        "get_dataset": ({"workspace_id": world.w1, "name": NAME}, world.viewer1),
    }
    before = snapshot(conn)
    wrong: list[str] = []
    for fn, spoil, argument in BAD:
        args, who = baselines[fn]
        err = contract.error(fn, args | spoil, as_=who)
        named = json.loads(err.details or "{}").get("argument")
        if (err.status, err.code, named) != (400, "invalid_argument", argument) or (
                argument not in err.message):
            wrong.append(f"{fn}({spoil}): {err!r}")
    assert wrong == []
    assert snapshot(conn) == before
