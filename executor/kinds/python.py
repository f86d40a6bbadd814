"""The `python` kind: a function `module:function` run in its own subprocess.

Params: `{"entrypoint": "package.module:function", "args": {...}}` (`args` optional, a JSON
object). The function is called with one argument, a `PythonContext` (the phase's run id,
phase, attempt, params, args, inputs, input manifest, git sha, connections, output dir and
`emit` / `progress`), and returns the phase's output manifest: a dict that is JSON-serialisable
(strict JSON: no NaN or infinity), or None for `{}`. Every regular file it leaves under
`ctx.output_dir` (recursively; symlinks are skipped) becomes an output artifact named by its
path relative to that directory, with a media type guessed from the name.

    def load(ctx: PythonContext) -> dict[str, Any]:
        ctx.emit("LOG", "loading", payload={"rows": 10})
        ctx.progress(0.5)
        ctx.write_table("bronze.orders", f"{ctx.args['lake']}/bronze/orders", rows,
                        mode="merge", keys=["id"])
        (ctx.output_dir / "rows.json").write_text("[]")
        return {"rows": 10}

Tables: `ctx.write_table(name, uri, data, *, mode, keys=None, layer=None, partition_by=None)`
writes a Delta table under the data catalog's rules (`executor.datasets.write_dataset`: a
blocked dataset is refused, `DatasetBlocked`; a breaking change raises `SchemaBlocked`, an
accepted one is applied) and answers its manifest entry, which is also appended to the
output manifest's `tables` (after the entries the function returns there itself, if any):
the worker records each in the catalog. Both errors cross the process boundary with their
details and stay terminal. `write_table`'s ValueError (a bad merge batch...) is the
function's own exception (transient) unless it handles it.

Output: the child's file descriptors 1 and 2 are pipes read by two threads of the child, so
`print`, `logging`, C libraries and the subprocesses the function starts all land there;
each non-blank line becomes a `LOG` event (`info` for stdout, `warning` for stderr, payload
`{"stream": ...}`, at most `MAX_LINE_CHARS` characters), sent in batches of the lines read
at once. After `MAX_OUTPUT_LINES` lines in an attempt the rest is dropped, announced by one
`LOG` warning with payload `{"truncated": true, "limit": ...}`. Python's stdout is made
line-buffered; before the result is sent the streams are flushed and the pipes drained, so
an attempt's output precedes its end in the trail.

Code: when the worker checked out the run's git sha (`ctx.code_dir`, executor/checkout.py),
that directory comes first on the child's `sys.path`: the entrypoint's module, and what it
imports that the child has not imported yet, come from the run's commit (the `executor`
package itself stays the worker's). `PythonContext.code_dir` tells the function where it is.

Isolation: the function runs in a process started with multiprocessing's `spawn` method
(started ahead of need and kept warm, see `_Spares`: a phase does not wait ≈ 0.4 s for an
interpreter and pyarrow / deltalake / duckdb imports), never `fork` (deltalake's tokio
runtime panics in a forked child; a fork would also copy the worker's threads and sockets).
The child makes itself the leader of a new process group, so that everything it starts can
be killed with it. `emit` and `progress` travel to the parent
over a pipe, which the parent drains while it waits, calling the phase context's `emit` /
`progress` in the order the child sent them. The catalog's states of the workspace's
datasets (`ctx.datasets`) go to the child with the rest of the context.

Outcomes:

- a result received: success, whatever the exit code the child ends with (delta-rs can abort
  the interpreter at exit with rc 134 after a correct commit, delta-rs #2184). The child
  exits deliberately (`os._exit`) right after sending its result, so interpreter teardown and
  leftover non-daemon threads cannot hang or fail the phase;
- the timeout passed (`ctx.timeout_s`, counted from the start of `run`, spawn included): the
  process group is killed, `PhaseTimeout`;
- `ctx.cancel` set: the process group is killed, `PhaseCancelled` (within about
  `poll_interval` seconds);
- the function raised `TerminalPhaseError` (or a subclass): `TerminalPhaseError` with its
  message; any other exception: `TransientPhaseError` carrying the exception's type, message
  and traceback text (`error_type`, `detail`);
- a bad entrypoint (no `module:function` shape, module not found, attribute missing, not
  callable) or a module that fails to import with `ImportError` / `SyntaxError`:
  `TerminalPhaseError`;
- a return value that is not a dict or not strict JSON: `TerminalPhaseError`;
- the child died without a result (`os._exit(3)`, killed, crashed): `TransientPhaseError`
  naming the exit code or signal.

When the phase ends, however it ends, the child's process group is killed: a phase leaves no
processes behind.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import json
import math
import mimetypes
import multiprocessing
import multiprocessing.connection
import os
import re
import select
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from executor import datasets as catalog
from executor.kinds.base import (
    EVENT_LEVELS,
    Connection,
    DatasetBlocked,
    EventLevel,
    OutputFile,
    PhaseCancelled,
    PhaseContext,
    PhaseError,
    PhaseResult,
    PhaseTimeout,
    SchemaBlocked,
    TerminalPhaseError,
    TransientPhaseError,
    register_kind,
)
from executor.tables import WriteMode

__all__ = ["MAX_LINE_CHARS", "MAX_OUTPUT_LINES", "PythonContext", "PythonKind",
           "parse_entrypoint"]

DEFAULT_MEDIA_TYPE = "application/octet-stream"
_DRAIN_BATCH = 1000
MAX_OUTPUT_LINES = 2000
"""Lines of stdout and stderr an attempt sends as events; the rest is dropped."""
MAX_LINE_CHARS = 4000
"""A longer line is cut (and a line without a newline is sent in pieces of this size)."""
_PUMP_POLL_S = 0.05
_PUMP_CLOSE_S = 2.0
_DOTTED = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")

# Messages from the child, each a tuple whose first item is its tag.
_EVENT = "event"  # (tag, type, message, level, payload)
_PROGRESS = "progress"  # (tag, value)
_RESULT = "result"  # (tag, manifest as JSON text)
_LINES = "lines"  # (tag, stream, level, [line, ...]): the child's stdout or stderr
_ERROR = "error"  # (tag, terminal: bool, error_type, message, traceback text, details)


def parse_entrypoint(entrypoint: object) -> tuple[str, str]:
    """`(module, attribute path)` of `"package.module:function"` (the attribute may be
    dotted, `module:Class.method`); a `TerminalPhaseError` when it has another shape."""
    if not isinstance(entrypoint, str):
        raise TerminalPhaseError(
            f"python entrypoint must be a string 'module:function', got {entrypoint!r}"
        )
    module, sep, attr = entrypoint.partition(":")
    if not sep or not _DOTTED.match(module) or not _DOTTED.match(attr):
        raise TerminalPhaseError(
            f"python entrypoint {entrypoint!r} is not of the form 'package.module:function'"
        )
    return module, attr


@dataclass(frozen=True)
class _ChildSpec:
    """What the child needs, pickled to it by `spawn`."""

    entrypoint: str
    run_id: str
    phase: str
    attempt: int
    params: Mapping[str, Any]
    args: Mapping[str, Any]
    inputs: Mapping[str, Any]
    input_manifest: Mapping[str, Any]
    git_sha: str | None
    output_dir: Path
    timeout_s: float | None
    connections: Mapping[str, Connection] = field(repr=False)
    datasets: Mapping[str, str] = field(default_factory=dict)
    code_dir: Path | None = None


@dataclass(frozen=True)
class PythonContext:
    """What a python entrypoint receives (in its subprocess). `emit` and `progress` are
    thread-safe and send to the worker at once; `connections` hold secrets: never log them."""

    run_id: str
    phase: str
    attempt: int
    params: Mapping[str, Any]
    args: Mapping[str, Any]
    """`params["args"]`: the entrypoint's own arguments."""
    inputs: Mapping[str, Any]
    input_manifest: Mapping[str, Any]
    git_sha: str | None
    output_dir: Path
    timeout_s: float | None
    connections: Mapping[str, Connection] = field(repr=False)
    _send: Callable[[tuple[Any, ...]], None] = field(repr=False)
    datasets: Mapping[str, str] = field(default_factory=dict)
    """The catalog's datasets that are not active, by name: `blocked` or `accepted`."""
    _tables: list[dict[str, Any]] = field(default_factory=list, repr=False)
    code_dir: Path | None = None
    """The checkout of the run's git sha the entrypoint was imported from (None: the
    worker's own code); e.g. for files that live beside the code."""

    def write_table(
        self,
        name: str,
        uri: str | os.PathLike[str],
        data: Any,
        *,
        mode: WriteMode,
        keys: list[str] | None = None,
        layer: str | None = None,
        partition_by: list[str] | None = None,
    ) -> dict[str, Any]:
        """Write `data` (a pyarrow Table, a RecordBatchReader or a list of dicts) to the
        Delta table `name` (its catalog name, e.g. `bronze.sale_order`) at `uri`, under the
        catalog's rules; answers the table's manifest entry, also added to the phase's
        `tables` (see the module's docstring). Raises `DatasetBlocked` / `SchemaBlocked`."""
        written = catalog.write_dataset(
            self.datasets, name, uri, data, mode=mode, keys=keys, layer=layer,
            partition_by=partition_by,
            commit_metadata={"controlroom.run_id": self.run_id,
                             "controlroom.phase": self.phase,
                             "controlroom.attempt": self.attempt})
        self._tables.append(written.entry)
        entry: dict[str, Any] = json.loads(json.dumps(written.entry))  # the caller's copy
        return entry

    def emit(
        self,
        type: str,
        message: str,
        level: EventLevel = "info",
        payload: Mapping[str, Any] | None = None,
    ) -> None:
        """One event of the phase; `payload` must be a JSON object (checked here)."""
        if level not in EVENT_LEVELS:
            raise ValueError(f"event level must be one of {sorted(EVENT_LEVELS)}, not {level!r}")
        if payload is not None:
            if not isinstance(payload, Mapping):
                raise TypeError("event payload must be a JSON object (a mapping)")
            payload = json.loads(json.dumps(payload, allow_nan=False))
        self._send((_EVENT, str(type), str(message), level, payload))

    def progress(self, value: float | Mapping[str, Any]) -> None:
        """Progress of the phase: a fraction in [0, 1] or a JSON object."""
        if isinstance(value, Mapping):
            sent: float | dict[str, Any] = json.loads(json.dumps(value, allow_nan=False))
        else:
            sent = float(value)
            if not (math.isfinite(sent) and 0.0 <= sent <= 1.0):
                raise ValueError(f"progress fraction must be within [0, 1], not {value!r}")
        self._send((_PROGRESS, sent))


