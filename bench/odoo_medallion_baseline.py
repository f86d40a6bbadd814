"""The Odoo medallion's transforms as one hand-written script: the baseline of
bench/odoo_medallion.py.

    python bench/odoo_medallion_baseline.py --odoo-dsn DSN --warehouse-dsn DSN --lake DIR \
        --as-of 2026-01-31 [--schema gold_baseline] [--report report.json]

Exactly the pipeline's work on the data, with no orchestration around it, in one process:

1. every table the spec's extract phases name is read from Odoo in one REPEATABLE READ
   snapshot with the pipeline's own reader (`pipelines.odoo.extract.describe_table` /
   `read_rows`: COPY csv parsed into Arrow, a full load), then given bronze's metadata
   columns (`_op`, `_source_write_date`, `_run_id`, `_extracted_at`) as the extraction adds
   them on a first load, in memory;
2. every silver and gold query of specs/odoo_medallion.yaml, the SQL text taken from the spec
   and rendered with the run's params as a worker renders it, runs in ONE DuckDB connection:
   each phase's result becomes a table named after the phase, and before each query its
   inputs' names (`lines`, `orders`, ...) are views over the upstream phases' tables;
3. the quality checks' SQL (pipelines/odoo/sql/quality.sql) over the same tables: the row
   counts reconciled (source rows, ids live in bronze, live silver rows), line sums, orphans,
   negative quantities; a failing check fails the script;
4. the three gold tables written as Delta tables (`write_deltalake`, overwrite) under
   `<lake>/gold/<mart>`;
5. published with the pipeline's `pipelines.odoo.publish.publish` (one transaction: drop,
   create, COPY, the `publications` and `freshness` rows) into `--schema` of the warehouse.

What it leaves out, all of it the orchestration's and the lakehouse's bookkeeping: bronze
and silver are not written to Delta (they stay in memory; see `--persist-layers`); no table
digests, no schema
classification, no catalog records; no watermarks, `_state` tables, deletion detection or
new-version anti-join (a first load finds bronze empty, so the pipeline's do no work on the
rows either); no artifacts (query.sql, preview.json, result_manifest.json,
quality_report.json), no events, progress or heartbeats; no process per phase and no
reading of upstream tables back from Delta. Prints a JSON report of its steps' durations.

`--persist-layers` also writes bronze (each table after it is read) and silver (each table
after its query) as Delta tables under `<lake>` with a bare `write_deltalake` (no digest, no
catalog): the medallion's storage without its orchestration, to tell the two apart.
"""

from __future__ import annotations

import argparse
import datetime as dt
import graphlib
import json
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb
import psycopg
import pyarrow as pa
import pyarrow.compute as pc
from deltalake import DeltaTable, write_deltalake

from control_room.specs import LoadedSpec, PhaseDef, load_spec
from executor.render import render
from pipelines.odoo.extract import describe_table, read_rows
from pipelines.odoo.lake import queries
from pipelines.odoo.publish import Mart, publish
from pipelines.odoo.quality import RECONCILED

SPEC = Path(__file__).resolve().parent.parent / "specs" / "odoo_medallion.yaml"
RUN_ID = "baseline"
EPOCH = dt.datetime(1970, 1, 1)
QUALITY_CHECKS = ("line_sums_match_headers", "no_orphan_lines", "no_negative_quantities")
UNDELETABLE = frozenset({"order_invoice_link"})     # silver keeps live pairs only


