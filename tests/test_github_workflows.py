"""The project's workflows (.github/workflows): parsed, the triggers, inputs, secrets,
concurrency and steps docs/github.md promises, and every `control-room` call in them an existing
command with those options (actionlint is not available offline)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import click
import typer.main
import yaml

from control_room.cli import app

REPO = Path(__file__).resolve().parents[1]
WORKFLOWS = REPO / ".github" / "workflows"


def load(name: str) -> dict[str, Any]:
    raw: dict[Any, Any] = yaml.safe_load((WORKFLOWS / name).read_text())
    # YAML 1.1 reads the key `on` as True
    raw["on"] = raw.pop(True, raw.get("on"))
    return raw


def command(words: list[str]) -> Any:
    group: Any = typer.main.get_command(app)
    for word in words:
        assert hasattr(group, "get_command"), words
        found = group.get_command(click.Context(group), word)
        assert found is not None, f"control-room {' '.join(words)}: no command {word}"
        group = found
    return group


def cli_calls(script: str) -> list[tuple[list[str], Any]]:
    calls = []
    for match in re.finditer(r"control-room((?: [a-z][a-z-]*)+)", script):
        words = match.group(1).split()
        cmd = command(words[:2] if len(words) > 1 else words)
        calls.append((words[:2], cmd))
    return calls


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
                                   "timeout-minutes", "ui-url", "package"}
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
    cancel = steps["cancel the control-plane run"]
    assert cancel["if"].startswith("cancelled()")
    assert "control-room runs cancel \"${{ steps.create.outputs.run_id }}\"" in cancel["run"]
    # the token is only ever an environment variable, never on a command line
    for step in job["steps"]:
        assert "secrets." not in step.get("run", "")


def test_every_cli_call_exists_with_its_options() -> None:
    seen: set[str] = set()
    for name in ("ci.yml", "control-room-gate.yml"):
        for job in load(name)["jobs"].values():
            for step in job["steps"]:
                script = step.get("run", "")
                calls = cli_calls(script)
                if not calls:
                    continue
                options = {opt for _, cmd in calls for param in cmd.params
                           for opt in getattr(param, "opts", [])}
                for flag in re.findall(r"(?<![\w-])--[a-z][a-z-]+", script):
                    assert flag in options, (name, step.get("name"), flag)
                seen.update(" ".join(words) for words, _ in calls)
    assert seen == {"jobs register", "runs create", "runs watch", "runs cancel"}
