"""One `ContractError` family for both sides of the contract (docs/contract.md, Errors).

The server side (`control_room.db.store`, the gateway) raises these for a refused call and
answers them as PostgREST's body, `{code, message, details, hint}` (`body()`); the client
(`control_room.contract.client`) raises the same classes from such a body. The subclass is
chosen by the machine code (`error_for`), falling back on the HTTP status for the errors
PostgREST makes itself (`error_from_body`).

Fields: `code` the stable machine code (`lease_lost`, `invalid_argument`, ...), `status` the
HTTP status (None when no answer came), `sqlstate` the body's `code` (`PT409`, `PGRST202`,
`42501`), `details` the body's `details` text as sent (`details_json`: parsed when it is a
JSON object), `hint` the body's hint, `function` the contract function called.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, ClassVar

__all__ = [
    "Conflict",
    "ContractError",
    "Forbidden",
    "InvalidArgument",
    "InvalidResponse",
    "LeaseLost",
    "NotFound",
    "PayloadTooLarge",
    "ServerError",
    "ServiceUnavailable",
    "TransientError",
    "TransportFailure",
    "Unauthorized",
    "error_for",
    "error_from_body",
]


class ContractError(Exception):
    """A call the server refused, or that got no usable answer (see the module docstring)."""

    default_code: ClassVar[str] = "error"

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None,
                 sqlstate: str | None = None, details: str | Mapping[str, Any] | None = None,
                 details_text: str | None = None, hint: str | None = None,
                 function: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code or self.default_code
        self.sqlstate = sqlstate
        if isinstance(details, Mapping):
            details = details_text if details_text is not None else json.dumps(dict(details))
        self.details: str | None = details if details is not None else details_text
        self.hint = hint
        self.function = function

    @property
    def details_text(self) -> str | None:
        """The body's `details` as sent (the same as `details`)."""
        return self.details

    @property
    def details_json(self) -> dict[str, Any] | None:
        """`details` parsed, when it is a JSON object (`{"argument": ...}`, limits...)."""
        if self.details is None:
            return None
        try:
            parsed = json.loads(self.details)
        except ValueError:
            return None
        return parsed if isinstance(parsed, dict) else None

    @property
    def argument(self) -> str | None:
        """The argument an `invalid_argument` or `payload_too_large` error names, if any."""
        value = (self.details_json or {}).get("argument")
        return value if isinstance(value, str) else None

    def body(self) -> dict[str, str | None]:
        """PostgREST's error body: `{code, message, details, hint}` (code = SQLSTATE)."""
        return {
            "code": self.sqlstate or self.code,
            "message": self.message,
            "details": self.details,
            "hint": self.hint,
        }

    def __str__(self) -> str:
        where = f"{self.function}: " if self.function else ""
        status = f" {self.status}" if self.status is not None else ""
        return f"{where}{self.code}{status}: {self.message}"

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(status={self.status}, code={self.code!r}, "
            f"sqlstate={self.sqlstate!r}, message={self.message!r})"
        )


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


BY_CODE: dict[str, type[ContractError]] = {
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
"""The class of each machine code (the codes of `vocabulary.MACHINE_CODES` and the 5xx ones)."""

BY_STATUS: dict[int, type[ContractError]] = {
    400: InvalidArgument, 401: Unauthorized, 403: Forbidden, 404: NotFound,
    406: InvalidArgument, 409: Conflict, 413: PayloadTooLarge, 415: InvalidArgument,
    502: ServiceUnavailable, 503: ServiceUnavailable, 504: ServiceUnavailable,
}


def error_for(code: str, message: str, *, status: int | None = None,
              sqlstate: str | None = None, details: str | Mapping[str, Any] | None = None,
              hint: str | None = None, function: str | None = None) -> ContractError:
    """The error of machine code `code`: its subclass (`lease_lost` -> LeaseLost), or the base
    class for a code without one. A 5xx `internal`/`unavailable` follows the status (a 503 is
    ServiceUnavailable whatever the code)."""
    cls = BY_CODE.get(code, ContractError)
    if status is not None and status >= 500:
        cls = BY_STATUS.get(status, ServerError)
    return cls(message, status=status, code=code, sqlstate=sqlstate, details=details,
               hint=hint, function=function)


def error_from_body(status: int, body: Any, *, reason: str = "",
                    function: str | None = None) -> ContractError:
    """The typed error for a non-2xx answer whose JSON is `body` (PostgREST's
    `{code, message, details, hint}`; anything else, e.g. a proxy's page, is kept as text)."""
    if not isinstance(body, dict):
        body = {"message": str(body)[:500] if body else reason}
    message = str(body.get("message") or body.get("msg") or reason)
    sqlstate = body.get("code")
    hint = body.get("hint")
    details = body.get("details")
    if not isinstance(details, str | dict):
        details = None
    cls = BY_CODE.get(hint) if isinstance(hint, str) else None
    if cls is None or issubclass(cls, TransientError):   # 5xx: the status says which
        cls = BY_STATUS.get(status) or (ServerError if status >= 500 else ContractError)
    code = cls.default_code if cls is not ContractError else f"http_{status}"
    if isinstance(hint, str) and hint in BY_CODE:
        code = hint
    return cls(message, status=status, code=code,
               sqlstate=str(sqlstate) if sqlstate is not None else None, details=details,
               hint=hint if isinstance(hint, str) else None, function=function)
