"""`ask` end to end: parse the question, compile the metric query, guard and run it on the
warehouse read-only, and answer with the rows, the SQL, the metric definitions used and the
lineage of the numbers. Shared by the CLI and the gateway's `/ask/v1/*` endpoints."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from control_room.semantic.ask import Parsed, Reading, parse_question
from control_room.semantic.guard import GuardError
from control_room.semantic.llm import LlmError, LlmProvider
from control_room.semantic.model import Layer, Metric
from control_room.semantic.query import Compare, MetricQuery, compare_columns, compile_query
from control_room.semantic.warehouse import Warehouse, lineage

__all__ = ["Asker", "metric_definition"]


def metric_definition(layer: Layer, metric: Metric) -> dict[str, Any]:
    return {"name": metric.name, "description": metric.description,
            "table": f"{layer.schema}.{metric.table}", "measure": metric.measure,
            "aggregation": metric.aggregation, "filters": list(metric.filters),
            "format": metric.format, "owner": metric.owner, "certified": metric.certified,
            "synonyms": list(metric.synonyms),
            "dimensions": layer.dimensions_of(metric),
            "time_column": (t.column if (t := layer.tables[metric.table].time) else None),
            "grains": list(t.grains) if t else []}


def compare_summary(compare: Compare | None) -> dict[str, Any] | None:
    """The answer's `compare`: which column is which side, and how the difference is taken."""
    if compare is None:
        return None
    first, second = compare_columns(compare)
    sides = [{**side.model_dump(mode="json"), "column": column}
             for side, column in zip(compare.sides, (first, second), strict=True)]
    return {"kind": compare.kind, "dimension": compare.dimension, "sides": sides,
            "difference": f"{first} - {second}",
            "change_pct": f"({first} - {second}) * 100 / {second}, null when {second} is 0",
            "says": f"{first} compared with {second}: columns {first!r} and {second!r}, "
                    f"difference = {first} - {second}, change_pct in % of {second}"}


def _reading(reading: Reading) -> dict[str, Any]:
    return {"query": reading.query.model_dump(mode="json"), "confidence": reading.confidence,
            "why": reading.why}


@dataclass
class Asker:
    layer: Layer
    warehouse: Warehouse
    llm: LlmProvider | None = None

    def query(self, query: MetricQuery) -> dict[str, Any]:
        """Run a metric query: the answer's `sql`, `columns`, `rows`, `metrics`, `lineage`."""
        sql = compile_query(self.layer, query)
        result = self.warehouse.run(sql)
        metric = self.layer.metrics[query.metric]
        return {"status": "answer", "source": "semantic", "certified": metric.certified,
                "query": query.model_dump(mode="json"), "sql": sql,
                "compare": compare_summary(query.compare),
                "columns": result.columns, "rows": result.rows,
                "metrics": [metric_definition(self.layer, metric)],
                "lineage": [lineage(self.layer, metric.table, self.warehouse.publications())]}

    def ask(self, question: str, *, today: dt.date | None = None) -> dict[str, Any]:
        today = today or dt.date.today()
        parsed: Parsed = parse_question(question, self.layer, self.warehouse.values(),
                                        today=today)
        base: dict[str, Any] = {"question": question, "status": parsed.status,
                                "reason": parsed.reason, "readings": [], "sql": None,
                                "columns": [], "rows": [], "metrics": [], "lineage": [],
                                "query": None, "compare": None, "confidence": None,
                                "source": "semantic",
                                "certified": False}
        if parsed.status == "answer" and parsed.query is not None:
            answer = self.query(parsed.query)
            return {**base, **answer, "confidence": parsed.readings[0].confidence,
                    "readings": [_reading(parsed.readings[0])]}
        if parsed.status == "clarify":
            return {**base, "readings": [_reading(r) for r in parsed.readings],
                    "metrics": [metric_definition(self.layer, self.layer.metrics[m])
                                for m in dict.fromkeys(r.query.metric
                                                       for r in parsed.readings)]}
        if self.llm is not None:
            return self._llm(question, base)
        return base

    def _llm(self, question: str, base: dict[str, Any]) -> dict[str, Any]:
        """A question outside the semantic layer, given to the LLM provider: its SQL passes
        the same guard and the answer is marked uncertified."""
        assert self.llm is not None
        try:
            proposed = self.llm.propose_sql(question, self.layer)
            result = self.warehouse.run(proposed)
        except (LlmError, GuardError) as exc:
            return {**base, "reason": f"{base['reason']}; the LLM provider's proposal was "
                    f"refused: {exc}"}
        from control_room.semantic.guard import guard

        return {**base, "status": "answer", "source": "llm", "certified": False,
                "reason": "outside the semantic layer: SQL proposed by the LLM provider, "
                          "uncertified (check it)",
                "sql": guard(proposed, schema=self.layer.schema),
                "columns": result.columns, "rows": result.rows}
