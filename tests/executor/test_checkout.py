"""Checkouts of a run's git sha: a real temporary git repository with two commits whose
entrypoint (and query file) give different values; the kinds run the commit's code, alone
and through a real worker."""

from __future__ import annotations

import subprocess
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from deltalake import DeltaTable
from typer.testing import CliRunner

from control_room.cli import app
from executor.checkout import Checkouts
from executor.kinds import PhaseContext, TerminalPhaseError
from executor.kinds.python import PythonKind
from executor.kinds.sql import SqlKind
from tests.contract.conftest import phase
from tests.executor.harness import Env, Running, gateway_env, of_phase

PACKAGE = "cr_checkout_demo_pkg"
ENTRYPOINT = f"{PACKAGE}.entry:value"
ENTRY = '''
import os

def value(ctx):
    return {{"value": {value}, "file": os.path.realpath(__file__)}}
'''


@dataclass(frozen=True)
class Repo:
    path: Path
    first: str
    second: str


def git(repo: Path, *args: str) -> str:
    done = subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.com",
                           *args], cwd=repo, check=True, capture_output=True, text=True)
    return done.stdout.strip()


def commit(repo: Path, value: int) -> str:
    """A commit whose entrypoint returns `value` and whose query selects it."""
    package = repo / PACKAGE
    package.mkdir(exist_ok=True)
    (package / "__init__.py").write_text("")
    (package / "entry.py").write_text(ENTRY.format(value=value))
    (repo / "models").mkdir(exist_ok=True)
    (repo / "models" / "q.sql").write_text(f"select {value} as v\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", f"value {value}")
    return git(repo, "rev-parse", "HEAD")


@pytest.fixture
def repo(tmp_path: Path) -> Repo:
    path = tmp_path / "repo"
    path.mkdir()
    git(path, "init", "-q")
    return Repo(path, commit(path, 1), commit(path, 2))


# ----------------------------------------------------------------------------- checkouts

def test_a_commit_is_checked_out_once_by_full_or_abbreviated_sha(repo: Repo,
                                                                  tmp_path: Path) -> None:
    checkouts = Checkouts(repo.path, tmp_path / "checkouts")
    first = checkouts.code_for(repo.first)
    second = checkouts.code_for(repo.second[:7])
    assert (first.commit, second.commit) == (repo.first, repo.second)
    assert first.path == tmp_path / "checkouts" / repo.first
    assert second.path == tmp_path / "checkouts" / repo.second
    assert first.path is not None and second.path is not None
    assert "value\": 1" in (first.path / PACKAGE / "entry.py").read_text()
    assert "value\": 2" in (second.path / PACKAGE / "entry.py").read_text()
    assert not (first.path / ".git").exists()
    # again: the same directory, not extracted twice
    marker = first.path / "marker"
    marker.write_text("kept")
    assert checkouts.code_for(repo.first[:10]).path == first.path and marker.exists()


def test_a_sha_that_is_not_a_commit_of_the_repo_is_terminal(repo: Repo,
                                                             tmp_path: Path) -> None:
    checkouts = Checkouts(repo.path, tmp_path / "checkouts")
    with pytest.raises(TerminalPhaseError, match="git sha deadbeef is not a commit of") as info:
        checkouts.code_for("deadbeef")
    assert not info.value.retryable


@pytest.mark.parametrize("sha", ["0123abc-dirty", "local", "", None])
def test_a_working_tree_s_sha_runs_the_worker_s_own_code(repo: Repo, tmp_path: Path,
                                                         sha: str | None) -> None:
    code = Checkouts(repo.path, tmp_path / "checkouts").code_for(sha)
    assert (code.path, code.commit) == (None, None)
    assert "the worker's own code" in code.note


