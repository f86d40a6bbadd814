"""Publication that keeps what BI users built (pipelines/odoo/publish.py): the gold tables are
never dropped, so a BI role's grants, its views on gold, comments and the grain survive
publication after publication; a reader never sees an empty or half table; a mart's schema
change is applied explicitly (a new column added, a column a view uses refused)."""

from __future__ import annotations

import datetime as dt
import threading
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake
from psycopg import sql

from executor.kinds.base import TerminalPhaseError
from pipelines.odoo import generator
from pipelines.odoo.publish import Mart, MartModel, grant_reader, publish
from tests.odoo.runner import run_spec

START = dt.date(2026, 1, 1)


@pytest.fixture
def bi_role(warehouse_dsn: str) -> Iterator[str]:
    """A role name of this test (roles are the server's): dropped with what it owns."""
    name = f"bi_{uuid.uuid4().hex[:10]}"
    yield name
    with psycopg.connect(warehouse_dsn, autocommit=True) as conn:
        if conn.execute("select 1 from pg_roles where rolname = %s", [name]).fetchone():
            conn.execute(sql.SQL("drop owned by {}").format(sql.Identifier(name)))
            conn.execute(sql.SQL("drop role {}").format(sql.Identifier(name)))


def _mart(path: Path, table: pa.Table, name: str = "gold.odoo.big") -> Mart:
    write_deltalake(str(path), table, mode="overwrite", schema_mode="overwrite")
    return Mart(name, str(path), DeltaTable(str(path)).version(), None)


def _publish(dsn: str, marts: list[Mart], models: dict[str, MartModel] | None = None
             ) -> dict[str, Any]:
    with psycopg.connect(dsn) as pg:
        return publish(pg, "gold", marts, run_id=str(uuid.uuid4()), as_of=START, newest=None,
                       models=models)


def _as_role(conn: psycopg.Connection[Any], role: str, query: str) -> list[tuple[Any, ...]]:
    conn.execute(sql.SQL("set role {}").format(sql.Identifier(role)))
    try:
        return conn.execute(query).fetchall()
    finally:
        conn.execute("reset role")


