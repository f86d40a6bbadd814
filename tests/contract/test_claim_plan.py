"""The claim path's plan with a million finished phases (analyzed), and with ~27k that went
through the queue on a table never analyzed (autovacuum off): it reads the partial indexes only.

`claim_phase` finds work with statements inside the function: the expired-lease candidate
(`phases_lease_expiry_idx`), the oldest due retry (`phases_retry_idx`) and the best queued phase
in fair order (`phases_claimable_idx`: priority, fair round, age). These indexes hold live work
only, so a claim costs the same whatever the history. `auto_explain` logs the
plan of every statement the function runs (nested statements included) as a NOTICE, which is
how these tests see inside the function.
"""

from __future__ import annotations

import contextlib
import json
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from control_room.db.queries import parse_queries
from tests.helpers import temporary_database

from .conftest import SERVICE, Contract, Principal, phase, user

Q = parse_queries((Path(__file__).parent / "claim_plan.sql").read_text("utf-8"))

HISTORY = 1_000_000
NOW = datetime(2030, 1, 1, tzinfo=UTC)   # the tests' clock
LIVE_RUNS, LIVE_PHASES = 4, 40      # claims now take turns across runs: enough in each
EXPIRED, LEASED = 4, 2                   # running phases: leases expired by NOW, and live ones
# the two candidate statements (ops_private.claim_expired_candidate, claim_queued_candidate)
EXPIRY_STATEMENT = "p.lease_expires_at <= p_now"
RETRY_STATEMENT = "p.fair_round is null and p.not_before <= p_now"
QUEUED_STATEMENT = "p.fair_round is not null"


@dataclass(frozen=True)
class Big:
    url: str
    workspace_id: str
    executor: Principal
    live_runs: list[str]


@pytest.fixture(scope="module")
def big(module_db_url: str) -> Big:
    """1,000,000 finished phases in five old runs, plus a little live work; analyzed."""
    with psycopg.connect(module_db_url) as conn:
        contract = Contract(conn)
        executor, dev = user("executor"), user("dev")
        ws: str = contract.call("create_workspace", {"slug": "history", "name": "History"},
                                as_=SERVICE)["id"]
        for who, role in ((executor, "executor"), (dev, "developer")):
            contract.call("add_member", {"workspace_id": ws, "principal_id": str(who.sub),
                                         "role": role}, as_=SERVICE)
        executor = executor.pinned(ws)
        old = NOW - timedelta(days=400)
        history_runs = []
        for k in range(5):
            run = contract.call("create_run", {
                "workspace_id": ws, "spec_slug": f"history-{k}", "git_sha": "0123abc",
                "phases": [phase("seed")]}, as_=dev, now=old)
            contract.call("cancel_run", {"run_id": run["id"]}, as_=dev, now=old)
            history_runs.append(run["id"])
        with conn.transaction():
            conn.execute(Q["skip_fk_triggers"])
            conn.execute(Q["insert_finished_phases"],
                         {"runs": history_runs, "workspace_id": ws, "n": HISTORY})

        live_runs = [
            contract.call("create_run", {
                "workspace_id": ws, "spec_slug": "live", "git_sha": "0123abc",
                "phases": [phase(f"p{k:02d}") for k in range(LIVE_PHASES)]},
                as_=dev, now=NOW - timedelta(minutes=60 - k))["id"]
            for k in range(LIVE_RUNS)]   # the last is the youngest: claimed from last
        for n, lease in ((EXPIRED, 1), (LEASED, 3600)):
            for _ in range(n):
                assert contract.call("claim_phase", {"lease_seconds": lease}, as_=executor,
                                     now=NOW - timedelta(minutes=10)) is not None
        conn.execute("analyze ops.phases")
        conn.execute("analyze ops.runs")
        conn.commit()
        counts: dict[str, int] = dict(conn.execute(Q["phases_by_state"]).fetchall())
        conn.rollback()
    assert counts == {
        "succeeded": HISTORY // 4, "failed": HISTORY // 4, "skipped": HISTORY // 4,
        "cancelled": HISTORY // 4 + 5, "running": EXPIRED + LEASED,
        "queued": LIVE_RUNS * LIVE_PHASES - EXPIRED - LEASED}
    return Big(module_db_url, ws, executor, live_runs)


@dataclass(frozen=True)
class Node:
    type: str
    relation: str | None
    index: str | None
    rows: int | None                                   # actual rows (auto_explain.log_analyze)
    details: dict[str, Any] = field(repr=False)


@dataclass(frozen=True)
class Plan:
    query: str
    nodes: list[Node]

    def scans(self, relation: str) -> list[Node]:
        """The nodes that read `relation` (Seq Scan, Index Scan, Bitmap Heap Scan, ...)."""
        return [n for n in self.nodes if n.relation == relation and n.type.endswith("Scan")]


