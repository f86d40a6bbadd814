"""Extraction from Odoo's PostgreSQL into bronze: one Odoo table per phase, incrementally.

    - name: extract_sale_order
      kind: python
      connections: [odoo]
      params:
        entrypoint: pipelines.odoo.extract:extract_table
        args: {table: sale_order, lake: "${params.lake}"}

What one phase does, all of it read from one REPEATABLE READ snapshot of the source:

1. Describes the source table (columns, Postgres types, primary key) and derives the bronze
   schema from it. Schema evolution is decided *before any row is read*: the proposed schema
   is classified against the bronze table's (`executor.sdk.classify`). A new column is
   NON_BREAKING and flows through with the write; a removed, narrowed or retyped column
   raises `SchemaBlocked` (terminal, naming the table, the column and the change): the
   worker records it in the catalog, which blocks the dataset until an admin resolves it. A
   dataset the catalog already holds blocked is refused at once (`DatasetBlocked`).
2. Reads the rows changed since the dataset's watermark: `(write_date, id) > (wm_date,
   wm_id)` (everything on the first run), optionally re-reading `lookback_seconds` before
   it (Odoo sets `write_date` when a transaction starts, so a long transaction can commit a
   row older than a watermark already taken). Rows travel as `COPY ... TO STDOUT (FORMAT
   csv)`, parsed into Arrow by pyarrow's multi-threaded CSV reader in 32 MiB chunks while
   the copy goes on; a row never becomes Python values (each COPY message, one row's CSV
   bytes, is appended to the chunk as it is).
3. Keeps only the row versions bronze does not hold yet: a version is `(id,
   _source_write_date)`, and the rows read are anti-joined with bronze's versions from the
   oldest one read on (a scan pruned by the files' statistics). So a version is stored once
   however often it is read: a re-run after a crash, or a lookback, appends no duplicate.
4. Detects deletions (Odoo unlinks rows): the ids the source has now are compared with the
   ids live in bronze; each vanished id gets a tombstone row (`_op = 'delete'`). An id
   already tombstoned is not live, so it is never tombstoned twice.
5. Appends the new versions and tombstones to bronze in ONE Delta commit.
6. Only then appends the new watermark to `_state/watermarks`. A crash between 5 and 6
   leaves the old watermark: the next attempt reads the same rows again, finds them all in
   bronze, and appends nothing but what changed since.
7. Appends the read to `_state/reads`: when the snapshot was taken (`read_at`, the worker's
   clock just before the transaction's first statement) and the newest source write_date it
   saw. Every source change committed before `read_at` is in bronze; publication derives
   gold's freshness from it (pipelines/odoo/publish.py).

Bronze is append-only (never a Delta merge: it costs a scan of the whole table, and
delta-rs 1.6 writes merged files with Arrow string_view columns, on which pyarrow's dataset
filters fail). One attempt of a phase runs at a time (the worker's lease); two at once could
both append the same versions, which `row_counts_reconcile` in quality would catch.

Tables without `id` and `write_date` are Odoo's many2many relations (every column in the
primary key, e.g. `sale_order_line_invoice_rel`): read whole each run and compared with the
pairs live in bronze; new pairs are appended as upserts, vanished ones as tombstones. The
comparison is against bronze itself, so a re-run appends nothing twice.

Bronze rows are the source's columns as read (types from `executor.sdk.arrow_type`:
unconstrained numeric as float64, which is what Odoo's ORM computes with, numeric(p, s) as
decimal, jsonb as its text) plus ingestion metadata: `_op` (upsert | delete),
`_source_write_date` (the row's write_date, else create_date; a tombstone carries the last
version's), `_run_id`, and `_extracted_at` (the wall clock: bronze records when it was
loaded; silver and gold never read it).
"""

from __future__ import annotations

import datetime as dt
import re
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
from psycopg import sql

from executor.sdk import (
    UNBLOCK_HINT,
    DatasetBlocked,
    SchemaBlocked,
    TerminalPhaseError,
    arrow_type,
    classify,
    postgres_connect,
    read_schema,
    schema_json,
    with_keys,
)
from pipelines.odoo.lake import (
    Context,
    append_state,
    arg,
    bronze_name,
    bronze_uri,
    delta_dataset,
    duck,
    open_delta,
    queries,
    state_uri,
)

