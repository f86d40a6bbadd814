"""`control-room metrics list|show|query`: the semantic layer over the warehouse's gold schema
(docs/ask.md). `query` compiles a metric query to SQL (sqlglot, guarded), runs it read-only
on the warehouse (a READ ONLY transaction with a statement timeout), and prints the SQL
beside the result. The warehouse is reached as `control-room warehouse` reaches it: the
workspace connection (default `warehouse`, its password resolved here under this process's
CONTROL_ROOM_SECRET_ALLOW) or `--database-url`.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.syntax import Syntax
from rich.table import Table

from control_room.cli.common import (
    BadInput,
    Gateway,
    JsonOut,
    StateDir,
    Token,
    Workspace,
    guard,
    new_app,
    out,
    pairs,
)

if TYPE_CHECKING:
    from control_room.semantic.model import Layer
    from control_room.semantic.warehouse import Warehouse

__all__ = ["LayerFile", "Today", "layer_from", "print_answer", "warehouse_from"]

app = new_app("The semantic layer: certified metrics over gold, compiled to SQL.")

LayerFile = Annotated[Path | None, typer.Option(
    "--layer", help="A semantic YAML file instead of the shipped Odoo one.",
    exists=True, dir_okay=False)]
Connection = Annotated[str, typer.Option(
    "--connection", help="The workspace connection of the warehouse (its password resolved "
                         "from its secret reference here).")]
DatabaseUrl = Annotated[str | None, typer.Option(
    "--database-url", help="The warehouse's PostgreSQL URL, instead of a workspace connection "
                           "(a read-only role's, ideally).")]
Timeout = Annotated[int, typer.Option("--timeout-ms", min=100, max=300_000,
                                      help="Statement timeout of the query.")]
Today = Annotated[str | None, typer.Option(
    "--today", help="The date relative time is read against (ISO; default: today).")]


def layer_from(path: Path | None) -> Layer:
    from control_room.semantic.model import SemanticError, default_layer, load_layer

    try:
        return load_layer(path) if path is not None else default_layer()
    except SemanticError as exc:
        raise BadInput(str(exc)) from None


@contextmanager
def warehouse_from(layer: Layer, connection: str, database_url: str | None,
                   gateway_url: str | None, token: str | None, workspace: str | None,
                   state_dir: Any, timeout_ms: int) -> Iterator[Warehouse]:
    from control_room.semantic.warehouse import Warehouse

    extra: dict[str, Any] = {}
    if database_url is not None:
        dsn = database_url
    else:
        from control_room.cli.warehouse import _connection_dsn

        dsn, extra = _connection_dsn(connection, gateway_url, token, workspace, state_dir)
    found = Warehouse(dsn, layer=layer, statement_timeout_ms=timeout_ms, **extra)
    try:
        yield found
    finally:
        found.close()


@contextmanager
def semantic_errors() -> Iterator[None]:
    """The semantic layer's refusals as exit 2 (bad input) or 1 (the warehouse failed)."""
    from control_room.cli.common import fail
    from control_room.semantic.guard import GuardError
    from control_room.semantic.query import QueryError
    from control_room.semantic.warehouse import WarehouseError

    try:
        yield
    except (QueryError, GuardError) as exc:
        raise BadInput(f"{exc} ({exc.code})") from None
    except WarehouseError as exc:
        fail(f"{exc} ({exc.code})", 1)


def print_answer(answer: dict[str, Any], as_json: bool) -> None:
    if as_json:
        out.print_json(json.dumps(answer, default=str))
        return
    status = answer.get("status", "answer")
    if answer.get("reason"):
        out.print(f"{status}: {answer['reason']}", markup=False)
    for reading in answer.get("readings", []) if status == "clarify" else []:
        query = {k: v for k, v in reading["query"].items() if v not in (None, [], ())}
        out.print(f"  did you mean: {json.dumps(query, default=str)} "
                  f"(confidence {reading['confidence']})", markup=False)
    if answer.get("sql"):
        out.print(Syntax(answer["sql"], "sql", word_wrap=True))
    if status == "answer":
        table = Table(*answer["columns"])
        for row in answer["rows"]:
            table.add_row(*("" if v is None else str(v) for v in row))
        out.print(table)
        if answer.get("compare"):
            out.print(f"comparison: {answer['compare']['says']}", markup=False)
        for metric in answer.get("metrics", []):
            mark = "certified" if metric["certified"] else "NOT certified"
            out.print(f"metric {metric['name']} ({mark}, owner {metric['owner']}): "
                      f"{metric['description']}", markup=False)
        if answer.get("source") == "llm":
            out.print("SQL proposed by the LLM provider: uncertified, check it", markup=False)
        for entry in answer.get("lineage", []):
            out.print(f"lineage: {entry['table']} <- {', '.join(entry['silver'])} <- Odoo "
                      f"{', '.join(entry['odoo'])}; published by run {entry['run_id'] or '-'}",
                      markup=False)


