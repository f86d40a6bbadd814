"""Phase processes started ahead of need (docs/kinds.md, "python"): a `SparePool` per started
python kind, so that a phase does not wait for an interpreter and its imports.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.connection
import os
import threading
from dataclasses import dataclass
from typing import Any

from executor.kinds.python.child import boot

__all__ = ["Child", "SparePool"]


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

    def __init__(self, size: int) -> None:
        self.size = size
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
        process = mp.Process(target=boot, args=(spec_reader, writer, os.getpid()),
                             name="python-phase", daemon=False)
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