__all__ = [
    "CHUNK_BYTES",
    "INCREMENTAL_KEYS",
    "METADATA_COLUMNS",
    "READS",
    "SUPPORTED_VERSIONS",
    "Batch",
    "SourceColumn",
    "SourceTable",
    "Watermark",
    "commit_batch",
    "commit_watermark",
    "describe_table",
    "extract",
    "extract_table",
    "read_rows",
    "read_watermark",
    "record_read",
    "source_version",
]

OP_UPSERT = "upsert"
OP_DELETE = "delete"
METADATA_COLUMNS: tuple[tuple[str, pa.DataType], ...] = (
    ("_op", pa.string()),
    ("_source_write_date", pa.timestamp("us")),
    ("_run_id", pa.string()),
    ("_extracted_at", pa.timestamp("us", tz="UTC")),
)
INCREMENTAL_KEYS = ["id", "_source_write_date", "_op"]
CHUNK_BYTES = 32 << 20
"""CSV bytes parsed per chunk (in a thread, while the copy goes on)."""
WATERMARKS = "watermarks"
READS = "reads"
EPOCH = dt.datetime(1970, 1, 1)
SUPPORTED_VERSIONS = ("17.0", "18.0")
"""The Odoo series whose tables the spec's silver model maps (docs/odoo.md "Versions")."""
_TABLE_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_TIMESTAMPTZ = 1184


@dataclass(frozen=True)
class SourceColumn:
    """One source column: its bronze type, the expression the COPY selects, and the type
    its CSV text is parsed as (then cast to `arrow`)."""

    name: str
    arrow: pa.DataType
    select: sql.Composable
    parse: pa.DataType


@dataclass(frozen=True)
class SourceTable:
    name: str
    columns: tuple[SourceColumn, ...]
    primary_key: tuple[str, ...]

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    @property
    def incremental(self) -> bool:
        """Read by watermark: a model table (id primary key, write_date)."""
        return self.primary_key == ("id",) and "write_date" in self.names

    def raw_schema(self) -> pa.Schema:
        return pa.schema([pa.field(c.name, c.arrow) for c in self.columns])

    def bronze_schema(self) -> pa.Schema:
        schema = pa.schema(list(self.raw_schema()) + [pa.field(n, t) for n, t in
                                                      METADATA_COLUMNS])
        keys = self.bronze_keys
        return with_keys(schema, keys) if keys else schema

    @property
    def bronze_keys(self) -> list[str] | None:
        """The key of a model table's bronze rows (recorded in its schema); a relation's
        rows have none (a pair may vanish and come back)."""
        return list(INCREMENTAL_KEYS) if self.incremental else None


@dataclass(frozen=True)
class Watermark:
    """The newest `(write_date, id)` extracted from a table."""

    write_date: dt.datetime
    id: int

    def to_json(self) -> dict[str, Any]:
        return {"write_date": self.write_date.isoformat(), "id": self.id}


# ---------------------------------------------------------------------------------- source

def _source_column(name: str, type_code: int, precision: int | None,
                   scale: int | None) -> SourceColumn:
    ident = sql.Identifier(name)
    if type_code == _TIMESTAMPTZ:       # printed in UTC without an offset, then marked UTC
        expr = sql.SQL("({} at time zone 'UTC') as {}").format(ident, ident)
        return SourceColumn(name, pa.timestamp("us", tz="UTC"), expr, pa.timestamp("us"))
    target = arrow_type(type_code, precision, scale)
    t = pa.types
    if (t.is_boolean(target) or t.is_integer(target) or t.is_floating(target)
            or t.is_decimal(target) or t.is_date32(target) or t.is_string(target)
            or (t.is_timestamp(target) and target.tz is None)):
        return SourceColumn(name, target, ident, target)
    # anything else (bytea, time, uuid, arrays...): its text, as Postgres prints it
    expr = sql.SQL("{}::text as {}").format(ident, ident)
    return SourceColumn(name, pa.string(), expr, pa.string())


