"""The example spec's entrypoint (specs/example.yaml): a tiny, deterministic orders table.

`extract_orders` writes `bronze.orders` under the run's lake (`args.lake`, from
`${run.lake}`: the workspace's lake on the worker) through `ctx.write_table`, so the data
catalog records it. The spec's sql phases read it as their upstream input: the output
manifest's `table` names it at the version written, the shape the sql kind reads an upstream
table from.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:       # pipelines receive their context; they import no control-room code
    from executor.sdk import PythonContext

CUSTOMERS = ("ada", "bob", "cyd")
STATUSES = ("paid", "paid", "refunded", "paid")


def orders(count: int) -> list[dict[str, Any]]:
    """`count` orders, the same for the same count: customers and statuses in turn."""
    return [{"order_id": n, "customer": CUSTOMERS[n % len(CUSTOMERS)],
             "amount": 10 * (n % 7 + 1), "status": STATUSES[n % len(STATUSES)]}
            for n in range(1, count + 1)]


def extract_orders(ctx: PythonContext) -> dict[str, Any]:
    """Overwrite `<lake>/bronze/orders` with `args.orders` orders (default 12)."""
    count = int(ctx.args.get("orders", 12))
    if count < 1:
        raise ValueError(f"args.orders must be at least 1, not {count}")
    uri = os.path.join(str(ctx.args["lake"]), "bronze", "orders")
    table = ctx.write_table("bronze.orders", uri, orders(count), mode="overwrite",
                            keys=["order_id"])
    ctx.emit("LOG", f"wrote {table['rows']} orders to {uri}",
             payload={"digest": table["digest"]})
    ctx.progress(1.0)
    return {"table": {key: table[key] for key in ("name", "uri", "version", "digest", "rows")}}
