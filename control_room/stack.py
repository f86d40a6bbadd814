"""The local stack file: what `control-room up` tells the other commands.

`up` writes `<state_dir>/stack.json` (mode 0600, it holds the operator's and the workers'
tokens) once its gateway answers; `runs`, `verify` and `demo` read it when no
`--gateway/--token/--workspace` is given. A stack file others may read is refused.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, SecretStr, ValidationError

from control_room.secretfile import read_secret_file, write_secret_file

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
        text = read_secret_file(path)
    except FileNotFoundError:
        return None
    try:
        return Stack.model_validate(json.loads(text))
    except (json.JSONDecodeError, ValidationError) as exc:
        raise StackFileError(f"{path} is not a stack file ({exc.__class__.__name__}); "
                             "run `control-room up` again") from None


def write_stack(state_dir: Path, stack: Stack) -> Path:
    """Write the stack file atomically, readable by its owner only (created 0600 with O_EXCL
    in the 0700 state directory, never through a symlink: control_room/secretfile.py)."""
    path = stack_path(state_dir)
    document = stack.model_dump(mode="json")
    document["token"] = stack.token.get_secret_value()
    if stack.executor_token is not None:
        document["executor_token"] = stack.executor_token.get_secret_value()
    write_secret_file(path, json.dumps(document, indent=2, sort_keys=True) + "\n")
    return path


def remove_stack(state_dir: Path) -> None:
    """Forget the stack (when `up` stops)."""
    stack_path(state_dir).unlink(missing_ok=True)
