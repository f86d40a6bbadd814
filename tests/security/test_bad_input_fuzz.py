"""Bad input never 5xx: deep nesting, hostile unicode, huge values and JSON of the wrong type,
through the real gateway over HTTP (and `store.call` directly where the check lives there).

Every answer to bad input must be a 4xx whose body is PostgREST's `{code, message, details,
hint}` with a machine code in `hint`, small (a 7 MiB value is never echoed back whole), and
the refused call must write nothing.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from control_room.db.store import ContractError, acting_as, call, signatures
from control_room.gateway.app import contract_functions
from control_room.settings import default_contract_file
from tests.contract.conftest import SERVICE, HttpContract, Principal, World, make_world
from tests.helpers import running_gateway

MIB = 1024 * 1024
SMALL = 8 * 1024            # the most an error body may weigh
DEPTH = 64                  # the gateway's default max_json_depth
FUZZ = settings(max_examples=120, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])


@dataclass
class Env:
    url: str
    client: httpx.Client
    contract: HttpContract
    conn: psycopg.Connection[Any]
    world: World
    run_id: str
    lease_token: str

    def post(self, fn: str, content: bytes | str, *, as_: Principal = SERVICE,
             headers: dict[str, str] | None = None) -> httpx.Response:
        all_headers = {"Content-Profile": "ops", "Content-Type": "application/json"}
        if as_.role != "anon":
            all_headers["Authorization"] = f"Bearer {self.contract.token(as_)}"
        all_headers.update(headers or {})
        body = content.encode("utf-8", "surrogatepass") if isinstance(content, str) else content
        return self.client.post(f"/rest/v1/rpc/{fn}", content=body, headers=all_headers)

    def send(self, fn: str, args: Any, *, as_: Principal = SERVICE) -> httpx.Response:
        """`args` as a client sends them: JSON, non-ASCII (lone surrogates too) as escapes."""
        return self.post(fn, json.dumps(args, ensure_ascii=True), as_=as_)


@pytest.fixture(scope="module")
def env(module_db_url: str) -> Iterator[Env]:
    with psycopg.connect(module_db_url, autocommit=True) as conn, \
            running_gateway(module_db_url) as url, \
            httpx.Client(base_url=url, timeout=60) as client:
        contract = HttpContract(conn, client)
        world = make_world(contract)
        run = contract.call("create_run", {
            "workspace_id": world.w1, "spec_slug": "fuzz", "git_sha": "0123abc",
            "phases": [{"name": "a", "kind": "python"}, {"name": "b", "kind": "python",
                                                          "depends_on": ["a"]}]},
            as_=world.dev1)
        claim = contract.call("claim_phase", {"run_id": run["id"], "lease_seconds": 3600},
                              as_=world.exec1)
        yield Env(url, client, contract, conn, world, run["id"], claim["lease_token"])


def counts(conn: psycopg.Connection[Any]) -> tuple[Any, ...]:
    row = conn.execute(
        "select (select count(*) from ops.workspaces), (select count(*) from ops.runs),"
        " (select count(*) from ops.phases), (select count(*) from ops.run_events),"
        " (select count(*) from ops.artifacts), (select count(*) from ops.audit_log)"
    ).fetchone()
    assert row is not None
    return tuple(row)


def clean_4xx(response: httpx.Response, what: str = "") -> dict[str, Any]:
    """A refusal as the contract promises it: 4xx, PostgREST's shape, a machine code, small."""
    status = response.status_code
    assert 400 <= status < 500, f"{what}: {status} {response.text[:500]}"
    assert len(response.content) <= SMALL, f"{what}: a {len(response.content)} byte error body"
    body: dict[str, Any] = response.json()
    assert set(body) == {"code", "message", "details", "hint"}, body
    assert isinstance(body["code"], str) and body["code"], body
    assert isinstance(body["hint"], str) and body["hint"].isidentifier(), body
    assert "Traceback" not in response.text
    return body


def never_5xx(response: httpx.Response, what: str = "") -> None:
    assert response.status_code < 500, f"{what}: {response.status_code} {response.text[:500]}"
    if response.status_code >= 400:
        clean_4xx(response, what)


