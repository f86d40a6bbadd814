"""The built wheel works outside the checkout: build it, install it into a fresh venv in a
temporary directory, and drive a whole stack from there (`migrate`, `up` with its gateway and
worker, `runs create` of the example spec shipped in the package).

The fresh venv gets the wheel with `--no-deps` and reaches the third-party dependencies
through a `.pth` line naming this venv's site-packages: a path line adds the directory only,
it does not run that directory's own `.pth` files, so the checkout (which the editable
install puts on `sys.path` through such a file) stays invisible. Only the wheel's files
provide `control_room`, `executor` and `pipelines`; the test asserts it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import sysconfig
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.executor.harness import REPO, wait_for
from tests.test_cli_up import free_port

pytestmark = pytest.mark.slow

PACKAGE_DATA = (
    "control_room/contract/openapi.yaml",
    "control_room/db/queries.sql",
    "control_room/db/shim.sql",
    "control_room/specs/spec.schema.json",
    "control_room/specs/examples/example.yaml",
    "control_room/specs/examples/odoo_medallion.yaml",
    "pipelines/odoo/schema.sql",
)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "--no-build-isolation", "--wheel-dir", str(out), str(REPO)],
                   check=True, capture_output=True, text=True, timeout=300)
    (built,) = out.glob("lakehouse_control_room-*.whl")
    return built


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fresh") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True,
                   timeout=120)
    subprocess.run([sys.executable, "-m", "pip", "--python", str(root / "bin" / "python"),
                    "install", "--quiet", "--no-deps", str(wheel)],
                   check=True, capture_output=True, text=True, timeout=300)
    fresh_site = subprocess.run(
        [str(root / "bin" / "python"), "-c",
         "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True).stdout.strip()
    Path(fresh_site, "zz_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return root


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("CONTROL_ROOM_", "PYTHON", "VIRTUAL_ENV"))}
    env.update(extra)
    return env


def test_the_wheel_carries_the_package_data(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = [name for name in PACKAGE_DATA if name not in names]
    assert not missing, missing
    migrations = [n for n in names if n.startswith("control_room/db/migrations/")
                  and n.endswith(".sql")]
    expected = sorted(p.name for p in (REPO / "control_room" / "db" / "migrations").glob("*.sql"))
    assert sorted(Path(n).name for n in migrations) == expected
    assert not [n for n in names if n.startswith("tests/")]


def test_the_installed_package_comes_from_the_wheel(venv: Path, tmp_path: Path) -> None:
    done = subprocess.run(
        [str(venv / "bin" / "python"), "-c",
         "import control_room, executor, pipelines, json;"
         "print(json.dumps([m.__file__ for m in (control_room, executor, pipelines)]))"],
        cwd=tmp_path, env=_env(), capture_output=True, text=True, check=True)
    for path in json.loads(done.stdout):
        assert Path(path).is_relative_to(venv), path
        assert not Path(path).is_relative_to(REPO), path


@pytest.fixture
def stack(venv: Path, db_url: str, tmp_path: Path) -> Iterator[tuple[Path, dict[str, str]]]:
    """`control-room up` from the installed wheel, on a fresh database of the test server."""
    state = tmp_path / "state"
    env = _env(CONTROL_ROOM_DATABASE_URL=db_url, CONTROL_ROOM_STATE_DIR=str(state))
    proc = subprocess.Popen([str(venv / "bin" / "control-room"), "up", "--port",
                             str(free_port()), "--workers", "1"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        wait_for("the stack file",
                 lambda: (state / "stack.json").exists() or proc.poll() is not None, 120)
        assert proc.poll() is None, proc.communicate()[0]
        yield state, env
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()


def test_migrate_and_status_from_the_wheel(venv: Path, empty_db_url: str,
                                           tmp_path: Path) -> None:
    cli = str(venv / "bin" / "control-room")
    env = _env(CONTROL_ROOM_DATABASE_URL=empty_db_url)
    migrated = subprocess.run([cli, "migrate"], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=120)
    assert migrated.returncode == 0, migrated.stdout + migrated.stderr
    check = subprocess.run([cli, "migrate", "--check"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stdout + check.stderr


def test_up_and_a_run_of_the_shipped_example_from_the_wheel(
        venv: Path, stack: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    state, env = stack
    python = str(venv / "bin" / "python")
    spec = subprocess.run(
        [python, "-c",
         "from control_room.specs import example_spec; print(example_spec('example'))"],
        cwd=tmp_path, env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert Path(spec).is_relative_to(venv), spec
    created = subprocess.run(
        [str(venv / "bin" / "control-room"), "runs", "create", "--spec", spec,
         "--wait", "--json"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert created.returncode == 0, created.stdout + created.stderr
    run = json.loads(created.stdout)
    assert run["state"] == "succeeded", run
    assert (state / "lake" / run["workspace_id"] / "gold").is_dir()   # the workspace lake


@pytest.mark.timeout(420)
def test_the_demo_from_the_wheel(venv: Path, tmp_path: Path) -> None:
    """`control-room demo` as someone who pip-installed the wheel runs it: the embedded
    PostgreSQL, the Odoo generator, the medallion spec shipped in the package."""
    proc = subprocess.Popen(
        [str(venv / "bin" / "control-room"), "demo", "--state-dir", str(tmp_path / "state"),
         "--scale", "0.01", "--days", "5", "--json"],
        cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True)
    try:
        out, err = proc.communicate(timeout=360)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=60)
        raise AssertionError(f"the demo did not finish:\n{err[-3000:]}") from None
    assert proc.returncode == 0, err[-3000:]
    summary = json.loads(out)
    assert summary["state"] == "succeeded", summary
    assert Path(summary["lake"], "gold", "revenue", "_delta_log").is_dir()
    assert Path(summary["lake"]).is_relative_to(tmp_path)


def test_the_sdist_carries_the_sources_the_wheel_is_built_from(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    import tarfile

    out = tmp_path_factory.mktemp("sdist")
    subprocess.run([sys.executable, "-m", "hatchling", "build", "-t", "sdist", "-d", str(out)],
                   cwd=REPO, check=True, capture_output=True, text=True, timeout=300)
    (built,) = out.glob("lakehouse_control_room-*.tar.gz")
    with tarfile.open(built) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    missing = [name for name in (*PACKAGE_DATA, "pipelines/example.py", "pipelines/odoo/kpis.sql",
                                 "supabase/config.toml", "pyproject.toml", "README.md")
               if name not in names]
    assert not missing, missing
