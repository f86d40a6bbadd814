"""The contract client: one typed method per operation of `openapi.yaml`, over HTTP only.

One client for every server that speaks the contract (docs/contract.md): the control-room
gateway (`http://127.0.0.1:8787/rest/v1`) and Supabase's PostgREST
(`https://<ref>.supabase.co/rest/v1`), or a plain PostgREST at its root. Each call is
`POST <base_url>/rpc/<fn>` with the named arguments as a JSON object, `Content-Profile: ops`,
`Authorization: Bearer <token>` and `apikey` (the token itself unless a project key is given,
as Supabase clients send it). This package never imports the rest of `control_room`: workers
speak HTTP. How to use it: docs/executor_client.md.

Each method is named after its operation (`create_run`, `claim_phase`, ...), takes the
operation's request properties as arguments (those left at None are not sent, so that the
function's default applies), and answers a frozen pydantic model (`models.py`); unknown fields
are ignored so that an older worker keeps working against a newer server. `call(fn, args)`
stays as the untyped escape hatch. A refusal raises a `ContractError` subclass chosen by the
body's machine code (`hint`), falling back on the HTTP status for errors PostgREST makes itself
(`errors.py`).

Retries (tenacity): a call that got no answer (connection refused or reset, a timeout) or a
502/503/504 is sent again with exponential backoff and full jitter, up to
`RetryPolicy.attempts` tries and `RetryPolicy.total` seconds; a 4xx never is. Every retried
call is idempotent on the server: `claim_phase` carries one `claim_id` for all tries of a
logical claim, `append_events` gives each event its `event_id` before the first try,
`complete_phase` answers a completed attempt again with `replayed: true` (a success here),
`heartbeat` and `register_artifact` are harmless to repeat. The functions that are not
idempotent (`create_workspace`, `remove_member`, `create_principal`, `create_run` without
`idempotency_key`) are retried only when the request surely never left (connection refused,
no connection from the pool), whether called through their method or through `call()`.

The client is synchronous and thread-safe (one `httpx.Client`): a worker shares one between
its slots and their heartbeats.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import httpx
import pydantic
from pydantic import BaseModel
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    stop_before_delay,
    wait_random_exponential,
)

from control_room.contract.errors import (
    Conflict,
    ContractError,
    Forbidden,
    InvalidArgument,
    InvalidResponse,
    LeaseLost,
    NotFound,
    PayloadTooLarge,
    ServerError,
    ServiceUnavailable,
    TransientError,
    TransportFailure,
    Unauthorized,
    error_from_body,
)
from control_room.contract.models import (
    REQUESTS,
    Alert,
    AlertDestination,
    AlertObjectDeleted,
    AlertRule,
    AppendResult,
    Artifact,
    ArtifactLink,
    ArtifactPage,
    AskAnswer,
    AuditPage,
    ChangedRunCreated,
    Claim,
    ClaimedAlert,
    ClaimedGithubCheckRun,
    ClaimedGithubStatus,
    ClaimedSensor,
    ClaimRun,
    CompleteResult,
    Connection,
    ConnectionDeleted,
    ConnectionTest,
    Dataset,
    DatasetDetail,
    DatasetRecord,
    DatasetVersion,
    DeadLetter,
    DeadLetterPage,
    DueResult,
    Event,
    EventPage,
    GithubCheckRun,
    GithubStatus,
    Health,
    HeartbeatResult,
    Invitation,
    InvitationRevoked,
    Job,
    JobDetail,
    JobListed,
    JobRegistered,
    Member,
    MemberRemoved,
    NewEvent,
    Phase,
    PhaseCompletion,
    PhaseSpec,
    Principal,
    RepairCreated,
    RequeueResult,
    Run,
    RunCreated,
    RunDetail,
    RunGrid,
    RunLineage,
    RunPage,
    RunSummary,
    RunTimeline,
    Schedule,
    ScheduleDeleted,
    ScheduleDetail,
    Sensor,
    SensorDeleted,
    SensorEvaluation,
    SloEvaluation,
    Tick,
    TickPage,
    Workspace,
    WorkspaceListItem,
)
from control_room.contract.vocabulary import (
    ArtifactRole,
    ChangeKind,
    DatasetLayer,
    Env,
    EventLevel,
    MemberRole,
    Outcome,
    PrincipalKind,
    Resolution,
    RunState,
    ScheduleCatchup,
    ScheduleOverlap,
    SchemaState,
    TickState,
)

__all__ = [
    "CLAIM_PHASES_MAX",
    "TRANSPORT_OPTIONS",
    "AppendResult",
    "Artifact",
    "ArtifactLink",
    "ArtifactPage",
    "ArtifactRole",
    "Claim",
    "ClaimRun",
    "ClaimedSensor",
    "CompleteResult",
    "Conflict",
    "Connection",
    "ConnectionDeleted",
    "ConnectionTest",
    "ContractClient",
    "ContractError",
    "Dataset",
    "DatasetDetail",
    "DatasetRecord",
    "DatasetVersion",
    "DueResult",
    "Event",
    "EventLevel",
    "EventPage",
    "Forbidden",
    "HeartbeatResult",
    "InvalidArgument",
    "InvalidResponse",
    "Invitation",
    "InvitationRevoked",
    "LeaseLost",
    "Member",
    "MemberRemoved",
    "NewEvent",
    "NotFound",
    "Outcome",
    "PayloadTooLarge",
    "Phase",
    "PhaseCompletion",
    "PhaseSpec",
    "Principal",
    "RetryPolicy",
    "Run",
    "RunCreated",
    "RunPage",
    "RunSummary",
    "Schedule",
    "ScheduleDeleted",
    "ScheduleDetail",
    "Sensor",
    "SensorDeleted",
    "SensorEvaluation",
    "ServerError",
    "ServiceUnavailable",
    "Tick",
    "TickPage",
    "TransientError",
    "TransportFailure",
    "Unauthorized",
    "Workspace",
    "WorkspaceListItem",
    "error_from_response",
]

log = logging.getLogger("control_room.contract.client")

SCHEMA = "ops"
USER_AGENT = "control-room-executor/0.1"

CLAIM_PHASES_MAX = 32
"""The most phases one `claim_phases` call claims (its `limit`)."""

TRANSPORT_OPTIONS = frozenset({"wait"})
"""Method arguments that are not request properties (`wait`: `Prefer: wait=<s>`)."""

# functions a repeat would do twice (docs/contract.md, Idempotency)
_NOT_IDEMPOTENT = frozenset({"create_workspace", "remove_member", "create_principal",
                             "create_connection", "delete_connection",
                             "create_schedule", "delete_schedule",
                             "accept_invitation", "revoke_invitation",
                             "create_alert_destination", "delete_alert_destination",
                             "create_alert_rule", "delete_alert_rule", "claim_alerts",
                             "record_alert_delivery"})
_RETRIED_STATUSES = frozenset({502, 503, 504})

_M = TypeVar("_M", bound=BaseModel)


def error_from_response(response: httpx.Response, function: str | None = None) -> ContractError:
    """The typed error for a non-2xx answer in PostgREST's `{code, message, details, hint}`."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):      # a proxy's HTML page, an API gateway's own error...
        body = {"message": response.text[:500] or response.reason_phrase}
    return error_from_body(response.status_code, body, reason=response.reason_phrase,
                           function=function)


def _parse(model: type[_M], value: Any, function: str) -> _M:
    try:
        return model.model_validate(value)
    except pydantic.ValidationError as exc:
        raise InvalidResponse(f"the answer is not a {model.__name__}: {exc}", status=200,
                              function=function) from exc


def _one(claim: Claim | None) -> list[Claim]:
    return [] if claim is None else [claim]


def _parse_list(model: type[_M], value: Any, function: str) -> list[_M]:
    if not isinstance(value, list):
        raise InvalidResponse(f"{function}: the answer is not a JSON array", status=200,
                              function=function)
    return [_parse(model, item, function) for item in value]


