"""End to end: the real gateway on a real port, a real database, real workers (a `Worker` in a
thread, and `python -m control_room.cli worker` processes), python and sql phases writing real
Delta tables under tmp, and a local artifact store under tmp.

Every wait polls with a generous deadline; nothing depends on timing beyond "eventually, well
within the bound". The SIGKILL test is made deterministic by its entrypoint: the first attempt
writes, says READY, then sleeps a minute, so the kill always lands after the write and before
the phase returns.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pyarrow as pa
import pytest
from deltalake import DeltaTable

from control_room.contract.client import Event
from executor.artifacts import read_blob
from executor.digests import blob_digest, table_digest
from executor.worker import WorkerStats
from tests.contract.conftest import phase
from tests.executor import e2e_entrypoints
from tests.executor.harness import (
    BOUND,
    Env,
    Running,
    gateway_env,
    of_phase,
    wait_for,
)

EP = "tests.executor.e2e_entrypoints"

SILVER_SQL = ("select order_id, customer, amount from orders where status = 'paid'")
GOLD_SQL = ("select customer, count(*) as orders, sum(amount)::bigint as total from silver "
            "group by customer")
SQL_OUTPUTS = ("query.sql", "result_manifest.json", "preview.json")


def medallion(lake: Path) -> list[dict[str, Any]]:
    """python (bronze orders) -> sql (silver: paid orders) -> sql (gold: per customer)."""
    return [
        phase("extract", "python", params={"entrypoint": f"{EP}:extract_orders",
                                           "args": {"lake": str(lake)}}),
        phase("silver", "sql", "extract", params={
            "query": SILVER_SQL,
            "inputs": {"orders": {"upstream": "extract"}},
            "output": {"delta": str(lake / "silver" / "orders"), "mode": "merge",
                       "keys": ["order_id"], "name": "silver.orders"}}),
        phase("gold", "sql", "silver", params={
            "query": GOLD_SQL,
            "inputs": {"silver": {"upstream": "silver"}},
            "output": {"delta": str(lake / "gold" / "customers"), "mode": "overwrite",
                       "name": "gold.customers"}}),
    ]


@pytest.fixture
def env(conn: psycopg.Connection[Any], db_url: str, tmp_path: Path) -> Iterator[Env]:
    with gateway_env(conn, db_url, tmp_path) as environment:
        yield environment


def run_worker(env: Env, max_phases: int) -> WorkerStats:
    """A python and sql `Worker` in a thread until it has run `max_phases` phases."""
    return Running(env.worker(kinds=["python", "sql"]), max_phases=max_phases).join(BOUND * 2)


def rows_of(uri: Path, *order_by: str) -> list[dict[str, Any]]:
    table: pa.Table = DeltaTable(str(uri)).to_pyarrow_table()
    rows: list[dict[str, Any]] = table.sort_by([(c, "ascending") for c in order_by]).to_pylist()
    return rows


def run_artifacts(env: Env, run_id: str) -> dict[tuple[str, str], str]:
    """(phase, name) -> digest of every artifact registered for the run."""
    rows = env.artifacts(run_id)
    by_name = {(str(r["phase"]), str(r["name"])): str(r["digest"]) for r in rows}
    assert len(by_name) == len(rows), rows
    return by_name


# ------------------------------------------------------------------------------------ tests

def test_a_python_sql_sql_dag_builds_bronze_silver_and_gold(env: Env) -> None:
    lake = env.tmp / "work" / "lake" / env.world.w1     # the worker's workspace lake
    run_id = env.new_run(*medallion(lake))
    stats = run_worker(env, max_phases=3)
    assert (stats.claimed, stats.succeeded, stats.failed, stats.abandoned) == (3, 3, 0, 0)

    run = env.get_run(run_id)
    assert run.state == "succeeded" and run.finalized_at is not None
    assert [(p.name, p.state, p.attempt) for p in run.phases] == [
        ("extract", "succeeded", 1), ("silver", "succeeded", 1), ("gold", "succeeded", 1)]

    # the Delta tables, with the expected rows
    assert rows_of(lake / "bronze" / "orders", "order_id") == e2e_entrypoints.ORDERS
    paid = [{k: o[k] for k in ("order_id", "customer", "amount")}
            for o in e2e_entrypoints.ORDERS if o["status"] == "paid"]
    assert rows_of(lake / "silver" / "orders", "order_id") == paid
    assert rows_of(lake / "gold" / "customers", "customer") == [
        {"customer": "ada", "orders": 2, "total": 200},
        {"customer": "bob", "orders": 2, "total": 100},
        {"customer": "cyd", "orders": 1, "total": 300}]

    # each phase's manifest names its table, at the version written, with its digest; an
    # upstream input read the table the dependency wrote
    for name, uri, rows in (("extract", lake / "bronze" / "orders", 6),
                            ("silver", lake / "silver" / "orders", 5),
                            ("gold", lake / "gold" / "customers", 3)):
        manifest = run.phase(name).output_manifest
        assert manifest is not None
        table = manifest["table"]
        assert (table["uri"], table["version"], table["rows"]) == (str(uri), 0, rows)
        assert table["digest"] == table_digest(str(uri), 0).digest
    silver_manifest = run.phase("silver").output_manifest
    assert silver_manifest is not None and silver_manifest["result_rows"] == 5

    # the SQL outputs are registered artifacts whose blobs are in the store
    artifacts = run_artifacts(env, run_id)
    assert sorted(artifacts) == sorted(
        [("extract", "extract_summary.json")]
        + [(p, n) for p in ("silver", "gold") for n in SQL_OUTPUTS])
    for (name, output), digest in artifacts.items():
        manifest = run.phase(name).output_manifest
        assert manifest is not None and manifest["artifacts"][output] == digest
        assert blob_digest(read_blob(env.store, digest)) == digest
    gold = run.phase("gold").output_manifest
    assert gold is not None
    assert read_blob(env.store, artifacts[("gold", "query.sql")]).decode() == GOLD_SQL
    result = json.loads(read_blob(env.store, artifacts[("gold", "result_manifest.json")]))
    assert result["result"]["rows"] == 3
    assert (result["table"]["name"], result["table"]["rows"], result["table"]["digest"]) == (
        "gold.customers", 3, gold["table"]["digest"])
    preview = json.loads(read_blob(env.store, artifacts[("gold", "preview.json")]))
    assert preview == {"columns": ["customer", "orders", "total"],
                       "rows": [["ada", 2, 200], ["bob", 2, 100], ["cyd", 1, 300]]}

    # a complete trail, in order, for every phase; then the run's end
    events = env.events(run_id)
    for name, outputs in (("extract", 1), ("silver", 3), ("gold", 3)):
        trail = of_phase(events, name)
        assert trail[0] == "PHASE_QUEUED", trail
        assert trail.index("PHASE_QUEUED") < trail.index("PHASE_CLAIMED")
        assert trail[trail.index("PHASE_CLAIMED") + 1] == "PHASE_STARTED", trail
        assert trail.index("PHASE_STARTED") < trail.index("LOG") < trail.index(
            "ARTIFACT_REGISTERED") < trail.index("PHASE_SUCCEEDED"), trail
        assert trail.count("ARTIFACT_REGISTERED") == outputs, trail
        assert trail.count("PHASE_STARTED") == 1 and trail.count("PHASE_SUCCEEDED") == 1
        assert "PHASE_PROGRESS" in trail
        assert not {"PHASE_FAILED", "LEASE_EXPIRED"} & set(trail), trail
    succeeded = [e.seq for e in events if e.type == "PHASE_SUCCEEDED"]
    claimed = [e.seq for e in events if e.type == "PHASE_CLAIMED"]
    assert succeeded[0] < claimed[1] and succeeded[1] < claimed[2]   # in dependency order
    types = [e.type for e in events]
    assert types.count("RUN_SUCCEEDED") == 1 and types[-1] == "RUN_FINALIZED", types
    assert [e.seq for e in events] == sorted(e.seq for e in events)


def test_the_same_spec_run_twice_gives_the_same_digests(env: Env) -> None:
    workspace_lake = env.tmp / "work" / "lake" / env.world.w1   # where sql phases write
    lakes = (workspace_lake / "lake-1", workspace_lake / "lake-2")
    run_ids = [env.new_run(*medallion(lake)) for lake in lakes]
    stats = run_worker(env, max_phases=6)
    assert (stats.claimed, stats.succeeded) == (6, 6)
    runs = [env.get_run(run_id) for run_id in run_ids]
    assert [r.state for r in runs] == ["succeeded", "succeeded"]

    # every artifact, compared by (phase, name): none embeds a location, so all are identical
    first, second = (run_artifacts(env, run_id) for run_id in run_ids)
    assert len(first) == 7 and sorted(first) == sorted(second)
    differ = {key: (first[key], second[key]) for key in first if first[key] != second[key]}
    assert differ == {}
    # ... and the same in the phases' manifests, which otherwise differ only by the tables' URIs
    for name in ("extract", "silver", "gold"):
        one, two = (r.phase(name).output_manifest for r in runs)
        assert one is not None and two is not None
        assert one.get("artifacts") == two.get("artifacts")
        assert one["table"]["uri"] != two["table"]["uri"]
        strip = {**one["table"], "uri": None}, {**two["table"], "uri": None}
        assert strip[0] == strip[1]
        # the table digests, recomputed from the two lakes, are the same too
        uris = [one["table"]["uri"], two["table"]["uri"]]
        assert table_digest(uris[0]).digest == table_digest(uris[1]).digest == \
            one["table"]["digest"]


def test_a_sigkilled_worker_s_phase_is_taken_over_and_succeeds_once(env: Env) -> None:
    table = env.tmp / "lake" / "silver" / "items"
    run_id = env.new_run(phase("load", "python", params={
        "entrypoint": f"{EP}:merge_then_sleep", "args": {"table": str(table)}},
        max_attempts=3, retry_backoff_seconds=0))
    options = ("--kinds", "python", "--lease-seconds", "3", "--grace-seconds", "0.5")
    first = env.worker_process(*options)

    def ready(attempt: int) -> list[Event]:
        return [e for e in env.events(run_id)
                if e.type == "READY" and e.payload["attempt"] == attempt]

    child = wait_for("READY of attempt 1", lambda: ready(1))[0].payload["pid"]
    env.pids.append(child)          # the phase's subprocess survives its worker (see below)
    assert len(rows_of(table, "id")) == 3       # the first attempt wrote before the kill
    first.send_signal(signal.SIGKILL)
    assert first.wait(timeout=BOUND) == -signal.SIGKILL
    killed_at = time.monotonic()

    second = env.worker_process(*options)
    wait_for("the phase's success",
             lambda: env.get_run(run_id).state == "succeeded", bound=BOUND * 2)
    assert time.monotonic() - killed_at < BOUND
    run = env.get_run(run_id)
    load = run.phase("load")
    assert (load.state, load.attempt) == ("succeeded", 2)
    assert ready(2)[0].payload["pid"] != child

    events = env.events(run_id)
    trail = of_phase(events, "load")
    assert trail.count("PHASE_SUCCEEDED") == 1 and trail.count("LEASE_EXPIRED") == 1, trail
    assert trail.count("PHASE_CLAIMED") == 2 and trail.count("PHASE_STARTED") == 2, trail
    expired = next(e for e in events if e.type == "LEASE_EXPIRED")
    claims = [e for e in events if e.type == "PHASE_CLAIMED"]
    succeeded = next(e for e in events if e.type == "PHASE_SUCCEEDED")
    assert (expired.attempt, claims[1].attempt, succeeded.attempt) == (1, 2, 2)
    assert claims[0].seq < expired.seq < claims[1].seq < succeeded.seq
    assert "PHASE_FAILED" not in trail, trail

    # the re-run merged on the key: no duplicated rows, two commits of the same rows
    assert rows_of(table, "id") == e2e_entrypoints.ITEMS
    assert DeltaTable(str(table)).version() == 1
    manifest = load.output_manifest
    assert manifest is not None
    assert manifest["table"]["version"] == 1 and manifest["table"]["rows"] == 3
    assert table_digest(str(table), 0).digest == table_digest(str(table), 1).digest

    second.send_signal(signal.SIGTERM)
    assert second.wait(timeout=BOUND) == 0
