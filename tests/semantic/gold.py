"""A small gold schema in the shape publication gives it (`pipelines/odoo/publish.py`): the
three marts with deterministic rows, `gold.publications` and `gold.freshness`; and the
dimension values it holds, as a snapshot the parsing tests use without a database."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import psycopg

RUN_ID = "0d5c3c9e-6a4e-4a55-9a4c-5e0f0a1b2c3d"
TODAY = dt.date(2026, 6, 15)
"""The evaluation's "today" (relative time expressions are read against it)."""

COMPANIES = [(1, "Northwind EU", "EUR"), (2, "Northwind US", "USD")]
CUSTOMERS = [(11, "Oak Labs"), (12, "Blue Logistics"), (13, "Harbor Foods"),
             (14, "Cedar Health"), (15, "Maple Media")]
PRODUCTS = [(21, "Oak Desk", "FURN-1", "Office Furniture"),
            (22, "Smart Monitor", "ELEC-1", "Electronics"),
            (23, "Gel Pen", "STAT-1", "Stationery")]
MONTHS = [dt.date(2025, m, 1) for m in (10, 11, 12)] + [dt.date(2026, m, 1) for m in range(1, 7)]
BUCKETS = ["not due", "1-30", "31-60", "61-90", "90+"]
STATUSES = ["invoiced", "to invoice", "upselling", "no"]

DDL = """
create schema if not exists gold;
create table gold.revenue (month date, company_id integer, company text, currency text,
  customer_id integer, customer text, product_id integer, product text, default_code text,
  category text, quantity numeric(18, 3), revenue numeric(18, 2), invoices bigint,
  lines bigint);
create table gold.receivables_ageing (as_of date, company_id integer, company text,
  currency text, customer_id integer, customer text, bucket_order integer, bucket text,
  invoices bigint, amount_residual numeric(18, 2), max_days_overdue integer);
create table gold.order_invoice_lag (order_id integer, order_name text, company_id integer,
  customer_id integer, customer text, order_date date, invoice_status text,
  amount_untaxed_company numeric(18, 2), first_invoice_date date, last_invoice_date date,
  invoices bigint, lag_days integer);
create table gold.publications (run_id text not null, as_of date not null, mart text not null,
  dataset text not null, rows bigint not null, digest text, delta_version bigint not null,
  published_at timestamptz not null);
create table gold.freshness (run_id text not null, as_of date not null,
  newest_source_write_date timestamp without time zone, gold_available_at timestamptz not null,
  freshness_seconds double precision);
"""


def revenue_rows() -> list[tuple[Any, ...]]:
    rows = []
    for mi, month in enumerate(MONTHS):
        for ci, (cid, customer) in enumerate(CUSTOMERS):
            company_id, company, currency = COMPANIES[ci % 2]
            for pi, (pid, product, code, category) in enumerate(PRODUCTS):
                if (mi + ci + pi) % 4 == 3:
                    continue
                quantity = 1 + (mi * 7 + ci * 3 + pi * 5) % 9
                revenue = round(quantity * (100 + 37 * pi + 11 * ci) * (1 + mi / 20), 2)
                rows.append((month, company_id, company, currency, cid, customer, pid, product,
                             code, category, quantity, revenue, 1 + (mi + pi) % 3,
                             2 + (ci + pi) % 4))
    return rows


def ageing_rows() -> list[tuple[Any, ...]]:
    rows = []
    for ci, (cid, customer) in enumerate(CUSTOMERS):
        company_id, company, currency = COMPANIES[ci % 2]
        for bi, bucket in enumerate(BUCKETS):
            if (ci + bi) % 3 == 2:
                continue
            rows.append((dt.date(2026, 6, 14), company_id, company, currency, cid, customer,
                         bi, bucket, 1 + (ci + bi) % 4, round(250.5 * (ci + 1) + 90 * bi, 2),
                         [0, 25, 50, 80, 120][bi]))
    return rows


def lag_rows() -> list[tuple[Any, ...]]:
    rows = []
    order_id = 1000
    for mi, month in enumerate(MONTHS):
        for ci, (cid, customer) in enumerate(CUSTOMERS):
            for k in range(1 + (mi + ci) % 3):
                order_id += 1
                company_id = COMPANIES[ci % 2][0]
                day = month + dt.timedelta(days=3 + 7 * k)
                status = STATUSES[(mi + ci + k) % 4]
                lag = None if status == "to invoice" else (mi * 3 + ci + k) % 12
                first = day + dt.timedelta(days=lag) if lag is not None else None
                rows.append((order_id, f"S{order_id:05d}", company_id, cid, customer, day,
                             status, round(300 + 45.5 * ci + 12 * k + 5 * mi, 2), first, first,
                             0 if first is None else 1, lag))
    return rows


def values_snapshot() -> dict[str, list[str]]:
    """The known values of the dimensions (what `Warehouse.values()` reads from this gold)."""
    return {
        "customer": sorted(c for _, c in CUSTOMERS),
        "product": sorted(p for _, p, _, _ in PRODUCTS),
        "category": sorted(c for _, _, _, c in PRODUCTS),
        "company": sorted(c for _, c, _ in COMPANIES),
        "currency": sorted({c for _, _, c in COMPANIES}),
        "bucket": sorted(BUCKETS),
        "invoice_status": sorted(STATUSES),
    }


def create_gold(dsn: str) -> None:
    """The gold schema and its rows in the database of `dsn` (it must have none)."""
    with psycopg.connect(dsn) as pg, pg.transaction():
        pg.execute(DDL)
        marts = {"revenue": revenue_rows(), "receivables_ageing": ageing_rows(),
                 "order_invoice_lag": lag_rows()}
        for table, rows in marts.items():
            with pg.cursor().copy(f"copy gold.{table} from stdin") as copy:
                for row in rows:
                    copy.write_row(row)
            pg.execute("insert into gold.publications values (%s, %s, %s, %s, %s, %s, %s, "
                       "now())", [RUN_ID, dt.date(2026, 6, 14), f"gold.{table}",
                                  f"gold.odoo.{table}", len(rows), uuid.uuid4().hex, 3])
        pg.execute("insert into gold.freshness values (%s, %s, %s, now(), 60)",
                   [RUN_ID, dt.date(2026, 6, 14), dt.datetime(2026, 6, 14, 19, 0)])
