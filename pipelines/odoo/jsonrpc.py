"""Odoo's external API over JSON-RPC (`POST <url>/jsonrpc`), for hosted Odoo (Odoo Online,
Odoo.sh) where the database is out of reach.

The documented shapes (odoo/http.py `JsonRPCDispatcher`, odoo/service/common.py, model.py):

    request  {"jsonrpc": "2.0", "method": "call", "id": N,
              "params": {"service": "object", "method": "execute_kw",
                         "args": [db, uid, api_key, model, method, args, kwargs]}}
    result   {"jsonrpc": "2.0", "id": N, "result": ...}
    error    {"jsonrpc": "2.0", "id": N, "error": {"code": 200, "message": "Odoo Server Error",
              "data": {"name": "odoo.exceptions.AccessError", "message": "...",
                       "arguments": [...], "debug": "Traceback ..."}}}

`common.authenticate(db, login, api_key, {})` answers the user id (False when refused); an API
key (Preferences > Account Security > New API Key) stands in for the password. Access errors
(`AccessError`, `AccessDenied`) and every other server error are terminal: a retry would get
the same answer; a transport failure, HTTP 5xx or a timeout is transient.

The connection (a workspace connection of type `http`):

    config:  {url: https://acme.odoo.com, database: acme, login: bot@acme.com}
    secrets: {api_key: env:ODOO_API_KEY}          (resolved by the worker, never logged)
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from executor.sdk import Connection, TerminalPhaseError, TransientPhaseError

__all__ = ["DEFAULT_CONTEXT", "OdooRpc", "OdooRpcError", "rpc_from_connection"]

DEFAULT_CONTEXT: dict[str, Any] = {"active_test": False, "lang": "en_US", "tz": "UTC"}
"""Every call's context: archived records too (`active = False`, as the database mode reads
them), translatable fields in en_US, dates in UTC."""

_ACCESS = ("odoo.exceptions.AccessError", "odoo.exceptions.AccessDenied")


class OdooRpcError(TerminalPhaseError):
    """An error Odoo answered (its `data.name`, e.g. odoo.exceptions.AccessError)."""

    def __init__(self, message: str, *, name: str | None) -> None:
        super().__init__(message, error_type=(name or "OdooError").rsplit(".", 1)[-1])
        self.odoo_name = name


@dataclass
class OdooRpc:
    """A JSON-RPC client of one Odoo database, authenticated with an API key."""

    url: str
    database: str
    login: str
    api_key: str = field(repr=False)
    timeout: float = 60.0
    context: Mapping[str, Any] = field(default_factory=lambda: dict(DEFAULT_CONTEXT))
    uid: int | None = None
    calls: int = 0
    _http: httpx.Client | None = field(default=None, repr=False)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1), repr=False)

    def __enter__(self) -> OdooRpc:
        self._http = httpx.Client(timeout=self.timeout)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None

    # -- the protocol ---------------------------------------------------------------------

    def call(self, service: str, method: str, *args: Any) -> Any:
        """One JSON-RPC `call` of `service.method(*args)`; its result, or the error raised."""
        if self._http is None:
            raise RuntimeError("OdooRpc is used as a context manager")
        request_id = next(self._ids)
        body = {"jsonrpc": "2.0", "method": "call", "id": request_id,
                "params": {"service": service, "method": method, "args": list(args)}}
        endpoint = f"{self.url.rstrip('/')}/jsonrpc"
        self.calls += 1
        try:
            answer = self._http.post(endpoint, json=body)
        except httpx.HTTPError as exc:
            raise TransientPhaseError(f"Odoo JSON-RPC {endpoint}: {type(exc).__name__}: "
                                      f"{exc}") from None
        if answer.status_code >= 500 or answer.status_code == 429:
            raise TransientPhaseError(f"Odoo JSON-RPC {endpoint}: HTTP {answer.status_code}")
        if answer.status_code != 200:
            raise TerminalPhaseError(f"Odoo JSON-RPC {endpoint}: HTTP {answer.status_code} "
                                     f"(is {self.url} an Odoo server?)",
                                     error_type="HTTPStatusError")
        try:
            payload = answer.json()
        except ValueError:
            raise TerminalPhaseError(f"Odoo JSON-RPC {endpoint}: the answer is not JSON",
                                     error_type="ValueError") from None
        if not isinstance(payload, dict) or payload.get("id") != request_id:
            raise TerminalPhaseError(f"Odoo JSON-RPC {endpoint}: not a JSON-RPC answer to "
                                     f"request {request_id}", error_type="ValueError")
        error = payload.get("error")
        if error is not None:
            data = error.get("data") if isinstance(error, dict) else None
            data = data if isinstance(data, dict) else {}
            name = data.get("name")
            message = data.get("message") or (error.get("message") if isinstance(
                error, dict) else str(error))
            what = "access refused" if name in _ACCESS else "error"
            raise OdooRpcError(f"Odoo {service}.{method} {what}: {name or 'error'}: "
                               f"{message}", name=name if isinstance(name, str) else None)
        return payload.get("result")

    def authenticate(self) -> int:
        if self.uid is None:
            uid = self.call("common", "authenticate", self.database, self.login, self.api_key,
                            {})
            if not isinstance(uid, int) or isinstance(uid, bool) or uid <= 0:
                raise OdooRpcError(f"Odoo refused the login {self.login!r} with this API key "
                                   f"on database {self.database!r}",
                                   name="odoo.exceptions.AccessDenied")
            self.uid = uid
        return self.uid

    def execute_kw(self, model: str, method: str, args: Sequence[Any] = (),
                   kwargs: Mapping[str, Any] | None = None) -> Any:
        uid = self.authenticate()
        merged = dict(kwargs or {})
        merged["context"] = {**self.context, **(merged.get("context") or {})}
        return self.call("object", "execute_kw", self.database, uid, self.api_key, model,
                         method, list(args), merged)

    # -- what the extraction uses -----------------------------------------------------------

    def server_serie(self) -> str | None:
        """The server's series ("17.0", "18.0", "saas~17.4"): `common.version()`."""
        found = self.call("common", "version")
        serie = found.get("server_serie") if isinstance(found, dict) else None
        return str(serie) if serie else None

    def fields_get(self, model: str) -> dict[str, dict[str, Any]]:
        found = self.execute_kw(model, "fields_get", [], {
            "attributes": ["type", "store", "translate", "relation", "relation_table",
                           "column1", "column2"]})
        if not isinstance(found, dict):
            raise TerminalPhaseError(f"Odoo {model}.fields_get answered {type(found).__name__}",
                                     error_type="ValueError")
        return found

    def search_read(self, model: str, domain: list[Any], fields: list[str], *, limit: int,
                    order: str) -> list[dict[str, Any]]:
        rows = self.execute_kw(model, "search_read", [domain],
                               {"fields": fields, "limit": limit, "order": order})
        if not isinstance(rows, list):
            raise TerminalPhaseError(f"Odoo {model}.search_read answered "
                                     f"{type(rows).__name__}", error_type="ValueError")
        return rows

    def search_count(self, model: str, domain: list[Any]) -> int:
        return int(self.execute_kw(model, "search_count", [domain]))


def rpc_from_connection(connection: Connection) -> OdooRpc:
    """An `OdooRpc` for a workspace connection of type `http` (module docstring)."""
    config = connection.config
    missing = [k for k in ("url", "database", "login", "api_key") if not config.get(k)]
    if missing:
        raise TerminalPhaseError(
            f"connection {connection.name!r} (Odoo's JSON-RPC API) needs {', '.join(missing)}"
            " (config url, database, login; secret api_key)", error_type="ValueError")
    return OdooRpc(str(config["url"]), str(config["database"]), str(config["login"]),
                   str(config["api_key"]))
