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
        (ctx.output_dir / "rows.json").write_text("[]")
        return {"rows": 10}

Isolation: the function runs in a process started with multiprocessing's `spawn` method,
never `fork` (deltalake's tokio runtime panics in a forked child; a fork would also copy the
worker's threads and sockets). The child makes itself the leader of a new process group, so
that everything it starts can be killed with it. `emit` and `progress` travel to the parent
over a pipe, which the parent drains while it waits, calling the phase context's `emit` /
`progress` in the order the child sent them.

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
processes behind. The child's stdout and stderr are the worker's.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import math
import mimetypes
import multiprocessing
import multiprocessing.connection
import os
import re
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from executor.kinds.base import (
    EVENT_LEVELS,
    Connection,
    EventLevel,
    OutputFile,
    PhaseCancelled,
    PhaseContext,
    PhaseResult,
    PhaseTimeout,
    TerminalPhaseError,
    TransientPhaseError,
    register_kind,
)

__all__ = ["PythonContext", "PythonKind", "parse_entrypoint"]

DEFAULT_MEDIA_TYPE = "application/octet-stream"
_DRAIN_BATCH = 1000
_DOTTED = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")

# Messages from the child, each a tuple whose first item is its tag.
_EVENT = "event"  # (tag, type, message, level, payload)
_PROGRESS = "progress"  # (tag, value)
_RESULT = "result"  # (tag, manifest as JSON text)
_ERROR = "error"  # (tag, terminal: bool, error_type, message, traceback text)


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
        )
        if ctx.cancel.is_set():
            raise PhaseCancelled(f"phase {ctx.phase!r} was cancelled before it started")
        manifest = self._run_child(ctx, spec, started)
        return PhaseResult(output_manifest=manifest, outputs=collect_outputs(ctx.output_dir))

    def _run_child(self, ctx: PhaseContext, spec: _ChildSpec, started: float) -> dict[str, Any]:
        mp = multiprocessing.get_context("spawn")
        reader, writer = mp.Pipe(duplex=False)
        process = mp.Process(
            target=_child_main,
            args=(spec, writer, os.getpid()),
            name=f"phase-{ctx.phase}-{ctx.attempt}",
            daemon=False,
        )
        deadline = None if ctx.timeout_s is None else started + ctx.timeout_s
        manifest_text: str | None = None
        error: tuple[bool, str, str, str] | None = None
        exitcode: int | None = None
        try:
            process.start()
            writer.close()  # the child holds the only write end: EOF when it is gone
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
                    error = (final[1], final[2], final[3], final[4])
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
            terminal, error_type, message, detail = error
            cls = TerminalPhaseError if terminal else TransientPhaseError
            raise cls(message, error_type=error_type, detail=detail)
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


def _child_main(spec: _ChildSpec, writer: multiprocessing.connection.Connection,
                parent: int) -> None:
    """The child's whole life: run the entrypoint, send one result or error, exit."""
    os.setpgid(0, 0)
    _die_with_parent(parent)
    lock = threading.Lock()

    def send(message: tuple[Any, ...]) -> None:
        with lock:
            writer.send(message)

    code = 0
    try:
        send(_run_entrypoint(spec, send))
    except BaseException:  # the pipe broke: nothing more can be reported
        code = 1
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code)


def _run_entrypoint(spec: _ChildSpec, send: Callable[[tuple[Any, ...]], None]) -> tuple[Any, ...]:
    module_name, attr_path = parse_entrypoint(spec.entrypoint)
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
        connections=spec.connections,
        _send=send,
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
        )
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


def _error(terminal: bool, exc: BaseException, message: str) -> tuple[Any, ...]:
    return (_ERROR, terminal, type(exc).__qualname__, message, _traceback_text(exc))


def _user_error(exc: BaseException, where: str) -> tuple[Any, ...]:
    """An exception the entrypoint raised: terminal for `TerminalPhaseError`, else transient."""
    if isinstance(exc, TerminalPhaseError):
        return _error(True, exc, str(exc))
    return _error(False, exc, f"{where} raised {type(exc).__name__}: {exc}")


def _traceback_text(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc))
