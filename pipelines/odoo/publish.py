"""Publication of gold into a Postgres schema (BI tools connect to it), and the run's
freshness.

    - name: publish
      kind: python
      depends_on: [quality, gold_revenue, gold_receivables_ageing, gold_order_invoice_lag]
      connections: [warehouse]
      params:
        entrypoint: pipelines.odoo.publish:publish_gold
        args: {lake: "${run.lake}", as_of: "${params.as_of}", schema: gold,
               models: {revenue: {description: ..., primary_key: [...], columns: {...}}}}

Every gold table the upstream phases wrote (their manifests' `table`, at the version this
run wrote) becomes `<schema>.<mart>` (`gold.odoo.revenue` -> `gold.revenue`), all of them in
ONE transaction, and the tables BI users see are never dropped: a table is created once
(Postgres types mapped from Arrow's: decimals keep their precision and scale, counts are
bigint) and each publication then replaces its CONTENTS, `DELETE FROM` and `COPY FROM STDIN`
in the same transaction. So what BI users built on a table stays: grants (`GRANT SELECT ON
ALL TABLES IN SCHEMA gold`), views on it, comments, row level security, indexes. Readers do
not block and are not blocked (DELETE takes a ROW EXCLUSIVE lock, which readers' ACCESS SHARE
does not conflict with), and at any isolation level they see the previous publication or this
one, whole: never an empty or half-filled table, never a mix of two publications across
marts. (`TRUNCATE` would be cheaper but is not MVCC-safe: a REPEATABLE READ reader whose
snapshot predates it would see the table empty; a swap of renamed tables would move grants
and views to the old table.) The deleted rows are dead tuples for autovacuum to reclaim.
Publishers of one schema are serialized (a transaction-scoped advisory lock).

The gold model (the `models` arg, from the spec) gives each mart a table comment, column
comments and its grain: `primary_key` (columns that are never null) or `unique` (a grain
whose columns may be null, as `revenue`'s product of a line without one: a UNIQUE NULLS NOT
DISTINCT constraint). A publication whose rows break the grain fails, and the previous one
stays. Comments are set on every publication (columns the model does not describe keep
theirs).

Schema changes of a mart are handled explicitly, in the same transaction:
- a column the mart gained is added (`ALTER TABLE ... ADD COLUMN`, at the end): existing
  views keep working and do not show it (Postgres expands a view's `*` when the view is
  created); `create or replace view` picks it up;
- a column the mart lost, or whose type changed, is dropped or retyped (`ALTER COLUMN ...
  TYPE ... USING`) unless a view uses it: then the publication fails naming the views and the
  columns (`TerminalPhaseError`), nothing changes, and BI keeps the previous publication until
  the views are changed or dropped. A column no view uses is simply dropped or retyped.
These DDL statements take an ACCESS EXCLUSIVE lock until the commit: readers wait for the
publication (they then read the new one) instead of reading during it.

The same transaction appends to `<schema>.publications` (run, as_of, mart, rows, table
digest, Delta version) and to `<schema>.freshness`. `grant_reader` (the CLI's `control-room
warehouse grant-reader ROLE`) gives a role read access to the schema, now and for tables
created later.

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
from dataclasses import dataclass, field
from typing import Any

import psycopg
import pyarrow as pa
import pyarrow.csv as pcsv
from deltalake import DeltaTable
from psycopg import errors as pg_errors
from psycopg import sql

from executor.sdk import TerminalPhaseError, postgres_connect
from pipelines.odoo.lake import (
    Context,
    append_state,
    arg,
    delta_dataset,
    duck,
    parse_as_of,
    queries,
    state_uri,
)

__all__ = ["GOLD_PREFIX", "VERIFY_LAKE_DIR", "DataTime", "Mart", "MartModel", "data_time",
           "freshness_source", "grant_reader", "parse_models", "pg_type", "publish",
           "publish_gold"]

GOLD_PREFIX = "gold.odoo."
VERIFY_LAKE_DIR = "_verify/"
"""How a verify rebuild's `input_manifest.lake_dir` starts (control_room/cli/verify.py)."""


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


