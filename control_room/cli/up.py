"""`control-room up`: the whole local stack in one process tree, and `demo`, built on it."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Annotated, Any

import typer

from control_room.cli.common import (
    EXIT_FAILED,
    DatabaseUrl,
    StateDir,
    defaults,
    err,
    fail,
    guard,
    new_app,
    option_for,
    out,
    require_migrations,
)
from control_room.settings import Settings, StackSettings, load_settings
from executor.settings import WorkerSettings, workspace_lake

app = new_app("The local stack.")

S = StackSettings
SETTINGS, STACK, WORKER = defaults(Settings), defaults(S), defaults(WorkerSettings)
Port = Annotated[int, option_for(Settings, "port", "--port", help="The gateway's port.")]
Workers = Annotated[int, option_for(S, "up_workers", "--workers")]
Concurrency = Annotated[int, option_for(WorkerSettings, "concurrency", "--concurrency")]
Repo = Annotated[Path | None, option_for(
    WorkerSettings, "repo", "--repo",
    help="Git repository the workers check a run's git_sha out of. Default: none (the "
         "workers' own code).")]

DEMO_SOURCE_DB = "odoo_demo"
DEMO_WAREHOUSE_DB = "odoo_warehouse"
CONNECTION_SECRETS = "connection-secrets"
"""Under the state dir: the local connections' secret files, the only references the local
stack's workers resolve (their CONTROL_ROOM_SECRET_ALLOW, control_room/localstack.py)."""


STOPPING_NOTE = (
    "The demo's stack stops now: the embedded PostgreSQL (the warehouse and the Odoo database "
    "above) and the gateway stop with it, so these addresses answer only while it runs. "
    "`control-room demo --keep-up` keeps them up until Ctrl-C; `control-room up` starts the "
    "stack again on the same state directory (the data stays; it prints its addresses).")
"""What the demo says last when it does not keep its stack up (issue 15, defect 2)."""


def _say(line: str) -> None:
    err.print(line, markup=False)


