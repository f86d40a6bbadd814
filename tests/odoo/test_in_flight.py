"""Quality under a source that changes while a run extracts it (docs/odoo.md, "In flight or
defect?"): the spec's phases run in-process (tests/odoo/runner.py) and Odoo commits between
the extraction of one table and another's, so bronze holds a header at one version and its
lines at another. Those rows are in flight: quality warns (event, report, `_state/quality`)
and passes; the next run, reading both tables again, has none, and its gold is a clean
rebuild's. A real inconsistency, or a difference still there at the next run, still fails."""

from __future__ import annotations

import csv
import datetime as dt
import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake

from executor.kinds.base import TerminalPhaseError
from pipelines.odoo import generator
from pipelines.odoo.lake import state_uri
from pipelines.odoo.quality import CheckResult, _record, check_quality
from tests.odoo.runner import LocalRun, python_context, run_spec, spec
from tests.odoo.test_pipeline import gold_digests, params

START = dt.date(2026, 1, 1)
DAY = START + dt.timedelta(days=5)
CROSS = ("line_sums_match_headers", "no_orphan_lines")
HEADERS_FIRST = ["extract_sale_order", "extract_account_move"]
LINES_FIRST = ["extract_sale_order_line", "extract_account_move_line"]


def advance_before(dsn: str, phase: str) -> Callable[[str], None]:
    """A `before_phase` hook: one more simulated day in Odoo just before `phase` runs."""
    def hook(name: str) -> None:
        if name == phase:
            generator.advance(dsn, days=1)
    return hook


def checks(run: LocalRun) -> dict[str, dict[str, Any]]:
    return {c["check"]: c for c in run.manifests["quality"]["checks"]}


def in_flight_tables(run: LocalRun) -> set[str]:
    return {t for c in checks(run).values() for t in c.get("in_flight", {}).get("tables", [])}


def quality_events(run: LocalRun) -> list[tuple[Any, ...]]:
    return [e for e in run.events["quality"] if e[0] == "event" and e[1] == "QUALITY_CHECK"]


def assert_passed_with_warnings(run: LocalRun) -> dict[str, dict[str, Any]]:
    """Quality passed (publish ran), nothing failed, and some cross-table rows are in flight
    (status warn), shown with why in the manifest, the events, the report and the CSVs."""
    found = checks(run)
    assert "publish" in run.manifests
    assert all(c["failed_rows"] == 0 for c in found.values()), found
    warned = {name for name, c in found.items() if c["status"] == "warn"}
    assert warned and warned <= set(CROSS), found
    for name in warned:
        flight = found[name]["in_flight"]
        assert found[name]["in_flight_rows"] == flight["rows"] > 0
        assert sum(flight["rules"].values()) == flight["rows"]
        shown = flight["first_rows"]
        assert 0 < len(shown) <= min(flight["rows"], 20)
        assert all(r["in_flight"] and r["changed_table"] != r["read_table"] for r in shown)
        assert {t for r in shown for t in (r["changed_table"], r["read_table"])} <= set(
            flight["tables"])
    # events: (kind, type, message, level, payload)
    events = {e[4]["check"]: e for e in quality_events(run)}
    assert set(events) == set(found)
    for name, event in events.items():
        assert event[3] == ("warning" if name in warned else "info"), event
        assert event[4]["status"] == found[name]["status"]
    for name in warned:
        assert "in flight between" in events[name][2]
        assert events[name][4]["in_flight"]["tables"] == found[name]["in_flight"]["tables"]
    quality_dir = run.output_dir("quality")
    report = json.loads((quality_dir / "quality_report.json").read_text())
    assert {c["check"]: c["status"] for c in report["checks"]} == {
        n: c["status"] for n, c in found.items()}
    assert not (quality_dir / "failed_rows").exists()
    assert sorted(p.name for p in (quality_dir / "in_flight_rows").iterdir()) == sorted(
        f"{n}.csv" for n in warned)
    for name in warned:
        with (quality_dir / "in_flight_rows" / f"{name}.csv").open() as f:
            assert len(list(csv.DictReader(f))) == found[name]["in_flight_rows"]
    return found


