"""Executor kinds: one small protocol (`executor.kinds.base`) and a registry of the kinds.

Importing this package registers the built-in kinds (`python`).
"""

from __future__ import annotations

from executor.kinds import python as _python  # noqa: F401  (registers the python kind)
from executor.kinds import sql as _sql  # noqa: F401  (registers the sql kind)
from executor.kinds.base import (
    KINDS,
    ArtifactRole,
    Connection,
    DatasetBlocked,
    Emit,
    EventLevel,
    Kind,
    OutputFile,
    PhaseCancelled,
    PhaseContext,
    PhaseError,
    PhaseResult,
    PhaseTimeout,
    Progress,
    SchemaBlocked,
    TerminalPhaseError,
    TransientPhaseError,
    UnknownKindError,
    as_phase_error,
    kind_for,
    register_kind,
)

__all__ = [
    "KINDS",
    "ArtifactRole",
    "Connection",
    "DatasetBlocked",
    "Emit",
    "EventLevel",
    "Kind",
    "OutputFile",
    "PhaseCancelled",
    "PhaseContext",
    "PhaseError",
    "PhaseResult",
    "PhaseTimeout",
    "Progress",
    "SchemaBlocked",
    "TerminalPhaseError",
    "TransientPhaseError",
    "UnknownKindError",
    "as_phase_error",
    "kind_for",
    "register_kind",
]
