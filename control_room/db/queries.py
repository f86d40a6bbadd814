"""The named SQL blocks of `queries.sql` (`-- name: xyz`), loaded once into a dict."""

from __future__ import annotations

import re
from functools import cache
from importlib import resources

_NAME = re.compile(r"^--\s*name:\s*([A-Za-z_][A-Za-z0-9_]*)\s*$", re.MULTILINE)


def parse_queries(text: str) -> dict[str, str]:
    """Split `-- name: xyz` blocks; each block's SQL runs up to the next name line."""
    queries: dict[str, str] = {}
    matches = list(_NAME.finditer(text))
    for index, match in enumerate(matches):
        end = matches[index + 1].start() if index + 1 < len(matches) else len(text)
        lines = text[match.end() : end].strip().splitlines()
        # Drop the section comments that precede the next block.
        while lines and (not lines[-1].strip() or lines[-1].lstrip().startswith("--")):
            lines.pop()
        body = "\n".join(lines)
        name = match.group(1)
        if name in queries:
            raise ValueError(f"query {name!r} is defined twice")
        queries[name] = body
    return queries


@cache
def queries() -> dict[str, str]:
    text = resources.files("control_room.db").joinpath("queries.sql").read_text("utf-8")
    return parse_queries(text)


def query(name: str) -> str:
    """The SQL text of the named block."""
    return queries()[name]


def shim_sql() -> str:
    """The local Supabase shim (`shim.sql`)."""
    return resources.files("control_room.db").joinpath("shim.sql").read_text("utf-8")
