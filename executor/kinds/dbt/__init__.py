"""The `dbt` kind: a dbt project of the run's code built with dbtRunner in a child process,
its models written to the lake (docs/kinds.md, "dbt"). `DbtKind` is the kind (`kind.py`, which
needs the `[dbt]` extra), `DbtParams` its params (`params.py`, pydantic only), `child.py` the
process dbt runs in.
"""

from __future__ import annotations

from executor.kinds.dbt.kind import FAILING_ROWS_LIMIT, DbtKind, parse_params
from executor.kinds.dbt.params import DbtParams, ModelOutput

__all__ = ["FAILING_ROWS_LIMIT", "DbtKind", "DbtParams", "ModelOutput", "parse_params"]
