"""
In-memory stand-ins for running MCP servers, for unit tests of sessions, the catalog and the
HTTP API. Each fake records what it was asked and lets the test decide when and how it answers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, fail, succeed

from mcpgw.config import ServiceConfig
from mcpgw.errors import ChildFailed, StartupFailed

TOOLS = [
    {
        "name": "echo",
        "description": "Echo a text.",
        "inputSchema": {
            "type": "object",
            "properties": {"text": {"type": "string"}},
            "required": ["text"],
        },
    }
]


def text_result(text: str, is_error: bool = False) -> dict[str, Any]:
    return {"content": [{"type": "text", "text": text}], "isError": is_error}


class FakeServer:
    """One fake child. ``calls`` holds ``(name, arguments, timeout, deferred)``."""

    def __init__(
        self,
        factory: FakeFactory,
        service: ServiceConfig,
        on_tools_changed: Callable[[], None] | None,
        on_exit: Callable[[str], None] | None,
    ) -> None:
        self.factory = factory
        self.service = service
        self.on_tools_changed = on_tools_changed
        self.on_exit = on_exit
        self.calls: list[tuple[str, dict[str, Any], float, Deferred[dict[str, Any]]]] = []
        self.cancelled: list[str] = []
        self.started: Deferred[None] | None = None
        self.stopped = False
        self.alive = False

    def start(self) -> Deferred[None]:
        mode = self.factory.start_mode
        if mode == "fail":
            return fail(StartupFailed("did not initialize: exit code 1"))
        if mode == "manual":
            self.started = Deferred()
            self.started.addCallback(self._up)
            return self.started
        self.alive = True
        return succeed(None)

    def _up(self, result: None) -> None:
        self.alive = True

    def list_tools(self) -> Deferred[list[dict[str, Any]]]:
        if self.factory.tools_error is not None:
            return fail(StartupFailed(self.factory.tools_error))
        return succeed(list(self.factory.tools))

    def call_tool(
        self, name: str, arguments: dict[str, Any], timeout: float
    ) -> Deferred[dict[str, Any]]:
        def cancel(d: Deferred[dict[str, Any]]) -> None:
            self.cancelled.append(name)

        d: Deferred[dict[str, Any]] = Deferred(cancel)
        self.calls.append((name, arguments, timeout, d))
        if self.factory.auto_answer:
            d.callback(text_result(f"{name}:{arguments}"))
        return d

    def stop(self) -> Deferred[None]:
        self.stopped = True
        self.alive = False
        for _, _, _, d in self.calls:
            if not d.called:
                d.errback(ChildFailed("stopped"))
        return succeed(None)

    def die(self, description: str = "exit code 3") -> None:
        """The child exits: pending calls fail, the exit callback runs."""
        self.alive = False
        for _, _, _, d in self.calls:
            if not d.called:
                d.errback(ChildFailed(f"MCP server exited: {description}"))
        if self.on_exit is not None:
            self.on_exit(description)


class FakeFactory:
    """A ``ServerFactory`` making ``FakeServer``s; ``servers`` lists every one made."""

    def __init__(self) -> None:
        self.servers: list[FakeServer] = []
        self.start_mode = "auto"
        self.auto_answer = True
        self.tools: list[dict[str, Any]] = list(TOOLS)
        self.tools_error: str | None = None

    def __call__(
        self,
        service: ServiceConfig,
        *,
        on_tools_changed: Callable[[], None] | None = None,
        on_exit: Callable[[str], None] | None = None,
    ) -> FakeServer:
        server = FakeServer(self, service, on_tools_changed, on_exit)
        self.servers.append(server)
        return server

    def live(self) -> list[FakeServer]:
        return [s for s in self.servers if not s.stopped]


__all__ = ["CancelledError", "FakeFactory", "FakeServer", "text_result"]
