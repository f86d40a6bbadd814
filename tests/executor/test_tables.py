"""Delta table writes (executor.tables) on real deltalake tables in temporary directories."""

from __future__ import annotations

import decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable, write_deltalake

from executor.digests import table_digest
from executor.tables import (
    ColumnChange,
    SchemaBreakingChange,
    SchemaDriftError,
    SchemaVersion,
    _written_version,
    classify,
    commit_history,
    read_schema,
    schema_keys,
    table_keys,
    with_keys,
    write_table,
)


def rows(table: Path | str, *order: str) -> list[dict[str, Any]]:
    data = DeltaTable(str(table)).to_pyarrow_table()
    if order:
        data = data.sort_by([(name, "ascending") for name in order])
    result: list[dict[str, Any]] = data.to_pylist()
    return result


def orders(ids: list[int], amounts: list[float], **extra: Any) -> Any:
    columns: dict[str, Any] = {
        "id": pa.array(ids, pa.int64()),
        "amount_total": pa.array(amounts, pa.float64()),
    }
    columns.update(extra)
    return pa.table(columns)


def changes(kind: str, *items: tuple[str, str, str | None, str | None]) -> Any:
    return (kind, [ColumnChange(*item) for item in items])


def as_tuple(change: Any) -> Any:
    return (change.kind, change.changes)


# ---------------------------------------------------------------------------------------------
# append / overwrite / merge


def test_append_creates_then_appends(tmp_path: Path) -> None:
    uri = tmp_path / "t"
    first = write_table(uri, orders([1, 2], [1.0, 2.0]), mode="append")
    assert (first.version, first.rows_written, first.change.kind) == (0, 2, "INITIAL")
    second = write_table(uri, orders([3], [3.0]), mode="append")
    assert (second.version, second.rows_written, second.change.kind) == (1, 1, "UNCHANGED")
    assert second.change.changes == []
    assert [r["id"] for r in rows(uri, "id")] == [1, 2, 3]
    assert second.schema.names == ["id", "amount_total"]


def test_overwrite_replaces(tmp_path: Path) -> None:
    uri = tmp_path / "t"
    write_table(uri, orders([1, 2], [1.0, 2.0]), mode="overwrite")
    result = write_table(uri, orders([5], [5.0]), mode="overwrite")
    assert result.version == 1
    assert rows(uri) == [{"id": 5, "amount_total": 5.0}]
    # time travel still sees the first version
    assert DeltaTable(str(uri), version=0).to_pyarrow_table().num_rows == 2


def test_merge_updates_matched_inserts_new_and_is_idempotent(tmp_path: Path) -> None:
    uri = tmp_path / "t"
    write_table(uri, orders([1, 2], [1.0, 2.0]), mode="merge", keys=["id"])
    assert table_keys(uri) == ["id"]
    batch = orders([2, 3], [20.0, 30.0])
    result = write_table(uri, batch, mode="merge", keys=["id"])
    assert (result.version, result.rows_written, result.change.kind) == (1, 2, "UNCHANGED")
    expected = [
        {"id": 1, "amount_total": 1.0},
        {"id": 2, "amount_total": 20.0},
        {"id": 3, "amount_total": 30.0},
    ]
    assert rows(uri, "id") == expected
    digest = table_digest(uri).digest
    again = write_table(uri, batch, mode="merge", keys=["id"])  # a re-run of the same phase
    assert again.version == 2
    assert rows(uri, "id") == expected
    assert table_digest(uri).digest == digest


def test_merge_on_composite_key_and_odd_column_names(tmp_path: Path) -> None:
    uri = tmp_path / "t"
    first = pa.table({"order id": [1, 1, 2], "line": [1, 2, 1], "qty": [1, 1, 1]})
    write_table(uri, first, mode="merge", keys=["order id", "line"])
    write_table(uri, pa.table({"order id": [1, 2], "line": [2, 2], "qty": [5, 7]}),
                mode="merge", keys=["order id", "line"])
    assert rows(uri, "order id", "line") == [
        {"order id": 1, "line": 1, "qty": 1},
        {"order id": 1, "line": 2, "qty": 5},
        {"order id": 2, "line": 1, "qty": 1},
        {"order id": 2, "line": 2, "qty": 7},
    ]
    assert table_keys(uri) == ["order id", "line"]


