""""Only what changed" (dbt Slim CI's idea, docs/github.md): `control-room runs create --job J
--changed-since SHA` against the real gateway and a real worker running each run's commit of a
git repository made here: a three-phase chain whose middle phase's SQL file changed reruns the
middle and the last phase and reuses the first from the base run, with the same outputs as a
full run; a changed param reruns what uses it (the control plane sees it too); nothing changed
creates no run; a base run that is missing, not succeeded or of another job is refused."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from control_room.contract.client import Conflict, InvalidArgument, NotFound
from control_room.integrations.github.summary import GateReport, render_summary, run_links
from control_room.specs.changes import code_locations, plan_changes
from tests.executor.harness import BOUND, Env, Running, gateway_env
from tests.test_cli_runs import cli
from tests.test_github_summary import gh_files, outputs_of

SPEC = """\
version: 1
slug: slim
description: orders (python) -> paid orders (sql file) -> revenue per customer (sql)
params:
  orders: {type: integer, default: 12}
defaults: {retries: 0, timeout: 2m}
phases:
  - name: extract
    kind: python
    params:
      entrypoint: slimci.extract:extract
      args: {lake: "${run.lake}", orders: "${params.orders}"}
  - name: middle
    kind: sql
    depends_on: [extract]
    inputs: {orders: {upstream: extract}}
    params:
      query_file: sql/middle.sql
      output: {delta: "${run.lake}/silver/slim_paid", mode: overwrite, name: silver.slim_paid}
  - name: last
    kind: sql
    depends_on: [middle]
    inputs: {paid: {upstream: middle}}
    params:
      query: >-
        select customer, count(*) as orders, sum(amount)::bigint as revenue
        from paid group by customer
      output: {delta: "${run.lake}/gold/slim_revenue", mode: overwrite, name: gold.slim_revenue}
"""

EXTRACT = '''\
import os


def extract(ctx):
    count = int(ctx.args["orders"])
    rows = [{"order_id": n, "customer": ("ada", "bob", "cyd")[n % 3], "amount": 10 * (n % 7 + 1),
             "status": ("paid", "paid", "refunded")[n % 3]} for n in range(1, count + 1)]
    uri = os.path.join(str(ctx.args["lake"]), "bronze", "slim_orders")
    table = ctx.write_table("bronze.slim_orders", uri, rows, mode="overwrite", keys=["order_id"])
    return {"table": {k: table[k] for k in ("name", "uri", "version", "digest", "rows")}}
'''

MIDDLE_V1 = "select order_id, customer, amount from orders where status = 'paid'\n"
MIDDLE_V2 = "select order_id, customer, amount from orders where status = 'paid' and amount >= 30\n"


def git(root: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True,
                          text=True).stdout.strip()


def commit(root: Path, message: str) -> str:
    git(root, "add", "-A")
    git(root, "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-q", "-m",
        message)
    return git(root, "rev-parse", "HEAD")


@pytest.fixture
def env(conn: psycopg.Connection[Any], db_url: str, tmp_path: Path) -> Iterator[Env]:
    with gateway_env(conn, db_url, tmp_path) as environment:
        yield environment


@pytest.fixture
def repo(tmp_path: Path) -> tuple[Path, str, str]:
    """A repository with two commits: the base, then the middle phase's SQL file changed."""
    root = tmp_path / "repo"
    for path, text in {"slimci/__init__.py": "", "slimci/extract.py": EXTRACT,
                       "sql/middle.sql": MIDDLE_V1, "specs/slim.yaml": SPEC,
                       "README.md": "slim\n"}.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)
    git(root, "init", "-q")
    base = commit(root, "base")
    (root / "sql" / "middle.sql").write_text(MIDDLE_V2)
    return root, base, commit(root, "middle: only orders of 30 and more")


def ok(env: Env, *args: str, **extra: str | None) -> str:
    code, out, err = cli(env, *args, **extra)
    assert code == 0, err
    return out


def register(env: Env, root: Path, sha: str) -> int:
    answer = json.loads(ok(env, "jobs", "register", "--spec", str(root / "specs" / "slim.yaml"),
                           "--git-sha", sha, "--json"))
    version: int = answer["version"]["version"]
    return version


