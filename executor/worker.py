"""The worker: claims phases over the contract and runs them with their kind, in slots.

What it does around a kind's `run` (slots, leases, events, outputs, the catalog, timeouts, a
graceful stop) is described in docs/worker.md. One attempt's lease keeper is
`executor.attempt`, its outputs and failure report `executor.outputs`; the kinds come from
the registry (`executor.kinds.registry`), never imported here by name.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from control_room.contract.client import (
    CLAIM_PHASES_MAX,
    Claim,
    ContractClient,
    ContractError,
    LeaseLost,
)
from executor.artifacts import ArtifactStore
from executor.attempt import Attempt, AttemptLost, LeaseRunOut, Outcome
from executor.checkout import Checkouts, own_code
from executor.connections import connection_names, resolve_connections
from executor.kinds.base import (
    Connection,
    Kind,
    KindOptions,
    PhaseCancelled,
    PhaseContext,
    PhaseError,
    PhaseResult,
    PhaseTimeout,
    SchemaBlocked,
    Startable,
    TerminalPhaseError,
    TransientPhaseError,
    as_phase_error,
)
from executor.kinds.registry import KINDS, load_kind
from executor.outputs import Outputs, phase_error_json, table_entries
from executor.render import render
from executor.secrets import SecretPolicy, mask_logs
from executor.settings import run_lake, workspace_lake

__all__ = ["Outcome", "Worker", "WorkerStats", "WorkerStopped", "phase_error_json",
           "table_entries"]

log = logging.getLogger("executor.worker")


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

    def count(self, outcome: Outcome) -> None:
        if outcome is Outcome.SUCCEEDED:
            self.succeeded += 1
        elif outcome is Outcome.FAILED:
            self.failed += 1
        else:
            self.abandoned += 1


class Worker:
    """Claims and runs phases of `kinds` in `concurrency` slots (docs/worker.md).

        with ContractClient(url, token) as client:
            worker = Worker(client, kinds=["python"], concurrency=2,
                            store=artifact_store_from_url("file:///var/lib/cr/blobs"),
                            work_dir=Path("/var/lib/cr/work"))
            worker.run(stop)        # until `stop` is set (SIGTERM), then a graceful stop
    """

    def __init__(self, client: ContractClient, *, kinds: list[str], concurrency: int = 1,
                 lease_seconds: int = 60, store: ArtifactStore, work_dir: Path,
                 workspace_id: str | None = None, grace_seconds: float = 30,
                 event_batch: int = 100, event_flush_seconds: float = 0.5,
                 claim_wait: float = 5.0, idle_max: float = 5.0,
                 timeout_grace: float = 5.0, repo: str | Path | None = None,
                 run_id: str | None = None, python_spares: int = 2,
                 lake_root: Path | None = None, secret_allow: str | None = None) -> None:
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
        if python_spares < 0:
            raise ValueError(f"python_spares must be at least 0, not {python_spares}")
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
        self.lake_root = Path(lake_root) if lake_root is not None else self.work_dir / "lake"
        """Workspaces' lakes live under it (`workspace_lake`): the sql kind is confined to the
        run's workspace lake."""
        self.secret_allow = secret_allow or ""
        """Which secret references this worker resolves (`CONTROL_ROOM_SECRET_ALLOW`)."""
        self.secret_policy = SecretPolicy.parse(self.secret_allow)     # ValueError: bad entry
        """`secret_allow` parsed (executor/secrets.py)."""
        self._secret_log = mask_logs()
        self.kind_options = KindOptions(python_spares=python_spares,
                                        secret_allow=self.secret_allow)
        """What the worker's kinds are started with (`Startable.start`)."""
        self.outputs = Outputs(client, store)
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        self._stats_lock = threading.Lock()
        self._active: dict[str, Attempt] = {}
        self._kinds: dict[str, Kind] = {}

    # -- the loop -----------------------------------------------------------------------------

    def run(self, stop: threading.Event | None = None,
            max_phases: int | None = None) -> WorkerStats:
        """Claim and run phases until `stop` is set (then stop gracefully) or `max_phases`
        phases were claimed and have ended. Answers what it did."""
        stop = stop if stop is not None else threading.Event()
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self._start_kinds()
        try:
            return self._loop(stop, max_phases)
        finally:
            self._close_kinds()

    def _start_kinds(self) -> None:
        """One instance of each kind for the whole run, started when it holds resources."""
        for name in self.kinds:
            kind = load_kind(name)()
            if isinstance(kind, Startable):
                kind.start(self.kind_options)
            self._kinds[name] = kind

    def _close_kinds(self) -> None:
        kinds, self._kinds = self._kinds, {}
        for name, kind in kinds.items():
            if isinstance(kind, Startable):
                try:
                    kind.close()
                except Exception:
                    log.exception("kind %s: close failed", name)

    def _loop(self, stop: threading.Event, max_phases: int | None) -> WorkerStats:
        stats = WorkerStats()
        slots = threading.BoundedSemaphore(self.concurrency)
        threads: list[threading.Thread] = []
        log.info("worker %s: kinds %s, %d slot(s)", self.name, ",".join(self.kinds),
                 self.concurrency)
        while not stop.is_set() and (max_phases is None or stats.claimed < max_phases):
            if not slots.acquire(timeout=0.2):
                continue
            # every slot free now is claimed for in one call (claim_phases, at most 32)
            most = min(self.concurrency, CLAIM_PHASES_MAX,
                       self.concurrency if max_phases is None else max_phases - stats.claimed)
            free = 1
            while free < most and slots.acquire(blocking=False):
                free += 1
            claims: list[Claim] = []
            try:
                claims = self.client.poll_for_claims(
                    self.kinds, self.lease_seconds, free, workspace_id=self.workspace_id,
                    run_id=self.run_id,
                    wait=self.claim_wait, idle_max=self.idle_max, stop=stop)
            except ContractError as exc:        # refused (a bad token...): back off, retry
                log.error("claim_phases refused: %s", exc)
                stop.wait(self.idle_max)
            for _ in range(free - len(claims)):
                slots.release()
            for claim in claims:
                stats.claimed += 1
                phase = Attempt(self.client, claim, event_batch=self.event_batch,
                                event_flush_seconds=self.event_flush_seconds,
                                timeout_grace=self.timeout_grace)
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

    def _slot(self, phase: Attempt, slots: threading.BoundedSemaphore,
              stats: WorkerStats) -> None:
        try:
            outcome = self._run_phase(phase)
        except Exception:
            log.exception("phase %s of run %s: unexpected worker error", phase.claim.name,
                          phase.claim.run_id)
            outcome = Outcome.ABANDONED
        finally:
            self._secret_log.unregister(phase.masker)
            with self._stats_lock:
                self._active.pop(phase.claim.phase_id, None)
            slots.release()
        with self._stats_lock:
            stats.count(outcome)

    # -- one phase ----------------------------------------------------------------------------

    def _run_phase(self, phase: Attempt) -> Outcome:
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
                return Outcome.ABANDONED
            phase.start_keeper()
            try:
                result, error = self._execute(phase, output_dir)
                # from here on the attempt's work is done: every call below is held through
                # a short outage of the contract (Attempt.hold), until the lease's deadline
                phase.drain()       # the kind's events before the artifacts' in the trail
                manifest: dict[str, Any] = {}
                if result is not None:
                    try:
                        manifest = self.outputs.register(phase, result)
                    except AttemptLost:
                        raise
                    except Exception as exc:
                        log.warning("phase %s: registering outputs failed: %s", claim.name, exc)
                        result, error = None, as_phase_error(exc)
                if result is None and error is not None and not isinstance(
                        error, PhaseCancelled | WorkerStopped) and not phase.cancel.is_set():
                    self.outputs.register_failure_files(phase, output_dir)
                if result is not None or isinstance(error, SchemaBlocked):
                    error = self.outputs.record_datasets(phase, manifest, error)
                    if error is not None:
                        result = None
                if phase.lease_lost.is_set():
                    return Outcome.ABANDONED
                phase.drain()       # the trail complete before the completion ends the lease
            except AttemptLost:
                return Outcome.ABANDONED
            finally:
                phase.stop_keeper()
            if phase.lease_lost.is_set():
                return Outcome.ABANDONED
            return self._complete(phase, manifest if result is not None else None, error)
        finally:
            shutil.rmtree(output_dir, ignore_errors=True)

    def _execute(self, phase: Attempt,
                 output_dir: Path) -> tuple[PhaseResult | None, PhaseError | None]:
        claim = phase.claim
        try:
            params, connections, code_dir = self._prepare(phase)
            datasets = self.outputs.dataset_states(phase)
        except AttemptLost:
            raise
        except Exception as exc:
            return None, as_phase_error(exc)
        ctx = PhaseContext(
            run_id=claim.run_id, phase=claim.name, attempt=claim.attempt, kind=claim.kind,
            params=params, inputs=claim.inputs, git_sha=claim.run.git_sha,
            input_manifest=claim.run.input_manifest, output_dir=output_dir,
            emit=phase.emit, progress=phase.progress, cancel=phase.cancel,
            timeout_s=float(claim.timeout_seconds) if claim.timeout_seconds else None,
            connections=connections, code_dir=code_dir, datasets=datasets,
            lake_root=workspace_lake(self.lake_root, claim.workspace_id))
        kind = self._kinds.get(claim.kind)
        if kind is None:
            return None, TerminalPhaseError(
                f"phase kind {claim.kind!r} is not run by this worker "
                f"(kinds: {', '.join(self.kinds)})", error_type="UnknownKindError")
        try:
            return kind.run(ctx), None
        except Exception as exc:
            return None, as_phase_error(exc)

    def _prepare(self, phase: Attempt
                 ) -> tuple[dict[str, Any], dict[str, Connection], Path | None]:
        """The phase's params rendered, its connections resolved, its code checked out."""
        claim = phase.claim
        manifest = claim.run.input_manifest
        run_params = manifest.get("params") or {}
        if not isinstance(run_params, Mapping):
            raise TerminalPhaseError("the run's input_manifest.params must be an object")
        run = {"id": claim.run_id, "git_sha": claim.run.git_sha,
               "spec_slug": claim.run.spec_slug,
               "lake": str(self._run_lake(claim))}
        names = connection_names(claim.params.get("connections"))   # literal, never rendered
        kind = self._kinds.get(claim.kind)
        allowed = kind.CONNECTION_TYPES if kind is not None else frozenset()
        for name in names:          # before any secret is resolved
            registered = claim.connections.get(name)
            if allowed and registered is not None and registered.type not in allowed:
                raise TerminalPhaseError(
                    f"connection {name!r} is of type {registered.type!r}; the "
                    f"{claim.kind} kind takes {', '.join(sorted(allowed))}")
        self._secret_log.register(phase.masker)
        connections = resolve_connections(names, claim.connections, policy=self.secret_policy,
                                          masker=phase.masker, workspace=claim.workspace_id)
        params = render(claim.params, params=run_params, run=run, path="params")
        code = (self.checkouts.code_for(claim.run.git_sha) if self.checkouts is not None
                else own_code("no repository configured"))
        phase.emit("CODE_CHECKOUT", code.note, payload={
            "git_sha": claim.run.git_sha, "commit": code.commit,
            "code_dir": str(code.path) if code.path is not None else None})
        return params, connections, code.path

    def _run_lake(self, claim: Claim) -> Path:
        """The run's `${run.lake}`: its workspace lake, or the directory inside it that
        `input_manifest.lake_dir` names (a verify's rebuild)."""
        try:
            return run_lake(workspace_lake(self.lake_root, claim.workspace_id),
                            claim.run.input_manifest.get("lake_dir"))
        except ValueError as exc:
            raise TerminalPhaseError(str(exc), error_type="ValueError") from None

    def _complete(self, phase: Attempt, manifest: dict[str, Any] | None,
                  error: PhaseError | None) -> Outcome:
        claim = phase.claim
        succeeded = manifest is not None and not phase.run_cancelled.is_set()
        final = None if succeeded else self._final_error(phase, error)
        if final is not None:
            log.info("phase %s of run %s failed (%s, retryable %s): %s", claim.name,
                     claim.run_id, final.reason, final.retryable, final.message)
        if final is None:
            args: dict[str, Any] = {"output_manifest": phase.masker.json(manifest)}
        else:
            args = {"error": phase.masker.json(phase_error_json(final)),
                    "retryable": final.retryable}
        try:
            # held through an outage: a repeat of a completion that went through is answered
            # as a replay, so the outcome is reported once whatever the retries
            done = phase.hold("complete_phase", lambda: self.client.complete_phase(
                claim.lease_token, "succeeded" if final is None else "failed", **args))
        except LeaseRunOut:
            return Outcome.ABANDONED
        except LeaseLost:
            log.warning("phase %s of run %s: lease lost before completion", claim.name,
                        claim.run_id)
            return Outcome.ABANDONED
        except ContractError as exc:
            log.error("phase %s of run %s: complete_phase failed: %s", claim.name,
                      claim.run_id, exc)
            return Outcome.ABANDONED
        if done.run_state == "succeeded":
            try:
                phase.hold("complete_run", lambda: self.client.complete_run(claim.run_id))
            except (ContractError, LeaseRunOut) as exc:  # the creator may finalize it instead
                log.warning("run %s: complete_run failed: %s", claim.run_id, exc)
        return Outcome.SUCCEEDED if final is None else Outcome.FAILED

    def _final_error(self, phase: Attempt, error: PhaseError | None) -> PhaseError:
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