def nested(depth: int, leaf: Any = 1, *, kind: str = "array") -> str:
    """JSON text of `depth` nested arrays (or objects) around `leaf`, built without recursion."""
    inner = json.dumps(leaf)
    if kind == "array":
        return "[" * depth + inner + "]" * depth
    return '{"a":' * depth + inner + "}" * depth


# ---------------------------------------------------------------------------- deep nesting

def create_run_body(env: Env, manifest_json: str) -> str:
    head = json.dumps({"workspace_id": env.world.w1, "spec_slug": "deep", "git_sha": "0123abc",
                       "phases": [{"name": "a", "kind": "python"}]})
    return head[:-1] + f', "input_manifest": {manifest_json}}}'


@pytest.mark.parametrize("depth", [DEPTH + 1, 65 * 2, 1000, 5000, 200_000])
@pytest.mark.parametrize("kind", ["array", "object"])
def test_json_nested_too_deep_is_a_400_before_any_work(env: Env, depth: int, kind: str) -> None:
    before = counts(env.conn)
    response = env.post("create_run", create_run_body(env, nested(depth - 1, {}, kind=kind)),
                        as_=env.world.dev1)
    body = clean_4xx(response, f"depth {depth}")
    assert (response.status_code, body["code"], body["hint"]) == (
        400, "PGRST102", "invalid_argument"), body
    assert str(DEPTH) in body["message"], body
    assert counts(env.conn) == before


@pytest.mark.parametrize("depth", [1, 10, DEPTH])
def test_json_within_the_depth_limit_is_served(env: Env, depth: int) -> None:
    manifest = nested(depth - 1, {}, kind="object")
    response = env.post("create_run", create_run_body(env, manifest), as_=env.world.dev1)
    assert response.status_code == 200, response.text
    run = env.contract.call("get_run", {"run_id": response.json()["id"]})
    assert json.dumps(run["input_manifest"], separators=(",", ":")) == manifest.replace(" ", "")


@pytest.mark.parametrize("depth", [DEPTH + 1, 3000, 100_000])
def test_deep_nesting_in_other_places_is_a_clean_400(env: Env, depth: int) -> None:
    """The body itself, a text argument, an array argument, an event payload."""
    deep = nested(depth)
    before = counts(env.conn)
    for fn, body in [
        ("list_workspaces", deep),
        ("create_workspace", f'{{"slug": {deep}, "name": "x"}}'),
        ("claim_phase", f'{{"kinds": {deep}}}'),
        ("append_events", f'{{"run_id": "{env.run_id}", "events": [{{"event_id": '
                          f'"{uuid.uuid4()}", "type": "LOG", "payload": {{"x": {deep}}}}}]}}'),
    ]:
        response = env.post(fn, body, as_=env.world.exec1)
        assert response.status_code == 400, (fn, response.text[:300])
        assert clean_4xx(response, fn)["hint"] == "invalid_argument"
    assert counts(env.conn) == before


@pytest.mark.parametrize("depth", [DEPTH + 1, 900, 5000])
def test_store_call_refuses_deep_json_arguments(env: Env, depth: int) -> None:
    """The direct path (`store.call`, the CLI's) checks the same limit, without recursing."""
    value: Any = {}
    for _ in range(depth - 1):
        value = {"a": value}
    conn = env.conn
    conn.autocommit = False
    try:
        with pytest.raises(ContractError) as caught, acting_as(conn, role="service_role"):
            call(conn, "create_run", {"workspace_id": env.world.w1, "spec_slug": "deep",
                                      "git_sha": "0123abc", "input_manifest": value,
                                      "phases": [{"name": "a", "kind": "python"}]})
    finally:
        conn.rollback()
        conn.autocommit = True
    err = caught.value
    assert (err.status, err.code) == (400, "invalid_argument"), err
    assert err.argument == "input_manifest" and str(DEPTH) in err.message, err


# ----------------------------------------------------------------------------- unicode

