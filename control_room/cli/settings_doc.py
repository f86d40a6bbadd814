"""docs/settings.md, generated: every settings class and its variables
(`python -m control_room.cli.settings_doc > docs/settings.md`; a test keeps the file equal)."""

from __future__ import annotations

from pydantic_settings import BaseSettings

from control_room.settings import ClientSettings, Settings, StackSettings, env_var
from executor.settings import WorkerSettings


def settings_classes() -> list[tuple[type[BaseSettings], str]]:
    """Every settings class and the commands that read it (docs/settings.md)."""
    return [
        (Settings, "migrate, status, serve, up, demo, workspace, token"),
        (ClientSettings, "runs, datasets, verify"),
        (WorkerSettings, "worker, up (its workers), verify (its in-process worker)"),
        (StackSettings, "up, demo"),
    ]


def _default_text(cls: type[BaseSettings], field: str) -> str:
    info = cls.model_fields[field]
    if info.default_factory is not None:
        doc = (info.default_factory.__doc__ or "").strip().splitlines()
        return doc[0].rstrip(".") if doc else "computed"
    value = info.default
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    return f"`{value}`"


def markdown() -> str:
    """docs/settings.md: one row per variable (a test keeps the file equal to this)."""
    lines = [
        "# Settings",
        "",
        "Every `CONTROL_ROOM_*` environment variable, generated from the settings classes",
        "(`control_room/settings.py`, `executor/settings.py`) by",
        "`python -m control_room.cli.settings_doc > docs/settings.md`; a test keeps this file",
        "equal to its output. A command-line option that sets the same value names its",
        "variable in `--help` and has the same default; an option given wins over the",
        "variable. One variable read by two classes has one default.",
        "`CONTROL_ROOM_TEST_ADMIN_URL` (the tests' PostgreSQL server) is read by the tests only.",
        "",
        "| variable | default | read by | description |",
        "|---|---|---|---|",
    ]
    for cls, commands in settings_classes():
        for field, info in cls.model_fields.items():
            description = " ".join((info.description or "").split()).replace("|", "\\|")
            lines.append(f"| `{env_var(field, cls)}` | {_default_text(cls, field)} | "
                         f"`{cls.__name__}`: {commands} | {description} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(markdown(), end="")
