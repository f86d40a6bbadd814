"""The tools' descriptions, read from the contract's own text (`openapi.yaml` in the package).

Each MCP tool that calls a contract operation is described by that operation's `summary` and
`description`, read when the server starts: the OpenAPI file stays the one copy of the text
(the client's docstrings and docs/contract.md say it more briefly, for other readers).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import yaml


@dataclass(frozen=True)
class Operation:
    """One operation of the contract: its id, one-line summary, longer description, roles."""

    operation_id: str
    summary: str
    description: str
    roles: tuple[str, ...]

    def text(self) -> str:
        """The summary, then the description (as the contract words them)."""
        body = self.description.strip()
        return f"{self.summary.strip()}\n\n{body}" if body else self.summary.strip()


@cache
def operations() -> dict[str, Operation]:
    """Every operation of the packaged `openapi.yaml`, by operationId."""
    text = resources.files("control_room.contract").joinpath("openapi.yaml").read_text("utf-8")
    loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    document = yaml.load(text, Loader=loader)  # a safe loader
    found: dict[str, Operation] = {}
    for item in (document.get("paths") or {}).values():
        for operation in (item or {}).values():
            if not isinstance(operation, dict) or "operationId" not in operation:
                continue
            op_id = str(operation["operationId"])
            found[op_id] = Operation(op_id, str(operation.get("summary") or ""),
                                     str(operation.get("description") or ""),
                                     tuple(str(r) for r in operation.get("x-roles") or ()))
    return found


def describe(operation_id: str, note: str | None = None, *, lead: str | None = None) -> str:
    """The tool description of contract operation `operation_id` (KeyError when the contract
    has none: a tool never names an operation the contract lacks), with the tool's own `note`
    (what it adds, or how it calls the operation) after it, or its `lead` before it (a tool
    that does more than the one call)."""
    text = operations()[operation_id].text()
    if lead:
        text = f"{lead.strip()}\n\nEach read is {operation_id}: {text}"
    return f"{text}\n\n{note.strip()}" if note else text
