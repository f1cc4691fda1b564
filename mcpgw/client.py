# -*- test-case-name: tests.test_client -*-
"""
``MCPServer``: one running MCP server child, the API the rest of the gateway uses (SPEC 5, 6).

Lifecycle: ``start()`` makes the private directory, spawns the launcher (``mcpgw.sandbox``),
performs the ``initialize`` handshake and sends ``notifications/initialized``; ``list_tools()``
and ``call_tool()`` are multiplexed by JSON-RPC id over the one process; ``stop()`` follows the
MCP shutdown order: close stdin, after ``term_grace`` s SIGTERM to the process group, after
``kill_grace`` more s SIGKILL, one more SIGKILL to the group once the leader has exited (to
catch stragglers), and fires once the process has ended and the private directory is gone.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Mapping
from typing import Any, cast

from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.interfaces import (
    IDelayedCall,
    IProcessTransport,
    IReactorFromThreads,
    IReactorProcess,
    IReactorThreads,
    IReactorTime,
)
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure

import mcpgw
from mcpgw import launchers, sandbox
from mcpgw.child import MCPChildProtocol
from mcpgw.config import ServiceConfig
from mcpgw.cpugroup import IdleGroup
from mcpgw.errors import CallTimeout, ChildFailed, InvalidResult, JsonRpcError, StartupFailed
from mcpgw.logs import Logger
from mcpgw.priority import ChildPriority
from mcpgw.timeslice import Slices

OFFERED_VERSION = "2025-11-25"
SUPPORTED_VERSIONS = frozenset({"2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"})
MAX_TOOL_PAGES = 1000


class MCPServer:
    """
    One MCP server child process and its JSON-RPC session.

    ``on_exit(description)`` is called once, the moment the process exits (also after
    ``stop()``), before its pending requests fail; they fail once what the child wrote before
    exiting has been read (a response still in the pipe completes its call), at most
    ``drain_grace`` s after the exit. ``on_tools_changed()`` on every
    ``notifications/tools/list_changed``. ``tools``: the util-linux launch chain
    (``launchers.find_tools``), else the Python launcher. ``weight_groups``: lower the child's
    autogroup weight while it starts and stops; ``slices``: with that, also give it the
    shortest time slice while it starts, unless it switches user (``mcpgw.priority``).
    ``idle_group``: once usable, the child starts and stops in it instead (``mcpgw.cpugroup``).

    @ivar term_grace: seconds between closing stdin and SIGTERM to the process group.
    @ivar kill_grace: seconds between SIGTERM and SIGKILL.
    @ivar drain_grace: seconds to wait, once the leader has exited, for the end of its stdout
        and stderr before its pending requests fail anyway (a grandchild outside the group
        may hold the pipes open).
    @ivar close_grace: seconds to wait, once the leader has exited, for its pipes to close
        (a grandchild outside the group may hold them) before closing our ends.
    @ivar killpg: ``os.killpg``; replaceable for tests.
    """

    log = Logger()
    term_grace = 2.0
    kill_grace = 2.0
    drain_grace = 0.25
    close_grace = 2.0

    def __init__(
        self,
        reactor: IReactorProcess,
        service: ServiceConfig,
        sandbox_root: str,
        environ: Mapping[str, str],
        on_tools_changed: Callable[[], None] | None = None,
        on_exit: Callable[[str], None] | None = None,
        tools: launchers.Tools | None = None,
        weight_groups: bool = False,
        slices: Slices | None = None,
        idle_group: IdleGroup | None = None,
    ) -> None:
        self._reactor = reactor
        self._idle_group = idle_group
        self._clock = IReactorTime(reactor)
        self._service = service
        self._sandbox_root = sandbox_root
        self._environ = environ
        self._on_tools_changed = on_tools_changed
        self._on_exit = on_exit
        self._tools = tools
        self._weight_groups = weight_groups
        self._slices = slices
        self._priority: ChildPriority | None = None
        self.killpg: Callable[[int, int], None] = os.killpg
        self._protocol: MCPChildProtocol | None = None
        self._transport: IProcessTransport | None = None
        self._pgid: int | None = None
        self._private_dir: str | None = None
        self._timers: dict[str, IDelayedCall] = {}
        self._stopping = False
        self._finished = False
        # Finished and the private directory removed: stop() has nothing left to wait for.
        self._done = False
        self._stop_waiters: list[Deferred[None]] = []
        self.server_info: dict[str, Any] = {}
        self.protocol_version = ""
        self.capabilities: dict[str, Any] = {}
        #: Which launcher started the child (``"util-linux"`` or ``"python"``), once spawned.
        self.launcher = ""

    @property
    def name(self) -> str:
        return self._service.name

    @property
    def alive(self) -> bool:
        """Running, initialized or not, and neither stopping nor broken."""
        return self._protocol is not None and self._protocol.usable and not self._stopping

    @property
    def pid(self) -> int | None:
        """The child's pid (also its process group id), until it has exited."""
        if self._protocol is None or self._protocol.exit_description is not None:
            return None
        return self._pgid

    @property
    def private_dir(self) -> str | None:
        return self._private_dir

    def stderr_tail(self) -> str:
        return self._protocol.stderr_tail() if self._protocol is not None else ""

    # -- start --------------------------------------------------------------------------------

    def start(self) -> Deferred[None]:
        """
        Spawn and initialize; fails with ``StartupFailed`` (the process stopped and the
        directory removed) when that does not complete within ``service.startup_timeout``.
        """
        return Deferred.fromCoroutine(self._start())

    async def _start(self) -> None:
        if self._protocol is not None or self._stopping:
            raise StartupFailed(f"MCP server {self.name!r} was already started")
        try:
            await self._spawn_and_initialize()
        except GeneratorExit:
            raise
        except BaseException as e:
            tail = self.stderr_tail()
            await self.stop()
            if isinstance(e, StartupFailed | CancelledError):
                raise
            if isinstance(e, ChildFailed):
                raise StartupFailed(e.message, e.stderr_tail) from None
            if isinstance(e, JsonRpcError):
                raise StartupFailed(
                    f"MCP server {self.name!r} refused initialize: {e.code} {e.message}", tail
                ) from None
            raise StartupFailed(f"MCP server {self.name!r} could not start: {e}", tail) from e

    async def _spawn_and_initialize(self) -> None:
        service = self._service
        try:
            launch = sandbox.prepare_launch(
                service, self._sandbox_root, self._environ, tools=self._tools
            )
        except OSError as e:
            raise StartupFailed(f"cannot make a private directory for {self.name!r}: {e}") from e
        self._private_dir = launch.private_dir
        self.launcher = launch.launcher
        protocol = MCPChildProtocol(
            service.name,
            service.max_line_bytes,
            on_tools_changed=self._tools_changed,
            on_exited=self._exited,
            on_ended=self._ended,
            on_broken=self._broken,
        )
        self._protocol = protocol
        try:
            self._transport = self._reactor.spawnProcess(
                protocol, launch.executable, launch.argv, env=dict(launch.env)
            )
        except OSError as e:
            self._protocol = None
            raise StartupFailed(f"cannot spawn MCP server {self.name!r}: {e}") from e
        self._pgid = self._transport.pid
        nice = sandbox.startup_nice(service)
        idle = self._idle_group if self._idle_group and self._idle_group.usable else None
        if nice and (self._weight_groups or idle) and self._pgid is not None:
            # A child that switches user may be out of the gateway's reach once it serves
            # (root in a user namespace may not change another user's task).
            switches = launchers.drops_privileges(service, os.geteuid())
            slices = None if switches else self._slices
            self._priority = ChildPriority(
                self._clock,
                self._pgid,
                nice,
                slices=slices,
                idle_group=idle,
                weight_groups=self._weight_groups,
            )
            self._priority.start()
        self.log.info(
            "spawned {server} pid={pid} dir={private_dir} ({launcher} launcher)",
            server=self.name,
            pid=self._pgid,
            private_dir=launch.private_dir,
            launcher=launch.launcher,
        )
        _, initializing = protocol.request(
            "initialize",
            {
                "protocolVersion": OFFERED_VERSION,
                "capabilities": {},
                "clientInfo": {"name": "mcpgw", "version": mcpgw.__version__},
            },
        )
        timed_out = []

        def on_timeout() -> None:
            timed_out.append(True)
            initializing.cancel()

        self._timers["startup"] = self._clock.callLater(service.startup_timeout, on_timeout)
        try:
            result = await initializing
        except CancelledError:
            if timed_out:
                raise StartupFailed(
                    f"MCP server {self.name!r} did not initialize within "
                    f"{service.startup_timeout:g} s",
                    self.stderr_tail(),
                ) from None
            raise
        finally:
            self._cancel_timer("startup")
        if not isinstance(result, dict):
            raise StartupFailed(f"MCP server {self.name!r} sent an invalid initialize result")
        version = result.get("protocolVersion")
        if version not in SUPPORTED_VERSIONS:
            raise StartupFailed(
                f"MCP server {self.name!r} answered initialize with unsupported "
                f"protocol version {version!r}",
                self.stderr_tail(),
            )
        info = result.get("serverInfo")
        capabilities = result.get("capabilities")
        self.server_info = info if isinstance(info, dict) else {}
        self.capabilities = capabilities if isinstance(capabilities, dict) else {}
        self.protocol_version = str(version)
        protocol.notify("notifications/initialized")
        if self._priority is not None:
            self._priority.serving()
        self.log.info(
            "initialized {server} ({version}, {server_name})",
            server=self.name,
            version=self.protocol_version,
            server_name=self.server_info.get("name"),
        )

    # -- requests ----------------------------------------------------------------------------

    def list_tools(self, timeout: float | None = None) -> Deferred[list[dict[str, Any]]]:
        """
        Every tool, following ``nextCursor`` until it is absent or null (``""`` is a cursor).

        Bounded by ``timeout`` s per page (default ``service.call_timeout``) and
        ``MAX_TOOL_PAGES`` pages; a repeated cursor fails with ``ChildFailed``.
        """
        return Deferred.fromCoroutine(self._list_tools(timeout or self._service.call_timeout))

    async def _list_tools(self, timeout: float) -> list[dict[str, Any]]:
        tools: list[dict[str, Any]] = []
        seen: set[str] = set()
        cursor: str | None = None
        for _ in range(MAX_TOOL_PAGES):
            params = {} if cursor is None else {"cursor": cursor}
            page = await self._request("tools/list", params, timeout)
            listed = page.get("tools")
            if not isinstance(listed, list):
                raise ChildFailed(f"MCP server {self.name!r} sent a tools/list without tools")
            tools.extend(t for t in listed if isinstance(t, dict))
            next_cursor = page.get("nextCursor")
            if next_cursor is None:
                return tools
            cursor = str(next_cursor)
            if cursor in seen:
                raise ChildFailed(
                    f"MCP server {self.name!r} repeated tools/list cursor {cursor!r}"
                )
            seen.add(cursor)
        raise ChildFailed(f"MCP server {self.name!r} sent more than {MAX_TOOL_PAGES} tool pages")

    def call_tool(
        self, name: str, arguments: dict[str, Any], timeout: float
    ) -> Deferred[dict[str, Any]]:
        """
        ``tools/call``: the whole ``CallToolResult``, or ``JsonRpcError``, ``CallTimeout``
        (``notifications/cancelled`` sent) or ``ChildFailed``. Cancelling the Deferred sends
        ``notifications/cancelled`` and forgets the request.
        """
        return self._request("tools/call", {"name": name, "arguments": arguments}, timeout)

    def _request(
        self, method: str, params: dict[str, Any], timeout: float
    ) -> Deferred[dict[str, Any]]:
        protocol = self._protocol
        if protocol is None or not self.alive:
            reason = protocol.exit_description if protocol is not None else None
            return fail(ChildFailed(f"MCP server {self.name!r} {reason or 'is not running'}"))
        request_id, d = protocol.request(
            method, params, on_cancel=lambda rid: self._send_cancelled(rid, "cancelled by client")
        )

        def on_timeout() -> None:
            if protocol.forget(request_id) is not None:
                self._send_cancelled(request_id, f"timed out after {timeout:g} s")
                d.errback(CallTimeout(timeout))

        timer = self._clock.callLater(timeout, on_timeout)

        def done(result: object) -> object:
            if timer.active():
                timer.cancel()
            return result

        d.addBoth(done)
        return d.addCallback(self._check_result, method)

    def _check_result(self, result: object, method: str) -> dict[str, Any]:
        if not isinstance(result, dict):
            # The child is fine (it answered): fail this request, keep the session.
            raise InvalidResult(
                f"MCP server {self.name!r} sent a {method} result that is not an object"
            )
        return result

    def _send_cancelled(self, request_id: int, reason: str) -> None:
        self.log.info(
            "cancelling request {id} of {server}: {reason}",
            id=request_id,
            server=self.name,
            reason=reason,
        )
        if self._protocol is not None:
            self._protocol.notify(
                "notifications/cancelled", {"requestId": request_id, "reason": reason}
            )

    # -- events from the protocol -----------------------------------------------------------

    def _tools_changed(self) -> None:
        if self._on_tools_changed is not None:
            self._on_tools_changed()

    def _broken(self, description: str) -> None:
        # stdout is unusable (an over-long line): end this child; the session restarts.
        self.stop()

    def _exited(self, description: str) -> None:
        for name in ("startup", "term", "kill"):
            self._cancel_timer(name)
        if self._priority is not None:
            self._priority.cancel()  # its pid may be reused from now on
        self._signal_group(signal.SIGKILL)  # stragglers left in the group
        if self._protocol is not None:
            self._timers["drain"] = self._clock.callLater(
                self.drain_grace, self._protocol.report_exit
            )
        if self._transport is not None:
            self._timers["close"] = self._clock.callLater(
                self.close_grace, self._transport.loseConnection
            )
        if not self._stopping:
            self.log.warn(
                "MCP server {server} {description}", server=self.name, description=description
            )
        if self._on_exit is not None:
            self._on_exit(description)

    def _ended(self) -> None:
        self._cancel_timer("drain")
        self._cancel_timer("close")
        self._finish()

    # -- stop --------------------------------------------------------------------------------

    def stop(self) -> Deferred[None]:
        """
        End the child (idempotent); fires once it has ended and its directory is removed.
        """
        if self._done:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._stop_waiters.append(d)
        if self._stopping:
            return d
        self._stopping = True
        protocol = self._protocol
        if protocol is None or protocol.ended:
            self._finish()
            return d
        if protocol.exit_description is None and self._transport is not None:
            if self._priority is not None:
                self._priority.stopping()
            self._transport.closeStdin()
            self._timers["term"] = self._clock.callLater(self.term_grace, self._terminate)
        return d

    def _terminate(self) -> None:
        self._timers.pop("term", None)
        self._signal_group(signal.SIGTERM)
        self._timers["kill"] = self._clock.callLater(self.kill_grace, self._kill)

    def _kill(self) -> None:
        self._timers.pop("kill", None)
        self._signal_group(signal.SIGKILL)

    def _signal_group(self, signum: int) -> None:
        if self._pgid is None:
            return
        try:
            self.killpg(self._pgid, signum)
        except ProcessLookupError:
            pass
        except OSError as e:
            self.log.warn(
                "cannot signal {server} group {pgid}: {error}",
                server=self.name,
                pgid=self._pgid,
                error=e,
            )

    def _cancel_timer(self, name: str) -> None:
        timer = self._timers.pop(name, None)
        if timer is not None and timer.active():
            timer.cancel()

    def _finish(self) -> None:
        if self._finished:
            return
        self._finished = True
        self._stopping = True
        for name in list(self._timers):
            self._cancel_timer(name)
        if self._priority is not None:
            self._priority.cancel()
        removed = (
            self._remove_private_dir(self._private_dir)
            if self._private_dir is not None
            else succeed(None)
        )
        removed.addBoth(self._stopped)

    def _remove_private_dir(self, path: str) -> Deferred[None]:
        """
        Remove the private directory in the reactor's thread pool when there is one still
        running, else right here. On a journalled filesystem that ``rmdir`` blocks for a
        millisecond on average (measured on ext4 while sessions churn), and every other
        session's calls would wait for it.
        """
        threads = IReactorThreads(self._reactor, None)
        if threads is not None:
            pool = threads.getThreadPool()
            if not pool.joined:
                reactor = cast(IReactorFromThreads, self._reactor)
                return deferToThreadPool(reactor, pool, sandbox.remove_private_dir, path)
        sandbox.remove_private_dir(path)
        return succeed(None)

    def _stopped(self, result: object) -> None:
        if isinstance(result, Failure):  # pragma: no cover - remove_private_dir never raises
            self.log.failure("while removing {path}", result, path=self._private_dir)
        self._done = True
        waiters, self._stop_waiters = self._stop_waiters, []
        for d in waiters:
            d.callback(None)
