"""The contract client: what an executor calls, over HTTP only.

One client for every server that speaks the contract (docs/contract.md): the control-room
gateway (`http://127.0.0.1:8787/rest/v1`) and Supabase's PostgREST
(`https://<ref>.supabase.co/rest/v1`), or a plain PostgREST at its root. Each call is
`POST <base_url>/rpc/<fn>` with the named arguments as a JSON object, `Content-Profile: ops`,
`Authorization: Bearer <token>` and `apikey` (the token itself unless a project key is given,
as Supabase clients send it). This module never imports `control_room`: workers speak HTTP.

Results are frozen pydantic models parsed from the JSON the server returns
(`contract/openapi.yaml`); unknown fields are ignored so that an older worker keeps working
against a newer server. A refusal raises a `ContractError` subclass chosen by the body's
machine code (`hint`), falling back on the HTTP status for errors PostgREST makes itself.

Retries (tenacity): a call that got no answer (connection refused or reset, a timeout) or a
502/503/504 is sent again with exponential backoff and full jitter, up to
`RetryPolicy.attempts` tries and `RetryPolicy.total` seconds; a 4xx never is. Every retried
call is idempotent on the server: `claim_phase` carries one `claim_id` for all tries of a
logical claim, `append_events` gives each event its `event_id` before the first try,
`complete_phase` answers a completed attempt again with `replayed: true` (a success here),
`heartbeat` and `register_artifact` are harmless to repeat. Through `call()`, the functions
that are not idempotent (`create_workspace`, `remove_member`, `create_principal`, `create_run`
without `idempotency_key`) are retried only when the request surely never left
(connection refused, no connection from the pool).

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
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar, Literal, TypeVar

import httpx
import pydantic
from pydantic import BaseModel, ConfigDict, Field
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    stop_before_delay,
    wait_random_exponential,
)

__all__ = [
    "AppendResult",
    "Artifact",
    "Claim",
    "ClaimRun",
    "CompleteResult",
    "Conflict",
    "ContractClient",
    "ContractError",
    "Dataset",
    "DatasetRecord",
    "DatasetVersion",
    "Event",
    "EventPage",
    "Forbidden",
    "HeartbeatResult",
    "InvalidArgument",
    "InvalidResponse",
    "LeaseLost",
    "NewEvent",
    "NotFound",
    "PayloadTooLarge",
    "Phase",
    "RetryPolicy",
    "Run",
    "ServerError",
    "ServiceUnavailable",
    "TransientError",
    "TransportFailure",
    "Unauthorized",
]

log = logging.getLogger("control_room.contract.client")

SCHEMA = "ops"
USER_AGENT = "control-room-executor/0.1"

Outcome = Literal["succeeded", "failed"]
EventLevel = Literal["debug", "info", "warning", "error"]
ArtifactRole = Literal["output", "input", "log", "report"]

# through call(): functions a repeat would do twice (docs/contract.md, Idempotency)
_NOT_IDEMPOTENT = frozenset({"create_workspace", "remove_member", "create_principal"})
_RETRIED_STATUSES = frozenset({502, 503, 504})


# ----------------------------------------------------------------------------------- errors


class ContractError(Exception):
    """A call the server refused, or that got no usable answer.

    `code` is the stable machine code to branch on (`lease_lost`, `invalid_argument`, ...:
    the body's `hint`, or one derived from the status for PostgREST's own errors);
    `sqlstate` is the body's `code` (`PT409`, `PGRST202`, `42501`); `details` the body's
    `details` parsed when it is a JSON object (the text as sent is in `details_text`).
    `status` is None when no answer came.
    """

    default_code: ClassVar[str] = "error"

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None,
                 sqlstate: str | None = None, details: dict[str, Any] | None = None,
                 details_text: str | None = None, hint: str | None = None,
                 function: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code or self.default_code
        self.sqlstate = sqlstate
        self.details = details
        self.details_text = details_text
        self.hint = hint
        self.function = function

    @property
    def argument(self) -> str | None:
        """The argument an `invalid_argument` or `payload_too_large` error names, if any."""
        value = (self.details or {}).get("argument")
        return value if isinstance(value, str) else None

    def __str__(self) -> str:
        where = f"{self.function}: " if self.function else ""
        status = f" {self.status}" if self.status is not None else ""
        return f"{where}{self.code}{status}: {self.message}"


class InvalidArgument(ContractError):
    """400 (and 406/415): an argument is missing, malformed or out of bounds. A bug in the call."""

    default_code = "invalid_argument"


class Unauthorized(ContractError):
    """401: the token was refused (signature, expiry), has no principal, or was revoked."""

    default_code = "unauthorized"


class Forbidden(ContractError):
    """403: the caller's role may not make this call (e.g. a viewer claiming a phase)."""

    default_code = "forbidden"


