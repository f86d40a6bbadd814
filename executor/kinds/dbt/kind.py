"""The `dbt` kind: a dbt project of the run's code built with `dbtRunner`, its models written
to the lake as Delta tables (docs/kinds.md, "dbt").

One attempt: the params checked (`DbtParams`), the project located inside the run's code, the
declared inputs loaded into a DuckDB database of the attempt's own (schema `source_schema`,
read by the project as `source('lake', NAME)`), a `profiles.yml` written that holds no value of
the target connection (each field is an `env_var('DBT_ENV_SECRET_...')`, which dbt also scrubs
from its logs), then dbt run in a child process (`child.py`) of its own process group: killed on
cancel or timeout. Every node's start and end is an event; `manifest.json`, `run_results.json`
and dbt's log are outputs; each model of `outputs` is read back and written to the lake under
the catalog's rules (`datasets.write_dataset`), with its lineage (the models and sources it
reads). A failing dbt test fails the phase, naming the test, with its failing rows in
`test_failures.json` (a report of the failed attempt).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from queue import Empty, Queue
from typing import Any, ClassVar

import duckdb

from executor import datasets
from executor.checkout import OWN_CODE_BASE
from executor.kinds.base import (
    Connection,
    EventLevel,
    KindOptions,
    OutputFile,
    PhaseCancelled,
    PhaseContext,
    PhaseResult,
    PhaseTimeout,
    TerminalPhaseError,
    TransientPhaseError,
    validate_params,
)
from executor.kinds.dbt.params import DbtParams, ModelOutput
from executor.kinds.registry import missing_extra
from executor.secrets import SecretPolicy, child_environment
from executor.tables import SchemaBreakingChange, confine

__all__ = ["FAILING_ROWS_LIMIT", "DbtKind", "parse_params"]

_missing = missing_extra("dbt")
if _missing is not None:    # the registry turns this into MissingExtra (which extra to install)
    raise ImportError(_missing.message)

CHILD = Path(__file__).resolve().with_name("child.py")
PROFILE = "control_room"
TARGET = "run"
DATABASE = "dbt"
"""The attempt's DuckDB database (`dbt.duckdb`), as dbt-duckdb names it."""
FAILING_ROWS_LIMIT = 100
"""At most this many failing rows of each failed test go to `test_failures.json`."""
_TRANSIENT_WORDS = ("connection", "timed out", "timeout", "temporarily", "io error",
                    "out of memory", "could not set lock")
_FAILED = frozenset({"error", "fail", "runtime error"})
_NUMERIC_FIELDS = frozenset({"port", "retries", "connect_timeout", "keepalives_idle"})
"""Target fields a `--config KEY=VALUE` registers as text that dbt wants as numbers."""


def parse_params(params: Mapping[str, Any]) -> DbtParams:
    """The phase's params as `DbtParams`; a `TerminalPhaseError` naming each bad field."""
    return validate_params(DbtParams, params, "dbt")


def _project(project_dir: str, code_dir: Path | None) -> Path:
    """The project's directory: inside the run's code (its checkout, else the worker's own
    code), every link resolved, holding a dbt_project.yml."""
    root = Path(os.path.realpath(code_dir if code_dir is not None else OWN_CODE_BASE))
    if os.path.isabs(project_dir) or "\x00" in project_dir:
        raise TerminalPhaseError(f"dbt params: project_dir {project_dir!r} must be relative "
                                 "to the run's code", error_type="ValueError")
    path = Path(os.path.realpath(root / project_dir))
    if path != root and root not in path.parents:
        raise TerminalPhaseError(f"dbt params: project_dir {project_dir!r} is not inside the "
                                 "run's code", error_type="ValueError")
    if not (path / "dbt_project.yml").is_file():
        raise TerminalPhaseError(f"dbt params: project_dir {project_dir!r} has no "
                                 "dbt_project.yml", error_type="FileNotFoundError")
    return path


def _env_name(key: str) -> str:
    return "DBT_ENV_SECRET_CR_" + "".join(c if c.isalnum() else "_" for c in key).upper()