def describe_table(pg: psycopg.Connection[Any], table: str) -> SourceTable:
    """The source table's columns (in table order) and primary key."""
    if not _TABLE_NAME.match(table):
        raise TerminalPhaseError(f"{table!r} is not an Odoo table name", error_type="ValueError")
    row = pg.execute("select to_regclass(%s)::oid", [table]).fetchone()
    if row is None or row[0] is None:
        raise TerminalPhaseError(f"source table {table} does not exist in the Odoo database",
                                 error_type="LookupError")
    cursor = pg.execute(sql.SQL("select * from {} limit 0").format(sql.Identifier(table)))
    columns = tuple(_source_column(d.name, d.type_code, d.precision, d.scale)
                    for d in cursor.description or [])
    key = tuple(r[0] for r in pg.execute(queries("extract")["primary_key"], [row[0]]))
    source = SourceTable(table, columns, key)
    if not source.incremental and set(key) != set(source.names):
        raise TerminalPhaseError(
            f"source table {table} has neither an id primary key with a write_date (a model) "
            "nor every column in its primary key (a many2many relation): it cannot be "
            "extracted incrementally", error_type="ValueError")
    return source


def _parse_chunk(data: Any, source: SourceTable) -> pa.Table:
    return pcsv.read_csv(
        pa.py_buffer(data),
        read_options=pcsv.ReadOptions(column_names=source.names, block_size=4 << 20),
        parse_options=pcsv.ParseOptions(newlines_in_values=True),
        convert_options=pcsv.ConvertOptions(
            column_types={c.name: c.parse for c in source.columns},
            true_values=["t"], false_values=["f"], null_values=[""],
            strings_can_be_null=True, quoted_strings_can_be_null=False))


def read_rows(pg: psycopg.Connection[Any], source: SourceTable,
              where: sql.Composable | None = None) -> pa.Table:
    """The rows of `source` (those matching `where`) as an Arrow table of its raw schema,
    through `COPY ... TO STDOUT (FORMAT csv)` (one message per row, gathered into chunks
    parsed by pyarrow in a thread while the copy continues)."""
    query = sql.SQL("select {} from {}").format(
        sql.SQL(", ").join(c.select for c in source.columns), sql.Identifier(source.name))
    if where is not None:
        query = sql.SQL("{} where {}").format(query, where)
    statement = sql.SQL("copy ({}) to stdout with (format csv)").format(query)
    parts: list[Future[pa.Table]] = []
    with ThreadPoolExecutor(1, thread_name_prefix="csv") as pool:
        buffer = bytearray()
        with pg.cursor().copy(statement) as copy:
            for row in copy:
                buffer += row
                if len(buffer) >= CHUNK_BYTES:
                    parts.append(pool.submit(_parse_chunk, buffer, source))
                    buffer = bytearray()
        if buffer:
            parts.append(pool.submit(_parse_chunk, buffer, source))
        tables = [part.result() for part in parts]
    schema = source.raw_schema()
    if not tables:
        return schema.empty_table()
    return pa.concat_tables(tables).cast(schema)


def _source_ids(pg: psycopg.Connection[Any], table: str) -> pa.Table:
    """Every id the source table has, as one Arrow column `id` (one round trip: the ids
    come as one text value and pyarrow parses them)."""
    row = pg.execute(sql.SQL("select string_agg(id::text, E'\\n') from {}").format(
        sql.Identifier(table))).fetchone()
    text = row[0] if row is not None else None
    if not text:
        return pa.table({"id": pa.array([], pa.int64())})
    return pcsv.read_csv(
        pa.py_buffer(text.encode()),
        read_options=pcsv.ReadOptions(column_names=["id"]),
        convert_options=pcsv.ConvertOptions(column_types={"id": pa.int64()}))


def source_version(pg: psycopg.Connection[Any]) -> str | None:
    """The Odoo series of the source ("17.0", "18.0", "saas~17.4"): the installed `base`
    module's `latest_version` without its module part; None when the database has no
    `ir_module_module` (not an Odoo database) or no installed base."""
    exists = pg.execute("select to_regclass('ir_module_module') is not null").fetchone()
    if exists is None or not exists[0]:
        return None
    row = pg.execute(queries("extract")["odoo_version"]).fetchone()
    if row is None or not row[0]:
        return None
    parts = str(row[0]).split(".")
    return ".".join(parts[:-2]) if len(parts) > 2 else str(row[0])


