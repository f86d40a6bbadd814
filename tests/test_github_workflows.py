"""The project's workflows (.github/workflows): parsed, the triggers, inputs, secrets,
concurrency and steps docs/github.md promises, and every `control-room` call in their `run:`
blocks an existing command with those options (tests/cli_lines.py); `make lint` runs actionlint
on them too."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cli_lines import Call, resolve, shell_calls

REPO = Path(__file__).resolve().parents[1]
WORKFLOWS = REPO / ".github" / "workflows"


def load(name: str) -> dict[str, Any]:
    raw: dict[Any, Any] = yaml.safe_load((WORKFLOWS / name).read_text())
    # YAML 1.1 reads the key `on` as True
    raw["on"] = raw.pop(True, raw.get("on"))
    return raw


def test_ci_runs_what_ci_run_runs() -> None:
    ci = load("ci.yml")
    assert ci["on"]["push"] == {"branches": ["main"]} and "pull_request" in ci["on"]
    steps = ci["jobs"]["test"]["steps"]
    assert any(step.get("run") == ".ci/run" for step in steps)
    assert ci["jobs"]["test"]["services"]["postgres"]["ports"] == ["5432:5432"]
    assert ci["concurrency"]["cancel-in-progress"] is True
    assert (REPO / ".ci" / "run").stat().st_mode & 0o111


def test_the_gate_is_a_reusable_workflow_as_documented() -> None:
    gate = load("control-room-gate.yml")
    call = gate["on"]["workflow_call"]
    assert set(call["inputs"]) == {"job", "spec", "env", "gateway-url", "params",
                                   "timeout-minutes", "changed-since", "ui-url", "package"}
    assert call["inputs"]["gateway-url"]["required"] is True
    assert call["inputs"]["timeout-minutes"]["type"] == "number"
    assert call["secrets"] == {"token": {"description": call["secrets"]["token"]["description"],
                                         "required": True}}
    assert set(call["outputs"]) == {"run_id", "state", "ui_url"}
    job = gate["jobs"]["gate"]
    assert job["concurrency"]["cancel-in-progress"] is True
    assert "github.event.pull_request.number" in job["concurrency"]["group"]
    assert job["timeout-minutes"] == "${{ inputs.timeout-minutes }}"
    assert job["env"]["CONTROL_ROOM_TOKEN"] == "${{ secrets.token }}"
    steps = {step.get("id", step.get("name")): step for step in job["steps"]}
    register = steps["register"]["run"]
    assert 'jobs register --spec "$GATE_SPEC" --git-sha "${{ github.sha }}"' in register
    create = steps["create"]["run"]
    for label in ("github_repo=${{ github.repository }}", "github_sha=$GATE_SHA",
                  "github_actor=${{ github.actor }}", "github_pr=$GATE_PR"):
        assert f'--label "{label}"' in create
    assert "--github-summary" in create and "--idempotency-key" in create
    assert "--github-summary" in steps["wait"]["run"]
    # only what changed: the base commit's history is fetched, and nothing to run (no run)
    # skips the wait
    assert 'args+=(--changed-since "$GATE_CHANGED_SINCE")' in create
    assert job["env"]["GATE_CHANGED_SINCE"] == "${{ inputs.changed-since }}"
    assert "inputs.changed-since != ''" in job["steps"][0]["with"]["fetch-depth"]
    assert steps["wait"]["if"] == "steps.create.outputs.state != 'skipped'"
    cancel = steps["cancel the control-plane run"]
    assert cancel["if"].startswith("cancelled()")
    assert "control-room runs cancel \"${{ steps.create.outputs.run_id }}\"" in cancel["run"]
    # the token is only ever an environment variable, never on a command line
    for step in job["steps"]:
        assert "secrets." not in step.get("run", "")


def workflow_calls() -> list[Call]:
    calls = []
    for path in sorted(WORKFLOWS.glob("*.yml")):
        for job_name, job in load(path.name)["jobs"].items():
            for step in job.get("steps", []):
                step_name = step.get("name") or step.get("id") or step.get("uses")
                where = f"{path.name} {job_name} {step_name}"
                calls += [resolve(argv, where) for argv in shell_calls(step.get("run", ""), where)]
    return calls


def test_every_cli_call_exists_with_its_options() -> None:
    calls = {" ".join(call.path): call for call in workflow_calls()}
    assert set(calls) == {"jobs register", "runs create", "runs watch", "runs cancel"}
    # the gate's args array is expanded into the call: both branches' options are checked
    assert {"--job", "--version", "--spec", "--git-sha", "--param", "--label",
            "--idempotency-key", "--github-summary", "--json"} <= calls["runs create"].options
    assert calls["runs watch"].options == {"--interval", "--github-summary"}
    assert calls["runs cancel"].options == {"--reason"}


def test_the_cli_line_checker_refuses_what_does_not_parse() -> None:
    ok = shell_calls('FOO=1 control-room runs show "$RUN" --json 2>&1 | tee out # c', "t")
    assert ok == [["runs", "show", "$RUN", "--json"]]
    assert resolve(ok[0], "t").path == ("runs", "show")
    for bad, why in ((["runs", "shwo", "X"], "no command runs shwo"),
                     (["runs", "show", "X", "--nope"], "No such option"),
                     (["runs", "create", "--job"], "requires an argument"),
                     (["runs", "show", "X", "Y"], "unexpected argument"),
                     (["runs", "show"], "missing argument"),
                     (["runs"], "needs a command")):
        with pytest.raises(AssertionError, match=why):
            resolve(bad, "t")
    script = 'a=()\na+=(--job "$J")\ncontrol-room runs create "${a[@]}" \\\n  --json'
    arrays = shell_calls(script, "t")
    assert arrays == [["runs", "create", "--job", "$J", "--json"]]
