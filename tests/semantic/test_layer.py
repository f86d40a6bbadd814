"""The semantic layer without a database: the loader (errors name FILE:LINE), the compiler,
the guard, and the parser's time expressions, filters, clarify and refuse."""

from __future__ import annotations

import datetime as dt
from importlib import resources

import pytest

from control_room.semantic.ask import parse_question
from control_room.semantic.guard import GuardError, guard
from control_room.semantic.model import SemanticError, default_layer, load_text
from control_room.semantic.query import (
    Compare,
    Filter,
    MetricQuery,
    QueryError,
    Side,
    compile_query,
)

from .gold import TODAY, values_snapshot

SHIPPED = resources.files("control_room.semantic").joinpath("odoo/odoo.yaml").read_text("utf-8")


def _line_of(text: str, needle: str) -> int:
    for number, line in enumerate(text.splitlines(), start=1):
        if needle in line:
            return number
    raise AssertionError(needle)


def test_the_shipped_layer_loads() -> None:
    layer = default_layer()
    assert {"revenue", "open_receivables", "confirmed_orders"} <= set(layer.metrics)
    assert layer.metrics["revenue"].certified and not layer.metrics["order_amount"].certified
    assert layer.dimension_column("company", "order_invoice_lag") == "lag_company.company"


@pytest.mark.parametrize(("old", "new", "at", "message"), [
    ("measure: amount_residual", "measure: amount_left", None,
     "column 'amount_left' is not a column of gold.receivables_ageing"),
    ('filters: ["bucket_order > 0"]', 'filters: ["bucket_nr > 0"]', None,
     "column 'bucket_nr' is not a column of gold.receivables_ageing"),
    ("revenue: customer, receivables_ageing: customer", "revenue: client, "
     "receivables_ageing: customer", None, "column 'client' is not a column of gold.revenue"),
    ("aggregation: sum", "aggregation: total", None, "aggregation: Input should be"),
    # a missing key: the line of the mapping that lacks it
    ("    owner: finance", "    owner_name: finance", "  - name: revenue",
     "metrics.0.owner: Field required"),
])
def test_a_name_that_does_not_exist_is_an_error_naming_file_and_line(
        old: str, new: str, at: str | None, message: str) -> None:
    text = SHIPPED.replace(old, new, 1)
    assert text != SHIPPED
    with pytest.raises(SemanticError) as failed:
        load_text(text, "semantic/odoo.yaml")
    assert message in str(failed.value)
    assert f"semantic/odoo.yaml:{_line_of(text, at or new.strip())}:" in str(failed.value)


def test_a_synonym_of_two_metrics_and_bad_yaml_are_refused() -> None:
    text = SHIPPED.replace("synonyms: [units,", "synonyms: [sales, units,", 1)
    with pytest.raises(SemanticError, match="'sales' is also 'revenue'"):
        load_text(text, "x.yaml")
    with pytest.raises(SemanticError, match=r"^x\.yaml:2: not YAML"):
        load_text("name: x\n  bad: [", "x.yaml")


def test_compiled_sql_is_one_guarded_select() -> None:
    layer = default_layer()
    sql = compile_query(layer, MetricQuery(
        metric="overdue_receivables", group_by=("customer",), order="desc", limit=5,
        filters=(Filter(dimension="customer", values=("O'Brien & Co",)),)))
    assert "'O''Brien & Co'" in sql           # a value is a literal, quoted
    assert '"t"."bucket_order" > 0' in sql and "LIMIT 5" in sql
    assert guard(sql) == sql
    with pytest.raises(QueryError) as failed:
        compile_query(layer, MetricQuery(metric="revenue", group_by=("bucket",)))
    assert failed.value.code == "unsupported_dimension"
    with pytest.raises(QueryError) as failed:
        compile_query(layer, MetricQuery(metric="revenue", grain="day"))
    assert failed.value.code == "unsupported_grain"


def test_a_comparison_compiles_to_one_guarded_select_or_a_query_error() -> None:
    layer = default_layer()
    year = (Side(start=dt.date(2026, 1, 1), end=dt.date(2027, 1, 1)),
            Side(start=dt.date(2025, 1, 1), end=dt.date(2026, 1, 1)))
    sql = compile_query(layer, MetricQuery(metric="revenue", group_by=("customer",),
                                           compare=Compare(kind="period", sides=year)))
    assert guard(sql) == sql and sql.count("SELECT") == 1
    assert sql.count("FILTER(WHERE") >= 2 and "NULLIF(" in sql
    assert '"2026-01-01..2026-12-31"' in sql and '"change_pct"' in sql
    member = Compare(kind="member", dimension="customer",
                     sides=(Side(value="O'Brien"), Side(value="Oak Labs")))
    sql = compile_query(layer, MetricQuery(metric="revenue", compare=member, order="desc"))
    assert "'O''Brien'" in sql and 'ORDER BY\n  "O\'Brien" DESC NULLS LAST' in sql
    bad = [
        (MetricQuery(metric="revenue", grain="month",
                     compare=Compare(kind="period", sides=year)), "invalid_compare"),
        (MetricQuery(metric="revenue", compare=Compare(kind="period", sides=(
            Side(value="Oak Labs"), year[1]))), "invalid_compare"),
        (MetricQuery(metric="revenue", compare=Compare(kind="member", dimension="customer",
                                                       sides=(Side(value="A"), Side(value="A")))),
         "invalid_compare"),
        (MetricQuery(metric="revenue", group_by=("customer",), compare=member),
         "invalid_compare"),
        (MetricQuery(metric="revenue", compare=Compare(kind="member", dimension="bucket",
                                                       sides=(Side(value="1-30"),
                                                              Side(value="90+")))),
         "unsupported_dimension"),
    ]
    for query, code in bad:
        with pytest.raises(QueryError) as failed:
            compile_query(layer, query)
        assert failed.value.code == code, query


