"""A loaded spec as a job version (docs/jobs.md): the JSON `register_job` stores, its digest,
and the params of a run of a version given as `--param NAME=VALUE` strings.

The stored spec is `{"slug", "version", "description", "params": {name: {"type", "default",
"required", "description"}}, "phases": [PhaseDef.to_json() ...], "source": {"path", "digest"[,
"dirty"]}}`; its digest is the blake3 of its canonical JSON (keys sorted, no spaces, UTF-8),
so that it changes exactly when what a run of it would do changes (a comment in the file changes
`source.digest`, hence the version's digest too: the file is what a version pins).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import blake3

from control_room.specs.loader import LoadedSpec, ParamType, Scalar, SpecError, SpecIssue, _coerce

__all__ = ["canonical_json", "coerce_params", "job_digest", "job_spec_json"]

PARAM_TYPES: frozenset[str] = frozenset({"string", "path", "integer", "number", "boolean"})


def job_spec_json(loaded: LoadedSpec) -> dict[str, Any]:
    """The spec as `register_job` takes it."""
    spec = loaded.spec
    source: dict[str, Any] = {"path": loaded.path, "digest": loaded.digest}
    if loaded.dirty:
        source["dirty"] = True
    return {
        "slug": spec.slug,
        "version": spec.version,
        "description": spec.description,
        "params": {name: {"type": p.type, "default": p.default, "required": p.required,
                          "description": p.description}
                   for name, p in spec.params.items()},
        "phases": [phase.to_json() for phase in spec.phases],
        "source": source,
    }


def canonical_json(value: Any) -> bytes:
    """Keys sorted, no spaces, UTF-8: the bytes a digest is taken of."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


def job_digest(spec_json: Mapping[str, Any]) -> str:
    """`blake3:<hex>` of the canonical JSON of a job spec."""
    return "blake3:" + blake3.blake3(canonical_json(dict(spec_json))).hexdigest()


def coerce_params(declared: Mapping[str, Mapping[str, Any]], given: Mapping[str, str], *,
                  job: str, cwd: Path | None = None) -> dict[str, Scalar]:
    """`--param` strings as values of the version's declared types (a `path` made absolute
    from `cwd`); a SpecError naming every unknown or malformed param. Undeclared defaults are
    left to the control plane, which fills them in (and checks everything again)."""
    base = cwd or Path.cwd()
    found: list[SpecIssue] = []
    values: dict[str, Scalar] = {}
    known = ", ".join(sorted(declared)) or "none declared"
    for name, text in given.items():
        param = declared.get(name)
        if param is None:
            found.append(SpecIssue(f"unknown param {name!r} of job {job} (params: {known})",
                                   field=f"--param {name}"))
            continue
        kind = str(param.get("type"))
        if kind not in PARAM_TYPES:
            found.append(SpecIssue(f"declared with an unknown type {kind!r}",
                                   field=f"--param {name}"))
            continue
        value, problem = _coerce(cast(ParamType, kind), text)
        if problem is not None or value is None:
            shown = text if len(text) <= 60 else text[:57] + "..."
            found.append(SpecIssue(f"{shown!r} {problem} (param {name} is {kind})",
                                   field=f"--param {name}"))
            continue
        if kind == "path":
            value = os.path.abspath(base / os.path.expanduser(str(value)))
        values[name] = value
    for name, param in sorted(declared.items()):
        if param.get("required") and name not in given:
            found.append(SpecIssue(f"param {name!r} of job {job} has no default: pass "
                                   f"--param {name}=VALUE"))
    if found:
        raise SpecError(found)
    return values