def _profile(target: Connection | None, database: Path, threads: int
             ) -> tuple[dict[str, Any], dict[str, str], str]:
    """The profile's target (no value in it: each is an `env_var`), the variables that carry
    the values, and the adapter type. No target: dbt-duckdb on the attempt's database."""
    if target is None:
        return ({"type": "duckdb", "path": str(database), "threads": threads,
                 "schema": "main"}, {}, "duckdb")
    if target.type != "dbt-profile":
        raise TerminalPhaseError(f"dbt target {target.name!r} is a {target.type} connection, "
                                 "not dbt-profile")
    config = dict(target.config)
    adapter = config.get("type")
    if not isinstance(adapter, str) or not adapter:
        raise TerminalPhaseError(f"dbt target {target.name!r}: its config has no 'type' (the "
                                 "dbt adapter: duckdb, trino...)")
    output: dict[str, Any] = {"type": adapter, "threads": threads}
    env: dict[str, str] = {}
    for key, value in config.items():
        if key in ("type", "threads"):
            continue
        if adapter == "duckdb" and key == "path":
            continue        # the attempt's own database, always
        variable = _env_name(key)
        if isinstance(value, bool):
            env[variable] = "true" if value else "false"
            output[key] = f"{{{{ env_var('{variable}') | as_bool }}}}"
        elif isinstance(value, int | float) or (key in _NUMERIC_FIELDS and isinstance(
                value, str) and value.isdigit()):
            env[variable] = str(value)
            output[key] = f"{{{{ env_var('{variable}') | as_number }}}}"
        elif isinstance(value, str):
            env[variable] = value
            output[key] = f"{{{{ env_var('{variable}') }}}}"
        else:               # a structure (session properties...): as registered
            output[key] = value
    if adapter == "duckdb":
        output["path"] = str(database)
    return output, env, adapter


def _yaml_text(document: Any) -> str:
    return json.dumps(document, indent=2)   # JSON is YAML


def _classify(message: str) -> type[TerminalPhaseError] | type[TransientPhaseError]:
    lowered = message.lower()
    if any(word in lowered for word in _TRANSIENT_WORDS):
        return TransientPhaseError
    return TerminalPhaseError


class _Events:
    """The child's event lines, read in a thread and handed to the attempt in order."""

    def __init__(self, fd: int) -> None:
        self.queue: Queue[dict[str, Any] | None] = Queue()
        self._file = os.fdopen(fd, "r", encoding="utf-8", errors="replace")
        self.thread = threading.Thread(target=self._read, name="dbt-events", daemon=True)
        self.thread.start()

    def _read(self) -> None:
        with self._file:
            for line in self._file:
                with contextlib.suppress(ValueError):
                    message = json.loads(line)
                    if isinstance(message, dict):
                        self.queue.put(message)
        self.queue.put(None)


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


