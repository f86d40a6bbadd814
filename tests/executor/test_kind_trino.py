"""The trino kind against Trino's documented client protocol, served by a respx fake that
answers from DuckDB (tests/executor/trino_fake.py): no Trino server runs here."""

from __future__ import annotations

import datetime as dt
import decimal
import threading
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from executor.digests import blob_digest
from executor.kinds import Connection, PhaseCancelled, TerminalPhaseError, TransientPhaseError
from executor.kinds.sql import SqlKind
from executor.kinds.trino import TrinoKind, TrinoServer, arrow_type
from executor.kinds.trino.client import to_arrow
from tests.executor.dbt_projects import Recorder, make_ctx
from tests.executor.trino_fake import FakeTrino

CONFIG = {"host": "trino.test", "port": 8443, "http_scheme": "https", "catalog": "lake",
          "schema": "gold", "user": "analyst"}
QUERY = ("select id, amount, cast(amount as double) / 4 as quarter, cast(null as varchar) "
         "as note from (values (cast(1 as bigint), cast(10 as bigint)), (cast(2 as bigint), "
         "cast(20 as bigint)), (cast(3 as bigint), cast(30 as bigint))) as t(id, amount)")


def _params(lake: Path, query: str = QUERY, **extra: Any) -> dict[str, Any]:
    return {"query": query, "connection": "warehouse", "connections": ["warehouse"],
            "output": {"delta": str(lake / "gold" / "amounts"), "name": "gold.amounts"},
            **extra}


def _run(tmp_path: Path, params: dict[str, Any], fake: FakeTrino, *, name: str = "out",
         config: dict[str, Any] | None = None, recorder: Recorder | None = None,
         **ctx_args: Any) -> Any:
    ctx = make_ctx(tmp_path / name, params, kind="trino", recorder=recorder,
                   lake_root=tmp_path / "lake",
                   connections={"warehouse": Connection("warehouse", "trino",
                                                        config or dict(CONFIG))},
                   **ctx_args)
    with fake.router:
        return TrinoKind().run(ctx)


def test_a_query_follows_next_uri_and_records_what_the_sql_kind_records(tmp_path: Path
                                                                         ) -> None:
    fake = FakeTrino(page_rows=2)
    recorder = Recorder()
    result = _run(tmp_path, _params(tmp_path / "lake", session={"query_max_run_time": "1h",
                                                                 "join_distribution_type":
                                                                 "BROADCAST"}),
                  fake, recorder=recorder)
    post = fake.requests[0]
    assert (post.method, post.url.path) == ("POST", "/v1/statement")
    assert post.content.decode() == QUERY
    assert post.headers["X-Trino-User"] == "analyst"
    assert (post.headers["X-Trino-Catalog"], post.headers["X-Trino-Schema"]) == ("lake", "gold")
    assert post.headers["X-Trino-Source"] == "control-room"
    assert post.headers["X-Trino-Session"] == ("join_distribution_type=BROADCAST,"
                                               "query_max_run_time=1h")
    gets = [r for r in fake.requests if r.method == "GET"]
    assert len(gets) >= 3        # queued -> executing -> two pages of two rows and one
    assert all(r.url.path.startswith("/v1/statement/") for r in gets)

    [query] = recorder.of("TRINO_QUERY")[:1]
    assert query["query_id"].endswith("_fake0") and query["info_uri"].startswith("https://")
    states = [p["state"] for p in recorder.of("TRINO_QUERY_STATS")]
    assert states[0] == "QUEUED" and states[-1] == "FINISHED" and "RUNNING" in states
    finished = recorder.of("TRINO_QUERY")[-1]
    assert (finished["rows"], finished["splits"], finished["state"]) == (3, 4, "FINISHED")
    assert isinstance(finished["elapsed_ms"], int)

    [entry] = result.output_manifest["tables"]
    assert (entry["name"], entry["rows"]) == ("gold.amounts", 3)
    assert result.output_manifest["trino"]["query_id"] == query["query_id"]

    # the same query run by the sql kind (DuckDB) gives byte-identical records and table
    sql_ctx = make_ctx(tmp_path / "sql", {"query": QUERY, "output": {
        "delta": str(tmp_path / "lake" / "sql" / "amounts"), "name": "gold.amounts"}},
        kind="sql", lake_root=tmp_path / "lake")
    sql_result = SqlKind().run(sql_ctx)
    assert sql_result.output_manifest["tables"][0]["digest"] == entry["digest"]
    for name in ("query.sql", "result_manifest.json", "preview.json"):
        assert blob_digest(tmp_path / "out" / name) == blob_digest(tmp_path / "sql" / name)


