"""The dbt kind against a real dbt project, real dbt-core + dbt-duckdb and real Delta tables,
with a PhaseContext built by hand (no worker, no control plane). Every dbt run costs seconds
(dbt's import and parse), so each test makes one or two."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from deltalake import DeltaTable

from executor.digests import table_digest
from executor.kinds import PhaseTimeout, TerminalPhaseError
from executor.kinds.base import Connection
from executor.kinds.dbt import DbtKind
from executor.kinds.dbt.kind import _profile
from executor.tables import write_table
from tests.executor.dbt_projects import Recorder, make_ctx, write_project

ORDERS = pa.table({
    "order_id": pa.array([1, 2, 3, 4, 5], pa.int64()),
    "customer": ["ada", "bob", "ada", "cyd", "bob"],
    "amount": pa.array([10, 20, 30, 40, 5], pa.int64()),
    "status": ["paid", "paid", "open", "paid", "paid"],
})


@pytest.fixture()
def lake(tmp_path: Path) -> Path:
    root = tmp_path / "lake"
    write_table(str(root / "bronze" / "orders"), ORDERS, mode="overwrite")
    return root


def params(lake: Path, **extra: Any) -> dict[str, Any]:
    return {"project_dir": "shop",
            "inputs": {"orders": {"delta": str(lake / "bronze" / "orders")}},
            "outputs": {"revenue": {"delta": str(lake / "gold" / "revenue"),
                                    "name": "gold.revenue"},
                        "paid": {"delta": str(lake / "silver" / "paid"), "name": "silver.paid",
                                 "keys": ["order_id"]},
                        "environment": {"delta": str(lake / "other" / "environment"),
                                        "name": "other.environment"}},
            **extra}


def test_a_build_writes_the_models_with_events_artifacts_and_lineage(
        tmp_path: Path, lake: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    code = tmp_path / "code"
    write_project(code)
    monkeypatch.setenv("CONTROL_ROOM_TOKEN", "the-workers-own-token")
    recorder = Recorder()
    ctx = make_ctx(tmp_path / "out", params(lake, vars={"min_amount": 10}), kind="dbt",
                   recorder=recorder, code_dir=code, lake_root=lake)
    result = DbtKind().run(ctx)
    manifest = result.output_manifest

    # the models, in the lake, under the catalog's rules (min_amount=10 drops order 5)
    revenue = DeltaTable(str(lake / "gold" / "revenue")).to_pyarrow_table().sort_by("customer")
    assert revenue.to_pylist() == [{"customer": "ada", "orders": 1, "revenue": 10},
                                   {"customer": "bob", "orders": 1, "revenue": 20},
                                   {"customer": "cyd", "orders": 1, "revenue": 40}]
    tables = {entry["name"]: entry for entry in manifest["tables"]}
    assert sorted(tables) == ["gold.revenue", "other.environment", "silver.paid"]
    entry = tables["gold.revenue"]
    assert entry["digest"] == table_digest(str(lake / "gold" / "revenue")).digest
    assert (entry["rows"], entry["version"], entry["schema_change"]["change"]) == (3, 0,
                                                                                   "INITIAL")
    # lineage: revenue refs paid, which reads the source lake.orders (the input `orders`)
    # (each table entry's lineage becomes a DATASET_LINEAGE event once the worker recorded
    # the dataset: tests/executor/test_dbt_worker.py reads it back from the catalog)
    assert entry["lineage"] == {"model": "revenue", "unique_id": "model.shop.revenue",
                                "refs": ["paid"], "sources": [], "datasets": ["silver.paid"],
                                "inputs": []}
    assert manifest["lineage"]["paid"]["sources"] == ["lake.orders"]
    assert tables["silver.paid"]["lineage"]["sources"] == ["lake.orders"]
    assert manifest["lineage"]["paid"]["inputs"] == ["orders"]
    assert manifest["models"]["revenue"]["rows"] == 3
    assert manifest["tests"]["unique_revenue_customer"]["status"] == "pass"

    # dbt's process got no network telemetry and none of the worker's CONTROL_ROOM_* vars
    environment = DeltaTable(str(lake / "other" / "environment")).to_pyarrow_table()
    assert environment.to_pylist() == [{"usage_stats": "false", "token": "absent"}]

    # one started and one finished event per model and test, with timing
    finished = {p["name"]: p for p in recorder.of("DBT_NODE_FINISHED")}
    assert set(finished) == {"paid", "revenue", "environment", "not_null_paid_order_id",
                             "unique_paid_order_id", "unique_revenue_customer",
                             "accepted_values_revenue_customer__ada__bob__cyd"}
    assert {p["name"] for p in recorder.of("DBT_NODE_STARTED")} == set(finished)
    assert finished["revenue"]["status"] == "success"
    assert finished["revenue"]["execution_time"] > 0 and finished["revenue"]["finished_at"]
    assert finished["unique_paid_order_id"]["failures"] == 0
    fractions = [p["fraction"] for p in recorder.progress if isinstance(p, dict)]
    assert fractions == sorted(fractions) and fractions[-1] == 0.9
    assert recorder.progress[-1] == 1.0

    # manifest.json and run_results.json (and dbt's log) are outputs
    names = {output.name: output for output in result.outputs}
    assert set(names) == {"dbt.log", "manifest.json", "run_results.json"}
    assert names["dbt.log"].role == "log"
    run_results = json.loads(names["run_results.json"].path.read_text())
    assert {r["status"] for r in run_results["results"]} == {"success", "pass"}
    assert "model.shop.revenue" in json.loads(names["manifest.json"].path.read_text())["nodes"]

    # select / exclude: only paid is built (and its tests); an unselected output is refused
    recorder = Recorder()
    only = params(lake, select=["paid"], exclude=["environment"])
    only["outputs"] = {"paid": only["outputs"]["paid"]}
    result = DbtKind().run(make_ctx(tmp_path / "out2", only, kind="dbt", recorder=recorder,
                                    code_dir=code, lake_root=lake))
    assert sorted(result.output_manifest["models"]) == ["paid"]
    assert {p["name"] for p in recorder.of("DBT_NODE_FINISHED")} == {
        "paid", "not_null_paid_order_id", "unique_paid_order_id"}
    # the same rows again: the same digest, a new version, no schema change
    [again] = result.output_manifest["tables"]
    assert again["schema_change"]["change"] == "NONE" and again["version"] == 1
    # the second run included order 5 (no min_amount): 4 rows now
    assert again["rows"] == 4


def test_a_failing_test_fails_the_phase_naming_it_with_its_failing_rows(
        tmp_path: Path, lake: Path) -> None:
    code = tmp_path / "code"
    write_project(code, {"models/schema.yml": """\
        version: 2
        models:
          - name: paid
            columns:
              - name: customer
                data_tests:
                  - accepted_values:
                      arguments:
                        values: [ada, bob]
        """})
    ctx = make_ctx(tmp_path / "out", params(lake), kind="dbt", code_dir=code, lake_root=lake)
    with pytest.raises(TerminalPhaseError) as raised:
        DbtKind().run(ctx)
    assert raised.value.retryable is False
    assert raised.value.message == (
        "dbt test(s) failed: accepted_values_paid_customer__ada__bob (1 failing row(s)); the "
        "failing rows are in test_failures.json")
    report = json.loads((tmp_path / "out" / "test_failures.json").read_text())
    failure = report["accepted_values_paid_customer__ada__bob"]
    assert (failure["model"], failure["column"], failure["failures"]) == (
        "model.shop.paid", "customer", 1)
    assert failure["rows"] == [{"value_field": "cyd", "n_records": 1}]
    # nothing was written to the lake: the phase failed before its outputs
    assert not (lake / "gold" / "revenue").exists()
    # the attempt's files stay for the failure report (registered by the worker)
    assert {p.name for p in (tmp_path / "out").iterdir()} >= {
        "dbt.log", "manifest.json", "run_results.json", "test_failures.json"}


def test_a_model_error_is_terminal_and_names_the_model(tmp_path: Path, lake: Path) -> None:
    code = tmp_path / "code"
    write_project(code, {"models/revenue.sql": "select no_such_column from {{ ref('paid') }}"})
    ctx = make_ctx(tmp_path / "out", params(lake, select=["paid", "revenue"]), kind="dbt",
                   code_dir=code, lake_root=lake)
    with pytest.raises(TerminalPhaseError) as raised:
        DbtKind().run(ctx)
    assert raised.value.message.startswith("dbt model.shop.revenue failed: ")
    assert "no_such_column" in raised.value.message


def test_bad_params_and_projects_are_terminal_before_dbt_runs(tmp_path: Path,
                                                              lake: Path) -> None:
    code = tmp_path / "code"
    write_project(code)
    cases: list[tuple[dict[str, Any], str]] = [
        ({"colour": "blue"}, "dbt params: colour: Extra inputs are not permitted"),
        ({"project_dir": "../elsewhere"}, "is not inside the run's code"),
        ({"project_dir": "/etc"}, "must be relative to the run's code"),
        ({"project_dir": "missing"}, "has no dbt_project.yml"),
        ({"project_dir": "shop", "target": "prod", "connections": ["prod"]},
         "dbt target 'prod' is not one of the phase's connections"),
        ({"project_dir": "shop", "outputs": {"paid": {"delta": "/tmp/outside"}}},
         "output 'paid'"),
    ]
    for bad, expected in cases:
        out = tmp_path / "out"
        with pytest.raises(TerminalPhaseError) as raised:
            DbtKind().run(make_ctx(out, bad, kind="dbt", code_dir=code, lake_root=lake))
        assert expected in raised.value.message, (bad, raised.value.message)
        assert not out.exists() or not any(out.iterdir())


def test_the_profile_holds_no_value_of_the_target_connection(tmp_path: Path) -> None:
    """A dbt-trino target (the production shape): every field of the connection is an
    `env_var('DBT_ENV_SECRET_...')` (dbt scrubs those from its logs), the values only in the
    child's environment."""
    trino = Connection("warehouse", "dbt-profile", {
        "type": "trino", "method": "ldap", "host": "trino.internal", "port": 443,
        "user": "dbt", "password": "s3cr3t-password", "catalog": "lake", "schema": "gold",
        "http_scheme": "https", "session_properties": {"query_max_run_time": "1h"}})
    output, env, adapter = _profile(trino, tmp_path / "dbt.duckdb", 4)
    assert adapter == "trino"
    assert output == {
        "type": "trino", "threads": 4,
        "method": "{{ env_var('DBT_ENV_SECRET_CR_METHOD') }}",
        "host": "{{ env_var('DBT_ENV_SECRET_CR_HOST') }}",
        "port": "{{ env_var('DBT_ENV_SECRET_CR_PORT') | as_number }}",
        "user": "{{ env_var('DBT_ENV_SECRET_CR_USER') }}",
        "password": "{{ env_var('DBT_ENV_SECRET_CR_PASSWORD') }}",
        "catalog": "{{ env_var('DBT_ENV_SECRET_CR_CATALOG') }}",
        "schema": "{{ env_var('DBT_ENV_SECRET_CR_SCHEMA') }}",
        "http_scheme": "{{ env_var('DBT_ENV_SECRET_CR_HTTP_SCHEME') }}",
        "session_properties": {"query_max_run_time": "1h"}}
    assert "s3cr3t-password" not in json.dumps(output)
    assert env["DBT_ENV_SECRET_CR_PASSWORD"] == "s3cr3t-password"
    assert env["DBT_ENV_SECRET_CR_PORT"] == "443"
    # `connections create --config port=443` registers text: still a number for dbt
    text_port = Connection("w", "dbt-profile", {"type": "trino", "port": "8080"})
    output, env, _ = _profile(text_port, tmp_path / "dbt.duckdb", 1)
    assert output["port"] == "{{ env_var('DBT_ENV_SECRET_CR_PORT') | as_number }}"
    # a duckdb target always uses the attempt's own database
    local = Connection("local", "dbt-profile", {"type": "duckdb", "path": "/srv/shared.db"})
    output, _, _ = _profile(local, tmp_path / "dbt.duckdb", 1)
    assert output["path"] == str(tmp_path / "dbt.duckdb")
    with pytest.raises(TerminalPhaseError, match="is a postgres connection, not dbt-profile"):
        _profile(Connection("odoo", "postgres", {}), tmp_path / "x", 1)


def test_a_timeout_kills_dbt(tmp_path: Path, lake: Path) -> None:
    code = tmp_path / "code"
    write_project(code, {"models/slow.sql": """\
        -- 10^12 rows of a hash no optimizer folds away: hours, whatever the machine
        select sum(hash(a.range + b.range) % 7) as n from range(1000000) a, range(1000000) b"""})
    ctx = make_ctx(tmp_path / "out", params(lake, select=["slow"], outputs={}), kind="dbt",
                   code_dir=code, lake_root=lake, timeout_s=20)
    with pytest.raises(PhaseTimeout, match="timeout"):
        DbtKind().run(ctx)
