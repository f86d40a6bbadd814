"""The `spark` kind: a PySpark job file of the run's code run by a Spark driver in a child
process, its DataFrames committed to the lake as Delta tables by the executor (docs/kinds.md,
"spark"). `SparkKind` is the kind (`kind.py`, which needs the `[spark]` extra), `SparkParams`
its params (`params.py`, pydantic only), `child.py` the driver's process.
"""

from __future__ import annotations

from executor.kinds.spark.kind import (
    DEFAULT_MASTER,
    FORBIDDEN_CONF,
    SparkKind,
    SubmitConfig,
    parse_params,
    submit_config,
)
from executor.kinds.spark.params import SparkParams

__all__ = ["DEFAULT_MASTER", "FORBIDDEN_CONF", "SparkKind", "SparkParams", "SubmitConfig",
           "parse_params", "submit_config"]
