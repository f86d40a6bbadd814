"""Content digests: blobs, Delta table versions and phase fingerprints. The recipes:
docs/artifacts.md ("Digests in detail").
"""

from __future__ import annotations

import io
import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Any, Protocol

import blake3
import pyarrow as pa
import pyarrow.compute as pc
from deltalake import DeltaTable

DIGEST_PREFIX = "blake3:"
TABLE_DIGEST_FORMAT = "cr-table-v1"
FINGERPRINT_FORMAT = "cr-fingerprint-v1"
IPC_BATCH_ROWS = 65_536
STREAM_CHUNK_BYTES = 8 * 1024 * 1024
MULTITHREAD_MIN_BYTES = 1024 * 1024

_DIGEST_RE = re.compile(r"^blake3:([0-9a-f]{64})$")

BytesLike = bytes | bytearray | memoryview
PathLike = str | os.PathLike[str]


class Readable(Protocol):
    """A binary stream: anything with `read(n)` returning bytes (files, sockets, bodies)."""

    def read(self, size: int = ..., /) -> bytes: ...


class Writable(Protocol):
    def write(self, data: bytes | memoryview, /) -> int | None: ...


def _hasher(size_hint: int | None) -> blake3.blake3:
    """A blake3 hasher, using every core when the input is large (or of unknown size)."""
    if size_hint is not None and size_hint < MULTITHREAD_MIN_BYTES:
        return blake3.blake3()
    return blake3.blake3(max_threads=blake3.blake3.AUTO)


def format_digest(hex_digest: str) -> str:
    return DIGEST_PREFIX + hex_digest


def digest_hex(digest: str) -> str:
    """The 64 hex digits of a `blake3:<hex>` digest; ValueError for anything else."""
    match = _DIGEST_RE.match(digest)
    if match is None:
        raise ValueError(f"not a blake3 digest: {digest!r}")
    return match.group(1)


# ---------------------------------------------------------------------------------------------
# Blobs


@dataclass(frozen=True)
class StreamDigest:
    digest: str
    size_bytes: int


def stream_digest(
    stream: Readable | IO[bytes],
    *,
    sink: Writable | None = None,
    chunk_bytes: int = STREAM_CHUNK_BYTES,
) -> StreamDigest:
    """Digest of everything read from `stream`, in chunks; each chunk also goes to `sink`.

    One pass for "copy and hash" (the artifact store writes a temp file while it hashes).
    """
    hasher = _hasher(None)
    size = 0
    readinto = getattr(stream, "readinto", None)
    if callable(readinto):
        buffer = bytearray(chunk_bytes)
        view = memoryview(buffer)
        while True:
            count = readinto(view)
            if not count:
                break
            chunk = view[:count]
            hasher.update(chunk)
            if sink is not None:
                sink.write(chunk)
            size += count
    else:
        while True:
            data = stream.read(chunk_bytes)
            if not data:
                break
            hasher.update(data)
            if sink is not None:
                sink.write(data)
            size += len(data)
    return StreamDigest(format_digest(hasher.hexdigest()), size)


def blob_digest(source: BytesLike | PathLike | Readable | IO[bytes]) -> str:
    """`blake3:<hex>` of a blob: bytes-like content, a file path (str or PathLike), or a
    binary stream (read to its end, not closed). A `str` is a path, never content.
    """
    if isinstance(source, bytes | bytearray | memoryview):
        size = memoryview(source).nbytes
        return format_digest(_hasher(size).update(source).hexdigest())
    if isinstance(source, str | os.PathLike):
        with open(source, "rb", buffering=0) as file:
            return stream_digest(file).digest
    return stream_digest(source).digest


# ---------------------------------------------------------------------------------------------
# Tables


@dataclass(frozen=True)
class ColumnSchema:
    """A column of the normalised schema that was hashed: its name and Arrow type."""

    name: str
    type: str


@dataclass(frozen=True)
class TableDigest:
    digest: str
    rows: int
    schema: tuple[ColumnSchema, ...]
    version: int | None = None
    """The Delta table version hashed (None for in-memory Arrow data)."""


