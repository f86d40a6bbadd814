"""The gold KPIs the demo prints: named queries of `kpis.sql` (`-- name: xyz` blocks)."""

from __future__ import annotations

import re
from functools import cache
from importlib import resources

_NAME = re.compile(r"^--\s*name:\s*([A-Za-z_][A-Za-z0-9_]*)\s*$", re.MULTILINE)


@cache
def kpi_queries() -> dict[str, str]:
    """KPI name -> its SQL over the warehouse's `gold` schema, in the file's order."""
    text = resources.files("pipelines.odoo").joinpath("kpis.sql").read_text("utf-8")
    matches = list(_NAME.finditer(text))
    found: dict[str, str] = {}
    for index, match in enumerate(matches):
        end = matches[index + 1].start() if index + 1 < len(matches) else len(text)
        if match.group(1) in found:
            raise ValueError(f"kpis.sql defines {match.group(1)!r} twice")
        found[match.group(1)] = text[match.end():end].strip()
    return found
