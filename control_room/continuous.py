"""Continuous ingestion of the Odoo medallion (docs/jobs.md, "Continuous Odoo ingestion"): the
spec as a job, a schedule, a source-changed sensor, one run at a time, and a freshness SLO.

    from control_room.continuous import enable_odoo_ingestion
    setup = enable_odoo_ingestion(client, workspace_id, load_spec("specs/odoo_medallion.yaml"))

Everything goes through the contract (a developer's or admin's token), and every step may be
repeated: the job gets a version only when the spec or its commit changed, the schedule is
updated in place, an existing sensor is kept. `control-room up` runs the scheduler (which also
evaluates the SLOs) and the sensor evaluator that drive it; `control-room demo --continuous`
and `bench/freshness.py` call this.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from control_room.contract.client import Conflict, ContractClient
from control_room.contract.models import Job, Schedule, Sensor
from control_room.specs import LoadedSpec
from control_room.specs.jobs import job_digest, job_spec_json

__all__ = ["ODOO_SENSOR_QUERY", "ODOO_WATCHED_TABLES", "IngestionSetup", "enable_odoo_ingestion"]

ODOO_WATCHED_TABLES = ("res_partner", "product_template", "product_product", "sale_order",
                       "sale_order_line", "account_move", "account_move_line",
                       "res_currency_rate")
"""The tables whose newest `write_date` the sensor watches. Deletions (Odoo unlinks) do not
move it: the schedule's runs pick them up."""

ODOO_SENSOR_QUERY = "select greatest(" + ", ".join(
    f"(select max(write_date) from {t})" for t in ODOO_WATCHED_TABLES) + ")::text"
"""One SELECT on the Odoo database: the newest write_date of the watched tables (an index-less
max per table; on a big Odoo, an index on write_date keeps it cheap)."""


@dataclass(frozen=True)
class IngestionSetup:
    """What `enable_odoo_ingestion` left in the workspace."""

    job: Job
    version: int
    schedule: Schedule
    sensor: Sensor


def enable_odoo_ingestion(client: ContractClient, workspace_id: str, spec: LoadedSpec, *,
                          cron: str | None = "*/5 * * * *", interval_seconds: int | None = None,
                          timezone: str = "UTC", sensor_seconds: int = 60,
                          slo_seconds: int = 900, connection: str = "odoo",
                          params: Mapping[str, Any] | None = None,
                          schedule_name: str = "odoo-every-5m",
                          sensor_name: str = "odoo-changes") -> IngestionSetup:
    """Register `spec` (the Odoo medallion) as a job and make it run continuously: a schedule
    (`cron`, default every 5 minutes, or `interval_seconds`; catch-up `latest`, overlap
    `skip`), a source-changed sensor on `connection` every `sensor_seconds`, at most one run at
    a time (`max_concurrent_runs` 1: two runs would append to one bronze at once) and a
    freshness SLO of `slo_seconds` (default 15 minutes). Idempotent."""
    body = job_spec_json(spec)
    registered = client.register_job(workspace_id, spec.spec.slug, body, job_digest(body),
                                     spec.git_sha)
    slug = registered.job.slug
    client.set_job_concurrency(workspace_id, slug, 1)
    job = client.set_job_slo(workspace_id, slug, slo_seconds)
    when: dict[str, Any] = ({"interval_seconds": interval_seconds} if interval_seconds
                            else {"cron": cron, "timezone": timezone})
    common: dict[str, Any] = {"params": dict(params or {}), "catchup": "latest",
                              "overlap": "skip", "max_concurrent": 1}
    try:
        schedule = client.create_schedule(
            workspace_id, schedule_name, slug, **when, **common,
            description="continuous ingestion of the Odoo medallion")
    except Conflict:
        schedule = client.update_schedule(workspace_id, schedule_name, **when, **common,
                                          enabled=True)
    try:
        sensor = client.create_sensor(workspace_id, sensor_name, slug, connection,
                                      ODOO_SENSOR_QUERY, params=dict(params or {}),
                                      interval_seconds=sensor_seconds)
    except Conflict:
        sensor = client.get_sensor(workspace_id, sensor_name)
    return IngestionSetup(job=job, version=registered.version.version, schedule=schedule,
                          sensor=sensor)
