"""The MCP server: tools and resources over the contract client, with the agent's own token.

Every tool calls one typed method of `control_room.contract.ContractClient` (never a database
connection), so the database's RLS, its audit and the state functions stay the only path: the
token's role decides what a call may do, and a refusal comes back as a tool error naming the
contract's machine code, its HTTP status and its message (`forbidden (HTTP 403) ...`).

Read-only by default: the tools that change state (starting, cancelling and repairing runs;
the executor protocol) are registered only with `allow_writes=True` (`control-room mcp
--allow-writes`). Each tool's description is its operation's text in the packaged
`openapi.yaml` (`descriptions.py`); its JSON schema comes from its signature; its annotations
say whether it is read-only, destructive or idempotent. docs/agents.md lists them.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Annotated, Any, Literal, TypeVar

import anyio
import anyio.to_thread
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ResourceError, ToolError
from mcp_types import ToolAnnotations
from pydantic import BaseModel, Field

from control_room.contract import ContractClient, ContractError
from control_room.contract.vocabulary import (
    ArtifactRole,
    DatasetLayer,
    EventLevel,
    Outcome,
    RunState,
    SchemaState,
)
from control_room.mcp.descriptions import describe

__all__ = ["DEFAULT_WAIT_SECONDS", "MAX_WAIT_SECONDS", "READ_TOOLS", "WRITE_TOOLS",
           "BearerClients", "ClientSource", "build_server", "error_text"]

_T = TypeVar("_T")

DEFAULT_WAIT_SECONDS = 20.0
"""wait_for_run's default bound: well under the ~60 s after which common MCP clients give up
on a tool call."""
MAX_WAIT_SECONDS = 50.0
"""The longest wait_for_run accepts: a call still within a 60 s client timeout."""
POLL_SECONDS = 0.5
"""How often wait_for_run reads the run (and sends a progress notification)."""
RESOURCE_MAX_EVENTS = 5000
"""The most events one read of the event-stream resource answers (then `next_after`)."""
FINAL_STATES = frozenset({"succeeded", "failed", "cancelled"})

READ = ToolAnnotations(read_only_hint=True, destructive_hint=False, idempotent_hint=True,
                       open_world_hint=False)


def _write(*, destructive: bool, idempotent: bool) -> ToolAnnotations:
    return ToolAnnotations(read_only_hint=False, destructive_hint=destructive,
                           idempotent_hint=idempotent, open_world_hint=False)


READ_TOOLS = ("list_workspaces", "list_runs", "get_run", "wait_for_run", "list_events",
              "list_artifacts", "list_datasets", "get_dataset", "list_jobs", "get_job",
              "list_schedules", "get_schedule", "list_schedule_ticks", "ask")
"""The tools every server has (each reads only)."""
WRITE_TOOLS = ("start_job_run", "cancel_run", "repair_run", "claim_phase", "heartbeat",
               "append_events", "register_artifact", "complete_phase")
"""The tools registered only with writes enabled."""


def error_text(exc: ContractError) -> str:
    """A contract refusal as a tool error's text: the machine code, the HTTP status, the
    function and the message (never the token: the contract's errors do not carry it)."""
    status = f" (HTTP {exc.status})" if exc.status is not None else ""
    where = f" in {exc.function}" if exc.function else ""
    return f"{exc.code}{status}{where}: {exc.message}"


_LIMITERS: dict[int, anyio.CapacityLimiter] = {}


def _limiter() -> anyio.CapacityLimiter:
    """The tools' own worker threads (16 per event loop), apart from anyio's default pool:
    on the gateway (/mcp) a tool's call comes back to the same process as an RPC, which runs
    in the default pool, so tools waiting on calls can never take every thread those calls
    need."""
    import asyncio

    loop = id(asyncio.get_running_loop())
    limiter = _LIMITERS.get(loop)
    if limiter is None:
        limiter = _LIMITERS[loop] = anyio.CapacityLimiter(16)
    return limiter


async def _call(fn: Callable[..., _T], /, *args: Any, **kwargs: Any) -> _T:
    """Run a (blocking) client method in a worker thread; a refusal becomes a ToolError."""
    try:
        return await anyio.to_thread.run_sync(functools.partial(fn, *args, **kwargs),
                                              limiter=_limiter())
    except ContractError as exc:
        raise ToolError(error_text(exc)) from None


def _dump(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, list | tuple):
        return [_dump(item) for item in value]
    return value


# ------------------------------------------------------------------- whose token

class ClientSource:
    """The contract client a request's tools call: over stdio the one the server was started
    with (its `--token`); over HTTP (`BearerClients`) the one of the token the request itself
    carries."""

    def __init__(self, client: ContractClient) -> None:
        self._client = client

    def for_context(self, ctx: Context[Any, Any]) -> ContractClient:
        return self._client

    def close(self) -> None:
        """Close the clients this source made (not the one it was given)."""


class BearerClients(ClientSource):
    """One client per token, the token taken from each HTTP request's `Authorization: Bearer`
    header: every agent calls the contract as itself. A request without one is refused (no
    server-wide token stands in for it). At most `keep` clients are kept, the least recently
    used closed first; tokens are held in memory only, never logged."""

    def __init__(self, base_url: str, *, keep: int = 32,
                 make: Callable[[str, str], ContractClient] | None = None) -> None:
        self.base_url = base_url
        self.keep = keep
        self._make = make or (lambda url, token: ContractClient(url, token))
        self._clients: OrderedDict[str, ContractClient] = OrderedDict()
        self._lock = threading.Lock()

    def for_context(self, ctx: Context[Any, Any]) -> ContractClient:
        headers = ctx.headers or {}
        scheme, _, token = (headers.get("authorization") or "").strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise ToolError("unauthorized (HTTP 401): send your own token as "
                            "`Authorization: Bearer <token>` with each MCP request")
        key = hashlib.sha256(token.encode()).hexdigest()
        with self._lock:
            client = self._clients.pop(key, None) or self._make(self.base_url, token)
            self._clients[key] = client
            while len(self._clients) > self.keep:
                self._clients.popitem(last=False)[1].close()
        return client

    def close(self) -> None:
        with self._lock:
            for client in self._clients.values():
                client.close()
            self._clients.clear()


# ------------------------------------------------------------------ argument types

RunId = Annotated[str, Field(description="The run's id (a UUID).")]
WorkspaceId = Annotated[str, Field(description="The workspace's id (a UUID; list_workspaces).")]
OptWorkspaceId = Annotated[str | None, Field(
    description="The workspace's id (a UUID); omit for every workspace the token sees.")]
Limit = Annotated[int | None, Field(description="At most this many (the contract's default "
                                                "when omitted).", ge=1)]
LeaseToken = Annotated[str, Field(description="The lease token claim_phase answered.")]
IdempotencyKey = Annotated[str | None, Field(
    description="Names the call: a repeat with the same key answers the same run.")]


class EventIn(BaseModel):
    """One event to append to a run's stream."""

    type: str = Field(description="The event's type: an upper-case name such as LOG.")
    message: str = Field("", description="A human-readable line.")
    level: EventLevel | None = Field(None, description="debug, info (default), warning, error.")
    phase: str | None = Field(None, description="The phase it is about (with a lease: its own).")
    payload: dict[str, Any] | None = Field(None, description="Structured detail (a JSON object).")
    event_id: str | None = Field(None, description="A UUID naming the event (given: a resend "
                                                   "is stored once; omitted: made here).")


# ------------------------------------------------------------------------- the server

def build_server(client: ContractClient | ClientSource, *, allow_writes: bool = False,
                 name: str = "control-room") -> MCPServer[Any]:
    """An MCP server whose tools call `client` (the agent's own token), or for each request
    the client a `ClientSource` gives (`BearerClients`: the request's own token); the write
    tools only when `allow_writes`."""
    clients = client if isinstance(client, ClientSource) else ClientSource(client)
    of = clients.for_context
    server: MCPServer[Any] = MCPServer(
        name, title="Lakehouse Control Room",
        instructions=(
            "Tools over the Lakehouse Control Room contract, called with this server's token: "
            "what the token's role may do is decided by the control plane. Runs, events, "
            "artifacts, datasets, jobs and schedules can be read; "
            + ("runs can be started, waited for, cancelled and repaired, and phases claimed "
               "and completed (the executor protocol)."
               if allow_writes else
               "this server is read-only (start it with --allow-writes to start runs or "
               "claim phases).")),
        log_level="WARNING")

    def tool(fn: Callable[..., Any], *, operation: str, annotations: ToolAnnotations,
             note: str | None = None, lead: str | None = None) -> None:
        server.add_tool(fn, name=fn.__name__, description=describe(operation, note, lead=lead),
                        annotations=annotations)

    # -- reads --------------------------------------------------------------------------

    async def list_workspaces(ctx: Context[Any, Any]) -> dict[str, Any]:
        return {"workspaces": _dump(await _call(of(ctx).list_workspaces))}

    async def list_runs(
        ctx: Context[Any, Any],
        workspace_id: OptWorkspaceId = None,
        state: Annotated[RunState | None, Field(description="Only runs in this state.")] = None,
        spec_slug: Annotated[str | None, Field(description="Only runs of this spec.")] = None,
        labels: Annotated[dict[str, str] | None, Field(
            description="Only runs carrying all these labels.")] = None,
        parent_run_id: Annotated[str | None, Field(
            description="Only the children (repairs, retries) of this run.")] = None,
        limit: Limit = None,
        cursor: Annotated[str | None, Field(
            description="The previous page's next_cursor.")] = None,
    ) -> dict[str, Any]:
        page = await _call(of(ctx).list_runs, workspace_id, state=state, spec_slug=spec_slug,
                           labels=labels, parent_run_id=parent_run_id, limit=limit,
                           cursor=cursor)
        return dict(_dump(page))

    async def get_run(ctx: Context[Any, Any], run_id: RunId) -> dict[str, Any]:
        return dict(_dump(await _call(of(ctx).get_run, run_id)))

    async def wait_for_run(
        ctx: Context[Any, Any],
        run_id: RunId,
        timeout_seconds: Annotated[float, Field(
            description=f"How long to wait at most, in seconds (default "
                        f"{DEFAULT_WAIT_SECONDS:g}, at most {MAX_WAIT_SECONDS:g}).",
            ge=0, le=MAX_WAIT_SECONDS)] = DEFAULT_WAIT_SECONDS,
    ) -> dict[str, Any]:
        started = time.monotonic()
        while True:
            run = await _call(of(ctx).get_run, run_id)
            elapsed = time.monotonic() - started
            done = sum(1 for p in run.phases if p.state in ("succeeded", "failed", "skipped",
                                                            "cancelled"))
            if run.state in FINAL_STATES:
                return {"run_id": run_id, "state": run.state, "outcome": "finished",
                        "waited_seconds": round(elapsed, 3), "run": _dump(run)}
            await ctx.report_progress(
                min(elapsed, timeout_seconds), timeout_seconds,
                f"run {run.state}: {done} of {len(run.phases)} phases finished")
            if elapsed >= timeout_seconds:
                return {"run_id": run_id, "state": run.state, "outcome": "still running",
                        "waited_seconds": round(elapsed, 3), "run": _dump(run)}
            await anyio.sleep(min(POLL_SECONDS, timeout_seconds - elapsed))

    async def list_events(
        ctx: Context[Any, Any],
        run_id: RunId,
        after: Annotated[int, Field(description="Events with seq > after (the previous "
                                                "page's next_after).", ge=0)] = 0,
        limit: Limit = None,
        phase: Annotated[str | None, Field(description="Only this phase's events.")] = None,
    ) -> dict[str, Any]:
        return dict(_dump(await _call(of(ctx).list_events, run_id, after=after, limit=limit,
                                      phase=phase)))

    async def list_artifacts(
        ctx: Context[Any, Any],
        run_id: Annotated[str | None, Field(description="Only this run's artifacts.")] = None,
        workspace_id: OptWorkspaceId = None,
        digest: Annotated[str | None, Field(description="Only links of this digest.")] = None,
        limit: Limit = None,
        after: Annotated[int | None, Field(description="The previous page's next_after.",
                                           ge=0)] = None,
    ) -> dict[str, Any]:
        page = await _call(of(ctx).list_artifacts, run_id, workspace_id=workspace_id,
                           digest=digest, limit=limit, after=after)
        return dict(_dump(page))

    async def list_datasets(
        ctx: Context[Any, Any],
        workspace_id: OptWorkspaceId = None,
        layer: Annotated[DatasetLayer | None, Field(description="Only this layer.")] = None,
        schema_state: Annotated[SchemaState | None, Field(
            description="Only datasets in this schema state.")] = None,
        name: Annotated[str | None, Field(description="A prefix of the name.")] = None,
        limit: Limit = None,
    ) -> dict[str, Any]:
        return {"datasets": _dump(await _call(of(ctx).list_datasets, workspace_id, layer=layer,
                                              schema_state=schema_state, name=name,
                                              limit=limit))}

    async def get_dataset(
        ctx: Context[Any, Any],
        workspace_id: WorkspaceId,
        name: Annotated[str, Field(description="The dataset's name, e.g. gold.revenue.")],
    ) -> dict[str, Any]:
        return dict(_dump(await _call(of(ctx).get_dataset, workspace_id, name)))

    async def list_jobs(ctx: Context[Any, Any], workspace_id: WorkspaceId) -> dict[str, Any]:
        return {"jobs": _dump(await _call(of(ctx).list_jobs, workspace_id))}

    async def get_job(
        ctx: Context[Any, Any],
        workspace_id: WorkspaceId,
        slug: Annotated[str, Field(description="The job's slug.")],
    ) -> dict[str, Any]:
        return dict(_dump(await _call(of(ctx).get_job, workspace_id, slug)))

    async def list_schedules(
        ctx: Context[Any, Any],
        workspace_id: WorkspaceId,
        job: Annotated[str | None, Field(description="Only this job's schedules.")] = None,
    ) -> dict[str, Any]:
        return {"schedules": _dump(await _call(of(ctx).list_schedules, workspace_id, job))}

    async def get_schedule(
        ctx: Context[Any, Any],
        workspace_id: WorkspaceId,
        name: Annotated[str, Field(description="The schedule's name.")],
    ) -> dict[str, Any]:
        return dict(_dump(await _call(of(ctx).get_schedule, workspace_id, name)))

    async def list_schedule_ticks(
        ctx: Context[Any, Any],
        workspace_id: WorkspaceId,
        name: Annotated[str, Field(description="The schedule's name.")],
        state: Annotated[Literal["pending", "fired", "skipped", "failed"] | None, Field(
            description="Only ticks in this state.")] = None,
        limit: Limit = None,
    ) -> dict[str, Any]:
        return dict(_dump(await _call(of(ctx).list_schedule_ticks, workspace_id, name,
                                      state=state, limit=limit)))

    async def ask(
        ctx: Context[Any, Any],
        workspace_id: WorkspaceId,
        question: Annotated[str, Field(description="The question, in plain words, e.g. "
                                                   "\"revenue by month for Oak Labs in 2026\".",
                                       min_length=1)],
        today: Annotated[str | None, Field(
            description="An ISO date that anchors relative time (\"last quarter\"); "
                        "default: the server's today.")] = None,
    ) -> dict[str, Any]:
        return dict(_dump(await _call(of(ctx).ask, workspace_id, question, today=today)))

    tool(list_workspaces, operation="list_workspaces", annotations=READ)
    tool(list_runs, operation="list_runs", annotations=READ)
    tool(get_run, operation="get_run", annotations=READ)
    tool(wait_for_run, operation="get_run", annotations=READ, lead=(
        f"Wait for a run: read it every {POLL_SECONDS:g} s until it has finished "
        f"(succeeded, failed or cancelled) or `timeout_seconds` have passed (default "
        f"{DEFAULT_WAIT_SECONDS:g}, at most {MAX_WAIT_SECONDS:g}: common MCP clients give up "
        "on a tool call after about 60 s), sending a progress notification at each read. "
        "It answers `outcome` \"finished\" with the final state, or \"still running\" with "
        "the state reached: call it again to keep waiting."))
    tool(list_events, operation="list_events", annotations=READ)
    tool(list_artifacts, operation="list_artifacts", annotations=READ)
    tool(list_datasets, operation="list_datasets", annotations=READ)
    tool(get_dataset, operation="get_dataset", annotations=READ)
    tool(list_jobs, operation="list_jobs", annotations=READ)
    tool(get_job, operation="get_job", annotations=READ)
    tool(list_schedules, operation="list_schedules", annotations=READ)
    tool(get_schedule, operation="get_schedule", annotations=READ)
    tool(list_schedule_ticks, operation="list_schedule_ticks", annotations=READ)
    # ask is served beside the contract (POST /ask/v1/ask), not an RPC of openapi.yaml: its
    # text is the client method's own
    server.add_tool(ask, name="ask", annotations=READ, description=(
        inspect.cleandoc(ContractClient.ask.__doc__ or "") + "\n\nThe answer holds `status` "
        "(answer, clarify or refuse), the `sql` it ran, the `columns` and `rows`, the metric "
        "definitions used (`certified` or not) and the `lineage` of the numbers (a comparison, "
        "'X vs Y', also its `compare`: which column is which side); on clarify, "
        "the candidate `readings`: ask again with the one meant."))

    # -- the event stream as a resource ---------------------------------------------------

    @server.resource("control-room://runs/{run_id}/events{?after}", name="run-events",
                     title="A run's event stream", mime_type="application/json",
                     description=describe("list_events", (
                         "The resource reads list_events page by page from `after` (default "
                         f"0), at most {RESOURCE_MAX_EVENTS} events a read; `complete` false "
                         "means more were there: read again with ?after=<next_after>.")))
    async def run_events(ctx: Context[Any, Any], run_id: str, after: str = "0") -> str:
        try:
            cursor = int(after)
        except ValueError:
            raise ResourceError(f"invalid_argument: after must be an integer, not {after!r}")\
                from None
        events: list[Any] = []
        complete = False
        try:
            while len(events) < RESOURCE_MAX_EVENTS:
                page = await anyio.to_thread.run_sync(functools.partial(
                    of(ctx).list_events, run_id, after=cursor,
                    limit=min(1000, RESOURCE_MAX_EVENTS - len(events))), limiter=_limiter())
                events.extend(_dump(page.events))
                cursor = page.next_after
                if not page.events:
                    complete = True
                    break
        except ContractError as exc:
            raise ResourceError(error_text(exc)) from None
        return json.dumps({"run_id": run_id, "events": events, "next_after": cursor,
                           "complete": complete})

    if allow_writes:
        _add_write_tools(clients, tool)
    return server


def _add_write_tools(clients: ClientSource, tool: Callable[..., None]) -> None:
    of = clients.for_context

    async def start_job_run(
        ctx: Context[Any, Any],
        workspace_id: WorkspaceId,
        job: Annotated[str, Field(description="The job's slug.")],
        version: Annotated[int | None, Field(description="The job version (default: the "
                                                         "latest).", ge=1)] = None,
        params: Annotated[dict[str, Any] | None, Field(
            description="The run's params, checked against the version's declared ones.")
        ] = None,
        idempotency_key: IdempotencyKey = None,
        labels: Annotated[dict[str, str] | None, Field(description="Labels of the run.")] = None,
        priority: Annotated[int | None, Field(description="Claim priority (higher first).")
                            ] = None,
    ) -> dict[str, Any]:
        created = await _call(of(ctx).create_job_run, workspace_id, job, version=version,
                              params=params, idempotency_key=idempotency_key, labels=labels,
                              priority=priority)
        return {"run_id": created.id, **_dump(created)}

    async def cancel_run(
        ctx: Context[Any, Any],
        run_id: RunId,
        reason: Annotated[str | None, Field(description="Why (kept in the run's events).")
                          ] = None,
    ) -> dict[str, Any]:
        return dict(_dump(await _call(of(ctx).cancel_run, run_id, reason)))

    async def repair_run(
        ctx: Context[Any, Any],
        run_id: RunId,
        phases: Annotated[list[str] | None, Field(
            description="The phases to rerun (with what did not succeed and everything "
                        "downstream); omitted: what did not succeed.")] = None,
        idempotency_key: IdempotencyKey = None,
    ) -> dict[str, Any]:
        return dict(_dump(await _call(of(ctx).repair_run, run_id, phases, idempotency_key)))

    async def claim_phase(
        ctx: Context[Any, Any],
        kinds: Annotated[list[str] | None, Field(
            description="The kinds this agent runs (e.g. [\"python\"]); omitted: any.")] = None,
        lease_seconds: Annotated[int, Field(description="The lease's length; heartbeat "
                                                        "before it ends.", ge=1)] = 60,
        run_id: Annotated[str | None, Field(description="Only a phase of this run.")] = None,
        workspace_id: OptWorkspaceId = None,
        wait_seconds: Annotated[float | None, Field(
            description="Let the gateway wait this long for work (at most 25 s, well "
                        "within a client's tool timeout; the gateway may cap it lower).",
            ge=0, le=25)
        ] = None,
    ) -> dict[str, Any]:
        claim = await _call(of(ctx).claim_phase, kinds, lease_seconds, run_id=run_id,
                            workspace_id=workspace_id, wait=wait_seconds)
        if claim is None:
            return {"claimed": False}
        return {"claimed": True, **_dump(claim)}

    async def heartbeat(
        ctx: Context[Any, Any],
        lease_token: LeaseToken,
        progress: Annotated[dict[str, Any] | None, Field(
            description="Progress to record (a JSON object).")] = None,
        lease_seconds: Annotated[int | None, Field(description="The new lease length.", ge=1)
                                 ] = None,
    ) -> dict[str, Any]:
        beat = await _call(of(ctx).heartbeat, lease_token, progress, lease_seconds)
        return dict(_dump(beat))

    async def append_events(
        ctx: Context[Any, Any],
        run_id: RunId,
        events: Annotated[list[EventIn], Field(description="The events, in order.",
                                               min_length=1)],
        lease_token: Annotated[str | None, Field(
            description="The phase's lease token (an executor's events need one).")] = None,
    ) -> dict[str, Any]:
        batch = [e.model_dump(exclude_none=True) for e in events]
        return dict(_dump(await _call(of(ctx).append_events, run_id, batch, lease_token)))

    async def register_artifact(
        ctx: Context[Any, Any],
        lease_token: LeaseToken,
        digest: Annotated[str, Field(description="The content digest, e.g. blake3:<64 hex>.")],
        uri: Annotated[str, Field(description="Where the content is stored.")],
        size_bytes: Annotated[int, Field(description="Its size in bytes.", ge=0)],
        media_type: Annotated[str | None, Field(description="e.g. text/csv.")] = None,
        kind: Annotated[str | None, Field(description="e.g. blob, table, report.")] = None,
        name: Annotated[str | None, Field(description="A name for people.")] = None,
        role: Annotated[ArtifactRole | None, Field(
            description="output (default), input, log or report.")] = None,
        metadata: Annotated[dict[str, Any] | None, Field(description="A JSON object.")] = None,
    ) -> dict[str, Any]:
        return dict(_dump(await _call(of(ctx).register_artifact, lease_token, digest, uri,
                                      size_bytes, media_type=media_type, kind=kind, name=name,
                                      role=role, metadata=metadata)))

    async def complete_phase(
        ctx: Context[Any, Any],
        lease_token: LeaseToken,
        outcome: Annotated[Outcome, Field(description="succeeded or failed.")],
        output_manifest: Annotated[dict[str, Any] | None, Field(
            description="What the phase produced (a JSON object).")] = None,
        error: Annotated[dict[str, Any] | None, Field(
            description="For a failure: {message, type, ...}.")] = None,
        retryable: Annotated[bool, Field(description="A failure may be retried.")] = True,
    ) -> dict[str, Any]:
        return dict(_dump(await _call(of(ctx).complete_phase, lease_token, outcome,
                                      output_manifest, error, retryable)))

    tool(start_job_run, operation="create_job_run",
         annotations=_write(destructive=False, idempotent=False),
         note="Answers at once with the new run's id (`run_id`); wait_for_run waits for it.")
    tool(cancel_run, operation="cancel_run", annotations=_write(destructive=True,
                                                                 idempotent=True))
    tool(repair_run, operation="repair_run", annotations=_write(destructive=False,
                                                                 idempotent=False))
    tool(claim_phase, operation="claim_phase", annotations=_write(destructive=False,
                                                                   idempotent=False),
         note="`wait_seconds` is sent as the contract's `Prefer: wait`. The answer holds the "
              "`lease_token` the other executor tools take: keep it to yourself.")
    tool(heartbeat, operation="heartbeat", annotations=_write(destructive=False,
                                                               idempotent=True))
    tool(append_events, operation="append_events", annotations=_write(destructive=False,
                                                                       idempotent=False))
    tool(register_artifact, operation="register_artifact",
         annotations=_write(destructive=False, idempotent=True))
    tool(complete_phase, operation="complete_phase",
         annotations=_write(destructive=False, idempotent=True))