def full_run(env: Env, root: Path, *extra: str) -> str:
    running = Running(env.worker(kinds=["python", "sql"], repo=root), max_phases=3)
    out = ok(env, "runs", "create", "--job", "slim", *extra, "--wait", "--interval", "0.2",
             "--json")
    assert running.join(BOUND * 2).succeeded == 3
    run_id: str = json.loads(out)["id"]
    return run_id


def tables(env: Env, run_id: str) -> dict[str, tuple[str, int]]:
    """Each phase's table: its content digest and rows."""
    return {p.name: (p.output_manifest["table"]["digest"], p.output_manifest["table"]["rows"])
            for p in env.get_run(run_id).phases if p.output_manifest}


def test_only_the_changed_phase_and_its_downstream_run(env: Env,
                                                       repo: tuple[Path, str, str]) -> None:
    root, base_sha, head_sha = repo
    assert register(env, root, base_sha) == 1
    base_id = full_run(env, root)
    assert register(env, root, head_sha) == 2

    files = gh_files(env)
    running = Running(env.worker(kinds=["python", "sql"], repo=root), max_phases=2)
    code, out, err = cli(env, "runs", "create", "--job", "slim", "--changed-since", base_sha,
                         "--repo-dir", str(root), "--wait", "--interval", "0.2",
                         "--github-summary", "--ui-url", "https://cr.example.com", **files)
    assert code == 0, err
    assert running.join(BOUND * 2).succeeded == 2          # middle and last, not extract
    assert f"only what changed since {base_sha[:12]} (run {base_id}): 2 phase(s) run, " \
           "1 reused" in out
    assert "run    middle: code changed: sql/middle.sql" in out
    assert "run    last: downstream of middle" in out
    assert f"reused extract: unchanged since {base_sha[:12]} (run {base_id})" in out

    slim_id = outputs_of(Path(files["GITHUB_OUTPUT"]))["run_id"]
    slim, base = env.get_run(slim_id), env.get_run(base_id)
    assert (slim.state, slim.git_sha, slim.job and slim.job.version) == ("succeeded", head_sha, 2)
    assert slim.parent_run_id is None
    assert slim.input_manifest["changed_since"] == {
        "base_run_id": base_id, "base_git_sha": base_sha,
        "changed": {"middle": "code changed: sql/middle.sql"},
        "rerun": ["middle", "last"], "reused": ["extract"]}
    extract = slim.phase("extract")
    assert extract.reused_from_phase_id == base.phase("extract").id
    assert extract.output_manifest == base.phase("extract").output_manifest
    assert extract.attempt == 0
    assert [p.attempt for p in (slim.phase("middle"), slim.phase("last"))] == [1, 1]
    reused_events = [e for e in env.events(slim_id) if e.type == "PHASE_REUSED"]
    assert [(e.phase, e.payload["reused_from_phase_id"]) for e in reused_events] == [
        ("extract", base.phase("extract").id)]

    summary = Path(files["GITHUB_STEP_SUMMARY"]).read_text()
    assert f"### Only what changed since `{base_sha[:12]}` (2 ran, 1 reused from run " \
           f"`{base_id}`)" in summary
    assert "| middle | sql | code changed: sql/middle.sql |" in summary
    assert "| last | sql | downstream of middle |" in summary
    assert "### Skipped (unchanged) (1)" in summary
    assert (f"| extract | python | unchanged since {base_sha[:12]} (run {base_id}) | "
            f"`{base.phase('extract').id}` |") in summary

    # the same outputs as a full run of the head (a narrower middle: fewer rows than the base)
    full_id = full_run(env, root, "--version", "2")
    assert tables(env, slim_id) == tables(env, full_id)
    assert tables(env, slim_id)["last"] != tables(env, base_id)["last"]


