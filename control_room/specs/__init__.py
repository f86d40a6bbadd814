"""Run specs: the loader (`loader.py`), the JSON Schema and the example specs (docs/specs.md)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from control_room.specs.loader import (
    SCHEMA_FILE,
    LoadedSpec,
    Param,
    ParamType,
    PhaseDef,
    Spec,
    SpecError,
    SpecIssue,
    load_spec,
    parse_duration,
)

__all__ = [
    "SCHEMA_FILE",
    "LoadedSpec",
    "Param",
    "ParamType",
    "PhaseDef",
    "Spec",
    "SpecError",
    "SpecIssue",
    "example_spec",
    "example_specs",
    "load_spec",
    "parse_duration",
]


def example_specs() -> dict[str, Path]:
    """The example specs shipped in the package, by name (`example`, `odoo_medallion`)."""
    folder = Path(str(resources.files("control_room.specs").joinpath("examples")))
    return {path.stem: path for path in sorted(folder.glob("*.yaml"))}


def example_spec(name: str) -> Path:
    """One shipped example spec's file; KeyError names the known ones."""
    specs = example_specs()
    if name not in specs:
        raise KeyError(f"no example spec {name!r} (known: {', '.join(specs)})")
    return specs[name]
