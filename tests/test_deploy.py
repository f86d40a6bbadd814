"""The deployment files users copy: every CLI command and option the compose file gives
exists, and everything the Dockerfile copies is in the repo (nothing here can build images)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import typer.main
import yaml

from control_room.cli import app
from control_room.cli.settings_doc import settings_classes
from control_room.settings import env_var

REPO = Path(__file__).resolve().parents[1]


def test_compose_commands_are_real_cli_commands() -> None:
    compose = yaml.safe_load((REPO / "deploy" / "docker-compose.yml").read_text())
    root: Any = typer.main.get_command(app)
    commands = {name: svc["command"] for name, svc in compose["services"].items()
                if "command" in svc and svc.get("build")}
    assert sorted(commands) == ["gateway", "migrate", "worker"]
    for service, argv in commands.items():
        sub = root.get_command(root.make_context("control-room", [argv[0]]), argv[0])
        assert sub is not None, f"{service}: no command {argv[0]!r}"
        # parsing fails on an unknown option or a bad value
        sub.make_context(argv[0], list(argv[1:]), resilient_parsing=False)


def test_compose_env_vars_are_settings_the_code_reads() -> None:
    compose = (REPO / "deploy" / "docker-compose.yml").read_text()
    known = {env_var(field, cls) for cls, _ in settings_classes() for field in cls.model_fields}
    used = set(re.findall(r"(CONTROL_ROOM_[A-Z_]+)", compose))
    used |= set(re.findall(r"(CONTROL_ROOM_[A-Z_]+)=", (REPO / "Dockerfile").read_text()))
    assert {"CONTROL_ROOM_DATABASE_URL", "CONTROL_ROOM_TOKEN"} <= used
    assert used <= known, used - known


def test_dockerfile_copies_paths_that_exist() -> None:
    text = (REPO / "Dockerfile").read_text()
    sources = [line.split()[1] for line in text.splitlines()
               if line.startswith("COPY ") and "--from" not in line]
    assert "pyproject.toml" in sources
    for source in sources:
        assert (REPO / source).exists(), source
