"""`control-room verify` against the real gateway: a medallion run (python -> sql -> sql) whose
phases write under `${params.lake}` is rebuilt into a scratch directory by the command's own
worker, and its digests compared; a planted difference (a source file outside the lake that
changes between the run and the verify) is reported; bad input exits 2."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from deltalake import DeltaTable
from typer.testing import CliRunner, Result

from control_room.cli import app
from executor.digests import table_digest
from executor.kinds.python import PythonContext
from executor.tables import write_table
from tests.contract.conftest import SERVICE, phase
from tests.executor import e2e_entrypoints
from tests.executor.harness import Env, Running, gateway_env
from tests.executor.test_end_to_end import medallion

LAKE = Path("${params.lake}")       # medallion() builds its paths on it: templates
SQL_OUTPUTS = ("query.sql", "result_manifest.json", "preview.json")


def extract_from_file(ctx: PythonContext) -> dict[str, Any]:
    """Bronze orders from `args.source`, a JSON file outside the lake (what a verify cannot
    see change)."""
    rows = json.loads(Path(ctx.args["source"]).read_text())
    uri = os.path.join(str(ctx.args["lake"]), "bronze", "orders")
    written = write_table(uri, rows, mode="overwrite", keys=["order_id"], name="bronze.orders")
    digest = table_digest(uri, written.version)
    (ctx.output_dir / "extract_summary.json").write_text(
        json.dumps({"rows": digest.rows, "digest": digest.digest}, sort_keys=True) + "\n")
    return {"table": {"uri": uri, "version": written.version, "digest": digest.digest,
                      "rows": digest.rows, "name": "bronze.orders"}}


@pytest.fixture
def env(conn: psycopg.Connection[Any], db_url: str, tmp_path: Path) -> Iterator[Env]:
    with gateway_env(conn, db_url, tmp_path) as environment:
        yield environment


def create(env: Env, phases: list[dict[str, Any]], params: dict[str, Any]) -> str:
    run = env.client(env.world.dev1).create_run(
        env.world.w1, "demo", "0123abc", phases, input_manifest={"params": params},
        idempotency_key=str(uuid.uuid4()))
    return run.id


def run_all(env: Env, phases: int) -> None:
    stats = Running(env.worker(kinds=["python", "sql"]), max_phases=phases).join(60)
    assert stats.claimed == phases


def verify(env: Env, *args: str) -> Result:
    """`control-room verify ARGS` against the test's gateway, with a service token."""
    options = ["--gateway", env.rest_url, "--token", env.contract.token(SERVICE),
               "--artifacts", str(env.tmp / "blobs")]
    environ = {"CONTROL_ROOM_STATE_DIR": str(env.tmp / "state"),
               "CONTROL_ROOM_WORKER_REPO": None, "CONTROL_ROOM_WORKSPACE": None,
               "COLUMNS": "200"}
    return CliRunner().invoke(app, ["verify", *args, *options], env=environ)


def rebuild_of(env: Env, run_id: str) -> str:
    """The verify run made for `run_id`."""
    page = env.client(env.world.viewer1).list_runs(env.world.w1,
                                                   labels={"verify_of": run_id})
    assert len(page.runs) == 1, page.runs
    return page.runs[0].id


def test_a_reproducible_run_verifies(env: Env) -> None:
    # the harness worker's workspace lake: a sql phase writes nowhere else
    lake, scratch = env.tmp / "work" / "lake" / env.world.w1, env.tmp / "scratch"
    run_id = create(env, medallion(LAKE), {"lake": str(lake)})
    run_all(env, 3)
    assert env.get_run(run_id).state == "succeeded"

    result = verify(env, run_id, "--scratch", str(scratch))
    assert result.exit_code == 0, result.output + result.stderr
    table_rows = [line for line in result.stdout.splitlines() if line.startswith("│")]
    assert len(table_rows) == 10, result.stdout     # 7 artifacts, 3 tables
    assert all(line.rstrip(" │").endswith("same") for line in table_rows), result.stdout
    assert "DIFFERENT" not in result.stdout and "every output matches" in result.stdout
    assert "table silver.orders" in result.stdout and "artifact preview.json" in result.stdout

    # the rebuild is a new run of the same phases, written under the scratch directory
    rebuilt = env.get_run(rebuild_of(env, run_id))
    assert rebuilt.state == "succeeded" and rebuilt.labels == {"verify_of": run_id}
    # the rebuild's ${run.lake}: a directory of its own in its worker's workspace lake
    lake_dir = rebuilt.input_manifest["lake_dir"]
    assert lake_dir.startswith(f"_verify/{run_id}/")
    rebuilt_lake = scratch / "lake" / env.world.w1 / lake_dir
    assert rebuilt.input_manifest["params"] == {"lake": str(rebuilt_lake)}
    assert [(p.name, p.params) for p in rebuilt.phases] == [
        (p.name, p.params) for p in env.get_run(run_id).phases]
    gold = rebuilt.phase("gold").output_manifest
    assert gold is not None and gold["table"]["uri"] == str(rebuilt_lake / "gold/customers")
    assert DeltaTable(str(rebuilt_lake / "gold" / "customers")).version() == 0
    for table in ("bronze/orders", "silver/orders", "gold/customers"):   # untouched
        assert DeltaTable(str(lake / table)).version() == 0