class DbtKind:
    """A dbt project of the run's code, built with dbtRunner (module docstring)."""

    NAME: ClassVar[str] = "dbt"
    CONNECTION_TYPES: ClassVar[frozenset[str]] = frozenset({"dbt-profile", "postgres"})
    """`dbt-profile`: the target; `postgres`: an input read into the attempt's database."""

    def __init__(self, *, poll_interval: float = 0.1) -> None:
        self.poll_interval = poll_interval
        self._policy = SecretPolicy()

    def start(self, options: KindOptions | None = None) -> None:
        """Take the worker's secret policy: dbt's process starts without what it allows."""
        self._policy = SecretPolicy.parse((options or KindOptions()).secret_allow)

    def close(self) -> None:
        """Nothing is kept between phases."""

    # -- one attempt --------------------------------------------------------------------------

    def run(self, ctx: PhaseContext) -> PhaseResult:
        started = time.monotonic()
        params = parse_params(ctx.params)
        project = _project(params.project_dir, ctx.code_dir)
        from executor.kinds.sql import parse_input  # the sql kind's inputs, confined alike

        inputs = [parse_input(name, spec.model_dump(exclude_none=True), ctx.inputs,
                              ctx.lake_root) for name, spec in params.inputs.items()]
        outputs = {model: (out, confine(out.delta, ctx.lake_root, what=f"output {model!r}"))
                   for model, out in params.outputs.items()}
        target = None
        if params.target is not None:
            target = ctx.connections.get(params.target)
            if target is None:
                raise TerminalPhaseError(f"dbt target {params.target!r} is not one of the "
                                         f"phase's connections ({sorted(ctx.connections)})")
        if ctx.cancel.is_set():
            raise PhaseCancelled("dbt phase cancelled before it started")
        ctx.output_dir.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix="cr-dbt-"))     # 0700, the attempt's own
        try:
            return self._run(ctx, params, project, inputs, outputs, target, work, started)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def _run(self, ctx: PhaseContext, params: DbtParams, project: Path, inputs: list[Any],
             outputs: dict[str, tuple[ModelOutput, str]], target: Connection | None,
             work: Path, started: float) -> PhaseResult:
        from executor.kinds.sql import source as input_source

        database = work / f"{DATABASE}.duckdb"
        profile, secret_env, adapter = _profile(target, database, params.threads)
        if outputs and adapter != "duckdb":
            raise TerminalPhaseError(f"dbt params: outputs are read back from the local "
                                     f"DuckDB target; the {adapter} target's models stay in "
                                     f"{adapter} (leave outputs empty)")
        if inputs and adapter != "duckdb":
            raise TerminalPhaseError("dbt params: inputs are loaded into the local DuckDB "
                                     f"target; a {adapter} target reads its own sources")
        with contextlib.closing(duckdb.connect(str(database))) as conn:
            conn.execute(f'create schema if not exists "{params.source_schema}"')
            for spec in inputs:
                conn.register("__cr_input", input_source(spec, ctx))
                conn.execute(f'create table "{params.source_schema}"."{spec.name}" as '
                             "select * from __cr_input")
                conn.unregister("__cr_input")
        profiles = work / "profiles"
        profiles.mkdir()
        (profiles / "profiles.yml").write_text(_yaml_text(
            {PROFILE: {"target": TARGET, "outputs": {TARGET: profile}}}), encoding="utf-8")

        args = [params.command, "--project-dir", str(project), "--profiles-dir",
                str(profiles), "--profile", PROFILE, "--target", TARGET,
                "--target-path", str(work / "target"), "--log-path", str(work / "logs"),
                "--no-version-check", "--no-send-anonymous-usage-stats", "--no-partial-parse",
                "--no-use-colors", "--threads", str(params.threads)]
        for selector in params.select:
            args += ["--select", selector]
        for selector in params.exclude:
            args += ["--exclude", selector]
        if params.vars:
            args += ["--vars", json.dumps(params.vars, sort_keys=True)]
        if params.full_refresh and params.command in ("build", "run", "seed"):
            args.append("--full-refresh")
        ctx.emit("LOG", f"dbt {params.command} of {project.name} on {adapter}", "info",
                 {"command": params.command, "adapter": adapter, "select": params.select,
                  "exclude": params.exclude, "inputs": [spec.name for spec in inputs]})
        code, error = self._invoke(ctx, args, work, secret_env, started)

        target_dir = work / "target"
        files: list[OutputFile] = [OutputFile(ctx.output_dir / "dbt.log", "dbt.log",
                                              media_type="text/plain", role="log")]
        run_results: dict[str, Any] = {}
        manifest: dict[str, Any] = {}
        for name in ("manifest.json", "run_results.json"):
            source = target_dir / name
            if source.is_file():
                shutil.copyfile(source, ctx.output_dir / name)
                files.append(OutputFile(ctx.output_dir / name, name,
                                        media_type="application/json"))
                document = json.loads(source.read_text(encoding="utf-8"))
                if name == "manifest.json":
                    manifest = document
                else:
                    run_results = document
        if error is not None and not run_results:
            cls = _classify(error["message"])
            raise cls(f"dbt could not run: {error['type']}: {error['message']}",
                      error_type=error["type"])
        if code not in (0, 1):
            raise TransientPhaseError(f"dbt's process exited with code {code} without "
                                      "results")
        results = list(run_results.get("results") or [])
        self._fail_on_errors(ctx, results, manifest, database, adapter)

        entries = self._write_outputs(ctx, outputs, manifest, database)
        models, tests = _summaries(results, manifest)
        if adapter == "duckdb":
            _count_rows(models, database)
        lineage = _lineage(manifest, params, outputs)
        for entry in entries:
            # the worker records it (a DATASET_LINEAGE event) once the dataset is recorded
            model = entry.pop("_model")
            entry["lineage"] = {"model": model, **lineage.get(model, {})}
        ctx.progress(1.0)
        return PhaseResult(
            output_manifest={"tables": entries, "models": models, "tests": tests,
                             "lineage": lineage,
                             "dbt": {"command": params.command, "adapter": adapter,
                                     "success": code == 0,
                                     "elapsed": run_results.get("elapsed_time")}},
            outputs=files)

    def _invoke(self, ctx: PhaseContext, args: list[str], work: Path,
                secret_env: Mapping[str, str], started: float
                ) -> tuple[int | None, dict[str, Any] | None]:
        """Run dbt in its child process; relay its node events; kill it on cancel or
        timeout. Answers the exit code and the error the child reported (if any)."""
        read_fd, write_fd = os.pipe()
        spec_file = work / "child.json"
        spec_file.write_text(json.dumps({"args": args, "events_fd": write_fd}),
                             encoding="utf-8")
        env = child_environment(os.environ, self._policy)
        env.update(secret_env)
        env.update({"DBT_SEND_ANONYMOUS_USAGE_STATS": "false", "DBT_VERSION_CHECK": "false",
                    "DBT_PARTIAL_PARSE": "false", "DBT_USE_COLORS": "false",
                    "DO_NOT_TRACK": "1", "PYTHONUNBUFFERED": "1"})
        env.pop("DBT_PROFILES_DIR", None)
        deadline = None if ctx.timeout_s is None else started + ctx.timeout_s
        log_path = ctx.output_dir / "dbt.log"
        with open(log_path, "wb") as log:
            try:
                process = subprocess.Popen(
                    [sys.executable, "-P", str(CHILD), str(spec_file)], cwd=work, env=env,
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    pass_fds=(write_fd,), start_new_session=True)
            finally:
                os.close(write_fd)
            events = _Events(read_fd)
            error: dict[str, Any] | None = None
            progress = _Progress(ctx)
            stop: type[PhaseCancelled] | type[PhaseTimeout] | None = None
            try:
                while True:
                    error = progress.drain(events, self.poll_interval) or error
                    if process.poll() is not None:
                        events.thread.join(5)
                        error = progress.drain(events, 0) or error
                        break
                    if ctx.cancel.is_set():
                        stop = PhaseCancelled
                    elif deadline is not None and time.monotonic() >= deadline:
                        stop = PhaseTimeout
                    if stop is not None:
                        break
            finally:
                _kill_group(process.pid)    # whatever dbt started too
                process.wait()
        if stop is PhaseCancelled:
            raise PhaseCancelled("dbt phase cancelled; its process killed")
        if stop is PhaseTimeout:
            raise PhaseTimeout(f"dbt ran past the phase's timeout ({ctx.timeout_s:g} s); its "
                               "process killed")
        return process.returncode, error

    def _fail_on_errors(self, ctx: PhaseContext, results: list[dict[str, Any]],
                        manifest: Mapping[str, Any], database: Path, adapter: str) -> None:
        """A model that errored or a test that failed fails the phase, named; a failed
        test's failing rows go to `test_failures.json` (read from the local database)."""
        failed = [r for r in results if r.get("status") in _FAILED]
        if not failed:
            return
        nodes = manifest.get("nodes") or {}
        tests = [r for r in failed if str(r.get("unique_id", "")).startswith("test.")]
        others = [r for r in failed if r not in tests]
        if tests:
            report: dict[str, Any] = {}
            for result in tests:
                node = nodes.get(result["unique_id"], {})
                name = node.get("name") or result["unique_id"]
                report[name] = {"unique_id": result["unique_id"],
                                "model": (node.get("attached_node")
                                          or next(iter(node.get("depends_on", {})
                                                       .get("nodes", [])), None)),
                                "column": node.get("column_name"),
                                "failures": result.get("failures"),
                                "message": result.get("message"),
                                **_failing_rows(result, database, adapter)}
            path = ctx.output_dir / "test_failures.json"
            path.write_text(json.dumps(report, indent=2, sort_keys=True, default=str) + "\n",
                            encoding="utf-8")
        if others:
            first = others[0]
            name = str(first.get("unique_id"))
            message = str(first.get("message") or "")
            more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
            raise _classify(message)(f"dbt {name} failed: {message[:2000]}{more}",
                                     error_type="DbtError", user_data=True)
        named = ", ".join(f"{nodes.get(r['unique_id'], {}).get('name', r['unique_id'])} "
                          f"({r.get('failures')} failing row(s))" for r in tests)
        raise TerminalPhaseError(f"dbt test(s) failed: {named}; the failing rows are in "
                                 "test_failures.json", error_type="DbtTestFailure",
                                 user_data=True)

    def _write_outputs(self, ctx: PhaseContext, outputs: dict[str, tuple[ModelOutput, str]],
                       manifest: Mapping[str, Any], database: Path) -> list[dict[str, Any]]:
        by_name = {node.get("name"): node for node in (manifest.get("nodes") or {}).values()
                   if node.get("resource_type") == "model"}
        entries: list[dict[str, Any]] = []
        if not outputs:
            return entries
        with contextlib.closing(duckdb.connect(str(database), read_only=True)) as conn:
            for index, (model, (out, uri)) in enumerate(outputs.items()):
                node = by_name.get(model)
                if node is None or not node.get("relation_name"):
                    raise TerminalPhaseError(f"dbt outputs: {model!r} is not a model of the "
                                             "project that dbt built")
                try:
                    rows = conn.sql(f"select * from {node['relation_name']}").to_arrow_table()
                except duckdb.Error as exc:
                    raise TerminalPhaseError(f"dbt outputs: model {model!r} cannot be read "
                                             f"back ({exc}); was it selected?") from exc
                name = out.name or model
                metadata = {"controlroom.run_id": ctx.run_id, "controlroom.phase": ctx.phase,
                            "controlroom.attempt": ctx.attempt,
                            "controlroom.dbt_model": node.get("unique_id")}
                try:
                    written = datasets.write_dataset(
                        ctx.datasets, name, uri, rows, mode=out.mode, keys=out.keys,
                        layer=out.layer, commit_metadata=metadata)
                except SchemaBreakingChange as exc:
                    raise TerminalPhaseError(str(exc), error_type="SchemaBreakingChange"
                                             ) from exc
                except ValueError as exc:
                    raise TerminalPhaseError(f"{name}: {exc}", error_type=type(exc).__name__
                                             ) from exc
                entry = dict(written.entry)
                entry["_model"] = model
                entries.append(entry)
                ctx.emit("LOG", f"wrote dbt model {model} to {name} (version "
                         f"{entry['version']}, {entry['rows']} row(s))", "info",
                         {"model": model, "table": name, "version": entry["version"],
                          "digest": entry["digest"],
                          "change": entry["schema_change"]["change"]})
                ctx.progress(0.9 + 0.1 * (index + 1) / len(outputs))
        return entries