def recorded(lake: Path, run: LocalRun) -> dict[str, tuple[str, int, int, list[str]]]:
    rows = DeltaTable(state_uri(str(lake), "quality")).to_pyarrow_table().to_pylist()
    return {r["check"]: (r["status"], r["failed_rows"], r["in_flight_rows"],
                         json.loads(r["in_flight_tables"]))
            for r in rows if r["run_id"] == run.run_id}


def rerun_quality(run: LocalRun, lake: Path, tmp_path: Path, *,
                  without_read_at: bool = False) -> dict[str, Any]:
    """The quality phase of a repair of `run`: a new run id (no read of its own in
    `_state/reads`) over `run`'s upstream manifests, optionally without their `read_at` (as an
    older manifest)."""
    phase = next(p for p in spec().spec.phases if p.name == "quality")
    inputs = {dep: dict(run.manifests[dep]) for dep in phase.depends_on}
    if without_read_at:
        for manifest in inputs.values():
            manifest.pop("read_at", None)
    ctx = python_context("quality", {"lake": str(lake), "as_of": DAY.isoformat()},
                         tmp_path / "repair" / str(uuid.uuid4()), inputs=inputs,
                         run_id=str(uuid.uuid4()))
    return {c["check"]: c for c in check_quality(ctx)["checks"]}


def test_a_source_changing_between_extractions_warns_and_the_next_run_resolves_it(
        source_dsn: str, warehouse_dsn: str, tmp_path: Path) -> None:
    generator.generate(source_dsn, scale=0.01, seed=11, days=5, start=START)
    lake, work = tmp_path / "lake", tmp_path / "work"
    first = run_spec(params(lake, DAY, source_dsn, warehouse_dsn), work)
    assert all(c["status"] == "passed" for c in checks(first).values())

    # the headers read before a day of activity, their lines after it
    skewed = run_spec(params(lake, DAY, source_dsn, warehouse_dsn), work, first=HEADERS_FIRST,
                      before_phase=advance_before(source_dsn, "extract_sale_order_line"))
    found = assert_passed_with_warnings(skewed)
    assert {"sale_order", "sale_order_line", "account_move", "account_move_line"} <= \
        in_flight_tables(skewed)
    orphans = found["no_orphan_lines"]["in_flight"]
    assert {"sale_order_line.order_id references a live sale_order",
            "account_move_line.move_id references a live account_move"} <= set(orphans["rules"])
    # every row explained by a line written after its header table was read
    assert {(r["changed_table"], r["read_table"]) for r in orphans["first_rows"]} <= {
        ("sale_order_line", "sale_order"), ("account_move_line", "account_move")}
    state = recorded(lake, skewed)
    assert {n: s[0] for n, s in state.items()} == {n: c["status"] for n, c in found.items()}
    assert state["no_orphan_lines"][2] == orphans["rows"]
    assert state["no_orphan_lines"][3] == orphans["tables"]

    # a repair that reuses these extractions (no read of its own) judges them by their reads:
    # the manifests' read_at, else each dataset's newest read (here the same reads)
    for without_read_at in (False, True):
        again = rerun_quality(skewed, lake, tmp_path, without_read_at=without_read_at)
        assert {n: (c["status"], c["failed_rows"], c["in_flight_rows"])
                for n, c in again.items()} == {
            n: (c["status"], c["failed_rows"], c["in_flight_rows"]) for n, c in found.items()}

    # the lines read before a day of activity, their headers after it
    reversed_ = run_spec(params(lake, DAY, source_dsn, warehouse_dsn), work, first=LINES_FIRST,
                         before_phase=advance_before(source_dsn, "extract_sale_order"))
    found = assert_passed_with_warnings(reversed_)
    sums = found["line_sums_match_headers"]["in_flight"]
    assert {"sale_order", "sale_order_line", "account_move", "account_move_line"} <= set(
        sums["tables"])
    assert ("sale_order", "sale_order_line") in {(r["changed_table"], r["read_table"])
                                                 for r in sums["first_rows"]}

    # the invoice links read after a day of activity that the invoice lines missed
    links = run_spec(params(lake, DAY, source_dsn, warehouse_dsn), work,
                     before_phase=advance_before(source_dsn,
                                                 "extract_sale_order_line_invoice_rel"))
    found = assert_passed_with_warnings(links)
    assert found["no_orphan_lines"]["in_flight"]["rules"] == {
        "sale_order_line_invoice_rel.invoice_line_id references a live account_move_line":
            found["no_orphan_lines"]["in_flight_rows"]}
    assert in_flight_tables(links) == {"sale_order_line_invoice_rel", "account_move_line"}

    # the source moves on between runs, not during one: the next run reads every table again
    generator.advance(source_dsn, days=1)
    settled = run_spec(params(lake, DAY, source_dsn, warehouse_dsn), work)
    assert {n: (c["status"], c["failed_rows"], c["in_flight_rows"])
            for n, c in checks(settled).items()} == {
        n: ("passed", 0, 0) for n in checks(settled)}
    assert [e[3] for e in quality_events(settled)] == ["info"] * 4
    assert all(s[0] == "passed" and s[2] == 0 for s in recorded(lake, settled).values())

    rebuild = tmp_path / "rebuild"
    clean = run_spec(params(rebuild, DAY, source_dsn, warehouse_dsn), tmp_path / "work2")
    assert all(c["status"] == "passed" for c in checks(clean).values())
    expected = gold_digests(rebuild)
    assert all(rows > 0 for _, rows in expected.values()), expected
    assert gold_digests(lake) == expected