def _request(fn: str, args: Mapping[str, Any]) -> dict[str, Any]:
    """The request body of `fn`: `args` checked against its model (names and types, not the
    server's bounds), None values left out. A mistake raises InvalidArgument, unsent."""
    try:
        return REQUESTS[fn].model_validate(dict(args)).to_json()
    except pydantic.ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or None
        raise InvalidArgument(f"{where}: {first['msg']}" if where else str(exc),
                              code="invalid_argument",
                              details={"argument": where} if where else None,
                              function=fn) from exc


# --------------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class RetryPolicy:
    """How calls that got no answer, or a 502/503/504, are retried.

    `attempts` tries at most (the first included), no new try once `total` seconds would be
    exceeded by its wait; the wait before try n+1 is uniform in [0, min(max_wait,
    initial * 2^n)] (exponential backoff, full jitter).
    """

    attempts: int = 5
    initial: float = 0.25
    max_wait: float = 5.0
    total: float = 30.0

    @classmethod
    def never(cls) -> RetryPolicy:
        return cls(attempts=1)


def _wait_header(seconds: float) -> str:
    return "wait=" + f"{seconds:.3f}".rstrip("0").rstrip(".")


# ---------------------------------------------------------------------------------- client


class ContractClient:
    """A client of the contract (one per token; thread-safe).

    `base_url` is the contract's REST root: `http://127.0.0.1:8787/rest/v1` (gateway),
    `https://<ref>.supabase.co/rest/v1` (Supabase). `token` is the principal's JWT; `apikey`
    the project's API key on Supabase (defaults to the token). `timeout` (seconds or an
    `httpx.Timeout`) applies per try; a waiting claim extends its read timeout by the wait.
    `transport` and `sleep` are for tests; `headers` are sent with every call.
    """

    def __init__(self, base_url: str, token: str, *, apikey: str | None = None,
                 timeout: float | httpx.Timeout = 30.0, retry: RetryPolicy | None = None,
                 headers: Mapping[str, str] | None = None,
                 transport: httpx.BaseTransport | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.base_url = base_url.rstrip("/")
        self.retry = retry or RetryPolicy()
        self.timeout = timeout if isinstance(timeout, httpx.Timeout) else httpx.Timeout(
            timeout, connect=min(timeout, 10.0))
        self._sleep = sleep
        all_headers = {
            "Authorization": f"Bearer {token}",
            "apikey": apikey if apikey is not None else token,
            "Content-Profile": SCHEMA,
            "Accept": "application/json",
            "User-Agent": USER_AGENT,
        }
        all_headers.update(headers or {})
        self._http = httpx.Client(base_url=self.base_url, headers=all_headers,
                                  timeout=self.timeout, transport=transport)
        # whether the server honours `Prefer: wait` (None: not known yet); see poll_for_work
        self.wait_supported: bool | None = None
        self._lock = threading.Lock()

    def __enter__(self) -> ContractClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # -- the generic call -----------------------------------------------------------------

    def call(self, fn: str, args: Mapping[str, Any] | None = None, *,
             idempotent: bool | None = None, wait: float | None = None) -> Any:
        """Call contract function `fn` with named `args`; answer its JSON (None for null).

        Retries per the policy; `idempotent` (default: known from the contract) False limits
        retries to requests that surely never left. `wait` sends `Prefer: wait=<s>`.
        """
        body = dict(args or {})
        if idempotent is None:
            idempotent = fn not in _NOT_IDEMPOTENT and not (
                fn in ("create_run", "create_job_run", "create_changed_run")
                and body.get("idempotency_key") is None)
        headers: dict[str, str] = {}
        timeout = self.timeout
        if wait is not None and wait > 0:
            headers["Prefer"] = _wait_header(wait)
            read = self.timeout.read
            timeout = httpx.Timeout(
                connect=self.timeout.connect, write=self.timeout.write, pool=self.timeout.pool,
                read=None if read is None else read + wait)
        content = json.dumps(body, separators=(",", ":"), default=_json_default).encode()
        policy = self.retry
        retrying = Retrying(
            stop=stop_after_attempt(policy.attempts) | stop_before_delay(policy.total),
            wait=wait_random_exponential(multiplier=policy.initial, max=policy.max_wait),
            retry=retry_if_exception(_retryable if idempotent else _surely_unsent),
            before_sleep=_log_retry(fn),
            sleep=self._sleep,
            reraise=True,
        )
        return retrying(self._send, fn, content, headers, timeout)

    def _send(self, fn: str, content: bytes, headers: dict[str, str],
              timeout: httpx.Timeout) -> Any:
        try:
            response = self._http.post(
                f"/rpc/{fn}", content=content, timeout=timeout,
                headers={"Content-Type": "application/json", **headers})
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            raise TransportFailure(f"no connection: {exc!r}", sent=False, function=fn) from exc
        except (httpx.NetworkError, httpx.TimeoutException, httpx.RemoteProtocolError) as exc:
            raise TransportFailure(f"no answer: {exc!r}", sent=True, function=fn) from exc
        if not response.is_success:
            raise error_from_response(response, fn)
        if not response.content.strip():
            return None
        try:
            return response.json()
        except ValueError as exc:
            raise InvalidResponse(f"the answer is not JSON: {response.text[:200]!r}",
                                  status=response.status_code, function=fn) from exc

    def _rpc(self, fn: str, args: Mapping[str, Any], *, wait: float | None = None) -> Any:
        """Call `fn` with `args` checked and cleaned by its request model."""
        return self.call(fn, _request(fn, args), wait=wait)

    # -- ask (not an RPC: POST <origin>/ask/v1/ask, docs/ask.md) ---------------------------

    def ask(self, workspace_id: str, question: str, *, today: str | None = None,
            timeout: float | None = None) -> AskAnswer:
        """Ask a question about the workspace's gold (the gateway's semantic layer): an
        answer (rows, SQL, metric definitions, lineage), a clarifying question with the
        candidate readings, or a refusal. `today` (ISO date) anchors relative time
        ("last quarter"). Served beside the contract, at the origin of `base_url`; errors
        are the contract's (ServiceUnavailable with hint warehouse_not_configured when the
        gateway has no warehouse: not retried). Read-only, so retried as the policy says."""
        origin = self.base_url.removesuffix("/rest/v1")
        body: dict[str, Any] = {"workspace_id": workspace_id, "question": question}
        if today is not None:
            body["today"] = today
        content = json.dumps(body, separators=(",", ":")).encode()
        policy = self.retry
        retrying = Retrying(
            stop=stop_after_attempt(policy.attempts) | stop_before_delay(policy.total),
            wait=wait_random_exponential(multiplier=policy.initial, max=policy.max_wait),
            retry=retry_if_exception(lambda e: _retryable(e) and getattr(
                e, "hint", None) != "warehouse_not_configured"),
            before_sleep=_log_retry("ask"),
            sleep=self._sleep, reraise=True)
        read = httpx.Timeout(timeout) if timeout is not None else self.timeout

        def send() -> Any:
            try:
                response = self._http.post(f"{origin}/ask/v1/ask", content=content,
                                           timeout=read,
                                           headers={"Content-Type": "application/json"})
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
                raise TransportFailure(f"no connection: {exc!r}", sent=False,
                                       function="ask") from exc
            except (httpx.NetworkError, httpx.TimeoutException,
                    httpx.RemoteProtocolError) as exc:
                raise TransportFailure(f"no answer: {exc!r}", sent=True,
                                       function="ask") from exc
            if not response.is_success:
                raise error_from_response(response, "ask")
            return response.json()

        return _parse(AskAnswer, retrying(send), "ask")

    # -- workspaces, members and principals -----------------------------------------------

    def create_workspace(self, slug: str, name: str, env: Env | None = None) -> Workspace:
        """A new workspace with the caller as its admin (`env` default dev). Not idempotent:
        a repeat is Conflict (slug taken), so it is re-sent only when surely unsent."""
        args = {"slug": slug, "name": name, "env": env}
        return _parse(Workspace, self._rpc("create_workspace", args), "create_workspace")

    def add_member(self, workspace_id: str, principal_id: str, role: MemberRole,
                   name: str | None = None) -> Member:
        """Make a principal a member with this role, or change its role (an upsert)."""
        args = {"workspace_id": workspace_id, "principal_id": principal_id, "role": role,
                "name": name}
        return _parse(Member, self._rpc("add_member", args), "add_member")

    def remove_member(self, workspace_id: str, principal_id: str) -> MemberRemoved:
        """End a membership (not idempotent: a repeat is NotFound)."""
        args = {"workspace_id": workspace_id, "principal_id": principal_id}
        return _parse(MemberRemoved, self._rpc("remove_member", args), "remove_member")

    def create_principal(self, name: str, kind: PrincipalKind | None = None,
                         workspace_id: str | None = None) -> Principal:
        """A new principal (`kind` default executor) owned by `workspace_id` (its admin may
        create one; without a workspace, service_role only). Not idempotent."""
        args = {"name": name, "kind": kind, "workspace_id": workspace_id}
        return _parse(Principal, self._rpc("create_principal", args), "create_principal")

    def invite_member(self, workspace_id: str, principal_id: str, role: MemberRole,
                      name: str | None = None,
                      expires_in_seconds: int | None = None) -> Invitation:
        """Invite a principal the workspace does not own (admin); it joins when it accepts.
        Inviting again renews the invitation."""
        args = {"workspace_id": workspace_id, "principal_id": principal_id, "role": role,
                "name": name, "expires_in_seconds": expires_in_seconds}
        return _parse(Invitation, self._rpc("invite_member", args), "invite_member")

    def accept_invitation(self, workspace_id: str) -> Member:
        """Accept the caller's own pending invitation (never an executor). Not idempotent."""
        return _parse(Member, self._rpc("accept_invitation", {"workspace_id": workspace_id}),
                      "accept_invitation")

    def revoke_invitation(self, workspace_id: str, principal_id: str) -> InvitationRevoked:
        """Withdraw a pending invitation (admin). Not idempotent: a repeat is NotFound."""
        args = {"workspace_id": workspace_id, "principal_id": principal_id}
        return _parse(InvitationRevoked, self._rpc("revoke_invitation", args),
                      "revoke_invitation")

    def list_invitations(self, workspace_id: str) -> list[Invitation]:
        """The workspace's invitations, newest first (admin)."""
        return _parse_list(Invitation,
                           self._rpc("list_invitations", {"workspace_id": workspace_id}),
                           "list_invitations")

    def list_audit(self, workspace_id: str, *, before: int | None = None,
                   limit: int | None = None, function_name: str | None = None,
                   principal_id: str | None = None) -> AuditPage:
        """The workspace's audit log, newest first (admin); pass `next_before` as `before`
        for the next page."""
        args = {"workspace_id": workspace_id, "before": before, "limit": limit,
                "function_name": function_name, "principal_id": principal_id}
        return _parse(AuditPage, self._rpc("list_audit", args), "list_audit")

    def revoke_principal(self, principal_id: str) -> Principal:
        """Revoke a principal: its tokens and leases stop working (idempotent)."""
        return _parse(Principal, self._rpc("revoke_principal", {"principal_id": principal_id}),
                      "revoke_principal")

    def list_workspaces(self) -> list[WorkspaceListItem]:
        """The workspaces the caller may see, with its role in each."""
        return _parse_list(WorkspaceListItem, self._rpc("list_workspaces", {}),
                           "list_workspaces")

    # -- runs -------------------------------------------------------------------------------

    def create_run(self, workspace_id: str, spec_slug: str, git_sha: str,
                   phases: Sequence[PhaseSpec | Mapping[str, Any]], *,
                   input_manifest: Mapping[str, Any] | None = None,
                   idempotency_key: str | None = None,
                   labels: Mapping[str, str] | None = None,
                   priority: int | None = None) -> RunCreated:
        """Create a run of these phases (`created` False: the `idempotency_key` named an
        earlier run with the same arguments). Without a key every call creates a run, so it
        is re-sent only when surely unsent."""
        args = {"workspace_id": workspace_id, "spec_slug": spec_slug, "git_sha": git_sha,
                "phases": [p.to_json() if isinstance(p, PhaseSpec) else dict(p)
                           for p in phases],
                "input_manifest": _dict(input_manifest), "idempotency_key": idempotency_key,
                "labels": _dict(labels), "priority": priority}
        return _parse(RunCreated, self._rpc("create_run", args), "create_run")

    def cancel_run(self, run_id: str, reason: str | None = None) -> Run:
        """Cancel a run (a cancelled run is returned unchanged; Conflict once finished)."""
        args = {"run_id": run_id, "reason": reason}
        return _parse(Run, self._rpc("cancel_run", args), "cancel_run")

    def retry_run(self, run_id: str, idempotency_key: str | None = None) -> RunCreated:
        """A new run of a failed or cancelled one, reusing its succeeded phases (the key
        defaults to `retry-of:<run_id>`, so a repeat answers the same child)."""
        args = {"run_id": run_id, "idempotency_key": idempotency_key}
        return _parse(RunCreated, self._rpc("retry_run", args), "retry_run")

    def repair_run(self, run_id: str, phases: Sequence[str] | None = None,
                   idempotency_key: str | None = None) -> RepairCreated:
        """A child of a finished run that reruns `phases`, what did not succeed and everything
        downstream, reusing the rest (docs/repair.md); Conflict while another is active."""
        args = {"run_id": run_id, "phases": None if phases is None else list(phases),
                "idempotency_key": idempotency_key}
        return _parse(RepairCreated, self._rpc("repair_run", args), "repair_run")

    def list_dead_letters(self, workspace_id: str, *, spec_slug: str | None = None,
                          since: datetime | str | None = None, limit: int | None = None,
                          cursor: str | None = None) -> DeadLetterPage:
        """Failed phases no repair has rerun to an end, newest first; follow `next_cursor`."""
        args = {"workspace_id": workspace_id, "spec_slug": spec_slug,
                "since": since.isoformat() if isinstance(since, datetime) else since,
                "limit": limit, "cursor": cursor}
        return _parse(DeadLetterPage, self._rpc("list_dead_letters", args), "list_dead_letters")

    def iter_dead_letters(self, workspace_id: str, *, spec_slug: str | None = None,
                          page_size: int = 100) -> Iterator[DeadLetter]:
        """Every dead letter of the workspace, following the cursor."""
        cursor: str | None = None
        while True:
            page = self.list_dead_letters(workspace_id, spec_slug=spec_slug, limit=page_size,
                                          cursor=cursor)
            yield from page.dead_letters
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    def requeue_dead_letters(self, workspace_id: str, phase_ids: Sequence[str]) -> RequeueResult:
        """One repair per run of these dead letters (an active one is returned, not doubled)."""
        args = {"workspace_id": workspace_id, "phase_ids": list(phase_ids)}
        return _parse(RequeueResult, self._rpc("requeue_dead_letters", args),
                      "requeue_dead_letters")

    def get_run(self, run_id: str) -> RunDetail:
        """A run with its phases and lineage; NotFound when there is none visible."""
        return _parse(RunDetail, self._rpc("get_run", {"run_id": run_id}), "get_run")

    def list_runs(self, workspace_id: str | None = None, *, state: RunState | None = None,
                  spec_slug: str | None = None, labels: Mapping[str, str] | None = None,
                  parent_run_id: str | None = None, limit: int | None = None,
                  cursor: str | None = None, job_slug: str | None = None,
                  git_sha: str | None = None, env: str | None = None,
                  created_after: datetime | str | None = None,
                  created_before: datetime | str | None = None) -> RunPage:
        """The newest runs first; pass `next_cursor` as `cursor` to continue. `git_sha` is
        a prefix (at least 4 hex digits); `created_after` / `created_before` a time range."""
        args = {"workspace_id": workspace_id, "state": state, "spec_slug": spec_slug,
                "labels": _dict(labels), "parent_run_id": parent_run_id, "limit": limit,
                "cursor": cursor, "job_slug": job_slug, "git_sha": git_sha, "env": env,
                "created_after": _iso(created_after), "created_before": _iso(created_before)}
        return _parse(RunPage, self._rpc("list_runs", args), "list_runs")

    def get_run_timeline(self, run_id: str) -> RunTimeline:
        """Every phase of the run with its attempts (claimed, started, ended, outcome)."""
        return _parse(RunTimeline, self._rpc("get_run_timeline", {"run_id": run_id}),
                      "get_run_timeline")

    def get_run_grid(self, workspace_id: str, *, job_slug: str | None = None,
                     spec_slug: str | None = None, limit: int | None = None) -> RunGrid:
        """The runs x phases grid of the newest runs of a job (or spec)."""
        args = {"workspace_id": workspace_id, "job_slug": job_slug, "spec_slug": spec_slug,
                "limit": limit}
        return _parse(RunGrid, self._rpc("get_run_grid", args), "get_run_grid")

    def get_run_lineage(self, run_id: str) -> RunLineage:
        """The run's table lineage: datasets and phases, edges input -> phase -> output."""
        return _parse(RunLineage, self._rpc("get_run_lineage", {"run_id": run_id}),
                      "get_run_lineage")

    def get_health(self, workspace_id: str, *, since: datetime | str | None = None,
                   bucket_seconds: int | None = None) -> Health:
        """The workspace's health: queue, outcomes and durations over time, freshness,
        alerts, dead letters."""
        args = {"workspace_id": workspace_id, "since": _iso(since),
                "bucket_seconds": bucket_seconds}
        return _parse(Health, self._rpc("get_health", args), "get_health")

    def iter_runs(self, workspace_id: str | None = None, *, state: RunState | None = None,
                  spec_slug: str | None = None, labels: Mapping[str, str] | None = None,
                  parent_run_id: str | None = None,
                  page_size: int = 100) -> Iterator[RunSummary]:
        """Every run `list_runs` answers for these filters, following the cursor."""
        cursor: str | None = None
        while True:
            page = self.list_runs(workspace_id, state=state, spec_slug=spec_slug,
                                  labels=labels, parent_run_id=parent_run_id,
                                  limit=page_size, cursor=cursor)
            yield from page.runs
            if page.next_cursor is None or not page.runs:
                return
            cursor = page.next_cursor

    def complete_run(self, run_id: str, output_manifest: Mapping[str, Any] | None = None) -> Run:
        """Finalize a succeeded run (idempotent); Conflict when it has not succeeded."""
        args = {"run_id": run_id, "output_manifest": _dict(output_manifest)}
        return _parse(Run, self._rpc("complete_run", args), "complete_run")

    # -- the executor's calls ---------------------------------------------------------------

    def claim_phase(self, kinds: Sequence[str] | None = None, lease_seconds: int = 60, *,
                    run_id: str | None = None, workspace_id: str | None = None,
                    wait: float | None = None, claim_id: str | None = None) -> Claim | None:
        """Claim the best runnable phase of these kinds, or None.

        One `claim_id` (the caller's, else a new UUID) is sent on every try, so a retry after
        a lost answer returns the lease the lost answer held. `wait` asks the server to wait
        that long for work (`Prefer: wait`; the gateway honours it, PostgREST answers at once).
        """
        args = {"kinds": list(kinds) if kinds is not None else None,
                "lease_seconds": lease_seconds, "run_id": run_id, "workspace_id": workspace_id,
                "claim_id": claim_id or str(uuid.uuid4())}
        result = self._rpc("claim_phase", args, wait=wait)
        return None if result is None else _parse(Claim, result, "claim_phase")

    def claim_phases(self, kinds: Sequence[str] | None = None, lease_seconds: int = 60,
                     limit: int = 10, *, run_id: str | None = None,
                     workspace_id: str | None = None, wait: float | None = None,
                     claim_id: str | None = None) -> list[Claim]:
        """Claim up to `limit` phases in one call (each its own lease); [] when none is
        runnable. `claim_id` and `wait` as for `claim_phase`: a retry after a lost answer
        returns the leases the lost answer held."""
        args = {"kinds": list(kinds) if kinds is not None else None,
                "lease_seconds": lease_seconds, "limit": limit, "run_id": run_id,
                "workspace_id": workspace_id, "claim_id": claim_id or str(uuid.uuid4())}
        result = self._rpc("claim_phases", args, wait=wait)
        return _parse_list(Claim, [] if result is None else result, "claim_phases")

    def heartbeat(self, lease_token: str, progress: Mapping[str, Any] | None = None,
                  lease_seconds: int | None = None) -> HeartbeatResult:
        """Extend the lease; `cancel_requested` says to stop. LeaseLost: stop at once."""
        args = {"lease_token": lease_token, "progress": _dict(progress),
                "lease_seconds": lease_seconds}
        return _parse(HeartbeatResult, self._rpc("heartbeat", args), "heartbeat")

    def append_events(self, run_id: str, events: Sequence[NewEvent | Mapping[str, Any]],
                      lease_token: str | None = None) -> AppendResult:
        """Append events to the run's stream; each is stored once whatever the retries.

        A mapping without `event_id` gets one here, before the first try; the ids sent are in
        the result's `event_ids` (resend the same ids if you send the batch again yourself).
        """
        batch: list[dict[str, Any]] = []
        for event in events:
            item = event.to_json() if isinstance(event, NewEvent) else dict(event)
            item.setdefault("event_id", str(uuid.uuid4()))
            batch.append(item)
        args = {"run_id": run_id, "events": batch, "lease_token": lease_token}
        result = self._rpc("append_events", args)
        if isinstance(result, dict):
            result = {**result, "event_ids": [str(item["event_id"]) for item in batch]}
        return _parse(AppendResult, result, "append_events")

    def register_artifact(self, lease_token: str, digest: str, uri: str, size_bytes: int, *,
                          media_type: str | None = None, kind: str | None = None,
                          name: str | None = None, role: ArtifactRole | None = None,
                          metadata: Mapping[str, Any] | None = None) -> Artifact:
        """Register a content-addressed artifact and link it to the leased phase (idempotent).

        Arguments left at None take the server's defaults (application/octet-stream, blob,
        the digest as name, output, {}).
        """
        args = {"lease_token": lease_token, "digest": digest, "uri": uri,
                "size_bytes": size_bytes, "media_type": media_type, "kind": kind, "name": name,
                "role": role, "metadata": _dict(metadata)}
        return _parse(Artifact, self._rpc("register_artifact", args), "register_artifact")

    def complete_phase(self, lease_token: str, outcome: Outcome,
                       output_manifest: Mapping[str, Any] | None = None, error: Any = None,
                       retryable: bool = True) -> CompleteResult:
        """Report the attempt's outcome. A repeat of a completed attempt (e.g. a retry after
        a lost answer) answers `replayed: true`: a success, nothing written twice."""
        args = {"lease_token": lease_token, "outcome": outcome,
                "output_manifest": _dict(output_manifest), "error": error,
                "retryable": retryable}
        return _parse(CompleteResult, self._rpc("complete_phase", args), "complete_phase")

    def complete_phases(self, completions: Sequence[Mapping[str, Any]]) -> list[PhaseCompletion]:
        """Several completions in one call, each a mapping of `complete_phase`'s arguments
        (`lease_token`, `outcome`, ...); one answer per completion, in order. A completion
        whose lease was lost answers `.lost` (nothing written for it); any other error fails
        the whole call with nothing written."""
        args = {"completions": [dict(c) for c in completions]}
        return _parse_list(PhaseCompletion, self._rpc("complete_phases", args),
                           "complete_phases")

    # -- reading events and artifacts -------------------------------------------------------

    def list_events(self, run_id: str, after: int = 0, limit: int | None = None,
                    phase: str | None = None, *, before: int | None = None,
                    types: Sequence[str] | None = None,
                    levels: Sequence[EventLevel] | None = None,
                    text: str | None = None) -> EventPage:
        """Events with `seq > after`, in order; pass `next_after` as `after` to continue.
        With `before`: the `limit` events just before it (pass `prev_before` to page back).
        `types`, `levels` and `text` (a case-insensitive substring of the message) filter."""
        args = {"run_id": run_id, "after": after, "limit": limit, "phase": phase,
                "before": before, "types": list(types) if types is not None else None,
                "levels": list(levels) if levels is not None else None, "text": text}
        return _parse(EventPage, self._rpc("list_events", args), "list_events")

    def iter_events(self, run_id: str, after: int = 0, phase: str | None = None,
                    page_size: int = 1000) -> Iterator[Event]:
        """Every event after `after` visible now, following the cursor page by page."""
        while True:
            page = self.list_events(run_id, after=after, limit=page_size, phase=phase)
            yield from page.events
            if len(page.events) < page_size:
                return
            after = page.next_after

    def list_artifacts(self, run_id: str | None = None, *, workspace_id: str | None = None,
                       digest: str | None = None, limit: int | None = None,
                       after: int | None = None) -> ArtifactPage:
        """Artifact links with `id > after`, in order; pass `next_after` as `after`."""
        args = {"run_id": run_id, "workspace_id": workspace_id, "digest": digest,
                "limit": limit, "after": after}
        return _parse(ArtifactPage, self._rpc("list_artifacts", args), "list_artifacts")

    def iter_artifacts(self, run_id: str | None = None, *, workspace_id: str | None = None,
                       digest: str | None = None, after: int = 0,
                       page_size: int = 500) -> Iterator[ArtifactLink]:
        """Every artifact link `list_artifacts` answers, following the cursor."""
        while True:
            page = self.list_artifacts(run_id, workspace_id=workspace_id, digest=digest,
                                       limit=page_size, after=after)
            yield from page.artifacts
            if len(page.artifacts) < page_size:
                return
            after = page.next_after

    # -- the data catalog -----------------------------------------------------------------

    def record_dataset(self, lease_token: str, name: str, location: str, *,
                       layer: DatasetLayer | None = None, format: str | None = None,
                       schema: Any = None, change: ChangeKind | None = None,
                       changes: Sequence[Mapping[str, Any]] | None = None,
                       table_version: int | None = None, digest: str | None = None,
                       rows: int | None = None, owner: str | None = None,
                       tags: Sequence[str] | None = None) -> DatasetRecord:
        """Record a table the leased phase wrote (or the BREAKING change it was refused).
        Idempotent: a repeat of the same write answers the version it recorded, so it is
        retried like the other leased calls. `Conflict` (PT409): the dataset is blocked and
        `change` is not BREAKING; `LeaseLost`: stop. Arguments left at None take the
        server's defaults (delta, NONE, [] ...; the layer from the name's prefix)."""
        args = {"lease_token": lease_token, "name": name, "location": location,
                "layer": layer, "format": format, "schema": schema, "change": change,
                "changes": [dict(c) for c in changes] if changes is not None else None,
                "table_version": table_version, "digest": digest, "rows": rows,
                "owner": owner, "tags": list(tags) if tags is not None else None}
        return _parse(DatasetRecord, self._rpc("record_dataset", args), "record_dataset")

    def list_datasets(self, workspace_id: str | None = None, *,
                      layer: DatasetLayer | None = None,
                      schema_state: SchemaState | None = None, name: str | None = None,
                      limit: int | None = None) -> list[Dataset]:
        """The datasets the caller may see, by name; `name` matches a prefix, `limit` is
        1-1000 (default 100)."""
        args = {"workspace_id": workspace_id, "layer": layer, "schema_state": schema_state,
                "name": name, "limit": limit}
        return _parse_list(Dataset, self._rpc("list_datasets", args), "list_datasets")

    def get_dataset(self, workspace_id: str, name: str) -> DatasetDetail:
        """One dataset with its `versions`, newest first; `NotFound` when there is none."""
        args = {"workspace_id": workspace_id, "name": name}
        return _parse(DatasetDetail, self._rpc("get_dataset", args), "get_dataset")

    def unblock_dataset(self, workspace_id: str, name: str, resolution: Resolution,
                        note: str | None = None) -> Dataset:
        """An admin's answer to a blocked schema change: `accept` (the next write applies
        it) or `reject` (the schema stays; fix the source). Idempotent."""
        args = {"workspace_id": workspace_id, "name": name, "resolution": resolution,
                "note": note}
        return _parse(Dataset, self._rpc("unblock_dataset", args), "unblock_dataset")

    # -- connections ----------------------------------------------------------------------

    def create_connection(self, workspace_id: str, name: str, type: str, *,
                          config: Mapping[str, Any] | None = None,
                          secrets: Mapping[str, str] | None = None,
                          description: str | None = None) -> Connection:
        """Register a connection of the workspace (admin): `type` (postgres, s3, trino, spark,
        http, dbt-profile), non-secret `config`, and `secrets` as field -> reference
        (`env:NAME`, `file:/absolute/path`), never values. Not idempotent: a repeat is
        Conflict (the name is taken)."""
        args = {"workspace_id": workspace_id, "name": name, "type": type,
                "config": _dict(config), "secrets": _dict(secrets), "description": description}
        return _parse(Connection, self._rpc("create_connection", args), "create_connection")

    def update_connection(self, workspace_id: str, name: str, *,
                          config: Mapping[str, Any] | None = None,
                          secrets: Mapping[str, str] | None = None,
                          description: str | None = None) -> Connection:
        """Change a connection (admin): a given `config` or `secrets` replaces the whole of
        it (that is how a secret is rotated), `description` "" clears it; None keeps. A
        change is a new `version`; the same values again are not. Idempotent."""
        args = {"workspace_id": workspace_id, "name": name, "config": _dict(config),
                "secrets": _dict(secrets), "description": description}
        return _parse(Connection, self._rpc("update_connection", args), "update_connection")

    def delete_connection(self, workspace_id: str, name: str) -> ConnectionDeleted:
        """Delete a connection and its secret references (admin). Not idempotent: a repeat
        is NotFound."""
        args = {"workspace_id": workspace_id, "name": name}
        return _parse(ConnectionDeleted, self._rpc("delete_connection", args),
                      "delete_connection")

    def list_connections(self, workspace_id: str) -> list[Connection]:
        """The workspace's connections, by name (any member)."""
        return _parse_list(Connection,
                           self._rpc("list_connections", {"workspace_id": workspace_id}),
                           "list_connections")

    def get_connection(self, workspace_id: str, name: str) -> Connection:
        """One connection (any member); `NotFound` when there is none."""
        args = {"workspace_id": workspace_id, "name": name}
        return _parse(Connection, self._rpc("get_connection", args), "get_connection")

    def record_connection_test(self, workspace_id: str, name: str, ok: bool,
                               message: str) -> Connection:
        """Record the result of testing a connection (developer or admin): `message` is
        capped at 500 characters, passwords in URLs and DSNs redacted. Idempotent."""
        args = {"workspace_id": workspace_id, "name": name, "ok": ok, "message": message}
        return _parse(Connection, self._rpc("record_connection_test", args),
                      "record_connection_test")

    # -- jobs -----------------------------------------------------------------------------

    def register_job(self, workspace_id: str, slug: str, spec: Mapping[str, Any], digest: str,
                     git_sha: str, *, description: str | None = None,
                     owner: str | None = None,
                     tags: Mapping[str, str] | None = None) -> JobRegistered:
        """Register a job's spec (developer or admin): a new version only when `(digest,
        git_sha)` differs from the latest version's (`created` False otherwise). Idempotent."""
        args = {"workspace_id": workspace_id, "slug": slug, "spec": dict(spec), "digest": digest,
                "git_sha": git_sha, "description": description, "owner": owner,
                "tags": dict(tags or {})}
        return _parse(JobRegistered, self._rpc("register_job", args), "register_job")

    def list_jobs(self, workspace_id: str) -> list[JobListed]:
        """The workspace's jobs, by slug, with their last and next runs (any member)."""
        return _parse_list(JobListed, self._rpc("list_jobs", {"workspace_id": workspace_id}),
                           "list_jobs")

    def get_job(self, workspace_id: str, slug: str) -> JobDetail:
        """A job, its versions and its recent runs (any member); `NotFound` when there is
        none."""
        args = {"workspace_id": workspace_id, "slug": slug}
        return _parse(JobDetail, self._rpc("get_job", args), "get_job")

    def set_job_slo(self, workspace_id: str, job: str, freshness_seconds: int) -> Job:
        """Set a job's freshness SLO, in seconds (developer or admin; 60 s to 366 days,
        default 900). Audited when it changes."""
        args = {"workspace_id": workspace_id, "job": job, "freshness_seconds": freshness_seconds}
        return _parse(Job, self._rpc("set_job_slo", args), "set_job_slo")

    def set_job_concurrency(self, workspace_id: str, job: str,
                            max_concurrent_runs: int | None = None) -> Job:
        """Limit the runs of a job its schedules and sensors may have queued or running at
        once (developer or admin; None: no limit)."""
        args = {"workspace_id": workspace_id, "job": job,
                "max_concurrent_runs": max_concurrent_runs}
        return _parse(Job, self._rpc("set_job_concurrency", args), "set_job_concurrency")

    def evaluate_slos(self, workspace_id: str | None = None,
                      limit: int | None = None) -> SloEvaluation:
        """Compare each job's freshness with its SLO (service_role: every workspace; a
        developer or admin: its own, or `workspace_id`'s); a new breach raises `slo_breached`
        once."""
        args = {"workspace_id": workspace_id, "limit": limit}
        return _parse(SloEvaluation, self._rpc("evaluate_slos", args), "evaluate_slos")

    def create_job_run(self, workspace_id: str, job: str, *, version: int | None = None,
                       params: Mapping[str, Any] | None = None,
                       idempotency_key: str | None = None,
                       labels: Mapping[str, str] | None = None,
                       priority: int | None = None) -> RunCreated:
        """A run of a job's version (the latest when `version` is None), its `params` checked
        against the version's declared types (developer or admin). Without a key every call
        creates a run, so it is re-sent only when surely unsent."""
        args = {"workspace_id": workspace_id, "job": job, "version": version,
                "params": dict(params or {}), "idempotency_key": idempotency_key,
                "labels": _dict(labels), "priority": priority}
        return _parse(RunCreated, self._rpc("create_job_run", args), "create_job_run")

    def create_changed_run(self, workspace_id: str, job: str, base_run_id: str,
                           changed: Mapping[str, str], *, version: int | None = None,
                           params: Mapping[str, Any] | None = None,
                           idempotency_key: str | None = None,
                           labels: Mapping[str, str] | None = None,
                           priority: int | None = None) -> ChangedRunCreated:
        """A run of a job's version that reruns only what changed since `base_run_id` (a
        succeeded run of the job) and everything downstream, reusing the base's outputs for
        the rest; `changed` names the phases whose code changed (phase -> why), the control
        plane adds the spec and param changes it sees (docs/github.md, "Only what changed")."""
        args = {"workspace_id": workspace_id, "job": job, "base_run_id": base_run_id,
                "changed": dict(changed), "version": version, "params": dict(params or {}),
                "idempotency_key": idempotency_key, "labels": _dict(labels),
                "priority": priority}
        return _parse(ChangedRunCreated, self._rpc("create_changed_run", args),
                      "create_changed_run")

    # -- alerts -----------------------------------------------------------------------------

    def create_alert_destination(self, workspace_id: str, name: str, type: str, url: str, *,
                                 headers: Mapping[str, str] | None = None,
                                 description: str | None = None) -> AlertDestination:
        """Register where alerts go (admin): `type` webhook or slack; `url` a secret
        reference (`env:NAME`, `file:/path`) or, for a webhook, a literal http(s) URL without
        credentials; `headers` name -> reference. Not idempotent (a repeat is Conflict)."""
        args = {"workspace_id": workspace_id, "name": name, "type": type, "url": url,
                "headers": _dict(headers), "description": description}
        return _parse(AlertDestination, self._rpc("create_alert_destination", args),
                      "create_alert_destination")

    def list_alert_destinations(self, workspace_id: str) -> list[AlertDestination]:
        """The workspace's alert destinations, by name (developer or admin)."""
        return _parse_list(AlertDestination,
                           self._rpc("list_alert_destinations", {"workspace_id": workspace_id}),
                           "list_alert_destinations")

    def delete_alert_destination(self, workspace_id: str, name: str) -> AlertObjectDeleted:
        """Delete a destination no rule uses, and its alerts (admin). Not idempotent."""
        args = {"workspace_id": workspace_id, "name": name}
        return _parse(AlertObjectDeleted, self._rpc("delete_alert_destination", args),
                      "delete_alert_destination")

    def create_alert_rule(self, workspace_id: str, name: str, event: str, destination: str, *,
                          threshold: int | None = None,
                          filters: Mapping[str, Any] | None = None,
                          enabled: bool | None = None,
                          description: str | None = None) -> AlertRule:
        """Add an alert rule (admin): `event` (run_failed, phase_dead_lettered,
        schedule_tick_failed, lease_expiries with `threshold` per hour, slo_breached), the
        `destination`'s name, `filters` (spec_slug, job, labels). Not idempotent."""
        args = {"workspace_id": workspace_id, "name": name, "event": event,
                "destination": destination, "threshold": threshold, "filters": _dict(filters),
                "enabled": enabled, "description": description}
        return _parse(AlertRule, self._rpc("create_alert_rule", args), "create_alert_rule")

    def list_alert_rules(self, workspace_id: str) -> list[AlertRule]:
        """The workspace's alert rules, by name (developer or admin)."""
        return _parse_list(AlertRule,
                           self._rpc("list_alert_rules", {"workspace_id": workspace_id}),
                           "list_alert_rules")

    def delete_alert_rule(self, workspace_id: str, name: str) -> AlertObjectDeleted:
        """Delete an alert rule (admin); its alerts stay. Not idempotent."""
        args = {"workspace_id": workspace_id, "name": name}
        return _parse(AlertObjectDeleted, self._rpc("delete_alert_rule", args),
                      "delete_alert_rule")

    def list_alerts(self, workspace_id: str, *, state: str | None = None,
                    limit: int | None = None) -> list[Alert]:
        """Recent alerts of the workspace, newest first, with their delivery attempts (any
        member but executors); `limit` 1-500 (default 50)."""
        args = {"workspace_id": workspace_id, "state": state, "limit": limit}
        return _parse_list(Alert, self._rpc("list_alerts", args), "list_alerts")

    def claim_alerts(self, limit: int | None = None,
                     lease_seconds: int | None = None) -> list[ClaimedAlert]:
        """Lease pending alerts that are due (service_role: the deliverer). Not retried: a
        lost answer leaves its alerts leased until the lease expires."""
        args = {"limit": limit, "lease_seconds": lease_seconds}
        return _parse_list(ClaimedAlert, self._rpc("claim_alerts", args), "claim_alerts")

    def record_alert_delivery(self, alert_id: str, ok: bool, *, http_status: int | None = None,
                              error: str | None = None,
                              duration_ms: int | None = None) -> Alert:
        """Record one delivery attempt of a leased alert (service_role): delivered when `ok`,
        else pending after a backoff, failed after its last attempt. A repeat is Conflict."""
        args = {"alert_id": alert_id, "ok": ok, "http_status": http_status, "error": error,
                "duration_ms": duration_ms}
        return _parse(Alert, self._rpc("record_alert_delivery", args), "record_alert_delivery")

    # -- GitHub commit statuses of gate runs (docs/github.md) -----------------------------

    def list_github_statuses(self, workspace_id: str, *, run_id: str | None = None,
                             limit: int | None = None) -> list[GithubStatus]:
        """The commit statuses of the workspace's gate runs, newest first (of one run: `run_id`),
        with their delivery; `limit` 1-500 (default 50)."""
        args = {"workspace_id": workspace_id, "run_id": run_id, "limit": limit}
        return _parse_list(GithubStatus, self._rpc("list_github_statuses", args),
                           "list_github_statuses")

    def claim_github_statuses(self, limit: int | None = None,
                              lease_seconds: int | None = None) -> list[ClaimedGithubStatus]:
        """Lease the commit statuses that are due (service_role: the deliverer). Not retried:
        a lost answer leaves its statuses leased until the lease expires."""
        args = {"limit": limit, "lease_seconds": lease_seconds}
        return _parse_list(ClaimedGithubStatus, self._rpc("claim_github_statuses", args),
                           "claim_github_statuses")

    def record_github_status_delivery(self, status_id: str, ok: bool, *,
                                      http_status: int | None = None,
                                      error: str | None = None, retry: bool | None = None,
                                      retry_after_seconds: int | None = None) -> GithubStatus:
        """Record one attempt to post a leased status (service_role): delivered when `ok`;
        else superseded (a newer status of the run), failed (`retry` False, or the last
        attempt) or pending after a backoff of at least `retry_after_seconds`."""
        args = {"status_id": status_id, "ok": ok, "http_status": http_status, "error": error,
                "retry": retry, "retry_after_seconds": retry_after_seconds}
        return _parse(GithubStatus, self._rpc("record_github_status_delivery", args),
                      "record_github_status_delivery")

    # -- GitHub check runs of gate runs (docs/github.md, Check runs) -----------------------

    def list_github_check_runs(self, workspace_id: str, *, run_id: str | None = None,
                               limit: int | None = None) -> list[GithubCheckRun]:
        """The check runs of the workspace's gate runs, newest first (of one run: `run_id`),
        with GitHub's check run id and their delivery; `limit` 1-500 (default 50)."""
        args = {"workspace_id": workspace_id, "run_id": run_id, "limit": limit}
        return _parse_list(GithubCheckRun, self._rpc("list_github_check_runs", args),
                           "list_github_check_runs")

    def claim_github_check_runs(self, limit: int | None = None,
                                lease_seconds: int | None = None) -> list[ClaimedGithubCheckRun]:
        """Lease the check runs that are due (service_role: the deliverer). Not retried: a
        lost answer leaves its check runs leased until the lease expires."""
        args = {"limit": limit, "lease_seconds": lease_seconds}
        return _parse_list(ClaimedGithubCheckRun, self._rpc("claim_github_check_runs", args),
                           "claim_github_check_runs")

    def record_github_check_run_delivery(self, check_id: str, version: int, ok: bool, *,
                                         check_run: int | None = None,
                                         html_url: str | None = None,
                                         http_status: int | None = None,
                                         error: str | None = None, retry: bool | None = None,
                                         retry_after_seconds: int | None = None
                                         ) -> GithubCheckRun:
        """Record one attempt at a leased check run's claimed `version` (service_role), with
        GitHub's check run id (`check_run`) and `html_url` when known: pending again at once
        when the run changed since; else delivered when `ok`, failed (`retry` False, or the
        last attempt) or pending after a backoff of at least `retry_after_seconds`."""
        args = {"check_id": check_id, "version": version, "ok": ok,
                "check_run": check_run, "html_url": html_url,
                "http_status": http_status, "error": error, "retry": retry,
                "retry_after_seconds": retry_after_seconds}
        return _parse(GithubCheckRun, self._rpc("record_github_check_run_delivery", args),
                      "record_github_check_run_delivery")

    # -- schedules ------------------------------------------------------------------------

    def create_schedule(self, workspace_id: str, name: str, job: str, *,
                        cron: str | None = None, timezone: str | None = None,
                        interval_seconds: int | None = None,
                        params: Mapping[str, Any] | None = None, enabled: bool | None = None,
                        catchup: ScheduleCatchup | None = None, catchup_max: int | None = None,
                        max_concurrent: int | None = None,
                        overlap: ScheduleOverlap | None = None, priority: int | None = None,
                        description: str | None = None) -> Schedule:
        """Schedule a job (developer or admin): `cron` (5 fields, in `timezone`, default UTC)
        or `interval_seconds`; the catch-up and overlap policies (docs/schedules.md). Not
        idempotent: a repeat is Conflict (name taken)."""
        args = {"workspace_id": workspace_id, "name": name, "job": job, "cron": cron,
                "timezone": timezone, "interval_seconds": interval_seconds,
                "params": _dict(params), "enabled": enabled, "catchup": catchup,
                "catchup_max": catchup_max, "max_concurrent": max_concurrent,
                "overlap": overlap, "priority": priority, "description": description}
        return _parse(Schedule, self._rpc("create_schedule", args), "create_schedule")

    def update_schedule(self, workspace_id: str, name: str, *, cron: str | None = None,
                        timezone: str | None = None, interval_seconds: int | None = None,
                        params: Mapping[str, Any] | None = None, enabled: bool | None = None,
                        catchup: ScheduleCatchup | None = None, catchup_max: int | None = None,
                        max_concurrent: int | None = None,
                        overlap: ScheduleOverlap | None = None, priority: int | None = None,
                        description: str | None = None) -> Schedule:
        """Change a schedule (developer or admin): only what is not None changes; `enabled`
        False disables it, True enables it from now (the ticks it missed are not caught up)."""
        args = {"workspace_id": workspace_id, "name": name, "cron": cron, "timezone": timezone,
                "interval_seconds": interval_seconds, "params": _dict(params),
                "enabled": enabled, "catchup": catchup, "catchup_max": catchup_max,
                "max_concurrent": max_concurrent, "overlap": overlap, "priority": priority,
                "description": description}
        return _parse(Schedule, self._rpc("update_schedule", args), "update_schedule")

    def delete_schedule(self, workspace_id: str, name: str) -> ScheduleDeleted:
        """Delete a schedule and its ticks (developer or admin); its runs stay. Not
        idempotent: a repeat is NotFound."""
        args = {"workspace_id": workspace_id, "name": name}
        return _parse(ScheduleDeleted, self._rpc("delete_schedule", args), "delete_schedule")

    def list_schedules(self, workspace_id: str, job: str | None = None) -> list[Schedule]:
        """The workspace's schedules (of one job), by name (any member)."""
        args = {"workspace_id": workspace_id, "job": job}
        return _parse_list(Schedule, self._rpc("list_schedules", args), "list_schedules")

    def get_schedule(self, workspace_id: str, name: str) -> ScheduleDetail:
        """One schedule and its next fire times (any member); `NotFound` when there is none."""
        args = {"workspace_id": workspace_id, "name": name}
        return _parse(ScheduleDetail, self._rpc("get_schedule", args), "get_schedule")

    def list_schedule_ticks(self, workspace_id: str, name: str, *,
                            state: TickState | None = None, before: datetime | None = None,
                            limit: int | None = None) -> TickPage:
        """A page of a schedule's ticks, newest first (any member): pass `next_before` as
        `before` for the next one."""
        args = {"workspace_id": workspace_id, "name": name, "state": state, "before": before,
                "limit": limit}
        return _parse(TickPage, self._rpc("list_schedule_ticks", args), "list_schedule_ticks")

    def run_due_schedules(self, workspace_id: str | None = None,
                          limit: int | None = None) -> DueResult:
        """Fire the due ticks (service_role: every workspace; a developer or admin: its own).
        Safe to repeat and to call from several schedulers at once: a tick fires once."""
        args = {"workspace_id": workspace_id, "limit": limit}
        return _parse(DueResult, self._rpc("run_due_schedules", args), "run_due_schedules")

    # -- sensors ------------------------------------------------------------------------------

    def create_sensor(self, workspace_id: str, name: str, job: str, connection: str,
                      query: str, *, params: Mapping[str, Any] | None = None,
                      interval_seconds: int | None = None,
                      enabled: bool | None = None) -> Sensor:
        """A source-changed sensor of `job` (developer or admin): `query` (one SELECT) on the
        postgres `connection`, evaluated every `interval_seconds` (docs/sensors.md). Not
        idempotent: a repeat is Conflict (name taken)."""
        args = {"workspace_id": workspace_id, "name": name, "job": job,
                "connection": connection, "query": query, "params": _dict(params),
                "interval_seconds": interval_seconds, "enabled": enabled}
        return _parse(Sensor, self._rpc("create_sensor", args), "create_sensor")

    def delete_sensor(self, workspace_id: str, name: str) -> SensorDeleted:
        """Delete a sensor (developer or admin); its runs stay. A repeat is NotFound."""
        args = {"workspace_id": workspace_id, "name": name}
        return _parse(SensorDeleted, self._rpc("delete_sensor", args), "delete_sensor")

    def list_sensors(self, workspace_id: str, job: str | None = None) -> list[Sensor]:
        """The workspace's sensors (of one job), by name (any member)."""
        args = {"workspace_id": workspace_id, "job": job}
        return _parse_list(Sensor, self._rpc("list_sensors", args), "list_sensors")

    def get_sensor(self, workspace_id: str, name: str) -> Sensor:
        """One sensor (any member); `NotFound` when there is none."""
        args = {"workspace_id": workspace_id, "name": name}
        return _parse(Sensor, self._rpc("get_sensor", args), "get_sensor")

    def claim_due_sensors(self, workspace_id: str | None = None,
                          limit: int | None = None) -> list[ClaimedSensor]:
        """Claim due sensors for evaluation (service_role: every workspace, or
        `workspace_id`'s; a developer or admin: its own); each is not due again before its
        interval passed."""
        args = {"workspace_id": workspace_id, "limit": limit}
        return _parse_list(ClaimedSensor, self._rpc("claim_due_sensors", args),
                           "claim_due_sensors")

    def record_sensor_value(self, sensor_id: str, value: str | None = None,
                            error: str | None = None) -> SensorEvaluation:
        """Report a sensor's value (or the error evaluating it): a value that moved starts a
        run. Safe to repeat: the same value again is `moved` False."""
        args = {"sensor_id": sensor_id, "value": value, "error": error}
        return _parse(SensorEvaluation, self._rpc("record_sensor_value", args),
                      "record_sensor_value")

    # -- waiting for work ---------------------------------------------------------------------

    def poll_for_work(self, kinds: Sequence[str] | None = None, lease_seconds: int = 60, *,
                      run_id: str | None = None, workspace_id: str | None = None,
                      wait: float = 20.0, idle_start: float = 0.2, idle_max: float = 10.0,
                      timeout: float | None = None,
                      stop: threading.Event | None = None) -> Claim | None:
        """Claim a phase, waiting for one; None once `timeout` passed or `stop` was set.

        Where the server honours `Prefer: wait` (the gateway), claims are sent back to back,
        each waiting up to `wait` seconds on the server. Elsewhere (PostgREST, Supabase) it
        polls, sleeping `idle_start` seconds after an empty answer, doubling up to `idle_max`
        (a new call starts at `idle_start` again). Support is learnt from empty answers to
        waits of a second or more: one that came clearly before its wait was over (under
        min(wait/2, 1 s)) means the header was ignored, and it is not sent again; one that
        came after at least half the wait means it was honoured (`wait_supported`); until
        then the client waits on the server and also sleeps between tries. A transient
        failure is logged and treated as idle; the next try carries the same `claim_id`, so
        a phase claimed for a call whose answer was lost is returned to it.
        `stop` interrupts the sleeps, not a wait in progress (bounded by `wait`).
        """
        claims = self._poll(
            lambda call_wait, claim_id: _one(self.claim_phase(
                kinds, lease_seconds, run_id=run_id, workspace_id=workspace_id,
                wait=call_wait, claim_id=claim_id)),
            "claim_phase", wait=wait, idle_start=idle_start, idle_max=idle_max,
            timeout=timeout, stop=stop)
        return claims[0] if claims else None

    def poll_for_claims(self, kinds: Sequence[str] | None = None, lease_seconds: int = 60,
                        limit: int = 10, *, run_id: str | None = None,
                        workspace_id: str | None = None, wait: float = 20.0,
                        idle_start: float = 0.2, idle_max: float = 10.0,
                        timeout: float | None = None,
                        stop: threading.Event | None = None) -> list[Claim]:
        """Claim up to `limit` phases in one call (`claim_phases`: a worker's free slots),
        waiting until there is at least one; [] once `timeout` passed or `stop` was set.
        Waiting, polling and retries as for `poll_for_work`."""
        return self._poll(
            lambda call_wait, claim_id: self.claim_phases(
                kinds, lease_seconds, limit, run_id=run_id, workspace_id=workspace_id,
                wait=call_wait, claim_id=claim_id),
            "claim_phases", wait=wait, idle_start=idle_start, idle_max=idle_max,
            timeout=timeout, stop=stop)

    def _poll(self, claim: Callable[[float | None, str], list[Claim]], fn: str, *,
              wait: float, idle_start: float, idle_max: float, timeout: float | None,
              stop: threading.Event | None) -> list[Claim]:
        """Claims by `claim(wait, claim_id)`, waiting for some (see `poll_for_work`)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = idle_start
        # one claim_id until a claim is answered: a claim the server made for a call whose
        # answer was lost (the gateway restarting) is returned by the next try, not leaked
        claim_id = str(uuid.uuid4())
        while stop is None or not stop.is_set():
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return []
            call_wait = 0.0
            if self.wait_supported is not False and wait > 0:
                call_wait = wait if left is None else min(wait, left)
            started = time.monotonic()
            try:
                claims = claim(call_wait or None, claim_id)
            except TransientError as exc:
                log.warning("%s failed; polling again in %.1f s: %s", fn, delay, exc)
                claims, call_wait = [], 0.0
            else:
                if claims:
                    return claims
                claim_id = str(uuid.uuid4())
                if call_wait > 0:
                    self._learn_wait_support(call_wait, time.monotonic() - started)
            if call_wait > 0 and self.wait_supported:
                continue            # the server waited for us: ask again at once
            pause = delay if deadline is None else min(delay, deadline - time.monotonic())
            if pause > 0:
                if stop is not None:
                    stop.wait(pause)
                else:
                    self._sleep(pause)
            delay = min(delay * 2, idle_max)
        return []

    def _learn_wait_support(self, waited_for: float, elapsed: float) -> None:
        if waited_for < 1.0:        # too short to tell a wait from the network's latency
            return
        with self._lock:
            if elapsed < min(waited_for / 2, 1.0):
                if self.wait_supported is not False:
                    log.info("the server answers at once despite Prefer: wait; polling instead")
                self.wait_supported = False
            elif elapsed >= waited_for / 2:
                self.wait_supported = True


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, TransportFailure | ServiceUnavailable)


def _surely_unsent(exc: BaseException) -> bool:
    return isinstance(exc, TransportFailure) and not exc.sent


def _log_retry(fn: str) -> Callable[[RetryCallState], None]:
    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        wait = state.next_action.sleep if state.next_action is not None else 0.0
        log.warning("%s: try %d failed (%s); retrying in %.2f s", fn, state.attempt_number,
                    exc, wait)
    return before_sleep


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, frozenset | set | tuple):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _dict(value: Mapping[str, Any] | None) -> dict[str, Any] | None:
    return dict(value) if value is not None else None


def _iso(value: datetime | str | None) -> str | None:
    return value.isoformat() if isinstance(value, datetime) else value
