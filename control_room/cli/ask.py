"""`control-room ask "QUESTION"`: a question about gold, read deterministically into a metric
query, compiled, guarded and run read-only on the warehouse; prints the answer (or the
clarifying question, or the refusal), the SQL, the metric definitions and the lineage
(docs/ask.md). Reaches the warehouse like `control-room metrics query`."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

import typer

from control_room.cli.common import (
    BadInput,
    Gateway,
    JsonOut,
    StateDir,
    Token,
    Workspace,
    guard,
    new_app,
)
from control_room.cli.metrics import (
    Connection,
    DatabaseUrl,
    LayerFile,
    Timeout,
    Today,
    layer_from,
    print_answer,
    semantic_errors,
    warehouse_from,
)

__all__ = ["ask_command"]

app = new_app("Ask a question about gold.")


@app.command("ask")
def ask_command(
    question: Annotated[str, typer.Argument(help="The question, in English.",
                                            show_default=False)],
    today: Today = None,
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
    """Answer a question from the semantic layer: `ask "revenue by month for Oak Labs in
    2026"`. Asks back (exit 3) when unsure or when two readings are close; refuses (exit 4)
    a question outside the layer; never guesses a number."""
    from control_room.semantic.service import Asker

    with guard(), semantic_errors():
        if not question.strip() or len(question) > 500:
            raise BadInput("the question must be 1-500 characters")
        try:
            day = dt.date.fromisoformat(today) if today else None
        except ValueError:
            raise BadInput(f"--today must be an ISO date, not {today!r}") from None
        layer = layer_from(layer_file)
        with warehouse_from(layer, connection, database_url, gateway_url, token, workspace,
                            state_dir, timeout_ms) as warehouse:
            answer = Asker(layer, warehouse).ask(question, today=day)
    print_answer(answer, as_json)
    if answer["status"] == "clarify":
        raise typer.Exit(3)
    if answer["status"] == "refuse":
        raise typer.Exit(4)
