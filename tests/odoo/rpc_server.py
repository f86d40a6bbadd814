"""A local HTTP server answering Odoo's JSON-RPC (`POST /jsonrpc`) from a generated Odoo
database, in the documented request, response and error shapes (odoo/http.py
`JsonRPCDispatcher`; odoo/service/common.py `version`, `authenticate`; odoo/service/model.py
`execute_kw`; models.py `fields_get`, `search_read`, `search_count`), for the API extraction's
tests and benchmark: what a hosted Odoo answers, without an Odoo.

What it implements of Odoo: authentication by API key (`common.authenticate` answers the uid
or False; `execute_kw` with a wrong uid or key fails with `odoo.exceptions.AccessDenied`),
models whose access is refused (`odoo.exceptions.AccessError`, the message Odoo gives),
`fields_get` from the table's columns (a foreign key is a many2one to the referenced table's
model, a jsonb column a translatable char except Json fields, `sale.order.line.invoice_lines`
the many2many over `sale_order_line_invoice_rel`), domains in Polish notation (`&`, `|`, `!`,
`=`, `!=`, `<`, `<=`, `>`, `>=`, `in`, `not in`, `False` as null, an x2many `!= False`),
`limit`, `offset`, `order`, the context's `active_test` (default True: archived rows hidden)
and `lang` (a translatable field answers its text in that language), and values in the ORM's
shape (`false` for empty, `[id, name]` for a many2one, datetimes as "YYYY-MM-DD HH:MM:SS").
"""

from __future__ import annotations

import contextlib
import datetime as dt
import decimal
import http.server
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from pipelines.odoo.extract_api import MODELS

M2M = {("sale.order.line", "invoice_lines"): ("sale_order_line_invoice_rel", "order_line_id",
                                               "invoice_line_id", "account.move.line")}
JSON_FIELDS = frozenset({"analytic_distribution"})
TABLES = {model: table for table, model in MODELS.items()}


class OdooError(Exception):
    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name, self.message = name, message


