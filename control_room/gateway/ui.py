"""The web UI's static files, served by the gateway at `/` (docs/ui.md, "Server side").

`ui_routes(settings)` is mounted last in `create_app`: `/assets/*` (content-hashed by Vite:
cached for a year, immutable), `/ui-config.json` (where the UI finds the API: this gateway, or
a Supabase project), the files at the top of the build (favicon, ...), and every other GET
path outside the API's prefixes answers `index.html` (the SPA routes it), never cached. Every
answer carries the Content-Security-Policy below. Without a build, `/` says how to make one.
"""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Match, Route
from starlette.types import Scope

from control_room.db.store import clip
from control_room.gateway.errors import GatewayError
from control_room.settings import Settings

CSP = ("default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
       "connect-src 'self'; frame-ancestors 'none'")
API_PREFIXES = ("/rest/", "/auth/", "/feed/", "/artifacts/", "/ask/", "/mcp", "/health",
                "/metrics", "/openapi.yaml")
NOT_BUILT = ("<!doctype html><html><head><meta charset=\"utf-8\"><title>Control Room</title>"
             "</head><body><h1>Control Room</h1><p>The web UI is not built: run "
             "<code>make ui</code> (it needs Node.js and npm), then restart the gateway. The "
             "API is served at <code>/rest/v1/</code>.</p></body></html>\n")
IMMUTABLE = "public, max-age=31536000, immutable"


def default_ui_dir() -> Path:
    """The package's `control_room/gateway/static` (what `npm run build` writes)."""
    return Path(__file__).parent / "static"


def ui_dir(settings: Settings) -> Path:
    return (settings.ui_dir or default_ui_dir()).expanduser().absolute()


def ui_built(settings: Settings) -> bool:
    return (ui_dir(settings) / "index.html").is_file()


def ui_line(settings: Settings, base_url: str) -> str:
    """The `UI:` line `serve`, `up` and `demo` print."""
    if not ui_built(settings):
        return "UI: not built (make ui)"
    return f"UI: {base_url.rstrip('/')}/"


def _headers(cache: str) -> dict[str, str]:
    return {"Content-Security-Policy": CSP, "Cache-Control": cache,
            "X-Content-Type-Options": "nosniff", "Referrer-Policy": "same-origin"}


def _inside(root: Path, relative: str) -> Path | None:
    """`root/relative` when it is a file inside `root` (no `..`, no symlink out), else None."""
    if not relative or "\x00" in relative or relative.startswith("/"):
        return None
    try:
        base = root.resolve(strict=True)
        target = (base / relative).resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    if not target.is_relative_to(base) or not target.is_file():
        return None
    return target


def _not_found(request: Request) -> Response:
    message = f"Invalid path specified in request URL: {clip(request.url.path)}"
    return GatewayError(404, "PGRST125", message, hint="not_found").response()


class _PageRoute(Route):
    """The catch-all of the SPA's routes: it never matches a path under the API's prefixes, so
    those keep the API's own answers (404 for an unknown path, 405 for a known path with another
    method: `GET /rest/v1/rpc/get_run`)."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if scope["type"] == "http" and str(scope.get("path", "")).startswith(API_PREFIXES):
            return Match.NONE, {}
        return super().matches(scope)


def ui_routes(settings: Settings) -> list[BaseRoute]:
    root = ui_dir(settings)
    config = {"api_url": settings.ui_api_url, "auth_url": settings.ui_auth_url,
              "anon_key": settings.ui_anon_key}

    async def ui_config(request: Request) -> Response:
        return JSONResponse(config, headers=_headers("no-cache"))

    async def asset(request: Request) -> Response:
        found = _inside(root / "assets", request.path_params["path"])
        if found is None:
            return _not_found(request)
        return FileResponse(found, headers=_headers(IMMUTABLE))

    async def page(request: Request) -> Response:
        path = request.url.path
        if request.method not in ("GET", "HEAD"):
            return _not_found(request)
        index = root / "index.html"
        if not index.is_file():
            return HTMLResponse(NOT_BUILT, status_code=404, headers=_headers("no-cache"))
        name = path.lstrip("/")
        if name and "/" not in name and name != "index.html":
            found = _inside(root, name)          # favicon.ico, robots.txt, ...
            if found is not None:
                return FileResponse(found, headers=_headers("no-cache"))
        return FileResponse(index, media_type="text/html; charset=utf-8",
                            headers=_headers("no-cache"))

    return [
        Route("/ui-config.json", ui_config, methods=["GET"]),
        Route("/assets/{path:path}", asset, methods=["GET"]),
        _PageRoute("/{path:path}", page,
              methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]),
    ]
