"""The workspace connections a claimed phase names, their secret references resolved under
the worker's policy (`executor.secrets`); `postgres_connect` and `read_postgres` for Postgres.
The rules and the type mapping: docs/kinds.md ("Connections").
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import psycopg
import pyarrow as pa
from psycopg import sql
from psycopg.types.string import TextLoader

from executor.errors import PhaseCancelled, PhaseTimeout, TerminalPhaseError
from executor.kinds.base import Connection
from executor.secrets import Masker, SecretError, SecretPolicy, resolve_secrets

__all__ = [
    "arrow_type",
    "connection_names",
    "postgres_connect",
    "read_postgres",
    "resolve_connection",
    "resolve_connections",
]

BATCH_ROWS = 10_000
"""Rows fetched per round trip (a server-side cursor) and per Arrow record batch."""
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
REGISTER_HINT = "register it with `control-room connections create`"


def _connection_error(name: str, message: str) -> TerminalPhaseError:
    return TerminalPhaseError(f"connection {name!r}: {message}", error_type="ConnectionError")


def connection_names(names: Any) -> list[str]:
    """A phase's `params.connections` as a list of names (each once): literal connection
    names, never templates (a run cannot redirect a phase to another connection)."""
    if names is None:
        return []
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise TerminalPhaseError("params.connections must be a list of connection names",
                                 error_type="ValueError")
    for name in names:
        if not _NAME.match(name):
            raise TerminalPhaseError(f"params.connections: {name[:80]!r} is not a connection "
                                     "name", error_type="ValueError")
    return list(dict.fromkeys(names))


def _field(registered: Any, key: str) -> Any:
    return registered.get(key) if isinstance(registered, Mapping) else getattr(
        registered, key, None)


def resolve_connection(name: str, registered: Any, policy: SecretPolicy, *,
                       environ: Mapping[str, str] | None = None,
                       masker: Masker | None = None) -> Connection:
    """One registered connection (`type`, non-secret `config`, `secrets` {field:
    reference}: a claim's `ClaimConnection` or its JSON) as a `Connection` whose `config`
    holds the config and the resolved secrets. Every resolved value is added to `masker`
    first, so that nothing sent afterwards can carry it."""
    kind, config, secrets = (_field(registered, k) for k in ("type", "config", "secrets"))
    if not isinstance(kind, str) or not kind:
        raise _connection_error(name, "its registration has no type")
    if not isinstance(config or {}, Mapping) or not isinstance(secrets or {}, Mapping):
        raise _connection_error(name, "its registration's config and secrets must be objects")
    try:
        values = resolve_secrets(dict(secrets or {}), policy, environ=environ, masker=masker)
    except SecretError as exc:
        raise _connection_error(name, exc.message) from None
    return Connection(name=name, type=kind, config={**dict(config or {}), **values})


def resolve_connections(
    names: Any,
    registered: Mapping[str, Any],
    *,
    policy: SecretPolicy,
    environ: Mapping[str, str] | None = None,
    masker: Masker | None = None,
    workspace: str | None = None,
) -> dict[str, Connection]:
    """The connections `names` (a phase's `params.connections`) as registered in the run's
    workspace (`registered`: the claim's `connections`), their secrets resolved under
    `policy` from `environ` (default: this process's environment) and files. A name the
    workspace does not have is a terminal error naming it."""
    resolved: dict[str, Connection] = {}
    for name in connection_names(names):
        found = registered.get(name)
        if found is None:
            where = f"workspace {workspace}" if workspace else "the run's workspace"
            raise _connection_error(name, f"not registered in {where} ({REGISTER_HINT})")
        resolved[name] = resolve_connection(name, found, policy, environ=environ,
                                            masker=masker)
    return resolved


# ---------------------------------------------------------------------------------- Postgres

def postgres_connect(conn: Connection, **kwargs: Any) -> psycopg.Connection[Any]:
    """A psycopg connection for a `type: postgres` connection (`config`: `dsn`, and
    `password` given apart from the DSN). `kwargs` go to `psycopg.connect`."""
    if conn.type != "postgres":
        raise TerminalPhaseError(f"connection {conn.name!r} is of type {conn.type!r}, "
                                 "not postgres", error_type="ValueError")
    dsn = conn.config.get("dsn")
    if not isinstance(dsn, str) or not dsn:
        raise _connection_error(conn.name, "a postgres connection needs a 'dsn'")
    password = conn.config.get("password")
    if password is not None:
        kwargs["password"] = str(password)
    kwargs.setdefault("connect_timeout", 10)
    return psycopg.connect(dsn, **kwargs)


# Postgres type OIDs (pg_type.dat) and the Arrow types they are read as.
_FIXED_TYPES: dict[int, pa.DataType] = {
    16: pa.bool_(),                     # bool
    17: pa.binary(),                    # bytea
    18: pa.string(),                    # "char"
    19: pa.string(),                    # name
    20: pa.int64(),                     # int8
    21: pa.int16(),                     # int2
    23: pa.int32(),                     # int4
    25: pa.string(),                    # text
    26: pa.int64(),                     # oid
    114: pa.string(),                   # json (its text)
    700: pa.float32(),                  # float4
    701: pa.float64(),                  # float8
    1042: pa.string(),                  # bpchar
    1043: pa.string(),                  # varchar
    1082: pa.date32(),                  # date
    1083: pa.time64("us"),              # time
    1114: pa.timestamp("us"),           # timestamp
    1184: pa.timestamp("us", tz="UTC"),  # timestamptz
    2950: pa.string(),                  # uuid
    3802: pa.string(),                  # jsonb (its text)
}
_NUMERIC = 1700
_MAX_DECIMAL128 = 38


def arrow_type(type_code: int, precision: int | None = None,
               scale: int | None = None) -> pa.DataType:
    """The Arrow type a Postgres column is read as: numeric(p, s) as decimal128(p, s) (float64
    when unconstrained or wider than 38 digits), json/jsonb as their text, any type not
    mapped as a string (its Python value's text)."""
    if type_code == _NUMERIC:
        if precision is not None and 0 < precision <= _MAX_DECIMAL128:
            return pa.decimal128(precision, scale or 0)
        return pa.float64()
    return _FIXED_TYPES.get(type_code, pa.string())


def _converter(arrow: pa.DataType, type_code: int) -> Callable[[Any], Any] | None:
    """How a Python value of the column becomes what `pa.array` takes (None: as it is)."""
    if pa.types.is_floating(arrow) and type_code == _NUMERIC:
        return lambda v: None if v is None else float(v)
    if pa.types.is_string(arrow) and type_code not in (25, 1042, 1043, 18, 19, 114, 3802):
        return _text
    return None


def _text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list | tuple | dict):
        return json.dumps(value, default=str, sort_keys=True)
    return str(value)


def _source_query(query: str | None, table: str | None) -> sql.SQL | sql.Composed:
    if (query is None) == (table is None):
        raise TerminalPhaseError("read_postgres needs exactly one of a query and a table",
                                 error_type="ValueError")
    if query is not None:
        return sql.SQL(query)  # the spec's own SQL
    assert table is not None
    parts = table.split(".")
    if len(parts) > 2 or not all(parts):
        raise TerminalPhaseError(f"table {table!r} is not 'name' or 'schema.name'",
                                 error_type="ValueError")
    return sql.SQL("select * from {}").format(sql.Identifier(*parts))


def read_postgres(
    conn: Connection,
    *,
    query: str | None = None,
    table: str | None = None,
    cancel: threading.Event | None = None,
    deadline: float | None = None,
    batch_rows: int = BATCH_ROWS,
) -> pa.Table:
    """The rows of `query` (or every row of `table`, `schema.name`) as an Arrow table.

    Read in a read-only transaction through a server-side cursor, `batch_rows` at a time;
    `cancel` and `deadline` (a `time.monotonic()` value) are checked between batches
    (`PhaseCancelled`, `PhaseTimeout`). Row order is the query's: add `order by` if it
    matters (table digests do not depend on it). A SQL error is terminal; a connection
    failure is left as psycopg's `OperationalError` (a transient failure for the worker).
    """
    statement = _source_query(query, table)
    with postgres_connect(conn) as pg:
        pg.read_only = True
        for json_type in ("json", "jsonb"):
            pg.adapters.register_loader(json_type, TextLoader)
        try:
            with pg.cursor(name="control_room_read") as cursor:
                cursor.itersize = batch_rows
                cursor.execute(statement)
                return _to_arrow(cursor, cancel, deadline, batch_rows)
        except (psycopg.ProgrammingError, psycopg.DataError) as exc:  # the SQL or the data
            raise TerminalPhaseError(f"connection {conn.name!r}: {exc}".strip(),
                                     error_type=type(exc).__name__) from None


def _to_arrow(cursor: psycopg.ServerCursor[Any], cancel: threading.Event | None,
              deadline: float | None, batch_rows: int) -> pa.Table:
    description = cursor.description or []
    names = [column.name for column in description]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise TerminalPhaseError(f"the query returns duplicated column names {duplicated}",
                                 error_type="ValueError")
    types = [arrow_type(c.type_code, c.precision, c.scale) for c in description]
    converters = [_converter(t, c.type_code) for t, c in zip(types, description, strict=True)]
    schema = pa.schema([pa.field(n, t) for n, t in zip(names, types, strict=True)])
    batches = [pa.record_batch(_columns(rows, names, types, converters), schema=schema)
               for rows in _batches(cursor, cancel, deadline, batch_rows)]
    return pa.Table.from_batches(batches, schema=schema)


def _batches(cursor: psycopg.ServerCursor[Any], cancel: threading.Event | None,
             deadline: float | None, batch_rows: int) -> Iterator[list[tuple[Any, ...]]]:
    while True:
        if cancel is not None and cancel.is_set():
            raise PhaseCancelled("reading from Postgres was cancelled")
        if deadline is not None and time.monotonic() >= deadline:
            raise PhaseTimeout("reading from Postgres ran past the phase's timeout")
        rows = cursor.fetchmany(batch_rows)
        if not rows:
            return
        yield rows


def _columns(rows: list[tuple[Any, ...]], names: list[str], types: list[pa.DataType],
             converters: list[Callable[[Any], Any] | None]) -> list[pa.Array]:
    arrays: list[pa.Array] = []
    for index, (name, arrow, convert) in enumerate(zip(names, types, converters, strict=True)):
        values = [row[index] for row in rows]
        if convert is not None:
            values = [convert(v) for v in values]
        try:
            arrays.append(pa.array(values, type=arrow))
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError) as exc:
            raise TerminalPhaseError(f"column {name!r} cannot be read as {arrow}: {exc}",
                                     error_type=type(exc).__name__) from None
    return arrays

