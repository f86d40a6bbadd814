"""The contract's words, defined once: states, roles, layers, event types, codes.

Each is a `Literal` type (for annotations and the pydantic models) and a frozenset of the same
values (for checks at run time). `tests/contract/test_vocabulary.py` proves every set equal to
the SQL CHECK constraints of a migrated database and to the enums of `openapi.yaml`; a new
value is added in the migration, the OpenAPI file and here together.
"""

from __future__ import annotations

from typing import Literal, get_args

__all__ = [
    "ALERT_DESTINATION_TYPES",
    "ALERT_EVENTS",
    "ALERT_STATES",
    "ARTIFACT_ROLES",
    "CHANGE_KINDS",
    "CONNECTION_TYPES",
    "DATASET_LAYERS",
    "ENVS",
    "EVENT_LEVELS",
    "EXECUTOR_EVENT_TYPES",
    "FINISHED_PHASE_STATES",
    "FINISHED_RUN_STATES",
    "GITHUB_CHECK_CONCLUSIONS",
    "GITHUB_CHECK_DELIVERIES",
    "GITHUB_CHECK_STATUSES",
    "GITHUB_DELIVERIES",
    "GITHUB_STATES",
    "LIFECYCLE_EVENT_TYPES",
    "MACHINE_CODES",
    "MEMBER_ROLES",
    "OUTCOMES",
    "PHASE_STATES",
    "PRINCIPAL_KINDS",
    "RESERVED_EVENT_TYPES",
    "RESOLUTIONS",
    "RUN_STATES",
    "SCHEDULE_CATCHUPS",
    "SCHEDULE_OVERLAPS",
    "SCHEMA_STATES",
    "SIGN_IN_CODES",
    "SLO_STATES",
    "TICK_STATES",
    "AlertDestinationType",
    "AlertEvent",
    "AlertState",
    "ArtifactRole",
    "ChangeKind",
    "ConnectionType",
    "DatasetLayer",
    "Env",
    "EventLevel",
    "ExecutorEventType",
    "GithubCheckConclusion",
    "GithubCheckDelivery",
    "GithubCheckStatus",
    "GithubDelivery",
    "GithubState",
    "LifecycleEventType",
    "MachineCode",
    "MemberRole",
    "Outcome",
    "PhaseState",
    "PrincipalKind",
    "Resolution",
    "RunState",
    "ScheduleCatchup",
    "ScheduleOverlap",
    "SchemaState",
    "SloState",
    "TickState",
]

RunState = Literal["queued", "running", "succeeded", "failed", "cancelled"]
PhaseState = Literal["waiting", "queued", "running", "succeeded", "failed", "skipped",
                     "cancelled"]
MemberRole = Literal["viewer", "developer", "admin", "executor"]
PrincipalKind = Literal["user", "executor"]
Env = Literal["dev", "stage", "prod"]
EventLevel = Literal["debug", "info", "warning", "error"]
ArtifactRole = Literal["output", "input", "log", "report"]
DatasetLayer = Literal["raw", "bronze", "silver", "gold", "other"]
SchemaState = Literal["active", "blocked", "accepted"]
ConnectionType = Literal["postgres", "s3", "trino", "spark", "http", "dbt-profile"]
"""The types of a workspace connection (`ops.connections.type`)."""
ScheduleCatchup = Literal["skip", "latest", "all"]
"""What a schedule does with missed ticks (`ops.schedules.catchup`, docs/schedules.md)."""
ScheduleOverlap = Literal["skip", "queue", "cancel_previous"]
"""What a tick does while the schedule's runs are at max_concurrent (`ops.schedules.overlap`)."""
TickState = Literal["created", "skipped", "failed"]
"""What became of a schedule tick (`ops.schedule_ticks.state`)."""
SloState = Literal["unknown", "ok", "breached"]
"""A job's freshness SLO state (`ops.jobs.slo_state`, a job's `freshness.state`)."""
GithubState = Literal["pending", "success", "failure", "error"]
"""A commit status's state, as GitHub takes it (`ops.github_statuses.state`)."""
GithubDelivery = Literal["pending", "delivering", "delivered", "failed", "superseded"]
"""Where a commit status of the outbox is (`ops.github_statuses.delivery`)."""
GithubCheckStatus = Literal["queued", "in_progress", "completed"]
"""A check run's status, as GitHub takes it (`ops.github_check_runs.status`)."""
GithubCheckConclusion = Literal["success", "failure", "cancelled"]
"""A completed check run's conclusion (`ops.github_check_runs.conclusion`)."""
GithubCheckDelivery = Literal["pending", "delivering", "delivered", "failed"]
"""Where a gate run's check run is (`ops.github_check_runs.delivery`)."""
AlertEvent = Literal["run_failed", "phase_dead_lettered", "schedule_tick_failed",
                     "lease_expiries", "slo_breached"]
