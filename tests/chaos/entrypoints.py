"""Entrypoints of the chaos tests, run by the python kind in spawned subprocesses."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from executor.sdk import PythonContext


def side_effect(ctx: PythonContext) -> dict[str, Any]:
    """Works `args.seconds`, then does its side effect: one line appended to the ledger file
    `args.ledger` (`<run id> <phase> <attempt> <worker pid>`, one O_APPEND write; the python
    kind's phase processes are children of their worker) and one output file;
    events say when it starts working and when it did it. Every line of the ledger is one
    execution that got that far."""
    ctx.emit("WORKING", f"{ctx.phase} works", payload={"pid": os.getpid()})
    time.sleep(float(ctx.args.get("seconds", 0.5)))
    line = f"{ctx.run_id} {ctx.phase} {ctx.attempt} {os.getppid()}\n"
    fd = os.open(ctx.args["ledger"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)
    (ctx.output_dir / "effect.txt").write_text(line)
    ctx.emit("SIDE_EFFECT", f"{ctx.phase} did its side effect", payload={"pid": os.getpid()})
    return {"phase": ctx.phase}


def flaky(ctx: PythonContext) -> dict[str, Any]:
    """Fails transiently (an exception: the worker retries it with backoff) on its first
    `args.fail_first` attempts, after working `args.seconds`; then works and does its side
    effect as `side_effect` does. A failed attempt writes no ledger line: the ledger still
    counts the executions that did the side effect."""
    if ctx.attempt <= int(ctx.args.get("fail_first", 0)):
        time.sleep(float(ctx.args.get("seconds", 0.5)))
        raise ConnectionError(f"{ctx.phase}: transient failure of attempt {ctx.attempt}")
    return side_effect(ctx)


def noop(ctx: PythonContext) -> dict[str, Any]:
    """Does nothing: the phases of a long run that only keeps workers busy."""
    return {}


def ledger_lines(ledger: Path) -> list[tuple[str, str, int, int]]:
    """The ledger's executions: (run id, phase, attempt, worker pid) per line."""
    if not ledger.exists():
        return []
    rows = []
    for line in ledger.read_text().splitlines():
        run_id, phase, attempt, pid = line.split()
        rows.append((run_id, phase, int(attempt), int(pid)))
    return rows