@app.command("list")
def list_command(layer_file: LayerFile = None, as_json: JsonOut = False) -> None:
    """The metrics of the semantic layer: name, table, aggregation, certified, owner."""
    from control_room.semantic.service import metric_definition

    with guard():
        layer = layer_from(layer_file)
    metrics = [metric_definition(layer, m) for m in layer.metrics.values()]
    if as_json:
        out.print_json(data=metrics)
        return
    table = Table("metric", "table", "aggregation", "certified", "owner", "description")
    for m in metrics:
        table.add_row(m["name"], m["table"], f"{m['aggregation']}({m['measure']})",
                      "yes" if m["certified"] else "no", m["owner"], m["description"])
    out.print(table)


@app.command("show")
def show_command(
    name: Annotated[str, typer.Argument(help="The metric.", show_default=False)],
    layer_file: LayerFile = None, as_json: JsonOut = False,
) -> None:
    """One metric's definition: measure, aggregation, filters, format, dimensions, grains."""
    from control_room.semantic.service import metric_definition

    with guard():
        layer = layer_from(layer_file)
        metric = layer.metrics.get(name)
        if metric is None:
            raise BadInput(f"unknown metric {name!r} (known: {', '.join(layer.metrics)})")
    found = metric_definition(layer, metric)
    if as_json:
        out.print_json(data=found)
        return
    for key, value in found.items():
        text = ", ".join(map(str, value)) if isinstance(value, list) else str(value)
        out.print(f"{key}: {text}", markup=False)


@app.command("query")
def query_command(
    metric: Annotated[str, typer.Option("--metric", help="The metric.", show_default=False)],
    by: Annotated[list[str] | None, typer.Option(
        "--by", help="Group by a dimension, or a time grain (day, week, month, quarter, "
                     "year); repeat.")] = None,
    where: Annotated[list[str] | None, typer.Option(
        "--where", help="DIMENSION=VALUE (repeat; values of one dimension are ORed).")] = None,
    start: Annotated[str | None, typer.Option("--from", help="First day (ISO date).")] = None,
    end: Annotated[str | None, typer.Option("--to", help="Day after the last (ISO date).")
                   ] = None,
    top: Annotated[int | None, typer.Option("--top", min=1, max=1000,
                                            help="The N largest (by the metric).")] = None,
    limit: Annotated[int | None, typer.Option("--limit", min=1, max=1000)] = None,
    layer_file: LayerFile = None,
    connection: Connection = "warehouse",
    database_url: DatabaseUrl = None,
    timeout_ms: Timeout = 10_000,
    workspace: Workspace = None,
    gateway_url: Gateway = None,
    token: Token = None,
    state_dir: StateDir = None,
    as_json: JsonOut = False,
) -> None:
    """Compile a metric query to SQL, run it read-only on the warehouse, print the SQL and
    the result: `metrics query --metric revenue --by month --where customer="Oak Labs"`."""
    from pydantic import ValidationError

    from control_room.semantic.model import GRAINS
    from control_room.semantic.query import Filter, MetricQuery
    from control_room.semantic.service import Asker

    with guard(), semantic_errors():
        layer = layer_from(layer_file)
        grains = [b for b in by or [] if b in GRAINS]
        filters: dict[str, list[str]] = {}
        for item in where or []:
            name, value = next(iter(pairs("--where", [item]).items()))
            filters.setdefault(name, []).append(value)
        try:
            query = MetricQuery(
                metric=metric, group_by=tuple(b for b in by or [] if b not in GRAINS),
                grain=grains[0] if grains else None,
                filters=tuple(Filter(dimension=d, values=tuple(v)) for d, v in filters.items()),
                start=dt.date.fromisoformat(start) if start else None,
                end=dt.date.fromisoformat(end) if end else None,
                order="desc" if top else None, limit=top or limit)
        except (ValidationError, ValueError) as exc:
            raise BadInput(f"invalid query: {exc}".splitlines()[0]) from None
        if len(grains) > 1:
            raise BadInput("give one time grain in --by")
        from control_room.semantic.query import compile_query

        compile_query(layer, query)     # refuse a bad query before reaching the warehouse
        with warehouse_from(layer, connection, database_url, gateway_url, token, workspace,
                            state_dir, timeout_ms) as warehouse:
            answer = Asker(layer, warehouse).query(query)
    print_answer(answer, as_json)