def test_merge_refuses_bad_batches_and_missing_keys(tmp_path: Path) -> None:
    uri = tmp_path / "t"
    with pytest.raises(ValueError, match="merge needs keys"):
        write_table(uri, orders([1], [1.0]), mode="merge")
    with pytest.raises(ValueError, match="not in the data"):
        write_table(uri, orders([1], [1.0]), mode="merge", keys=["nope"])
    with pytest.raises(ValueError, match="repeats a key"):
        write_table(uri, orders([1, 1], [1.0, 2.0]), mode="merge", keys=["id"])
    with pytest.raises(ValueError, match="has nulls"):
        write_table(uri, orders([1, None], [1.0, 2.0]), mode="merge",  # type: ignore[list-item]
                    keys=["id"])
    assert read_schema(uri) is None
    assert table_keys(uri) is None


def test_list_of_dicts_and_record_batch_reader(tmp_path: Path) -> None:
    uri = tmp_path / "t"
    result = write_table(uri, [{"id": 1, "name": "a"}, {"id": 2, "extra": True}], mode="append")
    assert result.schema.names == ["id", "name", "extra"]
    assert rows(uri, "id") == [
        {"id": 1, "name": "a", "extra": None},
        {"id": 2, "name": None, "extra": True},
    ]
    reader = pa.RecordBatchReader.from_batches(
        result.schema.remove_metadata(),
        [pa.record_batch({"id": [3], "name": ["c"], "extra": [False]})],
    )
    assert write_table(uri, reader, mode="append").rows_written == 1
    assert len(rows(uri)) == 3


def test_partitioned_table(tmp_path: Path) -> None:
    uri = tmp_path / "t"
    data = pa.table({"id": [1, 2, 3], "day": ["a", "b", "a"]})
    write_table(uri, data, mode="append", partition_by=["day"])
    write_table(uri, pa.table({"id": [4], "day": ["b"]}), mode="append")
    dt = DeltaTable(str(uri))
    assert dt.metadata().partition_columns == ["day"]
    assert dt.to_pyarrow_table().num_rows == 4
    with pytest.raises(ValueError, match="partitioned by"):
        write_table(uri, data, mode="append", partition_by=["id"])


def test_commit_metadata_in_history(tmp_path: Path) -> None:
    uri = tmp_path / "t"
    meta = {"run_id": "run-1", "phase_id": "ph-1", "digest": "blake3:" + "0" * 64}
    write_table(uri, orders([1], [1.0]), mode="append", keys=["id"], commit_metadata=meta)
    write_table(uri, orders([1], [2.0]), mode="merge", keys=["id"],
                commit_metadata={**meta, "phase_id": "ph-2"})
    write_table(uri, orders([1], [3.0]), mode="overwrite",
                commit_metadata={**meta, "phase_id": "ph-3"})
    history = commit_history(uri)
    assert [h["version"] for h in history] == [2, 1, 0]
    assert [h["phase_id"] for h in history] == ["ph-3", "ph-2", "ph-1"]
    assert {h["run_id"] for h in history} == {"run-1"}
    assert history[2]["digest"] == meta["digest"]
    assert [h["controlroom.schema_change"] for h in history] == [
        "UNCHANGED", "UNCHANGED", "INITIAL"]
    assert [h["operation"] for h in history] == ["WRITE", "MERGE", "WRITE"]
    assert len({h["controlroom.write_id"] for h in history}) == 3
    # the raw deltalake history carries the same keys
    assert DeltaTable(str(uri)).history(1)[0]["phase_id"] == "ph-3"


# ---------------------------------------------------------------------------------------------
# determinism


def _parquet_bytes(uri: Path) -> list[bytes]:
    return [p.read_bytes() for p in sorted(uri.rglob("*.parquet"))]


def test_same_data_gives_identical_digests_and_parquet_bytes(tmp_path: Path) -> None:
    n = 5_000
    data = pa.table({
        "id": pa.array(range(n), pa.int64()),
        "name": pa.array([f"n{i % 97}" for i in range(n)], pa.large_string()),
        "amount": pa.array([i * 0.5 for i in range(n)], pa.float64()),
    })
    chunked = pa.concat_tables([data.slice(i, 500) for i in range(0, n, 500)])
    assert chunked.column("id").num_chunks == 10
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    write_table(a, data, mode="append", commit_metadata={"run_id": "1"})
    write_table(b, data, mode="append", commit_metadata={"run_id": "2"})
    write_table(c, chunked, mode="append")
    assert table_digest(a).digest == table_digest(b).digest == table_digest(c).digest
    assert len(_parquet_bytes(a)) == 1
    assert _parquet_bytes(a) == _parquet_bytes(b) == _parquet_bytes(c)
    # the multi-chunk input kept its row order (combined into one chunk before writing)
    assert DeltaTable(str(c)).to_pyarrow_table().column("id").to_pylist() == list(range(n))


