"""The change feed: `GET /feed/v1/changes?workspace_id=W[&run_id=R]`, server-sent events
(docs/ui.md, "Server side").

A statement-level trigger on `ops.run_events` notifies `ops_run_changes` with
'<workspace id> <run id> <highest seq>' (20261204000100_ui_reads.sql). The gateway's one
LISTEN connection (the `Notifier` of gateway/app.py, which also wakes waiting claims) hands
each notification to `Feed.dispatch`; every open stream of that workspace (and run) gets it.

A stream: `event: ready` first; then `event: change` with `data: {"workspace_id", "run_id",
"seq"}`, at most one per run per 100 ms (later changes of a run within that time are merged
into one with the highest seq); `event: resync` after the listener lost its connection (the
client re-reads); a `: ping` comment every 15 s. The caller's membership is checked at
connect, through the database as the caller (`list_workspaces`, `get_run`). The stream ends
at the token's `exp`: the client reconnects with a fresh token. Tokens come only from the
`Authorization` header, never from the URL.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import anyio
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from control_room.contract.errors import ContractError
from control_room.gateway.errors import GatewayError, contract_response

CHANNEL = "ops_run_changes"
PING_SECONDS = 15.0
COALESCE_SECONDS = 0.1
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


@dataclass(eq=False)
class Subscriber:
    workspace: str
    run: str | None
    pending: dict[str, int] = field(default_factory=dict)
    resync: bool = False
    woken: asyncio.Event = field(default_factory=asyncio.Event)


class Feed:
    """The open streams of one gateway process, fed by its LISTEN connection."""

    def __init__(self, gateway: Any) -> None:
        self.gateway = gateway
        self._subscribers: set[Subscriber] = set()
        self.ping_seconds = PING_SECONDS
        self.closing = False
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- from the listener --------------------------------------------------------------------

    def dispatch(self, payload: str) -> None:
        parts = payload.split(" ")
        if len(parts) != 3 or not parts[2].isdigit():
            return
        workspace, run, seq = parts[0], parts[1], int(parts[2])
        for sub in self._subscribers:
            if sub.workspace == workspace and (sub.run is None or sub.run == run):
                sub.pending[run] = max(seq, sub.pending.get(run, 0))
                sub.woken.set()

    def reconnected(self) -> None:
        """The listener was away: changes may have been missed."""
        for sub in self._subscribers:
            sub.resync = True
            sub.woken.set()

    def stopping(self) -> bool:
        return self.closing

    def close(self) -> None:
        """End every stream (the server is stopping: open streams would hold it up)."""
        self.closing = True
        for sub in self._subscribers:
            sub.woken.set()

    def close_threadsafe(self) -> None:
        """`close` from another thread (or a signal handler)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            self.closing = True
            return
        loop.call_soon_threadsafe(self.close)

    @contextlib.contextmanager
    def subscribed(self, workspace: str, run: str | None) -> Iterator[Subscriber]:
        sub = Subscriber(workspace, run)
        self._loop = asyncio.get_running_loop()
        self._subscribers.add(sub)
        try:
            yield sub
        finally:
            self._subscribers.discard(sub)

    # -- GET /feed/v1/changes -----------------------------------------------------------------

    async def changes(self, request: Request) -> Response:
        try:
            workspace, run, expires = await self._admit(request)
        except GatewayError as exc:
            return exc.response()
        except ContractError as exc:
            return contract_response(exc)
        return StreamingResponse(
            self._stream(workspace, run, expires), media_type="text/event-stream",
            headers={"Cache-Control": "no-cache, no-transform", "X-Accel-Buffering": "no",
                     "Connection": "keep-alive"})

    async def _admit(self, request: Request) -> tuple[str, str | None, float | None]:
        if "access_token" in request.query_params or "token" in request.query_params:
            raise GatewayError(400, "PGRST100", "tokens are never taken from the URL: send "
                               "Authorization: Bearer <token>", hint="invalid_argument")
        caller = self.gateway.tokens.authenticate(request.headers.get("authorization"), None)
        if caller.role == "anon":
            raise GatewayError(401, "PGRST302", "the change feed needs a bearer token",
                               hint="unauthorized", bearer_error="invalid_request")
        workspace = (request.query_params.get("workspace_id") or "").lower()
        if not _UUID.match(workspace):
            raise GatewayError(400, "PGRST100", "workspace_id must be a UUID",
                               details=json.dumps({"argument": "workspace_id"}),
                               hint="invalid_argument")
        run = request.query_params.get("run_id")
        if run is not None:
            run = run.lower()
            if not _UUID.match(run):
                raise GatewayError(400, "PGRST100", "run_id must be a UUID",
                                   details=json.dumps({"argument": "run_id"}),
                                   hint="invalid_argument")
        listed = await anyio.to_thread.run_sync(self.gateway._call, "list_workspaces", {},
                                                caller, None)
        if workspace not in {str(w.get("id")) for w in listed or () if isinstance(w, dict)}:
            raise GatewayError(403, "PT403", "the caller is not a member of this workspace",
                               hint="forbidden")
        if run is not None:
            found = await anyio.to_thread.run_sync(self.gateway._call, "get_run",
                                                   {"run_id": run}, caller, None)
            if str(found.get("workspace_id")) != workspace:
                raise GatewayError(400, "PGRST100", "run_id is not a run of workspace_id",
                                   details=json.dumps({"argument": "run_id"}),
                                   hint="invalid_argument")
        exp = caller.claims.get("exp")
        return workspace, run, float(exp) if isinstance(exp, int | float) else None

    async def _stream(self, workspace: str, run: str | None,
                      expires: float | None) -> AsyncIterator[bytes]:
        with self.subscribed(workspace, run) as sub:
            yield b"event: ready\ndata: {}\n\n"
            last = 0.0
            loop = asyncio.get_running_loop()
            while not self.stopping():
                wait = self.ping_seconds
                if expires is not None:
                    left = expires - time.time()
                    if left <= 0:
                        yield b"event: expired\ndata: {}\n\n"
                        return
                    wait = min(wait, left)
                try:
                    await asyncio.wait_for(sub.woken.wait(), wait)
                except TimeoutError:
                    if expires is None or expires > time.time():
                        yield b": ping\n\n"
                    continue
                pause = last + COALESCE_SECONDS - loop.time()
                if pause > 0:
                    await asyncio.sleep(pause)       # merge what comes meanwhile
                if self.stopping():
                    return
                sub.woken.clear()
                pending, sub.pending = sub.pending, {}
                chunks = []
                if sub.resync:
                    sub.resync = False
                    chunks.append(b"event: resync\ndata: {}\n\n")
                for run_id, seq in pending.items():
                    data = json.dumps({"workspace_id": workspace, "run_id": run_id, "seq": seq})
                    chunks.append(f"event: change\ndata: {data}\n\n".encode())
                last = loop.time()
                if chunks:
                    yield b"".join(chunks)
