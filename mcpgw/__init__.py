"""mcpgw: a Twisted gateway that serves stdio MCP servers over HTTP(S)."""

__version__ = "0.1.0"
