"""The sql kind against real DuckDB and real Delta tables in temporary directories, with a
PhaseContext built by hand (no worker, no control plane)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable, write_deltalake

from executor.digests import blob_digest, table_digest
from executor.kinds import (
    KINDS,
    EventLevel,
    PhaseCancelled,
    PhaseContext,
    PhaseTimeout,
    SchemaBlocked,
    TerminalPhaseError,
)
from executor.kinds.sql import RESULT_MANIFEST_FORMAT, SqlKind, parse_params
from executor.tables import scan_dataset, write_table

JOIN = """
select o.id, o.customer_id, c.name as customer, o.amount
from orders o join customers c on c.id = o.customer_id
"""
HUGE = "select count(*) as n from range(1000000000) a, range(1000000000) b"


@dataclass
class Recorder:
    calls: list[tuple[Any, ...]] = field(default_factory=list)

    def emit(
        self,
        type: str,
        message: str,
        level: EventLevel = "info",
        payload: Mapping[str, Any] | None = None,
    ) -> None:
        self.calls.append(("event", type, message, level, payload))

    def progress(self, value: float | Mapping[str, Any]) -> None:
        self.calls.append(("progress", value))


def make_ctx(
    out_dir: Path,
    params: Mapping[str, Any],
    *,
    inputs: Mapping[str, Any] | None = None,
    cancel: threading.Event | None = None,
    timeout_s: float | None = 60.0,
    code_dir: Path | None = None,
    lake_root: Path | None = None,
) -> PhaseContext:
    recorder = Recorder()
    return PhaseContext(
        run_id="run-1",
        phase="transform",
        attempt=1,
        kind="sql",
        params=params,
        inputs=inputs or {},
        git_sha="abc123",
        input_manifest={},
        output_dir=out_dir,
        emit=recorder.emit,
        progress=recorder.progress,
        cancel=cancel or threading.Event(),
        timeout_s=timeout_s,
        code_dir=code_dir,
        lake_root=lake_root,
    )


@pytest.fixture()
def lake(tmp_path: Path) -> Path:
    """orders (two versions: v0 three rows, v1 four) and customers, as Delta tables."""
    root = tmp_path / "lake"
    orders_v0 = pa.table({
        "id": pa.array([1, 2, 3], pa.int64()),
        "customer_id": pa.array([10, 20, 10], pa.int64()),
        "amount": pa.array([5.5, 7.25, 1.0], pa.float64()),
    })
    write_deltalake(str(root / "orders"), orders_v0, mode="overwrite")
    orders_v1 = pa.table({
        "id": pa.array([4], pa.int64()),
        "customer_id": pa.array([30], pa.int64()),
        "amount": pa.array([2.0], pa.float64()),
    })
    write_deltalake(str(root / "orders"), orders_v1, mode="append")
    customers = pa.table({
        "id": pa.array([10, 20, 30], pa.int64()),
        "name": pa.array(["ada", "bob", "cy"], pa.string()),
    })
    write_deltalake(str(root / "customers"), customers, mode="overwrite")
    return root


def join_params(lake: Path, out: str, **extra: Any) -> dict[str, Any]:
    params: dict[str, Any] = {
        "query": JOIN,
        "inputs": {
            "orders": {"delta": str(lake / "orders"), "version": None},
            "customers": {"delta": str(lake / "customers")},
        },
        "output": {"delta": out, "mode": "overwrite", "name": "silver.orders"},
    }
    params.update(extra)
    return params


def rows_of(uri: str) -> list[dict[str, Any]]:
    table = DeltaTable(uri).to_pyarrow_table()
    return sorted(table.to_pylist(), key=lambda row: tuple(row.values()))


def test_registered() -> None:
    assert KINDS["sql"] is SqlKind
    assert SqlKind.NAME == "sql"
    assert sorted(SqlKind.CONNECTION_TYPES) == ["postgres"]   # Postgres inputs


def test_join_of_two_delta_inputs(lake: Path, tmp_path: Path) -> None:
    out = str(tmp_path / "silver_orders")
    ctx = make_ctx(tmp_path / "o1", join_params(lake, out))
    result = SqlKind().run(ctx)

    assert rows_of(out) == [
        {"id": 1, "customer_id": 10, "customer": "ada", "amount": 5.5},
        {"id": 2, "customer_id": 20, "customer": "bob", "amount": 7.25},
        {"id": 3, "customer_id": 10, "customer": "ada", "amount": 1.0},
        {"id": 4, "customer_id": 30, "customer": "cy", "amount": 2.0},
    ]
    names = [(o.name, o.media_type, o.path.name) for o in result.outputs]
    assert names == [
        ("query.sql", "application/sql", "query.sql"),
        ("result_manifest.json", "application/json", "result_manifest.json"),
        ("preview.json", "application/json", "preview.json"),
    ]
    for output in result.outputs:
        assert output.path.parent == ctx.output_dir and output.path.is_file()
    assert (ctx.output_dir / "query.sql").read_text() == JOIN

    expected = table_digest(out)
    assert expected.version == 0
    manifest = result.output_manifest
    assert manifest["table"] == {
        "uri": out, "version": 0, "digest": expected.digest, "rows": 4,
        "name": "silver.orders",
    }
    assert manifest["query_digest"] == blob_digest(JOIN.encode())
    assert manifest["result_rows"] == 4

    doc = json.loads((ctx.output_dir / "result_manifest.json").read_text())
    assert doc["format"] == RESULT_MANIFEST_FORMAT
    assert doc["query_digest"] == blob_digest(JOIN.encode())
    assert doc["result"]["rows"] == 4
    assert doc["table"]["digest"] == expected.digest
    assert doc["table"]["rows"] == 4
    assert [c["name"] for c in doc["result"]["schema"]] == [
        "id", "customer_id", "customer", "amount"
    ]
    assert [c["type"] for c in doc["table"]["schema"]] == ["int64", "int64", "string", "double"]

    preview = json.loads((ctx.output_dir / "preview.json").read_text())
    assert preview == {
        "columns": ["id", "customer_id", "customer", "amount"],
        "rows": [[1, 10, "ada", 5.5], [2, 20, "bob", 7.25], [3, 10, "ada", 1.0],
                 [4, 30, "cy", 2.0]],
    }
    progress = [c[1] for c in ctx_calls(ctx) if c[0] == "progress"]
    assert progress[-1] == 1.0


def ctx_calls(ctx: PhaseContext) -> list[tuple[Any, ...]]:
    recorder = ctx.emit.__self__  # type: ignore[attr-defined]
    calls: list[tuple[Any, ...]] = recorder.calls
    return calls


def test_deterministic_into_two_tables(lake: Path, tmp_path: Path) -> None:
    params_a = join_params(lake, str(tmp_path / "a"), preview_rows=3)
    params_b = join_params(lake, str(tmp_path / "b"), preview_rows=3)
    ra = SqlKind().run(make_ctx(tmp_path / "oa", params_a))
    rb = SqlKind().run(make_ctx(tmp_path / "ob", params_b))
    assert ra.output_manifest["table"]["digest"] == rb.output_manifest["table"]["digest"]
    assert ra.output_manifest["query_digest"] == rb.output_manifest["query_digest"]
    for name in ("query.sql", "result_manifest.json", "preview.json"):
        assert (tmp_path / "oa" / name).read_bytes() == (tmp_path / "ob" / name).read_bytes()
    preview = json.loads((tmp_path / "oa" / "preview.json").read_text())
    assert len(preview["rows"]) == 3


def test_time_travel_input(lake: Path, tmp_path: Path) -> None:
    out = str(tmp_path / "v0")
    params = join_params(lake, out)
    params["inputs"]["orders"]["version"] = 0
    result = SqlKind().run(make_ctx(tmp_path / "o", params))
    assert result.output_manifest["table"]["rows"] == 3
    assert [row["id"] for row in rows_of(out)] == [1, 2, 3]


def test_upstream_input_reads_the_version_written(lake: Path, tmp_path: Path) -> None:
    out = str(tmp_path / "gold")
    params = {
        "query": "select customer_id, sum(amount) as total from raw group by customer_id",
        "inputs": {"raw": {"upstream": "extract"}},
        "output": {"delta": out, "mode": "overwrite"},
    }
    upstream = {"extract": {"table": {"uri": str(lake / "orders"), "version": 0}}}
    result = SqlKind().run(make_ctx(tmp_path / "o", params, inputs=upstream))
    assert rows_of(out) == [
        {"customer_id": 10, "total": 6.5}, {"customer_id": 20, "total": 7.25},
    ]
    assert result.output_manifest["table"]["rows"] == 2


def test_parquet_input_file_and_glob(tmp_path: Path) -> None:
    pq.write_table(pa.table({"k": [1, 2], "v": ["a", "b"]}), tmp_path / "p1.parquet")
    pq.write_table(pa.table({"k": [3], "v": ["c"]}), tmp_path / "p2.parquet")
    out = str(tmp_path / "from_glob")
    params = {
        "query": "select k, upper(v) as v from items where k > 1",
        "inputs": {"items": {"parquet": str(tmp_path / "p*.parquet")}},
        "output": {"delta": out},
    }
    result = SqlKind().run(make_ctx(tmp_path / "o", params))
    assert rows_of(out) == [{"k": 2, "v": "B"}, {"k": 3, "v": "C"}]
    assert result.output_manifest["table"]["digest"] == table_digest(out).digest

    out_one = str(tmp_path / "from_file")
    params["inputs"] = {"items": {"parquet": str(tmp_path / "p1.parquet")}}
    params["output"] = {"delta": out_one}
    SqlKind().run(make_ctx(tmp_path / "o2", params))
    assert rows_of(out_one) == [{"k": 2, "v": "B"}]


def test_query_file_from_the_checkout(lake: Path, tmp_path: Path) -> None:
    code = tmp_path / "checkout"
    (code / "models").mkdir(parents=True)
    (code / "models" / "join.sql").write_text(JOIN)
    (tmp_path / "outside.sql").write_text("select 'outside' as secret")
    params = join_params(lake, str(tmp_path / "t"))
    del params["query"]
    params.update(query_file="models/join.sql")
    result = SqlKind().run(make_ctx(tmp_path / "o", params, code_dir=code))
    assert result.output_manifest["query_digest"] == blob_digest(JOIN.encode())
    assert (tmp_path / "o" / "query.sql").read_text() == JOIN

    # the code_dir param: a directory inside the checkout, the file relative to it
    params.update(query_file="join.sql", code_dir="models")
    SqlKind().run(make_ctx(tmp_path / "o1", params, code_dir=code))
    assert (tmp_path / "o1" / "query.sql").read_text() == JOIN
    params.update(code_dir=str(code / "models"))              # absolute, inside: the same
    SqlKind().run(make_ctx(tmp_path / "o1b", params, code_dir=code))

    params.update(query_file="../outside.sql", code_dir=None)
    del params["code_dir"]
    with pytest.raises(TerminalPhaseError, match="leaves code_dir"):
        SqlKind().run(make_ctx(tmp_path / "o2", params, code_dir=code))
    params.update(query_file="outside.sql", code_dir=str(tmp_path))
    with pytest.raises(TerminalPhaseError, match=r"'code_dir' .* is not inside the run's "
                                                 r"checkout"):
        SqlKind().run(make_ctx(tmp_path / "o3", params, code_dir=code))
    assert not (tmp_path / "o2" / "query.sql").exists()
    assert not (tmp_path / "o3").exists()


def test_query_file_limits(tmp_path: Path) -> None:
    code = tmp_path / "checkout"
    code.mkdir()
    (code / "big.sql").write_text("select 1 as x -- " + "x" * (1024 * 1024))
    (code / "binary.sql").write_bytes(b"select \xff\xfe")
    (code / "blank.sql").write_text("  \n")
    (code / "dir.sql").mkdir()
    out = {"delta": str(tmp_path / "t")}
    for name, why in (("big.sql", "larger than 1048576 bytes"), ("binary.sql", "not UTF-8"),
                      ("blank.sql", "is empty"), ("dir.sql", "not a regular file|cannot be "
                                                             "opened"),
                      ("nope.sql", "query file not found: 'nope.sql'")):
        with pytest.raises(TerminalPhaseError, match=why) as info:
            SqlKind().run(make_ctx(tmp_path / "o", {"query_file": name, "output": out},
                                   code_dir=code))
        assert "xxxx" not in info.value.message and "\\xff" not in info.value.message
    assert not (tmp_path / "o").exists()


def test_query_file_without_a_checkout_is_read_from_the_worker_s_pipelines(
        tmp_path: Path) -> None:
    from executor.checkout import OWN_CODE_BASE, OWN_CODE_ROOT

    assert OWN_CODE_ROOT == OWN_CODE_BASE / "pipelines" and OWN_CODE_ROOT.is_dir()
    existing = next(OWN_CODE_ROOT.rglob("*.py")).relative_to(OWN_CODE_BASE).as_posix()
    params = {"query_file": existing, "output": {"delta": str(tmp_path / "t")}}
    with pytest.raises(TerminalPhaseError, match="Parser Error"):   # read: python, not SQL
        SqlKind().run(make_ctx(tmp_path / "o", params))
    for outside in ("pyproject.toml", "executor/kinds/sql/__init__.py"):  # beside pipelines/
        params["query_file"] = outside
        with pytest.raises(TerminalPhaseError, match="not inside the worker's own code"):
            SqlKind().run(make_ctx(tmp_path / "o2", params))


def test_merge_output_idempotent(lake: Path, tmp_path: Path) -> None:
    out = str(tmp_path / "merged")
    params = join_params(lake, out)
    params["output"] = {"delta": out, "mode": "merge", "keys": ["id"], "name": "silver.m"}
    first = SqlKind().run(make_ctx(tmp_path / "o1", params))
    second = SqlKind().run(make_ctx(tmp_path / "o2", params))
    assert first.output_manifest["table"]["rows"] == second.output_manifest["table"]["rows"] == 4
    assert first.output_manifest["table"]["digest"] == second.output_manifest["table"]["digest"]
    assert second.output_manifest["table"]["version"] > first.output_manifest["table"]["version"]
    assert len(rows_of(out)) == 4
    assert second.output_manifest["table"]["digest"] == table_digest(out).digest


def test_sql_syntax_error_is_terminal(lake: Path, tmp_path: Path) -> None:
    params = join_params(lake, str(tmp_path / "t"), query="selec id from orders")
    with pytest.raises(TerminalPhaseError, match="Parser Error: syntax error") as info:
        SqlKind().run(make_ctx(tmp_path / "o", params))
    assert info.value.error_type == "ParserException"
    assert not (tmp_path / "t").exists()


def test_unknown_table_in_query_is_terminal(lake: Path, tmp_path: Path) -> None:
    params = join_params(lake, str(tmp_path / "t"), query="select * from nowhere")
    with pytest.raises(TerminalPhaseError, match="Catalog Error"):
        SqlKind().run(make_ctx(tmp_path / "o", params))


def test_query_cannot_read_undeclared_files(lake: Path, tmp_path: Path) -> None:
    query = f"select * from read_parquet('{tmp_path}/*.parquet')"
    params = join_params(lake, str(tmp_path / "t"), query=query)
    with pytest.raises(TerminalPhaseError, match="disabled by configuration"):
        SqlKind().run(make_ctx(tmp_path / "o", params))


def test_missing_input_table_is_terminal(lake: Path, tmp_path: Path) -> None:
    params = join_params(lake, str(tmp_path / "t"))
    params["inputs"]["customers"] = {"delta": str(lake / "no_such_table")}
    with pytest.raises(TerminalPhaseError, match="input 'customers': no Delta table"):
        SqlKind().run(make_ctx(tmp_path / "o", params))

    params = join_params(lake, str(tmp_path / "t"))
    params["inputs"]["orders"]["version"] = 7
    with pytest.raises(TerminalPhaseError, match="has no version 7"):
        SqlKind().run(make_ctx(tmp_path / "o2", params))

    params = join_params(lake, str(tmp_path / "t"))
    params["inputs"]["orders"] = {"parquet": str(tmp_path / "none*.parquet")}
    with pytest.raises(TerminalPhaseError, match="no Parquet file matches"):
        SqlKind().run(make_ctx(tmp_path / "o3", params))


def test_breaking_schema_change_is_terminal(lake: Path, tmp_path: Path) -> None:
    out = str(tmp_path / "t")
    SqlKind().run(make_ctx(tmp_path / "o1", join_params(lake, out)))
    params = join_params(lake, out)
    params["query"] = (
        "select o.id, o.customer_id, c.name as customer, o.amount::float as amount "
        "from orders o join customers c on c.id = o.customer_id"
    )
    with pytest.raises(TerminalPhaseError, match=r"silver\.orders: column amount narrowed"
                       ) as info:
        SqlKind().run(make_ctx(tmp_path / "o2", params))
    assert isinstance(info.value, SchemaBlocked)
    assert info.value.error_type == "SchemaBlocked"
    assert (info.value.table, info.value.uri) == ("silver.orders", out)
    assert info.value.changes == [{"column": "amount", "change": "narrowed",
                                   "old_type": "float64", "new_type": "float32"}]
    assert info.value.schema is not None
    assert {c["name"]: c["type"] for c in info.value.schema}["amount"] == "float32"
    assert DeltaTable(out).version() == 0

    params["query"] = "select o.id, o.customer_id from orders o"
    with pytest.raises(TerminalPhaseError, match="column amount removed"):
        SqlKind().run(make_ctx(tmp_path / "o3", params))


def test_bad_params_are_terminal(tmp_path: Path) -> None:
    with pytest.raises(TerminalPhaseError, match="exactly one of 'query' and 'query_file'"):
        parse_params({"output": {"delta": "x"}})
    with pytest.raises(TerminalPhaseError, match="merge needs"):
        parse_params({"query": "select 1", "output": {"delta": "x", "mode": "merge"}})
    with pytest.raises(TerminalPhaseError, match="not an identifier"):
        parse_params({"query": "select 1", "inputs": {"a b": {"parquet": "p"}},
                      "output": {"delta": "x"}})
    with pytest.raises(TerminalPhaseError, match="exactly one of 'delta'"):
        parse_params({"query": "select 1", "inputs": {"a": {}}, "output": {"delta": "x"}})
    with pytest.raises(TerminalPhaseError, match="preview_rows"):
        parse_params({"query": "select 1", "output": {"delta": "x"}, "preview_rows": -1})


def test_cancel_interrupts_a_long_query(lake: Path, tmp_path: Path) -> None:
    cancel = threading.Event()
    params = join_params(lake, str(tmp_path / "t"), query=HUGE)
    ctx = make_ctx(tmp_path / "o", params, cancel=cancel)
    timer = threading.Timer(0.5, cancel.set)
    timer.start()
    started = time.monotonic()
    try:
        with pytest.raises(PhaseCancelled):
            SqlKind().run(ctx)
    finally:
        timer.cancel()
    assert time.monotonic() - started < 3.0
    assert not (tmp_path / "t").exists()


def test_timeout_interrupts_a_long_query(lake: Path, tmp_path: Path) -> None:
    params = join_params(lake, str(tmp_path / "t"), query=HUGE)
    started = time.monotonic()
    with pytest.raises(PhaseTimeout, match="timeout"):
        SqlKind().run(make_ctx(tmp_path / "o", params, timeout_s=0.5))
    assert time.monotonic() - started < 3.0
    assert not (tmp_path / "t").exists()


def test_preview_values_are_json(tmp_path: Path) -> None:
    out = str(tmp_path / "t")
    query = (
        "select * from (values "
        "(2, date '2024-01-02', 1.50::decimal(10,2), 'x'::blob, 'nan'::double, [1, 2]), "
        "(1, date '2024-01-01', 2.25::decimal(10,2), null, -1.5, null)"
        ") t(id, d, price, raw, f, l)"
    )
    params = {"query": query, "output": {"delta": out}}
    SqlKind().run(make_ctx(tmp_path / "o", params))
    preview = json.loads((tmp_path / "o" / "preview.json").read_text())
    assert preview == {
        "columns": ["id", "d", "price", "raw", "f", "l"],
        "rows": [[1, "2024-01-01", "2.25", None, -1.5, None],
                 [2, "2024-01-02", "1.50", "eA==", "nan", [1, 2]]],
    }


def test_several_statements(tmp_path: Path) -> None:
    out = str(tmp_path / "t")
    query = "create temp table s as select 1 as x union all select 2; select x * 10 as y from s"
    SqlKind().run(make_ctx(tmp_path / "o", {"query": query, "output": {"delta": out}}))
    assert rows_of(out) == [{"y": 10}, {"y": 20}]


def test_duckdb_error_classes() -> None:
    from executor.kinds.base import TransientPhaseError
    from executor.kinds.sql import _duckdb_error

    assert isinstance(_duckdb_error(duckdb.IOException("IO Error: disk")), TransientPhaseError)
    assert isinstance(_duckdb_error(duckdb.OutOfMemoryException("oom")), TransientPhaseError)
    for error in (duckdb.ParserException("p"), duckdb.BinderException("b"),
                  duckdb.CatalogException("c"), duckdb.ConversionException("v")):
        mapped = _duckdb_error(error)
        assert isinstance(mapped, TerminalPhaseError)
        assert mapped.message == f"sql query failed: {error}" and mapped.user_data


def test_conversion_error_in_data_is_terminal(tmp_path: Path) -> None:
    params = {"query": "select 'abc'::integer as x", "output": {"delta": str(tmp_path / "t")}}
    with pytest.raises(TerminalPhaseError, match="Conversion Error"):
        SqlKind().run(make_ctx(tmp_path / "o", params))


def test_a_string_filter_reads_a_merged_table(tmp_path: Path) -> None:
    """delta-rs's merge writes `string_view` files; a filter DuckDB pushes into the scan of
    such a table (some files merged, some not) still answers."""
    uri = str(tmp_path / "t")
    write_table(uri, pa.table({"id": [1, 2], "s": ["a", "b"]}), mode="overwrite", keys=["id"])
    write_table(uri, pa.table({"id": [5, 6], "s": ["e", "f"]}), mode="append")
    write_table(uri, pa.table({"id": [2, 3], "s": ["x", "c"]}), mode="merge", keys=["id"])
    dataset = scan_dataset(DeltaTable(uri))
    assert dataset.schema.field("s").type == pa.string_view()     # a merged file says so
    for value, rows in (("x", [(2, "x")]), ("e", [(5, "e")]), ("a", [(1, "a")])):
        found = duckdb.execute(f"select id, s from dataset where s = '{value}'").fetchall()
        assert found == rows
