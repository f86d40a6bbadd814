"""The scheduler: a loop that fires due schedule ticks through the contract (docs/schedules.md).

It is a client of the contract like any other (`ContractClient.run_due_schedules`), never a
database connection: the SQL claims due schedules with SKIP LOCKED and records each tick once,
so any number of schedulers (or pg_cron on Supabase) can run at once without double-firing.
"""

from __future__ import annotations

from control_room.scheduler.loop import Scheduler, SchedulerStats

__all__ = ["Scheduler", "SchedulerStats"]
