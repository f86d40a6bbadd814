"""Publication of gold into a Postgres schema (BI tools connect to it), and the run's
freshness.

    - name: publish
      kind: python
      depends_on: [quality, gold_revenue, gold_receivables_ageing, gold_order_invoice_lag]
      connections: [warehouse]
      params:
        entrypoint: pipelines.odoo.publish:publish_gold
        args: {lake: "${params.lake}", as_of: "${params.as_of}", schema: gold}

Every gold table the upstream phases wrote (their manifests' `table`, at the version this
run wrote) becomes `<schema>.<mart>` (`gold.odoo.revenue` -> `gold.revenue`), all of them in
ONE transaction: each table is dropped, created with the Delta table's columns (Postgres
types mapped from Arrow's: decimals keep their precision and scale) and filled with `COPY
FROM STDIN (FORMAT csv)`. A reader sees the previous publication or this one, never a mix;
a failure leaves the previous one in place. The same transaction appends to
`<schema>.publications` (run, as_of, mart, rows, table digest, Delta version) and to
`<schema>.freshness`.

Freshness: the time from the newest source `write_date` (the newest watermark any extraction
committed to `<lake>/_state/watermarks`: Odoo's clock, UTC) to the moment gold became
available (the publishing transaction's last statement, on the warehouse's clock). With a
simulated source whose dates run ahead of or behind the wall clock, it measures that offset
too. Recorded in `<schema>.freshness`, in `<lake>/_state/freshness`, as a `FRESHNESS` event and
in the phase's manifest.

Data time (what the control plane's freshness and SLOs use, docs/jobs.md "Freshness and
SLOs"): the moment before which every source change is in gold. Each extraction records when
its snapshot was taken (`<lake>/_state/reads`); gold's data time is the oldest of this run's
reads, one per source table (a run that read nothing itself, such as a repair of only the
gold phases, takes the newest read of each table instead). The `FRESHNESS` event carries it
with the gold datasets' names (`data_time`, `source_cursor`: the newest source write_date
included, `datasets`), and the control plane moves those datasets' data time forward. It is
measured on the worker's clock, so a simulated source's dates do not distort it, and an idle
source does not make gold stale: a read at T proves everything up to T is in.
"""

from __future__ import annotations

import datetime as dt
import io
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import psycopg
import pyarrow as pa
import pyarrow.csv as pcsv
from deltalake import DeltaTable
from psycopg import sql

from executor.sdk import TerminalPhaseError, postgres_connect
from pipelines.odoo.lake import (
    Context,
    append_state,
    arg,
    delta_dataset,
    duck,
    parse_as_of,
    state_uri,
)

__all__ = ["GOLD_PREFIX", "DataTime", "Mart", "data_time", "freshness_source", "pg_type",
           "publish", "publish_gold"]

GOLD_PREFIX = "gold.odoo."


def pg_type(arrow: pa.DataType) -> str:
    """The Postgres type a gold column is published as."""
    t = pa.types
    if t.is_boolean(arrow):
        return "boolean"
    if t.is_int8(arrow) or t.is_int16(arrow):
        return "smallint"
    if t.is_int32(arrow):
        return "integer"
    if t.is_int64(arrow):
        return "bigint"
    if t.is_float32(arrow):
        return "real"
    if t.is_floating(arrow):
        return "double precision"
    if t.is_decimal(arrow):
        return f"numeric({arrow.precision}, {arrow.scale})"
    if t.is_date(arrow):
        return "date"
    if t.is_timestamp(arrow):
        return "timestamp with time zone" if arrow.tz else "timestamp without time zone"
    if t.is_string(arrow) or t.is_large_string(arrow):
        return "text"
    raise TerminalPhaseError(f"gold column type {arrow} has no Postgres mapping",
                             error_type="TypeError")


@dataclass(frozen=True)
class Mart:
    """A gold table this run wrote, as its phase's manifest names it."""

    name: str
    uri: str
    version: int
    digest: str | None

    @property
    def table(self) -> str:
        """Its table name in the warehouse schema."""
        return self.name.removeprefix(GOLD_PREFIX).replace(".", "_")

    def read(self) -> pa.Table:
        return DeltaTable(self.uri, version=self.version).to_pyarrow_table()


