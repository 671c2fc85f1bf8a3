"""The agent's built-in tools, MCP servers' tools, and the tools.toml that configures them."""

from sorat_daemon.tools.registry import Tool, ToolContext, ToolError, Toolset, tool

__all__ = ["Tool", "ToolContext", "ToolError", "Toolset", "tool"]
