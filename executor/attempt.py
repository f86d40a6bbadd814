"""One claimed attempt of a phase: its lease keeper (heartbeats, the event buffer and its
flushes, lease loss, cancellation) and how it ended (`Outcome`). docs/worker.md.
"""

from __future__ import annotations

import enum
import logging
import math
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

from control_room.contract.client import (
    Claim,
    ContractClient,
    ContractError,
    InvalidArgument,
    LeaseLost,
    NewEvent,
    PayloadTooLarge,
    ServiceUnavailable,
    TransientError,
    TransportFailure,
)
from executor.kinds.base import EventLevel
from executor.secrets import Masker

__all__ = ["Attempt", "AttemptLost", "LeaseRunOut", "Outcome"]

log = logging.getLogger("executor.worker")

_T = TypeVar("_T")

HOLD_INITIAL = 0.2
"""Seconds before the first retry of a held call (`Attempt.hold`); doubled up to HOLD_MAX."""
HOLD_MAX = 2.0


class Outcome(enum.Enum):
    """How the worker left a claimed attempt."""

    SUCCEEDED = "succeeded"
    """Completed as succeeded."""
    FAILED = "failed"
    """Completed as failed (including cancelled, timed out and given back on stop)."""
    ABANDONED = "abandoned"
    """Not completed: the lease was lost, or the completion could not be sent."""


class AttemptLost(Exception):
    """The lease was lost: stop working on the phase, do not complete it."""


class LeaseRunOut(AttemptLost):
    """The contract stayed unreachable until the lease's deadline: the attempt is given up
    (not completed), and the phase is reclaimed once its lease expires."""


def _unreachable(exc: BaseException) -> bool:
    """An answer that never came or a 502/503/504: the contract may be back in a moment (a
    gateway restarting, the database failing over). Other refusals are answers."""
    return isinstance(exc, TransportFailure | ServiceUnavailable)


