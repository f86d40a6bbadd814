"""The contract's shapes as pydantic models: what each operation takes and answers.

Results (`Run`, `Claim`, ...) are frozen and ignore unknown fields, so that an older client
keeps working against a newer server; each field is one of the OpenAPI response schema's
(`tests/contract/test_client_coverage.py` proves it). Requests (`CreateRunArgs`, ...) have
exactly the properties of the operation's request body, refuse unknown ones, and leave the
checks of values (patterns, bounds) to the server, which answers them with the documented
`invalid_argument`. `NewEvent` and `PhaseSpec` are the items of `append_events` and
`create_run`.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from control_room.contract.vocabulary import (
    AlertDestinationType,
    AlertEvent,
    AlertState,
    ArtifactRole,
    ChangeKind,
    ConnectionType,
    DatasetLayer,
    Env,
    EventLevel,
    GithubCheckConclusion,
    GithubCheckDelivery,
    GithubCheckStatus,
    GithubDelivery,
    GithubState,
    MemberRole,
    Outcome,
    PhaseState,
    PrincipalKind,
    Resolution,
    RunState,
    ScheduleCatchup,
    ScheduleOverlap,
    SchemaState,
    SloState,
    TickState,
)

__all__ = [
    "REQUESTS",
    "RESULTS",
    "AcceptInvitationArgs",
    "AddMemberArgs",
    "Alert",
    "AlertDelivery",
    "AlertDestination",
    "AlertObjectDeleted",
    "AlertRule",
    "AppendEventsArgs",
    "AppendResult",
    "Artifact",
    "ArtifactLink",
    "ArtifactPage",
    "AskAnswer",
    "AskLineage",
    "AskMetric",
    "AskReading",
    "AuditActor",
    "AuditEntry",
    "AuditPage",
    "CancelRunArgs",
    "ChangedRunCreated",
    "ChangedSince",
    "Claim",
    "ClaimAlertsArgs",
    "ClaimConnection",
    "ClaimDueSensorsArgs",
    "ClaimGithubCheckRunsArgs",
    "ClaimGithubStatusesArgs",
    "ClaimPhaseArgs",
    "ClaimPhasesArgs",
    "ClaimRun",
    "ClaimedAlert",
    "ClaimedAlertDestination",
    "ClaimedGithubCheckRun",
    "ClaimedGithubStatus",
    "ClaimedSensor",
    "CompletePhaseArgs",
    "CompletePhasesArgs",
    "CompleteResult",
    "CompleteRunArgs",
    "CompletionLostError",
    "Connection",
    "ConnectionDeleted",
    "ConnectionTest",
    "CreateAlertDestinationArgs",
    "CreateAlertRuleArgs",
    "CreateChangedRunArgs",
    "CreateConnectionArgs",
    "CreateJobRunArgs",
    "CreatePrincipalArgs",
    "CreateRunArgs",
    "CreateScheduleArgs",
    "CreateSensorArgs",
    "CreateWorkspaceArgs",
    "Dataset",
    "DatasetDetail",
    "DatasetFreshness",
    "DatasetRecord",
    "DatasetVersion",
    "DeadLetter",
    "DeadLetterError",
    "DeadLetterPage",
    "DeleteAlertDestinationArgs",
    "DeleteAlertRuleArgs",
    "DeleteConnectionArgs",
    "DeleteScheduleArgs",
    "DeleteSensorArgs",
    "DueResult",
    "EvaluateSlosArgs",
    "Event",
    "EventPage",
    "GetConnectionArgs",
    "GetDatasetArgs",
    "GetHealthArgs",
    "GetJobArgs",
    "GetRunArgs",
    "GetRunGridArgs",
    "GetRunLineageArgs",
    "GetRunTimelineArgs",
    "GetScheduleArgs",
    "GetSensorArgs",
    "GithubCheckConclusion",
    "GithubCheckDelivery",
    "GithubCheckRun",
    "GithubCheckStatus",
    "GithubDelivery",
    "GithubState",
    "GithubStatus",
    "GridCell",
    "GridRun",
    "Health",
    "HealthAlert",
    "HealthAlerts",
    "HealthBucket",
    "HealthByKind",
    "HealthByPhase",
    "HealthFreshness",
    "HealthTotals",
    "HeartbeatArgs",
    "HeartbeatResult",
    "Invitation",
    "InvitationRevoked",
    "InviteMemberArgs",
    "Job",
    "JobDetail",
    "JobFreshness",
    "JobLastRun",
    "JobListed",
    "JobParam",
    "JobParamType",
    "JobRegistered",
    "JobSource",
    "JobVersion",
    "LineageEdge",
    "LineageNode",
    "ListAlertDestinationsArgs",
    "ListAlertRulesArgs",
    "ListAlertsArgs",
    "ListArtifactsArgs",
    "ListAuditArgs",
    "ListConnectionsArgs",
    "ListDatasetsArgs",
    "ListDeadLettersArgs",
    "ListEventsArgs",
    "ListGithubCheckRunsArgs",
    "ListGithubStatusesArgs",
    "ListInvitationsArgs",
    "ListJobsArgs",
    "ListRunsArgs",
    "ListScheduleTicksArgs",
    "ListSchedulesArgs",
    "ListSensorsArgs",
    "ListWorkspacesArgs",
    "Member",
    "MemberRemoved",
    "NewEvent",
    "Phase",
    "PhaseCompletion",
    "PhaseSpec",
    "Principal",
    "RecordAlertDeliveryArgs",
    "RecordConnectionTestArgs",
    "RecordDatasetArgs",
    "RecordGithubCheckRunDeliveryArgs",
    "RecordGithubStatusDeliveryArgs",
    "RecordSensorValueArgs",
    "RegisterArtifactArgs",
    "RegisterJobArgs",
    "RemoveMemberArgs",
    "RepairCreated",
    "RepairRunArgs",
    "RequeueDeadLettersArgs",
    "RequeueResult",
    "RequeuedRun",
    "RetryRunArgs",
    "RevokeInvitationArgs",
    "RevokePrincipalArgs",
    "Run",
    "RunCreated",
    "RunDetail",
    "RunDueSchedulesArgs",
    "RunGrid",
    "RunJob",
    "RunLineage",
    "RunPage",
    "RunRepair",
    "RunSummary",
    "RunTimeline",
    "Schedule",
    "ScheduleDeleted",
    "ScheduleDetail",
    "Sensor",
    "SensorDeleted",
    "SensorEvaluation",
    "SetJobConcurrencyArgs",
    "SetJobSloArgs",
    "SloChange",
    "SloEvaluation",
    "SloState",
    "Tick",
    "TickPage",
    "TimelineAttempt",
    "TimelinePhase",
    "UnblockDatasetArgs",
    "UpdateConnectionArgs",
    "UpdateScheduleArgs",
    "Workspace",
    "WorkspaceListItem",
]


InvitationState = Literal["pending", "accepted", "expired"]

# --------------------------------------------------------------------------------- results


class _Result(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    client_fields: ClassVar[frozenset[str]] = frozenset()
    """Fields the client adds to the server's answer (not in the OpenAPI schema)."""


class Workspace(_Result):
    """`create_workspace`'s answer."""

    id: str
    slug: str
    name: str
    env: Env
    created_by: str | None
    created_at: datetime