# every kind of character: lone surrogates, NUL and other controls, non-characters, astral
HOSTILE = st.text(st.one_of(
    st.characters(),                                       # surrogates included
    st.sampled_from(["\x00", "\ud800", "\udfff", "\ufffe", "\uffff", "\ufdd0", "\U0010ffff",
                     "\U0001f600", "\u202e", "\x7f", "\\", '"', "'", "\n"]),
), max_size=16)


def text_arguments(env: Env, fn: str) -> list[str]:
    env.conn.autocommit = True
    [sig] = signatures(env.conn, fn)
    return [p.name for p in sig.params if p.type == "text"]


def unicode_cases(env: Env) -> dict[str, tuple[Principal, dict[str, Any]]]:
    w = env.world
    return {
        "create_workspace": (w.admin1, {"slug": "s", "name": "n", "env": "dev"}),
        "create_run": (w.dev1, {"workspace_id": w.w1, "spec_slug": "u", "git_sha": "0123abc",
                                "phases": [{"name": "a", "kind": "python"}],
                                "idempotency_key": "k"}),
        "list_runs": (w.viewer1, {"workspace_id": w.w1, "state": "running", "spec_slug": "u",
                                  "cursor": "1:x", "parent_run_id": env.run_id}),
        "cancel_run": (w.dev1, {"run_id": str(uuid.uuid4()), "reason": "r"}),
        "register_artifact": (w.exec1, {"lease_token": str(uuid.uuid4()),
                                        "digest": "blake3:" + "0" * 64, "uri": "s3://b/k",
                                        "size_bytes": 1, "media_type": "text/plain",
                                        "kind": "blob", "name": "n", "role": "output"}),
        "get_dataset": (w.viewer1, {"workspace_id": w.w1, "name": "bronze.x"}),
    }


@FUZZ
@given(data=st.data())
def test_hostile_unicode_in_every_text_argument_is_never_a_5xx(env: Env, data: Any) -> None:
    cases = unicode_cases(env)
    fn = data.draw(st.sampled_from(sorted(cases)), label="fn")
    who, args = cases[fn]
    name = data.draw(st.sampled_from(text_arguments(env, fn)), label="argument")
    value = data.draw(HOSTILE, label="value")
    before = counts(env.conn)
    response = env.send(fn, args | {name: value}, as_=who)
    never_5xx(response, f"{fn}({name}={value!r})")
    if "\x00" in value or any(0xD800 <= ord(c) <= 0xDFFF for c in value):
        body = clean_4xx(response, f"{fn}({name}={value!r})")
        assert (response.status_code, body["hint"]) == (400, "invalid_argument"), body
        assert name in body["message"], body
        assert counts(env.conn) == before


@FUZZ
@given(value=HOSTILE, key=HOSTILE)
def test_hostile_unicode_inside_json_arguments_is_never_a_5xx(env: Env, value: str,
                                                               key: str) -> None:
    """jsonb cannot hold \\u0000 or a lone surrogate: a 400 naming the argument."""
    w = env.world
    args = {"workspace_id": w.w1, "spec_slug": "u", "git_sha": "0123abc",
            "phases": [{"name": "a", "kind": "python", "params": {key: value}}],
            "labels": {"team": value}}
    before = counts(env.conn)
    response = env.send("create_run", args, as_=w.dev1)
    never_5xx(response, f"{key!r}: {value!r}")
    if any(c == "\x00" or 0xD800 <= ord(c) <= 0xDFFF for c in key + value):
        body = clean_4xx(response)
        assert (response.status_code, body["hint"]) == (400, "invalid_argument"), body
        assert "phases" in body["message"] or "labels" in body["message"], body
        assert counts(env.conn) == before