@dataclass
class OdooServer:
    """The server's settings; `url` once started (`serving`)."""

    dsn: str
    database: str = "odoo"
    login: str = "bot@example.com"
    api_key: str = "0123456789abcdef0123456789abcdef01234567"
    uid: int = 2
    forbidden: set[str] = field(default_factory=set)
    url: str = ""
    requests: int = 0

    # -- the services ---------------------------------------------------------------------

    def dispatch(self, service: str, method: str, args: list[Any]) -> Any:
        if service == "common" and method == "version":
            serie = self._serie()
            return {"server_version": serie, "server_version_info": [*serie.split("."), 0,
                                                                     "final", 0, ""],
                    "server_serie": serie, "protocol_version": 1}
        if service == "common" and method in ("authenticate", "login"):
            db, login, key = args[0], args[1], args[2]
            return self.uid if (db, login, key) == (self.database, self.login,
                                                    self.api_key) else False
        if service == "object" and method == "execute_kw":
            db, uid, key, model, name = args[:5]
            call_args = args[5] if len(args) > 5 else []
            kwargs = args[6] if len(args) > 6 else {}
            if (db, uid, key) != (self.database, self.uid, self.api_key):
                raise OdooError("odoo.exceptions.AccessDenied", "Access Denied")
            if model in self.forbidden:
                raise OdooError("odoo.exceptions.AccessError",
                                f"You are not allowed to access '{model}' ({model}) records."
                                "\n\nThis operation is allowed for the following groups:\n"
                                "\t- Accounting/Billing")
            return self._execute(model, name, list(call_args), dict(kwargs))
        raise OdooError("builtins.KeyError", f"'{service}.{method}'")

    def _serie(self) -> str:
        with psycopg.connect(self.dsn) as conn:
            row = conn.execute("select latest_version from ir_module_module "
                               "where name = 'base'").fetchone()
        return ".".join(str(row[0]).split(".")[:2]) if row else "17.0"

    def _table(self, model: str) -> str:
        table = TABLES.get(model, model.replace(".", "_"))
        return table

    def _fields(self, conn: psycopg.Connection[Any], model: str) -> dict[str, dict[str, Any]]:
        table = self._table(model)
        fks = dict(conn.execute(
            "select a.attname, cf.relname from pg_constraint c "
            "join pg_attribute a on a.attrelid = c.conrelid and a.attnum = c.conkey[1] "
            "join pg_class cf on cf.oid = c.confrelid "
            "where c.contype = 'f' and c.conrelid = to_regclass(%s)", [table]).fetchall())
        found: dict[str, dict[str, Any]] = {}
        for name, kind in conn.execute(
                "select column_name, data_type from information_schema.columns "
                "where table_schema = 'public' and table_name = %s order by ordinal_position",
                [table]).fetchall():
            spec: dict[str, Any] = {"store": True, "translate": False}
            if name in fks:
                spec.update(type="many2one", relation=MODELS.get(
                    fks[name], fks[name].replace("_", ".")))
            elif kind == "integer":
                spec["type"] = "integer"
            elif kind in ("numeric", "double precision"):
                spec["type"] = "float"
            elif kind == "boolean":
                spec["type"] = "boolean"
            elif kind == "date":
                spec["type"] = "date"
            elif kind.startswith("timestamp"):
                spec["type"] = "datetime"
            elif kind == "jsonb":
                spec.update(type="json") if name in JSON_FIELDS else spec.update(
                    type="char", translate=True)
            elif kind == "text":
                spec["type"] = "text"
            else:
                spec["type"] = "char"
            found[name] = spec
        if not found:
            raise OdooError("builtins.KeyError", f"'{model}'")
        for (owner, name), (rel, col1, col2, relation) in M2M.items():
            if owner == model:
                found[name] = {"type": "many2many", "store": True, "translate": False,
                               "relation": relation, "relation_table": rel, "column1": col1,
                               "column2": col2}
        # a computed, non-stored field, as every model has
        found["display_name"] = {"type": "char", "store": False, "translate": False}
        return found

    def _execute(self, model: str, method: str, args: list[Any],
                 kwargs: dict[str, Any]) -> Any:
        context = kwargs.pop("context", {}) or {}
        with psycopg.connect(self.dsn) as conn:
            fields = self._fields(conn, model)
            if method == "fields_get":
                wanted = kwargs.get("attributes")
                return {n: ({k: v for k, v in s.items() if k in wanted} | {"type": s["type"]}
                            if wanted else s) for n, s in fields.items()}
            domain = args[0] if args else kwargs.get("domain", [])
            where = self._where(model, fields, list(domain), context)
            table = sql.Identifier(self._table(model))
            if method == "search_count":
                row = conn.execute(sql.SQL("select count(*) from {} where {}").format(
                    table, where)).fetchone()
                return int(row[0]) if row else 0
            if method != "search_read":
                raise OdooError("builtins.AttributeError",
                                f"The method '{method}' does not exist on the model '{model}'")
            names = kwargs.get("fields") or [n for n, s in fields.items() if s["store"]]
            unknown = [n for n in names if n not in fields]
            if unknown:
                raise OdooError("builtins.ValueError",
                                f"Invalid field {unknown[0]!r} on model {model!r}")
            order = self._order(fields, str(kwargs.get("order") or "id"))
            selected = [self._select(model, n, fields[n]) for n in names]
            statement = sql.SQL("select {} from {} where {} order by {}").format(
                sql.SQL(", ").join(selected), table, where, order)
            if kwargs.get("limit"):
                statement = sql.SQL("{} limit {}").format(statement,
                                                          sql.Literal(int(kwargs["limit"])))
            if kwargs.get("offset"):
                statement = sql.SQL("{} offset {}").format(statement,
                                                           sql.Literal(int(kwargs["offset"])))
            lang = str(context.get("lang") or "en_US")
            rows = conn.execute(statement).fetchall()
        return [{n: self._value(fields[n], v, lang) for n, v in zip(names, row, strict=True)}
                for row in rows]

    def _select(self, model: str, name: str, spec: dict[str, Any]) -> sql.Composable:
        if spec["type"] == "many2many":
            rel, col1, col2, _ = M2M[(model, name)]
            return sql.SQL("array(select r.{} from {} r where r.{} = {}.id order by 1)").format(
                sql.Identifier(col2), sql.Identifier(rel), sql.Identifier(col1),
                sql.Identifier(self._table(model)))
        if not spec["store"]:
            return sql.SQL("null")
        return sql.Identifier(name)

    def _value(self, spec: dict[str, Any], value: Any, lang: str) -> Any:
        kind = spec["type"]
        if kind == "many2many":
            return list(value or [])
        if value is None:
            return False
        if kind == "many2one":
            return [value, f"{spec['relation']},{value}"]
        if kind == "datetime":
            return value.strftime("%Y-%m-%d %H:%M:%S")
        if kind == "date":
            return value.isoformat()
        if isinstance(value, decimal.Decimal):
            return float(value)
        if spec.get("translate") and isinstance(value, dict):
            return value.get(lang, value.get("en_US"))
        return value

    def _order(self, fields: dict[str, dict[str, Any]], order: str) -> sql.Composable:
        parts = []
        for item in order.split(","):
            words = item.split()
            if not words or words[0] not in fields or len(words) > 2 or (
                    len(words) == 2 and words[1].lower() not in ("asc", "desc")):
                raise OdooError("builtins.ValueError", f"Invalid \"order\" specified ({order})")
            parts.append(sql.SQL("{} {}").format(sql.Identifier(words[0]), sql.SQL(
                words[1].lower() if len(words) == 2 else "asc")))
        return sql.SQL(", ").join(parts)

    def _where(self, model: str, fields: dict[str, dict[str, Any]], domain: list[Any],
               context: dict[str, Any]) -> sql.Composable:
        if context.get("active_test", True) and "active" in fields:
            domain = ["&", ("active", "=", True), *domain] if domain else [("active", "=",
                                                                            True)]
        if not domain:
            return sql.SQL("true")
        items = list(domain)
        # implicit '&' between consecutive terms, as Odoo's normalize_domain
        expected, normalized = 1, list[Any]()
        for item in items:
            if expected == 0:
                normalized.insert(0, "&")
                expected = 1
            normalized.append(item)
            expected += 1 if item in ("&", "|") else 0 if item == "!" else -1
        stack: list[sql.Composable] = []
        for item in reversed(normalized):
            if item in ("&", "|"):
                left, right = stack.pop(), stack.pop()
                stack.append(sql.SQL("({} {} {})").format(
                    left, sql.SQL("and" if item == "&" else "or"), right))
            elif item == "!":
                stack.append(sql.SQL("(not {})").format(stack.pop()))
            else:
                stack.append(self._term(model, fields, item))
        return stack[0]

    def _term(self, model: str, fields: dict[str, dict[str, Any]], term: Any) -> sql.Composable:
        name, op, value = term
        spec = fields.get(name)
        if spec is None:
            raise OdooError("builtins.ValueError", f"Invalid field {model}.{name} in leaf "
                                                   f"{tuple(term)}")
        if spec["type"] == "many2many":
            rel, col1, _, _ = M2M[(model, name)]
            exists = sql.SQL("exists (select 1 from {} r where r.{} = {}.id)").format(
                sql.Identifier(rel), sql.Identifier(col1), sql.Identifier(self._table(model)))
            if (op, value) == ("!=", False):
                return exists
            raise OdooError("builtins.ValueError", f"unsupported leaf {tuple(term)}")
        column = sql.Identifier(name)
        if value is False and spec["type"] != "boolean" and op in ("=", "!="):
            return sql.SQL("{} is {}null").format(column, sql.SQL("" if op == "=" else "not "))
        if op in ("in", "not in"):
            values = sql.SQL(", ").join(sql.Literal(v) for v in value) if value else None
            if values is None:
                return sql.SQL("false" if op == "in" else "true")
            return sql.SQL("{} {} ({})").format(column, sql.SQL(op), values)
        if op not in ("=", "!=", "<", "<=", ">", ">="):
            raise OdooError("builtins.ValueError", f"Invalid leaf {tuple(term)}")
        if op == "!=":
            return sql.SQL("{} is distinct from {}").format(column, sql.Literal(value))
        return sql.SQL("{} {} {}").format(column, sql.SQL(op), sql.Literal(value))


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _HTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        if self.path != "/jsonrpc":
            self.send_error(404)
            return
        odoo = self.server.odoo
        odoo.requests += 1
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        request_id = body.get("id")
        params = body.get("params") or {}
        try:
            result = odoo.dispatch(str(params.get("service")), str(params.get("method")),
                                   list(params.get("args") or []))
            answer: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "result": result}
        except OdooError as exc:
            answer = {"jsonrpc": "2.0", "id": request_id, "error": {
                "code": 200, "message": "Odoo Server Error",
                "data": {"name": exc.name, "debug": f"Traceback (most recent call last):\n"
                                                    f"{exc.name}: {exc.message}\n",
                         "message": exc.message, "arguments": [exc.message],
                         "context": {}}}}
        data = json.dumps(answer, default=_json_default).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def _json_default(value: Any) -> Any:
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return float(value)
    raise TypeError(type(value).__name__)


class _HTTPServer(http.server.ThreadingHTTPServer):
    odoo: OdooServer


@contextlib.contextmanager
def serving(odoo: OdooServer) -> Iterator[OdooServer]:
    """`odoo` answering on 127.0.0.1 (a free port: `odoo.url`) for the block."""
    server = _HTTPServer(("127.0.0.1", 0), _Handler)
    server.odoo = odoo
    odoo.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield odoo
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
