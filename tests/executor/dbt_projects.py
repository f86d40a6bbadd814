"""Small dbt projects written into a test's code directory (the run's checkout, as the dbt
kind sees it), and a PhaseContext built by hand for the kinds' direct tests."""

from __future__ import annotations

import textwrap
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from executor.kinds import EventLevel, PhaseContext
from executor.kinds.base import Connection

PROJECT = "shop"

FILES: dict[str, str] = {
    "dbt_project.yml": """\
        name: shop
        version: "1.0"
        config-version: 2
        profile: anything
        models:
          shop:
            +materialized: table
        """,
    "models/sources.yml": """\
        version: 2
        sources:
          - name: lake
            schema: lake
            tables: [{name: orders}]
        """,
    "models/paid.sql": """\
        select order_id, customer, amount
        from {{ source('lake', 'orders') }}
        where status = 'paid' and amount >= {{ var('min_amount', 0) }}
        """,
    "models/revenue.sql": """\
        select customer, count(*) as orders, sum(amount)::bigint as revenue
        from {{ ref('paid') }} group by customer
        """,
    "models/environment.sql": """\
        select '{{ env_var("DBT_SEND_ANONYMOUS_USAGE_STATS", "unset") }}' as usage_stats,
               '{{ env_var("CONTROL_ROOM_TOKEN", "absent") }}' as token
        """,
    "models/schema.yml": """\
        version: 2
        models:
          - name: paid
            columns:
              - name: order_id
                data_tests: [not_null, unique]
          - name: revenue
            columns:
              - name: customer
                data_tests:
                  - unique
                  - accepted_values:
                      arguments:
                        values: [ada, bob, cyd]
        """,
}


def write_project(code_dir: Path, files: Mapping[str, str] | None = None,
                  name: str = PROJECT) -> Path:
    """The project under `code_dir/name` (FILES, overridden / extended by `files`)."""
    root = code_dir / name
    for path, text in {**FILES, **(files or {})}.items():
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(textwrap.dedent(text))
    return root


@dataclass
class Recorder:
    events: list[tuple[str, str, str, Mapping[str, Any] | None]] = field(default_factory=list)
    progress: list[float | Mapping[str, Any]] = field(default_factory=list)

    def emit(self, type: str, message: str, level: EventLevel = "info",
             payload: Mapping[str, Any] | None = None) -> None:
        self.events.append((type, message, level, payload))

    def on_progress(self, value: float | Mapping[str, Any]) -> None:
        self.progress.append(value)

    def of(self, type: str) -> list[Mapping[str, Any]]:
        return [payload or {} for kind, _, _, payload in self.events if kind == type]


def make_ctx(out_dir: Path, params: Mapping[str, Any], *, kind: str,
             recorder: Recorder | None = None, inputs: Mapping[str, Any] | None = None,
             cancel: threading.Event | None = None, timeout_s: float | None = 300.0,
             code_dir: Path | None = None, lake_root: Path | None = None,
             connections: Mapping[str, Connection] | None = None,
             datasets: Mapping[str, str] | None = None, attempt: int = 1) -> PhaseContext:
    recorder = recorder or Recorder()
    return PhaseContext(
        run_id="run-1", phase="transform", attempt=attempt, kind=kind, params=params,
        inputs=inputs or {}, git_sha="abc123", input_manifest={}, output_dir=out_dir,
        emit=recorder.emit, progress=recorder.on_progress,
        connections=connections or {}, cancel=cancel or threading.Event(),
        timeout_s=timeout_s, datasets=datasets or {}, code_dir=code_dir,
        lake_root=lake_root)
