"""The dbt kind's params, as a pydantic model: the kind validates with it when a phase runs,
`params.schema.json` is generated from it (`python -m executor.kinds.schemas`) and the spec
loader checks a phase against that. Imports pydantic only (never dbt)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from executor.kinds.sql.params import (
    DATASET_NAME,
    IDENTIFIER,
    MERGE_NEEDS_KEYS,
    ConnectionName,
    Identifier,
    Input,
    Layer,
)

__all__ = ["DbtParams", "ModelOutput"]

Selector = Annotated[str, StringConstraints(min_length=1, max_length=1000)]


class ModelOutput(BaseModel):
    """Where a model's rows go in the lake: a Delta table, a catalog dataset."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=MERGE_NEEDS_KEYS)

    delta: str = Field(min_length=1, description="The table's location, under ${run.lake}.")
    name: str | None = Field(default=None, pattern=DATASET_NAME,
                             description="The catalog dataset's name (default: the model's "
                                         "name under the layer, gold.<model>).")
    layer: Layer | None = None
    mode: Literal["overwrite", "append", "merge"] = "overwrite"
    keys: list[str] | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _merge_keys(self) -> ModelOutput:
        if self.mode == "merge" and not self.keys:
            raise ValueError("mode merge needs 'keys'")
        return self


class DbtParams(BaseModel):
    """A dbt project of the run's code, built with dbtRunner (docs/kinds.md, "dbt")."""

    model_config = ConfigDict(extra="forbid", title="dbt kind params")

    project_dir: str = Field(default=".", min_length=1,
                             description="The dbt project's directory in the run's code "
                                         "(relative; its dbt_project.yml).")
    command: Literal["build", "run", "test", "seed"] = "build"
    select: list[Selector] = Field(default_factory=list, description="--select")
    exclude: list[Selector] = Field(default_factory=list, description="--exclude")
    vars: dict[str, Any] = Field(default_factory=dict, description="--vars (JSON)")
    full_refresh: bool = Field(default=False, description="--full-refresh")
    threads: int = Field(default=1, ge=1, le=64)
    target: str | None = Field(default=None, pattern=r"^[a-z][a-z0-9_]{0,62}$",
                               description="A `dbt-profile` connection of the phase "
                                           "(in `connections`) naming the dbt target; none: "
                                           "dbt-duckdb on a database of the attempt's own.")
    connections: list[ConnectionName] = Field(default_factory=list)
    inputs: dict[Identifier, Input] = Field(
        default_factory=dict, json_schema_extra={"propertyNames": {"pattern": IDENTIFIER}},
        description="Tables loaded before dbt runs, as `source(source_schema, NAME)`.")
    source_schema: Identifier = "lake"
    outputs: dict[Identifier, ModelOutput] = Field(
        default_factory=dict, json_schema_extra={"propertyNames": {"pattern": IDENTIFIER}},
        description="Models (by name) written to the lake as Delta tables and recorded in "
                    "the catalog, with their lineage.")

    @model_validator(mode="after")
    def _target_is_a_connection(self) -> DbtParams:
        if self.target is not None and self.target not in self.connections:
            raise ValueError(f"target {self.target!r} must be one of the phase's connections")
        return self
