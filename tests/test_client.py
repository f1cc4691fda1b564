"""
Tests for L{mcpgw.client.MCPServer} with a fake process reactor and a C{task.Clock}:
spawn arguments, the handshake, tools/list pagination, calls, timeouts, cancellation and the
stop sequence.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorFromThreads, IReactorThreads
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

import mcpgw
from mcpgw import launchers
from mcpgw.client import MCPServer
from mcpgw.config import SandboxConfig, ServiceConfig
from mcpgw.errors import CallTimeout, ChildFailed, InvalidResult, JsonRpcError, StartupFailed
from tests.fake_process import FakeProcessReactor, FakeProcessTransport


class ClientTestsMixin:
    """Builds an C{MCPServer} on a C{FakeProcessReactor} and plays the child's side."""

    def setUp(self) -> None:
        self.reactor = FakeProcessReactor()
        self.root = os.path.abspath(self.mktemp())  # type: ignore[attr-defined]
        self.exits: list[str] = []
        self.changes: list[None] = []
        self.signals: list[tuple[int, int]] = []

    def make(self, **overrides: Any) -> MCPServer:
        service = ServiceConfig(
            name="svc", command=("my-server", "--flag"), startup_timeout=5, **overrides
        )
        server = MCPServer(
            self.reactor,
            service,
            self.root,
            {"PATH": "/bin", "SECRET": "x"},
            on_tools_changed=lambda: self.changes.append(None),
            on_exit=self.exits.append,
        )
        server.killpg = lambda pgid, signum: self.signals.append((pgid, signum))
        return server

    @property
    def transport(self) -> FakeProcessTransport:
        return self.reactor.transports[-1]

    def started(self, **overrides: Any) -> MCPServer:
        """A server whose handshake has completed."""
        server = self.make(**overrides)
        d = server.start()
        self.transport.reply(1, {"protocolVersion": "2025-06-18", "serverInfo": {"name": "x"}})
        self.successResultOf(d)  # type: ignore[attr-defined]
        return server


