"""Run specs: a YAML file naming a pipeline's params and DAG of phases (and, by name, the
workspace connections each phase uses), turned into the arguments of `create_run`
(docs/specs.md).

Loading a spec is three steps, and every problem found is reported, not just the first, each
naming the file, the line and the field (`specs/x.yaml:12: phases[2].depends_on[0]: unknown
phase 'silverr' (phases: extract, silver, gold)`):

1. YAML, composed into nodes so that every value keeps its line (PyYAML's safe loader, with
   dates left as strings and duplicate keys refused);
2. the JSON Schema `specs/spec.schema.json` (Draft 2020-12): shapes, names and types;
3. what a schema cannot say: phase names unique, dependencies known and acyclic, every
   `${params.X}` declared, kinds registered (`executor.kinds.registry.KINDS`), each phase's
   params valid against its kind's params schema (`params.schema.json` beside the kind,
   generated from its pydantic model and read without importing the kind; a string that is
   exactly one template stands for a value of its param's declared type), durations and
   limits, no inline `connections:` block (connections are registered in the workspace with
   `control-room connections create`; a phase names them, the worker resolves them).

Templates are checked here but stored unrendered: the worker renders them with the run's
params just before a phase runs (`executor.render`), so that a run's phases say what they
mean and a retry or verify can point them elsewhere by changing only the run's params.

A spec is read at a git sha (`git show SHA:path`), so that a run records exactly the spec it
ran; without one, at HEAD when the file is clean in git, else the working file: the run then
records HEAD's sha with `dirty: true` in its spec manifest and the label `git_dirty=true`
(outside git: git's null sha, 40 zeros, and the label `code_version=local`), because a run's
git_sha must be a commit (the contract refuses anything else) and a dirty run must say so.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import blake3
import yaml
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError, best_match

from executor.kinds.registry import KINDS, params_schema  # no kind is imported
from executor.render import TemplateError, references

__all__ = [
    "SCHEMA_FILE",
    "LoadedSpec",
    "Param",
    "ParamType",
    "PhaseDef",
    "Spec",
    "SpecError",
    "SpecIssue",
    "load_spec",
    "parse_duration",
]

SCHEMA_FILE = Path(str(resources.files("control_room.specs").joinpath("spec.schema.json")))

ParamType = Literal["string", "path", "integer", "number", "boolean"]
Scalar = str | int | float | bool
Key = str | int
FieldPath = tuple[Key, ...]

# What a phase gets when neither it nor the spec's `defaults` say (the contract's defaults).
DEFAULT_RETRIES = 2
DEFAULT_TIMEOUT = 3600
DEFAULT_RETRY_BACKOFF = 10
MAX_TIMEOUT = 604_800
MAX_RETRY_BACKOFF = 86_400

_DURATION = re.compile(r"^\s*([0-9]+)\s*([smhd]?)\s*$")
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_CONNECTION_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
CONNECTION_NAME_HINT = ("1-63 lower-case letters, digits or '_', starting with a letter; no "
                        "templates")
_TRUE = frozenset({"true", "yes", "on", "1"})
_FALSE = frozenset({"false", "no", "off", "0"})
_PATTERN_HINTS = {
    "^[a-z0-9][a-z0-9_-]{0,63}$": "a name: 1-64 lower-case letters, digits, '_' or '-', "
                                  "starting with a letter or digit",
    "^[a-z][a-z0-9_]{0,63}$": "an identifier: 1-64 lower-case letters, digits or '_', "
                              "starting with a letter",
    "^[a-z][a-z0-9_]{0,62}$": "a connection name: 1-63 lower-case letters, digits or '_', "
                              "starting with a letter (no templates)",
    "^[A-Za-z_][A-Za-z0-9_]{0,63}$": "an identifier: 1-64 letters, digits or '_', not "
                                     "starting with a digit",
    ("^[A-Za-z_][A-Za-z0-9_]*(\\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*"
     "(\\.[A-Za-z_][A-Za-z0-9_]*)*$"): "an entrypoint 'package.module:function'",
    "^[A-Za-z_][A-Za-z0-9_]*$": "an identifier: letters, digits or '_', not starting with "
                                "a digit",
}


# ----------------------------------------------------------------------------------- errors


@dataclass(frozen=True)
class SpecIssue:
    """One problem: where (file, line, field path) and what."""

    message: str
    file: str | None = None
    line: int | None = None
    field: str | None = None

    def __str__(self) -> str:
        where = ":".join(part for part in (self.file, str(self.line) if self.line else None)
                         if part)
        prefix = f"{where}: " if where else ""
        return f"{prefix}{self.field}: {self.message}" if self.field else prefix + self.message


class SpecError(ValueError):
    """A spec, or the params given for a run of it, cannot be used: every problem found."""

    def __init__(self, issues: list[SpecIssue]) -> None:
        self.issues = sorted(issues, key=lambda i: (i.file or "", i.line or 0))
        super().__init__("\n".join(str(issue) for issue in self.issues))


def format_path(path: FieldPath) -> str:
    """`phases[2].depends_on[0]`: the field path as the messages write it."""
    text = ""
    for key in path:
        if isinstance(key, int):
            text += f"[{key}]"
        elif re.fullmatch(r"[A-Za-z0-9_-]+", key):
            text += f".{key}" if text else key
        else:
            text += f"[{json.dumps(key)}]"
    return text or "(top level)"


class _Issues:
    """Problems of one file, with the line of each field path."""

    def __init__(self, file: str, lines: Mapping[FieldPath, int]) -> None:
        self.file = file
        self.lines = lines
        self.found: list[SpecIssue] = []

    def line(self, path: FieldPath) -> int:
        """The line of `path`, or of its nearest ancestor that has one."""
        for end in range(len(path), -1, -1):
            if path[:end] in self.lines:
                return self.lines[path[:end]]
        return 1

    def add(self, path: FieldPath, message: str) -> None:
        self.found.append(SpecIssue(message, self.file, self.line(path), format_path(path)))

    def raise_any(self) -> None:
        if self.found:
            raise SpecError(self.found)


# ------------------------------------------------------------------------------------- YAML


class _SpecLoader(yaml.SafeLoader):
    """The safe loader without implicit timestamps: `as_of: 2026-01-31` is a string, as JSON
    (and a run's params) can hold it."""


_SpecLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _parse_yaml(text: str, file: str) -> tuple[Any, dict[FieldPath, int]]:
    """The document as JSON values, and the line of every field path (1-based)."""
    loader = _SpecLoader(text)
    try:
        node = loader.get_single_node()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        problem = " ".join(part for part in (exc.context, exc.problem) if part)
        raise SpecError([SpecIssue(f"not valid YAML: {problem}", file, line)]) from None
    except yaml.YAMLError as exc:
        raise SpecError([SpecIssue(f"not valid YAML: {exc}", file)]) from None
    finally:
        loader.dispose()
    if node is None:
        raise SpecError([SpecIssue("the spec is empty", file, 1)])
    lines: dict[FieldPath, int] = {}
    issues = _Issues(file, lines)
    value = _convert(loader, node, (), lines, issues, frozenset())
    issues.raise_any()
    return value, lines


def _convert(loader: _SpecLoader, node: yaml.Node, path: FieldPath,
             lines: dict[FieldPath, int], issues: _Issues, parents: frozenset[int]) -> Any:
    lines.setdefault(path, node.start_mark.line + 1)
    if id(node) in parents:
        issues.add(path, "a recursive YAML alias cannot be a JSON value")
        return None
    if isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)        # `<<: *anchor` merge keys
        mapping: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            if not isinstance(key, str):
                key = str(key)  # a number or a boolean as key: the schema names it
            child = (*path, key)
            lines[child] = key_node.start_mark.line + 1
            if key in mapping:
                issues.add(child, f"duplicate key {key!r}")
                continue
            mapping[key] = _convert(loader, value_node, child, lines, issues,
                                    parents | {id(node)})
        return mapping
    if isinstance(node, yaml.SequenceNode):
        return [_convert(loader, item, (*path, index), lines, issues, parents | {id(node)})
                for index, item in enumerate(node.value)]
    scalar = loader.construct_object(node, deep=True)
    if isinstance(scalar, float) and not math.isfinite(scalar):
        issues.add(path, f"{node.value!r} is not a finite number")
        return None
    if scalar is not None and not isinstance(scalar, str | int | float | bool):
        issues.add(path, f"unsupported YAML value of tag {node.tag} (use JSON types)")
        return None
    return scalar


