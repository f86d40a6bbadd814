"""The whole Odoo spec, run in-process phase by phase (tests/odoo/runner.py): incremental runs
give the gold of a full rebuild, a planted bad row fails quality with its rows as an
artifact, and gold reaches the warehouse's `gold` schema with the run's freshness."""

from __future__ import annotations

import csv
import datetime as dt
import json
from pathlib import Path
from typing import Any

import psycopg
import pytest
from deltalake import DeltaTable

from executor.digests import table_digest
from executor.kinds.base import TerminalPhaseError
from pipelines.odoo import generator
from pipelines.odoo.lake import state_uri
from tests.odoo.runner import LocalRun, run_spec

START = dt.date(2026, 1, 1)
MARTS = ("revenue", "receivables_ageing", "order_invoice_lag")


def params(lake: Path, day: dt.date, source: str, warehouse: str) -> dict[str, Any]:
    return {"lake": str(lake), "as_of": day.isoformat(), "odoo_dsn": source,
            "warehouse_dsn": warehouse}


def gold_digests(lake: Path) -> dict[str, tuple[str, int]]:
    digests = {}
    for mart in MARTS:
        digest = table_digest(str(lake / "gold" / mart))
        digests[mart] = (digest.digest, digest.rows)
    return digests


def extracted(run: LocalRun, key: str) -> int:
    return sum(int(m[key]) for name, m in run.manifests.items() if name.startswith("extract_"))


def test_day_by_day_incremental_runs_give_the_gold_of_a_full_rebuild(
        source_dsn: str, warehouse_dsn: str, tmp_path: Path) -> None:
    generator.generate(source_dsn, scale=0.02, seed=11, days=1, start=START)
    incremental = tmp_path / "incremental"
    first = run_spec(params(incremental, START, source_dsn, warehouse_dsn), tmp_path / "work")
    assert {m["mode"] for n, m in first.manifests.items() if n.startswith("extract_")} == {
        "initial", "snapshot"}
    changed = deleted = 0
    for day in (START + dt.timedelta(days=1), START + dt.timedelta(days=2)):
        generator.advance(source_dsn, days=1)
        run = run_spec(params(incremental, day, source_dsn, warehouse_dsn), tmp_path / "work")
        assert run.manifests["extract_sale_order"]["mode"] == "incremental"
        changed += extracted(run, "upserts")
        deleted += extracted(run, "deletes")
    # the two days read only what changed, deletions included
    assert 0 < changed < extracted(first, "source_rows") + changed
    assert deleted > 0

    rebuild = tmp_path / "rebuild"
    run_spec(params(rebuild, START + dt.timedelta(days=2), source_dsn, warehouse_dsn),
             tmp_path / "work")
    expected = gold_digests(rebuild)
    assert all(rows > 0 for _, rows in expected.values()), expected
    assert gold_digests(incremental) == expected


def test_a_planted_bad_row_fails_quality_with_the_failed_rows_as_an_artifact(
        source_dsn: str, warehouse_dsn: str, tmp_path: Path) -> None:
    generator.generate(source_dsn, scale=0.02, seed=11, days=2, start=START)
    with psycopg.connect(source_dsn, autocommit=True) as conn:
        line = conn.execute("select id, order_id from sale_order_line "
                            "where display_type is null order by id limit 1").fetchone()
        assert line is not None
        conn.execute("update sale_order_line set product_uom_qty = -3 where id = %s",
                     [line[0]])
        # an orphan, as a buggy import that bypassed the foreign keys would leave it, dated
        # within the source's history (one written after sale_order was read would be in
        # flight, not failed, at its first run: tests/odoo/test_in_flight.py)
        conn.execute("set session_replication_role = replica")
        orphan = conn.execute(
            "insert into sale_order_line (order_id, name, product_uom_qty, customer_lead, "
            "price_unit, price_subtotal, write_date, create_date) "
            "values (987654, 'orphan', 1, 0, 10, 10, '2026-01-01 12:00', '2026-01-01 12:00') "
            "returning id").fetchone()
        assert orphan is not None
    lake = tmp_path / "lake"
    work = tmp_path / "work"

    with pytest.raises(TerminalPhaseError) as caught:
        run_spec(params(lake, START + dt.timedelta(days=1), source_dsn, warehouse_dsn), work)
    message = caught.value.message
    assert "2 quality check(s) failed" in message
    assert "no_negative_quantities: 1 row(s)" in message and "no_orphan_lines: 1 row(s)" \
        in message

    [quality_dir] = list(work.glob("*/quality"))
    failed = quality_dir / "failed_rows"
    assert sorted(p.name for p in failed.iterdir()) == ["no_negative_quantities.csv",
                                                        "no_orphan_lines.csv"]
    with (failed / "no_negative_quantities.csv").open() as f:
        negative = list(csv.DictReader(f))
    assert [(r["rule"], r["line_id"], r["header_id"], r["quantity"]) for r in negative] == [
        ("sale_order_line.product_uom_qty >= 0", str(line[0]), str(line[1]), "-3.0000")]
    with (failed / "no_orphan_lines.csv").open() as f:
        orphans = list(csv.DictReader(f))
    assert [(r["line_table"], r["line_id"], r["missing_id"]) for r in orphans] == [
        ("sale_order_line", str(orphan[0]), "987654")]
    report = json.loads((quality_dir / "quality_report.json").read_text())
    assert {c["check"]: c["status"] for c in report["checks"]} == {
        "row_counts_reconcile": "passed", "line_sums_match_headers": "passed",
        "no_orphan_lines": "failed", "no_negative_quantities": "failed"}

    # recorded per run in the lake, and nothing was published
    recorded = DeltaTable(state_uri(str(lake), "quality")).to_pyarrow_table().to_pylist()
    assert sorted((r["check"], r["status"], r["failed_rows"]) for r in recorded) == [
        ("line_sums_match_headers", "passed", 0), ("no_negative_quantities", "failed", 1),
        ("no_orphan_lines", "failed", 1), ("row_counts_reconcile", "passed", 0)]
    with psycopg.connect(warehouse_dsn) as conn:
        assert conn.execute("select to_regnamespace('gold')").fetchone() == (None,)


