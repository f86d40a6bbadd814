"""`control-room up`: the whole local stack in one process tree (and `demo`, built on it)."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Annotated, Any

import typer

from control_room.cli import (
    EXIT_FAILED,
    BadInput,
    DatabaseUrl,
    StateDir,
    _fail,
    _guard,
    app,
    err,
    out,
)
from control_room.localstack import LocalStack, LocalStackError
from control_room.settings import env_var, load_settings

Port = Annotated[int | None, typer.Option(
    "--port", envvar=env_var("port"), show_envvar=True,
    help="The gateway's port. Default: 8787")]
Workers = Annotated[int, typer.Option(
    "--workers", envvar="CONTROL_ROOM_UP_WORKERS", show_envvar=True, min=0, max=64,
    help="Worker processes to start.")]
Concurrency = Annotated[int, typer.Option(
    "--concurrency", envvar="CONTROL_ROOM_WORKER_CONCURRENCY", show_envvar=True, min=1,
    max=256, help="Phases each worker runs at once.")]
Repo = Annotated[Path | None, typer.Option(
    "--repo", envvar="CONTROL_ROOM_WORKER_REPO", show_envvar=True,
    help="Git repository the workers check a run's git_sha out of. Default: none (the "
         "workers' own code).")]


def _say(line: str) -> None:
    err.print(line, markup=False)


@app.command("up")
def up_command(
    port: Port = None,
    workers: Workers = 2,
    concurrency: Concurrency = 2,
    repo: Repo = None,
    database_url: DatabaseUrl = None,
    state_dir: StateDir = None,
) -> None:
    """Start the database, migrations, the gateway and local workers; Ctrl-C stops them all.

    Writes <state-dir>/stack.json so that `control-room runs ...` finds the stack without
    options. A second `up` reuses the state directory (database, lake, artifacts).
    """
    with _guard():
        settings = load_settings(port=port, database_url=database_url, state_dir=state_dir)
        if not settings.migrations_dir.is_dir():
            raise BadInput(f"migrations directory not found: {settings.migrations_dir}")
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
                out.print(f"State in {settings.state_dir} (stack.json, logs in log/). "
                          "Ctrl-C stops everything.", markup=False)
                stack.wait(stop)
        except LocalStackError as exc:
            _fail(str(exc), EXIT_FAILED)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        err.print("Stopped.", markup=False)


# --------------------------------------------------------------------------------- demo

DEMO_SOURCE_DB = "odoo_demo"
DEMO_WAREHOUSE_DB = "odoo_warehouse"


@app.command("demo")
def demo_command(
    scale: Annotated[float, typer.Option(
        "--scale", envvar="CONTROL_ROOM_DEMO_SCALE", show_envvar=True, min=0.001, max=100.0,
        help="Size of the Odoo data: about 100,000 x scale sale order lines.")] = 0.05,
    days: Annotated[int, typer.Option(
        "--days", envvar="CONTROL_ROOM_DEMO_DAYS", show_envvar=True, min=1, max=3650,
        help="Days of Odoo activity to simulate.")] = 30,
    seed: Annotated[int, typer.Option(
        "--seed", envvar="CONTROL_ROOM_DEMO_SEED", show_envvar=True,
        help="The generator's seed.")] = 42,
    workers: Workers = 2,
    port: Annotated[int, typer.Option(
        "--port", envvar="CONTROL_ROOM_DEMO_PORT", show_envvar=True,
        help="The gateway's port. Default: any free port.")] = 0,
    keep_up: Annotated[bool, typer.Option(
        "--keep-up", envvar="CONTROL_ROOM_DEMO_KEEP_UP", show_envvar=True,
        help="Keep the stack running after the run, until Ctrl-C.")] = False,
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

    from control_room.cli_runs import _watch
    from control_room.contract.client import ContractClient
    from control_room.specs import example_spec, load_spec
    from pipelines.odoo.generator import ensure_database, generate

    with _guard():
        settings = load_settings(state_dir=state_dir, port=port)
        settings = settings.model_copy(update={"database_url": None})
        spec = load_spec(example_spec("odoo_medallion"))
        secrets = {"ODOO_PASSWORD": "", "WAREHOUSE_PASSWORD": ""}
        try:
            with LocalStack(settings, workers=workers, concurrency=2, worker_env=secrets,
                            log=_say) as stack:
                assert stack.info is not None
                admin = stack.database_url
                with err.status(f"Generating the Odoo database (scale {scale}, {days} days, "
                                f"seed {seed}) ..."):
                    source = ensure_database(admin, DEMO_SOURCE_DB)
                    report = generate(source, scale=scale, seed=seed, days=days)
                _say(f"odoo: {report.rows.get('sale_order', 0):,} orders, "
                    f"{report.rows.get('sale_order_line', 0):,} order lines, "
                    f"{report.rows.get('account_move', 0):,} invoices in {report.seconds:.1f} s "
                    f"({report.first_day} .. {report.last_day})")
                warehouse = ensure_database(admin, DEMO_WAREHOUSE_DB)
                lake = settings.state_dir / "demo" / "lake"
                shutil.rmtree(lake, ignore_errors=True)     # each demo rebuilds from scratch
                as_of = (report.last_day + timedelta(days=1)).isoformat()
                args = spec.create_run_args(stack.info.workspace_id, {
                    "lake": str(lake), "as_of": as_of, "odoo_dsn": source,
                    "warehouse_dsn": warehouse}, labels={"demo": "true"})
                with ContractClient(stack.info.gateway_url,
                                    stack.info.token.get_secret_value()) as client:
                    created = client.call("create_run", args)
                    run_id = str(created["id"])
                    _say(f"run {run_id}: {len(args['phases'])} phases")
                    _, run = _watch(client, run_id, interval=0.5, quiet=as_json)
                    stack.check_workers()
                    artifacts = _all_artifacts(client, run_id)
                kpis = _gold_kpis(warehouse) if run.state == "succeeded" else {}
                summary = {
                    "run_id": run_id, "state": run.state, "source": report.to_json(),
                    "lake": str(lake), "warehouse": warehouse, "gold_schema": "gold",
                    "ui_url": stack.info.ui_url, "kpis": kpis,
                    "artifacts": [{"phase": a.get("phase"), "name": a["name"],
                                   "digest": a["digest"]} for a in artifacts],
                }
                if as_json:
                    out.print_json(data=summary)
                else:
                    _print_demo(summary)
                if keep_up and run.state == "succeeded":
                    out.print(f"The stack stays up (gateway {stack.info.gateway_url}); "
                              "Ctrl-C stops it.", markup=False)
                    stop = threading.Event()
                    signal.signal(signal.SIGINT, lambda *_: stop.set())
                    stack.wait(stop)
        except LocalStackError as exc:
            _fail(str(exc), EXIT_FAILED)
        if run.state != "succeeded":
            _fail(f"the demo run {run_id} ended {run.state}: `control-room runs show "
                  f"{run_id}` after `control-room up` shows why", EXIT_FAILED)


def _all_artifacts(client: Any, run_id: str) -> list[dict[str, Any]]:
    """Every artifact of the run, page by page."""
    found: list[dict[str, Any]] = []
    after = 0
    while True:
        page = client.call("list_artifacts", {"run_id": run_id, "after": after, "limit": 500})
        found += page["artifacts"]
        if not page["artifacts"]:
            return found
        after = int(page["next_after"])


KPI_QUERIES = {
    "revenue_by_month": (
        "select to_char(month, 'YYYY-MM') as month, currency, round(sum(revenue), 2) as revenue,"
        " sum(invoices) as invoices from gold.revenue group by 1, 2 order by 1, 2"),
    "top_customers": (
        "select customer, currency, round(sum(revenue), 2) as revenue from gold.revenue"
        " group by 1, 2 order by 3 desc, 1 limit 5"),
    "receivables_ageing": (
        "select bucket, currency, sum(invoices) as invoices,"
        " round(sum(amount_residual), 2) as open_amount from gold.receivables_ageing"
        " group by bucket, bucket_order, currency order by bucket_order, currency"),
    "order_to_invoice_lag": (
        "select count(*) as confirmed_orders, count(first_invoice_date) as invoiced,"
        " percentile_disc(0.5) within group (order by lag_days) as median_lag_days,"
        " percentile_disc(0.9) within group (order by lag_days) as p90_lag_days"
        " from gold.order_invoice_lag"),
    "freshness": (
        "select newest_source_write_date, gold_available_at,"
        " round(freshness_seconds::numeric, 1) as freshness_seconds from gold.freshness"
        " order by gold_available_at desc limit 1"),
}


def _gold_kpis(warehouse: str) -> dict[str, Any]:
    """The headline numbers, read back from the warehouse's `gold` schema: what Superset or
    Metabase sees, not what the pipeline thinks it wrote."""
    import psycopg
    from psycopg.rows import dict_row

    kpis: dict[str, Any] = {}
    with psycopg.connect(warehouse, row_factory=dict_row) as conn:
        for name, query in KPI_QUERIES.items():
            kpis[name] = [{k: _jsonable(v) for k, v in row.items()}
                          for row in conn.execute(query)]
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
                  "Odoo activity is simulated in the past)", markup=False)
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
    out.print(f"Gateway: {summary['ui_url']} (`control-room up` keeps it running; "
              f"`control-room runs show {summary['run_id']}`)", markup=False)
