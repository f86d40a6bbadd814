"""The typed client covers the whole contract, and its models are the OpenAPI document's.

Statically: every operation of `openapi.yaml` has a `ContractClient` method of the same name
whose parameters are the request body's properties (names and required-ness), a request model
with the same properties, and a result model whose every field (nested models included) is a
property of the response schema. Then over HTTP, against the real gateway: every method that
the executor tests do not already exercise (tests/executor/test_client.py) makes a real call
whose answer is checked.
"""

from __future__ import annotations

import ast
import inspect
import json
import sys
import types
import typing
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from pydantic import BaseModel

import control_room.contract
from control_room.contract import (
    ArtifactLink,
    Conflict,
    ContractClient,
    Forbidden,
    InvalidArgument,
    NotFound,
    PhaseSpec,
    RetryPolicy,
    RunCreated,
    RunSummary,
    Unauthorized,
    WorkspaceListItem,
    vocabulary,
)
from control_room.contract.client import TRANSPORT_OPTIONS
from control_room.contract.models import (
    REQUESTS,
    RESULTS,
    Alert,
    AlertDestination,
    AlertRule,
    Connection,
    Phase,
    Run,
)
from tests.helpers import running_gateway
from tests.openapi_doc import (
    deref,
    load_openapi,
    request_schema,
    resolve_pointer,
    response_pointer,
    rpc_operations,
)

from .conftest import ANON, SERVICE, HttpContract, Principal, World, make_world, phase, user

OPERATIONS = sorted(rpc_operations(load_openapi()))


