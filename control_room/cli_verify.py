"""Commands registered on `control_room.cli.app` (being written)."""

from __future__ import annotations
