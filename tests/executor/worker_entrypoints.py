"""Entrypoints for the worker's tests, run by the python kind in spawned subprocesses."""

from __future__ import annotations

import os
import time
from typing import Any

from executor.sdk import PythonContext


def produce(ctx: PythonContext) -> dict[str, Any]:
    """An event, progress, one output file (its content fixed by the phase name)."""
    ctx.emit("LOG", f"producing {ctx.phase}", payload={"phase": ctx.phase})
    ctx.progress(0.5)
    (ctx.output_dir / f"{ctx.phase}.txt").write_text(f"output of {ctx.phase}\n")
    return {"phase": ctx.phase, "upstream": sorted(ctx.inputs)}


def flaky(ctx: PythonContext) -> dict[str, Any]:
    """Fails with an unknown (transient) error on the first attempt, succeeds after."""
    if ctx.attempt == 1:
        raise RuntimeError("the warehouse blinked")
    return {"attempt": ctx.attempt}


def sleep_long(ctx: PythonContext) -> dict[str, Any]:
    """Says it is ready (with its pid), then sleeps far past any test's bound."""
    ctx.emit("READY", "sleeping", payload={"pid": os.getpid()})
    time.sleep(120)
    return {}


def report_then_fail(ctx: PythonContext) -> dict[str, Any]:
    """Leaves the rows it found wrong in its output directory, then fails for good."""
    from executor.sdk import TerminalPhaseError

    (ctx.output_dir / "failed_rows").mkdir()
    (ctx.output_dir / "failed_rows" / "negative_qty.csv").write_text("id,qty\n7,-2\n")
    raise TerminalPhaseError("1 row with a negative quantity")