class WorkspaceListItem(_Result):
    """One of `list_workspaces`: `role` is the caller's (None for service_role)."""

    id: str
    slug: str
    name: str
    env: Env
    created_at: datetime
    role: MemberRole | None


class Member(_Result):
    """`add_member`'s answer."""

    workspace_id: str
    principal_id: str
    role: MemberRole
    name: str | None
    created_at: datetime


class MemberRemoved(_Result):
    """`remove_member`'s answer."""

    workspace_id: str
    principal_id: str
    removed: bool


class Principal(_Result):
    """`create_principal` and `revoke_principal`'s answer."""

    id: str
    kind: PrincipalKind
    name: str
    created_by: str | None
    created_at: datetime
    revoked_at: datetime | None
    revoked_by: str | None
    owner_workspace_id: str | None
    """The workspace that owns it (its admins may enrol and revoke it); None: the installation's."""


class Invitation(_Result):
    """`invite_member`'s answer and the items of `list_invitations`."""

    workspace_id: str
    principal_id: str
    role: MemberRole
    name: str | None
    invited_by: str | None
    created_at: datetime
    expires_at: datetime
    accepted_at: datetime | None
    state: InvitationState


class AuditActor(_Result):
    id: str
    name: str | None
    email: str | None


class AuditEntry(_Result):
    """One row of the audit log: who (`actor`, None for a call without a principal) did what
    (`function_name`), when, on what (`target_type`, `target_id`)."""

    id: int
    at: datetime
    actor: AuditActor | None
    db_role: str
    function_name: str
    target_type: str | None
    target_id: str | None
    details: dict[str, Any]


class AuditPage(_Result):
    """`list_audit`'s answer, newest first: pass `next_before` as `before` for the next
    (older) page (None: the end)."""

    entries: tuple[AuditEntry, ...]
    next_before: int | None


class InvitationRevoked(_Result):
    """`revoke_invitation`'s answer."""

    workspace_id: str
    principal_id: str
    revoked: bool


class ClaimRun(_Result):
    """The run a claimed phase belongs to, as the executor needs it."""

    spec_slug: str
    git_sha: str
    env: Env
    input_manifest: dict[str, Any]
    labels: dict[str, str]
    priority: int
    parent_run_id: str | None


class ClaimConnection(_Result):
    """A workspace connection a claimed phase names (`params.connections`), as registered in
    ops: non-secret `config` and the `secrets` references (`env:NAME`, `file:/path`), never
    a secret value. The worker resolves the references under its own policy."""

    type: str
    config: dict[str, Any]
    secrets: dict[str, str]
    version: int


class Claim(_Result):
    """A claimed phase. `lease_token` is a capability: never log it (it is kept out of repr)."""

    phase_id: str
    run_id: str
    workspace_id: str
    name: str
    kind: str
    params: dict[str, Any]
    depends_on: tuple[str, ...]
    attempt: int
    max_attempts: int
    timeout_seconds: int
    lease_token: str = Field(repr=False)
    lease_seconds: int
    lease_expires_at: datetime
    claim_id: str | None
    inputs: dict[str, dict[str, Any]]
    run: ClaimRun
    connections: dict[str, ClaimConnection] = Field(default_factory=dict)
    """The workspace connections the phase names, by name (a name the workspace no longer
    has is absent: the worker fails the phase naming it)."""


class HeartbeatResult(_Result):
    phase_id: str
    lease_expires_at: datetime
    cancel_requested: bool
    phase_state: PhaseState        # running | cancelled
    run_state: RunState


class AppendResult(_Result):
    """What `append_events` stored; `event_ids` are the ids the batch was sent with."""

    client_fields: ClassVar[frozenset[str]] = frozenset({"event_ids"})

    appended: int
    duplicates: int
    last_seq: int
    event_ids: tuple[str, ...] = ()


class Artifact(_Result):
    """A registered artifact and its link to the phase (`register_artifact`'s answer)."""

    workspace_id: str
    digest: str
    size_bytes: int
    media_type: str
    kind: str
    uri: str
    metadata: dict[str, Any]
    first_run_id: str | None
    created_by: str | None
    created_at: datetime
    run_id: str
    phase: str
    name: str
    role: ArtifactRole
    created: bool
    linked: bool


class ArtifactLink(_Result):
    """An artifact as linked to a run and phase (`list_artifacts`); `id` is the cursor."""

    id: int
    run_id: str
    workspace_id: str
    phase: str | None
    role: ArtifactRole
    name: str
    attempt: int | None
    linked_at: datetime
    digest: str
    size_bytes: int
    media_type: str
    kind: str
    uri: str
    metadata: dict[str, Any]
    first_run_id: str | None


class ArtifactPage(_Result):
    artifacts: tuple[ArtifactLink, ...]
    next_after: int


class CompleteResult(_Result):
    """The phase's and the run's states after `complete_phase` (`replayed`: a repeat)."""

    phase_id: str
    phase: str
    phase_state: PhaseState
    attempt: int
    run_id: str
    run_state: RunState
    not_before: datetime | None
    released: tuple[str, ...]
    replayed: bool


class CompletionLostError(_Result):
    code: Literal["lease_lost"]
    message: str


class PhaseCompletion(_Result):
    """One answer of `complete_phases`, for the completion with this `lease_token`: the
    `complete_phase` answer, or `error` (lease_lost; nothing written for it) and no states."""

    lease_token: str
    error: CompletionLostError | None = None
    phase_id: str | None = None
    phase: str | None = None
    phase_state: PhaseState | None = None
    attempt: int | None = None
    run_id: str | None = None
    run_state: RunState | None = None
    not_before: datetime | None = None
    released: tuple[str, ...] = ()
    replayed: bool = False

    @property
    def lost(self) -> bool:
        """The lease was not live: this completion was not made."""
        return self.error is not None

    def result(self) -> CompleteResult | None:
        """As `complete_phase` answers it (None when the lease was lost)."""
        if self.error is not None:
            return None
        return CompleteResult.model_validate(self.model_dump(exclude={"lease_token", "error"}))


class Phase(_Result):
    id: str
    name: str
    ordinal: int
    kind: str
    params: dict[str, Any]
    depends_on: tuple[str, ...]
    state: PhaseState
    priority: int
    attempt: int
    max_attempts: int
    timeout_seconds: int
    retry_backoff_seconds: float
    retry_backoff_max_seconds: float
    queued_at: datetime
    not_before: datetime | None
    lease_seconds: int | None
    lease_expires_at: datetime | None
    claimed_by: str | None
    started_at: datetime | None
    finished_at: datetime | None
    progress: dict[str, Any] | None
    output_manifest: dict[str, Any] | None
    error: dict[str, Any] | None
    reused_from_phase_id: str | None


class RunJob(_Result):
    """The job of a run and the version it was made from (`create_job_run`, schedules)."""

    id: str
    slug: str
    version: int
    version_id: str


class _RunCore(_Result):
    """What every run result has (`created_by` is None for callers who are not admins;
    `job` is None for a run of a spec file)."""

    id: str
    workspace_id: str
    env: Env
    spec_slug: str
    git_sha: str
    state: RunState
    priority: int
    labels: dict[str, str]
    idempotency_key: str | None
    parent_run_id: str | None
    error: dict[str, Any] | None
    cancel_reason: str | None
    created_by: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    finalized_at: datetime | None
    updated_at: datetime
    last_event_seq: int
    job: RunJob | None = None


