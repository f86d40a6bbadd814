"""`control-room serve`: the gateway (docs/gateway.md)."""

from __future__ import annotations

import signal
from typing import Annotated, Any

from control_room.cli.common import (
    BadInput,
    DatabaseUrl,
    StateDir,
    database,
    defaults,
    err,
    guard,
    new_app,
    option_for,
    target,
)
from control_room.settings import Settings, load_settings

app = new_app("The gateway.")

SETTINGS = defaults(Settings)
Host = Annotated[str, option_for(Settings, "host", "--host")]
Port = Annotated[int, option_for(Settings, "port", "--port")]


@app.command("serve")
def serve_command(
    host: Host = SETTINGS.host,
    port: Port = SETTINGS.port,
    database_url: DatabaseUrl = None,
    state_dir: StateDir = None,
) -> None:
    """Serve the contract over HTTP: `POST /rest/v1/rpc/<fn>`, `/health`, `/metrics`.

    Tokens are verified with CONTROL_ROOM_JWT_SECRET (the Supabase project's JWT secret in
    production); without it, with a secret generated once and kept in the state directory.
    With no database configured, the embedded one is started and migrated.
    """
    import uvicorn

    from control_room.db.migrate import migrate
    from control_room.gateway.app import create_app
    from control_room.gateway.auth import signing_secret
    from control_room.gateway.ui import ui_line

    with guard():
        settings = load_settings(host=host, port=port, database_url=database_url,
                                 state_dir=state_dir)
        if not settings.contract_file.is_file():
            raise BadInput(f"contract not found: {settings.contract_file}")
        embedded = settings.database_url is None
        with database(settings) as url:
            if embedded:
                with err.status("Migrating the embedded database ..."):
                    migrate(url, settings.migrations_dir)
            app_ = create_app(settings, database_url=url, jwt_secret=signing_secret(settings))
            err.print(f"Serving the contract on http://{settings.host}:{settings.port}/rest/v1/rpc/"
                      f" (database {target(url)})", markup=False)
            err.print(ui_line(settings, f"http://{settings.host}:{settings.port}"), markup=False)
            # uvicorn shuts down gracefully on SIGINT/SIGTERM, then re-raises the signal to the
            # handler it found: make that one a no-op so that this command's own cleanup
            # (stopping an embedded server) runs and the exit status is 0
            previous = {sig: signal.signal(sig, lambda *_: None)
                        for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                feed = app_.state.gateway.feed

                class _Server(uvicorn.Server):
                    def handle_exit(self, sig: int, frame: Any) -> None:
                        feed.close_threadsafe()     # open change feeds end (clients reconnect)
                        super().handle_exit(sig, frame)

                _Server(uvicorn.Config(app_, host=settings.host, port=settings.port,
                                       log_level="info", access_log=False)).run()
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)