def test_concurrent_slots_and_workers_share_one_checkout(repo: Repo, tmp_path: Path) -> None:
    root = tmp_path / "checkouts"
    instances = [Checkouts(repo.path, root) for _ in range(2)]    # two workers, one work dir
    paths: list[Path | None] = []
    barrier = threading.Barrier(8)

    def slot(index: int) -> None:
        barrier.wait()
        paths.append(instances[index % 2].code_for(repo.first).path)

    threads = [threading.Thread(target=slot, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert paths == [root / repo.first] * 8
    assert sorted(p.name for p in root.iterdir()) == [repo.first]   # no leftovers
    assert (root / repo.first / PACKAGE / "entry.py").is_file()


def test_a_url_is_mirrored_and_fetched_when_a_sha_is_new(repo: Repo, tmp_path: Path) -> None:
    checkouts = Checkouts(repo.path.as_uri(), tmp_path / "checkouts")
    assert checkouts.code_for(repo.first).path == tmp_path / "checkouts" / repo.first
    third = commit(repo.path, 3)                   # pushed after the mirror was made
    code = checkouts.code_for(third[:8])
    assert code.commit == third and code.path is not None
    assert "value\": 3" in (code.path / PACKAGE / "entry.py").read_text()


def test_a_directory_that_is_not_a_repository_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a git repository"):
        Checkouts(tmp_path, tmp_path / "checkouts")
    with pytest.raises(ValueError, match="neither a directory nor a URL"):
        Checkouts(tmp_path / "missing", tmp_path / "checkouts")


# ----------------------------------------------------------------------------- the kinds

def ctx_for(kind: str, params: dict[str, Any], out: Path, code_dir: Path | None
            ) -> PhaseContext:
    return PhaseContext(
        run_id="run-1", phase="p", attempt=1, kind=kind, params=params, inputs={},
        git_sha=None, input_manifest={}, output_dir=out, emit=lambda *a, **k: None,
        progress=lambda value: None, timeout_s=60, code_dir=code_dir)


def test_the_python_kind_imports_the_entrypoint_from_the_checkout(repo: Repo,
                                                                  tmp_path: Path) -> None:
    checkouts = Checkouts(repo.path, tmp_path / "checkouts")
    values = []
    for sha in (repo.first, repo.second):
        code = checkouts.code_for(sha)
        assert code.path is not None
        result = PythonKind().run(ctx_for("python", {"entrypoint": ENTRYPOINT},
                                          tmp_path / f"out-{sha}", code.path))
        assert result.output_manifest["file"] == str(
            (code.path / PACKAGE / "entry.py").resolve())
        values.append(result.output_manifest["value"])
    assert values == [1, 2]
    with pytest.raises(TerminalPhaseError, match="not found"):      # not on the worker's path
        PythonKind().run(ctx_for("python", {"entrypoint": ENTRYPOINT}, tmp_path / "out", None))


def test_the_sql_kind_reads_query_file_under_the_checkout(repo: Repo, tmp_path: Path) -> None:
    code = Checkouts(repo.path, tmp_path / "checkouts").code_for(repo.first)
    out = str(tmp_path / "lake" / "v")
    params = {"query_file": "models/q.sql", "output": {"delta": out, "name": "gold.v"}}
    SqlKind().run(ctx_for("sql", params, tmp_path / "out", code.path))
    assert DeltaTable(out).to_pyarrow_table().to_pylist() == [{"v": 1}]
    with pytest.raises(TerminalPhaseError, match="not inside the worker's own code"):
        SqlKind().run(ctx_for("sql", params, tmp_path / "out2", None))   # no checkout


# ---------------------------------------------------------------------- through a worker

@pytest.fixture
def env(conn: psycopg.Connection[Any], db_url: str, tmp_path: Path) -> Iterator[Env]:
    with gateway_env(conn, db_url, tmp_path) as environment:
        yield environment


def run_at(env: Env, git_sha: str) -> str:
    run = env.client(env.world.dev1).create_run(
        env.world.w1, "demo", git_sha,
        [phase("value", params={"entrypoint": ENTRYPOINT}, max_attempts=3)],
        idempotency_key=str(uuid.uuid4()))
    return run.id


def test_a_worker_with_a_repo_runs_each_run_s_commit(env: Env, repo: Repo) -> None:
    runs = [run_at(env, repo.first), run_at(env, repo.second[:12]), run_at(env, "0badc0de")]
    stats = Running(env.worker(repo=repo.path), max_phases=3).join()
    assert (stats.succeeded, stats.failed) == (2, 1)

    first, second, unknown = (env.get_run(run_id).phase("value") for run_id in runs)
    assert first.output_manifest is not None and second.output_manifest is not None
    assert (first.output_manifest["value"], second.output_manifest["value"]) == (1, 2)
    checkouts = env.tmp / "work" / "checkouts"
    assert first.output_manifest["file"] == str(checkouts / repo.first / PACKAGE / "entry.py")
    assert (unknown.state, unknown.attempt) == ("failed", 1)
    assert unknown.error is not None
    assert unknown.error["message"].startswith("git sha 0badc0de is not a commit of")

    events = [e for e in env.events(runs[1]) if e.type == "CODE_CHECKOUT"]
    assert len(events) == 1 and events[0].payload == {
        "git_sha": repo.second[:12], "commit": repo.second,
        "code_dir": str(checkouts / repo.second)}
    trail = of_phase(env.events(runs[0]), "value")
    assert trail.index("PHASE_STARTED") < trail.index("CODE_CHECKOUT") < trail.index(
        "PHASE_SUCCEEDED")


def test_the_worker_command_refuses_a_repo_that_is_not_one(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, [
        "worker", "--repo", str(tmp_path), "--token", "t", "--kinds", "python",
        "--gateway", "http://127.0.0.1:9/rest/v1", "--state-dir", str(tmp_path / "state")],
        env={"CONTROL_ROOM_ARTIFACTS_URL": None})
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(f"error: --repo: {tmp_path} is not a git repository")