def test_stable_column_order(tmp_path: Path) -> None:
    uri = tmp_path / "t"
    write_table(uri, pa.table({"b": [1], "a": [2]}), mode="append")
    result = write_table(uri, pa.table({"c": [9], "a": [3], "b": [4]}), mode="append")
    assert result.schema.names == ["b", "a", "c"]
    files = sorted(uri.glob("*.parquet"), key=lambda p: p.stat().st_mtime_ns)
    assert pq.read_schema(files[-1]).names == ["b", "a", "c"]
    assert rows(uri, "b") == [{"b": 1, "a": 2, "c": None}, {"b": 4, "a": 3, "c": 9}]


# ---------------------------------------------------------------------------------------------
# classify


def schema(*fields: Any) -> Any:
    return pa.schema(list(fields))


def f(name: str, data_type: Any, nullable: bool = True) -> Any:
    return pa.field(name, data_type, nullable)


BASE = schema(f("id", pa.int64(), False), f("amount", pa.float64()))


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (pa.int8(), pa.int16(), "widened"),
        (pa.int8(), pa.int64(), "widened"),
        (pa.int16(), pa.int32(), "widened"),
        (pa.int32(), pa.int64(), "widened"),
        (pa.float32(), pa.float64(), "widened"),
        (pa.int32(), pa.float64(), "widened"),
        (pa.int16(), pa.float64(), "widened"),
        (pa.decimal128(10, 2), pa.decimal128(12, 2), "widened"),
        (pa.decimal128(10, 2), pa.decimal128(12, 4), "widened"),
        (pa.int64(), pa.int32(), "narrowed"),
        (pa.int16(), pa.int8(), "narrowed"),
        (pa.float64(), pa.float32(), "narrowed"),
        (pa.float64(), pa.int32(), "narrowed"),
        (pa.decimal128(12, 2), pa.decimal128(10, 2), "narrowed"),
        (pa.decimal128(10, 2), pa.decimal128(10, 4), "type_changed"),
        (pa.int64(), pa.float64(), "type_changed"),
        (pa.int32(), pa.float32(), "type_changed"),
        (pa.int64(), pa.string(), "type_changed"),
        (pa.date32(), pa.timestamp("us"), "type_changed"),
        (pa.timestamp("us"), pa.timestamp("us", "UTC"), "type_changed"),
        (pa.list_(pa.int32()), pa.list_(pa.int64()), "type_changed"),
    ],
)
def test_classify_type_changes(old: Any, new: Any, expected: str) -> None:
    change = classify(schema(f("x", old)), schema(f("x", new)))
    assert [c.change for c in change.changes] == [expected]
    assert change.kind == ("NON_BREAKING" if expected == "widened" else "BREAKING")


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (pa.string(), pa.large_string()),
        (pa.large_string(), pa.string_view()),
        (pa.binary(), pa.large_binary()),
        (pa.timestamp("us", "UTC"), pa.timestamp("ns", "Europe/Paris")),
        (pa.timestamp("us"), pa.timestamp("ms")),
        (pa.string(), pa.dictionary(pa.int32(), pa.string())),
        (pa.list_(pa.int32()), pa.large_list(pa.int32())),
        (pa.date32(), pa.date64()),
    ],
)
def test_classify_same_delta_type_is_unchanged(old: Any, new: Any) -> None:
    assert as_tuple(classify(schema(f("x", old)), schema(f("x", new)))) == ("UNCHANGED", [])