# ----------------------------------------------------------------------------------- schema


@cache
def _validator() -> Draft202012Validator:
    schema = json.loads(SCHEMA_FILE.read_text())
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def _schema_issues(document: Any, issues: _Issues) -> None:
    for error in _validator().iter_errors(document):
        path: FieldPath = tuple(error.absolute_path)
        for where, message in _describe(error):
            issues.add((*path, *where), message)


def _short(value: Any, limit: int = 60) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    return {float: "number", str: "string", list: "array", dict: "object"}.get(
        type(value), type(value).__name__)


def _describe(error: ValidationError) -> list[tuple[FieldPath, str]]:
    """(sub-path, message) for a schema error, worded for someone editing YAML."""
    schema: Any = error.schema
    instance = error.instance
    if "propertyNames" in error.absolute_schema_path and isinstance(instance, str):
        hint = _PATTERN_HINTS.get(str(error.validator_value), str(error.message))
        return [((instance,), f"invalid name {instance!r}: {hint}")]
    if error.validator == "additionalProperties" and isinstance(instance, dict):
        allowed = sorted(schema.get("properties", {}))
        extras = [key for key in instance if key not in allowed]
        hint = f" (allowed: {', '.join(allowed)})" if allowed else ""
        return [((key,), f"unknown field{hint}") for key in extras]
    if error.validator == "required":
        missing = str(error.message).split("'")[1] if "'" in error.message else "?"
        return [((), f"missing required field {missing!r}")]
    if error.validator == "type":
        wanted = schema.get("type")
        names = " or ".join(wanted) if isinstance(wanted, list) else str(wanted)
        return [((), f"must be {names}, not {_json_type(instance)} {_short(instance)}")]
    if error.validator == "pattern":
        hint = _PATTERN_HINTS.get(str(error.validator_value), f"matching {error.validator_value}")
        return [((), f"{_short(instance)} is not {hint}")]
    if error.validator == "const":
        return [((), f"must be {_short(error.validator_value)}, not {_short(instance)}")]
    if error.validator == "enum":
        choices: Any = error.validator_value
        options = ", ".join(str(v) for v in choices)
        return [((), f"{_short(instance)} is not one of: {options}")]
    if error.validator in ("oneOf", "anyOf"):
        branches: Any = error.validator_value
        required = [b.get("required") for b in branches if isinstance(b, dict)]
        if required and all(isinstance(r, list) and len(r) == 1 and set(b) == {"required"}
                            for r, b in zip(required, branches, strict=True)):
            keys = ", ".join(repr(r[0]) for r in required if isinstance(r, list))
            return [((), f"needs exactly one of {keys}")]
        # `X | None`: say what the non-null branch wants
        others = [e for e in error.context or ()
                  if not (e.validator == "type" and e.validator_value == "null")]
        if others:
            best = best_match(others)
            if best is not None:
                return [(tuple(best.relative_path), message)
                        for _, message in _describe(best)]
    if error.validator == "not" and isinstance(instance, dict):
        refused: Any = error.validator_value
        forbidden = refused.get("required") if isinstance(refused, dict) else None
        if isinstance(forbidden, list) and forbidden:
            trail = list(error.absolute_schema_path)
            given = (f" with {trail[trail.index('dependentSchemas') + 1]!r}"
                     if "dependentSchemas" in trail[:-1] else " here")
            return [((forbidden[0],), f"not allowed{given}")]
    if error.validator == "dependentRequired" and isinstance(instance, dict):
        needs: Any = error.validator_value
        return [((), f"{key!r} needs {', '.join(repr(n) for n in needs[key])}")
                for key in needs if key in instance
                and any(n not in instance for n in needs[key])]
    return [((), str(error.message))]


