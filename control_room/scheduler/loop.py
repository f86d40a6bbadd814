"""`Scheduler`: call `run_due_schedules`, then `evaluate_slos`, every `interval` seconds until
stopped.

A call that claimed as many schedules as its `limit` is followed at once by another (more may
be due). A call that fails (the gateway unreachable, a 5xx) is logged and retried at the next
interval; a refusal of the token (401/403) stops the loop, since no later call would pass.
Each round also compares the jobs' freshness with their SLOs (`evaluate_slos`, which raises
`slo_breached` once per breach): a failure of that call is logged and does not stop the ticks.
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
from control_room.contract.models import SloEvaluation

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
    slo_breaches: int = 0
    slo_recoveries: int = 0


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
    slos: bool = True
    """Evaluate the freshness SLOs after each round of ticks."""
    slo_report: Callable[[SloEvaluation], None] | None = None
    """Called with each evaluation that changed a job's SLO state."""

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
        if self.slos:
            self.evaluate_slos()
        return result

    def evaluate_slos(self) -> SloEvaluation | None:
        """One call of evaluate_slos, counted; None when it failed (logged). A refused token
        (401/403) is raised."""
        try:
            result = self.client.evaluate_slos(self.workspace_id)
        except (Unauthorized, Forbidden):
            raise
        except ContractError as exc:
            self.stats.errors += 1
            log.warning("scheduler: evaluate_slos failed (%s)", exc)
            return None
        self.stats.slo_breaches += result.breached
        self.stats.slo_recoveries += result.recovered
        for change in result.changes:
            log.log(logging.WARNING if change.state == "breached" else logging.INFO,
                    "scheduler: job %s freshness SLO %s (%.0f s behind)", change.job,
                    change.state, change.lag_seconds)
        if result.changes and self.slo_report is not None:
            self.slo_report(result)
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