class StartTests(ClientTestsMixin, SynchronousTestCase):
    """C{MCPServer.start}."""

    def test_priority_wiring(self) -> None:
        """
        With C{weight_groups}, or an idle CPU group once usable, the child's priority follows
        it (C{mcpgw.priority}), with the time slices too unless it switches user; with
        neither, nothing is made.
        """
        made: list[tuple[int, int, object, object, bool]] = []

        class Recorded:
            def __init__(
                self,
                clock: object,
                pid: int,
                nice: int,
                slices: object,
                idle_group: object,
                weight_groups: bool,
            ) -> None:
                made.append((pid, nice, slices, idle_group, weight_groups))

            def start(self) -> None:
                pass

            def cancel(self) -> None:
                pass

        class Group:
            def __init__(self, usable: bool) -> None:
                self.usable = usable

        self.patch(mcpgw.client, "ChildPriority", Recorded)
        slices = object()
        usable, unusable = Group(True), Group(False)
        cases = [
            (True, False, None),
            (True, True, None),
            (False, False, None),
            (False, False, unusable),
            (False, False, usable),
            (True, False, unusable),
        ]
        for weight_groups, drop, group in cases:
            service = ServiceConfig(
                name="svc",
                command=("my-server",),
                sandbox=SandboxConfig(drop_privileges=drop),
            )
            server = MCPServer(
                self.reactor,
                service,
                self.root,
                {"PATH": "/bin"},
                weight_groups=weight_groups,
                slices=slices,  # type: ignore[arg-type]
                idle_group=group,  # type: ignore[arg-type]
            )
            server.start()
        switches = os.geteuid() == 0
        pids = [t.pid for t in self.reactor.transports]
        self.assertEqual(
            made,
            [
                (pids[0], 19, slices, None, True),
                (pids[1], 19, None if switches else slices, None, True),
                (pids[4], 19, slices, usable, False),
                (pids[5], 19, slices, None, True),
            ],
        )

    def test_spawn_arguments(self) -> None:
        """
        The launcher is spawned with the interpreter, C{-S -I}, the launcher path, the
        options and the command; an explicit env; no path, uid or gid.
        """
        server = self.make()
        server.start()
        spawned = self.reactor.spawned[0]
        self.assertEqual(spawned["executable"], sys.executable)
        self.assertEqual(spawned["args"][:4], [sys.executable, "-S", "-I", launchers.LAUNCHER])
        self.assertEqual(spawned["args"][-3:], ["--", "my-server", "--flag"])
        self.assertEqual((spawned["path"], spawned["uid"], spawned["gid"]), (None, None, None))
        self.assertEqual(spawned["env"]["HOME"], server.private_dir)
        self.assertNotIn("SECRET", spawned["env"])
        self.assertEqual(server.pid, 4242)

    def test_spawn_arguments_util_linux(self) -> None:
        """
        Given the util-linux tools, a command that can be found is spawned through the
        chain; still an explicit env, and no path, uid or gid (the posix_spawn path).
        """
        tools = launchers.Tools(setsid="/u/setsid", prlimit="/u/prlimit", setpriv="/u/setpriv",
                              env="/c/env")  # fmt: skip
        service = ServiceConfig(name="svc", command=(sys.executable, "srv.py"))
        server = MCPServer(self.reactor, service, self.root, {"PATH": "/bin"}, tools=tools)
        server.start()
        spawned = self.reactor.spawned[0]
        self.assertEqual(spawned["executable"], "/u/setsid")
        self.assertEqual(spawned["args"][0], "/u/setsid")
        self.assertEqual(
            spawned["args"][-5:], ["-C", server.private_dir, "--", sys.executable, "srv.py"]
        )
        self.assertEqual((spawned["path"], spawned["uid"], spawned["gid"]), (None, None, None))
        self.assertEqual(spawned["env"]["HOME"], server.private_dir)
        self.assertEqual(server.launcher, "util-linux")

    def test_handshake(self) -> None:
        """
        C{initialize} offers 2025-11-25 with empty capabilities and our client info; after
        the reply, C{notifications/initialized} is sent and the server's details are kept.
        """
        server = self.make()
        d = server.start()
        self.assertEqual(
            self.transport.messages(),
            [
                {
                    "jsonrpc": "2.0",
                    "id": 1,
                    "method": "initialize",
                    "params": {
                        "protocolVersion": "2025-11-25",
                        "capabilities": {},
                        "clientInfo": {"name": "mcpgw", "version": mcpgw.__version__},
                    },
                }
            ],
        )
        self.assertNoResult(d)
        self.transport.reply(
            1, {"protocolVersion": "2024-11-05", "serverInfo": {"name": "n"}, "capabilities": {}}
        )
        self.successResultOf(d)
        self.assertEqual(
            self.transport.last(), {"jsonrpc": "2.0", "method": "notifications/initialized"}
        )
        self.assertEqual(server.protocol_version, "2024-11-05")
        self.assertEqual(server.server_info, {"name": "n"})
        self.assertTrue(server.alive)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_accepted_versions(self) -> None:
        """Each of the four legacy versions is accepted back."""
        for version in ("2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"):
            server = self.make()
            d = server.start()
            self.transport.reply(1, {"protocolVersion": version})
            self.successResultOf(d)
            self.assertEqual(server.protocol_version, version)

    def fail_start(self, d: Deferred[None], server: MCPServer) -> StartupFailed:
        """The start failed: the process is stopped, the directory removed, timers gone."""
        private_dir = server.private_dir
        self.assertNoResult(d)
        self.assertTrue(self.transport.stdin_closed)
        self.transport.exit(0)
        self.transport.end()
        error = self.failureResultOf(d, StartupFailed).value
        self.assertFalse(os.path.exists(str(private_dir)))
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        return error

    def test_unsupported_version(self) -> None:
        """Another version back fails C{start} with C{StartupFailed} naming it."""
        server = self.make()
        d = server.start()
        self.transport.reply(1, {"protocolVersion": "2026-07-28"})
        error = self.fail_start(d, server)
        self.assertIn("unsupported protocol version '2026-07-28'", error.message)
        self.assertNotIn({"jsonrpc": "2.0", "method": "notifications/initialized"},
                         self.transport.messages())  # fmt: skip

    def test_initialize_error(self) -> None:
        """A JSON-RPC error to C{initialize} fails C{start}."""
        server = self.make()
        d = server.start()
        self.transport.send(
            {"jsonrpc": "2.0", "id": 1, "error": {"code": -32602, "message": "nope"}}
        )
        self.assertIn("refused initialize: -32602 nope", self.fail_start(d, server).message)

    def test_startup_timeout(self) -> None:
        """No reply within C{startup_timeout} fails C{start} with C{StartupFailed}."""
        server = self.make()
        d = server.start()
        self.reactor.advance(4.9)
        self.assertNoResult(d)
        self.reactor.advance(0.1)
        error = self.fail_start(d, server)
        self.assertEqual(error.message, "MCP server 'svc' did not initialize within 5 s")

    def test_exit_before_initialize(self) -> None:
        """A child exiting first fails C{start} at once with its exit code and stderr tail."""
        server = self.make()
        d = server.start()
        private_dir = server.private_dir
        self.transport.protocol.childDataReceived(2, b"no such module\n")
        self.transport.exit(1)
        self.transport.end()
        error = self.failureResultOf(d, StartupFailed).value
        self.assertEqual(error.message, "MCP server 'svc' exited with code 1")
        self.assertEqual(error.stderr_tail, "no such module")
        self.assertFalse(os.path.exists(str(private_dir)))
        self.assertEqual(self.exits, ["exited with code 1"])

    def test_spawn_error(self) -> None:
        """C{spawnProcess} raising fails C{start}; no directory is left behind."""
        self.reactor.spawn_error = OSError("no fork")
        d = self.make().start()
        self.assertIn("cannot spawn", self.failureResultOf(d, StartupFailed).value.message)
        self.assertEqual(os.listdir(self.root), [])

    def test_cancel_start(self) -> None:
        """Cancelling C{start} stops the child too."""
        server = self.make()
        d = server.start()
        d.cancel()
        self.assertTrue(self.transport.stdin_closed)
        self.transport.exit(0)
        self.transport.end()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(self.reactor.getDelayedCalls(), [])


