"""`control-room verify RUN_ID`: rebuild a succeeded run into a scratch location and compare.

A run is reproducible when the same code (its git sha), params and inputs give the same
outputs. Verify checks it: it reads the run (its phases with their params as stored, i.e.
with their templates, its input manifest and git sha), creates a NEW run of the same phases
whose `${run.lake}` (`input_manifest.lake_dir`), `lake` param and any `--param` override
point elsewhere (`<workspace lake>/_verify/<run>/<time>`), runs it with an in-process worker
that claims only that run, and compares, phase by phase, every artifact digest (by artifact
name) and every table digest of the output manifests (`table.digest` and `tables[].digest`,
by table name). Table digests do not depend on where a table lives or on row order
(executor/digests.py), and the sql kind's artifacts hold no location, so a reproducible run
matches everywhere.

Exit codes: 0 every output matches; 1 an output differs, or the rebuild failed (the failed
phase is named); 2 bad input: an unknown run, a run that has not succeeded, a run whose
phases cannot be pointed elsewhere (no `${run.lake}`, no `lake` param, no `--param`
override), a bad option.
Without `--gateway/--token` the local stack's are used (`control-room up`), and its
artifact store. docs/verify.md.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from control_room.cli.common import (
    EXIT_FAILED,
    FINAL_STATES,
    BadInput,
    Gateway,
    GatewayTarget,
    JsonOut,
    RunId,
    StateDir,
    Token,
    Workspace,
    defaults,
    err,
    gateway,
    guard,
    new_app,
    option_for,
    out,
    pairs,
    parse_run_id,
)
from control_room.settings import load_settings
from executor.settings import WorkerSettings, run_lake, workspace_lake

if TYPE_CHECKING:
    from control_room.contract.client import ContractClient, Run
    from control_room.stack import Stack
    from executor.artifacts import ArtifactStore

__all__ = ["Comparison", "compare_runs", "verify_command"]

app = new_app("Reproducibility checks.")
WORKER = defaults(WorkerSettings)

LAKE_PARAM = "lake"
POLL_SECONDS = 0.5
_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})


@dataclass(frozen=True)
class Row:
    """One output of one phase, in the original run and in the rebuild."""

    phase: str
    output: str
    kind: str               # artifact | table
    original: str | None
    rebuilt: str | None
    built: bool = True
    """Whether the rebuild's phase succeeded (else its outputs were not rebuilt)."""

    @property
    def same(self) -> bool:
        return self.original is not None and self.original == self.rebuilt

    @property
    def status(self) -> str:
        """same | DIFFERENT | missing (not in the rebuild) | new (only in the rebuild) |
        not rebuilt (its phase failed)."""
        if not self.built:
            return "not rebuilt"
        if self.same:
            return "same"
        if self.rebuilt is None:
            return "missing"
        return "new" if self.original is None else "DIFFERENT"


@dataclass
class Comparison:
    """What `compare_runs` found: a row per output, and the phases the rebuild did not
    finish (`{phase, state, error}`)."""

    rows: list[Row] = field(default_factory=list)
    failed: list[dict[str, Any]] = field(default_factory=list)

    @property
    def matches(self) -> bool:
        return not self.failed and all(row.same for row in self.rows)


# ------------------------------------------------------------------------------ comparing

def _outputs(manifest: Mapping[str, Any] | None) -> dict[tuple[str, str], str]:
    """(kind, name) -> digest of every artifact and table an output manifest names."""
    found: dict[tuple[str, str], str] = {}
    if not manifest:
        return found
    artifacts = manifest.get("artifacts")
    if isinstance(artifacts, Mapping):
        for name, digest in artifacts.items():
            found[("artifact", str(name))] = str(digest)
    tables = manifest.get("tables")
    entries = [manifest.get("table"), *(tables if isinstance(tables, list) else [])]
    for entry in entries:
        if isinstance(entry, Mapping) and entry.get("digest") is not None:
            name = entry.get("name") or entry.get("uri") or "table"
            found[("table", str(name))] = str(entry["digest"])
    return found


def compare_runs(original: Run, rebuilt: Run) -> Comparison:
    """Every output of every phase of `original` against the same one in `rebuilt`."""
    comparison = Comparison()
    for phase in original.phases:
        try:
            twin = rebuilt.phase(phase.name)
        except KeyError:
            comparison.failed.append({"phase": phase.name, "state": "missing", "error": None})
            continue
        built = twin.state == "succeeded"
        if not built:
            comparison.failed.append({"phase": phase.name, "state": twin.state,
                                      "error": twin.error})
        before = _outputs(phase.output_manifest)
        after = _outputs(twin.output_manifest) if built else {}
        for kind, name in sorted(before.keys() | after.keys()):
            comparison.rows.append(Row(phase.name, name, kind, before.get((kind, name)),
                                       after.get((kind, name)), built))
    return comparison