def test_classify_initial_unchanged_and_columns() -> None:
    assert as_tuple(classify(None, BASE, ["id"])) == ("INITIAL", [])
    assert as_tuple(classify(BASE, BASE)) == ("UNCHANGED", [])
    # a new nullable column
    new = BASE.append(f("note", pa.string()))
    assert as_tuple(classify(BASE, new)) == changes(
        "NON_BREAKING", ("note", "added", None, "string"))
    # a new non-nullable column
    new = BASE.append(f("note", pa.string(), False))
    assert as_tuple(classify(BASE, new)) == changes(
        "BREAKING", ("note", "added_required", None, "string"))
    # a removed column
    assert as_tuple(classify(BASE, schema(f("id", pa.int64(), False)))) == changes(
        "BREAKING", ("amount", "removed", "float64", None))
    # nullable-ization, and the reverse
    loose = schema(f("id", pa.int64()), f("amount", pa.float64()))
    assert as_tuple(classify(BASE, loose)) == changes(
        "NON_BREAKING", ("id", "made_nullable", "int64", "int64"))
    strict = schema(f("id", pa.int64(), False), f("amount", pa.float64(), False))
    assert as_tuple(classify(BASE, strict)) == changes(
        "BREAKING", ("amount", "made_required", "float64", "float64"))
    # column order alone is no change
    assert classify(BASE, schema(f("amount", pa.float64()), f("id", pa.int64(), False))
                    ).kind == "UNCHANGED"


def test_classify_keys() -> None:
    keyed = with_keys(BASE, ["id"])
    assert schema_keys(keyed) == ["id"]
    assert classify(keyed, BASE, ["id"]).kind == "UNCHANGED"
    assert classify(keyed, BASE, None).kind == "UNCHANGED"  # keys not asserted
    assert as_tuple(classify(keyed, BASE, ["id", "amount"])) == changes(
        "BREAKING", ("(keys)", "keys_changed", "[id]", "[id, amount]"))
    assert as_tuple(classify(BASE, BASE, ["id"])) == changes(
        "BREAKING", ("(keys)", "keys_changed", "(none)", "[id]"))
    both = with_keys(BASE, ["id", "amount"])
    assert classify(both, BASE, ["amount", "id"]).kind == "BREAKING"  # order counts
    # a mixed batch: any breaking change makes the whole change BREAKING
    mixed = schema(f("id", pa.int64(), False), f("note", pa.string()))
    change = classify(keyed, mixed, ["id"])
    assert change.kind == "BREAKING"
    assert [c.change for c in change.changes] == ["removed", "added"]
    assert [c.change for c in change.breaking] == ["removed"]


# ---------------------------------------------------------------------------------------------
# evolution applied by write_table


def test_new_nullable_column_append_and_merge(tmp_path: Path) -> None:
    uri = tmp_path / "t"
    write_table(uri, orders([1, 2], [1.0, 2.0]), mode="merge", keys=["id"])
    note = pa.array(["x"], pa.string())
    result = write_table(uri, orders([3], [3.0], note=note), mode="append")
    assert as_tuple(result.change) == changes(
        "NON_BREAKING", ("note", "added", None, "string"))
    assert result.schema.names == ["id", "amount_total", "note"]
    assert [r["note"] for r in rows(uri, "id")] == [None, None, "x"]
    merged = write_table(uri, orders([2, 4], [20.0, 4.0], note=pa.array(["y", "z"]),
                                     flag=pa.array([True, False])),
                         mode="merge", keys=["id"])
    assert as_tuple(merged.change) == changes("NON_BREAKING", ("flag", "added", None, "bool"))
    assert rows(uri, "id") == [
        {"id": 1, "amount_total": 1.0, "note": None, "flag": None},
        {"id": 2, "amount_total": 20.0, "note": "y", "flag": True},
        {"id": 3, "amount_total": 3.0, "note": "x", "flag": None},
        {"id": 4, "amount_total": 4.0, "note": "z", "flag": False},
    ]
    assert table_keys(uri) == ["id"]


def test_new_nullable_column_overwrite(tmp_path: Path) -> None:
    uri = tmp_path / "t"
    write_table(uri, orders([1], [1.0]), mode="overwrite", keys=["id"])
    result = write_table(uri, orders([2], [2.0], note=pa.array(["n"])), mode="overwrite")
    assert result.change.kind == "NON_BREAKING"
    assert rows(uri) == [{"id": 2, "amount_total": 2.0, "note": "n"}]
    assert table_keys(uri) == ["id"]  # keys survive a schema-changing overwrite


