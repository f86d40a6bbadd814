"""The gold KPIs the demo prints: named queries of `kpis.sql` (`-- name: xyz` blocks)."""

from __future__ import annotations

from functools import cache
from importlib import resources

from pipelines.odoo.sqlfile import parse_queries


@cache
def kpi_queries() -> dict[str, str]:
    """KPI name -> its SQL over the warehouse's `gold` schema, in the file's order."""
    return parse_queries(resources.files("pipelines.odoo").joinpath("kpis.sql").read_text("utf-8"))
