"""The evaluation of `ask`'s parsing: a set of questions with the metric query each must be
read as (or `refuse` / `clarify`), scored (docs/ask.md "Evaluation"):

- in scope (an expected query): exact when answered with exactly that query, a
  clarification when asked back, wrong when answered with another query, refused otherwise;
- out of scope (`refuse`, `clarify`, `clarify|refuse`): right when refused or asked back,
  wrong when answered (a number for a question the layer cannot answer).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from control_room.semantic.ask import parse_question
from control_room.semantic.model import Layer
from control_room.semantic.query import Filter, MetricQuery

__all__ = ["Case", "Report", "evaluate", "load_cases"]


@dataclass(frozen=True)
class Case:
    question: str
    expect: MetricQuery | None
    allowed: frozenset[str] = frozenset()
    """For out-of-scope questions: the statuses that are right (refuse, clarify)."""


@dataclass
class Report:
    in_scope: int = 0
    exact: int = 0
    clarified: int = 0
    wrong: int = 0
    out_of_scope: int = 0
    out_right: int = 0
    out_wrong: int = 0
    failures: list[str] = field(default_factory=list)

    @property
    def accuracy(self) -> float:
        return self.exact / self.in_scope if self.in_scope else 1.0

    @property
    def clarification_rate(self) -> float:
        total = self.in_scope + self.out_of_scope
        return self.clarified / total if total else 0.0

    @property
    def wrong_answer_rate(self) -> float:
        total = self.in_scope + self.out_of_scope
        return (self.wrong + self.out_wrong) / total if total else 0.0

    def summary(self) -> str:
        return (f"{self.in_scope + self.out_of_scope} questions: in scope {self.in_scope}, "
                f"exact {self.exact} ({self.accuracy:.1%}); clarification rate "
                f"{self.clarification_rate:.1%}; wrong answers {self.wrong + self.out_wrong} "
                f"({self.wrong_answer_rate:.1%}); out of scope {self.out_of_scope}, refused or "
                f"asked back {self.out_right}, answered {self.out_wrong}")


def _query(raw: Mapping[str, Any]) -> MetricQuery:
    filters = tuple(Filter(dimension=d, values=tuple(sorted(str(v) for v in values)))
                    for d, values in sorted((raw.get("filters") or {}).items()))
    return MetricQuery.model_validate({**raw, "filters": filters})


def load_cases(path: Path) -> tuple[dt.date, list[Case]]:
    """`today` and the cases of an evaluation file."""
    document = yaml.safe_load(path.read_text("utf-8"))
    today = document["today"]
    cases = []
    for item in document["questions"]:
        expect = item["expect"]
        if isinstance(expect, str):
            cases.append(Case(item["q"], None, frozenset(expect.split("|"))))
        else:
            cases.append(Case(item["q"], _query(expect)))
    return today, cases


def evaluate(layer: Layer, values: Mapping[str, Sequence[str]], cases: Sequence[Case], *,
             today: dt.date) -> Report:
    report = Report()
    for case in cases:
        parsed = parse_question(case.question, layer, values, today=today)
        if case.expect is None:
            report.out_of_scope += 1
            if parsed.status in case.allowed or (parsed.status != "answer"):
                report.out_right += 1
                report.clarified += parsed.status == "clarify"
            else:
                report.out_wrong += 1
                report.failures.append(f"{case.question!r}: answered "
                                       f"{parsed.query!r}, expected {sorted(case.allowed)}")
            continue
        report.in_scope += 1
        if parsed.status == "answer" and parsed.query is not None:
            if parsed.query.key() == case.expect.key():
                report.exact += 1
            else:
                report.wrong += 1
                report.failures.append(f"{case.question!r}: answered {parsed.query!r}, "
                                       f"expected {case.expect!r}")
        elif parsed.status == "clarify":
            report.clarified += 1
            report.failures.append(f"{case.question!r}: clarify ({parsed.reason})")
        else:
            report.failures.append(f"{case.question!r}: refused ({parsed.reason})")
    return report
