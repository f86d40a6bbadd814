"""The semantic layer's files: pydantic models, and a loader that names FILE:LINE.

A semantic file (docs/ask.md) declares the gold `tables` (their columns, time column and
grains, lineage), `joins`, `dimensions` (with synonyms) and `metrics` (measure, aggregation,
filters, format, owner, description, certified). Loading checks every column a metric,
dimension or join names against the file's tables and, given the warehouse's columns
(`Layer.check_columns`), against the real `gold` schema: a name that is missing is a
`SemanticError` naming the file and the line.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import sqlglot
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlglot import exp

__all__ = ["Dimension", "Join", "Layer", "Lineage", "Metric", "SemanticError", "Table",
           "TimeSpec", "default_layer", "load_layer", "load_text"]

Grain = Literal["day", "week", "month", "quarter", "year"]
Aggregation = Literal["sum", "count", "count_distinct", "avg", "min", "max", "median"]
GRAINS: tuple[Grain, ...] = ("day", "week", "month", "quarter", "year")


class SemanticError(ValueError):
    """A semantic file that is malformed or names what does not exist (FILE:LINE: why)."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TimeSpec(_Model):
    column: str
    grains: tuple[Grain, ...] = GRAINS


class Lineage(_Model):
    dataset: str
    silver: tuple[str, ...] = ()
    odoo: tuple[str, ...] = ()


class Table(_Model):
    description: str = ""
    time: TimeSpec | None = None
    columns: tuple[str, ...]
    lineage: Lineage | None = None


class Join(_Model):
    name: str
    from_: str = Field(alias="from")
    to: str
    keys: dict[str, str]
    columns: tuple[str, ...]


class Dimension(_Model):
    name: str
    description: str = ""
    synonyms: tuple[str, ...] = ()
    columns: dict[str, str]
    """table -> its column, or `<join>.<column>` through a join."""
    order_by: str | None = None
    values: bool = False
    """Whether its values are looked up (filters on known values: "for Oak Labs")."""


class Metric(_Model):
    name: str
    description: str
    synonyms: tuple[str, ...] = ()
    table: str
    measure: str
    aggregation: Aggregation
    filters: tuple[str, ...] = ()
    """SQL conditions on the table's columns (Postgres), ANDed."""
    format: Literal["currency", "number", "integer", "days", "percent"] = "number"
    split_by: tuple[str, ...] = ()
    """Dimensions every query of it is grouped by (amounts of different currencies are never
    added up)."""
    owner: str
    certified: bool = False


class _File(_Model):
    name: str
    schema_: str = Field(default="gold", alias="schema")
    tables: dict[str, Table]
    joins: tuple[Join, ...] = ()
    dimensions: tuple[Dimension, ...] = ()
    metrics: tuple[Metric, ...]
    ambiguous: dict[str, tuple[str, ...]] = Field(default_factory=dict)


# ------------------------------------------------------------------ YAML with line numbers


class _Map(dict[str, Any]):
    line: int = 0
    lines: dict[str, int]


class _List(list[Any]):
    line: int = 0
    lines: list[int]


class _Loader(yaml.SafeLoader):
    pass


def _mapping(loader: _Loader, node: yaml.MappingNode) -> _Map:
    out = _Map()
    out.line = node.start_mark.line + 1
    out.lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        out[str(key)] = loader.construct_object(value_node, deep=True)
        out.lines[str(key)] = key_node.start_mark.line + 1
    return out


def _sequence(loader: _Loader, node: yaml.SequenceNode) -> _List:
    out = _List(loader.construct_object(child, deep=True) for child in node.value)
    out.line = node.start_mark.line + 1
    out.lines = [child.start_mark.line + 1 for child in node.value]
    return out


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _sequence)


def _line(raw: Any, path: Iterable[str | int]) -> int:
    """The line of the deepest node of `path` the raw document has."""
    line = getattr(raw, "line", 1)
    node = raw
    for step in path:
        if isinstance(node, _Map) and isinstance(step, str) and step in node:
            line = node.lines.get(step, line)
            node = node[step]
        elif isinstance(node, _List) and isinstance(step, int) and 0 <= step < len(node):
            line = node.lines[step]
            node = node[step]
        else:
            break
    return line


# ------------------------------------------------------------------------------- the layer


@dataclass(frozen=True)
class Layer:
    """A loaded semantic file: its metrics, dimensions, tables and joins, by name."""

    name: str
    schema: str
    source: str
    tables: Mapping[str, Table]
    joins: Mapping[str, Join]
    dimensions: Mapping[str, Dimension]
    metrics: Mapping[str, Metric]
    raw: Any
    ambiguous: Mapping[str, tuple[str, ...]]

    def where(self, *path: str | int) -> str:
        """`FILE:LINE` of a node of the file."""
        return f"{self.source}:{_line(self.raw, path)}"

    def dimension_column(self, dimension: str, table: str) -> str | None:
        """The column (or `join.column`) a dimension is in `table`, None when it is not."""
        found = self.dimensions.get(dimension)
        return found.columns.get(table) if found else None

    def dimensions_of(self, metric: Metric) -> list[str]:
        return [d.name for d in self.dimensions.values() if metric.table in d.columns]

    def check_columns(self, actual: Mapping[str, Iterable[str]]) -> None:
        """Check the file against the warehouse's columns (`{table: columns}` of its schema):
        a table or column the file names that the warehouse lacks is a SemanticError naming
        FILE:LINE."""
        problems = []
        for name, table in self.tables.items():
            have = set(actual.get(name, ()))
            if not have:
                problems.append(f"{self.where('tables', name)}: table {self.schema}.{name} "
                                "is not in the warehouse")
                continue
            for index, column in enumerate(table.columns):
                if column not in have:
                    problems.append(f"{self.where('tables', name, 'columns', index)}: column "
                                    f"{self.schema}.{name}.{column} is not in the warehouse")
        if problems:
            raise SemanticError("; ".join(problems))


