"""Table writes under the catalog's rules (`executor.datasets`), and the sql kind's use of
them, against real Delta tables under tmp (no control plane: the states are given)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from deltalake import DeltaTable

from executor.datasets import write_dataset, written_digest
from executor.digests import table_digest
from executor.kinds import DatasetBlocked, PhaseContext, SchemaBlocked, TerminalPhaseError
from executor.kinds.sql import SqlKind
from executor.tables import read_schema


def items(ids: list[int], id_type: Any = None, **extra: Any) -> Any:
    return pa.table({"id": pa.array(ids, id_type or pa.int64()),
                     "sku": pa.array([f"s-{i}" for i in ids]), **extra})


def test_the_entry_of_each_kind_of_write(tmp_path: Path) -> None:
    uri = str(tmp_path / "items")
    first = write_dataset({}, "silver.items", uri, items([1, 2]), mode="merge", keys=["id"])
    assert first.entry == {
        "name": "silver.items", "uri": uri, "version": 0,
        "digest": table_digest(uri, 0).digest, "rows": 2, "layer": None,
        "schema_change": {"change": "INITIAL", "changes": [], "schema": [
            {"name": "id", "type": "int64", "nullable": True, "key": 1},
            {"name": "sku", "type": "string", "nullable": True}]}}
    same = write_dataset({}, "silver.items", uri, items([3]), mode="merge", keys=["id"],
                         layer="silver")
    assert (same.entry["version"], same.entry["rows"], same.entry["layer"]) == (1, 3, "silver")
    assert same.entry["schema_change"]["change"] == "NONE"
    wider = write_dataset({}, "silver.items", uri,
                          items([4], note=pa.array(["n"])), mode="append")
    assert wider.entry["schema_change"]["change"] == "NON_BREAKING"
    assert wider.entry["schema_change"]["changes"] == [
        {"column": "note", "change": "added", "old_type": None, "new_type": "string"}]
    assert [c["name"] for c in wider.entry["schema_change"]["schema"]] == ["id", "sku", "note"]


def test_a_breaking_change_is_schema_blocked_and_writes_nothing(tmp_path: Path) -> None:
    uri = str(tmp_path / "items")
    write_dataset({}, "silver.items", uri, items([1]), mode="overwrite")
    with pytest.raises(SchemaBlocked) as caught:
        write_dataset({}, "silver.items", uri, items([2], pa.int32()), mode="append",
                      layer="silver")
    error = caught.value
    assert "silver.items: column id narrowed int64 → int32" in error.message
    assert "control-room datasets unblock" in error.message
    assert (error.table, error.uri, error.layer, error.retryable) == (
        "silver.items", uri, "silver", False)
    assert error.changes == [{"column": "id", "change": "narrowed", "old_type": "int64",
                              "new_type": "int32"}]
    assert error.schema == [{"name": "id", "type": "int32", "nullable": True},
                            {"name": "sku", "type": "string", "nullable": True}]
    assert DeltaTable(uri).version() == 0


def test_a_blocked_dataset_is_not_written_at_all(tmp_path: Path) -> None:
    uri = str(tmp_path / "items")
    write_dataset({}, "silver.items", uri, items([1]), mode="overwrite")
    with pytest.raises(DatasetBlocked, match=r"silver\.items is blocked.*unblock"):
        write_dataset({"silver.items": "blocked"}, "silver.items", uri, items([2]),
                      mode="append")
    assert DeltaTable(uri).version() == 0
    # another dataset's state does not matter
    other = write_dataset({"silver.other": "blocked"}, "silver.items", uri, items([2]),
                          mode="append")
    assert other.entry["version"] == 1


def test_an_accepted_dataset_applies_its_breaking_change(tmp_path: Path) -> None:
    uri = str(tmp_path / "items")
    write_dataset({}, "silver.items", uri, items([1, 2]), mode="overwrite")
    written = write_dataset({"silver.items": "accepted"}, "silver.items", uri,
                            items([3], pa.int32()), mode="append")
    assert written.entry["version"] == 1 and written.entry["rows"] == 3
    change = written.entry["schema_change"]
    assert change["change"] == "BREAKING"
    assert change["schema"][0] == {"name": "id", "type": "int32", "nullable": True}
    assert read_schema(uri).field("id").type == pa.int32()


@pytest.mark.parametrize(("name", "layer", "message"), [
    ("/tmp/lake/items", None, "is not a catalog name"),
    ("", None, "is not a catalog name"),
    ("silver.items", "platinum", "layer 'platinum' is not one of"),
])
def test_names_and_layers_the_catalog_refuses_are_terminal(
        tmp_path: Path, name: str, layer: str | None, message: str) -> None:
    uri = tmp_path / "items"
    with pytest.raises(TerminalPhaseError, match=message):
        write_dataset({}, name, str(uri), items([1]), mode="overwrite", layer=layer)
    assert not uri.exists()


# -- the sql kind ------------------------------------------------------------------------------


def sql_ctx(tmp_path: Path, output: dict[str, Any], datasets: dict[str, str] | None = None,
            query: str = "select 1::bigint as id, 'a' as sku") -> PhaseContext:
    return PhaseContext(
        run_id="run-1", phase="items", attempt=1, kind="sql",
        params={"query": query, "output": output}, inputs={}, git_sha="abc", input_manifest={},
        output_dir=tmp_path / "out", emit=lambda *a, **k: None, progress=lambda v: None,
        cancel=threading.Event(), timeout_s=60, datasets=datasets or {})


def test_a_named_sql_output_is_listed_in_tables(tmp_path: Path) -> None:
    uri = str(tmp_path / "items")
    manifest = SqlKind().run(sql_ctx(tmp_path, {"delta": uri, "name": "gold.items",
                                                "layer": "gold"})).output_manifest
    (entry,) = manifest["tables"]
    assert (entry["name"], entry["uri"], entry["version"], entry["layer"]) == (
        "gold.items", uri, 0, "gold")
    assert entry["digest"] == manifest["table"]["digest"]
    assert entry["schema_change"]["change"] == "INITIAL"


def test_an_unnamed_sql_output_is_not_catalogued(tmp_path: Path) -> None:
    uri = str(tmp_path / "items")
    manifest = SqlKind().run(sql_ctx(tmp_path, {"delta": uri})).output_manifest
    assert manifest["tables"] == []
    assert manifest["table"]["name"] == uri and manifest["table"]["version"] == 0


def test_a_blocked_sql_output_is_refused(tmp_path: Path) -> None:
    uri = tmp_path / "items"
    with pytest.raises(DatasetBlocked):
        SqlKind().run(sql_ctx(tmp_path, {"delta": str(uri), "name": "gold.items"},
                              {"gold.items": "blocked"}))
    assert not uri.exists()


@pytest.mark.parametrize(("output", "message"), [
    ({"name": "../items"}, "'output.name': dataset name '../items' is not a catalog name"),
    ({"layer": "gold"}, "'output.layer' needs 'output.name'"),
])
def test_bad_catalog_params_of_the_sql_kind(tmp_path: Path, output: dict[str, Any],
                                            message: str) -> None:
    with pytest.raises(TerminalPhaseError, match=message):
        SqlKind().run(sql_ctx(tmp_path, {"delta": str(tmp_path / "items"), **output}))


def _many_types(n: int, offset: int = 0) -> pa.Table:
    import datetime as dt
    import decimal

    ids = list(range(offset, offset + n))
    return pa.table({
        "id": pa.array(ids, pa.int64()),
        "small": pa.array([i % 100 for i in ids], pa.int32()),
        "amount": pa.array([decimal.Decimal(i) / 100 for i in ids], pa.decimal128(12, 2)),
        "ratio": pa.array([i / 7 if i % 5 else None for i in ids], pa.float64()),
        "name": pa.array([f"n{i}" if i % 3 else None for i in ids], pa.string()),
        "flag": pa.array([i % 2 == 0 for i in ids], pa.bool_()),
        "day": pa.array([dt.date(2026, 1, 1) + dt.timedelta(days=i % 40) for i in ids]),
        "at": pa.array([dt.datetime(2026, 1, 1, 12) + dt.timedelta(seconds=i) for i in ids],
                       pa.timestamp("us")),
        "at_utc": pa.array([dt.datetime(2026, 1, 1, tzinfo=dt.UTC) + dt.timedelta(minutes=i)
                            for i in ids], pa.timestamp("us", tz="UTC")),
        "ns": pa.array([dt.datetime(2026, 2, 1) + dt.timedelta(milliseconds=i) for i in ids],
                       pa.timestamp("ns")),
        "tags": pa.array([[f"t{i % 4}"] for i in ids], pa.list_(pa.string())),
    })


@pytest.mark.parametrize("mode", ["overwrite", "append"])
def test_the_in_memory_digest_is_the_digest_read_back(tmp_path: Path, mode: str) -> None:
    """A new table, and an overwrite of an existing one, are hashed in memory; the digest is
    exactly the one read back from the version written. An append to existing rows is read
    back (its version holds more than the batch)."""
    uri = str(tmp_path / "t")
    first = write_dataset({}, "silver.types", uri, _many_types(300), mode=mode,  # type: ignore[arg-type]
                          keys=["id"])
    assert first.result.content is not None
    assert first.entry["digest"] == table_digest(uri, first.result.version).digest
    # hashed in memory indeed: nothing is read (there is no table at this path)
    assert written_digest(str(tmp_path / "nowhere"), first.result).digest == first.entry["digest"]
    second = write_dataset({}, "silver.types", uri, _many_types(200, offset=1000),
                           mode=mode, keys=["id"])  # type: ignore[arg-type]
    assert (second.result.content is None) == (mode == "append")
    assert second.entry["digest"] == table_digest(uri, second.result.version).digest
    assert second.entry["rows"] == (500 if mode == "append" else 200)
