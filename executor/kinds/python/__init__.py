"""The `python` kind: a function `module:function` run in its own subprocess (docs/kinds.md,
"python"). `PythonKind` is the kind (`kind.py`); `PythonContext` what the function receives
(`context.py`, also `executor.sdk.PythonContext`).
"""

from __future__ import annotations

from executor.kinds.base import collect_outputs
from executor.kinds.python.context import (
    MAX_LINE_CHARS,
    MAX_OUTPUT_LINES,
    PythonContext,
    parse_entrypoint,
)
from executor.kinds.python.kind import PythonKind

__all__ = ["MAX_LINE_CHARS", "MAX_OUTPUT_LINES", "PythonContext", "PythonKind",
           "collect_outputs", "parse_entrypoint"]
