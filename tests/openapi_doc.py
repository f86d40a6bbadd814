"""contract/openapi.yaml for tests: loading, `$ref` resolution and JSON Schema validators.

The schemas are OpenAPI 3.1 (JSON Schema 2020-12 with the OAS dialect); results are validated
with `openapi_schema_validator.OAS31Validator`, a `jsonschema` validator class for that
dialect, with the whole document registered so that `#/components/...` references resolve.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from openapi_schema_validator import OAS31Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from control_room.settings import default_contract_file

REPO = Path(__file__).resolve().parents[1]
OPENAPI_PATH = default_contract_file()
DOC_URI = "urn:control-room:contract:openapi"

MACHINE_CODES = frozenset({
    "invalid_argument", "unauthorized", "forbidden", "not_found", "conflict", "lease_lost",
    "payload_too_large",
})


@functools.cache
def load_openapi() -> dict[str, Any]:
    """The parsed document (cached: treat it as read-only)."""
    with OPENAPI_PATH.open(encoding="utf-8") as f:
        # libyaml's loader when present: 0.08 s instead of 0.66 s per test process
        doc = yaml.load(f, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    assert isinstance(doc, dict), f"{OPENAPI_PATH} is not a YAML mapping"
    return doc


def escape_pointer_token(token: str) -> str:
    return token.replace("~", "~0").replace("/", "~1")


def resolve_pointer(doc: Any, ref: str) -> Any:
    """The target of a local `$ref` (`#/a/b`); KeyError naming the first missing token."""
    if not ref.startswith("#"):
        raise KeyError(f"{ref}: only local references (#/...) are used in this document")
    node = doc
    pointer = ref[1:]
    if not pointer:
        return node
    for raw in pointer.lstrip("/").split("/"):
        token = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and token in node:
            node = node[token]
        elif isinstance(node, list) and token.isdigit() and int(token) < len(node):
            node = node[int(token)]
        else:
            raise KeyError(f"{ref}: no {token!r}")
    return node


def deref(doc: dict[str, Any], node: Any) -> Any:
    """Follow `$ref` chains of an object (a schema, response, example...)."""
    seen: set[str] = set()
    while isinstance(node, dict) and "$ref" in node:
        ref = str(node["$ref"])
        if ref in seen:
            raise KeyError(f"{ref}: reference cycle")
        seen.add(ref)
        node = resolve_pointer(doc, ref)
    return node


def walk_refs(node: Any, where: str = "#") -> Iterator[tuple[str, str]]:
    """Every (location, `$ref` value) in the document."""
    if isinstance(node, dict):
        for key, value in node.items():
            here = f"{where}/{escape_pointer_token(str(key))}"
            if key == "$ref" and isinstance(value, str):
                yield where, value
            else:
                yield from walk_refs(value, here)
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from walk_refs(value, f"{where}/{index}")


def rpc_operations(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Function name -> the `post` operation of `/rpc/<name>`."""
    out: dict[str, dict[str, Any]] = {}
    for path, item in doc.get("paths", {}).items():
        if path.startswith("/rpc/") and isinstance(item, dict) and "post" in item:
            out[path.removeprefix("/rpc/")] = item["post"]
    return out


def operation_pointer(fn: str) -> str:
    return "#/paths/" + escape_pointer_token(f"/rpc/{fn}") + "/post"


def request_schema(doc: dict[str, Any], fn: str) -> dict[str, Any]:
    """The resolved request-body schema of `fn`'s operation."""
    op = rpc_operations(doc)[fn]
    schema = deref(doc, op["requestBody"]["content"]["application/json"]["schema"])
    assert isinstance(schema, dict)
    return schema


def response_pointer(doc: dict[str, Any], fn: str, status: int | str) -> str:
    """JSON pointer of the schema of `fn`'s response `status` (following a response `$ref`)."""
    op = rpc_operations(doc)[fn]
    response = op["responses"][str(status)]
    if "$ref" in response:
        base = str(response["$ref"])
        response = deref(doc, response)
    else:
        base = operation_pointer(fn) + f"/responses/{status}"
    assert "application/json" in response["content"], f"{fn} {status}: no application/json"
    return base + "/content/application~1json/schema"


@functools.cache
def _registry() -> Registry[Any]:
    resource: Resource[Any] = Resource.from_contents(
        load_openapi(), default_specification=DRAFT202012
    )
    registry: Registry[Any] = Registry().with_resource(DOC_URI, resource)
    return registry


def validator_for_pointer(pointer: str) -> Any:
    """An OAS 3.1 JSON Schema validator (with format checks) for the schema at `pointer`."""
    return OAS31Validator(
        {"$ref": DOC_URI + pointer},
        registry=_registry(),
        format_checker=OAS31Validator.FORMAT_CHECKER,
    )


def schema_errors(validator: Any, instance: Any) -> list[str]:
    """Readable validation errors: `<path in the instance>: <message>`."""
    out: list[str] = []
    for error in sorted(validator.iter_errors(instance), key=lambda e: list(e.absolute_path)):
        path = "/".join(str(p) for p in error.absolute_path) or "(top)"
        message = str(error.message)
        if len(message) > 300:
            message = message[:300] + "..."
        out.append(f"{path}: {message}")
    return out


def response_errors(fn: str, status: int | str, instance: Any) -> list[str]:
    """How `instance` disagrees with the schema of `fn`'s response `status` (empty: it agrees)."""
    doc = load_openapi()
    return schema_errors(validator_for_pointer(response_pointer(doc, fn, status)), instance)