class _RunFields(_RunCore):
    input_manifest: dict[str, Any]
    output_manifest: dict[str, Any] | None


class Run(_RunFields):
    """A run with its phases, in ordinal order."""

    phases: tuple[Phase, ...]

    def phase(self, name: str) -> Phase:
        for phase in self.phases:
            if phase.name == name:
                return phase
        raise KeyError(name)


class RunCreated(Run):
    """`create_run` and `retry_run`'s answer: the run, and whether this call created it
    (False: an earlier call with the same idempotency key did)."""

    created: bool


class RunRepair(_Result):
    """A child of a run (a repair or a retry) as get_run lists it."""

    id: str
    state: RunState
    created_at: datetime


class RunDetail(Run):
    """`get_run`'s answer: the run with its phases and its lineage (`repairs`: its children,
    oldest first; `root_run_id`: the first run of the lineage, its own id without a parent)."""

    repairs: tuple[RunRepair, ...]
    root_run_id: str


class RepairCreated(RunCreated):
    """`repair_run`'s answer: the child run, whether this call created it and the phases it
    reruns (in ordinal order)."""

    rerun_phases: tuple[str, ...]


class ChangedSince(_Result):
    """What a run of what changed (`create_changed_run`) reruns and reuses, and from which
    run: `changed` maps each changed phase to why; `rerun` (the changed phases and everything
    downstream) and `reused` (the base run's outputs) in ordinal order."""

    base_run_id: str
    base_git_sha: str
    changed: dict[str, str]
    rerun: tuple[str, ...]
    reused: tuple[str, ...]


class ChangedRunCreated(RunCreated):
    """`create_changed_run`'s answer: the run, whether this call created it, and what it
    reruns and reuses (also in `input_manifest.changed_since`)."""

    changed_since: ChangedSince


class DeadLetterError(_Result):
    """A dead letter's last error: its message (500 characters at most), type and reason."""

    message: str
    type: str | None
    reason: str | None


class DeadLetter(_Result):
    """A phase that failed for good and that no repair has rerun to an end."""

    phase_id: str
    run_id: str
    workspace_id: str
    spec_slug: str
    phase: str
    kind: str
    attempts: int
    max_attempts: int
    run_state: RunState
    failed_at: datetime | None
    error: DeadLetterError
    active_repair_id: str | None


class DeadLetterPage(_Result):
    """`list_dead_letters`' answer: pass `next_cursor` as `cursor` (None: the end)."""

    dead_letters: tuple[DeadLetter, ...]
    next_cursor: str | None


class RequeuedRun(_Result):
    """One run of `requeue_dead_letters`: the repair that covers its dead letters."""

    run_id: str
    repair_run_id: str
    created: bool
    state: RunState
    phases: tuple[str, ...]
    rerun_phases: tuple[str, ...]


class RequeueResult(_Result):
    requeued: tuple[RequeuedRun, ...]


class RunSummary(_RunCore):
    """A run of `list_runs`: without its phases and manifests (`get_run` has them), its
    `error` reduced to `{phase, message}` (500 characters at most), with the number of
    phases in each state."""

    phase_counts: dict[PhaseState, int]


class RunPage(_Result):
    """`list_runs`' answer: pass `next_cursor` as `cursor` for the next page (None: the end)."""

    runs: tuple[RunSummary, ...]
    next_cursor: str | None


class Event(_Result):
    seq: int
    event_id: str
    run_id: str
    phase: str | None
    attempt: int | None
    ts: datetime
    recorded_at: datetime
    level: EventLevel
    type: str
    message: str
    payload: dict[str, Any]
    principal_id: str | None


class EventPage(_Result):
    """`list_events`' answer: `next_after` continues forwards, `prev_before` (the first seq of
    the page; None when it is empty) pages back as `before`."""

    events: tuple[Event, ...]
    next_after: int
    prev_before: int | None = None


class TimelineAttempt(_Result):
    """One attempt of a phase: claimed, started (the worker's PHASE_STARTED, else the claim),
    ended (None while running) and its `outcome`: running, succeeded, failed, lease_expired or
    cancelled."""

    attempt: int
    claimed_at: datetime
    started_at: datetime
    ended_at: datetime | None
    outcome: str


class TimelinePhase(_Result):
    name: str
    kind: str
    state: PhaseState
    attempts: tuple[TimelineAttempt, ...]


class RunTimeline(_Result):
    """`get_run_timeline`'s answer: every phase of the run (by ordinal) with its attempts."""

    run_id: str
    phases: tuple[TimelinePhase, ...]


class GridCell(_Result):
    state: PhaseState
    attempt: int
    started_at: datetime | None
    finished_at: datetime | None


class GridRun(_Result):
    id: str
    state: RunState
    created_at: datetime
    finished_at: datetime | None
    git_sha: str
    phases: dict[str, GridCell]


class RunGrid(_Result):
    """`get_run_grid`'s answer: the phase names (columns) and the runs (rows, newest first),
    each with a cell per phase it has."""

    phase_names: tuple[str, ...]
    runs: tuple[GridRun, ...]


class LineageNode(_Result):
    id: str
    type: str
    label: str
    layer: str | None = None


class LineageEdge(_Result):
    from_: str = Field(alias="from")
    to: str


class RunLineage(_Result):
    """`get_run_lineage`'s answer: datasets and phases, edges input -> phase -> output."""

    nodes: tuple[LineageNode, ...]
    edges: tuple[LineageEdge, ...]


class HealthBucket(_Result):
    bucket: datetime
    succeeded: int
    failed: int
    lease_expiries: int
    p50_s: float | None
    p95_s: float | None


class HealthTotals(_Result):
    succeeded: int
    failed: int
    success_rate: float | None
    p50_s: float | None
    p95_s: float | None


class HealthByKind(HealthTotals):
    kind: str


class HealthByPhase(HealthTotals):
    name: str
    kind: str


class HealthFreshness(_Result):
    dataset: str
    layer: DatasetLayer
    data_time: datetime
    lag_s: float
    slo_s: int | None


class HealthAlert(_Result):
    id: str
    rule: str
    event: str
    subject: dict[str, Any]
    state: AlertState
    created_at: datetime


class HealthAlerts(_Result):
    open: int
    recent: tuple[HealthAlert, ...]


class Health(_Result):
    """`get_health`'s answer: a workspace's queue, outcomes and durations over time,
    freshness, alerts and dead letters."""

    now: datetime
    since: datetime
    bucket_seconds: int
    queue_depth: int
    running: int
    lease_expiries_last_hour: int
    series: tuple[HealthBucket, ...]
    by_kind: tuple[HealthByKind, ...]
    by_phase: tuple[HealthByPhase, ...]
    freshness: tuple[HealthFreshness, ...]
    alerts: HealthAlerts
    dead_letters: int


class DatasetRecord(_Result):
    """`record_dataset`'s answer: the dataset's state after the call; `version` and `change`
    what this call recorded (`recorded` False, `version` None and `change` NONE for a write
    that kept the schema or a repeat of one)."""

    dataset_id: str
    workspace_id: str
    name: str
    layer: DatasetLayer
    schema_state: SchemaState
    schema_version: int     # the last applied version (0: no schema yet)
    recorded: bool
    version: int | None = None
    change: ChangeKind | None = None


