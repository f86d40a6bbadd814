"""What phase code imports: the one module of the executor a pipeline may use.

A python entrypoint receives a `PythonContext`; it raises the phase errors; it may use the
table and connection helpers below. Everything else in `executor` is the worker's and may
change. Importing this module imports no data library: the helpers that need pyarrow,
deltalake or psycopg are imported the first time one of them is used. docs/kinds.md ("What
phase code imports") lists the names.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from executor.errors import (
    DatasetBlocked,
    PhaseCancelled,
    PhaseError,
    PhaseTimeout,
    SchemaBlocked,
    TerminalPhaseError,
    TransientPhaseError,
)
from executor.kinds.base import Connection, Emit, EventLevel, Progress, WriteMode
from executor.kinds.python.context import PythonContext

if TYPE_CHECKING:
    from executor.connections import arrow_type, postgres_connect, read_postgres
    from executor.datasets import UNBLOCK_HINT, write_dataset
    from executor.tables import (
        classify,
        read_schema,
        scan_dataset,
        schema_json,
        with_keys,
        write_table,
    )

__all__ = [
    "UNBLOCK_HINT",
    "Connection",
    "DatasetBlocked",
    "Emit",
    "EventLevel",
    "PhaseCancelled",
    "PhaseError",
    "PhaseTimeout",
    "Progress",
    "PythonContext",
    "SchemaBlocked",
    "TerminalPhaseError",
    "TransientPhaseError",
    "WriteMode",
    "arrow_type",
    "classify",
    "postgres_connect",
    "read_postgres",
    "read_schema",
    "scan_dataset",
    "schema_json",
    "with_keys",
    "write_dataset",
    "write_table",
]

_LAZY: dict[str, str] = {
    "arrow_type": "executor.connections",
    "postgres_connect": "executor.connections",
    "read_postgres": "executor.connections",
    "UNBLOCK_HINT": "executor.datasets",
    "write_dataset": "executor.datasets",
    "classify": "executor.tables",
    "read_schema": "executor.tables",
    "scan_dataset": "executor.tables",
    "schema_json": "executor.tables",
    "with_keys": "executor.tables",
    "write_table": "executor.tables",
}
"""The helpers that need a data library, by the module that defines them."""


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value         # once: the next lookup is an ordinary global
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
