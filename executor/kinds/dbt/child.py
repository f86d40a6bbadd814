"""The dbt kind's child process: `python -m executor.kinds.dbt.child SPEC_FILE`.

Runs `dbtRunner().invoke(args)` (dbt's programmatic entry point) in a process of its own, so
that the parent can kill it (and what it started) on cancel or timeout, and so that dbt's
global state (its event manager, logging, adapters) never lives in the worker. Every node's
start and finish is written as one JSON line to the file descriptor the spec names; dbt's own
output goes to this process's stdout / stderr (the parent sends them to `dbt.log`). The exit
code is 0 when dbt succeeded, 1 when it ran and failed, 2 when it could not run at all.
Imports only the standard library before dbt.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

_NODE_EVENTS = frozenset({"NodeStart", "NodeFinished", "LogStartLine"})


def _node(data: dict[str, Any]) -> dict[str, Any]:
    info = data.get("node_info") or {}
    relation = info.get("node_relation") or {}
    return {"unique_id": info.get("unique_id"), "name": info.get("node_name"),
            "resource_type": info.get("resource_type"),
            "materialized": info.get("materialized"), "status": info.get("node_status"),
            "started_at": info.get("node_started_at") or None,
            "finished_at": info.get("node_finished_at") or None,
            "relation": relation.get("relation_name") or None}


def main(argv: list[str]) -> int:
    with open(argv[0], encoding="utf-8") as f:
        spec = json.load(f)
    out = os.fdopen(int(spec["events_fd"]), "w", buffering=1, encoding="utf-8")

    def send(message: dict[str, Any]) -> None:
        out.write(json.dumps(message, default=str) + "\n")

    from dbt.cli.main import dbtRunner
    from dbt_common.events.functions import msg_to_dict

    def callback(event: Any) -> None:
        name = event.info.name
        if name not in _NODE_EVENTS:
            return
        data = msg_to_dict(event).get("data", {})
        message: dict[str, Any] = {"event": name, "node": _node(data)}
        if name == "LogStartLine":
            message.update(index=data.get("index"), total=data.get("total"))
        elif name == "NodeFinished":
            result = data.get("run_result") or {}
            message["result"] = {
                "status": result.get("status"), "message": result.get("message") or None,
                "execution_time": result.get("execution_time"),
                "failures": result.get("num_failures"),
                "adapter_response": result.get("adapter_response") or {},
            }
        send(message)

    try:
        result = dbtRunner(callbacks=[callback]).invoke(list(spec["args"]))
    except BaseException as exc:  # dbt raised instead of answering: the parent says why
        send({"event": "error", "type": type(exc).__name__, "message": str(exc)[:4000]})
        out.flush()
        return 2
    if result.exception is not None:
        send({"event": "error", "type": type(result.exception).__name__,
              "message": str(result.exception)[:4000]})
        out.flush()
        return 2
    out.flush()
    return 0 if result.success else 1


if __name__ == "__main__":
    code = main(sys.argv[1:])
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