def test_the_package_imports_only_httpx_pydantic_tenacity_and_the_standard_library() -> None:
    package = Path(control_room.contract.__file__).parent
    allowed = {"httpx", "pydantic", "tenacity", "__future__"} | set(sys.stdlib_module_names)
    for source in sorted(package.glob("*.py")):
        tree = ast.parse(source.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            for name in names:
                assert name.split(".")[0] in allowed or name.startswith(
                    "control_room.contract"), f"{source.name} imports {name}"


def test_the_document_has_the_operations_the_client_knows() -> None:
    assert len(OPERATIONS) >= 23
    assert set(OPERATIONS) == set(REQUESTS) == set(RESULTS)


def object_schema(doc: dict[str, Any], node: Any) -> tuple[dict[str, Any], set[str]]:
    """The properties and required names of an object schema (following `$ref`, `allOf`, and
    the non-null branches of an `anyOf`)."""
    node = deref(doc, node)
    properties: dict[str, Any] = {}
    required: set[str] = set(node.get("required", []))
    for part in node.get("allOf", []):
        more, needed = object_schema(doc, part)
        properties.update(more)
        required |= needed
    branches = [b for b in node.get("anyOf", []) if deref(doc, b).get("type") != "null"]
    if len(branches) == 1:
        more, needed = object_schema(doc, branches[0])
        properties.update(more)
        required |= needed
    elif branches:      # one model for several shapes: any branch's property, required in all
        shapes = [object_schema(doc, branch) for branch in branches]
        for more, _ in shapes:
            properties.update(more)
        required |= set.intersection(*(needed for _, needed in shapes))
    if node.get("type") == "array" and "items" in node:
        return object_schema(doc, node["items"])
    if not node.get("properties") and isinstance(node.get("additionalProperties"), dict):
        return object_schema(doc, node["additionalProperties"])   # a map of objects by name
    properties.update(node.get("properties", {}))
    return properties, required


def nested_model(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model an annotation holds (`Phase`, `tuple[Phase, ...]`, `X | None`)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = nested_model(arg)
        if found is not None:
            return found
    return None


def model_problems(doc: dict[str, Any], model: type[BaseModel], schema: Any,
                   where: str) -> list[str]:
    properties, required = object_schema(doc, schema)
    assert properties, f"{where}: no properties in the schema"
    client_fields: frozenset[str] = getattr(model, "client_fields", frozenset())
    problems: list[str] = []
    for name, info in model.model_fields.items():
        key = info.alias or name
        if key in client_fields:
            continue
        if key not in properties:
            problems.append(f"{where}.{key}: not in the response schema")
            continue
        if info.is_required() and key not in required:
            problems.append(f"{where}.{key}: required by the model, optional in the schema")
        inner = nested_model(info.annotation)
        if inner is not None:
            problems += model_problems(doc, inner, properties[key], f"{where}.{key}")
    return problems


@pytest.mark.parametrize("fn", OPERATIONS)
def test_each_operation_has_a_method_with_the_request_properties(fn: str) -> None:
    doc = load_openapi()
    schema = request_schema(doc, fn)
    properties = set(schema.get("properties", {}))
    required = set(schema.get("required", []))

    method = getattr(ContractClient, fn)
    params = {name: p for name, p in inspect.signature(method).parameters.items()
              if name != "self" and name not in TRANSPORT_OPTIONS}
    assert set(params) == properties, fn
    assert {name for name, p in params.items() if p.default is inspect.Parameter.empty} == \
        required, fn

    model = REQUESTS[fn]
    fields = {info.alias or name: info for name, info in model.model_fields.items()}
    assert set(fields) == properties, fn
    assert {name for name, info in fields.items() if info.is_required()} == required, fn
    assert model.model_config.get("extra") == "forbid"


@pytest.mark.parametrize("fn", OPERATIONS)
def test_each_result_model_is_in_the_response_schema(fn: str) -> None:
    doc = load_openapi()
    schema = resolve_pointer(doc, response_pointer(doc, fn, 200))
    model = RESULTS[fn]
    assert model.model_config.get("frozen") is True
    assert model.model_config.get("extra") == "ignore"
    assert model_problems(doc, model, schema, fn) == []

    answer = typing.get_type_hints(getattr(ContractClient, fn))["return"]
    held = {answer} | set(typing.get_args(answer))
    assert model in held or list[model] in held, (fn, answer)   # type: ignore[valid-type]


def test_the_models_ignore_unknown_fields_and_are_frozen() -> None:
    item = WorkspaceListItem.model_validate({
        "id": "w", "slug": "s", "name": "n", "env": "dev", "role": None,
        "created_at": "2031-01-01T00:00:00Z", "new_field": 1})
    assert not hasattr(item, "new_field")
    with pytest.raises(ValueError):
        setattr(item, "name", "other")  # noqa: B010 (frozen: refused at run time)


# ---------------------------------------------------------------- real calls over HTTP


FAST = RetryPolicy(attempts=3, initial=0.01, max_wait=0.05, total=5.0)


class Clients:
    def __init__(self, rest_url: str, contract: HttpContract) -> None:
        self.rest_url = rest_url
        self.contract = contract
        self.open: list[ContractClient] = []

    def __call__(self, principal: Principal) -> ContractClient:
        client = ContractClient(self.rest_url, self.contract.token(principal), retry=FAST)
        self.open.append(client)
        return client


@pytest.fixture
def live(conn: psycopg.Connection[Any], db_url: str) -> Iterator[tuple[Clients, World]]:
    with running_gateway(db_url) as url, httpx.Client(base_url=url, timeout=30) as http:
        contract = HttpContract(conn, http)
        clients = Clients(f"{url}/rest/v1", contract)
        try:
            yield clients, make_world(contract)
        finally:
            for client in clients.open:
                client.close()


def test_workspaces_members_and_principals(live: tuple[Clients, World]) -> None:
    clients, world = live
    owner = user("owner")
    mine = clients(owner)
    created = mine.create_workspace("typed", "Typed", env="stage")
    assert (created.slug, created.name, created.env) == ("typed", "Typed", "stage")
    assert created.created_by == str(owner.sub)
    with pytest.raises(Conflict):                     # the slug is taken
        mine.create_workspace("typed", "Again")
    listed = mine.list_workspaces()
    assert [(w.id, w.role) for w in listed] == [(created.id, "admin")]

    service = clients(SERVICE)
    # an admin makes principals its workspace owns; service_role makes the installation's
    robot = mine.create_principal("robot", kind="executor", workspace_id=created.id)
    assert (robot.name, robot.kind, robot.revoked_at, robot.owner_workspace_id) == (
        "robot", "executor", None, created.id)
    person = service.create_principal("person", kind="user")
    assert (person.kind, person.owner_workspace_id) == ("user", None)
    # a principal the workspace does not own is invited, and joins when it accepts
    with pytest.raises(Forbidden) as refused:
        mine.add_member(created.id, person.id, "viewer")
    assert json.loads(str(refused.value.details)) == {"argument": "principal_id",
                                                      "reason": "not_owned"}
    invitation = mine.invite_member(created.id, person.id, "developer", name="a person",
                                    expires_in_seconds=3600)
    assert (invitation.principal_id, invitation.role, invitation.state) == (
        person.id, "developer", "pending")
    assert [i.principal_id for i in mine.list_invitations(created.id)] == [person.id]
    joined = clients(Principal("authenticated", uuid.UUID(person.id), "person")
                     ).accept_invitation(created.id)
    assert (joined.principal_id, joined.role, joined.name) == (person.id, "developer", "a person")
    assert [i.state for i in mine.list_invitations(created.id)] == ["accepted"]
    other = str(uuid.uuid4())
    mine.invite_member(created.id, other, "viewer")
    withdrawn = mine.revoke_invitation(created.id, other)
    assert (withdrawn.principal_id, withdrawn.revoked) == (other, True)
    with pytest.raises(NotFound):                     # nothing pending any more
        mine.revoke_invitation(created.id, other)

    member = mine.add_member(created.id, robot.id, "executor", name="the robot")
    assert (member.workspace_id, member.principal_id, member.role, member.name) == (
        created.id, robot.id, "executor", "the robot")
    again = mine.add_member(created.id, robot.id, "viewer")      # an upsert
    assert again.role == "viewer"
    removed = mine.remove_member(created.id, robot.id)
    assert (removed.workspace_id, removed.principal_id, removed.removed) == (
        created.id, robot.id, True)
    with pytest.raises(NotFound):                     # not a member any more
        mine.remove_member(created.id, robot.id)

    revoked = mine.revoke_principal(robot.id)         # its owner workspace's admin
    assert revoked.id == robot.id and revoked.revoked_at is not None
    assert service.revoke_principal(robot.id).revoked_at == revoked.revoked_at   # unchanged
    with pytest.raises(NotFound):                     # not owned by the caller's workspaces
        clients(world.admin1).revoke_principal(person.id)
    with pytest.raises(Forbidden):                    # without a workspace: service_role only
        clients(world.admin1).create_principal("nope")
    with pytest.raises(Unauthorized):                 # anon may call nothing
        clients(ANON).create_principal("nope")

    everything = service.list_workspaces()
    assert {w.slug for w in everything} == {"w1", "w2", "typed"}
    assert all(w.role is None for w in everything)


def test_runs_created_listed_cancelled_and_retried(live: tuple[Clients, World]) -> None:
    clients, world = live
    dev = clients(world.dev1)
    key = str(uuid.uuid4())
    run = dev.create_run(world.w1, "typed", "0123abc",
                         [PhaseSpec(name="a", kind="python", max_attempts=2),
                          phase("b", "sql", "a")],
                         input_manifest={"source": "test"}, idempotency_key=key,
                         labels={"team": "data"}, priority=5)
    assert isinstance(run, RunCreated) and run.created is True
    assert (run.spec_slug, run.state, run.priority, run.labels) == ("typed", "queued", 5,
                                                                    {"team": "data"})
    assert [(p.name, p.kind, p.depends_on) for p in run.phases] == [
        ("a", "python", ()), ("b", "sql", ("a",))]
    assert run.phase("a").max_attempts == 2 and run.phase("b").state == "waiting"
    replay = dev.create_run(world.w1, "typed", "0123abc",
                            [PhaseSpec(name="a", kind="python", max_attempts=2),
                             phase("b", "sql", "a")],
                            input_manifest={"source": "test"}, idempotency_key=key,
                            labels={"team": "data"}, priority=5)
    assert (replay.id, replay.created) == (run.id, False)
    other = dev.create_run(world.w1, "other", "0123abc", [phase("x")])
    assert other.created is True and other.idempotency_key is None

    viewer = clients(world.viewer1)
    page = viewer.list_runs(world.w1, limit=1)
    assert len(page.runs) == 1 and page.next_cursor is not None
    assert isinstance(page.runs[0], RunSummary)
    assert {r.id for r in viewer.iter_runs(world.w1, page_size=1)} == {run.id, other.id}
    labelled = viewer.list_runs(labels={"team": "data"}, state="queued", spec_slug="typed")
    assert [(r.id, r.phase_counts) for r in labelled.runs] == [
        (run.id, {"queued": 1, "waiting": 1})]
    assert viewer.list_runs(world.w1, state="cancelled").runs == ()

    cancelled = dev.cancel_run(run.id, reason="enough")
    assert (cancelled.state, cancelled.cancel_reason) == ("cancelled", "enough")
    assert dev.cancel_run(run.id).state == "cancelled"          # unchanged
    child = dev.retry_run(run.id)
    assert child.created is True and child.parent_run_id == run.id
    assert dev.retry_run(run.id).id == child.id                 # the default key
    keyed = dev.retry_run(run.id, idempotency_key=f"retry-of:{run.id}")
    assert (keyed.id, keyed.created) == (child.id, False)
    children = viewer.list_runs(parent_run_id=run.id)
    assert [r.id for r in children.runs] == [child.id]
    with pytest.raises(Conflict):                   # `other` is queued: nothing to retry
        dev.retry_run(other.id)


def test_artifacts_listed(live: tuple[Clients, World]) -> None:
    clients, world = live
    run = clients(world.dev1).create_run(world.w1, "typed", "0123abc", [phase("a")])
    executor = clients(world.exec1)
    claim = executor.claim_phase(["python"], run_id=run.id)
    assert claim is not None
    digests = [f"blake3:{i:064x}" for i in range(3)]
    for i, digest in enumerate(digests):
        executor.register_artifact(claim.lease_token, digest, f"file:///tmp/{i}", 10 + i,
                                   name=f"part-{i}", role="output")
    viewer = clients(world.viewer1)
    page = viewer.list_artifacts(run.id, limit=2)
    assert [a.name for a in page.artifacts] == ["part-0", "part-1"]
    assert all(isinstance(a, ArtifactLink) and a.phase == "a" for a in page.artifacts)
    rest = viewer.list_artifacts(run.id, after=page.next_after)
    assert [(a.name, a.size_bytes) for a in rest.artifacts] == [("part-2", 12)]
    assert [a.digest for a in viewer.iter_artifacts(run.id, page_size=2)] == digests
    by_digest = viewer.list_artifacts(workspace_id=world.w1, digest=digests[1])
    assert [a.uri for a in by_digest.artifacts] == ["file:///tmp/1"]
    with pytest.raises(NotFound):                   # a run of another workspace
        clients(world.viewer2).list_artifacts(run.id)
    assert clients(world.viewer2).list_artifacts(workspace_id=world.w1).artifacts == ()


def test_a_request_that_does_not_fit_its_model_is_refused_before_it_is_sent(
        live: tuple[Clients, World]) -> None:
    clients, world = live
    with pytest.raises(InvalidArgument) as bad:
        clients(world.admin1).add_member(world.w1, str(world.viewer1.sub),
                                         "superuser")   # type: ignore[arg-type]
    assert bad.value.status is None and bad.value.argument == "role"


def test_the_union_types_of_the_results_are_the_vocabulary() -> None:

    def values(model: type[BaseModel], field: str) -> set[Any]:
        annotation = model.model_fields[field].annotation
        literals = [annotation]
        if typing.get_origin(annotation) in (typing.Union, types.UnionType):
            literals = [a for a in typing.get_args(annotation) if a is not type(None)]
        assert all(typing.get_origin(a) is typing.Literal for a in literals), annotation
        return {value for a in literals for value in typing.get_args(a)}

    assert values(Run, "state") == vocabulary.RUN_STATES
    assert values(Connection, "type") == vocabulary.CONNECTION_TYPES
    assert values(Alert, "state") == vocabulary.ALERT_STATES
    assert values(Alert, "event") == values(AlertRule, "event") == vocabulary.ALERT_EVENTS
    assert values(AlertDestination, "type") == vocabulary.ALERT_DESTINATION_TYPES
    assert values(Phase, "state") == vocabulary.PHASE_STATES
    assert values(WorkspaceListItem, "role") == vocabulary.MEMBER_ROLES