def test_a_bi_role_keeps_its_grants_and_views_across_three_publications(
        source_dsn: str, warehouse_dsn: str, bi_role: str, tmp_path: Path) -> None:
    generator.generate(source_dsn, scale=0.02, seed=11, days=3, start=START)
    lake = tmp_path / "lake"
    seen_oids = set()
    for run_number in range(3):
        day = START + dt.timedelta(days=2 + run_number)
        if run_number:
            generator.advance(source_dsn, days=1)
        run = run_spec({"lake": str(lake), "as_of": day.isoformat(), "odoo_dsn": source_dsn,
                        "warehouse_dsn": warehouse_dsn}, tmp_path / "work")
        # the FRESHNESS event keeps the payload the control plane reads
        [freshness] = [e[4] for e in run.events["publish"]
                       if e[0] == "event" and e[1] == "FRESHNESS"]
        assert {"data_time", "source_cursor", "datasets"} <= set(freshness)
        assert sorted(freshness["datasets"]) == [
            "gold.odoo.order_invoice_lag", "gold.odoo.receivables_ageing", "gold.odoo.revenue"]
        with psycopg.connect(warehouse_dsn, autocommit=True) as conn:
            if run_number == 0:
                # what a BI admin does once, after the first publication: a read-only role,
                # and a view of their own on gold.revenue
                grant_reader(conn, "gold", bi_role, create=True)
                conn.execute("create schema bi")
                conn.execute("create view bi.monthly as select month, sum(revenue) as revenue,"
                             " sum(lines) as lines from gold.revenue group by month")
                conn.execute(sql.SQL("grant usage on schema bi to {}; grant select on "
                                     "bi.monthly to {}").format(sql.Identifier(bi_role),
                                                                sql.Identifier(bi_role)))
            lake_rows = DeltaTable(str(lake / "gold" / "revenue")).to_pyarrow_table()
            expected = sum(lake_rows.column("revenue").to_pylist())
            # the BI role reads gold and its view, and sees this publication
            assert _as_role(conn, bi_role, "select count(*), sum(revenue) from gold.revenue"
                            ) == [(lake_rows.num_rows, expected)], run_number
            assert _as_role(conn, bi_role, "select sum(revenue) from bi.monthly") == [
                (expected,)]
            for mart in ("receivables_ageing", "order_invoice_lag", "publications"):
                _as_role(conn, bi_role, f"select count(*) from gold.{mart}")
            # ... and nothing more: read-only
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                _as_role(conn, bi_role, "delete from gold.revenue")
            conn.execute("reset role")
            seen_oids.add(conn.execute("select 'gold.revenue'::regclass::oid").fetchone())
    assert len(seen_oids) == 1           # the same table all along, never dropped

    with psycopg.connect(warehouse_dsn) as conn:
        published = conn.execute("select count(distinct run_id) from gold.publications"
                                 ).fetchone()
        assert published == (3,)
        # comments from the gold model, the grain as a constraint, counts as integers
        described = conn.execute("select obj_description('gold.revenue'::regclass)"
                                 ).fetchone()
        assert described is not None and described[0].startswith("Invoiced revenue by month")
        comments: dict[str, str] = dict(conn.execute(
            "select attname, col_description(attrelid, attnum) from pg_attribute "
            "where attrelid = 'gold.revenue'::regclass and attnum > 0").fetchall())
        assert comments["lines"] == "number of invoice lines"
        types: dict[str, str] = dict(conn.execute(
            "select table_name || '.' || column_name, data_type from information_schema.columns"
            " where table_schema = 'gold'").fetchall())
        assert types["revenue.lines"] == types["revenue.invoices"] == "bigint"
        assert types["order_invoice_lag.invoices"] == "bigint"
        assert types["revenue.revenue"] == "numeric"
        keys: dict[str, str] = dict(conn.execute(
            "select conrelid::regclass::text, pg_get_constraintdef(oid) from pg_constraint "
            "where connamespace = 'gold'::regnamespace and contype in ('p', 'u')").fetchall())
        assert keys == {
            "gold.order_invoice_lag": "PRIMARY KEY (order_id)",
            "gold.receivables_ageing":
                "PRIMARY KEY (as_of, company_id, customer_id, bucket_order)",
            "gold.revenue":
                "UNIQUE NULLS NOT DISTINCT (month, company_id, customer_id, product_id)"}


def test_a_reader_never_sees_an_empty_or_half_table(warehouse_dsn: str,
                                                    tmp_path: Path) -> None:
    """Readers at READ COMMITTED and REPEATABLE READ loop over the table while it is
    published three times (each publication 150k rows, ~1 s of COPY): every count and sum
    they see is one whole publication's."""
    n = 150_000
    states = {}
    versions = []
    for k in range(4):
        table = pa.table({"id": pa.array(range(n), pa.int64()),
                          "amount": pa.array([k + 1] * n, pa.int64())})
        versions.append(table)
        states[(n, n * (k + 1))] = k
    _publish(warehouse_dsn, [_mart(tmp_path / "v0", versions[0])])
    stop = threading.Event()
    seen: dict[str, list[tuple[float, tuple[Any, ...]]]] = {"rc": [], "rr": []}
    errors: list[BaseException] = []

    def reader(mode: str) -> None:
        try:
            with psycopg.connect(warehouse_dsn, autocommit=True) as conn:
                while not stop.is_set():
                    if mode == "rr":
                        with conn.transaction():
                            conn.execute("set transaction isolation level repeatable read")
                            conn.execute("select 1")       # the snapshot is taken here
                            time.sleep(0.01)
                            row = conn.execute("select count(*), sum(amount)::bigint "
                                               "from gold.big").fetchone()
                    else:
                        row = conn.execute("select count(*), sum(amount)::bigint "
                                           "from gold.big").fetchone()
                    assert row is not None
                    seen[mode].append((time.monotonic(), tuple(row)))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=reader, args=(m,)) for m in ("rc", "rr")]
    for t in threads:
        t.start()
    windows = []
    try:
        for k in (1, 2, 3):
            mart = _mart(tmp_path / f"v{k}", versions[k])
            began = time.monotonic()
            _publish(warehouse_dsn, [mart])
            windows.append((began, time.monotonic()))
            time.sleep(0.2)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors, errors
    for mode, observations in seen.items():
        assert observations, mode
        assert {value for _, value in observations} <= set(states), (mode, observations[:5])
        # the readers really did read while a publication was under way
        during = [v for at, v in observations if any(a <= at <= b for a, b in windows)]
        assert during, mode
    # they saw the publications one after the other, and the last one in the end
    order = [states[v] for _, v in seen["rc"]]
    assert order == sorted(order) and order[-1] == 3