@app.command("up")
def up_command(
    port: Port = SETTINGS.port,
    workers: Workers = STACK.up_workers,
    concurrency: Concurrency = WORKER.concurrency,
    repo: Repo = None,
    database_url: DatabaseUrl = None,
    state_dir: StateDir = None,
) -> None:
    """Start the database, migrations, the gateway and local workers; Ctrl-C stops them all.

    Writes `<state-dir>/stack.json` so that `control-room runs ...` finds the stack without
    options. A second `up` reuses the state directory (database, lake, artifacts).
    """
    from control_room.gateway.ui import ui_line
    from control_room.localstack import LocalStack, LocalStackError

    with guard():
        settings = load_settings(port=port, database_url=database_url, state_dir=state_dir)
        require_migrations(settings)
        stop = threading.Event()

        def _stop(signum: int, frame: Any) -> None:
            err.print(f"{signal.Signals(signum).name}: stopping the stack ...", markup=False)
            stop.set()

        previous = {sig: signal.signal(sig, _stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            with LocalStack(settings, workers=workers, concurrency=concurrency, repo=repo,
                            log=_say) as stack:
                assert stack.info is not None
                out.print(f"Control Room is up: gateway {stack.info.gateway_url}, workspace "
                          f"{stack.info.workspace_slug}, lake {stack.info.lake}", markup=False)
                out.print(ui_line(settings, stack.info.ui_url), markup=False)
                out.print("Sign in to the UI as a user: control-room users create --email "
                          f"you@example.org --workspace {stack.info.workspace_slug} --role admin",
                          markup=False)
                out.print(f"State in {settings.state_dir} (stack.json, logs in log/). "
                          "Ctrl-C stops everything.", markup=False)
                stack.wait(stop)
        except LocalStackError as exc:
            fail(str(exc), EXIT_FAILED)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        err.print("Stopped.", markup=False)


@app.command("demo")
def demo_command(
    scale: Annotated[float, option_for(S, "demo_scale", "--scale")] = STACK.demo_scale,
    days: Annotated[int, option_for(S, "demo_days", "--days")] = STACK.demo_days,
    seed: Annotated[int, option_for(S, "demo_seed", "--seed")] = STACK.demo_seed,
    workers: Workers = STACK.up_workers,
    concurrency: Concurrency = WORKER.concurrency,
    port: Annotated[int, option_for(S, "demo_port", "--port")] = STACK.demo_port,
    keep_up: Annotated[bool, option_for(S, "demo_keep_up", "--keep-up")] = STACK.demo_keep_up,
    continuous: Annotated[bool, option_for(S, "demo_continuous", "--continuous")] = (
        STACK.demo_continuous),
    advance_seconds: Annotated[float, option_for(S, "demo_advance_seconds", "--advance-every")] = (
        STACK.demo_advance_seconds),
    state_dir: StateDir = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """The Odoo medallion pipeline end to end on the embedded stack, with nothing configured.

    Generates an Odoo database, runs specs/odoo_medallion.yaml through the gateway and real
    workers with live progress, then prints the gold KPIs, the artifact digests and where to
    look. Always uses the embedded PostgreSQL under the state directory.
    """
    import shutil
    from datetime import timedelta

    from control_room.cli.display import watch
    from control_room.contract.client import ContractClient
    from control_room.gateway.ui import ui_line
    from control_room.local import without_password
    from control_room.localstack import LocalStack, LocalStackError
    from control_room.specs import example_spec, load_spec
    from pipelines.odoo.generator import ensure_database, generate

    with guard():
        settings = load_settings(state_dir=state_dir, port=port)
        settings = settings.model_copy(update={"database_url": None})
        spec = load_spec(example_spec("odoo_medallion"))
        try:
            with LocalStack(settings, workers=workers, concurrency=concurrency,
                            log=_say) as stack:
                assert stack.info is not None
                admin = stack.database_url
                with err.status(f"Generating the Odoo database (scale {scale}, {days} days, "
                                f"seed {seed}) ..."):
                    source = ensure_database(admin, DEMO_SOURCE_DB)
                    report = generate(source, scale=scale, seed=seed, days=days)
                _say(f"odoo: {report.rows.get('sale_order', 0):,} orders, "
                     f"{report.rows.get('sale_order_line', 0):,} order lines, "
                     f"{report.rows.get('account_move', 0):,} invoices in "
                     f"{report.seconds:.1f} s ({report.first_day} .. {report.last_day})")
                warehouse = ensure_database(admin, DEMO_WAREHOUSE_DB)
                # the workers' ${run.lake}: the local workspace's lake, rebuilt from scratch
                lake = workspace_lake(stack.info.lake, stack.info.workspace_id)
                shutil.rmtree(lake, ignore_errors=True)
                as_of = (report.last_day + timedelta(days=1)).isoformat()
                args = spec.create_run_args(stack.info.workspace_id, {"as_of": as_of},
                                            labels={"demo": "true"})
                with ContractClient(stack.info.gateway_url,
                                    stack.info.token.get_secret_value()) as client:
                    register_connections(
                        client, stack.info.workspace_id, settings.state_dir / CONNECTION_SECRETS,
                        {"odoo": source, "warehouse": warehouse}, stack.database_url)
                    created = client.create_run(**args)
                    run_id = created.id
                    _say(f"run {run_id}: {len(created.phases)} phases")
                    run = watch(client, run_id, interval=0.5, quiet=as_json,
                                alive=stack.check_workers)
                    artifacts = [{"phase": a.phase, "name": a.name, "digest": a.digest}
                                 for a in client.iter_artifacts(run_id)]
                kpis = gold_kpis(warehouse) if run.state == "succeeded" else {}
                summary = {
                    "run_id": run_id, "state": run.state, "source": report.to_json(),
                    "lake": str(lake), "warehouse": without_password(warehouse),
                    "gold_schema": "gold",
                    "ui_url": stack.info.ui_url, "ui": ui_line(settings, stack.info.ui_url),
                    "kpis": kpis, "artifacts": artifacts,
                    "kept_up": keep_up and run.state == "succeeded",
                }
                if as_json:
                    out.print_json(data=summary)
                    if not summary["kept_up"]:
                        _say(STOPPING_NOTE)
                else:
                    _print_demo(summary)
                if continuous and run.state == "succeeded":
                    _continue(stack, spec, source, as_of, advance_seconds)
                elif keep_up and run.state == "succeeded":
                    out.print(f"The stack stays up (gateway {stack.info.gateway_url}); "
                              "Ctrl-C stops it.", markup=False)
                    stop = threading.Event()
                    signal.signal(signal.SIGINT, lambda *_: stop.set())
                    stack.wait(stop)
        except LocalStackError as exc:
            fail(str(exc), EXIT_FAILED)
        if run.state != "succeeded":
            fail(f"the demo run {run_id} ended {run.state}: `control-room runs show "
                 f"{run_id}` after `control-room up` shows why", EXIT_FAILED)


def _continue(stack: Any, spec: Any, source: str, as_of: str, advance_seconds: float) -> None:
    """`demo --continuous`: the medallion as a continuously ingesting job (a 5-minute schedule,
    a source-changed sensor, one run at a time, a 15-minute SLO) while the simulated Odoo
    advances one day every `advance_seconds`; a line per step with the job's freshness, until
    Ctrl-C."""
    from control_room.cli.jobs import freshness_text
    from control_room.continuous import enable_odoo_ingestion
    from control_room.contract.client import ContractClient
    from pipelines.odoo.generator import advance

    assert stack.info is not None
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with ContractClient(stack.info.gateway_url, stack.info.token.get_secret_value()) as client:
        setup = enable_odoo_ingestion(client, stack.info.workspace_id, spec,
                                      params={"as_of": as_of}, sensor_seconds=30)
        out.print(f"Continuous ingestion: job {setup.job.slug} version {setup.version}, "
                  f"schedule {setup.schedule.name} (*/5 * * * *), sensor {setup.sensor.name} "
                  f"(every 30 s), SLO 15 min; the source advances a day every "
                  f"{advance_seconds:g} s. Ctrl-C stops.", markup=False)
        while not stop.wait(advance_seconds):
            stack.check_workers()
            report = advance(source, days=1)
            job = client.get_job(stack.info.workspace_id, setup.job.slug)
            last = job.last_run
            changed = (f"+{sum(report.inserted.values()):,} ~{sum(report.updated.values()):,} "
                       f"-{sum(report.deleted.values()):,} rows")
            out.print(f"{report.last_day}: {changed} · gold freshness ",
                      freshness_text(job.freshness),
                      f" · last run {last.state if last else '-'}", sep="")


def register_connections(client: Any, workspace_id: str, secrets_dir: Path,
                         databases: dict[str, str], database_url: str) -> None:
    """The demo's connections (`odoo`, `warehouse`) registered in the local workspace, or
    updated: each database's DSN without a password, the password (the embedded server's,
    from `database_url`) as a `file:` reference to a 0600 file under `secrets_dir`, which is
    what the local stack's workers may resolve (docs/security.md)."""
    from psycopg.conninfo import conninfo_to_dict

    from control_room.contract.client import Conflict
    from control_room.local import without_password
    from control_room.secretfile import write_secret_file

    password = str(conninfo_to_dict(database_url).get("password") or "")
    for name, dsn in databases.items():
        path = secrets_dir / name
        write_secret_file(path, password)
        config = {"dsn": without_password(dsn)}
        secrets = {"password": f"file:{path.absolute()}"}
        description = f"the demo's {name} database (control-room demo)"
        try:
            client.create_connection(workspace_id, name, "postgres", config=config,
                                     secrets=secrets, description=description)
        except Conflict:
            client.update_connection(workspace_id, name, config=config, secrets=secrets,
                                     description=description)


def gold_kpis(warehouse: str) -> dict[str, Any]:
    """The headline numbers (`pipelines/odoo/kpis.sql`), read back from the warehouse's `gold`
    schema: what Superset or Metabase sees, not what the pipeline thinks it wrote."""
    import psycopg
    from psycopg.rows import dict_row

    from pipelines.odoo.kpis import kpi_queries

    kpis: dict[str, Any] = {}
    with psycopg.connect(warehouse, row_factory=dict_row) as conn:
        for name, sql in kpi_queries().items():
            kpis[name] = [{k: _jsonable(v) for k, v in row.items()}
                          for row in conn.execute(sql)]
        kpis["tables"] = {str(r["table_name"]): None for r in conn.execute(
            "select table_name from information_schema.tables where table_schema = 'gold'"
            " order by table_name")}
        for table in kpis["tables"]:
            count = conn.execute(f'select count(*) as n from gold."{table}"').fetchone()
            kpis["tables"][table] = count["n"] if count else 0
    return kpis


def _human(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:,.1f} {unit}"
    return f"{seconds:.1f} s"


def _jsonable(value: Any) -> Any:
    import datetime as dt
    import decimal

    if isinstance(value, decimal.Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dt.date | dt.datetime):
        return value.isoformat()
    return value


def _print_demo(summary: dict[str, Any]) -> None:
    from rich.table import Table

    kpis = summary["kpis"]
    for name, title in (("revenue_by_month", "Invoiced revenue by month (untaxed)"),
                        ("top_customers", "Top customers"),
                        ("receivables_ageing", "Receivables ageing"),
                        ("order_to_invoice_lag", "Order to invoice")):
        rows = kpis.get(name) or []
        if not rows:
            continue
        table = Table(*rows[0].keys(), title=title)
        for row in rows:
            table.add_row(*(f"{v:,.2f}" if isinstance(v, float) else str(v)
                            for v in row.values()))
        out.print(table)
    for fresh in kpis.get("freshness") or []:
        seconds = float(fresh["freshness_seconds"] or 0)
        out.print(f"Freshness: newest source change {fresh['newest_source_write_date']} -> gold "
                  f"available {fresh['gold_available_at']}: {_human(seconds)} (the generated "
                  "activity ends with the last simulated day over by now: its work ends at "
                  "20:00 UTC)", markup=False)
    tables = Table("gold table (Postgres schema gold)", "rows", title="Gold")
    for name, rows in kpis.get("tables", {}).items():
        tables.add_row(name, f"{rows:,}")
    out.print(tables)
    digests = Table("phase", "artifact", "digest", title="Artifacts (content-addressed)")
    for a in summary["artifacts"]:
        digests.add_row(str(a["phase"]), a["name"], a["digest"])
    out.print(digests)
    out.print(f"Run {summary['run_id']}: {summary['state']}", markup=False)
    out.print(f"Lake (Delta tables): {summary['lake']}", markup=False)
    out.print(f"Warehouse for BI (Superset, Metabase): {summary['warehouse']} schema gold",
              markup=False)
    out.print(f"Gateway: {summary['ui_url']} (`control-room runs show {summary['run_id']}`)",
              markup=False)
    out.print(summary["ui"], markup=False)
    if not summary.get("kept_up"):
        out.print(STOPPING_NOTE, markup=False)