@pytest.mark.parametrize("value", ["\ud800", "a\udc00b", "\x00", "nul\x00inside"])
def test_nul_and_lone_surrogates_are_a_400_naming_the_argument(env: Env, value: str) -> None:
    w = env.world
    for fn, args, name in [
        ("create_workspace", {"slug": value, "name": "n"}, "slug"),
        ("create_workspace", {"slug": "ok", "name": value}, "name"),
        ("cancel_run", {"run_id": env.run_id, "reason": value}, "reason"),
        ("claim_phase", {"kinds": ["python", value]}, "kinds"),
        ("heartbeat", {"lease_token": env.lease_token, "progress": {"note": value}}, "progress"),
        ("create_run", {"workspace_id": w.w1, "spec_slug": "u", "git_sha": "0123abc",
                        "phases": [{"name": "a", "kind": "python"}],
                        "labels": {value: "v"}}, "labels"),
    ]:
        response = env.send(fn, args, as_=w.exec1 if fn in ("claim_phase", "heartbeat")
                            else w.admin1)
        body = clean_4xx(response, f"{fn}({name})")
        assert (response.status_code, body["hint"]) == (400, "invalid_argument"), body
        assert name in body["message"], body
        assert json.loads(body["details"])["argument"] == name, body


# ------------------------------------------------------------------- what errors echo back

def seven_mib(char: str = "x") -> str:
    return char * (7 * MIB)


def test_a_huge_bad_value_is_echoed_as_a_short_prefix(env: Env) -> None:
    """A 7 MiB bad value never comes back whole: at most 100 characters and its size."""
    w = env.world
    big = seven_mib()
    before = counts(env.conn)
    for fn, args in [
        ("get_run", {"run_id": big}),                                  # an id checked in SQL
        ("create_run", {"workspace_id": w.w1, "spec_slug": big, "git_sha": "0123abc",
                        "phases": [{"name": "a", "kind": "python"}]}),
        ("create_run", {"workspace_id": w.w1, "spec_slug": "ok", "git_sha": big,
                        "phases": [{"name": "a", "kind": "python"}]}),
        ("create_run", {"workspace_id": w.w1, "spec_slug": "ok", "git_sha": "0123abc",
                        "phases": [{"name": big, "kind": "python"}]}),
        ("create_run", {"workspace_id": w.w1, "spec_slug": "ok", "git_sha": "0123abc",
                        "phases": [{"name": "a", "kind": "python", big: 1}]}),
        ("list_runs", {"cursor": big}),
        ("list_events", {"run_id": env.run_id, "after": big}),
        ("get_run", {big: 1}),                                         # an unknown argument
        ("record_dataset", {"lease_token": env.lease_token, "name": "bronze.x",
                            "location": "s3://x", "change": big}),
    ]:
        response = env.send(fn, args, as_=w.exec1 if fn == "record_dataset" else w.dev1)
        clean_4xx(response, fn)
        assert "x" * 101 not in response.text, f"{fn} echoed the value: {response.text[:300]}"
    for raw in (b"{" + big.encode(), b'{"a": "' + big.encode() + b"\\q\"}",
                b"[" + b"1," * (3 * MIB) + b"x]"):
        response = env.post("get_run", raw)
        assert response.status_code == 400
        assert len(clean_4xx(response)["message"]) < 200
    assert counts(env.conn) == before


def test_long_names_in_paths_and_headers_are_clipped(env: Env) -> None:
    long_fn = "f" * 5000
    response = env.post(long_fn, b"{}")
    body = clean_4xx(response)
    assert (response.status_code, body["code"]) == (404, "PGRST202")
    assert "f" * 101 not in body["message"]
    response = env.post("get_run", b"x=1", headers={"Content-Type": "text/" + "p" * 4000})
    assert response.status_code == 415 and "p" * 101 not in response.text


# ------------------------------------------------------------------ strict JSON argument types

