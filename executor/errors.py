"""The errors a phase ends with: the worker decides retries from their class, never the kind.

docs/kinds.md ("Errors") says which is which. Importable by everything (standard library only).
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = [
    "DatasetBlocked",
    "PhaseCancelled",
    "PhaseError",
    "PhaseTimeout",
    "SchemaBlocked",
    "TerminalPhaseError",
    "TransientPhaseError",
    "as_phase_error",
]


class PhaseError(Exception):
    """Base of the errors a kind raises on purpose. `retryable` tells the worker whether to
    give the attempt back for a retry with backoff; `reason` is the failure's reason."""

    retryable: ClassVar[bool] = True
    reason: ClassVar[str] = "error"

    def __init__(
        self, message: str, *, error_type: str | None = None, detail: str | None = None,
        user_data: bool = False,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.error_type = error_type
        """The type of the exception behind this one (e.g. `ValueError`), when wrapped."""
        self.detail = detail
        """Longer text, e.g. a traceback from the phase's subprocess."""
        self.user_data = user_data
        """The message carries text the phase's own query made (a SQL engine's error, which
        may quote the data: `error('...')`): capped by the kind, reported with
        `user_data: true`."""


class TerminalPhaseError(PhaseError):
    """The phase fails now: a retry cannot help."""

    retryable = False


class TransientPhaseError(PhaseError):
    """The attempt failed, a retry may succeed: retried with backoff up to the attempt cap."""

    retryable = True


class PhaseTimeout(TerminalPhaseError):
    """The phase ran past its timeout; its work was killed."""

    reason = "timeout"


class SchemaBlocked(TerminalPhaseError):
    """A table write was refused: its schema change is BREAKING and the catalog has not
    accepted it; nothing was written. The worker records the change in the catalog (which
    blocks the dataset until an admin resolves it) and fails the phase without a retry.

    `table` is the dataset's name, `uri` its location, `changes` the breaking column changes
    (`{column, change, old_type, new_type}`), `schema` the schema the write proposed
    (`[{name, type, nullable, key?}]`), `layer` the layer the write named (None: the
    catalog's default)."""

    reason = "schema_blocked"

    def __init__(self, message: str, *, table: str, uri: str,
                 changes: list[dict[str, Any]], schema: list[dict[str, Any]] | None,
                 layer: str | None = None, error_type: str | None = None,
                 detail: str | None = None) -> None:
        super().__init__(message, error_type=error_type or "SchemaBlocked", detail=detail)
        self.table = table
        self.uri = uri
        self.changes = changes
        self.schema = schema
        self.layer = layer


class DatasetBlocked(TerminalPhaseError):
    """A write to a dataset the catalog holds blocked (a breaking change awaits an admin's
    `unblock_dataset`) was refused before the table was touched."""

    reason = "dataset_blocked"

    def __init__(self, message: str, *, table: str, uri: str,
                 error_type: str | None = None, detail: str | None = None) -> None:
        super().__init__(message, error_type=error_type or "DatasetBlocked", detail=detail)
        self.table = table
        self.uri = uri


class PhaseCancelled(PhaseError):
    """The phase was cancelled while it ran; its work was stopped."""

    retryable = False
    reason = "cancelled"


def as_phase_error(exc: BaseException) -> PhaseError:
    """The `PhaseError` the worker acts on: `exc` itself when it is one, else a
    `TransientPhaseError` wrapping it (unknown errors are transient; attempts are capped)."""
    if isinstance(exc, PhaseError):
        return exc
    return TransientPhaseError(f"{type(exc).__name__}: {exc}", error_type=type(exc).__qualname__)
