"""The built-in kinds' params schemas, generated from their pydantic models into each kind's
package (`params.schema.json`, read by the spec loader without importing the kind):

    python -m executor.kinds.schemas          # rewrite them
    python -m executor.kinds.schemas --check  # exit 1 when one is stale (a test runs it)
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from typing import Any

from executor.kinds.registry import PARAMS_SCHEMA_FILE

__all__ = ["MODELS", "generated", "main"]

MODELS: dict[str, str] = {
    "python": "executor.kinds.python.params:PythonParams",
    "sql": "executor.kinds.sql.params:SqlParams",
    "dbt": "executor.kinds.dbt.params:DbtParams",
    "spark": "executor.kinds.spark.params:SparkParams",
    "trino": "executor.kinds.trino.params:TrinoParams",
}
"""Each built-in kind's params model ("module:Class")."""

KINDS_DIR = Path(__file__).resolve().parent


def _model(target: str) -> Any:
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def generated(kind: str) -> str:
    """The text of `kind`'s params.schema.json."""
    schema = _model(MODELS[kind]).model_json_schema()
    schema = {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def main(argv: list[str]) -> int:
    check = "--check" in argv
    stale: list[str] = []
    for kind in MODELS:
        path = KINDS_DIR / kind / PARAMS_SCHEMA_FILE
        text = generated(kind)
        current = path.read_text(encoding="utf-8") if path.is_file() else None
        if current == text:
            continue
        if check:
            stale.append(str(path))
        else:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path}")
    if stale:
        print("stale (run python -m executor.kinds.schemas): " + ", ".join(stale))
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
