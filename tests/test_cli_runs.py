"""`control-room runs` against the real gateway on a real port over a fresh database: runs
created from specs in a real temporary git repository, run to success by a real worker, and
bad input reported on stderr with exit code 2."""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from deltalake import DeltaTable
from pydantic import SecretStr
from typer.testing import CliRunner

from control_room.cli import app
from control_room.stack import Stack, write_stack
from tests.executor.harness import BOUND, Env, Running, gateway_env
from tests.test_specs import EXAMPLE, commit

runner = CliRunner()


@pytest.fixture
def env(conn: psycopg.Connection[Any], db_url: str, tmp_path: Path) -> Iterator[Env]:
    with gateway_env(conn, db_url, tmp_path) as environment:
        yield environment


@pytest.fixture
def spec_repo(tmp_path: Path) -> tuple[Path, str]:
    """specs/example.yaml committed in a new git repository: (the spec's path, the sha)."""
    repo = tmp_path / "repo"
    (repo / "specs").mkdir(parents=True)
    spec = repo / "specs" / "example.yaml"
    shutil.copy(EXAMPLE, spec)
    return spec, commit(repo, "the example spec")


def cli(env: Env | None, *args: str, token: str | None = None,
        **extra: str | None) -> tuple[int, str, str]:
    """`control-room ARGS` as the developer of w1 (or with `token`), no stack file."""
    variables: dict[str, str | None] = {
        "CONTROL_ROOM_GATEWAY_URL": env.rest_url if env else None,
        "CONTROL_ROOM_TOKEN": token or (env.contract.token(env.world.dev1) if env else None),
        "CONTROL_ROOM_WORKSPACE": None,
        "CONTROL_ROOM_STATE_DIR": str(env.tmp / "state") if env else None,
        "COLUMNS": "200",
    }
    variables.update(extra)
    result = runner.invoke(app, list(args), env=variables)
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        result.exception)
    assert "Traceback" not in result.stderr
    return result.exit_code, result.stdout, result.stderr


def ok_json(env: Env, *args: str, **extra: str | None) -> Any:
    code, out, err = cli(env, *args, "--json", **extra)
    assert code == 0, err
    return json.loads(out)


def test_create_list_show_cancel_retry(env: Env, spec_repo: tuple[Path, str]) -> None:
    spec, sha = spec_repo
    run = ok_json(env, "runs", "create", "--spec", str(spec),
                  "--param", "orders=5", "--label", "team=data")
    assert run["created"] is True and run["state"] == "queued"
    assert (run["spec_slug"], run["git_sha"], run["workspace_id"]) == ("example", sha,
                                                                       env.world.w1)
    assert run["labels"] == {"team": "data"}
    assert [(p["name"], p["state"]) for p in run["phases"]] == [
        ("extract", "queued"), ("silver", "waiting"), ("gold", "waiting")]
    manifest = run["input_manifest"]
    assert manifest["params"] == {"orders": 5}
    assert manifest["spec"]["path"] == "specs/example.yaml"
    assert run["phases"][0]["params"]["args"] == {"lake": "${run.lake}",
                                                  "orders": "${params.orders}"}

    # the same idempotency key answers the same run; the workspace may be named by slug
    once = ok_json(env, "runs", "create", "--spec", str(spec), "--idempotency-key", "k-1",
                   "--workspace", "w1")
    again = ok_json(env, "runs", "create", "--spec", str(spec), "--idempotency-key", "k-1",
                    "--workspace", env.world.w1)
    assert (again["id"], once["created"], again["created"]) == (once["id"], True, False)

    listed = ok_json(env, "runs", "list")
    assert [r["id"] for r in listed] == [once["id"], run["id"]]
    assert listed[1]["phase_counts"] == {"queued": 1, "waiting": 2}
    assert ok_json(env, "runs", "list", "--state", "cancelled") == []
    assert ok_json(env, "runs", "list", "--spec", "other") == []
    assert [r["id"] for r in ok_json(env, "runs", "list", "--limit", "1")] == [once["id"]]

    shown = ok_json(env, "runs", "show", run["id"])
    assert shown["id"] == run["id"] and shown["state"] == "queued"
    code, out, err = cli(env, "runs", "show", run["id"])
    assert code == 0, err
    assert f"example @ {sha}" in out and "extract" in out and "0/2" in out

    cancelled = ok_json(env, "runs", "cancel", run["id"], "--reason", "not today")
    assert (cancelled["state"], cancelled["cancel_reason"]) == ("cancelled", "not today")
    assert [r["id"] for r in ok_json(env, "runs", "list", "--state", "cancelled")] == [
        run["id"]]
    # watching a run that ended other than succeeded exits 1
    code, out, err = cli(env, "runs", "watch", run["id"])
    assert code == 1 and f"run {run['id']} cancelled" in out

    child = ok_json(env, "runs", "retry", run["id"])
    assert (child["parent_run_id"], child["created"], child["state"]) == (run["id"], True,
                                                                          "queued")
    assert ok_json(env, "runs", "retry", run["id"])["id"] == child["id"]
    # a queued run cannot be retried: the run's state refuses it (exit 1, not bad input)
    code, out, err = cli(env, "runs", "retry", child["id"])
    assert code == 1 and out == ""
    assert "conflict" in err and err.startswith("error: retry_run:")