class DatasetVersion(_Result):
    """One schema the catalog was shown (`get_dataset`'s `versions`, newest first); `applied`
    False for a refused breaking change."""

    version: int
    change: ChangeKind
    applied: bool
    schema_: Any = Field(default=None, alias="schema")
    changes: list[dict[str, Any]] = Field(default_factory=list)
    run_id: str | None = None
    phase_id: str | None = None
    phase: str | None = None
    table_version: int | None = None
    digest: str | None = None
    recorded_at: datetime
    recorded_by: str | None = None


class Dataset(_Result):
    """A dataset of the catalog (`list_datasets`, `unblock_dataset`)."""

    id: str
    workspace_id: str
    name: str
    layer: DatasetLayer
    location: str
    format: str
    owner: str | None = None
    tags: tuple[str, ...] = ()
    schema_state: SchemaState
    schema_version: int
    blocked_change: dict[str, Any] | None = None
    blocked_at: datetime | None = None
    last_run_id: str | None = None
    last_phase_id: str | None = None
    last_table_version: int | None = None
    last_digest: str | None = None
    last_rows: int | None = None
    last_written_at: datetime | None = None
    created_at: datetime
    updated_at: datetime
    data_time: datetime | None = None
    source_cursor: str | None = None
    data_time_run_id: str | None = None
    data_time_job_id: str | None = None
    data_time_recorded_at: datetime | None = None
    upstream: tuple[str, ...] | None = None


class DatasetDetail(Dataset):
    """`get_dataset`'s answer: the dataset with every schema version the catalog was shown,
    newest first."""

    versions: tuple[DatasetVersion, ...] = ()


class ConnectionTest(_Result):
    """The last `record_connection_test` of a connection (`message` capped, passwords
    redacted)."""

    at: datetime
    ok: bool
    message: str | None


class Connection(_Result):
    """A workspace connection (`create_connection`, `get_connection`, ...): `type`, the
    non-secret `config` and the `secrets` as references (`env:NAME`, `file:/path`), never
    values. `version` counts its changes (1 when created)."""

    id: str
    workspace_id: str
    name: str
    type: ConnectionType
    config: dict[str, Any]
    secrets: dict[str, str]
    description: str | None
    version: int
    created_at: datetime
    updated_at: datetime
    last_test: ConnectionTest | None


class ConnectionDeleted(_Result):
    """`delete_connection`'s answer."""

    id: str
    workspace_id: str
    name: str
    deleted: bool


JobParamType = Literal["string", "path", "integer", "number", "boolean"]


class JobParam(_Result):
    """A param a job version declares: `required` exactly when `default` is None."""

    type: JobParamType
    default: str | int | float | bool | None
    required: bool
    description: str | None


class JobSource(_Result):
    """The spec file a version was registered from, and the blake3 of its bytes."""

    path: str
    digest: str
    dirty: bool = False


class DatasetFreshness(_Result):
    """One dataset of a job's freshness: its data time (every source change before it is in)
    and the newest source change included, in the source's terms."""

    name: str
    layer: str
    data_time: datetime
    source_cursor: str | None
    run_id: str
    lag_seconds: float


class JobFreshness(_Result):
    """How far a job's datasets are behind their source, and its SLO (docs/jobs.md)."""

    slo_seconds: int
    state: SloState
    lag_seconds: float | None
    data_time: datetime | None
    breached_since: datetime | None
    checked_at: datetime | None
    datasets: tuple[DatasetFreshness, ...]


class SloChange(_Result):
    """A job whose SLO state `evaluate_slos` changed."""

    job: str
    workspace_id: str
    state: Literal["ok", "breached"]
    lag_seconds: float


class SloEvaluation(_Result):
    """`evaluate_slos`' answer."""

    checked: int
    breached: int
    recovered: int
    alerts: int
    changes: tuple[SloChange, ...]
    at: datetime


class Job(_Result):
    """A job of a workspace (`created_by` is None for callers who are not admins)."""

    id: str
    workspace_id: str
    slug: str
    description: str | None
    owner: str | None
    tags: dict[str, str]
    created_by: str | None
    created_at: datetime
    updated_at: datetime
    latest_version: int
    max_concurrent_runs: int | None = None
    freshness: JobFreshness


class JobVersion(_Result):
    """A version of a job: immutable; `spec` only where asked (register_job, get_job's
    `latest`), `created_by_name` in get_job's versions."""

    id: str
    job_id: str
    version: int
    digest: str
    git_sha: str
    params: dict[str, JobParam]
    source: JobSource | None
    created_by: str | None
    created_at: datetime
    created_by_name: str | None = None
    spec: dict[str, Any] | None = None


class JobRegistered(_Result):
    """`register_job`'s answer: `created` is False when the latest version already had this
    digest and git sha."""

    job: Job
    version: JobVersion
    created: bool


class JobLastRun(_Result):
    id: str
    state: RunState
    created_at: datetime


class JobListed(Job):
    """A job of `list_jobs`: with its last run and its next scheduled run."""

    last_run: JobLastRun | None
    next_run_at: datetime | None


class JobDetail(JobListed):
    """`get_job`'s answer: the job, its versions (newest first), the latest with its spec, and
    its recent runs."""

    versions: tuple[JobVersion, ...]
    latest: JobVersion | None
    recent_runs: tuple[RunSummary, ...]


class AlertDestination(_Result):
    """Where a workspace's alerts go (`create_alert_destination`, ...): `url` is a secret
    reference (`env:NAME`, `file:/path`) or, for a webhook, a literal URL without credentials;
    `headers` maps header names to references."""

    id: str
    workspace_id: str
    name: str
    type: AlertDestinationType
    url: str
    headers: dict[str, str]
    description: str | None
    created_at: datetime


class AlertRule(_Result):
    """Which events of a workspace raise an alert, sent to the named `destination`."""

    id: str
    workspace_id: str
    name: str
    event: AlertEvent
    threshold: int | None
    filters: dict[str, Any]
    destination: str
    enabled: bool
    description: str | None
    created_at: datetime


class AlertObjectDeleted(_Result):
    """`delete_alert_rule`'s and `delete_alert_destination`'s answer."""

    id: str
    workspace_id: str
    name: str
    deleted: bool


class AlertDelivery(_Result):
    """One delivery attempt of an alert."""

    attempt: int
    at: datetime
    ok: bool
    http_status: int | None
    error: str | None
    duration_ms: int | None


class Alert(_Result):
    """An alert of the outbox (`list_alerts`, `record_alert_delivery`): `id` is the dedupe
    id receivers see; `deliveries` its attempts."""

    id: str
    workspace_id: str
    rule: str
    destination: str
    event: AlertEvent
    subject: dict[str, Any]
    payload: dict[str, Any]
    created_at: datetime
    state: AlertState
    attempts: int
    max_attempts: int
    next_attempt_at: datetime | None
    last_error: str | None
    delivered_at: datetime | None
    deliveries: list[AlertDelivery] = Field(default_factory=list)


class ClaimedAlertDestination(_Result):
    """The destination of a claimed alert: references the deliverer resolves itself."""

    name: str
    type: AlertDestinationType
    url: str
    headers: dict[str, str]