def parse_plan(notice: str) -> Plan:
    """An auto_explain NOTICE: `duration: ... plan:` and the plan as JSON."""
    doc = json.loads(notice[notice.index("{"):])
    nodes: list[Node] = []

    def walk(node: dict[str, Any]) -> None:
        nodes.append(Node(node["Node Type"], node.get("Relation Name"), node.get("Index Name"),
                          node.get("Actual Rows"), node))
        for child in node.get("Plans", []):
            walk(child)

    walk(doc["Plan"])
    return Plan(" ".join(doc["Query Text"].split()), nodes)


@pytest.fixture
def explained(big: Big) -> Iterator[tuple[Contract, list[Plan]]]:
    """A contract on a fresh connection whose statements' plans are collected (actuals too)."""
    with explaining(big.url) as explained:
        yield explained


@contextlib.contextmanager
def explaining(url: str, misled: bool = False) -> Iterator[tuple[Contract, list[Plan]]]:
    plans: list[Plan] = []
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(Q["load_auto_explain"])
        conn.execute(Q["explain_with_actuals"])
        if misled:
            conn.execute(Q["mislead_the_planner"])
        conn.autocommit = False
        conn.add_notice_handler(
            lambda diag: plans.append(parse_plan(diag.message_primary or ""))
            if "plan:" in (diag.message_primary or "") else None)
        yield Contract(conn), plans


CALLERS = ["executor", "executor_in_workspace", "executor_in_run", "service_role"]

# The tests of `big` are `slow` (tests/conftest.py: make test runs them, make test-fast does
# not): writing its million phases takes 15 to 25 s, and dropping the database after them as
# long again (the checkpoint writes them out). The 27k-phase tests below stay in the fast loop.
MILLION = pytest.mark.slow


@MILLION
@pytest.mark.parametrize("caller", CALLERS)
def test_claim_reads_only_the_partial_indexes(
    big: Big, explained: tuple[Contract, list[Plan]], caller: str
) -> None:
    contract, plans = explained
    as_ = SERVICE if caller == "service_role" else big.executor
    args: dict[str, Any] = {"lease_seconds": 60}
    if caller == "executor_in_workspace":
        args["workspace_id"] = big.workspace_id
    if caller == "executor_in_run":
        args["run_id"] = big.live_runs[-1]
    # seven claims on one connection: plpgsql plans the first five calls for their arguments
    # (custom plans), later ones may run a cached generic plan; both must use the indexes
    for attempt in range(7):
        plans.clear()
        claim = contract.call("claim_phase", args, as_=as_, now=NOW)
        assert claim is not None
        where = f"claim {attempt + 1} by {caller}"
        expiry = [p for p in plans if EXPIRY_STATEMENT in p.query]
        queued = [p for p in plans if QUEUED_STATEMENT in p.query]
        retry = [p for p in plans if RETRY_STATEMENT in p.query]
        assert len(expiry) >= 1, f"{where}: no plan of the expired-lease statement was logged"
        # a claim within one run may walk that run's queue instead of the whole queue
        queue_indexes = {"phases_claimable_idx"}
        if caller == "executor_in_run":
            queue_indexes.add("phases_run_claimable_idx")
        for label, plans_of, indexes in (
                ("expired-lease", expiry, {"phases_lease_expiry_idx"}),
                ("due-retry", retry, {"phases_retry_idx"}),
                ("queued-candidate", queued, queue_indexes)):
            for plan in plans_of:
                scans = [(n.type, n.index or "", n.rows) for n in plan.scans("phases")]
                assert len(scans) == 1 and scans[0][0] == "Index Scan" \
                    and scans[0][1] in indexes, (
                    f"{where}: the {label} statement read phases with {scans} "
                    f"(type, index, actual rows), not an Index Scan of {sorted(indexes)}")
        # no statement of the claim reads phases other than through an index, and none reads
        # more than a handful of pages of it (a history scan reads tens of thousands)
        for plan in plans:
            for node in plan.scans("phases"):
                assert node.type in ("Index Scan", "Index Only Scan"), (where, plan.query, node)
                pages = node.details.get("Shared Hit Blocks", 0) + node.details.get(
                    "Shared Read Blocks", 0)
                assert pages < 200, (where, plan.query, pages)


@MILLION
def test_claim_latency_with_a_million_finished_phases(big: Big) -> None:
    with psycopg.connect(big.url) as conn:
        contract = Contract(conn)
        contract.call("claim_phase", {"lease_seconds": 60}, as_=big.executor, now=NOW)  # warm
        times = []
        for _ in range(20):
            began = time.perf_counter()
            claim = contract.call("claim_phase", {"lease_seconds": 60}, as_=big.executor, now=NOW)
            times.append(time.perf_counter() - began)
            assert claim is not None
    median, worst = statistics.median(times), max(times)
    print(f"\nclaim_phase with {HISTORY:,} finished phases: median {median * 1000:.2f} ms, "
          f"max {worst * 1000:.2f} ms over {len(times)} claims (one transaction each)")
    assert median < 0.5  # a guard against a catastrophe, not a benchmark


# --- without statistics -------------------------------------------------------------------------

CHURNED = 27_000


