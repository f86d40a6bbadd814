"""What an attempt leaves behind: its output files stored and registered as artifacts, the
tables it wrote recorded in the data catalog, and the report of a failure (the `error` object,
the files of a failed attempt). docs/worker.md, docs/artifacts.md, docs/catalog.md.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from control_room.contract.client import (
    Conflict,
    ContractClient,
    ContractError,
    LeaseLost,
    TransientError,
)
from executor.artifacts import ArtifactStore
from executor.attempt import Attempt, AttemptLost
from executor.datasets import DATASET_NAME, UNBLOCK_HINT
from executor.kinds.base import (
    DatasetBlocked,
    OutputFile,
    PhaseError,
    PhaseResult,
    SchemaBlocked,
    TerminalPhaseError,
    TransientPhaseError,
    collect_outputs,
)

__all__ = ["DATASET_STATES", "Outputs", "phase_error_json", "table_entries"]

log = logging.getLogger("executor.worker")

MAX_MESSAGE_CHARS = 4000
MAX_DETAIL_CHARS = 32000
DATASET_STATES: tuple[Literal["blocked", "accepted"], ...] = ("blocked", "accepted")
"""The catalog's schema states a kind must know of before it writes (others are active)."""
MAX_NON_ACTIVE_DATASETS = 1000


def phase_error_json(error: PhaseError) -> dict[str, Any]:
    """The `error` object `complete_phase` receives: `{message, type, reason, detail}`, and
    `user_data: true` when the message quotes the phase's own query's output."""
    detail = error.detail or ""
    if len(detail) > MAX_DETAIL_CHARS:
        detail = "...\n" + detail[-MAX_DETAIL_CHARS:]
    message = error.message or type(error).__name__
    if len(message) > MAX_MESSAGE_CHARS:
        message = message[:MAX_MESSAGE_CHARS] + "..."
    result: dict[str, Any] = {
        "message": message,
        "type": error.error_type or type(error).__name__,
        "reason": error.reason,
        "detail": detail,
    }
    if error.user_data:
        result["user_data"] = True
    if isinstance(error, SchemaBlocked | DatasetBlocked):
        result["dataset"] = {"name": error.table, "uri": error.uri}
        if isinstance(error, SchemaBlocked):
            result["dataset"]["changes"] = error.changes
    return result


