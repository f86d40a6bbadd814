"""Prometheus metrics: requests by function and status, and the queue read from the database."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import psycopg
from prometheus_client import CollectorRegistry, Counter, Histogram
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

    def observe(self, function: str, status: int, seconds: float) -> None:
        self.requests.labels(function, str(status)).inc()
        self.latency.labels(function).observe(seconds)