class _Progress:
    """Node events as phase events, and the fraction of nodes done as progress."""

    def __init__(self, ctx: PhaseContext) -> None:
        self.ctx = ctx
        self.total = 0
        self.done = 0

    def drain(self, events: _Events, wait: float) -> dict[str, Any] | None:
        error: dict[str, Any] | None = None
        try:
            message = events.queue.get(timeout=wait) if wait else events.queue.get_nowait()
        except Empty:
            return None
        while True:
            if message is not None:
                error = self._one(message) or error
            try:
                message = events.queue.get_nowait()
            except Empty:
                return error

    def _one(self, message: dict[str, Any]) -> dict[str, Any] | None:
        event = message.get("event")
        node = message.get("node") or {}
        if event == "error":
            return {"type": str(message.get("type")), "message": str(message.get("message"))}
        if event == "LogStartLine":
            total = message.get("total")
            if isinstance(total, int):
                self.total = max(self.total, total)
            return None
        what = f"{node.get('resource_type')} {node.get('name')}"
        if event == "NodeStart":
            self.ctx.emit("DBT_NODE_STARTED", f"dbt {what} started", "info",
                          {key: node.get(key) for key in
                           ("unique_id", "name", "resource_type", "materialized",
                            "started_at")})
            return None
        if event != "NodeFinished":
            return None
        result = message.get("result") or {}
        status = result.get("status")
        adapter = result.get("adapter_response") or {}
        payload = {key: node.get(key) for key in
                   ("unique_id", "name", "resource_type", "materialized", "started_at",
                    "finished_at", "relation")}
        payload.update(status=status, execution_time=result.get("execution_time"),
                       rows_affected=adapter.get("rows_affected"),
                       failures=result.get("failures"), message=result.get("message"))
        level: EventLevel = ("error" if status in _FAILED else
                 "warning" if status in ("warn", "skipped") else "info")
        self.ctx.emit("DBT_NODE_FINISHED", f"dbt {what}: {status}", level, payload)
        self.done += 1
        if self.total:
            self.ctx.progress({"fraction": round(0.9 * min(self.done / self.total, 1.0), 4),
                               "nodes_done": self.done, "nodes": self.total})
        return None


