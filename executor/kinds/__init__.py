"""Executor kinds: the protocol every kind implements (`base`) and the lazy registry of them
(`registry`); each kind is a subpackage (`python/`, `sql/`), imported only when it is used.

Importing this package imports no kind and no data library (docs/kinds.md).
"""

from __future__ import annotations

from executor.kinds.base import (
    ArtifactRole,
    Connection,
    DatasetBlocked,
    Emit,
    EventLevel,
    Kind,
    KindOptions,
    OutputFile,
    PhaseCancelled,
    PhaseContext,
    PhaseError,
    PhaseResult,
    PhaseTimeout,
    Progress,
    SchemaBlocked,
    Startable,
    TerminalPhaseError,
    TransientPhaseError,
    WriteMode,
    as_phase_error,
    collect_outputs,
)
from executor.kinds.registry import (
    KINDS,
    KindRegistry,
    UnknownKindError,
    kind_for,
    kind_names,
    load_kind,
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
    "KindOptions",
    "KindRegistry",
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
    "UnknownKindError",
    "WriteMode",
    "as_phase_error",
    "collect_outputs",
    "kind_for",
    "kind_names",
    "load_kind",
    "register_kind",
]
