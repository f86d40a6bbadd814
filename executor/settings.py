"""The worker's settings: `CONTROL_ROOM_*` environment variables (docs/settings.md).

Imports only pydantic, pydantic-settings and the standard library, so anything may read them
(the `worker` command, `up`, `verify`, a kind) without pulling in the worker.
"""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "CONTROL_ROOM_"


class WorkerSettings(BaseSettings):
    """How a worker claims and runs phases (`control-room worker`, the workers of `up`, the
    in-process worker of `verify`). A field whose environment variable does not follow
    `CONTROL_ROOM_<FIELD>` names it as its alias."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        frozen=True,
        extra="forbid",
        env_ignore_empty=True,
        validate_by_name=True,
        validate_by_alias=True,
    )

    gateway_url: str | None = Field(
        default=None,
        description="The contract's REST root: the gateway's or Supabase's /rest/v1. "
                    "Unset: the local stack's (`control-room up`).",
    )
    token: SecretStr | None = Field(
        default=None,
        description="The executor principal's token (`control-room token create`). "
                    "Unset: the local stack's executor token.",
    )
    kinds: str | None = Field(
        default=None,
        validation_alias="CONTROL_ROOM_WORKER_KINDS",
        description="Comma-separated phase kinds to run, e.g. python,sql. Unset: every kind "
                    "this worker has.",
    )
    concurrency: int = Field(
        default=2,
        ge=1,
        le=256,
        validation_alias="CONTROL_ROOM_WORKER_CONCURRENCY",
        description="Phases each worker runs at once (the same default for `worker`, `up` "
                    "and `verify`).",
    )
    lease_seconds: int = Field(
        default=60,
        ge=1,
        le=3600,
        validation_alias="CONTROL_ROOM_WORKER_LEASE_SECONDS",
        description="Lease length; heartbeats every third of it.",
    )
    artifacts_url: str | None = Field(
        default=None,
        description="Artifact store: a directory, file:///dir or s3://bucket/prefix. Unset: "
                    "artifacts under the state directory (where `up` keeps them).",
    )
    work_dir: Path | None = Field(
        default=None,
        validation_alias="CONTROL_ROOM_WORKER_DIR",
        description="Scratch space for phase outputs. Unset: work under the state directory.",
    )
    workspace_id: str | None = Field(
        default=None,
        description="Claim only in this workspace (id). Unset: every workspace the token is "
                    "pinned to where its principal is an executor.",
    )
    grace_seconds: float = Field(
        default=30.0,
        ge=0,
        validation_alias="CONTROL_ROOM_WORKER_GRACE_SECONDS",
        description="On SIGTERM or Ctrl-C: how long running phases may finish before they are "
                    "given back.",
    )
    repo: str | None = Field(
        default=None,
        validation_alias="CONTROL_ROOM_WORKER_REPO",
        description="Git repository (a directory or URL) of the pipelines' code: each run's "
                    "git sha is checked out under the work dir and its code runs. Unset: this "
                    "installation's own code.",
    )
    secret_allow: str | None = Field(
        default=None,
        description="Which secret references of a workspace connection this worker resolves: "
                    "comma-separated `env:PREFIX` (environment variables whose name starts "
                    "with PREFIX) and `file:/dir` (files under that directory, symlinks "
                    "resolved). Unset: none. `CONTROL_ROOM_*` variables never resolve.",
    )
    lake_root: Path | None = Field(
        default=None,
        description="Where the workspaces' lakes live: a workspace's Delta tables and Parquet "
                    "files are confined to `<lake_root>/<workspace id>`. Unset: `lake` under "
                    "the work dir.",
    )
    python_spares: int = Field(
        default=2,
        ge=0,
        description="Spawned processes the python kind keeps waiting, already importing the "
                    "phase runtime; 0: none.",
    )


def workspace_lake(lake_root: Path, workspace_id: str) -> Path:
    """The directory a workspace's tables are confined to: `<lake_root>/<workspace id>`
    (`${run.lake}` in a spec's templates)."""
    return Path(lake_root) / workspace_id


_LAKE_DIR = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}"
                       r"(/[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}){0,7}$")


def run_lake(workspace: Path, lake_dir: object = None) -> Path:
    """A run's `${run.lake}`: its workspace lake, or a directory inside it when the run's
    `input_manifest.lake_dir` names one (a relative path of plain names: `verify` rebuilds
    into `_verify/<run id>/...` so as not to write over the original). ValueError when
    `lake_dir` is not such a path. Either way a phase stays confined to the workspace lake."""
    if lake_dir is None:
        return workspace
    if not isinstance(lake_dir, str) or not _LAKE_DIR.match(lake_dir):   # no '.', no '..'
        raise ValueError("input_manifest.lake_dir must be a relative path of plain names "
                         "inside the workspace lake (no '..')")
    return workspace / lake_dir