class Steps:
    """Wall time per named step (seconds, in the order they ran)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        began = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - began


# ------------------------------------------------------------------------------- the spec

def extract_tables(spec: LoadedSpec) -> dict[str, str]:
    """Extract phase -> the Odoo table it reads."""
    return {p.name: str(p.params["args"]["table"]) for p in spec.spec.phases
            if p.kind == "python" and str(p.params.get("entrypoint", "")).endswith(
                ":extract_table")}


def sql_phases(spec: LoadedSpec) -> list[PhaseDef]:
    """The sql phases (silver and gold) in an order that respects their dependencies."""
    phases = {p.name: p for p in spec.spec.phases if p.kind == "sql"}
    order = graphlib.TopologicalSorter(
        {name: [d for d in p.depends_on if d in phases] for name, p in phases.items()})
    return [phases[name] for name in order.static_order()]


# ------------------------------------------------------------------------------- bronze

def bronze_rows(raw: pa.Table, extracted_at: dt.datetime) -> pa.Table:
    """`raw` as a first load appends it to bronze: every row an upsert, its version the
    row's write_date (else create_date, else the epoch; none for a relation)."""
    n = raw.num_rows
    if "write_date" in raw.column_names:
        fallback = [raw.column("create_date")] if "create_date" in raw.column_names else []
        written = pc.coalesce(raw.column("write_date"), *fallback,
                              pa.scalar(EPOCH, pa.timestamp("us")))
    else:
        written = pa.nulls(n, pa.timestamp("us"))
    return (raw.append_column("_op", pa.repeat(pa.scalar("upsert", pa.string()), n))
            .append_column("_source_write_date", written)
            .append_column("_run_id", pa.repeat(pa.scalar(RUN_ID, pa.string()), n))
            .append_column("_extracted_at", pa.repeat(
                pa.scalar(extracted_at, pa.timestamp("us", tz="UTC")), n)))


def read_source(odoo_dsn: str, tables: list[str]) -> dict[str, pa.Table]:
    """Every table, read whole in one snapshot with the pipeline's reader."""
    found: dict[str, pa.Table] = {}
    with psycopg.connect(odoo_dsn) as pg:
        pg.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        pg.read_only = True
        for setting in ("set datestyle to 'ISO, YMD'", "set timezone to 'UTC'",
                        "set extra_float_digits to 1"):
            pg.execute(setting)
        for table in tables:
            found[table] = read_rows(pg, describe_table(pg, table))
    return found


# ------------------------------------------------------------------------------- transforms

def connect() -> duckdb.DuckDBPyConnection:
    """DuckDB as the sql kind opens it (executor/kinds/sql/ `_connect`)."""
    return duckdb.connect(":memory:", config={"enable_external_access": False,
                                              "autoinstall_known_extensions": False,
                                              "autoload_known_extensions": False})


def run_sql_phase(db: duckdb.DuckDBPyConnection, phase: PhaseDef,
                  params: Mapping[str, Any]) -> int:
    """The phase's query over its inputs' tables, kept as the table named after the phase;
    answers its rows."""
    rendered = render(phase.params, params=params,
                      run={"id": RUN_ID, "git_sha": "local", "spec_slug": "odoo_medallion"})
    for name, source in rendered["inputs"].items():
        db.execute(f'create or replace temp view "{name}" as '
                   f'select * from "{source["upstream"]}"')
    db.execute(f'create table "{phase.name}" as {rendered["query"]}')
    count = db.sql(f'select count(*) from "{phase.name}"').fetchall()[0][0]
    return int(count)


def row_counts(db: duckdb.DuckDBPyConnection, bronze: Mapping[str, str],
               source_rows: Mapping[str, int]) -> pa.Table:
    """quality.py's `row_counts`: per Odoo table, its rows in the source, live in bronze and
    live in silver."""
    named_extract, named_quality = queries("extract"), queries("quality")
    counts = []
    for table, entity in RECONCILED.items():
        db.execute(f'create or replace temp view bronze as select * from "{bronze[table]}"')
        relation = table == "sale_order_line_invoice_rel"
        query = (named_quality["live_relation_pairs"] if relation
                 else f"select count(*) from ({named_extract['live_ids']})")
        silver: int | None = None
        if entity is not None:
            live = "" if entity in UNDELETABLE else " where not is_deleted"
            silver = int(db.sql(f"select count(*) from {entity}{live}").fetchall()[0][0])
        counts.append({"dataset": table, "measure": "rows", "source": source_rows[table],
                       "bronze": int(db.sql(query).fetchall()[0][0]), "silver": silver})
    return pa.Table.from_pylist(counts, schema=pa.schema([
        ("dataset", pa.string()), ("measure", pa.string()), ("source", pa.int64()),
        ("bronze", pa.int64()), ("silver", pa.int64())]))


