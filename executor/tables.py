"""Delta table writes (append, overwrite, merge on keys), deterministic, with the schema
evolution rules decided before anything is written. The rules, keys and how changes are
applied: docs/tables.md.
"""

from __future__ import annotations

import json
import os
import re
import urllib.parse
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.dataset as pds
from deltalake import CommitProperties, DeltaTable, write_deltalake

from executor.errors import TerminalPhaseError
from executor.kinds.base import WriteMode

KEY_METADATA = "controlroom.key"
SCHEMA_CHANGE_METADATA = "controlroom.schema_change"
WRITE_ID_METADATA = "controlroom.write_id"
_HISTORY_SCAN = 100


ChangeKind = Literal["INITIAL", "UNCHANGED", "NON_BREAKING", "BREAKING"]

_INT_RANK = {"int8": 1, "int16": 2, "int32": 3, "int64": 4}
_BREAKING_CHANGES = frozenset(
    {"removed", "added_required", "narrowed", "type_changed", "made_required", "keys_changed"}
)


@dataclass(frozen=True)
class ColumnChange:
    """One difference between two schemas. `change` is one of: added, made_nullable,
    widened (NON_BREAKING); removed, added_required, narrowed, type_changed, made_required,
    keys_changed (BREAKING). Types are Arrow type names (float32 / float64 rather than
    Arrow's float / double); for keys_changed, `column` is "(keys)" and the types are the
    old and new key lists."""

    column: str
    change: str
    old_type: str | None
    new_type: str | None

    @property
    def breaking(self) -> bool:
        return self.change in _BREAKING_CHANGES

    def to_json(self) -> dict[str, Any]:
        """`{column, change, old_type, new_type}`: as the catalog records it."""
        return {"column": self.column, "change": self.change, "old_type": self.old_type,
                "new_type": self.new_type}

    def describe(self) -> str:
        if self.change == "keys_changed":
            return f"keys changed {self.old_type} → {self.new_type}"
        if self.change == "added":
            return f"column {self.column} added ({self.new_type}, nullable)"
        if self.change == "added_required":
            return f"column {self.column} added as non-nullable {self.new_type}"
        if self.change == "removed":
            return f"column {self.column} removed (was {self.old_type})"
        if self.change in ("widened", "narrowed"):
            return f"column {self.column} {self.change} {self.old_type} → {self.new_type}"
        if self.change == "type_changed":
            return f"column {self.column} changed type {self.old_type} → {self.new_type}"
        if self.change == "made_nullable":
            return f"column {self.column} made nullable ({self.new_type})"
        return f"column {self.column} made non-nullable ({self.new_type})"


@dataclass(frozen=True)
class SchemaChange:
    kind: ChangeKind
    changes: list[ColumnChange] = field(default_factory=list)

    @property
    def breaking(self) -> list[ColumnChange]:
        return [c for c in self.changes if c.breaking]


@dataclass(frozen=True)
class SchemaVersion:
    """A schema the caller expects the table to have (e.g. the catalog's active version)."""

    schema: Any  # pa.Schema
    keys: tuple[str, ...] = ()
    version: int | None = None


@dataclass(frozen=True)
class WriteResult:
    version: int
    rows_written: int
    schema: Any  # pa.Schema, as read back from the table (key metadata included)
    change: SchemaChange
    content: Any = field(default=None, repr=False, compare=False)
    """The Arrow table the written version holds, when it holds exactly the rows written
    (an overwrite, or the first write of a table): its digest needs no read back. None
    after an append to or a merge into existing rows."""


class SchemaBreakingChange(Exception):
    """A write would change a table's schema in a breaking way; nothing was written.
    `schema` is the schema the write proposed (Delta types, keys recorded), when known."""

    def __init__(self, table: str, changes: Sequence[ColumnChange],
                 schema: Any = None) -> None:
        self.table = table
        self.changes = list(changes)
        self.schema = schema
        super().__init__(f"{table}: " + "; ".join(c.describe() for c in self.changes))