def test_deletions_between_extractions_are_in_flight_too(
        source_dsn: str, warehouse_dsn: str, tmp_path: Path) -> None:
    """Odoo unlinks a quotation with its lines after its lines were read but before its header
    was; and an invoice line (with its link, as the cascade does) after the invoice and the
    links were read but before the invoice lines were. Then every difference is in flight."""
    generator.generate(source_dsn, scale=0.01, seed=11, days=5, start=START)
    lake, work = tmp_path / "lake", tmp_path / "work"
    run_spec(params(lake, DAY, source_dsn, warehouse_dsn), work)
    with psycopg.connect(source_dsn) as conn:
        draft = conn.execute(
            "select o.id from sale_order o where o.state = 'draft' and exists "
            "(select 1 from sale_order_line l where l.order_id = o.id) order by o.id limit 1"
            ).fetchone()
        line = conn.execute(
            "select l.id, l.move_id, l.balance from account_move_line l "
            "join account_move m on m.id = l.move_id "
            "join sale_order_line_invoice_rel k on k.invoice_line_id = l.id "
            "where m.move_type = 'out_invoice' and l.display_type = 'product' "
            "and (select count(*) from account_move_line p where p.move_id = m.id "
            "     and p.display_type = 'product') > 1 order by l.id limit 1").fetchone()
        assert draft is not None and line is not None
        order_lines = conn.execute("select count(*) from sale_order_line where order_id = %s",
                                   draft).fetchone()
    assert order_lines is not None and order_lines[0] > 0

    def unlink(name: str) -> None:
        with psycopg.connect(source_dsn) as conn:
            if name == "extract_sale_order":
                conn.execute("delete from sale_order where id = %s", draft)  # lines cascade
            elif name == "extract_account_move_line":
                # as Odoo does: the line (its links cascade) and the invoice's untaxed amount
                conn.execute("delete from account_move_line where id = %s", [line[0]])
                conn.execute("update account_move set amount_untaxed_signed = "
                             "amount_untaxed_signed + %s, write_date = now() where id = %s",
                             [line[2], line[1]])

    skewed = run_spec(params(lake, DAY, source_dsn, warehouse_dsn), work,
                      first=["extract_sale_order_line", "extract_sale_order_line_invoice_rel",
                             "extract_account_move"], before_phase=unlink)
    found = assert_passed_with_warnings(skewed)
    rows = {(r["rule"], r["in_flight"]) for c in CROSS
            for r in found[c].get("in_flight", {}).get("first_rows", [])}
    assert rows == {
        ("sale_order_line.order_id references a live sale_order",
         f"sale_order {draft[0]} deleted after sale_order_line was read"),
        ("sale_order_line_invoice_rel.invoice_line_id references a live account_move_line",
         f"account_move_line {line[0]} deleted after sale_order_line_invoice_rel was read"),
        ("account_move.amount_untaxed_signed = -sum(balance) of its product lines",
         f"account_move_line {line[0]} deleted after account_move was read"),
    }
    assert found["no_orphan_lines"]["in_flight_rows"] == order_lines[0] + 1
    assert found["line_sums_match_headers"]["in_flight_rows"] == 1

    settled = run_spec(params(lake, DAY, source_dsn, warehouse_dsn), work)
    assert {(c["status"], c["in_flight_rows"]) for c in checks(settled).values()} == {
        ("passed", 0)}