@pytest.mark.parametrize(("today", "question", "first", "second"), [
    (dt.date(2026, 6, 15), "revenue YTD vs last year", ("2026-01-01", "2026-06-16"),
     ("2025-01-01", "2025-06-16")),
    (dt.date(2028, 2, 29), "revenue YTD vs last year", ("2028-01-01", "2028-03-01"),
     ("2027-01-01", "2027-03-01")),
    (dt.date(2026, 5, 30), "revenue QTD vs last quarter", ("2026-04-01", "2026-05-31"),
     ("2026-01-01", "2026-03-01")),
    (dt.date(2026, 3, 31), "revenue MTD vs last month", ("2026-03-01", "2026-04-01"),
     ("2026-02-01", "2026-03-01")),
    (dt.date(2026, 1, 10), "revenue this month vs last month", ("2026-01-01", "2026-02-01"),
     ("2025-12-01", "2026-01-01")),
    (dt.date(2026, 6, 15), "revenue past 2 weeks vs prior 2 weeks", ("2026-06-02", "2026-06-16"),
     ("2026-05-19", "2026-06-02")),
])
def test_a_to_date_span_is_compared_with_the_same_span_before(
        today: dt.date, question: str, first: tuple[str, str], second: tuple[str, str]) -> None:
    parsed = parse_question(question, default_layer(), values_snapshot(), today=today)
    assert parsed.query is not None and parsed.query.compare is not None, parsed.reason
    sides = [(s.start.isoformat() if s.start else "", s.end.isoformat() if s.end else "")
             for s in parsed.query.compare.sides]
    assert sides == [first, second]


@pytest.mark.parametrize("sql", [
    "delete from gold.revenue",
    "select 1; select 2",
    "select * from ops.runs",
    "select * from revenue",
    "select * from gold.revenue r join public.secrets s on true",
    "select pg_sleep(10)",
    "select set_config('statement_timeout', '0', false)",
    "select * from gold.revenue for update",
    "select * into gold.copy from gold.revenue",
    "with x as (delete from gold.revenue returning *) select * from x",
    "select * from dblink('host=x', 'select 1') as t(a int)",
    "select nextval('s')",
    "select lo_import('/etc/passwd')",
    "select * from gold.revenue limit all",
    "copy gold.revenue to '/tmp/x'",
    "select current_setting('is_superuser')",
    "select my_function(1) from gold.revenue",
    "",
])
def test_the_guard_refuses(sql: str) -> None:
    with pytest.raises(GuardError):
        guard(sql)


def test_the_guard_caps_rows() -> None:
    assert guard("select * from gold.revenue").endswith("LIMIT 1000")
    assert guard("select * from gold.revenue limit 5000").endswith("LIMIT 1000")
    assert guard("select * from gold.revenue limit 7").endswith("LIMIT 7")
    union = guard("select customer from gold.revenue union select customer from "
                  "gold.order_invoice_lag")
    assert union.endswith("LIMIT 1000") and "capped" in union


def _read(question: str) -> tuple[str, MetricQuery | None, str | None]:
    parsed = parse_question(question, default_layer(), values_snapshot(), today=TODAY)
    return parsed.status, parsed.query, parsed.reason


@pytest.mark.parametrize(("question", "start", "end"), [
    ("revenue last quarter", dt.date(2026, 1, 1), dt.date(2026, 4, 1)),
    ("revenue this quarter", dt.date(2026, 4, 1), dt.date(2026, 7, 1)),
    ("revenue in March", dt.date(2026, 3, 1), dt.date(2026, 4, 1)),
    ("revenue in July", dt.date(2025, 7, 1), dt.date(2025, 8, 1)),
    ("revenue in may 2025", dt.date(2025, 5, 1), dt.date(2025, 6, 1)),
    ("revenue YTD", dt.date(2026, 1, 1), dt.date(2026, 6, 16)),
    ("revenue in 2026", dt.date(2026, 1, 1), dt.date(2027, 1, 1)),
    ("revenue last 30 days", dt.date(2026, 5, 17), dt.date(2026, 6, 16)),
    ("revenue Q4 2025", dt.date(2025, 10, 1), dt.date(2026, 1, 1)),
    ("revenue since 2025", dt.date(2025, 1, 1), dt.date(2026, 6, 16)),
])
def test_time_expressions(question: str, start: dt.date, end: dt.date) -> None:
    status, query, _ = _read(question)
    assert status == "answer" and query is not None
    assert (query.start, query.end) == (start, end)


def test_filters_top_n_clarify_and_refuse() -> None:
    status, query, _ = _read("top 3 products by revenue for Oak Labs")
    assert status == "answer" and query is not None
    assert query.filters == (Filter(dimension="customer", values=("Oak Labs",)),)
    assert (query.group_by, query.order, query.limit) == (("product",), "desc", 3)
    status, _, reason = _read("revenue next quarter")
    assert status == "refuse" and reason is not None and "future" in reason
    status, _, reason = _read("open receivables by product")
    assert status == "refuse" and reason is not None and "cannot be split" in reason
    status, _, _ = _read("invoices per customer")
    assert status == "clarify"
    # a value of two dimensions: both readings offered
    values = {**values_snapshot(), "product": ["Oak Labs"]}
    parsed = parse_question("revenue for Oak Labs", default_layer(), values, today=TODAY)
    assert parsed.status == "clarify"
    assert {r.query.filters[0].dimension for r in parsed.readings} == {"customer", "product"}
