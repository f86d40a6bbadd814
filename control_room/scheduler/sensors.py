"""The sensor evaluator: `evaluate_due_sensors` claims due sensors through the contract, runs
each one's query read-only against its source and reports the value (docs/sensors.md).

A sensor's connection is fetched with `get_connection` (its config and secret references);
the references are resolved under the evaluator's own secret policy (CONTROL_ROOM_SECRET_ALLOW,
`executor.secrets`: never a CONTROL_ROOM_* variable). The source is opened with psycopg in a
read-only transaction with a short connect and statement timeout; the first column of the
first row, as text, is the value (none: the error `no value`). `record_sensor_value` decides
whether it moved and starts the run. Errors are recorded masked: no resolved secret and no
password of a URL reaches the control plane.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import psycopg

from control_room.contract.client import (
    ClaimedSensor,
    ContractClient,
    ContractError,
    Forbidden,
    Unauthorized,
)
from executor.secrets import Masker, SecretError, SecretPolicy, resolve_secrets

__all__ = ["SensorOutcome", "SensorReport", "evaluate_due_sensors", "run_evaluator"]

log = logging.getLogger("control_room.sensors")

MAX_VALUE_CHARS = 1000
CONNECT_TIMEOUT = 5
"""Seconds to wait for a source to accept the connection."""
STATEMENT_TIMEOUT_MS = 10_000
"""Milliseconds a sensor's query may run."""
_URL_PASSWORD = re.compile(r"(://[^/?#@:\s]*):[^/?#@\s]*@")
_KV_PASSWORD = re.compile(r"(?i)\b(password|passwd|pwd)\s*=\s*('[^']*'|\S+)")


@dataclass(frozen=True)
class SensorOutcome:
    """What one evaluation did: `moved` (a run: `run_id`), `unchanged`, `waiting` (moved, but
    the job is at its max_concurrent_runs: `error` says why; no run yet) or `error`."""

    sensor_id: str
    name: str
    outcome: str
    run_id: str | None = None
    error: str | None = None


@dataclass
class SensorReport:
    """What one `evaluate_due_sensors` call did."""

    claimed: int = 0
    moved: int = 0
    unchanged: int = 0
    waiting: int = 0
    errors: int = 0
    outcomes: list[SensorOutcome] = field(default_factory=list)


class _SensorFailure(Exception):
    """An evaluation that produced no value; the message is safe to record."""


def _masked(text: str, masker: Masker) -> str:
    text = _URL_PASSWORD.sub(r"\1:***@", text)
    text = _KV_PASSWORD.sub(r"\1=***", text)
    return masker.text(text)[:MAX_VALUE_CHARS]


def _read_value(client: ContractClient, sensor: ClaimedSensor, policy: SecretPolicy,
                environ: Mapping[str, str] | None, masker: Masker) -> str:
    registered = client.get_connection(sensor.workspace_id, sensor.connection)
    if registered.type != "postgres":
        raise _SensorFailure(f"connection {sensor.connection} is of type {registered.type}, "
                             "not postgres")
    try:
        values = resolve_secrets(dict(registered.secrets), policy, environ=environ,
                                 masker=masker)
    except SecretError as exc:
        raise _SensorFailure(f"connection {sensor.connection}: {exc.message}") from None
    config: dict[str, Any] = {**registered.config, **values}
    dsn = config.get("dsn")
    if not isinstance(dsn, str) or not dsn:
        raise _SensorFailure(f"connection {sensor.connection} has no 'dsn'")
    kwargs: dict[str, Any] = {"connect_timeout": CONNECT_TIMEOUT,
                              "options": f"-c statement_timeout={STATEMENT_TIMEOUT_MS}",
                              "application_name": "control-room-sensor"}
    if config.get("password") is not None:
        kwargs["password"] = str(config["password"])
    try:
        with psycopg.connect(dsn, **kwargs) as source:
            source.read_only = True
            row = source.execute(sensor.query).fetchone()
    except psycopg.Error as exc:
        raise _SensorFailure(f"{type(exc).__name__}: {str(exc).strip()}") from None
    if row is None or not row or row[0] is None:
        raise _SensorFailure("no value: the query returned no row or a null first column")
    value = row[0] if isinstance(row[0], str) else str(row[0])
    if len(value) > MAX_VALUE_CHARS:
        raise _SensorFailure(f"the value is longer than {MAX_VALUE_CHARS} characters")
    return value


def evaluate_due_sensors(client: ContractClient, *, policy: SecretPolicy,
                         environ: Mapping[str, str] | None = None, limit: int = 20,
                         workspace_id: str | None = None) -> SensorReport:
    """Claim up to `limit` due sensors and evaluate each: its value (or its error, masked)
    reported with `record_sensor_value`. A refusal of the token (401/403) is raised; other
    failures of one sensor are recorded and the others go on."""
    report = SensorReport()
    claimed = client.claim_due_sensors(workspace_id, limit)
    report.claimed = len(claimed)
    for sensor in claimed:
        masker = Masker()
        try:
            value: str | None = _read_value(client, sensor, policy, environ, masker)
            error: str | None = None
        except _SensorFailure as exc:
            value, error = None, _masked(str(exc), masker)
        except (Unauthorized, Forbidden):
            raise
        except ContractError as exc:
            value, error = None, _masked(f"connection {sensor.connection}: {exc.message}",
                                         masker)
        try:
            result = client.record_sensor_value(sensor.id, value, error)
        except (Unauthorized, Forbidden):
            raise
        except ContractError as exc:
            log.warning("sensor %s: record_sensor_value failed (%s)", sensor.name, exc)
            report.errors += 1
            report.outcomes.append(SensorOutcome(sensor.id, sensor.name, "error",
                                                 error=_masked(str(exc), masker)))
            continue
        if result.error is not None:
            report.errors += 1
            outcome = SensorOutcome(sensor.id, sensor.name, "error", error=result.error)
        elif result.waiting is not None:
            report.waiting += 1
            outcome = SensorOutcome(sensor.id, sensor.name, "waiting", error=result.waiting)
        elif result.moved:
            report.moved += 1
            outcome = SensorOutcome(sensor.id, sensor.name, "moved",
                                    run_id=result.run.id if result.run else None)
        else:
            report.unchanged += 1
            outcome = SensorOutcome(sensor.id, sensor.name, "unchanged")
        report.outcomes.append(outcome)
    return report


def run_evaluator(client: ContractClient, stop: threading.Event, *, policy: SecretPolicy,
                  interval: float = 10.0, limit: int = 20, workspace_id: str | None = None,
                  environ: Mapping[str, str] | None = None,
                  on_report: Any = None) -> int:
    """Evaluate due sensors every `interval` seconds until `stop` is set; a call that claimed
    `limit` sensors is followed at once by another. Answers the number of calls. A refused
    token stops the loop (raised); other failures are logged and retried."""
    calls = 0
    while not stop.is_set():
        try:
            report = evaluate_due_sensors(client, policy=policy, environ=environ, limit=limit,
                                          workspace_id=workspace_id)
        except (Unauthorized, Forbidden):
            raise
        except ContractError as exc:
            log.warning("sensors: claim_due_sensors failed (%s); retrying in %ss", exc, interval)
        else:
            calls += 1
            if on_report is not None and report.outcomes:
                on_report(report)
            if report.claimed >= limit:
                continue
        stop.wait(interval)
    return calls
