"""The package layout holds (docs/architecture.md): every module imports on its own in a fresh
interpreter (no import cycle shows up as "partially initialized module"), and the CLI's help
loads no data-plane library."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
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
    assert {"control_room.contract.client", "executor.render", "control_room.cli",
            "executor.kinds.python.child"} <= set(MODULES)


# A fork server: one interpreter that has imported the third-party libraries our modules use
# (never a module of ours: it asserts so), then forks a child per module that imports it as the
# first of our modules. An import cycle among ours shows exactly as in a new interpreter, and
# each module costs a fork instead of loading duckdb, pyarrow or dbt again (about 2 s each).
_FORK_SERVER = """
import importlib, json, os, sys, traceback
for name in json.loads(sys.argv[1]):
    try:
        importlib.import_module(name)
    except Exception:
        pass
ours = sorted(m for m in sys.modules if m.split(".")[0] in json.loads(sys.argv[2]))
print(json.dumps({"ready": True, "ours": ours}), flush=True)
for line in sys.stdin:
    module = line.strip()
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        try:
            importlib.import_module(module)
            message = ""
        except BaseException:
            message = traceback.format_exc()[-3000:] or "failed"
        os.write(write_fd, message.encode())
        os._exit(0)
    os.close(write_fd)
    chunks = []
    while chunk := os.read(read_fd, 65536):
        chunks.append(chunk)
    os.close(read_fd)
    _, status = os.waitpid(pid, 0)
    error = b"".join(chunks).decode()
    if status != 0 and not error:
        error = f"the importing child ended with status {status}"
    print(json.dumps({"module": module, "error": error}), flush=True)
"""
# Libraries worth loading once (a missing one is skipped: each module still imports what it needs).
_PRELOAD = ("pydantic", "pydantic_settings", "httpx", "tenacity", "yaml", "jsonschema",
            "psycopg", "psycopg_pool", "starlette", "uvicorn", "typer", "rich", "blake3",
            "duckdb", "pyarrow", "pyarrow.dataset", "deltalake", "polars", "sqlglot",
            "rapidfuzz", "mcp", "dbt.cli.main", "pyspark.sql", "croniter", "jwt")


@pytest.fixture(scope="module")
def fork_server() -> Iterator[subprocess.Popen[str]]:
    server = subprocess.Popen(
        [sys.executable, "-c", _FORK_SERVER, json.dumps(_PRELOAD), json.dumps(PACKAGES)],
        cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert server.stdout is not None
    hello = json.loads(server.stdout.readline())
    assert hello == {"ready": True, "ours": []}, hello  # no module of ours preloaded
    try:
        yield server
    finally:
        server.kill()
        server.wait()


# One xdist worker takes them all under `--dist loadgroup` (make test-fast): the fork server
# costs 5 to 7 s of imports, once instead of once per worker.
@pytest.mark.xdist_group("fork_server")
@pytest.mark.parametrize("module", MODULES)
def test_each_module_imports_in_a_fresh_interpreter(
        module: str, fork_server: subprocess.Popen[str]) -> None:
    assert fork_server.stdin is not None and fork_server.stdout is not None
    fork_server.stdin.write(module + "\n")
    fork_server.stdin.flush()
    answer = json.loads(fork_server.stdout.readline())
    assert answer["module"] == module
    assert answer["error"] == "", f"import {module} failed:\n{answer['error']}"


def test_the_fork_server_sees_an_import_cycle(tmp_path: Path) -> None:
    """The fork server's children report a cycle as a fresh interpreter would."""
    package = tmp_path / "cyclepkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from cyclepkg.b import B\nA = 1\n")
    (package / "b.py").write_text("from cyclepkg.a import A\nB = 2\n")
    server = subprocess.Popen([sys.executable, "-c", _FORK_SERVER, "[]", '["cyclepkg"]'],
                              cwd=tmp_path, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    assert server.stdin is not None and server.stdout is not None
    try:
        assert json.loads(server.stdout.readline()) == {"ready": True, "ours": []}
        server.stdin.write("cyclepkg.a\n")
        server.stdin.flush()
        answer = json.loads(server.stdout.readline())
    finally:
        server.kill()
        server.wait()
    assert "partially initialized module" in answer["error"], answer


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


@pytest.mark.e2e   # the CLI (every command's --help) in a process of its own
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


def test_the_e2e_and_slow_modules_named_in_conftest_exist() -> None:
    from tests.conftest import E2E_MODULES, SLOW_MODULES

    missing = [name for name in E2E_MODULES | SLOW_MODULES if not (REPO / name).is_file()]
    assert not missing, missing