class Attempt:
    """One claimed attempt: its buffered events and progress, its flags, its lease keeper.

    `emit` and `progress` are what the kind's context calls (from any thread); the keeper
    thread (`start_keeper` / `stop_keeper`) flushes the events and sends the heartbeats."""

    def __init__(self, client: ContractClient, claim: Claim, *, event_batch: int = 100,
                 event_flush_seconds: float = 0.5, timeout_grace: float = 5.0) -> None:
        self.client = client
        self.claim = claim
        self.event_batch = event_batch
        self.event_flush_seconds = event_flush_seconds
        self.timeout_grace = timeout_grace
        self.cancel = threading.Event()
        """Set when the kind must stop: cancelled, lease lost, timed out, worker stopping."""
        self.lease_lost = threading.Event()
        self.run_cancelled = threading.Event()     # learned from a heartbeat
        self.stopping = threading.Event()          # the worker is giving the phase back
        self.timed_out = threading.Event()         # the worker's own timeout fired
        self.started = time.monotonic()
        self.lease_deadline = self.started + claim.lease_seconds
        """Until when (monotonic) the lease surely lives: the claim, then each heartbeat that
        was answered, plus `lease_seconds` from when it was sent. Held calls retry until
        then (`hold`)."""
        self._done = threading.Event()             # the keeper must end
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._events: list[NewEvent] = []
        self._progress: dict[str, Any] | None = None
        self._progress_sent: dict[str, Any] | None = None
        self._keeper: threading.Thread | None = None
        self.masker = Masker()
        """The secret values the attempt's connections resolved: replaced by `***` in every
        event, progress, error and manifest the attempt sends (executor/secrets.py)."""

    # -- what the kind calls (any thread) ---------------------------------------------------

    def emit(self, type: str, message: str, level: EventLevel = "info",
             payload: Mapping[str, Any] | None = None) -> None:
        mask = self.masker
        event = NewEvent(type=str(type), message=mask.text(str(message)),
                         payload=mask.json(dict(payload)) if payload is not None else None,
                         phase=self.claim.name, level=level, ts=datetime.now(UTC))
        with self._lock:
            self._events.append(event)
            full = len(self._events) >= self.event_batch
        if full:
            self._wake.set()

    def progress(self, value: float | Mapping[str, Any]) -> None:
        progress = dict(value) if isinstance(value, Mapping) else {"fraction": float(value)}
        progress = self.masker.json(progress)
        with self._lock:
            self._progress = progress
        self.emit("PHASE_PROGRESS", "", level="debug", payload=progress)

    # -- the lease ------------------------------------------------------------------------

    def lose_lease(self) -> None:
        """The contract answered `LeaseLost`: another executor owns the phase now; the kind
        is cancelled and the attempt will not be completed."""
        log.warning("phase %s of run %s: lease lost; abandoning it", self.claim.name,
                    self.claim.run_id)
        self.lease_lost.set()
        self.cancel.set()

    def lease_refused(self) -> None:
        """A call under the lease answered `LeaseLost`: after a cancellation that is expected
        (the cancelled phase's lease is gone) and returns; else the lease is lost and
        `AttemptLost` raised."""
        if self.run_cancelled.is_set():
            return
        self.lose_lease()
        raise AttemptLost

    # -- calls that must not lose finished work ---------------------------------------------

    def hold(self, what: str, call: Callable[[], _T]) -> _T:
        """`call()`, retried while the contract is unreachable (no answer, 502/503/504) with
        backoff and jitter until the lease's deadline; then `LeaseRunOut`. A short outage of
        the gateway or the database must not throw away work the attempt has finished: the
        lease still fences it, so holding on is safe (the calls held are idempotent: a
        registration, a catalog record, events with their ids, a completion answered as a
        replay). Any other answer (LeaseLost, a refusal) is raised at once."""
        delay = HOLD_INITIAL
        tries = 0
        while True:
            tries += 1
            try:
                result = call()
            except TransientError as exc:
                if not _unreachable(exc):
                    raise
                left = self.lease_deadline - time.monotonic()
                if left <= 0:
                    log.error("phase %s of run %s: %s still failing at the lease's deadline "
                              "after %d tries; giving the attempt up: %s", self.claim.name,
                              self.claim.run_id, what, tries, exc)
                    raise LeaseRunOut(f"{what}: {exc}") from exc
                pause = min(random.uniform(delay / 2, delay), left)
                log.warning("phase %s: %s failed (%s); holding the outcome, retrying in "
                            "%.2f s (%.1f s of lease left)", self.claim.name, what, exc,
                            pause, left)
                time.sleep(pause)
                delay = min(delay * 2, HOLD_MAX)
            else:
                if tries > 1:
                    log.info("phase %s: %s went through after %d tries", self.claim.name,
                             what, tries)
                return result

    # -- events ---------------------------------------------------------------------------

    def drain(self) -> None:
        """Send every buffered event before going on (`hold`): the attempt's trail must be
        complete before its completion ends the lease. `LeaseRunOut` when the contract stayed
        unreachable until the lease's deadline."""
        try:
            self.hold("append_events", lambda: self.flush(raise_transient=True))
        except TransientError as exc:     # another 5xx: they stay buffered, as flush leaves them
            log.warning("phase %s: events not sent yet: %s", self.claim.name, exc)

    def flush(self, raise_transient: bool = False) -> None:
        """Send every buffered event, in batches; on a transient failure they stay buffered
        (with their event ids) for the next flush (and the failure is raised when
        `raise_transient`). LeaseLost: the lease is lost, unless the phase was cancelled (its
        kept lease expired; the events are dropped)."""
        with self._flush_lock:
            while True:
                with self._lock:
                    batch = self._events[: self.event_batch]
                if not batch or self.lease_lost.is_set():
                    return
                try:
                    self._send(batch)
                except TransientError as exc:
                    if raise_transient:
                        raise
                    log.warning("phase %s: events not sent yet: %s", self.claim.name, exc)
                    return
                except LeaseLost:
                    with self._lock:
                        self._events.clear()
                    if not self.run_cancelled.is_set():
                        self.lose_lease()
                    return
                with self._lock:
                    del self._events[: len(batch)]

    def _send(self, batch: Sequence[NewEvent]) -> None:
        try:
            self.client.append_events(self.claim.run_id, batch,
                                      lease_token=self.claim.lease_token)
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
        self._done.set()
        self._wake.set()
        if self._keeper is not None:
            self._keeper.join()

    def _keep(self) -> None:
        interval = max(self.claim.lease_seconds / 3.0, 0.05)
        next_beat = time.monotonic() + interval
        tick = max(min(self.event_flush_seconds, interval), 0.01)
        timeout = self.claim.timeout_seconds
        deadline = self.started + timeout + self.timeout_grace if timeout else math.inf
        retry = HOLD_INITIAL
        while not self._done.is_set():
            self._wake.wait(tick)
            self._wake.clear()
            if self._done.is_set():
                return
            try:
                self.flush()
                now = time.monotonic()
                if now >= deadline and not self.timed_out.is_set():
                    log.warning("phase %s ran past its timeout; cancelling it", self.claim.name)
                    self.timed_out.set()
                    self.cancel.set()
                if now >= next_beat and not self.run_cancelled.is_set():
                    if self._beat():
                        retry = HOLD_INITIAL
                        next_beat = time.monotonic() + interval
                    else:       # try again soon (backoff), not a third of a lease later
                        next_beat = time.monotonic() + min(random.uniform(retry / 2, retry),
                                                           interval)
                        retry = min(retry * 2, HOLD_MAX)
            except Exception:                   # never let the keeper die silently
                log.exception("phase %s: lease keeper error", self.claim.name)

    def _beat(self) -> bool:
        """One heartbeat; whether it was answered (False: try again soon)."""
        with self._lock:
            progress = self._progress if self._progress != self._progress_sent else None
        sent = time.monotonic()
        try:
            beat = self.client.heartbeat(self.claim.lease_token, progress=progress)
        except LeaseLost:
            if not self.run_cancelled.is_set():
                self.lose_lease()
            return True
        except (TransientError, ContractError) as exc:
            log.warning("phase %s: heartbeat failed: %s", self.claim.name, exc)
            return False
        with self._lock:
            if progress is not None:
                self._progress_sent = progress
            if beat.phase_state == "running":
                self.lease_deadline = max(self.lease_deadline,
                                          sent + self.claim.lease_seconds)
        if beat.cancel_requested or beat.phase_state == "cancelled":
            log.info("phase %s of run %s was cancelled", self.claim.name, self.claim.run_id)
            self.run_cancelled.set()
            self.cancel.set()
        return True