@pytest.fixture(scope="module")
def stale(pg_admin_url: str, template_db: str) -> Iterator[Big]:
    """27,000 phases that went queued -> running -> finished, and live work, in a database of
    its own whose ops.phases was never analyzed nor vacuumed (as with autovacuum off): the
    planner knows only the table's size, and every claimed phase left a dead entry in both
    partial indexes."""
    with temporary_database(pg_admin_url, template=template_db, suffix="stale") as url, \
            psycopg.connect(url) as conn:
        conn.execute(Q["autovacuum_off_for_phases"])
        conn.commit()
        contract = Contract(conn)
        executor, dev = user("executor"), user("dev")
        ws: str = contract.call("create_workspace", {"slug": "stale", "name": "Stale"},
                                as_=SERVICE)["id"]
        for who, role in ((executor, "executor"), (dev, "developer")):
            contract.call("add_member", {"workspace_id": ws, "principal_id": str(who.sub),
                                         "role": role}, as_=SERVICE)
        executor = executor.pinned(ws)
        old = NOW - timedelta(days=400)
        history_runs = []
        for k in range(5):
            run = contract.call("create_run", {
                "workspace_id": ws, "spec_slug": f"history-{k}", "git_sha": "0123abc",
                "phases": [phase("seed")]}, as_=dev, now=old)
            contract.call("cancel_run", {"run_id": run["id"]}, as_=dev, now=old)
            history_runs.append(run["id"])
        for name in ("insert_churned_phases", "run_churned_phases", "finish_churned_phases"):
            with conn.transaction():
                conn.execute(Q["skip_fk_triggers"])
                conn.execute(Q[name], {"runs": history_runs, "workspace_id": ws,
                                       "n": CHURNED})
        conn.execute(Q["read_every_phase"])
        conn.commit()
        live_runs = [
            contract.call("create_run", {
                "workspace_id": ws, "spec_slug": "live", "git_sha": "0123abc",
                "phases": [phase(f"p{k:02d}") for k in range(LIVE_PHASES)]},
                as_=dev, now=NOW - timedelta(minutes=60 - k))["id"]
            for k in range(LIVE_RUNS)]
        for n, lease in ((EXPIRED, 1), (LEASED, 3600)):
            for _ in range(n):
                assert contract.call("claim_phase", {"lease_seconds": lease}, as_=executor,
                                     now=NOW - timedelta(minutes=10)) is not None
        conn.commit()
        analyzed, columns = conn.execute(Q["phases_statistics"]).fetchone() or (None, None)
        conn.rollback()
        assert (analyzed, columns) == (None, 0), "ops.phases has statistics: not the case tested"
        yield Big(url, ws, executor, live_runs)


@pytest.mark.parametrize("planner", ["as_configured", "misled"])
@pytest.mark.parametrize("caller", CALLERS)
def test_the_claim_stays_on_its_indexes_without_statistics(stale: Big, caller: str,
                                                           planner: str) -> None:
    """`misled`: the session believes a random read costs 100 sequential ones, as wrong
    estimates mislead the planner; before the candidates had planner settings of their own
    the claim then scanned ops.phases and sorted every queued phase (2,155 buffers here)."""
    as_ = SERVICE if caller == "service_role" else stale.executor
    args: dict[str, Any] = {"lease_seconds": 60}
    if caller == "executor_in_workspace":
        args["workspace_id"] = stale.workspace_id
    if caller == "executor_in_run":
        args["run_id"] = stale.live_runs[-1]
    queue_indexes = {"phases_claimable_idx"}
    if caller == "executor_in_run":
        queue_indexes.add("phases_run_claimable_idx")
    seen: set[str] = set()
    with explaining(stale.url, misled=planner == "misled") as (contract, plans):
        for attempt in range(7):        # custom plans, then (maybe) the cached generic one
            plans.clear()
            claim = contract.call("claim_phase", args, as_=as_, now=NOW)
            assert claim is not None
            where = f"claim {attempt + 1} by {caller}"
            for label, text, indexes in (
                    ("expired-lease", EXPIRY_STATEMENT, {"phases_lease_expiry_idx"}),
                    ("due-retry", RETRY_STATEMENT, {"phases_retry_idx"}),
                    ("queued-candidate", QUEUED_STATEMENT, queue_indexes)):
                found = [p for p in plans if text in p.query]
                seen.update([label] if found else [])
                for plan in found:
                    # an ordered walk of the partial index that stops at the first live row:
                    # no Seq Scan, no Sort of every queued phase
                    kinds = [n.type for n in plan.nodes]
                    assert "Sort" not in kinds and "Seq Scan" not in kinds, (where, kinds)
                    scans = [(n.type, n.index or "", n.rows) for n in plan.scans("phases")]
                    assert len(scans) == 1 and scans[0][0] == "Index Scan" \
                        and scans[0][1] in indexes, (where, label, scans)
                    assert (scans[0][2] or 0) <= 1, (where, label, scans)
            for plan in plans:
                for node in plan.scans("phases"):
                    assert node.type in ("Index Scan", "Index Only Scan"), (where, plan.query,
                                                                             node)
    # the first claims take the expired leases, the later ones queued phases: all were seen
    assert seen == {"expired-lease", "due-retry", "queued-candidate"}, seen