def test_cancel_deletes_the_query_on_the_server(tmp_path: Path) -> None:
    fake = FakeTrino()
    cancel = threading.Event()
    timer = threading.Timer(0.5, cancel.set)
    timer.start()
    try:
        with pytest.raises(PhaseCancelled, match="DELETE sent"):
            _run(tmp_path, _params(tmp_path / "lake", "select count(*) from range(1000000000) "
                                   "a, range(1000000000) b"), fake, cancel=cancel)
    finally:
        timer.cancel()
    deletes = [r for r in fake.requests if r.method == "DELETE"]
    [query] = fake.queries.values()
    assert len(deletes) == 1 and query.id in deletes[0].url.path and query.cancelled
    assert not (tmp_path / "lake" / "gold" / "amounts").exists()


def test_busy_answers_are_retried_and_errors_keep_trinos_classification(tmp_path: Path
                                                                         ) -> None:
    fake = FakeTrino()
    fake.busy_answers = 3           # 503: "retry later", as the protocol says
    result = _run(tmp_path, _params(tmp_path / "lake"), fake)
    assert result.output_manifest["result_rows"] == 3
    assert sum(1 for r in fake.requests if r.method == "POST") == 4

    with pytest.raises(TerminalPhaseError) as raised:
        _run(tmp_path, _params(tmp_path / "lake", "select nope from (values (1)) as t(x)"),
             FakeTrino(), name="bad")
    assert "COLUMN_NOT_FOUND (USER_ERROR" in raised.value.message
    assert raised.value.user_data and raised.value.error_type == "COLUMN_NOT_FOUND"
    with pytest.raises(TransientPhaseError, match="GENERIC_EXTERNAL"):
        _run(tmp_path, _params(tmp_path / "lake", "select * from read_csv('/nonexistent/x')"),
             FakeTrino(), name="io")
    with pytest.raises(TerminalPhaseError, match="no result set"):
        _run(tmp_path, _params(tmp_path / "lake", "drop table if exists x"), FakeTrino(),
             name="ddl")


def test_credentials_travel_only_as_the_protocol_says(tmp_path: Path) -> None:
    fake = FakeTrino()
    _run(tmp_path, _params(tmp_path / "lake"), fake,
         config={**CONFIG, "jwt": "eyJ.secret-token.sig"})
    assert fake.requests[0].headers["Authorization"] == "Bearer eyJ.secret-token.sig"
    fake = FakeTrino()
    _run(tmp_path, _params(tmp_path / "lake"), fake, name="basic",
         config={**CONFIG, "password": "s3cret-pass"})
    assert fake.requests[0].headers["Authorization"].startswith("Basic ")
    server = TrinoServer.from_connection(Connection("w", "trino", {**CONFIG, "jwt": "tok"}))
    assert "tok" not in repr(server)
    with pytest.raises(TerminalPhaseError, match="only over https"):
        TrinoServer.from_connection(Connection("w", "trino", {
            **CONFIG, "http_scheme": "http", "password": "p"}))
    with pytest.raises(TerminalPhaseError, match="unknown fields"):
        TrinoServer.from_connection(Connection("w", "trino", {**CONFIG, "dsn": "x"}))
    with pytest.raises(TerminalPhaseError, match="not trino"):
        TrinoServer.from_connection(Connection("w", "postgres", CONFIG))


def test_trino_types_become_arrow_types() -> None:
    assert arrow_type("bigint") == pa.int64() and arrow_type("varchar(10)") == pa.string()
    assert arrow_type("decimal(12, 2)") == pa.decimal128(12, 2)
    assert arrow_type("timestamp(3) with time zone") == pa.timestamp("us", tz="UTC")
    assert arrow_type("array(bigint)") == pa.string()
    table = to_arrow(
        [{"name": "d", "type": "decimal(5,2)"}, {"name": "day", "type": "date"},
         {"name": "at", "type": "timestamp(3)"},
         {"name": "tz", "type": "timestamp(3) with time zone"},
         {"name": "f", "type": "double"}, {"name": "b", "type": "varbinary"},
         {"name": "a", "type": "array(bigint)"}, {"name": "t", "type": "time(3)"}],
        [["1.50", "2026-12-03", "2026-12-03 10:11:12.345", "2026-12-03 10:11:12.345 +01:00",
          "NaN", "AAE=", [1, 2], "10:11:12.5"]])
    row = table.to_pylist()[0]
    assert row["d"] == decimal.Decimal("1.50") and row["day"] == dt.date(2026, 12, 3)
    assert row["at"] == dt.datetime(2026, 12, 3, 10, 11, 12, 345000)
    assert row["tz"] == dt.datetime(2026, 12, 3, 9, 11, 12, 345000, tzinfo=dt.UTC)
    assert row["f"] != row["f"] and row["b"] == b"\x00\x01" and row["a"] == "[1, 2]"
    assert row["t"] == dt.time(10, 11, 12, 500000)