def _marts(inputs: Mapping[str, Any]) -> list[Mart]:
    marts = []
    for manifest in inputs.values():
        table = manifest.get("table") if isinstance(manifest, Mapping) else None
        if isinstance(table, Mapping) and str(table.get("name", "")).startswith(GOLD_PREFIX):
            marts.append(Mart(str(table["name"]), str(table["uri"]), int(table["version"]),
                              table.get("digest")))
    if not marts:
        raise TerminalPhaseError("publish found no gold table among its dependencies' "
                                 f"outputs (names starting with {GOLD_PREFIX})")
    return sorted(marts, key=lambda m: m.name)


def freshness_source(lake: str) -> dt.datetime | None:
    """The newest source write_date any extraction committed (naive UTC), None before any."""
    watermarks = delta_dataset(state_uri(lake, "watermarks"))
    if watermarks is None:
        return None
    with duck(watermarks=watermarks) as db:
        newest: dt.datetime | None = db.sql("select max(write_date) from watermarks"
                                            ).fetchall()[0][0]
    return newest


@dataclass(frozen=True)
class DataTime:
    """Gold's data time (aware, UTC) and the newest source write_date included (naive UTC)."""

    at: dt.datetime
    source_cursor: dt.datetime | None
    tables: int


def data_time(lake: str, run_id: str) -> DataTime | None:
    """The moment before which every source change is in the lake (the module's docstring),
    from `_state/reads`; None before any extraction recorded a read."""
    reads = delta_dataset(state_uri(lake, "reads"))
    if reads is None:
        return None
    with duck(reads=reads) as db:
        row = db.execute(
            "with mine as (select * from reads where run_id = $run), "
            "used as (select * from mine union all "
            "         select * from reads where not exists (select 1 from mine)), "
            "newest as (select dataset, max(read_at) as read_at from used group by dataset) "
            "select min(read_at), count(*), (select max(source_max_write_date) from reads) "
            "from newest", {"run": run_id}).fetchall()[0]
    if row[0] is None:
        return None
    at: dt.datetime = row[0]
    at = at.replace(tzinfo=dt.UTC) if at.tzinfo is None else at.astimezone(dt.UTC)
    return DataTime(at=at, source_cursor=row[2], tables=int(row[1]))


def _copy_in(pg: psycopg.Connection[Any], target: sql.Composable, table: pa.Table) -> None:
    """`table`'s rows into `target` through COPY (CSV: strings quoted, nulls unquoted)."""
    if table.num_rows == 0:
        return
    buffer = io.BytesIO()
    pcsv.write_csv(table, buffer, write_options=pcsv.WriteOptions(include_header=False))
    columns = sql.SQL(", ").join(sql.Identifier(n) for n in table.column_names)
    statement = sql.SQL("copy {} ({}) from stdin with (format csv)").format(target, columns)
    with pg.cursor().copy(statement) as copy:
        copy.write(buffer.getbuffer())


def _create(pg: psycopg.Connection[Any], target: sql.Composable, schema: pa.Schema) -> None:
    columns = sql.SQL(", ").join(
        sql.SQL("{} {}").format(sql.Identifier(f.name), sql.SQL(pg_type(f.type)))
        for f in schema)
    pg.execute(sql.SQL("drop table if exists {}").format(target))
    pg.execute(sql.SQL("create table {} ({})").format(target, columns))


_BOOKKEEPING = {
    "publications": "run_id text not null, as_of date not null, mart text not null, "
                    "dataset text not null, rows bigint not null, digest text, "
                    "delta_version bigint not null, published_at timestamptz not null",
    "freshness": "run_id text not null, as_of date not null, "
                 "newest_source_write_date timestamp without time zone, "
                 "gold_available_at timestamptz not null, freshness_seconds double precision",
}


