"""The spark kind's child process: `python -P executor/kinds/spark/child.py SPEC_FILE`.

One Spark driver (a SparkSession, hence one JVM) that runs the jobs the parent sends, one at a
time: the parent (`kind.py`) writes one JSON request a line on stdin and reads one JSON event a
line from the file descriptor the spec names. A worker keeps one such process warm between
phases; cancel and timeout kill its whole process group (the JVM with it) and the next phase
starts a new one.

A request: `{"id", "job_file", "args", "inputs": {name: parquet dir}, "outputs": {name: staging
dir}, "shuffle_partitions"}`. Each job runs in a session of its own (`spark.newSession()`: its
own SQL conf and temp views) with its inputs read from the Parquet the parent staged, and its
DataFrames written as Parquet to the staging directories, which the parent commits to Delta.
Events: `ready` (application id, master, Spark version), `log` (the job's `job.log`),
`output` (one per DataFrame written), then `done` or `error` (the first cause, summarised:
never a whole Java stack). Imports only the standard library before pyspark.
"""

from __future__ import annotations

import json
import os
import runpy
import sys
import traceback
from typing import Any

SECRET_CONF_ENV = "CR_SPARK_SECRET_CONF"
_TERMINAL_PY = (SyntaxError, ImportError, NameError, TypeError, ValueError, KeyError,
                AttributeError, LookupError)
_TERMINAL_JAVA = ("AnalysisException", "ParseException", "IllegalArgumentException",
                  "NumberFormatException", "ArithmeticException", "DateTimeException",
                  "SparkNumberFormatException", "SparkArithmeticException")
MAX_MESSAGE = 2000


class Job:
    """What a job's `run(job)` receives: the session, its inputs and args."""

    def __init__(self, spark: Any, inputs: dict[str, Any], args: dict[str, Any],
                 send: Any) -> None:
        self.spark = spark
        self.inputs = inputs
        self.args = args
        self._send = send

    def log(self, message: str, **payload: Any) -> None:
        """A LOG event of the phase."""
        self._send({"event": "log", "message": str(message)[:4000], "payload": payload})


def _first_line(text: str) -> str:
    for line in text.splitlines():
        if line.strip():
            return line.strip()[:MAX_MESSAGE]
    return ""


def summarize(exc: BaseException, job_file: str | None = None) -> dict[str, Any]:
    """The error as the phase reports it: the first cause's type and first line, where in
    the job file it was raised, and whether a retry could fix it."""
    where = None
    if job_file is not None:
        frames = [f for f in traceback.extract_tb(exc.__traceback__)
                  if f.filename == job_file]
        if frames:
            where = f"{os.path.basename(job_file)}:{frames[-1].lineno}"
    names = {cls.__name__ for cls in type(exc).__mro__}
    java = getattr(exc, "java_exception", None)     # py4j's Py4JJavaError
    if "Py4JJavaError" in names and java is not None:
        cause = java
        for _ in range(50):
            deeper = cause.getCause()
            if deeper is None:
                break
            cause = deeper
        kind = str(cause.getClass().getName())
        message = _first_line(str(cause.toString()))
        terminal = kind.rsplit(".", 1)[-1] in _TERMINAL_JAVA
        return {"type": kind, "message": message, "where": where, "terminal": terminal}
    terminal = ("TerminalPhaseError" in names or bool(names & set(_TERMINAL_JAVA))
                or "PySparkTypeError" in names or "PySparkValueError" in names
                or isinstance(exc, _TERMINAL_PY))
    condition = None
    get_condition = getattr(exc, "getCondition", None)
    if callable(get_condition):
        try:
            condition = get_condition()
        except Exception:
            condition = None
    return {"type": type(exc).__name__, "message": _first_line(str(exc)) or repr(exc),
            "where": where, "terminal": terminal, "condition": condition}


def _run_job(spark: Any, request: dict[str, Any], send: Any) -> None:
    session = spark.newSession()
    session.conf.set("spark.sql.shuffle.partitions", str(request["shuffle_partitions"]))
    session.conf.set("spark.sql.session.timeZone", "UTC")
    inputs: dict[str, Any] = {}
    for name, path in request["inputs"].items():
        frame = session.read.parquet(path)
        frame.createOrReplaceTempView(name)
        inputs[name] = frame
    job_file = request["job_file"]
    namespace = runpy.run_path(job_file, run_name=f"cr_spark_job_{request['id']}")
    run = namespace.get("run")
    if not callable(run):
        raise TypeError(f"{os.path.basename(job_file)} defines no function run(job)")
    result = run(Job(session, inputs, dict(request["args"]), send))
    outputs: dict[str, str] = request["outputs"]
    if not isinstance(result, dict):
        if len(outputs) != 1:
            raise TypeError(f"run(job) must return a dict of DataFrames named "
                            f"{sorted(outputs)}, not {type(result).__name__}")
        result = {next(iter(outputs)): result}
    missing = sorted(set(outputs) - set(result))
    extra = sorted(set(result) - set(outputs))
    if missing or extra:
        raise KeyError(f"run(job) returned {sorted(result)}; the phase's outputs are "
                       f"{sorted(outputs)}")
    for name, path in outputs.items():
        frame = result[name]
        if not hasattr(frame, "write") or not hasattr(frame, "schema"):
            raise TypeError(f"run(job)[{name!r}] is a {type(frame).__name__}, not a "
                            "DataFrame")
        frame.write.mode("overwrite").parquet(path)
        send({"event": "output", "name": name, "path": path})


def main(argv: list[str]) -> int:
    with open(argv[0], encoding="utf-8") as f:
        spec = json.load(f)
    out = os.fdopen(int(spec["events_fd"]), "w", buffering=1, encoding="utf-8")

    def send(message: dict[str, Any]) -> None:
        out.write(json.dumps(message, default=str) + "\n")

    conf: dict[str, str] = dict(spec["conf"])
    conf.update(json.loads(os.environ.pop(SECRET_CONF_ENV, "{}")))
    try:
        from pyspark import __version__ as spark_version
        from pyspark.sql import SparkSession

        builder = SparkSession.builder.master(spec["master"]).appName(spec["app_name"])
        for key, value in sorted(conf.items()):
            builder = builder.config(key, value)
        spark = builder.getOrCreate()
        spark.sparkContext.setLogLevel(spec.get("log_level", "WARN"))
    except BaseException as exc:  # the driver could not start: the parent says why
        send({"event": "error", "id": None, **summarize(exc)})
        out.flush()
        return 2
    context = spark.sparkContext
    send({"event": "ready", "app_id": context.applicationId, "master": context.master,
          "spark_version": spark_version, "ui": context.uiWebUrl,
          "default_parallelism": context.defaultParallelism})
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        try:
            _run_job(spark, request, send)
        except BaseException as exc:  # reported; the driver stays up for the next job
            send({"event": "error", "id": request["id"],
                  **summarize(exc, request.get("job_file"))})
            continue
        send({"event": "done", "id": request["id"]})
    spark.stop()
    out.flush()
    return 0


if __name__ == "__main__":
    code = main(sys.argv[1:])
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
