"""`control-room mcp`: the MCP server for AI agents (docs/agents.md).

The server (`control_room.mcp`, the `mcp` extra) is imported inside the command, so
`control-room --help` loads neither it nor the SDK.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from control_room.cli.common import (
    BadInput,
    Gateway,
    StateDir,
    Token,
    check_http_url,
    cli_retry,
    err,
    gateway,
    guard,
    load_local_stack,
    new_app,
)

app = new_app("The MCP server.")

DEFAULT_HTTP_PORT = 8790


@app.command("mcp")
def mcp_command(
    gateway_url: Gateway = None,
    token: Token = None,
    state_dir: StateDir = None,
    allow_writes: Annotated[bool, typer.Option(
        "--allow-writes",
        help="Register the tools that change state (start, cancel and repair runs; claim, "
             "heartbeat, append events, register artifacts, complete phases). The token's "
             "role still decides what they may do.")] = False,
    http: Annotated[bool, typer.Option(
        "--http", help="Serve streamable HTTP (at /mcp) instead of stdio.")] = False,
    host: Annotated[str, typer.Option("--host", help="The address --http listens on.")
                    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="The port --http listens on.",
                                      min=1, max=65535)] = DEFAULT_HTTP_PORT,
) -> None:
    """Serve the contract's tools to an MCP client: each tool is a call of the gateway with
    the agent's own token, so the token's role decides what it may do.

    stdio by default (what Claude Desktop and Claude Code start), calling with `--token`.
    `--http` serves streamable HTTP on `http://HOST:PORT/mcp` instead: there every request
    calls with the token in its own `Authorization: Bearer` header (`--token` is not used).
    Read-only unless `--allow-writes`.
    """
    with guard():
        try:
            import anyio

            from control_room.contract import ContractClient
            from control_room.mcp import build_server
            from control_room.mcp.server import BearerClients
        except ImportError as exc:
            raise BadInput("the MCP server needs the mcp extra: pip install "
                           f"'lakehouse-control-room[mcp]' ({exc})") from None
        mode = "read and write" if allow_writes else "read-only"
        if http:
            url = gateway_url or _stack_gateway(state_dir)
            check_http_url(url)
            clients = BearerClients(url.rstrip("/"), make=lambda root, secret: ContractClient(
                root, secret, retry=cli_retry()))
            server = build_server(clients, allow_writes=allow_writes)
            err.print(f"Serving MCP ({mode}) on http://{host}:{port}/mcp for {url}; each "
                      "request calls with its own bearer token", markup=False)
            try:
                anyio.run(lambda: server.run_streamable_http_async(host=host, port=port))
            finally:
                clients.close()
            return
        with gateway(gateway_url, token, None, state_dir) as target:
            server = build_server(target.client, allow_writes=allow_writes)
            anyio.run(server.run_stdio_async)


def _stack_gateway(state_dir: Path | None) -> str:
    stack = load_local_stack(state_dir)
    if stack is None:
        raise BadInput("no gateway configured: run `control-room up`, or pass --gateway "
                       "(CONTROL_ROOM_GATEWAY_URL)")
    return stack.gateway_url