class SchemaDriftError(ValueError):
    """The table's schema is not the `expected` one given to the write."""


# ---------------------------------------------------------------------------------------------
# The workspace lake


_URI_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")
MAX_LOCATION_CHARS = 300
"""How much of a refused location an error repeats."""


class OutsideLake(TerminalPhaseError):
    """A table or file location is not under the run's workspace lake: nothing was read or
    written (docs/tables.md, "The workspace lake")."""


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _real(path: str) -> str:
    """`path` (absolute, normalised) with its deepest existing ancestor's symbolic links
    resolved; the components below that ancestor kept as written (they do not exist yet)."""
    head, tail = path, ""
    while not os.path.lexists(head):
        parent, name = os.path.split(head)
        if parent == head:
            break
        head, tail = parent, os.path.join(name, tail) if tail else name
    real = os.path.realpath(head)
    return os.path.join(real, tail) if tail else real


def confine(location: str | os.PathLike[str], lake_root: Path | None, *,
            what: str = "table") -> str:
    """Where `location` (a table URI or a file path, globs allowed) is, confined to
    `lake_root`: a relative path is under the lake; an absolute path (or a `file://` URI)
    must be inside it once normalised (`..` collapsed) and its deepest existing ancestor's
    symbolic links resolved; any other URI (`s3://`...) is refused. Answers the absolute,
    resolved path to use; `OutsideLake` when it leaves the lake. `lake_root` None: not
    confined, `location` as given."""
    text = os.fspath(location)
    if lake_root is None:
        return text
    shown = text if len(text) <= MAX_LOCATION_CHARS else text[:MAX_LOCATION_CHARS] + "..."

    def refuse(why: str) -> OutsideLake:
        return OutsideLake(f"{what} {shown!r} {why} (the workspace lake is {lake_root})",
                           error_type="OutsideLake")

    if not text or "\x00" in text:
        raise refuse("is not a path")
    scheme = _URI_SCHEME.match(text)
    if scheme is not None and len(scheme.group(1)) > 1:     # not a drive letter
        if scheme.group(1).lower() != "file":
            raise refuse("is not a local path: a worker's lake is a local directory, "
                         "object-store URIs are refused")
        parsed = urllib.parse.urlsplit(text)
        if parsed.netloc not in ("", "localhost") or parsed.query or parsed.fragment:
            raise refuse("is not a local file URI")
        text = urllib.parse.unquote(parsed.path)
    written = os.path.normpath(os.path.abspath(lake_root))
    root = os.path.realpath(written)
    path = os.path.normpath(os.path.join(written, text))   # an absolute `text` replaces it
    if not (_inside(path, written) or _inside(path, root)):
        raise refuse("is outside the workspace lake")
    real = _real(path)
    if not _inside(real, root):
        raise refuse("leaves the workspace lake through a symbolic link")
    return real


def confine_files(files: Iterable[str], lake_root: Path | None, *, what: str) -> list[str]:
    """`files` (e.g. a glob's matches) each checked with `confine`: a match that is a
    symbolic link out of the lake is refused."""
    return [confine(f, lake_root, what=what) for f in files]


# ---------------------------------------------------------------------------------------------
# Schemas and keys


def read_schema(uri: str | os.PathLike[str], storage_options: Mapping[str, str] | None = None
                ) -> Any:
    """The table's current schema as a `pa.Schema` (with Delta column metadata, keys
    included), or None when there is no Delta table at `uri`."""
    dt = _open(uri, storage_options)
    return None if dt is None else _table_schema(dt)


def table_keys(uri: str | os.PathLike[str], storage_options: Mapping[str, str] | None = None
               ) -> list[str] | None:
    """The table's recorded keys (empty when none are recorded), None when there is no
    table."""
    schema = read_schema(uri, storage_options)
    return None if schema is None else schema_keys(schema)


