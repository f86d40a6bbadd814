"""The `sql` kind: a DuckDB query over Delta tables, Parquet files and Postgres inputs,
written as a Delta table. Params, outputs, the output manifest and which errors are terminal:
docs/kinds.md ("sql").
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import glob
import json
import math
import os
import re
import shutil
import stat
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import duckdb
import pyarrow.dataset as pds
from deltalake import DeltaTable
from deltalake.exceptions import TableNotFoundError

from executor import connections as pg_inputs
from executor import datasets
from executor.checkout import OWN_CODE_BASE, OWN_CODE_ROOT
from executor.digests import blob_digest
from executor.kinds.base import (
    OutputFile,
    PhaseCancelled,
    PhaseContext,
    PhaseResult,
    PhaseTimeout,
    TerminalPhaseError,
    TransientPhaseError,
    WriteMode,
)
from executor.tables import (
    SchemaBreakingChange,
    WriteResult,
    confine,
    confine_files,
    scan_dataset,
    write_table,
)

__all__ = ["RESULT_MANIFEST_FORMAT", "InputSpec", "OutputSpec", "SqlKind", "SqlParams",
           "parse_input", "parse_output", "parse_params", "read_query", "record_result",
           "source"]

RESULT_MANIFEST_FORMAT = "cr-sql-result-v1"
DEFAULT_PREVIEW_ROWS = 50
MAX_PREVIEW_ROWS = 10_000
POLL_S = 0.05
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_MODES = ("overwrite", "append", "merge")
_GLOB_CHARS = frozenset("*?[")
MAX_QUERY_FILE_BYTES = 1024 * 1024
"""A `query_file` larger than this is refused (unread)."""
MAX_USER_ERROR_BYTES = 2048
"""DuckDB's error text (which may quote the data, e.g. `error('...')`) is cut to this
many bytes of UTF-8 in the phase's error."""
MAX_SHOWN_CHARS = 200

# DuckDB errors a retry cannot fix: the SQL or the data is wrong.
_TERMINAL_DUCKDB: tuple[type[BaseException], ...] = (
    duckdb.ProgrammingError,  # parser, syntax, binder, catalog, invalid input
    duckdb.DataError,  # conversion, type mismatch, out of range
    duckdb.NotSupportedError,
    duckdb.IntegrityError,  # constraint
    duckdb.PermissionException,  # external access (files, extensions) is disabled
)


@dataclass(frozen=True)
class PostgresSource:
    connection: str
    query: str | None = None
    table: str | None = None


@dataclass(frozen=True)
class InputSpec:
    name: str
    delta: str | None = None
    version: int | None = None
    parquet: str | None = None
    postgres: PostgresSource | None = None


@dataclass(frozen=True)
class OutputSpec:
    uri: str
    mode: str
    keys: tuple[str, ...] | None
    name: str
    layer: str | None = None
    dataset: bool = False
    """Named explicitly: a catalog dataset (written by `datasets.write_dataset`, listed in
    the output manifest's `tables`)."""


@dataclass(frozen=True)
class SqlParams:
    query: str
    inputs: tuple[InputSpec, ...]
    output: OutputSpec
    preview_rows: int


def _bad(message: str) -> TerminalPhaseError:
    return TerminalPhaseError(f"sql params: {message}", error_type="ValueError")


def _shown(text: str) -> str:
    """A path as the spec wrote it, for an error: at most MAX_SHOWN_CHARS of it."""
    return repr(text if len(text) <= MAX_SHOWN_CHARS else text[:MAX_SHOWN_CHARS] + "...")


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def read_query(params: Mapping[str, Any], checkout: Path | None = None) -> str:
    """The query: `query` as written, or the text of `query_file` read from the run's code
    (`checkout`, else the worker's own `pipelines` package, see executor/checkout.py). The
    file must resolve (symbolic links followed) inside that code, be a regular UTF-8 file of
    at most MAX_QUERY_FILE_BYTES; every refusal names the path as written, never a byte of
    what the path points at."""
    query = params.get("query")
    query_file = params.get("query_file")
    if (query is None) == (query_file is None):
        raise _bad("give exactly one of 'query' and 'query_file'")
    if query is not None:
        if not isinstance(query, str) or not query.strip():
            raise _bad("'query' must be a non-empty string")
        return query
    if not isinstance(query_file, str) or not query_file or "\x00" in query_file:
        raise _bad("'query_file' must be a non-empty path")
    if os.path.isabs(query_file):
        raise _bad(f"'query_file' must be relative to the run's code: {_shown(query_file)}")
    base, root = (checkout, checkout) if checkout is not None else (OWN_CODE_BASE,
                                                                     OWN_CODE_ROOT)
    where = "the run's checkout" if checkout is not None else (
        "the worker's own code (its pipelines package; the run has no checkout)")
    real_root = os.path.realpath(root)
    directory = os.path.realpath(base)
    code_dir = params.get("code_dir")
    if code_dir is not None:
        if not isinstance(code_dir, str) or not code_dir or "\x00" in code_dir:
            raise _bad("'code_dir' must be a non-empty path")
        directory = os.path.realpath(os.path.join(base, code_dir))
        if not _inside(directory, real_root):
            raise _bad(f"'code_dir' {_shown(code_dir)} is not inside {where}")
    path = os.path.realpath(os.path.join(directory, query_file))
    if not _inside(path, real_root):
        raise _bad(f"'query_file' {_shown(query_file)} leaves code_dir: it is not inside "
                   f"{where}")
    return _read_query_file(path, query_file)


