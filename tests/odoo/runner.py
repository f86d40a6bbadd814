"""The Odoo spec run in-process, phase after phase, for the fine-grained pipeline tests.

Exactly what a worker would run (the spec's phases as `control_room.specs` loads them, their
templates rendered by `executor.render`, the workspace connections `odoo` and `warehouse`
resolved by `executor.connections` as a worker resolves a claim's),
without the gateway: python phases call their entrypoint with a real `PythonContext` in this
process, sql phases run the real `SqlKind`. The end-to-end test runs the same spec through
the gateway and real workers.
"""

from __future__ import annotations

import graphlib
import importlib
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from control_room.specs import LoadedSpec, example_spec, load_spec
from executor.connections import resolve_connections
from executor.kinds.base import Connection, PhaseContext
from executor.kinds.python import PythonContext, parse_entrypoint
from executor.kinds.sql import SqlKind
from executor.render import render
from executor.secrets import SecretPolicy

REPO = Path(__file__).resolve().parents[2]
SPEC = example_spec("odoo_medallion")
CONNECTION_PARAMS = {"odoo_dsn": "odoo", "warehouse_dsn": "warehouse"}
"""Keys of `run_spec`'s params that stand for the dsn of a registered workspace connection
(no secret: the test server trusts)."""


@dataclass
class LocalRun:
    """One run of the spec: its manifests and events by phase."""

    run_id: str
    work_dir: Path
    manifests: dict[str, dict[str, Any]] = field(default_factory=dict)
    events: dict[str, list[tuple[Any, ...]]] = field(default_factory=dict)

    def output_dir(self, phase: str) -> Path:
        return self.work_dir / self.run_id / phase


def spec() -> LoadedSpec:
    return load_spec(SPEC)


def python_context(phase: str, args: Mapping[str, Any], output_dir: Path, *,
                   connections: Mapping[str, Connection] | None = None,
                   inputs: Mapping[str, Any] | None = None,
                   datasets: Mapping[str, str] | None = None,
                   events: list[tuple[Any, ...]] | None = None,
                   run_id: str | None = None,
                   lake_root: Path | None = None,
                   input_manifest: Mapping[str, Any] | None = None) -> PythonContext:
    """The context a python phase's entrypoint gets, made in this process: what it emits is
    appended to `events`."""
    sink: list[tuple[Any, ...]] = events if events is not None else []
    output_dir.mkdir(parents=True, exist_ok=True)
    return PythonContext(
        run_id=run_id or str(uuid.uuid4()), phase=phase, attempt=1, params={"args": args},
        args=dict(args), inputs=dict(inputs or {}), input_manifest=dict(input_manifest or {}),
        git_sha=None,
        output_dir=output_dir, timeout_s=None, connections=dict(connections or {}),
        _send=sink.append, datasets=dict(datasets or {}), lake_root=lake_root)


def postgres(name: str, dsn: str) -> Connection:
    """A resolved `type: postgres` connection (no password: the test server trusts)."""
    return Connection(name, "postgres", {"dsn": dsn, "password": ""})


def run_spec(params: Mapping[str, Any], work_dir: Path, *, only: set[str] | None = None,
             datasets: Mapping[str, str] | None = None, first: Sequence[str] = (),
             before_phase: Callable[[str], None] | None = None) -> LocalRun:
    """Run the spec's phases in dependency order (those in `only` and what they need, when
    given); the first phase that raises stops the run (its exception propagates). `params`
    may carry `odoo_dsn` and `warehouse_dsn` (CONNECTION_PARAMS): the workspace's
    connections, as a claim carries them; or `odoo_api` ({url, database, login,
    api_key_ref}: `odoo` as an http connection to Odoo's JSON-RPC API) with `secret_allow`
    (the policy its `api_key` reference is resolved under). `first`: phases without
    dependencies to run before all others, in that order; `before_phase(name)` is called
    before each phase runs (a test changes the source between two extractions so)."""
    loaded = spec()
    registered = {CONNECTION_PARAMS[key]: {"type": "postgres", "config": {"dsn": dsn},
                                           "secrets": {}, "version": 1}
                  for key, dsn in params.items() if key in CONNECTION_PARAMS}
    api = params.get("odoo_api")
    if api is not None:     # `odoo` is Odoo's JSON-RPC API: an http connection, its key by ref
        registered["odoo"] = {"type": "http", "config": {k: v for k, v in api.items()
                                                         if k != "api_key_ref"},
                              "secrets": {"api_key": api["api_key_ref"]}, "version": 1}
    policy = SecretPolicy.parse(params.get("secret_allow")) if params.get(
        "secret_allow") else SecretPolicy()
    # `lake` stands for the worker's workspace lake (`${run.lake}`); default: under work_dir
    lake = Path(params.get("lake", work_dir / "lake")).absolute()
    values = loaded.resolve_params({k: v for k, v in params.items()
                                    if k not in CONNECTION_PARAMS
                                    and k not in ("lake", "odoo_api", "secret_allow")})
    manifest = loaded.input_manifest(values)
    run = LocalRun(str(uuid.uuid4()), work_dir)
    fields = {"id": run.run_id, "git_sha": loaded.git_sha, "spec_slug": loaded.spec.slug,
              "lake": str(lake)}
    phases = {p.name: p for p in loaded.spec.phases}
    order = graphlib.TopologicalSorter({p.name: p.depends_on for p in phases.values()})
    wanted = _closure(phases, only) if only is not None else set(phases)
    assert all(not phases[name].depends_on for name in first), first
    for name in [*first, *(n for n in order.static_order() if n not in first)]:
        if name not in wanted:
            continue
        phase = phases[name]
        if before_phase is not None:
            before_phase(name)
        params_ = render(phase.params, params=values, run=fields)
        connections = resolve_connections(phase.params.get("connections"), registered,
                                          policy=policy)
        inputs = {dep: run.manifests[dep] for dep in phase.depends_on}
        events: list[tuple[Any, ...]] = run.events.setdefault(name, [])
        output_dir = run.output_dir(name)
        output_dir.mkdir(parents=True, exist_ok=True)
        if phase.kind == "python":
            module, attr = parse_entrypoint(params_["entrypoint"])
            ctx = python_context(name, params_.get("args", {}), output_dir,
                                 connections=connections, inputs=inputs, datasets=datasets,
                                 events=events, run_id=run.run_id, lake_root=lake)
            result = getattr(importlib.import_module(module), attr)(ctx) or {}
            tables = result.get("tables", []) + ctx.tables_written
            run.manifests[name] = {**result, "tables": tables}
        else:
            assert phase.kind == "sql", phase.kind
            sql_ctx = PhaseContext(
                run_id=run.run_id, phase=name, attempt=1, kind="sql", params=params_,
                inputs=inputs, git_sha=loaded.git_sha, input_manifest=manifest,
                output_dir=output_dir,
                emit=lambda *a, events=events, **k: events.append((*a, k)),
                progress=lambda value: None, connections=connections,
                datasets=dict(datasets or {}), lake_root=lake)
            run.manifests[name] = SqlKind().run(sql_ctx).output_manifest
    return run


def _closure(phases: Mapping[str, Any], names: set[str]) -> set[str]:
    found: set[str] = set()
    todo = list(names)
    while todo:
        name = todo.pop()
        if name not in found:
            found.add(name)
            todo.extend(phases[name].depends_on)
    return found
