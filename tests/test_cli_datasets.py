"""`control-room datasets` against the real gateway: the catalog a real worker filled by
running specs/example.yaml, shown and listed; unblocking, with its bad input."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.executor.harness import BOUND, Env, Running, gateway_env
from tests.test_cli_runs import cli, ok_json, spec_repo  # noqa: F401  (a fixture)


@pytest.fixture
def env(conn: psycopg.Connection[Any], db_url: str, tmp_path: Path) -> Iterator[Env]:
    with gateway_env(conn, db_url, tmp_path) as environment:
        yield environment


def test_list_show_and_unblock(env: Env, spec_repo: tuple[Path, str]) -> None:  # noqa: F811
    spec, _ = spec_repo
    running = Running(env.worker(kinds=["python", "sql"]), max_phases=3)
    code, _, err = cli(env, "runs", "create", "--spec", str(spec), "--wait", "--workspace",
                       env.world.w1)              # its tables go to the workspace's lake
    assert code == 0, err
    running.join(BOUND * 2)

    listed = ok_json(env, "datasets", "list", "--workspace", env.world.w1)
    assert {(d["name"], d["layer"], d["schema_state"], d["schema_version"]) for d in listed} == {
        ("bronze.orders", "bronze", "active", 1), ("silver.orders", "silver", "active", 1),
        ("gold.revenue_by_customer", "gold", "active", 1)}
    gold = ok_json(env, "datasets", "list", "--workspace", env.world.w1, "--layer", "gold")
    assert [d["name"] for d in gold] == ["gold.revenue_by_customer"]

    shown = ok_json(env, "datasets", "show", "silver.orders", "--workspace", env.world.w1)
    [version] = shown["versions"]
    assert (version["version"], version["change"], version["applied"]) == (1, "INITIAL", True)
    assert [c["name"] for c in version["schema"]] == ["order_id", "customer", "amount"]
    code, out, err = cli(env, "datasets", "show", "silver.orders", "--workspace",
                         env.world.w1)
    assert code == 0 and "INITIAL" in out and "order_id, customer, amount" in out, err

    # unblocking: an admin's call; bad input exits 2 with one line
    admin = env.contract.token(env.world.admin1)
    code, _, err = cli(env, "datasets", "unblock", "silver.orders", "--workspace",
                       env.world.w1, token=admin)
    assert code == 2 and "exactly one of --accept or --reject" in err
    code, _, err = cli(env, "datasets", "unblock", "silver.nope", "--accept", "--workspace",
                       env.world.w1, token=admin)
    assert code == 2 and "not found" in err, err
    code, _, err = cli(env, "datasets", "unblock", "silver.orders", "--reject", "--workspace",
                       env.world.w1)                    # a developer may not
    assert code == 2 and "forbidden" in err, err
    code, out, err = cli(env, "datasets", "unblock", "silver.orders", "--reject", "--json",
                         "--workspace", env.world.w1, token=admin)
    assert code == 0, err
    assert json.loads(out)["schema_state"] == "active"
    code, _, err = cli(env, "datasets", "list", "--layer", "platinum")
    assert code == 2 and "--layer must be one of" in err
