"""The `python` kind: a function `module:function` run in its own subprocess.

What it does, its params, its outcomes: docs/kinds.md ("python"). The parent's side lives
here (send the spec, relay events, enforce cancel and timeout, kill the process group); the
child's in `child.py`, the context it builds in `context.py`, the warm processes in
`spares.py`.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import multiprocessing.connection
import os
import signal
import time
from collections.abc import Mapping
from typing import Any, ClassVar

from executor.kinds.base import (
    DatasetBlocked,
    KindOptions,
    PhaseCancelled,
    PhaseContext,
    PhaseError,
    PhaseResult,
    PhaseTimeout,
    SchemaBlocked,
    TerminalPhaseError,
    TransientPhaseError,
    collect_outputs,
)
from executor.kinds.python.context import (
    EVENT,
    LINES,
    PROGRESS,
    RESULT,
    ChildSpec,
    parse_entrypoint,
)
from executor.kinds.python.spares import SparePool
from executor.secrets import SecretPolicy

__all__ = ["PythonKind", "kill_group"]


_DRAIN_BATCH = 1000


class PythonKind:
    """Runs `params.entrypoint` in a spawned subprocess (docs/kinds.md, "python").

    Not started (a fresh instance), each phase starts its process when it begins. Started
    (`start`, by the worker that runs the kind), up to `python_spares` processes wait ready;
    `close` ends them."""

    NAME: ClassVar[str] = "python"
    CONNECTION_TYPES: ClassVar[frozenset[str]] = frozenset()
    """Any: the entrypoint receives every connection of the phase."""

    def __init__(self, *, poll_interval: float = 0.1, exit_grace: float = 5.0) -> None:
        self.poll_interval = poll_interval
        """How often the cancellation flag and the timeout are checked (seconds)."""
        self.exit_grace = exit_grace
        """How long the child may take to exit after sending its result before it is killed."""
        self._policy = SecretPolicy()
        """The worker's secret policy (`KindOptions.secret_allow`): what a phase process's
        environment leaves out, besides `CONTROL_ROOM_*`."""
        self._spares = SparePool(0, self._policy)

    @property
    def spares(self) -> SparePool:
        """Where this kind's phases take their processes from."""
        return self._spares

    def start(self, options: KindOptions | None = None) -> None:
        """Keep `options.python_spares` (default 2) phase processes started ahead of need,
        until `close` (or the interpreter's exit)."""
        options = options or KindOptions()
        size = options.python_spares
        if size < 0:
            raise ValueError(f"python_spares must be at least 0, not {size}")
        self.close()
        self._policy = SecretPolicy.parse(options.secret_allow)
        self._spares = SparePool(size, self._policy)
        # registered after multiprocessing's own exit handler, so it runs first
        atexit.register(self._spares.close)

    def close(self) -> None:
        """End the waiting spare processes; later phases start their own."""
        spares, self._spares = self._spares, SparePool(0, self._policy)
        atexit.unregister(spares.close)
        spares.close()

    def run(self, ctx: PhaseContext) -> PhaseResult:
        started = time.monotonic()
        entrypoint = ctx.params.get("entrypoint")
        parse_entrypoint(entrypoint)
        args = ctx.params.get("args") or {}
        if not isinstance(args, Mapping):
            raise TerminalPhaseError(f"python params.args must be a JSON object, got {args!r}")
        assert isinstance(entrypoint, str)
        ctx.output_dir.mkdir(parents=True, exist_ok=True)
        spec = ChildSpec(
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
            lake_root=ctx.lake_root,
        )
        if ctx.cancel.is_set():
            raise PhaseCancelled(f"phase {ctx.phase!r} was cancelled before it started")
        manifest = self._run_child(ctx, spec, started)
        return PhaseResult(output_manifest=manifest, outputs=collect_outputs(ctx.output_dir))

    def _run_child(self, ctx: PhaseContext, spec: ChildSpec, started: float) -> dict[str, Any]:
        child = self._spares.take()
        process, reader, writer = child.process, child.reader, child.writer
        deadline = None if ctx.timeout_s is None else started + ctx.timeout_s
        manifest_text: str | None = None
        error: tuple[bool, str, str, str, dict[str, Any] | None] | None = None
        exitcode: int | None = None
        try:
            # a spare that died while it waited: no result (below)
            with contextlib.suppress(OSError, EOFError):
                child.spec_writer.send(spec)
            # the spec pipe stays open while the phase runs: it is the child's lifeline (EOF
            # the moment this worker dies kills the child: child.watch_lifeline)
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
                    kill_group(pid)
                    raise PhaseCancelled(f"phase {ctx.phase!r} was cancelled; its process killed")
                if deadline is not None and time.monotonic() >= deadline:
                    kill_group(pid)
                    raise PhaseTimeout(
                        f"phase {ctx.phase!r} exceeded its timeout of {ctx.timeout_s:g} s; "
                        "its process was killed"
                    )
            for final in finals[:1]:
                if final[0] == RESULT:
                    manifest_text = final[1]
                else:
                    error = (final[1], final[2], final[3], final[4], final[5])
        finally:
            if process.pid is not None:
                # leftovers, or the child itself on an early exit
                kill_group(process.pid, leader_reaped=process.exitcode is not None)
                process.join()
                exitcode = process.exitcode
                process.close()
            child.spec_writer.close()
            reader.close()
            writer.close()
        if manifest_text is not None:
            manifest: dict[str, Any] = json.loads(manifest_text)
            return manifest
        if error is not None:
            raise rebuild_error(*error)
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
            if tag == EVENT:
                ctx.emit(message[1], message[2], level=message[3], payload=message[4])
            elif tag == PROGRESS:
                ctx.progress(message[1])
            elif tag == LINES:
                for line in message[3]:
                    ctx.emit("LOG", line, level=message[2], payload={"stream": message[1]})
            else:
                finals.append(message)
                return True
    except (EOFError, OSError):
        return False
    return True


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


def kill_group(pid: int, *, leader_reaped: bool = False) -> None:
    """SIGKILL the process group the child leads (the child and everything it started), and
    the child itself in case it has not made its group yet. Never the worker's own group: the
    child's pid is a group id only once the child made it one. A reaped child's pid is not
    signalled (it may have been reused); its group is, while members remain."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    if not leader_reaped:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def rebuild_error(terminal: bool, error_type: str, message: str, detail: str,
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