PRELOAD = ("pyarrow", "pyarrow.compute", "pyarrow.dataset", "deltalake", "duckdb", "psycopg")
"""Third-party modules a phase process imports before it is given a phase (never the
pipelines' own modules: those must come from the run's checkout)."""


@dataclass
class _Child:
    process: Any                                     # multiprocessing's SpawnProcess
    spec_writer: multiprocessing.connection.Connection
    reader: multiprocessing.connection.Connection
    writer: multiprocessing.connection.Connection


class _Spares:
    """Phase processes started ahead of need, so that a python phase does not wait for an
    interpreter to start and import pyarrow, deltalake and the rest (≈ 0.4 s a phase).

    `take()` answers a waiting spare (or starts one when none waits) and starts a
    replacement in the background. A spare is an ordinary phase process that has not been
    sent its spec yet: it leads its own process group and dies with the worker, like any
    phase process. `CONTROL_ROOM_PYTHON_SPARES` (default 2; 0: none) caps how many wait.
    At exit the waiting spares are told to go (EOF on their spec pipe)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._lock = threading.Lock()
        self._waiting: list[_Child] = []
        self._closed = False

    def _start(self) -> _Child:
        mp = multiprocessing.get_context("spawn")
        spec_reader, spec_writer = mp.Pipe(duplex=False)
        reader, writer = mp.Pipe(duplex=False)
        process = mp.Process(target=_child_boot, args=(spec_reader, writer, os.getpid()),
                             name="python-phase", daemon=False)
        process.start()
        spec_reader.close()     # the child holds the only read end of its spec pipe
        writer.close()          # and the only write end of its result pipe: EOF when gone
        return _Child(process, spec_writer, reader, writer)

    def take(self) -> _Child:
        with self._lock:
            while self._waiting:
                child = self._waiting.pop(0)
                if child.process.is_alive():
                    break
                self._discard(child)
            else:
                child = self._start()
            if self.size > 0 and not self._closed:
                threading.Thread(target=self._refill, name="python-spares",
                                 daemon=True).start()
        return child

    def _refill(self) -> None:
        """Start spares until `size` wait (one at a time: the machine is busy with phases)."""
        while True:
            with self._lock:
                if self._closed or len(self._waiting) >= self.size:
                    return
            child = self._start()
            with self._lock:
                if self._closed or len(self._waiting) >= self.size:
                    self._discard(child)
                    return
                self._waiting.append(child)

    @staticmethod
    def _discard(child: _Child) -> None:
        child.spec_writer.close()
        with contextlib.suppress(Exception):
            child.process.join(5)
            if child.process.exitcode is None:
                child.process.kill()
                child.process.join()
        child.reader.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            waiting, self._waiting = self._waiting, []
        for child in waiting:
            self._discard(child)


SPARES = _Spares(int(os.environ.get("CONTROL_ROOM_PYTHON_SPARES", "2") or 0))
atexit.register(SPARES.close)   # after multiprocessing's own exit handler is registered, so first


@register_kind
class PythonKind:
    """Runs `params.entrypoint` in a spawned subprocess: see the module's docstring."""

    NAME: ClassVar[str] = "python"
    CONNECTION_TYPES: ClassVar[frozenset[str]] = frozenset()
    """Any: the entrypoint receives every connection of the phase."""

    def __init__(self, *, poll_interval: float = 0.1, exit_grace: float = 5.0) -> None:
        self.poll_interval = poll_interval
        """How often the cancellation flag and the timeout are checked (seconds)."""
        self.exit_grace = exit_grace
        """How long the child may take to exit after sending its result before it is killed."""

    def run(self, ctx: PhaseContext) -> PhaseResult:
        started = time.monotonic()
        entrypoint = ctx.params.get("entrypoint")
        parse_entrypoint(entrypoint)
        args = ctx.params.get("args") or {}
        if not isinstance(args, Mapping):
            raise TerminalPhaseError(f"python params.args must be a JSON object, got {args!r}")
        assert isinstance(entrypoint, str)
        ctx.output_dir.mkdir(parents=True, exist_ok=True)
        spec = _ChildSpec(
            entrypoint=entrypoint,
            run_id=ctx.run_id,
            phase=ctx.phase,
            attempt=ctx.attempt,
            params=dict(ctx.params),
            args=dict(args),
            inputs=dict(ctx.inputs),
            input_manifest=dict(ctx.input_manifest),
            git_sha=ctx.git_sha,
            output_dir=ctx.output_dir,
            timeout_s=ctx.timeout_s,
            connections=dict(ctx.connections),
            datasets=dict(ctx.datasets),
            code_dir=ctx.code_dir,
        )
        if ctx.cancel.is_set():
            raise PhaseCancelled(f"phase {ctx.phase!r} was cancelled before it started")
        manifest = self._run_child(ctx, spec, started)
        return PhaseResult(output_manifest=manifest, outputs=collect_outputs(ctx.output_dir))

    def _run_child(self, ctx: PhaseContext, spec: _ChildSpec, started: float) -> dict[str, Any]:
        child = SPARES.take()
        process, reader, writer = child.process, child.reader, child.writer
        deadline = None if ctx.timeout_s is None else started + ctx.timeout_s
        manifest_text: str | None = None
        error: tuple[bool, str, str, str, dict[str, Any] | None] | None = None
        exitcode: int | None = None
        try:
            try:
                child.spec_writer.send(spec)
            except (OSError, EOFError):     # a spare that died while it waited: no result
                pass
            finally:
                child.spec_writer.close()
            pid = process.pid
            assert pid is not None
            open_pipe = True
            finals: list[tuple[Any, ...]] = []  # the child's result or error
            while True:
                waitables: list[Any] = (
                    [process.sentinel, reader] if open_pipe else [process.sentinel]
                )
                ready = multiprocessing.connection.wait(waitables, timeout=self.poll_interval)
                if open_pipe and reader in ready:
                    open_pipe = _drain(ctx, reader, finals)
                if finals:
                    process.join(self.exit_grace)  # then killed below, whatever its state
                    break
                if process.sentinel in ready:
                    # all it sent before exiting (a process it forked may hold the pipe open)
                    while open_pipe and not finals and reader.poll():
                        open_pipe = _drain(ctx, reader, finals)
                    break
                if ctx.cancel.is_set():
                    _kill_group(pid)
                    raise PhaseCancelled(f"phase {ctx.phase!r} was cancelled; its process killed")
                if deadline is not None and time.monotonic() >= deadline:
                    _kill_group(pid)
                    raise PhaseTimeout(
                        f"phase {ctx.phase!r} exceeded its timeout of {ctx.timeout_s:g} s; "
                        "its process was killed"
                    )
            for final in finals[:1]:
                if final[0] == _RESULT:
                    manifest_text = final[1]
                else:
                    error = (final[1], final[2], final[3], final[4], final[5])
        finally:
            if process.pid is not None:
                # leftovers, or the child itself on an early exit
                _kill_group(process.pid, leader_reaped=process.exitcode is not None)
                process.join()
                exitcode = process.exitcode
                process.close()
            reader.close()
            writer.close()
        if manifest_text is not None:
            manifest: dict[str, Any] = json.loads(manifest_text)
            return manifest
        if error is not None:
            raise _rebuild_error(*error)
        raise TransientPhaseError(
            f"the python process of phase {ctx.phase!r} {_describe_exit(exitcode)} without a result"
        )


