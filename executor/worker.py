"""The worker: claims phases over the contract and runs them with their kind.

The worker owns everything around a kind's `run` (docs/kinds.md, STYLE.md): claiming, the
lease and its heartbeats, events, artifact registration and completion. It holds no state
of its own: kill it at any moment and its phases are reclaimed once their leases expire.

    with ContractClient(url, token) as client:
        worker = Worker(client, kinds=["python"], concurrency=2,
                        store=artifact_store_from_url("file:///var/lib/cr/blobs"),
                        work_dir=Path("/var/lib/cr/work"))
        worker.run(stop)        # until `stop` is set (SIGTERM), then a graceful stop

- **Slots.** `concurrency` phases run at once, each in its own thread. The main loop claims
  one phase whenever a slot is free, with `poll_for_work` (the gateway's `Prefer: wait`
  where honoured, else adaptive polling).
- **One lease keeper per phase** (a thread): a heartbeat every third of the lease, carrying
  the latest progress; the buffered events flushed in batches of `event_batch` at least every
  `event_flush_seconds`, with the lease token. A heartbeat answering `cancel_requested` sets
  the phase's `cancel` event (the kind stops; the phase is completed as failed, reason
  `cancelled`, not retryable: it records `PHASE_STOPPED`). `LeaseLost` on any call: the work
  is cancelled and the phase is *not* completed (another executor owns it now).
- **Each phase:** `PHASE_STARTED` first; then the kind's `run` with a `PhaseContext` (its
  `emit` buffers events, its `progress` buffers a `PHASE_PROGRESS` event and is sent with the
  next heartbeat; `timeout_s` is the claim's `timeout_seconds`); every output file is put in
  the artifact store and registered; the events are flushed; then `complete_phase`:
  `succeeded` with the kind's output manifest plus `artifacts: {name: digest}`, or `failed`
  with `error = {message, type, reason, detail}` and `retryable` from the error's class
  (terminal, timeout, cancelled: False; transient and unknown errors: True; the phase's
  `max_attempts` caps the retries). When that completion answers `run_state: succeeded`, the
  worker finalizes the run (`complete_run`).
- **Code, params, connections.** Before the kind runs, the phase's params are rendered with
  the run's params (`${params.lake}`, executor/render.py; the stored params keep their
  templates), the connections named by `params.connections` are resolved with their secrets
  (executor/connections.py), and, when the worker has a `repo`, the run's git sha is checked
  out once under `<work_dir>/checkouts/<sha>` for `ctx.code_dir` (executor/checkout.py; a
  `CODE_CHECKOUT` event says which code runs). Any of them failing fails the phase (terminal).
  `run_id` restricts the claims to one run (`control-room verify`'s worker).
- **The data catalog** (docs/catalog.md). Before the kind runs, the workspace's datasets that
  are not active (`list_datasets`, schema states `blocked` and `accepted`) go into
  `ctx.datasets`, so that kinds refuse to write a blocked one and may apply an accepted
  breaking change. After a successful run, every entry of the output manifest's `tables` (or
  a legacy `table` with a name) is recorded with `record_dataset` under the lease, after the
  artifacts and before `complete_phase`; a dataset blocked meanwhile (`Conflict`) fails the
  phase (`DatasetBlocked`, terminal). A `SchemaBlocked` failure is recorded as a BREAKING
  change (which blocks the dataset, event `DATASET_BLOCKED`), then the phase fails without a
  retry.
- **Timeouts** are enforced by the kind (the python kind kills its process group); the worker
  enforces them too, for kinds that cannot: `timeout_grace` seconds after the timeout it sets
  the phase's `cancel` event and fails the phase as `timeout`.
- **Graceful stop** (`stop` set, e.g. on SIGTERM): no more claims; running phases get
  `grace_seconds` to finish; the rest are cancelled and completed as failed *retryable*
  (reason `worker_stopped`), which gives them back to the queue with the phase's backoff.
  Their events are flushed first.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import socket
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from control_room.contract.client import (
    Claim,
    Conflict,
    ContractClient,
    ContractError,
    InvalidArgument,
    LeaseLost,
    NewEvent,
    PayloadTooLarge,
    TransientError,
)
from executor.artifacts import ArtifactStore
from executor.checkout import Checkouts, own_code
from executor.connections import resolve_connections
from executor.datasets import DATASET_NAME, UNBLOCK_HINT
from executor.kinds import (
    KINDS,
    Connection,
    DatasetBlocked,
    EventLevel,
    OutputFile,
    PhaseCancelled,
    PhaseContext,
    PhaseError,
    PhaseResult,
    PhaseTimeout,
    SchemaBlocked,
    TerminalPhaseError,
    TransientPhaseError,
    UnknownKindError,
    as_phase_error,
    kind_for,
)
from executor.kinds.python import collect_outputs
from executor.render import render

__all__ = ["Worker", "WorkerStats", "WorkerStopped", "phase_error_json"]

log = logging.getLogger("executor.worker")

MAX_MESSAGE_CHARS = 4000
DATASET_STATES = ("blocked", "accepted")
"""The catalog's schema states a kind must know of before it writes (others are active)."""
MAX_NON_ACTIVE_DATASETS = 1000
MAX_DETAIL_CHARS = 32000


