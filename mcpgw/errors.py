"""
Domain errors shared across the gateway.

Each one is translated into an HTTP status and a JSON body in one place (``mcpgw.app``).
"""

from __future__ import annotations

from typing import Any


class GatewayError(Exception):
    """Base class of the errors the HTTP layer knows how to answer."""

    status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def body(self) -> dict[str, Any]:
        return {"error": self.message}


class BadRequest(GatewayError):
    status = 400


class UnknownService(GatewayError):
    status = 404

    def __init__(self, name: str) -> None:
        super().__init__(f"Unknown service: {name}")
        self.name = name


class ServiceUnavailable(GatewayError):
    """The service's tools catalog could not be built (its probe failed)."""

    status = 503


class JsonRpcError(GatewayError):
    """The MCP server answered a request with a JSON-RPC error object."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.data = data

    @property
    def status(self) -> int:  # type: ignore[override]
        return 400 if self.code in (-32601, -32602) else 422

    def error_object(self) -> dict[str, Any]:
        obj: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.data is not None:
            obj["data"] = self.data
        return obj

    def body(self) -> dict[str, Any]:
        return {"error": self.message, "mcp_error": self.error_object()}


class CallTimeout(GatewayError):
    status = 504

    def __init__(self, seconds: float) -> None:
        super().__init__(f"Tool call timed out after {seconds:g} s")
        self.seconds = seconds


class ChildFailed(GatewayError):
    """
    The MCP server process is gone (or its output is unusable) while a request waited.

    ``message`` names the exit code or signal; ``stderr_tail`` keeps the last lines it wrote.
    """

    status = 502

    def __init__(self, message: str, stderr_tail: str = "") -> None:
        super().__init__(message)
        self.stderr_tail = stderr_tail


class InvalidResult(GatewayError):
    """The MCP server answered, but not with a result of the right shape (the child lives)."""

    status = 502


class StartupFailed(GatewayError):
    """The MCP server could not be spawned or did not complete ``initialize``."""

    status = 502

    def __init__(self, message: str, stderr_tail: str = "") -> None:
        super().__init__(message)
        self.stderr_tail = stderr_tail


class SessionClosed(GatewayError):
    status = 409

    def __init__(self, session_id: str) -> None:
        super().__init__(f"Session {session_id} was closed")
        self.session_id = session_id


class UnknownSession(GatewayError):
    status = 404

    def __init__(self, session_id: str) -> None:
        super().__init__(f"Session {session_id} not found")
        self.session_id = session_id


class TooManySessions(GatewayError):
    status = 429

    def __init__(self, message: str, retry_after: int = 5) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RateLimited(GatewayError):
    status = 429

    def __init__(self, limit_text: str, retry_after: int) -> None:
        super().__init__(f"Rate limit exceeded: {limit_text}")
        self.retry_after = retry_after


class ConfigError(Exception):
    """
    A mistake in the configuration: ``str()`` is the one line shown to the user, naming the
    file, the key path and the problem (``config.json: services.time.command: must be ...``).
    """

    def __init__(self, source: str, key: str, problem: str) -> None:
        self.source = source
        self.key = key
        self.problem = problem
        where = f"{source}: {key}: " if key else f"{source}: "
        super().__init__(where + problem)
