"""Quality checks of the Odoo pipeline, run after gold and before publication.

    - name: quality
      kind: python
      depends_on: [every extract, silver and gold phase]
      params:
        entrypoint: pipelines.odoo.quality:check_quality
        args: {lake: "${params.lake}", as_of: "${params.as_of}"}

Every table is read at the version its phase wrote in this run (the upstream manifests), so
the checks judge exactly what this run produced. The checks (`CHECKS`; their SQL in
sql/quality.sql):

- `row_counts_reconcile`: per extracted table, the rows the source had at extraction
  (`source_rows` of the extract phase) = the ids live in bronze = the live rows of its silver
  entity; and gold recomputed from silver (revenue and invoice lines, confirmed orders, open
  invoices) = gold;
- `line_sums_match_headers`: a sale order's untaxed amount = the sum of its lines'
  subtotals; a customer invoice's untaxed amount = minus the balance of its product lines,
  and its total = the balance of its payment term lines (company currency);
- `no_orphan_lines`: no live line without a live header, no link to a missing line;
- `no_negative_quantities`: ordered, delivered and invoiced quantities of product lines.

**In flight, not wrong.** Each extract phase reads its table in its own snapshot, a moment
apart, so a transaction Odoo commits between the reads of a header table and its lines' (an
invoice with its lines, an order edited) is in one and not in the other. The checks that
compare two source tables (`CROSS_TABLE`: line sums, orphans) therefore classify each
inconsistent row with what the extractions recorded in `<lake>/_state/reads` (per bronze
dataset: `read_at`, and `source_max_write_date`, the newest write_date its snapshot saw, the
table's cursor on the source's clock): a row is **in flight** when one side was written (or
deleted) after the other side's table was read: newer than that table's cursor *and* first
stored in bronze by a later read; or a header written since its lines' previous read whose
lines were read after it (a line added and removed in between was never read at all), and
that case's mirror for an orphan line (sql/quality.sql, "In flight or defect?", has them all).
In-flight rows do not fail: the check's status is `warn`, with their count, the tables and
the first rows, and the next run, which reads both tables again, sees the whole transaction.
A difference that is still there then is no longer in flight (its rows were stored by an
earlier read, which the other table's new read follows) and fails. Real defects, both sides
older than the other's read, fail at once. A run that recorded no read of a table (a repair
reusing an earlier extraction) is judged by the read its extract phase's manifest names, else
by the dataset's newest read; a table without any read is judged strictly (no row in flight).

Recorded per run, whatever the outcome: one row per check appended to
`<lake>/_state/quality` (run, as_of, check, status, failed rows, rules broken, in-flight rows
and their tables), a `QUALITY_CHECK` event per check, `quality_report.json` and, for each
failing check, `failed_rows/<check>.csv` (its first `MAX_FAILED_ROWS` failing rows; the
report has the full count) in the phase's output directory, and likewise
`in_flight_rows/<check>.csv` for a check with rows in flight. Any failure fails the phase
(terminal: the data is wrong, a retry would find the same), so `publish` does not run and BI
keeps the last good gold; warnings do not.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
from deltalake import DeltaTable
from deltalake.schema import Field, PrimitiveType

from executor.sdk import EventLevel, TerminalPhaseError
from pipelines.odoo.lake import (
    Context,
    append_state,
    arg,
    bronze_name,
    delta_dataset,
    duck,
    parse_as_of,
    queries,
    state_uri,
)

__all__ = ["CHECKS", "CROSS_TABLE", "IN_FLIGHT_SHOWN", "MAX_FAILED_ROWS", "RECONCILED",
           "CheckResult", "check_quality", "run_checks"]

MAX_FAILED_ROWS = 10_000
IN_FLIGHT_SHOWN = 20
"""In-flight rows shown in the event and the report (the CSV has up to MAX_FAILED_ROWS)."""
RECONCILED: dict[str, str | None] = {
    "res_currency": None,
    "res_currency_rate": "currency_rate",
    "res_company": "company",
    "res_partner": "partner",
    "product_category": None,
    "product_template": None,
    "product_product": "product",
    "sale_order": "sale_order",
    "sale_order_line": "sale_order_line",
    "account_move": "account_move",
    "account_move_line": "account_move_line",
    "sale_order_line_invoice_rel": "order_invoice_link",
}
"""Each extracted Odoo table -> the silver entity with one row per live source row (None:
the table only enriches other entities; its source and bronze counts are still compared)."""
_UNDELETABLE = frozenset({"order_invoice_link"})   # silver keeps live pairs only


@dataclass(frozen=True)
class CheckResult:
    name: str
    failed: pa.Table
    """The failing rows (empty: the check passed)."""
    in_flight: pa.Table | None = None
    """Inconsistent rows explained by the snapshot skew between two tables' reads: the
    check's rows plus `in_flight` (why), `changed_table` and `read_table` (which side was
    written after which table was read). They warn; they do not fail."""

    @property
    def passed(self) -> bool:
        return bool(self.failed.num_rows == 0)

    @property
    def in_flight_rows(self) -> int:
        return 0 if self.in_flight is None else int(self.in_flight.num_rows)

    @property
    def status(self) -> str:
        """`failed` (a real defect), `warn` (only rows in flight) or `passed`."""
        if not self.passed:
            return "failed"
        return "warn" if self.in_flight_rows else "passed"

    def summary(self) -> dict[str, Any]:
        rules: dict[str, int] = {}
        if "rule" in self.failed.column_names:
            for rule in self.failed.column("rule").to_pylist():
                rules[str(rule)] = rules.get(str(rule), 0) + 1
        summary: dict[str, Any] = {"check": self.name, "status": self.status,
                                   "failed_rows": self.failed.num_rows, "rules": rules,
                                   "in_flight_rows": self.in_flight_rows}
        if self.in_flight is not None and self.in_flight.num_rows:
            flight_rules: dict[str, int] = {}
            for rule in self.in_flight.column("rule").to_pylist():
                flight_rules[str(rule)] = flight_rules.get(str(rule), 0) + 1
            tables = {str(t) for c in ("changed_table", "read_table")
                      for t in self.in_flight.column(c).to_pylist()}
            shown = self.in_flight.slice(0, IN_FLIGHT_SHOWN).to_pylist()
            summary["in_flight"] = {
                "rows": self.in_flight.num_rows, "rules": flight_rules,
                "tables": sorted(tables),
                "first_rows": json.loads(json.dumps(shown, default=str)),
            }
        return summary


@dataclass(frozen=True)
class _Inputs:
    """The run's tables, located from the upstream phases' manifests."""

    bronze: dict[str, Any]          # Odoo table -> dataset at the version extracted
    source_rows: dict[str, int]     # Odoo table -> rows at extraction
    relations: set[str]             # the Odoo tables that are many2many relations
    tables: dict[str, Any]          # silver entity / gold_<mart> -> dataset
    read_at: dict[str, str | None]  # Odoo table -> its extract manifest's read_at


def _locate(inputs: Mapping[str, Any]) -> _Inputs:
    bronze: dict[str, Any] = {}
    source_rows: dict[str, int] = {}
    relations: set[str] = set()
    tables: dict[str, Any] = {}
    read_at: dict[str, str | None] = {}
    for phase, manifest in inputs.items():
        table = manifest.get("table") if isinstance(manifest, Mapping) else None
        if not isinstance(table, Mapping):
            continue
        name = str(table.get("name", ""))
        dataset = delta_dataset(str(table["uri"]), table.get("version"))
        if dataset is None:
            raise TerminalPhaseError(f"phase {phase} names the table {table['uri']}, which "
                                     "does not exist")
        if "source_table" in manifest:
            source = str(manifest["source_table"])
            bronze[source] = dataset
            source_rows[source] = int(manifest["source_rows"])
            read_at[source] = (str(manifest["read_at"]) if manifest.get("read_at")
                               else None)
            if manifest.get("mode") == "snapshot":
                relations.add(source)
        elif name.startswith("silver.odoo."):
            tables[name.removeprefix("silver.odoo.")] = dataset
        elif name.startswith("gold.odoo."):
            tables["gold_" + name.removeprefix("gold.odoo.")] = dataset
    missing = [t for t in RECONCILED if t not in bronze]
    missing += [e for e in RECONCILED.values() if e is not None and e not in tables]
    missing += [g for g in ("gold_revenue", "gold_receivables_ageing", "gold_order_invoice_lag")
                if g not in tables]
    if missing:
        raise TerminalPhaseError(
            "quality needs every extract, silver and gold phase among its dependencies; "
            f"missing: {', '.join(missing)}", error_type="ValueError")
    return _Inputs(bronze, source_rows, relations, tables, read_at)


def _bronze_live_rows(bronze: Any, relation: bool) -> int:
    """The rows live in a bronze table: ids (a model) or pairs (a relation) whose newest
    row is not a tombstone."""
    query = (queries("quality")["live_relation_pairs"] if relation
             else f"select count(*) from ({queries('extract')['live_ids']})")
    with duck(bronze=bronze) as db:
        return int(db.sql(query).fetchall()[0][0])


def _row_counts(db: duckdb.DuckDBPyConnection, found: _Inputs, as_of: dt.date) -> pa.Table:
    counts = []
    for table, entity in RECONCILED.items():
        silver: int | None = None
        if entity is not None:
            live = "" if entity in _UNDELETABLE else " where not is_deleted"
            silver = int(db.sql(f"select count(*) from {entity}{live}").fetchall()[0][0])
        counts.append({"dataset": table, "measure": "rows",
                       "source": found.source_rows[table],
                       "bronze": _bronze_live_rows(found.bronze[table],
                                                   table in found.relations),
                       "silver": silver})
    db.register("row_counts", pa.Table.from_pylist(counts, schema=pa.schema([
        ("dataset", pa.string()), ("measure", pa.string()), ("source", pa.int64()),
        ("bronze", pa.int64()), ("silver", pa.int64())])))
    return db.sql(queries("quality")["row_counts_reconcile"], params={"as_of": as_of}
                  ).to_arrow_table()


def _named_check(name: str) -> Callable[[duckdb.DuckDBPyConnection, _Inputs, dt.date],
                                        pa.Table]:
    def check(db: duckdb.DuckDBPyConnection, found: _Inputs, as_of: dt.date) -> pa.Table:
        return db.sql(queries("quality")[name]).to_arrow_table()
    return check


CHECKS: dict[str, Callable[[duckdb.DuckDBPyConnection, _Inputs, dt.date], pa.Table]] = {
    "row_counts_reconcile": _row_counts,
    "line_sums_match_headers": _named_check("line_sums_match_headers"),
    "no_orphan_lines": _named_check("no_orphan_lines"),
    "no_negative_quantities": _named_check("no_negative_quantities"),
}

# ---------------------------------------------------------------------------------- in flight

_HEADER_OF = {"sale_order_line": "sale_order", "account_move_line": "account_move"}
_EVIDENCE_BRONZE = ("sale_order", "sale_order_line", "account_move", "account_move_line",
                    "sale_order_line_invoice_rel")
_READS_SCHEMA = pa.schema([("dataset", pa.string()), ("run_id", pa.string()),
                           ("read_at", pa.timestamp("us", tz="UTC")),
                           ("source_max_write_date", pa.timestamp("us"))])
_Evidence = dict[tuple[Any, ...], tuple[str, str, str]]
"""A row's key -> (why it is in flight, the table written later, the table read before)."""


