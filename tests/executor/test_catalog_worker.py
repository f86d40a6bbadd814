"""The data catalog through real workers: the real gateway on a real port, a real database,
sql and python phases writing real Delta tables under tmp. Each run is one phase, run by a
`Worker` in a thread to its end; the catalog is read back through the contract."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pyarrow as pa
import pytest
from deltalake import DeltaTable

from control_room.contract.client import ContractClient, DatasetDetail, Event, Run
from executor.tables import read_schema
from executor.worker import table_entries
from tests.contract.conftest import phase
from tests.executor.harness import BOUND, Env, Running, gateway_env, wait_for

EP = "tests.executor.catalog_entrypoints"
NAME = "silver.items"


@pytest.fixture
def env(conn: psycopg.Connection[Any], db_url: str, tmp_path: Path) -> Iterator[Env]:
    with gateway_env(conn, db_url, tmp_path) as environment:
        yield environment


def run_phase(env: Env, spec: dict[str, Any]) -> tuple[Run, list[Event]]:
    """Creates a run of the one phase `spec`, runs it to its end with a worker; the run and
    its events."""
    run_id = env.new_run(spec)
    Running(env.worker(kinds=["python", "sql"]), max_phases=1).join(BOUND * 2)
    return env.get_run(run_id), env.events(run_id)


def sql_items(uri: Path, select: str) -> dict[str, Any]:
    """A sql phase writing `select` over two rows as dataset silver.items (overwrite), with
    attempts to spare: a terminal failure must not use them."""
    query = f"select {select} from (values (1, 'a-1'), (2, 'b-2')) t(id, sku)"
    return phase("items", "sql", params={
        "query": query, "output": {"delta": str(uri), "mode": "overwrite", "name": NAME}},
        max_attempts=3, retry_backoff_seconds=0)


def dataset(env: Env, name: str = NAME) -> DatasetDetail:
    return env.client(env.world.viewer1).get_dataset(env.world.w1, name)


def schema_of(ds: DatasetDetail, version: int) -> Any:
    return next(v for v in ds.versions if v.version == version).schema_


def test_a_dataset_s_schema_evolves_blocks_and_is_accepted(env: Env) -> None:
    uri = env.tmp / "work" / "lake" / env.world.w1 / "silver" / "items"

    # 1. the first write: INITIAL, version 1 with its schema
    run, events = run_phase(env, sql_items(uri, "id::bigint as id, sku"))
    items = run.phase("items")
    assert (run.state, items.attempt) == ("succeeded", 1)
    assert items.output_manifest is not None
    (entry,) = items.output_manifest["tables"]
    assert (entry["name"], entry["uri"], entry["version"]) == (NAME, str(uri), 0)
    ds = dataset(env)
    assert (ds.schema_state, ds.schema_version, ds.layer, ds.location) == (
        "active", 1, "silver", str(uri))
    assert (ds.last_table_version, ds.last_digest, ds.last_rows) == (0, entry["digest"], 2)
    assert [(v.version, v.change, v.applied) for v in ds.versions] == [(1, "INITIAL", True)]
    assert schema_of(ds, 1) == [{"name": "id", "type": "int64", "nullable": True},
                                {"name": "sku", "type": "string", "nullable": True}]
    assert "DATASET_SCHEMA_CHANGED" in [e.type for e in events]

    # 2. a new nullable column: NON_BREAKING, version 2
    run, _ = run_phase(env, sql_items(uri, "id::bigint as id, sku, null::varchar as note"))
    assert run.state == "succeeded"
    ds = dataset(env)
    assert (ds.schema_state, ds.schema_version) == ("active", 2)
    assert (ds.versions[0].version, ds.versions[0].change) == (2, "NON_BREAKING")
    assert ds.versions[0].changes == [{"column": "note", "change": "added", "old_type": None,
                                       "new_type": "string"}]
    assert [c["name"] for c in schema_of(ds, 2)] == ["id", "sku", "note"]
    assert DeltaTable(str(uri)).version() == 1

    # 3. bigint -> int: refused at once (attempt 1 of 3), nothing written, the dataset blocked
    narrow = "id::int as id, sku, null::varchar as note"
    run, events = run_phase(env, sql_items(uri, narrow))
    items = run.phase("items")
    assert (run.state, items.state, items.attempt) == ("failed", "failed", 1)
    assert items.error is not None
    assert items.error["reason"] == "schema_blocked"
    assert "silver.items: column id narrowed int64 → int32" in items.error["message"]
    assert items.error["dataset"]["changes"] == [
        {"column": "id", "change": "narrowed", "old_type": "int64", "new_type": "int32"}]
    assert DeltaTable(str(uri)).version() == 1
    ds = dataset(env)
    assert (ds.schema_state, ds.schema_version) == ("blocked", 2)
    assert ds.blocked_change is not None and ds.blocked_change["version"] == 3
    assert (ds.versions[0].version, ds.versions[0].change, ds.versions[0].applied) == (
        3, "BREAKING", False)
    blocked = [e for e in events if e.type == "DATASET_BLOCKED"]
    assert len(blocked) == 1 and blocked[0].payload["name"] == NAME
    assert [e.type for e in events].count("PHASE_CLAIMED") == 1

    # 4. while blocked, any write of it fails fast without touching the table
    run, events = run_phase(env, sql_items(uri, "id::bigint as id, sku, null::varchar as note"))
    items = run.phase("items")
    assert (run.state, items.attempt) == ("failed", 1)
    assert items.error is not None and items.error["reason"] == "dataset_blocked"
    assert "dataset silver.items is blocked" in items.error["message"]
    assert "control-room datasets unblock" in items.error["message"]
    assert DeltaTable(str(uri)).version() == 1
    assert dataset(env).versions[0].version == 3        # nothing more recorded

    # 5. an admin accepts the change: the next breaking write applies it
    admin: ContractClient = env.client(env.world.admin1)
    assert admin.unblock_dataset(env.world.w1, NAME, "accept").schema_state == "accepted"
    run, _ = run_phase(env, sql_items(uri, narrow))
    assert run.state == "succeeded"
    assert DeltaTable(str(uri)).version() == 2
    assert read_schema(uri).field("id").type == pa.int32()
    ds = dataset(env)
    assert (ds.schema_state, ds.schema_version, ds.blocked_change) == ("active", 4, None)
    assert [(v.version, v.change, v.applied) for v in ds.versions] == [
        (4, "BREAKING", True), (3, "BREAKING", False), (2, "NON_BREAKING", True),
        (1, "INITIAL", True)]
    assert schema_of(ds, 4)[0] == {"name": "id", "type": "int32", "nullable": True}


def test_a_python_phase_s_tables_are_recorded_and_its_output_logged(env: Env) -> None:
    uri = env.tmp / "work" / "lake" / env.world.w1 / "bronze" / "items"
    run, events = run_phase(env, phase("load", "python", params={
        "entrypoint": f"{EP}:write_items", "args": {"name": "bronze.items", "table": str(uri)}}))
    load = run.phase("load")
    assert run.state == "succeeded"
    assert load.output_manifest is not None
    assert load.output_manifest["written"] == 0
    (entry,) = load.output_manifest["tables"]
    assert (entry["name"], entry["version"], entry["rows"]) == ("bronze.items", 0, 2)
    ds = dataset(env, "bronze.items")
    assert (ds.layer, ds.schema_version, ds.last_digest) == ("bronze", 1, entry["digest"])
    assert schema_of(ds, 1)[0] == {"name": "id", "type": "int64", "nullable": True, "key": 1}

    logs = {(e.message, e.level, e.payload.get("stream")) for e in events if e.type == "LOG"}
    assert {("writing 2 items", "info", "stdout"),
            ("wrote version 0", "warning", "stderr"),
            ("INFO logged through logging", "warning", "stderr"),
            ("from a subprocess", "info", "stdout")} <= logs
    trail = [e.type for e in events if e.phase == "load"]
    assert trail.index("LOG") < trail.index("DATASET_SCHEMA_CHANGED") < trail.index(
        "PHASE_SUCCEEDED")

    # a narrowing write from python: blocked across the process boundary, recorded, failed
    run, events = run_phase(env, phase("load", "python", params={
        "entrypoint": f"{EP}:write_items",
        "args": {"name": "bronze.items", "table": str(uri), "id_type": "int32"}},
        max_attempts=2, retry_backoff_seconds=0))
    load = run.phase("load")
    assert (run.state, load.attempt) == ("failed", 1)
    assert load.error is not None and load.error["reason"] == "schema_blocked"
    assert dataset(env, "bronze.items").schema_state == "blocked"
    assert "DATASET_BLOCKED" in [e.type for e in events]


def test_a_dataset_blocked_while_the_phase_ran_fails_it(env: Env,
                                                        conn: psycopg.Connection[Any]) -> None:
    uri = env.tmp / "work" / "lake" / env.world.w1 / "silver" / "race"
    flag = env.tmp / "go"
    run_id = env.new_run(phase("race", "python", params={
        "entrypoint": f"{EP}:write_then_wait",
        "args": {"name": "silver.race", "table": str(uri), "flag": str(flag)}},
        max_attempts=3, retry_backoff_seconds=0))
    running = Running(env.worker(kinds=["python"]), max_phases=1)
    wait_for("READY", lambda: any(e.type == "READY" for e in env.events(run_id)))
    with conn.transaction():        # another writer's breaking change, meanwhile
        conn.execute("insert into ops.datasets (workspace_id, name, layer, location, format, "
                     "schema_state) values (%s, 'silver.race', 'silver', %s, 'delta', "
                     "'blocked')", (env.world.w1, str(uri)))
    flag.touch()
    running.join(BOUND * 2)

    race = env.get_run(run_id).phase("race")
    assert (race.state, race.attempt) == ("failed", 1)
    assert race.error is not None and race.error["reason"] == "dataset_blocked"
    assert "silver.race was blocked while the phase ran" in race.error["message"]
    assert DeltaTable(str(uri)).version() == 0      # written, but not recorded
    ds = dataset(env, "silver.race")
    assert (ds.schema_state, ds.schema_version, ds.versions) == ("blocked", 0, ())


def test_a_legacy_table_entry_with_a_catalog_name_is_recorded(env: Env) -> None:
    lake = env.tmp / "work" / "lake" / env.world.w1
    run, _ = run_phase(env, phase("extract", "python", params={
        "entrypoint": "tests.executor.e2e_entrypoints:extract_orders",
        "args": {"lake": str(lake)}}))
    assert run.state == "succeeded"
    manifest = run.phase("extract").output_manifest
    assert manifest is not None and "tables" not in manifest
    ds = dataset(env, "bronze.orders")     # recorded without a schema: no version yet
    assert (ds.location, ds.schema_version, ds.versions) == (
        str(lake / "bronze" / "orders"), 0, ())
    assert (ds.last_table_version, ds.last_digest, ds.last_rows) == (
        0, manifest["table"]["digest"], 6)


def test_the_tables_of_an_output_manifest() -> None:
    entry = {"name": "gold.x", "uri": "/lake/x", "version": 0}
    assert table_entries({"tables": [entry], "table": {"name": "gold.y", "uri": "/y"}}) == [
        entry]
    assert table_entries({"table": entry}) == [entry]
    assert table_entries({"table": {"name": "/lake/x", "uri": "/lake/x"}}) == []  # a path
    assert table_entries({"table": {"uri": "/lake/x"}}) == []
    assert table_entries({"rows": 3}) == []
    for bad, message in (({"tables": {}}, "must be a list"),
                         ({"tables": [{"name": "a"}]}, r"tables\[0\] is not a table entry"),
                         ({"tables": [{**entry, "schema_change": 1}]}, "must be an object")):
        with pytest.raises(ValueError, match=message):
            table_entries(bad)
