"""The sql kind's params, as a pydantic model: what `params.schema.json` is generated from
(`python -m executor.kinds.schemas`) and what the spec loader checks a phase against, so that
a wrong param fails `runs create` (exit 2) rather than the phase. Imports pydantic only.

The kind itself still validates at run time with `parse_params` (which also confines paths
to the run's lake and reads `query_file` from the run's code); the two agree on every shape
(tests/executor/test_kind_params.py)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

__all__ = ["MERGE_NEEDS_KEYS", "DeltaOutput", "Input", "PostgresSource", "SqlParams"]

IDENTIFIER = r"^[A-Za-z_][A-Za-z0-9_]*$"
CONNECTION_NAME = r"^[a-z][a-z0-9_]{0,62}$"
Identifier = Annotated[str, StringConstraints(pattern=IDENTIFIER)]
ConnectionName = Annotated[str, StringConstraints(pattern=CONNECTION_NAME)]
MERGE_NEEDS_KEYS: dict[str, Any] = {
    "if": {"properties": {"mode": {"const": "merge"}}, "required": ["mode"]},
    "then": {"required": ["keys"]},
}
"""JSON Schema: mode merge needs keys (the model's validator, for the spec loader)."""
DATASET_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,199}$"
Layer = Literal["raw", "bronze", "silver", "gold", "other"]
MAX_PREVIEW_ROWS = 10_000


def _exactly_one(*keys: str) -> dict[str, Any]:
    """JSON Schema: exactly one of `keys` is present."""
    return {"oneOf": [{"required": [key]} for key in keys]}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PostgresSource(_Strict):
    """A Postgres table or query read through one of the phase's connections."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_exactly_one("query", "table"))

    connection: str = Field(min_length=1)
    query: str | None = Field(default=None, min_length=1)
    table: str | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _one_source(self) -> PostgresSource:
        if (self.query is None) == (self.table is None):
            raise ValueError("give exactly one of 'query' and 'table'")
        return self


class Input(_Strict):
    """One input, registered as a view of that name: a Delta table (at `version`), Parquet
    files, an upstream phase's output table, or a Postgres read."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={
        **_exactly_one("delta", "parquet", "upstream", "postgres"),
        "dependentSchemas": {key: {"not": {"required": ["version"]}}
                             for key in ("parquet", "postgres")}})

    delta: str | None = Field(default=None, min_length=1)
    parquet: str | None = Field(default=None, min_length=1)
    upstream: str | None = Field(default=None, min_length=1)
    postgres: PostgresSource | None = None
    version: int | None = Field(default=None, ge=0, description="Delta time travel.")

    @model_validator(mode="after")
    def _one_source(self) -> Input:
        given = [k for k in ("delta", "parquet", "upstream", "postgres")
                 if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("needs exactly one of 'delta', 'parquet', 'upstream', 'postgres'")
        if self.version is not None and given[0] in ("parquet", "postgres"):
            raise ValueError("'version' applies to Delta inputs only")
        return self


class DeltaOutput(_Strict):
    """The Delta table the last statement's rows are written to."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={
        **MERGE_NEEDS_KEYS, "dependentRequired": {"layer": ["name"]}})

    delta: str = Field(min_length=1, description="The table's location, under ${run.lake}.")
    mode: Literal["overwrite", "append", "merge"] = "overwrite"
    keys: list[str] | None = Field(default=None, min_length=1)
    name: str | None = Field(default=None, pattern=DATASET_NAME,
                             description="The catalog dataset's name (silver.orders).")
    layer: Layer | None = None

    @model_validator(mode="after")
    def _merge_keys(self) -> DeltaOutput:
        if self.mode == "merge" and not self.keys:
            raise ValueError("mode merge needs 'keys'")
        if self.layer is not None and self.name is None:
            raise ValueError("'layer' needs 'name' (the catalog's dataset name)")
        return self


class SqlParams(_Strict):
    """A DuckDB query over declared inputs, written as a Delta table (docs/kinds.md, "sql")."""

    model_config = ConfigDict(extra="forbid", title="sql kind params",
                              json_schema_extra=_exactly_one("query", "query_file"))

    query: str | None = Field(default=None, min_length=1)
    query_file: str | None = Field(default=None, min_length=1,
                                   description="A file of the run's code (its checkout).")
    code_dir: str | None = Field(default=None, min_length=1)
    connections: list[ConnectionName] = Field(default_factory=list)
    inputs: dict[Identifier, Input] = Field(
        default_factory=dict, json_schema_extra={"propertyNames": {"pattern": IDENTIFIER}})
    output: DeltaOutput
    preview_rows: int = Field(default=50, ge=0, le=MAX_PREVIEW_ROWS)

    @model_validator(mode="after")
    def _one_query(self) -> SqlParams:
        if (self.query is None) == (self.query_file is None):
            raise ValueError("give exactly one of 'query' and 'query_file'")
        return self
