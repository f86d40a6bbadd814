"""The control room's settings: every `CONTROL_ROOM_*` variable is a field of a class here or
of `executor.settings.WorkerSettings` (the table: docs/settings.md, printed by
`python -m control_room.cli.settings_doc`).

Values come from keyword overrides, then `CONTROL_ROOM_*` environment variables, then
defaults. Nothing here writes into `os.environ`.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import AliasChoices, AliasPath, Field, SecretStr, field_validator
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


def env_var(field: str, cls: type[BaseSettings] | None = None) -> str:
    """The environment variable that sets a field of `cls` (default `Settings`), e.g.
    `CONTROL_ROOM_DATABASE_URL`: its alias when it has one, else the prefix and its name."""
    info = (cls or Settings).model_fields[field]
    alias = info.validation_alias
    if isinstance(alias, AliasChoices | AliasPath):
        raise TypeError(f"{field}: give a settings field one plain alias")
    return alias.upper() if alias else f"{ENV_PREFIX}{field.upper()}"


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
        description="PostgreSQL conninfo URL. Unset: the embedded server under the state dir.",
    )
    state_dir: Path = Field(
        default=Path(".control-room"),
        description="Where local state lives (0700): the embedded server's data, logs, port "
                    "and password, the JWT secret, the stack file.",
    )
    migrations_dir: Path = Field(
        default_factory=default_migrations_dir,
        description="The Supabase CLI migrations directory (supabase/migrations).",
    )
    statement_timeout_ms: int = Field(
        default=30_000, ge=0, description="Statement timeout of every database session."
    )
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
            " production). Unset: a secret generated once and kept in the state directory."
        ),
    )
    pool_min_size: int = Field(
        default=2, ge=1, description="The gateway's database pool: connections kept open."
    )
    pool_max_size: int = Field(
        default=20, ge=1, description="The gateway's database pool: most connections."
    )
    max_body_bytes: int = Field(
        default=8 * 1024 * 1024, ge=1024,
        description="Largest request body the gateway reads (413 above).",
    )
    max_json_depth: int = Field(
        default=64, ge=2, le=512,
        description="Deepest nesting of arrays and objects in an argument (400 deeper).",
    )
    metrics_token: SecretStr | None = Field(
        default=None,
        description=(
            "A bearer token that reads every series of /metrics (as a service_role JWT does)."
            " Set: /metrics always needs a token. Unset: open on loopback only."
        ),
    )
    claim_wait_max_seconds: float = Field(
        default=30.0, ge=0, le=300,
        description="Longest a claim may wait for work (`Prefer: wait=N`).",
    )
    claim_poll_seconds: float = Field(
        default=1.0, gt=0, description="Polling fallback while a claim waits for work."
    )

    # sign-in of local users (/auth/v1/*, docs/auth.md)
    auth_access_ttl_seconds: int = Field(
        default=900, ge=1, le=86_400,
        description="Lifetime of an access token issued by /auth/v1/token (seconds).",
    )
    auth_session_ttl_seconds: int = Field(
        default=7 * 86_400, ge=60, le=366 * 86_400,
        description="A sign-in session ends after this many seconds without a refresh.",
    )
    auth_failure_window_seconds: int = Field(
        default=300, ge=1, le=86_400,
        description="The window (seconds) over which failed sign-ins are counted.",
    )
    auth_max_failures_per_email: int = Field(
        default=5, ge=1, le=10_000,
        description="Failed sign-ins for one email within the window before 429.",
    )
    auth_max_failures_per_ip: int = Field(
        default=50, ge=1, le=100_000,
        description="Failed sign-ins from one client IP within the window before 429.",
    )

    # the web UI, its change feed and artifact downloads (docs/ui.md, "Server side")
    ui_dir: Path | None = Field(
        default=None,
        description="Where the gateway finds the built web UI (index.html, assets/). Unset: "
                    "the package's control_room/gateway/static (`make ui` builds it).",
    )
    ui_api_url: str = Field(
        default="",
        description="The REST root the web UI calls (/ui-config.json `api_url`); empty: this "
                    "gateway. Set it to a Supabase project's URL to point the UI there.",
    )
    ui_auth_url: str = Field(
        default="",
        description="The sign-in root the web UI calls (/ui-config.json `auth_url`); empty: "
                    "this gateway's /auth/v1.",
    )
    ui_anon_key: str | None = Field(
        default=None,
        description="The Supabase anon key the web UI sends as `apikey` (public by design); "
                    "unset against this gateway.",
    )
    artifacts_url: str | None = Field(
        default=None,
        description="Artifact store the gateway serves /artifacts/v1 from: a directory, "
                    "file:///dir or s3://bucket/prefix (the same variable the workers read). "
                    "Unset: artifacts under the state directory (where `up` keeps them).",
    )

    # the ask endpoints (/ask/v1/*, docs/ask.md)
    warehouse_read_url: SecretStr | None = Field(
        default=None,
        description="The warehouse's PostgreSQL URL for /ask/v1 (a read-only role's: "
                    "`control-room warehouse grant-reader`). A secret: never logged. Unset: "
                    "/ask/v1 answers 503 warehouse_not_configured.",
    )
    ask_statement_timeout_ms: int = Field(
        default=10_000, ge=100, le=300_000,
        description="Statement timeout of an /ask/v1 query on the warehouse.",
    )
    ask_llm_url: str | None = Field(
        default=None,
        description="An OpenAI-compatible API root (`.../v1`) whose chat completions may "
                    "propose SQL for questions outside the semantic layer (uncertified). "
                    "Unset: off.",
    )
    ask_llm_model: str = Field(default="gpt-4o-mini",
                               description="The model asked at ask_llm_url.")
    ask_llm_api_key: SecretStr | None = Field(
        default=None, description="The API key of ask_llm_url (a secret: never logged).")

    # the MCP server on the gateway (/mcp, docs/agents.md)
    mcp: str = Field(
        default="off", pattern="^(off|read|write)$",
        description="Serve the MCP server (streamable HTTP) at /mcp: `off`, `read` (the "
                    "read-only tools) or `write` (also the write tools; each request's own "
                    "bearer token decides what it may do). Needs the [mcp] extra.",
    )

    # control-room migrate
    migrate_check: bool = Field(
        default=False,
        description="`migrate` applies nothing; lists pending, drifted and unknown migrations "
                    "and exits 1 if there are any.",
    )

    @field_validator("state_dir", "migrations_dir", "contract_file")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.expanduser().absolute()


class ClientSettings(BaseSettings):
    """How a command reaches the contract over HTTP (`runs`, `datasets`, `verify`): without
    them, the local stack's (`<state_dir>/stack.json`, written by `control-room up`)."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, frozen=True, extra="forbid", env_ignore_empty=True
    )

    gateway_url: str | None = Field(
        default=None,
        description="The contract's REST root: the gateway's or Supabase's /rest/v1. Unset: the "
                    "local stack's (`control-room up`).",
    )
    token: SecretStr | None = Field(
        default=None,
        description="A developer's (or service) token (`control-room token create`). Unset: "
                    "the local stack's.",
    )
    workspace: str | None = Field(
        default=None,
        description="The workspace's slug or id. Unset: the local stack's, or the only "
                    "workspace the token sees.",
    )
    ui_url: str | None = Field(
        default=None,
        description="The Control Room UI's root: run pages are `<ui_url>/runs/<run id>` "
                    "(`--github-summary` links them). Unset: the local stack's UI, when it "
                    "serves one.",
    )