def _prepare_in_flight(db: duckdb.DuckDBPyConnection, found: _Inputs, lake: str | None,
                       run_id: str | None) -> None:
    """Register what the in-flight queries read: `reads` (<lake>/_state/reads), the bronze
    tables `bronze_<table>` at the versions extracted, and `cursors` (sql `read_cursors`:
    the read each table is judged by)."""
    reads = delta_dataset(state_uri(lake, "reads")) if lake is not None else None
    db.register("reads", reads if reads is not None else _READS_SCHEMA.empty_table())
    for table in _EVIDENCE_BRONZE:
        db.register(f"bronze_{table}", found.bronze[table])
    extracted = pa.table({
        "source_table": pa.array(list(found.bronze), pa.string()),
        "dataset": pa.array([bronze_name(t) for t in found.bronze], pa.string()),
        "read_at": pa.array([_instant(found.read_at.get(t)) for t in found.bronze],
                            pa.timestamp("us", tz="UTC")),
    })
    db.register("extracted", extracted)
    db.execute("create or replace temp table cursors as " + queries("quality")["read_cursors"],
               {"run": run_id or ""})


def _instant(text: str | None) -> dt.datetime | None:
    if not text:
        return None
    at = dt.datetime.fromisoformat(text)
    return at.replace(tzinfo=dt.UTC) if at.tzinfo is None else at