STRICT = [
    # (function, argument, value, what the message says is expected)
    ("create_workspace", "name", False, "text"),
    ("create_workspace", "name", 0, "text"),
    ("create_workspace", "slug", 12.5, "text"),
    ("create_workspace", "env", {}, "text"),
    ("create_workspace", "env", ["dev"], "text"),
    ("create_run", "priority", 2.5, "integer"),
    ("create_run", "priority", "3", "integer"),
    ("create_run", "priority", True, "integer"),
    ("create_run", "priority", 2**31, "integer"),
    ("create_run", "priority", -(2**31) - 1, "integer"),
    ("list_events", "after", 2**63, "bigint"),
    ("list_events", "after", 1e300, "bigint"),
    ("register_artifact", "size_bytes", "1", "bigint"),
    ("complete_phase", "retryable", "true", "boolean"),
    ("complete_phase", "retryable", 1, "boolean"),
    ("claim_phase", "kinds", "python", "text[]"),
    ("claim_phase", "kinds", [1], "text"),
    ("claim_phase", "kinds", [True], "text"),
    ("claim_phase", "kinds", [["python"]], "text"),
    ("claim_phase", "lease_seconds", "60", "integer"),
]


def strict_baseline(env: Env, fn: str) -> tuple[Principal, dict[str, Any]]:
    w = env.world
    table: dict[str, tuple[Principal, dict[str, Any]]] = {
        "create_workspace": (w.admin1, {"slug": "strict", "name": "Strict"}),
        "create_run": (w.dev1, {"workspace_id": w.w1, "spec_slug": "s", "git_sha": "0123abc",
                                "phases": [{"name": "a", "kind": "python"}]}),
        "list_events": (w.viewer1, {"run_id": env.run_id}),
        "register_artifact": (w.exec1, {"lease_token": env.lease_token,
                                        "digest": "blake3:" + "0" * 64, "uri": "s3://b/k",
                                        "size_bytes": 1}),
        "complete_phase": (w.exec1, {"lease_token": env.lease_token, "outcome": "succeeded"}),
        "claim_phase": (w.exec1, {"lease_seconds": 60}),
    }
    return table[fn]


@pytest.mark.parametrize(("fn", "name", "value", "expected"), STRICT,
                         ids=[f"{f}-{n}-{v!r}"[:60] for f, n, v, _ in STRICT])
def test_a_json_value_of_the_wrong_type_is_a_400_naming_the_argument(
        env: Env, fn: str, name: str, value: Any, expected: str) -> None:
    who, args = strict_baseline(env, fn)
    before = counts(env.conn)
    response = env.send(fn, args | {name: value}, as_=who)
    body = clean_4xx(response, f"{fn}({name}={value!r})")
    assert (response.status_code, body["hint"]) == (400, "invalid_argument"), body
    assert name in body["message"] and expected in body["message"], body
    assert json.loads(body["details"])["argument"] == name, body
    assert counts(env.conn) == before


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_non_json_number_literals_are_a_400(env: Env, literal: str) -> None:
    response = env.post("list_events", f'{{"run_id": "{env.run_id}", "after": {literal}}}')
    assert (response.status_code, clean_4xx(response)["code"]) == (400, "PGRST102")


def test_integral_numbers_and_right_types_are_taken(env: Env) -> None:
    """3.0 is 3 (JSON has one number type); bigint takes its whole range."""
    events = env.contract.call("list_events", {"run_id": env.run_id, "after": 0.0,
                                               "limit": 5.0}, as_=env.world.viewer1)
    assert isinstance(events, dict | list)
    response = env.send("list_events", {"run_id": env.run_id, "after": 2**63 - 1},
                        as_=env.world.viewer1)
    assert response.status_code == 200, response.text


def json_values(max_leaves: int = 6) -> st.SearchStrategy[Any]:
    scalars = (st.sampled_from(["\ud800", "a\x00b", "\udfffz", "ok"]) | HOSTILE
               | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
               | st.floats(allow_nan=False, allow_infinity=False) | st.none())
    return st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                        | st.dictionaries(HOSTILE, inner, max_size=3), max_leaves=max_leaves)


def fits(type_name: str, value: Any) -> bool:
    """Whether a JSON value has the JSON type a parameter of `type_name` takes."""
    if value is None or type_name in ("json", "jsonb"):
        return True
    if type_name.endswith("[]"):
        return isinstance(value, list) and all(
            v is None or fits(type_name[:-2], v) for v in value) and not any(
            isinstance(v, list | dict) for v in value)
    if type_name in ("integer", "bigint", "smallint"):
        bits = {"smallint": 16, "integer": 32, "bigint": 64}[type_name]
        integral = isinstance(value, int) or (isinstance(value, float) and value.is_integer())
        return (not isinstance(value, bool) and integral
                and -(2 ** (bits - 1)) <= int(value) < 2 ** (bits - 1))
    if type_name == "boolean":
        return isinstance(value, bool)
    return isinstance(value, str)


