"""`python -m pipelines.odoo`: build, advance and fingerprint the Odoo-shaped source database.

Bad input (a scale out of range, a database the generator did not make, an unreachable server)
gives one line on stderr and exit code 2.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from datetime import date
from typing import Annotated, NoReturn

import psycopg
import typer

from pipelines.odoo.generator import (
    GenerateReport,
    GeneratorError,
    advance,
    generate,
    source_digest,
)

EXIT_BAD_INPUT = 2
DEFAULT_DSN = "postgresql://127.0.0.1:5432/odoo_demo"

app = typer.Typer(
    name="pipelines.odoo",
    help="The Odoo 17.0 / 18.0 shaped source database of the demo pipeline (docs/odoo.md).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

Dsn = Annotated[str, typer.Option("--dsn", envvar="ODOO_DSN", show_envvar=True,
                                  help="PostgreSQL URL of the Odoo database.")]
Json = Annotated[bool, typer.Option("--json", help="Print the report as JSON.")]


def _fail(message: str) -> NoReturn:
    typer.echo(f"error: {' '.join(message.split())}", err=True)
    raise typer.Exit(EXIT_BAD_INPUT)


@contextlib.contextmanager
def _guard() -> Iterator[None]:
    """Expected failures become one line on stderr and exit code 2, never a traceback."""
    try:
        yield
    except GeneratorError as exc:
        _fail(str(exc))
    except psycopg.OperationalError as exc:
        _fail(f"cannot use the database: {exc}")


def _print(report: GenerateReport, *, as_json: bool, verb: str) -> None:
    if as_json:
        typer.echo(json.dumps(report.to_json(), indent=2, sort_keys=True))
        return
    lines = report.rows.get("sale_order_line", 0)
    moves = report.rows.get("account_move", 0)
    typer.echo(
        f"{verb} {report.database}: {report.first_day} .. {report.last_day} "
        f"(seed {report.seed}, scale {report.scale}); {lines:,} sale order lines, "
        f"{moves:,} journal entries; {report.seconds:.1f} s"
    )


def _date(name: str, text: str | None) -> date | None:
    if text is None:
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise GeneratorError(f"{name} must be a date YYYY-MM-DD, got {text!r}") from None


@app.command("generate")
def generate_command(
    dsn: Dsn = DEFAULT_DSN,
    scale: Annotated[float, typer.Option(help="1.0: ~100,000 sale order lines a month.")] = 1.0,
    seed: Annotated[int, typer.Option(help="Same seed, scale and days: same data.")] = 42,
    days: Annotated[int, typer.Option(help="Days of activity to simulate.")] = 30,
    start: Annotated[str | None, typer.Option(
        help="First simulated day (YYYY-MM-DD).")] = None,
    end: Annotated[str | None, typer.Option(
        help="Last simulated day (YYYY-MM-DD). Default, without --start: the last day whose "
             "activity (until 20:00 UTC) is over by now.")] = None,
    odoo_version: Annotated[str, typer.Option(
        "--odoo-version", help="The shape: 17.0 or 18.0 (the same activity).")] = "17.0",
    as_json: Json = False,
) -> None:
    """Drop and rebuild the generator's tables, then simulate DAYS days from START or up to
    END (default: up to now, so the data is as fresh as a live Odoo's; give --start or --end
    for the same database every time)."""
    with _guard():
        report = generate(dsn, scale=scale, seed=seed, days=days,
                          start=_date("start", start), end=_date("end", end),
                          odoo_version=odoo_version)
        _print(report, as_json=as_json, verb="generated")


@app.command("advance")
def advance_command(
    dsn: Dsn = DEFAULT_DSN,
    days: Annotated[int, typer.Option(help="Days to simulate after the last one.")] = 1,
    seed: Annotated[int | None, typer.Option(help="Default: the generation's seed.")] = None,
    as_json: Json = False,
) -> None:
    """Simulate more days on a generated database (inserts, updates and deletes)."""
    with _guard():
        report = advance(dsn, days=days, seed=seed)
        _print(report, as_json=as_json, verb="advanced")


@app.command("digest")
def digest_command(dsn: Dsn = DEFAULT_DSN) -> None:
    """Print the content digest of the generator's tables (blake3)."""
    with _guard():
        typer.echo(source_digest(dsn))


if __name__ == "__main__":
    app()