def test_gold_is_published_to_the_warehouse_with_the_run_s_freshness(
        source_dsn: str, warehouse_dsn: str, tmp_path: Path) -> None:
    generator.generate(source_dsn, scale=0.02, seed=11, days=2, start=START)
    lake = tmp_path / "lake"
    day = START + dt.timedelta(days=1)
    runs = [run_spec(params(lake, day, source_dsn, warehouse_dsn), tmp_path / "work")]
    generator.advance(source_dsn, days=1)
    runs.append(run_spec(params(lake, day + dt.timedelta(days=1), source_dsn, warehouse_dsn),
                         tmp_path / "work"))

    with psycopg.connect(source_dsn) as conn:
        newest = max(conn.execute(f"select coalesce(max(write_date), '-infinity') from {t}"
                                  ).fetchall()[0][0] for t in ("res_currency", "res_currency_rate",
                                               "res_company", "res_partner",
                                               "product_category", "product_template",
                                               "product_product", "sale_order",
                                               "sale_order_line", "account_move",
                                               "account_move_line"))
    with psycopg.connect(warehouse_dsn) as conn:
        for mart in MARTS:
            rows = DeltaTable(str(lake / "gold" / mart)).to_pyarrow_table()
            count = conn.execute(f"select count(*) from gold.{mart}").fetchone()
            assert count == (rows.num_rows,), mart
        # the decimals keep their scale; the revenue total is the same in both
        total = conn.execute("select sum(revenue) from gold.revenue").fetchone()
        lake_total = sum(DeltaTable(str(lake / "gold" / "revenue")).to_pyarrow_table()
                         .column("revenue").to_pylist())
        assert total == (lake_total,)
        published = conn.execute("select run_id, mart, rows from gold.publications "
                                 "order by published_at, mart").fetchall()
        assert [r[0] for r in published] == [runs[0].run_id] * 3 + [runs[1].run_id] * 3
        assert [r[1] for r in published[3:]] == [
            "gold.order_invoice_lag", "gold.receivables_ageing", "gold.revenue"]
        freshness = conn.execute("select run_id, newest_source_write_date, "
                                 "gold_available_at, freshness_seconds from gold.freshness "
                                 "order by gold_available_at").fetchall()
    assert [f[0] for f in freshness] == [r.run_id for r in runs]
    _, source_newest, available, seconds = freshness[-1]
    assert source_newest == newest
    assert seconds == pytest.approx(
        (available - newest.replace(tzinfo=dt.UTC)).total_seconds(), abs=1e-3)
    manifest = runs[1].manifests["publish"]
    assert manifest["freshness"]["seconds"] == pytest.approx(seconds)
    assert [e[1] for e in runs[1].events["publish"] if e[0] == "event"].count("FRESHNESS") == 1
    recorded = DeltaTable(state_uri(str(lake), "freshness")).to_pyarrow_table().to_pylist()
    assert [r["run_id"] for r in sorted(recorded, key=lambda r: r["gold_available_at"])] == [
        r.run_id for r in runs]