def test_widening_applied_on_append(tmp_path: Path) -> None:
    uri = tmp_path / "t"
    first = pa.table({"id": pa.array([1, 2], pa.int32()), "v": pa.array([1.5, 2.5], pa.float32()),
                      "d": pa.array([decimal.Decimal("1.25")] * 2, pa.decimal128(5, 2))})
    write_table(uri, first, mode="append", keys=["id"])
    wide = pa.table({"id": pa.array([3_000_000_000], pa.int64()),
                     "v": pa.array([0.1], pa.float64()),
                     "d": pa.array([decimal.Decimal("123456.25")], pa.decimal128(10, 2))})
    result = write_table(uri, wide, mode="append", commit_metadata={"run_id": "w"})
    assert as_tuple(result.change) == changes(
        "NON_BREAKING",
        ("id", "widened", "int32", "int64"),
        ("v", "widened", "float32", "float64"),
        ("d", "widened", "decimal128(5, 2)", "decimal128(10, 2)"),
    )
    assert result.version == 1
    assert [str(t) for t in result.schema.types] == ["int64", "double", "decimal128(10, 2)"]
    got = rows(uri, "id")
    assert [r["id"] for r in got] == [1, 2, 3_000_000_000]
    assert [r["v"] for r in got] == [1.5, 2.5, 0.1]
    assert got[2]["d"] == decimal.Decimal("123456.25")
    assert table_keys(uri) == ["id"]
    assert commit_history(uri, limit=1)[0]["run_id"] == "w"


def test_widening_applied_on_merge(tmp_path: Path) -> None:
    uri = tmp_path / "t"
    first = pa.table({"id": pa.array([1, 2, 3], pa.int64()), "q": pa.array([1, 2, 3], pa.int16())})
    write_table(uri, first, mode="merge", keys=["id"])
    wide = pa.table({"id": pa.array([2, 4], pa.int64()), "q": pa.array([70_000, 4], pa.int32()),
                     "note": pa.array(["b", "d"])})
    result = write_table(uri, wide, mode="merge", keys=["id"])
    assert [c.change for c in result.change.changes] == ["widened", "added"]
    assert result.version == 1
    expected = [
        {"id": 1, "q": 1, "note": None},
        {"id": 2, "q": 70_000, "note": "b"},
        {"id": 3, "q": 3, "note": None},
        {"id": 4, "q": 4, "note": "d"},
    ]
    assert rows(uri, "id") == expected
    assert result.schema.field("q").type == pa.int32()
    # the same batch again: now unchanged, no duplicates
    again = write_table(uri, wide, mode="merge", keys=["id"])
    assert again.change.kind == "UNCHANGED"
    assert rows(uri, "id") == expected


def test_made_nullable_applied_on_merge_and_append(tmp_path: Path) -> None:
    uri = tmp_path / "t"
    strict = pa.schema([f("id", pa.int64(), False), f("v", pa.float64(), False)])
    write_table(uri, pa.table({"id": [1, 2], "v": [1.0, 2.0]}, schema=strict),
                mode="merge", keys=["id"])
    loose = pa.schema([f("id", pa.int64(), False), f("v", pa.float64())])
    result = write_table(uri, pa.table({"id": [2], "v": [None]}, schema=loose),
                         mode="merge", keys=["id"])
    assert as_tuple(result.change) == changes(
        "NON_BREAKING", ("v", "made_nullable", "float64", "float64"))
    assert result.schema.field("v").nullable
    assert not result.schema.field("id").nullable
    assert rows(uri, "id") == [{"id": 1, "v": 1.0}, {"id": 2, "v": None}]

    other = tmp_path / "u"
    write_table(other, pa.table({"id": [1], "v": [1.0]}, schema=strict), mode="append")
    appended = write_table(other, pa.table({"id": [2], "v": [None]}, schema=loose),
                           mode="append")
    assert appended.change.kind == "NON_BREAKING"
    assert rows(other, "id") == [{"id": 1, "v": 1.0}, {"id": 2, "v": None}]

    third = tmp_path / "w"
    write_table(third, pa.table({"id": [1], "v": [1.0]}, schema=strict), mode="overwrite")
    replaced = write_table(third, pa.table({"id": [2], "v": [None]}, schema=loose),
                           mode="overwrite")
    assert replaced.change.kind == "NON_BREAKING"
    assert rows(third) == [{"id": 2, "v": None}]


# ---------------------------------------------------------------------------------------------
# breaking changes write nothing


