"""Digests: blobs, Delta table versions (on real tables written by deltalake) and
fingerprints."""

from __future__ import annotations

import datetime as dt
import decimal
import io
import json
import math
import random
import struct
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import blake3
import boto3
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable, convert_to_deltalake, write_deltalake

from executor.digests import (
    IPC_BATCH_ROWS,
    ColumnSchema,
    arrow_table_digest,
    blob_digest,
    digest_hex,
    fingerprint,
    normalise_type,
    stream_digest,
    table_digest,
)
from tests.executor.test_artifacts import running_moto_server

# --- blobs ------------------------------------------------------------------------------------


def _blake3(data: bytes) -> str:
    return "blake3:" + blake3.blake3(data).hexdigest()


@pytest.mark.parametrize("size", [0, 1, 1024, 1024 * 1024 - 1, 3 * 1024 * 1024 + 5])
def test_blob_digest_is_blake3_of_the_bytes(size: int, tmp_path: Path) -> None:
    data = random.Random(size).randbytes(size)
    expected = _blake3(data)
    path = tmp_path / "blob"
    path.write_bytes(data)
    assert blob_digest(data) == expected
    assert blob_digest(bytearray(data)) == expected
    assert blob_digest(memoryview(data)) == expected
    assert blob_digest(path) == expected
    assert blob_digest(str(path)) == expected
    assert blob_digest(io.BytesIO(data)) == expected
    assert digest_hex(expected) == expected.removeprefix("blake3:")


class _ReadOnly:
    """A stream with read() and no readinto() (sockets, HTTP bodies)."""

    def __init__(self, data: bytes) -> None:
        self._file = io.BytesIO(data)

    def read(self, size: int = -1, /) -> bytes:
        return self._file.read(min(size, 1000))  # short reads too


def test_stream_digest_across_chunk_boundaries_and_copies() -> None:
    data = random.Random(7).randbytes(10_007)
    sink = io.BytesIO()
    result = stream_digest(io.BytesIO(data), sink=sink, chunk_bytes=4096)
    assert result.digest == _blake3(data)
    assert result.size_bytes == len(data)
    assert sink.getvalue() == data
    assert stream_digest(_ReadOnly(data), chunk_bytes=4096).digest == _blake3(data)
    assert blob_digest(_ReadOnly(data)) == _blake3(data)


def test_digest_hex_refuses_other_strings() -> None:
    for text in ["", "blake3:", "sha256:" + "a" * 64, "blake3:" + "A" * 64, "a" * 64]:
        with pytest.raises(ValueError):
            digest_hex(text)


# --- fingerprints -----------------------------------------------------------------------------


def test_fingerprint_is_blake3_of_canonical_json() -> None:
    params = {"b": [1, 2.5, None], "a": {"y": "é", "x": True}}
    inputs = {"orders": "blake3:" + "1" * 64, "customers": "blake3:" + "2" * 64}
    value = fingerprint("sql", params, "abc123", inputs)
    document = {
        "format": "cr-fingerprint-v1", "git_sha": "abc123", "inputs": inputs, "kind": "sql",
        "params": params,
    }
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert value == _blake3(canonical.encode())
    reordered = {"a": {"x": True, "y": "é"}, "b": [1, 2.5, None]}
    assert fingerprint("sql", reordered, "abc123", dict(reversed(inputs.items()))) == value


def test_fingerprint_changes_with_each_part() -> None:
    base = fingerprint("python", {"n": 1}, "sha1", ["blake3:" + "1" * 64, "blake3:" + "2" * 64])
    changed = [
        fingerprint("sql", {"n": 1}, "sha1", ["blake3:" + "1" * 64, "blake3:" + "2" * 64]),
        fingerprint("python", {"n": 2}, "sha1", ["blake3:" + "1" * 64, "blake3:" + "2" * 64]),
        fingerprint("python", {"n": 1}, "sha2", ["blake3:" + "1" * 64, "blake3:" + "2" * 64]),
        fingerprint("python", {"n": 1}, "sha1", ["blake3:" + "2" * 64, "blake3:" + "1" * 64]),
        fingerprint("python", {"n": 1}, "sha1", ["blake3:" + "1" * 64]),
        fingerprint("python", {"n": 1.0}, "sha1", ["blake3:" + "1" * 64, "blake3:" + "2" * 64]),
    ]
    assert len({base, *changed}) == len(changed) + 1


