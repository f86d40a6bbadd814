"""Settings in one place: every `CONTROL_ROOM_*` name the code reads is a settings field, every
CLI option with an environment variable sets a field and has its default, one variable read
by two classes has one default, and docs/settings.md is the generator's output."""

from __future__ import annotations

import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import typer.main
from pydantic import SecretStr
from pydantic_settings import BaseSettings

from control_room.cli import app
from control_room.cli.common import defaults
from control_room.cli.settings_doc import markdown, settings_classes
from control_room.settings import ClientSettings, Settings, StackSettings, env_var
from executor.settings import WorkerSettings

REPO = Path(__file__).resolve().parents[1]
# read by the tests and benchmarks only, never by the product: the admin URL of the tests'
# PostgreSQL, the Chromium build the browser tests and bench/ui.py drive (docs/testing.md)
TEST_ONLY = {"CONTROL_ROOM_TEST_ADMIN_URL", "CONTROL_ROOM_CHROMIUM"}


def _fields() -> dict[str, list[tuple[type[BaseSettings], str]]]:
    """variable -> the (class, field) pairs it sets."""
    found: dict[str, list[tuple[type[BaseSettings], str]]] = {}
    for cls, _ in settings_classes():
        for name in cls.model_fields:
            found.setdefault(env_var(name, cls), []).append((cls, name))
    return found


def _options() -> list[tuple[str, Any]]:
    """(command path, option) of every option of every command."""
    found: list[tuple[str, Any]] = []

    def walk(command: Any, path: str) -> None:
        for param in command.params:
            if param.param_type_name == "option":
                found.append((path, param))
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, f"{path} {name}".strip())

    walk(typer.main.get_command(app), "")
    return found


def test_every_control_room_name_in_the_code_is_a_setting() -> None:
    known = set(_fields()) | TEST_ONLY
    seen: dict[str, str] = {}
    files = [path for package in ("control_room", "executor", "pipelines", "bench", "tests")
             for path in (REPO / package).rglob("*.py") if path != Path(__file__)]
    files += [*(REPO / "docs").glob("*.md"), REPO / "README.md", REPO / "Dockerfile",
              REPO / "deploy" / "docker-compose.yml"]
    for path in files:
        for name in re.findall(r"CONTROL_ROOM_[A-Z][A-Z_]*[A-Z]", path.read_text()):
            seen.setdefault(name, str(path.relative_to(REPO)))
    unknown = {name: where for name, where in seen.items() if name not in known}
    assert len(seen) > 20, seen
    assert not unknown, unknown


def test_one_variable_has_one_default() -> None:
    shared = {var: pairs for var, pairs in _fields().items() if len(pairs) > 1}
    assert "CONTROL_ROOM_GATEWAY_URL" in shared and "CONTROL_ROOM_TOKEN" in shared
    for var, pairs in shared.items():
        values = {repr(cls.model_fields[name].default) for cls, name in pairs}
        assert len(values) == 1, (var, values)


def test_every_option_with_a_variable_sets_a_field_with_its_default() -> None:
    fields = _fields()
    checked = 0
    for path, option in _options():
        if option.envvar is None:
            continue
        assert isinstance(option.envvar, str), (path, option.name)
        assert option.envvar in fields, (path, option.name, option.envvar)
        cls, name = fields[option.envvar][0]
        info = cls.model_fields[name]
        default: Any = option.default
        if default is None:         # "not given": the field's default (or a computed one)
            checked += 1
            continue
        field_default = defaults(cls).__getattribute__(name)
        if isinstance(field_default, SecretStr):
            field_default = field_default.get_secret_value()
        assert default == field_default, (path, option.name, default, field_default)
        if info.default_factory is None:
            assert default == info.default
        checked += 1
    assert checked > 40


def test_worker_concurrency_is_one_default_for_worker_up_demo_and_verify() -> None:
    root: Any = typer.main.get_command(app)
    defaults_seen = {}
    for command in ("worker", "up", "demo", "verify"):
        [option] = [p for p in root.commands[command].params
                    if p.param_type_name == "option" and "--concurrency" in p.opts]
        assert option.envvar == "CONTROL_ROOM_WORKER_CONCURRENCY"
        defaults_seen[command] = option.default
    assert set(defaults_seen.values()) == {WorkerSettings.model_fields["concurrency"].default}


def test_aliased_fields_read_their_variable_and_take_keywords(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONTROL_ROOM_WORKER_KINDS", "sql")
    monkeypatch.setenv("CONTROL_ROOM_KINDS", "python")        # not a variable of ours
    monkeypatch.setenv("CONTROL_ROOM_PYTHON_SPARES", "0")
    from_env = WorkerSettings()
    assert (from_env.kinds, from_env.python_spares) == ("sql", 0)
    assert WorkerSettings(kinds="python", concurrency=3).concurrency == 3
    with pytest.raises(ValueError, match="concurrency"):
        WorkerSettings(concurrency=0)


def test_the_test_clock_is_not_a_setting() -> None:
    for cls in (Settings, ClientSettings, StackSettings, WorkerSettings):
        assert not any("clock" in name for name in cls.model_fields)


def test_docs_settings_md_is_the_generators_output() -> None:
    committed = (REPO / "docs" / "settings.md").read_text()
    assert committed == markdown(), (
        "docs/settings.md is stale: python -m control_room.cli.settings_doc > docs/settings.md")
    for var in _fields():
        assert f"`{var}`" in committed
    done = subprocess.run([sys.executable, "-m", "control_room.cli.settings_doc"],
                          capture_output=True, text=True, timeout=60, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert done.stdout == committed


def test_executor_settings_import_only_pydantic_and_the_standard_library() -> None:
    probe = ("import sys; before = set(sys.modules); import executor.settings; "
             "print(sorted(m for m in set(sys.modules) - before if m.split('.')[0] in "
             "('control_room', 'executor', 'pipelines', 'httpx', 'psycopg', 'typer')))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          timeout=60, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['executor', 'executor.settings']"


def test_the_test_clock_header_counts_only_when_the_app_factory_is_told() -> None:
    from starlette.requests import Request

    from control_room.gateway.app import Gateway

    settings = Settings()
    request = Request({"type": "http", "headers": [
        (b"x-control-room-now", b"2030-01-01T00:00:00+00:00")]})
    seen: dict[bool, datetime | None] = {}
    for test_clock in (False, True):
        gateway = Gateway(settings, database_url="postgresql://127.0.0.1:1/none",
                          jwt_secret="s" * 40, contract_file=settings.contract_file,
                          test_clock=test_clock)
        seen[test_clock] = gateway._clock(request)
    assert seen[False] is None
    assert seen[True] == datetime(2030, 1, 1, tzinfo=UTC)