class ClaimedAlert(_Result):
    """An alert leased by `claim_alerts`, with its destination; `attempt` is the number of the
    attempt this claim makes."""

    id: str
    workspace_id: str
    workspace: str
    rule: str
    event: AlertEvent
    subject: dict[str, Any]
    payload: dict[str, Any]
    created_at: datetime
    attempt: int
    max_attempts: int
    lease_expires_at: datetime
    destination: ClaimedAlertDestination




class GithubStatus(_Result):
    """A commit status of a gate run (`list_github_statuses`, `record_github_status_delivery`):
    the GitHub `state` of the run's `run_state`, and how its delivery went."""

    id: str
    workspace_id: str
    run_id: str
    repo: str
    sha: str
    context: str
    state: GithubState
    run_state: str
    description: str
    target_url: str | None
    created_at: datetime
    delivery: GithubDelivery
    attempts: int
    max_attempts: int
    next_attempt_at: datetime | None
    http_status: int | None
    last_error: str | None
    delivered_at: datetime | None
    check_run_id: int | None = None
    """GitHub's id of the run's check run (docs/github.md, Check runs), if one was created."""
    check_run_url: str | None = None


class ClaimedGithubStatus(_Result):
    """A commit status leased by `claim_github_statuses`; `attempt` is this claim's attempt."""

    id: str
    workspace_id: str
    run_id: str
    repo: str
    sha: str
    context: str
    state: GithubState
    description: str
    target_url: str | None
    created_at: datetime
    attempt: int
    max_attempts: int
    lease_expires_at: datetime


class GithubCheckRun(_Result):
    """The check run of a gate run and context (`list_github_check_runs`,
    `record_github_check_run_delivery`): what GitHub should show (`status`, `conclusion`,
    `title`), GitHub's `check_run_id` / `html_url` once created, and how its delivery went.
    `version` counts the run's state changes; `delivered_version` is the last GitHub has."""

    id: str
    workspace_id: str
    run_id: str
    repo: str
    sha: str
    context: str
    details_url: str | None
    run_state: str
    status: GithubCheckStatus
    conclusion: GithubCheckConclusion | None
    title: str
    started_at: datetime | None
    completed_at: datetime | None
    version: int
    delivered_version: int
    check_run_id: int | None
    html_url: str | None
    created_at: datetime
    updated_at: datetime
    delivery: GithubCheckDelivery
    attempts: int
    max_attempts: int
    next_attempt_at: datetime | None
    http_status: int | None
    last_error: str | None
    delivered_at: datetime | None


class ClaimedGithubCheckRun(_Result):
    """A check run leased by `claim_github_check_runs`: record the attempt with its `version`.
    `claims` above 1 without a `check_run_id`: an earlier create may have reached GitHub."""

    id: str
    workspace_id: str
    run_id: str
    repo: str
    sha: str
    context: str
    external_id: str
    details_url: str | None
    run_state: str
    status: GithubCheckStatus
    conclusion: GithubCheckConclusion | None
    title: str
    started_at: datetime | None
    completed_at: datetime | None
    version: int
    check_run_id: int | None
    html_url: str | None
    claims: int
    attempt: int
    max_attempts: int
    lease_expires_at: datetime


class Schedule(_Result):
    """A schedule of a job (`create_schedule`, `update_schedule`, `list_schedules`): `cron`
    (in `timezone`) or `interval_seconds`, the catch-up and overlap policies, `next_tick_at`
    (None while disabled)."""

    id: str
    workspace_id: str
    name: str
    description: str | None
    job_id: str
    job: str
    cron: str | None
    timezone: str
    interval_seconds: int | None
    params: dict[str, Any]
    enabled: bool
    catchup: ScheduleCatchup
    catchup_max: int
    max_concurrent: int
    overlap: ScheduleOverlap
    priority: int
    next_tick_at: datetime | None
    last_tick_at: datetime | None
    created_by: str | None
    created_at: datetime
    updated_at: datetime


class ScheduleDetail(Schedule):
    """`get_schedule`'s answer: the schedule and its next fire times."""

    upcoming: tuple[datetime, ...]


class ScheduleDeleted(_Result):
    """`delete_schedule`'s answer."""

    id: str
    workspace_id: str
    name: str
    deleted: bool


class Tick(_Result):
    """One tick of a schedule: created (its `run_id`), skipped (`reason`) or failed (the
    error in `reason`). `schedule` (its name) is set in `run_due_schedules`' answer."""

    id: str
    schedule_id: str
    workspace_id: str
    scheduled_for: datetime
    state: TickState
    reason: str | None
    run_id: str | None
    created_at: datetime
    schedule: str | None = None


class TickPage(_Result):
    """`list_schedule_ticks`' answer, newest first: pass `next_before` as `before` for the
    next page (None: the end)."""

    ticks: tuple[Tick, ...]
    next_before: datetime | None


class DueResult(_Result):
    """`run_due_schedules`' answer: how many schedules were claimed and ticks recorded."""

    schedules: int
    created: int
    skipped: int
    failed: int
    ticks: tuple[Tick, ...]
    at: datetime


class Sensor(_Result):
    """A source-changed sensor of a job (`create_sensor`, `list_sensors`, `get_sensor`): the
    query on a postgres `connection` whose value, when it moves, starts a run; `cursor` is the
    last value that did (None before the first evaluation)."""

    id: str
    workspace_id: str
    name: str
    job_id: str
    job: str
    connection: str
    query: str
    params: dict[str, Any]
    interval_seconds: int
    enabled: bool
    cursor: str | None
    evaluations: int
    last_evaluated_at: datetime | None
    last_moved_at: datetime | None
    last_run_id: str | None
    last_error: str | None
    next_evaluation_at: datetime | None
    created_by: str | None
    created_at: datetime


class SensorDeleted(_Result):
    """`delete_sensor`'s answer."""

    id: str
    workspace_id: str
    name: str
    deleted: bool


class ClaimedSensor(_Result):
    """One sensor of `claim_due_sensors`' answer: what the evaluator needs to evaluate it."""

    id: str
    workspace_id: str
    name: str
    connection: str
    query: str
    cursor: str | None


class SensorEvaluation(_Result):
    """`record_sensor_value`'s answer: whether the value moved (and the run it started), or
    the error recorded."""

    sensor: Sensor
    moved: bool
    run: RunCreated | None
    error: str | None
    waiting: str | None = None
    """The value moved while the job was at its max_concurrent_runs: no run yet."""


# ---------------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class NewEvent:
    """An event to append. Its `event_id` is made once, when the event is made, so that every
    resend of it (by the client's retries or by the caller) is recognised as the same event."""

    type: str
    message: str = ""
    payload: Mapping[str, Any] | None = None
    phase: str | None = None
    level: EventLevel | None = None
    ts: datetime | None = None
    event_id: str = field(default_factory=lambda: str(uuid.uuid4()))

    def to_json(self) -> dict[str, Any]:
        event: dict[str, Any] = {"event_id": self.event_id, "type": self.type,
                                 "message": self.message}
        if self.payload is not None:
            event["payload"] = dict(self.payload)
        if self.phase is not None:
            event["phase"] = self.phase
        if self.level is not None:
            event["level"] = self.level
        if self.ts is not None:
            event["ts"] = self.ts.isoformat()
        return event


