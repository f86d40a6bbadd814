"""Enrolment: a member of one workspace cannot take another workspace's executor.

The attack of issue 10, end to end through the real gateway over HTTP: a viewer of W1 reads
W1's events (which used to give away the executor's principal id in PHASE_CLAIMED), creates
its own workspace W2 (any signed-in user may), and tries to enrol W1's executor in W2 so that
the executor would run W2's phases. Each step is refused now: events name the executor instead
of giving its id, an admin adds only principals its workspace owns (or that accept an
invitation), an executor never accepts an invitation, and an executor's token is pinned to the
workspaces it was minted for. Invitations are the way in for users of the installation.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest

from control_room.db.store import ContractError
from tests.contract.conftest import SERVICE, HttpContract, Principal, new_run, phase, user
from tests.contract.snapshot import snapshot
from tests.helpers import running_gateway

UUID_TEXT = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"


@pytest.fixture
def api(conn: psycopg.Connection[Any], db_url: str) -> Iterator[HttpContract]:
    """The contract through the real gateway on a real port, a signed JWT per principal."""
    with running_gateway(db_url) as url, httpx.Client(base_url=url, timeout=30) as client:
        yield HttpContract(conn, client)


@dataclass
class Tenant:
    """W1: an admin and a viewer (users of the installation) and an executor W1 owns."""

    w1: str
    admin: Principal
    viewer: Principal
    executor: Principal      # its token is pinned to W1
    executor_id: str


def refusal(api: HttpContract, fn: str, args: dict[str, Any], who: Principal) -> ContractError:
    with pytest.raises(ContractError) as info:
        api.call(fn, args, as_=who)
    return info.value


def reason(err: ContractError) -> str | None:
    details = json.loads(str(err.details)) if err.details else {}
    return details.get("reason") if isinstance(details, dict) else None


def installation_user(api: HttpContract, name: str) -> Principal:
    """A user of the installation: a principal service_role made, owned by no workspace."""
    made = api.call("create_principal", {"name": name, "kind": "user"})
    assert made["owner_workspace_id"] is None
    return Principal("authenticated", uuid.UUID(made["id"]), name)


@pytest.fixture
def tenant(api: HttpContract) -> Tenant:
    admin = installation_user(api, "alice")
    viewer = installation_user(api, "mallory")
    w1 = api.call("create_workspace", {"slug": "w1", "name": "W1"}, as_=admin)["id"]
    api.call("add_member", {"workspace_id": w1, "principal_id": str(viewer.sub),
                            "role": "viewer", "name": "mallory"})
    # W1's admin makes W1's executor (owned by W1) and enrols it: no operator needed
    made = api.call("create_principal", {"name": "w1-runner", "kind": "executor",
                                         "workspace_id": w1}, as_=admin)
    assert made["owner_workspace_id"] == w1
    api.call("add_member", {"workspace_id": w1, "principal_id": made["id"], "role": "executor",
                            "name": "w1-runner"}, as_=admin)
    executor = Principal("authenticated", uuid.UUID(made["id"]), "w1-runner", pins=(w1,))
    return Tenant(w1, admin, viewer, executor, made["id"])


def test_a_viewer_cannot_take_another_workspaces_executor(
        api: HttpContract, tenant: Tenant) -> None:
    t = tenant
    run = new_run(api, t.w1, [phase("a")], as_=t.admin)
    claim = api.call("claim_phase", {}, as_=t.executor)
    assert claim["run_id"] == run["id"]

    # 1. what the viewer reads names the executor, and gives no principal id
    events = api.call("list_events", {"run_id": run["id"]}, as_=t.viewer)["events"]
    [claimed] = [e for e in events if e["type"] == "PHASE_CLAIMED"]
    assert claimed["payload"]["claimed_by"] == "w1-runner"
    assert {e["principal_id"] for e in events} == {None}
    read = api.call("get_run", {"run_id": run["id"]}, as_=t.viewer)
    assert read["created_by"] is None and read["phases"][0]["claimed_by"] is None
    listed = api.call("list_runs", {"workspace_id": t.w1}, as_=t.viewer)["runs"]
    assert [r["created_by"] for r in listed] == [None]
    everything = json.dumps([events, read, listed])
    assert t.executor_id not in everything and str(t.admin.sub) not in everything
    # ... while W1's admin still sees who did what
    admin_events = api.call("list_events", {"run_id": run["id"]}, as_=t.admin)["events"]
    assert t.executor_id in {e["principal_id"] for e in admin_events}
    assert api.call("get_run", {"run_id": run["id"]},
                    as_=t.admin)["phases"][0]["claimed_by"] == t.executor_id

    # 2. the viewer makes its own workspace (allowed: it gains nothing over others)
    w2 = api.call("create_workspace", {"slug": "mallorys", "name": "Mine"}, as_=t.viewer)["id"]

    # 3. enrolling W1's executor there is refused, knowing its id or not
    before = snapshot(api.conn)
    for role in ("executor", "viewer", "admin"):
        err = refusal(api, "add_member", {"workspace_id": w2, "principal_id": t.executor_id,
                                          "role": role}, t.viewer)
        assert (err.status, err.code, reason(err)) == (403, "forbidden", "not_owned")
        assert "invite" in err.message
    # an invitation is no way in for an executor: it cannot be invited, it cannot accept
    err = refusal(api, "invite_member", {"workspace_id": w2, "principal_id": t.executor_id,
                                         "role": "developer"}, t.viewer)
    assert (err.status, err.code, reason(err)) == (400, "invalid_argument", "executor")
    # and the viewer cannot make a principal W1 owns, nor one owned by nobody
    for args in ({"name": "x", "workspace_id": t.w1}, {"name": "x"}):
        err = refusal(api, "create_principal", args, t.viewer)
        assert err.status in (403, 404), err
    assert snapshot(api.conn) == before

    # 4. the executor claims nothing of W2, even told to
    new_run(api, w2, [phase("bait")], as_=t.viewer)
    err = refusal(api, "claim_phase", {"workspace_id": w2}, t.executor)
    assert (err.status, err.code, reason(err)) == (403, "forbidden", "workspace_not_pinned")
    assert api.call("claim_phase", {}, as_=t.executor) is None


def test_a_membership_outside_the_tokens_pins_is_never_claimed(
        api: HttpContract, tenant: Tenant) -> None:
    """service_role may still add the executor to W2 (operators decide); its token, pinned to
    W1 when minted, claims in W1 only: the default claim and an explicit workspace_id."""
    t = tenant
    w2 = api.call("create_workspace", {"slug": "w2", "name": "W2"})["id"]
    api.call("add_member", {"workspace_id": w2, "principal_id": t.executor_id,
                            "role": "executor"})
    dev2 = user("dev2")
    api.call("add_member", {"workspace_id": w2, "principal_id": str(dev2.sub),
                            "role": "developer"})
    w2_run = new_run(api, w2, [phase("p"), phase("q")], as_=dev2)
    before = snapshot(api.conn)
    assert api.call("claim_phase", {}, as_=t.executor) is None
    assert api.call("claim_phase", {"kinds": ["python"]}, as_=t.executor) is None
    err = refusal(api, "claim_phase", {"workspace_id": w2}, t.executor)
    assert (err.status, err.code, reason(err)) == (403, "forbidden", "workspace_not_pinned")
    err = refusal(api, "claim_phase", {"run_id": w2_run["id"]}, t.executor)
    assert (err.status, err.code) == (404, "not_found")
    assert snapshot(api.conn) == before
    # W1's work it still claims; a token pinned to W2 as well (minted so) claims W2's
    w1_run = new_run(api, t.w1, [phase("a")], as_=t.admin)
    assert api.call("claim_phase", {}, as_=t.executor)["run_id"] == w1_run["id"]
    both = t.executor.pinned(t.w1, w2)
    assert api.call("claim_phase", {}, as_=both)["run_id"] == w2_run["id"]


def test_a_token_without_pins_claims_nothing(api: HttpContract, tenant: Tenant) -> None:
    t = tenant
    new_run(api, tenant.w1, [phase("a")], as_=t.admin)
    unpinned = Principal("authenticated", t.executor.sub, "unpinned")
    before = snapshot(api.conn)
    err = refusal(api, "claim_phase", {}, unpinned)
    assert (err.status, err.code, reason(err)) == (403, "forbidden", "token_not_pinned")
    assert "workspaces" in err.message
    err = refusal(api, "claim_phase", {"workspace_id": t.w1}, unpinned)
    assert reason(err) == "token_not_pinned"
    assert snapshot(api.conn) == before
    # service_role needs no pins
    assert api.call("claim_phase", {"workspace_id": t.w1}) is not None


def test_an_admin_enrols_what_its_workspace_owns_and_changes_its_members_roles(
        api: HttpContract, tenant: Tenant) -> None:
    t = tenant
    # a principal owned by W1, made by W1's admin: enrolled by that admin
    bot = api.call("create_principal", {"name": "ci", "kind": "user", "workspace_id": t.w1},
                   as_=t.admin)
    member = api.call("add_member", {"workspace_id": t.w1, "principal_id": bot["id"],
                                     "role": "developer"}, as_=t.admin)
    assert member["role"] == "developer"
    # an existing member's role changes (the viewer is owned by nobody)
    promoted = api.call("add_member", {"workspace_id": t.w1, "principal_id": str(t.viewer.sub),
                                       "role": "developer"}, as_=t.admin)
    assert promoted["role"] == "developer"
    # another workspace's admin cannot enrol W1's principal, nor make one owned by W1
    other = user("bob")
    w3 = api.call("create_workspace", {"slug": "bobs", "name": "Bob's"}, as_=other)["id"]
    err = refusal(api, "add_member", {"workspace_id": w3, "principal_id": bot["id"],
                                      "role": "viewer"}, other)
    assert reason(err) == "not_owned"
    err = refusal(api, "create_principal", {"name": "fake", "workspace_id": t.w1}, other)
    assert (err.status, err.code) == (404, "not_found")
    # a principal without a workspace: service_role only
    err = refusal(api, "create_principal", {"name": "free"}, t.admin)
    assert (err.status, err.code, reason(err)) == (403, "forbidden", "workspace_required")
    # service_role adds anyone anywhere
    assert api.call("add_member", {"workspace_id": w3, "principal_id": bot["id"],
                                   "role": "viewer"})["role"] == "viewer"


# ---------------------------------------------------------------------------------------------
# invitations
# ---------------------------------------------------------------------------------------------

def test_an_invited_user_joins_by_accepting_and_nobody_else_can(
        api: HttpContract, tenant: Tenant) -> None:
    t = tenant
    guest = installation_user(api, "grace")
    stranger = installation_user(api, "eve")
    invitation = api.call("invite_member", {"workspace_id": t.w1, "principal_id": str(guest.sub),
                                            "role": "developer", "name": "grace"}, as_=t.admin)
    assert (invitation["state"], invitation["role"], invitation["invited_by"]) == (
        "pending", "developer", str(t.admin.sub))
    # an invitation is not a membership yet
    new_run(api, t.w1, [phase("before")], as_=t.admin)
    assert api.call("list_runs", {"workspace_id": t.w1}, as_=guest)["runs"] == []
    before = snapshot(api.conn)
    # others cannot accept it: a stranger has no invitation, an executor never accepts, nor
    # does service_role on anyone's behalf; a viewer cannot list or withdraw invitations
    err = refusal(api, "accept_invitation", {"workspace_id": t.w1}, stranger)
    assert (err.status, err.code) == (404, "not_found")
    err = refusal(api, "accept_invitation", {"workspace_id": t.w1}, t.executor)
    assert (err.status, err.code, reason(err)) == (403, "forbidden", "executor")
    err = refusal(api, "accept_invitation", {"workspace_id": t.w1}, SERVICE)
    assert (err.status, err.code) == (403, "forbidden")
    err = refusal(api, "list_invitations", {"workspace_id": t.w1}, t.viewer)
    assert (err.status, err.code) == (404, "not_found")
    err = refusal(api, "revoke_invitation", {"workspace_id": t.w1,
                                             "principal_id": str(guest.sub)}, t.viewer)
    assert (err.status, err.code) == (403, "forbidden")
    err = refusal(api, "invite_member", {"workspace_id": t.w1, "principal_id": str(uuid.uuid4()),
                                         "role": "viewer"}, t.viewer)
    assert (err.status, err.code) == (403, "forbidden")
    assert snapshot(api.conn) == before
    # the invitee accepts: a member with the invited role and name
    joined = api.call("accept_invitation", {"workspace_id": t.w1}, as_=guest)
    assert (joined["principal_id"], joined["role"], joined["name"]) == (
        str(guest.sub), "developer", "grace")
    assert new_run(api, t.w1, [phase("a")], as_=guest)["workspace_id"] == t.w1
    err = refusal(api, "accept_invitation", {"workspace_id": t.w1}, guest)   # once only
    assert (err.status, err.code) == (404, "not_found")
    [listed] = api.call("list_invitations", {"workspace_id": t.w1}, as_=t.admin)
    assert (listed["principal_id"], listed["state"]) == (str(guest.sub), "accepted")
    # inviting a member is a conflict: its role is changed with add_member
    err = refusal(api, "invite_member", {"workspace_id": t.w1, "principal_id": str(guest.sub),
                                         "role": "admin"}, t.admin)
    assert (err.status, err.code) == (409, "conflict")
    # every step is audited
    with api.conn.transaction():
        audited = [r[0] for r in api.conn.execute(
            "select function_name from ops.audit_log where workspace_id = %s"
            " and function_name in ('invite_member', 'accept_invitation') order by id",
            (t.w1,)).fetchall()]
    assert audited == ["invite_member", "accept_invitation"]


def test_an_invitation_expires_and_can_be_withdrawn(api: HttpContract, tenant: Tenant) -> None:
    t = tenant
    late, withdrawn = installation_user(api, "late"), installation_user(api, "withdrawn")
    now = datetime.now(UTC)
    for who in (late, withdrawn):
        api.call("invite_member", {"workspace_id": t.w1, "principal_id": str(who.sub),
                                   "role": "viewer", "expires_in_seconds": 3600},
                 as_=t.admin, now=now)
    states = {i["principal_id"]: i["state"] for i in api.call(
        "list_invitations", {"workspace_id": t.w1}, as_=t.admin, now=now + timedelta(hours=2))}
    assert states == {str(late.sub): "expired", str(withdrawn.sub): "expired"}
    with pytest.raises(ContractError) as info:
        api.call("accept_invitation", {"workspace_id": t.w1}, as_=late,
                 now=now + timedelta(hours=2))
    assert (info.value.status, info.value.code) == (404, "not_found")
    gone = api.call("revoke_invitation", {"workspace_id": t.w1,
                                          "principal_id": str(withdrawn.sub)}, as_=t.admin)
    assert gone["revoked"] is True
    with pytest.raises(ContractError) as info:
        api.call("accept_invitation", {"workspace_id": t.w1}, as_=withdrawn)
    assert (info.value.status, info.value.code) == (404, "not_found")
    # a renewed invitation is accepted
    api.call("invite_member", {"workspace_id": t.w1, "principal_id": str(late.sub),
                               "role": "viewer"}, as_=t.admin)
    assert api.call("accept_invitation", {"workspace_id": t.w1}, as_=late)["role"] == "viewer"