# ---------------------------------------------------------------------------------- watermarks

def read_watermark(lake: str, dataset: str) -> Watermark | None:
    """The dataset's newest committed watermark, None before its first extraction."""
    watermarks = delta_dataset(state_uri(lake, WATERMARKS))
    if watermarks is None:
        return None
    with duck(watermarks=watermarks) as db:
        rows = db.execute(queries("extract")["newest_watermark"], [dataset]).fetchall()
    return Watermark(rows[0][0], int(rows[0][1])) if rows else None


def commit_watermark(lake: str, dataset: str, watermark: Watermark, *, run_id: str,
                     upserts: int, deletes: int, bronze_version: int | None) -> None:
    """Append the dataset's new watermark (the table is append-only: its history says which
    run moved which dataset how far)."""
    row = pa.table({
        "dataset": pa.array([dataset], pa.string()),
        "write_date": pa.array([watermark.write_date], pa.timestamp("us")),
        "id": pa.array([watermark.id], pa.int64()),
        "upserts": pa.array([upserts], pa.int64()),
        "deletes": pa.array([deletes], pa.int64()),
        "bronze_version": pa.array([bronze_version], pa.int64()),
        "run_id": pa.array([run_id], pa.string()),
        "committed_at": pa.array([dt.datetime.now(dt.UTC)], pa.timestamp("us", tz="UTC")),
    })
    append_state(state_uri(lake, WATERMARKS), row)


def record_read(lake: str, dataset: str, *, read_at: dt.datetime, run_id: str,
                source_max_write_date: str | None) -> None:
    """Append one extraction's read to `_state/reads` (every extraction, whether or not its
    watermark moved): bronze holds every source change committed before `read_at`.
    Publication takes gold's data time from these rows (`publish.data_time`)."""
    newest = (dt.datetime.fromisoformat(source_max_write_date)
              if source_max_write_date is not None else None)
    row = pa.table({
        "dataset": pa.array([dataset], pa.string()),
        "run_id": pa.array([run_id], pa.string()),
        "read_at": pa.array([read_at], pa.timestamp("us", tz="UTC")),
        "source_max_write_date": pa.array([newest], pa.timestamp("us")),
    })
    append_state(state_uri(lake, READS), row)


def _batch_watermark(rows: pa.Table) -> Watermark | None:
    """The greatest `(write_date, id)` among `rows`."""
    dates = rows.column("write_date")
    newest = pc.max(dates).as_py()
    if newest is None:
        return None
    ids = rows.column("id").filter(pc.equal(dates, pa.scalar(newest, dates.type)))
    return Watermark(newest, int(pc.max(ids).as_py()))


# ---------------------------------------------------------------------------------- batches

def _with_metadata(raw: pa.Table, op: str, source_write_date: pa.ChunkedArray | pa.Array,
                   run_id: str, extracted_at: dt.datetime) -> pa.Table:
    n = raw.num_rows
    return (raw.append_column("_op", pa.repeat(pa.scalar(op, pa.string()), n))
            .append_column("_source_write_date", source_write_date)
            .append_column("_run_id", pa.repeat(pa.scalar(run_id, pa.string()), n))
            .append_column("_extracted_at", pa.repeat(
                pa.scalar(extracted_at, pa.timestamp("us", tz="UTC")), n)))


def _upserts(raw: pa.Table, run_id: str, extracted_at: dt.datetime) -> pa.Table:
    if "write_date" in raw.column_names:
        fallback = [raw.column("create_date")] if "create_date" in raw.column_names else []
        written = pc.coalesce(raw.column("write_date"), *fallback,
                              pa.scalar(EPOCH, pa.timestamp("us")))
    else:
        written = pa.nulls(raw.num_rows, pa.timestamp("us"))
    return _with_metadata(raw, OP_UPSERT, written, run_id, extracted_at)