def _failing_rows(result: Mapping[str, Any], database: Path, adapter: str) -> dict[str, Any]:
    """The failing rows of a failed test (its compiled query re-run on the local database,
    at most FAILING_ROWS_LIMIT of them), or why they are not there."""
    sql = result.get("compiled_code")
    if adapter != "duckdb" or not isinstance(sql, str) or not sql.strip():
        return {"rows": None, "rows_note": "the failing rows are not read from a "
                                           f"{adapter} target"}
    try:
        with contextlib.closing(duckdb.connect(str(database), read_only=True)) as conn:
            found = conn.sql(f"select * from ({sql}) as failing limit {FAILING_ROWS_LIMIT}")
            columns = list(found.columns)
            rows = [dict(zip(columns, row, strict=True)) for row in found.fetchall()]
    except duckdb.Error as exc:
        return {"rows": None, "rows_note": f"the test's query could not be re-run: {exc}"}
    return {"rows": rows, "sql": sql}


def _summaries(results: list[dict[str, Any]], manifest: Mapping[str, Any]
               ) -> tuple[dict[str, Any], dict[str, Any]]:
    nodes = manifest.get("nodes") or {}
    models: dict[str, Any] = {}
    tests: dict[str, Any] = {}
    for result in results:
        unique_id = str(result.get("unique_id"))
        node = nodes.get(unique_id, {})
        name = node.get("name") or unique_id
        adapter = result.get("adapter_response") or {}
        summary = {"unique_id": unique_id, "status": result.get("status"),
                   "execution_time": result.get("execution_time"),
                   "rows_affected": adapter.get("rows_affected")}
        if unique_id.startswith("test."):
            tests[name] = {**summary, "failures": result.get("failures")}
        elif unique_id.startswith(("model.", "seed.", "snapshot.")):
            models[name] = {**summary, "relation": node.get("relation_name")}
    return models, tests