@cache
def _kind_validator(kind: str) -> Draft202012Validator | None:
    """The validator of kind `kind`'s params (its package's params.schema.json, read without
    importing the kind), or None when the kind publishes none."""
    schema = params_schema(kind)
    if schema is None:
        return None
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


_WHOLE_TEMPLATE = re.compile(r"^\$\{(params|run)\.([A-Za-z_][A-Za-z0-9_-]*)\}$")
_SAMPLE: dict[str, Scalar] = {"string": "x", "path": "/x", "integer": 0, "number": 0,
                              "boolean": False}


def _stand_ins(value: Any, params: Mapping[str, Param]) -> Any:
    """`value` with every string that is exactly one template replaced by a value of the
    type it will have when rendered (a param's default, else a sample of its declared type;
    `${run.X}` a string), so that kind params are type-checked before any run. Text with
    templates inside stays text, as it will."""
    if isinstance(value, str):
        match = _WHOLE_TEMPLATE.match(value)
        if match is None:
            return value
        scope, name = match.groups()
        if scope == "run":
            return "/x" if name == "lake" else "x"
        param = params.get(name)
        if param is None:           # reported by _check_templates
            return value
        return param.default if param.default is not None else _SAMPLE[param.type]
    if isinstance(value, dict):
        return {key: _stand_ins(item, params) for key, item in value.items()}
    if isinstance(value, list):
        return [_stand_ins(item, params) for item in value]
    return value