def _tombstones(source: SourceTable, keys: pa.Table, last_write: pa.Array | None,
                run_id: str, extracted_at: dt.datetime) -> pa.Table:
    """Delete rows: the key columns of `keys`, every other source column null."""
    n = keys.num_rows
    raw = pa.table({c.name: (keys.column(c.name).cast(c.arrow) if c.name in keys.column_names
                             else pa.nulls(n, c.arrow)) for c in source.columns})
    written = last_write if last_write is not None else pa.nulls(n, pa.timestamp("us"))
    return _with_metadata(raw, OP_DELETE, written, run_id, extracted_at)


# ---------------------------------------------------------------------------------- schema

def _check_schema(ctx: Context, source: SourceTable, name: str, uri: str) -> str:
    """Fail fast, before any row is read: a blocked dataset, or a BREAKING change of the
    source's columns. Answers the change's kind (INITIAL, UNCHANGED, NON_BREAKING, or
    BREAKING when the catalog accepted it)."""
    state = ctx.datasets.get(name)
    if state == "blocked":
        raise DatasetBlocked(
            f"dataset {name} is blocked by a breaking schema change awaiting review; nothing "
            f"was extracted from {source.name}: {UNBLOCK_HINT}", table=name, uri=uri)
    proposed = source.bronze_schema()
    change = classify(read_schema(uri), proposed, source.bronze_keys)
    if change.kind == "BREAKING" and state != "accepted":
        described = "; ".join(c.describe() for c in change.breaking)
        raise SchemaBlocked(
            f"{name}: source table {source.name} changed incompatibly: {described} "
            f"(BREAKING). Nothing was extracted; the dataset is now blocked: "
            f"{UNBLOCK_HINT}",
            table=name, uri=uri, changes=[c.to_json() for c in change.breaking],
            schema=schema_json(proposed), layer="bronze")
    if change.kind == "NON_BREAKING":
        ctx.emit("LOG", f"{name}: source table {source.name} changed compatibly: "
                 + "; ".join(c.describe() for c in change.changes), "warning",
                 {"dataset": name, "change": "NON_BREAKING",
                  "changes": [c.to_json() for c in change.changes]})
    return change.kind


@dataclass(frozen=True)
class Batch:
    rows: pa.Table
    """What to append to bronze: new versions, then tombstones."""
    stats: dict[str, Any]
    """For the manifest: mode, read, upserts, deletes, source_rows, watermark..."""
    watermark: Watermark | None = None
    """The watermark to commit after the append (None: it does not move)."""


def _new_versions(bronze: Any, upserts: pa.Table) -> pa.Table:
    """The rows of `upserts` whose version `(id, _source_write_date)` bronze lacks."""
    if bronze is None or upserts.num_rows == 0:
        return upserts
    oldest = pc.min(upserts.column("_source_write_date")).as_py()
    with duck(bronze=bronze, batch=upserts) as db:
        fresh = db.sql(queries("extract")["new_versions"], params={"oldest": oldest}
                       ).to_arrow_table()
    return fresh.cast(upserts.schema)


# ---------------------------------------------------------------------------------- the phase

def extract_table(ctx: Context) -> dict[str, Any]:
    """The python entrypoint: args `table` (the Odoo table), `lake` (the lake's root),
    optional `connection` (default `odoo`), `lookback_seconds` (default 0) and, for the API
    mode, `batch_size` (rows per search_read, default 2000). A `postgres` connection reads the
    database; an `http` one Odoo's JSON-RPC API (pipelines/odoo/extract_api.py), into the same
    bronze."""
    table = arg(ctx, "table", str)
    lake = arg(ctx, "lake", str)
    connection = ctx.args.get("connection", "odoo")
    lookback = ctx.args.get("lookback_seconds", 0)
    if not isinstance(lookback, int | float) or isinstance(lookback, bool) or lookback < 0:
        raise TerminalPhaseError(f"args.lookback_seconds must be a number >= 0, got "
                                 f"{lookback!r}", error_type="ValueError")
    conn = ctx.connections.get(str(connection))
    if conn is None:
        raise TerminalPhaseError(
            f"phase {ctx.phase} needs the connection {connection!r} (its params.connections: "
            f"{sorted(ctx.connections)})", error_type="LookupError")
    if conn.type == "http":         # Odoo's JSON-RPC API (hosted Odoo): extract_api.py
        from pipelines.odoo.extract_api import extract_api
        from pipelines.odoo.jsonrpc import rpc_from_connection

        batch_size = ctx.args.get("batch_size", 2000)
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or not (
                1 <= batch_size <= 100_000):
            raise TerminalPhaseError(f"args.batch_size must be an integer in [1, 100000], "
                                     f"got {batch_size!r}", error_type="ValueError")
        with rpc_from_connection(conn) as rpc:
            return extract_api(ctx, rpc, table=table, lake=lake,
                               lookback=dt.timedelta(seconds=float(lookback)),
                               batch_size=batch_size)
    with postgres_connect(conn) as pg:
        return extract(ctx, pg, table=table, lake=lake,
                       lookback=dt.timedelta(seconds=float(lookback)))


