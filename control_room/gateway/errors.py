"""Errors in PostgREST's shape: `{code, message, details, hint}` with PostgREST's statuses.

`code` is the SQLSTATE (`PT409`) or PostgREST's own code (`PGRST102`); `hint` carries the
stable machine code (`lease_lost`, `invalid_argument`, ...) that clients branch on. Every text
is capped (`control_room.db.store.cap_text`): a caller's value comes back at most 100
characters long, a message or details at most 2000, whatever produced them.
"""

from __future__ import annotations

from starlette.responses import JSONResponse

from control_room.contract.errors import ContractError
from control_room.db.store import cap_details, cap_text


class GatewayError(Exception):
    """A request refused before or around the database call."""

    def __init__(self, status: int, code: str, message: str, *, details: str | None = None,
                 hint: str | None = None, bearer_error: str | None = None) -> None:
        message = cap_text(message) or ""
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = cap_details(details)
        self.hint = cap_text(hint, 200)
        self.bearer_error = bearer_error

    def response(self) -> JSONResponse:
        headers = {}
        if self.bearer_error:
            # a header is ASCII on one line: anything else in the message is escaped
            escaped = " ".join(self.message.replace('"', "'").split()).encode(
                "ascii", "backslashreplace").decode("ascii")
            headers["WWW-Authenticate"] = (
                f'Bearer error="{self.bearer_error}", error_description="{escaped}"'
            )
        return JSONResponse(
            {"code": self.code, "message": self.message, "details": self.details,
             "hint": self.hint},
            status_code=self.status, headers=headers,
        )


def contract_response(error: ContractError) -> JSONResponse:
    """A ContractError (the contract's family, raised by `db.store`) as PostgREST would answer
    it, with the machine code always in `hint` (PostgreSQL's own prose hint, if any, moves
    into `details`)."""
    body = error.body()
    body["message"] = cap_text(body.get("message")) or ""
    body["details"] = cap_details(body.get("details"))
    body["hint"] = cap_text(body.get("hint"), 200)
    if body.get("hint") != error.code:
        prose = body.get("hint")
        if prose:
            body["details"] = f"{body['details']} ({prose})" if body.get("details") else prose
        body["hint"] = error.code
    return JSONResponse(body, status_code=error.status or 500)