def _check_kind_params(kind: str, kind_params: dict[str, Any], raw: dict[str, Any],
                       at: FieldPath, params: Mapping[str, Param], issues: _Issues) -> None:
    """The phase's params (with `inputs` and `connections` merged in) against its kind's
    params schema: each problem at the field the spec wrote (`phases[i].params.x`, or
    `phases[i].inputs.x` for a phase-level input)."""
    validator = _kind_validator(kind)
    if validator is None:
        return
    # the connections' names are checked above (literal names, no templates)
    document = {k: v for k, v in kind_params.items() if k != "connections"}
    for error in validator.iter_errors(_stand_ins(document, params)):
        for where, message in _describe(error):
            path: FieldPath = (*error.absolute_path, *where)
            if path and path[0] in ("inputs", "connections") and path[0] in raw:
                issues.add((*at, *path), message)
            else:
                issues.add((*at, "params", *path), message)


# ------------------------------------------------------------------------------------ model


@dataclass(frozen=True)
class Param:
    """A run parameter; `required` when it has no default."""

    name: str
    type: ParamType
    default: Scalar | None
    required: bool
    description: str | None = None


@dataclass(frozen=True)
class PhaseDef:
    """One phase of the spec, with its retries, timeout and backoff resolved to numbers."""

    name: str
    kind: str
    depends_on: tuple[str, ...]
    max_attempts: int
    timeout_seconds: int
    retry_backoff_seconds: int
    retry_backoff_max_seconds: int | None
    params: dict[str, Any]
    """The kind's params as in the spec, with `inputs` and `connections` merged in
    (templates unrendered)."""
    description: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The phase as `create_run` takes it."""
        phase: dict[str, Any] = {
            "name": self.name, "kind": self.kind, "params": self.params,
            "depends_on": list(self.depends_on), "max_attempts": self.max_attempts,
            "timeout_seconds": self.timeout_seconds,
            "retry_backoff_seconds": self.retry_backoff_seconds,
        }
        if self.retry_backoff_max_seconds is not None:
            phase["retry_backoff_max_seconds"] = self.retry_backoff_max_seconds
        return phase


@dataclass(frozen=True)
class Spec:
    version: int
    slug: str
    description: str | None
    params: dict[str, Param]
    phases: tuple[PhaseDef, ...]

    @property
    def connections(self) -> list[str]:
        """The workspace connections the phases name, in order of first use."""
        return list(dict.fromkeys(name for phase in self.phases
                                  for name in phase.params.get("connections", [])))


def parse_duration(value: int | str) -> int | None:
    """Seconds of `30`, `"30s"`, `"10m"`, `"2h"`, `"1d"`; None when it is not a duration."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 0 else None
    match = _DURATION.match(value)
    if match is None:
        return None
    return int(match.group(1)) * _DURATION_UNITS[match.group(2)]


# ---------------------------------------------------------------------------------- checks


def _check(document: dict[str, Any], issues: _Issues) -> Spec:
    """What the schema cannot check; builds the spec (its parts are valid only when no issue
    was added)."""
    params = _check_params(document.get("params") or {}, issues)
    defaults = document.get("defaults") or {}
    raw_phases: list[dict[str, Any]] = document["phases"]
    names = _check_names(raw_phases, issues)
    phases = tuple(
        _check_phase(index, raw, defaults, names, params, issues)
        for index, raw in enumerate(raw_phases))
    _check_cycles(phases, issues)
    return Spec(version=document["version"], slug=document["slug"],
                description=document.get("description"), params=params, phases=phases)