class RequestTests(ClientTestsMixin, SynchronousTestCase):
    """C{list_tools} and C{call_tool}."""

    def test_pagination(self) -> None:
        """
        C{list_tools} follows C{nextCursor}, an empty string included, until it is null.
        """
        server = self.started()
        d = server.list_tools()
        self.transport.reply(2, {"tools": [{"name": "a"}], "nextCursor": ""})
        self.assertEqual(self.transport.last()["params"], {"cursor": ""})
        self.transport.reply(3, {"tools": [{"name": "b"}], "nextCursor": "c2"})
        self.assertEqual(self.transport.last()["params"], {"cursor": "c2"})
        self.transport.reply(4, {"tools": [{"name": "c"}], "nextCursor": None})
        self.assertEqual([t["name"] for t in self.successResultOf(d)], ["a", "b", "c"])

    def test_cursor_loop(self) -> None:
        """A cursor seen before fails C{list_tools} instead of looping."""
        server = self.started()
        d = server.list_tools()
        self.transport.reply(2, {"tools": [], "nextCursor": "x"})
        self.transport.reply(3, {"tools": [], "nextCursor": "x"})
        error = self.failureResultOf(d, ChildFailed).value
        self.assertIn("repeated tools/list cursor", error.message)

    def test_call_result(self) -> None:
        """C{call_tool} sends C{tools/call} and returns the whole result."""
        server = self.started()
        d = server.call_tool("echo", {"text": "hi"}, 10)
        self.assertEqual(
            self.transport.last()["params"], {"name": "echo", "arguments": {"text": "hi"}}
        )
        result = {"content": [{"type": "text", "text": "hi"}], "isError": False}
        self.transport.reply(2, result)
        self.assertEqual(self.successResultOf(d), result)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_concurrent_calls(self) -> None:
        """Calls are multiplexed: answers in any order reach their own callers."""
        server = self.started()
        first = server.call_tool("a", {}, 10)
        second = server.call_tool("b", {}, 10)
        self.transport.reply(3, {"n": 2})
        self.transport.reply(2, {"n": 1})
        self.assertEqual((self.successResultOf(first), self.successResultOf(second)),
                         ({"n": 1}, {"n": 2}))  # fmt: skip

    def test_call_error(self) -> None:
        """A JSON-RPC error fails the call with C{JsonRpcError}."""
        server = self.started()
        d = server.call_tool("x", {}, 10)
        self.transport.send(
            {"jsonrpc": "2.0", "id": 2, "error": {"code": -32602, "message": "Unknown tool: x"}}
        )
        error = self.failureResultOf(d, JsonRpcError).value
        self.assertEqual((error.code, error.status), (-32602, 400))

    def test_call_timeout(self) -> None:
        """
        After C{timeout} s the call fails with C{CallTimeout}, C{notifications/cancelled} is
        sent for its id, and a late response is ignored.
        """
        server = self.started()
        d = server.call_tool("slow", {}, 3)
        self.reactor.advance(3)
        self.assertEqual(self.failureResultOf(d, CallTimeout).value.seconds, 3)
        self.assertEqual(
            self.transport.last(),
            {
                "jsonrpc": "2.0",
                "method": "notifications/cancelled",
                "params": {"requestId": 2, "reason": "timed out after 3 s"},
            },
        )
        self.transport.reply(2, {"late": True})
        self.assertTrue(server.alive)

    def test_cancel_call(self) -> None:
        """
        Cancelling the call sends C{notifications/cancelled}, forgets the id and fails with
        C{CancelledError}; its timer is cancelled.
        """
        server = self.started()
        d = server.call_tool("slow", {}, 30)
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(self.transport.last()["method"], "notifications/cancelled")
        self.assertEqual(self.transport.last()["params"]["requestId"], 2)
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        self.transport.reply(2, {})

    def test_child_dies_during_call(self) -> None:
        """The child exiting fails the call at once with C{ChildFailed}; C{on_exit} is told."""
        server = self.started()
        d = server.call_tool("crash", {}, 30)
        self.transport.exit(None, signal.SIGSEGV)
        error = self.failureResultOf(d, ChildFailed).value
        self.assertIn("killed by signal 11 (SIGSEGV)", error.message)
        self.assertEqual(self.exits, ["was killed by signal 11 (SIGSEGV)"])
        self.assertFalse(server.alive)
        self.assertIsNone(server.pid)
        later = server.call_tool("echo", {}, 30)
        self.assertIn("killed by signal", self.failureResultOf(later, ChildFailed).value.message)

    def test_response_after_exit(self) -> None:
        """
        A response read after the exit was seen (still in the pipe) completes the call;
        C{on_exit} was told at the exit and the server is no longer alive.
        """
        server = self.started()
        d = server.call_tool("last", {}, 30)
        self.transport.exit(0, output_open=True)
        self.assertEqual(self.exits, ["exited with code 0"])
        self.assertFalse(server.alive)
        self.assertNoResult(d)
        self.transport.reply(2, {"content": []})
        self.assertEqual(self.successResultOf(d), {"content": []})
        self.transport.end()
        self.successResultOf(server.stop())
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_output_held_open_after_exit(self) -> None:
        """
        If the pipes stay open after the exit (a grandchild holds them), the pending calls
        fail after C{drain_grace}, well before the pipes are closed after C{close_grace}.
        """
        server = self.started()
        d = server.call_tool("x", {}, 30)
        self.transport.exit(4, output_open=True)
        self.reactor.advance(server.drain_grace / 2)
        self.assertNoResult(d)
        self.reactor.advance(server.drain_grace / 2)
        self.assertIn("exited with code 4", self.failureResultOf(d, ChildFailed).value.message)
        self.assertFalse(self.transport.lost)
        self.reactor.advance(server.close_grace - server.drain_grace)
        self.assertTrue(self.transport.lost)
        self.transport.end()
        self.successResultOf(server.stop())
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_non_object_result(self) -> None:
        """
        A result that is not a JSON object fails that call with C{InvalidResult}, which is
        not a C{ChildFailed}: the child answered, it lives on (the session keeps its state).
        """
        server = self.started()
        d = server.call_tool("x", {}, 10)
        self.transport.reply(2, [1, 2])
        failure = self.failureResultOf(d, InvalidResult)
        self.assertNotIsInstance(failure.value, ChildFailed)
        self.assertTrue(server.alive)

    def test_overlong_line_stops_child(self) -> None:
        """An over-long stdout line fails the call and stops the child."""
        server = self.started(max_line_bytes=200)
        d = server.call_tool("x", {}, 10)
        self.transport.protocol.childDataReceived(1, b"x" * 300)
        self.failureResultOf(d, ChildFailed)
        self.assertFalse(server.alive)
        self.assertTrue(self.transport.stdin_closed)

    def test_tools_changed(self) -> None:
        """C{notifications/tools/list_changed} calls C{on_tools_changed}."""
        self.started()
        self.transport.send({"jsonrpc": "2.0", "method": "notifications/tools/list_changed"})
        self.assertEqual(len(self.changes), 1)


