"""Phase processes started ahead of need (docs/kinds.md, "python"): a `SparePool` per started
python kind, so that a phase does not wait for an interpreter and its imports.

Every phase process (a spare or not) is spawned with a scrubbed environment
(`executor.secrets.child_environment`): no `CONTROL_ROOM_*` (the worker's token) and no
variable the worker's secret policy allows. It is given at exec time, so that the child's
`/proc/self/environ` holds nothing more than its `os.environ`.
"""

from __future__ import annotations

import contextlib
import io
import multiprocessing
import multiprocessing.connection
import multiprocessing.context
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from multiprocessing import popen_spawn_posix, reduction, spawn, util
from typing import Any

from executor.kinds.python.child import boot
from executor.secrets import SecretPolicy, child_environment

__all__ = ["Child", "SparePool", "spawn_scrubbed"]

_ENV_ATTRIBUTE = "_control_room_env"
_SPAWN_LOCK = threading.Lock()


def spawn_scrubbed(path: str, args: Sequence[str], fds: Sequence[int],
                   env: Mapping[str, str]) -> int:
    """`path ARGS` started with exactly `env` and the file descriptors `fds` (and 0-2), as
    multiprocessing's own `spawnv_passfds` but with an environment. One at a time: the fds
    are inheritable only while it starts."""
    with _SPAWN_LOCK:
        changed = [fd for fd in sorted(set(fds)) if not os.get_inheritable(fd)]
        for fd in changed:
            os.set_inheritable(fd, True)
        try:
            return os.posix_spawn(path, list(args), dict(env))
        finally:
            for fd in changed:
                os.set_inheritable(fd, False)


class _ScrubbedPopen(popen_spawn_posix.Popen):
    """multiprocessing's spawn `Popen` (Python 3.11-3.13's `_launch`), launching the child
    with the environment its process object carries instead of the worker's."""

    def _launch(self, process_obj: Any) -> None:
        from multiprocessing import resource_tracker

        env = process_obj.__dict__.pop(_ENV_ATTRIBUTE)     # not pickled to the child
        fds: list[int] = self._fds  # type: ignore[attr-defined]  # the duplicated fds
        tracker_fd = resource_tracker.getfd()
        assert tracker_fd is not None
        fds.append(tracker_fd)
        prep_data = spawn.get_preparation_data(process_obj._name)
        fp = io.BytesIO()
        multiprocessing.context.set_spawning_popen(self)
        try:
            reduction.dump(prep_data, fp)
            reduction.dump(process_obj, fp)
        finally:
            multiprocessing.context.set_spawning_popen(None)
        parent_r = child_w = child_r = parent_w = None
        try:
            parent_r, child_w = os.pipe()
            child_r, parent_w = os.pipe()
            cmd = spawn.get_command_line(tracker_fd=tracker_fd, pipe_handle=child_r)
            fds.extend([child_r, child_w])
            self.pid = spawn_scrubbed(spawn.get_executable(), cmd, fds, env)
            self.sentinel = parent_r
            with open(parent_w, "wb", closefd=False) as f:
                f.write(fp.getbuffer())
        finally:
            fds_to_close = [fd for fd in (parent_r, parent_w) if fd is not None]
            self.finalizer = util.Finalize(
                self, util.close_fds, fds_to_close)  # type: ignore[attr-defined]
            for fd in (child_r, child_w):
                if fd is not None:
                    os.close(fd)


class _ScrubbedProcess(multiprocessing.context.SpawnProcess):
    @staticmethod
    def _Popen(process_obj: Any) -> Any:
        return _ScrubbedPopen(process_obj)


@dataclass
class Child:
    process: Any                                     # multiprocessing's SpawnProcess
    spec_writer: multiprocessing.connection.Connection
    reader: multiprocessing.connection.Connection
    writer: multiprocessing.connection.Connection


class SparePool:
    """Phase processes started ahead of need, so that a python phase does not wait for an
    interpreter to start and import pyarrow, deltalake and the rest (≈ 0.4 s a phase).

    `take()` answers a waiting spare (or starts one when none waits) and starts a
    replacement in the background. A spare is an ordinary phase process that has not been
    sent its spec yet: it leads its own process group and dies with the worker, like any
    phase process. `size` (the worker's `python_spares`; 0: none) caps how many wait.
    `close` tells the waiting spares to go (EOF on their spec pipe)."""

    def __init__(self, size: int, policy: SecretPolicy | None = None) -> None:
        self.size = size
        self.policy = policy or SecretPolicy()
        """The worker's secret policy: what the processes' environment leaves out."""
        self._lock = threading.Lock()
        self._waiting: list[Child] = []
        self._closed = False

    def waiting(self) -> list[Child]:
        """The spares waiting now (a snapshot)."""
        with self._lock:
            return list(self._waiting)

    def _start(self) -> Child:
        mp = multiprocessing.get_context("spawn")
        spec_reader, spec_writer = mp.Pipe(duplex=False)
        reader, writer = mp.Pipe(duplex=False)
        process = _ScrubbedProcess(target=boot, args=(spec_reader, writer, os.getpid()),
                                   name="python-phase", daemon=False)
        setattr(process, _ENV_ATTRIBUTE, child_environment(os.environ, self.policy))
        process.start()
        spec_reader.close()     # the child holds the only read end of its spec pipe
        writer.close()          # and the only write end of its result pipe: EOF when gone
        return Child(process, spec_writer, reader, writer)

    def take(self) -> Child:
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
    def _discard(child: Child) -> None:
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
