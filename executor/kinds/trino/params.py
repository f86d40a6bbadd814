"""The trino kind's params, as a pydantic model: `params.schema.json` is generated from it
(`python -m executor.kinds.schemas`) and the spec loader checks a phase against that. Imports
pydantic only."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from executor.kinds.sql.params import MAX_PREVIEW_ROWS, ConnectionName, DeltaOutput

__all__ = ["TrinoParams"]

_EXACTLY_ONE_QUERY: dict[str, Any] = {
    "oneOf": [{"required": ["query"]}, {"required": ["query_file"]}]}


class TrinoParams(BaseModel):
    """One SQL statement run by a Trino server, its rows written as a Delta table (docs/kinds.md,
    "trino")."""

    model_config = ConfigDict(extra="forbid", title="trino kind params",
                              json_schema_extra=_EXACTLY_ONE_QUERY)

    query: str | None = Field(default=None, min_length=1,
                              description="One statement in Trino's SQL.")
    query_file: str | None = Field(default=None, min_length=1,
                                   description="A file of the run's code (its checkout).")
    code_dir: str | None = Field(default=None, min_length=1)
    connection: str = Field(pattern=r"^[a-z][a-z0-9_]{0,62}$",
                            description="The `trino` connection of the phase (in "
                                        "`connections`): host, port, catalog, schema, user.")
    connections: list[ConnectionName] = Field(default_factory=list)
    session: dict[str, str | int | float | bool] = Field(
        default_factory=dict, description="Session properties (X-Trino-Session).")
    output: DeltaOutput
    preview_rows: int = Field(default=50, ge=0, le=MAX_PREVIEW_ROWS)

    @model_validator(mode="after")
    def _checked(self) -> TrinoParams:
        if (self.query is None) == (self.query_file is None):
            raise ValueError("give exactly one of 'query' and 'query_file'")
        if self.connection not in self.connections:
            raise ValueError(f"connection {self.connection!r} must be one of the phase's "
                             "connections")
        return self
