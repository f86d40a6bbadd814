"""The evaluation set (tests/semantic/ask_eval.yaml) run in CI, without a database (the
dimension values are the gold fixture's snapshot): its goals asserted, its figures printed."""

from __future__ import annotations

from pathlib import Path

from control_room.semantic.evaluation import evaluate, load_cases
from control_room.semantic.model import default_layer

from .gold import TODAY, values_snapshot

EVAL = Path(__file__).with_name("ask_eval.yaml")


def test_the_evaluation_meets_its_goals() -> None:
    today, cases = load_cases(EVAL)
    assert today == TODAY
    assert len(cases) >= 80
    assert sum(c.expect is None for c in cases) >= 20
    report = evaluate(default_layer(), values_snapshot(), cases, today=today)
    print("\n" + report.summary())
    for failure in report.failures:
        print("  " + failure)
    assert report.out_wrong == 0, report.failures
    assert report.wrong == 0, report.failures
    assert report.accuracy >= 0.95, report.failures
