"""The `trino` kind: the sql kind's interface against a Trino server (docs/kinds.md, "trino").

One SQL statement (`query`, or `query_file` from the run's code, read by the sql kind's rules)
is run by the Trino server of a `trino` connection through its client REST protocol
(`client.py`: POST /v1/statement, nextUri paging, DELETE on cancel or timeout); the query's id,
state and stats are events and progress; its rows come back as JSON pages, are typed into
Arrow from the result's column types and written to the Delta output exactly as the sql kind
writes DuckDB's result (`executor.kinds.sql.record_result`: the catalog's rules, `query.sql`,
`result_manifest.json`, `preview.json`, the same output manifest). `TrinoParams` are its params
(`params.py`, pydantic only). Needs no extra: httpx is a core dependency.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import httpx

from executor import datasets
from executor.digests import blob_digest
from executor.kinds.base import (
    DatasetBlocked,
    PhaseCancelled,
    PhaseContext,
    PhaseResult,
    TerminalPhaseError,
    validate_params,
)
from executor.kinds.sql import parse_output, read_query, record_result
from executor.kinds.trino.client import (
    QueryResult,
    TrinoServer,
    arrow_type,
    run_statement,
    to_arrow,
)
from executor.kinds.trino.params import TrinoParams

__all__ = ["TrinoKind", "TrinoParams", "TrinoServer", "arrow_type", "parse_params"]

REQUEST_TIMEOUT_S = 60.0
"""One HTTP request's timeout (Trino answers a GET within about a second, long-polling)."""


def parse_params(params: Mapping[str, Any]) -> TrinoParams:
    """The phase's params as `TrinoParams`; a `TerminalPhaseError` naming each bad field."""
    return validate_params(TrinoParams, params, "trino")


class TrinoKind:
    """A statement run by a Trino server, written as a Delta table (module docstring)."""

    NAME: ClassVar[str] = "trino"
    CONNECTION_TYPES: ClassVar[frozenset[str]] = frozenset({"trino"})

    def __init__(self, *, transport: httpx.BaseTransport | None = None) -> None:
        self._transport = transport

    def run(self, ctx: PhaseContext) -> PhaseResult:
        started = time.monotonic()
        params = parse_params(ctx.params)
        # everything checked first, as the sql kind: a refused phase sends no query
        query = read_query(ctx.params, ctx.code_dir)
        out = parse_output(params.output.model_dump(exclude_none=True), ctx.lake_root)
        if out.dataset and ctx.datasets.get(out.name) == "blocked":
            raise DatasetBlocked(
                f"dataset {out.name} is blocked by a breaking schema change awaiting review; "
                f"nothing was written to {out.uri}: {datasets.UNBLOCK_HINT}",
                table=out.name, uri=out.uri)
        connection = ctx.connections.get(params.connection)
        if connection is None:
            raise TerminalPhaseError(f"trino connection {params.connection!r} is not one of "
                                     f"the phase's connections ({sorted(ctx.connections)})")
        server = TrinoServer.from_connection(connection)
        if ctx.cancel.is_set():
            raise PhaseCancelled("trino phase cancelled before it started")
        output_dir = Path(ctx.output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        query_path = output_dir / "query.sql"
        query_path.write_text(query, encoding="utf-8")
        query_digest = blob_digest(query_path)
        deadline = None if ctx.timeout_s is None else started + ctx.timeout_s
        ctx.emit("LOG", f"running query on trino {server.base_url} as {server.user}", "info",
                 {"server": server.base_url, "catalog": server.catalog,
                  "schema": server.schema, "query_digest": query_digest})

        def on_update(what: str, payload: dict[str, Any]) -> None:
            if what == "started":
                ctx.emit("TRINO_QUERY", f"trino query {payload['query_id']} submitted", "info",
                         payload)
            elif what == "stats":
                total = payload.get("totalSplits") or 0
                done = payload.get("completedSplits") or 0
                ctx.emit("TRINO_QUERY_STATS", f"trino query {payload.get('query_id')}: "
                         f"{payload.get('state')} ({done}/{total} splits)", "info", payload)
                fraction = 0.5 * done / total if total else 0.0
                ctx.progress({"fraction": round(fraction, 4), "state": payload.get("state"),
                              "splits_done": done, "splits": total})
            elif what == "cancelled":
                ctx.emit("TRINO_QUERY", f"trino query {payload.get('query_id')} cancelled "
                         "(DELETE sent)", "warning", payload)

        with httpx.Client(transport=self._transport, verify=server.verify,
                          timeout=REQUEST_TIMEOUT_S, follow_redirects=False) as client:
            result: QueryResult = run_statement(
                client, server, query, session=params.session, cancel=ctx.cancel,
                deadline=deadline, on_update=on_update)
        stats = result.stats
        ctx.emit("TRINO_QUERY", f"trino query {result.query_id} finished: {len(result.rows)} "
                 f"row(s) in {stats.get('elapsedTimeMillis')} ms", "info",
                 {"query_id": result.query_id, "rows": len(result.rows),
                  "elapsed_ms": stats.get("elapsedTimeMillis"),
                  "splits": stats.get("totalSplits"), "requests": result.requests,
                  "processed_rows": stats.get("processedRows"), "state": stats.get("state")})
        ctx.progress(0.5)
        if ctx.cancel.is_set():
            raise PhaseCancelled("trino phase cancelled before its output was written")
        if not result.columns:
            raise TerminalPhaseError(f"trino query {result.query_id} returned no result set "
                                     f"({result.update_type or 'no columns'}): the kind "
                                     "writes a query's rows, use a SELECT")
        table = to_arrow(result.columns, result.rows)
        temp_dir = Path(tempfile.mkdtemp(prefix="cr-trino-"))
        try:
            return record_result(
                ctx, out, query_path, query_digest, table, params.preview_rows, temp_dir,
                extra_manifest={"trino": {"query_id": result.query_id,
                                          "server": server.base_url,
                                          "elapsed_ms": stats.get("elapsedTimeMillis"),
                                          "splits": stats.get("totalSplits")}})
        finally:
            shutil.rmtree(temp_dir, ignore_errors=True)