def hostile(value: Any) -> bool:
    """Whether a NUL or a lone surrogate hides anywhere in a JSON value (keys included)."""
    if isinstance(value, str):
        return any(c == "\x00" or 0xD800 <= ord(c) <= 0xDFFF for c in value)
    if isinstance(value, dict):
        return any(hostile(k) or hostile(v) for k, v in value.items())
    if isinstance(value, list):
        return any(hostile(v) for v in value)
    return False


def contract_signatures(env: Env) -> dict[str, list[tuple[str, str, bool]]]:
    env.conn.autocommit = True
    out: dict[str, list[tuple[str, str, bool]]] = {}
    for fn in sorted(contract_functions(default_contract_file())):
        for sig in signatures(env.conn, fn):
            out[fn] = [(p.name, p.type, p.has_default) for p in sig.params]
    return out


@FUZZ
@given(data=st.data())
def test_random_json_for_every_argument_of_every_function_is_never_a_5xx(
        env: Env, data: Any) -> None:
    sigs = contract_signatures(env)
    fn = data.draw(st.sampled_from(sorted(sigs)), label="fn")
    args: dict[str, Any] = {}
    for name, _type, has_default in sigs[fn]:
        if not has_default or data.draw(st.booleans(), label=f"give {name}"):
            args[name] = data.draw(json_values(), label=name)
    who = data.draw(st.sampled_from([SERVICE, env.world.dev1, env.world.exec1,
                                     env.world.viewer2]), label="as")
    response = env.send(fn, args, as_=who)
    never_5xx(response, f"{fn}({args!r})")
    wrong = [n for n, t, _ in sigs[fn]
             if n in args and (not fits(t, args[n]) or hostile(args[n]))]
    if wrong:
        body = clean_4xx(response, f"{fn}({args!r})")
        assert (response.status_code, body["hint"]) == (400, "invalid_argument"), body
        assert any(n in body["message"] for n in wrong), (wrong, body)


def test_the_fuzzers_see_every_argument_type(env: Env) -> None:
    """Every parameter type of the contract is one the strict checks and `fits` know."""
    types = {t for params in contract_signatures(env).values() for _, t, _ in params}
    assert types <= {"text", "text[]", "integer", "bigint", "smallint", "boolean", "jsonb",
                     "json"}, types


SWEEP = [False, True, 0, -1, 2.5, 2**63, "3", "\ud800", "a\x00b", {}, {"a": "\x00"}, [], [1],
         [["x"]], ["\udfff"]]


def test_every_bad_value_for_every_argument_of_every_function_is_a_400(env: Env) -> None:
    """The exhaustive counterpart of the fuzzer: each argument of each contract function in
    turn gets each of SWEEP's values (the others null): never a 5xx, and a value its type does
    not take is a 400 naming that argument."""
    sigs = contract_signatures(env)
    wrong_answers: list[str] = []
    checked = 0
    for fn, params in sigs.items():
        for name, type_name, _ in params:
            for value in SWEEP:
                args = {name: value} | {n: None for n, _, d in params if not d and n != name}
                response = env.send(fn, args)
                what = f"{fn}({name}={value!r})"
                if response.status_code >= 500:
                    wrong_answers.append(f"{what}: {response.status_code} {response.text[:200]}")
                    continue
                if fits(type_name, value) and not hostile(value):
                    continue
                checked += 1
                body = clean_4xx(response, what)
                if response.status_code != 400 or body["hint"] != "invalid_argument" or (
                        json.loads(body["details"] or "{}").get("argument") != name):
                    wrong_answers.append(f"{what}: {response.status_code} {body}")
    assert wrong_answers == []
    assert checked > 200