# -------------------------------------------------------------------------------- the plan

def _coerce(name: str, text: str, current: Any) -> Any:
    """`--param name=text` as the type of the run's current value."""
    if isinstance(current, bool):
        lowered = text.strip().lower()
        if lowered not in _TRUE | _FALSE:
            raise BadInput(f"--param {name}: expected a boolean (true/false), not {text!r}")
        return lowered in _TRUE
    try:
        if isinstance(current, int):
            return int(text)
        if isinstance(current, float):
            return float(text)
    except ValueError:
        raise BadInput(f"--param {name}: expected a {type(current).__name__}, "
                       f"not {text!r}") from None
    return text


def _params(run: Run, overrides: Mapping[str, str], rebuild_lake: Path
            ) -> tuple[dict[str, Any], set[str]]:
    """The rebuild's params and the names pointed elsewhere (a `lake` param: at
    `rebuild_lake`, the rebuild's `${run.lake}`)."""
    params = dict(run.input_manifest.get("params") or {})
    known = ", ".join(sorted(params)) or "none"
    unknown = sorted(set(overrides) - set(params))
    if unknown:
        raise BadInput(f"--param {unknown[0]}: run {run.id} has no such param (its params: "
                       f"{known})")
    moved = set(overrides)
    for name, text in overrides.items():
        params[name] = _coerce(name, text, params[name])
    if LAKE_PARAM in params and LAKE_PARAM not in overrides:
        params[LAKE_PARAM] = str(rebuild_lake)
        moved.add(LAKE_PARAM)
    if not moved and not _uses_run_lake(run):
        raise BadInput(f"run {run.id} has no '{LAKE_PARAM}' param to point at the scratch "
                       f"directory: give --param NAME=DIR for the param its phases write "
                       f"under (its params: {known})")
    return params, moved


def _uses_run_lake(run: Run) -> bool:
    """Whether a phase writes under `${run.lake}`: the rebuild's `${run.lake}` is a directory
    of its own (`input_manifest.lake_dir`), so such a phase is redirected by construction."""
    from executor.render import TemplateError, references

    try:
        return any(ref.scope == "run" and ref.name == "lake"
                   for phase in run.phases
                   for ref in references(phase.params, path=phase.name))
    except TemplateError:
        return False        # _check_redirected names the bad template


def _check_redirected(run: Run, moved: set[str]) -> None:
    """Refuse a rebuild whose phases would write where the original did."""
    from executor.render import TemplateError, references

    used: set[str] = set()
    for phase in run.phases:
        try:
            used |= {ref.name for ref in references(phase.params, path=phase.name)
                     if ref.scope == "params"}
        except TemplateError as exc:
            raise BadInput(f"run {run.id}: {exc.message}") from None
    if not used & moved and not _uses_run_lake(run):
        names = ", ".join("${params." + name + "}" for name in sorted(moved))
        raise BadInput(f"no phase of run {run.id} uses {names}: a rebuild would write where "
                       "the original did; give --param NAME=DIR for the param its phases "
                       "write under")


def _create_args(run: Run, params: Mapping[str, Any], lake_dir: str) -> dict[str, Any]:
    phases = [{"name": p.name, "kind": p.kind, "params": p.params,
               "depends_on": list(p.depends_on), "max_attempts": p.max_attempts,
               "timeout_seconds": p.timeout_seconds,
               "retry_backoff_seconds": p.retry_backoff_seconds,
               "retry_backoff_max_seconds": p.retry_backoff_max_seconds}
              for p in run.phases]
    return {"workspace_id": run.workspace_id, "spec_slug": run.spec_slug,
            "git_sha": run.git_sha, "phases": phases,
            "input_manifest": {**run.input_manifest, "params": dict(params),
                               "lake_dir": lake_dir},
            "labels": {"verify_of": run.id}, "priority": run.priority,
            "idempotency_key": f"verify-{run.id}-{uuid.uuid4()}"}


def _lake_root(target: GatewayTarget, folder: Path) -> Path:
    """The lake root the rebuild's worker shares with the workspace's other workers (any of
    them may claim a phase of the rebuild): the local stack's lake when verifying against the
    stack, else CONTROL_ROOM_LAKE_ROOT, else `<scratch>/lake`."""
    stack = target.stack()
    if stack is not None and stack.gateway_url.rstrip("/") == target.url:
        return stack.lake
    configured = WorkerSettings().lake_root
    return configured if configured is not None else folder / "lake"