def _untouched(uri: Path, version: int, digest: str) -> None:
    dt = DeltaTable(str(uri))
    assert dt.version() == version
    assert table_digest(uri).digest == digest


@pytest.mark.parametrize("mode", ["append", "overwrite", "merge"])
def test_narrowing_is_breaking_and_writes_nothing(tmp_path: Path, mode: Any) -> None:
    uri = tmp_path / "sale_order"
    write_table(uri, orders([1, 2], [1.0, 2.0]), mode="merge", keys=["id"])
    digest = table_digest(uri).digest
    files = sorted(p.name for p in uri.rglob("*") if p.is_file())
    narrow = pa.table({"id": pa.array([3], pa.int64()),
                       "amount_total": pa.array([3.0], pa.float32())})
    with pytest.raises(SchemaBreakingChange) as raised:
        write_table(uri, narrow, mode=mode, keys=["id"], name="bronze.sale_order")
    assert str(raised.value) == (
        "bronze.sale_order: column amount_total narrowed float64 → float32")
    assert raised.value.table == "bronze.sale_order"
    assert raised.value.changes == [
        ColumnChange("amount_total", "narrowed", "float64", "float32")]
    _untouched(uri, 0, digest)
    assert sorted(p.name for p in uri.rglob("*") if p.is_file()) == files


@pytest.mark.parametrize(
    ("data", "keys", "message"),
    [
        (pa.table({"id": pa.array([3], pa.int64())}), ["id"],
         "t: column amount_total removed (was float64)"),
        (orders([3], [3.0], note=pa.array(["x"])).cast(pa.schema([
            f("id", pa.int64()), f("amount_total", pa.float64()), f("note", pa.string(), False)])),
         ["id"], "t: column note added as non-nullable string"),
        (pa.table({"id": pa.array(["3"]), "amount_total": [3.0]}), ["id"],
         "t: column id changed type int64 → string"),
        (orders([3], [3.0]).cast(pa.schema([f("id", pa.int64()),
                                            f("amount_total", pa.float64(), False)])),
         ["id"], "t: column amount_total made non-nullable (float64)"),
        (orders([3], [3.0]), ["amount_total"], "t: keys changed [id] → [amount_total]"),
        (orders([3], [3.0]), ["id", "amount_total"],
         "t: keys changed [id] → [id, amount_total]"),
    ],
)
def test_breaking_changes_raise_before_writing(tmp_path: Path, data: Any, keys: list[str],
                                               message: str) -> None:
    uri = tmp_path / "t"
    write_table(uri, orders([1, 2], [1.0, 2.0]), mode="merge", keys=["id"])
    digest = table_digest(uri).digest
    for mode in ("append", "overwrite", "merge"):
        with pytest.raises(SchemaBreakingChange) as raised:
            write_table(uri, data, mode=mode, keys=keys, name="t")
        assert str(raised.value) == message
    _untouched(uri, 0, digest)


def test_keys_declared_on_a_keyless_table_is_breaking(tmp_path: Path) -> None:
    uri = tmp_path / "t"
    write_table(uri, orders([1], [1.0]), mode="append")
    assert table_keys(uri) == []
    with pytest.raises(SchemaBreakingChange, match=r"keys changed \(none\) → \[id\]"):
        write_table(uri, orders([1], [2.0]), mode="merge", keys=["id"])
    _untouched(uri, 0, table_digest(uri).digest)
    assert rows(uri) == [{"id": 1, "amount_total": 1.0}]


def test_message_defaults_to_uri(tmp_path: Path) -> None:
    uri = tmp_path / "t"
    write_table(uri, orders([1], [1.0]), mode="append")
    with pytest.raises(SchemaBreakingChange) as raised:
        write_table(uri, pa.table({"id": [2]}), mode="append")
    assert str(raised.value) == f"{uri}: column amount_total removed (was float64)"


def test_a_refused_breaking_change_carries_the_proposed_schema(tmp_path: Path) -> None:
    uri = tmp_path / "t"
    write_table(uri, orders([1], [1.0]), mode="merge", keys=["id"])
    narrow = pa.table({"id": pa.array([2], pa.int32()), "note": pa.array(["x"])})
    with pytest.raises(SchemaBreakingChange) as raised:
        write_table(uri, narrow, mode="append")
    proposed = raised.value.schema
    assert [(f.name, str(f.type)) for f in proposed] == [("id", "int32"), ("note", "string")]
    assert schema_keys(proposed) == ["id"]


