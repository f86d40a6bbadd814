"""Odoo extraction throughput: the database mode (COPY in one snapshot) beside the JSON-RPC API
mode (search_read pages), on the same generated source, into bronze.

    python bench/odoo_api.py [--scale 0.2] [--batch 2000] [--tables sale_order_line,...]

The API side talks over real HTTP to tests/odoo/rpc_server.py, a local server answering
Odoo's JSON-RPC from the generated database (a stand-in for a hosted Odoo: its own cost of
serializing rows is in the figure, a real Odoo's ORM and network latency are not, so read the
API figures as an upper bound of what a hosted Odoo gives). Each table is extracted from an
empty lake (the first, full load) by both modes; rows/s are rows read over the phase's wall
time, including the Delta append, watermark and read commits. Prints a table.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import tempfile
import time
from pathlib import Path

from common import own_database  # bench/common.py (run as python bench/<script>.py)
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))      # tests.odoo: the local JSON-RPC server and the context

from executor.kinds.base import Connection  # noqa: E402
from pipelines.odoo import extract, generator  # noqa: E402
from tests.odoo.rpc_server import OdooServer, serving  # noqa: E402
from tests.odoo.runner import postgres, python_context  # noqa: E402

ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
TABLES = ("res_partner", "sale_order", "sale_order_line", "account_move", "account_move_line")


def _run(connection: Connection, lake: Path, table: str, work: Path, **args: object
         ) -> tuple[dict[str, object], float]:
    ctx = python_context(f"extract_{table}", {"table": table, "lake": str(lake), **args},
                         work / connection.type / table, connections={"odoo": connection})
    began = time.perf_counter()
    manifest = extract.extract_table(ctx)
    return manifest, time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=0.2)
    parser.add_argument("--batch", type=int, default=2000)
    parser.add_argument("--tables", default=",".join(TABLES))
    options = parser.parse_args()
    console = Console(width=140)
    with own_database(ADMIN_URL, "bench_odoo_api") as dsn, \
            tempfile.TemporaryDirectory(prefix="bench-odoo-api-") as scratch:
        report = generator.generate(dsn, scale=options.scale, seed=42, days=30,
                                    start=dt.date(2026, 1, 1))
        console.print(f"source: scale {options.scale}, 30 days, "
                      f"{report.rows['sale_order_line']:,} sale order lines, "
                      f"{report.rows['account_move_line']:,} journal items")
        table = Table("table", "rows", "database: s", "database: rows/s",
                      f"API (batch {options.batch}): s", "API: rows/s", "API calls",
                      "API / database",
                      title="Odoo extraction into bronze, first load (one phase per table)")
        work = Path(scratch)
        with serving(OdooServer(dsn)) as odoo:
            api = Connection("odoo", "http", {"url": odoo.url, "database": odoo.database,
                                              "login": odoo.login, "api_key": odoo.api_key})
            for name in options.tables.split(","):
                db_manifest, db_s = _run(postgres("odoo", dsn), work / "db", name, work)
                api_manifest, api_s = _run(api, work / "api", name, work,
                                           batch_size=options.batch)
                rows = int(str(db_manifest["read"]))
                assert int(str(api_manifest["read"])) == rows, (name, api_manifest["read"])
                table.add_row(name, f"{rows:,}", f"{db_s:.2f}",
                              f"{rows / db_s:,.0f}", f"{api_s:.2f}", f"{rows / api_s:,.0f}",
                              str(api_manifest["calls"]), f"{api_s / db_s:.1f}x")
        console.print(table)


if __name__ == "__main__":
    main()
