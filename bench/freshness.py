"""Freshness of the Odoo gold under continuous ingestion, beside its SLO.

    python bench/freshness.py [--minutes 10] [--schedule 60] [--sensor 15] [--advance-every 20]
                              [--scale 0.05] [--slo 900] [--workers 2]

What `control-room up` runs, on the machine's PostgreSQL (a database of its own, dropped
after): the gateway, `--workers` worker processes, the scheduler (which evaluates the SLOs),
the sensor evaluator and the alert deliverer. A generated Odoo database and a warehouse
database beside it; the medallion (`specs/odoo_medallion.yaml`) registered as a job by
`control_room.continuous.enable_odoo_ingestion`: a schedule every `--schedule` seconds, a
source-changed sensor every `--sensor` seconds, one run at a time, an SLO of `--slo` seconds.
After a first full load, for `--minutes` real minutes the generator advances the source by one
simulated day every `--advance-every` seconds (`pipelines.odoo.generator.advance`).

Reported beside the SLO:
  - freshness as operators see it: the job's lag (`get_job` -> freshness.lag_seconds, now -
    the stalest gold table's data time), sampled every 2 s: p50 / p95 / max;
  - change -> gold: for each source step, from its commit (wall clock) until a gold publication
    includes it (the job's datasets' source_cursor reaching the step's newest write_date):
    p50 / p95 / max;
  - runs (by trigger and state), ticks skipped because the job was busy, SLO breaches raised.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import statistics
import tempfile
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from common import own_database  # bench/common.py (run as python bench/<script>.py)
from rich.console import Console
from rich.table import Table

from control_room.cli.up import CONNECTION_SECRETS, register_connections
from control_room.continuous import ODOO_SENSOR_QUERY, enable_odoo_ingestion
from control_room.contract.client import ContractClient, RetryPolicy
from control_room.localstack import LocalStack
from control_room.settings import load_settings
from control_room.specs import example_spec, load_spec
from executor.settings import workspace_lake
from pipelines.odoo.generator import advance, generate

ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
console = Console(width=130)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def source_cursor(dsn: str) -> datetime:
    with psycopg.connect(dsn) as pg:
        row = pg.execute(ODOO_SENSOR_QUERY).fetchone()
    assert row is not None and row[0] is not None
    return datetime.fromisoformat(str(row[0]))


def wait_for(what: str, check: Any, bound: float) -> Any:
    deadline = time.monotonic() + bound
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(1)
    raise SystemExit(f"bench: {what} did not happen within {bound:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--schedule", type=int, default=60, help="schedule interval, seconds")
    parser.add_argument("--sensor", type=int, default=15, help="sensor interval, seconds")
    parser.add_argument("--advance-every", type=float, default=20.0)
    parser.add_argument("--scale", type=float, default=0.05)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--slo", type=int, default=900)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    with contextlib.ExitStack() as stack_exit:
        control = stack_exit.enter_context(own_database(ADMIN_URL, "bench_fresh_cp"))
        odoo = stack_exit.enter_context(own_database(ADMIN_URL, "bench_fresh_odoo"))
        warehouse = stack_exit.enter_context(own_database(ADMIN_URL, "bench_fresh_dw"))
        state = Path(tempfile.mkdtemp(prefix="bench-freshness-"))
        stack_exit.callback(shutil.rmtree, state, True)
        report = generate(odoo, scale=args.scale, seed=42, days=args.days)
        console.print(f"source: {report.rows.get('sale_order_line', 0):,} order lines, "
                      f"{report.first_day} .. {report.last_day}")
        settings = load_settings(database_url=control, state_dir=state / "state", port=0)
        stack = stack_exit.enter_context(LocalStack(
            settings, workers=args.workers, scheduler_interval=2.0,
            log=lambda line: console.print(line, markup=False)))
        assert stack.info is not None
        ws = stack.info.workspace_id
        client = stack_exit.enter_context(ContractClient(
            stack.info.gateway_url, stack.info.token.get_secret_value(),
            retry=RetryPolicy(attempts=5, total=30)))
        shutil.rmtree(workspace_lake(stack.info.lake, ws), ignore_errors=True)
        register_connections(client, ws, settings.state_dir / CONNECTION_SECRETS,
                             {"odoo": odoo, "warehouse": warehouse}, control)
        spec = load_spec(example_spec("odoo_medallion"))
        as_of = (report.last_day + timedelta(days=1)).isoformat()
        setup = enable_odoo_ingestion(client, ws, spec, cron=None,
                                      interval_seconds=args.schedule,
                                      sensor_seconds=args.sensor, slo_seconds=args.slo,
                                      params={"as_of": as_of})
        slug = setup.job.slug
        console.print(f"job {slug} v{setup.version}: every {args.schedule} s, sensor every "
                      f"{args.sensor} s, SLO {args.slo} s; waiting for the first full load ...")
        first = wait_for("the first publication",
                         lambda: client.get_job(ws, slug).freshness.datasets, 900)
        console.print(f"first publication: {len(first)} gold tables")

        steps: list[tuple[float, datetime]] = []          # (commit wall time, newest change)
        samples: list[float] = []
        stop = threading.Event()

        def change_source() -> None:
            while not stop.wait(args.advance_every):
                advance(odoo, days=1)
                steps.append((time.time(), source_cursor(odoo)))

        changer = threading.Thread(target=change_source, daemon=True)
        changer.start()
        latencies: list[float] = []
        pending = 0                                          # index of the first unseen step
        end = time.monotonic() + args.minutes * 60
        last_print = 0.0
        while time.monotonic() < end:
            stack.check_workers()
            job = client.get_job(ws, slug)
            if job.freshness.lag_seconds is not None:
                samples.append(job.freshness.lag_seconds)
            cursors = [datetime.fromisoformat(d.source_cursor)
                       for d in job.freshness.datasets if d.source_cursor]
            included = min(cursors) if cursors else None
            now = time.time()
            while pending < len(steps) and included is not None \
                    and included >= steps[pending][1]:
                latencies.append(now - steps[pending][0])
                pending += 1
            if now - last_print > 30:
                last_print = now
                console.print(f"{time.strftime('%H:%M:%S')} lag {samples[-1]:.0f} s, "
                              f"{len(steps)} source steps, {pending} in gold, last run "
                              f"{job.last_run.state if job.last_run else '-'}", markup=False)
            time.sleep(2)
        stop.set()
        changer.join(120)
        unseen = [now - t for t, _ in steps[pending:]]

        runs = client.list_runs(workspace_id=ws, limit=500).runs
        by: dict[tuple[str, str], int] = {}
        for r in runs:
            trigger = ("schedule" if "schedule" in r.labels else
                       "sensor" if "sensor" in r.labels else "first/manual")
            by[(trigger, r.state)] = by.get((trigger, r.state), 0) + 1
        failures: dict[str, int] = {}
        for r in runs:
            if r.state == "failed":
                for ph in client.get_run(r.id).phases:
                    if ph.state == "failed" and ph.error:
                        text = f"{ph.name}: {str(ph.error.get('message', ph.error))[:160]}"
                        failures[text] = failures.get(text, 0) + 1
        ticks = client.list_schedule_ticks(ws, setup.schedule.name, limit=1000).ticks
        busy = sum(1 for t in ticks if t.state == "skipped" and (t.reason or "").startswith(
            "job busy"))
        with psycopg.connect(control) as pg:
            raised = pg.execute("select count(*) from ops.jobs where slo_state = 'breached'"
                                ).fetchone()

    table = Table(title=f"Odoo gold freshness over {args.minutes:g} min (schedule "
                        f"{args.schedule} s, sensor {args.sensor} s, a source step every "
                        f"{args.advance_every:g} s)")
    for column in ("measure", "samples", "p50 s", "p95 s", "max s", "SLO s", "within SLO"):
        table.add_column(column, justify="right" if column != "measure" else "left")

    def row(name: str, values: list[float]) -> None:
        if not values:
            table.add_row(name, "0", "-", "-", "-", str(args.slo), "-")
            return
        table.add_row(name, str(len(values)), f"{statistics.median(values):.0f}",
                      f"{percentile(values, 0.95):.0f}", f"{max(values):.0f}", str(args.slo),
                      "yes" if max(values) <= args.slo else "NO")

    row("job lag (now - gold data time)", samples)
    row("source change -> in gold", latencies)
    console.print(table)
    console.print(f"source steps: {len(steps)}; not in gold by the end: {len(unseen)} "
                  f"(oldest {max(unseen):.0f} s)" if unseen else
                  f"source steps: {len(steps)}, all in gold by the end")
    console.print("runs: " + ", ".join(f"{t} {s}: {n}" for (t, s), n in sorted(by.items())))
    for text, n in sorted(failures.items()):
        console.print(f"failed phase ({n}x): {text}", markup=False)
    console.print(f"schedule ticks: {len(ticks)} ({busy} skipped: job busy); jobs breached "
                  f"at the end: {raised[0] if raised else 0}")


if __name__ == "__main__":
    main()
