"""The `spark` kind: a PySpark job file of the run's code, its DataFrames written to the lake as
Delta tables (docs/kinds.md, "spark").

One attempt: the params checked (`SparkParams`), the job file located inside the run's code,
inputs and outputs confined to the run's lake (the sql kind's rules), each input read with the
executor's own reader (deltalake / pyarrow, `executor.kinds.sql.source`) and staged as Parquet,
the job run by a Spark driver in a child process (`child.py`, its own process group: killed on
cancel or timeout, the JVM with it), its DataFrames written by Spark as Parquet to a staging
directory (`spark.sql.parquet.outputTimestampType=TIMESTAMP_MICROS`), then committed into the
Delta tables by the executor (`datasets.write_dataset`: the catalog's schema rules and the
table digest, as every kind). Nothing is downloaded: no delta-spark, no `spark.jars.packages`.
"""

from __future__ import annotations

import contextlib
import hashlib
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
from dataclasses import dataclass
from pathlib import Path
from queue import Empty, Queue
from typing import IO, Any, ClassVar

import pyarrow.dataset as pds

from executor import datasets
from executor.checkout import OWN_CODE_BASE
from executor.digests import blob_digest
from executor.kinds.base import (
    Connection,
    DatasetBlocked,
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
from executor.kinds.dbt.params import ModelOutput
from executor.kinds.registry import missing_extra
from executor.kinds.spark.child import SECRET_CONF_ENV
from executor.kinds.spark.params import SparkParams
from executor.secrets import SecretPolicy, child_environment
from executor.tables import SchemaBreakingChange, confine

__all__ = ["DEFAULT_MASTER", "FORBIDDEN_CONF", "SparkKind", "SubmitConfig", "parse_params",
           "submit_config"]

_missing = missing_extra("spark")
if _missing is not None:    # the registry turns this into MissingExtra (which extra to install)
    raise ImportError(_missing.message)

CHILD = Path(__file__).resolve().with_name("child.py")
DEFAULT_MASTER = "local[2]"
RESULT_MANIFEST_FORMAT = "cr-spark-result-v1"
FORBIDDEN_CONF = ("spark.jars.packages", "spark.jars.repositories", "spark.jars.ivySettings",
                  "spark.jars.excludes")
"""Spark conf keys that make Spark download at start-up (Maven): refused."""
MAX_LOG_LINES = 500
"""Driver log lines (stdout / stderr of the driver process) sent as LOG events per phase;
all of them are in `spark.log`."""
_MASTERS = ("local", "spark://", "k8s://", "yarn", "mesos://")


def parse_params(params: Mapping[str, Any]) -> SparkParams:
    """The phase's params as `SparkParams`; a `TerminalPhaseError` naming each bad field."""
    return validate_params(SparkParams, params, "spark")


def _job_file(job_file: str, code_dir: Path | None) -> Path:
    """The job file: inside the run's code (its checkout, else the worker's own code), every
    link resolved, a regular file."""
    root = Path(os.path.realpath(code_dir if code_dir is not None else OWN_CODE_BASE))
    if os.path.isabs(job_file) or "\x00" in job_file:
        raise TerminalPhaseError(f"spark params: job_file {job_file!r} must be relative to "
                                 "the run's code", error_type="ValueError")
    path = Path(os.path.realpath(root / job_file))
    if root not in path.parents:
        raise TerminalPhaseError(f"spark params: job_file {job_file!r} is not inside the "
                                 "run's code", error_type="ValueError")
    if not path.is_file():
        raise TerminalPhaseError(f"spark params: job_file {job_file!r} is not a file of the "
                                 "run's code", error_type="FileNotFoundError")
    return path


_SECRET_WORDS = ("password", "secret", "token", "credential", "key", "auth")


@dataclass(frozen=True)
class SubmitConfig:
    """What the driver is started with: the master, the kind's own Spark conf (written to the
    driver's spec file) and the connection's (`connection_conf`: passed through the driver's
    environment, never to a file, since a secret reference resolves into it)."""

    master: str
    conf: dict[str, str]
    connection_conf: dict[str, str]

    def key(self) -> str:
        """Which warm driver can run a phase: the same master and connection conf."""
        text = json.dumps([self.master, self.connection_conf], sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()

    def shown(self) -> dict[str, Any]:
        """The config as events show it: a value whose key names a secret as `***` (the
        worker also masks every secret value the attempt resolved)."""
        return {"master": self.master, "conf": dict(sorted(self.conf.items())),
                "connection_conf": {
                    key: "***" if any(w in key.lower() for w in _SECRET_WORDS) else value
                    for key, value in sorted(self.connection_conf.items())}}


def submit_config(connection: Connection | None, work: Path) -> SubmitConfig:
    """The master and conf a phase's driver starts with: from a `spark` connection (`master`,
    and every `spark.*` field, a secret's value included, as conf), else `local[2]`, plus what
    the kind always sets (no UI, local dirs under `work`, no Hive catalog, UTC, Parquet
    timestamps in microseconds). A conf that would download (`spark.jars.packages`...), a
    field that is not conf or a master Spark does not know is refused (terminal)."""
    config: dict[str, Any] = dict(connection.config) if connection is not None else {}
    name = connection.name if connection is not None else "(none)"
    if connection is not None and connection.type != "spark":
        raise TerminalPhaseError(f"spark connection {name!r} is a {connection.type} "
                                 "connection, not spark")
    master = str(config.pop("master", DEFAULT_MASTER))
    if not master.startswith(_MASTERS):
        raise TerminalPhaseError(f"spark connection {name!r}: master {master!r} is not "
                                 "local[N], spark://, k8s://, yarn or mesos://")
    connection_conf: dict[str, str] = {}
    for key, value in config.items():
        if not key.startswith("spark."):
            raise TerminalPhaseError(f"spark connection {name!r}: field {key!r} is neither "
                                     "'master' nor a spark.* conf key")
        if key in FORBIDDEN_CONF:
            raise TerminalPhaseError(f"spark connection {name!r}: {key} makes Spark download "
                                     "packages at start-up, which a worker never does: put "
                                     "the jars on the cluster's image (spark.jars)")
        connection_conf[key] = str(value).lower() if isinstance(value, bool) else str(value)
    conf = {
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",
        "spark.sql.catalogImplementation": "in-memory",
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        **_directories(work),
    }
    if master.startswith("local"):
        conf["spark.driver.host"] = "127.0.0.1"
        conf["spark.driver.bindAddress"] = "127.0.0.1"
    else:
        conf["spark.submit.deployMode"] = "client"
    return SubmitConfig(master=master, conf=conf, connection_conf=connection_conf)


def _directories(work: Path) -> dict[str, str]:
    return {"spark.local.dir": str(work / "local"),
            "spark.sql.warehouse.dir": str(work / "warehouse"),
            "spark.jars.ivy": str(work / "ivy"),
            "spark.driver.extraJavaOptions": f"-Djava.io.tmpdir={work / 'tmp'}"}


class _Driver:
    """One Spark driver process (child.py) and its JVM: started, sent jobs, killed."""

    def __init__(self, config: SubmitConfig, work: Path, policy: SecretPolicy) -> None:
        self.config = config
        self.key = config.key()
        self.work = work
        for sub in ("local", "warehouse", "ivy", "tmp"):
            (work / sub).mkdir(parents=True, exist_ok=True)
        read_fd, write_fd = os.pipe()
        spec = work / "driver.json"
        spec.write_text(json.dumps({"master": config.master, "conf": config.conf,
                                    "app_name": "control-room", "events_fd": write_fd}),
                        encoding="utf-8")
        env = child_environment(os.environ, policy)
        env.update({"PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable,
                    "PYTHONUNBUFFERED": "1", "SPARK_LOCAL_DIRS": str(work / "local"),
                    SECRET_CONF_ENV: json.dumps(config.connection_conf)})
        if config.master.startswith("local"):
            env["SPARK_LOCAL_IP"] = "127.0.0.1"
        env.pop("SPARK_HOME", None)     # pyspark's own jars, never another install's
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-P", str(CHILD), str(spec)], cwd=work, env=env,
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                pass_fds=(write_fd,), start_new_session=True)
        finally:
            os.close(write_fd)
        self.events: Queue[dict[str, Any] | None] = Queue()
        self.lines: Queue[tuple[str, str]] = Queue()
        self.ready: dict[str, Any] | None = None
        threading.Thread(target=self._read_events, args=(read_fd,), daemon=True,
                         name="spark-events").start()
        for stream, name in ((self.process.stdout, "stdout"), (self.process.stderr, "stderr")):
            threading.Thread(target=self._read_lines, args=(stream, name), daemon=True,
                             name=f"spark-{name}").start()

    def _read_events(self, fd: int) -> None:
        with os.fdopen(fd, "r", encoding="utf-8", errors="replace") as f:
            for line in f:
                with contextlib.suppress(ValueError):
                    message = json.loads(line)
                    if isinstance(message, dict):
                        self.events.put(message)
        self.events.put(None)

    def _read_lines(self, stream: IO[bytes] | None, name: str) -> None:
        if stream is None:
            return
        with stream:
            for raw in stream:
                line = raw.decode("utf-8", "replace").rstrip()
                if line.strip():
                    self.lines.put((name, line[:4000]))

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def send(self, request: dict[str, Any]) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write((json.dumps(request) + "\n").encode())
        self.process.stdin.flush()

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)   # the JVM is in the group
        self.process.wait()
        shutil.rmtree(self.work, ignore_errors=True)

    def close(self) -> None:
        """Stop the driver: EOF on its requests (it stops Spark), then the group killed."""
        with contextlib.suppress(OSError, ValueError):
            if self.process.stdin is not None:
                self.process.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(10)
        self.kill()


