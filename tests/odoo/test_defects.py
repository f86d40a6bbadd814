"""Two defects of issue 15 found from outside, pinned: the demo said where its warehouse is and
then stopped it without a word (defect 2); the generated activity ended in the past, so the
demo's freshness read "306.6 d" (defect 3). Defect 1 (verify moved the catalog's datasets) is
pinned by tests/executor/test_verify_catalog.py."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys

import psycopg
import pytest

from control_room.cli.common import out
from control_room.cli.up import STOPPING_NOTE, _print_demo
from pipelines.odoo import generator
from pipelines.odoo.generator import GeneratorError, default_end, simulated_days
from tests.executor.harness import REPO

TABLES = ("res_currency_rate", "res_partner", "product_template", "sale_order",
          "sale_order_line", "account_move", "account_move_line")


def _summary(kept_up: bool) -> dict[str, object]:
    return {"run_id": "r1", "state": "succeeded", "lake": "/lake", "ui_url": "http://ui",
            "ui": "UI: http://ui/",
            "warehouse": "postgresql://postgres@127.0.0.1:5999/odoo_warehouse",
            "kpis": {}, "artifacts": [], "kept_up": kept_up}


def test_the_demo_says_its_stack_stops_with_the_warehouse_it_printed() -> None:
    with out.capture() as captured:
        _print_demo(_summary(kept_up=False))
    text = " ".join(captured.get().split())
    assert "Warehouse for BI (Superset, Metabase): postgresql://postgres@127.0.0.1:5999" in text
    assert "UI: http://ui/" in text
    assert " ".join(STOPPING_NOTE.split()) in text
    assert text.index("Warehouse for BI") < text.index("stops now")
    assert "control-room demo --keep-up" in text
    with out.capture() as captured:
        _print_demo(_summary(kept_up=True))
    assert "stops now" not in captured.get()


def test_the_default_end_is_the_last_day_over_by_now() -> None:
    assert default_end(dt.datetime(2026, 12, 3, 16, 50)) == dt.date(2026, 12, 2)
    assert default_end(dt.datetime(2026, 12, 3, 20, 0, tzinfo=dt.UTC)) == dt.date(2026, 12, 3)
    # an aware time elsewhere counts in UTC: 02:00 in Auckland (+13) is 13:00 UTC the day before
    auckland = dt.timezone(dt.timedelta(hours=13))
    assert default_end(dt.datetime(2026, 12, 4, 2, 0, tzinfo=auckland)) == dt.date(2026, 12, 2)
    assert simulated_days(30, end=dt.date(2026, 1, 30)) == dt.date(2026, 1, 1)
    assert simulated_days(3, start=dt.date(2026, 1, 5)) == dt.date(2026, 1, 5)
    assert simulated_days(1, now=dt.datetime(2026, 12, 3, 21, 0)) == dt.date(2026, 12, 3)
    with pytest.raises(GeneratorError, match="start or end, not both"):
        simulated_days(3, start=dt.date(2026, 1, 1), end=dt.date(2026, 1, 3))


# The two tests that generate an Odoo database (three times, and in a process of the
# generator's CLI) are `slow`, like the generator's own tests (tests/conftest.py SLOW_MODULES).
@pytest.mark.slow
def test_the_generated_activity_ends_at_now_by_default_and_is_fixed_by_end(
        source_dsn: str) -> None:
    before = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    report = generator.generate(source_dsn, scale=0.01, seed=5, days=3)
    assert report.last_day == default_end()
    with psycopg.connect(source_dsn) as conn:
        newest = max(conn.execute(f"select max(write_date) from {t}").fetchall()[0][0]
                     for t in TABLES)
    # the newest change is in the past, and less than a day and a bit before now
    assert before - dt.timedelta(hours=28) < newest <= before
    digest = generator.source_digest(source_dsn)
    # deterministic for a given end: the same database as from the matching start
    again = generator.generate(source_dsn, scale=0.01, seed=5, days=3, end=report.last_day)
    assert (again.first_day, again.last_day) == (report.first_day, report.last_day)
    assert generator.source_digest(source_dsn) == digest
    generator.generate(source_dsn, scale=0.01, seed=5, days=3, start=report.first_day)
    assert generator.source_digest(source_dsn) == digest


@pytest.mark.slow
def test_the_generator_command_takes_end_and_refuses_both(source_dsn: str) -> None:
    command = [sys.executable, "-m", "pipelines.odoo", "generate", "--dsn", source_dsn,
               "--scale", "0.01", "--days", "2"]
    done = subprocess.run([*command, "--end", "2026-02-10", "--json"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert (report["first_day"], report["last_day"]) == ("2026-02-09", "2026-02-10")
    refused = subprocess.run([*command, "--end", "2026-02-10", "--start", "2026-02-01"],
                             cwd=REPO, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2
    assert refused.stderr.strip() == "error: give start or end, not both"
    bad = subprocess.run([*command, "--end", "10/02/2026"], cwd=REPO, capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode == 2 and "end must be a date YYYY-MM-DD" in bad.stderr
