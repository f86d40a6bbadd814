"""`python -m control_room.cli` runs the CLI."""

from __future__ import annotations

from control_room.cli import app

app()
