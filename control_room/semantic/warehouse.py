"""Reading the warehouse's gold schema: guarded SQL in a READ ONLY transaction with a
statement timeout, the known values of the dimensions (cached), the gold columns (to check a
semantic file against) and the publication that produced each mart (lineage)."""

from __future__ import annotations

import datetime as dt
import decimal
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from control_room.semantic.guard import guard
from control_room.semantic.model import Layer

__all__ = ["Result", "Warehouse", "WarehouseError", "jsonable"]


class WarehouseError(RuntimeError):
    """The warehouse could not answer (`code`: warehouse_unavailable, query_failed,
    query_timeout). The message never holds the DSN."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Result:
    columns: list[str]
    rows: list[list[Any]]


def jsonable(value: Any) -> Any:
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, dt.date | dt.datetime):
        return value.isoformat()
    return value


class Warehouse:
    """A warehouse reached by a DSN (a read-only role's, ideally: `control-room warehouse
    grant-reader`). One connection, reused under a lock; reconnects after an error."""

    def __init__(self, dsn: str, *, layer: Layer, statement_timeout_ms: int = 10_000,
                 values_ttl_seconds: float = 300.0,
                 connect: Callable[..., psycopg.Connection[Any]] | None = None,
                 **connect_args: Any) -> None:
        self._dsn = dsn
        self._args = connect_args
        self.layer = layer
        self.timeout_ms = statement_timeout_ms
        self.values_ttl = values_ttl_seconds
        self._connect = connect or psycopg.connect
        self._conn: psycopg.Connection[Any] | None = None
        self._lock = threading.Lock()
        self._values: tuple[float, dict[str, list[str]]] | None = None

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    @contextmanager
    def _read_only(self) -> Iterator[psycopg.Connection[Any]]:
        with self._lock:
            if self._conn is None or self._conn.closed:
                try:
                    self._conn = self._connect(self._dsn, autocommit=True, connect_timeout=10,
                                               **self._args)
                except psycopg.Error:
                    # never the DSN in the message (it may hold a password)
                    raise WarehouseError("the warehouse is unreachable",
                                         "warehouse_unavailable") from None
            conn = self._conn
            try:
                with conn.transaction():
                    conn.execute("set transaction read only")
                    conn.execute(sql.SQL("set local statement_timeout = {}").format(
                        sql.Literal(self.timeout_ms)))
                    yield conn
            except psycopg.errors.QueryCanceled:
                raise WarehouseError(f"the query ran longer than {self.timeout_ms} ms",
                                     "query_timeout") from None
            except psycopg.OperationalError:
                conn.close()
                self._conn = None
                raise WarehouseError("the warehouse connection failed",
                                     "warehouse_unavailable") from None
            except psycopg.Error as exc:
                message = exc.diag.message_primary or type(exc).__name__
                raise WarehouseError(f"the warehouse refused the query: {message}",
                                     "query_failed") from None

    def run(self, query: str) -> Result:
        """Guarded SQL, run read-only; the rows as JSON-ready values."""
        checked = guard(query, schema=self.layer.schema)
        with self._read_only() as conn:
            cursor = conn.execute(checked)
            columns = [d.name for d in cursor.description or ()]
            rows = [[jsonable(v) for v in row] for row in cursor.fetchall()]
        return Result(columns, rows)

    def columns(self) -> dict[str, list[str]]:
        """The gold schema's tables and their columns."""
        with self._read_only() as conn:
            found = conn.execute(
                "select table_name, column_name from information_schema.columns "
                "where table_schema = %s order by table_name, ordinal_position",
                [self.layer.schema]).fetchall()
        out: dict[str, list[str]] = {}
        for table, column in found:
            out.setdefault(table, []).append(column)
        return out

    def values(self) -> dict[str, list[str]]:
        """The known values of each dimension with `values: true` (distinct, over every
        table that has it), cached for `values_ttl_seconds`."""
        cached = self._values
        if cached is not None and time.monotonic() - cached[0] < self.values_ttl:
            return cached[1]
        layer = self.layer
        out: dict[str, list[str]] = {}
        with self._read_only() as conn:
            for dim in layer.dimensions.values():
                if not dim.values:
                    continue
                found: set[str] = set()
                for table, column in dim.columns.items():
                    if "." in column:
                        continue
                    rows = conn.execute(sql.SQL(
                        "select distinct {} from {} where {} is not null limit 5000").format(
                            sql.Identifier(column), sql.Identifier(layer.schema, table),
                            sql.Identifier(column))).fetchall()
                    found.update(str(r[0]) for r in rows)
                out[dim.name] = sorted(found)
        self._values = (time.monotonic(), out)
        return out

    def publications(self) -> dict[str, dict[str, Any]]:
        """The newest publication of each mart (`gold.publications`): run id, as_of, rows,
        digest, when; {} when the schema has no such table."""
        with self._read_only() as conn:
            exists = conn.execute("select to_regclass(%s)",
                                  [f"{self.layer.schema}.publications"]).fetchone()
            if exists is None or exists[0] is None:
                return {}
            rows = conn.execute(sql.SQL(
                "select distinct on (mart) mart, run_id, as_of, rows, digest, published_at "
                "from {} order by mart, published_at desc").format(
                    sql.Identifier(self.layer.schema, "publications"))).fetchall()
        return {str(r[0]).partition(".")[2] or str(r[0]): {
            "run_id": r[1], "as_of": jsonable(r[2]), "rows": r[3], "digest": r[4],
            "published_at": jsonable(r[5])} for r in rows}


def lineage(layer: Layer, table: str, published: Mapping[str, Mapping[str, Any]]
            ) -> dict[str, Any]:
    """Where a mart's numbers come from: gold table -> silver -> Odoo tables, and the run
    that published it."""
    spec = layer.tables[table].lineage
    entry = published.get(table) or {}
    return {"table": f"{layer.schema}.{table}",
            "dataset": spec.dataset if spec else None,
            "silver": list(spec.silver) if spec else [],
            "odoo": list(spec.odoo) if spec else [],
            "run_id": entry.get("run_id"), "as_of": entry.get("as_of"),
            "published_at": entry.get("published_at")}
