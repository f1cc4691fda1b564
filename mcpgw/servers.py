"""
What the session manager and the tools catalog need of a running MCP server.

``MCPServer`` (``mcpgw.client``) is the real one; tests use fakes of the same shape.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

from twisted.internet.defer import Deferred

from mcpgw.config import ServiceConfig


class RunningServer(Protocol):
    """One MCP server child, spawned and initialized by ``start``."""

    def start(self) -> Deferred[None]: ...

    def list_tools(self) -> Deferred[list[dict[str, Any]]]: ...

    def call_tool(
        self, name: str, arguments: dict[str, Any], timeout: float
    ) -> Deferred[dict[str, Any]]: ...

    def stop(self) -> Deferred[None]: ...


class ServerFactory(Protocol):
    """Makes (does not start) a server for a service."""

    def __call__(
        self,
        service: ServiceConfig,
        *,
        on_tools_changed: Callable[[], None] | None = None,
        on_exit: Callable[[str], None] | None = None,
    ) -> RunningServer: ...


def mcp_server_factory(
    reactor: Any, sandbox_root: str, environ: Mapping[str, str]
) -> ServerFactory:
    """The real factory: ``mcpgw.client.MCPServer`` children under ``sandbox_root``."""
    from mcpgw.client import MCPServer

    def make(
        service: ServiceConfig,
        *,
        on_tools_changed: Callable[[], None] | None = None,
        on_exit: Callable[[str], None] | None = None,
    ) -> RunningServer:
        return MCPServer(
            reactor,
            service,
            sandbox_root,
            environ,
            on_tools_changed=on_tools_changed,
            on_exit=on_exit,
        )

    return make