def _referenced(condition: str) -> set[str]:
    parsed = sqlglot.parse_one(condition, read="postgres")
    return {c.name for c in parsed.find_all(exp.Column)}


def _validate(layer: Layer) -> None:
    problems: list[str] = []

    def need(table: str, column: str, *path: str | int) -> None:
        if table not in layer.tables:
            problems.append(f"{layer.where(*path)}: table {table!r} is not in tables")
        elif column not in layer.tables[table].columns:
            problems.append(f"{layer.where(*path)}: column {column!r} is not a column of "
                            f"{layer.schema}.{table}")

    for name, spec in layer.tables.items():
        if spec.time is not None:
            need(name, spec.time.column, "tables", name, "time")
    for index, join in enumerate(layer.joins.values()):
        for left, right in join.keys.items():
            need(join.from_, left, "joins", index, "keys")
            need(join.to, right, "joins", index, "keys")
        for column in join.columns:
            need(join.to, column, "joins", index, "columns")
    for index, dim in enumerate(layer.dimensions.values()):
        for table, column in dim.columns.items():
            via, _, inner = column.rpartition(".")
            if via:
                found = layer.joins.get(via)
                if found is None or found.from_ != table or inner not in found.columns:
                    problems.append(f"{layer.where('dimensions', index, 'columns', table)}: "
                                    f"{column!r} is no column of a join from {table}")
                continue
            need(table, column, "dimensions", index, "columns", table)
        if dim.order_by:
            for table in dim.columns:
                need(table, dim.order_by, "dimensions", index, "order_by")
    for index, metric in enumerate(layer.metrics.values()):
        need(metric.table, metric.measure, "metrics", index, "measure")
        for f_index, condition in enumerate(metric.filters):
            try:
                columns = _referenced(condition)
            except sqlglot.errors.ParseError as exc:
                problems.append(f"{layer.where('metrics', index, 'filters', f_index)}: "
                                f"the filter does not parse: {exc}")
                continue
            for column in sorted(columns):
                need(metric.table, column, "metrics", index, "filters", f_index)
        for split in metric.split_by:
            if layer.dimension_column(split, metric.table) is None:
                problems.append(f"{layer.where('metrics', index, 'split_by')}: dimension "
                                f"{split!r} is not one of {metric.table}")
    for word, candidates in layer.ambiguous.items():
        for candidate in candidates:
            if candidate not in layer.metrics:
                problems.append(f"{layer.where('ambiguous', word)}: {candidate!r} is not a "
                                "metric")
    names: dict[str, str] = {}
    for kind, items in (("metric", layer.metrics), ("dimension", layer.dimensions)):
        for item in items.values():
            for word in (item.name, *item.synonyms):
                key = word.lower()
                if key in names and names[key] != item.name:
                    problems.append(f"{layer.source}: {kind} {item.name!r}: the name or "
                                    f"synonym {word!r} is also {names[key]!r}")
                names[key] = item.name
    if problems:
        raise SemanticError("; ".join(problems))


def load_text(text: str, source: str) -> Layer:
    """Parse and check one semantic file's text (`source` names it in errors)."""
    try:
        raw = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 1
        raise SemanticError(f"{source}:{line}: not YAML: {exc}") from None
    try:
        parsed = _File.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = [step for step in first["loc"] if isinstance(step, str | int)]
        raise SemanticError(f"{source}:{_line(raw, loc)}: {'.'.join(map(str, loc))}: "
                            f"{first['msg']}") from None
    layer = Layer(
        name=parsed.name, schema=parsed.schema_, source=source, tables=parsed.tables,
        joins={j.name: j for j in parsed.joins},
        dimensions={d.name: d for d in parsed.dimensions},
        metrics={m.name: m for m in parsed.metrics}, raw=raw, ambiguous=parsed.ambiguous)
    # positional lookups in _validate index the raw lists: keep the names unique
    for kind, items, count in (("metric", layer.metrics, len(parsed.metrics)),
                               ("dimension", layer.dimensions, len(parsed.dimensions))):
        if len(items) != count:
            raise SemanticError(f"{source}: two {kind}s have the same name")
    _validate(layer)
    return layer


def load_layer(path: Path) -> Layer:
    return load_text(path.read_text("utf-8"), str(path))


def default_layer() -> Layer:
    """The semantic file shipped for the Odoo gold marts (package data)."""
    global _DEFAULT
    if _DEFAULT is None:
        resource = resources.files("control_room.semantic").joinpath("odoo/odoo.yaml")
        _DEFAULT = load_text(resource.read_text("utf-8"), "control_room/semantic/odoo/odoo.yaml")
    return _DEFAULT


_DEFAULT: Layer | None = None
