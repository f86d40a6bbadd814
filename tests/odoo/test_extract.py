"""Bronze extraction, driven directly (pipelines/odoo/extract.py): incremental loads by
watermark, deletions, relation tables, idempotence after a crash, and schema evolution of
the source (a new column flows through; a narrowed or removed one fails fast and blocks)."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pyarrow as pa
import pytest
from deltalake import DeltaTable

from executor.sdk import DatasetBlocked, SchemaBlocked
from pipelines.odoo import extract, generator
from pipelines.odoo.lake import bronze_uri
from tests.odoo.runner import REPO, postgres, python_context, run_spec

START = dt.date(2026, 1, 1)


def generate(dsn: str, days: int = 1) -> None:
    generator.generate(dsn, scale=0.02, seed=11, days=days, start=START)


def run_extract(dsn: str, lake: Path, table: str, tmp: Path, *,
                args: dict[str, Any] | None = None, **options: Any) -> dict[str, Any]:
    events: list[tuple[Any, ...]] = []
    ctx = python_context(f"extract_{table}", {"table": table, "lake": str(lake), **(args or {})},
                         tmp / "out" / table, connections={"odoo": postgres("odoo", dsn)},
                         events=events, **options)
    manifest = extract.extract_table(ctx)
    return {**manifest, "tables": ctx.tables_written, "events": events}


def bronze(lake: Path, table: str) -> pa.Table:
    result: pa.Table = DeltaTable(bronze_uri(str(lake), table)).to_pyarrow_table()
    return result


def source_ids(dsn: str, table: str) -> set[int]:
    with psycopg.connect(dsn) as conn:
        return {row[0] for row in conn.execute(f"select id from {table}")}


def live_ids(rows: pa.Table) -> set[int]:
    """Ids whose newest bronze row is not a tombstone."""
    newest: dict[int, tuple[dt.datetime, int]] = {}
    for row in rows.select(["id", "_source_write_date", "_op"]).to_pylist():
        rank = (row["_source_write_date"], row["_op"] == "delete")
        if row["id"] not in newest or rank > newest[row["id"]]:
            newest[row["id"]] = rank
    return {i for i, (_, deleted) in newest.items() if not deleted}


def versions_are_unique(rows: pa.Table) -> bool:
    keys = rows.select(extract.INCREMENTAL_KEYS)
    distinct: int = keys.group_by(extract.INCREMENTAL_KEYS).aggregate([]).num_rows
    return bool(distinct == rows.num_rows)


def execute(dsn: str, *statements: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)


# ---------------------------------------------------------------------------------- loads

def test_a_first_load_takes_every_row_and_a_rerun_with_no_change_writes_nothing(
        source_dsn: str, tmp_path: Path) -> None:
    generate(source_dsn)
    lake = tmp_path / "lake"
    first = run_extract(source_dsn, lake, "sale_order", tmp_path)
    ids = source_ids(source_dsn, "sale_order")
    assert first["mode"] == "initial" and first["upserts"] == len(ids) == first["source_rows"]
    assert first["table"]["version"] == 0 and first["table"]["rows"] == len(ids)
    assert first["schema_change"] == "INITIAL"
    rows = bronze(lake, "sale_order")
    assert set(rows.column("_op").to_pylist()) == {"upsert"}
    assert rows.column("_run_id").null_count == 0
    assert rows.schema.field("_extracted_at").type == pa.timestamp("us", tz="UTC")
    with psycopg.connect(source_dsn) as conn:
        newest = conn.execute("select max(write_date) from sale_order").fetchone()
        top = conn.execute("select max(id) from sale_order where write_date = %s",
                           [newest[0] if newest else None]).fetchone()
    assert newest is not None and top is not None
    assert first["watermark"] == {"from": None, "to": {"write_date": newest[0].isoformat(),
                                                       "id": top[0]}}
    assert extract.read_watermark(str(lake), "bronze.odoo.sale_order") == \
        extract.Watermark(newest[0], top[0])

    again = run_extract(source_dsn, lake, "sale_order", tmp_path)
    assert (again["mode"], again["upserts"], again["deletes"]) == ("incremental", 0, 0)
    assert again["table"] == {"name": "bronze.odoo.sale_order",
                              "uri": bronze_uri(str(lake), "sale_order"), "version": 0}
    assert again["watermark"]["from"] == again["watermark"]["to"] == first["watermark"]["to"]
    assert again["tables"] == []      # nothing written: nothing for the catalog


def test_an_incremental_load_takes_the_changed_rows_and_tombstones_the_deleted_ones(
        source_dsn: str, tmp_path: Path) -> None:
    generate(source_dsn)
    lake = tmp_path / "lake"
    run_extract(source_dsn, lake, "sale_order_line", tmp_path)
    before = source_ids(source_dsn, "sale_order_line")
    watermark = extract.read_watermark(str(lake), "bronze.odoo.sale_order_line")
    assert watermark is not None
    generator.advance(source_dsn, days=1)
    with psycopg.connect(source_dsn) as conn:
        changed = conn.execute(
            "select count(*) from sale_order_line where (write_date, id) > (%s, %s)",
            [watermark.write_date, watermark.id]).fetchone()
    after = source_ids(source_dsn, "sale_order_line")
    vanished = before - after
    assert vanished, "the simulated day deletes quotation lines (seed 11)"

    second = run_extract(source_dsn, lake, "sale_order_line", tmp_path)
    assert changed is not None and second["upserts"] == changed[0] > 0
    assert second["deletes"] == len(vanished) and second["mode"] == "incremental"
    rows = bronze(lake, "sale_order_line")
    assert live_ids(rows) == after
    tombstones = rows.filter(pa.compute.equal(rows.column("_op"), "delete"))
    assert set(tombstones.column("id").to_pylist()) == vanished
    assert tombstones.column("name").null_count == tombstones.num_rows   # no values, a marker
    assert versions_are_unique(rows)


def test_a_lookback_reads_again_but_stores_each_version_once(
        source_dsn: str, tmp_path: Path) -> None:
    generate(source_dsn)
    lake = tmp_path / "lake"
    first = run_extract(source_dsn, lake, "sale_order", tmp_path)
    generator.advance(source_dsn, days=1)
    second = run_extract(source_dsn, lake, "sale_order", tmp_path,
                         args={"lookback_seconds": 2 * 86400})
    assert second["read"] > second["upserts"] > 0     # older versions read again, skipped
    rows = bronze(lake, "sale_order")
    assert versions_are_unique(rows)
    assert rows.num_rows == first["upserts"] + second["upserts"] + second["deletes"]
    assert live_ids(rows) == source_ids(source_dsn, "sale_order")


def test_a_relation_table_is_compared_whole_and_its_vanished_pairs_tombstoned(
        source_dsn: str, tmp_path: Path) -> None:
    generate(source_dsn, days=3)
    lake = tmp_path / "lake"
    table = "sale_order_line_invoice_rel"
    first = run_extract(source_dsn, lake, table, tmp_path)
    with psycopg.connect(source_dsn) as conn:
        pairs = set(conn.execute(f"select order_line_id, invoice_line_id from {table}"))
    assert first["mode"] == "snapshot" and first["upserts"] == len(pairs) > 1
    assert first["watermark"] is None
    gone = sorted(pairs)[0]
    execute(source_dsn, f"delete from {table} where order_line_id = {gone[0]} "
                        f"and invoice_line_id = {gone[1]}")
    second = run_extract(source_dsn, lake, table, tmp_path)
    assert (second["upserts"], second["deletes"]) == (0, 1)
    third = run_extract(source_dsn, lake, table, tmp_path)
    assert (third["upserts"], third["deletes"]) == (0, 0)       # compared with bronze itself
    rows = bronze(lake, table)
    assert rows.num_rows == len(pairs) + 1
    deleted = rows.filter(pa.compute.equal(rows.column("_op"), "delete"))
    assert deleted.select(["order_line_id", "invoice_line_id"]).to_pylist() == [
        {"order_line_id": gone[0], "invoice_line_id": gone[1]}]


# ---------------------------------------------------------------------------------- crashes

CRASH = """
import os, sys
from pathlib import Path
from pipelines.odoo import extract
from tests.odoo.runner import postgres, python_context

