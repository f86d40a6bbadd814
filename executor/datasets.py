"""Table writes under the data catalog's rules: how every kind writes a table.

    written = write_dataset(ctx.datasets, "silver.orders", uri, rows, mode="merge",
                            keys=["id"], commit_metadata={"controlroom.run_id": ctx.run_id})
    manifest["tables"].append(written.entry)

The catalog (`ops.datasets`, docs/catalog.md) is the control plane's; a kind never talks to
it. The worker fetches the workspace's datasets that are not active into
`PhaseContext.datasets` before the phase runs, and records every entry of the phase's
`tables` after it (`record_dataset`). Between the two, this module decides, from that
snapshot, what a write may do:

- a `blocked` dataset is not written at all: `DatasetBlocked` (terminal) names it and says
  how an admin resolves it, before the table is opened;
- an `accepted` one may apply its breaking change (`write_table(allow_breaking=True)`);
- otherwise a BREAKING change raises `SchemaBlocked` (terminal) carrying the dataset's name,
  location, changes and the proposed schema; nothing was written. The worker records it
  (`change: BREAKING`), which blocks the dataset, then fails the phase without a retry.

A successful write answers its manifest entry: `{name, uri, version, digest, rows, layer,
schema_change: {change, changes, schema}}`, `change` in the catalog's terms (INITIAL,
NON_BREAKING, NONE for an unchanged schema, BREAKING for an accepted one), `schema` the
table's schema after the write (`tables.schema_json`), `digest` / `rows` those of
`digests.table_digest` at the version written; `layer` None lets the catalog derive it from
the name.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from executor.digests import TableDigest, arrow_table_digest, table_digest
from executor.errors import DatasetBlocked, SchemaBlocked, TerminalPhaseError
from executor.kinds.base import WriteMode
from executor.tables import (
    ChangeKind,
    SchemaBreakingChange,
    WriteResult,
    schema_json,
    write_table,
)

__all__ = ["CATALOG_CHANGE", "DATASET_NAME", "LAYERS", "UNBLOCK_HINT", "WrittenDataset",
           "check_name", "write_dataset", "written_digest"]

DATASET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,199}$")
"""A catalog dataset's name, as `ops.record_dataset` checks it (e.g. `bronze.sale_order`)."""
LAYERS = frozenset({"raw", "bronze", "silver", "gold", "other"})

CATALOG_CHANGE: dict[ChangeKind, str] = {
    "INITIAL": "INITIAL",
    "UNCHANGED": "NONE",
    "NON_BREAKING": "NON_BREAKING",
    "BREAKING": "BREAKING",
}
"""`tables.ChangeKind` -> the `change` that `record_dataset` takes."""

UNBLOCK_HINT = ("an admin must resolve it with `control-room datasets unblock` "
                "(ops.unblock_dataset): accept the change, or reject it and fix the source")


@dataclass(frozen=True)
class WrittenDataset:
    """A table written under the catalog's rules."""

    entry: dict[str, Any]
    """The phase's output manifest entry (a JSON object, see the module's docstring)."""
    result: WriteResult


def check_name(name: object, layer: object = None) -> None:
    """`TerminalPhaseError` unless `name` (and `layer`, when given) are what the catalog
    accepts: checked before a write, so that a table is never written that cannot be
    recorded."""
    if not isinstance(name, str) or not DATASET_NAME.match(name):
        raise TerminalPhaseError(
            f"dataset name {name!r} is not a catalog name: 1-200 letters, digits, _ . - "
            "starting with a letter or digit, such as bronze.sale_order", error_type="ValueError")
    if layer is not None and layer not in LAYERS:
        raise TerminalPhaseError(
            f"dataset {name}: layer {layer!r} is not one of {', '.join(sorted(LAYERS))}",
            error_type="ValueError")


def write_dataset(
    datasets: Mapping[str, str],
    name: str,
    uri: str | os.PathLike[str],
    data: Any,
    *,
    mode: WriteMode,
    keys: Sequence[str] | None = None,
    layer: str | None = None,
    partition_by: Sequence[str] | None = None,
    commit_metadata: Mapping[str, Any] | None = None,
    storage_options: Mapping[str, str] | None = None,
) -> WrittenDataset:
    """Write `data` to the table `name` at `uri` with `tables.write_table`, honouring the
    catalog's states in `datasets` (name -> blocked | accepted); see the module's docstring.
    A name or layer the catalog would refuse is a `TerminalPhaseError` (`check_name`);
    `write_table`'s ValueError / TypeError (bad keys, a bad merge batch...) pass through."""
    check_name(name, layer)
    location = os.fspath(uri)
    state = datasets.get(name)
    if state == "blocked":
        raise DatasetBlocked(
            f"dataset {name} is blocked by a breaking schema change awaiting review; "
            f"nothing was written to {location}: {UNBLOCK_HINT}",
            table=name, uri=location)
    try:
        result = write_table(location, data, mode=mode, keys=keys, partition_by=partition_by,
                             storage_options=storage_options, commit_metadata=commit_metadata,
                             name=name, allow_breaking=state == "accepted")
    except SchemaBreakingChange as exc:
        raise SchemaBlocked(
            f"breaking schema change refused, nothing written: {exc}. The dataset is now "
            f"blocked: {UNBLOCK_HINT}",
            table=name, uri=location, changes=[c.to_json() for c in exc.changes],
            schema=schema_json(exc.schema) if exc.schema is not None else None,
            layer=layer) from exc
    digest = written_digest(location, result, storage_options)
    entry = {
        "name": name,
        "uri": location,
        "version": result.version,
        "digest": digest.digest,
        "rows": digest.rows,
        "layer": layer,
        "schema_change": {
            "change": CATALOG_CHANGE[result.change.kind],
            "changes": [c.to_json() for c in result.change.changes],
            "schema": schema_json(result.schema),
        },
    }
    return WrittenDataset(entry=entry, result=result)


def written_digest(uri: str, result: WriteResult,
                   storage_options: Mapping[str, str] | None = None) -> TableDigest:
    """The table digest of the version `result` wrote. When that version holds exactly the
    rows written (`result.content`), they are hashed in memory, cast to the schema read back
    from the table, instead of read back (the same digest: the recipe is one; about half the
    cost of a digest of a big table). Else, or when the cast is refused, the version is read."""
    if result.content is not None:
        schema = pa.schema([f.remove_metadata() for f in result.schema])
        try:
            content = result.content.select(schema.names).cast(schema)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError, KeyError):
            content = None
        if content is not None:
            digest = arrow_table_digest(content)
            return TableDigest(digest.digest, digest.rows, digest.schema, result.version)
    return table_digest(uri, result.version, storage_options=storage_options)
