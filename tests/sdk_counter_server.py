"""
A stateful MCP server built on the official MCP Python SDK (PyPI ``mcp``, installed with
``mcp-server-time``): ``incr`` counts calls per process, so per gateway session.
"""

from __future__ import annotations

from mcp.server.mcpserver import MCPServer

server = MCPServer("mcpgw-test-counter")
calls = {"count": 0}


@server.tool()
def incr() -> str:
    """Add one to this process's counter and return it."""
    calls["count"] += 1
    return str(calls["count"])


if __name__ == "__main__":
    server.run()
