"""Extraction through Odoo's external API (JSON-RPC, pipelines/odoo/jsonrpc.py) into the same
bronze as the database mode (pipelines/odoo/extract.py): the same tables, columns, Arrow types,
ingestion metadata, watermarks, tombstones and `_state/reads`. For hosted Odoo (Odoo Online,
Odoo.sh), where only the API is reachable. The phase picks it when its connection is of type
`http` (`extract_table`).

What one phase does for a model table (`sale_order` -> model `sale.order`):

1. `fields_get` gives the model's stored fields; the bronze columns are those that are table
   columns (not one2many / many2many), in the order Odoo lists them, typed as the database mode
   types the column the ORM makes: integer and many2one -> int32, float and monetary -> float64
   (an unconstrained numeric or a double), boolean -> bool, date -> date32, datetime ->
   timestamp[us] (UTC), char / text / html / selection -> string, a translatable field -> its
   jsonb text (`{"en_US": ...}` from the value read in lang en_US). Schema evolution is decided
   from them before any row is read, as in the database mode.
2. `search_read` on a `write_date` window: `write_date >= watermark - lookback`, ordered by
   `write_date, id`, `batch_size` rows per call, the next page continuing after the last row
   read (keyset: `write_date > d or (write_date = d and id > i)`), so a page never skips or
   repeats a row however the model changes meanwhile. The context has `active_test: False`
   (archived rows too, as the database holds them) and `lang: en_US`. Values come in the ORM's
   shape (a many2one as `[id, name]`, an empty field as `false`) and are stored as the
   database mode stores the column (the id; null).
3. The versions bronze lacks are kept, deletions found from every id the model has now
   (`search_read` of `id` only, in id-ordered pages), then steps 5-7 of the database mode
   (`commit_batch`): one append, the watermark, the read (`read_at`: before the first call).

The many2many relation `sale_order_line_invoice_rel` is read through its field
(`sale.order.line.invoice_lines`): every pair, each run, compared with bronze as in the
database mode.

Limits: Odoo's API returns datetimes to the second, so `_source_write_date` has no
microseconds (the database mode's has them when Odoo stored them); a watermark window starts at
the second and re-read versions are skipped, so nothing is lost or doubled. There is no
snapshot across calls: a row changed while the pages are read is read in its newest version
(later in the order, or in the next run). The source's version is `common.version()`'s
`server_serie`.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from psycopg import sql

from executor.sdk import TerminalPhaseError
from pipelines.odoo.extract import (
    SUPPORTED_VERSIONS,
    Batch,
    SourceColumn,
    SourceTable,
    _batch_watermark,
    _check_schema,
    _new_versions,
    _tombstones,
    _upserts,
    commit_batch,
    read_watermark,
)
from pipelines.odoo.jsonrpc import OdooRpc
from pipelines.odoo.lake import Context, bronze_name, bronze_uri, delta_dataset, duck, queries

__all__ = ["MODELS", "RELATIONS", "api_source", "extract_api"]

MODELS = {
    "res_currency": "res.currency", "res_currency_rate": "res.currency.rate",
    "res_company": "res.company", "res_partner": "res.partner",
    "product_category": "product.category", "product_template": "product.template",
    "product_product": "product.product", "sale_order": "sale.order",
    "sale_order_line": "sale.order.line", "account_move": "account.move",
    "account_move_line": "account.move.line",
}
"""Odoo table -> model (any other table: its name with dots for underscores)."""

RELATIONS = {
    "sale_order_line_invoice_rel": ("sale.order.line", "invoice_lines",
                                    ("invoice_line_id", "order_line_id")),
}
"""A many2many relation table -> (model, its many2many field, the table's columns in order,
as the database mode reads them: the related record's id, then the model's)."""

_ARROW: dict[str, pa.DataType] = {
    "integer": pa.int32(), "many2one": pa.int32(), "float": pa.float64(),
    "monetary": pa.float64(), "boolean": pa.bool_(), "date": pa.date32(),
    "datetime": pa.timestamp("us"), "char": pa.string(), "text": pa.string(),
    "html": pa.string(), "selection": pa.string(), "json": pa.string(),
    "properties": pa.string(), "reference": pa.string(), "many2one_reference": pa.int32(),
}
_NOT_COLUMNS = frozenset({"one2many", "many2many", "binary", "properties_definition"})


def _model(table: str) -> str:
    return MODELS.get(table, table.replace("_", "."))


def api_source(table: str, fields: dict[str, dict[str, Any]]
               ) -> tuple[SourceTable, dict[str, Callable[[Any], Any]]]:
    """The bronze shape of `table` from its model's `fields_get`, and how each field's JSON
    value becomes the column's."""
    columns: list[SourceColumn] = []
    convert: dict[str, Callable[[Any], Any]] = {}
    for name, spec in fields.items():
        kind = str(spec.get("type"))
        if not spec.get("store", True) or kind in _NOT_COLUMNS:
            continue
        arrow = _ARROW.get(kind, pa.string())
        columns.append(SourceColumn(name, arrow, sql.Identifier(name), arrow))
        convert[name] = _converter(kind, bool(spec.get("translate")))
    if "id" not in convert:
        raise TerminalPhaseError(f"Odoo's fields_get of {_model(table)} has no id",
                                 error_type="ValueError")
    return SourceTable(table, tuple(columns), ("id",)), convert