def table_digest(
    table: DeltaTable | PathLike,
    version: int | None = None,
    *,
    primary_key: Sequence[str] | None = None,
    storage_options: Mapping[str, str] | None = None,
) -> TableDigest:
    """Canonical content digest of one version of a Delta table (the latest by default).

    `table` is a URI or path, or a loaded `DeltaTable` (reopened at `version` when that
    differs from its loaded version: pass `storage_options` again for a remote table).
    """
    options = dict(storage_options) if storage_options is not None else None
    if isinstance(table, DeltaTable):
        dt = table
        if version is not None and version != dt.version():
            dt = DeltaTable(dt.table_uri, version=version, storage_options=options)
    else:
        dt = DeltaTable(os.fspath(table), version=version, storage_options=options)
    rows = pa.RecordBatchReader.from_stream(dt.scan())
    result = arrow_table_digest(rows, primary_key=primary_key)
    return TableDigest(result.digest, result.rows, result.schema, dt.version())


def arrow_table_digest(data: Any, *, primary_key: Sequence[str] | None = None) -> TableDigest:
    """The `table_digest` recipe over in-memory Arrow data (a pyarrow Table, RecordBatch or
    anything exporting an Arrow stream): the digest a Delta table holding these rows gets,
    for types that Delta keeps as they are (not unsigned integers, for one).
    """
    table = _as_arrow_table(data)
    schema = normalise_schema(table.schema)
    table = table.select(schema.names).cast(schema)
    table = pa.table([_canonical_values(column) for column in table.columns], schema=schema)
    key = _check_primary_key(schema, primary_key)
    order = _sort_indices(table, key)
    table = table.take(order)
    header = {"format": TABLE_DIGEST_FORMAT, "order": "key" if key else "all", "key": key}
    hasher = _hasher(None)
    hasher.update(_canonical_json(header) + b"\n")
    _write_ipc(table, _HashSink(hasher))
    columns = tuple(ColumnSchema(field.name, str(field.type)) for field in schema)
    return TableDigest(format_digest(hasher.hexdigest()), table.num_rows, columns)


def _as_arrow_table(data: Any) -> Any:
    if isinstance(data, pa.Table):
        return data
    if isinstance(data, pa.RecordBatch):
        return pa.Table.from_batches([data])
    if isinstance(data, pa.RecordBatchReader):
        return data.read_all()
    if hasattr(data, "__arrow_c_stream__"):
        return pa.RecordBatchReader.from_stream(data).read_all()
    raise TypeError(f"not Arrow tabular data: {type(data).__name__}")


def normalise_type(data_type: Any) -> Any:
    """The type a column of `data_type` is hashed as (see the module docstring)."""
    t = pa.types
    if t.is_dictionary(data_type) or t.is_run_end_encoded(data_type):
        return normalise_type(data_type.value_type)
    if t.is_string(data_type) or t.is_large_string(data_type) or t.is_string_view(data_type):
        return pa.large_string()
    if (
        t.is_binary(data_type)
        or t.is_large_binary(data_type)
        or t.is_binary_view(data_type)
        or t.is_fixed_size_binary(data_type)
    ):
        return pa.large_binary()
    if t.is_timestamp(data_type):
        return pa.timestamp("us", tz=data_type.tz)
    if t.is_date64(data_type):
        return pa.date32()
    if t.is_decimal32(data_type) or t.is_decimal64(data_type):
        return pa.decimal128(data_type.precision, data_type.scale)
    if (
        t.is_list(data_type)
        or t.is_large_list(data_type)
        or t.is_fixed_size_list(data_type)
        or t.is_list_view(data_type)
        or t.is_large_list_view(data_type)
    ):
        return pa.large_list(pa.field("item", normalise_type(data_type.value_type)))
    if t.is_map(data_type):
        return pa.map_(normalise_type(data_type.key_type), normalise_type(data_type.item_type))
    if t.is_struct(data_type):
        fields = sorted((data_type.field(i) for i in range(data_type.num_fields)),
                        key=lambda field: field.name)
        return pa.struct([pa.field(field.name, normalise_type(field.type)) for field in fields])
    return data_type


