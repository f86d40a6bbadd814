"""The spark kind's params, as a pydantic model: `params.schema.json` is generated from it
(`python -m executor.kinds.schemas`) and the spec loader checks a phase against that. Imports
pydantic only (never pyspark)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from executor.kinds.dbt.params import ModelOutput
from executor.kinds.sql.params import IDENTIFIER, ConnectionName, Identifier, Input

__all__ = ["SparkParams"]


class SparkParams(BaseModel):
    """A PySpark job file of the run's code (docs/kinds.md, "spark")."""

    model_config = ConfigDict(extra="forbid", title="spark kind params")

    job_file: str = Field(min_length=1, pattern=r"\.py$",
                          description="The job's Python file in the run's code (relative); "
                                      "it defines `run(job)` returning its DataFrames.")
    args: dict[str, Any] = Field(default_factory=dict,
                                 description="Free-form JSON object, the job's `job.args`.")
    connection: str | None = Field(default=None, pattern=r"^[a-z][a-z0-9_]{0,62}$",
                                   description="A `spark` connection of the phase (in "
                                               "`connections`): master and Spark conf. "
                                               "None: local[2].")
    connections: list[ConnectionName] = Field(default_factory=list)
    inputs: dict[Identifier, Input] = Field(
        default_factory=dict, json_schema_extra={"propertyNames": {"pattern": IDENTIFIER}},
        description="Tables the job reads (`job.inputs[NAME]`, also a temp view NAME).")
    outputs: dict[Identifier, ModelOutput] = Field(
        min_length=1, json_schema_extra={"propertyNames": {"pattern": IDENTIFIER}},
        description="The job's DataFrames (by the name `run` returns them under) written to "
                    "the lake as Delta tables and recorded in the catalog.")
    shuffle_partitions: int = Field(default=2, ge=1, le=100_000,
                                    description="spark.sql.shuffle.partitions")

    @model_validator(mode="after")
    def _connection_is_declared(self) -> SparkParams:
        if self.connection is not None and self.connection not in self.connections:
            raise ValueError(f"connection {self.connection!r} must be one of the phase's "
                             "connections")
        return self
