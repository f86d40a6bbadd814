"""supabase/ is a Supabase CLI project that exposes the contract."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from tests.helpers import REPO_MIGRATIONS

SUPABASE = REPO_MIGRATIONS.parent


def test_the_config_exposes_ops() -> None:
    config = tomllib.loads((SUPABASE / "config.toml").read_text("utf-8"))
    assert "ops" in config["api"]["schemas"]
    assert config["db"]["major_version"] in (15, 17)
    seed = config["db"].get("seed", {})
    for pattern in seed.get("sql_paths", []) if seed.get("enabled", True) else []:
        assert list(SUPABASE.glob(pattern)), f"seed file {pattern} is missing"


def test_migrations_follow_the_cli_rules() -> None:
    """Names the CLI accepts; no transaction control or CONCURRENTLY (the CLI runs each file
    in one transaction); no PostgreSQL 18-only uuidv7()."""
    files = sorted(Path(REPO_MIGRATIONS).glob("*.sql"))
    assert files
    for path in files:
        assert re.match(r"^[0-9]{14}_[a-z0-9_]+\.sql$", path.name), path.name
        code = "\n".join(line.split("--")[0] for line in path.read_text("utf-8").splitlines())
        lowered = code.lower()
        assert not re.search(r"^\s*(begin|commit|rollback)\s*;", lowered, re.MULTILINE), path.name
        assert "concurrently" not in lowered, path.name
        assert "uuidv7" not in lowered, path.name