# ---------------------------------------------------------------------------------------------
# accepted breaking changes (allow_breaking)


@pytest.mark.parametrize("mode", ["append", "merge"])
def test_allow_breaking_narrows_and_keeps_the_current_rows(tmp_path: Path, mode: Any) -> None:
    uri = tmp_path / "t"
    write_table(uri, orders([1, 2], [1.0, 2.0]), mode="merge", keys=["id"])
    narrow = pa.table({"id": pa.array([2, 3], pa.int32()),
                       "amount_total": pa.array([20.0, 3.0], pa.float64())})
    written = write_table(uri, narrow, mode=mode, keys=["id"], allow_breaking=True)
    assert written.version == 1
    assert written.change.kind == "BREAKING"
    assert written.change.changes == [ColumnChange("id", "narrowed", "int64", "int32")]
    schema = read_schema(uri)
    assert str(schema.field("id").type) == "int32"
    assert schema_keys(schema) == ["id"]
    expected = {"append": [(1, 1.0), (2, 2.0), (2, 20.0), (3, 3.0)],
                "merge": [(1, 1.0), (2, 20.0), (3, 3.0)]}[mode]
    assert [(r["id"], r["amount_total"]) for r in rows(uri, "id", "amount_total")] == expected
    history = commit_history(uri, limit=1)
    assert history[0]["controlroom.schema_change"] == "BREAKING"


def test_allow_breaking_overwrite_drops_a_column(tmp_path: Path) -> None:
    uri = tmp_path / "t"
    write_table(uri, orders([1, 2], [1.0, 2.0], note=pa.array(["a", "b"])), mode="overwrite")
    written = write_table(uri, pa.table({"id": pa.array([7], pa.int64()),
                                         "note": pa.array(["z"])}),
                          mode="overwrite", allow_breaking=True)
    assert written.change.kind == "BREAKING"
    assert read_schema(uri).names == ["id", "note"]
    assert rows(uri) == [{"id": 7, "note": "z"}]


def test_allow_breaking_refuses_current_rows_the_new_type_cannot_hold(tmp_path: Path) -> None:
    uri = tmp_path / "t"
    write_table(uri, orders([1, 2**40], [1.0, 2.0]), mode="append")
    digest = table_digest(uri).digest
    narrow = orders([3], [3.0]).cast(pa.schema([("id", pa.int32()),
                                                ("amount_total", pa.float64())]))
    with pytest.raises(ValueError, match="current rows of column id cannot be converted"):
        write_table(uri, narrow, mode="append", allow_breaking=True)
    _untouched(uri, 0, digest)


def test_allow_breaking_without_a_breaking_change_is_a_plain_write(tmp_path: Path) -> None:
    uri = tmp_path / "t"
    write_table(uri, orders([1], [1.0]), mode="append")
    written = write_table(uri, orders([2], [2.0]), mode="append", allow_breaking=True)
    assert written.change.kind == "UNCHANGED"
    assert rows(uri, "id") == [{"id": 1, "amount_total": 1.0}, {"id": 2, "amount_total": 2.0}]


# ---------------------------------------------------------------------------------------------
# expected schema versions


def test_expected_schema_version(tmp_path: Path) -> None:
    uri = tmp_path / "t"
    v1 = orders([1], [1.0]).schema
    # no table yet, but the catalog knows a version: classified against it, not INITIAL
    result = write_table(uri, orders([1], [1.0]), mode="merge", keys=["id"],
                         expected=SchemaVersion(v1, ("id",), 1))
    assert result.change.kind == "UNCHANGED"
    result = write_table(uri, orders([2], [2.0], note=pa.array(["n"])), mode="append",
                         keys=["id"], expected=SchemaVersion(v1, ("id",), 1))
    assert as_tuple(result.change) == changes("NON_BREAKING", ("note", "added", None, "string"))
    # the table moved on (now has note) but the caller expected v1: refused, nothing written
    with pytest.raises(SchemaDriftError, match="not the expected one"):
        write_table(uri, orders([3], [3.0]), mode="append", expected=SchemaVersion(v1, ("id",)))
    with pytest.raises(SchemaBreakingChange, match="column note removed"):
        write_table(uri, orders([3], [3.0]), mode="append",
                    expected=SchemaVersion(result.schema, ("id",)))
    assert DeltaTable(str(uri)).version() == 1