def _converter(kind: str, translate: bool) -> Callable[[Any], Any]:
    def empty(value: Any) -> bool:
        return value is False or value is None

    if kind == "boolean":
        return lambda v: None if v is None else bool(v)
    if kind == "many2one":
        return lambda v: None if empty(v) else int(v[0] if isinstance(v, list) else v)
    if kind in ("integer", "many2one_reference"):
        return lambda v: None if v is None or v is False else int(v)
    if kind in ("float", "monetary"):
        return lambda v: None if v is None or v is False else float(v)
    if kind == "date":
        return lambda v: None if empty(v) else dt.date.fromisoformat(str(v))
    if kind == "datetime":
        return lambda v: None if empty(v) else dt.datetime.fromisoformat(str(v))
    if translate:
        return lambda v: None if empty(v) else json.dumps({"en_US": v}, ensure_ascii=False)
    if kind in ("json", "properties"):
        return lambda v: None if empty(v) else json.dumps(v, ensure_ascii=False)
    return lambda v: None if empty(v) else str(v)


def _to_arrow(source: SourceTable, convert: dict[str, Callable[[Any], Any]],
              records: list[dict[str, Any]]) -> pa.Table:
    return pa.table({c.name: pa.array([convert[c.name](r.get(c.name)) for r in records],
                                      c.arrow) for c in source.columns},
                    schema=source.raw_schema())


def _odoo_datetime(value: dt.datetime) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S")


def _pages(rpc: OdooRpc, model: str, domain: list[Any], fields: list[str], batch_size: int,
           *, by_date: bool) -> list[dict[str, Any]]:
    """Every record of `domain`, `batch_size` per call, keyset-paged on (write_date, id) or
    id."""
    records: list[dict[str, Any]] = []
    after: list[Any] = []
    while True:
        page = rpc.search_read(model, [*after, *domain] if after else domain, fields,
                               limit=batch_size,
                               order="write_date asc, id asc" if by_date else "id asc")
        records.extend(page)
        if len(page) < batch_size:
            return records
        last = page[-1]
        if by_date and last.get("write_date"):
            stamp = str(last["write_date"])
            after = ["|", ("write_date", ">", stamp), "&", ("write_date", "=", stamp),
                     ("id", ">", int(last["id"]))]
        else:
            after = [("id", ">", int(last["id"]))]


def extract_api(ctx: Context, rpc: OdooRpc, *, table: str, lake: str,
                lookback: dt.timedelta = dt.timedelta(0), batch_size: int = 2000
                ) -> dict[str, Any]:
    """One extraction of `table` through the API (module docstring); the phase's manifest,
    the database mode's plus `source: api` and `calls` (JSON-RPC requests made)."""
    read_at = dt.datetime.now(dt.UTC)
    odoo_version = rpc.server_serie()
    name, uri = bronze_name(table), bronze_uri(lake, table)
    if table in RELATIONS:
        source = _relation_source(table)
        change = _check_schema(ctx, source, name, uri)
        batch = _relation(ctx, rpc, source, uri, batch_size)
    else:
        source, convert = api_source(table, rpc.fields_get(_model(table)))
        change = _check_schema(ctx, source, name, uri)
        ctx.progress(0.1)
        batch = _incremental(ctx, rpc, source, convert, lake, name, uri, lookback, batch_size)
    manifest = commit_batch(ctx, source, batch, change=change, lake=lake, read_at=read_at,
                            odoo_version=odoo_version)
    if odoo_version not in SUPPORTED_VERSIONS:
        ctx.emit("LOG", f"{name}: the source is Odoo {odoo_version or '(unknown version)'}; "
                 f"this pipeline's silver model maps {', '.join(SUPPORTED_VERSIONS)}",
                 "warning", {"dataset": name, "odoo_version": odoo_version})
    return {**manifest, "schema_change": change, "odoo_version": odoo_version,
            "source": "api", "calls": rpc.calls}


