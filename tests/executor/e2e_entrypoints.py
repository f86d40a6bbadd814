"""Entrypoints for the end-to-end tests, run by the python kind in spawned subprocesses."""

from __future__ import annotations

import json
import os
import time
from typing import Any

from executor.digests import table_digest
from executor.sdk import PythonContext, write_table

ORDERS: list[dict[str, Any]] = [
    {"order_id": 1, "customer": "ada", "amount": 120, "status": "paid"},
    {"order_id": 2, "customer": "bob", "amount": 40, "status": "paid"},
    {"order_id": 3, "customer": "ada", "amount": 15, "status": "refunded"},
    {"order_id": 4, "customer": "cyd", "amount": 300, "status": "paid"},
    {"order_id": 5, "customer": "bob", "amount": 60, "status": "paid"},
    {"order_id": 6, "customer": "ada", "amount": 80, "status": "paid"},
]

ITEMS: list[dict[str, Any]] = [
    {"id": 1, "sku": "a-1", "qty": 2},
    {"id": 2, "sku": "b-2", "qty": 5},
    {"id": 3, "sku": "c-3", "qty": 1},
]


def _table_manifest(uri: str, version: int, name: str) -> dict[str, Any]:
    digest = table_digest(uri, version)
    return {"uri": uri, "version": version, "digest": digest.digest, "rows": digest.rows,
            "name": name}


def extract_orders(ctx: PythonContext) -> dict[str, Any]:
    """Writes the bronze orders table under `args.lake`; returns it as the phase's table.

    Its one output file holds only content (rows, digest), never the table's location, so
    that the same inputs give the same artifact wherever the lake is."""
    uri = os.path.join(str(ctx.args["lake"]), "bronze", "orders")
    written = write_table(uri, ORDERS, mode="overwrite", keys=["order_id"],
                          name="bronze.orders")
    table = _table_manifest(uri, written.version, "bronze.orders")
    ctx.emit("LOG", f"wrote {table['rows']} orders", payload={"digest": table["digest"]})
    ctx.progress(1.0)
    summary = {"name": "bronze.orders", "rows": table["rows"], "digest": table["digest"]}
    (ctx.output_dir / "extract_summary.json").write_text(
        json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return {"table": table}


def merge_then_sleep(ctx: PythonContext) -> dict[str, Any]:
    """Upserts ITEMS into `args.table` (merge on `id`), says READY (with its pid and attempt),
    then sleeps: a minute on the first attempt (so that a kill lands mid-phase, after the
    write), half a second after that."""
    uri = str(ctx.args["table"])
    written = write_table(uri, ITEMS, mode="merge", keys=["id"], name="silver.items")
    ctx.emit("READY", "written; sleeping",
             payload={"pid": os.getpid(), "attempt": ctx.attempt, "version": written.version})
    time.sleep(60 if ctx.attempt == 1 else 0.5)
    return {"table": _table_manifest(uri, written.version, "silver.items")}


def noop(ctx: PythonContext) -> dict[str, Any]:
    """Nothing at all (the latency benchmark's phase)."""
    return {}
