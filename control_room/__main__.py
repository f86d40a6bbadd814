"""`python -m control_room` runs the CLI."""

from __future__ import annotations

from control_room.cli import app

app()
