"""`ask` end to end (parse, compile, guard, query) at warm state against a real Postgres gold
schema, and the evaluation figures, each beside its goal.

    python bench/ask.py [--asks N] [--customers N] [--admin-url URL]

It creates a database on 127.0.0.1:5432 (or --admin-url's server) with the gold schema of
tests/semantic/gold.py plus `--customers` more customers' revenue rows (9 months x 3 products
each, so the default 2,000 gives ~54,000 rows of gold.revenue, about the demo's size), reads
it through `control_room.semantic.warehouse.Warehouse` (a READ ONLY transaction and a
statement timeout per question), warms it (the dimension values are looked up once and
cached), then times `Asker.ask` over the in-scope questions of the evaluation set, in turn,
N times. The evaluation figures are those of tests/semantic/ask_eval.yaml read against this
warehouse's dimension values. The database is dropped at the end.

Goals (issue 16): p50 < 150 ms; 0 wrong answers on out-of-scope questions; >= 95 % exact
metric queries on in-scope ones.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import psycopg
from common import own_database  # bench/common.py (run as python bench/<script>.py)
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from control_room.semantic.evaluation import evaluate, load_cases  # noqa: E402
from control_room.semantic.model import default_layer  # noqa: E402
from control_room.semantic.service import Asker  # noqa: E402
from control_room.semantic.warehouse import Warehouse  # noqa: E402
from tests.semantic.gold import MONTHS, PRODUCTS, create_gold  # noqa: E402

ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
_WORDS = ("Blue", "North", "Harbor", "Summit", "Delta", "Silver", "Bright", "Pioneer", "Atlas",
          "Nova", "Vertex", "Orbit", "Granite")
_NOUNS = ("Logistics", "Systems", "Retail", "Design", "Consulting", "Energy", "Works",
          "Trading", "Partners", "Industries")


def more_customers(dsn: str, count: int) -> int:
    """`count` more customers' revenue rows; answers the rows of gold.revenue."""
    with psycopg.connect(dsn) as pg, pg.transaction():
        with pg.cursor().copy("copy gold.revenue from stdin") as copy:
            for i in range(count):
                name = f"{_WORDS[i % len(_WORDS)]} {_NOUNS[(i // len(_WORDS)) % len(_NOUNS)]} " \
                       f"{i:04d}"
                for mi, month in enumerate(MONTHS):
                    for pi, (pid, product, code, category) in enumerate(PRODUCTS):
                        quantity = 1 + (i + mi + pi) % 7
                        copy.write_row((month, 1 + i % 2, ("Northwind EU", "Northwind US")[i % 2],
                                        ("EUR", "USD")[i % 2], 1000 + i, name, pid, product,
                                        code, category, quantity, quantity * (90 + 13 * pi),
                                        1, 2))
        pg.execute("analyze")
        row = pg.execute("select count(*) from gold.revenue").fetchone()
    return int(row[0]) if row else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--asks", type=int, default=300)
    parser.add_argument("--customers", type=int, default=2000)
    parser.add_argument("--admin-url", default=ADMIN_URL)
    args = parser.parse_args()
    console = Console()
    today, cases = load_cases(ROOT / "tests" / "semantic" / "ask_eval.yaml")
    layer = default_layer()
    with own_database(args.admin_url, "bench_ask") as dsn:
        create_gold(dsn)
        rows = more_customers(dsn, args.customers)
        warehouse = Warehouse(dsn, layer=layer)
        try:
            asker = Asker(layer, warehouse)
            report = evaluate(layer, warehouse.values(), cases, today=today)
            questions = [c.question for c in cases if c.expect is not None]
            for question in questions:          # warm: connection, values, plans
                asker.ask(question, today=today)
            times = []
            statuses: dict[str, int] = {}
            for i in range(args.asks):
                question = questions[i % len(questions)]
                started = time.perf_counter()
                answer = asker.ask(question, today=today)
                times.append((time.perf_counter() - started) * 1000)
                statuses[answer["status"]] = statuses.get(answer["status"], 0) + 1
            parse_times = []
            from control_room.semantic.ask import parse_question
            values = warehouse.values()
            for i in range(args.asks):
                started = time.perf_counter()
                parse_question(questions[i % len(questions)], layer, values, today=today)
                parse_times.append((time.perf_counter() - started) * 1000)
        finally:
            warehouse.close()
    times.sort()
    parse_times.sort()
    p50 = statistics.median(times)
    p99 = times[min(len(times) - 1, int(len(times) * 0.99))]
    table = Table(title=f"ask end to end, warm: {args.asks} asks over {len(questions)} "
                        f"in-scope questions; gold.revenue {rows:,} rows, "
                        f"{args.customers + 5:,} customers")
    table.add_column("figure")
    table.add_column("measured", justify="right")
    table.add_column("goal", justify="right")
    table.add_column("met")
    ok = {True: "yes", False: "NO"}
    table.add_row("ask p50 (parse+compile+query)", f"{p50:.1f} ms", "< 150 ms", ok[p50 < 150])
    table.add_row("ask p99", f"{p99:.1f} ms", "-", "")
    table.add_row("parse only p50", f"{statistics.median(parse_times):.2f} ms", "-", "")
    table.add_row("out-of-scope answered (wrong)", f"{report.out_wrong} of "
                  f"{report.out_of_scope}", "0", ok[report.out_wrong == 0])
    table.add_row("in-scope exact metric query", f"{report.accuracy:.1%} ({report.exact} of "
                  f"{report.in_scope})", ">= 95 %", ok[report.accuracy >= 0.95])
    table.add_row("in-scope wrong answers", str(report.wrong), "-", "")
    table.add_row("clarification rate (all)", f"{report.clarification_rate:.1%}", "-", "")
    table.add_row("wrong-answer rate (all)", f"{report.wrong_answer_rate:.1%}", "-", "")
    console.print(table)
    console.print(f"statuses of the timed asks: {statuses}")
    for failure in report.failures:
        console.print(f"  {failure}", markup=False)


if __name__ == "__main__":
    main()