class StackSettings(BaseSettings):
    """The local stack of `control-room up` and the demo built on it (the gateway's port of
    `up` is `Settings.port`, each worker's slots `WorkerSettings.concurrency`)."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, frozen=True, extra="forbid", env_ignore_empty=True
    )

    up_workers: int = Field(
        default=2, ge=0, le=64, description="Worker processes `up` and `demo` start."
    )
    demo_scale: float = Field(
        default=0.05, ge=0.001, le=100.0,
        description="Size of the demo's Odoo data: about 100,000 x scale sale order lines.",
    )
    demo_days: int = Field(
        default=30, ge=1, le=3650, description="Days of Odoo activity the demo simulates."
    )
    demo_seed: int = Field(default=42, description="The demo generator's seed.")
    demo_port: int = Field(
        default=0, ge=0, le=65535, description="The demo gateway's port; 0: any free port."
    )
    demo_keep_up: bool = Field(
        default=False, description="Keep the demo's stack running after the run, until Ctrl-C."
    )
    demo_continuous: bool = Field(
        default=False,
        description="After the first run, keep the stack up and ingest continuously: the "
                    "medallion as a job with a 5-minute schedule, a source-changed sensor and a "
                    "15-minute freshness SLO, while the source advances; until Ctrl-C.",
    )
    demo_advance_seconds: float = Field(
        default=60.0, ge=1.0, le=86400.0,
        description="With --continuous: seconds between two steps of the simulated Odoo "
                    "activity (one simulated day each).",
    )


def load_settings(**overrides: Any) -> Settings:
    """Build the settings; keyword overrides win over the environment.

    An override whose value is None counts as "not given" (so CLI options that were not
    passed fall back to the environment and the defaults).
    """
    given = {key: value for key, value in overrides.items() if value is not None}
    return Settings(**given)