def test_a_real_inconsistency_fails_while_the_rows_in_flight_only_warn(
        source_dsn: str, warehouse_dsn: str, tmp_path: Path) -> None:
    """Old headers whose amounts no longer match their lines in the source itself (a direct
    SQL fix that left write_date alone): both tables are read after it, so the rows fail,
    in a run whose other differences are in flight."""
    generator.generate(source_dsn, scale=0.01, seed=11, days=5, start=START)
    with psycopg.connect(source_dsn) as conn:
        order = conn.execute("select id from sale_order where state = 'cancel' "
                             "and amount_untaxed > 0 order by id limit 1").fetchone()
        invoice = conn.execute("select id from account_move where move_type = 'out_invoice' "
                               "and payment_state = 'paid' order by id limit 1").fetchone()
        assert order is not None and invoice is not None
        conn.execute("update sale_order set amount_untaxed = amount_untaxed + 1 where id = %s",
                     order)
        conn.execute("update account_move set amount_total_signed = amount_total_signed + 1 "
                     "where id = %s", invoice)
    lake, work = tmp_path / "lake", tmp_path / "work"
    with pytest.raises(TerminalPhaseError) as caught:
        run_spec(params(lake, DAY, source_dsn, warehouse_dsn), work, first=HEADERS_FIRST,
                 before_phase=advance_before(source_dsn, "extract_sale_order_line"))
    assert caught.value.message.startswith(
        "1 quality check(s) failed: line_sums_match_headers: 2 row(s) (account_move."
        "amount_total_signed = sum(balance) of its payment term lines, sale_order."
        "amount_untaxed = sum(sale_order_line.price_subtotal))")
    [quality_dir] = list(work.glob("*/quality"))
    with (quality_dir / "failed_rows" / "line_sums_match_headers.csv").open() as f:
        failed = {(r["header_table"], int(r["header_id"])) for r in csv.DictReader(f)}
    assert failed == {("sale_order", order[0]), ("account_move", invoice[0])}
    report = {c["check"]: c for c in json.loads(
        (quality_dir / "quality_report.json").read_text())["checks"]}
    assert report["line_sums_match_headers"]["status"] == "failed"
    assert report["no_orphan_lines"]["status"] == "warn"
    assert report["no_orphan_lines"]["in_flight_rows"] > 0
    with psycopg.connect(warehouse_dsn) as conn:
        assert conn.execute("select to_regnamespace('gold')").fetchone() == (None,)


def test_a_difference_still_there_at_the_next_run_is_a_defect(
        source_dsn: str, warehouse_dsn: str, tmp_path: Path) -> None:
    """An orphan line written after everything the header table has: at its first run it may
    be in flight (its header's transaction committed after sale_order was read); the next run
    read sale_order again after the line was stored, so it is a defect."""
    generator.generate(source_dsn, scale=0.01, seed=11, days=5, start=START)
    with psycopg.connect(source_dsn, autocommit=True) as conn:
        conn.execute("set session_replication_role = replica")
        orphan = conn.execute(
            "insert into sale_order_line (order_id, name, product_uom_qty, customer_lead, "
            "price_unit, price_subtotal, write_date, create_date) "
            "values (987654, 'orphan', 1, 0, 10, 10, now(), now()) returning id").fetchone()
    assert orphan is not None
    lake, work = tmp_path / "lake", tmp_path / "work"
    first = run_spec(params(lake, DAY, source_dsn, warehouse_dsn), work)
    flight = checks(first)["no_orphan_lines"]
    assert (flight["status"], flight["failed_rows"], flight["in_flight_rows"]) == ("warn", 0, 1)
    [row] = flight["in_flight"]["first_rows"]
    assert (row["line_id"], row["missing_id"], row["changed_table"], row["read_table"]) == (
        orphan[0], 987654, "sale_order_line", "sale_order")

    with pytest.raises(TerminalPhaseError) as caught:
        run_spec(params(lake, DAY, source_dsn, warehouse_dsn), work)
    assert caught.value.message.startswith(
        "1 quality check(s) failed: no_orphan_lines: 1 row(s) "
        "(sale_order_line.order_id references a live sale_order)")