def _scratch_dir(scratch: Path | None, run_id: str, state_dir: Path | None) -> Path:
    """Where the rebuild goes: `scratch`, or a new directory under the state directory; it
    must be empty (created later, once nothing else can be refused)."""
    if scratch is None:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        base = load_settings(state_dir=state_dir).state_dir
        scratch = base / "verify" / f"{run_id}-{stamp}"
    scratch = scratch.resolve()
    if scratch.exists() and (not scratch.is_dir() or any(scratch.iterdir())):
        raise BadInput(f"--scratch {scratch} is not an empty directory")
    return scratch


# ----------------------------------------------------------------------------- rebuilding

@contextlib.contextmanager
def _worker_client(target: GatewayTarget, token: str | None) -> Iterator[ContractClient]:
    """The client the rebuild claims with: the local stack's executor token when the command
    talks to the stack with the stack's (operator) token, since only executors claim; else
    the command's own client (`--token` must then be able to create runs and claim)."""
    from control_room.contract.client import ContractClient

    stack = target.stack()
    if (token is None and stack is not None and stack.executor_token is not None
            and stack.gateway_url.rstrip("/") == target.url):
        with ContractClient(target.url, stack.executor_token.get_secret_value()) as client:
            yield client
    else:
        yield target.client


def _secret_allow(target: GatewayTarget) -> str | None:
    """The secret policy of the rebuild's worker: the local stack's workers' when verifying
    against the stack, else CONTROL_ROOM_SECRET_ALLOW."""
    stack = target.stack()
    if stack is not None and stack.gateway_url.rstrip("/") == target.url:
        from control_room.localstack import local_secret_allow

        return local_secret_allow(load_settings(state_dir=target.state_dir).state_dir)
    return WorkerSettings().secret_allow


def _rebuild(client: ContractClient, run_id: str, *, workspace_id: str, kinds: list[str],
             store: ArtifactStore, work_dir: Path, repo: str | None,
             concurrency: int, lake_root: Path, secret_allow: str | None) -> Run:
    """Run `run_id` with an in-process worker (claiming only its phases) until it ends."""
    from executor.worker import Worker

    worker = Worker(client, kinds=kinds, concurrency=concurrency, store=store,
                    work_dir=work_dir, workspace_id=workspace_id, run_id=run_id, repo=repo,
                    claim_wait=1.0, idle_max=1.0, grace_seconds=5.0, lake_root=lake_root,
                    secret_allow=secret_allow)
    stop = threading.Event()
    failure: list[BaseException] = []

    def work() -> None:
        try:
            worker.run(stop)
        except BaseException as exc:  # reported by the waiting loop
            failure.append(exc)

    thread = threading.Thread(target=work, name="verify-worker", daemon=True)
    thread.start()
    try:
        with err.status(f"Rebuilding into run {run_id} ...") as status:
            while True:
                run = client.get_run(run_id)
                if run.state in FINAL_STATES:
                    return run
                if failure:
                    raise failure[0]
                done = sum(p.state == "succeeded" for p in run.phases)
                status.update(f"Rebuilding into run {run_id}: {done}/{len(run.phases)} "
                              "phase(s) done ...")
                time.sleep(POLL_SECONDS)
    finally:
        stop.set()
        thread.join()


# ------------------------------------------------------------------------------- printing

def _short(digest: str | None) -> str:
    if digest is None:
        return "-"
    algorithm, _, hexdigest = digest.partition(":")
    return f"{algorithm}:{hexdigest[:12]}" if hexdigest else digest[:20]


def _print(original: Run, rebuilt: Run, comparison: Comparison, scratch: Path) -> None:
    table = Table(title=f"verify {original.id} (rebuilt as {rebuilt.id})")
    for column in ("phase", "output", "original digest", "rebuilt digest", ""):
        table.add_column(column)
    for row in comparison.rows:
        status = Text(row.status, style="green" if row.same else "red")
        table.add_row(row.phase, f"{row.kind} {row.output}", _short(row.original),
                      _short(row.rebuilt), status)
    out.print(table)
    for failed in comparison.failed:
        message = (failed["error"] or {}).get("message") if failed["error"] else None
        out.print(Text(f"phase {failed['phase']} was not rebuilt ({failed['state']})"
                       + (f": {message}" if message else ""), style="red"))
    verdict = ("every output matches" if comparison.matches else
               "the rebuild failed" if comparison.failed else "the rebuild differs")
    out.print(f"{verdict}; the rebuild is in {scratch}", markup=False)


def _report(original: Run, rebuilt: Run, comparison: Comparison,
            scratch: Path) -> dict[str, Any]:
    return {"run_id": original.id, "verify_run_id": rebuilt.id, "state": rebuilt.state,
            "scratch": str(scratch), "matches": comparison.matches,
            "rows": [{"phase": r.phase, "output": r.output, "kind": r.kind,
                      "original": r.original, "rebuilt": r.rebuilt, "same": r.same,
                      "status": r.status}
                     for r in comparison.rows],
            "failed": comparison.failed}