def schema_keys(schema: Any) -> list[str]:
    """The key columns recorded in a schema's field metadata, in key order."""
    ranked: list[tuple[int, str]] = []
    for f in schema:
        raw = (f.metadata or {}).get(KEY_METADATA.encode())
        if raw is not None:
            ranked.append((int(raw), f.name))
    return [name for _, name in sorted(ranked)]


def with_keys(schema: Any, keys: Sequence[str]) -> Any:
    """`schema` with `keys` recorded in its field metadata (and no other key marks)."""
    key_list = list(keys)
    missing = [k for k in key_list if k not in schema.names]
    if missing:
        raise ValueError(f"key column(s) {missing} not in the schema")
    fields = []
    for f in schema:
        metadata = {k: v for k, v in (f.metadata or {}).items() if k != KEY_METADATA.encode()}
        if f.name in key_list:
            metadata[KEY_METADATA.encode()] = str(key_list.index(f.name) + 1).encode()
        fields.append(f.with_metadata(metadata) if metadata else f.remove_metadata())
    return pa.schema(fields)


def schema_json(schema: Any) -> list[dict[str, Any]]:
    """A schema as the catalog records it: `[{name, type, nullable}]` in column order, type
    names as in `ColumnChange` (float64 rather than double), `key` (1-based position) on key
    columns."""
    columns: list[dict[str, Any]] = []
    keys = schema_keys(schema)
    for f in schema:
        column: dict[str, Any] = {"name": f.name, "type": _type_name(f.type),
                                  "nullable": bool(f.nullable)}
        if f.name in keys:
            column["key"] = keys.index(f.name) + 1
        columns.append(column)
    return columns


def delta_type(data_type: Any) -> Any:
    """The Arrow type Delta stores for `data_type` (see the module notes)."""
    t = pa.types
    if t.is_dictionary(data_type):
        return delta_type(data_type.value_type)
    if t.is_large_string(data_type) or t.is_string_view(data_type):
        return pa.string()
    if (t.is_large_binary(data_type) or t.is_binary_view(data_type)
            or t.is_fixed_size_binary(data_type)):
        return pa.binary()
    if t.is_timestamp(data_type):
        return pa.timestamp("us", "UTC" if data_type.tz is not None else None)
    if t.is_date64(data_type):
        return pa.date32()
    if t.is_float16(data_type):
        return pa.float32()
    if t.is_uint8(data_type):
        return pa.int16()
    if t.is_uint16(data_type):
        return pa.int32()
    if t.is_uint32(data_type) or t.is_uint64(data_type):
        return pa.int64()
    if t.is_list(data_type) or t.is_large_list(data_type) or t.is_fixed_size_list(data_type):
        return pa.list_(data_type.value_field.with_type(delta_type(data_type.value_type)))
    if t.is_struct(data_type):
        return pa.struct([
            data_type.field(i).with_type(delta_type(data_type.field(i).type))
            for i in range(data_type.num_fields)
        ])
    if t.is_map(data_type):
        return pa.map_(delta_type(data_type.key_type), delta_type(data_type.item_type))
    return data_type


def delta_schema(schema: Any) -> Any:
    """`schema` with Delta's types, field metadata kept, schema metadata dropped."""
    return pa.schema([f.with_type(delta_type(f.type)) for f in schema])


