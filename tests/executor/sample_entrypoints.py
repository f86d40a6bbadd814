"""Entrypoints for the python kind's tests, run in spawned subprocesses."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from typing import Any

from executor.sdk import PythonContext, TerminalPhaseError

NOT_CALLABLE = {"a": 1}


def succeed(ctx: PythonContext) -> dict[str, Any]:
    """Events and progress in order, two files, a manifest; and a non-daemon thread left
    running, which must not keep the phase from ending."""
    ctx.emit("LOG", "starting", payload={"n": 1})
    ctx.progress(0.25)
    ctx.emit("LOG", "halfway", level="warning")
    ctx.progress({"rows": 10, "of": 20})
    (ctx.output_dir / "result.json").write_text('{"ok": true}')
    (ctx.output_dir / "parts").mkdir()
    (ctx.output_dir / "parts" / "rows.csv").write_text("a,b\n1,2\n")
    ctx.emit("LOG", "done", payload={"n": 3})
    threading.Thread(target=time.sleep, args=(60,), daemon=False).start()
    return {
        "args": dict(ctx.args),
        "inputs": dict(ctx.inputs),
        "run_id": ctx.run_id,
        "phase": ctx.phase,
        "attempt": ctx.attempt,
        "git_sha": ctx.git_sha,
        "connection_type": ctx.connections["warehouse"].type,
        "pid": os.getpid(),
    }


def sleep_with_grandchild(ctx: PythonContext) -> dict[str, Any]:
    """Starts a grandchild, reports both pids, then sleeps far past any timeout."""
    grandchild = subprocess.Popen(["sleep", "120"])
    ctx.emit("PIDS", "started", payload={"child": os.getpid(), "grandchild": grandchild.pid})
    time.sleep(120)
    return {}


def leave_grandchild(ctx: PythonContext) -> dict[str, Any]:
    """Returns while a process it started still runs."""
    grandchild = subprocess.Popen(["sleep", "120"])
    return {"grandchild": grandchild.pid}


def sleep_forever(ctx: PythonContext) -> dict[str, Any]:
    ctx.emit("READY", "sleeping", payload={"child": os.getpid()})
    time.sleep(120)
    return {}


def raise_value_error(ctx: PythonContext) -> dict[str, Any]:
    raise ValueError(f"bad value {ctx.args['value']}")


def raise_terminal(ctx: PythonContext) -> dict[str, Any]:
    raise TerminalPhaseError("the input can never work")


def exit_abruptly(ctx: PythonContext) -> dict[str, Any]:
    ctx.emit("LOG", "about to exit")
    os._exit(3)


def return_unserialisable(ctx: PythonContext) -> dict[str, Any]:
    return {"when": object()}
