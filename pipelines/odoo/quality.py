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

Recorded per run, whatever the outcome: one row per check appended to
`<lake>/_state/quality` (run, as_of, check, status, failed rows, rules broken), a
`QUALITY_CHECK` event per check, `quality_report.json` and, for each failing check,
`failed_rows/<check>.csv` (its first `MAX_FAILED_ROWS` failing rows; the report has the
full count) in the phase's output directory. Any failure fails the phase (terminal: the data
is wrong, a retry would find the same), so `publish` does not run and BI keeps the last good
gold.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.csv as pcsv

from executor.sdk import TerminalPhaseError
from pipelines.odoo.lake import (
    Context,
    append_state,
    arg,
    delta_dataset,
    duck,
    parse_as_of,
    queries,
    state_uri,
)

__all__ = ["CHECKS", "MAX_FAILED_ROWS", "RECONCILED", "CheckResult", "check_quality",
           "run_checks"]

MAX_FAILED_ROWS = 10_000
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

    @property
    def passed(self) -> bool:
        return bool(self.failed.num_rows == 0)

    def summary(self) -> dict[str, Any]:
        rules: dict[str, int] = {}
        if "rule" in self.failed.column_names:
            for rule in self.failed.column("rule").to_pylist():
                rules[str(rule)] = rules.get(str(rule), 0) + 1
        return {"check": self.name, "status": "passed" if self.passed else "failed",
                "failed_rows": self.failed.num_rows, "rules": rules}


@dataclass(frozen=True)
class _Inputs:
    """The run's tables, located from the upstream phases' manifests."""

    bronze: dict[str, Any]          # Odoo table -> dataset at the version extracted
    source_rows: dict[str, int]     # Odoo table -> rows at extraction
    relations: set[str]             # the Odoo tables that are many2many relations
    tables: dict[str, Any]          # silver entity / gold_<mart> -> dataset


def _locate(inputs: Mapping[str, Any]) -> _Inputs:
    bronze: dict[str, Any] = {}
    source_rows: dict[str, int] = {}
    relations: set[str] = set()
    tables: dict[str, Any] = {}
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
    return _Inputs(bronze, source_rows, relations, tables)


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


def run_checks(inputs: Mapping[str, Any], as_of: dt.date) -> list[CheckResult]:
    """Every check over the tables the upstream manifests name."""
    found = _locate(inputs)
    with duck(**found.tables) as db:
        return [CheckResult(name, check(db, found, as_of)) for name, check in CHECKS.items()]


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
    })
    append_state(state_uri(lake, "quality"), rows)


def check_quality(ctx: Context) -> dict[str, Any]:
    """The python entrypoint (module docstring): args `lake` and `as_of`."""
    lake = arg(ctx, "lake", str)
    as_of = parse_as_of(arg(ctx, "as_of", str))
    results = run_checks(ctx.inputs, as_of)
    summaries = [r.summary() for r in results]
    failed_dir = ctx.output_dir / "failed_rows"
    for result in results:
        if not result.passed:
            failed_dir.mkdir(parents=True, exist_ok=True)
            pcsv.write_csv(result.failed.slice(0, MAX_FAILED_ROWS),
                           failed_dir / f"{result.name}.csv")
    report = {"as_of": as_of.isoformat(), "checks": summaries}
    (ctx.output_dir / "quality_report.json").write_text(
        json.dumps(report, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    _record(lake, ctx.run_id, as_of, results)
    for summary in summaries:
        ok = summary["status"] == "passed"
        ctx.emit("QUALITY_CHECK", f"{summary['check']}: {summary['status']}"
                 + ("" if ok else f" ({summary['failed_rows']} failing row(s))"),
                 "info" if ok else "error", summary)
    failures = [s for s in summaries if s["status"] == "failed"]
    if failures:
        listed = "; ".join(f"{s['check']}: {s['failed_rows']} row(s) "
                           f"({', '.join(sorted(s['rules']))})" for s in failures)
        raise TerminalPhaseError(
            f"{len(failures)} quality check(s) failed: {listed}. The failing rows are in "
            "failed_rows/<check>.csv", error_type="QualityCheckFailed")
    return {"as_of": as_of.isoformat(), "checks": summaries}
