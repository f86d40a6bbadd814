"""The python kind's params, as a pydantic model: what `params.schema.json` is generated from
(`python -m executor.kinds.schemas`) and what the spec loader checks a phase against. Imports
pydantic only."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

__all__ = ["PythonParams"]

ConnectionName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,62}$")]

_DOTTED = r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*"
ENTRYPOINT = f"^{_DOTTED}:{_DOTTED}$"
"""`package.module:function` (the attribute may be dotted: `module:Class.method`)."""


class PythonParams(BaseModel):
    """`{"entrypoint": "package.module:function", "args": {...}}` (docs/kinds.md, "python")."""

    model_config = ConfigDict(extra="forbid", title="python kind params")

    entrypoint: str = Field(pattern=ENTRYPOINT,
                            description="The function to call: `package.module:function`.")
    args: dict[str, Any] = Field(default_factory=dict,
                                 description="Free-form JSON object, the function's `ctx.args`.")
    connections: list[ConnectionName] = Field(default_factory=list,
                                   description="The workspace connections the phase uses.")
    inputs: dict[str, Any] = Field(default_factory=dict,
                                   description="Not read by the python kind (`ctx.inputs` are "
                                               "the dependencies' manifests).")