@dataclass(frozen=True)
class MartModel:
    """What the gold model says of a mart: its comment, its columns' comments and its grain
    (`primary_key`: never-null columns; `unique`: a grain whose columns may be null)."""

    description: str | None = None
    columns: Mapping[str, str] = field(default_factory=dict)
    primary_key: tuple[str, ...] = ()
    unique: tuple[str, ...] = ()

    @classmethod
    def parse(cls, name: str, raw: Any) -> MartModel:
        """One entry of the `models` arg; a TerminalPhaseError naming what is malformed."""
        where = f"args.models.{name}"
        if not isinstance(raw, Mapping):
            raise _bad(f"{where} must be a mapping")
        unknown = sorted(set(raw) - {"description", "columns", "primary_key", "unique"})
        if unknown:
            raise _bad(f"{where} has unknown keys {unknown}")
        description = raw.get("description")
        if description is not None and not isinstance(description, str):
            raise _bad(f"{where}.description must be a string")
        columns = raw.get("columns") or {}
        if not isinstance(columns, Mapping) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in columns.items()):
            raise _bad(f"{where}.columns must map column names to descriptions")
        grain = {}
        for key in ("primary_key", "unique"):
            value = raw.get(key) or []
            if not isinstance(value, list) or not all(isinstance(c, str) and c for c in value):
                raise _bad(f"{where}.{key} must be a list of column names")
            grain[key] = tuple(value)
        if grain["primary_key"] and grain["unique"]:
            raise _bad(f"{where}: give primary_key or unique, not both")
        return cls(description, dict(columns), grain["primary_key"], grain["unique"])


def parse_models(raw: Any) -> dict[str, MartModel]:
    """The `models` arg: `{mart: {description, columns, primary_key | unique}}`."""
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise _bad("args.models must be a mapping of mart names to their model")
    return {str(name): MartModel.parse(str(name), value) for name, value in raw.items()}


def _bad(message: str) -> TerminalPhaseError:
    return TerminalPhaseError(message, error_type="ValueError")


def _columns_sql(schema: pa.Schema) -> sql.Composable:
    return sql.SQL(", ").join(
        sql.SQL("{} {}").format(sql.Identifier(f.name), sql.SQL(pg_type(f.type)))
        for f in schema)


def _conform(pg: psycopg.Connection[Any], schema: str, table: str, wanted: pa.Schema
             ) -> dict[str, list[str]]:
    """Create the table, or bring its columns to `wanted` without dropping it (the module's
    docstring): answers the columns added, dropped and retyped."""
    target = sql.Identifier(schema, table)
    qualified = f"{_quote(schema)}.{_quote(table)}"
    named = queries("publish")
    current = dict(pg.execute(named["table_columns"], [qualified]).fetchall())
    changes: dict[str, list[str]] = {"added": [], "dropped": [], "retyped": []}
    if not current:
        pg.execute(sql.SQL("create table {} ({})").format(target, _columns_sql(wanted)))
        return changes
    types = {f.name: pg_type(f.type) for f in wanted}
    dropped = [c for c in current if c not in types]
    retyped = [c for c in current if c in types
               and current[c].replace(" ", "") != types[c].replace(" ", "")]
    if dropped or retyped:
        used: dict[str, list[str]] = {}
        for view, column in pg.execute(named["dependent_columns"], [qualified]):
            if column in dropped or column in retyped:
                used.setdefault(column, []).append(view)
        if used:
            described = "; ".join(
                f"column {c} ({'removed' if c in dropped else f'{current[c]} -> {types[c]}'})"
                f" is used by {', '.join(sorted(views))}" for c, views in sorted(used.items()))
            raise TerminalPhaseError(
                f"{schema}.{table}: the mart's columns changed and views depend on them: "
                f"{described}. Nothing was published (BI keeps the previous publication): "
                "change or drop those views, then run again", error_type="SchemaConflict")
    for column in dropped:
        pg.execute(sql.SQL("alter table {} drop column {}").format(
            target, sql.Identifier(column)))
        changes["dropped"].append(column)
    for column in retyped:
        pg.execute(sql.SQL("alter table {} alter column {} type {} using {}::{}").format(
            target, sql.Identifier(column), sql.SQL(types[column]), sql.Identifier(column),
            sql.SQL(types[column])))
        changes["retyped"].append(column)
    for f in wanted:
        if f.name not in current:
            pg.execute(sql.SQL("alter table {} add column {} {}").format(
                target, sql.Identifier(f.name), sql.SQL(types[f.name])))
            changes["added"].append(f.name)
    return changes


