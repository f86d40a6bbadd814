"""A metric query (metric, group-by dimensions, time grain, filters, time range, order, limit)
and its compilation to Postgres SQL with sqlglot; the SQL then passes the guard."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Literal

import sqlglot
from pydantic import BaseModel, ConfigDict, Field
from sqlglot import exp

from control_room.semantic.guard import ROW_CAP, guard
from control_room.semantic.model import Grain, Layer, Metric

__all__ = ["Compare", "Filter", "MetricQuery", "QueryError", "Side", "compare_columns",
           "compile_query", "side_label"]


class QueryError(ValueError):
    """A metric query the layer cannot answer; `code` is its machine code."""

    def __init__(self, message: str, code: str = "invalid_query") -> None:
        super().__init__(message)
        self.code = code


class Filter(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    dimension: str
    values: tuple[str, ...] = Field(min_length=1, max_length=100)


class Side(BaseModel):
    """One side of a comparison: a period [`start`, `end`) or a member (`value` of the
    comparison's dimension); `label` names it in the answer (derived when absent)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    label: str | None = Field(default=None, max_length=200)
    start: dt.date | None = None
    end: dt.date | None = None
    value: str | None = None


class Compare(BaseModel):
    """Two sides compared (docs/ask.md "Comparisons"): `period` (two time ranges of the
    metric's time column) or `member` (two values of `dimension`); the answer has each
    side, the difference (first minus second) and the change in percent of the second."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["period", "member"]
    dimension: str | None = None
    sides: tuple[Side, Side]

    def key(self) -> tuple[object, ...]:
        return (self.kind, self.dimension,
                tuple((s.start, s.end, s.value) for s in self.sides))


def side_label(side: Side) -> str:
    """The name of a side in the answer: its label, else its value or its range."""
    if side.label:
        return side.label
    if side.value is not None:
        return side.value
    last = side.end - dt.timedelta(days=1) if side.end else None
    return f"{side.start or '...'}..{last or '...'}"


def compare_columns(compare: Compare) -> tuple[str, str]:
    """The answer's columns of the two sides (their labels, made distinct)."""
    first, second = (side_label(s) for s in compare.sides)
    return (first, second) if first != second else (f"{first} (1)", f"{second} (2)")


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
    compare: Compare | None = None

    def key(self) -> tuple[object, ...]:
        """What two readings of a question must share to be the same query."""
        return (self.metric, tuple(sorted(self.group_by)), self.grain,
                tuple(sorted((f.dimension, tuple(sorted(f.values))) for f in self.filters)),
                self.start, self.end, self.order, self.limit,
                self.compare.key() if self.compare else None)


_ROUND = {"currency": 2, "days": 1, "number": 2}


def _aggregate(metric: Metric, only: str | None = None) -> str:
    """The metric's aggregate; with `only`, over the rows meeting that condition (FILTER),
    a sum or count of no rows being 0."""
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
    if only is not None:
        body = f"{body} filter (where {only})"
        if metric.aggregation in ("sum", "count", "count_distinct"):
            body = f"coalesce({body}, 0)"
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
    compare = query.compare
    if compare is None:
        select.append(f"{_aggregate(metric)} as {_ident(metric.name)}")
    else:
        sides = _sides(layer, metric, query, compare, column_of)
        first, second = compare_columns(compare)
        a, b = (_aggregate(metric, only) for only in sides)
        select += [f"{a} as {_ident(first)}", f"{b} as {_ident(second)}",
                   f"({a}) - ({b}) as {_ident('difference')}",
                   f"round(((({a}) - ({b})) * 100.0 / nullif({b}, 0))::numeric, 1) as "
                   f"{_ident('change_pct')}"]
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
    if compare is not None:
        where.append(f"(({sides[0]}) or ({sides[1]}))")
    if query.order is not None:
        ranked = _ident(metric.name if compare is None else compare_columns(compare)[0])
        order = [f"{ranked} {query.order} nulls last", *order]
    sql = (f"select {', '.join(select)} from {_ident(layer.schema)}.{_ident(metric.table)} as t"
           + "".join(f" {j}" for j in joins.values())
           + (f" where {' and '.join(where)}" if where else "")
           + (f" group by {', '.join(groups)}" if groups else "")
           + (f" order by {', '.join(order)}" if order else "")
           + f" limit {min(query.limit or cap, cap)}")
    return guard(sql, schema=layer.schema, cap=cap)


def _sides(layer: Layer, metric: Metric, query: MetricQuery, compare: Compare,
           column_of: Callable[[str], str]) -> tuple[str, str]:
    """The SQL conditions of the two sides of a comparison, or QueryError."""
    table = layer.tables[metric.table]
    conditions: list[str] = []
    if compare.kind == "period":
        if table.time is None:
            raise QueryError(f"metric {metric.name} has no time column", "unsupported_time")
        if query.grain is not None or query.start is not None or query.end is not None:
            raise QueryError("a period comparison has no grain or time range of its own (its "
                             "sides are the periods)", "invalid_compare")
        column = f"t.{_ident(table.time.column)}"
        for side in compare.sides:
            if side.start is None or side.end is None or side.value is not None:
                raise QueryError("each side of a period comparison is a start and an end",
                                 "invalid_compare")
            if side.start >= side.end:
                raise QueryError("a side's start is not before its end", "invalid_compare")
            conditions.append(f"{column} >= {_literal(side.start)} and "
                              f"{column} < {_literal(side.end)}")
    else:
        if compare.dimension is None:
            raise QueryError("a member comparison names its dimension", "invalid_compare")
        column = column_of(compare.dimension)
        if compare.dimension in query.group_by or any(
                f.dimension == compare.dimension for f in query.filters):
            raise QueryError(f"{compare.dimension} is compared: it is not also a group or a "
                             "filter", "invalid_compare")
        for side in compare.sides:
            if side.value is None or side.start is not None or side.end is not None:
                raise QueryError("each side of a member comparison is a value",
                                 "invalid_compare")
            conditions.append(f"{column} = {_literal(side.value)}")
        if compare.sides[0].value == compare.sides[1].value:
            raise QueryError("the two sides are the same value", "invalid_compare")
    return conditions[0], conditions[1]