def _drain(
    ctx: PhaseContext,
    reader: multiprocessing.connection.Connection,
    finals: list[tuple[Any, ...]],
) -> bool:
    """Read the messages waiting on the pipe (at most `_DRAIN_BATCH`): events and progress are
    passed on at once, in order; the result or error is appended to `finals`. False once the
    pipe is closed."""
    try:
        for _ in range(_DRAIN_BATCH):  # then back to checking cancellation and the timeout
            if not reader.poll():
                break
            message = reader.recv()
            tag = message[0]
            if tag == _EVENT:
                ctx.emit(message[1], message[2], level=message[3], payload=message[4])
            elif tag == _PROGRESS:
                ctx.progress(message[1])
            elif tag == _LINES:
                for line in message[3]:
                    ctx.emit("LOG", line, level=message[2], payload={"stream": message[1]})
            else:
                finals.append(message)
                return True
    except (EOFError, OSError):
        return False
    return True


def collect_outputs(output_dir: Path) -> list[OutputFile]:
    """Every regular file under `output_dir` (recursively, symlinks skipped), by name."""
    outputs: list[OutputFile] = []
    for path in sorted(output_dir.rglob("*")):
        if path.is_symlink() or not path.is_file():
            continue
        name = path.relative_to(output_dir).as_posix()
        media_type = mimetypes.guess_type(name)[0] or DEFAULT_MEDIA_TYPE
        outputs.append(OutputFile(path=path, name=name, media_type=media_type))
    return outputs