def crash(*args, **kwargs):
    os._exit(9)        # the process dies: no cleanup, no exception handler

extract.commit_watermark = crash
table, lake, out, dsn = sys.argv[1:]
extract.extract_table(python_context("extract_" + table, {"table": table, "lake": lake},
                                     Path(out), connections={"odoo": postgres("odoo", dsn)}))
"""


def crash_after_bronze_write(dsn: str, lake: Path, table: str, out: Path) -> None:
    """Run the extraction in a process that dies between the bronze commit and the
    watermark commit."""
    done = subprocess.run([sys.executable, "-c", CRASH, table, str(lake), str(out), dsn],
                          cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 9, done.stderr


@pytest.mark.parametrize("load", ["first", "incremental"])
def test_a_crash_between_the_bronze_write_and_the_watermark_commit_leaves_no_duplicates(
        source_dsn: str, tmp_path: Path, load: str) -> None:
    generate(source_dsn)
    lake = tmp_path / "lake"
    table, dataset = "sale_order_line", "bronze.odoo.sale_order_line"
    if load == "incremental":
        run_extract(source_dsn, lake, table, tmp_path)
        generator.advance(source_dsn, days=1)
    committed = extract.read_watermark(str(lake), dataset)
    versions = DeltaTable(bronze_uri(str(lake), table)).version() if committed else -1

    crash_after_bronze_write(source_dsn, lake, table, tmp_path / "crashed")
    # the bronze commit landed, the watermark did not move
    assert DeltaTable(bronze_uri(str(lake), table)).version() == versions + 1
    assert extract.read_watermark(str(lake), dataset) == committed
    crashed = bronze(lake, table)

    rerun = run_extract(source_dsn, lake, table, tmp_path)
    rows = bronze(lake, table)
    assert rerun["read"] > 0 and rerun["upserts"] == 0   # the same rows were read again...
    assert rows.num_rows == crashed.num_rows              # ...and not stored twice
    assert versions_are_unique(rows)
    assert live_ids(rows) == source_ids(source_dsn, table)
    moved = extract.read_watermark(str(lake), dataset)
    assert moved is not None and moved != committed
    assert rerun["watermark"]["to"] == moved.to_json()


# ---------------------------------------------------------------------------------- schemas

def test_a_column_added_in_odoo_is_non_breaking_and_reaches_silver(
        source_dsn: str, warehouse_dsn: str, tmp_path: Path) -> None:
    generate(source_dsn)
    lake = tmp_path / "lake"
    params = {"lake": str(lake), "as_of": "2026-01-01", "odoo_dsn": source_dsn,
              "warehouse_dsn": warehouse_dsn}
    run_spec(params, tmp_path / "work", only={"silver_sale_order"})
    execute(source_dsn, "alter table sale_order add column x_margin numeric(12, 2)",
            "update sale_order set x_margin = 12.5, "
            "write_date = (select max(write_date) from sale_order) + interval '1 hour' "
            "where id = (select min(id) from sale_order)")

    run = run_spec(params, tmp_path / "work", only={"silver_sale_order"})
    manifest = run.manifests["extract_sale_order"]
    assert manifest["schema_change"] == "NON_BREAKING" and manifest["upserts"] == 1
    [entry] = manifest["tables"]
    assert entry["schema_change"]["change"] == "NON_BREAKING"
    assert entry["schema_change"]["changes"] == [
        {"column": "x_margin", "change": "added", "old_type": None,
         "new_type": "decimal128(12, 2)"}]
    warnings = [e for e in run.events["extract_sale_order"]
                if e[0] == "event" and e[3] == "warning"]
    assert warnings and "x_margin" in warnings[0][2]
    rows = bronze(lake, "sale_order")
    assert rows.schema.field("x_margin").type == pa.decimal128(12, 2)
    assert sorted(v for v in rows.column("x_margin").to_pylist() if v is not None) == [12.5]
    silver = DeltaTable(str(lake / "silver" / "sale_order")).to_pyarrow_table()
    assert "x_margin" in silver.column_names
    silver_entry = run.manifests["silver_sale_order"]["tables"][0]
    assert silver_entry["schema_change"]["change"] == "NON_BREAKING"


def test_a_column_added_with_no_row_changed_still_evolves_bronze(
        source_dsn: str, tmp_path: Path) -> None:
    generate(source_dsn)
    lake = tmp_path / "lake"
    run_extract(source_dsn, lake, "res_partner", tmp_path)
    execute(source_dsn, "alter table res_partner add column x_segment varchar")
    manifest = run_extract(source_dsn, lake, "res_partner", tmp_path)
    assert (manifest["schema_change"], manifest["upserts"]) == ("NON_BREAKING", 0)
    assert manifest["table"]["version"] == 1
    assert bronze(lake, "res_partner").schema.field("x_segment").type == pa.string()
    again = run_extract(source_dsn, lake, "res_partner", tmp_path)
    assert (again["schema_change"], again["tables"]) == ("UNCHANGED", [])


@pytest.mark.parametrize(("ddl", "table", "column", "change"), [
    ("alter table sale_order_line alter column customer_lead type real",
     "sale_order_line", "customer_lead", "narrowed"),
    ("alter table sale_order drop column note", "sale_order", "note", "removed"),
])
def test_a_narrowed_or_removed_column_fails_fast_naming_table_column_and_change(
        source_dsn: str, tmp_path: Path, ddl: str, table: str, column: str,
        change: str) -> None:
    generate(source_dsn)
    lake = tmp_path / "lake"
    first = run_extract(source_dsn, lake, table, tmp_path)
    execute(source_dsn, ddl, f"update {table} set write_date = write_date + interval '1 day'")

    with pytest.raises(SchemaBlocked) as caught:
        run_extract(source_dsn, lake, table, tmp_path)
    error = caught.value
    assert f"bronze.odoo.{table}" in error.message and f"source table {table}" in error.message
    assert f"column {column} {change}" in error.message and "BREAKING" in error.message
    assert (error.table, error.uri, error.layer) == (
        f"bronze.odoo.{table}", bronze_uri(str(lake), table), "bronze")
    assert [(c["column"], c["change"]) for c in error.changes] == [(column, change)]
    assert error.schema is not None   # the proposed schema, for the catalog
    # nothing was read or written: bronze and the watermark are as the first load left them
    assert DeltaTable(bronze_uri(str(lake), table)).version() == first["table"]["version"]
    assert extract.read_watermark(str(lake), f"bronze.odoo.{table}") == extract.Watermark(
        dt.datetime.fromisoformat(first["watermark"]["to"]["write_date"]),
        first["watermark"]["to"]["id"])


def test_a_dataset_the_catalog_holds_blocked_is_refused_before_reading(
        source_dsn: str, tmp_path: Path) -> None:
    generate(source_dsn)
    with pytest.raises(DatasetBlocked, match=r"bronze\.odoo\.sale_order is blocked"):
        run_extract(source_dsn, tmp_path / "lake", "sale_order", tmp_path,
                    datasets={"bronze.odoo.sale_order": "blocked"})
    assert not (tmp_path / "lake").exists()


def test_an_accepted_breaking_change_is_applied(source_dsn: str, tmp_path: Path) -> None:
    generate(source_dsn)
    lake = tmp_path / "lake"
    run_extract(source_dsn, lake, "sale_order", tmp_path)
    execute(source_dsn, "alter table sale_order drop column note",
            "update sale_order set write_date = write_date + interval '1 day'")
    manifest = run_extract(source_dsn, lake, "sale_order", tmp_path,
                           datasets={"bronze.odoo.sale_order": "accepted"})
    assert manifest["schema_change"] == "BREAKING"
    assert manifest["tables"][0]["schema_change"]["change"] == "BREAKING"
    assert "note" not in bronze(lake, "sale_order").column_names