def _evidence(db: duckdb.DuckDBPyConnection, query: str, keys_name: str, keys: pa.Table,
              key_columns: tuple[str, ...]) -> _Evidence:
    if keys.num_rows == 0:
        return {}
    db.register(keys_name, keys)
    try:
        rows = db.sql(queries("quality")[query]).fetchall()
    finally:
        db.unregister(keys_name)
    n = len(key_columns)
    return {tuple(r[:n]): (str(r[n]), str(r[n + 1]), str(r[n + 2])) for r in rows}


def _header_keys(keys: list[tuple[Any, ...] | None]) -> pa.Table:
    """`keys` of sql `header_evidence`: (header_table, header_id, line_id or None)."""
    unique = sorted({k for k in keys if k is not None}, key=lambda k: (k[0], k[1], k[2] or 0))
    return pa.table({"header_table": pa.array([k[0] for k in unique], pa.string()),
                     "header_id": pa.array([k[1] for k in unique], pa.int64()),
                     "line_id": pa.array([k[2] for k in unique], pa.int64())})


def _split(rows: pa.Table, keys: list[tuple[Any, ...] | None], evidence: _Evidence
           ) -> tuple[pa.Table, pa.Table]:
    """(the rows no evidence explains: defects, the rows in flight with why)."""
    found = [evidence.get(k) if k is not None else None for k in keys]
    flying = pa.array([f is not None for f in found], pa.bool_())
    explained = rows.append_column("in_flight", pa.array([f[0] if f else None for f in found],
                                                         pa.string()))
    explained = explained.append_column(
        "changed_table", pa.array([f[1] if f else None for f in found], pa.string()))
    explained = explained.append_column(
        "read_table", pa.array([f[2] if f else None for f in found], pa.string()))
    return rows.filter(pc.invert(flying)), explained.filter(flying)


