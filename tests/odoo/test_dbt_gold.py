"""The Odoo gold as a dbt project (pipelines/odoo/dbt, specs/odoo_gold_dbt.yaml): over the silver
tables a medallion run wrote, the dbt kind builds the three marts and their tests, and each
gold table's digest equals the sql gold phase's. A failing dbt test (a planted bad row) fails
the phase naming it."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from deltalake import DeltaTable

from control_room.specs import example_spec, load_spec
from executor.digests import table_digest
from executor.kinds.base import TerminalPhaseError
from executor.kinds.dbt import DbtKind
from executor.render import render
from executor.tables import write_table
from pipelines.odoo import generator
from tests.executor.dbt_projects import Recorder, make_ctx
from tests.odoo.runner import run_spec

START = dt.date(2026, 1, 1)
MARTS = ("revenue", "receivables_ageing", "order_invoice_lag")
GOLD = {f"gold_{mart}" for mart in MARTS}


def dbt_gold(lake: Path, out: Path, as_of: str, recorder: Recorder) -> dict[str, Any]:
    """The dbt spec's gold phase, its templates rendered as a worker would, run by the dbt
    kind over `lake` (the worker's own code: project pipelines/odoo/dbt of this tree)."""
    loaded = load_spec(example_spec("odoo_gold_dbt"))
    [phase] = loaded.spec.phases
    params = render(phase.params, params={"as_of": as_of},
                    run={"id": "r", "git_sha": loaded.git_sha, "spec_slug": "odoo_gold_dbt",
                         "lake": str(lake)})
    ctx = make_ctx(out, params, kind="dbt", recorder=recorder, lake_root=lake,
                   timeout_s=900)
    return DbtKind().run(ctx).output_manifest


def test_the_dbt_gold_equals_the_sql_gold(source_dsn: str, tmp_path: Path) -> None:
    generator.generate(source_dsn, scale=0.02, seed=11, days=2, start=START)
    lake = tmp_path / "lake"
    as_of = (START + dt.timedelta(days=1)).isoformat()
    run_spec({"lake": str(lake), "as_of": as_of, "odoo_dsn": source_dsn}, tmp_path / "work",
             only=GOLD)
    recorder = Recorder()
    manifest = dbt_gold(lake, tmp_path / "dbt", as_of, recorder)

    for mart in MARTS:
        sql = table_digest(str(lake / "gold" / mart))
        dbt = table_digest(str(lake / "gold_dbt" / mart))
        assert sql.rows > 0, mart
        assert (dbt.digest, dbt.rows) == (sql.digest, sql.rows), mart
    assert sorted(e["name"] for e in manifest["tables"]) == [
        "gold.odoo_dbt.order_invoice_lag", "gold.odoo_dbt.receivables_ageing",
        "gold.odoo_dbt.revenue"]
    # every test ran and passed: not_null, unique, relationships, accepted values
    tests = manifest["tests"]
    assert {t["status"] for t in tests.values()} == {"pass"}
    kinds = {name.split("_")[0] for name in tests}
    assert {"not", "unique", "relationships", "accepted"} <= kinds, sorted(tests)
    assert manifest["lineage"]["revenue"]["inputs"] == [
        "account_move_line", "company", "partner", "product"]
    assert manifest["lineage"]["revenue"]["sources"] == [
        "silver.account_move_line", "silver.company", "silver.partner", "silver.product"]

    # a bad state planted in silver: the accepted-values test fails the phase, naming it
    orders = lake / "silver" / "sale_order"
    table = DeltaTable(str(orders)).to_pyarrow_table()
    status = table.column("invoice_status").to_pylist()
    status[0] = "lost"
    state = table.column("state").to_pylist()
    state[0] = "sale"
    table = table.set_column(table.schema.get_field_index("invoice_status"),
                             "invoice_status", pa.array(status, table.schema.field(
                                 "invoice_status").type))
    table = table.set_column(table.schema.get_field_index("state"), "state",
                             pa.array(state, table.schema.field("state").type))
    write_table(str(orders), table, mode="overwrite")
    with pytest.raises(TerminalPhaseError) as raised:
        dbt_gold(lake, tmp_path / "dbt2", as_of, Recorder())
    assert "accepted_values_order_invoice_lag_invoice_status" in raised.value.message
    report = json.loads((tmp_path / "dbt2" / "test_failures.json").read_text())
    [failure] = report.values()
    assert failure["rows"] == [{"value_field": "lost", "n_records": 1}]