def _check_params(raw: dict[str, dict[str, Any]], issues: _Issues) -> dict[str, Param]:
    params: dict[str, Param] = {}
    for name, declared in raw.items():
        kind: ParamType = declared["type"]
        has_default = "default" in declared
        default = declared.get("default")
        if has_default:
            problem = _type_problem(kind, default)
            if problem is not None:
                issues.add(("params", name, "default"), problem)
        params[name] = Param(name, kind, default, not has_default, declared.get("description"))
    return params


def _type_problem(kind: ParamType, value: Any) -> str | None:
    """Why `value` is not of param type `kind`, or None when it is."""
    ok = {
        "string": isinstance(value, str),
        "path": isinstance(value, str) and value != "",
        "integer": isinstance(value, int) and not isinstance(value, bool),
        "number": isinstance(value, int | float) and not isinstance(value, bool),
        "boolean": isinstance(value, bool),
    }[kind]
    if ok:
        return None
    return f"{_short(value)} is not a{'n' if kind == 'integer' else ''} {kind}"


INLINE_CONNECTIONS = (
    "connections are no longer declared in a spec: register each in the workspace with "
    "`control-room connections create NAME --workspace W --type TYPE --config KEY=VALUE "
    "--secret FIELD=env:NAME` (docs/cli.md), remove this block, and name them in the phases "
    "that use them (`connections: [NAME]`)")


def _inline_connections(document: dict[str, Any], issues: _Issues) -> None:
    """The old top-level `connections:` block is an error naming its line (and is left out
    of the schema check, which would only call it an unknown field)."""
    if "connections" in document:
        document.pop("connections")
        issues.add(("connections",), INLINE_CONNECTIONS)


def _check_connection_names(names: Any, path: FieldPath, issues: _Issues) -> None:
    """A phase's `params.connections`: literal connection names (a run cannot redirect a
    phase to another connection)."""
    if not isinstance(names, list):
        issues.add(path, f"must be a list of connection names, not {_json_type(names)}")
        return
    for position, name in enumerate(names):
        if not isinstance(name, str) or not _CONNECTION_NAME.match(name):
            issues.add((*path, position), f"{_short(name)} is not a connection name "
                                          f"({CONNECTION_NAME_HINT})")


def _check_templates(value: Any, path: FieldPath, params: Mapping[str, Param],
                     issues: _Issues) -> None:
    """Every template in `value`'s strings is well formed (`references` refuses a malformed
    one and a run field outside RUN_FIELDS) and names a declared param."""
    for text, where in _strings(value, path):
        try:
            found = references(text)
        except TemplateError as exc:
            issues.add(where, exc.message)
            continue
        for reference in found:
            if reference.scope == "params" and reference.name not in params:
                known = ", ".join(params) or "none declared"
                issues.add(where, f"unknown param {reference.name!r} in "
                                  f"'${{{reference.text}}}' (params: {known})")