class NotFound(ContractError):
    """404: the run, phase or workspace does not exist or is not visible to the caller."""

    default_code = "not_found"


class Conflict(ContractError):
    """409 `conflict`: the call contradicts the current state or an earlier call."""

    default_code = "conflict"


class LeaseLost(ContractError):
    """409 `lease_lost`: the lease token is not live. Stop working on the phase at once."""

    default_code = "lease_lost"


class PayloadTooLarge(ContractError):
    """413: an argument or the body exceeds its limit (`details`: argument, size, limit)."""

    default_code = "payload_too_large"


class InvalidResponse(ContractError):
    """A 2xx answer that is not the JSON the contract describes."""

    default_code = "invalid_response"


class TransientError(ContractError):
    """A failure that may pass: no answer, or a 5xx. Try again later."""

    default_code = "unavailable"


class TransportFailure(TransientError):
    """No answer came (connection refused or reset, a timeout); `__cause__` is httpx's error.

    `sent` is False when the request surely never reached the server.
    """

    default_code = "transport"

    def __init__(self, message: str, *, sent: bool, function: str | None = None) -> None:
        super().__init__(message, function=function)
        self.sent = sent


class ServiceUnavailable(TransientError):
    """502, 503 or 504: the server or the database behind it is unavailable for now."""

    default_code = "unavailable"


class ServerError(TransientError):
    """Another 5xx (an unexpected server error). Not retried by the client itself."""

    default_code = "internal"


_BY_CODE: dict[str, type[ContractError]] = {
    "invalid_argument": InvalidArgument,
    "unauthorized": Unauthorized,
    "forbidden": Forbidden,
    "not_found": NotFound,
    "conflict": Conflict,
    "lease_lost": LeaseLost,
    "payload_too_large": PayloadTooLarge,
    "unavailable": ServiceUnavailable,
    "internal": ServerError,
}

_BY_STATUS: dict[int, type[ContractError]] = {
    400: InvalidArgument, 401: Unauthorized, 403: Forbidden, 404: NotFound,
    406: InvalidArgument, 409: Conflict, 413: PayloadTooLarge, 415: InvalidArgument,
    502: ServiceUnavailable, 503: ServiceUnavailable, 504: ServiceUnavailable,
}


