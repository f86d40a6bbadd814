"""specs/odoo_medallion.yaml as a user runs it: loaded by the spec loader, created through
the real gateway, run by real workers (python phases in their subprocesses, sql phases in
DuckDB) against a generated Odoo database, published to a scratch warehouse; then a column
removed in Odoo fails the next run and blocks the dataset in the catalog."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from deltalake import DeltaTable

from control_room.specs import load_spec
from pipelines.odoo import generator
from tests.executor.harness import BOUND, Env, Running, gateway_env, wait_for
from tests.odoo.runner import SPEC

MARTS = ("revenue", "receivables_ageing", "order_invoice_lag")


@pytest.fixture
def env(conn: psycopg.Connection[Any], db_url: str, tmp_path: Path) -> Iterator[Env]:
    with gateway_env(conn, db_url, tmp_path) as environment:
        yield environment


def test_the_odoo_spec_runs_through_the_gateway_and_workers(
        env: Env, source_dsn: str, warehouse_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the workspace's connections, their passwords by reference (empty here: the test server
    # trusts); the worker resolves them under its policy
    monkeypatch.setenv("ODOO_PASSWORD", "")
    monkeypatch.setenv("WAREHOUSE_PASSWORD", "")
    admin = env.client(env.world.admin1)
    for name, dsn in (("odoo", source_dsn), ("warehouse", warehouse_dsn)):
        admin.create_connection(env.world.w1, name, "postgres", config={"dsn": dsn},
                                secrets={"password": f"env:{name.upper()}_PASSWORD"})
    generator.generate(source_dsn, scale=0.02, seed=11, days=3, start=dt.date(2026, 1, 1))
    lake = env.tmp / "work" / "lake" / env.world.w1     # the worker's workspace lake
    loaded = load_spec(SPEC)
    params = {"as_of": "2026-01-03"}

    def create_run() -> str:
        args = loaded.create_run_args(env.world.w1, params, idempotency_key=str(uuid.uuid4()))
        return env.client(env.world.dev1).create_run(**args).id

    run_id = create_run()
    phases = len(loaded.spec.phases)

    stats = Running(env.worker(kinds=["python", "sql"], concurrency=2,
                               secret_allow="env:ODOO_,env:WAREHOUSE_"),
                    max_phases=phases).join(BOUND * 8)
    run = env.get_run(run_id)
    failed = {p.name: p.error for p in run.phases if p.state != "succeeded"}
    assert run.state == "succeeded", failed
    assert (stats.claimed, stats.succeeded) == (phases, phases)

    # gold in the lake, and the same tables in the warehouse's gold schema
    with psycopg.connect(warehouse_dsn) as pg:
        for mart in MARTS:
            rows = DeltaTable(str(lake / "gold" / mart)).to_pyarrow_table().num_rows
            assert rows > 0, mart
            assert pg.execute(f"select count(*) from gold.{mart}").fetchone() == (rows,)
        assert pg.execute("select count(*) from gold.freshness where run_id = %s",
                          [run_id]).fetchone() == (1,)

    # each gold phase's manifest names its table; quality recorded its report as an artifact
    revenue = run.phase("gold_revenue").output_manifest
    assert revenue is not None and revenue["table"]["name"] == "gold.odoo.revenue"
    artifacts = {(a["phase"], a["name"]) for a in env.artifacts(run_id)}
    assert ("quality", "quality_report.json") in artifacts
    assert ("gold_revenue", "query.sql") in artifacts
    # every bronze, silver and gold table is in the catalog
    datasets = env.client(env.world.viewer1).call(
        "list_datasets", {"workspace_id": env.world.w1, "limit": 100})
    names = {d["name"] for d in datasets}
    assert {"bronze.odoo.sale_order_line", "silver.odoo.sale_order_line",
            "gold.odoo.revenue"} <= names
    events = env.events(run_id)
    assert [e.type for e in events if e.phase == "quality"].count("QUALITY_CHECK") == 4
    assert [e.type for e in events if e.phase == "publish"].count("FRESHNESS") == 1

    # a column removed in Odoo: the next run's extraction fails fast and blocks the dataset
    with psycopg.connect(source_dsn, autocommit=True) as pg:
        pg.execute("alter table sale_order drop column note")
    second = create_run()
    worker = Running(env.worker(kinds=["python", "sql"], concurrency=2,
                                secret_allow="env:ODOO_,env:WAREHOUSE_"))
    try:
        wait_for("the second run to fail",
                 lambda: env.get_run(second).state == "failed", BOUND * 4)
    finally:
        worker.stop.set()
        worker.join(BOUND * 2)
    failed_phase = env.get_run(second).phase("extract_sale_order")
    assert failed_phase.state == "failed" and failed_phase.error is not None
    message = failed_phase.error["message"]
    assert "bronze.odoo.sale_order" in message and "column note removed" in message
    assert failed_phase.attempt == 1          # terminal: not retried
    dataset = env.client(env.world.viewer1).call(
        "get_dataset", {"workspace_id": env.world.w1, "name": "bronze.odoo.sale_order"})
    assert dataset["schema_state"] == "blocked"


def test_the_odoo_spec_runs_over_the_json_rpc_api_through_the_gateway_and_workers(
        env: Env, source_dsn: str, warehouse_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Hosted Odoo: the workspace's `odoo` connection is Odoo's JSON-RPC API (type http), its
    API key a secret reference the worker resolves; the same spec runs unchanged."""
    from tests.odoo.rpc_server import OdooServer, serving

    generator.generate(source_dsn, scale=0.02, seed=11, days=3, start=dt.date(2026, 1, 1))
    with serving(OdooServer(source_dsn)) as odoo:
        monkeypatch.setenv("ODOO_API_KEY", odoo.api_key)
        monkeypatch.setenv("WAREHOUSE_PASSWORD", "")
        admin = env.client(env.world.admin1)
        admin.create_connection(env.world.w1, "odoo", "http",
                                config={"url": odoo.url, "database": odoo.database,
                                        "login": odoo.login},
                                secrets={"api_key": "env:ODOO_API_KEY"})
        admin.create_connection(env.world.w1, "warehouse", "postgres",
                                config={"dsn": warehouse_dsn},
                                secrets={"password": "env:WAREHOUSE_PASSWORD"})
        loaded = load_spec(SPEC)
        args = loaded.create_run_args(env.world.w1, {"as_of": "2026-01-03"},
                                      idempotency_key=str(uuid.uuid4()))
        run_id = env.client(env.world.dev1).create_run(**args).id
        phases = len(loaded.spec.phases)
        Running(env.worker(kinds=["python", "sql"], concurrency=2,
                           secret_allow="env:ODOO_,env:WAREHOUSE_"),
                max_phases=phases).join(BOUND * 8)
        assert odoo.requests > 12
    run = env.get_run(run_id)
    assert run.state == "succeeded", {p.name: p.error for p in run.phases
                                      if p.state != "succeeded"}
    manifest = run.phase("extract_sale_order").output_manifest
    assert manifest is not None and manifest["source"] == "api"
    assert manifest["odoo_version"] == "17.0" and manifest["upserts"] > 0
    with psycopg.connect(warehouse_dsn) as pg:
        assert pg.execute("select count(*) from gold.revenue").fetchone() != (0,)
    # the key is nowhere in the run's events
    assert all(odoo.api_key not in str(e.payload) + e.message for e in env.events(run_id))
