# -*- test-case-name: tests.test_child -*-
"""
The process protocol of one MCP server child: stdio framing and JSON-RPC correlation (SPEC 5).

``MCPChildProtocol`` owns its own newline splitter on stdout (split on ``b"\\n"``, a trailing
``\\r`` stripped, blank lines ignored, an explicit maximum line length), decodes each line as one
JSON-RPC message and:

- correlates responses with our requests by id (per-child increasing integers; the server's
  own request ids are a separate space, may be ``0`` or strings, and a server *request* is never
  taken for a response);
- answers server requests: ``ping`` with ``{}``, anything else (``roots/list``,
  ``sampling/createMessage``, ``elicitation/create``, unknown) with ``-32601``;
- logs ``notifications/progress`` and ``notifications/message`` (nothing is stored) and calls
  ``on_tools_changed`` for ``notifications/tools/list_changed``;
- skips and logs lines that are not JSON.

An over-long line fails every pending request with ``ChildFailed`` and calls ``on_broken``
(the owner then stops the child). stderr is always drained, logged line by line as
``[{server}] {line}`` events and a bounded tail is kept for error messages.

The end comes in two steps. The moment the process exits (``processExited``) no more requests
are sent and ``on_exited`` is called. Twisted reports the exit as soon as it reaps the child,
while the pipes may still hold what the child wrote last (it reads a pipe a few KiB per reactor
turn): a complete response, the traceback at the end of stderr. So every pending request fails
with ``ChildFailed`` (naming the exit code or signal, with the stderr tail) only once stdout and
stderr have both reached end of file, when the process has ended (``processEnded``), or when the
owner calls ``report_exit()`` because a grandchild keeps the pipes open.
"""

from __future__ import annotations

import collections
import json
import signal
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, fail
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure

from mcpgw.errors import ChildFailed, JsonRpcError
from mcpgw.logs import Logger
from mcpgw.sendnow import send_now

METHOD_NOT_FOUND = -32601


_encoder = json.JSONEncoder(separators=(",", ":"))


def encode_message(message: dict[str, Any]) -> bytes:
    """One JSON-RPC message as one compact line (JSON escapes any newline)."""
    return _encoder.encode(message).encode("utf-8") + b"\n"


def write_stdin(transport: Any, data: bytes) -> None:
    """
    Write ``data`` to a child's stdin at once when nothing is queued there, else queue it
    (``mcpgw.sendnow``). A transport without Twisted's pipes (a test's fake) is written to as
    usual.
    """
    pipes = getattr(transport, "pipes", None)
    if isinstance(pipes, dict):
        data = send_now(pipes.get(0), data)
    if data:
        transport.write(data)


def describe_exit(reason: Failure) -> str:
    """``exited with code N`` or ``was killed by signal N (SIGNAME)`` for a process end."""
    value = reason.value
    if isinstance(value, ProcessDone):
        return "exited with code 0"
    if isinstance(value, ProcessTerminated):
        if value.signal is not None:
            try:
                name = signal.Signals(value.signal).name
            except ValueError:
                name = "unknown signal"
            return f"was killed by signal {value.signal} ({name})"
        return f"exited with code {value.exitCode}"
    return f"ended: {value}"