def _strings(value: Any, path: FieldPath) -> Iterator[tuple[str, FieldPath]]:
    if isinstance(value, str):
        yield value, path
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _strings(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _strings(item, (*path, index))


def _check_names(phases: list[dict[str, Any]], issues: _Issues) -> list[str]:
    first: dict[str, int] = {}
    for index, phase in enumerate(phases):
        name = phase["name"]
        if name in first:
            issues.add(("phases", index, "name"),
                       f"duplicate phase name {name!r} (also phases[{first[name]}], line "
                       f"{issues.line(('phases', first[name], 'name'))})")
        else:
            first[name] = index
    return list(first)


def _seconds(value: int | str, path: FieldPath, low: int, high: int,
             issues: _Issues) -> int | None:
    seconds = parse_duration(value)
    if seconds is None:
        issues.add(path, f"{_short(value)} is not a duration: seconds, or a number followed "
                         "by s, m, h or d (30s, 10m, 2h)")
    elif not low <= seconds <= high:
        issues.add(path, f"{_short(value)} is {seconds} s: must be within {low}..{high} s")
    else:
        return seconds
    return None


def _check_phase(index: int, raw: dict[str, Any], defaults: dict[str, Any], names: list[str],
                 params: dict[str, Param], issues: _Issues) -> PhaseDef:
    at: FieldPath = ("phases", index)
    name: str = raw["name"]

    def setting(key: str, fallback: int | str) -> tuple[int | str, FieldPath]:
        if key in raw:
            return raw[key], (*at, key)
        if key in defaults:
            return defaults[key], ("defaults", key)
        return fallback, (*at, key)

    known_kind = raw["kind"] in KINDS
    if not known_kind:
        issues.add((*at, "kind"), f"unknown kind {raw['kind']!r} (kinds: "
                                  f"{', '.join(sorted(KINDS))})")
    depends_on: list[str] = []
    for position, upstream in enumerate(raw.get("depends_on") or []):
        where = (*at, "depends_on", position)
        if upstream == name:
            issues.add(where, f"phase {name!r} depends on itself")
        elif upstream not in names:
            issues.add(where, f"unknown phase {upstream!r} (phases: {', '.join(names)})")
        elif upstream not in depends_on:
            depends_on.append(upstream)
    inputs: dict[str, Any] = raw.get("inputs") or {}
    for input_name, source in inputs.items():
        upstream = source.get("upstream")
        if isinstance(upstream, str) and upstream not in depends_on:
            issues.add((*at, "inputs", input_name, "upstream"),
                       f"{upstream!r} is not in depends_on of phase {name!r}: an input can "
                       "only read a phase this one waits for")
    kind_params: dict[str, Any] = dict(raw.get("params") or {})
    for merged in ("inputs", "connections"):
        if merged in raw and merged in kind_params:
            issues.add((*at, "params", merged), f"give {merged} either as the phase's "
                                                f"'{merged}' or in its params, not both")
    if "inputs" in raw:
        kind_params["inputs"] = inputs
    if "connections" in raw:
        kind_params["connections"] = list(dict.fromkeys(raw["connections"]))
    elif "connections" in kind_params:
        _check_connection_names(kind_params["connections"], (*at, "params", "connections"),
                                issues)
    _check_templates(raw.get("params") or {}, (*at, "params"), params, issues)
    _check_templates(inputs, (*at, "inputs"), params, issues)
    if known_kind:
        _check_kind_params(raw["kind"], kind_params, raw, at, params, issues)

    retries, _ = setting("retries", DEFAULT_RETRIES)
    timeout = _seconds(*setting("timeout", DEFAULT_TIMEOUT), 1, MAX_TIMEOUT, issues)
    backoff = _seconds(*setting("retry_backoff", DEFAULT_RETRY_BACKOFF), 0, MAX_RETRY_BACKOFF,
                       issues)
    backoff_max: int | None = None
    if "retry_backoff_max" in raw or "retry_backoff_max" in defaults:
        value, where = setting("retry_backoff_max", 0)
        backoff_max = _seconds(value, where, backoff or 0, MAX_TIMEOUT, issues)
    return PhaseDef(name=name, kind=raw["kind"], depends_on=tuple(depends_on),
                    max_attempts=int(retries) + 1, timeout_seconds=timeout or DEFAULT_TIMEOUT,
                    retry_backoff_seconds=DEFAULT_RETRY_BACKOFF if backoff is None else backoff,
                    retry_backoff_max_seconds=backoff_max, params=kind_params,
                    description=raw.get("description"))


def _check_cycles(phases: tuple[PhaseDef, ...], issues: _Issues) -> None:
    """Name every dependency cycle, at the first of its phases in the file."""
    order: dict[str, int] = {}
    for index, phase in enumerate(phases):
        order.setdefault(phase.name, index)     # a duplicate name is reported elsewhere
    deps = {name: [d for d in phases[index].depends_on if d in order]
            for name, index in order.items()}
    remaining = set(order)
    changed = True
    while changed:                  # peel phases whose dependencies all resolve (Kahn)
        changed = False
        for name in sorted(remaining, key=order.__getitem__):
            if not any(d in remaining for d in deps[name]):
                remaining.discard(name)
                changed = True
    while remaining:
        walk = [min(remaining, key=order.__getitem__)]
        while True:
            step = next((d for d in deps[walk[-1]] if d in remaining), None)
            if step is None:        # downstream of a cycle already named
                remaining.discard(walk[-1])
                break
            if step in walk:
                cycle = walk[walk.index(step):]
                start = min(range(len(cycle)), key=lambda i: order[cycle[i]])
                cycle = cycle[start:] + cycle[:start]
                issues.add(("phases", order[cycle[0]], "depends_on"),
                           "dependency cycle: " + " -> ".join([*cycle, cycle[0]]))
                remaining.difference_update(cycle)
                break
            walk.append(step)


# ------------------------------------------------------------------------------------- git


def _git(repo: Path, *args: str) -> bytes | None:
    """The output of `git -C repo ARGS`, or None when git fails (or is not installed)."""
    try:
        done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, check=False)
    except OSError:
        return None
    return done.stdout if done.returncode == 0 else None


