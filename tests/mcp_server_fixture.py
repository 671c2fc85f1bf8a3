"""A tiny stdio MCP server for sorat's tests (run as a subprocess: python mcp_server_fixture.py [NAME])."""

from __future__ import annotations

import os
import sys

import anyio
from mcp.server.mcpserver import MCPServer

server = MCPServer(sys.argv[1] if len(sys.argv) > 1 else "fixture")


@server.tool()
def add(a: int, b: int) -> str:
    """Add two integers."""
    return str(a + b)


@server.tool()
def pid() -> str:
    """The server's process id."""
    return str(os.getpid())


@server.tool()
def echo_env(name: str) -> str:
    """An environment variable of the server, or <unset>."""
    return os.environ.get(name, "<unset>")


@server.tool()
def fail(message: str) -> str:
    """Raise an error."""
    raise ValueError(message)


@server.tool()
async def nap(seconds: float) -> str:
    """Sleep, then answer."""
    await anyio.sleep(seconds)
    return "awake"


@server.tool()
def crash() -> str:
    """Exit the process at once, as a crash would."""
    os._exit(3)


if __name__ == "__main__":
    server.run("stdio")
