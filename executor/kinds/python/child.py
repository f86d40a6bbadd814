"""The phase's process: it leads its own process group, watches the worker, preloads the
data libraries, then runs the one entrypoint it is sent and reports back (docs/kinds.md).
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib
import json
import multiprocessing.connection
import os
import select
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

from executor.kinds.base import DatasetBlocked, SchemaBlocked, TerminalPhaseError
from executor.kinds.python.context import (
    ERROR,
    EVENT,
    LINES,
    MAX_LINE_CHARS,
    MAX_OUTPUT_LINES,
    RESULT,
    ChildSpec,
    PythonContext,
    parse_entrypoint,
)

__all__ = ["PRELOAD", "OutputCapture", "boot"]


_PUMP_POLL_S = 0.05
_PUMP_CLOSE_S = 2.0

PRELOAD = ("pyarrow", "pyarrow.compute", "pyarrow.dataset", "deltalake", "duckdb", "psycopg")
"""Third-party modules a phase process imports before it is given a phase (never the
pipelines' own modules: those must come from the run's checkout)."""


def die_with_parent(parent: int, interval: float = 0.2) -> None:
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


def watch_lifeline(spec_reader: multiprocessing.connection.Connection) -> None:
    """Kill this process group the moment the worker is gone, once the phase runs.

    The worker keeps the write end of the spec pipe open while the phase runs and holds its
    only copy, so the kernel ends the pipe (EOF here) as the worker dies, however it dies: no
    polling window in which an orphaned phase could still do its side effect beside the
    attempt another worker makes (`die_with_parent` polls, for a spare that waits).
    """

    fd = spec_reader.fileno()
    # The kernel itself signals the group when the pipe's last writer goes: SIGIO, whose
    # default action ends every process of it at once, needing neither the GIL nor a
    # scheduled thread (the thread below is the fallback where O_ASYNC pipes do not exist).
    with contextlib.suppress(AttributeError, OSError):
        fcntl.fcntl(fd, fcntl.F_SETOWN, -os.getpgrp())
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_ASYNC)

    def watch() -> None:
        with contextlib.suppress(OSError):
            while os.read(fd, 4096):
                pass
        os.killpg(0, signal.SIGKILL)       # also if the worker was gone before SIGIO was armed

    threading.Thread(target=watch, name="lifeline", daemon=True).start()


def boot(spec_reader: multiprocessing.connection.Connection,
                writer: multiprocessing.connection.Connection, parent: int) -> None:
    """A phase process: lead a process group, watch the worker, import what phases use,
    then wait for the one spec it will run (EOF: the worker no longer needs it; exit)."""
    os.setpgid(0, 0)
    die_with_parent(parent)
    for module in PRELOAD:
        with contextlib.suppress(ImportError):
            importlib.import_module(module)
    try:
        spec = spec_reader.recv()
    except (EOFError, OSError):
        os._exit(0)
    watch_lifeline(spec_reader)
    child_main(spec, writer)


def child_main(spec: ChildSpec, writer: multiprocessing.connection.Connection) -> None:
    """The child's whole life once it has its spec: run the entrypoint, send one result or
    error, exit."""
    lock = threading.Lock()

    def send(message: tuple[Any, ...]) -> None:
        with lock:
            writer.send(message)

    capture = OutputCapture(send)
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


def _run_entrypoint(spec: ChildSpec, send: Callable[[tuple[Any, ...]], None]) -> tuple[Any, ...]:
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
            ERROR,
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
        lake_root=spec.lake_root,
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
            ERROR,
            True,
            "TypeError",
            f"python entrypoint {spec.entrypoint!r} returned a {type(value).__name__}, "
            "not a dict (the output manifest)",
            "",
            None,
        )
    written = ctx.tables_written
    if written:
        declared = value.get("tables", [])
        if not isinstance(declared, list):
            return (ERROR, True, "TypeError",
                    f"python entrypoint {spec.entrypoint!r} returned 'tables' that is not a "
                    "list, while it wrote tables with ctx.write_table", "", None)
        value = {**value, "tables": declared + [t for t in written if t not in declared]}
    try:
        text = json.dumps(value, allow_nan=False, sort_keys=True)
    except (TypeError, ValueError) as exc:
        return _error(
            True,
            exc,
            f"python entrypoint {spec.entrypoint!r} returned an output "
            f"manifest that is not JSON-serialisable: {exc}",
        )
    return (RESULT, text)


def _error(terminal: bool, exc: BaseException, message: str,
           details: dict[str, Any] | None = None) -> tuple[Any, ...]:
    return (ERROR, terminal, type(exc).__qualname__, message, _traceback_text(exc), details)


def _user_error(exc: BaseException, where: str) -> tuple[Any, ...]:
    """An exception the entrypoint raised: terminal for `TerminalPhaseError`, else transient.
    The catalog's refusals keep their details (`rebuild_error` makes them again)."""
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


class OutputCapture:
    """The child's file descriptors 1 and 2 redirected into pipes whose lines two threads
    send to the parent (`LINES`), capped at `MAX_OUTPUT_LINES` per attempt (module
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
                self._send((LINES, stream, level, batch))
            if truncated:
                self._send((EVENT, "LOG",
                            f"output truncated: more than {self._limit} lines of stdout and "
                            "stderr in this attempt; the rest is dropped", "warning",
                            {"stream": stream, "truncated": True, "limit": self._limit}))


def _traceback_text(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc))
