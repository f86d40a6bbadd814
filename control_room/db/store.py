"""The one module that runs contract SQL from Python.

`call()` invokes an `ops` function with named arguments the way PostgREST's `/rpc` does;
`acting_as()` opens the request transaction with the role and JWT claims PostgREST would set;
`wrap_errors()` turns driver errors into the contract's `ContractError` family
(`control_room.contract.errors`: the subclass of the machine code, e.g. `LeaseLost`), mapped
like PostgREST maps them to HTTP, with a stable machine `code`.
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
import uuid
import weakref
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.json import Json, Jsonb

from control_room.contract.errors import ContractError as ContractError  # re-exported
from control_room.contract.errors import error_for
from control_room.db.queries import query

API_ROLES = ("anon", "authenticated", "service_role")

_MACHINE_CODE = re.compile(r"^[a-z][a-z0-9_]{0,62}$")

_CODE_BY_STATUS = {
    400: "invalid_argument",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    409: "conflict",
    413: "payload_too_large",
}


# ----------------------------------------------------------------------- input limits

MAX_JSON_DEPTH = 64
"""Deepest nesting of arrays and objects an argument may have (the gateway passes its setting
`max_json_depth`): deeper JSON is refused before any work, as the parsers on the way (Python's,
PostgreSQL's) recurse."""

ECHO_CHARS = 100
"""The most characters of a caller's value that an error message or detail repeats."""

MESSAGE_CHARS = 1000
"""The longest error message or details text answered (longer ones are cut)."""

_INTEGER_BITS = {"smallint": 16, "integer": 32, "bigint": 64}
_NUMBER_TYPES = frozenset({"numeric", "real", "double precision"})
_TEXT_TYPES = frozenset({"text", "character varying", "character", "citext", "name"})
_BAD_TEXT = re.compile("[\x00\ud800-\udfff]")
_SURROGATE = re.compile("[\ud800-\udfff]")
_LONG = ECHO_CHARS + 1
_QUOTED = re.compile(f'"([^"]{{{_LONG},}})"|\'([^\']{{{_LONG},}})\'|(\\S{{{_LONG},}})')
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def printable(text: str) -> str:
    """`text` with lone surrogates written as escapes (`\\ud800`), so UTF-8 can carry it."""
    if _SURROGATE.search(text) is None:
        return text
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def clip(text: str, limit: int = ECHO_CHARS) -> str:
    """A caller's value as an error may echo it: at most `limit` characters, then
    `…(N bytes)` saying how long it was; lone surrogates escaped."""
    if len(text) <= limit:
        return printable(text)
    size = len(text.encode("utf-8", "surrogatepass"))
    return f"{printable(text[:limit])}…({size} bytes)"


def cap_text(text: str | None, limit: int = MESSAGE_CHARS) -> str | None:
    """An error text as answered: each quoted value (PostgreSQL's messages quote the value
    they refused) and each word in it clipped to ECHO_CHARS, the whole to `limit`
    characters."""
    if text is None:
        return None
    if len(text) > ECHO_CHARS:
        text = _QUOTED.sub(_clip_quoted, text)
    return clip(text, limit)


def _clip_quoted(match: re.Match[str]) -> str:
    if match.group(1) is not None:
        return f'"{clip(match.group(1))}"'
    if match.group(2) is not None:
        return f"'{clip(match.group(2))}'"
    return clip(match.group(3))


def cap_details(details: str | None, limit: int = MESSAGE_CHARS) -> str | None:
    """`cap_text` for a details text, keeping a JSON object JSON (its long values clipped)."""
    if details is None or (len(details) <= ECHO_CHARS and _SURROGATE.search(details) is None):
        return details
    if details.startswith("{"):
        try:
            parsed = json.loads(details)
        except (ValueError, RecursionError):
            parsed = None
        if isinstance(parsed, dict):
            capped = {clip(str(k)): _clip_json(v) for k, v in parsed.items()}
            out = details if capped == parsed else json.dumps(capped, ensure_ascii=False)
            if len(out) <= limit:
                return out
    return cap_text(details, limit)


def _clip_json(value: Any) -> Any:
    if isinstance(value, str):
        return clip(value)
    if value is None or isinstance(value, bool | int | float):
        return value
    return clip(json.dumps(value, ensure_ascii=False, default=str))


def json_depth(text: str | bytes | bytearray, limit: int = MAX_JSON_DEPTH) -> int:
    """How deep arrays and objects nest in a JSON text, found without recursing (so any depth
    is measured); 0 when it cannot exceed `limit` (no more brackets than that in all)."""
    data = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else bytes(text)
    if data.count(b"[") + data.count(b"{") <= limit:
        return 0
    if b'"' in data:
        data = _JSON_STRING.sub(b"", data)
    depth = deepest = 0
    for byte in data.translate(None, _NOT_BRACKETS):
        if byte in (0x5B, 0x7B):   # [ {
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


def _error(message: str, *, status: int, code: str, sqlstate: str | None = None,
           details: str | None = None, hint: str | None = None) -> ContractError:
    """The contract's error of machine code `code` (its subclass: LeaseLost, NotFound...),
    its texts capped (`cap_text`: a caller's value is echoed at most ECHO_CHARS long)."""
    return error_for(code, cap_text(message) or "", status=status, sqlstate=sqlstate,
                     details=cap_details(details), hint=cap_text(hint, 200))


def http_status(sqlstate: str | None, *, authenticated: bool = True) -> int:
    """The HTTP status PostgREST answers for an error's SQLSTATE."""
    if not sqlstate:
        return 503
    if sqlstate.startswith("PT") and sqlstate[2:].isdigit() and len(sqlstate) == 5:
        return int(sqlstate[2:])
    if sqlstate == "P0001":
        return 400
    if sqlstate.startswith("P0"):
        return 500
    if sqlstate in ("23505", "23503"):
        return 409
    if sqlstate == "42501":
        return 403 if authenticated else 401
    if sqlstate in ("42883", "42P01"):
        return 404
    if sqlstate == "25006":
        return 405
    if sqlstate.startswith("22"):
        return 400
    if sqlstate.startswith("40") or sqlstate[:2] in ("53", "54", "55", "56", "57", "58"):
        return 503
    return 400


def machine_code(sqlstate: str | None, hint: str | None, status: int) -> str:
    """The stable code: the HINT when it is one (our functions put it there), else derived."""
    if hint and _MACHINE_CODE.match(hint.strip()):
        return hint.strip()
    if sqlstate and sqlstate.startswith("PT"):
        return _CODE_BY_STATUS.get(status, "internal")
    if sqlstate:
        if sqlstate.startswith("22"):
            return "invalid_argument"
        if sqlstate == "42501":
            return "unauthorized" if status == 401 else "forbidden"
        if sqlstate in ("23505", "23503"):
            return "conflict"
        if sqlstate in ("42883", "42P01"):
            return "not_found"
    return "internal"


def contract_error(exc: psycopg.Error, *, authenticated: bool = True) -> ContractError:
    """Describe a driver error as a ContractError (the caller raises it `from exc`)."""
    sqlstate = exc.sqlstate
    diag = exc.diag
    message = (diag.message_primary or str(exc) or type(exc).__name__).strip()
    details = diag.message_detail
    hint = diag.message_hint
    if sqlstate == "PGRST":
        return _pgrst_error(message, details, hint)
    if sqlstate is None and isinstance(exc, psycopg.DataError):
        # refused by the driver before it reached the server (e.g. a NUL byte in a text value)
        return _error(message, status=400, code="invalid_argument", sqlstate="22000",
                             hint="invalid_argument")
    if sqlstate is None and not isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
        # not the server's answer, not a lost connection: a fault of ours
        return _error(message, status=500, code="internal", sqlstate="XX000",
                             hint="internal")
    status = http_status(sqlstate, authenticated=authenticated)
    if sqlstate is None:
        # No server answer: the connection failed or broke.
        message = " ".join(message.split())
    return _error(
        message,
        status=status,
        code=machine_code(sqlstate, hint, status),
        sqlstate=sqlstate,
        details=details,
        hint=hint,
    )


def _pgrst_error(message: str, details: str | None, hint: str | None) -> ContractError:
    """`RAISE sqlstate 'PGRST' USING message = '{json}', detail = '{"status": n}'`."""
    try:
        body = json.loads(message)
        meta = json.loads(details) if details else {}
        status = int(meta.get("status", 400))
    except (ValueError, TypeError, AttributeError):
        return _error(
            "Invalid custom error raised with sqlstate PGRST",
            status=500, code="internal", sqlstate="PGRST121", details=details, hint=hint,
        )
    body_hint = body.get("hint")
    sqlstate = body.get("code")
    return _error(
        str(body.get("message", "")),
        status=status,
        code=machine_code(sqlstate, body_hint, status),
        sqlstate=sqlstate,
        details=body.get("details"),
        hint=body_hint,
    )


@contextlib.contextmanager
def wrap_errors(*, role: str | None = None) -> Iterator[None]:
    """Raise `ContractError` (with `__cause__`) for any psycopg error inside the block.

    `role` is the API role the caller acts as: a privilege error (42501) maps to 401 for
    `anon` and to 403 otherwise, as in PostgREST.
    """
    try:
        yield
    except psycopg.Error as exc:
        raise contract_error(exc, authenticated=role != "anon") from exc


def connect(
    conninfo: str,
    *,
    autocommit: bool = False,
    connect_timeout: int = 10,
    statement_timeout_ms: int | None = None,
) -> psycopg.Connection[Any]:
    """Open a connection; with `statement_timeout_ms`, set it for the session."""
    conn = psycopg.connect(conninfo, autocommit=True, connect_timeout=connect_timeout)
    try:
        if statement_timeout_ms is not None:
            conn.execute(query("set_statement_timeout"), {"ms": str(int(statement_timeout_ms))})
        conn.autocommit = autocommit
    except BaseException:
        conn.close()
        raise
    return conn


# ----------------------------------------------------------------------------------- roles

_roles_by_conn: weakref.WeakKeyDictionary[psycopg.Connection[Any], str] = (
    weakref.WeakKeyDictionary()
)


def acting_role(conn: psycopg.Connection[Any]) -> str | None:
    """The API role of the `acting_as()` block open on `conn`, if any."""
    return _roles_by_conn.get(conn)


@contextlib.contextmanager
def acting_as(
    conn: psycopg.Connection[Any],
    *,
    role: str,
    sub: str | None = None,
    claims: Mapping[str, Any] | None = None,
    now: datetime | None = None,
) -> Iterator[psycopg.Connection[Any]]:
    """A transaction on `conn` in which the database sees a PostgREST request.

    Sets, transaction-locally, `search_path`, `role` and `request.jwt.claims` (the given
    claims plus `role` and `sub`), and with `now` the test clock `control_room.now`.
    Commits on exit, rolls back on an exception. `conn` must not be inside a transaction.
    """
    if role not in API_ROLES:
        raise ValueError(f"role must be one of {', '.join(API_ROLES)}, not {role!r}")
    if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        raise RuntimeError(
            "acting_as() needs a connection outside any transaction; commit or roll back first"
        )
    all_claims: dict[str, Any] = dict(claims or {})
    all_claims["role"] = role
    if sub is not None:
        all_claims["sub"] = str(sub)
    body_done = False
    try:
        # (pipelining these statements was measured slower, not faster: bench/claim_throughput.py)
        with conn.transaction():
            with wrap_errors(role=role):
                conn.execute(
                    query("set_request_context"),
                    {"role": role, "claims": json.dumps(all_claims, default=str)},
                )
                if now is not None:
                    conn.execute(query("set_clock"), {"now": now.isoformat()})
            _roles_by_conn[conn] = role
            try:
                yield conn
            finally:
                _roles_by_conn.pop(conn, None)
            body_done = True
    except psycopg.Error as exc:
        if body_done:  # the COMMIT failed (e.g. a deferred constraint)
            raise contract_error(exc, authenticated=role != "anon") from exc
        raise


# ------------------------------------------------------------------------------- signatures

_IN_MODES = frozenset({"i", "b", "v"})
_JSON_TYPES = frozenset({"json", "jsonb"})


@dataclass(frozen=True)
class Param:
    name: str
    type: str
    has_default: bool
    variadic: bool = False


@dataclass(frozen=True)
class Signature:
    """One function overload as PostgREST sees it."""

    schema: str
    name: str
    params: tuple[Param, ...]
    returns_set: bool
    return_type: str
    returns_composite: bool

    @property
    def names(self) -> frozenset[str]:
        return frozenset(p.name for p in self.params)

    @property
    def required(self) -> frozenset[str]:
        return frozenset(p.name for p in self.params if not p.has_default)

    @property
    def single_unnamed_json(self) -> bool:
        return (
            len(self.params) == 1 and self.params[0].name == ""
            and self.params[0].type in _JSON_TYPES
        )


_signature_cache: dict[tuple[str, str, str, str, str], tuple[Signature, ...]] = {}
_cache_lock = threading.Lock()


def clear_signature_cache() -> None:
    """Forget looked-up signatures (after a migration changed functions)."""
    with _cache_lock:
        _signature_cache.clear()


def _database_key(conn: psycopg.Connection[Any]) -> tuple[str, str, str]:
    info = conn.info
    return (info.host, str(info.port), info.dbname)


def signatures(conn: psycopg.Connection[Any], fn: str, *, schema: str = "ops") -> tuple[
    Signature, ...
]:
    """The overloads of `schema.fn`, looked up once per (database, schema, fn)."""
    key = (*_database_key(conn), schema, fn)
    with _cache_lock:
        cached = _signature_cache.get(key)
    if cached is not None:
        return cached
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(query("function_signatures"), {"schema": schema, "fn": fn}).fetchall()
    found = tuple(_signature(schema, fn, row) for row in rows)
    if found:
        with _cache_lock:
            _signature_cache[key] = found
    return found


def _signature(schema: str, fn: str, row: Mapping[str, Any]) -> Signature:
    names: list[str] = list(row["arg_names"])
    modes: list[str] = list(row["arg_modes"])
    types: list[str] = list(row["arg_types"])
    inputs: list[tuple[str, str, bool]] = []
    for index, type_name in enumerate(types):
        mode = modes[index] if modes else "i"
        if mode not in _IN_MODES:
            continue
        name = names[index] if index < len(names) else ""
        inputs.append((name, type_name, mode == "v"))
    n_defaults = int(row["n_defaults"])
    first_default = len(inputs) - n_defaults
    params = tuple(
        Param(name=name, type=type_name, has_default=i >= first_default, variadic=variadic)
        for i, (name, type_name, variadic) in enumerate(inputs)
    )
    return Signature(
        schema=schema,
        name=fn,
        params=params,
        returns_set=bool(row["returns_set"]),
        return_type=str(row["return_type"]),
        returns_composite=row["return_typtype"] in ("c", "p") and row["return_type"] != "void",
    )


def _choose(overloads: tuple[Signature, ...], given: frozenset[str], fn: str,
            schema: str) -> Signature:
    if len(overloads) == 1 and overloads[0].single_unnamed_json:
        return overloads[0]
    matching = [s for s in overloads if given <= s.names and s.required <= given]
    if len(matching) == 1:
        return matching[0]
    if len(matching) > 1:
        raise _error(
            f"Could not choose the best candidate function between: "
            f"{', '.join(_describe(s) for s in matching)}",
            status=300, code="invalid_argument", sqlstate="PGRST203",
        )
    # No overload fits: name the first offending argument of the closest one.
    best = max(overloads, key=lambda s: len(given & s.names))
    unknown = sorted(given - best.names)
    if unknown:
        raise _error(
            f"{schema}.{fn} has no argument named {clip(unknown[0])!r}",
            status=400, code="invalid_argument", sqlstate="PT400",
            details=f"arguments of {_describe(best)}",
            hint="invalid_argument",
        )
    missing = sorted(best.required - given)
    raise _error(
        f"{schema}.{fn} is missing the required argument {missing[0]!r}",
        status=400, code="invalid_argument", sqlstate="PT400",
        details=f"arguments of {_describe(best)}",
        hint="invalid_argument",
    )


def _describe(sig: Signature) -> str:
    args = ", ".join(f"{p.name} {p.type}" if p.name else p.type for p in sig.params)
    return f"{sig.schema}.{sig.name}({args})"


# ------------------------------------------------------------------------------------ call


def _json_type(value: Any) -> str:
    """What JSON calls a value (for messages): null, boolean, number, string, array, object."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, Mapping):
        return "object"
    if isinstance(value, list | tuple):
        return "array"
    return type(value).__name__


def _bad(label: str, message: str, *, sqlstate: str = "PT400", argument: str | None = None,
         **details: Any) -> ContractError:
    """400 invalid_argument naming the argument (details: {"argument": ..., ...})."""
    return _error(
        f"argument {label!r} {message}", status=400, code="invalid_argument",
        sqlstate=sqlstate, details=json.dumps({"argument": argument or label, **details}),
        hint="invalid_argument",
    )


def _bad_text_at(value: Any) -> str | None:
    """The path (`.a[2]`) of the first string or key holding a NUL or a lone surrogate."""
    stack: list[tuple[str, Any]] = [("", value)]
    while stack:
        path, item = stack.pop()
        if isinstance(item, str):
            if _BAD_TEXT.search(item):
                return path
        elif isinstance(item, Mapping):
            for key, child in item.items():
                if isinstance(key, str) and _BAD_TEXT.search(key):
                    return f"{path}.{clip(printable(key), 40)}"
                stack.append((f"{path}.{clip(printable(str(key)), 40)}", child))
        elif isinstance(item, list | tuple):
            stack.extend((f"{path}[{i}]", child) for i, child in enumerate(item))
    return None


def _json_argument(param: Param, value: Any, max_depth: int) -> Any:
    """A json/jsonb argument: any JSON, nested at most `max_depth` levels, without NUL
    characters or lone surrogates (PostgreSQL's jsonb cannot hold them), serialized once."""
    name = param.name or "body"
    try:
        text = json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except RecursionError:
        raise _bad(name, f"is nested deeper than {max_depth} levels", limit=max_depth) from None
    except (ValueError, TypeError) as exc:
        raise _bad(name, f"is not JSON: {clip(str(exc))}", sqlstate="22P02") from None
    depth = json_depth(text, max_depth)
    if depth > max_depth:
        raise _bad(name, f"is nested deeper than {max_depth} levels", limit=max_depth,
                   depth=depth)
    if "\\u0000" in text or _SURROGATE.search(text):
        where = _bad_text_at(value)
        if where is not None:
            raise _bad(name, f"holds a NUL character or a lone surrogate at {name}{where}",
                       sqlstate="22021", path=f"{name}{where}")
    dumped = text
    if param.type == "json":
        return Json(value, dumps=lambda _: dumped)
    return Jsonb(value, dumps=lambda _: dumped)


def _scalar(label: str, type_name: str, value: Any, argument: str) -> Any:
    """A non-JSON argument as strictly as PostgREST types them: a string for text (and for
    every type PostgreSQL parses from text: uuid, timestamptz...), a JSON integer within
    range for smallint/integer/bigint, true or false for boolean."""
    if isinstance(value, Mapping):
        raise _bad(label, f"must be a {type_name}, not an object", argument=argument,
                   expected=type_name)
    if isinstance(value, list | tuple):
        raise _bad(label, f"must be a {type_name}, not an array", argument=argument,
                   expected=type_name)
    bits = _INTEGER_BITS.get(type_name)
    if bits is not None:
        if isinstance(value, float) and value.is_integer():
            value = int(value)          # JSON has one number type: 3.0 is 3
        if isinstance(value, bool) or not isinstance(value, int):
            got = "a fractional number" if isinstance(value, float) else (
                f"a {_json_type(value)}")
            raise _bad(label, f"must be an integer ({type_name}), not {got}",
                       sqlstate="22P02", argument=argument, expected=type_name)
        if not -(2 ** (bits - 1)) <= value < 2 ** (bits - 1):
            raise _bad(label, f"is out of range for type {type_name}", sqlstate="22003",
                       argument=argument, expected=type_name)
        return value
    if type_name == "boolean":
        if not isinstance(value, bool):
            raise _bad(label, f"must be true or false (boolean), not a {_json_type(value)}",
                       sqlstate="22P02", argument=argument, expected=type_name)
        return value
    if type_name in _NUMBER_TYPES:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _bad(label, f"must be a number ({type_name}), not a {_json_type(value)}",
                       sqlstate="22P02", argument=argument, expected=type_name)
        return value
    if isinstance(value, str):
        if _BAD_TEXT.search(value):
            raise _bad(label, "holds a NUL character or a lone surrogate, which text "
                       "cannot hold", sqlstate="22021", argument=argument,
                       expected=type_name)
        return value
    if isinstance(value, bool | int | float):
        raise _bad(label, f"must be a string ({type_name}), not a {_json_type(value)}",
                   sqlstate="22P02", argument=argument, expected=type_name)
    if isinstance(value, uuid.UUID) and type_name in _TEXT_TYPES:
        return str(value)
    return value    # a Python value psycopg adapts itself (direct calls: datetime, UUID...)


def _adapt(param: Param, value: Any, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """A value as the parameter for `%s::<type>`, checked against the type first."""
    if value is None:
        return None
    if param.type in _JSON_TYPES:
        return _json_argument(param, value, max_depth)
    if not param.type.endswith("[]"):
        return _scalar(param.name, param.type, value, param.name)
    if isinstance(value, Mapping):
        raise _bad(param.name, f"must be a {param.type}, not an object", expected=param.type)
    if not isinstance(value, list | tuple):
        raise _bad(param.name, f"must be a {param.type} (a JSON array), not a "
                   f"{_json_type(value)}", sqlstate="22P02", expected=param.type)
    element = param.type[:-2]
    items = []
    for index, item in enumerate(value):
        if item is not None and isinstance(item, Mapping | list | tuple):
            raise _bad(param.name, f"must be an array of {element} values",
                       expected=param.type)
        items.append(None if item is None else
                     _scalar(f"{param.name}[{index}]", element, item, param.name))
    return items


def _prepare(
    conn: psycopg.Connection[Any], fn: str, given: dict[str, Any], schema: str,
    max_depth: int = MAX_JSON_DEPTH,
) -> tuple[Signature, sql.Composed, list[Any]]:
    """The overload that fits the given argument names, and the statement calling it.

    Every value is checked against its parameter's type before anything runs (`_adapt`):
    a refused one is a 400 `invalid_argument` naming the argument, never a driver error.
    """
    for name in given:
        if not isinstance(name, str) or _BAD_TEXT.search(name):
            raise _error(
                f"{schema}.{fn} has no argument named {clip(printable(str(name)))!r}",
                status=400, code="invalid_argument", sqlstate="PT400", hint="invalid_argument",
            )
    with wrap_errors(role=acting_role(conn)):
        overloads = signatures(conn, fn, schema=schema)
    if not overloads:
        raise _error(
            f"Could not find the function {schema}.{fn} in the schema cache",
            status=404, code="not_found", sqlstate="PGRST202", hint="not_found",
        )
    sig = _choose(overloads, frozenset(given), fn, schema)

    target = sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(fn))
    values: list[Any] = []
    if sig.single_unnamed_json:
        arguments = sql.SQL("({})::{}").format(sql.Placeholder(), sql.SQL(sig.params[0].type))
        values.append(_adapt(sig.params[0], given, max_depth))
    else:
        parts = []
        by_name = {p.name: p for p in sig.params}
        for name, value in given.items():
            param = by_name[name]
            cast = sql.SQL("{} => ({})::{}").format(
                sql.Identifier(name), sql.Placeholder(), sql.SQL(param.type)
            )
            if param.variadic:
                cast = sql.SQL("variadic ") + cast
            parts.append(cast)
            values.append(_adapt(param, value, max_depth))
        arguments = sql.SQL(", ").join(parts)
    invocation = sql.SQL("{}({})").format(target, arguments)
    if sig.returns_composite:
        return sig, sql.SQL("select * from {}").format(invocation), values
    return sig, sql.SQL("select {}").format(invocation), values


def _result(sig: Signature, cur: psycopg.Cursor[Any]) -> Any:
    rows = cur.fetchall()
    columns = [column.name for column in cur.description or ()]
    if sig.returns_composite:
        records = [dict(zip(columns, row, strict=True)) for row in rows]
        if sig.returns_set:
            return records
        return records[0] if records else None
    if sig.returns_set:
        return [row[0] for row in rows]
    if not rows or sig.return_type == "void":
        return None
    return rows[0][0]


def call(
    conn: psycopg.Connection[Any],
    fn: str,
    args: Mapping[str, Any] | None = None,
    *,
    schema: str = "ops",
    max_depth: int = MAX_JSON_DEPTH,
) -> Any:
    """Call `schema.fn(name => value, ...)` as PostgREST's `POST /rpc/fn` does; return its result.

    Arguments are matched by name against the catalog (an unknown name fails with 400
    before anything runs), checked strictly against their declared types (a JSON boolean is
    not text, 2.5 not an integer; json arguments nested at most `max_depth` levels; no NUL
    or lone surrogate in any string) and cast to them. A scalar result comes back as a
    Python value (jsonb decoded), a composite one as a dict, a set as a list.
    """
    sig, statement, values = _prepare(conn, fn, dict(args or {}), schema, max_depth)
    with wrap_errors(role=acting_role(conn)), conn.cursor() as cur:
        cur.execute(statement, values)
        return _result(sig, cur)


def call_as(
    conn: psycopg.Connection[Any],
    fn: str,
    args: Mapping[str, Any] | None = None,
    *,
    role: str,
    sub: str | None = None,
    claims: Mapping[str, Any] | None = None,
    now: datetime | None = None,
    schema: str = "ops",
    max_depth: int = MAX_JSON_DEPTH,
) -> Any:
    """One whole request in one round trip: `acting_as()` + `call()` on an autocommit connection.

    The request settings and the call go out as one simple-query message, which PostgreSQL runs
    as one implicit transaction (so the `set_config(..., true)` settings hold for the call and
    vanish with it; an error rolls everything back), with the arguments bound client-side by
    psycopg's quoting.
    """
    if role not in API_ROLES:
        raise ValueError(f"role must be one of {', '.join(API_ROLES)}, not {role!r}")
    if not conn.autocommit:
        raise RuntimeError("call_as() needs a connection in autocommit mode")
    sig, statement, values = _prepare(conn, fn, dict(args or {}), schema, max_depth)
    all_claims: dict[str, Any] = dict(claims or {})
    all_claims["role"] = role
    if sub is not None:
        all_claims["sub"] = str(sub)
    request = sql.SQL(query("set_request_context_positional"))
    params = [role, json.dumps(all_claims, default=str), now.isoformat() if now else "", *values]
    with wrap_errors(role=role), psycopg.ClientCursor(conn) as cur:
        cur.execute(request + sql.SQL(";\n") + statement, params)
        cur.nextset()
        return _result(sig, cur)


# ---------------------------------------------------------------------------------- status


@dataclass(frozen=True)
class DatabaseStatus:
    server_version: str
    database: str
    has_history: bool
    migrations_applied: int
    latest_migration: str | None
    has_ops: bool
    workspaces: int | None
    runs_by_state: dict[str, int]
    phases_by_state: dict[str, int]


def database_status(conn: psycopg.Connection[Any]) -> DatabaseStatus:
    """Server version, applied migrations and counts of workspaces, runs and phases."""
    with conn.cursor(row_factory=dict_row) as cur:
        info = cur.execute(query("server_info")).fetchone()
        assert info is not None
        applied, latest = 0, None
        if info["has_history"]:
            summary = cur.execute(query("migration_summary")).fetchone()
            assert summary is not None
            applied, latest = int(summary["applied"]), summary["latest"]
    workspaces: int | None = None
    runs: dict[str, int] = {}
    phases: dict[str, int] = {}
    if info["has_ops"]:
        with conn.cursor() as cur:
            row = cur.execute(query("count_workspaces")).fetchone()
            workspaces = int(row[0]) if row else 0
            runs = {str(s): int(n) for s, n in cur.execute(query("runs_by_state")).fetchall()}
            phases = {str(s): int(n) for s, n in cur.execute(query("phases_by_state")).fetchall()}
    return DatabaseStatus(
        server_version=str(info["server_version"]),
        database=str(info["database"]),
        has_history=bool(info["has_history"]),
        migrations_applied=applied,
        latest_migration=latest,
        has_ops=bool(info["has_ops"]),
        workspaces=workspaces,
        runs_by_state=runs,
        phases_by_state=phases,
    )
