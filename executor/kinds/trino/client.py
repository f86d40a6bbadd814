"""Trino's client REST protocol, spoken with httpx (no `trino` package needed).

As documented (trino.io, "Client protocol"): the statement is POSTed as the body of
`/v1/statement` with `X-Trino-User` (and `X-Trino-Catalog`, `X-Trino-Schema`,
`X-Trino-Source`, `X-Trino-Session`...); every answer is a `QueryResults` document (`id`,
`infoUri`, `nextUri`, `columns`, `data`, `stats`, `error`, `updateType`); the client GETs
`nextUri` until an answer has none, collecting `data` pages (`columns` come once the result's
shape is known); `stats.state` goes QUEUED, (PLANNING, STARTING,) RUNNING, (FINISHING,)
FINISHED or FAILED, a FAILED answer carrying `error` (`message`, `errorCode`, `errorName`,
`errorType`: USER_ERROR, INTERNAL_ERROR, INSUFFICIENT_RESOURCES, EXTERNAL). 502 / 503 / 504
are retried after a short wait; a DELETE of `nextUri` cancels the query.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import decimal
import json
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx
import pyarrow as pa

from executor.kinds.base import (
    Connection,
    PhaseCancelled,
    PhaseTimeout,
    TerminalPhaseError,
    TransientPhaseError,
)

__all__ = ["TRANSIENT_ERROR_TYPES", "QueryResult", "TrinoServer", "arrow_type", "run_statement",
           "to_arrow"]

TRANSIENT_ERROR_TYPES = frozenset({"INTERNAL_ERROR", "INSUFFICIENT_RESOURCES", "EXTERNAL"})
"""Trino's error types a retry may fix; USER_ERROR (syntax, missing column or table,
permission) is terminal."""
_RETRY_STATUS = frozenset({502, 503, 504})
SOURCE = "control-room"
MAX_RETRY_WAIT_S = 1.0
_STATS_KEYS = ("state", "queued", "scheduled", "nodes", "totalSplits", "queuedSplits",
               "runningSplits", "completedSplits", "processedRows", "processedBytes",
               "elapsedTimeMillis", "cpuTimeMillis", "wallTimeMillis", "queuedTimeMillis",
               "peakMemoryBytes")


@dataclass(frozen=True)
class TrinoServer:
    """Where and as whom a `trino` connection talks: from its config (`host`, `port`,
    `http_scheme`, `catalog`, `schema`, `user`, `verify`) and its secrets (`password`:
    HTTP basic, only over https; `jwt`: a bearer token)."""

    base_url: str
    user: str
    catalog: str | None = None
    schema: str | None = None
    verify: bool = True
    password: str | None = field(default=None, repr=False)
    jwt: str | None = field(default=None, repr=False)

    @classmethod
    def from_connection(cls, connection: Connection) -> TrinoServer:
        if connection.type != "trino":
            raise TerminalPhaseError(f"trino connection {connection.name!r} is a "
                                     f"{connection.type} connection, not trino")
        config = dict(connection.config)
        known = {"host", "port", "http_scheme", "catalog", "schema", "user", "verify",
                 "password", "jwt"}
        unknown = sorted(set(config) - known)
        if unknown:
            raise TerminalPhaseError(f"trino connection {connection.name!r}: unknown fields "
                                     f"{unknown} (known: {', '.join(sorted(known))})")
        host = config.get("host")
        user = config.get("user")
        if not isinstance(host, str) or not host or not isinstance(user, str) or not user:
            raise TerminalPhaseError(f"trino connection {connection.name!r} needs 'host' and "
                                     "'user'")
        scheme = str(config.get("http_scheme", "https"))
        if scheme not in ("http", "https"):
            raise TerminalPhaseError(f"trino connection {connection.name!r}: http_scheme "
                                     f"{scheme!r} is not http or https")
        port = int(config.get("port", 443 if scheme == "https" else 8080))
        password = config.get("password")
        jwt = config.get("jwt")
        if password is not None and scheme != "https":
            raise TerminalPhaseError(f"trino connection {connection.name!r}: a password is "
                                     "sent only over https (Trino refuses it otherwise)")
        verify = config.get("verify", True)
        return cls(base_url=f"{scheme}://{host}:{port}", user=user,
                   catalog=config.get("catalog"), schema=config.get("schema"),
                   verify=str(verify).lower() not in ("false", "0", "no"),
                   password=str(password) if password is not None else None,
                   jwt=str(jwt) if jwt is not None else None)

    def headers(self, session: Mapping[str, Any]) -> dict[str, str]:
        headers = {"X-Trino-User": self.user, "X-Trino-Source": SOURCE,
                   "User-Agent": SOURCE, "Content-Type": "text/plain; charset=utf-8"}
        if self.catalog:
            headers["X-Trino-Catalog"] = self.catalog
        if self.schema:
            headers["X-Trino-Schema"] = self.schema
        if session:
            headers["X-Trino-Session"] = ",".join(
                f"{key}={quote(_session_value(value))}" for key, value in sorted(session.items()))
        if self.jwt is not None:
            headers["Authorization"] = f"Bearer {self.jwt}"
        return headers

    def auth(self) -> httpx.BasicAuth | None:
        return httpx.BasicAuth(self.user, self.password) if self.password is not None else None


def _session_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


@dataclass
class QueryResult:
    """A finished statement: its id, columns (`name`, `type`), rows and last stats."""

    query_id: str | None
    columns: list[dict[str, Any]]
    rows: list[list[Any]]
    stats: dict[str, Any]
    info_uri: str | None = None
    update_type: str | None = None
    requests: int = 0


def stats_of(document: Mapping[str, Any]) -> dict[str, Any]:
    """The stats an event shows (state, splits, rows, bytes, times)."""
    stats = document.get("stats") or {}
    return {key: stats[key] for key in _STATS_KEYS if key in stats}


def _error(document: Mapping[str, Any]) -> Exception:
    error = document.get("error") or {}
    kind = str(error.get("errorType") or "INTERNAL_ERROR")
    name = str(error.get("errorName") or "UNKNOWN")
    message = str(error.get("message") or "query failed")[:2000]
    text = (f"trino query {document.get('id')} failed: {name} ({kind}, code "
            f"{error.get('errorCode')}): {message}")
    cls = TransientPhaseError if kind in TRANSIENT_ERROR_TYPES else TerminalPhaseError
    return cls(text, error_type=name, user_data=True)


def run_statement(client: httpx.Client, server: TrinoServer, sql: str, *,
                  session: Mapping[str, Any], cancel: Any, deadline: float | None,
                  on_update: Callable[[str, dict[str, Any]], None]) -> QueryResult:
    """Run `sql` on `server` through `client` and answer its result. `on_update(what,
    payload)` is told of the query's start (`started`, with its id) and of every change of
    state or splits (`stats`). Cancel (an Event) and the deadline are checked between
    requests: the query is then DELETEd and PhaseCancelled / PhaseTimeout raised."""
    headers = server.headers(session)
    result = QueryResult(query_id=None, columns=[], rows=[], stats={})
    document = _request(client, "POST", f"{server.base_url}/v1/statement", headers,
                        server, deadline, content=sql.encode("utf-8"))
    result.requests += 1
    last: tuple[Any, ...] | None = None
    while True:
        if result.query_id is None and document.get("id"):
            result.query_id = str(document["id"])
            result.info_uri = document.get("infoUri")
            on_update("started", {"query_id": result.query_id, "info_uri": result.info_uri})
        if document.get("columns") and not result.columns:
            result.columns = [{"name": c.get("name"), "type": c.get("type")}
                              for c in document["columns"]]
        result.rows.extend(document.get("data") or [])
        result.stats = stats_of(document)
        seen = (result.stats.get("state"), result.stats.get("completedSplits"),
                result.stats.get("totalSplits"))
        if seen != last:
            on_update("stats", {"query_id": result.query_id, **result.stats})
            last = seen
        if document.get("error"):
            raise _error(document)
        if document.get("updateType"):
            result.update_type = str(document["updateType"])
        next_uri = document.get("nextUri")
        if not next_uri:
            return result
        stop: type[PhaseCancelled] | type[PhaseTimeout] | None = None
        if cancel.is_set():
            stop = PhaseCancelled
        elif deadline is not None and time.monotonic() >= deadline:
            stop = PhaseTimeout
        if stop is not None:
            _cancel(client, str(next_uri), headers, server)
            on_update("cancelled", {"query_id": result.query_id})
            if stop is PhaseCancelled:
                raise PhaseCancelled(f"trino query {result.query_id} cancelled (DELETE sent)")
            raise PhaseTimeout(f"trino query {result.query_id} ran past the phase's timeout; "
                               "cancelled (DELETE sent)")
        document = _request(client, "GET", str(next_uri), headers, server, deadline)
        result.requests += 1


def _cancel(client: httpx.Client, uri: str, headers: Mapping[str, str],
            server: TrinoServer) -> None:
    # unanswered: the query ends on the server's own abandoned-query timeout then
    with contextlib.suppress(httpx.HTTPError):
        client.delete(uri, headers=dict(headers), auth=server.auth() or httpx.USE_CLIENT_DEFAULT)


def _request(client: httpx.Client, method: str, url: str, headers: Mapping[str, str],
             server: TrinoServer, deadline: float | None, *,
             content: bytes | None = None) -> dict[str, Any]:
    wait = 0.05
    while True:
        try:
            response = client.request(method, url, headers=dict(headers), content=content,
                                       auth=server.auth() or httpx.USE_CLIENT_DEFAULT)
        except httpx.TimeoutException as exc:
            raise TransientPhaseError(f"trino: {method} {_path(url)} timed out: {exc}",
                                      error_type="TimeoutException") from None
        except httpx.TransportError as exc:
            raise TransientPhaseError(f"trino: cannot reach {server.base_url}: "
                                      f"{type(exc).__name__}: {exc}",
                                      error_type=type(exc).__name__) from None
        if response.status_code in _RETRY_STATUS:
            if deadline is not None and time.monotonic() + wait >= deadline:
                raise TransientPhaseError(f"trino: {method} {_path(url)} answered "
                                          f"{response.status_code} until the deadline",
                                          error_type="HTTPStatusError")
            time.sleep(wait)
            wait = min(wait * 2, MAX_RETRY_WAIT_S)
            continue
        if response.status_code in (401, 403):
            raise TerminalPhaseError(f"trino: {server.base_url} refused user {server.user!r} "
                                     f"(HTTP {response.status_code}): check the connection's "
                                     "user, password or jwt", error_type="HTTPStatusError")
        if response.status_code != 200:
            cls = TransientPhaseError if response.status_code >= 500 else TerminalPhaseError
            raise cls(f"trino: {method} {_path(url)} answered HTTP {response.status_code}: "
                      f"{response.text[:500]}", error_type="HTTPStatusError")
        try:
            document = response.json()
        except ValueError:
            raise TransientPhaseError(f"trino: {method} {_path(url)} answered no JSON",
                                      error_type="ValueError") from None
        if not isinstance(document, dict):
            raise TransientPhaseError(f"trino: {method} {_path(url)} answered no object",
                                      error_type="ValueError")
        return document


def _path(url: str) -> str:
    return httpx.URL(url).path


# ------------------------------------------------------------------------------- Arrow types

_DECIMAL = re.compile(r"^decimal\((\d+),\s*(\d+)\)$")
_SIMPLE: dict[str, Any] = {
    "boolean": pa.bool_(), "tinyint": pa.int8(), "smallint": pa.int16(),
    "integer": pa.int32(), "bigint": pa.int64(), "real": pa.float32(), "double": pa.float64(),
    "date": pa.date32(), "varbinary": pa.binary(), "json": pa.string(), "uuid": pa.string(),
}


def arrow_type(trino_type: str) -> Any:
    """The Arrow type of a Trino column type: numbers and booleans as they are, decimal(p, s)
    as decimal128, varchar / char / json / uuid as string, date, time(p) as time64[us],
    timestamp(p) as timestamp[us], with time zone in UTC, varbinary as binary; arrays, maps,
    rows and anything else as their JSON text."""
    text = trino_type.strip().lower()
    if text in _SIMPLE:
        return _SIMPLE[text]
    if text.startswith(("varchar", "char")):
        return pa.string()
    found = _DECIMAL.match(text)
    if found:
        return pa.decimal128(int(found.group(1)), int(found.group(2)))
    if text.startswith("timestamp"):
        return pa.timestamp("us", tz="UTC" if "with time zone" in text else None)
    if text.startswith("time"):
        return pa.time64("us")
    return pa.string()


def _timestamp(value: str, with_zone: bool) -> dt.datetime:
    text = value.strip()
    zone = None
    if with_zone:
        text, _, zone = text.rpartition(" ")
    date, _, clock = text.partition(" ")
    whole, _, fraction = clock.partition(".")
    parsed = dt.datetime.fromisoformat(f"{date}T{whole}").replace(
        microsecond=int((fraction + "000000")[:6]) if fraction else 0)
    if not with_zone:
        return parsed
    if zone in ("UTC", "Z", None, ""):
        return parsed.replace(tzinfo=dt.UTC)
    if zone[:1] in "+-":
        offset = dt.datetime.strptime(zone.replace(":", ""), "%z").tzinfo
        return parsed.replace(tzinfo=offset).astimezone(dt.UTC)
    from zoneinfo import ZoneInfo
    return parsed.replace(tzinfo=ZoneInfo(zone)).astimezone(dt.UTC)


def _value(value: Any, trino_type: str, arrow: Any) -> Any:
    if value is None:
        return None
    text = trino_type.strip().lower()
    if pa.types.is_floating(arrow) and isinstance(value, str):
        return float(value)     # "NaN", "Infinity", "-Infinity"
    if pa.types.is_decimal(arrow):
        return decimal.Decimal(str(value))
    if pa.types.is_date(arrow):
        return dt.date.fromisoformat(str(value))
    if pa.types.is_timestamp(arrow):
        return _timestamp(str(value), "with time zone" in text)
    if pa.types.is_time(arrow):
        clock = str(value).split("+")[0].split(" ")[0]
        whole, _, fraction = clock.partition(".")
        return dt.time.fromisoformat(whole).replace(
            microsecond=int((fraction + "000000")[:6]) if fraction else 0)
    if pa.types.is_binary(arrow):
        return base64.b64decode(value)
    if pa.types.is_string(arrow) and not isinstance(value, str):
        return json.dumps(value, sort_keys=True)
    return value


def to_arrow(columns: list[dict[str, Any]], rows: list[list[Any]]) -> Any:
    """The rows Trino sent, as an Arrow table of the columns' types (`arrow_type`)."""
    fields = [pa.field(str(c["name"]), arrow_type(str(c["type"]))) for c in columns]
    arrays = []
    for index, (column, f) in enumerate(zip(columns, fields, strict=True)):
        values = [_value(row[index], str(column["type"]), f.type) for row in rows]
        arrays.append(pa.array(values, type=f.type))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))