def classify(current: Any, incoming: Any, keys: Sequence[str] | None = None) -> SchemaChange:
    """Classify the change from `current` (None: no table yet) to `incoming`. Both are
    compared with Delta's types (`delta_type`); `current`'s recorded keys (field metadata)
    are compared with `keys` unless `keys` is None."""
    if current is None:
        return SchemaChange("INITIAL", [])
    old = delta_schema(current)
    new = delta_schema(incoming)
    changes: list[ColumnChange] = []
    for f in old:
        if f.name not in new.names:
            changes.append(ColumnChange(f.name, "removed", _type_name(f.type), None))
            continue
        g = new.field(f.name)
        if not _same_type(f.type, g.type):
            change = _type_change(f.type, g.type)
            changes.append(ColumnChange(f.name, change, _type_name(f.type), _type_name(g.type)))
        if f.nullable != g.nullable:
            change = "made_nullable" if g.nullable else "made_required"
            changes.append(ColumnChange(f.name, change, _type_name(f.type), _type_name(g.type)))
    for g in new:
        if g.name not in old.names:
            change = "added" if g.nullable else "added_required"
            changes.append(ColumnChange(g.name, change, None, _type_name(g.type)))
    if keys is not None:
        recorded = schema_keys(current)
        if recorded != list(keys):
            changes.append(ColumnChange("(keys)", "keys_changed", _key_text(recorded),
                                        _key_text(keys)))
    if any(c.breaking for c in changes):
        return SchemaChange("BREAKING", changes)
    return SchemaChange("NON_BREAKING" if changes else "UNCHANGED", changes)


def _key_text(keys: Sequence[str]) -> str:
    return "[" + ", ".join(keys) + "]" if keys else "(none)"


def _type_name(data_type: Any) -> str:
    names = {"halffloat": "float16", "float": "float32", "double": "float64"}
    text = str(data_type)
    return names.get(text, text)


def _same_type(a: Any, b: Any) -> bool:
    return bool(_strip_nested_metadata(a).equals(_strip_nested_metadata(b)))


def _strip_nested_metadata(data_type: Any) -> Any:
    t = pa.types
    if t.is_list(data_type):
        return pa.list_(_strip_field(data_type.value_field))
    if t.is_struct(data_type):
        return pa.struct([_strip_field(data_type.field(i)) for i in range(data_type.num_fields)])
    if t.is_map(data_type):
        return pa.map_(_strip_nested_metadata(data_type.key_type),
                       _strip_nested_metadata(data_type.item_type))
    return data_type


def _strip_field(f: Any) -> Any:
    return pa.field(f.name, _strip_nested_metadata(f.type), f.nullable)


def _widens(old: Any, new: Any) -> bool:
    t = pa.types
    old_name, new_name = str(old), str(new)
    if old_name in _INT_RANK and new_name in _INT_RANK:
        return _INT_RANK[new_name] > _INT_RANK[old_name]
    if t.is_float32(old) and t.is_float64(new):
        return True
    if old_name in ("int8", "int16", "int32") and t.is_float64(new):
        return True
    if t.is_decimal(old) and t.is_decimal(new) and not old.equals(new):
        return bool(new.scale >= old.scale
                    and new.precision - new.scale >= old.precision - old.scale)
    return False


def _type_change(old: Any, new: Any) -> str:
    if _widens(old, new):
        return "widened"
    if _widens(new, old):
        return "narrowed"
    return "type_changed"


# ---------------------------------------------------------------------------------------------
# Writes