def test_params_unchanged_and_refused_bases(env: Env, repo: tuple[Path, str, str]) -> None:
    root, base_sha, head_sha = repo
    register(env, root, base_sha)
    base_id = full_run(env, root)
    register(env, root, head_sha)
    (root / "README.md").write_text("slim, documented\n")
    readme_sha = commit(root, "README only")
    assert register(env, root, readme_sha) == 3
    dev = env.client(env.world.dev1)

    # a param: extract uses ${params.orders}; version 2 (not the latest: its spec is read
    # from git at its commit) with orders=20 reruns everything; no worker runs it
    made = json.loads(ok(env, "runs", "create", "--job", "slim", "--version", "2",
                         "--changed-since", base_sha, "--repo-dir", str(root),
                         "--param", "orders=20", "--json"))
    assert made["job"]["version"] == 2
    assert made["changed_since"]["changed"] == {
        "extract": "param orders changed: 12 -> 20", "middle": "code changed: sql/middle.sql"}
    assert made["changed_since"]["reused"] == []
    assert [c["reason"] for c in made["changes"]] == [
        "param orders changed: 12 -> 20", "code changed: sql/middle.sql",
        "downstream of middle"]
    assert all(c["fingerprint"] != c["base_fingerprint"] for c in made["changes"][:2])
    dev.cancel_run(made["id"])
    # the control plane sees a param change itself, whatever the caller names
    direct = dev.create_changed_run(env.world.w1, "slim", base_id, {}, version=1,
                                    params={"orders": 20})
    assert direct.changed_since.changed == {"extract": "param orders changed: 12 -> 20"}
    assert direct.changed_since.rerun == ("extract", "middle", "last")
    dev.cancel_run(direct.id)
    # ... and refuses what it cannot reuse
    with pytest.raises(Conflict, match="nothing changed since run"):
        dev.create_changed_run(env.world.w1, "slim", base_id, {}, version=1)
    with pytest.raises(InvalidArgument, match="nope is not a phase of job slim version 1"):
        dev.create_changed_run(env.world.w1, "slim", base_id, {"nope": "x"}, version=1)
    with pytest.raises(Conflict, match=f"base run {made['id']} is cancelled"):
        dev.create_changed_run(env.world.w1, "slim", made["id"], {"extract": "x"})
    other = dev.create_run(env.world.w1, "slim", base_sha, [{"name": "a", "kind": "python"}])
    dev.cancel_run(other.id)
    with pytest.raises(InvalidArgument, match="is a run of the spec slim, not of job slim"):
        dev.create_changed_run(env.world.w1, "slim", other.id, {"extract": "x"})
    with pytest.raises(NotFound):       # another workspace's member sees no job slim
        env.client(env.world.dev2).create_changed_run(env.world.w2, "slim", base_id, {})

    # nothing changed since the head (only README.md did): no run, exit 0, said everywhere
    full_run(env, root, "--version", "2")
    before = len(dev.list_runs(env.world.w1, job_slug="slim", limit=100).runs)
    files = gh_files(env)
    code, out, err = cli(env, "runs", "create", "--job", "slim", "--changed-since", head_sha,
                         "--repo-dir", str(root), "--github-summary", **files)
    assert code == 0, err
    assert f"nothing changed since {head_sha[:12]}" in out and "no run created" in out
    assert len(dev.list_runs(env.world.w1, job_slug="slim", limit=100).runs) == before
    outputs = outputs_of(Path(files["GITHUB_OUTPUT"]))
    assert (outputs["state"], outputs["run_id"]) == ("skipped", "")
    summary = Path(files["GITHUB_STEP_SUMMARY"]).read_text()
    assert summary.startswith("## ⏭️ Control Room run skipped: slim\n")
    assert "### Skipped (unchanged) (3)" in summary
    assert f"| last | unchanged since {head_sha[:12]} " in summary
    skipped = json.loads(ok(env, "runs", "create", "--job", "slim", "--changed-since",
                            head_sha, "--repo-dir", str(root), "--json"))
    assert (skipped["state"], len(skipped["changes"])) == ("skipped", 3)

    # refused bases: no run at the commit, only a cancelled one, not a commit, a spec run
    code, _, err = cli(env, "runs", "create", "--job", "slim", "--changed-since", readme_sha,
                       "--repo-dir", str(root))
    assert code == 2 and f"job slim has no run at {readme_sha[:12]}" in err, err
    cancelled = json.loads(ok(env, "runs", "create", "--job", "slim", "--version", "3",
                              "--json"))
    dev.cancel_run(cancelled["id"])
    code, _, err = cli(env, "runs", "create", "--job", "slim", "--changed-since", readme_sha,
                       "--repo-dir", str(root))
    assert code == 2 and f"(the newest, {cancelled['id']}, is cancelled)" in err, err
    code, _, err = cli(env, "runs", "create", "--job", "slim", "--changed-since", "nowhere",
                       "--repo-dir", str(root))
    assert code == 2 and "--changed-since nowhere: not a commit of the repository" in err, err
    code, _, err = cli(env, "runs", "create", "--spec", str(root / "specs" / "slim.yaml"),
                       "--changed-since", base_sha)
    assert code == 2 and "--changed-since needs --job" in err, err
    assert len(err.strip().splitlines()) == 1


