"""The database refuses every state transition docs/state_machine.md does not draw, whoever
makes it (triggers on ops.phases and ops.runs), and ops_private.move_phase is the one way the
functions change a phase's state, setting what each target state implies."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta
from itertools import product
from pathlib import Path
from typing import Any

import psycopg
import pytest

from control_room.contract import vocabulary
from tests.helpers import REPO_MIGRATIONS

from .conftest import Contract, World, make_world, new_run, phase, states

DOC = Path(__file__).resolve().parents[2] / "docs" / "state_machine.md"
T0 = datetime(2030, 1, 1, tzinfo=UTC)

LEGAL_PHASE_MOVES = {
    ("waiting", "queued"), ("waiting", "skipped"), ("waiting", "cancelled"),
    ("queued", "running"), ("queued", "skipped"), ("queued", "cancelled"),
    ("running", "succeeded"), ("running", "queued"), ("running", "failed"),
    ("running", "cancelled"),
}
LEGAL_RUN_MOVES = {
    ("queued", "running"), ("queued", "cancelled"),
    ("running", "succeeded"), ("running", "failed"), ("running", "cancelled"),
}


def diagram_edges(title: str) -> set[tuple[str, str]]:
    """The `a --> b` edges of the mermaid diagram under `## <title>` (no start, no self loops,
    no edge to a new run)."""
    text = DOC.read_text("utf-8")
    section = text.split(f"## {title}", 1)[1]
    block = section.split("```mermaid", 1)[1].split("```", 1)[0]
    edges = set()
    for a, b in re.findall(r"^\s*(\w+) --> (\w+)", block, re.MULTILINE):
        if a != b and b != "child":
            edges.add((a, b))
    return edges


def test_the_allowed_moves_are_the_documented_diagrams() -> None:
    assert diagram_edges("Phase states") == LEGAL_PHASE_MOVES
    assert diagram_edges("Run states") == LEGAL_RUN_MOVES


# ---------------------------------------------------------------------------------------------
# direct updates, as a superuser
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def one_phase(sql_contract: Contract) -> tuple[str, str]:
    """(run id, phase id) of a fresh one-phase run."""
    world = make_world(sql_contract)
    run = new_run(sql_contract, world.w1, [phase("a")], as_=world.dev1)
    return run["id"], run["phases"][0]["id"]


def _force(conn: psycopg.Connection[Any], table: str, row_id: str, state: str) -> None:
    """Put a row in `state` without the triggers (session_replication_role = replica)."""
    conn.execute("set local session_replication_role = replica")
    conn.execute(f"update ops.{table} set state = %s where id = %s", (state, row_id))
    conn.execute("set local session_replication_role = origin")


def _move(conn: psycopg.Connection[Any], table: str, row_id: str, frm: str, to: str) -> None:
    with conn.transaction(force_rollback=True):
        _force(conn, table, row_id, frm)
        conn.execute(f"update ops.{table} set state = %s where id = %s", (to, row_id))
        row = conn.execute(f"select state from ops.{table} where id = %s", (row_id,)).fetchone()
        assert row is not None and row[0] == to


PHASE_PAIRS = [(a, b) for a, b in product(sorted(vocabulary.PHASE_STATES), repeat=2) if a != b]
RUN_PAIRS = [(a, b) for a, b in product(sorted(vocabulary.RUN_STATES), repeat=2) if a != b]


def test_every_illegal_phase_move_raises(conn: psycopg.Connection[Any],
                                         one_phase: tuple[str, str]) -> None:
    _, phase_id = one_phase
    illegal = [pair for pair in PHASE_PAIRS if pair not in LEGAL_PHASE_MOVES]
    assert ("succeeded", "running") in illegal and ("cancelled", "queued") in illegal
    for frm, to in illegal:
        with pytest.raises(psycopg.Error) as refused:
            _move(conn, "phases", phase_id, frm, to)
        error = refused.value
        assert error.sqlstate == "PT409", (frm, to)
        assert error.diag.message_hint == "conflict"
        assert error.diag.message_primary == (
            f"illegal phase transition {frm} -> {to} (docs/state_machine.md)")
        assert error.diag.message_detail is not None
        assert f'"from": "{frm}"' in error.diag.message_detail


def test_every_legal_phase_move_passes(conn: psycopg.Connection[Any],
                                       one_phase: tuple[str, str]) -> None:
    _, phase_id = one_phase
    for frm, to in sorted(LEGAL_PHASE_MOVES):
        _move(conn, "phases", phase_id, frm, to)
    # keeping a state is no transition: a reclaim (running) or a stop (cancelled)
    for same in sorted(vocabulary.PHASE_STATES):
        _move(conn, "phases", phase_id, same, same)


def test_every_illegal_run_move_raises(conn: psycopg.Connection[Any],
                                       one_phase: tuple[str, str]) -> None:
    run_id, _ = one_phase
    illegal = [pair for pair in RUN_PAIRS if pair not in LEGAL_RUN_MOVES]
    assert ("succeeded", "running") in illegal and ("cancelled", "queued") in illegal
    for frm, to in illegal:
        with pytest.raises(psycopg.Error) as refused:
            _move(conn, "runs", run_id, frm, to)
        assert refused.value.sqlstate == "PT409", (frm, to)
        assert refused.value.diag.message_hint == "conflict"
        assert refused.value.diag.message_primary == (
            f"illegal run transition {frm} -> {to} (docs/state_machine.md)")


def test_every_legal_run_move_passes(conn: psycopg.Connection[Any],
                                     one_phase: tuple[str, str]) -> None:
    run_id, _ = one_phase
    for frm, to in sorted(LEGAL_RUN_MOVES):
        _move(conn, "runs", run_id, frm, to)


def test_other_updates_of_a_finished_phase_pass(conn: psycopg.Connection[Any],
                                                one_phase: tuple[str, str]) -> None:
    """Only state changes are checked: progress, counters and timestamps are not."""
    run_id, phase_id = one_phase
    with conn.transaction(force_rollback=True):
        _force(conn, "phases", phase_id, "succeeded")
        _force(conn, "runs", run_id, "succeeded")
        conn.execute("update ops.phases set progress = '{}', state = 'succeeded' where id = %s",
                     (phase_id,))
        conn.execute("update ops.runs set last_event_seq = last_event_seq + 1 where id = %s",
                     (run_id,))


def test_rows_start_in_a_documented_state(conn: psycopg.Connection[Any],
                                          one_phase: tuple[str, str]) -> None:
    run_id, phase_id = one_phase
    copy_phase = (
        "insert into ops.phases (run_id, workspace_id, name, ordinal, kind, state, max_attempts,"
        " timeout_seconds, retry_backoff_seconds, retry_backoff_max_seconds)"
        " select run_id, workspace_id, %s, 9, kind, %s, 1, 60, 1, 1 from ops.phases where id = %s")
    for state in sorted(vocabulary.PHASE_STATES):
        with conn.transaction(force_rollback=True):
            if state in ("waiting", "queued", "succeeded"):
                conn.execute(copy_phase, ("p_" + state, state, phase_id))
                continue
            with pytest.raises(psycopg.Error) as refused:
                conn.execute(copy_phase, ("p_" + state, state, phase_id))
            assert refused.value.sqlstate == "PT409"
            assert refused.value.diag.message_primary == (
                f"a phase starts as waiting, queued or succeeded, not {state}"
                " (docs/state_machine.md)")
    copy_run = (
        "insert into ops.runs (workspace_id, env, spec_slug, git_sha, state, request_digest)"
        " select workspace_id, env, spec_slug, git_sha, %s, 'x' from ops.runs where id = %s")
    for state in sorted(vocabulary.RUN_STATES):
        with conn.transaction(force_rollback=True):
            if state == "queued":
                conn.execute(copy_run, (state, run_id))
                continue
            with pytest.raises(psycopg.Error) as refused:
                conn.execute(copy_run, (state, run_id))
            assert refused.value.sqlstate == "PT409"


# ---------------------------------------------------------------------------------------------
# the functions' paths still work (each documented row; test_state_machine.py has the details)
# ---------------------------------------------------------------------------------------------
class Clock:
    def __init__(self, contract: Contract, world: World) -> None:
        self.contract, self.world, self.now = contract, world, T0

    def call(self, fn: str, args: dict[str, Any], as_: Any = None) -> Any:
        return self.contract.call(fn, args, as_=as_ or self.world.exec1, now=self.now)

    def run(self, phases: list[dict[str, Any]]) -> dict[str, Any]:
        return new_run(self.contract, self.world.w1, phases, as_=self.world.dev1, now=self.now)

    def claim(self, run: dict[str, Any]) -> dict[str, Any]:
        claim: dict[str, Any] | None = self.call("claim_phase", {"run_id": run["id"]})
        assert claim is not None
        return claim

    def complete(self, claim: dict[str, Any], outcome: str = "succeeded", **extra: Any) -> Any:
        return self.call("complete_phase", {"lease_token": claim["lease_token"],
                                            "outcome": outcome, **extra})


@pytest.fixture
def clock(sql_contract: Contract) -> Clock:
    return Clock(sql_contract, make_world(sql_contract))


def test_success_path_waiting_queued_running_succeeded(clock: Clock) -> None:
    run = clock.run([phase("a"), phase("b", "python", "a")])
    assert states(clock.contract, run["id"]) == {"a": "queued", "b": "waiting"}
    a = clock.claim(run)
    done = clock.complete(a, output_manifest={"rows": 1})
    assert done["released"] == ["b"]
    b = clock.claim(run)
    assert clock.complete(b)["run_state"] == "succeeded"
    # the token of a finished attempt is kept: a repeated completion is a replay
    assert clock.complete(a, output_manifest={"rows": 1})["replayed"] is True


def test_retry_path_running_queued_running_failed_skips_the_rest(clock: Clock) -> None:
    run = clock.run([phase("a", max_attempts=2, retry_backoff_seconds=0),
                     phase("b", "python", "a")])
    first = clock.complete(clock.claim(run), "failed", error={"message": "boom"})
    assert first["phase_state"] == "queued"
    second = clock.complete(clock.claim(run), "failed", error={"message": "boom again"})
    assert (second["phase_state"], second["run_state"]) == ("failed", "failed")
    assert states(clock.contract, run["id"]) == {"a": "failed", "b": "skipped"}


def test_lease_expiry_reclaims_then_fails_and_revokes_the_token(
    clock: Clock, conn: psycopg.Connection[Any]
) -> None:
    run = clock.run([phase("a", max_attempts=2)])
    first = clock.call("claim_phase", {"run_id": run["id"], "lease_seconds": 5})
    clock.now += timedelta(seconds=10)
    second = clock.call("claim_phase", {"run_id": run["id"], "lease_seconds": 5})
    assert second["phase_id"] == first["phase_id"] and second["attempt"] == 2
    clock.now += timedelta(seconds=10)
    assert clock.call("claim_phase", {"run_id": run["id"]}) is None
    row = conn.execute("select state, lease_token, lease_expires_at, finished_at"
                       " from ops.phases where id = %s", (first["phase_id"],)).fetchone()
    assert row is not None
    assert row[0] == "failed" and row[1] is None and row[2] is None and row[3] is not None


def test_cancel_keeps_a_running_lease_until_the_executor_stops(
    clock: Clock, conn: psycopg.Connection[Any]
) -> None:
    run = clock.run([phase("a"), phase("b"), phase("c", "python", "a")])
    a = clock.claim(run)
    clock.call("cancel_run", {"run_id": run["id"]}, as_=clock.world.dev1)
    with conn.transaction():
        fetched = conn.execute("select name, state, lease_token, lease_expires_at, finished_at"
                               " from ops.phases where run_id = %s", (run["id"],)).fetchall()
    rows = {name: rest for name, *rest in fetched}
    assert rows["a"][0] == "cancelled" and rows["a"][1] is not None and rows["a"][2] is not None
    assert rows["a"][3] is None
    assert rows["b"][0] == rows["c"][0] == "cancelled" and rows["b"][3] is not None
    beat = clock.call("heartbeat", {"lease_token": a["lease_token"]})
    assert beat["cancel_requested"] is True
    stopped = clock.complete(a, "failed", error={"message": "stopped"})
    assert stopped["phase_state"] == "cancelled" and stopped["replayed"] is False
    row = conn.execute("select lease_expires_at, finished_at, error from ops.phases"
                       " where id = %s", (a["phase_id"],)).fetchone()
    assert row is not None and row[0] is None and row[1] is not None
    assert row[2] == {"message": "stopped"}


def test_retry_run_starts_phases_as_succeeded_queued_or_waiting(clock: Clock) -> None:
    run = clock.run([phase("a"), phase("b", "python", "a", max_attempts=1),
                     phase("c", "python", "b")])
    clock.complete(clock.claim(run))
    clock.complete(clock.claim(run), "failed")
    child = clock.call("retry_run", {"run_id": run["id"]}, as_=clock.world.dev1)
    assert states(clock.contract, child["id"]) == {"a": "succeeded", "b": "queued",
                                                   "c": "waiting"}


# ---------------------------------------------------------------------------------------------
# move_phase: what each target implies
# ---------------------------------------------------------------------------------------------
def _row(conn: psycopg.Connection[Any], phase_id: str) -> dict[str, Any]:
    cur = conn.execute("select * from ops.phases where id = %s", (phase_id,))
    names = [d.name for d in cur.description or []]
    values = cur.fetchone()
    assert values is not None
    return dict(zip(names, values, strict=True))


def _call_move(conn: psycopg.Connection[Any], phase_id: str, to: str, **named: Any) -> None:
    args = "".join(f", p_{k} => %({k})s" for k in named)
    conn.execute(f"select ops_private.move_phase(%(id)s, %(to)s, %(now)s{args})",
                 {"id": phase_id, "to": to, "now": T0, **named})


def test_move_phase_sets_what_each_target_implies(conn: psycopg.Connection[Any],
                                                  one_phase: tuple[str, str]) -> None:
    _, phase_id = one_phase
    claim_id, holder = str(uuid.uuid4()), str(uuid.uuid4())
    with conn.transaction(force_rollback=True):
        _call_move(conn, phase_id, "running", lease_seconds=30, claim_id=claim_id,
                   claimed_by=holder)
        p = _row(conn, phase_id)
        assert (p["state"], p["attempt"], p["lease_seconds"]) == ("running", 1, 30)
        assert p["lease_token"] is not None and p["lease_expires_at"] == T0 + timedelta(seconds=30)
        assert (str(p["claim_id"]), str(p["claimed_by"])) == (claim_id, holder)
        assert p["started_at"] == T0 and p["not_before"] is None and p["finished_at"] is None
        token = p["lease_token"]

        later = T0 + timedelta(seconds=90)
        _call_move(conn, phase_id, "queued", error='{"message": "x"}', not_before=later)
        p = _row(conn, phase_id)
        assert p["queued_at"] == p["not_before"] == later
        assert p["lease_token"] == token and p["lease_expires_at"] is None   # 'end': a replay
        assert p["error"] == {"message": "x"}

        _call_move(conn, phase_id, "running", lease_seconds=30)
        _call_move(conn, phase_id, "succeeded")
        p = _row(conn, phase_id)
        assert p["attempt"] == 2 and p["output_manifest"] == {} and p["error"] is None
        assert p["finished_at"] == T0 and p["lease_expires_at"] is None
        assert p["lease_token"] is not None

    with conn.transaction(force_rollback=True):
        _call_move(conn, phase_id, "running", lease_seconds=30)
        _call_move(conn, phase_id, "cancelled", lease="keep")
        p = _row(conn, phase_id)
        assert p["lease_token"] is not None and p["lease_expires_at"] is not None
        assert p["finished_at"] is None
        _call_move(conn, phase_id, "cancelled", lease="end", output_manifest='{"n": 1}')
        p = _row(conn, phase_id)
        assert p["lease_token"] is not None and p["lease_expires_at"] is None
        assert p["finished_at"] == T0 and p["output_manifest"] == {"n": 1}

    with conn.transaction(force_rollback=True):
        _call_move(conn, phase_id, "running", lease_seconds=30)
        _call_move(conn, phase_id, "failed", lease="revoke", error='{"message": "expired"}')
        p = _row(conn, phase_id)
        assert p["lease_token"] is None and p["lease_expires_at"] is None
        assert p["error"] == {"message": "expired"} and p["finished_at"] == T0

    with conn.transaction(force_rollback=True):
        _call_move(conn, phase_id, "skipped")
        p = _row(conn, phase_id)
        assert p["lease_token"] is None and p["not_before"] is None and p["finished_at"] == T0

    with conn.transaction(force_rollback=True), pytest.raises(psycopg.Error) as refused:
        _call_move(conn, phase_id, "running")    # a claim needs its lease length
    assert refused.value.sqlstate == "22023"


def test_move_phase_is_private(conn: psycopg.Connection[Any]) -> None:
    for role in ("anon", "authenticated", "service_role"):
        row = conn.execute(
            "select has_function_privilege(%s, 'ops_private.move_phase(uuid, text, timestamptz,"
            " text, jsonb, jsonb, timestamptz, integer, uuid, uuid)', 'execute')",
            (role,)).fetchone()
        assert row is not None and row[0] is False, role


# ---------------------------------------------------------------------------------------------
# the helper is the only writer of a phase's state
# ---------------------------------------------------------------------------------------------
UPDATE_PHASES = r"\bupdate\s+ops\.phases\b"
SETS_STATE = re.compile(r"(\bset\s+|,\s*)state\s*=", re.IGNORECASE)
"""An assignment (`set state =`, `, state =`), not a comparison (`p.state =`)."""


def _state_setters(sql_text: str) -> list[tuple[int, str]]:
    """(offset, text up to its `where` or `;`) of each `update ops.phases` that sets state."""
    code = "\n".join(line.split("--")[0] for line in sql_text.splitlines())
    found = []
    for match in re.finditer(UPDATE_PHASES, code, re.IGNORECASE):
        rest = code[match.start():]
        end = re.search(r"\bwhere\b|;", rest, re.IGNORECASE)
        statement = rest[: end.start() if end else len(rest)]
        if SETS_STATE.search(statement):
            found.append((match.start(), statement))
    return found


def test_only_move_phase_sets_a_phase_state() -> None:
    files = sorted(Path(REPO_MIGRATIONS).glob("*.sql"))
    assert files
    outside: list[str] = []
    inside_helper = definitions = 0
    for path in files:
        text = "\n".join(line.split("--")[0] for line in path.read_text("utf-8").splitlines())
        helper = re.search(r"create (or replace )?function ops_private\.move_phase\(.*?\n\$\$;",
                           text, re.IGNORECASE | re.DOTALL)
        span = range(helper.start(), helper.end()) if helper else range(0)
        definitions += helper is not None
        for offset, statement in _state_setters(text):
            if offset in span:
                inside_helper += 1
            else:
                outside.append(f"{path.name}: {' '.join(statement.split())[:120]}")
    assert outside == [], "phase states set outside ops_private.move_phase:\n" + "\n".join(outside)
    # one setter in each definition of move_phase (the baseline's, and each replacement)
    assert definitions >= 1 and inside_helper == definitions
    # the search finds a setter written in any layout, and not a comparison
    sample = ("update ops.phases p\n    set updated_at = now(),\n        state = 'failed'\n"
              "where p.id = x;\nupdate ops.phases p set progress = case when p.state = 'running'"
              " then 1 end where p.id = x;")
    assert [s for _, s in _state_setters(sample)] == [sample.split("where")[0]]