class SparkKind:
    """A PySpark job file of the run's code (module docstring)."""

    NAME: ClassVar[str] = "spark"
    CONNECTION_TYPES: ClassVar[frozenset[str]] = frozenset({"spark", "postgres"})
    """`spark`: the master and conf; `postgres`: an input read by the executor."""

    def __init__(self, *, poll_interval: float = 0.1) -> None:
        self.poll_interval = poll_interval
        self._policy = SecretPolicy()
        self._keep = False
        self._warm: _Driver | None = None
        self._lock = threading.Lock()

    def start(self, options: KindOptions | None = None) -> None:
        """Take the worker's secret policy, and keep a driver (its JVM) between phases."""
        self._policy = SecretPolicy.parse((options or KindOptions()).secret_allow)
        self._keep = True

    def close(self) -> None:
        """Stop the warm driver, if any."""
        with self._lock:
            self._keep = False
            warm, self._warm = self._warm, None
        if warm is not None:
            warm.close()

    def _take(self, config: SubmitConfig, parent: Path) -> tuple[_Driver, bool]:
        with self._lock:
            warm, self._warm = self._warm, None
        if warm is not None and warm.key == config.key() and warm.alive:
            return warm, True
        if warm is not None:
            warm.close()
        # a driver kept between phases outlives the phase's directory: its own 0700 temp
        # directory then (removed when it stops); a driver of one phase works under the phase's
        work = Path(tempfile.mkdtemp(prefix="cr-spark-driver-",
                                     dir=None if self._keep else parent))
        # the conf names the directories: rebuilt for this driver's own
        config = SubmitConfig(config.master, {**config.conf, **_directories(work)},
                              config.connection_conf)
        return _Driver(config, work, self._policy), False

    def _give_back(self, driver: _Driver) -> None:
        with self._lock:
            if self._keep and self._warm is None and driver.alive:
                self._warm = driver
                return
        driver.close()

    # -- one attempt --------------------------------------------------------------------------

    def run(self, ctx: PhaseContext) -> PhaseResult:
        started = time.monotonic()
        params = parse_params(ctx.params)
        job_file = _job_file(params.job_file, ctx.code_dir)
        from executor.kinds.sql import parse_input

        inputs = [parse_input(name, spec.model_dump(exclude_none=True), ctx.inputs,
                              ctx.lake_root) for name, spec in params.inputs.items()]
        outputs = {name: (out, confine(out.delta, ctx.lake_root, what=f"output {name!r}"))
                   for name, out in params.outputs.items()}
        for name, (out, uri) in outputs.items():
            dataset = out.name or name
            datasets.check_name(dataset, out.layer)
            if ctx.datasets.get(dataset) == "blocked":   # before a driver is started
                raise DatasetBlocked(
                    f"dataset {dataset} is blocked by a breaking schema change awaiting "
                    f"review; nothing was written to {uri}: {datasets.UNBLOCK_HINT}",
                    table=dataset, uri=uri)
        connection = None
        if params.connection is not None:
            connection = ctx.connections.get(params.connection)
            if connection is None:
                raise TerminalPhaseError(f"spark connection {params.connection!r} is not one "
                                         f"of the phase's connections ({sorted(ctx.connections)})")
        ctx.output_dir.mkdir(parents=True, exist_ok=True)
        parent = ctx.output_dir.parent
        config = submit_config(connection, parent)
        if ctx.cancel.is_set():
            raise PhaseCancelled("spark phase cancelled before it started")
        stage = Path(tempfile.mkdtemp(prefix="cr-spark-stage-", dir=parent))
        try:
            return self._run(ctx, params, job_file, inputs, outputs, config, stage, started)
        finally:
            shutil.rmtree(stage, ignore_errors=True)

    def _run(self, ctx: PhaseContext, params: SparkParams, job_file: Path, inputs: list[Any],
             outputs: dict[str, tuple[ModelOutput, str]], config: SubmitConfig, stage: Path,
             started: float) -> PhaseResult:
        from executor.kinds.sql import source as input_source

        staged: dict[str, str] = {}
        for spec in inputs:
            target = stage / "inputs" / spec.name
            data = input_source(spec, ctx)
            pds.write_dataset(data, target, format="parquet",
                              basename_template="part-{i}.parquet")
            staged[spec.name] = str(target)
        ctx.progress(0.1)
        driver, warm = self._take(config, ctx.output_dir.parent)
        log_path = ctx.output_dir / "spark.log"
        staging = {name: str(stage / "outputs" / name) for name in outputs}
        request: dict[str, Any] = {
            "id": f"{ctx.run_id}-{ctx.phase}-{ctx.attempt}", "job_file": str(job_file),
            "args": params.args, "inputs": staged, "outputs": staging,
            "shuffle_partitions": params.shuffle_partitions}
        ok = False
        with open(log_path, "w", encoding="utf-8") as log:
            try:
                self._job(ctx, driver, warm, request, log, started)
                ok = True
            finally:
                if ok:
                    self._give_back(driver)
                else:
                    # failed in the job: the driver is still good; killed: it is gone
                    if driver.alive and not ctx.cancel.is_set() and not self._late(
                            ctx, started):
                        self._give_back(driver)
                    else:
                        driver.kill()
        ctx.progress(0.6)
        entries: list[dict[str, Any]] = []
        report: dict[str, Any] = {"format": RESULT_MANIFEST_FORMAT,
                                  "job_digest": blob_digest(job_file), "outputs": {}}
        for index, (name, (out, uri)) in enumerate(outputs.items()):
            rows = pds.dataset(staging[name], format="parquet").to_table()
            dataset = out.name or name
            metadata = {"controlroom.run_id": ctx.run_id, "controlroom.phase": ctx.phase,
                        "controlroom.attempt": ctx.attempt, "controlroom.spark_output": name}
            try:
                written = datasets.write_dataset(
                    ctx.datasets, dataset, uri, rows, mode=out.mode, keys=out.keys,
                    layer=out.layer, commit_metadata=metadata)
            except SchemaBreakingChange as exc:
                raise TerminalPhaseError(str(exc), error_type="SchemaBreakingChange") from exc
            except ValueError as exc:
                raise TerminalPhaseError(f"{dataset}: {exc}", error_type=type(exc).__name__
                                         ) from exc
            entry = dict(written.entry)
            entries.append(entry)
            report["outputs"][name] = {"name": dataset, "mode": out.mode, "keys": out.keys,
                                       "digest": entry["digest"], "rows": entry["rows"],
                                       "schema": entry["schema_change"]["schema"]}
            ctx.emit("SPARK_OUTPUT", f"wrote spark output {name} to {dataset} (version "
                     f"{entry['version']}, {entry['rows']} row(s))", "info",
                     {"output": name, "table": dataset, "version": entry["version"],
                      "digest": entry["digest"], "rows": entry["rows"],
                      "change": entry["schema_change"]["change"]})
            ctx.progress(0.6 + 0.4 * (index + 1) / len(outputs))
        manifest_path = ctx.output_dir / "result_manifest.json"
        manifest_path.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n",
                                 encoding="utf-8")
        ctx.progress(1.0)
        return PhaseResult(
            output_manifest={"tables": entries,
                             "spark": {"master": config.master,
                                       "elapsed": round(time.monotonic() - started, 3)}},
            outputs=[OutputFile(manifest_path, "result_manifest.json",
                                media_type="application/json"),
                     OutputFile(log_path, "spark.log", media_type="text/plain", role="log")])

    @staticmethod
    def _late(ctx: PhaseContext, started: float) -> bool:
        return ctx.timeout_s is not None and time.monotonic() - started >= ctx.timeout_s

    def _job(self, ctx: PhaseContext, driver: _Driver, warm: bool, request: dict[str, Any],
             log: IO[str], started: float) -> None:
        """Send the job, relay the driver's events and log lines until it is done; kill the
        driver on cancel or timeout."""
        deadline = None if ctx.timeout_s is None else started + ctx.timeout_s
        lines = 0
        sent = warm
        if warm:
            assert driver.ready is not None
            ctx.emit("SPARK_APPLICATION", f"spark job on {driver.ready.get('master')} "
                     f"(application {driver.ready.get('app_id')}, driver kept warm)", "info",
                     {**driver.ready, "warm": True, "submit": driver.config.shown()})
            driver.send(request)
        while True:
            while True:
                try:
                    stream, line = driver.lines.get_nowait()
                except Empty:
                    break
                log.write(f"[{stream}] {line}\n")
                lines += 1
                if lines <= MAX_LOG_LINES:
                    ctx.emit("LOG", line, "info" if stream == "stdout" else "warning",
                             {"stream": stream, "source": "spark-driver"})
                elif lines == MAX_LOG_LINES + 1:
                    ctx.emit("LOG", "more driver log lines are in spark.log", "warning",
                             {"truncated": True, "limit": MAX_LOG_LINES})
            try:
                message = driver.events.get(timeout=self.poll_interval)
            except Empty:
                message = {}
            if message is None:
                raise TransientPhaseError(f"the Spark driver exited (code "
                                          f"{driver.process.wait()}) before the job ended; "
                                          "its log is spark.log", error_type="SparkDriverExit")
            event = message.get("event")
            if event == "ready":
                driver.ready = {key: message.get(key) for key in
                                ("app_id", "master", "spark_version", "ui",
                                 "default_parallelism")}
                ctx.emit("SPARK_APPLICATION", f"spark application {message.get('app_id')} "
                         f"on {message.get('master')} (Spark {message.get('spark_version')})",
                         "info", {**driver.ready, "warm": False,
                                  "submit": driver.config.shown()})
                driver.send(request)
                sent = True
            elif event == "log":
                ctx.emit("LOG", str(message.get("message")), "info",
                         {"source": "job", **(message.get("payload") or {})})
            elif event == "output":
                ctx.emit("LOG", f"spark wrote output {message.get('name')} (staged Parquet)",
                         "info", {"output": message.get("name")})
            elif event == "done" and message.get("id") == request["id"]:
                return
            elif event == "error" and message.get("id") in (None, request["id"]):
                what = "the Spark driver could not start" if not sent else "spark job failed"
                where = f" at {message['where']}" if message.get("where") else ""
                text = f"{what}{where}: {message.get('type')}: {message.get('message')}"
                cls = TerminalPhaseError if message.get("terminal") else TransientPhaseError
                raise cls(text[:4000], error_type=str(message.get("type")), user_data=True)
            if ctx.cancel.is_set():
                driver.kill()
                raise PhaseCancelled("spark phase cancelled; its driver (and JVM) killed")
            if deadline is not None and time.monotonic() >= deadline:
                driver.kill()
                raise PhaseTimeout(f"spark ran past the phase's timeout ({ctx.timeout_s:g} "
                                   "s); its driver (and JVM) killed")

