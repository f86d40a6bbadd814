"""The MCP server over the contract (`control-room mcp`, docs/agents.md).

Tools and resources for AI agents, each a call of `control_room.contract.ContractClient` with
the agent's own token: never a database connection (an import-linter contract in
pyproject.toml forbids it). Needs the `mcp` extra (`pip install 'lakehouse-control-room[mcp]'`);
nothing else of `control_room` imports this package, so the rest runs without it.
"""

from __future__ import annotations

from control_room.mcp.server import build_server

__all__ = ["build_server"]
