"""The MCP server on the gateway: `/mcp`, streamable HTTP (settings.mcp = read | write).

Imported only when the setting asks for it, so the gateway runs without the [mcp] extra. The
tools call the contract over HTTP like any client (docs/agents.md), here back to this same
gateway at the address the request arrived on (the socket's, never a client-supplied Host),
with each request's own bearer token: RLS, audit and the state functions stay the only path.
"""

from __future__ import annotations

from typing import Any

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from starlette.routing import BaseRoute

from control_room.contract import ContractClient
from control_room.mcp import build_server
from control_room.mcp.server import BearerClients


class LoopbackClients(BearerClients):
    """`BearerClients` whose contract root is this gateway, taken from the local address of
    the socket the MCP request came in on (ASGI `scope["server"]`)."""

    def __init__(self) -> None:
        super().__init__("", make=lambda url, token: ContractClient(url, token))

    def for_context(self, ctx: Context[Any, Any]) -> ContractClient:
        request = ctx.request_context.request
        server = getattr(request, "scope", {}).get("server") if request is not None else None
        if not server:
            raise ToolError("unavailable: the gateway's own address is not known")
        host, port = str(server[0]), int(server[1])
        if host in ("0.0.0.0", ""):
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        if ":" in host:
            host = f"[{host}]"
        self.base_url = f"http://{host}:{port}/rest/v1"
        return super().for_context(ctx)


def mcp_routes(mode: str, host: str) -> tuple[MCPServer[Any], list[BaseRoute], LoopbackClients]:
    """The MCP server for `mode` (read | write), its `/mcp` route(s) and its clients (close
    them at shutdown). Run `server.session_manager.run()` in the app's lifespan. Bound to a
    loopback `host`, the SDK's DNS-rebinding protection checks Host and Origin, as it does
    for `control-room mcp --http`."""
    clients = LoopbackClients()
    server = build_server(clients, allow_writes=mode == "write")
    app = server.streamable_http_app(streamable_http_path="/mcp", host=host)
    return server, list(app.routes), clients