class _Args(BaseModel):
    """A request body: exactly the operation's properties; None means "not sent" (the
    function's default applies)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _ids_as_text(cls, data: Any) -> Any:
        """A `uuid.UUID` is sent as its text (ids are text in the contract)."""
        if isinstance(data, Mapping):
            return {key: str(value) if isinstance(value, uuid.UUID) else value
                    for key, value in data.items()}
        return data

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True, by_alias=True)


class PhaseSpec(_Args):
    """One phase of `create_run` (docs/contract.md, Limits)."""

    name: str
    kind: str
    params: dict[str, Any] | None = None
    depends_on: list[str] | None = None
    max_attempts: int | None = None
    timeout_seconds: int | None = None
    retry_backoff_seconds: float | None = None
    retry_backoff_max_seconds: float | None = None


class CreateWorkspaceArgs(_Args):
    slug: str
    name: str
    env: Env | None = None


class AddMemberArgs(_Args):
    workspace_id: str
    principal_id: str
    role: MemberRole
    name: str | None = None


class RemoveMemberArgs(_Args):
    workspace_id: str
    principal_id: str


class CreatePrincipalArgs(_Args):
    name: str
    kind: PrincipalKind | None = None
    workspace_id: str | None = None


class InviteMemberArgs(_Args):
    workspace_id: str
    principal_id: str
    role: MemberRole
    name: str | None = None
    expires_in_seconds: int | None = None


class AcceptInvitationArgs(_Args):
    workspace_id: str


class RevokeInvitationArgs(_Args):
    workspace_id: str
    principal_id: str


class ListInvitationsArgs(_Args):
    workspace_id: str


class ListAuditArgs(_Args):
    workspace_id: str
    before: int | None = None
    limit: int | None = None
    function_name: str | None = None
    principal_id: str | None = None


class RevokePrincipalArgs(_Args):
    principal_id: str


class CreateRunArgs(_Args):
    workspace_id: str
    spec_slug: str
    git_sha: str
    phases: list[dict[str, Any]]
    input_manifest: dict[str, Any] | None = None
    idempotency_key: str | None = None
    labels: dict[str, Any] | None = None
    priority: int | None = None


class ClaimPhaseArgs(_Args):
    kinds: list[str] | None = None
    lease_seconds: int | None = None
    claim_id: str | None = None
    run_id: str | None = None
    workspace_id: str | None = None


class ClaimPhasesArgs(_Args):
    kinds: list[str] | None = None
    lease_seconds: int | None = None
    limit: int | None = None
    claim_id: str | None = None
    run_id: str | None = None
    workspace_id: str | None = None


class HeartbeatArgs(_Args):
    lease_token: str
    progress: dict[str, Any] | None = None
    lease_seconds: int | None = None


class AppendEventsArgs(_Args):
    run_id: str
    events: list[dict[str, Any]]
    lease_token: str | None = None


class RegisterArtifactArgs(_Args):
    lease_token: str
    digest: str
    uri: str
    size_bytes: int
    media_type: str | None = None
    kind: str | None = None
    name: str | None = None
    role: ArtifactRole | None = None
    metadata: dict[str, Any] | None = None


class CompletePhaseArgs(_Args):
    lease_token: str
    outcome: Outcome
    output_manifest: dict[str, Any] | None = None
    error: Any = None
    retryable: bool | None = None


class CompletePhasesArgs(_Args):
    completions: list[CompletePhaseArgs]


class CompleteRunArgs(_Args):
    run_id: str
    output_manifest: dict[str, Any] | None = None


class CancelRunArgs(_Args):
    run_id: str
    reason: str | None = None


class RetryRunArgs(_Args):
    run_id: str
    idempotency_key: str | None = None


class RepairRunArgs(_Args):
    run_id: str
    phases: list[str] | None = None
    idempotency_key: str | None = None


class ListDeadLettersArgs(_Args):
    workspace_id: str
    spec_slug: str | None = None
    since: str | None = None
    limit: int | None = None
    cursor: str | None = None


class RequeueDeadLettersArgs(_Args):
    workspace_id: str
    phase_ids: list[str]


class GetRunArgs(_Args):
    run_id: str


class ListRunsArgs(_Args):
    workspace_id: str | None = None
    state: RunState | None = None
    spec_slug: str | None = None
    labels: dict[str, Any] | None = None
    parent_run_id: str | None = None
    limit: int | None = None
    cursor: str | None = None
    job_slug: str | None = None
    git_sha: str | None = None
    env: str | None = None
    created_after: str | None = None
    created_before: str | None = None


class ListEventsArgs(_Args):
    run_id: str
    after: int | None = None
    limit: int | None = None
    phase: str | None = None
    before: int | None = None
    types: list[str] | None = None
    levels: list[EventLevel] | None = None
    text: str | None = None


class GetRunTimelineArgs(_Args):
    run_id: str


class GetRunGridArgs(_Args):
    workspace_id: str
    job_slug: str | None = None
    spec_slug: str | None = None
    limit: int | None = None


class GetRunLineageArgs(_Args):
    run_id: str


class GetHealthArgs(_Args):
    workspace_id: str
    since: str | None = None
    bucket_seconds: int | None = None


class ListArtifactsArgs(_Args):
    run_id: str | None = None
    workspace_id: str | None = None
    digest: str | None = None
    limit: int | None = None
    after: int | None = None


class ListWorkspacesArgs(_Args):
    pass


class RecordDatasetArgs(_Args):
    lease_token: str
    name: str
    location: str
    layer: DatasetLayer | None = None
    format: str | None = None
    schema_: Any = Field(default=None, alias="schema")
    change: ChangeKind | None = None
    changes: list[dict[str, Any]] | None = None
    table_version: int | None = None
    digest: str | None = None
    rows: int | None = None
    owner: str | None = None
    tags: list[str] | None = None

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


class UnblockDatasetArgs(_Args):
    workspace_id: str
    name: str
    resolution: Resolution
    note: str | None = None


class ListDatasetsArgs(_Args):
    workspace_id: str | None = None
    layer: DatasetLayer | None = None
    schema_state: SchemaState | None = None
    name: str | None = None
    limit: int | None = None


class GetDatasetArgs(_Args):
    workspace_id: str
    name: str


class CreateConnectionArgs(_Args):
    workspace_id: str
    name: str
    type: str
    config: dict[str, Any] | None = None
    secrets: dict[str, Any] | None = None
    description: str | None = None


class UpdateConnectionArgs(_Args):
    workspace_id: str
    name: str
    config: dict[str, Any] | None = None
    secrets: dict[str, Any] | None = None
    description: str | None = None


class DeleteConnectionArgs(_Args):
    workspace_id: str
    name: str


class ListConnectionsArgs(_Args):
    workspace_id: str


class GetConnectionArgs(_Args):
    workspace_id: str
    name: str


class RecordConnectionTestArgs(_Args):
    workspace_id: str
    name: str
    ok: bool
    message: str


class RegisterJobArgs(_Args):
    workspace_id: str
    slug: str
    spec: dict[str, Any]
    digest: str
    git_sha: str
    description: str | None = None
    owner: str | None = None
    tags: dict[str, str] | None = None


class ListJobsArgs(_Args):
    workspace_id: str


class GetJobArgs(_Args):
    workspace_id: str
    slug: str


class SetJobSloArgs(_Args):
    workspace_id: str
    job: str
    freshness_seconds: int


class SetJobConcurrencyArgs(_Args):
    workspace_id: str
    job: str
    max_concurrent_runs: int | None = None


class EvaluateSlosArgs(_Args):
    workspace_id: str | None = None
    limit: int | None = None


class CreateJobRunArgs(_Args):
    workspace_id: str
    job: str
    version: int | None = None
    params: dict[str, Any] | None = None
    idempotency_key: str | None = None
    labels: dict[str, str] | None = None
    priority: int | None = None


class CreateChangedRunArgs(_Args):
    workspace_id: str
    job: str
    base_run_id: str
    changed: dict[str, str]
    version: int | None = None
    params: dict[str, Any] | None = None
    idempotency_key: str | None = None
    labels: dict[str, str] | None = None
    priority: int | None = None


class CreateAlertDestinationArgs(_Args):
    workspace_id: str
    name: str
    type: str
    url: str
    headers: dict[str, Any] | None = None
    description: str | None = None


class ListAlertDestinationsArgs(_Args):
    workspace_id: str


class DeleteAlertDestinationArgs(_Args):
    workspace_id: str
    name: str


class CreateAlertRuleArgs(_Args):
    workspace_id: str
    name: str
    event: str
    destination: str
    threshold: int | None = None
    filters: dict[str, Any] | None = None
    enabled: bool | None = None
    description: str | None = None


class ListAlertRulesArgs(_Args):
    workspace_id: str


class DeleteAlertRuleArgs(_Args):
    workspace_id: str
    name: str


class ListAlertsArgs(_Args):
    workspace_id: str
    state: str | None = None
    limit: int | None = None


class ClaimAlertsArgs(_Args):
    limit: int | None = None
    lease_seconds: int | None = None


class RecordAlertDeliveryArgs(_Args):
    alert_id: str
    ok: bool
    http_status: int | None = None
    error: str | None = None
    duration_ms: int | None = None


class ListGithubStatusesArgs(_Args):
    workspace_id: str
    run_id: str | None = None
    limit: int | None = None


class ClaimGithubStatusesArgs(_Args):
    limit: int | None = None
    lease_seconds: int | None = None


class RecordGithubStatusDeliveryArgs(_Args):
    status_id: str
    ok: bool
    http_status: int | None = None
    error: str | None = None
    retry: bool | None = None
    retry_after_seconds: int | None = None


class ListGithubCheckRunsArgs(_Args):
    workspace_id: str
    run_id: str | None = None
    limit: int | None = None


class ClaimGithubCheckRunsArgs(_Args):
    limit: int | None = None
    lease_seconds: int | None = None


class RecordGithubCheckRunDeliveryArgs(_Args):
    check_id: str
    version: int
    ok: bool
    check_run: int | None = None
    html_url: str | None = None
    http_status: int | None = None
    error: str | None = None
    retry: bool | None = None
    retry_after_seconds: int | None = None


class CreateScheduleArgs(_Args):
    workspace_id: str
    name: str
    job: str
    cron: str | None = None
    timezone: str | None = None
    interval_seconds: int | None = None
    params: dict[str, Any] | None = None
    enabled: bool | None = None
    catchup: ScheduleCatchup | None = None
    catchup_max: int | None = None
    max_concurrent: int | None = None
    overlap: ScheduleOverlap | None = None
    priority: int | None = None
    description: str | None = None


class UpdateScheduleArgs(_Args):
    workspace_id: str
    name: str
    cron: str | None = None
    timezone: str | None = None
    interval_seconds: int | None = None
    params: dict[str, Any] | None = None
    enabled: bool | None = None
    catchup: ScheduleCatchup | None = None
    catchup_max: int | None = None
    max_concurrent: int | None = None
    overlap: ScheduleOverlap | None = None
    priority: int | None = None
    description: str | None = None


class DeleteScheduleArgs(_Args):
    workspace_id: str
    name: str


class ListSchedulesArgs(_Args):
    workspace_id: str
    job: str | None = None


class GetScheduleArgs(_Args):
    workspace_id: str
    name: str


class ListScheduleTicksArgs(_Args):
    workspace_id: str
    name: str
    state: TickState | None = None
    before: datetime | None = None
    limit: int | None = None


class RunDueSchedulesArgs(_Args):
    workspace_id: str | None = None
    limit: int | None = None


class CreateSensorArgs(_Args):
    workspace_id: str
    name: str
    job: str
    connection: str
    query: str
    params: dict[str, Any] | None = None
    interval_seconds: int | None = None
    enabled: bool | None = None


class DeleteSensorArgs(_Args):
    workspace_id: str
    name: str


class ListSensorsArgs(_Args):
    workspace_id: str
    job: str | None = None


class GetSensorArgs(_Args):
    workspace_id: str
    name: str


class ClaimDueSensorsArgs(_Args):
    workspace_id: str | None = None
    limit: int | None = None


class RecordSensorValueArgs(_Args):
    sensor_id: str
    value: str | None = None
    error: str | None = None


class AskReading(_Result):
    """One reading of a question (`AskAnswer.readings`): the metric query, how sure, why."""

    query: dict[str, Any]
    confidence: float
    why: str


class AskMetric(_Result):
    """A metric definition an answer used (`AskAnswer.metrics`): certified or not."""

    name: str
    description: str
    table: str
    measure: str
    aggregation: str
    filters: tuple[str, ...] = ()
    format: str
    owner: str
    certified: bool
    dimensions: tuple[str, ...] = ()


class AskLineage(_Result):
    """Where an answer's numbers come from: the gold table, its silver and Odoo tables, and
    the run that published it (`gold.publications`)."""

    table: str
    dataset: str | None = None
    silver: tuple[str, ...] = ()
    odoo: tuple[str, ...] = ()
    run_id: str | None = None
    as_of: str | None = None
    published_at: str | None = None


class AskAnswer(_Result):
    """`POST /ask/v1/ask`'s answer (docs/ask.md): `status` answer (the rows, the SQL),
    clarify (the candidate `readings`) or refuse (`reason`); `source` semantic or llm
    (uncertified SQL proposed by the LLM provider)."""

    question: str
    status: Literal["answer", "clarify", "refuse"]
    reason: str | None = None
    source: Literal["semantic", "llm"] = "semantic"
    certified: bool = False
    confidence: float | None = None
    query: dict[str, Any] | None = None
    compare: dict[str, Any] | None = None
    """A comparison's sides (labels, columns) and how the difference is taken."""
    sql: str | None = None
    columns: tuple[str, ...] = ()
    rows: tuple[tuple[Any, ...], ...] = ()
    readings: tuple[AskReading, ...] = ()
    metrics: tuple[AskMetric, ...] = ()
    lineage: tuple[AskLineage, ...] = ()


