"""contract/openapi.yaml against itself (valid OpenAPI 3.1, references, examples) and against
the functions of schema `ops` in a migrated database (names, arguments, defaults, types)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from openapi_spec_validator import validate as validate_openapi
from psycopg.rows import dict_row

from tests.openapi_doc import (
    MACHINE_CODES,
    OPENAPI_PATH,
    deref,
    escape_pointer_token,
    load_openapi,
    operation_pointer,
    request_schema,
    resolve_pointer,
    rpc_operations,
    schema_errors,
    validator_for_pointer,
    walk_refs,
)

# Every function of schema ops with its input arguments, defaults and source.
CATALOG_QUERY = """
select p.proname as name, p.oid::regprocedure::text as signature,
       coalesce(p.proargnames, '{}') as arg_names,
       coalesce(p.proargmodes::text[], '{}') as arg_modes,
       array(select pg_catalog.format_type(t.oid, null)
             from unnest(p.proargtypes::oid[]) with ordinality as t(oid, ord)
             order by t.ord) as in_types,
       p.pronargdefaults as n_defaults,
       pg_catalog.pg_get_function_arguments(p.oid) as arguments,
       p.prosrc as source
from pg_catalog.pg_proc p join pg_catalog.pg_namespace n on n.oid = p.pronamespace
where n.nspname = 'ops' and p.prokind = 'f'
order by p.proname, p.oid
"""

# The JSON types PostgREST accepts for an SQL argument type (jsonb: any JSON value).
SQL_TO_JSON: dict[str, frozenset[str] | None] = {
    "text": frozenset({"string"}),
    "integer": frozenset({"integer"}),
    "bigint": frozenset({"integer"}),
    "boolean": frozenset({"boolean"}),
    "text[]": frozenset({"array"}),
    "jsonb": None,
}


@dataclass(frozen=True)
class Arg:
    name: str
    sql_type: str
    has_default: bool
    default_is_null: bool


@dataclass(frozen=True)
class Function:
    name: str
    signature: str
    args: tuple[Arg, ...]
    source: str


def _split_arguments(arguments: str) -> list[str]:
    """`pg_get_function_arguments` text split into one piece per argument."""
    if not arguments.strip():
        return []
    return re.split(r", (?=\"?[A-Za-z_][A-Za-z0-9_]*\"? )", arguments)


def catalog_functions(conn: psycopg.Connection[Any]) -> dict[str, list[Function]]:
    """Function name -> its overloads, read from pg_catalog."""
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(CATALOG_QUERY).fetchall()
    out: dict[str, list[Function]] = {}
    for row in rows:
        modes = list(row["arg_modes"]) or ["i"] * len(row["in_types"])
        names = [n for n, m in zip(row["arg_names"], modes, strict=False) if m in ("i", "b", "v")]
        types = list(row["in_types"])
        pieces = _split_arguments(row["arguments"])
        assert len(names) == len(types) == len(pieces), (
            f"could not read the arguments of {row['signature']}: names {names}, types {types}, "
            f"pg_get_function_arguments {row['arguments']!r}"
        )
        first_default = len(names) - int(row["n_defaults"])
        args = tuple(
            Arg(
                name=name,
                sql_type=sql_type,
                has_default=i >= first_default,
                default_is_null=" DEFAULT NULL::" in piece or piece.endswith(" DEFAULT NULL"),
            )
            for i, (name, sql_type, piece) in enumerate(zip(names, types, pieces, strict=True))
        )
        out.setdefault(row["name"], []).append(
            Function(row["name"], row["signature"], args, row["source"])
        )
    return out


def schema_types(doc: dict[str, Any], schema: Any) -> frozenset[str] | None:
    """The JSON types a schema admits, or None when it does not restrict them."""
    schema = deref(doc, schema)
    if not isinstance(schema, dict):
        return None
    if "type" in schema:
        declared = schema["type"]
        return frozenset(declared if isinstance(declared, list) else [declared])
    if "const" in schema:
        return frozenset({_json_type(schema["const"])})
    if "enum" in schema:
        return frozenset(_json_type(v) for v in schema["enum"])
    branches = schema.get("anyOf") or schema.get("oneOf")
    if branches:
        found = [schema_types(doc, b) for b in branches]
        if any(t is None for t in found):
            return None
        return frozenset().union(*(t for t in found if t is not None))
    if "allOf" in schema:
        restricting = [t for t in (schema_types(doc, b) for b in schema["allOf"]) if t is not None]
        if not restricting:
            return None
        result = restricting[0]
        for t in restricting[1:]:
            result &= t
        return result
    return None


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def auditing_functions(conn: psycopg.Connection[Any]) -> frozenset[str]:
    """The ops functions that write an audit row: those whose source calls
    ops_private.audit, or calls (transitively) an ops or ops_private function that does
    (claim_phases claims through ops_private.claim_next, complete_phases through
    ops.complete_phase)."""
    rows = conn.execute(
        "select n.nspname || '.' || p.proname, p.prosrc from pg_catalog.pg_proc p"
        " join pg_catalog.pg_namespace n on n.oid = p.pronamespace"
        " where n.nspname in ('ops', 'ops_private')").fetchall()
    sources: dict[str, str] = {}
    for name, source in rows:
        sources[str(name)] = sources.get(str(name), "") + str(source)
    auditing = {"ops_private.audit"}
    while True:
        more = {name for name, source in sources.items() if name not in auditing
                and any(f"{callee}(" in source for callee in auditing)}
        if not more:
            return frozenset(n.removeprefix("ops.") for n in auditing if n.startswith("ops."))
        auditing |= more


def function_problems(doc: dict[str, Any], functions: dict[str, list[Function]],
                      auditing: frozenset[str] | None = None) -> list[str]:
    """Every disagreement between the catalog and the document, one readable line each.
    `auditing`: the functions that audit (auditing_functions); without it, those whose own
    source calls ops_private.audit."""
    problems: list[str] = []
    operations = rpc_operations(doc)
    for name in sorted(set(functions) - set(operations)):
        problems.append(f"ops.{name} exists in the database but {OPENAPI_PATH.name} has no "
                        f"POST /rpc/{name}: {functions[name][0].signature}")
    for name in sorted(set(operations) - set(functions)):
        problems.append(f"{OPENAPI_PATH.name} describes POST /rpc/{name} but schema ops has no "
                        f"function {name}")
    for name in sorted(set(functions) & set(operations)):
        overloads = functions[name]
        if len(overloads) > 1:
            problems.append(f"ops.{name} has {len(overloads)} overloads "
                            f"({'; '.join(f.signature for f in overloads)}); the contract "
                            f"describes one signature per function")
            continue
        fn = overloads[0]
        op = operations[name]
        where = f"ops.{name} vs POST /rpc/{name}"
        if op.get("operationId") != name:
            problems.append(f"{where}: operationId is {op.get('operationId')!r}, not {name!r}")
        body = request_schema(doc, name)
        props: dict[str, Any] = body.get("properties", {})
        required = set(body.get("required", []))
        sql_names = [a.name for a in fn.args]
        for missing in sorted(set(sql_names) - set(props)):
            problems.append(f"{where}: argument {missing!r} is not a request body property "
                            f"(properties: {sorted(props)})")
        for extra in sorted(set(props) - set(sql_names)):
            problems.append(f"{where}: request body property {extra!r} is not an argument "
                            f"(arguments: {sql_names})")
        for extra in sorted(required - set(props)):
            problems.append(f"{where}: {extra!r} is listed as required but is not a property")
        if body.get("additionalProperties") is not False:
            problems.append(f"{where}: the request body must set additionalProperties: false")
        for arg in fn.args:
            if arg.name not in props:
                continue
            if arg.has_default and arg.name in required:
                problems.append(f"{where}: argument {arg.name!r} has a default in SQL but is "
                                f"required in the request body")
            if not arg.has_default and arg.name not in required:
                problems.append(f"{where}: argument {arg.name!r} has no default in SQL but is "
                                f"not required in the request body")
            problems += _type_problems(doc, where, arg, props[arg.name])
        audited = (name in auditing) if auditing is not None else "ops_private.audit(" in fn.source
        if op.get("x-audited") is not audited:
            problems.append(f"{where}: x-audited is {op.get('x-audited')!r} but the function "
                            f"{'calls' if audited else 'does not call'} ops_private.audit")
    return problems


def _type_problems(doc: dict[str, Any], where: str, arg: Arg, schema: Any) -> list[str]:
    if arg.sql_type not in SQL_TO_JSON:
        return [f"{where}: argument {arg.name!r} has SQL type {arg.sql_type}, which this test "
                f"cannot map to a JSON type (extend SQL_TO_JSON)"]
    declared = schema_types(doc, schema)
    problems: list[str] = []
    expected = SQL_TO_JSON[arg.sql_type]
    if expected is not None and (declared is None or declared - {"null"} != expected):
        problems.append(f"{where}: argument {arg.name!r} is SQL {arg.sql_type}, so its "
                        f"JSON type must be {sorted(expected)}, but the schema admits "
                        f"{sorted(declared) if declared is not None else 'anything'}")
    admits_null = declared is None or "null" in declared
    if arg.default_is_null and not admits_null:
        problems.append(f"{where}: argument {arg.name!r} defaults to NULL, so the schema must "
                        f"admit null (it admits {sorted(declared or [])})")
    if not arg.has_default and admits_null:
        problems.append(f"{where}: argument {arg.name!r} is required and the function refuses "
                        f"NULL, so the schema must not admit null")
    return problems


# ----------------------------------------------------------------------------- the tests


def test_every_function_and_operation_agree(conn: psycopg.Connection[Any]) -> None:
    functions = catalog_functions(conn)
    assert len(functions) >= 13, f"schema ops has only {sorted(functions)}: not migrated?"
    problems = function_problems(load_openapi(), functions, auditing_functions(conn))
    assert not problems, "contract/openapi.yaml disagrees with schema ops:\n" + "\n".join(problems)


def test_a_missing_or_renamed_argument_is_reported(conn: psycopg.Connection[Any]) -> None:
    """The comparison itself catches what it must: a function altered in the database."""
    conn.execute("alter function ops.cancel_run(text, text) rename to cancel_run_renamed")
    conn.execute("create function ops.cancel_run(run_id integer default null, why text "
                 "default null) returns jsonb language sql as $$ select null::jsonb $$")
    problems = function_problems(load_openapi(), catalog_functions(conn))
    text = "\n".join(problems)
    assert "ops.cancel_run_renamed exists in the database" in text, text
    assert "argument 'why' is not a request body property" in text, text
    assert "request body property 'reason' is not an argument" in text, text
    assert "argument 'run_id' has a default in SQL but is required" in text, text
    assert "argument 'run_id' is SQL integer, so its JSON type must be ['integer']" in text, text
    assert "argument 'run_id' defaults to NULL, so the schema must admit null" in text, text
    assert "x-audited is True but the function does not call ops_private.audit" in text, text


def test_document_is_valid_openapi_3_1() -> None:
    doc = load_openapi()
    assert doc["openapi"].startswith("3.1."), f"openapi is {doc['openapi']}, not 3.1.x"
    validate_openapi(doc)   # raises, naming the problem, when the document is not valid


def test_every_ref_resolves() -> None:
    doc = load_openapi()
    refs = list(walk_refs(doc))
    assert len(refs) > 100, f"only {len(refs)} $refs found: is the walker broken?"
    unresolved = []
    for where, ref in refs:
        try:
            resolve_pointer(doc, ref)
        except KeyError as exc:
            unresolved.append(f"{where}: {exc}")
    assert not unresolved, "unresolved $ref:\n" + "\n".join(unresolved)


def test_examples_match_their_schemas() -> None:
    doc = load_openapi()
    checked = 0
    problems: list[str] = []
    for fn, op in rpc_operations(doc).items():
        for status, response in op["responses"].items():
            base = operation_pointer(fn) + f"/responses/{status}"
            if "$ref" in response:
                base = response["$ref"]
                response = deref(doc, response)
            for media, content in response.get("content", {}).items():
                pointer = f"{base}/content/{escape_pointer_token(media)}/schema"
                validator = validator_for_pointer(pointer)
                for name, example in content.get("examples", {}).items():
                    value = deref(doc, example)["value"]
                    checked += 1
                    for error in schema_errors(validator, value):
                        problems.append(f"{fn} {status} example {name!r}: {error}")
    assert checked >= 15, f"only {checked} examples were checked"
    assert not problems, "examples that do not match their schemas:\n" + "\n".join(problems)


def test_every_operation_speaks_postgrest() -> None:
    """Servers, headers, security and error bodies are the same on every operation."""
    doc = load_openapi()
    urls = {s["url"] for s in doc["servers"]}
    assert urls == {"https://{project_ref}.supabase.co/rest/v1", "http://127.0.0.1:8787/rest/v1"}
    supabase = next(s for s in doc["servers"] if "supabase" in s["url"])
    assert "project_ref" in supabase["variables"]
    schemes = doc["components"]["securitySchemes"]
    assert schemes["bearerAuth"]["scheme"] == "bearer"
    assert schemes["apikey"] == {**schemes["apikey"], "type": "apiKey", "in": "header",
                                 "name": "apikey"}
    assert doc["security"] == [{"bearerAuth": [], "apikey": []}]
    error_ref = "#/components/schemas/Error"
    problems: list[str] = []
    for fn, op in rpc_operations(doc).items():
        params = [deref(doc, p) for p in op.get("parameters", [])]
        if not any(p["name"] == "Content-Profile" and p["in"] == "header" and p["required"]
                   and p["schema"].get("const") == "ops" for p in params):
            problems.append(f"{fn}: no required Content-Profile: ops header parameter")
        if "200" not in op["responses"]:
            problems.append(f"{fn}: no 200 response")
        for status, response in op["responses"].items():
            if int(status) < 400:
                continue
            schema = deref(doc, response)["content"]["application/json"]["schema"]
            if schema != {"$ref": error_ref}:
                problems.append(f"{fn} {status}: the body must be {error_ref}, not {schema}")
        for key in ("summary", "description"):
            if not str(op.get(key, "")).strip():
                problems.append(f"{fn}: no {key}")
        if not op.get("x-roles"):
            problems.append(f"{fn}: no x-roles")
    assert not problems, "\n".join(problems)


def test_error_codes_are_the_documented_machine_codes() -> None:
    """Every hint used in an error example is one of the codes the document lists."""
    doc = load_openapi()
    description = doc["info"]["description"]
    for code in MACHINE_CODES:
        assert f"`{code}`" in description, f"machine code {code} is not described in info"
    hints = {example["value"]["hint"] for example in doc["components"]["examples"].values()
             if isinstance(example["value"], dict) and "hint" in example["value"]}
    assert hints, "no error examples found"
    assert hints <= MACHINE_CODES, f"undocumented hints in examples: {hints - MACHINE_CODES}"


@pytest.mark.parametrize("body", [{}, {"run_id": "x"}, {"run_id": None}])
def test_request_schemas_refuse_what_the_functions_refuse(body: dict[str, Any]) -> None:
    """A spot check that request schemas are strict: get_run needs a UUID run_id."""
    doc = load_openapi()
    pointer = "#/components/schemas/GetRunArgs"
    assert deref(doc, {"$ref": pointer}) is request_schema(doc, "get_run")
    assert schema_errors(validator_for_pointer(pointer), body), f"{body} should be refused"