def _describe_exit(exitcode: int | None) -> str:
    if exitcode is None:
        return "did not exit"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        return f"was killed by {name} (exit code {exitcode})"
    return f"exited with code {exitcode}"


def _kill_group(pid: int, *, leader_reaped: bool = False) -> None:
    """SIGKILL the process group the child leads (the child and everything it started), and
    the child itself in case it has not made its group yet. Never the worker's own group: the
    child's pid is a group id only once the child made it one. A reaped child's pid is not
    signalled (it may have been reused); its group is, while members remain."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    if not leader_reaped:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def _die_with_parent(parent: int, interval: float = 0.2) -> None:
    """Kill this process group as soon as the worker that started it is gone.

    A worker may be SIGKILLed; its phase must not live on as an orphan writing beside the
    attempt that another worker makes after the lease expires. The child leads its own process
    group, so this takes its own children with it.
    """

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval)
        os.killpg(0, signal.SIGKILL)

    threading.Thread(target=watch, name="die-with-parent", daemon=True).start()


def _child_boot(spec_reader: multiprocessing.connection.Connection,
                writer: multiprocessing.connection.Connection, parent: int) -> None:
    """A phase process: lead a process group, watch the worker, import what phases use,
    then wait for the one spec it will run (EOF: the worker no longer needs it; exit)."""
    os.setpgid(0, 0)
    _die_with_parent(parent)
    for module in PRELOAD:
        with contextlib.suppress(ImportError):
            importlib.import_module(module)
    try:
        spec = spec_reader.recv()
    except (EOFError, OSError):
        os._exit(0)
    spec_reader.close()
    _child_main(spec, writer)


def _child_main(spec: _ChildSpec, writer: multiprocessing.connection.Connection) -> None:
    """The child's whole life once it has its spec: run the entrypoint, send one result or
    error, exit."""
    lock = threading.Lock()

    def send(message: tuple[Any, ...]) -> None:
        with lock:
            writer.send(message)

    capture = _OutputCapture(send)
    code = 0
    try:
        capture.start()
        outcome = _run_entrypoint(spec, send)
        capture.close()  # the attempt's output before its end
        send(outcome)
    except BaseException:  # the pipe broke: nothing more can be reported
        code = 1
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code)


def _run_entrypoint(spec: _ChildSpec, send: Callable[[tuple[Any, ...]], None]) -> tuple[Any, ...]:
    module_name, attr_path = parse_entrypoint(spec.entrypoint)
    if spec.code_dir is not None:     # the run's code first: its modules shadow the worker's
        sys.path.insert(0, str(spec.code_dir))
        importlib.invalidate_caches()
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (module_name + ".").startswith(exc.name + "."):
            return _error(
                True, exc, f"python entrypoint {spec.entrypoint!r}: module {exc.name!r} not found"
            )
        return _error(
            True,
            exc,
            f"python entrypoint {spec.entrypoint!r}: importing {module_name!r} failed: {exc}",
        )
    except (ImportError, SyntaxError) as exc:
        return _error(
            True,
            exc,
            f"python entrypoint {spec.entrypoint!r}: importing "
            f"{module_name!r} failed: {type(exc).__name__}: {exc}",
        )
    except BaseException as exc:
        return _user_error(exc, f"importing {module_name!r}")
    target: Any = module
    for part in attr_path.split("."):
        try:
            target = getattr(target, part)
        except AttributeError as exc:
            return _error(
                True,
                exc,
                f"python entrypoint {spec.entrypoint!r}: {module_name!r} "
                f"has no attribute {attr_path!r}",
            )
    if not callable(target):
        return (
            _ERROR,
            True,
            "TypeError",
            f"python entrypoint {spec.entrypoint!r} is not callable (a {type(target).__name__})",
            "",
            None,
        )
    ctx = PythonContext(
        run_id=spec.run_id,
        phase=spec.phase,
        attempt=spec.attempt,
        params=spec.params,
        args=spec.args,
        inputs=spec.inputs,
        input_manifest=spec.input_manifest,
        git_sha=spec.git_sha,
        output_dir=spec.output_dir,
        timeout_s=spec.timeout_s,
        code_dir=spec.code_dir,
        connections=spec.connections,
        _send=send,
        datasets=spec.datasets,
    )
    try:
        value = target(ctx)
    except BaseException as exc:
        return _user_error(exc, spec.entrypoint)
    if value is None:
        value = {}
    if not isinstance(value, dict):
        return (
            _ERROR,
            True,
            "TypeError",
            f"python entrypoint {spec.entrypoint!r} returned a {type(value).__name__}, "
            "not a dict (the output manifest)",
            "",
            None,
        )
    if ctx._tables:
        declared = value.get("tables", [])
        if not isinstance(declared, list):
            return (_ERROR, True, "TypeError",
                    f"python entrypoint {spec.entrypoint!r} returned 'tables' that is not a "
                    "list, while it wrote tables with ctx.write_table", "", None)
        value = {**value, "tables": declared + [t for t in ctx._tables if t not in declared]}
    try:
        text = json.dumps(value, allow_nan=False, sort_keys=True)
    except (TypeError, ValueError) as exc:
        return _error(
            True,
            exc,
            f"python entrypoint {spec.entrypoint!r} returned an output "
            f"manifest that is not JSON-serialisable: {exc}",
        )
    return (_RESULT, text)


def _error(terminal: bool, exc: BaseException, message: str,
           details: dict[str, Any] | None = None) -> tuple[Any, ...]:
    return (_ERROR, terminal, type(exc).__qualname__, message, _traceback_text(exc), details)


def _user_error(exc: BaseException, where: str) -> tuple[Any, ...]:
    """An exception the entrypoint raised: terminal for `TerminalPhaseError`, else transient.
    The catalog's refusals keep their details (`_rebuild_error` makes them again)."""
    if isinstance(exc, SchemaBlocked):
        return _error(True, exc, exc.message, {
            "class": "SchemaBlocked", "table": exc.table, "uri": exc.uri,
            "changes": exc.changes, "schema": exc.schema, "layer": exc.layer})
    if isinstance(exc, DatasetBlocked):
        return _error(True, exc, exc.message,
                      {"class": "DatasetBlocked", "table": exc.table, "uri": exc.uri})
    if isinstance(exc, TerminalPhaseError):
        return _error(True, exc, str(exc))
    return _error(False, exc, f"{where} raised {type(exc).__name__}: {exc}")


