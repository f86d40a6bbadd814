"""Job specs as `register_job` takes them (what `control-room jobs register` sends), for the
contract tests."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from .conftest import SERVICE, Contract, Principal


def digest_of(value: Any) -> str:
    """A well-formed digest of a JSON value (the control plane checks only the format)."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"))
    return "blake3:" + hashlib.sha256(text.encode()).hexdigest()


def job_spec(slug: str = "nightly", *, params: dict[str, Any] | None = None,
             phases: list[dict[str, Any]] | None = None, description: str | None = "nightly",
             note: str = "") -> dict[str, Any]:
    """A valid spec: by default a param `n` (integer, default 3), a required `day` (string)
    and one python phase using both. `note` changes the source digest (a new file)."""
    declared = params if params is not None else {
        "n": {"type": "integer", "default": 3, "required": False, "description": "rows"},
        "day": {"type": "string", "default": None, "required": True, "description": None},
    }
    return {
        "slug": slug, "version": 1, "description": description, "params": declared,
        "phases": phases if phases is not None else [{
            "name": "extract", "kind": "python", "depends_on": [], "max_attempts": 2,
            "timeout_seconds": 60, "retry_backoff_seconds": 1,
            "params": {"entrypoint": "pipelines.example:extract_orders",
                       "args": {"n": "${params.n}", "day": "${params.day}"}}}],
        "source": {"path": f"specs/{slug}.yaml", "digest": digest_of([slug, note])},
    }


def register_args(workspace_id: str, slug: str = "nightly", *, git_sha: str = "0123abc",
                  spec: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    body = spec if spec is not None else job_spec(slug)
    return {"workspace_id": workspace_id, "slug": slug, "spec": body,
            "digest": digest_of(body), "git_sha": git_sha, **extra}


def register(contract: Contract, workspace_id: str, slug: str = "nightly", *,
             as_: Principal = SERVICE, **extra: Any) -> dict[str, Any]:
    result: dict[str, Any] = contract.call("register_job",
                                           register_args(workspace_id, slug, **extra), as_=as_)
    return result
