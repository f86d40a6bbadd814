"""The gateway: `POST /rest/v1/rpc/<fn>` over any PostgreSQL, as PostgREST serves it on Supabase.

Per request, as PostgREST does: verify the JWT, open one transaction, set the role, the JWT
claims and the search path, call the function with named arguments, commit, and answer its
JSON, or an error in PostgREST's shape. Only the contract's functions (the operations of
`contract/openapi.yaml`) are served. The database calls run on a psycopg pool in worker
threads, through `control_room.db.store.call_as` (the settings and the call in one round trip,
one implicit transaction), which shares its argument handling with the direct-SQL `call`.

`claim_phase` and `claim_phases` may wait for work (`Prefer: wait=<seconds>`): the gateway
keeps one LISTEN connection of its own (never a pooled one) and retries the claim when the
database announces a queued phase, and when work becomes due without a notification (a
retry's backoff ending, a lease expiring: after an empty claim it asks
`ops_private.claim_due_at` when the soonest falls due and sleeps until then), polling as a
fallback (`claim_poll_seconds`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import re
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeGuard

import anyio
import psycopg
import yaml
from prometheus_client import CONTENT_TYPE_LATEST
from psycopg_pool import ConnectionPool, PoolTimeout
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from control_room.contract.errors import ContractError
from control_room.db.migrate import migrate
from control_room.db.queries import query
from control_room.db.store import call_as, clip, json_depth
from control_room.gateway.artifacts import ArtifactEndpoints
from control_room.gateway.auth import Caller, TokenCache
from control_room.gateway.errors import GatewayError, contract_response
from control_room.gateway.feed import CHANNEL as FEED_CHANNEL
from control_room.gateway.feed import Feed
from control_room.gateway.metrics import Metrics, MetricsScope, is_loopback
from control_room.gateway.ui import ui_built, ui_routes
from control_room.settings import Settings

log = logging.getLogger("control_room.gateway")

SCHEMA = "ops"
_WAIT = re.compile(r"(?:^|[,;\s])wait\s*=\s*([0-9]+(?:\.[0-9]+)?)", re.IGNORECASE)
_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_DUE_SLACK = 0.005
"""Seconds a waiting claim sleeps past the due time it was told (the clocks of the gateway
and the database are the same host's, or close)."""
_NOTHING_CLAIMED: dict[str, Any] = {"claim_phase": None, "claim_phases": []}
"""The claims that may wait for work (`Prefer: wait`), and what each answers when none came."""
_WAITING_CLAIMS = frozenset(_NOTHING_CLAIMED)


def _strings(value: Any) -> TypeGuard[list[str]]:
    return isinstance(value, list) and 0 < len(value) <= 100 and all(
        isinstance(v, str) for v in value)


def load_contract(contract_file: Path) -> dict[str, Any]:
    """The OpenAPI document, parsed once per file version."""
    return _parse_contract(contract_file, contract_file.stat().st_mtime_ns)


@functools.lru_cache(maxsize=4)
def _parse_contract(contract_file: Path, mtime_ns: int) -> dict[str, Any]:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    document: dict[str, Any] = yaml.load(contract_file.read_text("utf-8"), Loader=loader)
    return document


def contract_functions(contract_file: Path) -> frozenset[str]:
    """The functions the contract names: the `/rpc/<fn>` operations of its OpenAPI document."""
    return frozenset(path.removeprefix("/rpc/") for path in load_contract(contract_file)["paths"]
                     if path.startswith("/rpc/"))


@dataclass(eq=False)
class Waiter:
    """A claim waiting for work: which notifications concern it, and how it is woken."""

    kinds: frozenset[str] | None
    workspace: str | None
    woken: asyncio.Event = field(default_factory=asyncio.Event)

    def concerns(self, payload: str) -> bool:
        workspace, _, kind = payload.partition(" ")
        if not kind:
            return True                 # a payload we do not understand wakes everyone
        return ((self.kinds is None or kind in self.kinds)
                and (self.workspace is None or self.workspace == workspace))


class Notifier:
    """LISTEN on a dedicated connection; wake the waiters a queued phase concerns.

    The ops functions notify `ops_phase_queued` with '<workspace id> <kind>' for each phase
    they queue, so a notification wakes only the claims that could take it.
    """

    def __init__(self, conninfo: str) -> None:
        self._conninfo = conninfo
        self.connected = False
        self._waiters: set[Waiter] = set()
        self.feed: Feed | None = None
        """The change feed (gateway/feed.py) gets `ops_run_changes` on the same connection."""

    async def run(self) -> None:
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(self._conninfo, autocommit=True)
                async with conn:
                    await conn.execute(query("listen_phase_queued"))
                    await conn.execute(query("listen_run_changes"))
                    self.connected = True
                    self._wake("")             # anything queued while we were away
                    if self.feed is not None:
                        self.feed.reconnected()
                    async for notification in conn.notifies():
                        if notification.channel == FEED_CHANNEL:
                            if self.feed is not None:
                                self.feed.dispatch(notification.payload)
                        else:
                            self._wake(notification.payload)
            except asyncio.CancelledError:
                raise
            except Exception as exc:   # reconnect; waiters poll meanwhile
                log.warning("listener connection lost: %s", exc)
            self.connected = False
            await asyncio.sleep(1.0)

    def _wake(self, payload: str) -> None:
        for waiter in self._waiters:
            if waiter.concerns(payload):
                waiter.woken.set()

    @contextlib.contextmanager
    def waiting(self, kinds: frozenset[str] | None, workspace: str | None) -> Iterator[Waiter]:
        waiter = Waiter(kinds, workspace)
        self._waiters.add(waiter)
        try:
            yield waiter
        finally:
            self._waiters.discard(waiter)


class Gateway:
    def __init__(self, settings: Settings, *, database_url: str, jwt_secret: str,
                 contract_file: Path, test_clock: bool = False) -> None:
        self.settings = settings
        self.test_clock = test_clock
        self.database_url = database_url
        self.secret = jwt_secret
        self.contract_file = contract_file
        self.functions = contract_functions(contract_file)
        timeout = str(int(settings.statement_timeout_ms))
        self.pool = ConnectionPool(
            database_url, min_size=settings.pool_min_size, max_size=settings.pool_max_size,
            open=False, name="control-room-gateway", timeout=10,
            kwargs={"options": f"-c statement_timeout={timeout}", "autocommit": True},
        )
        self.notifier = Notifier(database_url)
        self.feed = Feed(self)
        self.notifier.feed = self.feed
        self.artifacts = ArtifactEndpoints(self)
        self.ui_page: Callable[[Request], Awaitable[Response]] | None = None
        """The web UI's page handler (gateway/ui.py), when it is built."""
        self.tokens = TokenCache(jwt_secret)
        self.metrics = Metrics(self.pool.connection)
        self._health_cache: tuple[float, dict[str, Any]] | None = None

    # -- lifecycle -------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        await anyio.to_thread.run_sync(lambda: self.pool.open(wait=True, timeout=30))
        listener = asyncio.create_task(self.notifier.run(), name="control-room-listener")
        try:
            yield
        finally:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener
            await anyio.to_thread.run_sync(self.pool.close)

    # -- /rest/v1/rpc/{function} -----------------------------------------------------------

    async def rpc(self, request: Request) -> Response:
        fn = request.path_params["function"]
        label = fn if fn in self.functions else "unknown"
        started = time.perf_counter()
        try:
            response = await self._rpc(request, fn)
        except GatewayError as exc:
            response = exc.response()
        except ContractError as exc:
            response = contract_response(exc)
        except (PoolTimeout, psycopg.OperationalError) as exc:
            log.warning("database unavailable serving %s: %s", fn, exc)
            response = GatewayError(503, "PGRST000", "the database is unavailable",
                                    hint="unavailable").response()
        except Exception:
            log.exception("unexpected error serving %s", fn)
            response = GatewayError(500, "XX000", "internal error; see the gateway's log",
                                    hint="internal").response()
        self.metrics.observe(label, response.status_code, time.perf_counter() - started)
        return response

    async def _rpc(self, request: Request, fn: str) -> Response:
        if fn not in self.functions:
            raise GatewayError(404, "PGRST202",
                               f"Could not find the function {SCHEMA}.{clip(fn)} in the schema "
                               "cache", hint="not_found")
        profile = request.headers.get("content-profile") or request.headers.get("accept-profile")
        if profile is not None and profile.strip() != SCHEMA:
            raise GatewayError(406, "PGRST106",
                               f"The schema must be one of the following: {SCHEMA}",
                               hint="invalid_argument")
        caller = self.tokens.authenticate(request.headers.get("authorization"),
                                          request.headers.get("apikey"))
        args = await self._arguments(request)
        now = self._clock(request)
        wait = self._wait(request) if fn in _WAITING_CLAIMS else 0.0
        if wait > 0:
            result = await self._claim_waiting(request, fn, args, caller, now, wait)
            # RFC 7240: say that the wait was honoured (Supabase's PostgREST does not wait)
            return JSONResponse(result, headers={"Preference-Applied": f"wait={wait:g}"})
        result = await anyio.to_thread.run_sync(self._call, fn, args, caller, now)
        return JSONResponse(result)

    async def _arguments(self, request: Request) -> dict[str, Any]:
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        limit = self.settings.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise _too_large(limit)
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise _too_large(limit)
        if not body.strip():
            return {}
        if content_type not in ("application/json", ""):
            raise GatewayError(415, "PGRST107",
                               f"Content-Type {clip(content_type)} is not acceptable: send JSON",
                               hint="invalid_argument")
        # before parsing: Python's parser (and PostgreSQL's) recurse; the object of named
        # arguments is one level more than its arguments
        limit = self.settings.max_json_depth
        depth = json_depth(body, limit + 1)
        if depth > limit + 1:
            raise _too_deep(limit, depth - 1)
        try:
            args = json.loads(body, parse_constant=_no_constant)
        except RecursionError:
            raise _too_deep(limit, None) from None
        except ValueError as exc:
            raise GatewayError(400, "PGRST102", "Empty or invalid json", details=clip(str(exc)),
                               hint="invalid_argument") from exc
        if not isinstance(args, dict):
            raise GatewayError(400, "PGRST102",
                               "The body must be a JSON object of named arguments",
                               hint="invalid_argument")
        return args

    def _clock(self, request: Request) -> datetime | None:
        value = request.headers.get("x-control-room-now")
        if value is None or not self.test_clock:
            return None
        try:
            return datetime.fromisoformat(value)
        except ValueError as exc:
            raise GatewayError(400, "PGRST100", "X-Control-Room-Now must be an ISO timestamp",
                               hint="invalid_argument") from exc

    def _wait(self, request: Request) -> float:
        match = _WAIT.search(request.headers.get("prefer", ""))
        if match is None:
            return 0.0
        return min(float(match.group(1)), self.settings.claim_wait_max_seconds)

    def _call(self, fn: str, args: dict[str, Any], caller: Caller, now: datetime | None) -> Any:
        with self.pool.connection() as conn:
            return call_as(conn, fn, args, role=caller.role, sub=caller.sub,
                           claims=caller.claims, now=now, schema=SCHEMA,
                           max_depth=self.settings.max_json_depth)

    def _claim_or_due(self, fn: str, args: dict[str, Any], caller: Caller,
                      now: datetime | None) -> tuple[Any, float | None]:
        """One claim (`claim_phase`, or a batch: `claim_phases`); when it found nothing, also
        (on the same connection) how many seconds until the soonest work it could take falls
        due (None: none pending). The kinds and workspaces narrow that hint only when they are
        well-formed; the claim checks them."""
        with self.pool.connection() as conn:
            result = call_as(conn, fn, args, role=caller.role, sub=caller.sub,
                             claims=caller.claims, now=now, schema=SCHEMA,
                             max_depth=self.settings.max_json_depth)
            if result:                  # a claim, or a non-empty batch
                return result, None
            kinds = args.get("kinds")
            workspaces = ([args["workspace_id"]] if args.get("workspace_id") is not None
                          else caller.claims.get("workspaces"))
            if not (_strings(workspaces) and all(_UUID.match(w) for w in workspaces)):
                workspaces = None
            hint = {"kinds": kinds if _strings(kinds) else None, "workspaces": workspaces,
                    "now": now}
            try:
                row = conn.execute(query("claim_due_at"), hint).fetchone()
            except psycopg.Error as exc:    # only a hint: polling still finds the work
                log.warning("claim_due_at failed (waiting claims poll instead): %s", exc)
                return None, None
        if row is None or row[0] is None:
            return None, None
        return None, max(float(row[0]), 0.0)

    async def _claim_waiting(self, request: Request, fn: str, args: dict[str, Any],
                             caller: Caller, now: datetime | None, wait: float) -> Any:
        kinds = args.get("kinds")
        workspace = args.get("workspace_id")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        with self.notifier.waiting(
            frozenset(kinds) if isinstance(kinds, list) and all(isinstance(k, str) for k in kinds)
            else None,
            workspace if isinstance(workspace, str) else None,
        ) as waiter:
            while True:
                if await request.is_disconnected():
                    # nobody would receive a lease now; a client that retries with the same
                    # claim_id gets back any lease a claim in flight took for it
                    return _NOTHING_CLAIMED[fn]
                waiter.woken.clear()
                result, due_in = await anyio.to_thread.run_sync(
                    self._claim_or_due, fn, args, caller, now)
                left = deadline - loop.time()
                if result or left <= 0:
                    return result or _NOTHING_CLAIMED[fn]
                pause = min(left, self.settings.claim_poll_seconds)
                if due_in is not None:      # a retry or a lease falls due before the next poll
                    pause = min(pause, due_in + _DUE_SLACK)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(waiter.woken.wait(), pause)

    # -- the rest ------------------------------------------------------------------------

    async def root(self, request: Request) -> Response:
        return JSONResponse(load_contract(self.contract_file),
                            media_type="application/openapi+json")

    async def openapi_yaml(self, request: Request) -> Response:
        return PlainTextResponse(self.contract_file.read_text("utf-8"),
                                 media_type="application/yaml")

    async def health(self, request: Request) -> Response:
        if self.ui_page is not None and "text/html" in request.headers.get("accept", ""):
            return await self.ui_page(request)     # a browser on the web UI's /health page
        report = await anyio.to_thread.run_sync(self._health)
        return JSONResponse(report, status_code=200 if report["status"] == "ok" else 503)

    def _health(self) -> dict[str, Any]:
        """The database and the listener as they are now (a ping per probe: a database that
        went away is reported at once); the migration check, which reads every migration
        file, is reused for 5 s."""
        report: dict[str, Any] = {"status": "ok", "database": "reachable",
                                  "listener": "connected" if self.notifier.connected else "polling"}
        try:
            with self.pool.connection(timeout=5) as conn:
                conn.execute(query("ping"))
        except (psycopg.Error, TimeoutError) as exc:
            report.update(status="unavailable", database=f"unreachable: {exc}")
            return report
        cached = self._health_cache
        if cached is not None and time.monotonic() - cached[0] < 5:
            report.update(cached[1])
            return report
        checked: dict[str, Any] = {}
        try:
            migrations = migrate(self.database_url, self.settings.migrations_dir, check=True)
            current = not (migrations.pending or migrations.drifted or migrations.unknown)
            checked["migrations"] = "current" if current else {
                "pending": migrations.pending, "drifted": migrations.drifted,
                "unknown": migrations.unknown}
            if not current:
                checked["status"] = "degraded"
        except Exception as exc:   # report, don't crash the probe
            checked.update(status="degraded", migrations=f"unknown: {exc}")
        self._health_cache = (time.monotonic(), checked)
        report.update(checked)
        return report

    async def metrics_endpoint(self, request: Request) -> Response:
        """Prometheus text, scoped to the caller (docs/gateway.md, "Metrics")."""
        try:
            scope = await anyio.to_thread.run_sync(self._metrics_scope, request)
            body = await anyio.to_thread.run_sync(self.metrics.render, scope)
        except GatewayError as exc:
            return exc.response()
        except ContractError as exc:
            return contract_response(exc)
        except (PoolTimeout, psycopg.OperationalError) as exc:
            log.warning("database unavailable serving /metrics: %s", exc)
            return GatewayError(503, "PGRST000", "the database is unavailable",
                                hint="unavailable").response()
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    def public(self, request: Request) -> bool:
        """Whether the gateway listens beyond loopback: its configured host (`--host`,
        CONTROL_ROOM_HOST) or the address this request came in on is not a loopback one."""
        server = request.scope.get("server")
        here = server[0] if isinstance(server, tuple | list) and server else None
        return not is_loopback(self.settings.host) or (here is not None
                                                       and not is_loopback(str(here)))

    def _metrics_scope(self, request: Request) -> MetricsScope:
        """What the caller of /metrics may see.

        The metrics token or a service_role JWT: everything. A member's JWT: its workspaces'
        series (the workspaces `list_workspaces` shows it), and on loopback the aggregates.
        No token: the aggregates, on loopback and without a metrics token configured only.
        """
        authorization = request.headers.get("authorization")
        token = self.settings.metrics_token
        if token is not None and authorization is not None:
            scheme, _, value = authorization.strip().partition(" ")
            if scheme.lower() == "bearer" and secrets.compare_digest(
                    value.strip().encode(), token.get_secret_value().encode()):
                return MetricsScope(aggregates=True, workspaces=None)
        caller = self.tokens.authenticate(authorization, request.headers.get("apikey"))
        if caller.role == "service_role":
            return MetricsScope(aggregates=True, workspaces=None)
        open_here = token is None and not self.public(request)
        if caller.role == "anon":
            if not open_here:
                raise GatewayError(
                    401, "PGRST302", "/metrics needs a token here: the metrics token or a JWT",
                    hint="unauthorized", bearer_error="invalid_request")
            return MetricsScope(aggregates=True, workspaces=frozenset())
        workspaces: frozenset[str] = frozenset()
        if caller.sub is not None:
            listed = self._call("list_workspaces", {}, caller, None)
            workspaces = frozenset(str(w["id"]) for w in listed or () if isinstance(w, dict))
        return MetricsScope(aggregates=open_here, workspaces=workspaces)


def _too_deep(limit: int, depth: int | None) -> GatewayError:
    deeper = f" ({depth})" if depth is not None else ""
    return GatewayError(400, "PGRST102",
                        f"The body nests arrays and objects deeper than {limit} levels{deeper}"
                        " inside an argument", details=json.dumps({"limit": limit, "depth": depth}),
                        hint="invalid_argument")


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _too_large(limit: int) -> GatewayError:
    return GatewayError(413, "PT413", f"The request body is larger than {limit} bytes",
                        hint="payload_too_large")


async def _not_found(request: Request, exc: Exception) -> Response:
    message = f"Invalid path specified in request URL: {clip(request.url.path)}"
    return GatewayError(404, "PGRST125", message, hint="not_found").response()


async def _method_not_allowed(request: Request, exc: Exception) -> Response:
    return GatewayError(405, "PGRST117", f"Unsupported HTTP method: {request.method}",
                        hint="invalid_argument").response()


def create_app(settings: Settings, *, database_url: str, jwt_secret: str,
               contract_file: Path | None = None, test_clock: bool = False) -> Starlette:
    """The ASGI app serving the contract over `database_url`.

    `test_clock` (tests only, never a setting): honour the `X-Control-Room-Now` header.
    """
    gateway = Gateway(settings, database_url=database_url, jwt_secret=jwt_secret,
                      contract_file=contract_file or settings.contract_file,
                      test_clock=test_clock)
    from control_room.gateway.ask import AskEndpoints
    from control_room.gateway.signin import signin_routes

    ask = AskEndpoints(gateway)
    mcp_routes: list[BaseRoute] = []
    mcp_server: Any = None
    mcp_clients: Any = None
    if settings.mcp != "off":
        try:
            from control_room.gateway.mcp_mount import mcp_routes as make_mcp_routes
        except ImportError as exc:
            raise ValueError("CONTROL_ROOM_MCP needs the mcp extra: pip install "
                             f"'lakehouse-control-room[mcp]' ({exc})") from None
        mcp_server, mcp_routes, mcp_clients = make_mcp_routes(settings.mcp, settings.host)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            await stack.enter_async_context(gateway.lifespan(app))
            if mcp_server is not None:
                await stack.enter_async_context(mcp_server.session_manager.run())
                stack.callback(mcp_clients.close)
            try:
                yield
            finally:
                await anyio.to_thread.run_sync(ask.close)

    ui = ui_routes(settings)
    if ui_built(settings):
        gateway.ui_page = ui[-1].endpoint  # type: ignore[attr-defined]
    app = Starlette(
        routes=[
            Route("/rest/v1/rpc/{function}", gateway.rpc, methods=["POST"]),
            *signin_routes(gateway),
            Route("/ask/v1/ask", ask.ask, methods=["POST"]),
            Route("/ask/v1/metrics", ask.metrics, methods=["POST"]),
            Route("/ask/v1/query", ask.query, methods=["POST"]),
            Route("/rest/v1/", gateway.root, methods=["GET"]),
            Route("/openapi.yaml", gateway.openapi_yaml, methods=["GET"]),
            Route("/health", gateway.health, methods=["GET"]),
            Route("/metrics", gateway.metrics_endpoint, methods=["GET"]),
            Route("/feed/v1/changes", gateway.feed.changes, methods=["GET"]),
            Route("/artifacts/v1/{workspace_id}/{digest}", gateway.artifacts.content,
                  methods=["GET"]),
            Route("/artifacts/v1/{workspace_id}/{digest}/preview", gateway.artifacts.preview,
                  methods=["GET"]),
            *mcp_routes,
            *ui,                       # last: its catch-all answers the web UI's routes
        ],
        exception_handlers={404: _not_found, 405: _method_not_allowed},
        lifespan=lifespan,
    )
    app.state.gateway = gateway
    app.state.ask = ask
    return app


@contextlib.contextmanager
def serving(app: Starlette, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Run `app` on uvicorn in a background thread; yield its base URL (tests, benchmarks)."""
    import socket
    import threading

    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    config = uvicorn.Config(app, log_level="warning", lifespan="on", access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the gateway did not start")
        time.sleep(0.01)
    try:
        yield f"http://{host}:{sock.getsockname()[1]}"
    finally:
        gateway = getattr(app.state, "gateway", None)
        if gateway is not None:
            gateway.feed.close_threadsafe()     # open change feeds would hold the shutdown up
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