def _toplevel(start: Path) -> Path | None:
    out = _git(start, "rev-parse", "--show-toplevel")
    return Path(out.decode().strip()) if out else None


def _commit(repo: Path, revision: str) -> str | None:
    out = _git(repo, "rev-parse", "--verify", "--quiet", f"{revision}^{{commit}}")
    return out.decode().strip() if out else None


NULL_SHA = "0" * 40
"""git's null object id: the git_sha of a spec read outside any git repository."""


@dataclass(frozen=True)
class _Source:
    content: bytes
    git_sha: str
    repo_path: str | None
    """The spec's path relative to the repository's root (posix), when in git."""
    dirty: bool = False
    """Read from a modified or untracked working file, or outside git."""


def _read_source(path: Path, git_sha: str | None, repo: Path | None) -> _Source:
    shown = str(path)
    start = path.parent if path.parent.is_dir() else Path.cwd()
    root = repo if repo is not None else _toplevel(start)
    rel: str | None = None
    if root is not None:
        try:
            rel = path.resolve().relative_to(root.resolve()).as_posix()
        except ValueError:
            rel = None
    if git_sha is not None:
        if root is None or rel is None:
            raise SpecError([SpecIssue("--git-sha needs the spec inside a git repository",
                                       shown)])
        commit = _commit(root, git_sha)
        if commit is None:
            raise SpecError([SpecIssue(f"unknown git revision {git_sha!r} in {root}", shown)])
        content = _git(root, "show", f"{commit}:{rel}")
        if content is None:
            raise SpecError([SpecIssue(f"no such file at commit {commit[:12]} ({rel})", shown)])
        return _Source(content, commit, rel)
    if not path.is_file():
        raise SpecError([SpecIssue("spec file not found", shown)])
    head = _commit(root, "HEAD") if root is not None and rel is not None else None
    if root is None or rel is None or head is None:
        return _Source(path.read_bytes(), NULL_SHA, rel, dirty=True)
    tracked = _git(root, "ls-files", "--error-unmatch", "--", rel) is not None
    status = _git(root, "status", "--porcelain", "--untracked-files=all", "--", rel)
    if tracked and status == b"":
        content = _git(root, "show", f"HEAD:{rel}")
        if content is not None:
            return _Source(content, head, rel)
    return _Source(path.read_bytes(), head, rel, dirty=True)


# ------------------------------------------------------------------------------------ load


