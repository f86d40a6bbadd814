"""`Scheduler`: call `run_due_schedules` every `interval` seconds until stopped.

A call that claimed as many schedules as its `limit` is followed at once by another (more may
be due). A call that fails (the gateway unreachable, a 5xx) is logged and retried at the next
interval; a refusal of the token (401/403) stops the loop, since no later call would pass.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from control_room.contract.client import (
    ContractClient,
    ContractError,
    DueResult,
    Forbidden,
    Unauthorized,
)

__all__ = ["Scheduler", "SchedulerStats"]

log = logging.getLogger("control_room.scheduler")


@dataclass
class SchedulerStats:
    """What a scheduler did since it started."""

    calls: int = 0
    created: int = 0
    skipped: int = 0
    failed: int = 0
    errors: int = 0


@dataclass
class Scheduler:
    """Fires due ticks through `client` (a service_role token fires every workspace's; a
    developer's or admin's only its own, or `workspace_id`'s)."""

    client: ContractClient
    interval: float = 15.0
    workspace_id: str | None = None
    limit: int = 100
    report: Callable[[DueResult], None] | None = None
    """Called with each answer that recorded a tick (the CLI prints them)."""

    def __post_init__(self) -> None:
        if self.interval <= 0:
            raise ValueError(f"interval must be positive, not {self.interval}")
        if not 1 <= self.limit <= 1000:
            raise ValueError(f"limit must be between 1 and 1000, not {self.limit}")
        self.stats = SchedulerStats()

    def tick(self) -> DueResult:
        """One call of run_due_schedules, counted."""
        result = self.client.run_due_schedules(self.workspace_id, self.limit)
        self.stats.calls += 1
        self.stats.created += result.created
        self.stats.skipped += result.skipped
        self.stats.failed += result.failed
        if result.ticks and self.report is not None:
            self.report(result)
        return result

    def run(self, stop: threading.Event) -> SchedulerStats:
        """Loop until `stop` is set (SIGTERM, Ctrl-C): the call under way finishes first."""
        while not stop.is_set():
            try:
                result = self.tick()
            except (Unauthorized, Forbidden) as exc:
                log.error("scheduler: the token is refused (%s); stopping", exc.message)
                self.stats.errors += 1
                raise
            except ContractError as exc:
                self.stats.errors += 1
                log.warning("scheduler: run_due_schedules failed (%s); retrying in %ss",
                            exc, self.interval)
            else:
                if result.schedules >= self.limit:
                    continue      # more may be due: no wait
            stop.wait(self.interval)
        return self.stats
