"""Odoo 17.0 and 18.0 (issue 15, "Versions"): the generator makes either shape, column by column
as schema.sql tags them; the extraction detects the version from `ir_module_module`; the
medallion maps both onto one silver model and gives the same silver and gold, digest for digest,
for the same simulated activity."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from executor.digests import table_digest
from pipelines.odoo import generator
from pipelines.odoo.generator import GeneratorError, schema_columns, source_digest
from tests.helpers import temporary_database
from tests.odoo.runner import run_spec

START = dt.date(2026, 1, 1)
SILVER = ("currency_rate", "company", "partner", "product", "sale_order", "sale_order_line",
          "account_move", "account_move_line", "order_invoice_link")
GOLD = ("revenue", "receivables_ageing", "order_invoice_lag")


@pytest.fixture
def odoo18_dsn(pg_admin_url: str) -> Iterator[str]:
    with temporary_database(pg_admin_url, suffix="odoo18") as url:
        yield url


def _columns(dsn: str) -> dict[tuple[str, str], str]:
    with psycopg.connect(dsn) as conn:
        return {(t, c): d for t, c, d in conn.execute(
            "select table_name, column_name, data_type from information_schema.columns "
            "where table_schema = 'public'").fetchall()}


def test_the_two_shapes_differ_exactly_where_odoo_17_and_18_do(source_dsn: str,
                                                                odoo18_dsn: str) -> None:
    generator.generate(source_dsn, scale=0.01, seed=2, days=1, start=START)
    report = generator.generate(odoo18_dsn, scale=0.01, seed=2, days=1, start=START,
                                odoo_version="18.0")
    assert report.odoo_version == "18.0" and report.to_json()["odoo_version"] == "18.0"
    v17, v18 = _columns(source_dsn), _columns(odoo18_dsn)
    for version, found in (("17.0", v17), ("18.0", v18)):
        declared = schema_columns(version)
        assert {(t, c) for t, cols in declared.items() for c in cols} == set(found), version
    assert sorted(set(v17) - set(v18)) == [
        ("account_move", "to_check"), ("product_template", "detailed_type"),
        ("res_company", "color"), ("res_company", "company_registry")]
    assert sorted(set(v18) - set(v17)) == [("account_move", "checked")]
    changed = sorted(k for k in set(v17) & set(v18) if v17[k] != v18[k])
    assert changed == [("res_currency", "currency_subunit_label"),
                       ("res_currency", "currency_unit_label")]
    assert v17["res_currency", "currency_unit_label"] == "character varying"
    assert v18["res_currency", "currency_unit_label"] == "jsonb"
    for dsn, version in ((source_dsn, "17.0.1.3"), (odoo18_dsn, "18.0.1.3")):
        with psycopg.connect(dsn) as conn:
            assert conn.execute("select latest_version from ir_module_module "
                                "where name = 'base' and state = 'installed'"
                                ).fetchone() == (version,)
    with pytest.raises(GeneratorError, match=r"odoo_version must be one of 17\.0, 18\.0"):
        generator.generate(odoo18_dsn, scale=0.01, days=1, start=START, odoo_version="19.0")


def test_an_18_database_advances_as_one_longer_generate(odoo18_dsn: str,
                                                        source_dsn: str) -> None:
    generator.generate(odoo18_dsn, scale=0.01, seed=4, days=2, start=START,
                       odoo_version="18.0")
    advanced = generator.advance(odoo18_dsn, days=2)
    assert advanced.odoo_version == "18.0"
    generator.generate(source_dsn, scale=0.01, seed=4, days=4, start=START,
                       odoo_version="18.0")
    assert source_digest(odoo18_dsn) == source_digest(source_dsn)


def _digests(lake: Path, layer: str, names: tuple[str, ...]) -> dict[str, Any]:
    found = {}
    for name in names:
        digest = table_digest(str(lake / layer / name))
        found[name] = (digest.digest, digest.rows)
    return found


def test_the_medallion_gives_the_same_silver_and_gold_on_17_and_18(
        source_dsn: str, odoo18_dsn: str, warehouse_dsn: str, tmp_path: Path) -> None:
    lakes = {}
    for version, dsn in (("17.0", source_dsn), ("18.0", odoo18_dsn)):
        generator.generate(dsn, scale=0.02, seed=11, days=3, start=START, odoo_version=version)
        lake = tmp_path / version
        run = run_spec({"lake": str(lake), "as_of": "2026-01-03", "odoo_dsn": dsn,
                        "warehouse_dsn": warehouse_dsn}, tmp_path / "work")
        # the extraction saw which version it read
        assert {m["odoo_version"] for n, m in run.manifests.items()
                if n.startswith("extract_")} == {version}
        generator.advance(dsn, days=1)
        run = run_spec({"lake": str(lake), "as_of": "2026-01-04", "odoo_dsn": dsn,
                        "warehouse_dsn": warehouse_dsn}, tmp_path / "work")
        assert run.manifests["extract_account_move"]["mode"] == "incremental"
        lakes[version] = lake
    gold17, gold18 = (_digests(lakes[v], "gold", GOLD) for v in ("17.0", "18.0"))
    assert all(rows > 0 for _, rows in gold17.values()), gold17
    assert gold17 == gold18
    assert _digests(lakes["17.0"], "silver", SILVER) == _digests(lakes["18.0"], "silver",
                                                                 SILVER)
    # bronze is raw: each version's own columns
    from deltalake import DeltaTable
    moves17 = DeltaTable(str(lakes["17.0"] / "bronze/odoo/account_move")).schema()
    moves18 = DeltaTable(str(lakes["18.0"] / "bronze/odoo/account_move")).schema()
    names17 = {f.name for f in moves17.fields}
    names18 = {f.name for f in moves18.fields}
    assert names17 - names18 == {"to_check"} and names18 - names17 == {"checked"}


def test_the_generator_command_takes_the_odoo_version(odoo18_dsn: str) -> None:
    import json
    import subprocess
    import sys

    from tests.executor.harness import REPO

    command = [sys.executable, "-m", "pipelines.odoo", "generate", "--dsn", odoo18_dsn,
               "--scale", "0.01", "--days", "1", "--start", "2026-01-01"]
    done = subprocess.run([*command, "--odoo-version", "18.0", "--json"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["odoo_version"] == "18.0"
    assert set(_columns(odoo18_dsn)) == {(t, c) for t, cols in schema_columns("18.0").items()
                                         for c in cols}
    refused = subprocess.run([*command, "--odoo-version", "16.0"], cwd=REPO,
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2
    assert refused.stderr.strip() == "error: odoo_version must be one of 17.0, 18.0, got '16.0'"
