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
    ArtifactRole,
    ChangeKind,
    ConnectionType,
    DatasetLayer,
    Env,
    EventLevel,
    MemberRole,
    Outcome,
    PhaseState,
    PrincipalKind,
    Resolution,
    RunState,
    SchemaState,
)

__all__ = [
    "REQUESTS",
    "RESULTS",
    "AcceptInvitationArgs",
    "AddMemberArgs",
    "AppendEventsArgs",
    "AppendResult",
    "Artifact",
    "ArtifactLink",
    "ArtifactPage",
    "CancelRunArgs",
    "Claim",
    "ClaimConnection",
    "ClaimPhaseArgs",
    "ClaimRun",
    "CompletePhaseArgs",
    "CompleteResult",
    "CompleteRunArgs",
    "Connection",
    "ConnectionDeleted",
    "ConnectionTest",
    "CreateConnectionArgs",
    "CreatePrincipalArgs",
    "CreateRunArgs",
    "CreateWorkspaceArgs",
    "Dataset",
    "DatasetDetail",
    "DatasetRecord",
    "DatasetVersion",
    "DeleteConnectionArgs",
    "Event",
    "EventPage",
    "GetConnectionArgs",
    "GetDatasetArgs",
    "GetRunArgs",
    "HeartbeatArgs",
    "HeartbeatResult",
    "Invitation",
    "InvitationRevoked",
    "InviteMemberArgs",
    "ListArtifactsArgs",
    "ListConnectionsArgs",
    "ListDatasetsArgs",
    "ListEventsArgs",
    "ListInvitationsArgs",
    "ListRunsArgs",
    "ListWorkspacesArgs",
    "Member",
    "MemberRemoved",
    "NewEvent",
    "Phase",
    "PhaseSpec",
    "Principal",
    "RecordConnectionTestArgs",
    "RecordDatasetArgs",
    "RegisterArtifactArgs",
    "RemoveMemberArgs",
    "RetryRunArgs",
    "RevokeInvitationArgs",
    "RevokePrincipalArgs",
    "Run",
    "RunCreated",
    "RunPage",
    "RunSummary",
    "UnblockDatasetArgs",
    "UpdateConnectionArgs",
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


class _RunCore(_Result):
    """What every run result has (`created_by` is None for callers who are not admins)."""

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
    events: tuple[Event, ...]
    next_after: int


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


class CompleteRunArgs(_Args):
    run_id: str
    output_manifest: dict[str, Any] | None = None


class CancelRunArgs(_Args):
    run_id: str
    reason: str | None = None


class RetryRunArgs(_Args):
    run_id: str
    idempotency_key: str | None = None


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


class ListEventsArgs(_Args):
    run_id: str
    after: int | None = None
    limit: int | None = None
    phase: str | None = None


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


REQUESTS: dict[str, type[_Args]] = {
    "create_workspace": CreateWorkspaceArgs,
    "add_member": AddMemberArgs,
    "remove_member": RemoveMemberArgs,
    "create_principal": CreatePrincipalArgs,
    "revoke_principal": RevokePrincipalArgs,
    "invite_member": InviteMemberArgs,
    "accept_invitation": AcceptInvitationArgs,
    "revoke_invitation": RevokeInvitationArgs,
    "list_invitations": ListInvitationsArgs,
    "create_run": CreateRunArgs,
    "claim_phase": ClaimPhaseArgs,
    "heartbeat": HeartbeatArgs,
    "append_events": AppendEventsArgs,
    "register_artifact": RegisterArtifactArgs,
    "complete_phase": CompletePhaseArgs,
    "complete_run": CompleteRunArgs,
    "cancel_run": CancelRunArgs,
    "retry_run": RetryRunArgs,
    "get_run": GetRunArgs,
    "list_runs": ListRunsArgs,
    "list_events": ListEventsArgs,
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
}
"""The request model of each operation (its body's properties, by the same names)."""

RESULTS: dict[str, type[_Result]] = {
    "create_workspace": Workspace,
    "add_member": Member,
    "remove_member": MemberRemoved,
    "create_principal": Principal,
    "revoke_principal": Principal,
    "invite_member": Invitation,
    "accept_invitation": Member,
    "revoke_invitation": InvitationRevoked,
    "list_invitations": Invitation,
    "create_run": RunCreated,
    "claim_phase": Claim,
    "heartbeat": HeartbeatResult,
    "append_events": AppendResult,
    "register_artifact": Artifact,
    "complete_phase": CompleteResult,
    "complete_run": Run,
    "cancel_run": Run,
    "retry_run": RunCreated,
    "get_run": Run,
    "list_runs": RunPage,
    "list_events": EventPage,
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
}
"""The result model of each operation (of one item, for those that answer a list)."""