def test_a_new_column_is_added_and_the_views_on_the_mart_keep_working(
        warehouse_dsn: str, tmp_path: Path) -> None:
    first = pa.table({"month": pa.array([START], pa.date32()),
                      "revenue": pa.array([Decimal("10.50")], pa.decimal128(18, 2))})
    model = {"big": MartModel(description="a mart", columns={"revenue": "money"},
                              primary_key=("month",))}
    _publish(warehouse_dsn, [_mart(tmp_path / "a", first)], model)
    with psycopg.connect(warehouse_dsn, autocommit=True) as conn:
        conn.execute("create view public.everything as select * from gold.big")
        conn.execute("create view public.money as select month, revenue from gold.big")
    second = first.append_column("invoices", pa.array([3], pa.int64()))
    result = _publish(warehouse_dsn, [_mart(tmp_path / "a", second)], model)
    assert result["marts"][0]["columns"] == {"added": ["invoices"]}
    with psycopg.connect(warehouse_dsn) as conn:
        assert conn.execute("select month, revenue, invoices from gold.big").fetchall() == [
            (START, Decimal("10.50"), 3)]
        # a view's * was expanded when it was made: it keeps its columns, and works
        assert conn.execute("select * from public.everything").fetchall() == [
            (START, Decimal("10.50"))]
        assert conn.execute("select revenue from public.money").fetchall() == [
            (Decimal("10.50"),)]
        assert conn.execute("select col_description('gold.big'::regclass, 2)"
                            ).fetchone() == ("money",)


def test_a_column_a_view_uses_cannot_vanish_and_the_previous_publication_stays(
        warehouse_dsn: str, tmp_path: Path) -> None:
    first = pa.table({"month": pa.array([START], pa.date32()),
                      "revenue": pa.array([Decimal("10.50")], pa.decimal128(18, 2)),
                      "spare": pa.array(["x"], pa.string())})
    _publish(warehouse_dsn, [_mart(tmp_path / "a", first)])
    with psycopg.connect(warehouse_dsn, autocommit=True) as conn:
        conn.execute("create view public.money as select month, revenue from gold.big")
    without = pa.table({"month": pa.array([START + dt.timedelta(days=31)], pa.date32()),
                        "spare": pa.array(["y"], pa.string())})
    with pytest.raises(TerminalPhaseError) as caught:
        _publish(warehouse_dsn, [_mart(tmp_path / "a", without)])
    assert "column revenue (removed) is used by money" in caught.value.message
    with psycopg.connect(warehouse_dsn) as conn:
        assert conn.execute("select * from gold.big").fetchall() == [
            (START, Decimal("10.50"), "x")]
        assert conn.execute("select count(*) from gold.publications").fetchone() == (1,)
    # a column no view uses is dropped; a retyped one too
    retyped = pa.table({"month": pa.array([START], pa.date32()),
                        "revenue": pa.array([Decimal("10.5000")], pa.decimal128(18, 4))})
    with psycopg.connect(warehouse_dsn, autocommit=True) as conn:
        conn.execute("drop view public.money")
    result = _publish(warehouse_dsn, [_mart(tmp_path / "a", retyped)])
    assert result["marts"][0]["columns"] == {"dropped": ["spare"], "retyped": ["revenue"]}
    with psycopg.connect(warehouse_dsn) as conn:
        assert conn.execute("select format_type(atttypid, atttypmod) from pg_attribute "
                            "where attrelid = 'gold.big'::regclass and attname = 'revenue'"
                            ).fetchone() == ("numeric(18,4)",)