def _rebuild_error(terminal: bool, error_type: str, message: str, detail: str,
                   details: dict[str, Any] | None) -> PhaseError:
    """The parent's `PhaseError` for an error the child reported."""
    kind = (details or {}).get("class")
    if details is not None and kind == "SchemaBlocked":
        return SchemaBlocked(message, table=details["table"], uri=details["uri"],
                             changes=details["changes"], schema=details["schema"],
                             layer=details["layer"], error_type=error_type, detail=detail)
    if details is not None and kind == "DatasetBlocked":
        return DatasetBlocked(message, table=details["table"], uri=details["uri"],
                              error_type=error_type, detail=detail)
    cls = TerminalPhaseError if terminal else TransientPhaseError
    return cls(message, error_type=error_type, detail=detail)


class _OutputCapture:
    """The child's file descriptors 1 and 2 redirected into pipes whose lines two threads
    send to the parent (`_LINES`), capped at `MAX_OUTPUT_LINES` per attempt (module
    docstring). `close` flushes Python's streams and drains what was written before it."""

    def __init__(self, send: Callable[[tuple[Any, ...]], None],
                 limit: int = MAX_OUTPUT_LINES) -> None:
        self._send = send
        self._left = limit
        self._limit = limit
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._closed = False
        self._drained: list[threading.Event] = []

    def start(self) -> None:
        for fd, stream, level in ((1, "stdout", "info"), (2, "stderr", "warning")):
            read, write = os.pipe()
            os.dup2(write, fd)
            os.close(write)
            drained = threading.Event()
            self._drained.append(drained)
            threading.Thread(target=self._pump, args=(read, stream, level, drained),
                             name=f"capture-{stream}", daemon=True).start()
        # a worker started without stdout / stderr gives its children None for them
        if sys.stdout is None:
            sys.stdout = open(1, "w", encoding="utf-8", errors="replace", closefd=False)  # noqa: SIM115
        if sys.stderr is None:
            sys.stderr = open(2, "w", encoding="utf-8", errors="replace", closefd=False)  # noqa: SIM115
        for text_stream in (sys.stdout, sys.stderr):
            if hasattr(text_stream, "reconfigure"):
                text_stream.reconfigure(line_buffering=True)

    def close(self) -> None:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        self._closing.set()
        deadline = time.monotonic() + _PUMP_CLOSE_S
        for drained in self._drained:
            drained.wait(max(deadline - time.monotonic(), 0.0))
        with self._lock:
            self._closed = True  # what processes left behind write now is dropped

    def _pump(self, fd: int, stream: str, level: str, drained: threading.Event) -> None:
        """Read `fd` until EOF. Once closing began, the first time the pipe is empty the
        last partial line is sent and `drained` set; reading goes on (and `_lines` drops
        it), so that processes the function left running never block on a full pipe."""
        pending = b""
        while True:
            ready, _, _ = select.select([fd], [], [], _PUMP_POLL_S)
            chunk = os.read(fd, 65536) if ready else b""
            if ready and not chunk:
                break
            if chunk:
                *lines, pending = (pending + chunk).split(b"\n")
                while len(pending) > MAX_LINE_CHARS * 4:  # no newline yet: in pieces
                    lines.append(pending[: MAX_LINE_CHARS * 4])
                    pending = pending[MAX_LINE_CHARS * 4:]
                self._lines(stream, level, lines)
            elif self._closing.is_set() and not drained.is_set():
                self._lines(stream, level, [pending])
                pending = b""
                drained.set()
        self._lines(stream, level, [pending])
        drained.set()

    def _lines(self, stream: str, level: str, raw: list[bytes]) -> None:
        batch: list[str] = []
        truncated = False
        with self._lock:
            if self._closed:
                return
            for item in raw:
                text = item.decode("utf-8", "replace").rstrip("\r")
                if not text.strip():
                    continue
                if self._left <= 0:
                    truncated = self._left == 0
                    self._left = -1
                    break
                self._left -= 1
                if len(text) > MAX_LINE_CHARS:
                    text = text[: MAX_LINE_CHARS - 1] + "…"
                batch.append(text)
            if batch:
                self._send((_LINES, stream, level, batch))
            if truncated:
                self._send((_EVENT, "LOG",
                            f"output truncated: more than {self._limit} lines of stdout and "
                            "stderr in this attempt; the rest is dropped", "warning",
                            {"stream": stream, "truncated": True, "limit": self._limit}))


def _traceback_text(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc))