def extract(ctx: Context, pg: psycopg.Connection[Any], *, table: str, lake: str,
            lookback: dt.timedelta = dt.timedelta(0)) -> dict[str, Any]:
    """One extraction of `table` into bronze (the module's docstring), over an open
    connection to the Odoo database. Answers the phase's output manifest."""
    # Before the transaction's first statement, so before its snapshot: every source change
    # committed by this moment is visible to this extraction (the read's data time).
    read_at = dt.datetime.now(dt.UTC)
    pg.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
    pg.read_only = True
    for setting in ("set datestyle to 'ISO, YMD'", "set timezone to 'UTC'",
                    "set extra_float_digits to 1"):
        pg.execute(setting)
    source = describe_table(pg, table)
    odoo_version = source_version(pg)
    name, uri = bronze_name(table), bronze_uri(lake, table)
    change = _check_schema(ctx, source, name, uri)
    ctx.progress(0.1)
    if source.incremental:
        batch = _incremental_batch(ctx, pg, source, lake, name, uri, lookback)
    else:
        batch = _relation_batch(ctx, pg, source, uri)
    return commit_batch(ctx, source, batch, change=change, lake=lake, read_at=read_at,
                        odoo_version=odoo_version)


def commit_batch(ctx: Context, source: SourceTable, batch: Batch, *, change: str, lake: str,
                 read_at: dt.datetime, odoo_version: str | None) -> dict[str, Any]:
    """Steps 5 to 7 of the module's docstring, whatever read the batch (the database, or the
    JSON-RPC API: pipelines/odoo/extract_api.py): the append, the watermark, the read.
    Answers the phase's output manifest."""
    table = source.name
    name, uri = bronze_name(table), bronze_uri(lake, table)
    stats = batch.stats
    ctx.progress(0.6)
    bronze = open_delta(uri)
    if bronze is None or batch.rows.num_rows or change != "UNCHANGED":
        # a schema change is applied even when no row changed (an empty append commits it)
        written = ctx.write_table(name, uri, batch.rows, mode="append",
                                  keys=source.bronze_keys, layer="bronze")
        table_entry = {k: written[k] for k in ("name", "uri", "version", "digest", "rows")}
    else:
        table_entry = {"name": name, "uri": uri, "version": bronze.version()}
    ctx.progress(0.9)
    watermark = batch.watermark
    if watermark is not None:
        commit_watermark(lake, name, watermark, run_id=ctx.run_id, upserts=stats["upserts"],
                         deletes=stats["deletes"], bronze_version=table_entry["version"])
        stats["watermark"]["to"] = watermark.to_json()
    record_read(lake, name, read_at=read_at, run_id=ctx.run_id,
                source_max_write_date=stats["source_max_write_date"])
    stats["read_at"] = read_at.isoformat()
    ctx.progress(1.0)
    ctx.emit("LOG", f"{name}: {stats['upserts']} upsert(s), {stats['deletes']} delete(s) "
             f"from {table} ({stats['mode']})", "info",
             {"dataset": name, "upserts": stats["upserts"], "deletes": stats["deletes"],
              "mode": stats["mode"], "source_rows": stats["source_rows"]})
    if odoo_version not in SUPPORTED_VERSIONS:
        ctx.emit("LOG", f"{name}: the source is Odoo {odoo_version or '(unknown version)'}; "
                 f"this pipeline's silver model maps {', '.join(SUPPORTED_VERSIONS)}",
                 "warning", {"dataset": name, "odoo_version": odoo_version})
    return {"table": table_entry, "dataset": name, "source_table": table,
            "schema_change": change, "odoo_version": odoo_version, **stats}


