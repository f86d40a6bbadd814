"""Prometheus metrics: requests by function and status, the queue read from the database, and
the datasets' and jobs' freshness.

Two kinds of series: the aggregates (requests, the whole queue) and per-workspace series
(`workspace` label). Who sees which is the gateway's `MetricsScope` (docs/gateway.md,
"Metrics"): per-workspace series only of the workspaces the caller may see.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from control_room.db.queries import query


class QueueCollector(Collector):
    """Reads phases by state, queue depth, lease expiries and outcomes at scrape time."""

    def __init__(self, connection: Callable[[], Any]) -> None:
        self._connection = connection

    def collect(self) -> Iterator[Metric]:
        phases = GaugeMetricFamily("control_room_phases", "Phases by state.", labels=["state"])
        depth = GaugeMetricFamily(
            "control_room_queue_depth", "Queued phases whose not_before has passed.")
        stale = GaugeMetricFamily(
            "control_room_leases_expired",
            "Running phases whose lease has expired and that nobody has reclaimed yet.")
        expiries = CounterMetricFamily(
            "control_room_lease_expiries", "LEASE_EXPIRED events written.")
        outcomes = CounterMetricFamily(
            "control_room_phase_outcomes", "Finished phases by kind and final state.",
            labels=["kind", "state"])
        ratio = GaugeMetricFamily(
            "control_room_phase_success_ratio",
            "Succeeded / (succeeded + failed) phases, by kind.", labels=["kind"])
        try:
            with self._connection() as conn, conn.cursor() as cur:
                for state, n in cur.execute(query("metrics_phases_by_state")).fetchall():
                    phases.add_metric([state], n)
                row = cur.execute(query("metrics_queue")).fetchone()
                if row is not None:
                    depth.add_metric([], row[0])
                    stale.add_metric([], row[1])
                    expiries.add_metric([], row[2])
                by_kind: dict[str, dict[str, int]] = {}
                for kind, state, n in cur.execute(query("metrics_outcomes")).fetchall():
                    outcomes.add_metric([kind, state], n)
                    by_kind.setdefault(kind, {})[state] = n
                for kind, counts in sorted(by_kind.items()):
                    done = counts.get("succeeded", 0) + counts.get("failed", 0)
                    if done:
                        ratio.add_metric([kind], counts.get("succeeded", 0) / done)
        except psycopg.Error:
            return   # the database is down: /health says so; request metrics still show
        yield from (phases, depth, stale, expiries, outcomes, ratio)


# Per workspace (slug) and state: phases, and those queued and due. Read with the gateway's own
# login, like the aggregates; the rows are filtered to the caller's workspaces in Python.
_PHASES_BY_WORKSPACE = """
select w.id::text, w.slug, p.state, pg_catalog.count(*)::bigint,
       (pg_catalog.count(*) filter (where p.state = 'queued'
                                    and p.not_before <= pg_catalog.now()))::bigint
from ops.phases as p
join ops.workspaces as w on w.id = p.workspace_id
group by w.id, w.slug, p.state
order by w.slug, p.state
"""


# Freshness (docs/jobs.md, "Freshness and SLOs"): each dataset with a data time, seconds behind
# its source, labelled with its job; each such job's SLO and whether it is breached now.
_FRESHNESS = """
select w.id::text, w.slug, d.name, coalesce(j.slug, ''),
       extract(epoch from pg_catalog.now() - d.data_time)::double precision
from ops.datasets as d
join ops.workspaces as w on w.id = d.workspace_id
left join ops.jobs as j on j.id = d.data_time_job_id
where d.data_time is not null
order by w.slug, d.name
"""
_SLOS = """
select w.id::text, w.slug, j.slug, j.freshness_slo_seconds,
       extract(epoch from pg_catalog.now() - pg_catalog.min(d.data_time))
           ::double precision
