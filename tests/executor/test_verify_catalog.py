"""A verify rebuild leaves the catalog alone (issue 15, defect 1): after `control-room verify
RUN`, `datasets show bronze.orders` still gives the run's location, the same versions and the
same last write; before the fix it gave the verify scratch directory and a new INITIAL
version."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.executor.harness import Env, gateway_env
from tests.executor.test_end_to_end import medallion
from tests.executor.test_verify import LAKE, create, rebuild_of, run_all, verify


@pytest.fixture
def env(conn: psycopg.Connection[Any], db_url: str, tmp_path: Path) -> Iterator[Env]:
    with gateway_env(conn, db_url, tmp_path) as environment:
        yield environment


def _catalog(env: Env) -> dict[str, Any]:
    viewer = env.client(env.world.viewer1)
    found = {}
    for name in ("bronze.orders", "silver.orders", "gold.customers"):
        d = viewer.call("get_dataset", {"workspace_id": env.world.w1, "name": name})
        found[name] = {"location": d["location"], "last_run_id": d["last_run_id"],
                       "schema_version": d["schema_version"],
                       "last_table_version": d["last_table_version"],
                       "versions": [(v["version"], v["change"], v["run_id"])
                                    for v in d["versions"]]}
    return found


def test_a_verify_neither_moves_nor_versions_the_real_datasets(env: Env) -> None:
    lake, scratch = env.tmp / "work" / "lake" / env.world.w1, env.tmp / "scratch"
    run_id = create(env, medallion(LAKE), {"lake": str(lake)})
    run_all(env, 3)
    before = _catalog(env)
    assert before["bronze.orders"]["location"] == str(lake / "bronze" / "orders")
    assert before["bronze.orders"]["last_run_id"] == run_id
    assert before["silver.orders"]["versions"] == [(1, "INITIAL", run_id)]

    result = verify(env, run_id, "--scratch", str(scratch))
    assert result.exit_code == 0, result.output + result.stderr
    assert "every output matches" in result.stdout
    assert env.get_run(rebuild_of(env, run_id)).state == "succeeded"
    assert _catalog(env) == before
    listed = env.client(env.world.viewer1).call(
        "list_datasets", {"workspace_id": env.world.w1, "limit": 100})
    assert all("/_verify/" not in d["location"] and str(scratch) not in d["location"]
               for d in listed), [(d["name"], d["location"]) for d in listed]