def test_fingerprint_refuses_what_json_cannot_say_exactly() -> None:
    with pytest.raises(ValueError):
        fingerprint("python", {"x": math.nan}, "sha", {})
    with pytest.raises(TypeError):
        fingerprint("python", {"x": object()}, "sha", {})
    with pytest.raises(TypeError):
        fingerprint("python", {}, "sha", "blake3:" + "1" * 64)


# --- tables: data -----------------------------------------------------------------------------

SCHEMA = pa.schema(
    [
        ("id", pa.int64()),
        ("name", pa.string()),
        ("amount", pa.float64()),
        ("category", pa.string()),
        ("created_at", pa.timestamp("us", tz="UTC")),
        ("day", pa.date32()),
        ("price", pa.decimal128(12, 2)),
        ("active", pa.bool_()),
        ("payload", pa.binary()),
        ("tags", pa.list_(pa.string())),
        ("point", pa.struct([("y", pa.float64()), ("x", pa.float64())])),
    ]
)


def _rows(count: int, seed: int = 1) -> pa.Table:
    """Mixed types with nulls, NaN, -0.0 and nested values."""
    rng = random.Random(seed)
    start = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    rows = []
    for i in range(count):
        amount: float | None = rng.uniform(-100, 100)
        if i % 13 == 0:
            amount = None
        elif i % 17 == 0:
            amount = math.nan
        elif i % 19 == 0:
            amount = -0.0
        rows.append(
            {
                "id": i,
                "name": None if i % 11 == 0 else f"name-{rng.randrange(50)}",
                "amount": amount,
                "category": f"c{i % 4}",
                "created_at": None if i % 7 == 0 else start + dt.timedelta(seconds=i * 37),
                "day": dt.date(2024, 1, 1) + dt.timedelta(days=i % 400),
                "price": decimal.Decimal(rng.randrange(100_000)) / 100,
                "active": None if i % 5 == 0 else i % 2 == 0,
                "payload": None if i % 23 == 0 else rng.randbytes(rng.randrange(8)),
                "tags": None if i % 9 == 0 else [f"t{j}" for j in range(i % 3)],
                "point": None if i % 29 == 0 else {"x": float(i % 10), "y": rng.random()},
            }
        )
    return pa.Table.from_pylist(rows, schema=SCHEMA)


def _shuffled(table: pa.Table, seed: int = 2) -> pa.Table:
    noise = pa.table({"r": pc.random(table.num_rows, initializer=seed)})
    return table.take(pc.sort_indices(noise, sort_keys=[("r", "ascending", "at_end")]))


BASE = _rows(3000)