def test_code_locations_of_each_kind() -> None:
    assert code_locations("python", {"entrypoint": "a.b.c:run"}) == [
        ("a/b/c.py", "a/b", "a/__init__.py", "a/b/__init__.py"),
        ("a/b/c/__init__.py", "a/b/c", "a/__init__.py", "a/b/__init__.py")]
    assert code_locations("python", {"entrypoint": "top:run"}) == [
        ("top.py", ""), ("top/__init__.py", "top")]
    assert code_locations("sql", {"query_file": "x.sql", "code_dir": "models"}) == [
        ("models/x.sql",)]
    assert code_locations("sql", {"query": "select 1"}) == [()]
    assert code_locations("sql", {"query_file": "${params.f}"}) is None
    assert code_locations("sql", {"query_file": "../outside.sql"}) is None
    assert code_locations("dbt", {}) == [("",)]
    assert code_locations("dbt", {"project_dir": "pipelines/example_dbt/"}) == [
        ("pipelines/example_dbt",)]
    assert code_locations("spark", {"job_file": "jobs/x.py"}) == [("jobs/x.py",)]
    assert code_locations("trino", {"query_file": "q.sql"}) == [("q.sql",)]
    assert code_locations("mystery", {}) is None


def test_a_module_in_neither_commit_and_a_phase_upstream_listed_later(
        repo: tuple[Path, str, str]) -> None:
    root, base_sha, head_sha = repo
    phases = [{"name": "late", "kind": "sql", "depends_on": ["early"],
               "params": {"query": "select 1"}},
              {"name": "early", "kind": "python", "depends_on": [],
               "params": {"entrypoint": "not_here.mod:run"}},
              {"name": "alone", "kind": "sql", "depends_on": [], "params": {"query": "select 2"}}]
    plan = plan_changes(root, base_sha=base_sha, head_sha=head_sha, base_run_id="r",
                        base_phases=phases, base_params={}, head_phases=phases, head_params={})
    assert plan.changed == {"early": "its code is not found in the repository at either commit"}
    assert plan.rerun == ["late", "early"] and plan.reused == ["alone"]
    assert plan.phases[0].reason == "downstream of early"


def test_the_summary_of_a_repair_of_such_a_run_has_no_skipped_section(
        env: Env, repo: tuple[Path, str, str]) -> None:
    root, base_sha, head_sha = repo
    register(env, root, base_sha)
    base_id = full_run(env, root)
    register(env, root, head_sha)
    dev = env.client(env.world.dev1)
    made = dev.create_changed_run(env.world.w1, "slim", base_id,
                                  {"middle": "code changed: sql/middle.sql"})
    links = run_links(made.id, gateway_url=env.rest_url, ui_base=None)
    text = render_summary(dev.get_run(made.id), GateReport(), links)
    assert "### Skipped (unchanged) (1)" in text and "| last | sql | downstream of middle |" in text
    dev.cancel_run(made.id)
    child = dev.repair_run(made.id)
    text = render_summary(dev.get_run(child.id), GateReport(), links)
    assert "Skipped (unchanged)" not in text and f"| repair of | `{made.id}` |" in text
    dev.cancel_run(child.id)