def test_create_wait_runs_the_example_to_success(env: Env, spec_repo: tuple[Path, str]) -> None:
    spec, _ = spec_repo
    lake = env.tmp / "work" / "lake" / env.world.w1     # the worker's workspace lake
    running = Running(env.worker(kinds=["python", "sql"]), max_phases=3)
    # as on a terminal: a live table, redrawn
    code, out, err = cli(env, "runs", "create", "--spec", str(spec),
                         "--wait", "--interval", "0.2", TTY_COMPATIBLE="1")
    assert code == 0, err
    stats = running.join(BOUND * 2)
    assert (stats.succeeded, stats.failed) == (3, 0)
    assert "run created" in out and " succeeded in " in out
    assert "\x1b[" in out                   # cursor movements and colours: a live display
    # the last frame: every phase succeeded, at 100 %, with its latest event
    last = out[out.rindex("phase"):]
    assert last.count("100%") == 3 and last.count("PHASE_SUCCEEDED") == 3

    [run] = ok_json(env, "runs", "list", "--state", "succeeded")
    gold = DeltaTable(str(lake / "gold" / "revenue_by_customer")).to_pyarrow_table()
    assert sorted(gold.to_pylist(), key=lambda r: r["customer"]) == [
        {"customer": "ada", "orders": 3, "revenue": 130},
        {"customer": "bob", "orders": 3, "revenue": 80},
        {"customer": "cyd", "orders": 3, "revenue": 130}]
    code, out, err = cli(env, "runs", "watch", run["id"], "--json")
    assert code == 0, err
    assert json.loads(out)["state"] == "succeeded"


def test_the_stack_file_is_the_default(env: Env, spec_repo: tuple[Path, str]) -> None:
    state = env.tmp / "stack-state"
    write_stack(state, Stack(gateway_url=env.rest_url,
                             token=SecretStr(env.contract.token(env.world.dev1)),
                             workspace_id=env.world.w1, workspace_slug="w1",
                             lake=env.tmp / "lake", artifacts=env.tmp / "blobs",
                             ui_url="http://127.0.0.1:1/"))
    spec, _ = spec_repo
    nothing: dict[str, str | None] = {"CONTROL_ROOM_GATEWAY_URL": None,
                                      "CONTROL_ROOM_TOKEN": None,
                                      "CONTROL_ROOM_STATE_DIR": str(state)}
    code, out, err = cli(None, "runs", "create", "--spec", str(spec), "--json", **nothing)
    assert code == 0, err
    assert json.loads(out)["workspace_id"] == env.world.w1
    code, out, err = cli(None, "runs", "list", "--json", **nothing)
    assert code == 0 and len(json.loads(out)) == 1


def bad(env: Env | None, *args: str, **extra: str | None) -> str:
    """Runs `control-room ARGS`, expects exit 2 and nothing on stdout; the stderr text."""
    code, out, err = cli(env, *args, **extra)
    assert (code, out) == (2, ""), (code, out, err)
    assert err.startswith("error: "), err
    return err


def test_bad_input_exits_2_with_a_message(env: Env, spec_repo: tuple[Path, str],
                                          tmp_path: Path) -> None:
    spec, sha = spec_repo
    missing = tmp_path / "missing.yaml"
    assert bad(env, "runs", "create", "--spec", str(missing)) == (
        f"error: {missing}: spec file not found\n")
    broken = tmp_path / "broken.yaml"
    broken.write_text("version: 1\nslug: [x\n")
    assert "broken.yaml:3: not valid YAML" in bad(env, "runs", "create", "--spec", str(broken))
    invalid = tmp_path / "invalid.yaml"
    invalid.write_text("version: 1\nslug: x\nphases:\n  - {name: a, kind: python, "
                       "depends_on: [b]}\n  - {kind: sql}\n")
    lines = bad(env, "runs", "create", "--spec", str(invalid)).splitlines()
    assert lines == [f"error: {invalid}:5: phases[1]: missing required field 'name'"]

    assert "--param lakes: unknown param 'lakes' (params: orders)" in bad(
        env, "runs", "create", "--spec", str(spec), "--param", "lakes=/x")
    assert "--param orders: 'many' is not an integer" in bad(
        env, "runs", "create", "--spec", str(spec), "--param", "orders=many")
    assert "--param must be NAME=VALUE, not 'orders'" in bad(
        env, "runs", "create", "--spec", str(spec), "--param", "orders")
    assert "no workspace 'nope' visible to this token (workspaces: w1)" in bad(
        env, "runs", "create", "--spec", str(spec), "--workspace", "nope")

    unknown = str(uuid.uuid4())
    for command in ("show", "watch", "cancel", "retry"):
        assert bad(env, "runs", command, unknown) == (
            f"error: run {unknown} not found (or not visible to this token)\n")
    assert "malformed run id 'run-1'" in bad(env, "runs", "show", "run-1")
    assert "--state must be one of" in bad(env, "runs", "list", "--state", "done")
    assert "unauthorized" in bad(env, "runs", "list", token="not-a-jwt")

    # a modified spec is read as the working file: HEAD's sha, labelled dirty, with a note;
    # --git-sha reads the committed file instead
    spec.write_text(spec.read_text() + "# edited\n")
    code, out, err = cli(env, "runs", "create", "--spec", str(spec))
    assert code == 0, err
    assert "differs from git" in err and "git_dirty=true" in err
    code, out, err = cli(env, "runs", "create", "--spec", str(spec), "--json")
    dirty_run = json.loads(out)
    assert (dirty_run["git_sha"], dirty_run["labels"]) == (sha, {"git_dirty": "true"})
    assert dirty_run["input_manifest"]["spec"]["dirty"] is True
    code, out, err = cli(env, "runs", "create", "--spec", str(spec), "--git-sha", sha, "--json")
    assert code == 0, err
    assert json.loads(out)["git_sha"] == sha

    nothing = bad(None, "runs", "list", CONTROL_ROOM_STATE_DIR=str(tmp_path / "empty"))
    assert "run `control-room up`, or pass --gateway and --token" in nothing
