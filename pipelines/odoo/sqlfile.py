"""Named SQL blocks of the pipeline's own `.sql` files (`-- name: xyz`), without any
control-room import (pipelines use only `executor.sdk`)."""

from __future__ import annotations

import re

__all__ = ["parse_queries"]

_NAME = re.compile(r"^--\s*name:\s*([A-Za-z_][A-Za-z0-9_]*)\s*$", re.MULTILINE)


def parse_queries(text: str) -> dict[str, str]:
    """`{name: sql}` of the `-- name: xyz` blocks of `text`; each block runs up to the next
    name line, without the comments that precede that line. A name defined twice is a
    ValueError."""
    queries: dict[str, str] = {}
    matches = list(_NAME.finditer(text))
    for index, match in enumerate(matches):
        end = matches[index + 1].start() if index + 1 < len(matches) else len(text)
        lines = text[match.end() : end].strip().splitlines()
        while lines and (not lines[-1].strip() or lines[-1].lstrip().startswith("--")):
            lines.pop()
        name = match.group(1)
        if name in queries:
            raise ValueError(f"query {name!r} is defined twice")
        queries[name] = "\n".join(lines)
    return queries
