"""`control-room runs create ... --wait --github-summary` against the real gateway and a real
worker: the Markdown appended to `$GITHUB_STEP_SUMMARY` (phases, the datasets the run changed
with their schema versions, artifact digests, links), the step outputs in `$GITHUB_OUTPUT`,
exit 1 for a failed run, the 1 MiB limit, and no token anywhere."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from control_room.integrations.github.summary import (
    SUMMARY_LIMIT,
    collect,
    output_lines,
    render_summary,
    run_links,
    safe_url,
)
from tests.executor.harness import BOUND, Env, Running, gateway_env
from tests.test_cli_runs import cli
from tests.test_specs import EXAMPLE, commit

FAILING = """\
version: 1
slug: breaks
description: a phase that fails for good
phases:
  - name: first
    kind: python
    params: {entrypoint: "tests.executor.e2e_entrypoints:noop"}
  - name: boom
    kind: python
    depends_on: [first]
    params: {entrypoint: "tests.executor.sample_entrypoints:raise_terminal"}
  - name: after
    kind: python
    depends_on: [boom]
    params: {entrypoint: "tests.executor.e2e_entrypoints:noop"}
"""


@pytest.fixture
def env(conn: psycopg.Connection[Any], db_url: str, tmp_path: Path) -> Iterator[Env]:
    with gateway_env(conn, db_url, tmp_path) as environment:
        yield environment


@pytest.fixture
def repo(tmp_path: Path) -> tuple[Path, str]:
    """specs/example.yaml and specs/breaks.yaml committed in a new git repository."""
    root = tmp_path / "repo"
    (root / "specs").mkdir(parents=True)
    (root / "specs" / "example.yaml").write_text(EXAMPLE.read_text())
    (root / "specs" / "breaks.yaml").write_text(FAILING)
    return root, commit(root, "specs")


def outputs_of(path: Path) -> dict[str, str]:
    """$GITHUB_OUTPUT read as the runner reads it (name=value and heredocs; the last wins)."""
    found: dict[str, str] = {}
    lines = path.read_text().split("\n")
    i = 0
    while i < len(lines):
        line = lines[i]
        if "<<" in line and ("=" not in line or line.index("<<") < line.index("=")):
            name, mark = line.split("<<", 1)
            end = lines.index(mark, i + 1)
            found[name] = "\n".join(lines[i + 1:end])
            i = end + 1
            continue
        if line:
            name, _, value = line.partition("=")
            found[name] = value
        i += 1
    return found


def gh_files(env: Env) -> dict[str, str]:
    summary, output = env.tmp / "step_summary.md", env.tmp / "github_output"
    return {"GITHUB_STEP_SUMMARY": str(summary), "GITHUB_OUTPUT": str(output)}


def test_wait_github_summary_of_a_succeeded_spec_run(env: Env, repo: tuple[Path, str]) -> None:
    root, sha = repo
    files = gh_files(env)
    running = Running(env.worker(kinds=["python", "sql"]), max_phases=3)
    code, out, err = cli(env, "runs", "create", "--spec", str(root / "specs" / "example.yaml"),
                         "--label", "github_pr=7", "--wait", "--interval", "0.2",
                         "--github-summary", "--ui-url", "https://cr.example.com/app/", **files)
    assert code == 0, err
    assert running.join(BOUND * 2).succeeded == 3
    summary = Path(files["GITHUB_STEP_SUMMARY"]).read_text()
    outputs = outputs_of(Path(files["GITHUB_OUTPUT"]))
    run_id = outputs["run_id"]
    assert outputs == {"run_id": run_id, "state": "succeeded",
                       "ui_url": f"https://cr.example.com/app/runs/{run_id}",
                       "api_url": f"{env.rest_url}/rpc/get_run"}
    assert summary.startswith("## ✅ Control Room run succeeded: example\n")
    assert f"spec `example` @ `{sha}` · run `{run_id}`" in summary
    # the phase table: state, attempts, duration
    rows = re.findall(r"^\| (extract|silver|gold) \| (python|sql) \| ✅ succeeded \| 1/2 \| "
                      r"[0-9.]+ s \|", summary, re.M)
    assert [r[0] for r in rows] == ["extract", "silver", "gold"]
    # the datasets the run wrote, each with the INITIAL schema it recorded and its digest
    assert "### Datasets changed (3)" in summary
    for name in ("bronze.orders", "silver.orders", "gold.revenue_by_customer"):
        [row] = [line for line in summary.splitlines() if line.startswith(f"| `{name}` |")]
        assert "| v1 | v1 INITIAL | 0 |" in row and "`blake3:" in row, row
    artifacts = env.artifacts(run_id)
    assert f"### Artifacts ({len(artifacts)})" in summary and len(artifacts) >= 3
    for link in artifacts:
        assert f"`{link['digest']}`" in summary
    assert f"- The run in the Control Room UI: <https://cr.example.com/app/runs/{run_id}>" in \
        summary
    assert f"`control-room runs show {run_id}`" in summary
    token = env.contract.token(env.world.dev1)
    for text in (summary, Path(files["GITHUB_OUTPUT"]).read_text(), out, err):
        assert token not in text and token.split(".")[2] not in text

    # a second run of the same spec changes no schema: the datasets list it with "none"
    running = Running(env.worker(kinds=["python", "sql"]), max_phases=3)
    Path(files["GITHUB_STEP_SUMMARY"]).write_text("")
    code, out, err = cli(env, "runs", "create", "--spec", str(root / "specs" / "example.yaml"),
                         "--wait", "--interval", "0.2", "--github-summary", "--json", **files)
    assert code == 0, err
    running.join(BOUND * 2)
    second = json.loads(out)
    summary = Path(files["GITHUB_STEP_SUMMARY"]).read_text()
    [row] = [line for line in summary.splitlines() if line.startswith("| `silver.orders` |")]
    assert "| none |" in row
    # no UI configured and no local stack: the gateway's get_run is linked, and it says so
    assert "no Control Room UI is configured" in summary
    assert f"`{env.rest_url}/rpc/get_run` (POST `{{\"run_id\": \"{second['id']}\"}}`" in summary
    assert outputs_of(Path(files["GITHUB_OUTPUT"]))["ui_url"] == ""


def test_a_failed_job_run_exits_1_with_its_error_in_the_summary(
        env: Env, repo: tuple[Path, str]) -> None:
    root, sha = repo
    files = gh_files(env)
    code, out, err = cli(env, "jobs", "register", "--spec", str(root / "specs" / "breaks.yaml"),
                         "--git-sha", sha, "--json")
    assert code == 0, err
    running = Running(env.worker(), max_phases=2)
    code, out, err = cli(env, "runs", "create", "--job", "breaks", "--wait", "--interval",
                         "0.2", "--github-summary", **files)
    assert code == 1, (out, err)
    running.join(BOUND * 2)
    outputs = outputs_of(Path(files["GITHUB_OUTPUT"]))
    assert outputs["state"] == "failed"
    summary = Path(files["GITHUB_STEP_SUMMARY"]).read_text()
    assert summary.startswith("## ❌ Control Room run failed: breaks\n")
    assert f"job `breaks` version 1 @ `{sha}`" in summary
    assert re.search(r"^\| first \| python \| ✅ succeeded \| 1/3 \|", summary, re.M)
    assert re.search(r"^\| boom \| python \| ❌ failed \| 1/3 \| [0-9.]+ s \| .*can never work",
                     summary, re.M), summary
    assert re.search(r"^\| after \| python \| ⏭️ skipped \| 0/3 \| - \|", summary, re.M)
    assert re.search(r"^\| error \| phase boom: ", summary, re.M)
    assert "_No dataset of the catalog was last written by this run._" in summary

    # watch --github-summary of the same run writes it again (a later step of the gate)
    code, out, err = cli(env, "runs", "watch", outputs["run_id"], "--github-summary", **files)
    assert code == 1
    assert Path(files["GITHUB_STEP_SUMMARY"]).read_text().count("## ❌ Control Room run") == 2


def test_long_tables_are_cut_under_the_limit(env: Env, repo: tuple[Path, str]) -> None:
    root, _ = repo
    running = Running(env.worker(kinds=["python", "sql"]), max_phases=3)
    code, out, err = cli(env, "runs", "create", "--spec", str(root / "specs" / "example.yaml"),
                         "--wait", "--interval", "0.2", "--json")
    assert code == 0, err
    running.join(BOUND * 2)
    client = env.client(env.world.dev1)
    run = client.get_run(json.loads(out)["id"])
    report = collect(client, run)
    links = run_links(run.id, gateway_url=env.rest_url, ui_base=None)
    full = render_summary(run, report, links)
    assert len(full.encode()) < SUMMARY_LIMIT
    # many artifacts (the real ones, repeated) and a small row limit: cut with a note
    many = type(report)(report.datasets, report.artifacts * 400, report.notes)
    cut = render_summary(run, many, links, max_rows=50)
    total = len(many.artifacts)
    assert f"_{total - 50} more row(s) not shown (of {total}):" in cut
    assert cut.count("`blake3:") <= 50 + len(report.datasets)
    # a byte limit below the document: the tables are halved until it fits
    small = render_summary(run, many, links, limit=6000, max_rows=200)
    assert len(small.encode()) <= 6000 and "more row(s) not shown" in small
    tiny = render_summary(run, many, links, limit=700)
    assert len(tiny.encode()) <= 700 and "The summary was cut at 700 bytes" in tiny


def test_bad_input_and_the_output_format(env: Env, repo: tuple[Path, str]) -> None:
    root, _ = repo
    code, out, err = cli(env, "runs", "create", "--spec", str(root / "specs" / "example.yaml"),
                         "--github-summary", GITHUB_STEP_SUMMARY=None, GITHUB_OUTPUT=None)
    assert (code, out) == (2, "") and "--github-summary needs GITHUB_STEP_SUMMARY" in err
    code, out, err = cli(env, "runs", "create", "--spec", str(root / "specs" / "example.yaml"),
                         "--github-summary", "--ui-url", "ftp://x", **gh_files(env))
    assert code == 2 and "--ui-url must be an http(s) URL" in err
    assert cli(env, "runs", "list", "--json")[1].strip() == "[]"     # nothing was created
    # without --wait: the outputs at once, no summary (`runs watch --github-summary` writes it)
    files = gh_files(env)
    code, out, err = cli(env, "runs", "create", "--spec", str(root / "specs" / "example.yaml"),
                         "--github-summary", "--json", **files)
    assert code == 0, err
    outputs = outputs_of(Path(files["GITHUB_OUTPUT"]))
    assert (outputs["run_id"], outputs["state"]) == (json.loads(out)["id"], "queued")
    assert not Path(files["GITHUB_STEP_SUMMARY"]).exists()

    assert output_lines({"run_id": "r1", "state": "failed"}) == "run_id=r1\nstate=failed\n"
    text = output_lines({"note": "two\nlines"}, delimiter=lambda: "EOF")
    assert text == "note<<EOF\ntwo\nlines\nEOF\n"
    marks = iter(["lines", "X1"])
    assert output_lines({"n": "two\nlines"}, delimiter=lambda: next(marks)) == (
        "n<<X1\ntwo\nlines\nX1\n")
    with pytest.raises(ValueError, match="bad output name"):
        output_lines({"a=b": "c"})
    assert safe_url("https://user:pw@cr.example.com:8443/ui/?token=abc#x") == (
        "https://cr.example.com:8443/ui/")