def table_entries(manifest: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The tables an output manifest says the phase wrote: its `tables` (each an object
    with a string `name` and `uri`), else its legacy single `table` when that has a uri and
    a name the catalog accepts (older entrypoints name tables by their path: not
    catalogued). ValueError naming the bad entry."""
    tables = manifest.get("tables")
    if tables is None:
        table = manifest.get("table")
        if not isinstance(table, Mapping):
            return []
        name, uri = table.get("name"), table.get("uri")
        if isinstance(name, str) and DATASET_NAME.match(name) and isinstance(uri, str):
            return [table]
        return []
    if not isinstance(tables, list):
        raise ValueError("'tables' must be a list of table entries")
    for i, entry in enumerate(tables):
        if not isinstance(entry, Mapping) or not isinstance(entry.get("name"), str) \
                or not isinstance(entry.get("uri"), str):
            raise ValueError(f"tables[{i}] is not a table entry with a string name and uri")
        schema_change = entry.get("schema_change")
        if schema_change is not None and not isinstance(schema_change, Mapping):
            raise ValueError(f"tables[{i}].schema_change must be an object")
    return list(tables)


TEXT_MEDIA_TYPES = frozenset({"application/json", "application/x-ndjson", "application/xml",
                              "application/sql", "application/yaml", "application/x-yaml",
                              "application/javascript", "application/x-sh"})
MAX_MASKED_BYTES = 64 * 1024 * 1024


def is_text_output(output: OutputFile) -> bool:
    """A log, a report or a text file: what `mask_file` rewrites (binary data is left as
    the phase wrote it)."""
    return (output.role in ("log", "report") or output.media_type.startswith("text/")
            or output.media_type in TEXT_MEDIA_TYPES)


def mask_file(attempt: Attempt, output: OutputFile) -> None:
    """Replace every secret value the attempt resolved by `***` in a text output before it
    is stored (the output directory is the attempt's own). A file too large to read is
    registered as it is, with a warning."""
    if not attempt.masker or not is_text_output(output):
        return
    try:
        size = output.path.stat().st_size
        if size > MAX_MASKED_BYTES:
            log.warning("phase %s: output %s (%d bytes) too large to mask", attempt.claim.name,
                        output.name, size)
            return
        data = output.path.read_bytes()
        masked = attempt.masker.data(data)
        if masked != data:
            output.path.write_bytes(masked)
    except OSError as exc:
        log.warning("phase %s: output %s could not be masked: %s", attempt.claim.name,
                    output.name, exc)


class Outputs:
    """The artifact store and the catalog as one attempt's outputs reach them, under the
    attempt's lease. A call that finds the lease lost raises `AttemptLost`."""

    def __init__(self, client: ContractClient, store: ArtifactStore) -> None:
        self.client = client
        self.store = store

    # -- before the kind runs ---------------------------------------------------------------

    def dataset_states(self, attempt: Attempt) -> dict[str, str]:
        """The workspace's datasets that are not active, by name -> `blocked` | `accepted`
        (the kinds refuse the first, may apply the breaking change of the second). Without
        them the guard cannot hold: a refusal fails the attempt (transient when it may
        pass); an unreachable contract is waited for while the lease lives (`hold`)."""
        claim = attempt.claim
        states: dict[str, str] = {}
        for state in DATASET_STATES:
            try:
                found = attempt.hold("list_datasets", functools.partial(
                    self.client.list_datasets, workspace_id=claim.workspace_id,
                    schema_state=state, limit=MAX_NON_ACTIVE_DATASETS))
            except TransientError as exc:
                raise TransientPhaseError(f"the catalog's {state} datasets could not be "
                                          f"read: {exc}") from exc
            except ContractError as exc:
                raise TerminalPhaseError(f"the catalog's {state} datasets could not be "
                                         f"read: {exc}") from exc
            states.update({dataset.name: state for dataset in found})
        return states

    # -- artifacts ----------------------------------------------------------------------------

    def register(self, attempt: Attempt, result: PhaseResult) -> dict[str, Any]:
        """Put every output in the store and register it; the manifest with their digests."""
        manifest = dict(result.output_manifest)
        digests: dict[str, str] = {}
        for output in result.outputs:
            if attempt.lease_lost.is_set():
                raise AttemptLost
            mask_file(attempt, output)
            blob = self.store.put_file(output.path, output.media_type)
            try:       # held through an outage: registering the same digest again is harmless
                attempt.hold("register_artifact", functools.partial(
                    self.client.register_artifact, attempt.claim.lease_token, blob.digest,
                    blob.uri, blob.size_bytes, media_type=output.media_type, kind=output.kind,
                    name=attempt.masker.text(output.name), role=output.role))
            except LeaseLost:
                attempt.lease_refused()     # AttemptLost, unless the phase was cancelled
                return manifest
            digests[output.name] = blob.digest
        if digests:
            manifest["artifacts"] = digests
        return manifest

    def register_failure_files(self, attempt: Attempt, output_dir: Path) -> None:
        """The files a failed attempt left in its output directory (a quality check's
        failing rows, a partial report) are registered with role `report`, so that the
        failure can be read, not only counted; a file that cannot be stored is logged and
        skipped (the phase fails all the same)."""
        files = [OutputFile(path=f.path, name=f.name, media_type=f.media_type, role="report")
                 for f in collect_outputs(output_dir)]
        if not files:
            return
        try:
            digests = self.register(attempt, PhaseResult(outputs=files))
        except AttemptLost:
            raise
        except Exception as exc:
            log.warning("phase %s: registering a failed attempt's files failed: %s",
                        attempt.claim.name, exc)
            return
        attempt.emit("FAILURE_OUTPUTS",
                     f"{len(files)} file(s) of the failed attempt registered",
                     level="warning", payload={"artifacts": digests.get("artifacts", {})})

    # -- the catalog --------------------------------------------------------------------------

    def record_datasets(self, attempt: Attempt, manifest: Mapping[str, Any],
                        error: PhaseError | None) -> PhaseError | None:
        """Record in the catalog, under the lease, every table the phase wrote (its
        manifest's `tables`, else a legacy `table` with a name), or the breaking change a
        `SchemaBlocked` refused (which blocks the dataset; the phase fails all the same).
        Answers the error the phase ends with (None: it may succeed). A verify rebuild's
        tables (its run labelled `verify_of`, docs/verify.md) are not the catalog's: recorded
        they would move the real datasets to the scratch location and version them, so
        nothing is recorded; the verify report has their digests."""
        if attempt.claim.run.labels.get("verify_of"):
            log.info("phase %s: a verify rebuild; its tables are not recorded in the catalog",
                     attempt.claim.name)
            return error
        if isinstance(error, SchemaBlocked):
            try:
                self._record(attempt, error.table, error.uri, layer=error.layer,
                             schema=error.schema, change="BREAKING", changes=error.changes)
            except ContractError as exc:        # the phase fails anyway; a re-run records
                log.warning("phase %s: recording the breaking change of %s failed: %s",
                            attempt.claim.name, error.table, exc)
            return error
        try:
            entries = table_entries(manifest)
        except ValueError as exc:
            return TerminalPhaseError(f"output manifest: {exc}", error_type="ValueError")
        for entry in entries:
            schema_change = entry.get("schema_change") or {}
            try:
                self._record(attempt, entry["name"], entry["uri"], layer=entry.get("layer"),
                             schema=schema_change.get("schema"),
                             change=schema_change.get("change", "NONE"),
                             changes=schema_change.get("changes"),
                             table_version=entry.get("version"), digest=entry.get("digest"),
                             rows=entry.get("rows"))
            except Conflict as exc:
                return DatasetBlocked(
                    f"dataset {entry['name']} was blocked while the phase ran; its write "
                    f"(version {entry.get('version')}) is not recorded: "
                    f"{UNBLOCK_HINT} ({exc.message})",
                    table=entry["name"], uri=entry["uri"])
            except TransientError as exc:
                return TransientPhaseError(f"recording dataset {entry['name']} failed: {exc}")
            except ContractError as exc:
                return TerminalPhaseError(f"recording dataset {entry['name']} was refused: "
                                          f"{exc}", error_type=type(exc).__name__)
            self._lineage(attempt, entry)
        return None

    @staticmethod
    def _lineage(attempt: Attempt, entry: Mapping[str, Any]) -> None:
        """A table entry's `lineage` (`{datasets, sources, ...}`: what it was built from, the
        dbt kind's) as a DATASET_LINEAGE event, after the dataset is recorded: the control
        plane keeps it as the dataset's `upstream` (docs/catalog.md, "Lineage")."""
        lineage = entry.get("lineage")
        if not isinstance(lineage, Mapping) or not lineage:
            return
        reads = [*lineage.get("datasets", []), *lineage.get("sources", [])]
        attempt.emit("DATASET_LINEAGE", f"{entry['name']} <- {', '.join(reads) or 'nothing'}",
                     payload={"dataset": entry["name"], **lineage})

    def _record(self, attempt: Attempt, name: str, uri: str, **fields: Any) -> None:
        """One `record_dataset` under the attempt's lease; `AttemptLost` when the lease is
        lost (a cancelled phase's `LeaseLost` propagates: it is completed as cancelled)."""
        try:       # held through an outage: a repeat answers the version it recorded
            recorded = attempt.hold("record_dataset", lambda: self.client.record_dataset(
                attempt.claim.lease_token, name, uri, **fields))
        except LeaseLost:
            attempt.lease_refused()
            raise
        log.info("phase %s: dataset %s recorded (%s, schema %s v%s)", attempt.claim.name,
                 name, fields.get("change"), recorded.schema_state, recorded.schema_version)