REQUESTS: dict[str, type[_Args]] = {
    "create_sensor": CreateSensorArgs,
    "delete_sensor": DeleteSensorArgs,
    "list_sensors": ListSensorsArgs,
    "get_sensor": GetSensorArgs,
    "claim_due_sensors": ClaimDueSensorsArgs,
    "record_sensor_value": RecordSensorValueArgs,
    "create_schedule": CreateScheduleArgs,
    "update_schedule": UpdateScheduleArgs,
    "delete_schedule": DeleteScheduleArgs,
    "list_schedules": ListSchedulesArgs,
    "get_schedule": GetScheduleArgs,
    "list_schedule_ticks": ListScheduleTicksArgs,
    "run_due_schedules": RunDueSchedulesArgs,
    "create_workspace": CreateWorkspaceArgs,
    "add_member": AddMemberArgs,
    "remove_member": RemoveMemberArgs,
    "create_principal": CreatePrincipalArgs,
    "revoke_principal": RevokePrincipalArgs,
    "invite_member": InviteMemberArgs,
    "accept_invitation": AcceptInvitationArgs,
    "revoke_invitation": RevokeInvitationArgs,
    "list_invitations": ListInvitationsArgs,
    "list_audit": ListAuditArgs,
    "create_run": CreateRunArgs,
    "claim_phase": ClaimPhaseArgs,
    "claim_phases": ClaimPhasesArgs,
    "heartbeat": HeartbeatArgs,
    "append_events": AppendEventsArgs,
    "register_artifact": RegisterArtifactArgs,
    "complete_phase": CompletePhaseArgs,
    "complete_phases": CompletePhasesArgs,
    "complete_run": CompleteRunArgs,
    "cancel_run": CancelRunArgs,
    "retry_run": RetryRunArgs,
    "repair_run": RepairRunArgs,
    "list_dead_letters": ListDeadLettersArgs,
    "requeue_dead_letters": RequeueDeadLettersArgs,
    "get_run": GetRunArgs,
    "list_runs": ListRunsArgs,
    "list_events": ListEventsArgs,
    "get_run_timeline": GetRunTimelineArgs,
    "get_run_grid": GetRunGridArgs,
    "get_run_lineage": GetRunLineageArgs,
    "get_health": GetHealthArgs,
    "list_artifacts": ListArtifactsArgs,
    "list_workspaces": ListWorkspacesArgs,
    "record_dataset": RecordDatasetArgs,
    "unblock_dataset": UnblockDatasetArgs,
    "list_datasets": ListDatasetsArgs,
    "get_dataset": GetDatasetArgs,
    "create_connection": CreateConnectionArgs,
    "update_connection": UpdateConnectionArgs,
    "delete_connection": DeleteConnectionArgs,
    "list_connections": ListConnectionsArgs,
    "get_connection": GetConnectionArgs,
    "record_connection_test": RecordConnectionTestArgs,
    "register_job": RegisterJobArgs,
    "list_jobs": ListJobsArgs,
    "get_job": GetJobArgs,
    "set_job_slo": SetJobSloArgs,
    "set_job_concurrency": SetJobConcurrencyArgs,
    "evaluate_slos": EvaluateSlosArgs,
    "create_job_run": CreateJobRunArgs,
    "create_changed_run": CreateChangedRunArgs,
    "create_alert_destination": CreateAlertDestinationArgs,
    "list_alert_destinations": ListAlertDestinationsArgs,
    "delete_alert_destination": DeleteAlertDestinationArgs,
    "create_alert_rule": CreateAlertRuleArgs,
    "list_alert_rules": ListAlertRulesArgs,
    "delete_alert_rule": DeleteAlertRuleArgs,
    "list_alerts": ListAlertsArgs,
    "claim_alerts": ClaimAlertsArgs,
    "record_alert_delivery": RecordAlertDeliveryArgs,
    "list_github_statuses": ListGithubStatusesArgs,
    "claim_github_statuses": ClaimGithubStatusesArgs,
    "record_github_status_delivery": RecordGithubStatusDeliveryArgs,
    "list_github_check_runs": ListGithubCheckRunsArgs,
    "claim_github_check_runs": ClaimGithubCheckRunsArgs,
    "record_github_check_run_delivery": RecordGithubCheckRunDeliveryArgs,
}
"""The request model of each operation (its body's properties, by the same names)."""