@pytest.fixture(scope="module")
def base_digest(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("base") / "table"
    write_deltalake(path, BASE)
    return table_digest(path).digest


def _write_flat(path: Path, table: pa.Table) -> None:
    write_deltalake(path, table)


def _write_shuffled_reordered(path: Path, table: pa.Table) -> None:
    write_deltalake(path, _shuffled(table).select(list(reversed(table.column_names))))


def _write_partitioned(path: Path, table: pa.Table) -> None:
    write_deltalake(path, _shuffled(table), partition_by=["category"])


def _write_appends(path: Path, table: pa.Table) -> None:
    shuffled = _shuffled(table, seed=3)
    for offset in range(0, table.num_rows, 250):
        write_deltalake(path, shuffled.slice(offset, 250), mode="append")


def _write_compacted(path: Path, table: pa.Table) -> None:
    _write_appends(path, table)
    DeltaTable(path).optimize.compact()


def _write_multichunk_large_types(path: Path, table: pa.Table) -> None:
    large = table.cast(
        pa.schema(
            [
                pa.field(f.name, pa.large_string()) if f.type == pa.string()
                else pa.field(f.name, pa.large_binary()) if f.type == pa.binary()
                else f
                for f in table.schema
            ]
        )
    )
    chunks = [large.slice(offset, 700) for offset in range(0, table.num_rows, 700)]
    write_deltalake(path, pa.concat_tables(chunks[::-1]))


def _write_pyarrow_parquet_converted(path: Path, table: pa.Table) -> None:
    """Another writer: pyarrow's Parquet writer, dictionary-encoded strings, then converted."""
    path.mkdir()
    dictionary = table.set_column(
        table.schema.get_field_index("category"),
        "category",
        pc.dictionary_encode(table.column("category")),
    )
    shuffled = _shuffled(dictionary, seed=4)
    pq.write_table(shuffled.slice(0, 1000), path / "part-0.parquet", row_group_size=100)
    pq.write_table(shuffled.slice(1000), path / "part-1.parquet", compression="zstd")
    convert_to_deltalake(path)


LAYOUTS: dict[str, Callable[[Path, pa.Table], None]] = {
    "flat": _write_flat,
    "shuffled-columns-reversed": _write_shuffled_reordered,
    "partitioned": _write_partitioned,
    "twelve-appends": _write_appends,
    "compacted": _write_compacted,
    "multi-chunk-large-types": _write_multichunk_large_types,
    "pyarrow-parquet-converted": _write_pyarrow_parquet_converted,
}


# --- tables: layout independence ---------------------------------------------------------------


@pytest.mark.parametrize("layout", LAYOUTS)
def test_the_same_rows_give_the_same_digest_whatever_the_layout(
    layout: str, tmp_path: Path, base_digest: str
) -> None:
    LAYOUTS[layout](tmp_path / "t", BASE)
    result = table_digest(tmp_path / "t")
    assert result.digest == base_digest
    assert result.rows == BASE.num_rows
    assert result.digest == arrow_table_digest(_shuffled(BASE, seed=9)).digest


def test_compaction_keeps_the_digest_of_the_version_before(tmp_path: Path) -> None:
    path = tmp_path / "t"
    _write_appends(path, BASE)
    before = table_digest(path)
    DeltaTable(path).optimize.compact()
    after = table_digest(path)
    assert after.version is not None and before.version is not None
    assert after.version > before.version
    assert after.digest == before.digest
    assert len(DeltaTable(path).file_uris()) < 12


def test_schema_is_reported_normalised_and_sorted(tmp_path: Path) -> None:
    write_deltalake(tmp_path / "t", BASE)
    result = table_digest(tmp_path / "t")
    assert result.schema == (
        ColumnSchema("active", "bool"),
        ColumnSchema("amount", "double"),
        ColumnSchema("category", "large_string"),
        ColumnSchema("created_at", "timestamp[us, tz=UTC]"),
        ColumnSchema("day", "date32[day]"),
        ColumnSchema("id", "int64"),
        ColumnSchema("name", "large_string"),
        ColumnSchema("payload", "large_binary"),
        ColumnSchema("point", "struct<x: double, y: double>"),
        ColumnSchema("price", "decimal128(12, 2)"),
        ColumnSchema("tags", "large_list<item: large_string>"),
    )
    assert result.version == 0


# --- tables: what changes the digest -----------------------------------------------------------


def _set(table: pa.Table, column: str, row: int, value: object) -> pa.Table:
    values = table.column(column).to_pylist()
    values[row] = value
    index = table.schema.get_field_index(column)
    field = table.schema.field(index)
    return table.set_column(index, field, pa.array(values, field.type))


def _changed_tables() -> dict[str, pa.Table]:
    extra = _rows(3001).slice(3000)
    return {
        "one-string": _set(BASE, "name", 5, "someone else"),
        "one-float": _set(BASE, "amount", 1, 1.0000000001),
        "a-null": _set(BASE, "price", 2, None),
        "one-nested": _set(BASE, "tags", 3, ["t0", "t2"]),
        "one-struct-field": _set(BASE, "point", 3, {"x": 3.0, "y": 0.5}),
        "one-timestamp": _set(BASE, "created_at", 1, dt.datetime(2020, 1, 1, tzinfo=dt.UTC)),
        "extra-row": pa.concat_tables([BASE, extra]),
        "missing-row": BASE.slice(1),
        "duplicated-row": pa.concat_tables([BASE, BASE.slice(10, 1)]),
        "int32-id": BASE.set_column(0, "id", BASE.column("id").cast(pa.int32())),
        "float32-amount": BASE.set_column(2, "amount", BASE.column("amount").cast(pa.float32())),
        "renamed-column": BASE.rename_columns(["ident", *BASE.column_names[1:]]),
        "dropped-column": BASE.drop_columns(["payload"]),
        "ntz-timestamp": BASE.set_column(
            4, "created_at", BASE.column("created_at").cast(pa.timestamp("us"))
        ),
    }


def test_any_change_gives_a_different_digest(tmp_path: Path, base_digest: str) -> None:
    digests = {"base": base_digest}
    for name, table in _changed_tables().items():
        write_deltalake(tmp_path / name, table)
        digests[name] = table_digest(tmp_path / name).digest
    assert len(set(digests.values())) == len(digests), digests


# --- tables: floats ------------------------------------------------------------------------------


def _floats_from_bits(bits: list[int | None]) -> pa.Array:
    """float64 values with exact bit patterns (NaN payloads, -0.0); None for null."""
    packed = struct.pack(f"<{len(bits)}Q", *[0 if b is None else b for b in bits])
    validity = [b is not None for b in bits]
    mask = pa.array(validity, pa.bool_())
    values = pa.Array.from_buffers(pa.float64(), len(bits), [None, pa.py_buffer(packed)])
    return pc.if_else(mask, values, pa.scalar(None, pa.float64()))


POSITIVE_ZERO = 0x0000000000000000
NEGATIVE_ZERO = 0x8000000000000000
QUIET_NAN = 0x7FF8000000000000
NEGATIVE_NAN = 0xFFF8000000000000
PAYLOAD_NAN = 0x7FF8000000000BAD
SIGNALLING_NAN = 0x7FF0000000000001


def _float_digest(path: Path, bits: list[int | None], nested: bool = False) -> str:
    values = _floats_from_bits(bits)
    column = (
        pa.LargeListArray.from_arrays(pa.array(range(len(bits) + 1), pa.int64()), values)
        if nested else values
    )
    table = pa.table({"k": pa.array(range(len(bits)), pa.int64()), "v": column})
    write_deltalake(path, table)
    return table_digest(path).digest


@pytest.mark.parametrize("nested", [False, True], ids=["column", "in-a-list"])
def test_negative_zero_hashes_as_zero_and_all_nans_as_one(tmp_path: Path, nested: bool) -> None:
    def digest(name: str, bits: list[int | None]) -> str:
        return _float_digest(tmp_path / name, bits, nested)

    assert digest("pz", [POSITIVE_ZERO, 1]) == digest("nz", [NEGATIVE_ZERO, 1])
    nan = digest("nan", [QUIET_NAN, 1])
    assert nan == digest("neg-nan", [NEGATIVE_NAN, 1])
    assert nan == digest("payload-nan", [PAYLOAD_NAN, 1])
    assert nan == digest("signalling-nan", [SIGNALLING_NAN, 1])
    others = {digest("null", [None, 1]), digest("zero", [POSITIVE_ZERO, 1]), nan}
    assert len(others) == 3  # NaN, null and 0.0 are three values


def test_float_normalisation_reaches_struct_fields() -> None:
    def table(x: float) -> pa.Table:
        return pa.table({"s": pa.array([{"x": x}], pa.struct([("x", pa.float64())]))})

    assert arrow_table_digest(table(-0.0)).digest == arrow_table_digest(table(0.0)).digest
    nan_bits = struct.unpack("<d", struct.pack("<Q", NEGATIVE_NAN))[0]
    assert arrow_table_digest(table(nan_bits)).digest == arrow_table_digest(table(math.nan)).digest


# --- tables: nested values ------------------------------------------------------------------------


def test_nested_columns_without_a_unique_scalar_column_sort_deterministically(
    tmp_path: Path,
) -> None:
    """Only nested columns break the ties, so their canonical text orders the rows."""
    rng = random.Random(5)
    rows = [
        {
            "group": i % 3,
            "items": [rng.randrange(4) for _ in range(rng.randrange(3))],
            "attrs": {"at": dt.datetime(2024, 1, 1, i % 5, tzinfo=dt.UTC), "v": i % 2},
            "props": [("k", float(i % 2))],
        }
        for i in range(400)
    ]
    table = pa.Table.from_pylist(
        rows,
        schema=pa.schema(
            [
                ("group", pa.int32()),
                ("items", pa.list_(pa.int64())),
                ("attrs", pa.struct([("v", pa.int64()), ("at", pa.timestamp("us", tz="UTC"))])),
                ("props", pa.map_(pa.string(), pa.float64())),
            ]
        ),
    )
    write_deltalake(tmp_path / "a", table)
    write_deltalake(tmp_path / "b", _shuffled(table), partition_by=["group"])
    first = table_digest(tmp_path / "a")
    assert first.digest == table_digest(tmp_path / "b").digest
    assert first.schema[0] == ColumnSchema("attrs", "struct<at: timestamp[us, tz=UTC], v: int64>")
    changed = _set(table, "items", 7, [9])
    assert arrow_table_digest(changed).digest != first.digest


def test_struct_field_order_does_not_count() -> None:
    a_then_b = pa.struct([("a", pa.int64()), ("b", pa.string())])
    b_then_a = pa.struct([("b", pa.string()), ("a", pa.int64())])
    ab = pa.table({"s": pa.array([{"a": 1, "b": "x"}], a_then_b)})
    ba = pa.table({"s": pa.array([{"b": "x", "a": 1}], b_then_a)})
    assert arrow_table_digest(ab).digest == arrow_table_digest(ba).digest


def test_null_struct_ignores_its_childrens_values() -> None:
    children = [pa.array([1, 2], pa.int64())]
    fields = [pa.field("a", pa.int64())]
    with_values = pa.StructArray.from_arrays(children, fields=fields, mask=pa.array([False, True]))
    other_child = [pa.array([1, 99], pa.int64())]
    other = pa.StructArray.from_arrays(other_child, fields=fields, mask=pa.array([False, True]))
    assert arrow_table_digest(pa.table({"s": with_values})).digest == arrow_table_digest(
        pa.table({"s": other})
    ).digest


def test_bytes_under_nulls_do_not_count() -> None:
    def with_garbage(garbage: int) -> pa.Table:
        values = pa.py_buffer(struct.pack("<3q", 1, garbage, 3))
        validity = pa.py_buffer(bytes([0b11111101 if garbage else 0b101]))
        array = pa.Array.from_buffers(pa.int64(), 3, [validity, values], null_count=1)
        return pa.table({"v": array})

    assert arrow_table_digest(with_garbage(0)).digest == arrow_table_digest(
        with_garbage(12345)
    ).digest


@pytest.mark.parametrize(
    ("given", "normalised"),
    [
        (pa.string_view(), pa.large_string()),
        (pa.dictionary(pa.int8(), pa.string()), pa.large_string()),
        (pa.binary(16), pa.large_binary()),
        (pa.timestamp("ns", tz="Europe/Paris"), pa.timestamp("us", tz="Europe/Paris")),
        (pa.timestamp("ms"), pa.timestamp("us")),
        (pa.date64(), pa.date32()),
        (pa.list_(pa.field("element", pa.string(), nullable=False)),
         pa.large_list(pa.field("item", pa.large_string()))),
        (pa.map_(pa.string(), pa.binary()), pa.map_(pa.large_string(), pa.large_binary())),
        (pa.int16(), pa.int16()),
        (pa.decimal128(5, 1), pa.decimal128(5, 1)),
    ],
)
def test_normalise_type(given: pa.DataType, normalised: pa.DataType) -> None:
    assert normalise_type(given) == normalised


# --- tables: primary keys -----------------------------------------------------------------------


def test_primary_key_digest_holds_across_layouts(tmp_path: Path, base_digest: str) -> None:
    _write_flat(tmp_path / "a", BASE)
    _write_partitioned(tmp_path / "b", BASE)
    by_key = table_digest(tmp_path / "a", primary_key=["id"])
    assert by_key.digest == table_digest(tmp_path / "b", primary_key=["id"]).digest
    assert by_key.digest != base_digest  # the ordering is part of the digest
    duplicated_key = table_digest(tmp_path / "a", primary_key=["category"])
    assert duplicated_key.digest == table_digest(tmp_path / "b", primary_key=["category"]).digest
    assert len({by_key.digest, duplicated_key.digest, base_digest}) == 3


def test_primary_key_errors(tmp_path: Path) -> None:
    write_deltalake(tmp_path / "t", BASE.slice(0, 10))
    with pytest.raises(ValueError, match="not in the table"):
        table_digest(tmp_path / "t", primary_key=["nope"])
    with pytest.raises(ValueError, match="nested"):
        table_digest(tmp_path / "t", primary_key=["tags"])
    with pytest.raises(TypeError):
        table_digest(tmp_path / "t", primary_key="id")


# --- tables: versions and edge cases ------------------------------------------------------------


def test_time_travel_gives_each_versions_digest(tmp_path: Path) -> None:
    first, second, third = BASE.slice(0, 100), BASE.slice(100, 50), BASE.slice(500, 20)
    path = tmp_path / "t"
    write_deltalake(path, first)
    write_deltalake(path, second, mode="append")
    write_deltalake(path, third, mode="overwrite")
    expected = [
        arrow_table_digest(first).digest,
        arrow_table_digest(pa.concat_tables([first, second])).digest,
        arrow_table_digest(third).digest,
    ]
    assert [table_digest(path, version).digest for version in range(3)] == expected
    assert len(set(expected)) == 3
    latest = table_digest(path)
    assert (latest.digest, latest.version, latest.rows) == (expected[2], 2, 20)
    loaded = DeltaTable(path, version=1)
    assert table_digest(loaded).digest == expected[1]
    assert table_digest(loaded, 0).digest == expected[0]
    assert loaded.version() == 1  # the caller's table is not moved
    assert table_digest(str(path), version=1).rows == 150


def test_empty_tables(tmp_path: Path) -> None:
    write_deltalake(tmp_path / "a", BASE.slice(0, 0))
    write_deltalake(tmp_path / "b", BASE.slice(0, 0).select(["id", "name"]))
    write_deltalake(tmp_path / "c", BASE.slice(0, 1))
    empty = table_digest(tmp_path / "a")
    assert empty.rows == 0
    assert len(empty.schema) == len(BASE.schema)
    assert empty.digest == arrow_table_digest(BASE.slice(0, 0)).digest
    others = {table_digest(tmp_path / "b").digest, table_digest(tmp_path / "c").digest}
    assert len({empty.digest, *others}) == 3


def test_one_and_several_batches(tmp_path: Path) -> None:
    """Tables around the IPC batch size: each row count gives one digest, layouts agree."""
    ids = pa.array(range(IPC_BATCH_ROWS + 1), pa.int64())
    table = pa.table({"id": ids, "x": pc.cast(ids, pa.string())})
    write_deltalake(tmp_path / "a", table)
    write_deltalake(tmp_path / "b", _shuffled(table), mode="append")
    assert table_digest(tmp_path / "a").digest == table_digest(tmp_path / "b").digest
    assert arrow_table_digest(table.slice(0, IPC_BATCH_ROWS)).digest != table_digest(
        tmp_path / "a"
    ).digest


GOLDEN_DIGEST = "blake3:575176b848297d1b9f12faedcd9aad363882bddbe142c96a9fbaabe40ae47a78"


def test_golden_digest_pins_the_recipe() -> None:
    """A fixed table's digest. If this fails after an upgrade of pyarrow or blake3, digests
    recorded before it no longer match: bump TABLE_DIGEST_FORMAT, never the constant alone."""
    table = pa.table(
        {
            "name": pa.array(["b", None, "a"], pa.string()),
            "id": pa.array([2, 1, 3], pa.int32()),
            "x": pa.array([-0.0, math.nan, 1.5], pa.float64()),
            "at": pa.array([0, None, 86_400_000_000], pa.timestamp("us", tz="UTC")),
            "tags": pa.array([["p"], [], None], pa.list_(pa.string())),
        }
    )
    assert arrow_table_digest(table).digest == GOLDEN_DIGEST


def test_a_million_rows(tmp_path: Path) -> None:
    count = 1_000_000
    ids = pa.array(range(count), pa.int64())
    table = pa.table(
        {
            "id": ids,
            "category": pc.binary_join_element_wise(
                "c", pc.cast(pc.bit_wise_and(ids, 7), pa.string()), ""
            ),
            "amount": pc.random(count, initializer=1),
            "at": pc.cast(pc.multiply(ids, 1_000_000), pa.timestamp("us", tz="UTC")),
            "flag": pc.greater(pc.random(count, initializer=2), 0.5),
        }
    )
    write_deltalake(tmp_path / "a", table)
    write_deltalake(tmp_path / "b", _shuffled(table), partition_by=["category"])
    flat = table_digest(tmp_path / "a")
    assert flat.rows == count
    assert flat.digest == table_digest(tmp_path / "b").digest
    assert table_digest(tmp_path / "a", primary_key=["id"]).rows == count


# --- tables on S3 ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def s3_storage_options() -> Iterator[dict[str, str]]:
    with running_moto_server() as endpoint:
        yield {
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_REGION": "us-east-1",
            "AWS_ALLOW_HTTP": "true",
        }


def test_table_on_s3_digests_like_the_local_one(
    s3_storage_options: dict[str, str], base_digest: str
) -> None:
    bucket = f"tables-{uuid.uuid4().hex[:12]}"
    client: Any = boto3.client(
        "s3",
        endpoint_url=s3_storage_options["AWS_ENDPOINT_URL"],
        aws_access_key_id="test",
        aws_secret_access_key="test",
        region_name="us-east-1",
    )
    client.create_bucket(Bucket=bucket)
    uri = f"s3://{bucket}/silver/orders"
    write_deltalake(uri, _shuffled(BASE), partition_by=["category"],
                    storage_options=s3_storage_options)
    write_deltalake(uri, BASE.slice(0, 1), mode="append", storage_options=s3_storage_options)
    assert table_digest(uri, 0, storage_options=s3_storage_options).digest == base_digest
    assert table_digest(uri, storage_options=s3_storage_options).rows == BASE.num_rows + 1
