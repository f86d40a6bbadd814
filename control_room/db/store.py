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


def _error(message: str, *, status: int, code: str, sqlstate: str | None = None,
           details: str | None = None, hint: str | None = None) -> ContractError:
    """The contract's error of machine code `code` (its subclass: LeaseLost, NotFound...)."""
    return error_for(code, message, status=status, sqlstate=sqlstate, details=details,
                     hint=hint)


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
            f"{schema}.{fn} has no argument named {unknown[0]!r}",
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


def _adapt(param: Param, value: Any) -> Any:
    """A Python value as the parameter for `%s::<type>` (like PostgREST's json_to_record)."""
    if value is None:
        return None
    if param.type == "jsonb":
        return Jsonb(value)
    if param.type == "json":
        return Json(value)
    if isinstance(value, Mapping):
        raise _error(
            f"argument {param.name!r} must be a {param.type}, not an object",
            status=400, code="invalid_argument", sqlstate="PT400", hint="invalid_argument",
        )
    if isinstance(value, bool) and param.type != "boolean":
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        if not param.type.endswith("[]"):
            raise _error(
                f"argument {param.name!r} must be a {param.type}, not an array",
                status=400, code="invalid_argument", sqlstate="PT400", hint="invalid_argument",
            )
        for item in value:
            if item is not None and not isinstance(item, str | int | float):
                raise _error(
                    f"argument {param.name!r} must be an array of {param.type[:-2]} values",
                    status=400, code="invalid_argument", sqlstate="PT400",
                    hint="invalid_argument",
                )
        return list(value)
    return value


def _prepare(
    conn: psycopg.Connection[Any], fn: str, given: dict[str, Any], schema: str
) -> tuple[Signature, sql.Composed, list[Any]]:
    """The overload that fits the given argument names, and the statement calling it."""
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
        values.append(_adapt(sig.params[0], given))
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
            values.append(_adapt(param, value))
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
) -> Any:
    """Call `schema.fn(name => value, ...)` as PostgREST's `POST /rpc/fn` does; return its result.

    Arguments are matched by name against the catalog (an unknown name fails with 400
    before anything runs) and cast to their declared types. A scalar result comes back as
    a Python value (jsonb decoded), a composite one as a dict, a set as a list.
    """
    sig, statement, values = _prepare(conn, fn, dict(args or {}), schema)
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
    sig, statement, values = _prepare(conn, fn, dict(args or {}), schema)
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