def _read_query_file(path: str, query_file: str) -> str:
    """The text of the (confined) file at `path`, opened without following a link and
    without blocking; `query_file` as written names it in errors."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise TerminalPhaseError(f"query file not found: {_shown(query_file)}",
                                 error_type="FileNotFoundError") from None
    except OSError as exc:
        raise _bad(f"query file {_shown(query_file)} cannot be opened "
                   f"({type(exc).__name__})") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise _bad(f"query file {_shown(query_file)} is not a regular file")
        if info.st_size > MAX_QUERY_FILE_BYTES:
            raise _bad(f"query file {_shown(query_file)} is larger than "
                       f"{MAX_QUERY_FILE_BYTES} bytes")
        chunks: list[bytes] = []
        size = 0
        while size <= MAX_QUERY_FILE_BYTES:
            chunk = os.read(fd, MAX_QUERY_FILE_BYTES + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        data = b"".join(chunks)
    finally:
        os.close(fd)
    if len(data) > MAX_QUERY_FILE_BYTES:
        raise _bad(f"query file {_shown(query_file)} is larger than "
                   f"{MAX_QUERY_FILE_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _bad(f"query file {_shown(query_file)} is not UTF-8 text (at byte "
                   f"{exc.start})") from None
    if not text.strip():
        raise _bad(f"query file {_shown(query_file)} is empty")
    return text


def parse_input(name: Any, spec: Any, upstream: Mapping[str, Any],
                lake_root: Path | None = None) -> InputSpec:
    """One input of the phase's params (`{"delta" | "parquet" | "upstream" | "postgres":
    ...}`) checked, its location confined to `lake_root`; `upstream` holds the dependencies'
    output manifests. Used by the sql, dbt, spark and trino kinds."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise _bad(f"input name {name!r} is not an identifier")
    if not isinstance(spec, Mapping):
        raise _bad(f"input {name!r} must be an object")
    sources = [key for key in ("delta", "parquet", "upstream", "postgres") if key in spec]
    if len(sources) != 1:
        raise _bad(f"input {name!r} needs exactly one of 'delta', 'parquet', 'upstream', "
                   "'postgres'")
    unknown = set(spec) - {"delta", "parquet", "upstream", "postgres", "version"}
    if unknown:
        raise _bad(f"input {name!r} has unknown keys {sorted(unknown)}")
    version = spec.get("version")
    if version is not None and (
        not isinstance(version, int) or isinstance(version, bool) or version < 0
    ):
        raise _bad(f"input {name!r}: 'version' must be a non-negative integer or null")
    source = sources[0]
    if source == "postgres":
        if version is not None:
            raise _bad(f"input {name!r}: 'version' applies to Delta inputs only")
        return InputSpec(name, postgres=_parse_postgres(name, spec["postgres"]))
    if source == "parquet":
        if version is not None:
            raise _bad(f"input {name!r}: 'version' applies to Delta inputs only")
        path = spec["parquet"]
        if not isinstance(path, str) or not path:
            raise _bad(f"input {name!r}: 'parquet' must be a path or glob")
        return InputSpec(name, parquet=confine(path, lake_root, what=f"input {name!r}"))
    if source == "delta":
        uri = spec["delta"]
        if not isinstance(uri, str) or not uri:
            raise _bad(f"input {name!r}: 'delta' must be a table URI")
        return InputSpec(name, delta=confine(uri, lake_root, what=f"input {name!r}"),
                         version=version)
    phase = spec["upstream"]
    manifest = upstream.get(phase) if isinstance(phase, str) else None
    table = manifest.get("table") if isinstance(manifest, Mapping) else None
    if not isinstance(table, Mapping) or not isinstance(table.get("uri"), str):
        raise TerminalPhaseError(
            f"input {name!r}: upstream phase {phase!r} has no output table in its manifest"
        )
    written = table.get("version")
    if version is None and isinstance(written, int) and not isinstance(written, bool):
        version = written
    uri = confine(str(table["uri"]), lake_root, what=f"input {name!r} (upstream {phase!r})")
    return InputSpec(name, delta=uri, version=version)


def _parse_postgres(name: str, spec: Any) -> PostgresSource:
    if not isinstance(spec, Mapping):
        raise _bad(f"input {name!r}: 'postgres' must be an object")
    unknown = set(spec) - {"connection", "query", "table"}
    if unknown:
        raise _bad(f"input {name!r}: 'postgres' has unknown keys {sorted(unknown)}")
    connection = spec.get("connection")
    if not isinstance(connection, str) or not connection:
        raise _bad(f"input {name!r}: 'postgres.connection' must name a connection")
    if ("query" in spec) == ("table" in spec):
        raise _bad(f"input {name!r}: 'postgres' needs exactly one of 'query' and 'table'")
    text = spec.get("query", spec.get("table"))
    if not isinstance(text, str) or not text.strip():
        raise _bad(f"input {name!r}: 'postgres.query' / 'postgres.table' must be a "
                   "non-empty string")
    if "query" in spec:
        return PostgresSource(connection, query=text)
    return PostgresSource(connection, table=text)


def parse_output(spec: Any, lake_root: Path | None = None) -> OutputSpec:
    if not isinstance(spec, Mapping):
        raise _bad("'output' must be an object")
    unknown = set(spec) - {"delta", "mode", "keys", "name", "layer"}
    if unknown:
        raise _bad(f"'output' has unknown keys {sorted(unknown)}")
    uri = spec.get("delta")
    if not isinstance(uri, str) or not uri:
        raise _bad("'output.delta' must be a table URI")
    mode = spec.get("mode", "overwrite")
    if mode not in _MODES:
        raise _bad(f"'output.mode' must be one of {', '.join(_MODES)}, not {mode!r}")
    raw_keys = spec.get("keys")
    keys: tuple[str, ...] | None = None
    if raw_keys is not None:
        if not isinstance(raw_keys, list) or not all(
            isinstance(k, str) and k for k in raw_keys
        ):
            raise _bad("'output.keys' must be a list of column names")
        keys = tuple(raw_keys)
    if mode == "merge" and not keys:
        raise _bad("'output.mode' merge needs 'output.keys'")
    name = spec.get("name", uri)
    if not isinstance(name, str) or not name:
        raise _bad("'output.name' must be a non-empty string")
    layer = spec.get("layer")
    if "name" in spec:
        try:
            datasets.check_name(name, layer)
        except TerminalPhaseError as exc:
            raise _bad(f"'output.name': {exc}") from None
    elif layer is not None:
        raise _bad("'output.layer' needs 'output.name' (the catalog's dataset name)")
    return OutputSpec(uri=confine(uri, lake_root, what="output"), mode=mode, keys=keys,
                      name=name, layer=layer, dataset="name" in spec)


def parse_params(params: Mapping[str, Any], upstream: Mapping[str, Any] | None = None,
                 code_dir: Path | None = None, lake_root: Path | None = None) -> SqlParams:
    """Validate the phase's params (TerminalPhaseError when they are wrong). A `query_file`
    is read from `code_dir` (the run's checkout; None: the worker's own code), under the
    `code_dir` param when given (a directory inside it). Every Delta / Parquet location is
    confined to `lake_root` (`tables.confine`; None: not confined)."""
    unknown = set(params) - {"query", "query_file", "code_dir", "inputs", "output",
                             "preview_rows", "connections"}
    if unknown:
        raise _bad(f"unknown keys {sorted(unknown)}")
    query = read_query(params, code_dir)
    raw_inputs = params.get("inputs", {})
    if not isinstance(raw_inputs, Mapping):
        raise _bad("'inputs' must be an object")
    inputs = tuple(
        parse_input(name, spec, upstream or {}, lake_root)
        for name, spec in raw_inputs.items()
    )
    if "output" not in params:
        raise _bad("'output' is required")
    output = parse_output(params["output"], lake_root)
    preview = params.get("preview_rows", DEFAULT_PREVIEW_ROWS)
    if (
        not isinstance(preview, int)
        or isinstance(preview, bool)
        or not 0 <= preview <= MAX_PREVIEW_ROWS
    ):
        raise _bad(f"'preview_rows' must be an integer in [0, {MAX_PREVIEW_ROWS}]")
    return SqlParams(query=query, inputs=inputs, output=output, preview_rows=preview)


# ---------------------------------------------------------------------------------------------
# Inputs


def source(spec: InputSpec, ctx: PhaseContext) -> Any:
    """What an engine reads as the input: a Postgres read (an Arrow table), else a pyarrow
    dataset (Delta at its version, Parquet). Used by the sql, dbt and spark kinds."""
    if spec.postgres is None:
        return _dataset(spec, ctx.lake_root)
    pg = spec.postgres
    connection = ctx.connections.get(pg.connection)
    if connection is None:
        raise TerminalPhaseError(
            f"input {spec.name!r}: connection {pg.connection!r} is not one of the "
            f"phase's connections (params.connections: {sorted(ctx.connections)})")
    deadline = None if ctx.timeout_s is None else time.monotonic() + ctx.timeout_s
    try:
        table = pg_inputs.read_postgres(connection, query=pg.query, table=pg.table,
                                        cancel=ctx.cancel, deadline=deadline)
    except (PhaseTimeout, PhaseCancelled):
        raise
    except TerminalPhaseError as exc:   # Postgres's error: the query's text (may quote data)
        raise TerminalPhaseError(
            f"input {spec.name!r}: " + cap_user_text(exc.message),
            error_type=exc.error_type, user_data=True) from None
    ctx.emit("LOG", f"read {table.num_rows} row(s) from Postgres for input {spec.name!r}",
             "info", {"input": spec.name, "connection": pg.connection,
                      "rows": table.num_rows})
    return table


def _dataset(spec: InputSpec, lake_root: Path | None = None) -> Any:
    if spec.delta is not None:
        try:
            table = DeltaTable(spec.delta, version=spec.version)
        except TableNotFoundError as exc:
            raise TerminalPhaseError(
                f"input {spec.name!r}: no Delta table at {spec.delta}: {exc}",
                error_type="TableNotFoundError",
            ) from None
        except Exception as exc:
            if spec.version is not None and "version" in str(exc).lower():
                raise TerminalPhaseError(
                    f"input {spec.name!r}: {spec.delta} has no version {spec.version}: {exc}",
                    error_type=type(exc).__name__,
                ) from None
            raise
        return scan_dataset(table)
    assert spec.parquet is not None
    path = spec.parquet
    if _GLOB_CHARS & set(path):
        files = sorted(glob.glob(path, recursive=True))
        if not files:
            raise TerminalPhaseError(f"input {spec.name!r}: no Parquet file matches {path}")
        files = confine_files(files, lake_root, what=f"input {spec.name!r}: a match")
        return pds.dataset(files, format="parquet")
    if not os.path.exists(path):
        raise TerminalPhaseError(f"input {spec.name!r}: no Parquet file or directory {path}")
    return pds.dataset(path, format="parquet")


# ---------------------------------------------------------------------------------------------
# Running the query


def _connect(temp_dir: Path) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB that reads no file, loads no extension and spills only to
    `temp_dir` (the attempt's own); its configuration locked, so the query cannot change
    any of it."""
    return duckdb.connect(
        ":memory:",
        config={
            "enable_external_access": False,
            "autoinstall_known_extensions": False,
            "autoload_known_extensions": False,
            "temp_directory": str(temp_dir),
            "lock_configuration": True,
        },
    )


def cap_user_text(text: str, limit: int = MAX_USER_ERROR_BYTES) -> str:
    """`text` cut to at most `limit` bytes of UTF-8 (on a character boundary), saying how
    long it was when cut."""
    data = text.encode("utf-8", "replace")
    if len(data) <= limit:
        return text
    kept = data[:limit].decode("utf-8", "ignore")
    return f"{kept}... (cut: {len(data)} bytes)"


def _duckdb_error(exc: BaseException) -> Exception:
    """The phase error for DuckDB's `exc`: its text is the query's (it may quote the data,
    `error('...')`), so it is capped and marked as user data."""
    message = "sql query failed: " + cap_user_text(str(exc))
    if isinstance(exc, _TERMINAL_DUCKDB):
        return TerminalPhaseError(message, error_type=type(exc).__name__, user_data=True)
    return TransientPhaseError(message, error_type=type(exc).__name__, user_data=True)


def _run_interruptible(conn: duckdb.DuckDBPyConnection, query: str, ctx: PhaseContext) -> Any:
    """Run `query` in a thread and return its result as a pyarrow Table; interrupt it when
    the phase is cancelled or times out."""
    outcome: dict[str, Any] = {}

    def work() -> None:
        try:
            # several statements run in order; the last one's rows are the result
            outcome["table"] = conn.sql(query).to_arrow_table()
        except BaseException as exc:  # handed to the calling thread
            outcome["error"] = exc

    deadline = None if ctx.timeout_s is None else time.monotonic() + ctx.timeout_s
    thread = threading.Thread(target=work, name=f"sql-{ctx.phase}", daemon=True)
    thread.start()
    stop: type[PhaseCancelled] | type[PhaseTimeout] | None = None
    while thread.is_alive():
        if stop is None:
            if ctx.cancel.is_set():
                stop = PhaseCancelled
            elif deadline is not None and time.monotonic() >= deadline:
                stop = PhaseTimeout
        if stop is not None:
            conn.interrupt()  # repeated until the thread ends: a query may not have begun
        thread.join(POLL_S)
    if stop is PhaseCancelled:
        raise PhaseCancelled("sql query cancelled")
    if stop is PhaseTimeout:
        raise PhaseTimeout(f"sql query ran past the phase's timeout ({ctx.timeout_s} s)")
    if "error" in outcome:
        error = outcome["error"]
        if isinstance(error, duckdb.Error):
            raise _duckdb_error(error) from error
        raise error
    return outcome["table"]


# ---------------------------------------------------------------------------------------------
# Outputs


def _json_value(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, Mapping):
        return {str(k): _json_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        # pyarrow gives maps as lists of (key, value) tuples
        return [_json_value(v) for v in value]
    return str(value)


def _schema_json(schema: Any) -> list[dict[str, Any]]:
    return [
        {"name": f.name, "type": str(f.type), "nullable": bool(f.nullable)} for f in schema
    ]


def _dump(path: Path, document: Any) -> None:
    text = json.dumps(document, indent=2, ensure_ascii=False, allow_nan=False)
    path.write_text(text + "\n", encoding="utf-8")


def _preview(result: Any, rows: int, temp_dir: Path) -> dict[str, Any]:
    """The first `rows` rows of `result` ordered by all its columns."""
    columns = list(result.column_names)
    if rows == 0 or result.num_rows == 0 or not columns:
        return {"columns": columns, "rows": []}
    conn = _connect(temp_dir)
    try:
        conn.register("__result", result)
        sample = conn.sql(
            f"select * from __result order by all limit {int(rows)}"
        ).to_arrow_table()
    finally:
        conn.close()
    data = [sample.column(i).to_pylist() for i in range(sample.num_columns)]
    return {
        "columns": columns,
        "rows": [[_json_value(col[r]) for col in data] for r in range(sample.num_rows)],
    }


def _write_output(ctx: PhaseContext, out: OutputSpec, result: Any, query_digest: str
                  ) -> tuple[WriteResult, dict[str, Any]]:
    """Write the query's result: a named output through the catalog's rules
    (`datasets.write_dataset`), an unnamed one with `write_table` alone. Answers the write
    and the table's entry (`digest` and `rows` at the version written)."""
    mode: WriteMode = out.mode  # type: ignore[assignment]  # checked by parse_params
    keys = list(out.keys) if out.keys is not None else None
    metadata = {"controlroom.run_id": ctx.run_id, "controlroom.phase": ctx.phase,
                "controlroom.attempt": ctx.attempt, "controlroom.query_digest": query_digest}
    try:
        if out.dataset:
            dataset = datasets.write_dataset(ctx.datasets, out.name, out.uri, result,
                                             mode=mode, keys=keys, layer=out.layer,
                                             commit_metadata=metadata)
            return dataset.result, dataset.entry
        written = write_table(out.uri, result, mode=mode, keys=keys, name=out.name,
                              commit_metadata=metadata)
    except SchemaBreakingChange as exc:
        raise TerminalPhaseError(str(exc), error_type="SchemaBreakingChange") from exc
    except ValueError as exc:  # bad keys, null / duplicated merge keys, schema drift
        raise TerminalPhaseError(f"{out.name}: {exc}", error_type=type(exc).__name__
                                 ) from exc
    digest = datasets.written_digest(out.uri, written)
    return written, {"digest": digest.digest, "rows": digest.rows}


class SqlKind:
    """DuckDB over Delta / Parquet inputs, written as a Delta table (module docstring)."""

    NAME: ClassVar[str] = "sql"
    CONNECTION_TYPES: ClassVar[frozenset[str]] = frozenset({"postgres"})

    def run(self, ctx: PhaseContext) -> PhaseResult:
        # everything validated and confined first: a refused phase leaves no query.sql
        params = parse_params(ctx.params, ctx.inputs, ctx.code_dir, ctx.lake_root)
        if ctx.cancel.is_set():
            raise PhaseCancelled("sql phase cancelled before it started")
        output_dir = Path(ctx.output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        temp_dir = Path(tempfile.mkdtemp(prefix="cr-sql-"))  # 0700, the attempt's own
        try:
            return self._run(ctx, params, output_dir, temp_dir)
        finally:
            shutil.rmtree(temp_dir, ignore_errors=True)

    def _run(self, ctx: PhaseContext, params: SqlParams, output_dir: Path, temp_dir: Path
             ) -> PhaseResult:
        query_path = output_dir / "query.sql"
        query_path.write_text(params.query, encoding="utf-8")
        query_digest = blob_digest(query_path)

        conn = _connect(temp_dir)
        try:
            for spec in params.inputs:
                conn.register(spec.name, source(spec, ctx))
            ctx.emit("LOG", f"running query over {len(params.inputs)} input(s)", "info",
                     {"inputs": [spec.name for spec in params.inputs],
                      "query_digest": query_digest})
            result = _run_interruptible(conn, params.query, ctx)
        finally:
            conn.close()
        ctx.progress(0.5)
        if ctx.cancel.is_set():
            raise PhaseCancelled("sql phase cancelled before its output was written")

        return record_result(ctx, params.output, query_path, query_digest, result,
                             params.preview_rows, temp_dir)


def record_result(ctx: PhaseContext, out: OutputSpec, query_path: Path, query_digest: str,
                  result: Any, preview_rows: int, temp_dir: Path,
                  extra_manifest: Mapping[str, Any] | None = None) -> PhaseResult:
    """A query's result (an Arrow table) written to its output and recorded as the sql kind
    records it: the table (catalog rules for a named output), `result_manifest.json`,
    `preview.json` beside `query.sql` (at `query_path`), the output manifest. Used by the sql
    and trino kinds, so that the same query over the same data gives the same files."""
    output_dir = query_path.parent
    written, entry = _write_output(ctx, out, result, query_digest)
    ctx.progress(0.8)

    manifest = {
        "format": RESULT_MANIFEST_FORMAT,
        "query_digest": query_digest,
        "result": {"rows": result.num_rows, "schema": _schema_json(result.schema)},
        "table": {
            "name": out.name,
            "mode": out.mode,
            "keys": list(out.keys) if out.keys is not None else None,
            "digest": entry["digest"],
            "rows": entry["rows"],
            "schema": _schema_json(written.schema),
        },
    }
    manifest_path = output_dir / "result_manifest.json"
    _dump(manifest_path, manifest)
    preview_path = output_dir / "preview.json"
    _dump(preview_path, _preview(result, preview_rows, temp_dir))
    ctx.progress(1.0)
    ctx.emit("LOG", f"wrote {result.num_rows} row(s) to {out.name} "
             f"(version {written.version})", "info",
             {"table": out.name, "version": written.version, "digest": entry["digest"],
              "change": written.change.kind})
    return PhaseResult(
        output_manifest={
            "table": {
                "uri": out.uri,
                "version": written.version,
                "digest": entry["digest"],
                "rows": entry["rows"],
                "name": out.name,
            },
            "tables": [entry] if out.dataset else [],
            "query_digest": query_digest,
            "result_rows": result.num_rows,
            **(extra_manifest or {}),
        },
        outputs=[
            OutputFile(query_path, "query.sql", media_type="application/sql"),
            OutputFile(manifest_path, "result_manifest.json",
                       media_type="application/json"),
            OutputFile(preview_path, "preview.json", media_type="application/json"),
        ],
    )