def _comment(pg: psycopg.Connection[Any], schema: str, table: str, model: MartModel,
             columns: list[str]) -> None:
    target = sql.Identifier(schema, table)
    if model.description is not None:
        pg.execute(sql.SQL("comment on table {} is {}").format(
            target, sql.Literal(model.description)))
    for column, text in model.columns.items():
        if column in columns:
            pg.execute(sql.SQL("comment on column {} is {}").format(
                sql.Identifier(schema, table, column), sql.Literal(text)))


def _grain(pg: psycopg.Connection[Any], schema: str, table: str, model: MartModel,
           columns: list[str]) -> None:
    """The declared grain as the table's one key constraint (`<table>_grain`), after the
    rows are in: a grain the rows break fails the publication."""
    wanted = model.primary_key or model.unique
    missing = [c for c in wanted if c not in columns]
    if missing:
        raise _bad(f"{schema}.{table}: the model's grain names columns the mart lacks: "
                   f"{missing}")
    target = sql.Identifier(schema, table)
    kind = "p" if model.primary_key else "u"
    keep = False
    for name, contype, existing in pg.execute(queries("publish")["key_constraints"],
                                              [f"{_quote(schema)}.{_quote(table)}"]).fetchall():
        if name != f"{table}_grain":
            continue            # a constraint somebody else added: theirs
        if contype == kind and tuple(existing) == wanted:
            keep = True
        else:
            pg.execute(sql.SQL("alter table {} drop constraint {}").format(
                target, sql.Identifier(name)))
    if wanted and not keep:
        key = sql.SQL(", ").join(sql.Identifier(c) for c in wanted)
        constraint = (sql.SQL("primary key ({})") if model.primary_key
                      else sql.SQL("unique nulls not distinct ({})")).format(key)
        pg.execute(sql.SQL("alter table {} add constraint {} {}").format(
            target, sql.Identifier(f"{table}_grain"), constraint))


def _replace_contents(pg: psycopg.Connection[Any], schema: str, mart: Mart, rows: pa.Table,
                      model: MartModel) -> dict[str, Any]:
    target = sql.Identifier(schema, mart.table)
    changes = _conform(pg, schema, mart.table, rows.schema)
    _comment(pg, schema, mart.table, model, rows.column_names)
    pg.execute(sql.SQL("delete from {}").format(target))
    try:
        _copy_in(pg, target, rows)
        _grain(pg, schema, mart.table, model, rows.column_names)
    except (pg_errors.UniqueViolation, pg_errors.NotNullViolation) as exc:
        raise TerminalPhaseError(
            f"{schema}.{mart.table}: the rows break the mart's grain "
            f"({', '.join(model.primary_key or model.unique)}): "
            f"{exc.diag.message_primary}; {exc.diag.message_detail or ''}. Nothing was "
            "published (BI keeps the previous publication)",
            error_type=type(exc).__name__) from None
    return {k: v for k, v in changes.items() if v}


_BOOKKEEPING = {
    "publications": "run_id text not null, as_of date not null, mart text not null, "
                    "dataset text not null, rows bigint not null, digest text, "
                    "delta_version bigint not null, published_at timestamptz not null",
    "freshness": "run_id text not null, as_of date not null, "
                 "newest_source_write_date timestamp without time zone, "
                 "gold_available_at timestamptz not null, freshness_seconds double precision",
}


