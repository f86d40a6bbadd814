"""The Odoo-shaped source generator against real PostgreSQL databases.

Determinism is proven with digests of whole databases; consistency (totals, links, payment
states) with SQL over a database that lived through several weeks of simulated activity.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import date, datetime
from typing import Any

import psycopg
import pytest
from typer.testing import CliRunner

from pipelines.odoo.__main__ import app
from pipelines.odoo.generator import (
    GeneratorError,
    advance,
    ensure_database,
    generate,
    schema_columns,
    source_digest,
)
from tests.helpers import drop_database, temporary_database, unique_name

HISTORY_DAYS = 40
START = date(2026, 1, 1)


def _rows(url: str, query: str, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(query, params or {}).fetchall()


def _value(url: str, query: str, params: dict[str, Any] | None = None) -> Any:
    return _rows(url, query, params)[0][0]


@pytest.fixture
def odoo_url(pg_admin_url: str) -> Iterator[str]:
    with temporary_database(pg_admin_url, suffix="odoo") as url:
        yield url


@pytest.fixture
def other_url(pg_admin_url: str) -> Iterator[str]:
    with temporary_database(pg_admin_url, suffix="odoo2") as url:
        yield url


@pytest.fixture(scope="module")
def history_url(pg_admin_url: str) -> Iterator[str]:
    """Six weeks of activity (generate, then three more days with `advance`), read-only."""
    with temporary_database(pg_admin_url, suffix="odoohist") as url:
        generate(url, scale=0.03, seed=11, days=HISTORY_DAYS - 3, start=START)
        advance(url, days=3)
        yield url


# ---------------------------------------------------------------------------------- determinism


def test_same_seed_gives_the_same_digest_and_another_seed_another(
    odoo_url: str, other_url: str
) -> None:
    first = generate(odoo_url, scale=0.01, seed=5, days=6, start=START)
    generate(other_url, scale=0.01, seed=5, days=6, start=START)
    digest = source_digest(odoo_url)
    assert digest.startswith("blake3:")
    assert source_digest(other_url) == digest
    assert first.rows["sale_order_line"] > 0

    generate(other_url, scale=0.01, seed=6, days=6, start=START)
    assert source_digest(other_url) != digest


def test_generate_then_advance_equals_one_longer_generate(odoo_url: str, other_url: str) -> None:
    generate(odoo_url, scale=0.02, seed=3, days=12, start=START)
    generate(other_url, scale=0.02, seed=3, days=5, start=START)
    advance(other_url, days=3)
    report = advance(other_url, days=4)
    assert report.first_day == date(2026, 1, 9)
    assert report.last_day == date(2026, 1, 12)
    assert source_digest(other_url) == source_digest(odoo_url)


def test_the_digest_sees_a_single_changed_value(odoo_url: str) -> None:
    generate(odoo_url, scale=0.01, seed=5, days=2, start=START)
    before = source_digest(odoo_url)
    with psycopg.connect(odoo_url) as conn:
        changed = conn.execute("update sale_order_line set discount = discount + 0.5 "
                               "where id = (select min(id) from sale_order_line)")
        assert changed.rowcount == 1
    assert source_digest(odoo_url) != before


# ---------------------------------------------------------------------------------- activity


def test_advance_inserts_updates_and_deletes_rows_of_the_new_day(odoo_url: str) -> None:
    generate(odoo_url, scale=0.05, seed=9, days=8, start=START)
    orders_before = dict(_rows(odoo_url, "select id, write_date from sale_order"))
    lines_before = set(dict(_rows(odoo_url, "select id, 1 from sale_order_line")))

    report = advance(odoo_url, days=2)

    new_day = datetime(2026, 1, 9)
    orders_after = dict(_rows(odoo_url, "select id, write_date from sale_order"))
    inserted = set(orders_after) - set(orders_before)
    deleted = set(orders_before) - set(orders_after)
    updated = {oid for oid in set(orders_after) & set(orders_before)
               if orders_after[oid] != orders_before[oid]}
    assert inserted and updated and deleted
    assert min(inserted) > max(orders_before)
    assert all(orders_after[oid] >= new_day for oid in inserted | updated)
    assert report.inserted["sale_order"] == len(inserted)
    assert report.updated["sale_order"] == len(updated)
    assert report.deleted["sale_order"] == len(deleted)
    # Deleted quotations took their lines with them (Odoo unlink), and nothing else vanished.
    lines_after = set(dict(_rows(odoo_url, "select id, 1 from sale_order_line")))
    gone = lines_before - lines_after
    assert gone and report.deleted["sale_order_line"] == len(gone)
    assert _value(odoo_url, "select value from ir_config_parameter "
                            "where key = 'control_room.generator.day'") == "10"
    assert report.activity["quotations"] > 0 and report.activity["invoices"] > 0


def test_advance_refuses_a_database_the_generator_did_not_make(odoo_url: str) -> None:
    with pytest.raises(GeneratorError, match="run generate first"):
        advance(odoo_url)


def test_generate_refuses_to_overwrite_foreign_odoo_tables(odoo_url: str) -> None:
    with psycopg.connect(odoo_url) as conn:
        conn.execute("create table res_partner (id serial primary key, name varchar)")
    with pytest.raises(GeneratorError, match="refusing to overwrite"):
        generate(odoo_url, scale=0.01, days=1)
    assert _value(odoo_url, "select count(*) from information_schema.tables "
                            "where table_name = 'res_partner'") == 1


@pytest.mark.parametrize("kwargs", [{"scale": 0}, {"scale": float("nan")}, {"days": -1}])
def test_generate_rejects_bad_arguments(odoo_url: str, kwargs: dict[str, Any]) -> None:
    with pytest.raises(GeneratorError, match=r"^(scale|days) must be"):
        generate(odoo_url, **kwargs)


def test_ensure_database_creates_a_missing_database_once(pg_admin_url: str) -> None:
    name = unique_name("odoonew")
    try:
        url = ensure_database(pg_admin_url, name)
        assert ensure_database(pg_admin_url, name) == url
        assert _value(url, "select current_database()") == name
    finally:
        drop_database(pg_admin_url, name)


# ---------------------------------------------------------------------------------- the schema


def test_tables_and_columns_match_the_schema_file(history_url: str) -> None:
    found: dict[str, list[str]] = {}
    for table, column in _rows(history_url, """
            select table_name, column_name from information_schema.columns
            where table_schema = 'public' order by table_name, ordinal_position"""):
        found.setdefault(table, []).append(column)
    assert found == schema_columns()
    types = dict(((t, c), d) for t, c, d in _rows(history_url, """
        select table_name, column_name, data_type from information_schema.columns
        where table_schema = 'public'"""))
    assert types["product_template", "name"] == "jsonb"
    assert types["product_category", "name"] == "character varying"
    assert types["sale_order_line", "price_unit"] == "numeric"
    assert types["sale_order_line", "price_tax"] == "double precision"
    assert types["sale_order", "date_order"] == "timestamp without time zone"
    assert types["res_currency_rate", "name"] == "date"
    assert types["account_move", "amount_residual"] == "numeric"


def test_foreign_keys_hold(history_url: str) -> None:
    count = _value(history_url, "select count(*) from pg_constraint where contype = 'f' "
                                "and connamespace = 'public'::regnamespace")
    assert count >= 50
    orphans = _value(history_url, """
        select (select count(*) from sale_order_line l
                where not exists (select 1 from sale_order o where o.id = l.order_id))
             + (select count(*) from sale_order_line_invoice_rel r
                where not exists (select 1 from sale_order_line l where l.id = r.order_line_id)
                   or not exists (select 1 from account_move_line a where a.id = r.invoice_line_id))
             + (select count(*) from account_move_line a
                where not exists (select 1 from account_move m where m.id = a.move_id))""")
    assert orphans == 0


# ---------------------------------------------------------------------------------- consistency


def test_order_totals_are_the_sums_of_their_lines(history_url: str) -> None:
    wrong = _rows(history_url, """
        select o.name, o.amount_untaxed, o.amount_tax, o.amount_total,
               sum(l.price_subtotal), sum(l.price_tax), sum(l.price_total)
        from sale_order o join sale_order_line l on l.order_id = o.id
        group by o.id
        having abs(o.amount_untaxed - sum(l.price_subtotal)) > 0.005
            or abs(o.amount_tax - sum(l.price_tax)::numeric) > 0.005
            or abs(o.amount_total - sum(l.price_total)) > 0.01
            or o.amount_total <> o.amount_untaxed + o.amount_tax""")
    assert wrong == []
    bad_lines = _value(history_url, """
        select count(*) from sale_order_line
        where display_type is null and (
            price_subtotal <> round(product_uom_qty * price_unit * (1 - discount / 100), 2)
            or price_tax::numeric <> round(price_subtotal * 0.21, 2)
            or price_total <> price_subtotal + price_tax::numeric)""")
    assert bad_lines == 0
    at_creation = _rows(history_url, """
        select min(n), max(n) from (
            select count(*) as n from sale_order_line l join sale_order o on o.id = l.order_id
            where l.display_type is null and l.create_date = o.create_date
            group by o.id) t""")[0]
    assert at_creation == (1, 8)


def test_journal_entries_balance_and_match_their_lines(history_url: str) -> None:
    unbalanced = _value(history_url, """
        select count(*) from (select move_id from account_move_line group by move_id
                              having sum(balance) <> 0 or sum(debit) <> sum(credit)) t""")
    assert unbalanced == 0
    wrong = _value(history_url, """
        select count(*) from account_move m
        where m.move_type in ('out_invoice', 'out_refund')
          and (m.amount_total <> (select sum(price_total) from account_move_line
                                  where move_id = m.id and display_type = 'product')
               or m.amount_total <> m.amount_untaxed + m.amount_tax
               or m.amount_total_signed <> (select balance from account_move_line
                                            where move_id = m.id
                                              and display_type = 'payment_term'))""")
    assert wrong == 0


def test_invoiced_quantities_follow_the_invoice_links(history_url: str) -> None:
    unlinked = _value(history_url, """
        select count(*) from account_move_line a join account_move m on m.id = a.move_id
        where m.move_type in ('out_invoice', 'out_refund') and a.display_type = 'product'
          and not exists (select 1 from sale_order_line_invoice_rel r
                          where r.invoice_line_id = a.id)""")
    assert unlinked == 0
    mismatched = _value(history_url, """
        select count(*) from sale_order_line l
        where l.qty_invoiced <> coalesce((
            select sum(case m.move_type when 'out_refund' then -a.quantity else a.quantity end)
            from sale_order_line_invoice_rel r
            join account_move_line a on a.id = r.invoice_line_id
            join account_move m on m.id = a.move_id
            where r.order_line_id = l.id), 0)""")
    assert mismatched == 0
    foreign_origin = _value(history_url, """
        select count(*) from sale_order_line_invoice_rel r
        join account_move_line a on a.id = r.invoice_line_id
        join account_move m on m.id = a.move_id
        join sale_order_line l on l.id = r.order_line_id
        join sale_order o on o.id = l.order_id
        where m.invoice_origin <> o.name or a.product_id <> l.product_id""")
    assert foreign_origin == 0


def test_payment_states_agree_with_residuals(history_url: str) -> None:
    states = dict(_rows(history_url, """
        select payment_state, count(*) from account_move
        where move_type = 'out_invoice' group by payment_state"""))
    assert set(states) == {"not_paid", "partial", "paid", "reversed"}
    wrong = _value(history_url, """
        select count(*) from account_move m
        join account_move_line t on t.move_id = m.id and t.display_type = 'payment_term'
        where m.move_type = 'out_invoice' and (
            (m.payment_state = 'not_paid' and m.amount_residual <> m.amount_total)
            or (m.payment_state = 'partial'
                and not (m.amount_residual > 0 and m.amount_residual < m.amount_total))
            or (m.payment_state in ('paid', 'reversed') and m.amount_residual <> 0)
            or t.amount_residual <> m.amount_residual_signed
            or t.amount_residual_currency <> m.amount_residual)""")
    assert wrong == 0
    unreversed = _value(history_url, """
        select count(*) from account_move m where m.payment_state = 'reversed'
        and not exists (select 1 from account_move r where r.reversed_entry_id = m.id
                        and r.move_type = 'out_refund' and r.amount_total = m.amount_total)""")
    assert unreversed == 0
    paid_without_payment = _value(history_url, """
        select count(*) from account_move m where m.move_type = 'out_invoice'
        and m.payment_state in ('paid', 'partial')
        and not exists (select 1 from account_move p where p.move_type = 'entry'
                        and p.ref = m.name)""")
    assert paid_without_payment == 0
    overdue = _value(history_url, """
        select count(*) from account_move where move_type = 'out_invoice'
        and payment_state in ('not_paid', 'partial') and invoice_date_due < %(today)s""",
                     {"today": date(2026, 2, 9)})
    assert overdue > 0


def test_distributions_look_like_a_sales_ledger(history_url: str) -> None:
    shares = [n for (n,) in _rows(history_url, """
        select count(*) from sale_order group by partner_id order by count(*) desc""")]
    top_fifth = shares[: max(1, len(shares) // 5)]
    assert sum(top_fifth) > 0.45 * sum(shares)  # a few customers order most
    currencies = dict(_rows(history_url, """
        select c.name, count(*) from sale_order o join res_currency c on c.id = o.currency_id
        group by c.name"""))
    assert set(currencies) == {"EUR", "USD", "GBP"} and currencies["EUR"] > currencies["USD"]
    rates = dict(_rows(history_url, """
        select c.name, count(distinct r.name) from res_currency_rate r
        join res_currency c on c.id = r.currency_id group by c.name"""))
    assert rates == {"USD": HISTORY_DAYS, "GBP": HISTORY_DAYS}
    terms = {n for (n,) in _rows(history_url, """
        select distinct invoice_date_due - invoice_date from account_move
        where move_type = 'out_invoice'""")}
    assert terms == {15, 30, 45}
    states = dict(_rows(history_url, "select state, count(*) from sale_order group by state"))
    assert set(states) == {"draft", "sent", "sale", "cancel"}
    assert _value(history_url, "select count(*) from account_move where move_type = 'out_refund'")


# ---------------------------------------------------------------------------------- command line

runner = CliRunner()


def test_cli_generates_advances_and_digests(odoo_url: str) -> None:
    result = runner.invoke(app, ["generate", "--dsn", odoo_url, "--scale", "0.01", "--days",
                                 "2", "--seed", "4", "--start", "2026-01-01", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["last_day"] == "2026-01-02" and report["rows"]["sale_order_line"] > 0

    result = runner.invoke(app, ["advance", "--dsn", odoo_url])
    assert result.exit_code == 0, result.output
    assert "advanced" in result.stdout and "2026-01-03" in result.stdout

    result = runner.invoke(app, ["digest"], env={"ODOO_DSN": odoo_url})
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == source_digest(odoo_url)


@pytest.mark.parametrize("args, message", [
    (["generate", "--scale", "-1"], "scale must be"),
    (["generate", "--start", "tomorrow"], "start must be a date"),
    (["advance"], "run generate first"),
])
def test_cli_bad_input_is_one_line_and_exit_2(odoo_url: str, args: list[str],
                                              message: str) -> None:
    result = runner.invoke(app, [*args, "--dsn", odoo_url])
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