RESULTS: dict[str, type[_Result]] = {
    "create_sensor": Sensor,
    "delete_sensor": SensorDeleted,
    "list_sensors": Sensor,
    "get_sensor": Sensor,
    "claim_due_sensors": ClaimedSensor,
    "record_sensor_value": SensorEvaluation,
    "create_schedule": Schedule,
    "update_schedule": Schedule,
    "delete_schedule": ScheduleDeleted,
    "list_schedules": Schedule,
    "get_schedule": ScheduleDetail,
    "list_schedule_ticks": TickPage,
    "run_due_schedules": DueResult,
    "create_workspace": Workspace,
    "add_member": Member,
    "remove_member": MemberRemoved,
    "create_principal": Principal,
    "revoke_principal": Principal,
    "invite_member": Invitation,
    "accept_invitation": Member,
    "revoke_invitation": InvitationRevoked,
    "list_invitations": Invitation,
    "list_audit": AuditPage,
    "create_run": RunCreated,
    "claim_phase": Claim,
    "claim_phases": Claim,
    "heartbeat": HeartbeatResult,
    "append_events": AppendResult,
    "register_artifact": Artifact,
    "complete_phase": CompleteResult,
    "complete_phases": PhaseCompletion,
    "complete_run": Run,
    "cancel_run": Run,
    "retry_run": RunCreated,
    "repair_run": RepairCreated,
    "list_dead_letters": DeadLetterPage,
    "requeue_dead_letters": RequeueResult,
    "get_run": RunDetail,
    "list_runs": RunPage,
    "list_events": EventPage,
    "get_run_timeline": RunTimeline,
    "get_run_grid": RunGrid,
    "get_run_lineage": RunLineage,
    "get_health": Health,
    "list_artifacts": ArtifactPage,
    "list_workspaces": WorkspaceListItem,
    "record_dataset": DatasetRecord,
    "unblock_dataset": Dataset,
    "list_datasets": Dataset,
    "get_dataset": DatasetDetail,
    "create_connection": Connection,
    "update_connection": Connection,
    "delete_connection": ConnectionDeleted,
    "list_connections": Connection,
    "get_connection": Connection,
    "record_connection_test": Connection,
    "register_job": JobRegistered,
    "list_jobs": JobListed,
    "get_job": JobDetail,
    "set_job_slo": Job,
    "set_job_concurrency": Job,
    "evaluate_slos": SloEvaluation,
    "create_job_run": RunCreated,
    "create_changed_run": ChangedRunCreated,
    "create_alert_destination": AlertDestination,
    "list_alert_destinations": AlertDestination,
    "delete_alert_destination": AlertObjectDeleted,
    "create_alert_rule": AlertRule,
    "list_alert_rules": AlertRule,
    "delete_alert_rule": AlertObjectDeleted,
    "list_alerts": Alert,
    "claim_alerts": ClaimedAlert,
    "record_alert_delivery": Alert,
    "list_github_statuses": GithubStatus,
    "claim_github_statuses": ClaimedGithubStatus,
    "record_github_status_delivery": GithubStatus,
    "list_github_check_runs": GithubCheckRun,
    "claim_github_check_runs": ClaimedGithubCheckRun,
    "record_github_check_run_delivery": GithubCheckRun,
}
"""The result model of each operation (of one item, for those that answer a list)."""