from ops.jobs as j
join ops.workspaces as w on w.id = j.workspace_id
join ops.datasets as d on d.data_time_job_id = j.id
group by w.id, w.slug, j.slug, j.freshness_slo_seconds
order by w.slug, j.slug
"""


@dataclass(frozen=True)
class MetricsScope:
    """What one /metrics answer holds: the aggregates (no workspace label) or not, and the
    per-workspace series of which workspaces (ids; None: all of them)."""

    aggregates: bool
    workspaces: frozenset[str] | None


def is_loopback(host: str) -> bool:
    """Whether a listen address (or a request's local address) is a loopback one."""
    host = host.strip().strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False   # another name: it may resolve to anything


class WorkspaceCollector(Collector):
    """Phases by workspace and state, and each workspace's queue depth, for some workspaces."""

    def __init__(self, connection: Callable[[], Any], workspaces: frozenset[str] | None) -> None:
        self._connection = connection
        self._workspaces = workspaces

    def collect(self) -> Iterator[Metric]:
        phases = GaugeMetricFamily("control_room_workspace_phases",
                                   "Phases by workspace (slug) and state.",
                                   labels=["workspace", "state"])
        depth = GaugeMetricFamily("control_room_workspace_queue_depth",
                                  "Queued phases whose not_before has passed, by workspace.",
                                  labels=["workspace"])
        fresh = GaugeMetricFamily(
            "control_room_dataset_freshness_seconds",
            "Seconds a dataset is behind its source (now - its data time), by workspace, "
            "dataset and the job whose run set it.", labels=["workspace", "dataset", "job"])
        slo = GaugeMetricFamily("control_room_job_freshness_slo_seconds",
                                "A job's freshness SLO, in seconds.", labels=["workspace", "job"])
        lag = GaugeMetricFamily("control_room_job_freshness_seconds",
                                "A job's stalest dataset, seconds behind its source.",
                                labels=["workspace", "job"])
        breached = GaugeMetricFamily("control_room_job_slo_breached",
                                     "1 when a job's freshness is past its SLO, else 0.",
                                     labels=["workspace", "job"])
        due: dict[str, int] = {}
        try:
            with self._connection() as conn, conn.cursor() as cur:
                rows = cur.execute(_PHASES_BY_WORKSPACE).fetchall()
                datasets = cur.execute(_FRESHNESS).fetchall()
                jobs = cur.execute(_SLOS).fetchall()
        except psycopg.Error:
            return

        def seen(workspace_id: str) -> bool:
            return self._workspaces is None or workspace_id in self._workspaces

        for workspace_id, slug, state, n, queued_due in rows:
            if not seen(workspace_id):
                continue
            phases.add_metric([slug, state], n)
            due[slug] = due.get(slug, 0) + queued_due
        for slug, n in due.items():
            depth.add_metric([slug], n)
        for workspace_id, slug, name, job, seconds in datasets:
            if seen(workspace_id):
                fresh.add_metric([slug, name, job], seconds)
        for workspace_id, slug, job, objective, seconds in jobs:
            if seen(workspace_id):
                slo.add_metric([slug, job], objective)
                lag.add_metric([slug, job], seconds)
                breached.add_metric([slug, job], 1.0 if seconds > objective else 0.0)
        yield from (phases, depth, fresh, slo, lag, breached)


class Metrics:
    """One registry per gateway app (tests run several apps in one process)."""

    def __init__(self, connection: Callable[[], Any]) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "control_room_requests", "RPC requests by function and HTTP status.",
            ["function", "status"], registry=self.registry)
        self.latency = Histogram(
            "control_room_request_duration_seconds", "RPC latency by function.", ["function"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry)
        self.registry.register(QueueCollector(connection))
        self._connection = connection

    def render(self, scope: MetricsScope) -> bytes:
        """The Prometheus text of what `scope` may see."""
        body = generate_latest(self.registry) if scope.aggregates else b""
        if scope.workspaces is None or scope.workspaces:
            registry = CollectorRegistry(auto_describe=False)
            registry.register(WorkspaceCollector(self._connection, scope.workspaces))
            body += generate_latest(registry)
        return body

    def observe(self, function: str, status: int, seconds: float) -> None:
        self.requests.labels(function, str(status)).inc()
        self.latency.labels(function).observe(seconds)
