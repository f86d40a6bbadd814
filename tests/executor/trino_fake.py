"""A fake Trino server for the trino kind's tests: Trino's client REST protocol, as documented
(POST /v1/statement, `nextUri` paging through `/v1/statement/queued/...` then
`/v1/statement/executing/...`, QUEUED / RUNNING / FINISHED / FAILED, `error` objects with
Trino's error types, DELETE to cancel), served with respx, each statement answered by DuckDB
(so the SQL is DuckDB's dialect: the fake checks the protocol's shape, not Trino's SQL).

No Trino server can run here: this is what the kind is tested against (docs/kinds.md).
"""

from __future__ import annotations

import datetime as dt
import decimal
import itertools
import math
import re
import threading
from dataclasses import dataclass, field
from typing import Any

import duckdb
import httpx
import respx

BASE_URL = "https://trino.test:8443"
_COUNTER = itertools.count(1)
_TRINO_TYPES = {"BIGINT": "bigint", "INTEGER": "integer", "SMALLINT": "smallint",
                "TINYINT": "tinyint", "BOOLEAN": "boolean", "DOUBLE": "double",
                "FLOAT": "real", "VARCHAR": "varchar", "DATE": "date", "BLOB": "varbinary",
                "TIMESTAMP": "timestamp(6)", "TIMESTAMP WITH TIME ZONE":
                "timestamp(6) with time zone", "TIME": "time(6)", "UUID": "uuid",
                "JSON": "json"}


def trino_type(duck_type: str) -> str:
    found = re.match(r"^DECIMAL\((\d+),(\d+)\)$", duck_type)
    if found:
        return f"decimal({found.group(1)},{found.group(2)})"
    return _TRINO_TYPES.get(duck_type, "varchar")


def trino_value(value: Any, type_name: str) -> Any:
    """A value as Trino's JSON encodes it."""
    if value is None:
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, dt.datetime):
        text = value.strftime("%Y-%m-%d %H:%M:%S.%f")
        return f"{text} UTC" if "with time zone" in type_name else text
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, bytes):
        import base64
        return base64.b64encode(value).decode()
    if type_name == "varchar" and not isinstance(value, str):
        return str(value)
    return value


@dataclass
class FakeQuery:
    id: str
    sql: str
    headers: dict[str, str]
    conn: duckdb.DuckDBPyConnection
    done: threading.Event = field(default_factory=threading.Event)
    columns: list[dict[str, Any]] = field(default_factory=list)
    rows: list[list[Any]] = field(default_factory=list)
    error: BaseException | None = None
    cancelled: bool = False
    update_type: str | None = None
    sent: int = 0
    polls: int = 0