class MCPChildProtocol(ProcessProtocol):
    """
    JSON-RPC over one MCP server's stdio.

    @ivar exit_description: ``None`` while the process runs, then how it ended.
    @ivar broken: set once stdout became unusable (an over-long line); no more requests.
    """

    log = Logger()

    def __init__(
        self,
        server: str,
        max_line_bytes: int,
        *,
        on_tools_changed: Callable[[], None] | None = None,
        on_exited: Callable[[str], None] | None = None,
        on_ended: Callable[[], None] | None = None,
        on_broken: Callable[[str], None] | None = None,
        stderr_lines: int = 20,
        stderr_bytes: int = 4096,
    ) -> None:
        self.server = server
        self.max_line_bytes = max_line_bytes
        self._on_tools_changed = on_tools_changed
        self._on_exited = on_exited
        self._on_ended = on_ended
        self._on_broken = on_broken
        self._stderr_bytes = stderr_bytes
        self._stdout = bytearray()
        self._stderr = bytearray()
        self._tail: collections.deque[str] = collections.deque(maxlen=stderr_lines)
        self._pending: dict[int, Deferred[Any]] = {}
        self._next_id = 1
        self.exit_description: str | None = None
        self.ended = False
        self.broken = False
        # stdout and stderr until they reach end of file (or are closed by us).
        self._open_output = {1, 2}
        self._exit_reported = False

    # -- our requests ---------------------------------------------------------------------

    @property
    def usable(self) -> bool:
        """Whether a request can still be sent (connected, not exited, not broken)."""
        return self.transport is not None and self.exit_description is None and not self.broken

    @property
    def pending_ids(self) -> list[int]:
        """The ids of the requests waiting for a response."""
        return list(self._pending)

    def request(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        on_cancel: Callable[[int], None] | None = None,
    ) -> tuple[int, Deferred[Any]]:
        """
        Send a request; the Deferred fires with its ``result`` or fails with ``JsonRpcError``
        (an ``error`` response) or ``ChildFailed`` (the child went away first).

        Cancelling the Deferred forgets the id (a late response is then ignored) and calls
        ``on_cancel(id)``, e.g. to send ``notifications/cancelled``.
        """
        request_id = self._next_id
        self._next_id += 1
        if not self.usable:
            return request_id, fail(self._failure("is not running"))

        def canceller(_: Deferred[Any]) -> None:
            if self._pending.pop(request_id, None) is not None and on_cancel is not None:
                on_cancel(request_id)

        d: Deferred[Any] = Deferred(canceller)
        self._pending[request_id] = d
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
        if params is not None:
            message["params"] = params
        self.send(message)
        return request_id, d

    def notify(self, method: str, params: dict[str, Any] | None = None) -> None:
        """Send a notification (no answer expected); dropped once the child is gone."""
        message: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            message["params"] = params
        self.send(message)

    def send(self, message: dict[str, Any]) -> None:
        """Write one message to the child's stdin, if it is still there."""
        if self.transport is not None and self.exit_description is None:
            write_stdin(self.transport, encode_message(message))

    def forget(self, request_id: int) -> Deferred[Any] | None:
        """Stop waiting for ``request_id``; its response, if it ever comes, is ignored."""
        return self._pending.pop(request_id, None)

    def fail_all(self, error: Exception) -> None:
        """Errback every pending request with ``error``, at once."""
        pending, self._pending = self._pending, {}
        for d in pending.values():
            d.errback(error)

    def stderr_tail(self) -> str:
        """The last lines the child wrote on stderr (bounded)."""
        return "\n".join(self._tail)

    def _failure(self, what: str) -> ChildFailed:
        return ChildFailed(f"MCP server {self.server!r} {what}", self.stderr_tail())

    # -- stdout -----------------------------------------------------------------------------

    def outReceived(self, data: bytes) -> None:
        if self.broken:
            return
        start = 0
        while True:
            newline = data.find(b"\n", start)
            if newline < 0:
                break
            if self._stdout:
                self._stdout += data[start:newline]
                line = bytes(self._stdout)
                self._stdout.clear()
            else:
                line = data[start:newline]
            start = newline + 1
            if line.endswith(b"\r"):
                line = line[:-1]
            if len(line) > self.max_line_bytes:
                self._line_too_long(len(line))
                return
            self._line_received(line)
            if self.broken:
                return
        self._stdout += data[start:]
        # One byte of slack for a trailing "\r" that does not count.
        if len(self._stdout) > self.max_line_bytes + 1:
            self._line_too_long(len(self._stdout))

    def _line_too_long(self, size: int) -> None:
        self.broken = True
        self._stdout = bytearray()
        self.log.error(
            "[{server}] stdout line longer than {max_line_bytes} bytes ({size} so far): "
            "failing its pending requests and stopping it",
            server=self.server,
            max_line_bytes=self.max_line_bytes,
            size=size,
        )
        error = self._failure(f"wrote a stdout line longer than {self.max_line_bytes} bytes")
        self.fail_all(error)
        if self._on_broken is not None:
            self._on_broken(error.message)

    def _line_received(self, line: bytes) -> None:
        if not line.strip():
            return
        try:
            message = json.loads(line)
        except (ValueError, RecursionError):  # not JSON, or nested beyond the parser's reach
            self.log.warn(
                "[{server}] skipped a stdout line that is not JSON: {line!r}",
                server=self.server,
                line=line[:200],
            )
            return
        try:
            self._message_received(message)
        except Exception:  # noqa: BLE001 - logged; one bad message must not kill the reader
            self.log.failure("[{server}] while handling a message", server=self.server)

    def _message_received(self, message: object) -> None:
        if not isinstance(message, dict):
            self.log.warn(
                "[{server}] skipped a stdout message that is not a JSON object", server=self.server
            )
            return
        method = message.get("method")
        if isinstance(method, str):
            params = message.get("params")
            if message.get("id") is not None:
                self._server_request(message["id"], method)
            else:
                self._notification(method, params if isinstance(params, dict) else {})
        elif "result" in message or "error" in message:
            self._response(message)
        else:
            self.log.warn("[{server}] skipped an unrecognised message", server=self.server)

    def _response(self, message: dict[str, Any]) -> None:
        request_id = message.get("id")
        # Our ids are ints; a string "1" is not our 1, and bool is not int here.
        d = self._pending.pop(request_id, None) if type(request_id) is int else None
        if d is None:
            self.log.debug(
                "[{server}] ignored a response for id {id!r} (unknown, cancelled or timed out)",
                server=self.server,
                id=request_id,
            )
            return
        if "error" in message:
            error = message["error"]
            if not isinstance(error, dict):
                error = {}
            code = error.get("code")
            text = error.get("message")
            d.errback(
                JsonRpcError(
                    code if type(code) is int else -32603,
                    text if isinstance(text, str) else "invalid error object",
                    error.get("data"),
                )
            )
        else:
            d.callback(message["result"])

    def _server_request(self, request_id: object, method: str) -> None:
        if method == "ping":
            self.log.debug("[{server}] answered a ping", server=self.server)
            self.send({"jsonrpc": "2.0", "id": request_id, "result": {}})
            return
        self.log.info(
            "[{server}] refused server request {method} (-32601)",
            server=self.server,
            method=method,
        )
        self.send(
            {
                "jsonrpc": "2.0",
                "id": request_id,
                "error": {"code": METHOD_NOT_FOUND, "message": f"Method not found: {method}"},
            }
        )

    def _notification(self, method: str, params: dict[str, Any]) -> None:
        if method == "notifications/tools/list_changed":
            self.log.info("[{server}] tools list changed", server=self.server)
            if self._on_tools_changed is not None:
                self._on_tools_changed()
        elif method == "notifications/message":
            self.log.info(
                "[{server}] log {mcp_level}: {data}",
                server=self.server,
                mcp_level=params.get("level"),
                logger_name=params.get("logger"),
                data=params.get("data"),
                stream="mcp-log",
            )
        elif method == "notifications/progress":
            self.log.debug(
                "[{server}] progress {progress}/{total} for {token!r}",
                server=self.server,
                progress=params.get("progress"),
                total=params.get("total"),
                token=params.get("progressToken"),
            )
        else:
            self.log.debug("[{server}] notification {method}", server=self.server, method=method)

    # -- stderr -----------------------------------------------------------------------------

    def errReceived(self, data: bytes) -> None:
        self._stderr += data
        while True:
            newline = self._stderr.find(b"\n")
            if newline < 0:
                break
            line = bytes(self._stderr[:newline])
            del self._stderr[: newline + 1]
            self._stderr_line(line)
        if len(self._stderr) > self._stderr_bytes:
            # An endless line: log it in pieces rather than hold it.
            line = bytes(self._stderr)
            self._stderr.clear()
            self._stderr_line(line)

    def _stderr_line(self, raw: bytes) -> None:
        text = raw.rstrip(b"\r").decode("utf-8", "replace")[: self._stderr_bytes]
        self.log.info("[{server}] {line}", server=self.server, line=text, stream="stderr")
        self._tail.append(text)
        while len(self._tail) > 1 and sum(len(t) for t in self._tail) > self._stderr_bytes:
            self._tail.popleft()

    # -- the end ----------------------------------------------------------------------------

    def childConnectionLost(self, childFD: int) -> None:
        if childFD not in self._open_output:
            return
        self._open_output.discard(childFD)
        if childFD == 2:
            self._flush_stderr()
        if not self._open_output and self.exit_description is not None:
            self.report_exit()

    def processExited(self, reason: Failure) -> None:
        """
        The process exited: no more requests, and ``on_exited`` is told at once. Its pending
        requests fail once its output has been read (see the module docstring).
        """
        if self.exit_description is not None:
            return
        self.exit_description = describe_exit(reason)
        if self._on_exited is not None:
            self._on_exited(self.exit_description)
        if not self._open_output:
            self.report_exit()

    def report_exit(self) -> None:
        """
        Fail every pending request with ``ChildFailed`` naming how the process ended, now,
        without waiting any longer for its stdout and stderr to close (a grandchild may hold
        them open); nothing before the process has exited, and only once.
        """
        if self.exit_description is None or self._exit_reported:
            return
        self._exit_reported = True
        self._flush_stderr()
        self.log.info(
            "[{server}] process {description}",
            server=self.server,
            description=self.exit_description,
        )
        self.fail_all(self._failure(self.exit_description))

    def processEnded(self, reason: Failure) -> None:
        self.processExited(reason)
        self._open_output.clear()
        self.report_exit()
        self._flush_stderr()
        self.ended = True
        if self._on_ended is not None:
            self._on_ended()

    def _flush_stderr(self) -> None:
        """Log (and keep in the tail) a last stderr line that has no newline."""
        if self._stderr:
            line = bytes(self._stderr)
            self._stderr.clear()
            self._stderr_line(line)