def test_read_schema_of_a_foreign_table(tmp_path: Path) -> None:
    uri = tmp_path / "t"
    assert read_schema(uri) is None
    write_deltalake(str(uri), pa.table({"a": pa.array([1], pa.int32())}))
    got = read_schema(uri)
    assert got is not None and got.names == ["a"]
    assert table_keys(uri) == []
    result = write_table(uri, pa.table({"a": pa.array([2], pa.int32())}), mode="append")
    assert result.change.kind == "UNCHANGED"


def test_result_names_its_own_version_when_others_commit_after(tmp_path: Path) -> None:
    uri = tmp_path / "t"
    write_table(uri, orders([1], [1.0]), mode="append")
    result = write_table(uri, orders([2], [2.0]), mode="append")
    write_deltalake(str(uri), orders([3], [3.0]), mode="append")  # another writer, later
    assert DeltaTable(str(uri)).version() == 2
    write_id = commit_history(uri)[1]["controlroom.write_id"]
    assert _written_version(str(uri), None, write_id).version() == result.version == 1


def test_bad_arguments(tmp_path: Path) -> None:
    uri = tmp_path / "t"
    with pytest.raises(ValueError, match="mode"):
        write_table(uri, orders([1], [1.0]), mode="upsert")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="not a string"):
        write_table(uri, orders([1], [1.0]), mode="merge", keys="id")
    with pytest.raises(ValueError, match="empty list"):
        write_table(uri, [], mode="append")
    with pytest.raises(TypeError, match="pyarrow Table"):
        write_table(uri, 42, mode="append")
    with pytest.raises(ValueError, match="repeat"):
        write_table(uri, orders([1], [1.0]), mode="merge", keys=["id", "id"])
    assert read_schema(uri) is None


def test_incoming_types_mapped_to_delta_types(tmp_path: Path) -> None:
    uri = tmp_path / "t"
    data = pa.table({
        "u": pa.array([65_535], pa.uint16()),
        "s": pa.array(["a"], pa.large_string()),
        "ts": pa.array([1_000], pa.timestamp("ns", "Europe/Paris")),
        "d": pa.array(["x"]).dictionary_encode(),
    })
    result = write_table(uri, data, mode="append")
    assert [str(t) for t in result.schema.types] == [
        "int32", "string", "timestamp[us, tz=UTC]", "string"]
    got = DeltaTable(str(uri)).to_pyarrow_table()
    assert got.column("u").to_pylist() == [65_535]
    assert got.column("ts").cast(pa.int64()).to_pylist() == [1]
    assert write_table(uri, data, mode="append").change.kind == "UNCHANGED"
    with pytest.raises(pa.ArrowInvalid):  # not a whole microsecond: refused, not truncated
        write_table(uri, data.set_column(2, "ts", pa.array([1_001], pa.timestamp("ns", "UTC"))),
                    mode="append")
    assert DeltaTable(str(uri)).version() == 1


# ---------------------------------------------------------------------------------------------
# The workspace lake (docs/tables.md)


def test_confine_resolves_locations_under_the_lake(tmp_path: Path) -> None:
    from executor.tables import OutsideLake, confine

    lake = tmp_path / "lake"
    lake.mkdir()
    assert confine("silver/orders", lake) == str(lake / "silver" / "orders")
    assert confine(str(lake / "a" / ".." / "b"), lake) == str(lake / "b")
    assert confine(f"file://{lake}/t", lake) == str(lake / "t")
    assert confine(f"file://localhost{lake}/t%20x", lake) == str(lake / "t x")
    assert confine(lake, lake) == str(lake)
    # a lake root reached through a link: its own path and its real path are both inside
    link = tmp_path / "lake-link"
    link.symlink_to(lake)
    assert confine(str(link / "t"), link) == str(lake / "t")
    assert confine(str(lake / "t"), link) == str(lake / "t")
    for bad in (f"file://host{lake}/t", f"file://{lake}/t?x=1", str(tmp_path / "lake2" / "t"),
                "..", "../lake2", "gs://b/t", "abfss://c@a.dfs.core.windows.net/t"):
        with pytest.raises(OutsideLake):
            confine(bad, lake)
    assert not (tmp_path / "lake2").exists()