class WorkerStopped(PhaseError):
    """The worker stopped before the phase finished: given back for a retry with backoff."""

    retryable = True
    reason = "worker_stopped"


@dataclass
class WorkerStats:
    """What one `Worker.run` did."""

    claimed: int = 0
    succeeded: int = 0
    failed: int = 0
    """Completed as failed (including cancelled, timed out and given back on stop)."""
    abandoned: int = 0
    """Not completed: the lease was lost, or the completion could not be sent."""


def phase_error_json(error: PhaseError) -> dict[str, Any]:
    """The `error` object `complete_phase` receives: `{message, type, reason, detail}`."""
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


class _Stop(Exception):
    """The lease was lost: stop working on the phase, do not complete it."""


class _PhaseRun:
    """One claimed attempt: its buffered events and progress, its flags, its lease keeper."""

    def __init__(self, worker: Worker, claim: Claim) -> None:
        self.worker = worker
        self.claim = claim
        self.cancel = threading.Event()
        self.lease_lost = threading.Event()
        self.run_cancelled = threading.Event()     # learned from a heartbeat
        self.stopping = threading.Event()          # the worker is giving the phase back
        self.timed_out = threading.Event()         # the worker's own timeout fired
        self.done = threading.Event()              # the keeper must end
        self.wake = threading.Event()
        self.started = time.monotonic()
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._events: list[NewEvent] = []
        self._progress: dict[str, Any] | None = None
        self._progress_sent: dict[str, Any] | None = None
        self._keeper: threading.Thread | None = None

    # -- what the kind calls (any thread) ---------------------------------------------------

    def emit(self, type: str, message: str, level: EventLevel = "info",
             payload: Mapping[str, Any] | None = None) -> None:
        event = NewEvent(type=str(type), message=str(message),
                         payload=dict(payload) if payload is not None else None,
                         phase=self.claim.name, level=level, ts=datetime.now(UTC))
        with self._lock:
            self._events.append(event)
            full = len(self._events) >= self.worker.event_batch
        if full:
            self.wake.set()

    def progress(self, value: float | Mapping[str, Any]) -> None:
        progress = dict(value) if isinstance(value, Mapping) else {"fraction": float(value)}
        with self._lock:
            self._progress = progress
        self.emit("PHASE_PROGRESS", "", level="debug", payload=progress)

    # -- events ---------------------------------------------------------------------------

    def flush(self) -> None:
        """Send every buffered event, in batches; on a transient failure they stay buffered
        (with their event ids) for the next flush. LeaseLost: the lease is lost, unless the
        phase was cancelled (its kept lease expired; the events are dropped)."""
        with self._flush_lock:
            while True:
                with self._lock:
                    batch = self._events[: self.worker.event_batch]
                if not batch or self.lease_lost.is_set():
                    return
                try:
                    self._send(batch)
                except TransientError as exc:
                    log.warning("phase %s: events not sent yet: %s", self.claim.name, exc)
                    return
                except LeaseLost:
                    with self._lock:
                        self._events.clear()
                    if not self.run_cancelled.is_set():
                        self._lose_lease()
                    return
                with self._lock:
                    del self._events[: len(batch)]

    def _send(self, batch: Sequence[NewEvent]) -> None:
        client, run_id, token = self.worker.client, self.claim.run_id, self.claim.lease_token
        try:
            client.append_events(run_id, batch, lease_token=token)
        except (InvalidArgument, PayloadTooLarge) as exc:
            if len(batch) == 1:
                log.warning("phase %s: event %s refused, dropped: %s", self.claim.name,
                            batch[0].type, exc)
                return
            for event in batch:             # keep the good ones, drop the refused ones
                self._send([event])

    # -- the lease keeper -----------------------------------------------------------------

    def start_keeper(self) -> None:
        self._keeper = threading.Thread(target=self._keep, daemon=True,
                                        name=f"lease-{self.claim.name}")
        self._keeper.start()

    def stop_keeper(self) -> None:
        self.done.set()
        self.wake.set()
        if self._keeper is not None:
            self._keeper.join()

    def _keep(self) -> None:
        interval = max(self.claim.lease_seconds / 3.0, 0.05)
        next_beat = time.monotonic() + interval
        tick = max(min(self.worker.event_flush_seconds, interval), 0.01)
        timeout = self.claim.timeout_seconds
        deadline = self.started + timeout + self.worker.timeout_grace if timeout else math.inf
        while not self.done.is_set():
            self.wake.wait(tick)
            self.wake.clear()
            if self.done.is_set():
                return
            try:
                self.flush()
                now = time.monotonic()
                if now >= deadline and not self.timed_out.is_set():
                    log.warning("phase %s ran past its timeout; cancelling it", self.claim.name)
                    self.timed_out.set()
                    self.cancel.set()
                if now >= next_beat and not self.run_cancelled.is_set():
                    self._beat()
                    next_beat = time.monotonic() + interval
            except Exception:                   # never let the keeper die silently
                log.exception("phase %s: lease keeper error", self.claim.name)

    def _beat(self) -> None:
        with self._lock:
            progress = self._progress if self._progress != self._progress_sent else None
        try:
            beat = self.worker.client.heartbeat(self.claim.lease_token, progress=progress)
        except LeaseLost:
            if not self.run_cancelled.is_set():
                self._lose_lease()
            return
        except (TransientError, ContractError) as exc:
            log.warning("phase %s: heartbeat failed: %s", self.claim.name, exc)
            return
        with self._lock:
            if progress is not None:
                self._progress_sent = progress
        if beat.cancel_requested or beat.phase_state == "cancelled":
            log.info("phase %s of run %s was cancelled", self.claim.name, self.claim.run_id)
            self.run_cancelled.set()
            self.cancel.set()

    def _lose_lease(self) -> None:
        log.warning("phase %s of run %s: lease lost; abandoning it", self.claim.name,
                    self.claim.run_id)
        self.lease_lost.set()
        self.cancel.set()


