"""Where the Odoo pipeline keeps its tables, and what its python entrypoints use of their
context.

Layout under the lake root (`${params.lake}` in specs/odoo_medallion.yaml):

    bronze/odoo/<odoo table>     raw rows + ingestion metadata, catalog name bronze.odoo.<table>
    silver/<entity>              typed current rows, catalog name silver.odoo.<entity>
    gold/<mart>                  marts, catalog name gold.odoo.<mart>
    _state/watermarks            the extraction watermarks (one append-only Delta table)
    _state/reads                 every extraction's read: its snapshot time, newest write_date
    _state/quality               every quality check of every run
    _state/freshness             one row per published run

`_state` tables are the pipeline's own bookkeeping, not catalog datasets: appended to with
`append_state` and never read by silver or gold.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import time
from collections.abc import Iterator, Mapping
from functools import cache
from pathlib import Path
from typing import Any, Protocol, TypeVar

import duckdb
import pyarrow as pa
from deltalake import DeltaTable, write_deltalake
from deltalake.exceptions import CommitFailedError

from executor.sdk import Connection, EventLevel, TerminalPhaseError, WriteMode, scan_dataset
from pipelines.odoo.sqlfile import parse_queries

__all__ = [
    "Context",
    "append_state",
    "arg",
    "bronze_name",
    "bronze_uri",
    "delta_dataset",
    "duck",
    "open_delta",
    "parse_as_of",
    "queries",
    "state_uri",
]

T = TypeVar("T")

SQL_DIR = Path(__file__).resolve().parent / "sql"


class Context(Protocol):
    """What the pipeline's entrypoints read from `executor.sdk.PythonContext`
    (a structural type, so that tests can hand them the real context built in-process)."""

    @property
    def run_id(self) -> str: ...
    @property
    def phase(self) -> str: ...
    @property
    def args(self) -> Mapping[str, Any]: ...
    @property
    def inputs(self) -> Mapping[str, Any]: ...
    @property
    def input_manifest(self) -> Mapping[str, Any]: ...
    @property
    def connections(self) -> Mapping[str, Connection]: ...
    @property
    def datasets(self) -> Mapping[str, str]: ...
    @property
    def output_dir(self) -> Path: ...

    def emit(self, type: str, message: str, level: EventLevel = "info",
             payload: Mapping[str, Any] | None = None) -> None: ...

    def progress(self, value: float | Mapping[str, Any]) -> None: ...

    def write_table(self, name: str, uri: str | os.PathLike[str], data: Any, *,
                    mode: WriteMode, keys: list[str] | None = None, layer: str | None = None,
                    partition_by: list[str] | None = None) -> dict[str, Any]: ...


def arg(ctx: Context, name: str, kind: type[T]) -> T:
    """`ctx.args[name]`, checked to be a `kind` (a terminal error naming it otherwise)."""
    value = ctx.args.get(name)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise TerminalPhaseError(
            f"phase {ctx.phase}: args.{name} must be a {kind.__name__}, got {value!r}",
            error_type="ValueError")
    return value


@cache
def queries(file: str) -> dict[str, str]:
    """The named queries of `sql/<file>.sql` (`-- name: NAME` blocks), without their
    trailing `;` (each is embedded in other statements)."""
    text = (SQL_DIR / f"{file}.sql").read_text(encoding="utf-8")
    return {name: body.strip().removesuffix(";").rstrip()
            for name, body in parse_queries(text).items()}


def parse_as_of(text: str) -> dt.date:
    """The date of an `as_of` param (an ISO date or date-time): the run's logical date."""
    try:
        return dt.datetime.fromisoformat(text).date()
    except ValueError:
        raise TerminalPhaseError(f"as_of {text!r} is not an ISO date or date-time",
                                 error_type="ValueError") from None


def bronze_name(table: str) -> str:
    return f"bronze.odoo.{table}"


def bronze_uri(lake: str, table: str) -> str:
    return f"{lake.rstrip('/')}/bronze/odoo/{table}"


def state_uri(lake: str, name: str) -> str:
    return f"{lake.rstrip('/')}/_state/{name}"


def open_delta(uri: str) -> DeltaTable | None:
    """The Delta table at `uri`, None when there is none yet."""
    if not DeltaTable.is_deltatable(uri):
        return None
    return DeltaTable(uri)


def delta_dataset(uri: str, version: int | None = None) -> Any:
    """A pyarrow dataset over the Delta table (DuckDB scans it with projection and filter
    pushdown), None when there is no table."""
    if not DeltaTable.is_deltatable(uri):
        return None
    return scan_dataset(DeltaTable(uri, version=version))


@contextlib.contextmanager
def duck(**relations: Any) -> Iterator[duckdb.DuckDBPyConnection]:
    """An in-memory DuckDB connection with `relations` (Arrow tables or datasets) registered
    as views by name; closed at the end of the block."""
    conn = duckdb.connect(":memory:", config={"autoinstall_known_extensions": False,
                                              "autoload_known_extensions": False})
    try:
        for name, relation in relations.items():
            conn.register(name, relation)
        yield conn
    finally:
        conn.close()


def append_state(uri: str, rows: pa.Table, attempts: int = 5) -> None:
    """Append `rows` to a `_state` table (created by the first append). Phases running side
    by side append to the same table: appends to an existing table never conflict, but the
    first commits of a new one race (delta-rs: `CommitFailedError`, nothing committed), so
    a failed commit is tried again."""
    for attempt in range(1, attempts + 1):
        try:
            write_deltalake(uri, rows, mode="append")
            return
        except CommitFailedError:
            if attempt == attempts:
                raise
            time.sleep(0.05 * attempt)
