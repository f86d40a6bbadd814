"""Continuous Odoo ingestion end to end (docs/jobs.md, "Continuous Odoo ingestion"): the
medallion registered by `enable_odoo_ingestion` as a job with a schedule, a source-changed
sensor, one run at a time and an SLO; the real gateway, a real worker, the scheduler loop and
the sensor evaluator through the contract. The source changes; gold follows, its data time
moves, its freshness stays within the SLO, and a stalled pipeline breaches it."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from control_room.continuous import ODOO_SENSOR_QUERY, enable_odoo_ingestion
from control_room.scheduler import Scheduler
from control_room.scheduler.sensors import evaluate_due_sensors
from control_room.specs import load_spec
from executor.secrets import SecretPolicy
from pipelines.odoo import generator
from tests.executor.harness import BOUND, Env, Running, gateway_env, wait_for
from tests.odoo.runner import SPEC

pytestmark = pytest.mark.slow


@pytest.fixture
def env(conn: psycopg.Connection[Any], db_url: str, tmp_path: Path) -> Iterator[Env]:
    with gateway_env(conn, db_url, tmp_path) as environment:
        yield environment


def newest_change(dsn: str) -> dt.datetime:
    with psycopg.connect(dsn) as pg:
        row = pg.execute(ODOO_SENSOR_QUERY).fetchone()
    assert row is not None
    return dt.datetime.fromisoformat(str(row[0]))


def test_gold_follows_a_changing_source_within_its_slo(
        env: Env, source_dsn: str, warehouse_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ODOO_PASSWORD", "")
    monkeypatch.setenv("WAREHOUSE_PASSWORD", "")
    w = env.world
    admin, dev = env.client(w.admin1), env.client(w.dev1)
    for name, dsn in (("odoo", source_dsn), ("warehouse", warehouse_dsn)):
        admin.create_connection(w.w1, name, "postgres", config={"dsn": dsn},
                                secrets={"password": f"env:{name.upper()}_PASSWORD"})
    generator.generate(source_dsn, scale=0.01, seed=5, days=3, start=dt.date(2026, 1, 1))
    setup = enable_odoo_ingestion(dev, w.w1, load_spec(SPEC), cron=None, interval_seconds=5,
                                  sensor_seconds=10, params={"as_of": "2026-01-04"})
    assert (setup.job.slug, setup.job.max_concurrent_runs) == ("odoo_medallion", 1)
    assert setup.job.freshness.slo_seconds == 900 and setup.job.freshness.state == "unknown"
    # idempotent: a second call changes nothing but keeps the schedule and the sensor
    again = enable_odoo_ingestion(dev, w.w1, load_spec(SPEC), cron=None, interval_seconds=5,
                                  sensor_seconds=10, params={"as_of": "2026-01-04"})
    assert (again.version, again.sensor.id) == (setup.version, setup.sensor.id)

    policy = SecretPolicy.parse("env:ODOO_")
    scheduler = Scheduler(dev, interval=1, workspace_id=w.w1)
    worker = Running(env.worker(kinds=["python", "sql"], concurrency=2,
                                secret_allow="env:ODOO_,env:WAREHOUSE_"))
    try:
        def evaluate() -> None:
            scheduler.tick()                      # the schedule's ticks, then the SLOs
            evaluate_due_sensors(dev, policy=policy, workspace_id=w.w1)

        # the sensor's first evaluation starts the first run (and the schedule's first tick
        # finds the job busy); gold gets a data time
        evaluate()
        def published() -> Any:
            evaluate()
            return dev.get_job(w.w1, "odoo_medallion").freshness.datasets
        first = wait_for("the first publication", published, BOUND * 8)
        assert {d.name for d in first} == {"gold.odoo.revenue", "gold.odoo.receivables_ageing",
                                           "gold.odoo.order_invoice_lag"}
        # while the sensor's run ran, the schedule's ticks found the job busy
        ticks = dev.list_schedule_ticks(w.w1, setup.schedule.name).ticks
        assert any(t.state == "skipped" and (t.reason or "").startswith(
            "job busy: job odoo_medallion has 1 run(s)") for t in ticks), ticks
        data_time = min(d.data_time for d in first)

        # the source changes: the sensor sees it, a run carries it into gold
        generator.advance(source_dsn, days=1)
        changed = newest_change(source_dsn)

        def caught_up() -> Any:
            env.contract.conn.rollback()
            evaluate()
            job = dev.get_job(w.w1, "odoo_medallion")
            cursors = [dt.datetime.fromisoformat(d.source_cursor)
                       for d in job.freshness.datasets if d.source_cursor]
            return job if cursors and min(cursors) >= changed else None
        job = wait_for("gold to include the change", caught_up, BOUND * 8)
        assert job.freshness.state == "ok"
        assert job.freshness.data_time is not None and job.freshness.data_time > data_time
        assert job.freshness.lag_seconds is not None and job.freshness.lag_seconds < 900
        runs = dev.list_runs(w.w1, limit=50).runs
        assert runs[-1].labels == {"sensor": "odoo-changes"}       # the first run: the sensor's
        finished = [r.state for r in runs if r.state not in ("queued", "running")]
        assert finished and set(finished) == {"succeeded"}, finished    # (the last may run)
        active = [r for r in runs if r.state in ("queued", "running")]
        assert len(active) <= 1                                    # one run at a time
        with psycopg.connect(warehouse_dsn) as pg:
            published_runs = pg.execute("select count(distinct run_id) from gold.freshness"
                                        ).fetchone()
        assert published_runs is not None and published_runs[0] >= 2
    finally:
        worker.stop.set()
        worker.join(BOUND)

    # a stalled pipeline: 16 minutes later nothing has published; the SLO is breached once
    later = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=16)
    breached = env.contract.call("evaluate_slos", {"workspace_id": w.w1}, as_=w.dev1,
                                 now=later)
    assert (breached["breached"], breached["changes"][0]["state"]) == (1, "breached")
    assert env.contract.call("evaluate_slos", {"workspace_id": w.w1}, as_=w.dev1,
                             now=later)["breached"] == 0