class Worker:
    """Claims and runs phases of `kinds`: see the module's docstring."""

    def __init__(self, client: ContractClient, *, kinds: list[str], concurrency: int = 1,
                 lease_seconds: int = 60, store: ArtifactStore, work_dir: Path,
                 workspace_id: str | None = None, grace_seconds: float = 30,
                 event_batch: int = 100, event_flush_seconds: float = 0.5,
                 claim_wait: float = 5.0, idle_max: float = 5.0,
                 timeout_grace: float = 5.0, repo: str | Path | None = None,
                 run_id: str | None = None) -> None:
        if not kinds:
            raise ValueError("a worker needs at least one kind")
        unknown = sorted(set(kinds) - set(KINDS))
        if unknown:
            raise ValueError(f"unknown kind(s) {', '.join(unknown)} "
                             f"(registered: {', '.join(sorted(KINDS)) or 'none'})")
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, not {concurrency}")
        if not 1 <= lease_seconds <= 3600:
            raise ValueError(f"lease_seconds must be within 1-3600, not {lease_seconds}")
        if not 1 <= event_batch <= 1000:
            raise ValueError(f"event_batch must be within 1-1000, not {event_batch}")
        if grace_seconds < 0 or event_flush_seconds <= 0 or claim_wait < 0:
            raise ValueError("grace_seconds, claim_wait must be >= 0, event_flush_seconds > 0")
        self.client = client
        self.kinds = list(dict.fromkeys(kinds))
        self.concurrency = concurrency
        self.lease_seconds = lease_seconds
        self.store = store
        self.work_dir = Path(work_dir)
        self.workspace_id = workspace_id
        self.run_id = run_id
        self.checkouts = Checkouts(repo, self.work_dir / "checkouts") if repo else None
        """The run's code at its git sha (None: the worker's own code for every phase)."""
        self.grace_seconds = grace_seconds
        self.event_batch = event_batch
        self.event_flush_seconds = event_flush_seconds
        self.claim_wait = claim_wait
        """How long one claim waits on the server (`Prefer: wait`); bounds how long a stop
        takes to be noticed while idle."""
        self.idle_max = idle_max
        self.timeout_grace = timeout_grace
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        self._stats_lock = threading.Lock()
        self._active: dict[str, _PhaseRun] = {}

    # -- the loop -----------------------------------------------------------------------------

    def run(self, stop: threading.Event | None = None,
            max_phases: int | None = None) -> WorkerStats:
        """Claim and run phases until `stop` is set (then stop gracefully) or `max_phases`
        phases were claimed and have ended. Answers what it did."""
        stop = stop if stop is not None else threading.Event()
        stats = WorkerStats()
        slots = threading.BoundedSemaphore(self.concurrency)
        threads: list[threading.Thread] = []
        self.work_dir.mkdir(parents=True, exist_ok=True)
        log.info("worker %s: kinds %s, %d slot(s)", self.name, ",".join(self.kinds),
                 self.concurrency)
        while not stop.is_set() and (max_phases is None or stats.claimed < max_phases):
            if not slots.acquire(timeout=0.2):
                continue
            claim = None
            try:
                claim = self.client.poll_for_work(
                    self.kinds, self.lease_seconds, workspace_id=self.workspace_id,
                    run_id=self.run_id,
                    wait=self.claim_wait, idle_max=self.idle_max, stop=stop)
            except ContractError as exc:        # refused (a bad token...): back off, retry
                log.error("claim_phase refused: %s", exc)
                stop.wait(self.idle_max)
            if claim is None:
                slots.release()
                continue
            stats.claimed += 1
            phase = _PhaseRun(self, claim)
            with self._stats_lock:
                self._active[claim.phase_id] = phase
            thread = threading.Thread(target=self._slot, args=(phase, slots, stats),
                                      name=f"slot-{claim.name}", daemon=True)
            threads.append(thread)
            thread.start()
            threads = [t for t in threads if t.is_alive()]
        if stop.is_set():
            self._drain(threads)
        for thread in threads:
            thread.join()
        log.info("worker %s stopped: %s", self.name, stats)
        return stats

    def _drain(self, threads: list[threading.Thread]) -> None:
        """Graceful stop: give running phases `grace_seconds`, then give the rest back."""
        deadline = time.monotonic() + self.grace_seconds
        for thread in threads:
            thread.join(max(deadline - time.monotonic(), 0.0))
        with self._stats_lock:
            remaining = list(self._active.values())
        for phase in remaining:
            log.info("giving back phase %s of run %s", phase.claim.name, phase.claim.run_id)
            phase.stopping.set()
            phase.cancel.set()

    def _slot(self, phase: _PhaseRun, slots: threading.BoundedSemaphore,
              stats: WorkerStats) -> None:
        try:
            outcome = self._run_phase(phase)
        except Exception:
            log.exception("phase %s of run %s: unexpected worker error", phase.claim.name,
                          phase.claim.run_id)
            outcome = "abandoned"
        finally:
            with self._stats_lock:
                self._active.pop(phase.claim.phase_id, None)
            slots.release()
        with self._stats_lock:
            if outcome == "succeeded":
                stats.succeeded += 1
            elif outcome == "failed":
                stats.failed += 1
            else:
                stats.abandoned += 1

    # -- one phase ----------------------------------------------------------------------------

    def _run_phase(self, phase: _PhaseRun) -> str:
        claim = phase.claim
        log.info("phase %s of run %s: attempt %d/%d", claim.name, claim.run_id, claim.attempt,
                 claim.max_attempts)
        output_dir = self.work_dir / claim.run_id / claim.name / f"attempt-{claim.attempt}"
        shutil.rmtree(output_dir, ignore_errors=True)
        output_dir.mkdir(parents=True)
        try:
            phase.emit("PHASE_STARTED", f"{claim.kind} phase {claim.name} started",
                       payload={"attempt": claim.attempt, "kind": claim.kind,
                                "worker": self.name})
            phase.flush()
            if phase.lease_lost.is_set():
                return "abandoned"
            phase.start_keeper()
            try:
                result, error = self._execute(phase, output_dir)
                phase.flush()       # the kind's events before the artifacts' in the trail
                manifest: dict[str, Any] = {}
                if result is not None:
                    try:
                        manifest = self._register_outputs(phase, result)
                    except _Stop:
                        return "abandoned"
                    except Exception as exc:
                        log.warning("phase %s: registering outputs failed: %s", claim.name, exc)
                        result, error = None, as_phase_error(exc)
                if result is None and error is not None and not isinstance(
                        error, PhaseCancelled | WorkerStopped) and not phase.cancel.is_set():
                    try:
                        self._register_failure_outputs(phase, output_dir)
                    except _Stop:
                        return "abandoned"
                if result is not None or isinstance(error, SchemaBlocked):
                    try:
                        error = self._record_datasets(phase, manifest, error)
                    except _Stop:
                        return "abandoned"
                    if error is not None:
                        result = None
            finally:
                phase.stop_keeper()
            if phase.lease_lost.is_set():
                return "abandoned"
            phase.flush()
            if phase.lease_lost.is_set():
                return "abandoned"
            return self._complete(phase, manifest if result is not None else None, error)
        finally:
            shutil.rmtree(output_dir, ignore_errors=True)

    def _execute(self, phase: _PhaseRun,
                 output_dir: Path) -> tuple[PhaseResult | None, PhaseError | None]:
        claim = phase.claim
        try:
            params, connections, code_dir = self._prepare(phase)
            datasets = self._dataset_states(claim)
        except Exception as exc:
            return None, as_phase_error(exc)
        ctx = PhaseContext(
            run_id=claim.run_id, phase=claim.name, attempt=claim.attempt, kind=claim.kind,
            params=params, inputs=claim.inputs, git_sha=claim.run.git_sha,
            input_manifest=claim.run.input_manifest, output_dir=output_dir,
            emit=phase.emit, progress=phase.progress, cancel=phase.cancel,
            timeout_s=float(claim.timeout_seconds) if claim.timeout_seconds else None,
            connections=connections, code_dir=code_dir, datasets=datasets)
        try:
            kind = kind_for(claim.kind)
        except UnknownKindError as exc:
            return None, TerminalPhaseError(str(exc), error_type="UnknownKindError")
        try:
            return kind.run(ctx), None
        except Exception as exc:
            return None, as_phase_error(exc)

    def _prepare(self, phase: _PhaseRun
                 ) -> tuple[dict[str, Any], dict[str, Connection], Path | None]:
        """The phase's params rendered, its connections resolved, its code checked out."""
        claim = phase.claim
        manifest = claim.run.input_manifest
        run_params = manifest.get("params") or {}
        if not isinstance(run_params, Mapping):
            raise TerminalPhaseError("the run's input_manifest.params must be an object")
        run = {"id": claim.run_id, "git_sha": claim.run.git_sha,
               "spec_slug": claim.run.spec_slug}
        params = render(claim.params, params=run_params, run=run, path="params")
        connections = resolve_connections(params.get("connections"),
                                          manifest.get("connections"), params=run_params,
                                          run=run)
        kind = KINDS.get(claim.kind)
        allowed = kind.CONNECTION_TYPES if kind is not None else frozenset()
        for connection in connections.values():
            if allowed and connection.type not in allowed:
                raise TerminalPhaseError(
                    f"connection {connection.name!r} is of type {connection.type!r}; the "
                    f"{claim.kind} kind takes {', '.join(sorted(allowed))}")
        code = (self.checkouts.code_for(claim.run.git_sha) if self.checkouts is not None
                else own_code("no repository configured"))
        phase.emit("CODE_CHECKOUT", code.note, payload={
            "git_sha": claim.run.git_sha, "commit": code.commit,
            "code_dir": str(code.path) if code.path is not None else None})
        return params, connections, code.path

    def _dataset_states(self, claim: Claim) -> dict[str, str]:
        """The workspace's datasets that are not active, by name -> `blocked` | `accepted`
        (the kinds refuse the first, may apply the breaking change of the second). Without
        them the guard cannot hold: a refusal fails the attempt (transient when it may
        pass)."""
        states: dict[str, str] = {}
        for state in DATASET_STATES:
            try:
                found = self.client.list_datasets(workspace_id=claim.workspace_id,
                                                  schema_state=state,
                                                  limit=MAX_NON_ACTIVE_DATASETS)
            except TransientError as exc:
                raise TransientPhaseError(f"the catalog's {state} datasets could not be "
                                          f"read: {exc}") from exc
            except ContractError as exc:
                raise TerminalPhaseError(f"the catalog's {state} datasets could not be "
                                         f"read: {exc}") from exc
            states.update({dataset.name: state for dataset in found})
        return states

    def _record_datasets(self, phase: _PhaseRun, manifest: dict[str, Any],
                         error: PhaseError | None) -> PhaseError | None:
        """Record in the catalog, under the lease, every table the phase wrote (its
        manifest's `tables`, else a legacy `table` with a name), or the breaking change a
        `SchemaBlocked` refused (which blocks the dataset; the phase fails all the same).
        Answers the error the phase ends with (None: it may succeed); `_Stop` when the lease
        is lost."""
        if isinstance(error, SchemaBlocked):
            try:
                self._record(phase, error.table, error.uri, layer=error.layer,
                             schema=error.schema, change="BREAKING", changes=error.changes)
            except ContractError as exc:        # the phase fails anyway; a re-run records
                log.warning("phase %s: recording the breaking change of %s failed: %s",
                            phase.claim.name, error.table, exc)
            return error
        try:
            entries = table_entries(manifest)
        except ValueError as exc:
            return TerminalPhaseError(f"output manifest: {exc}", error_type="ValueError")
        for entry in entries:
            schema_change = entry.get("schema_change") or {}
            try:
                self._record(phase, entry["name"], entry["uri"], layer=entry.get("layer"),
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
        return None

    def _record(self, phase: _PhaseRun, name: str, uri: str, **fields: Any) -> None:
        """One `record_dataset` under the phase's lease; `_Stop` when the lease is lost."""
        try:
            recorded = self.client.record_dataset(phase.claim.lease_token, name, uri, **fields)
        except LeaseLost:
            if phase.run_cancelled.is_set():
                raise       # completed as cancelled all the same
            phase._lose_lease()
            raise _Stop from None
        log.info("phase %s: dataset %s recorded (%s, schema %s v%s)", phase.claim.name, name,
                 fields.get("change"), recorded.schema_state, recorded.schema_version)

    def _register_failure_outputs(self, phase: _PhaseRun, output_dir: Path) -> None:
        """The files a failed attempt left in its output directory (a quality check's
        failing rows, a partial report) are registered with role `report`, so that the
        failure can be read, not only counted; a file that cannot be stored is logged and
        skipped (the phase fails all the same)."""
        files = [OutputFile(path=f.path, name=f.name, media_type=f.media_type, role="report")
                 for f in collect_outputs(output_dir)]
        if not files:
            return
        try:
            digests = self._register_outputs(phase, PhaseResult(outputs=files))
        except _Stop:
            raise
        except Exception as exc:
            log.warning("phase %s: registering a failed attempt's files failed: %s",
                        phase.claim.name, exc)
            return
        phase.emit("FAILURE_OUTPUTS", f"{len(files)} file(s) of the failed attempt registered",
                   level="warning", payload={"artifacts": digests.get("artifacts", {})})

    def _register_outputs(self, phase: _PhaseRun, result: PhaseResult) -> dict[str, Any]:
        """Put every output in the store and register it; the manifest with their digests."""
        manifest = dict(result.output_manifest)
        digests: dict[str, str] = {}
        for output in result.outputs:
            if phase.lease_lost.is_set():
                raise _Stop
            blob = self.store.put_file(output.path, output.media_type)
            try:
                self.client.register_artifact(
                    phase.claim.lease_token, blob.digest, blob.uri, blob.size_bytes,
                    media_type=output.media_type, kind=output.kind, name=output.name,
                    role=output.role)
            except LeaseLost:
                if phase.run_cancelled.is_set():
                    return manifest
                phase._lose_lease()
                raise _Stop from None
            digests[output.name] = blob.digest
        if digests:
            manifest["artifacts"] = digests
        return manifest

    def _complete(self, phase: _PhaseRun, manifest: dict[str, Any] | None,
                  error: PhaseError | None) -> str:
        claim = phase.claim
        succeeded = manifest is not None and not phase.run_cancelled.is_set()
        final = None if succeeded else self._final_error(phase, error)
        if final is not None:
            log.info("phase %s of run %s failed (%s, retryable %s): %s", claim.name,
                     claim.run_id, final.reason, final.retryable, final.message)
        try:
            if final is None:
                done = self.client.complete_phase(claim.lease_token, "succeeded",
                                                  output_manifest=manifest)
            else:
                done = self.client.complete_phase(claim.lease_token, "failed",
                                                  error=phase_error_json(final),
                                                  retryable=final.retryable)
        except LeaseLost:
            log.warning("phase %s of run %s: lease lost before completion", claim.name,
                        claim.run_id)
            return "abandoned"
        except ContractError as exc:
            log.error("phase %s of run %s: complete_phase failed: %s", claim.name,
                      claim.run_id, exc)
            return "abandoned"
        if done.run_state == "succeeded":
            try:
                self.client.complete_run(claim.run_id)
            except ContractError as exc:     # the creator may finalize it instead
                log.warning("run %s: complete_run failed: %s", claim.run_id, exc)
        return "succeeded" if final is None else "failed"

    def _final_error(self, phase: _PhaseRun, error: PhaseError | None) -> PhaseError:
        name = phase.claim.name
        if phase.run_cancelled.is_set():
            return PhaseCancelled(f"phase {name!r} was cancelled while it ran",
                                  error_type="PhaseCancelled")
        if phase.timed_out.is_set() and not isinstance(error, PhaseTimeout):
            return PhaseTimeout(f"phase {name!r} exceeded its timeout of "
                                f"{phase.claim.timeout_seconds} s", error_type="PhaseTimeout")
        if phase.stopping.is_set() and (error is None or isinstance(error, PhaseCancelled)):
            return WorkerStopped(f"the worker stopped before phase {name!r} finished",
                                 error_type="WorkerStopped")
        if error is None:   # defensive: a result that could not be completed
            return TransientPhaseError(f"phase {name!r} ended without a result")
        return error