def normalise_schema(schema: Any) -> Any:
    """Columns sorted by name, types normalised, every field nullable, no metadata."""
    names = list(schema.names)
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate column names: {names}")
    return pa.schema(
        [pa.field(name, normalise_type(schema.field(name).type)) for name in sorted(names)]
    )


def _is_nested(data_type: Any) -> bool:
    return bool(pa.types.is_nested(data_type))


def _needs_canonical(data_type: Any) -> bool:
    """Whether values of this (normalised) type need the float or null-struct pass."""
    if data_type in (pa.float32(), pa.float64()) or pa.types.is_struct(data_type):
        return True
    if pa.types.is_large_list(data_type):
        return _needs_canonical(data_type.value_type)
    if pa.types.is_map(data_type):
        return _needs_canonical(data_type.key_type) or _needs_canonical(data_type.item_type)
    return False


def _canonical_values(column: Any) -> Any:
    if not _needs_canonical(column.type):
        return column
    return pa.chunked_array(
        [_canonical_array(chunk) for chunk in column.chunks], type=column.type
    )


def _canonical_array(array: Any) -> Any:
    """-0.0 -> 0.0 and one NaN in floats; a null struct's children null (recursively)."""
    data_type = array.type
    if not _needs_canonical(data_type):
        return array
    if data_type in (pa.float32(), pa.float64()):
        zero = pa.scalar(0.0, data_type)
        array = pc.if_else(pc.equal(array, zero), zero, array)
        return pc.if_else(pc.is_nan(array), pa.scalar(math.nan, data_type), array)
    mask = array.is_null() if array.null_count else None
    if pa.types.is_struct(data_type):
        children = [_canonical_array(child) for child in array.flatten()]
        fields = [data_type.field(i) for i in range(data_type.num_fields)]
        return pa.StructArray.from_arrays(children, fields=fields, mask=mask)
    if pa.types.is_large_list(data_type):
        values = _canonical_array(array.values)
        return pa.LargeListArray.from_arrays(array.offsets, values, type=data_type, mask=mask)
    # map: offsets index the whole (unsliced) entries array
    entries = array.values
    keys = _canonical_array(entries.field(0))
    items = _canonical_array(entries.field(1))
    return pa.MapArray.from_arrays(array.offsets, keys, items, type=data_type, mask=mask)


def _check_primary_key(schema: Any, primary_key: Sequence[str] | None) -> list[str]:
    if primary_key is None:
        return []
    if isinstance(primary_key, str):
        raise TypeError("primary_key is a sequence of column names, not a string")
    key = list(primary_key)
    if not key:
        raise ValueError("primary_key is empty")
    if len(set(key)) != len(key):
        raise ValueError(f"primary_key repeats a column: {key}")
    for name in key:
        if name not in schema.names:
            raise ValueError(f"primary key column {name!r} is not in the table")
        if _is_nested(schema.field(name).type):
            raise ValueError(f"primary key column {name!r} is nested: {schema.field(name).type}")
    return key


def _sort_indices(table: Any, key: list[str]) -> Any:
    if table.num_rows <= 1:
        return pa.array(range(table.num_rows), pa.int64())
    if key:
        if _unique(table, key):
            return pc.sort_indices(
                table, sort_keys=[(name, "ascending", "at_end") for name in key]
            )
        return _sort_by(table, key + [name for name in table.column_names if name not in key])
    return _sort_by(table, list(table.column_names))


def _sort_by(table: Any, names: list[str]) -> Any:
    """Sort indices by the scalar columns of `names` (in that order), then by the nested
    ones' canonical text, built only when the scalar columns leave ties."""
    scalar = [name for name in names if not _is_nested(table.schema.field(name).type)
              and not pa.types.is_null(table.schema.field(name).type)]
    nested = [name for name in names if _is_nested(table.schema.field(name).type)]
    if nested and scalar and _unique(table, scalar):
        nested = []
    if not scalar and not nested:
        return pa.array(range(table.num_rows), pa.int64())
    columns = [table.column(name) for name in scalar]
    columns += [_sort_text(table.column(name)) for name in nested]
    sort_table = pa.table(columns, names=[f"k{i}" for i in range(len(columns))])
    return pc.sort_indices(
        sort_table, sort_keys=[(name, "ascending", "at_end") for name in sort_table.column_names]
    )


