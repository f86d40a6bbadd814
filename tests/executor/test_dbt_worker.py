"""The dbt kind through a real worker: the shipped example spec (specs/dbt_example.yaml: a
python extract, then a dbt build of pipelines/example_dbt) created over the real gateway on a
real database and run by a `Worker` to its end; events, artifacts and the catalog are read
back through the contract."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from deltalake import DeltaTable

from control_room.specs import example_spec, load_spec
from executor.digests import table_digest
from tests.executor.harness import BOUND, GIT_SHA, Env, Running, gateway_env


@pytest.fixture
def env(conn: psycopg.Connection[Any], db_url: str, tmp_path: Path) -> Iterator[Env]:
    with gateway_env(conn, db_url, tmp_path) as environment:
        yield environment


def test_the_dbt_example_runs_through_a_worker(env: Env) -> None:
    loaded = load_spec(example_spec("dbt_example"))
    args = loaded.create_run_args(env.world.w1, {})
    run_id = env.client(env.world.dev1).create_run(
        env.world.w1, args["spec_slug"], GIT_SHA, args["phases"],
        input_manifest=args["input_manifest"]).id
    Running(env.worker(kinds=["python", "dbt"]), max_phases=2).join(BOUND * 8)

    run = env.get_run(run_id)
    assert run.state == "succeeded", [(p.name, p.state, p.error) for p in run.phases]
    events = env.events(run_id)
    finished = {e.payload["name"]: e.payload for e in events if e.type == "DBT_NODE_FINISHED"}
    assert {"paid_orders", "revenue_by_customer",
            "unique_revenue_by_customer_customer"} <= set(finished)
    assert all(p["status"] in ("success", "pass") for p in finished.values())

    names = {a["name"] for a in env.artifacts(run_id)}
    assert {"manifest.json", "run_results.json", "dbt.log"} <= names

    viewer = env.client(env.world.viewer1)
    dataset = viewer.get_dataset(env.world.w1, "gold.dbt_revenue_by_customer")
    [version] = dataset.versions
    lake = env.tmp / "work" / "lake" / env.world.w1
    table = DeltaTable(str(lake / "gold" / "dbt_revenue_by_customer"))
    assert (version.change, version.table_version) == ("INITIAL", table.version())
    assert version.digest == table_digest(str(lake / "gold" / "dbt_revenue_by_customer")).digest
    transform = next(p for p in run.phases if p.name == "transform")
    manifest = transform.output_manifest or {}
    assert manifest["lineage"]["revenue_by_customer"]["datasets"] == ["silver.dbt_paid_orders"]
    assert manifest["lineage"]["paid_orders"]["inputs"] == ["orders"]
    # the catalog holds the lineage too (the DATASET_LINEAGE events, docs/catalog.md)
    assert dataset.upstream == ("silver.dbt_paid_orders",)
    paid = viewer.get_dataset(env.world.w1, "silver.dbt_paid_orders")
    assert paid.upstream is not None and all(u.startswith("source:") for u in paid.upstream)
    assert paid.upstream