def quality(db: duckdb.DuckDBPyConnection, bronze: Mapping[str, str],
            source_rows: Mapping[str, int], as_of: dt.date) -> dict[str, int]:
    """The pipeline's checks (failing rows per check), over views named as quality.sql
    expects them: silver entities by entity name, gold marts as `gold_<mart>`."""
    for entity in {e for e in RECONCILED.values() if e is not None}:
        db.execute(f'create or replace temp view "{entity}" as select * from "silver_{entity}"')
    named = queries("quality")
    db.register("row_counts", row_counts(db, bronze, source_rows))
    failed = {"row_counts_reconcile": len(db.sql(named["row_counts_reconcile"],
                                                 params={"as_of": as_of}).fetchall())}
    for check in QUALITY_CHECKS:
        failed[check] = len(db.sql(named[check]).fetchall())
    return failed


# ------------------------------------------------------------------------------- main

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--odoo-dsn", required=True)
    parser.add_argument("--warehouse-dsn", required=True)
    parser.add_argument("--lake", required=True, type=Path)
    parser.add_argument("--as-of", required=True)
    parser.add_argument("--schema", default="gold_baseline")
    parser.add_argument("--report", type=Path, help="write the JSON report here (else stdout)")
    parser.add_argument("--persist-layers", action="store_true",
                        help="also write bronze and silver as Delta tables (no digests)")
    args = parser.parse_args()

    steps = Steps()
    spec = load_spec(SPEC)
    params = {"lake": str(args.lake.absolute()), "as_of": args.as_of,
              "odoo_dsn": args.odoo_dsn, "warehouse_dsn": args.warehouse_dsn}
    as_of = dt.datetime.fromisoformat(args.as_of).date()
    extracts = extract_tables(spec)

    with steps.step("read"):
        raw = read_source(args.odoo_dsn, list(extracts.values()))
        extracted_at = dt.datetime.now(dt.UTC)
        bronze = {table: bronze_rows(rows, extracted_at) for table, rows in raw.items()}
    if args.persist_layers:
        with steps.step("write_bronze"):
            for table, rows in bronze.items():
                write_deltalake(str(args.lake / "bronze" / "odoo" / table), rows, mode="append")
    source_rows = {table: rows.num_rows for table, rows in raw.items()}
    newest = max(pc.max(rows.column("write_date")).as_py() for rows in raw.values()
                 if "write_date" in rows.column_names)
    del raw

    db = connect()
    for extract_phase, table in extracts.items():
        db.register(extract_phase, bronze[table])
    phase_rows: dict[str, int] = {}
    for phase in sql_phases(spec):
        layer = "gold" if phase.name.startswith("gold_") else "silver"
        with steps.step(layer):
            phase_rows[phase.name] = run_sql_phase(db, phase, params)
        if args.persist_layers and layer == "silver":
            with steps.step("write_silver"):
                uri = render(phase.params["output"]["delta"], params=params, run={})
                write_deltalake(uri, db.sql(f'select * from "{phase.name}"').to_arrow_table(),
                                mode="overwrite")
    with steps.step("quality"):
        failed = quality(db, {t: p for p, t in extracts.items()}, source_rows, as_of)
    if any(failed.values()):
        sys.exit(f"baseline: quality checks failed: {failed}")

    marts: list[Mart] = []
    with steps.step("write_gold"):
        for phase in sql_phases(spec):
            if not phase.name.startswith("gold_"):
                continue
            output = render(phase.params["output"], params=params, run={})
            rows = db.sql(f'select * from "{phase.name}"').to_arrow_table()
            write_deltalake(output["delta"], rows, mode="overwrite")
            version = DeltaTable(output["delta"]).version()
            marts.append(Mart(output["name"], output["delta"], version, None))
    db.close()
    with steps.step("publish"), psycopg.connect(args.warehouse_dsn) as pg:
        published = publish(pg, args.schema, sorted(marts, key=lambda m: m.name),
                            run_id=RUN_ID, as_of=as_of, newest=newest)

    report = {"steps": {k: round(v, 3) for k, v in steps.seconds.items()},
              "source_rows": source_rows, "phase_rows": phase_rows, "quality": failed,
              "published": [{k: m[k] for k in ("mart", "rows")} for m in published["marts"]]}
    text = json.dumps(report, indent=2)
    if args.report is not None:
        args.report.write_text(text + "\n", encoding="utf-8")
    else:
        print(text)


if __name__ == "__main__":
    main()
