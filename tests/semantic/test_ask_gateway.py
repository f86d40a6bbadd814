"""ask over a real Postgres gold schema: the warehouse session (read only, statement timeout,
guard), real SQL whose numbers are checked against the rows, and the gateway's /ask/v1
endpoints through the typed client (membership proved by the database, 503 without a
warehouse, 4xx with machine codes for bad input, the DSN never in an answer)."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx
import psycopg
import pytest
from psycopg import sql

from control_room.contract import ContractClient, Forbidden, ServiceUnavailable
from control_room.contract.client import RetryPolicy
from control_room.semantic.guard import GuardError
from control_room.semantic.model import default_layer
from control_room.semantic.query import Filter, MetricQuery, compile_query
from control_room.semantic.service import Asker
from control_room.semantic.warehouse import Warehouse, WarehouseError
from tests.contract.conftest import HttpContract, World, make_world, user
from tests.helpers import running_gateway, temporary_database

from .gold import RUN_ID, TODAY, create_gold, lag_rows, revenue_rows, values_snapshot

FAST = RetryPolicy(attempts=2, initial=0.01, max_wait=0.05, total=5.0)


@pytest.fixture(scope="module")
def gold_dsn(pg_admin_url: str) -> Iterator[str]:
    with temporary_database(pg_admin_url, suffix="gold") as url:
        create_gold(url)
        yield url


@pytest.fixture(scope="module")
def reader_dsn(gold_dsn: str) -> Iterator[str]:
    """A login role that may only read gold (what `warehouse grant-reader` gives)."""
    role = f"ask_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(gold_dsn, autocommit=True) as pg:
        pg.execute(sql.SQL("create role {} login").format(sql.Identifier(role)))
        pg.execute(sql.SQL("grant usage on schema gold to {}").format(sql.Identifier(role)))
        pg.execute(sql.SQL("grant select on all tables in schema gold to {}").format(
            sql.Identifier(role)))
    info = psycopg.conninfo.conninfo_to_dict(gold_dsn)
    info["user"] = role
    yield psycopg.conninfo.make_conninfo(**info)  # type: ignore[arg-type]
    with psycopg.connect(gold_dsn, autocommit=True) as pg:
        pg.execute(sql.SQL("drop owned by {}").format(sql.Identifier(role)))
        pg.execute(sql.SQL("drop role {}").format(sql.Identifier(role)))


@pytest.fixture(scope="module")
def warehouse(reader_dsn: str) -> Iterator[Warehouse]:
    found = Warehouse(reader_dsn, layer=default_layer(), statement_timeout_ms=2000)
    yield found
    found.close()


def test_the_layer_matches_the_gold_schema_and_its_values(warehouse: Warehouse) -> None:
    layer = default_layer()
    layer.check_columns(warehouse.columns())
    assert warehouse.values() == values_snapshot()
    columns = warehouse.columns()
    columns["revenue"].remove("lines")
    with pytest.raises(ValueError, match=r"odoo\.yaml:\d+: column gold\.revenue\.lines is not"):
        layer.check_columns(columns)


def test_compiled_sql_gives_the_numbers_of_the_rows(warehouse: Warehouse) -> None:
    layer = default_layer()
    query = MetricQuery(metric="revenue", grain="month",
                        filters=(Filter(dimension="customer", values=("Oak Labs",)),),
                        start=dt.date(2026, 1, 1), end=dt.date(2027, 1, 1))
    result = warehouse.run(compile_query(layer, query))
    assert result.columns == ["month", "currency", "revenue"]
    expected: dict[str, Decimal] = {}
    for row in revenue_rows():
        if row[5] == "Oak Labs" and row[0].year == 2026:
            key = row[0].isoformat()
            expected[key] = expected.get(key, Decimal(0)) + Decimal(str(row[11]))
    assert [(r[0], r[1]) for r in result.rows] == [(k, "EUR") for k in sorted(expected)]
    assert [round(Decimal(str(r[2])), 2) for r in result.rows] == [
        round(expected[k], 2) for k in sorted(expected)]
    # a join (the company of an order comes from the revenue mart) does not fan out
    orders = warehouse.run(compile_query(layer, MetricQuery(
        metric="confirmed_orders", group_by=("company",))))
    assert sum(r[1] for r in orders.rows) == len(lag_rows())
    median = warehouse.run(compile_query(layer, MetricQuery(metric="median_invoice_lag")))
    lags = sorted(r[11] for r in lag_rows() if r[11] is not None)
    middle = len(lags) // 2
    want = lags[middle] if len(lags) % 2 else (lags[middle - 1] + lags[middle]) / 2
    assert median.rows == [[pytest.approx(want, abs=0.05)]]


def test_the_session_is_read_only_guarded_and_bounded(warehouse: Warehouse) -> None:
    with pytest.raises(GuardError):
        warehouse.run("delete from gold.revenue")
    with pytest.raises(GuardError):
        warehouse.run("select * from pg_catalog.pg_roles")
    # past the guard (a CTE hiding a write is refused by Postgres's READ ONLY transaction)
    with pytest.raises(WarehouseError) as failed, warehouse._read_only() as conn:
        conn.execute("create table gold.nope (x int)")
    assert failed.value.code == "query_failed"
    with pytest.raises(WarehouseError) as slow, warehouse._read_only() as conn:
        conn.execute("select count(*) from generate_series(1, 100000000)")
    assert slow.value.code == "query_timeout"
    big = warehouse.run("select * from gold.revenue, gold.order_invoice_lag")
    assert len(big.rows) == 1000
    # and the connection still works after those
    assert warehouse.run("select count(*) as n from gold.revenue").rows == [[len(revenue_rows())]]


def test_an_answer_carries_sql_definitions_and_lineage(warehouse: Warehouse) -> None:
    answer = Asker(default_layer(), warehouse).ask("top 3 customers by revenue in 2026",
                                                   today=TODAY)
    assert answer["status"] == "answer"
    assert answer["query"]["order"] == "desc" and answer["query"]["limit"] == 3
    assert "LIMIT 3" in answer["sql"] and '"gold"."revenue"' in answer["sql"]
    assert len(answer["rows"]) == 3
    assert answer["columns"] == ["customer", "currency", "revenue"]
    values = [r[2] for r in answer["rows"]]
    assert values == sorted(values, reverse=True)
    assert answer["metrics"][0]["name"] == "revenue" and answer["metrics"][0]["certified"]
    lineage = answer["lineage"][0]
    assert lineage["table"] == "gold.revenue" and lineage["run_id"] == RUN_ID
    assert "silver.odoo.account_move_line" in lineage["silver"]
    assert "account_move_line" in lineage["odoo"]
    refused = Asker(default_layer(), warehouse).ask("what was our profit margin", today=TODAY)
    assert refused["status"] == "refuse" and refused["rows"] == [] and refused["sql"] is None


def test_a_comparison_is_one_sql_whose_numbers_are_the_rows(warehouse: Warehouse) -> None:
    asker = Asker(default_layer(), warehouse)
    rows = [(*r[:11], Decimal(str(r[11]))) for r in revenue_rows()]
    answer = asker.ask("revenue in 2026 vs 2025", today=TODAY)
    assert answer["status"] == "answer" and answer["sql"].count("SELECT") == 1
    assert answer["columns"] == ["currency", "2026", "2025", "difference", "change_pct"]
    assert [s["column"] for s in answer["compare"]["sides"]] == ["2026", "2025"]
    assert answer["compare"]["difference"] == "2026 - 2025"
    for currency, now, before, difference, pct in answer["rows"]:
        a = sum(r[11] for r in rows if r[3] == currency and r[0].year == 2026)
        b = sum(r[11] for r in rows if r[3] == currency and r[0].year == 2025)
        assert (Decimal(str(now)), Decimal(str(before))) == (a, b)
        assert Decimal(str(difference)) == a - b
        assert Decimal(str(pct)) == round((a - b) * 100 / b, 1)
    # a member comparison; the base side without rows in a currency: change_pct is null
    answer = asker.ask("revenue of Oak Labs vs Blue Logistics", today=TODAY)
    assert answer["compare"]["kind"] == "member"
    assert answer["columns"] == ["currency", "Oak Labs", "Blue Logistics", "difference",
                                 "change_pct"]
    by_currency = {r[0]: r[1:] for r in answer["rows"]}
    oak = sum(r[11] for r in rows if r[5] == "Oak Labs")
    blue = sum(r[11] for r in rows if r[5] == "Blue Logistics")
    assert [Decimal(str(v)) for v in by_currency["EUR"][:3]] == [oak, 0, oak]
    assert by_currency["EUR"][3] is None
    assert [Decimal(str(v)) for v in by_currency["USD"][:3]] == [0, blue, -blue]
    assert by_currency["USD"][3] == -100.0
    # an ordered-set aggregate (median) with FILTER, through the join of the company
    answer = asker.ask("median invoice lag Northwind EU vs Northwind US", today=TODAY)
    lags = {1: sorted(r[11] for r in lag_rows() if r[2] == 1 and r[11] is not None),
            2: sorted(r[11] for r in lag_rows() if r[2] == 2 and r[11] is not None)}

    def median(values: list[int]) -> float:
        middle = len(values) // 2
        return float(values[middle] if len(values) % 2 else
                     (values[middle - 1] + values[middle]) / 2)

    ((eu, us, difference, _pct),) = answer["rows"]
    assert (float(eu), float(us)) == (median(lags[1]), median(lags[2]))
    assert float(difference) == median(lags[1]) - median(lags[2])
    unsure = asker.ask("revenue of Oak Labs vs Birch Co", today=TODAY)
    assert unsure["status"] == "clarify" and unsure["rows"] == [] and unsure["sql"] is None


# ------------------------------------------------------------------ the gateway's /ask/v1


@pytest.fixture(scope="module")
def served(module_db_url: str, reader_dsn: str) -> Iterator[tuple[str, HttpContract, World]]:
    with psycopg.connect(module_db_url) as conn, \
            running_gateway(module_db_url, warehouse_read_url=reader_dsn) as url, \
            httpx.Client(base_url=url, timeout=30) as http:
        contract = HttpContract(conn, http)
        yield url, contract, make_world(contract)


def client(url: str, contract: HttpContract, who: Any) -> ContractClient:
    return ContractClient(f"{url}/rest/v1", contract.token(who), retry=FAST)


def test_a_member_asks_through_the_client(served: tuple[str, HttpContract, World]) -> None:
    url, contract, world = served
    with client(url, contract, world.viewer1) as viewer:
        answer = viewer.ask(world.w1, "revenue by month for Oak Labs in 2026",
                            today=TODAY.isoformat())
    assert answer.status == "answer" and answer.certified and answer.source == "semantic"
    assert answer.columns == ("month", "currency", "revenue")
    assert [r[0] for r in answer.rows] == [f"2026-0{m}-01" for m in range(1, 7)]
    assert answer.sql is not None and "'Oak Labs'" in answer.sql
    assert answer.metrics[0].name == "revenue" and answer.metrics[0].certified
    assert answer.lineage[0].run_id == RUN_ID and answer.compare is None
    with client(url, contract, world.viewer1) as viewer:
        compared = viewer.ask(world.w1, "revenue this quarter compared to last quarter",
                              today=TODAY.isoformat())
    assert compared.compare is not None and compared.query is not None
    assert [s["label"] for s in compared.compare["sides"]] == ["Q2 2026", "Q1 2026"]
    assert compared.query["compare"]["kind"] == "period"
    assert compared.columns == ("currency", "Q2 2026", "Q1 2026", "difference", "change_pct")
    with client(url, contract, world.exec2) as executor:
        unsure = executor.ask(world.w2, "invoices by month", today=TODAY.isoformat())
    assert unsure.status == "clarify" and unsure.rows == ()
    assert {r.query["metric"] for r in unsure.readings} == {"open_invoices", "invoice_lines"}


def test_membership_is_proved_by_the_database(served: tuple[str, HttpContract, World]
                                              ) -> None:
    url, contract, world = served
    with client(url, contract, world.viewer1) as viewer, pytest.raises(Forbidden):
        viewer.ask(world.w2, "revenue")
    with client(url, contract, user("stranger")) as stranger, pytest.raises(Forbidden):
        stranger.ask(world.w1, "revenue")
    answer = httpx.post(f"{url}/ask/v1/ask", json={"workspace_id": world.w1,
                                                  "question": "revenue"})
    assert answer.status_code == 401 and answer.json()["hint"] == "unauthorized"


def test_bad_input_answers_4xx_with_a_machine_code(served: tuple[str, HttpContract, World],
                                                   reader_dsn: str) -> None:
    url, contract, world = served
    headers = {"Authorization": f"Bearer {contract.token(world.dev1)}"}
    cases: list[tuple[str, Any, int, str]] = [
        ("ask", {"workspace_id": world.w1}, 400, "invalid_argument"),
        ("ask", {"workspace_id": world.w1, "question": "x" * 501}, 400, "invalid_argument"),
        ("ask", {"workspace_id": world.w1, "question": "revenue", "today": "May"}, 400,
         "invalid_argument"),
        ("ask", {"question": "revenue"}, 400, "invalid_argument"),
        ("ask", [1, 2], 400, "invalid_argument"),
        ("query", {"workspace_id": world.w1, "query": {"metric": "revenue", "limit": 0}}, 400,
         "invalid_argument"),
        ("query", {"workspace_id": world.w1, "query": {"metric": "profit"}}, 400,
         "unknown_metric"),
        ("query", {"workspace_id": world.w1, "query": {"metric": "open_receivables",
                                                       "group_by": ["product"]}}, 400,
         "unsupported_dimension"),
        ("query", {"workspace_id": world.w1, "query": {"metric": "revenue", "compare": {
            "kind": "member", "dimension": "customer",
            "sides": [{"value": "Oak Labs"}, {"value": "Oak Labs"}]}}}, 400, "invalid_compare"),
        ("query", {"workspace_id": world.w1, "query": {"metric": "revenue", "compare": {
            "kind": "period", "sides": [{"start": "2026-01-01", "end": "2027-01-01"}]}}}, 400,
         "invalid_argument"),
    ]
    for path, body, status, code in cases:
        answer = httpx.post(f"{url}/ask/v1/{path}", json=body, headers=headers)
        assert (answer.status_code, answer.json()["hint"]) == (status, code), (body, answer.text)
        assert reader_dsn not in answer.text
    listed = httpx.post(f"{url}/ask/v1/metrics", json={"workspace_id": world.w1},
                        headers=headers).json()
    assert {m["name"] for m in listed["metrics"]} >= {"revenue", "open_receivables"}
    ran = httpx.post(f"{url}/ask/v1/query", headers=headers, json={
        "workspace_id": world.w1, "query": {"metric": "open_invoices", "group_by": ["bucket"]}})
    assert ran.status_code == 200, ran.text
    assert [r[0] for r in ran.json()["rows"]] == ["not due", "1-30", "31-60", "61-90", "90+"]
    compared = httpx.post(f"{url}/ask/v1/query", headers=headers, json={
        "workspace_id": world.w1, "query": {"metric": "open_invoices", "compare": {
            "kind": "member", "dimension": "customer",
            "sides": [{"value": "Oak Labs"}, {"value": "Harbor Foods"}]}}})
    assert compared.status_code == 200, compared.text
    assert compared.json()["columns"] == ["Oak Labs", "Harbor Foods", "difference",
                                          "change_pct"]
    assert compared.json()["compare"]["sides"][1]["column"] == "Harbor Foods"


def test_without_a_warehouse_the_endpoints_answer_503(module_db_url: str) -> None:
    with psycopg.connect(module_db_url) as conn, running_gateway(module_db_url) as url, \
            httpx.Client(base_url=url, timeout=30) as http:
        contract = HttpContract(conn, http)
        someone = user("lonely")
        workspace = contract.call("create_workspace", {"slug": f"w{uuid.uuid4().hex[:8]}",
                                                       "name": "W"}, as_=someone)["id"]
        with client(url, contract, someone) as lonely, \
                pytest.raises(ServiceUnavailable) as failed:
            lonely.ask(workspace, "revenue")
        assert failed.value.hint == "warehouse_not_configured"
        assert failed.value.status == 503


# ------------------------------------------------------------------ the CLI


def cli(*args: str) -> tuple[int, str, str]:
    from typer.testing import CliRunner

    from control_room.cli import app

    result = CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        result.exception)
    assert "Traceback" not in result.stderr
    return result.exit_code, result.stdout, " ".join(result.stderr.split())


def test_the_cli_queries_and_asks(reader_dsn: str) -> None:
    import json

    code, out, err = cli("metrics", "query", "--metric", "revenue", "--by", "month", "--where",
                         "customer=Oak Labs", "--from", "2026-01-01", "--to", "2027-01-01",
                         "--database-url", reader_dsn, "--json")
    assert code == 0, err
    answer = json.loads(out)
    assert [r[0] for r in answer["rows"]] == [f"2026-0{m}-01" for m in range(1, 7)]
    assert "'Oak Labs'" in answer["sql"] and answer["lineage"][0]["run_id"] == RUN_ID
    code, out, err = cli("ask", "top 2 customers by open receivables", "--today",
                         TODAY.isoformat(), "--database-url", reader_dsn)
    assert code == 0, err
    assert "SELECT" in out and "open_receivables" in out and "certified" in out
    assert "lineage: gold.receivables_ageing" in out and RUN_ID in out
    code, out, err = cli("ask", "invoices by month", "--database-url", reader_dsn)
    assert code == 3 and "did you mean" in out
    code, out, err = cli("ask", "revenue of Oak Labs vs Harbor Foods", "--database-url",
                         reader_dsn)
    assert code == 0, err
    assert "comparison: Oak Labs compared with Harbor Foods" in out and "difference" in out
    code, out, err = cli("ask", "revenue of Oak Labs vs Birch Co", "--database-url", reader_dsn,
                         "--json")
    assert code == 3 and json.loads(out)["compare"] is None
    assert "not both known" in json.loads(out)["reason"]
    code, out, err = cli("ask", "what is our profit", "--database-url", reader_dsn)
    assert code == 4 and "outside the semantic layer" in out
    code, out, err = cli("metrics", "query", "--metric", "open_receivables", "--by", "product",
                         "--database-url", reader_dsn)
    assert code == 2 and "cannot be split or filtered by product" in err
    code, out, err = cli("metrics", "query", "--metric", "revenue", "--where", "customer",
                         "--database-url", reader_dsn)
    assert code == 2 and "NAME=VALUE" in err
    code, out, err = cli("metrics", "query", "--metric", "revenue",
                         "--database-url", "postgresql://nobody:s3cret@127.0.0.1:1/none")
    assert code == 1 and "unreachable" in err and "s3cret" not in err + out


def test_the_cli_lists_and_shows_metrics() -> None:
    code, out, _ = cli("metrics", "list")
    assert code == 0 and "open_receivables" in out and "median_invoice_lag" in out
    code, out, _ = cli("metrics", "show", "overdue_receivables")
    assert code == 0 and "bucket_order > 0" in out and "certified: True" in out
    code, _, err = cli("metrics", "show", "profit")
    assert code == 2 and "unknown metric 'profit'" in err


# ------------------------------------------------------------------ the LLM provider


def test_the_llm_provider_proposes_guarded_uncertified_sql(warehouse: Warehouse) -> None:
    import json

    import respx

    from control_room.semantic.llm import LlmProvider

    def completion(content: str) -> httpx.Response:
        return httpx.Response(200, json={"id": "c1", "object": "chat.completion", "choices": [
            {"index": 0, "finish_reason": "stop",
             "message": {"role": "assistant", "content": content}}]})

    with respx.mock(base_url="https://llm.example/v1", assert_all_called=True) as mock:
        route = mock.post("/chat/completions")
        route.side_effect = [
            completion("```sql\nselect count(distinct product) as products "
                       "from gold.revenue;\n```"),
            completion("```sql\ndelete from gold.revenue\n```"),
            httpx.Response(500, text="overloaded"),
        ]
        provider = LlmProvider("https://llm.example/v1", "small-model", "sk-secret-key")
        asker = Asker(default_layer(), warehouse, provider)
        answer = asker.ask("how many distinct products do we carry", today=TODAY)
        sent = json.loads(route.calls[0].request.content)
        assert route.calls[0].request.headers["authorization"] == "Bearer sk-secret-key"
        assert sent["model"] == "small-model" and "gold.revenue(" in sent["messages"][0][
            "content"]
        assert answer["status"] == "answer" and answer["source"] == "llm"
        assert answer["certified"] is False and "uncertified" in answer["reason"]
        assert answer["rows"] == [[3]] and "LIMIT 1000" in answer["sql"]
        refused = asker.ask("how many distinct products do we carry", today=TODAY)
        assert refused["status"] == "refuse" and "DELETE" in refused["reason"]
        down = asker.ask("how many distinct products do we carry", today=TODAY)
        assert down["status"] == "refuse" and "HTTP 500" in down["reason"]
        assert "sk-secret-key" not in json.dumps([answer, refused, down])
        # a question the layer answers never reaches the provider
        assert asker.ask("revenue", today=TODAY)["source"] == "semantic"
        assert route.call_count == 3