def _line_sums_in_flight(db: duckdb.DuckDBPyConnection, rows: pa.Table
                         ) -> tuple[pa.Table, pa.Table]:
    keys: list[tuple[Any, ...] | None] = [
        (str(t), int(i), None) for t, i in zip(rows.column("header_table").to_pylist(),
                                               rows.column("header_id").to_pylist(),
                                               strict=True)]
    evidence = _evidence(db, "header_evidence", "keys", _header_keys(keys),
                         ("header_table", "header_id", "line_id"))
    return _split(rows, keys, evidence)


def _orphans_in_flight(db: duckdb.DuckDBPyConnection, rows: pa.Table
                       ) -> tuple[pa.Table, pa.Table]:
    header_keys: list[tuple[Any, ...] | None] = []
    link_keys: list[tuple[Any, ...] | None] = []
    for line_table, line_id, missing_table, missing_id in zip(
            *(rows.column(c).to_pylist() for c in ("line_table", "line_id", "missing_table",
                                                   "missing_id")), strict=True):
        if line_table in _HEADER_OF and missing_id is not None:
            header_keys.append((_HEADER_OF[line_table], int(missing_id), int(line_id)))
            link_keys.append(None)
        elif missing_id is not None and line_id is not None:
            order_line, invoice_line = ((missing_id, line_id) if missing_table == "sale_order_line"
                                        else (line_id, missing_id))
            header_keys.append(None)
            link_keys.append((str(missing_table), int(order_line), int(invoice_line)))
        else:
            header_keys.append(None)
            link_keys.append(None)
    evidence = _evidence(db, "header_evidence", "keys", _header_keys(header_keys),
                         ("header_table", "header_id", "line_id"))
    links = sorted({k for k in link_keys if k is not None})
    evidence.update({("link", *k): v for k, v in _evidence(
        db, "link_evidence", "link_keys",
        pa.table({"line_table": pa.array([k[0] for k in links], pa.string()),
                  "order_line_id": pa.array([k[1] for k in links], pa.int64()),
                  "invoice_line_id": pa.array([k[2] for k in links], pa.int64())}),
        ("line_table", "order_line_id", "invoice_line_id")).items()})
    keys = [h if h is not None else (("link", *k) if k is not None else None)
            for h, k in zip(header_keys, link_keys, strict=True)]
    return _split(rows, keys, evidence)


CROSS_TABLE: dict[str, Callable[[duckdb.DuckDBPyConnection, pa.Table],
                                tuple[pa.Table, pa.Table]]] = {
    "line_sums_match_headers": _line_sums_in_flight,
    "no_orphan_lines": _orphans_in_flight,
}
"""The checks that compare two source tables, each with how it tells rows in flight (the
module's docstring) from defects: (defects, rows in flight)."""


