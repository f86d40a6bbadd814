"""`POST /ask/v1/ask`, `/ask/v1/metrics` and `/ask/v1/query`: the semantic layer over the
warehouse's gold schema, served by the gateway (docs/ask.md).

Authenticated exactly as the RPCs are (the caller's JWT); the caller must be a member of the
body's `workspace_id` (any role), proven by calling `ops.list_workspaces` with the caller's
claims, so tenancy stays in the database. The warehouse is read through the read-only DSN of
the `warehouse_read_url` setting (a secret: never logged, never in an error); unset, these
endpoints answer 503 `warehouse_not_configured`. Errors are `{code, message, details, hint}`
with the machine code in `hint`, as every gateway error.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
from typing import TYPE_CHECKING, Any

import anyio
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from control_room.contract.errors import ContractError
from control_room.gateway.errors import GatewayError, contract_response
from control_room.semantic.guard import GuardError
from control_room.semantic.model import Layer, default_layer
from control_room.semantic.query import MetricQuery, QueryError
from control_room.semantic.service import Asker, metric_definition
from control_room.semantic.warehouse import Warehouse, WarehouseError

if TYPE_CHECKING:
    from control_room.gateway.app import Gateway

__all__ = ["AskEndpoints"]

log = logging.getLogger("control_room.gateway.ask")

MAX_QUESTION = 500


def _bad(message: str, code: str = "invalid_argument", status: int = 400) -> GatewayError:
    return GatewayError(status, "PGRST100" if status == 400 else f"PT{status}", message,
                        hint=code)


class AskEndpoints:
    def __init__(self, gateway: Gateway, layer: Layer | None = None) -> None:
        self.gateway = gateway
        self.layer = layer or default_layer()
        self._asker: Asker | None = None
        self._lock = threading.Lock()

    def _get_asker(self) -> Asker:
        with self._lock:
            if self._asker is None:
                settings = self.gateway.settings
                url = settings.warehouse_read_url
                if url is None:
                    raise GatewayError(503, "PT503", "the ask endpoints need a warehouse: "
                                       "set CONTROL_ROOM_WAREHOUSE_READ_URL (a read-only "
                                       "role's DSN)", hint="warehouse_not_configured")
                llm = None
                if settings.ask_llm_url:
                    from control_room.semantic.llm import LlmProvider

                    key = settings.ask_llm_api_key
                    llm = LlmProvider(settings.ask_llm_url, settings.ask_llm_model,
                                      key.get_secret_value() if key else None)
                self._asker = Asker(self.layer, Warehouse(
                    url.get_secret_value(), layer=self.layer,
                    statement_timeout_ms=settings.ask_statement_timeout_ms), llm)
            return self._asker

    def close(self) -> None:
        if self._asker is not None:
            self._asker.warehouse.close()

    async def _body(self, request: Request) -> dict[str, Any]:
        raw = await request.body()
        if len(raw) > 64 * 1024:
            raise _bad("the body is larger than 64 KiB", "payload_too_large", 413)
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            raise _bad("the body must be a JSON object") from None
        if not isinstance(body, dict):
            raise _bad("the body must be a JSON object")
        return body

    def _member(self, request: Request, body: dict[str, Any]) -> None:
        """The caller is a member of body.workspace_id (ops.list_workspaces as the caller)."""
        gateway = self.gateway
        caller = gateway.tokens.authenticate(request.headers.get("authorization"),
                                             request.headers.get("apikey"))
        workspace = body.get("workspace_id")
        if not isinstance(workspace, str) or not workspace:
            raise _bad("workspace_id (a workspace's id) is required")
        if caller.role == "anon":
            raise GatewayError(401, "PGRST302", "the ask endpoints need a token",
                               hint="unauthorized", bearer_error="invalid_request")
        listed = gateway._call("list_workspaces", {}, caller, None)
        ids = {str(w.get("id")) for w in listed or () if isinstance(w, dict)}
        if workspace not in ids:
            raise GatewayError(403, "42501", "not a member of this workspace",
                               hint="forbidden")

    async def _serve(self, request: Request, work: Any) -> Response:
        try:
            body = await self._body(request)
            result = await anyio.to_thread.run_sync(work, request, body)
            return JSONResponse(result)
        except GatewayError as exc:
            return exc.response()
        except ContractError as exc:
            return contract_response(exc)
        except QueryError as exc:
            return _bad(str(exc), exc.code).response()
        except GuardError as exc:
            return _bad(str(exc), exc.code).response()
        except WarehouseError as exc:
            status = 504 if exc.code == "query_timeout" else 502 if exc.code == "query_failed" \
                else 503
            return GatewayError(status, f"PT{status}", str(exc), hint=exc.code).response()
        except Exception:
            log.exception("unexpected error serving %s", request.url.path)
            return GatewayError(500, "XX000", "internal error; see the gateway's log",
                                hint="internal").response()

    # -- the endpoints ------------------------------------------------------------------

    async def ask(self, request: Request) -> Response:
        return await self._serve(request, self._ask)

    def _ask(self, request: Request, body: dict[str, Any]) -> dict[str, Any]:
        question = body.get("question")
        if not isinstance(question, str) or not question.strip():
            raise _bad("question (a non-empty string) is required")
        if len(question) > MAX_QUESTION:
            raise _bad(f"question is longer than {MAX_QUESTION} characters")
        today = body.get("today")
        day: dt.date | None = None
        if today is not None:
            try:
                day = dt.date.fromisoformat(str(today))
            except ValueError:
                raise _bad("today must be an ISO date") from None
        self._member(request, body)
        return self._get_asker().ask(question, today=day)

    async def metrics(self, request: Request) -> Response:
        return await self._serve(request, self._metrics)

    def _metrics(self, request: Request, body: dict[str, Any]) -> dict[str, Any]:
        self._member(request, body)
        layer = self.layer
        return {"metrics": [metric_definition(layer, m) for m in layer.metrics.values()],
                "dimensions": [{"name": d.name, "description": d.description,
                                "synonyms": list(d.synonyms), "tables": sorted(d.columns)}
                               for d in layer.dimensions.values()]}

    async def query(self, request: Request) -> Response:
        return await self._serve(request, self._query)

    def _query(self, request: Request, body: dict[str, Any]) -> dict[str, Any]:
        try:
            query = MetricQuery.model_validate(body.get("query"))
        except ValidationError as exc:
            first = exc.errors()[0]
            raise _bad(f"query.{'.'.join(map(str, first['loc']))}: {first['msg']}") from None
        self._member(request, body)
        return self._get_asker().query(query)