def publish(pg: psycopg.Connection[Any], schema: str, marts: list[Mart], *, run_id: str,
            as_of: dt.date, newest: dt.datetime | None) -> dict[str, Any]:
    """Replace the marts in `schema` and record the publication, in one transaction; answers
    `{marts: [...], freshness: {...}}`."""
    published = []
    with pg.transaction():
        pg.execute(sql.SQL("create schema if not exists {}").format(sql.Identifier(schema)))
        for table, columns in _BOOKKEEPING.items():
            pg.execute(sql.SQL("create table if not exists {} ({})").format(
                sql.Identifier(schema, table), sql.SQL(columns)))
        for mart in marts:
            rows = mart.read()
            target = sql.Identifier(schema, mart.table)
            _create(pg, target, rows.schema)
            _copy_in(pg, target, rows)
            published.append({"mart": f"{schema}.{mart.table}", "dataset": mart.name,
                              "rows": rows.num_rows, "digest": mart.digest,
                              "delta_version": mart.version})
        for entry in published:
            pg.execute(sql.SQL(
                "insert into {} (run_id, as_of, mart, dataset, rows, digest, delta_version, "
                "published_at) values (%s, %s, %s, %s, %s, %s, %s, now())").format(
                    sql.Identifier(schema, "publications")),
                [run_id, as_of, entry["mart"], entry["dataset"], entry["rows"],
                 entry["digest"], entry["delta_version"]])
        row = pg.execute(sql.SQL(
            "insert into {} (run_id, as_of, newest_source_write_date, gold_available_at, "
            "freshness_seconds) values (%(run)s, %(as_of)s, %(newest)s, clock_timestamp(), "
            "extract(epoch from clock_timestamp() - (%(newest)s::timestamp at time zone 'UTC'))"
            ") returning gold_available_at, freshness_seconds").format(
                sql.Identifier(schema, "freshness")),
            {"run": run_id, "as_of": as_of, "newest": newest}).fetchone()
        assert row is not None
    available_at, seconds = row
    return {"marts": published,
            "freshness": {"newest_source_write_date": newest.isoformat() if newest else None,
                          "gold_available_at": available_at.isoformat(),
                          "seconds": seconds}}


def _record_freshness(lake: str, run_id: str, as_of: dt.date, newest: dt.datetime | None,
                      freshness: Mapping[str, Any]) -> None:
    row = pa.table({
        "run_id": pa.array([run_id], pa.string()),
        "as_of": pa.array([as_of], pa.date32()),
        "newest_source_write_date": pa.array([newest], pa.timestamp("us")),
        "gold_available_at": pa.array([dt.datetime.fromisoformat(
            freshness["gold_available_at"])], pa.timestamp("us", tz="UTC")),
        "freshness_seconds": pa.array([freshness["seconds"]], pa.float64()),
    })
    append_state(state_uri(lake, "freshness"), row)


def publish_gold(ctx: Context) -> dict[str, Any]:
    """The python entrypoint (module docstring): args `lake`, `as_of`, `schema` (default
    `gold`), optional `connection` (default `warehouse`)."""
    lake = arg(ctx, "lake", str)
    as_of = parse_as_of(arg(ctx, "as_of", str))
    schema = str(ctx.args.get("schema", "gold"))
    name = str(ctx.args.get("connection", "warehouse"))
    connection = ctx.connections.get(name)
    if connection is None:
        raise TerminalPhaseError(f"phase {ctx.phase} needs the connection {name!r} (its "
                                 f"params.connections: {sorted(ctx.connections)})",
                                 error_type="LookupError")
    marts = _marts(ctx.inputs)
    newest = freshness_source(lake)
    with postgres_connect(connection) as pg:
        result = publish(pg, schema, marts, run_id=ctx.run_id, as_of=as_of, newest=newest)
    ctx.progress(0.9)
    _record_freshness(lake, ctx.run_id, as_of, newest, result["freshness"])
    seconds = result["freshness"]["seconds"]
    read = data_time(lake, ctx.run_id)
    if read is not None:
        result["freshness"].update(
            data_time=read.at.isoformat(), datasets=[m.name for m in marts],
            source_cursor=read.source_cursor.isoformat() if read.source_cursor else None,
            source_tables=read.tables)
    ctx.emit("FRESHNESS", f"gold available {seconds:.0f} s after the newest source change"
             if seconds is not None else "gold available (no source change recorded yet)",
             "info", result["freshness"])
    ctx.emit("LOG", f"published {len(marts)} gold table(s) to schema {schema}", "info",
             {"schema": schema, "marts": [m["mart"] for m in result["marts"]]})
    return {"schema": schema, "as_of": as_of.isoformat(), **result}
