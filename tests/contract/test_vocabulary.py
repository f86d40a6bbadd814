"""The vocabulary of `control_room.contract` is the database's and the OpenAPI document's.

Each set of `control_room/contract/vocabulary.py` is compared with the CHECK constraints of a
migrated database (read from `pg_constraint`), with the enums of `openapi.yaml`, and, for the
event types and machine codes, with what the contract functions do.
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest

from control_room.contract import errors, vocabulary
from control_room.contract.errors import ContractError, error_for
from tests.openapi_doc import MACHINE_CODES as DOCUMENTED_CODES
from tests.openapi_doc import deref, load_openapi

from .conftest import Contract, make_world, new_run, phase

REPO = Path(__file__).resolve().parents[2]

# (table, column) of each enum-like CHECK constraint -> the vocabulary set it must equal
CHECKED: dict[tuple[str, str], frozenset[str]] = {
    ("ops.workspaces", "env"): vocabulary.ENVS,
    ("ops.workspace_members", "role"): vocabulary.MEMBER_ROLES,
    ("ops.invitations", "role"): vocabulary.MEMBER_ROLES - {"executor"},  # executors: no invites
    ("ops.principals", "kind"): vocabulary.PRINCIPAL_KINDS,
    ("ops.runs", "state"): vocabulary.RUN_STATES,
    ("ops.phases", "state"): vocabulary.PHASE_STATES,
    ("ops.run_events", "level"): vocabulary.EVENT_LEVELS,
    ("ops.run_artifacts", "role"): vocabulary.ARTIFACT_ROLES,
    ("ops.datasets", "layer"): vocabulary.DATASET_LAYERS,
    ("ops.datasets", "schema_state"): vocabulary.SCHEMA_STATES,
    ("ops.dataset_versions", "change"): vocabulary.CHANGE_KINDS - {"NONE"},
    ("ops.connections", "type"): vocabulary.CONNECTION_TYPES,
    ("ops.schedules", "catchup"): vocabulary.SCHEDULE_CATCHUPS,
    ("ops.schedules", "overlap"): vocabulary.SCHEDULE_OVERLAPS,
    ("ops.schedule_ticks", "state"): vocabulary.TICK_STATES,
    ("ops.jobs", "slo_state"): vocabulary.SLO_STATES,
    ("ops.github_statuses", "state"): vocabulary.GITHUB_STATES,
    ("ops.github_statuses", "delivery"): vocabulary.GITHUB_DELIVERIES,
    ("ops.github_check_runs", "status"): vocabulary.GITHUB_CHECK_STATUSES,
    ("ops.github_check_runs", "conclusion"): vocabulary.GITHUB_CHECK_CONCLUSIONS,
    ("ops.github_check_runs", "delivery"): vocabulary.GITHUB_CHECK_DELIVERIES,
    ("ops.alert_rules", "event"): vocabulary.ALERT_EVENTS,
    ("ops.alerts", "state"): vocabulary.ALERT_STATES,
    ("ops.alert_destinations", "type"): vocabulary.ALERT_DESTINATION_TYPES,
}

# components/schemas enum -> the vocabulary set it must equal
SCHEMAS: dict[str, frozenset[str]] = {
    "Env": vocabulary.ENVS,
    "MemberRole": vocabulary.MEMBER_ROLES,
    "RunState": vocabulary.RUN_STATES,
    "PhaseState": vocabulary.PHASE_STATES,
    "EventLevel": vocabulary.EVENT_LEVELS,
    "ArtifactRole": vocabulary.ARTIFACT_ROLES,
    "DatasetLayer": vocabulary.DATASET_LAYERS,
    "SchemaState": vocabulary.SCHEMA_STATES,
    "ConnectionType": vocabulary.CONNECTION_TYPES,
    "ScheduleCatchup": vocabulary.SCHEDULE_CATCHUPS,
    "ScheduleOverlap": vocabulary.SCHEDULE_OVERLAPS,
    "TickState": vocabulary.TICK_STATES,
    "SloState": vocabulary.SLO_STATES,
    "GithubCheckStatus": vocabulary.GITHUB_CHECK_STATUSES,
    "GithubCheckConclusion": vocabulary.GITHUB_CHECK_CONCLUSIONS,
    "AlertEvent": vocabulary.ALERT_EVENTS,
    "AlertState": vocabulary.ALERT_STATES,
    "AlertDestinationType": vocabulary.ALERT_DESTINATION_TYPES,
}


def enum_checks(conn: psycopg.Connection[Any]) -> dict[tuple[str, str], set[str]]:
    """Every single-column CHECK of the ops schema that lists allowed text values."""
    rows = conn.execute("""
        select c.conrelid::regclass::text, a.attname, pg_get_constraintdef(c.oid)
          from pg_constraint c
          join pg_attribute a on a.attrelid = c.conrelid and a.attnum = c.conkey[1]
         where c.contype = 'c' and c.connamespace = 'ops'::regnamespace
           and cardinality(c.conkey) = 1""").fetchall()
    found: dict[tuple[str, str], set[str]] = {}
    for table, column, definition in rows:
        if "ANY" in definition or " IN " in definition.upper():
            values = set(re.findall(r"'([^']*)'::text", definition))
            if values:
                found.setdefault((str(table), str(column)), set()).update(values)
    return found


def test_every_enum_check_of_the_database_is_a_vocabulary_set(
        conn: psycopg.Connection[Any]) -> None:
    found = enum_checks(conn)
    assert set(found) == set(CHECKED), "a CHECK without its vocabulary set, or the reverse"
    for where, values in found.items():
        assert values == CHECKED[where], where


def test_the_openapi_enums_are_the_vocabulary() -> None:
    doc = load_openapi()
    schemas = doc["components"]["schemas"]
    for name, expected in SCHEMAS.items():
        assert set(schemas[name]["enum"]) == expected, name
    principal = schemas["Principal"]["properties"]["kind"]["enum"]
    assert set(principal) == vocabulary.PRINCIPAL_KINDS
    record = deref(doc, schemas["RecordDatasetArgs"]["properties"]["change"])
    assert set(record["enum"]) == vocabulary.CHANGE_KINDS
    version = schemas["DatasetVersion"]["properties"]["change"]["enum"]
    assert set(version) == vocabulary.CHANGE_KINDS - {"NONE"}
    outcome = schemas["CompletePhaseArgs"]["properties"]["outcome"]["enum"]
    assert set(outcome) == vocabulary.OUTCOMES
    resolution = schemas["UnblockDatasetArgs"]["properties"]["resolution"]["enum"]
    assert set(resolution) == vocabulary.RESOLUTIONS
    level = schemas["EventInput"]["properties"]["level"]["enum"]
    assert set(level) - {None} == vocabulary.EVENT_LEVELS


def test_the_lifecycle_event_types_are_the_documented_ones() -> None:
    schemas = load_openapi()["components"]["schemas"]
    refused = schemas["EventInput"]["properties"]["type"]["allOf"][1]["not"]["enum"]
    description = schemas["EventType"]["description"]
    lifecycle, executors = description.split("The worker adds")
    named = set(re.findall(r"`([A-Z][A-Z0-9_]+)`", lifecycle))
    assert named == vocabulary.LIFECYCLE_EVENT_TYPES
    assert set(refused) <= vocabulary.LIFECYCLE_EVENT_TYPES
    assert vocabulary.LIFECYCLE_EVENT_TYPES - set(refused) == {
        "DATASET_SCHEMA_CHANGED", "DATASET_BLOCKED"}   # record_dataset's, named separately
    assert set(re.findall(r"`([A-Z][A-Z0-9_]+)`", executors)) == vocabulary.EXECUTOR_EVENT_TYPES
    assert not vocabulary.LIFECYCLE_EVENT_TYPES & vocabulary.EXECUTOR_EVENT_TYPES


def test_the_reserved_event_types_of_the_database_are_the_lifecycle_types(
        conn: psycopg.Connection[Any]) -> None:
    rows = conn.execute("select type from ops_private.reserved_event_types").fetchall()
    assert {row[0] for row in rows} == vocabulary.LIFECYCLE_EVENT_TYPES


def test_append_events_refuses_exactly_the_lifecycle_types(sql_contract: Contract) -> None:
    world = make_world(sql_contract)
    run = new_run(sql_contract, world.w1, [phase("a")], as_=world.dev1)
    claim = sql_contract.call("claim_phase", {"run_id": run["id"]}, as_=world.exec1)
    assert claim is not None

    def append(event_type: str) -> Any:
        return sql_contract.call("append_events", {
            "run_id": run["id"], "lease_token": claim["lease_token"],
            "events": [{"event_id": str(uuid.uuid4()), "phase": "a", "type": event_type}]},
            as_=world.exec1)

    for event_type in sorted(vocabulary.LIFECYCLE_EVENT_TYPES):
        with pytest.raises(ContractError) as refused:
            append(event_type)
        assert refused.value.code == "invalid_argument", event_type
    for event_type in sorted(vocabulary.EXECUTOR_EVENT_TYPES):
        assert append(event_type)["appended"] == 1, event_type


def test_the_executor_event_types_are_the_ones_the_worker_writes() -> None:
    sources = "\n".join(path.read_text(encoding="utf-8")
                        for path in (REPO / "executor").rglob("*.py"))
    for event_type in vocabulary.EXECUTOR_EVENT_TYPES:
        assert f'"{event_type}"' in sources, event_type


def test_the_machine_codes_are_the_functions_and_the_documents(
        conn: psycopg.Connection[Any]) -> None:
    bodies = conn.execute("""
        select string_agg(p.prosrc, E'\\n') from pg_proc p
         where p.pronamespace in ('ops'::regnamespace, 'ops_private'::regnamespace)""").fetchone()
    assert bodies is not None
    raised = set(re.findall(r"fail\(\s*\d+\s*,\s*'([a-z_]+)'", bodies[0]))
    assert raised == vocabulary.MACHINE_CODES | vocabulary.SIGN_IN_CODES
    signin = (REPO / "control_room" / "gateway" / "signin.py").read_text(encoding="utf-8")
    auth_doc = (REPO / "docs" / "auth.md").read_text(encoding="utf-8")
    for code in vocabulary.SIGN_IN_CODES:
        assert f'"{code}"' in signin and f"`{code}`" in auth_doc, code
        assert code not in vocabulary.MACHINE_CODES, code
    assert DOCUMENTED_CODES == vocabulary.MACHINE_CODES
    table = load_openapi()["info"]["description"]
    rows = dict(re.findall(r"^\| `([a-z_]+)` \| (\d{3}) \|", table, re.MULTILINE))
    assert set(rows) == vocabulary.MACHINE_CODES
    for code, status in rows.items():
        error = error_for(code, "x", status=int(status))
        assert type(error) is errors.BY_CODE[code], code
        assert type(error) is errors.BY_STATUS[int(status)] or code == "lease_lost", code
        assert error.code == code and error.status == int(status)
