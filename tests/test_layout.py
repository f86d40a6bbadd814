"""The package layout holds (docs/architecture.md): every module imports on its own in a fresh
interpreter (no import cycle shows up as "partially initialized module"), and the CLI's help
loads no data-plane library."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("control_room", "executor", "pipelines")

# What `control-room --help` must not load: the data plane and the processes it starts.
DATA_PLANE = ("duckdb", "deltalake", "pyarrow", "polars", "executor.worker",
              "executor.kinds.python", "executor.kinds.sql", "pipelines.odoo.generator",
              "mcp", "control_room.mcp")


def _modules() -> list[str]:
    names = []
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            if parts[-1] == "__main__":
                continue
            names.append(".".join(parts))
    return names


MODULES = _modules()


def test_the_module_list_is_not_empty() -> None:
    assert {"control_room.contract.client", "executor.render", "control_room.cli"} <= set(MODULES)


@pytest.mark.parametrize("module", MODULES)
def test_each_module_imports_in_a_fresh_interpreter(module: str) -> None:
    done = subprocess.run([sys.executable, "-c", f"import {module}"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"import {module} failed:\n{done.stderr[-3000:]}"


_PROBE = """
import json, sys
from typer.main import get_command
from control_room.cli import app

root = get_command(app)
paths = [[]]
def walk(command, path):
    for name, sub in sorted(getattr(command, "commands", {}).items()):
        paths.append([*path, name])
        walk(sub, [*path, name])
walk(root, [])
results = {}
for path in paths:
    try:
        root.main([*path, "--help"], prog_name="control-room", standalone_mode=False)
    except SystemExit:
        pass
    loaded = [d for d in json.loads(sys.argv[1])
              if any(m == d or m.startswith(d + ".") for m in sys.modules)]
    results[" ".join(path) or "(root)"] = loaded
print("RESULT" + json.dumps(results))
"""


def test_help_loads_no_data_plane_module() -> None:
    """`control-room --help` and every command's `--help`, in one fresh interpreter: after each
    one, no data-plane module is in `sys.modules`."""
    done = subprocess.run([sys.executable, "-c", _PROBE, json.dumps(DATA_PLANE)], cwd="/",
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT"))
    results: dict[str, list[str]] = json.loads(line.removeprefix("RESULT"))
    assert len(results) > 10, results  # the root, the groups and their commands
    loaded = {command: mods for command, mods in results.items() if mods}
    assert not loaded, f"--help loaded data-plane modules: {loaded}"


def test_the_e2e_modules_named_in_conftest_exist() -> None:
    from tests.conftest import E2E_MODULES

    missing = [name for name in E2E_MODULES if not (REPO / name).is_file()]
    assert not missing, missing