def test_rows_that_break_the_grain_fail_the_publication(warehouse_dsn: str,
                                                        tmp_path: Path) -> None:
    good = pa.table({"order_id": pa.array([1, 2], pa.int32())})
    model = {"big": MartModel(primary_key=("order_id",))}
    _publish(warehouse_dsn, [_mart(tmp_path / "a", good)], model)
    twice = pa.table({"order_id": pa.array([1, 1, 3], pa.int32())})
    with pytest.raises(TerminalPhaseError) as caught:
        _publish(warehouse_dsn, [_mart(tmp_path / "a", twice)], model)
    assert "break the mart's grain (order_id)" in caught.value.message
    with psycopg.connect(warehouse_dsn) as conn:
        assert conn.execute("select order_id from gold.big order by 1").fetchall() == [
            (1,), (2,)]


def test_grant_reader_needs_the_role_or_create_and_is_idempotent(
        warehouse_dsn: str, bi_role: str, tmp_path: Path) -> None:
    with psycopg.connect(warehouse_dsn, autocommit=True) as conn:
        with pytest.raises(LookupError, match="does not exist"):
            grant_reader(conn, "gold", bi_role)
        first = grant_reader(conn, "gold", bi_role, create=True)
        again = grant_reader(conn, "gold", bi_role, create=True)
    assert (first["created"], again["created"]) == (True, False)
    # a mart created after the grant is readable too (default privileges)
    _publish(warehouse_dsn, [_mart(tmp_path / "a", pa.table({"x": pa.array([1], pa.int64())}))])
    with psycopg.connect(warehouse_dsn, autocommit=True) as conn:
        assert _as_role(conn, bi_role, "select x from gold.big") == [(1,)]


def test_a_verify_rebuild_does_not_publish_over_the_warehouse(warehouse_dsn: str,
                                                              tmp_path: Path) -> None:
    """`control-room verify` rebuilds a run into `_verify/<run>/<time>` of the lake: its
    publish phase compares nothing and must not replace what BI reads (nor move data time
    with a FRESHNESS event)."""
    from pipelines.odoo.publish import publish_gold
    from tests.odoo.runner import postgres, python_context

    mart = _mart(tmp_path / "lake" / "gold" / "revenue",
                 pa.table({"x": pa.array([1], pa.int64())}), name="gold.odoo.revenue")
    inputs = {"gold_revenue": {"table": {"name": mart.name, "uri": mart.uri,
                                         "version": mart.version, "digest": None}}}
    events: list[tuple[Any, ...]] = []
    ctx = python_context("publish", {"lake": str(tmp_path / "lake"), "as_of": "2026-01-01"},
                         tmp_path / "out", connections={
                             "warehouse": postgres("warehouse", warehouse_dsn)},
                         inputs=inputs, events=events,
                         input_manifest={"lake_dir": "_verify/r1/20260101T000000Z"})
    manifest = publish_gold(ctx)
    assert manifest["published"] is False
    assert [e[1] for e in events if e[0] == "event"] == ["LOG"]
    with psycopg.connect(warehouse_dsn) as conn:
        assert conn.execute("select to_regnamespace('gold')").fetchone() == (None,)
    # the same phase of an ordinary run publishes
    ctx = python_context("publish", {"lake": str(tmp_path / "lake"), "as_of": "2026-01-01"},
                         tmp_path / "out2", connections={
                             "warehouse": postgres("warehouse", warehouse_dsn)},
                         inputs=inputs, events=events)
    assert publish_gold(ctx)["published"] is True
    with psycopg.connect(warehouse_dsn) as conn:
        assert conn.execute("select x from gold.revenue").fetchall() == [(1,)]
