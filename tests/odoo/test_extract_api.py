"""Extraction over Odoo's JSON-RPC API (pipelines/odoo/extract_api.py), against a local server
answering from the generated database in Odoo's documented shapes (tests/odoo/rpc_server.py):
the same bronze, watermarks and reads as the database mode, first and incremental loads with
edits and deletions, keyset paging, access errors; and the whole medallion over the API gives
the gold of the database mode."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from deltalake import DeltaTable

from executor.digests import table_digest
from executor.kinds.base import Connection
from executor.sdk import TerminalPhaseError
from pipelines.odoo import extract, generator
from pipelines.odoo.lake import bronze_uri, duck, state_uri
from tests.odoo.rpc_server import OdooServer, serving
from tests.odoo.runner import postgres, python_context, run_spec

START = dt.date(2026, 1, 1)
TABLES = ("res_currency", "res_currency_rate", "res_company", "res_partner",
          "product_category", "product_template", "product_product", "sale_order",
          "sale_order_line", "account_move", "account_move_line",
          "sale_order_line_invoice_rel")
GOLD = ("revenue", "receivables_ageing", "order_invoice_lag")


@pytest.fixture
def odoo(source_dsn: str) -> Iterator[OdooServer]:
    with serving(OdooServer(source_dsn)) as server:
        yield server


def api_connection(server: OdooServer, **override: str) -> Connection:
    config = {"url": server.url, "database": server.database, "login": server.login,
              "api_key": server.api_key, **override}
    return Connection("odoo", "http", config)


def run(connection: Connection, lake: Path, table: str, tmp: Path,
        **args: Any) -> dict[str, Any]:
    events: list[tuple[Any, ...]] = []
    ctx = python_context(f"extract_{table}", {"table": table, "lake": str(lake), **args},
                         tmp / "out" / connection.type / table,
                         connections={"odoo": connection}, events=events)
    manifest = extract.extract_table(ctx)
    return {**manifest, "events": events}


def bronze_rows(lake: Path, table: str) -> pa.Table:
    """Bronze without what records when and by which run it was loaded, in a stable order;
    a null boolean as false (Odoo's ORM answers a NULL boolean as false: the API cannot tell
    them apart)."""
    rows = DeltaTable(bronze_uri(str(lake), table)).to_pyarrow_table()
    for index, f in enumerate(rows.schema):
        if pa.types.is_boolean(f.type) and not f.name.startswith("_"):
            live = pc.equal(rows.column("_op"), "upsert")
            rows = rows.set_column(index, f.name, pc.if_else(
                live, pc.fill_null(rows.column(f.name), False), rows.column(f.name)))
    with duck(rows=rows) as db:
        result: pa.Table = db.sql("select * exclude (_run_id, _extracted_at) from rows "
                                  "order by all").to_arrow_table()
    return result


def watermarks(lake: Path) -> list[tuple[Any, ...]]:
    table = DeltaTable(state_uri(str(lake), "watermarks")).to_pyarrow_table()
    return sorted((r["dataset"], r["write_date"], r["id"], r["upserts"], r["deletes"])
                  for r in table.to_pylist())


def test_the_api_gives_the_bronze_and_watermarks_of_the_database_mode(
        source_dsn: str, odoo: OdooServer, tmp_path: Path) -> None:
    generator.generate(source_dsn, scale=0.02, seed=11, days=2, start=START)
    by_db, by_api = tmp_path / "db", tmp_path / "api"
    database, api = postgres("odoo", source_dsn), api_connection(odoo)
    for day in range(3):
        if day:
            generator.advance(source_dsn, days=1)    # edits, deletions, new rows
        for table in TABLES:
            expected = run(database, by_db, table, tmp_path)
            # small pages: many keyset pages per table
            got = run(api, by_api, table, tmp_path, batch_size=150)
            assert got["source"] == "api" and got["odoo_version"] == "17.0"
            for key in ("mode", "read", "upserts", "deletes", "source_rows",
                        "source_max_write_date", "watermark", "schema_change"):
                assert got[key] == expected[key], (day, table, key)
            assert bronze_rows(by_api, table).equals(bronze_rows(by_db, table)), (day, table)
    assert watermarks(by_api) == watermarks(by_db)
    lines = run(api, by_api, "sale_order_line", tmp_path, batch_size=150)
    assert lines["mode"] == "incremental" and lines["upserts"] == 0   # nothing new
    # deletions became tombstones (in both: the bronze is the same)
    tombstones = 0
    for table in TABLES:
        with duck(rows=DeltaTable(bronze_uri(str(by_api), table)).to_pyarrow_table()) as db:
            tombstones += db.sql("select count(*) from rows where _op = 'delete'"
                                 ).fetchall()[0][0]
    assert tombstones > 0
    # every extraction recorded its read (the freshness plumbing)
    reads = DeltaTable(state_uri(str(by_api), "reads")).to_pyarrow_table()
    assert reads.num_rows == 3 * len(TABLES) + 1


def test_pages_follow_write_date_and_id_and_calls_are_counted(
        source_dsn: str, odoo: OdooServer, tmp_path: Path) -> None:
    generator.generate(source_dsn, scale=0.02, seed=3, days=2, start=START)
    manifest = run(api_connection(odoo), tmp_path / "lake", "sale_order_line", tmp_path,
                   batch_size=50)
    pages = -(-manifest["read"] // 50) + (manifest["read"] % 50 == 0)
    # version, login, fields_get, the pages, the id pages, the newest write_date
    assert manifest["calls"] >= pages + 4
    rows = DeltaTable(bronze_uri(str(tmp_path / "lake"), "sale_order_line")).to_pyarrow_table()
    assert rows.num_rows == manifest["read"] == manifest["source_rows"]
    assert len(set(rows.column("id").to_pylist())) == rows.num_rows


def test_access_errors_are_terminal_and_name_what_odoo_said(
        source_dsn: str, odoo: OdooServer, tmp_path: Path) -> None:
    generator.generate(source_dsn, scale=0.01, seed=3, days=1, start=START)
    odoo.forbidden.add("account.move")
    with pytest.raises(TerminalPhaseError) as caught:
        run(api_connection(odoo), tmp_path / "lake", "account_move", tmp_path)
    assert caught.value.error_type == "AccessError"
    assert "access refused: odoo.exceptions.AccessError: You are not allowed to access " \
           "'account.move'" in caught.value.message
    with pytest.raises(TerminalPhaseError) as caught:
        run(api_connection(odoo, api_key="wrong"), tmp_path / "lake", "sale_order", tmp_path)
    assert caught.value.error_type == "AccessDenied" and "refused the login" in \
        caught.value.message
    assert "wrong" not in caught.value.message           # the key is never in an error
    with pytest.raises(TerminalPhaseError) as caught:
        run(api_connection(odoo, url=odoo.url + "/nothing-here"), tmp_path / "lake",
            "sale_order", tmp_path)
    assert "HTTP 404" in caught.value.message
    with pytest.raises(TerminalPhaseError, match="needs api_key"):
        run(Connection("odoo", "http", {"url": odoo.url, "database": "odoo",
                                        "login": "bot"}), tmp_path / "lake", "sale_order",
            tmp_path)
    assert not DeltaTable.is_deltatable(bronze_uri(str(tmp_path / "lake"), "account_move"))


def test_the_medallion_over_the_api_gives_the_gold_of_the_database_mode(
        source_dsn: str, odoo: OdooServer, warehouse_dsn: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    generator.generate(source_dsn, scale=0.02, seed=11, days=3, start=START)
    monkeypatch.setenv("ODOO_API_KEY", odoo.api_key)
    api = {"url": odoo.url, "database": odoo.database, "login": odoo.login,
           "api_key_ref": "env:ODOO_API_KEY"}
    lakes = {"db": tmp_path / "db", "api": tmp_path / "api"}
    for day in ("2026-01-03", "2026-01-04"):
        if day == "2026-01-04":
            generator.advance(source_dsn, days=1)
        run_spec({"lake": str(lakes["db"]), "as_of": day, "odoo_dsn": source_dsn,
                  "warehouse_dsn": warehouse_dsn}, tmp_path / "work")
        via_api = run_spec({"lake": str(lakes["api"]), "as_of": day, "odoo_api": api,
                            "secret_allow": "env:ODOO_", "warehouse_dsn": warehouse_dsn},
                           tmp_path / "work")
        assert via_api.manifests["extract_sale_order"]["source"] == "api"
    digests = {name: {m: table_digest(str(lake / "gold" / m)).digest for m in GOLD}
               for name, lake in lakes.items()}
    assert digests["api"] == digests["db"]
    # without the policy entry the key's reference is refused: nothing is read
    with pytest.raises(Exception, match="ODOO_API_KEY"):
        run_spec({"lake": str(tmp_path / "refused"), "as_of": "2026-01-04", "odoo_api": api,
                  "warehouse_dsn": warehouse_dsn}, tmp_path / "work",
                 only={"extract_sale_order"})


def test_an_odoo_18_source_over_the_api(source_dsn: str, odoo: OdooServer,
                                        tmp_path: Path) -> None:
    generator.generate(source_dsn, scale=0.01, seed=7, days=2, start=START,
                       odoo_version="18.0")
    for table in ("account_move", "product_template", "res_currency", "res_company"):
        expected = run(postgres("odoo", source_dsn), tmp_path / "db", table, tmp_path)
        got = run(api_connection(odoo), tmp_path / "api", table, tmp_path, batch_size=40)
        assert (got["odoo_version"], expected["odoo_version"]) == ("18.0", "18.0")
        assert bronze_rows(tmp_path / "api", table).equals(bronze_rows(tmp_path / "db", table))
    names = DeltaTable(bronze_uri(str(tmp_path / "api"), "account_move")).schema().fields
    assert "checked" in {f.name for f in names}
