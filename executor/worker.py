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

from executor.artifacts import ArtifactStore
from executor.client import (
    Claim,
    ContractClient,
    ContractError,
    InvalidArgument,
    LeaseLost,
    NewEvent,
    PayloadTooLarge,
    TransientError,
)
from executor.kinds import (
    KINDS,
    EventLevel,
    PhaseCancelled,
    PhaseContext,
    PhaseError,
    PhaseResult,
    PhaseTimeout,
    TerminalPhaseError,
    TransientPhaseError,
    UnknownKindError,
    as_phase_error,
    kind_for,
)

__all__ = ["Worker", "WorkerStats", "WorkerStopped", "phase_error_json"]

log = logging.getLogger("executor.worker")

MAX_MESSAGE_CHARS = 4000
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
    return {
        "message": message,
        "type": error.error_type or type(error).__name__,
        "reason": error.reason,
        "detail": detail,
    }


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
                 timeout_grace: float = 5.0) -> None:
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
        ctx = PhaseContext(
            run_id=claim.run_id, phase=claim.name, attempt=claim.attempt, kind=claim.kind,
            params=claim.params, inputs=claim.inputs, git_sha=claim.run.git_sha,
            input_manifest=claim.run.input_manifest, output_dir=output_dir,
            emit=phase.emit, progress=phase.progress, cancel=phase.cancel,
            timeout_s=float(claim.timeout_seconds) if claim.timeout_seconds else None)
        try:
            kind = kind_for(claim.kind)
        except UnknownKindError as exc:
            return None, TerminalPhaseError(str(exc), error_type="UnknownKindError")
        try:
            return kind.run(ctx), None
        except Exception as exc:
            return None, as_phase_error(exc)

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
