"""The one protocol every executor kind implements (`Kind`, and `Startable` for a kind that
holds resources), the phase context and result a kind reads and returns, and the phase errors
(defined in `executor.errors`, re-exported). How to write a kind: docs/kinds.md.
"""

from __future__ import annotations

import mimetypes
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol, TypeVar, runtime_checkable

from pydantic import BaseModel, ValidationError

from control_room.contract.vocabulary import ArtifactRole, EventLevel
from executor.errors import (
    DatasetBlocked,
    PhaseCancelled,
    PhaseError,
    PhaseTimeout,
    SchemaBlocked,
    TerminalPhaseError,
    TransientPhaseError,
    as_phase_error,
)

__all__ = [
    "ArtifactRole",
    "Connection",
    "DatasetBlocked",
    "Emit",
    "EventLevel",
    "Kind",
    "KindOptions",
    "OutputFile",
    "PhaseCancelled",
    "PhaseContext",
    "PhaseError",
    "PhaseResult",
    "PhaseTimeout",
    "Progress",
    "SchemaBlocked",
    "Startable",
    "TerminalPhaseError",
    "TransientPhaseError",
    "WriteMode",
    "as_phase_error",
    "collect_outputs",
]

WriteMode = Literal["append", "overwrite", "merge"]
"""How a table write treats the rows already there (executor/tables.py)."""
DEFAULT_MEDIA_TYPE = "application/octet-stream"


class Emit(Protocol):
    """`emit(type, message, level="info", payload=None)`: one event of the phase.

    `type` is an upper-case event type (`LOG`, `PHASE_PROGRESS`, ...); `payload` a JSON
    object. The worker batches the events and sends them with the phase's lease."""

    def __call__(
        self,
        type: str,
        message: str,
        level: EventLevel = "info",
        payload: Mapping[str, Any] | None = None,
    ) -> None: ...


Progress = Callable[[float | Mapping[str, Any]], None]
"""`progress(fraction)` with a fraction in [0, 1], or `progress({...})` with a JSON object."""


@dataclass(frozen=True)
class Connection:
    """A connection resolved from its secret reference. `config` holds secrets: it is left
    out of `repr` and must never be logged, emitted or written to an output."""

    name: str
    type: str
    config: Mapping[str, Any] = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class PhaseContext:
    """Everything a kind may read while it runs one attempt of a phase. Built by the worker."""

    run_id: str
    phase: str
    attempt: int
    kind: str
    params: Mapping[str, Any]
    """The phase's params with their templates rendered (executor/render.py)."""
    inputs: Mapping[str, Any]
    """Dependency outputs: the output manifest of each upstream phase, by phase name."""
    git_sha: str | None
    input_manifest: Mapping[str, Any]
    output_dir: Path
    """A fresh, empty directory owned by this attempt; files the kind leaves there may be
    reported as outputs."""
    emit: Emit
    progress: Progress
    connections: Mapping[str, Connection] = field(default_factory=dict, repr=False)
    """The connections named by `params.connections`, their secrets resolved
    (executor/connections.py)."""
    cancel: threading.Event = field(default_factory=threading.Event)
    """Set by the worker when the phase is cancelled (learned from a heartbeat) or the worker
    stops; a kind polls it (or waits on it) and raises `PhaseCancelled`."""
    timeout_s: float | None = None
    """The phase's timeout in seconds (None: no limit). A kind that runs work it can kill
    enforces it and raises `PhaseTimeout`; the worker enforces it too."""
    datasets: Mapping[str, str] = field(default_factory=dict)
    """The workspace's catalog datasets that are not active, by name: `blocked` (a breaking
    change awaits an admin: a kind must not write it, `DatasetBlocked`) or `accepted` (the
    next write may apply its breaking change). Fetched by the worker before the phase runs;
    write tables through `executor.datasets.write_dataset`, which honours it."""
    code_dir: Path | None = None
    """The checkout of the run's git sha (executor/checkout.py): where entrypoints and query
    files come from. None: the worker's own code (no repository configured, or the run was
    made from a working tree)."""
    lake_root: Path | None = None
    """The run's workspace lake (`<lake_root>/<workspace id>`, `${run.lake}` in templates):
    the sql kind reads and writes tables only under it. None: not confined (a kind used
    outside a worker, in tests)."""


@dataclass(frozen=True)
class OutputFile:
    """A file to register as an artifact of the phase."""

    path: Path
    name: str
    """The artifact's name (1-512 characters), e.g. the path relative to the output dir."""
    media_type: str = "application/octet-stream"
    role: ArtifactRole = "output"
    kind: str = "blob"


@dataclass(frozen=True)
class PhaseResult:
    output_manifest: dict[str, Any] = field(default_factory=dict)
    """A JSON object: what downstream phases receive as this phase's entry in `inputs`."""
    outputs: list[OutputFile] = field(default_factory=list)


class Kind(Protocol):
    """What every executor kind is: see the module's docstring."""

    NAME: ClassVar[str]
    CONNECTION_TYPES: ClassVar[frozenset[str]]

    def run(self, ctx: PhaseContext) -> PhaseResult: ...


@dataclass(frozen=True)
class KindOptions:
    """What a worker tells the kinds it starts (from its settings, executor/settings.py)."""

    python_spares: int = 2
    """Phase processes the python kind keeps started ahead of need (0: none)."""
    secret_allow: str = ""
    """The worker's secret policy (`CONTROL_ROOM_SECRET_ALLOW`): the python kind's processes
    start without the variables it allows, nor any `CONTROL_ROOM_*` (executor/secrets.py)."""


@runtime_checkable
class Startable(Protocol):
    """A kind that holds resources for as long as a worker runs it (the python kind's spare
    processes). The worker calls `start` once before its first phase and `close` once when it
    stops; a kind that is never started still runs, without them."""

    def start(self, options: KindOptions) -> None: ...

    def close(self) -> None: ...


_Params = TypeVar("_Params", bound=BaseModel)


def validate_params(model: type[_Params], params: Mapping[str, Any], kind: str) -> _Params:
    """A phase's params as the kind's `model`; a `TerminalPhaseError` naming each bad field
    (`<kind> params: a.b: ...; c: ...`)."""
    try:
        return model.model_validate(dict(params))
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in error['loc']) or '(params)'}: {error['msg']}"
            for error in exc.errors())
        raise TerminalPhaseError(f"{kind} params: {problems}", error_type="ValueError") from None


def collect_outputs(output_dir: Path) -> list[OutputFile]:
    """Every regular file under `output_dir` (recursively, symlinks skipped) as an output,
    named by its path relative to `output_dir`, its media type guessed from the name."""
    outputs: list[OutputFile] = []
    for path in sorted(output_dir.rglob("*")):
        if path.is_symlink() or not path.is_file():
            continue
        name = path.relative_to(output_dir).as_posix()
        media_type = mimetypes.guess_type(name)[0] or DEFAULT_MEDIA_TYPE
        outputs.append(OutputFile(path=path, name=name, media_type=media_type))
    return outputs