def _incremental(ctx: Context, rpc: OdooRpc, source: SourceTable,
                 convert: dict[str, Callable[[Any], Any]], lake: str, name: str, uri: str,
                 lookback: dt.timedelta, batch_size: int) -> Batch:
    model = _model(source.name)
    bronze = delta_dataset(uri)
    previous = read_watermark(lake, name) if bronze is not None else None
    domain: list[Any] = []
    if previous is not None:
        since = previous.write_date - lookback
        domain = [("write_date", ">=", _odoo_datetime(since))]
    extracted_at = dt.datetime.now(dt.UTC)
    records = _pages(rpc, model, domain, source.names, batch_size, by_date=True)
    raw = _to_arrow(source, convert, records)
    if previous is not None and not lookback:      # the window starts at the second
        keep = pc.or_(pc.greater(raw.column("write_date"),
                                 pa.scalar(previous.write_date, pa.timestamp("us"))),
                      pc.and_(pc.equal(raw.column("write_date"),
                                       pa.scalar(previous.write_date, pa.timestamp("us"))),
                              pc.greater(raw.column("id"), pa.scalar(previous.id, pa.int32()))))
        raw = raw.filter(pc.fill_null(keep, True))
    upserts = _new_versions(bronze, _upserts(raw, ctx.run_id, extracted_at))
    ctx.progress(0.4)
    ids = [int(r["id"]) for r in _pages(rpc, model, [], ["id"], max(batch_size, 10_000),
                                        by_date=False)]
    newest_row = rpc.search_read(model, [], ["write_date"], limit=1,
                                 order="write_date desc, id desc")
    newest = (dt.datetime.fromisoformat(str(newest_row[0]["write_date"]))
              if newest_row and newest_row[0].get("write_date") else None)
    parts = [upserts]
    deletes = 0
    if bronze is not None:
        named = queries("extract")
        live_source = pa.table({"id": pa.array(ids, pa.int64())})
        with duck(bronze=bronze, source=live_source) as db:
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
        new = None
    stats: dict[str, Any] = {
        "mode": "incremental" if previous is not None else "initial",
        "read": raw.num_rows, "upserts": upserts.num_rows, "deletes": deletes,
        "source_rows": len(ids),
        "source_max_write_date": newest.isoformat() if newest is not None else None,
        "watermark": {"from": previous.to_json() if previous else None,
                      "to": previous.to_json() if previous else None},
    }
    return Batch(pa.concat_tables(parts) if len(parts) > 1 else parts[0], stats, new)


def _relation_source(table: str) -> SourceTable:
    related, own = RELATIONS[table][2]
    columns = tuple(SourceColumn(c, pa.int32(), sql.Identifier(c), pa.int32())
                    for c in (related, own))
    return SourceTable(table, columns, (related, own))


def _relation(ctx: Context, rpc: OdooRpc, source: SourceTable, uri: str, batch_size: int
              ) -> Batch:
    model, field_name, (related, own) = RELATIONS[source.name]
    extracted_at = dt.datetime.now(dt.UTC)
    pairs = sorted({(int(target), int(r["id"]))
                    for r in _pages(rpc, model, [(field_name, "!=", False)],
                                    ["id", field_name], batch_size, by_date=False)
                    for target in r.get(field_name) or []})
    raw = pa.table({related: pa.array([p[0] for p in pairs], pa.int32()),
                    own: pa.array([p[1] for p in pairs], pa.int32())})
    bronze = delta_dataset(uri)
    added, vanished = raw, raw.schema.empty_table()
    if bronze is not None:
        key = f'"{related}", "{own}"'
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