def error_from_response(response: httpx.Response, function: str | None = None) -> ContractError:
    """The typed error for a non-2xx answer in PostgREST's `{code, message, details, hint}`."""
    status = response.status_code
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):      # a proxy's HTML page, an API gateway's own error...
        body = {"message": response.text[:500] or response.reason_phrase}
    message = str(body.get("message") or body.get("msg") or response.reason_phrase)
    sqlstate = body.get("code")
    hint = body.get("hint")
    details_text = body.get("details")
    details: dict[str, Any] | None = None
    if isinstance(details_text, str):
        try:
            parsed = json.loads(details_text)
        except ValueError:
            parsed = None
        details = parsed if isinstance(parsed, dict) else None
    elif isinstance(details_text, dict):
        details, details_text = details_text, json.dumps(details_text)
    cls = _BY_CODE.get(hint) if isinstance(hint, str) else None
    if cls is None or issubclass(cls, TransientError):   # 5xx: the status says which
        cls = _BY_STATUS.get(status) or (ServerError if status >= 500 else ContractError)
    code = cls.default_code if cls is not ContractError else f"http_{status}"
    if isinstance(hint, str) and hint in _BY_CODE:
        code = hint
    return cls(message, status=status, code=code,
               sqlstate=str(sqlstate) if sqlstate is not None else None,
               details=details, details_text=details_text if isinstance(details_text, str)
               else None, hint=hint if isinstance(hint, str) else None, function=function)


# --------------------------------------------------------------------------------- results