def write_table(
    uri: str | os.PathLike[str],
    data: Any,
    *,
    mode: WriteMode,
    keys: Sequence[str] | None = None,
    partition_by: Sequence[str] | None = None,
    storage_options: Mapping[str, str] | None = None,
    commit_metadata: Mapping[str, Any] | None = None,
    expected: SchemaVersion | None = None,
    name: str | None = None,
    allow_breaking: bool = False,
) -> WriteResult:
    """Write `data` (a pyarrow Table, a RecordBatchReader or a list of dicts) to the Delta
    table at `uri`: append, overwrite, or merge (upsert on `keys`: matched rows updated,
    others inserted). The schema change is classified first (against `expected` when given,
    else the table's current schema); a BREAKING one raises `SchemaBreakingChange` and
    nothing is written, unless `allow_breaking` (an admin accepted the change in the catalog):
    then the incoming schema replaces the table's (see `_breaking_target`) in one overwrite
    commit. `name` names the table in messages (default: the URI)."""
    if mode not in ("append", "overwrite", "merge"):
        raise ValueError(f"mode must be append, overwrite or merge, not {mode!r}")
    if isinstance(keys, str):
        raise TypeError("keys is a sequence of column names, not a string")
    key_list = list(keys) if keys is not None else None
    if mode == "merge" and not key_list:
        raise ValueError("merge needs keys")
    if key_list is not None and len(set(key_list)) != len(key_list):
        raise ValueError(f"keys repeat a column: {key_list}")
    table_name = name if name is not None else os.fspath(uri)
    uri_text = os.fspath(uri)
    options = dict(storage_options) if storage_options is not None else None

    incoming = _incoming_table(data)
    if key_list is not None:
        missing = [k for k in key_list if k not in incoming.column_names]
        if missing:
            raise ValueError(f"{table_name}: key column(s) {missing} not in the data")

    dt = _open(uri_text, options)
    actual = None if dt is None else _table_schema(dt)
    if expected is not None:
        current = with_keys(expected.schema, expected.keys)
        if actual is not None:
            _check_drift(table_name, current, actual)
    else:
        current = actual
    change = classify(current, incoming.schema, key_list)
    breaking = change.kind == "BREAKING"
    if breaking and not allow_breaking:
        raise SchemaBreakingChange(table_name, change.breaking,
                                   _breaking_target(actual, incoming.schema, key_list))

    partitions = list(partition_by) if partition_by is not None else None
    if dt is not None:
        existing = list(dt.metadata().partition_columns)
        if partitions is not None and partitions != existing:
            raise ValueError(
                f"{table_name}: partitioned by {existing}, not {partitions}")
        partitions = existing
    if partitions:
        missing = [p for p in partitions if p not in incoming.column_names]
        if missing:
            raise ValueError(f"{table_name}: partition column(s) {missing} not in the data")

    if breaking:
        target = _breaking_target(actual, incoming.schema, key_list)
    else:
        target = _target_schema(actual, incoming.schema, key_list)
    batch = incoming.select(target.names).cast(target).combine_chunks()
    if mode == "merge":
        assert key_list is not None
        _check_merge_keys(table_name, batch, key_list)

    metadata = dict(commit_metadata or {})
    metadata[SCHEMA_CHANGE_METADATA] = change.kind
    write_id = uuid.uuid4().hex
    metadata[WRITE_ID_METADATA] = write_id
    commit = CommitProperties(custom_metadata=metadata)
    changed = {c.change for c in change.changes}

    if dt is None:
        write_deltalake(uri_text, batch, mode="overwrite" if mode == "overwrite" else "append",
                        partition_by=partitions or None, storage_options=options,
                        commit_properties=commit)
    elif breaking or "widened" in changed or "made_nullable" in changed:
        rewritten = _rewrite(table_name, dt, batch, target, mode, key_list)
        write_deltalake(dt, rewritten, mode="overwrite", schema_mode="overwrite",
                        partition_by=partitions or None, storage_options=options,
                        commit_properties=commit)
    elif mode == "merge":
        assert key_list is not None
        predicate = " AND ".join(f"t.{_quote(k)} = s.{_quote(k)}" for k in key_list)
        (
            dt.merge(batch, predicate, source_alias="s", target_alias="t",
                     merge_schema=bool(changed), commit_properties=commit)
            .when_matched_update_all()
            .when_not_matched_insert_all()
            .execute()
        )
    else:
        schema_mode: Literal["merge", "overwrite"] | None = None
        if changed:
            schema_mode = "merge" if mode == "append" else "overwrite"
        write_deltalake(dt, batch, mode=mode, schema_mode=schema_mode,
                        partition_by=partitions or None, storage_options=options,
                        commit_properties=commit)

    written = _written_version(uri_text, options, write_id)
    whole = dt is None or (mode == "overwrite" and not breaking
                           and "widened" not in changed and "made_nullable" not in changed)
    return WriteResult(written.version(), batch.num_rows, _table_schema(written), change,
                       content=batch if whole else None)


