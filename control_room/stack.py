"""The local stack file: what `control-room up` tells the other commands.

`up` writes `<state_dir>/stack.json` (mode 0600, it holds a service token) once its gateway
answers; `runs`, `verify` and `demo` read it when no `--gateway/--token/--workspace` is given.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, SecretStr, ValidationError

STACK_FILE = "stack.json"


class Stack(BaseModel):
    """A running local stack: where its gateway listens and how to talk to it."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    gateway_url: str
    token: SecretStr
    """The operator's (workspace admin): creates, cancels and retries runs."""
    executor_token: SecretStr | None = None
    """The local workers' (executor role): what `verify` claims its rebuild with."""
    workspace_id: str
    workspace_slug: str
    lake: Path
    artifacts: Path
    ui_url: str


class StackFileError(ValueError):
    """The stack file exists but cannot be read as a stack."""


def stack_path(state_dir: Path) -> Path:
    return state_dir / STACK_FILE


def load_stack(state_dir: Path) -> Stack | None:
    """The stack described under `state_dir`, or None when `up` never wrote one."""
    path = stack_path(state_dir)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        return Stack.model_validate(json.loads(text))
    except (json.JSONDecodeError, ValidationError) as exc:
        raise StackFileError(f"{path} is not a stack file ({exc.__class__.__name__}); "
                             "run `control-room up` again") from None


def write_stack(state_dir: Path, stack: Stack) -> Path:
    """Write the stack file atomically, readable by its owner only."""
    path = stack_path(state_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    document = stack.model_dump(mode="json")
    document["token"] = stack.token.get_secret_value()
    if stack.executor_token is not None:
        document["executor_token"] = stack.executor_token.get_secret_value()
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(document, handle, indent=2, sort_keys=True)
        handle.write("\n")
    os.replace(tmp, path)
    return path


def remove_stack(state_dir: Path) -> None:
    """Forget the stack (when `up` stops)."""
    stack_path(state_dir).unlink(missing_ok=True)