def publish(pg: psycopg.Connection[Any], schema: str, marts: list[Mart], *, run_id: str,
            as_of: dt.date, newest: dt.datetime | None,
            models: Mapping[str, MartModel] | None = None) -> dict[str, Any]:
    """Replace the marts' contents in `schema` and record the publication, in one
    transaction (the module's docstring); answers `{marts: [...], freshness: {...}}`."""
    published = []
    models = models or {}
    with pg.transaction():
        pg.execute(queries("publish")["lock_schema"], [schema])
        pg.execute(sql.SQL("create schema if not exists {}").format(sql.Identifier(schema)))
        for table, columns in _BOOKKEEPING.items():
            pg.execute(sql.SQL("create table if not exists {} ({})").format(
                sql.Identifier(schema, table), sql.SQL(columns)))
        for mart in marts:
            rows = mart.read()
            changes = _replace_contents(pg, schema, mart, rows,
                                        models.get(mart.table, MartModel()))
            entry = {"mart": f"{schema}.{mart.table}", "dataset": mart.name,
                     "rows": rows.num_rows, "digest": mart.digest,
                     "delta_version": mart.version}
            if changes:
                entry["columns"] = changes
            published.append(entry)
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


def grant_reader(pg: psycopg.Connection[Any], schema: str, role: str, *,
                 create: bool = False) -> dict[str, Any]:
    """Read-only access to `schema` for `role`, in one transaction: USAGE on the schema,
    SELECT on its tables, and SELECT on the tables created in it later by the connected role
    (the publisher: `ALTER DEFAULT PRIVILEGES`). `create`: create the role first when missing
    (NOLOGIN: grant it to BI users' login roles). Nothing else (no write, no other schema).
    Idempotent. Answers what it did."""
    with pg.transaction():
        exists = pg.execute("select 1 from pg_roles where rolname = %s", [role]).fetchone()
        created = False
        if exists is None:
            if not create:
                raise LookupError(f"role {role!r} does not exist in the warehouse (give "
                                  "--create to create it as a NOLOGIN group role)")
            pg.execute(sql.SQL("create role {} nologin").format(sql.Identifier(role)))
            created = True
        pg.execute(sql.SQL("create schema if not exists {}").format(sql.Identifier(schema)))
        ident, who = sql.Identifier(schema), sql.Identifier(role)
        pg.execute(sql.SQL("grant usage on schema {} to {}").format(ident, who))
        pg.execute(sql.SQL("grant select on all tables in schema {} to {}").format(ident, who))
        pg.execute(sql.SQL("alter default privileges in schema {} grant select on tables "
                           "to {}").format(ident, who))
        owner = pg.execute("select current_user").fetchone()
    return {"role": role, "schema": schema, "created": created,
            "default_privileges_for": owner[0] if owner else None}


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


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
    `gold`), optional `connection` (default `warehouse`) and `models` (the gold model:
    comments and grain per mart)."""
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
    lake_dir = str(ctx.input_manifest.get("lake_dir") or "")
    if lake_dir.startswith(VERIFY_LAKE_DIR):
        # a `control-room verify` rebuild (docs/verify.md): its gold is compared by digest,
        # never published over the warehouse BI reads, and no FRESHNESS moves data time
        ctx.emit("LOG", f"a verify rebuild: {len(marts)} gold table(s) not published to the "
                 f"warehouse (the last real publication stays)", "info",
                 {"schema": schema, "verify": True})
        return {"schema": schema, "as_of": as_of.isoformat(), "published": False,
                "marts": [{"dataset": m.name, "digest": m.digest, "delta_version": m.version}
                          for m in marts]}
    models = parse_models(ctx.args.get("models"))
    newest = freshness_source(lake)
    with postgres_connect(connection) as pg:
        result = publish(pg, schema, marts, run_id=ctx.run_id, as_of=as_of, newest=newest,
                         models=models)
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
    for entry in result["marts"]:
        if entry.get("columns"):
            ctx.emit("LOG", f"{entry['mart']}: columns changed: " + "; ".join(
                f"{change} {', '.join(names)}" for change, names in entry["columns"].items()),
                "warning", {"mart": entry["mart"], "columns": entry["columns"]})
    ctx.emit("LOG", f"published {len(marts)} gold table(s) to schema {schema}", "info",
             {"schema": schema, "marts": [m["mart"] for m in result["marts"]]})
    return {"schema": schema, "as_of": as_of.isoformat(), "published": True, **result}
