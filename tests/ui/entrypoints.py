"""The browser tests' python phase (tests/ui/ui_orders.yaml), run by the python kind.

`args.mode` says what the phase does: `ok` writes `args.orders` orders to the bronze table;
`sleep` says READY and sleeps two minutes (a run to cancel while it runs); `fail_once` fails
the first time it runs for `args.marker` and writes the orders every later time (a run to
repair: the repair reruns it with the same params, and it succeeds).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from executor.sdk import PythonContext

CUSTOMERS = ("ada", "bob", "cyd")
STATUSES = ("paid", "paid", "refunded", "paid")


def orders(count: int) -> list[dict[str, Any]]:
    return [{"order_id": n, "customer": CUSTOMERS[n % len(CUSTOMERS)],
             "amount": 10 * (n % 7 + 1), "status": STATUSES[n % len(STATUSES)]}
            for n in range(1, count + 1)]


def extract(ctx: PythonContext) -> dict[str, Any]:
    mode = str(ctx.args.get("mode", "ok"))
    lake = Path(str(ctx.args["lake"]))
    if mode == "sleep":
        ctx.emit("READY", "sleeping until cancelled", payload={"pid": os.getpid()})
        time.sleep(120)
    elif mode == "fail_once":
        marker = lake / "_markers" / str(ctx.args["marker"])
        if not marker.exists():
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text("failed once\n")
            raise RuntimeError("the source is not ready yet (failing once on purpose)")
    elif mode != "ok":
        raise ValueError(f"args.mode must be ok, sleep or fail_once, not {mode!r}")
    count = int(ctx.args.get("orders", 12))
    uri = str(lake / "bronze" / "orders")
    table = ctx.write_table("bronze.orders", uri, orders(count), mode="overwrite",
                            keys=["order_id"])
    ctx.emit("LOG", f"wrote {table['rows']} orders", payload={"digest": table["digest"]})
    summary = {"name": "bronze.orders", "rows": table["rows"], "digest": table["digest"]}
    (ctx.output_dir / "extract_summary.json").write_text(
        json.dumps(summary, indent=2, sort_keys=True) + "\n")
    ctx.progress(1.0)
    return {"table": {key: table[key] for key in ("name", "uri", "version", "digest", "rows")}}