def test_a_planted_difference_and_a_failed_rebuild_are_reported(env: Env) -> None:
    source = env.tmp / "source.json"
    source.write_text(json.dumps(e2e_entrypoints.ORDERS))
    phases = medallion(LAKE)
    phases[0] = phase("extract", "python", max_attempts=1, params={
        "entrypoint": f"{__name__}:extract_from_file",
        "args": {"lake": "${params.lake}", "source": "${params.source}"}})
    run_id = create(env, phases, {"lake": str(env.tmp / "work" / "lake" / env.world.w1),
                                  "source": str(source)})
    run_all(env, 3)

    changed = [dict(order) for order in e2e_entrypoints.ORDERS]
    changed[3]["amount"] += 1                               # cyd's paid order
    source.write_text(json.dumps(changed))
    result = verify(env, run_id, "--scratch", str(env.tmp / "scratch-1"), "--json")
    assert result.exit_code == 1, result.output + result.stderr
    report = json.loads(result.stdout)
    assert report["matches"] is False and report["state"] == "succeeded"
    assert report["failed"] == []
    assert {r["status"] for r in report["rows"]} == {"same", "DIFFERENT"}
    differing = {(r["phase"], r["output"]) for r in report["rows"] if not r["same"]}
    assert differing == {
        ("extract", "bronze.orders"), ("extract", "extract_summary.json"),
        ("silver", "silver.orders"), ("silver", "result_manifest.json"),
        ("silver", "preview.json"),
        ("gold", "gold.customers"), ("gold", "result_manifest.json"),
        ("gold", "preview.json")}
    same = {(r["phase"], r["output"]) for r in report["rows"] if r["same"]}
    assert same == {("silver", "query.sql"), ("gold", "query.sql")}

    # the same difference as a table: the phase and output named, DIFFERENT
    shown = verify(env, run_id, "--scratch", str(env.tmp / "scratch-2"))
    assert shown.exit_code == 1
    line = next(ln for ln in shown.stdout.splitlines() if "table bronze.orders" in ln)
    assert line.split("│")[1].strip() == "extract" and "DIFFERENT" in line
    assert "the rebuild differs" in shown.stdout

    source.unlink()                                         # now the rebuild fails
    failed = verify(env, run_id, "--scratch", str(env.tmp / "scratch-3"))
    assert failed.exit_code == 1, failed.output + failed.stderr
    assert "phase extract was not rebuilt (failed): " in failed.stdout
    assert "FileNotFoundError" in failed.stdout
    assert "phase gold was not rebuilt (skipped)" in failed.stdout
    assert "the rebuild failed" in failed.stdout
    rows = [ln for ln in failed.stdout.splitlines() if ln.startswith("│")]
    assert len(rows) == 10 and all(ln.rstrip(" │").endswith("not rebuilt") for ln in rows)


def test_what_cannot_be_verified_exits_2(env: Env) -> None:
    noop = {"entrypoint": "tests.executor.e2e_entrypoints:noop"}
    queued = create(env, [phase("a", params=noop)], {"lake": "/x"})
    no_lake = create(env, [phase("a", params=noop)], {"out": "/data/out"})
    hard_coded = create(env, [phase("a", params={**noop, "args": {"lake": "/data/lake"}})],
                        {"lake": "/data/lake"})
    run_all(env, 3)                                    # the queued one runs too ...
    queued_again = create(env, [phase("a", params=noop)], {"lake": "/x"})   # ... not this one
    scratch = str(env.tmp / "scratch")
    cases = [
        ([str(uuid.uuid4())], "no run "),
        (["not-a-uuid"], "malformed run id 'not-a-uuid'"),
        ([queued_again], f"run {queued_again} is queued, not succeeded: only a succeeded "
                         "run can be verified"),
        ([no_lake], f"run {no_lake} has no 'lake' param to point at the scratch directory: "
                    "give --param NAME=DIR for the param its phases write under (its "
                    "params: out)"),
        ([hard_coded], f"no phase of run {hard_coded} uses ${{params.lake}}: a rebuild "
                       "would write where the original did"),
        ([queued, "--param", "nope=1"], f"--param nope: run {queued} has no such param"),
    ]
    for args, message in cases:
        result = verify(env, *args, "--scratch", scratch)
        assert result.exit_code == 2, (args, result.output, result.stderr)
        assert result.stderr.startswith("error: ") and message in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not Path(scratch).exists()                 # nothing was started
    # an override of a param that no phase uses is refused the same way
    unused = verify(env, no_lake, "--param", f"out={env.tmp / 'out'}", "--scratch", scratch)
    assert unused.exit_code == 2 and f"no phase of run {no_lake} uses ${{params.out}}" in \
        unused.stderr
