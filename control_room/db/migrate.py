"""The migration runner: `supabase/migrations/*.sql` in version order, recorded as the CLI does.

Compatible with `supabase db push`: both record what they applied in
`supabase_migrations.schema_migrations (version text primary key, statements text[], name
text)` (supabase/cli `pkg/migration/history.go`), one row per file, written in the same
transaction as the file. So either tool may be used on one database.

On plain PostgreSQL the local Supabase shim (`shim.sql`: API roles, `auth.uid()` and
friends, schema `extensions`) is applied first. On Supabase it never is.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import dict_row

from control_room.db.queries import query, shim_sql
from control_room.db.split import normalize, split_and_trim

_log = logging.getLogger(__name__)

MIGRATION_FILE = re.compile(r"^([0-9]+)_(.*)\.sql$")
"""The CLI's pattern (`pkg/migration/file.go`); other files are skipped."""

ADVISORY_LOCK_KEY = 0x636F6E74726F6C  # "control" in ASCII: one key for every migrator


class MigrationError(RuntimeError):
    """A migration could not be applied (the database keeps every earlier migration)."""

    def __init__(self, message: str, *, version: str | None = None,
                 report: MigrationReport | None = None) -> None:
        super().__init__(message)
        self.version = version
        self.report = report


class MigrationsDirNotFound(FileNotFoundError):
    """The migrations directory does not exist."""


@dataclass(frozen=True)
class Migration:
    """One migration file: `<version>_<name>.sql`."""

    version: str
    name: str
    path: Path
    sql: str
    statements: tuple[str, ...]

    @property
    def label(self) -> str:
        return f"{self.version}_{self.name}"


@dataclass
class MigrationReport:
    """What a run did or, with `check=True`, would do.

    Each list holds migration labels, `<version>_<name>` (the file name without `.sql`).
    """

    applied: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)
    drifted: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)
    shim_applied: bool = False
    shim_missing: bool = False
    is_supabase: bool = False

    @property
    def clean(self) -> bool:
        """Nothing pending, drifted or unknown, and the shim is in place where needed."""
        return not (self.pending or self.drifted or self.unknown or self.shim_missing)


def load_migrations(migrations_dir: Path) -> list[Migration]:
    """The migration files of a directory, in version order."""
    if not migrations_dir.is_dir():
        raise MigrationsDirNotFound(f"migrations directory not found: {migrations_dir}")
    found: dict[str, Migration] = {}
    for path in sorted(migrations_dir.iterdir()):
        match = MIGRATION_FILE.match(path.name)
        if match is None or not path.is_file():
            if path.suffix == ".sql":
                _log.warning("skipping %s: not named <version>_<name>.sql", path.name)
            continue
        version, name = match.group(1), match.group(2)
        if version in found:
            raise MigrationError(
                f"two migrations share version {version}: {found[version].path.name} and "
                f"{path.name}",
                version=version,
            )
        sql = path.read_text("utf-8")
        found[version] = Migration(
            version=version, name=name, path=path, sql=sql,
            statements=tuple(split_and_trim(sql)),
        )
    return sorted(found.values(), key=lambda m: (int(m.version), m.version))


def apply_shim(conn: psycopg.Connection[Any]) -> None:
    """Apply the local Supabase shim in one transaction (idempotent)."""
    with conn.transaction():
        conn.execute(shim_sql().encode("utf-8"))


def ensure_history_table(conn: psycopg.Connection[Any]) -> None:
    """Create `supabase_migrations.schema_migrations` as the Supabase CLI does."""
    with conn.transaction():
        conn.execute(query("create_history_table"))


@dataclass(frozen=True)
class _Applied:
    version: str
    name: str
    statements: tuple[str, ...] | None


def _read_history(conn: psycopg.Connection[Any]) -> dict[str, _Applied]:
    row = conn.execute(query("history_table_exists")).fetchone()
    if row is None or not row[0]:
        return {}
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(query("select_history")).fetchall()
    return {
        r["version"]: _Applied(
            version=r["version"],
            name=r["name"],
            statements=None if r["statements"] is None else tuple(r["statements"]),
        )
        for r in rows
    }


def _same_statements(recorded: Sequence[str], current: Sequence[str]) -> bool:
    return [normalize(s) for s in recorded] == [normalize(s) for s in current]


def migrate(
    conninfo: str,
    migrations_dir: Path,
    *,
    check: bool = False,
    connect_timeout: int = 10,
) -> MigrationReport:
    """Bring the database up to date with `migrations_dir`, or with `check=True` only report.

    Each pending file runs as a whole in one transaction with its history row. Concurrent
    migrators of one database are serialized by an advisory lock. Raises `MigrationError`
    when a migration fails (its transaction is rolled back; earlier ones stay) and
    `MigrationsDirNotFound` when the directory is missing.
    """
    migrations = load_migrations(migrations_dir)
    report = MigrationReport()
    with psycopg.connect(conninfo, autocommit=True, connect_timeout=connect_timeout) as conn:
        conn.execute(query("advisory_lock"), {"key": ADVISORY_LOCK_KEY})
        try:
            _migrate_locked(conn, migrations, report, check=check)
        finally:
            idle = psycopg.pq.TransactionStatus.IDLE
            if not conn.closed and conn.info.transaction_status == idle:
                conn.execute(query("advisory_unlock"), {"key": ADVISORY_LOCK_KEY})
    return report


def _migrate_locked(
    conn: psycopg.Connection[Any],
    migrations: list[Migration],
    report: MigrationReport,
    *,
    check: bool,
) -> None:
    row = conn.execute(query("detect_platform")).fetchone()
    assert row is not None
    is_supabase, has_auth_uid = bool(row[0]), bool(row[1])
    report.is_supabase = is_supabase
    if not is_supabase:
        if check:
            report.shim_missing = not has_auth_uid
        else:
            apply_shim(conn)
            report.shim_applied = True

    applied = _read_history(conn)
    on_disk = {m.version: m for m in migrations}
    for m in migrations:
        recorded = applied.get(m.version)
        if recorded is None:
            report.pending.append(m.label)
        elif recorded.statements is not None and not _same_statements(
            recorded.statements, m.statements
        ):
            report.drifted.append(m.label)
    report.unknown = [
        f"{a.version}_{a.name}" if a.name else a.version
        for version, a in sorted(applied.items())
        if version not in on_disk
    ]
    if check:
        return

    ensure_history_table(conn)
    for m in migrations:
        if m.version in applied:
            continue
        _log.info("applying %s", m.path.name)
        try:
            with conn.transaction():
                conn.execute(m.sql.encode("utf-8"))
                conn.execute(
                    query("insert_history"),
                    {"version": m.version, "name": m.name, "statements": list(m.statements)},
                )
        except psycopg.Error as exc:
            raise MigrationError(
                f"migration {m.path.name} failed: {_describe(exc)}", version=m.version,
                report=report,
            ) from exc
        report.applied.append(m.label)
        report.pending.remove(m.label)


def _describe(exc: psycopg.Error) -> str:
    diag = exc.diag
    parts = [(diag.message_primary or str(exc)).strip()]
    if exc.sqlstate:
        parts.append(f"(SQLSTATE {exc.sqlstate})")
    if diag.context:
        parts.append(f"at {diag.context.strip().splitlines()[0]}")
    return " ".join(parts)