class _Result(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class ClaimRun(_Result):
    """The run a claimed phase belongs to, as the executor needs it."""

    spec_slug: str
    git_sha: str
    env: str
    input_manifest: dict[str, Any]
    labels: dict[str, str]
    priority: int
    parent_run_id: str | None


class Claim(_Result):
    """A claimed phase. `lease_token` is a capability: never log it (it is kept out of repr)."""

    phase_id: str
    run_id: str
    workspace_id: str
    name: str
    kind: str
    params: dict[str, Any]
    depends_on: tuple[str, ...]
    attempt: int
    max_attempts: int
    timeout_seconds: int
    lease_token: str = Field(repr=False)
    lease_seconds: int
    lease_expires_at: datetime
    claim_id: str | None
    inputs: dict[str, dict[str, Any]]
    run: ClaimRun


class HeartbeatResult(_Result):
    phase_id: str
    lease_expires_at: datetime
    cancel_requested: bool
    phase_state: str        # running | cancelled
    run_state: str


class AppendResult(_Result):
    """What `append_events` stored; `event_ids` are the ids the batch was sent with."""

    appended: int
    duplicates: int
    last_seq: int
    event_ids: tuple[str, ...] = ()


class Artifact(_Result):
    """A registered artifact and its link to the phase (`register_artifact`'s answer)."""

    workspace_id: str
    digest: str
    size_bytes: int
    media_type: str
    kind: str
    uri: str
    metadata: dict[str, Any]
    first_run_id: str | None
    created_by: str | None
    created_at: datetime
    run_id: str
    phase: str
    name: str
    role: str
    created: bool
    linked: bool


class CompleteResult(_Result):
    """The phase's and the run's states after `complete_phase` (`replayed`: a repeat)."""

    phase_id: str
    phase: str
    phase_state: str
    attempt: int
    run_id: str
    run_state: str
    not_before: datetime | None
    released: tuple[str, ...]
    replayed: bool


class Phase(_Result):
    id: str
    name: str
    ordinal: int
    kind: str
    params: dict[str, Any]
    depends_on: tuple[str, ...]
    state: str
    priority: int
    attempt: int
    max_attempts: int
    timeout_seconds: int
    retry_backoff_seconds: float
    retry_backoff_max_seconds: float
    queued_at: datetime
    not_before: datetime | None
    lease_seconds: int | None
    lease_expires_at: datetime | None
    claimed_by: str | None
    started_at: datetime | None
    finished_at: datetime | None
    progress: dict[str, Any] | None
    output_manifest: dict[str, Any] | None
    error: dict[str, Any] | None
    reused_from_phase_id: str | None


class Run(_Result):
    id: str
    workspace_id: str
    env: str
    spec_slug: str
    git_sha: str
    state: str
    priority: int
    labels: dict[str, str]
    input_manifest: dict[str, Any]
    output_manifest: dict[str, Any] | None
    idempotency_key: str | None
    parent_run_id: str | None
    error: dict[str, Any] | None
    cancel_reason: str | None
    created_by: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    finalized_at: datetime | None
    updated_at: datetime
    last_event_seq: int
    phases: tuple[Phase, ...]

    def phase(self, name: str) -> Phase:
        for phase in self.phases:
            if phase.name == name:
                return phase
        raise KeyError(name)


class Event(_Result):
    seq: int
    event_id: str
    run_id: str
    phase: str | None
    attempt: int | None
    ts: datetime
    recorded_at: datetime
    level: str
    type: str
    message: str
    payload: dict[str, Any]
    principal_id: str | None


class EventPage(_Result):
    events: tuple[Event, ...]
    next_after: int


class DatasetRecord(_Result):
    """`record_dataset`'s answer: the dataset's state after the call; `version` and `change`
    what this call recorded (`recorded` False, `version` None and `change` NONE for a write
    that kept the schema or a repeat of one)."""

    dataset_id: str
    workspace_id: str
    name: str
    layer: str
    schema_state: str       # active | blocked | accepted
    schema_version: int     # the last applied version (0: no schema yet)
    recorded: bool
    version: int | None = None
    change: str | None = None


class DatasetVersion(_Result):
    """One schema the catalog was shown (`get_dataset`'s `versions`, newest first); `applied`
    False for a refused breaking change."""

    version: int
    change: str
    applied: bool
    schema_: Any = Field(default=None, alias="schema")
    changes: list[dict[str, Any]] = Field(default_factory=list)
    run_id: str | None = None
    phase_id: str | None = None
    phase: str | None = None
    table_version: int | None = None
    digest: str | None = None
    recorded_at: datetime
    recorded_by: str | None = None

    @property
    def schema(self) -> Any:   # shadows pydantic v1's deprecated BaseModel.schema
        """The recorded schema (`[{name, type, nullable, key?}]` from the executors)."""
        return self.schema_


class Dataset(_Result):
    """A dataset of the catalog (`list_datasets`, `get_dataset`, `unblock_dataset`);
    `versions` only from `get_dataset`."""

    id: str
    workspace_id: str
    name: str
    layer: str
    location: str
    format: str
    owner: str | None = None
    tags: tuple[str, ...] = ()
    schema_state: str
    schema_version: int
    blocked_change: dict[str, Any] | None = None
    blocked_at: datetime | None = None
    last_run_id: str | None = None
    last_phase_id: str | None = None
    last_table_version: int | None = None
    last_digest: str | None = None
    last_rows: int | None = None
    last_written_at: datetime | None = None
    created_at: datetime
    updated_at: datetime
    versions: tuple[DatasetVersion, ...] = ()


_M = TypeVar("_M", bound=BaseModel)


def _parse(model: type[_M], value: Any, function: str) -> _M:
    try:
        return model.model_validate(value)
    except pydantic.ValidationError as exc:
        raise InvalidResponse(f"the answer is not a {model.__name__}: {exc}", status=200,
                              function=function) from exc


# ---------------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class NewEvent:
    """An event to append. Its `event_id` is made once, when the event is made, so that every
    resend of it (by the client's retries or by the caller) is recognised as the same event."""

    type: str
    message: str = ""
    payload: Mapping[str, Any] | None = None
    phase: str | None = None
    level: EventLevel | None = None
    ts: datetime | None = None
    event_id: str = field(default_factory=lambda: str(uuid.uuid4()))

    def to_json(self) -> dict[str, Any]:
        event: dict[str, Any] = {"event_id": self.event_id, "type": self.type,
                                 "message": self.message}
        if self.payload is not None:
            event["payload"] = dict(self.payload)
        if self.phase is not None:
            event["phase"] = self.phase
        if self.level is not None:
            event["level"] = self.level
        if self.ts is not None:
            event["ts"] = self.ts.isoformat()
        return event


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


def _omit_none(**args: Any) -> dict[str, Any]:
    """Arguments left at None are not sent, so that the function's own default applies
    (a JSON null is SQL NULL, which is not always the default)."""
    return {name: value for name, value in args.items() if value is not None}


def _wait_header(seconds: float) -> str:
    return "wait=" + f"{seconds:.3f}".rstrip("0").rstrip(".")


# ---------------------------------------------------------------------------------- client


class ContractClient:
    """The executor's client of the contract.

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
                fn == "create_run" and body.get("idempotency_key") is None)
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

    # -- the executor's calls ---------------------------------------------------------------

    def claim_phase(self, kinds: Sequence[str] | None = None, lease_seconds: int = 60, *,
                    run_id: str | None = None, workspace_id: str | None = None,
                    wait: float | None = None, claim_id: str | None = None) -> Claim | None:
        """Claim the best runnable phase of these kinds, or None.

        One `claim_id` (the caller's, else a new UUID) is sent on every try, so a retry after
        a lost answer returns the lease the lost answer held. `wait` asks the server to wait
        that long for work (`Prefer: wait`; the gateway honours it, PostgREST answers at once).
        """
        args = _omit_none(kinds=list(kinds) if kinds is not None else None,
                          lease_seconds=lease_seconds, run_id=run_id,
                          workspace_id=workspace_id)
        args["claim_id"] = claim_id or str(uuid.uuid4())
        result = self.call("claim_phase", args, wait=wait)
        return None if result is None else _parse(Claim, result, "claim_phase")

    def heartbeat(self, lease_token: str, progress: Mapping[str, Any] | None = None,
                  lease_seconds: int | None = None) -> HeartbeatResult:
        """Extend the lease; `cancel_requested` says to stop. LeaseLost: stop at once."""
        args = _omit_none(lease_token=lease_token,
                          progress=dict(progress) if progress is not None else None,
                          lease_seconds=lease_seconds)
        return _parse(HeartbeatResult, self.call("heartbeat", args), "heartbeat")

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
            if isinstance(item.get("ts"), datetime):
                item["ts"] = item["ts"].isoformat()
            batch.append(item)
        args = _omit_none(run_id=run_id, events=batch, lease_token=lease_token)
        result = self.call("append_events", args)
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
        args = _omit_none(lease_token=lease_token, digest=digest, uri=uri, size_bytes=size_bytes,
                          media_type=media_type, kind=kind, name=name, role=role,
                          metadata=dict(metadata) if metadata is not None else None)
        return _parse(Artifact, self.call("register_artifact", args), "register_artifact")

    def complete_phase(self, lease_token: str, outcome: Outcome,
                       output_manifest: Mapping[str, Any] | None = None, error: Any = None,
                       retryable: bool = True) -> CompleteResult:
        """Report the attempt's outcome. A repeat of a completed attempt (e.g. a retry after
        a lost answer) answers `replayed: true`: a success, nothing written twice."""
        args = _omit_none(lease_token=lease_token, outcome=outcome,
                          output_manifest=dict(output_manifest)
                          if output_manifest is not None else None,
                          error=error)
        args["retryable"] = retryable
        return _parse(CompleteResult, self.call("complete_phase", args), "complete_phase")

    def complete_run(self, run_id: str, output_manifest: Mapping[str, Any] | None = None) -> Run:
        """Finalize a succeeded run (idempotent); Conflict when it has not succeeded."""
        args = _omit_none(run_id=run_id, output_manifest=dict(output_manifest)
                          if output_manifest is not None else None)
        return _parse(Run, self.call("complete_run", args), "complete_run")

    def get_run(self, run_id: str) -> Run:
        return _parse(Run, self.call("get_run", {"run_id": run_id}), "get_run")

    def list_events(self, run_id: str, after: int = 0, limit: int | None = None,
                    phase: str | None = None) -> EventPage:
        """Events with `seq > after`, in order; pass `next_after` as `after` to continue."""
        args = _omit_none(run_id=run_id, after=after, limit=limit, phase=phase)
        return _parse(EventPage, self.call("list_events", args), "list_events")

    def iter_events(self, run_id: str, after: int = 0, phase: str | None = None,
                    page_size: int = 1000) -> Iterator[Event]:
        """Every event after `after` visible now, following the cursor page by page."""
        while True:
            page = self.list_events(run_id, after=after, limit=page_size, phase=phase)
            yield from page.events
            if len(page.events) < page_size:
                return
            after = page.next_after

    # -- the data catalog -----------------------------------------------------------------

    def record_dataset(self, lease_token: str, name: str, location: str, *,
                       layer: str | None = None, format: str | None = None,
                       schema: Any = None, change: str | None = None,
                       changes: Sequence[Mapping[str, Any]] | None = None,
                       table_version: int | None = None, digest: str | None = None,
                       rows: int | None = None, owner: str | None = None,
                       tags: Sequence[str] | None = None) -> DatasetRecord:
        """Record a table the leased phase wrote (or the BREAKING change it was refused).
        Idempotent: a repeat of the same write answers the version it recorded, so it is
        retried like the other leased calls. `Conflict` (PT409): the dataset is blocked and
        `change` is not BREAKING; `LeaseLost`: stop. Arguments left at None take the
        server's defaults (delta, NONE, [] ...; the layer from the name's prefix)."""
        args = _omit_none(lease_token=lease_token, name=name, location=location, layer=layer,
                          format=format, schema=schema, change=change,
                          changes=[dict(c) for c in changes] if changes is not None else None,
                          table_version=table_version, digest=digest, rows=rows, owner=owner,
                          tags=list(tags) if tags is not None else None)
        return _parse(DatasetRecord, self.call("record_dataset", args), "record_dataset")

    def list_datasets(self, workspace_id: str | None = None, *, layer: str | None = None,
                      schema_state: str | None = None, name: str | None = None,
                      limit: int | None = None) -> list[Dataset]:
        """The datasets the caller may see, by name; `name` matches a prefix, `limit` is
        1-1000 (default 100)."""
        args = _omit_none(workspace_id=workspace_id, layer=layer, schema_state=schema_state,
                          name=name, limit=limit)
        result = self.call("list_datasets", args)
        if not isinstance(result, list):
            raise InvalidResponse("list_datasets: the answer is not a JSON array", status=200,
                                  function="list_datasets")
        return [_parse(Dataset, item, "list_datasets") for item in result]

    def get_dataset(self, workspace_id: str, name: str) -> Dataset:
        """One dataset with its `versions`, newest first; `NotFound` when there is none."""
        return _parse(Dataset, self.call("get_dataset", {"workspace_id": workspace_id,
                                                         "name": name}), "get_dataset")

    def unblock_dataset(self, workspace_id: str, name: str, resolution: Literal[
            "accept", "reject"], note: str | None = None) -> Dataset:
        """An admin's answer to a blocked schema change: `accept` (the next write applies
        it) or `reject` (the schema stays; fix the source). Idempotent."""
        args = _omit_none(workspace_id=workspace_id, name=name, resolution=resolution,
                          note=note)
        return _parse(Dataset, self.call("unblock_dataset", args), "unblock_dataset")

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
        failure is logged and treated as idle.
        `stop` interrupts the sleeps, not a wait in progress (bounded by `wait`).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = idle_start
        while stop is None or not stop.is_set():
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return None
            call_wait = 0.0
            if self.wait_supported is not False and wait > 0:
                call_wait = wait if left is None else min(wait, left)
            started = time.monotonic()
            try:
                claim = self.claim_phase(kinds, lease_seconds, run_id=run_id,
                                         workspace_id=workspace_id, wait=call_wait or None)
            except TransientError as exc:
                log.warning("claim_phase failed; polling again in %.1f s: %s", delay, exc)
                claim, call_wait = None, 0.0
            else:
                if claim is not None:
                    return claim
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
        return None

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
