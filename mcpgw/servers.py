"""
What the session manager and the tools catalog need of a running MCP server.

``MCPServer`` (``mcpgw.client``) is the real one; tests use fakes of the same shape.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Literal, Protocol

from twisted.internet.defer import Deferred

from mcpgw import launchers
from mcpgw.config import ServiceConfig
from mcpgw.cpugroup import IdleGroup
from mcpgw.logs import Logger

log = Logger()


class RunningServer(Protocol):
    """One MCP server child, spawned and initialized by ``start``."""

    @property
    def alive(self) -> bool:
        """Started and still usable (not exited, not broken, not stopping)."""

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
    reactor: Any,
    sandbox_root: str,
    environ: Mapping[str, str],
    tools: launchers.Tools | Literal["auto"] | None = "auto",
    idle_group: IdleGroup | None = None,
) -> ServerFactory:
    """
    The real factory: ``mcpgw.client.MCPServer`` children under ``sandbox_root``.

    @param tools: the util-linux launch chain; ``"auto"`` (the default): found and checked
        once per process (``launchers.default_tools``, a trial run of a few milliseconds, at
        startup); ``None``: the Python launcher.
    @param idle_group: where children start and stop, once open (``mcpgw.cpugroup``).
    """
    from mcpgw.client import MCPServer
    from mcpgw.priority import can_weight_groups
    from mcpgw.timeslice import available_slices

    chain: launchers.Tools | None
    if tools == "auto":
        chain, how = launchers.default_tools()
        log.info("MCP server children are launched with {how}", how=how)
    else:
        chain = tools
    weight_groups = can_weight_groups()
    # Slices only with the group weight: a short slice also brings the child's turn forward.
    slices = available_slices() if weight_groups else None

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
            tools=chain,
            weight_groups=weight_groups,
            slices=slices,
            idle_group=idle_group,
        )

    return make