def _unique(table: Any, names: list[str]) -> bool:
    """Whether no two rows are equal on these (scalar) columns."""
    return bool(table.select(names).group_by(names).aggregate([]).num_rows == table.num_rows)


def _sort_proxy_type(data_type: Any) -> Any:
    """`data_type` with temporal leaves as integers: their Python values (datetimes with
    time zones) would make the text depend on the time zone library."""
    t = pa.types
    if t.is_timestamp(data_type) or t.is_time64(data_type) or t.is_duration(data_type):
        return pa.int64()
    if t.is_date32(data_type) or t.is_time32(data_type):
        return pa.int32()
    if t.is_large_list(data_type):
        return pa.large_list(pa.field("item", _sort_proxy_type(data_type.value_type)))
    if t.is_map(data_type):
        return pa.map_(_sort_proxy_type(data_type.key_type),
                       _sort_proxy_type(data_type.item_type))
    if t.is_struct(data_type):
        return pa.struct([
            pa.field(field.name, _sort_proxy_type(field.type))
            for field in (data_type.field(i) for i in range(data_type.num_fields))
        ])
    return data_type


def _json_default(value: object) -> object:
    if isinstance(value, bytes):
        return value.hex()
    return str(value)  # Decimal


def _sort_text(column: Any) -> Any:
    """A canonical text of each nested value (JSON of its Python value, temporal leaves as
    integers): its only use is a deterministic row order."""
    proxy = column.cast(_sort_proxy_type(column.type))
    encode = json.JSONEncoder(
        ensure_ascii=False, separators=(",", ":"), default=_json_default
    ).encode
    return pa.array(
        [None if value is None else encode(value) for value in proxy.to_pylist()],
        pa.large_string(),
    )


class _HashSink(io.RawIOBase):
    """A write-only file that feeds blake3 (the IPC writer's sink)."""

    def __init__(self, hasher: blake3.blake3) -> None:
        self._hasher = hasher

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data)
        self._hasher.update(view)
        return view.nbytes


def _write_ipc(table: Any, sink: _HashSink) -> None:
    """Uncompressed Arrow IPC stream, fixed batches of IPC_BATCH_ROWS rows."""
    options = pa.ipc.IpcWriteOptions(
        metadata_version=pa.ipc.MetadataVersion.V5,
        compression=None,
        use_threads=False,
        emit_dictionary_deltas=False,
        unify_dictionaries=False,
    )
    with pa.ipc.new_stream(sink, table.schema, options=options) as writer:
        for offset in range(0, table.num_rows, IPC_BATCH_ROWS):
            part = table.slice(offset, IPC_BATCH_ROWS).combine_chunks()
            for batch in part.to_batches():
                writer.write_batch(batch)


# ---------------------------------------------------------------------------------------------
# Fingerprints


def _canonical_json(value: object) -> bytes:
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def fingerprint(
    kind: str,
    params: Mapping[str, Any],
    git_sha: str,
    input_digests: Mapping[str, str] | Sequence[str],
) -> str:
    """`blake3:<hex>` over canonical JSON of a phase's kind, params, git_sha and inputs.

    Keys are sorted at every level, so mapping order never counts; `input_digests` is a
    mapping (input name -> digest) or a sequence, whose order counts (sort it if the inputs
    are a set). Params must be JSON values (TypeError otherwise; NaN and infinities are
    refused: ValueError).
    """
    if isinstance(input_digests, str):
        raise TypeError("input_digests is a mapping or a sequence of digests, not a string")
    inputs: dict[str, str] | list[str] = (
        dict(input_digests) if isinstance(input_digests, Mapping) else list(input_digests)
    )
    document = {
        "format": FINGERPRINT_FORMAT,
        "kind": kind,
        "params": dict(params),
        "git_sha": git_sha,
        "inputs": inputs,
    }
    return format_digest(blake3.blake3(_canonical_json(document)).hexdigest())