@dataclass(frozen=True)
class LoadedSpec:
    """A valid spec as read at `git_sha`, ready to become runs."""

    spec: Spec
    file: str
    """The path the spec was loaded from, as given."""
    path: str
    """The spec's path in the run: relative to the repository's root when in git, else
    absolute."""
    git_sha: str
    digest: str
    """`blake3:<hex>` of the file's bytes."""
    source: bytes = field(repr=False)
    dirty: bool = False
    """The spec was read from a modified or untracked file (or outside git): `git_sha` is
    HEAD's (or the null sha) and does not hold this content."""

    def resolve_params(self, overrides: Mapping[str, Scalar],
                       cwd: Path | None = None) -> dict[str, Scalar]:
        """Every declared param's value for a run: the override (a string is coerced to the
        param's type) or the default; `path` values made absolute from `cwd`."""
        base = cwd or Path.cwd()
        params = self.spec.params
        found: list[SpecIssue] = []
        values: dict[str, Scalar] = {}
        for name in overrides:
            if name not in params:
                known = ", ".join(params) or "none declared"
                found.append(SpecIssue(f"unknown param {name!r} (params: {known})",
                                       self.file, field=f"--param {name}"))
        for name, param in params.items():
            if name in overrides:
                given = overrides[name]
                value, problem = _coerce(param.type, given)
                if problem is not None:
                    found.append(SpecIssue(f"{_short(given)} {problem}", self.file,
                                           field=f"--param {name}"))
                    continue
            elif param.required:
                found.append(SpecIssue(f"param {name!r} has no default: pass "
                                       f"--param {name}=VALUE", self.file))
                continue
            else:
                value = param.default
            assert value is not None
            if param.type == "path":
                value = os.path.abspath(base / os.path.expanduser(str(value)))
            values[name] = value
        if found:
            raise SpecError(found)
        return values

    def input_manifest(self, params: Mapping[str, Scalar]) -> dict[str, Any]:
        return {
            "spec": {"slug": self.spec.slug, "version": self.spec.version, "path": self.path,
                     "digest": self.digest, "dirty": self.dirty},
            "params": dict(params),
        }

    def create_run_args(self, workspace_id: str, params_overrides: Mapping[str, Scalar], *,
                        idempotency_key: str | None = None,
                        labels: Mapping[str, str] | None = None,
                        cwd: Path | None = None) -> dict[str, Any]:
        """The arguments of `create_run` for a run of this spec in `workspace_id`."""
        params = self.resolve_params(params_overrides, cwd)
        args: dict[str, Any] = {
            "workspace_id": workspace_id,
            "spec_slug": self.spec.slug,
            "git_sha": self.git_sha,
            "phases": [phase.to_json() for phase in self.spec.phases],
            "input_manifest": self.input_manifest(params),
        }
        if idempotency_key is not None:
            args["idempotency_key"] = idempotency_key
        marks = {}
        if self.dirty:
            marks = ({"code_version": "local"} if self.git_sha == NULL_SHA
                     else {"git_dirty": "true"})
        if labels or marks:
            args["labels"] = {**marks, **dict(labels or {})}
        return args


def _coerce(kind: ParamType, given: Scalar) -> tuple[Scalar | None, str | None]:
    """(`given` as a `kind` value, None) or (None, why not). Strings are parsed (`--param`
    values); other values must already have the type."""
    if not isinstance(given, str):
        problem = _type_problem(kind, given)
        return (None, problem.split(" ", 1)[1]) if problem else (given, None)
    text = given.strip()
    if kind == "string":
        return given, None
    if kind == "path":
        return (given, None) if text else (None, "is not a path (empty)")
    if kind == "integer":
        try:
            return int(text, 10), None
        except ValueError:
            return None, "is not an integer"
    if kind == "number":
        try:
            number = float(text)
        except ValueError:
            return None, "is not a number"
        if not math.isfinite(number):
            return None, "is not a finite number"
        return (int(text) if re.fullmatch(r"[+-]?[0-9]+", text) else number), None
    lowered = text.lower()
    if lowered in _TRUE | _FALSE:
        return lowered in _TRUE, None
    return None, "is not a boolean (true or false)"


def load_spec(path: str | os.PathLike[str], *, git_sha: str | None = None,
              repo: str | os.PathLike[str] | None = None) -> LoadedSpec:
    """Read, parse and check the spec at `path` (at `git_sha` when given); a `SpecError` with
    every problem found otherwise. `repo` is the git repository (default: the one holding
    the file)."""
    spec_path = Path(path)
    shown = str(path)
    source = _read_source(spec_path, git_sha, Path(repo) if repo is not None else None)
    try:
        text = source.content.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError([SpecIssue(f"not UTF-8 text ({exc.reason} at byte {exc.start})",
                                   shown)]) from None
    document, lines = _parse_yaml(text, shown)
    issues = _Issues(shown, lines)
    if not isinstance(document, dict):
        issues.add((), f"the spec must be a mapping, not {_json_type(document)}")
        issues.raise_any()
    _inline_connections(document, issues)
    _schema_issues(document, issues)
    issues.raise_any()
    spec = _check(document, issues)
    issues.raise_any()
    run_path = source.repo_path or str(spec_path.resolve())
    return LoadedSpec(spec=spec, file=shown, path=run_path, git_sha=source.git_sha,
                      digest="blake3:" + blake3.blake3(source.content).hexdigest(),
                      source=source.content, dirty=source.dirty)