def _written_version(uri: str, options: dict[str, str] | None, write_id: str) -> DeltaTable:
    """The table at the version this write committed (found by its write id: another
    writer may have committed after it)."""
    dt = DeltaTable(uri, storage_options=options)
    for entry in dt.history(_HISTORY_SCAN):
        if entry.get(WRITE_ID_METADATA) == write_id:
            version = int(entry["version"])
            if version != dt.version():
                dt = DeltaTable(uri, version=version, storage_options=options)
            break
    return dt


def _open(uri: str | os.PathLike[str], storage_options: Mapping[str, str] | None
          ) -> DeltaTable | None:
    options = dict(storage_options) if storage_options is not None else None
    text = os.fspath(uri)
    if not DeltaTable.is_deltatable(text, storage_options=options):
        return None
    return DeltaTable(text, storage_options=options)


def _table_schema(dt: DeltaTable) -> Any:
    return pa.schema(dt.schema().to_arrow())


def _incoming_table(data: Any) -> Any:
    """One Arrow table with Delta's types (see `delta_type`), no schema metadata."""
    if isinstance(data, pa.RecordBatchReader):
        table = data.read_all()
    elif isinstance(data, pa.Table):
        table = data
    elif isinstance(data, pa.RecordBatch):
        table = pa.Table.from_batches([data])
    elif isinstance(data, Iterable) and not isinstance(data, str | bytes | Mapping):
        table = _from_rows(list(data))
    else:
        raise TypeError(f"data must be a pyarrow Table, RecordBatchReader or list of dicts, "
                        f"not {type(data).__name__}")
    if len(set(table.column_names)) != len(table.column_names):
        raise ValueError(f"duplicate column names: {table.column_names}")
    return table.cast(delta_schema(table.schema)).replace_schema_metadata(None)


def _from_rows(rows: list[Any]) -> Any:
    if not rows:
        raise ValueError("an empty list of rows has no schema: pass a pyarrow Table")
    names: dict[str, None] = {}
    for row in rows:
        if not isinstance(row, Mapping):
            raise TypeError(f"rows must be dicts, not {type(row).__name__}")
        names.update(dict.fromkeys(row))
    return pa.table({n: pa.array([row.get(n) for row in rows]) for n in names})


def _check_drift(table_name: str, expected: Any, actual: Any) -> None:
    def shape(schema: Any) -> list[tuple[str, str, bool]]:
        return [(f.name, _type_name(_strip_nested_metadata(f.type)), f.nullable)
                for f in delta_schema(schema)]

    if shape(expected) != shape(actual) or schema_keys(expected) != schema_keys(actual):
        raise SchemaDriftError(
            f"{table_name}: the table's schema is not the expected one "
            f"(table {actual}, keys {schema_keys(actual)}; "
            f"expected {expected}, keys {schema_keys(expected)})"
        )


def _target_schema(actual: Any, incoming: Any, keys: list[str] | None) -> Any:
    """The schema to write: the table's columns in its order (types widened, nullability
    loosened where the batch asks), then new columns in arrival order; keys recorded."""
    fields = []
    if actual is not None:
        for f in actual:
            g = incoming.field(f.name)
            data_type = f.type if _same_type(f.type, g.type) else g.type
            fields.append(f.with_type(data_type).with_nullable(f.nullable or g.nullable))
        known = set(actual.names)
    else:
        known = set()
    fields += [g.remove_metadata() for g in incoming if g.name not in known]
    schema = pa.schema(fields)
    if keys is not None:
        return with_keys(schema, keys)
    return schema


def _breaking_target(actual: Any, incoming: Any, keys: list[str] | None) -> Any:
    """The schema an accepted breaking write gives the table: the incoming columns, their
    types and nullability as they come, in the table's order first (removed columns
    dropped), then the new ones; `keys` recorded, else the table's keys while their columns
    remain."""
    known = list(actual.names) if actual is not None else []
    names = [n for n in known if n in incoming.names]
    names += [n for n in incoming.names if n not in known]
    schema = pa.schema([incoming.field(n).remove_metadata() for n in names])
    if keys is None:
        recorded = schema_keys(actual) if actual is not None else []
        keys = recorded if all(k in schema.names for k in recorded) else []
    return with_keys(schema, keys)