class StopTests(ClientTestsMixin, SynchronousTestCase):
    """C{MCPServer.stop}."""

    def test_prompt_exit(self) -> None:
        """
        C{stop} closes stdin; a child that exits then gets no SIGTERM; the group gets one
        SIGKILL for stragglers; C{stop} fires once the pipes closed and the directory is gone.
        """
        server = self.started()
        private_dir = server.private_dir
        d = server.stop()
        self.assertTrue(self.transport.stdin_closed)
        self.reactor.advance(1)
        self.transport.exit(0)
        self.assertEqual(self.signals, [(4242, signal.SIGKILL)])
        self.assertNoResult(d)
        self.assertTrue(os.path.isdir(str(private_dir)))
        self.transport.end()
        self.successResultOf(d)
        self.assertFalse(os.path.exists(str(private_dir)))
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_escalation(self) -> None:
        """
        A child that ignores stdin EOF gets SIGTERM on its group after C{term_grace}, then
        SIGKILL after C{kill_grace}.
        """
        server = self.started()
        d = server.stop()
        self.reactor.pump([1, 1])
        self.assertEqual(self.signals, [(4242, signal.SIGTERM)])
        self.reactor.pump([1, 1])
        self.assertEqual(self.signals, [(4242, signal.SIGTERM), (4242, signal.SIGKILL)])
        self.transport.exit(None, signal.SIGKILL)
        self.transport.end()
        self.successResultOf(d)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_grace_attributes(self) -> None:
        """The grace periods are attributes a caller can shorten."""
        server = self.started()
        server.term_grace = 0.1
        server.stop()
        self.reactor.advance(0.1)
        self.assertEqual(self.signals, [(4242, signal.SIGTERM)])

    def test_idempotent(self) -> None:
        """Every C{stop} call fires once the child has ended; later ones fire at once."""
        server = self.started()
        first, second = server.stop(), server.stop()
        self.transport.exit(0)
        self.transport.end()
        self.successResultOf(first)
        self.successResultOf(second)
        self.successResultOf(server.stop())
        self.assertEqual(len(self.reactor.transports), 1)

    def test_pipes_held_open(self) -> None:
        """
        If the pipes stay open after the leader exited, our ends are closed after
        C{close_grace}.
        """
        server = self.started()
        d = server.stop()
        self.transport.exit(0, output_open=True)
        self.reactor.advance(server.close_grace)
        self.assertTrue(self.transport.lost)
        self.transport.end()
        self.successResultOf(d)

    def test_already_gone(self) -> None:
        """C{ProcessLookupError} from C{killpg} means the group is already gone."""
        server = self.started()

        def gone(pgid: int, signum: int) -> None:
            raise ProcessLookupError()

        server.killpg = gone
        d = server.stop()
        self.reactor.advance(2)
        self.transport.exit(None, 15)
        self.transport.end()
        self.successResultOf(d)

    def test_stop_before_start(self) -> None:
        """C{stop} on a never started server fires at once."""
        self.successResultOf(self.make().stop())

    def test_exit_without_stop_removes_dir(self) -> None:
        """A child ending on its own has its private directory removed too."""
        server = self.started()
        private_dir = server.private_dir
        self.transport.exit(2)
        self.transport.end()
        self.assertFalse(os.path.exists(str(private_dir)))
        self.successResultOf(server.stop())
        self.assertEqual(self.reactor.getDelayedCalls(), [])


