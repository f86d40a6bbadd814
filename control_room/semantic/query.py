"""A metric query (metric, group-by dimensions, time grain, filters, time range, order, limit)
and its compilation to Postgres SQL with sqlglot; the SQL then passes the guard."""

from __future__ import annotations

import datetime as dt
from typing import Literal

import sqlglot
from pydantic import BaseModel, ConfigDict, Field
from sqlglot import exp

from control_room.semantic.guard import ROW_CAP, guard
from control_room.semantic.model import Grain, Layer, Metric

__all__ = ["Filter", "MetricQuery", "QueryError", "compile_query"]


class QueryError(ValueError):
    """A metric query the layer cannot answer; `code` is its machine code."""

    def __init__(self, message: str, code: str = "invalid_query") -> None:
        super().__init__(message)
        self.code = code


class Filter(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    dimension: str
    values: tuple[str, ...] = Field(min_length=1, max_length=100)


class MetricQuery(BaseModel):
    """What to compute: `metric` by `group_by` (and the time `grain`), within
    [`start`, `end`) of the metric's time column, `filters` (dimension IN values), ordered by
    the metric (`order`) or by the groups, at most `limit` rows."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    metric: str
    group_by: tuple[str, ...] = ()
    grain: Grain | None = None
    filters: tuple[Filter, ...] = ()
    start: dt.date | None = None
    end: dt.date | None = None
    order: Literal["desc", "asc"] | None = None
    limit: int | None = Field(default=None, ge=1, le=ROW_CAP)

    def key(self) -> tuple[object, ...]:
        """What two readings of a question must share to be the same query."""
        return (self.metric, tuple(sorted(self.group_by)), self.grain,
                tuple(sorted((f.dimension, tuple(sorted(f.values))) for f in self.filters)),
                self.start, self.end, self.order, self.limit)


_ROUND = {"currency": 2, "days": 1, "number": 2}


def _aggregate(metric: Metric) -> str:
    column = f"t.{_ident(metric.measure)}"
    body = {
        "sum": f"sum({column})",
        "count": f"count({column})",
        "count_distinct": f"count(distinct {column})",
        "avg": f"avg({column})",
        "min": f"min({column})",
        "max": f"max({column})",
        "median": f"percentile_cont(0.5) within group (order by {column})",
    }[metric.aggregation]
    places = _ROUND.get(metric.format)
    if places is not None and metric.aggregation not in ("count", "count_distinct"):
        return f"round(({body})::numeric, {places})"
    return body


def _ident(name: str) -> str:
    return exp.to_identifier(name, quoted=True).sql(dialect="postgres")


def _literal(value: str | dt.date) -> str:
    if isinstance(value, dt.date):
        return f"date {exp.Literal.string(value.isoformat()).sql(dialect='postgres')}"
    return exp.Literal.string(value).sql(dialect="postgres")


def compile_query(layer: Layer, query: MetricQuery, *, cap: int = ROW_CAP) -> str:
    """The guarded Postgres SQL of `query`, or QueryError naming what does not fit."""
    metric = layer.metrics.get(query.metric)
    if metric is None:
        raise QueryError(f"unknown metric {query.metric!r} (known: "
                         f"{', '.join(sorted(layer.metrics))})", "unknown_metric")
    table = layer.tables[metric.table]
    joins: dict[str, str] = {}

    def column_of(dimension: str) -> str:
        if dimension not in layer.dimensions:
            raise QueryError(f"unknown dimension {dimension!r} (known: "
                             f"{', '.join(sorted(layer.dimensions))})", "unknown_dimension")
        column = layer.dimension_column(dimension, metric.table)
        if column is None:
            raise QueryError(f"metric {metric.name} cannot be split or filtered by "
                             f"{dimension} (its dimensions: "
                             f"{', '.join(layer.dimensions_of(metric))})", "unsupported_dimension")
        via, _, inner = column.rpartition(".")
        if not via:
            return f"t.{_ident(column)}"
        join = layer.joins[via]
        keys = ", ".join(_ident(k) for k in join.keys.values())
        cols = ", ".join(_ident(c) for c in join.columns)
        on = " and ".join(f"{_ident(via)}.{_ident(right)} = t.{_ident(left)}"
                          for left, right in join.keys.items())
        joins[via] = (f"left join (select distinct {keys}, {cols} from "
                      f"{_ident(layer.schema)}.{_ident(join.to)}) as {_ident(via)} on {on}")
        return f"{_ident(via)}.{_ident(inner)}"

    select: list[str] = []
    groups: list[str] = []
    order: list[str] = []
    if query.grain is not None:
        if table.time is None:
            raise QueryError(f"metric {metric.name} has no time column", "unsupported_grain")
        if query.grain not in table.time.grains:
            raise QueryError(f"metric {metric.name} is by {', '.join(table.time.grains)}, not "
                             f"{query.grain}", "unsupported_grain")
        expr = (f"date_trunc({_literal(query.grain)}, t.{_ident(table.time.column)})::date")
        select.append(f"{expr} as {_ident(query.grain)}")
        groups.append(expr)
        order.append(expr)
    dimensions = list(dict.fromkeys((*query.group_by, *metric.split_by)))
    for dimension in dimensions:
        expr = column_of(dimension)
        select.append(f"{expr} as {_ident(dimension)}")
        groups.append(expr)
        ordering = layer.dimensions[dimension].order_by
        order.append(f"min(t.{_ident(ordering)})" if ordering else expr)
    value = _aggregate(metric)
    select.append(f"{value} as {_ident(metric.name)}")
    where = [str(sqlglot.parse_one(c, read="postgres").transform(
        lambda n: exp.column(n.name, table="t", quoted=True) if isinstance(n, exp.Column)
        else n).sql(dialect="postgres")) for c in metric.filters]
    if query.start is not None or query.end is not None:
        if table.time is None:
            raise QueryError(f"metric {metric.name} has no time column", "unsupported_time")
        column = f"t.{_ident(table.time.column)}"
        if query.start is not None:
            where.append(f"{column} >= {_literal(query.start)}")
        if query.end is not None:
            where.append(f"{column} < {_literal(query.end)}")
    for item in query.filters:
        values = ", ".join(_literal(v) for v in item.values)
        where.append(f"{column_of(item.dimension)} in ({values})")
    if query.order is not None:
        order = [f"{_ident(metric.name)} {query.order} nulls last", *order]
    sql = (f"select {', '.join(select)} from {_ident(layer.schema)}.{_ident(metric.table)} as t"
           + "".join(f" {j}" for j in joins.values())
           + (f" where {' and '.join(where)}" if where else "")
           + (f" group by {', '.join(groups)}" if groups else "")
           + (f" order by {', '.join(order)}" if order else "")
           + f" limit {min(query.limit or cap, cap)}")
    return guard(sql, schema=layer.schema, cap=cap)
