"""supabase/ is a Supabase CLI project that exposes the contract."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from tests.helpers import REPO_MIGRATIONS

SUPABASE = Path(__file__).resolve().parents[1] / "supabase"


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


def test_the_cli_reads_the_packaged_migrations() -> None:
    """supabase/migrations (what `supabase db push` reads) is the package's migrations: the
    same files with the same bytes."""
    linked = SUPABASE / "migrations"
    assert linked.resolve() == Path(REPO_MIGRATIONS).resolve()
    names = sorted(p.name for p in linked.glob("*.sql"))
    assert names == sorted(p.name for p in Path(REPO_MIGRATIONS).glob("*.sql"))
    for name in names:
        assert (linked / name).read_bytes() == (Path(REPO_MIGRATIONS) / name).read_bytes()