class FakeTrino:
    """Trino's protocol over DuckDB. `with fake.router:` routes httpx requests to it."""

    def __init__(self, base_url: str = BASE_URL, *, page_rows: int = 2,
                 long_poll_s: float = 0.2) -> None:
        self.base_url = base_url
        self.page_rows = page_rows
        self.long_poll_s = long_poll_s
        self.queries: dict[str, FakeQuery] = {}
        self.requests: list[httpx.Request] = []
        self.busy_answers = 0
        """Answer this many requests 503 first (Trino's 'retry later')."""
        self.router = respx.mock(base_url=base_url, assert_all_called=False,
                                 assert_all_mocked=True)
        self.router.post("/v1/statement").mock(side_effect=self._post)
        path = r"^/v1/statement/(?P<stage>queued|executing)/(?P<qid>[^/]+)/(?P<slug>[^/]+)" \
               r"/(?P<token>\d+)$"
        self.router.get(path__regex=path).mock(side_effect=self._get)
        self.router.delete(path__regex=path).mock(side_effect=self._delete)

    # -- the protocol ---------------------------------------------------------------------

    def _busy(self, request: httpx.Request) -> httpx.Response | None:
        self.requests.append(request)
        if self.busy_answers > 0:
            self.busy_answers -= 1
            return httpx.Response(503, text="Service Unavailable")
        return None

    def _post(self, request: httpx.Request) -> httpx.Response:
        busy = self._busy(request)
        if busy is not None:
            return busy
        if not request.headers.get("X-Trino-User"):
            return httpx.Response(400, text="Error 400 Bad Request: User must be set")
        sql = request.content.decode("utf-8")
        query_id = f"20261203_000000_{next(_COUNTER):05d}_fake0"
        query = FakeQuery(id=query_id, sql=sql, headers=dict(request.headers),
                          conn=duckdb.connect(":memory:"))
        self.queries[query_id] = query
        threading.Thread(target=self._execute, args=(query,), daemon=True).start()
        return httpx.Response(200, json=self._document(query, "QUEUED", "queued", 1))

    def _execute(self, query: FakeQuery) -> None:
        try:
            words = query.sql.split()
            if words and words[0].lower() in ("drop", "alter", "set", "use", "comment"):
                query.conn.execute(query.sql)   # no result set: Trino sends updateType only
                query.update_type = " ".join(words[:2]).upper()
                return
            relation = query.conn.sql(query.sql)
            types = [str(t) for t in relation.types]
            query.columns = [{"name": name, "type": trino_type(t),
                              "typeSignature": {"rawType": trino_type(t).split("(")[0]}}
                             for name, t in zip(relation.columns, types, strict=True)]
            query.rows = [[trino_value(v, c["type"]) for v, c in
                           zip(row, query.columns, strict=True)]
                          for row in relation.fetchall()]
        except BaseException as exc:
            query.error = exc
        finally:
            query.done.set()

    def _get(self, request: httpx.Request, stage: str, qid: str, slug: str, token: str
             ) -> httpx.Response:
        busy = self._busy(request)
        if busy is not None:
            return busy
        query = self.queries.get(qid)
        if query is None or query.cancelled:
            return httpx.Response(410, text="Query not found")
        query.polls += 1
        number = int(token) + 1
        if stage == "queued":
            return httpx.Response(200, json=self._document(query, "RUNNING", "executing",
                                                           number))
        query.done.wait(self.long_poll_s)
        if not query.done.is_set():
            return httpx.Response(200, json=self._document(query, "RUNNING", "executing",
                                                           number))
        if query.error is not None:
            return httpx.Response(200, json=self._failed(query))
        page = query.rows[query.sent:query.sent + self.page_rows]
        query.sent += len(page)
        finished = query.sent >= len(query.rows)
        document = self._document(query, "FINISHED" if finished else "RUNNING",
                                  None if finished else "executing", number)
        if query.columns:
            document["columns"] = query.columns
        if query.update_type is not None:
            document["updateType"] = query.update_type
        if page:
            document["data"] = page
        return httpx.Response(200, json=document)

    def _delete(self, request: httpx.Request, stage: str, qid: str, slug: str, token: str
                ) -> httpx.Response:
        self.requests.append(request)
        query = self.queries.get(qid)
        if query is not None:
            query.cancelled = True
            query.conn.interrupt()
        return httpx.Response(204)

    # -- documents ------------------------------------------------------------------------

    def _document(self, query: FakeQuery, state: str, stage: str | None, token: int
                  ) -> dict[str, Any]:
        document: dict[str, Any] = {
            "id": query.id,
            "infoUri": f"{self.base_url}/ui/query.html?{query.id}",
            "stats": self._stats(query, state),
        }
        if stage is not None:
            document["nextUri"] = (f"{self.base_url}/v1/statement/{stage}/{query.id}/"
                                   f"y{token}/{token}")
        return document

    def _stats(self, query: FakeQuery, state: str) -> dict[str, Any]:
        done = query.done.is_set() and query.error is None
        return {"state": state, "queued": state == "QUEUED", "scheduled": state != "QUEUED",
                "nodes": 1, "totalSplits": 4, "queuedSplits": 0 if done else 2,
                "runningSplits": 0 if done else 2, "completedSplits": 4 if done else 0,
                "cpuTimeMillis": 3, "wallTimeMillis": 5, "queuedTimeMillis": 1,
                "elapsedTimeMillis": 7, "processedRows": len(query.rows),
                "processedBytes": 64 * len(query.rows), "physicalInputBytes": 0,
                "peakMemoryBytes": 1024, "spilledBytes": 0}

    def _failed(self, query: FakeQuery) -> dict[str, Any]:
        error = query.error
        if isinstance(error, duckdb.IOException | duckdb.HTTPException):
            kind, name, code = "EXTERNAL", "GENERIC_EXTERNAL", 133001
        elif isinstance(error, duckdb.OutOfMemoryException):
            kind, name, code = "INSUFFICIENT_RESOURCES", "EXCEEDED_GLOBAL_MEMORY_LIMIT", 131073
        elif isinstance(error, duckdb.BinderException | duckdb.CatalogException):
            kind, name, code = "USER_ERROR", "COLUMN_NOT_FOUND", 47
        elif isinstance(error, duckdb.ParserException):
            kind, name, code = "USER_ERROR", "SYNTAX_ERROR", 1
        else:
            kind, name, code = "INTERNAL_ERROR", "GENERIC_INTERNAL_ERROR", 65536
        document = self._document(query, "FAILED", None, 0)
        document["error"] = {"message": str(error), "errorCode": code, "errorName": name,
                             "errorType": kind,
                             "failureInfo": {"type": type(error).__name__,
                                             "message": str(error), "suppressed": [],
                                             "stack": []}}
        return document
