"""The one settings object, built at the entry points and passed down.

Values come from keyword overrides, then `CONTROL_ROOM_*` environment variables, then
defaults. Nothing here writes into `os.environ`.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "CONTROL_ROOM_"


def default_migrations_dir() -> Path:
    """The migrations shipped in the package (`control_room/db/migrations`).

    The repo's `supabase/migrations` (what the Supabase CLI reads) links to this directory.
    """
    return Path(str(resources.files("control_room.db").joinpath("migrations")))


def default_contract_file() -> Path:
    """The contract shipped in the package (`control_room/contract/openapi.yaml`)."""
    return Path(str(resources.files("control_room.contract").joinpath("openapi.yaml")))


def env_var(field: str) -> str:
    """The environment variable that sets a settings field, e.g. `CONTROL_ROOM_DATABASE_URL`."""
    return f"{ENV_PREFIX}{field.upper()}"


class Settings(BaseSettings):
    """Configuration of the control room. Frozen: build a new one instead of mutating."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        frozen=True,
        extra="forbid",
        env_ignore_empty=True,
    )

    database_url: str | None = Field(
        default=None,
        description="PostgreSQL conninfo URL; None means the embedded server under state_dir.",
    )
    state_dir: Path = Field(
        default=Path(".control-room"),
        description="Where local state lives: the embedded server's data, logs and port.",
    )
    migrations_dir: Path = Field(
        default_factory=default_migrations_dir,
        description="The Supabase CLI migrations directory (supabase/migrations).",
    )
    statement_timeout_ms: int = Field(default=30_000, ge=0)
    contract_file: Path = Field(
        default_factory=default_contract_file,
        description="The contract (OpenAPI): the gateway serves exactly its operations.",
    )

    # the gateway (control-room serve)
    host: str = Field(default="127.0.0.1", description="Address the gateway listens on.")
    port: int = Field(default=8787, ge=0, le=65535, description="Port the gateway listens on.")
    jwt_secret: SecretStr | None = Field(
        default=None,
        description=(
            "HS256 secret that signs API tokens (the Supabase project's JWT secret in"
            " production). None: a secret generated once and kept in the state directory."
        ),
    )
    pool_min_size: int = Field(default=2, ge=1)
    pool_max_size: int = Field(default=20, ge=1)
    max_body_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)
    claim_wait_max_seconds: float = Field(default=30.0, ge=0, le=300)
    claim_poll_seconds: float = Field(
        default=1.0, gt=0, description="Polling fallback while a claim waits for work."
    )
    test_clock: bool = Field(
        default=False,
        description="Honour the X-Control-Room-Now header (tests only; never in production).",
    )

    @field_validator("state_dir", "migrations_dir", "contract_file")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.expanduser().absolute()


def load_settings(**overrides: Any) -> Settings:
    """Build the settings; keyword overrides win over the environment.

    An override whose value is None counts as "not given" (so CLI options that were not
    passed fall back to the environment and the defaults).
    """
    given = {key: value for key, value in overrides.items() if value is not None}
    return Settings(**given)