def _count_rows(models: dict[str, Any], database: Path) -> None:
    """Each built model's row count (`rows`), read from the local database: dbt-duckdb
    reports no rows affected for a table it creates."""
    with contextlib.closing(duckdb.connect(str(database), read_only=True)) as conn:
        for summary in models.values():
            relation = summary.get("relation")
            if summary.get("status") != "success" or not relation:
                continue
            with contextlib.suppress(duckdb.Error):
                found = conn.execute(f"select count(*) from {relation}").fetchone()
                summary["rows"] = int(found[0]) if found else None


def _lineage(manifest: Mapping[str, Any], params: DbtParams,
             outputs: Mapping[str, tuple[ModelOutput, str]]) -> dict[str, Any]:
    """Each model -> the models it refs and the sources it reads (by name; a source of the
    inputs' schema is the input's name), from the manifest."""
    nodes = manifest.get("nodes") or {}
    sources = manifest.get("sources") or {}
    lineage: dict[str, Any] = {}
    for node in nodes.values():
        if node.get("resource_type") != "model":
            continue
        refs: list[str] = []
        reads: list[str] = []
        for upstream in (node.get("depends_on") or {}).get("nodes") or []:
            if upstream in nodes:
                refs.append(str(nodes[upstream].get("name")))
            elif upstream in sources:
                source = sources[upstream]
                reads.append(f"{source.get('source_name')}.{source.get('name')}")
        model = str(node.get("name"))
        datasets_read = [outputs[ref][0].name or ref for ref in refs if ref in outputs]
        inputs = [read.split(".", 1)[1] for read in reads
                  if read.split(".", 1)[0] == params.source_schema]
        lineage[model] = {"unique_id": node.get("unique_id"), "refs": sorted(refs),
                          "sources": sorted(reads), "datasets": sorted(datasets_read),
                          "inputs": sorted(inputs)}
    return dict(sorted(lineage.items()))
