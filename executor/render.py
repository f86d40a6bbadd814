"""Templates in phase params and connection fields (`${params.NAME}`, `${run.id}`...), rendered
by the worker just before a phase; the spec loader checks them with `references`. The rules:
docs/kinds.md ("Templates").
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from executor.errors import TerminalPhaseError

__all__ = ["RUN_FIELDS", "Reference", "TemplateError", "references", "render"]

RUN_FIELDS: tuple[str, ...] = ("id", "git_sha", "spec_slug", "lake")
"""The `${run.X}` names a template may use."""

_REFERENCE = re.compile(r"^(?:params\.([A-Za-z_][A-Za-z0-9_-]*)|run\.([a-z_]+))$")


class TemplateError(TerminalPhaseError, ValueError):
    """A template names something unknown or is malformed. `name` is the reference as written
    (`params.lake`), `path` where it is (a JSON path)."""

    def __init__(self, message: str, *, name: str, path: str) -> None:
        super().__init__(message, error_type="TemplateError")
        self.name = name
        self.path = path


@dataclass(frozen=True)
class Reference:
    """One `${...}` in a value: `scope` is `params` or `run`, `name` the name within it."""

    scope: str
    name: str
    path: str
    """Where it is: a JSON path into the value (`args.lake`, `inputs[0]`; `` for the root)."""

    @property
    def text(self) -> str:
        return f"{self.scope}.{self.name}"


@dataclass(frozen=True)
class _Literal:
    text: str


_Part = _Literal | Reference


def _child(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def _where(path: str) -> str:
    return f" at {path}" if path else ""


def _parse(text: str, path: str) -> list[_Part]:
    """`text` as literal pieces and references, in order."""
    parts: list[_Part] = []
    literal: list[str] = []
    i = 0
    while True:
        j = text.find("$", i)
        if j < 0:
            literal.append(text[i:])
            break
        literal.append(text[i:j])
        if text.startswith("$${", j):
            literal.append("${")
            i = j + 3
            continue
        if not text.startswith("${", j):
            literal.append("$")
            i = j + 1
            continue
        end = text.find("}", j + 2)
        if end < 0:
            raise TemplateError(f"template {text[j:]!r}{_where(path)} has no closing '}}' "
                                "(write $${ for a literal ${)", name=text[j + 2:], path=path)
        inner = text[j + 2:end]
        match = _REFERENCE.match(inner)
        if match is None:
            raise TemplateError(
                f"unknown template name {inner!r}{_where(path)}: use params.NAME or "
                f"run.{{{','.join(RUN_FIELDS)}}}", name=inner, path=path)
        if match.group(1) is not None:
            reference = Reference("params", match.group(1), path)
        else:
            reference = Reference("run", match.group(2), path)
            if reference.name not in RUN_FIELDS:
                raise TemplateError(
                    f"unknown template name {inner!r}{_where(path)}: the run's fields are "
                    f"{', '.join('run.' + f for f in RUN_FIELDS)}", name=inner, path=path)
        if "".join(literal):
            parts.append(_Literal("".join(literal)))
        literal = []
        parts.append(reference)
        i = end + 1
    tail = "".join(literal)
    if tail or not parts:
        parts.append(_Literal(tail))
    return parts


def _walk(value: Any, path: str) -> Iterator[tuple[str, str]]:
    """Every string in `value` with its path."""
    if isinstance(value, str):
        yield value, path
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from _walk(item, _child(path, str(key)))
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            yield from _walk(item, _child(path, index))


def references(value: Any, *, path: str = "") -> list[Reference]:
    """Every `${...}` reference in `value`'s strings, in order (a `TemplateError` for a
    malformed one or a name outside `params.*` / `run.*`). `path` prefixes the paths."""
    found: list[Reference] = []
    for text, where in _walk(value, path):
        found += [part for part in _parse(text, where) if isinstance(part, Reference)]
    return found


def _lookup(reference: Reference, params: Mapping[str, Any], run: Mapping[str, Any]) -> Any:
    source = params if reference.scope == "params" else run
    if reference.name not in source:
        known = ", ".join(sorted(str(k) for k in source)) or "none"
        raise TemplateError(
            f"unknown template name {reference.text!r}{_where(reference.path)} "
            f"(the run's {reference.scope}: {known})", name=reference.text, path=reference.path)
    return source[reference.name]


def _as_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def _render_string(text: str, path: str, params: Mapping[str, Any],
                   run: Mapping[str, Any]) -> Any:
    parts = _parse(text, path)
    if len(parts) == 1 and isinstance(parts[0], Reference):
        return copy.deepcopy(_lookup(parts[0], params, run))
    return "".join(part.text if isinstance(part, _Literal) else
                   _as_text(_lookup(part, params, run)) for part in parts)


def render(value: Any, *, params: Mapping[str, Any], run: Mapping[str, Any],
           path: str = "") -> Any:
    """`value` with every template rendered (a new value; `value` is left as it is).

    `params` are the run's params (`input_manifest["params"]`), `run` its fields (`id`,
    `git_sha`, `spec_slug`). `path` prefixes the paths in error messages."""
    if isinstance(value, str):
        return _render_string(value, path, params, run)
    if isinstance(value, Mapping):
        return {key: render(item, params=params, run=run, path=_child(path, str(key)))
                for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [render(item, params=params, run=run, path=_child(path, index))
                for index, item in enumerate(value)]
    return value