def test_a_lake_s_older_quality_table_gains_the_in_flight_columns(tmp_path: Path) -> None:
    """`_state/quality` written before in-flight rows existed: the next record adds the
    columns (null for the old rows) instead of failing the append."""
    lake = str(tmp_path / "lake")
    uri = state_uri(lake, "quality")
    write_deltalake(uri, pa.table({
        "run_id": ["old"], "as_of": pa.array([START], pa.date32()), "check": ["no_orphan_lines"],
        "status": ["passed"], "failed_rows": pa.array([0], pa.int64()), "rules": ["{}"],
        "checked_at": pa.array([dt.datetime(2026, 1, 2, tzinfo=dt.UTC)],
                               pa.timestamp("us", tz="UTC"))}))
    flight = pa.table({"rule": ["r"], "line_id": [1], "in_flight": ["why"],
                       "changed_table": ["sale_order_line"], "read_table": ["sale_order"]})
    _record(lake, "new", START, [CheckResult("no_orphan_lines", flight.schema.empty_table(),
                                             flight)])
    rows = {r["run_id"]: r for r in DeltaTable(uri).to_pyarrow_table().to_pylist()}
    assert (rows["old"]["in_flight_rows"], rows["old"]["in_flight_tables"]) == (None, None)
    assert (rows["new"]["status"], rows["new"]["failed_rows"], rows["new"]["in_flight_rows"],
            json.loads(rows["new"]["in_flight_tables"])) == (
        "warn", 0, 1, ["sale_order", "sale_order_line"])


def test_a_line_added_and_removed_between_two_reads_of_its_table_is_in_flight(
        source_dsn: str, warehouse_dsn: str, tmp_path: Path) -> None:
    """A quotation made after the previous run loses a line (Odoo recomputes its amount) after
    this run read sale_order and before it read sale_order_line: the line was never read, so
    no version or tombstone of it says so. The header, written since the lines' previous
    read, with its lines read after it, is in flight; the next run resolves it."""
    generator.generate(source_dsn, scale=0.01, seed=11, days=5, start=START)
    lake, work = tmp_path / "lake", tmp_path / "work"
    run_spec(params(lake, DAY, source_dsn, warehouse_dsn), work)
    with psycopg.connect(source_dsn) as conn:
        newest = conn.execute("select max(id) from sale_order").fetchone()
    generator.advance(source_dsn, days=1)
    with psycopg.connect(source_dsn) as conn:
        line = conn.execute(
            "select l.id, l.order_id, l.price_subtotal from sale_order_line l "
            "where l.order_id > %s and l.display_type is null and (select count(*) from "
            "sale_order_line o where o.order_id = l.order_id) > 1 order by l.id limit 1",
            newest).fetchone()
    assert line is not None

    def remove(name: str) -> None:
        if name == "extract_sale_order_line":
            with psycopg.connect(source_dsn) as conn:
                conn.execute("delete from sale_order_line where id = %s", [line[0]])
                conn.execute("update sale_order set amount_untaxed = amount_untaxed - %s, "
                             "write_date = now() where id = %s", [line[2], line[1]])

    skewed = run_spec(params(lake, DAY, source_dsn, warehouse_dsn), work, before_phase=remove)
    found = assert_passed_with_warnings(skewed)
    [row] = found["line_sums_match_headers"]["in_flight"]["first_rows"]
    assert (row["header_id"], row["changed_table"], row["read_table"]) == (
        line[1], "sale_order", "sale_order_line")
    assert "lines added and removed in between were never read" in row["in_flight"]
    settled = run_spec(params(lake, DAY, source_dsn, warehouse_dsn), work)
    assert {(c["status"], c["in_flight_rows"]) for c in checks(settled).values()} == {
        ("passed", 0)}