def run_checks(inputs: Mapping[str, Any], as_of: dt.date, *, lake: str | None = None,
               run_id: str | None = None) -> list[CheckResult]:
    """Every check over the tables the upstream manifests name; the cross-table checks'
    rows in flight judged by the reads in `<lake>/_state/reads` (this run's, `run_id`).
    Without a lake, no row is in flight."""
    found = _locate(inputs)
    results = []
    with duck(**found.tables) as db:
        _prepare_in_flight(db, found, lake, run_id)
        for name, check in CHECKS.items():
            rows = check(db, found, as_of)
            if name in CROSS_TABLE and rows.num_rows:
                failed, in_flight = CROSS_TABLE[name](db, rows)
                results.append(CheckResult(name, failed, in_flight))
            else:
                results.append(CheckResult(name, rows))
    return results


_STATE_COLUMNS = (("in_flight_rows", "long", pa.int64()),
                  ("in_flight_tables", "string", pa.string()))
"""Columns `_state/quality` gained with in-flight rows (added to a lake's older table)."""


def _record(lake: str, run_id: str, as_of: dt.date, results: list[CheckResult]) -> None:
    summaries = [r.summary() for r in results]
    rows = pa.table({
        "run_id": pa.array([run_id] * len(results), pa.string()),
        "as_of": pa.array([as_of] * len(results), pa.date32()),
        "check": pa.array([s["check"] for s in summaries], pa.string()),
        "status": pa.array([s["status"] for s in summaries], pa.string()),
        "failed_rows": pa.array([s["failed_rows"] for s in summaries], pa.int64()),
        "rules": pa.array([json.dumps(s["rules"], sort_keys=True) for s in summaries],
                          pa.string()),
        "checked_at": pa.array([dt.datetime.now(dt.UTC)] * len(results),
                               pa.timestamp("us", tz="UTC")),
        "in_flight_rows": pa.array([s["in_flight_rows"] for s in summaries], pa.int64()),
        "in_flight_tables": pa.array(
            [json.dumps(s.get("in_flight", {}).get("tables", [])) for s in summaries],
            pa.string()),
    })
    uri = state_uri(lake, "quality")
    if DeltaTable.is_deltatable(uri):     # a table written before in-flight rows existed
        table = DeltaTable(uri)
        present = set(table.schema().to_arrow().names)
        missing = [Field(name, PrimitiveType(kind), nullable=True)
                   for name, kind, _ in _STATE_COLUMNS if name not in present]
        if missing:
            table.alter.add_columns(missing)
    append_state(uri, rows)


def check_quality(ctx: Context) -> dict[str, Any]:
    """The python entrypoint (module docstring): args `lake` and `as_of`."""
    lake = arg(ctx, "lake", str)
    as_of = parse_as_of(arg(ctx, "as_of", str))
    results = run_checks(ctx.inputs, as_of, lake=lake, run_id=ctx.run_id)
    summaries = [r.summary() for r in results]
    for result in results:
        for folder, rows in (("failed_rows", result.failed), ("in_flight_rows",
                                                               result.in_flight)):
            if rows is not None and rows.num_rows:
                (ctx.output_dir / folder).mkdir(parents=True, exist_ok=True)
                pcsv.write_csv(rows.slice(0, MAX_FAILED_ROWS),
                               ctx.output_dir / folder / f"{result.name}.csv")
    report = {"as_of": as_of.isoformat(), "checks": summaries}
    (ctx.output_dir / "quality_report.json").write_text(
        json.dumps(report, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    _record(lake, ctx.run_id, as_of, results)
    for summary in summaries:
        status = summary["status"]
        message = f"{summary['check']}: {status}"
        if status == "failed":
            message += f" ({summary['failed_rows']} failing row(s))"
        if summary["in_flight_rows"]:
            message += (f"; {summary['in_flight_rows']} row(s) in flight between "
                        f"{', '.join(summary['in_flight']['tables'])} (written after the "
                        "other table was read: the next run reads both again)")
        level: EventLevel = ("info" if status == "passed" else
                             "warning" if status == "warn" else "error")
        ctx.emit("QUALITY_CHECK", message, level, summary)
    failures = [s for s in summaries if s["status"] == "failed"]
    if failures:
        listed = "; ".join(f"{s['check']}: {s['failed_rows']} row(s) "
                           f"({', '.join(sorted(s['rules']))})" for s in failures)
        raise TerminalPhaseError(
            f"{len(failures)} quality check(s) failed: {listed}. The failing rows are in "
            "failed_rows/<check>.csv", error_type="QualityCheckFailed")
    return {"as_of": as_of.isoformat(), "checks": summaries}