"""What an alert rule fires on (`ops.alert_rules.event`, docs/alerts.md)."""
AlertState = Literal["pending", "delivering", "delivered", "failed"]
"""Where an alert of the outbox is (`ops.alerts.state`)."""
AlertDestinationType = Literal["webhook", "slack"]
"""The shape an alert is posted in (`ops.alert_destinations.type`)."""
ChangeKind = Literal["INITIAL", "NON_BREAKING", "NONE", "BREAKING"]
"""How a write changed a dataset's schema (`record_dataset.change`); a recorded version is
never NONE."""
Outcome = Literal["succeeded", "failed"]
"""`complete_phase.outcome`."""
Resolution = Literal["accept", "reject"]
"""`unblock_dataset.resolution`."""

LifecycleEventType = Literal[
    "RUN_CREATED", "RUN_SUCCEEDED", "RUN_FAILED", "RUN_CANCELLED", "RUN_FINALIZED",
    "PHASE_QUEUED", "PHASE_CLAIMED", "LEASE_EXPIRED", "PHASE_SUCCEEDED", "PHASE_FAILED",
    "PHASE_RETRY_SCHEDULED", "PHASE_SKIPPED", "PHASE_CANCELLED", "PHASE_REUSED",
    "PHASE_STOPPED", "ARTIFACT_REGISTERED", "DATASET_SCHEMA_CHANGED", "DATASET_BLOCKED",
]
"""Written only by the contract functions (the run and phase lifecycle, `register_artifact`,
`record_dataset`); `append_events` refuses them."""
ExecutorEventType = Literal["PHASE_STARTED", "PHASE_PROGRESS", "LOG", "CODE_CHECKOUT",
                            "FAILURE_OUTPUTS"]
"""The types the worker writes through `append_events` (any other upper-case name that is not
a lifecycle type is allowed too: a kind may add its own)."""

MachineCode = Literal["invalid_argument", "unauthorized", "forbidden", "not_found", "conflict",
                      "lease_lost", "payload_too_large"]
"""The machine codes the contract functions put in an error's `hint` (docs/contract.md,
Errors). Clients also see `unavailable` and `internal` (5xx), `transport` (no answer) and
`invalid_response` (an answer that is not the contract's JSON)."""

RUN_STATES: frozenset[str] = frozenset(get_args(RunState))
PHASE_STATES: frozenset[str] = frozenset(get_args(PhaseState))
MEMBER_ROLES: frozenset[str] = frozenset(get_args(MemberRole))
PRINCIPAL_KINDS: frozenset[str] = frozenset(get_args(PrincipalKind))
ENVS: frozenset[str] = frozenset(get_args(Env))
EVENT_LEVELS: frozenset[str] = frozenset(get_args(EventLevel))
ARTIFACT_ROLES: frozenset[str] = frozenset(get_args(ArtifactRole))
DATASET_LAYERS: frozenset[str] = frozenset(get_args(DatasetLayer))
SCHEMA_STATES: frozenset[str] = frozenset(get_args(SchemaState))
CHANGE_KINDS: frozenset[str] = frozenset(get_args(ChangeKind))
CONNECTION_TYPES: frozenset[str] = frozenset(get_args(ConnectionType))
SCHEDULE_CATCHUPS: frozenset[str] = frozenset(get_args(ScheduleCatchup))
SCHEDULE_OVERLAPS: frozenset[str] = frozenset(get_args(ScheduleOverlap))
TICK_STATES: frozenset[str] = frozenset(get_args(TickState))
SLO_STATES: frozenset[str] = frozenset(get_args(SloState))
GITHUB_STATES: frozenset[str] = frozenset(get_args(GithubState))
GITHUB_DELIVERIES: frozenset[str] = frozenset(get_args(GithubDelivery))
GITHUB_CHECK_STATUSES: frozenset[str] = frozenset(get_args(GithubCheckStatus))
GITHUB_CHECK_CONCLUSIONS: frozenset[str] = frozenset(get_args(GithubCheckConclusion))
GITHUB_CHECK_DELIVERIES: frozenset[str] = frozenset(get_args(GithubCheckDelivery))
ALERT_EVENTS: frozenset[str] = frozenset(get_args(AlertEvent))
ALERT_STATES: frozenset[str] = frozenset(get_args(AlertState))
ALERT_DESTINATION_TYPES: frozenset[str] = frozenset(get_args(AlertDestinationType))
OUTCOMES: frozenset[str] = frozenset(get_args(Outcome))
RESOLUTIONS: frozenset[str] = frozenset(get_args(Resolution))
LIFECYCLE_EVENT_TYPES: frozenset[str] = frozenset(get_args(LifecycleEventType))
RESERVED_EVENT_TYPES = LIFECYCLE_EVENT_TYPES
"""What `append_events` refuses as an event type."""
EXECUTOR_EVENT_TYPES: frozenset[str] = frozenset(get_args(ExecutorEventType))
MACHINE_CODES: frozenset[str] = frozenset(get_args(MachineCode))
SIGN_IN_CODES: frozenset[str] = frozenset({"invalid_credentials", "over_request_rate_limit"})
"""The codes the ops_private sign-in functions raise for the gateway's /auth/v1 endpoints, which
answer them in GoTrue's error shape (docs/auth.md); no /rest/v1/rpc function raises them."""

FINISHED_RUN_STATES: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})
FINISHED_PHASE_STATES: frozenset[str] = frozenset({"succeeded", "failed", "skipped",
                                                   "cancelled"})
