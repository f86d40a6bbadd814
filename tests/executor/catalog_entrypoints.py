"""Entrypoints for the catalog and output-capture tests, run by the python kind in spawned
subprocesses."""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pyarrow as pa

from executor.sdk import PythonContext

ITEMS: list[dict[str, Any]] = [
    {"id": 1, "sku": "a-1"},
    {"id": 2, "sku": "b-2"},
]


def write_items(ctx: PythonContext) -> dict[str, Any]:
    """Merges ITEMS into `args.table` as dataset `args.name` (ids as `args.id_type`, int64 by
    default); says so on stdout, stderr, through logging and through a subprocess."""
    id_type = pa.int32() if ctx.args.get("id_type") == "int32" else pa.int64()
    data = pa.table({"id": pa.array([r["id"] for r in ITEMS], id_type),
                     "sku": pa.array([r["sku"] for r in ITEMS])})
    print(f"writing {len(ITEMS)} items")
    entry = ctx.write_table(str(ctx.args["name"]), str(ctx.args["table"]), data,
                            mode="merge", keys=["id"])
    print(f"wrote version {entry['version']}", file=sys.stderr)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    logging.getLogger("items").info("logged through logging")
    subprocess.run(["echo", "from a subprocess"], check=True)
    return {"written": entry["version"]}


def write_then_wait(ctx: PythonContext) -> dict[str, Any]:
    """Writes ITEMS to dataset `args.name`, says READY, then waits for the file `args.flag`
    (the test changes the catalog meanwhile) before it returns."""
    ctx.write_table(str(ctx.args["name"]), str(ctx.args["table"]), ITEMS, mode="merge",
                    keys=["id"])
    ctx.emit("READY", "written; waiting for the flag")
    flag = Path(str(ctx.args["flag"]))
    deadline = time.monotonic() + 60
    while not flag.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return {}


def write_twice(ctx: PythonContext) -> dict[str, Any]:
    """Writes dataset `args.name` (id int64), then again with id narrowed to int32."""
    uri = str(ctx.args["table"])
    ctx.write_table(str(ctx.args["name"]), uri, ITEMS, mode="overwrite")
    narrow = pa.table({"id": pa.array([3], pa.int32()), "sku": pa.array(["c-3"])})
    ctx.write_table(str(ctx.args["name"]), uri, narrow, mode="append")
    return {}


def write_and_declare(ctx: PythonContext) -> dict[str, Any]:
    """Writes dataset `args.name` and returns a `tables` entry of its own as well."""
    ctx.write_table(str(ctx.args["name"]), str(ctx.args["table"]), ITEMS, mode="overwrite",
                    layer="gold")
    return {"tables": [{"name": "declared.elsewhere", "uri": "/nowhere"}]}


def chatter(ctx: PythonContext) -> dict[str, Any]:
    """`args.lines` lines on stdout, one on stderr, one without a newline at the end."""
    for i in range(int(ctx.args["lines"])):
        print(f"line {i}")
    print("", flush=True)           # blank: not an event
    print("to stderr", file=sys.stderr)
    sys.stdout.write("no newline")
    return {}