def _check_merge_keys(table_name: str, batch: Any, keys: list[str]) -> None:
    for k in keys:
        if batch.column(k).null_count:
            raise ValueError(f"{table_name}: key column {k} has nulls in the batch")
    if batch.num_rows and batch.select(keys).group_by(keys).aggregate([]).num_rows \
            != batch.num_rows:
        raise ValueError(f"{table_name}: the batch repeats a key ({', '.join(keys)})")


def _rewrite(table_name: str, dt: DeltaTable, batch: Any, target: Any, mode: WriteMode,
             keys: list[str] | None) -> Any:
    """The whole new content of a table whose schema cannot change in place. The current
    rows are cast to the new types (safely: a value the new type cannot hold, or a null in a
    column now required, is a ValueError naming the column; nothing is written)."""
    if mode == "overwrite":
        return batch
    current = pa.RecordBatchReader.from_stream(dt.scan()).read_all()
    columns = []
    for f in target:
        if f.name in current.column_names:
            try:
                column = current.column(f.name).cast(f.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise ValueError(f"{table_name}: the current rows of column {f.name} cannot "
                                 f"be converted to {_type_name(f.type)}: {exc}") from exc
            if not f.nullable and column.null_count:
                raise ValueError(f"{table_name}: column {f.name} is now required, but "
                                 f"{column.null_count} current row(s) hold nulls")
            columns.append(column)
        elif not f.nullable and current.num_rows:
            raise ValueError(f"{table_name}: new required column {f.name} has no value "
                             f"for the {current.num_rows} current row(s)")
        else:
            columns.append(pa.nulls(current.num_rows, f.type))
    current = pa.Table.from_arrays(columns, schema=target)
    if mode == "merge":
        assert keys is not None
        row = "__controlroom_row"
        left = current.select(keys).append_column(
            row, pa.array(range(current.num_rows), pa.int64()))
        kept = left.join(batch.select(keys), keys=keys, join_type="left anti")
        indices = sorted(kept.column(row).to_pylist())
        current = current.take(pa.array(indices, pa.int64()))
    return pa.concat_tables([current, batch]).combine_chunks()


def _quote(column: str) -> str:
    return "`" + column.replace("`", "``") + "`"


def commit_history(uri: str | os.PathLike[str], storage_options: Mapping[str, str] | None = None,
                   limit: int | None = None) -> list[dict[str, Any]]:
    """The table's commit infos, newest first (custom commit metadata at top level)."""
    options = dict(storage_options) if storage_options is not None else None
    history = DeltaTable(os.fspath(uri), storage_options=options).history(limit)
    return [json.loads(json.dumps(entry, default=str)) for entry in history]


VIEW_TYPES = (pa.string_view(), pa.binary_view())


def scan_dataset(table: DeltaTable) -> Any:
    """`table.to_pyarrow_dataset()`, made safe for filter pushdown (DuckDB's).

    delta-rs's merge writes Parquet files whose Arrow schema holds `string_view` /
    `binary_view` columns where the table's schema says `string` / `binary`; pyarrow then
    applies a pushed-down filter to the file's physical column and fails ("no kernel
    matching input types (string, string_view)"). Declaring the view type in the dataset's
    schema for such a column works for every file, view-typed or not (pyarrow casts the
    others), so the dataset's schema is replaced when any file has one. Only file footers
    are read to find out.
    """
    dataset = table.to_pyarrow_dataset()
    views: dict[str, Any] = {}
    for fragment in dataset.get_fragments():
        for column in fragment.physical_schema:
            if column.type in VIEW_TYPES:
                views[column.name] = column.type
    if not views:
        return dataset
    schema = pa.schema([f.with_type(views[f.name]) if f.name in views else f
                        for f in dataset.schema])
    fragments = list(dataset.get_fragments())
    return pds.FileSystemDataset(fragments, schema, dataset.format, dataset.filesystem)