# -------------------------------------------------------------------------------- command

@app.command("verify")
def verify_command(
    run_id: RunId,
    scratch: Annotated[Path | None, typer.Option(
        "--scratch", file_okay=False, help="An empty directory for the rebuild (its work "
        "dir and checkouts; its lake root when neither the stack nor CONTROL_ROOM_LAKE_ROOT "
        "gives one). Default: `verify/<run>-<time>` under the state directory.")
    ] = None,
    param: Annotated[list[str] | None, typer.Option(
        "--param", help="NAME=VALUE: override a param of the run (repeatable), e.g. a path "
                        "its phases write under; a `lake` param is pointed at the rebuild's "
                        "`${run.lake}` (`<workspace lake>/_verify/...`) anyway.")
    ] = None,
    artifacts: Annotated[str | None, option_for(
        WorkerSettings, "artifacts_url", "--artifacts",
        help="Artifact store for the rebuild's outputs. Default: the local stack's.")] = None,
    repo: Annotated[str | None, option_for(
        WorkerSettings, "repo", "--repo",
        help="Git repository of the pipelines' code: the run's git sha is checked out and "
             "run. Default: this installation's code.")] = None,
    concurrency: Annotated[int, option_for(
        WorkerSettings, "concurrency", "--concurrency", help="Phases rebuilt at once.")
    ] = WORKER.concurrency,
    gateway_url: Gateway = None,
    token: Token = None,
    workspace: Workspace = None,
    state_dir: StateDir = None,
    as_json: JsonOut = False,
) -> None:
    """Re-run a succeeded run into a scratch location and report any digest that differs."""
    from control_room.contract.client import NotFound
    from executor.checkout import Checkouts
    from executor.kinds.registry import KINDS

    with guard():
        wanted = parse_run_id(run_id)
        overrides = pairs("--param", param)
        with gateway(gateway_url, token, workspace, state_dir) as target:
            try:
                original = target.client.get_run(wanted)
            except NotFound:
                raise BadInput(f"no run {wanted} (or this token cannot see it)") from None
            if workspace is not None and target.workspace_id() != original.workspace_id:
                raise BadInput(f"run {wanted} is not in workspace {workspace}")
            if original.state != "succeeded":
                raise BadInput(f"run {wanted} is {original.state}, not succeeded: only a "
                               "succeeded run can be verified")
            kinds = sorted({p.kind for p in original.phases})
            missing = [kind for kind in kinds if kind not in KINDS]
            if missing:
                raise BadInput(f"run {wanted} has phases of kind(s) {', '.join(missing)} "
                               f"that this installation cannot run")
            folder = _scratch_dir(scratch, wanted, state_dir)
            lake_root = _lake_root(target, folder)
            lake_dir = f"_verify/{wanted}/{datetime.now(UTC).strftime('%Y%m%dT%H%M%S%fZ')}"
            rebuild_lake = run_lake(workspace_lake(lake_root, original.workspace_id), lake_dir)
            params, moved = _params(original, overrides, rebuild_lake)
            _check_redirected(original, moved)
            store = _store(artifacts, target.stack(), state_dir)
            if repo is not None:
                try:
                    Checkouts(repo, folder / "work" / "checkouts")
                except ValueError as exc:
                    raise BadInput(f"--repo: {exc}") from None
            folder.mkdir(parents=True, exist_ok=True)
            created = target.client.create_run(**_create_args(original, params, lake_dir))
            if not as_json:
                err.print(f"verify {wanted}: rebuilding as run {created.id} in {folder}",
                          markup=False)
            with _worker_client(target, token) as claimer:
                rebuilt = _rebuild(claimer, created.id,
                                   workspace_id=original.workspace_id, kinds=kinds,
                                   store=store, work_dir=folder / "work", repo=repo,
                                   concurrency=concurrency, lake_root=lake_root,
                                   secret_allow=_secret_allow(target))
        comparison = compare_runs(original, rebuilt)
        if as_json:
            out.print_json(data=_report(original, rebuilt, comparison, folder))
        else:
            _print(original, rebuilt, comparison, folder)
        if not comparison.matches:
            raise typer.Exit(EXIT_FAILED)


def _store(artifacts: str | None, stack: Stack | None, state_dir: Path | None
           ) -> ArtifactStore:
    """`--artifacts`, else the local stack's store, else artifacts under the state dir."""
    from executor.artifacts import artifact_store_from_url

    location = artifacts or (str(stack.artifacts) if stack is not None else None)
    location = location or str(load_settings(state_dir=state_dir).state_dir / "artifacts")
    try:
        return artifact_store_from_url(location)
    except ValueError as exc:
        raise BadInput(f"--artifacts: {exc}") from None