class FakeThreadPool:
    """Holds the work given to it until C{run}; C{joined} as a stopped pool."""

    def __init__(self) -> None:
        self.joined = False
        self.queued: list[tuple[Any, Any, tuple[Any, ...]]] = []

    def callInThreadWithCallback(self, on_result: Any, f: Any, *args: Any) -> None:
        self.queued.append((on_result, f, args))

    def run(self) -> None:
        queued, self.queued = self.queued, []
        for on_result, f, args in queued:
            on_result(True, f(*args))


@implementer(IReactorThreads, IReactorFromThreads)
class ThreadedFakeReactor(FakeProcessReactor):
    """A fake process reactor with a thread pool that runs work when told."""

    def __init__(self) -> None:
        super().__init__()
        self.pool = FakeThreadPool()

    def getThreadPool(self) -> Any:
        return self.pool

    def callFromThread(self, f: Any, *args: Any, **kwargs: Any) -> None:
        f(*args, **kwargs)


class PrivateDirRemovalTests(ClientTestsMixin, SynchronousTestCase):
    """The private directory is removed off the reactor thread when there is a pool."""

    def setUp(self) -> None:
        super().setUp()
        self.reactor = ThreadedFakeReactor()

    def test_in_thread_pool(self) -> None:
        """
        With a thread pool, C{stop} fires only once the pool has removed the directory;
        a C{stop} asked in between waits as well.
        """
        server = self.started()
        private_dir = str(server.private_dir)
        first = server.stop()
        self.transport.exit(0)
        self.transport.end()
        second = server.stop()
        self.assertNoResult(first)
        self.assertNoResult(second)
        self.assertTrue(os.path.isdir(private_dir))
        self.reactor.pool.run()
        self.successResultOf(first)
        self.successResultOf(second)
        self.assertFalse(os.path.exists(private_dir))
        self.successResultOf(server.stop())

    def test_stopped_pool(self) -> None:
        """A pool that was stopped (reactor shutdown) is not used: removed at once."""
        self.reactor.pool.joined = True
        server = self.started()
        private_dir = str(server.private_dir)
        stopped = server.stop()
        self.transport.exit(0)
        self.transport.end()
        self.successResultOf(stopped)
        self.assertFalse(os.path.exists(private_dir))
        self.assertEqual(self.reactor.pool.queued, [])


class FactoryTests(SynchronousTestCase):
    """L{mcpgw.servers.mcp_server_factory} hands its launcher to every server."""

    def spawned_with(self, tools: Any) -> str:
        from mcpgw.servers import mcp_server_factory

        reactor = FakeProcessReactor()
        make = mcp_server_factory(reactor, os.path.abspath(self.mktemp()), {}, tools=tools)
        server = make(ServiceConfig(name="svc", command=(sys.executable, "srv.py")))
        server.start()
        return str(reactor.spawned[0]["executable"])

    def test_python_launcher(self) -> None:
        """C{tools=None}: the Python launcher."""
        self.assertEqual(self.spawned_with(None), sys.executable)

    def test_tools(self) -> None:
        """Given tools: the chain."""
        tools = launchers.Tools(setsid="/u/setsid", prlimit="/u/prlimit", setpriv="/u/setpriv",
                              env="/c/env")  # fmt: skip
        self.assertEqual(self.spawned_with(tools), "/u/setsid")

    def test_auto(self) -> None:
        """By default, whatever this machine supports (found once per process)."""
        tools, _ = launchers.default_tools()
        expected = sys.executable if tools is None else tools.setsid
        self.assertEqual(self.spawned_with("auto"), expected)
