"""What a python entrypoint receives (`PythonContext`) and the messages its process sends.

docs/kinds.md ("python") describes the kind; this module is what the phase's process needs to
build the context, imported by it before the entrypoint (nothing heavy: tables are written
through `executor.datasets`, imported on the first `write_table`).
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from control_room.contract.vocabulary import EVENT_LEVELS
from executor.errors import TerminalPhaseError
from executor.kinds.base import Connection, EventLevel, WriteMode

__all__ = ["MAX_LINE_CHARS", "MAX_OUTPUT_LINES", "ChildSpec", "PythonContext",
           "parse_entrypoint"]


MAX_OUTPUT_LINES = 2000
"""Lines of stdout and stderr an attempt sends as events; the rest is dropped."""
MAX_LINE_CHARS = 4000
"""A longer line is cut (and a line without a newline is sent in pieces of this size)."""
_DOTTED = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")

# Messages from the child to the worker, each a tuple whose first item is its tag.
EVENT = "event"  # (tag, type, message, level, payload)
PROGRESS = "progress"  # (tag, value)
RESULT = "result"  # (tag, manifest as JSON text)
LINES = "lines"  # (tag, stream, level, [line, ...]): the child's stdout or stderr
ERROR = "error"  # (tag, terminal: bool, error_type, message, traceback text, details)


def parse_entrypoint(entrypoint: object) -> tuple[str, str]:
    """`(module, attribute path)` of `"package.module:function"` (the attribute may be
    dotted, `module:Class.method`); a `TerminalPhaseError` when it has another shape."""
    if not isinstance(entrypoint, str):
        raise TerminalPhaseError(
            f"python entrypoint must be a string 'module:function', got {entrypoint!r}"
        )
    module, sep, attr = entrypoint.partition(":")
    if not sep or not _DOTTED.match(module) or not _DOTTED.match(attr):
        raise TerminalPhaseError(
            f"python entrypoint {entrypoint!r} is not of the form 'package.module:function'"
        )
    return module, attr


@dataclass(frozen=True)
class ChildSpec:
    """What the child needs, pickled to it by `spawn`."""

    entrypoint: str
    run_id: str
    phase: str
    attempt: int
    params: Mapping[str, Any]
    args: Mapping[str, Any]
    inputs: Mapping[str, Any]
    input_manifest: Mapping[str, Any]
    git_sha: str | None
    output_dir: Path
    timeout_s: float | None
    connections: Mapping[str, Connection] = field(repr=False)
    datasets: Mapping[str, str] = field(default_factory=dict)
    code_dir: Path | None = None
    lake_root: Path | None = None


@dataclass(frozen=True)
class PythonContext:
    """What a python entrypoint receives (in its subprocess). `emit` and `progress` are
    thread-safe and send to the worker at once; `connections` hold secrets: never log them."""

    run_id: str
    phase: str
    attempt: int
    params: Mapping[str, Any]
    args: Mapping[str, Any]
    """`params["args"]`: the entrypoint's own arguments."""
    inputs: Mapping[str, Any]
    input_manifest: Mapping[str, Any]
    git_sha: str | None
    output_dir: Path
    timeout_s: float | None
    connections: Mapping[str, Connection] = field(repr=False)
    _send: Callable[[tuple[Any, ...]], None] = field(repr=False)
    datasets: Mapping[str, str] = field(default_factory=dict)
    """The catalog's datasets that are not active, by name: `blocked` or `accepted`."""
    _tables: list[dict[str, Any]] = field(default_factory=list, repr=False)
    code_dir: Path | None = None
    """The checkout of the run's git sha the entrypoint was imported from (None: the
    worker's own code); e.g. for files that live beside the code."""
    lake_root: Path | None = None
    """The run's workspace lake (`${run.lake}`): `write_table` writes only under it (None:
    anywhere). A guard against a wrong path, not a security boundary: the entrypoint is
    arbitrary code running as the worker's OS user."""

    def write_table(
        self,
        name: str,
        uri: str | os.PathLike[str],
        data: Any,
        *,
        mode: WriteMode,
        keys: list[str] | None = None,
        layer: str | None = None,
        partition_by: list[str] | None = None,
    ) -> dict[str, Any]:
        """Write `data` (a pyarrow Table, a RecordBatchReader or a list of dicts) to the
        Delta table `name` (its catalog name, e.g. `bronze.sale_order`) at `uri`, under the
        catalog's rules; answers the table's manifest entry, also added to the phase's
        `tables` (docs/kinds.md, "python"). Raises `DatasetBlocked` / `SchemaBlocked`, and
        `OutsideLake` when `uri` is not under the workspace lake (a relative `uri` is under
        it; docs/tables.md, "The workspace lake")."""
        from executor import datasets as catalog  # pyarrow and deltalake: on first use
        from executor.tables import confine

        location = confine(uri, self.lake_root, what=f"table {name}")
        written = catalog.write_dataset(
            self.datasets, name, location, data, mode=mode, keys=keys, layer=layer,
            partition_by=partition_by,
            commit_metadata={"controlroom.run_id": self.run_id,
                             "controlroom.phase": self.phase,
                             "controlroom.attempt": self.attempt})
        self._tables.append(written.entry)
        entry: dict[str, Any] = json.loads(json.dumps(written.entry))  # the caller's copy
        return entry

    def emit(
        self,
        type: str,
        message: str,
        level: EventLevel = "info",
        payload: Mapping[str, Any] | None = None,
    ) -> None:
        """One event of the phase; `payload` must be a JSON object (checked here)."""
        if level not in EVENT_LEVELS:
            raise ValueError(f"event level must be one of {sorted(EVENT_LEVELS)}, not {level!r}")
        if payload is not None:
            if not isinstance(payload, Mapping):
                raise TypeError("event payload must be a JSON object (a mapping)")
            payload = json.loads(json.dumps(payload, allow_nan=False))
        self._send((EVENT, str(type), str(message), level, payload))

    def progress(self, value: float | Mapping[str, Any]) -> None:
        """Progress of the phase: a fraction in [0, 1] or a JSON object."""
        if isinstance(value, Mapping):
            sent: float | dict[str, Any] = json.loads(json.dumps(value, allow_nan=False))
        else:
            sent = float(value)
            if not (math.isfinite(sent) and 0.0 <= sent <= 1.0):
                raise ValueError(f"progress fraction must be within [0, 1], not {value!r}")
        self._send((PROGRESS, sent))

    @property
    def tables_written(self) -> list[dict[str, Any]]:
        """The manifest entries of the tables `write_table` wrote so far (a copy)."""
        return [dict(entry) for entry in self._tables]