def _incremental_batch(ctx: Context, pg: psycopg.Connection[Any], source: SourceTable,
                       lake: str, name: str, uri: str, lookback: dt.timedelta) -> Batch:
    """The versions since the watermark that bronze lacks, and the tombstones of vanished
    ids."""
    table = sql.Identifier(source.name)
    row = pg.execute(sql.SQL("select count(*), max(write_date) from {}").format(table)
                     ).fetchone()
    assert row is not None
    source_rows, newest = int(row[0]), row[1]
    bronze = delta_dataset(uri)
    previous = read_watermark(lake, name) if bronze is not None else None
    where: sql.Composable | None = None
    if previous is not None:
        since = previous.write_date - lookback
        since_id = previous.id if not lookback else -1
        where = sql.SQL("write_date >= {d} and (write_date, id) > ({d}, {i})").format(
            d=sql.Literal(since), i=sql.Literal(since_id))
    extracted_at = dt.datetime.now(dt.UTC)
    raw = read_rows(pg, source, where)
    upserts = _new_versions(bronze, _upserts(raw, ctx.run_id, extracted_at))
    parts = [upserts]
    deletes = 0
    if bronze is not None:
        named = queries("extract")
        with duck(bronze=bronze, source=_source_ids(pg, source.name)) as db:
            db.execute(f"create temp table live as {named['live_ids']}")
            vanished = db.sql(named["vanished_ids"]).to_arrow_table()
        deletes = vanished.num_rows
        if deletes:
            parts.append(_tombstones(source, vanished.select(["id"]),
                                     vanished.column("last_write").combine_chunks(),
                                     ctx.run_id, extracted_at))
    new = _batch_watermark(raw)
    if previous is not None and (new is None or (new.write_date, new.id)
                                 <= (previous.write_date, previous.id)):
        new = None  # nothing newer than the committed watermark
    stats: dict[str, Any] = {
        "mode": "incremental" if previous is not None else "initial",
        "read": raw.num_rows, "upserts": upserts.num_rows, "deletes": deletes,
        "source_rows": source_rows,
        "source_max_write_date": newest.isoformat() if newest is not None else None,
        "watermark": {"from": previous.to_json() if previous else None,
                      "to": previous.to_json() if previous else None},
    }
    return Batch(pa.concat_tables(parts) if len(parts) > 1 else parts[0], stats, new)


def _relation_batch(ctx: Context, pg: psycopg.Connection[Any], source: SourceTable,
                    uri: str) -> Batch:
    """A many2many relation: the pairs that appeared (upserts) and vanished (tombstones)
    since bronze last saw them."""
    extracted_at = dt.datetime.now(dt.UTC)
    raw = read_rows(pg, source)
    bronze = delta_dataset(uri)
    added, vanished = raw, raw.schema.empty_table()
    if bronze is not None:
        key = ", ".join(_quote(c) for c in source.primary_key)
        with duck(bronze=bronze, source=raw) as db:
            db.execute(f"create temp table live as select {key} from bronze group by {key} "
                       "having arg_max(_op, _extracted_at) = 'upsert'")
            added = db.sql(f"select * from source anti join live using ({key})"
                           ).to_arrow_table()
            vanished = db.sql(f"select * from live anti join source using ({key})"
                              ).to_arrow_table()
    added = added.cast(source.raw_schema())
    parts = [_upserts(added, ctx.run_id, extracted_at)]
    if vanished.num_rows:
        parts.append(_tombstones(source, vanished, None, ctx.run_id, extracted_at))
    stats: dict[str, Any] = {
        "mode": "snapshot", "read": raw.num_rows, "upserts": added.num_rows,
        "deletes": vanished.num_rows, "source_rows": raw.num_rows,
        "source_max_write_date": None, "watermark": None,
    }
    return Batch(pa.concat_tables(parts) if len(parts) > 1 else parts[0], stats)


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'

