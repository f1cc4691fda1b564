"""
Integration tests for L{mcpgw.client.MCPServer} with real processes of
C{tests/fake_mcp_server.py}, spawned through the real launchers on the real reactor: every
test runs with the Python launcher (C{RealProcessTests}) and with the util-linux chain
(C{UtilLinuxProcessTests}, skipped where the tools are missing).
"""

from __future__ import annotations

import json
import os
import signal
import sys
from typing import Any

import attrs
from twisted.internet import reactor as _global_reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import deferLater
from twisted.trial.unittest import SkipTest, TestCase

from mcpgw import launchers, priority, timeslice
from mcpgw.client import MCPServer
from mcpgw.config import ResourceLimits, SandboxConfig, ServiceConfig
from mcpgw.errors import ChildFailed, JsonRpcError, StartupFailed
from tests.test_timeslice import clears_flag

FAKE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fake_mcp_server.py")

reactor: Any = _global_reactor


def fake_service(*flags: str, **overrides: Any) -> ServiceConfig:
    """A service running the fake server (by path) with C{flags}."""
    return ServiceConfig(name="fake", command=(sys.executable, FAKE, *flags), **overrides)


def process_gone(pid: int) -> bool:
    """Whether C{pid} no longer runs (absent, or a zombie waiting for its reaper)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("State:"):
                    return "Z" in line.split()[1]
    except FileNotFoundError:
        return True
    return False


async def gone_soon(pid: int) -> bool:
    """Whether C{pid} is gone within 5 s (a signalled process needs a moment to die)."""
    for _ in range(100):
        if process_gone(pid):
            return True
        await deferLater(reactor, 0.05, lambda: None)
    return False


def text_of(result: dict[str, Any]) -> str:
    return str(result["content"][0]["text"])


def own_slice() -> int | None:
    """This thread's time slice in ns (what a child starts with); C{None} where not shown."""
    with open("/proc/thread-self/sched") as f:
        for line in f:
            if line.startswith("se.slice"):
                return int(line.split(":")[1])
    return None


class RealProcessTests(TestCase):
    """C{MCPServer} against real child processes, through the Python launcher."""

    timeout = 60
    tools: launchers.Tools | None = None
    launcher = "python"

    def setUp(self) -> None:
        self.root = os.path.abspath(self.mktemp())
        self.exits: list[str] = []
        self.changes: list[None] = []

    def server(
        self,
        service: ServiceConfig,
        environ: dict[str, str] | None = None,
        weight_groups: bool = False,
        slices: timeslice.Slices | None = None,
    ) -> MCPServer:
        server = MCPServer(
            reactor,
            service,
            self.root,
            os.environ if environ is None else environ,
            on_tools_changed=lambda: self.changes.append(None),
            on_exit=self.exits.append,
            tools=self.tools,
            weight_groups=weight_groups,
            slices=slices,
        )
        server.term_grace = 0.5
        server.kill_grace = 0.5
        self.addCleanup(server.stop)
        return server

    @inlineCallbacks
    def test_handshake_call_and_state(self) -> Any:
        """
        C{start} completes the handshake; calls return the whole C{CallToolResult}, and the
        process keeps its state between calls.
        """
        server = self.server(fake_service())
        yield server.start()
        self.assertTrue(server.alive)
        self.assertEqual(server.protocol_version, "2025-11-25")
        self.assertEqual(server.server_info["name"], "fake-mcp-server")
        result = yield server.call_tool("add", {"a": 2, "b": 3}, 10)
        self.assertEqual(result["structuredContent"], {"sum": 5})
        counts = []
        for _ in range(3):
            counts.append(text_of((yield server.call_tool("incr", {}, 10))))
        self.assertEqual(counts, ["1", "2", "3"])
        error = yield self.assertFailure(server.call_tool("fail", {}, 10), JsonRpcError)
        self.assertEqual((error.code, error.data), (-32000, {"detail": "from fake"}))

    @inlineCallbacks
    def test_pagination(self) -> Any:
        """C{list_tools} follows cursors (an empty string one too) and returns every page."""
        server = self.server(fake_service("--page-size=4", "--cursor-style=empty-first"))
        yield server.start()
        tools = yield server.list_tools()
        self.assertEqual(len(tools), 21)
        self.assertEqual(tools[0]["name"], "echo")
        self.assertEqual(len({t["name"] for t in tools}), 21)

    @inlineCallbacks
    def test_server_requests_answered(self) -> Any:
        """
        A server C{ping} mid-call gets C{{}}; C{roots/list}, sampling and elicitation get
        -32601; the call completes once they are answered.
        """
        server = self.server(fake_service())
        yield server.start()
        answers = json.loads(text_of((yield server.call_tool("ping_roots", {}, 10))))
        self.assertEqual(answers["ping"]["result"], {})
        self.assertEqual(answers["ping"]["id"], "srv-ping")
        self.assertEqual(answers["roots/list"]["id"], 0)
        for method in ("roots/list", "sampling/createMessage", "elicitation/create"):
            self.assertEqual(answers[method]["error"]["code"], -32601)

    @inlineCallbacks
    def test_crash_fails_call_at_once(self) -> Any:
        """
        A child exiting mid-call fails the call with C{ChildFailed} naming the exit code,
        with the stderr tail; C{on_exit} hears of it and the private directory is removed.
        """
        server = self.server(fake_service("--grandchild-holds-pipes"))
        yield server.start()
        private_dir = server.private_dir
        assert private_dir is not None
        slow = server.call_tool("sleep", {"seconds": 30}, 30)
        error = yield self.assertFailure(server.call_tool("crash", {"code": 7}, 10), ChildFailed)
        self.assertIn("exited with code 7", error.message)
        self.assertIn("crashing on purpose", error.stderr_tail)
        yield self.assertFailure(slow, ChildFailed)
        self.assertFalse(server.alive)
        self.assertEqual(self.exits, ["exited with code 7"])
        yield server.stop()
        self.assertFalse(os.path.exists(private_dir))

    @inlineCallbacks
    def test_answer_written_before_exit_delivered(self) -> Any:
        """
        A response the child wrote just before exiting (still in the stdout pipe when the
        exit is seen: the reactor reads a pipe in small pieces) completes the call; the
        exit is still reported to C{on_exit}.
        """
        server = self.server(fake_service())
        yield server.start()
        result = yield server.call_tool("crash", {"code": 0, "answer_bytes": 500000}, 10)
        self.assertEqual(len(text_of(result)), 500000)
        yield server.stop()
        self.assertEqual(self.exits, ["exited with code 0"])

    @inlineCallbacks
    def test_stderr_written_before_exit_in_tail(self) -> Any:
        """
        The last stderr lines a crashing child wrote (still in the pipe when the exit is
        seen) are in the failed call's stderr tail.
        """
        server = self.server(fake_service())
        yield server.start()
        error = yield self.assertFailure(
            server.call_tool("crash", {"code": 7, "stderr_lines": 5000}, 10), ChildFailed
        )
        self.assertIn("exited with code 7", error.message)
        self.assertEqual(error.stderr_tail.splitlines()[-1], "crashing on purpose")

    @inlineCallbacks
    def test_stop_kills_process_group(self) -> Any:
        """
        C{stop} on a child that ignores stdin EOF escalates to SIGTERM on the process group,
        which also ends its grandchild; the private directory is removed.
        """
        server = self.server(fake_service("--ignore-eof", "--grandchild"))
        yield server.start()
        pid = server.pid
        grandchild = int(text_of((yield server.call_tool("spawn_grandchild", {}, 10))))
        private_dir = server.private_dir
        assert private_dir is not None and pid is not None
        yield server.stop()
        self.assertTrue(process_gone(pid))
        self.assertTrue((yield Deferred.fromCoroutine(gone_soon(grandchild))))
        self.assertFalse(os.path.exists(private_dir))
        self.assertEqual(self.exits, [f"was killed by signal {signal.SIGTERM} (SIGTERM)"])

    @inlineCallbacks
    def test_stop_sigkill(self) -> Any:
        """A child that ignores SIGTERM is killed with SIGKILL after C{kill_grace}."""
        server = self.server(fake_service("--ignore-eof", "--ignore-sigterm"))
        yield server.start()
        yield server.stop()
        self.assertEqual(self.exits, [f"was killed by signal {signal.SIGKILL} (SIGKILL)"])

    @inlineCallbacks
    def test_straggler_holding_pipes(self) -> Any:
        """
        A grandchild that keeps the stdout pipe open is killed once the leader exits, so
        C{stop} still completes.
        """
        server = self.server(fake_service("--grandchild-holds-pipes"))
        yield server.start()
        tail = server.stderr_tail()
        grandchild = int(tail.split("grandchild pid=")[1].split()[0])
        yield server.stop()
        self.assertTrue((yield Deferred.fromCoroutine(gone_soon(grandchild))))

    @inlineCallbacks
    def test_restricted_env(self) -> Any:
        """
        With C{restricted_env}, a gateway secret does not reach the child; C{HOME} and
        C{TMPDIR} are the private directory, which is also the working directory, and the
        service's C{env} is added.
        """
        environ = dict(os.environ, MCPGW_TEST_SECRET="hunter2")
        server = self.server(fake_service(env={"EXTRA": "yes"}), environ)
        yield server.start()
        env = json.loads(text_of((yield server.call_tool("env", {}, 10))))
        report = json.loads(text_of((yield server.call_tool("sandbox", {}, 10))))
        self.assertNotIn("MCPGW_TEST_SECRET", env)
        self.assertEqual(env["EXTRA"], "yes")
        self.assertEqual(env["HOME"], server.private_dir)
        self.assertEqual(env["TMPDIR"], server.private_dir)
        self.assertEqual(report["cwd"], server.private_dir)

    @inlineCallbacks
    def test_unrestricted_env(self) -> Any:
        """With C{restricted_env} off, the gateway's environment is passed on."""
        environ = dict(os.environ, MCPGW_TEST_SECRET="hunter2")
        service = fake_service(sandbox=SandboxConfig(restricted_env=False))
        server = self.server(service, environ)
        yield server.start()
        env = json.loads(text_of((yield server.call_tool("env", {}, 10))))
        self.assertEqual(env["MCPGW_TEST_SECRET"], "hunter2")

    @inlineCallbacks
    def test_rlimits_and_session(self) -> Any:
        """
        The child runs with the default resource limits, leads its own session and process
        group.
        """
        server = self.server(fake_service())
        yield server.start()
        report = json.loads(text_of((yield server.call_tool("sandbox", {}, 10))))
        limits = report["rlimits"]
        self.assertEqual(limits["nofile"], [1024, 1024])
        self.assertEqual(limits["cpu"], [3600, 3600])
        self.assertEqual(limits["as"], [2048 * 1024 * 1024] * 2)
        self.assertEqual(limits["fsize"], [100 * 1024 * 1024] * 2)
        self.assertEqual(report["pid"], server.pid)
        self.assertEqual(report["pgid"], server.pid)
        self.assertEqual(report["sid"], server.pid)
        self.assertEqual(server.launcher, self.launcher)

    @inlineCallbacks
    def test_priority_while_starting_and_stopping(self) -> Any:
        """
        Until it has answered C{initialize} the child's group has C{startup_nice} and its
        task the shortest time slice (and C{SCHED_RESET_ON_FORK}); while it serves nice 0 and
        the default slice, its policy as it was; once stopped C{startup_nice} again. Where the
        gateway may not write the groups without limit (C{can_weight_groups}: root in a user
        namespace, say) they are left alone, and so are slices (given only with the weight);
        slices also where the kernel has none.
        """
        weight = priority.can_weight_groups()
        slices = timeslice.available_slices()
        on_eof = os.path.abspath(self.mktemp())
        server = self.server(
            fake_service("--init-delay=0.3", f"--priority-on-eof={on_eof}"),
            weight_groups=weight,
            slices=slices,
        )
        yield server.start()
        report = json.loads(text_of((yield server.call_tool("priority", {}, 10))))
        if report["now"]["autogroup"] is None:
            raise SkipTest("no /proc/self/autogroup here")
        default = own_slice()
        low = {"policy": os.SCHED_OTHER, "autogroup": 19 if weight else 0, "slice": default}
        sliced = slices is not None and weight
        short = timeslice.SHORTEST if sliced else default
        flag = os.SCHED_RESET_ON_FORK if sliced else 0
        self.assertEqual(report["startup"], dict(low, slice=short, policy=os.SCHED_OTHER | flag))
        now = {"policy": os.SCHED_OTHER, "autogroup": 0, "slice": default}
        # Where the gateway may not clear SCHED_RESET_ON_FORK, the kernel keeps it.
        kept = dict(now, policy=os.SCHED_OTHER | flag)
        self.assertIn(report["now"], [now] if clears_flag() else [now, kept])
        yield server.stop()
        with open(on_eof) as f:
            stopped = json.load(f)
        self.assertIn(stopped, [low] if clears_flag() else [low, dict(low, policy=kept["policy"])])

    @inlineCallbacks
    def test_priority_left_alone(self) -> Any:
        """C{startup_nice: null} leaves the child's priority alone, from start to stop."""
        limits = ResourceLimits(startup_nice=None)
        on_eof = os.path.abspath(self.mktemp())
        service = fake_service(
            "--init-delay=0.3",
            f"--priority-on-eof={on_eof}",
            sandbox=SandboxConfig(resource_limits=limits),
        )
        server = self.server(service, weight_groups=True, slices=timeslice.available_slices())
        yield server.start()
        report = json.loads(text_of((yield server.call_tool("priority", {}, 10))))
        if report["now"]["autogroup"] is None:
            raise SkipTest("no /proc/self/autogroup here")
        normal = {"policy": os.SCHED_OTHER, "autogroup": 0, "slice": own_slice()}
        self.assertEqual(report, {"startup": normal, "now": normal})
        yield server.stop()
        with open(on_eof) as f:
            self.assertEqual(json.load(f), normal)

    @inlineCallbacks
    def test_signals_and_pdeathsig(self) -> Any:
        """
        The child starts with no blocked signal and (Linux) gets SIGTERM when the gateway
        dies. (Ignored signals: see C{tests.test_launch}, with a child that is not Python.)
        """
        server = self.server(fake_service())
        yield server.start()
        report = json.loads(text_of((yield server.call_tool("sandbox", {}, 10))))
        if report["sigblk"] is None or report["pdeathsig"] is None:
            raise SkipTest("no /proc/self/status or prctl here")
        self.assertEqual(report["sigblk"], 0)
        self.assertEqual(report["pdeathsig"], signal.SIGTERM)

    @inlineCallbacks
    def test_working_dir_and_relative_command(self) -> Any:
        """
        C{working_dir} is the child's directory, and a relative command is found from it.
        """
        workdir = os.path.abspath(self.mktemp())
        os.mkdir(workdir)
        os.symlink(FAKE, os.path.join(workdir, "fake.py"))
        service = ServiceConfig(
            name="fake", command=(sys.executable, "./fake.py"), working_dir=workdir
        )
        server = self.server(service)
        yield server.start()
        report = json.loads(text_of((yield server.call_tool("sandbox", {}, 10))))
        self.assertEqual(report["cwd"], workdir)
        self.assertEqual(server.launcher, self.launcher)

    @inlineCallbacks
    def test_sandbox_disabled_still_own_group(self) -> Any:
        """With the sandbox disabled there are no limits, but the child has its own group."""
        server = self.server(fake_service(sandbox=SandboxConfig(enabled=False)))
        yield server.start()
        report = json.loads(text_of((yield server.call_tool("sandbox", {}, 10))))
        self.assertEqual(report["pgid"], server.pid)
        self.assertNotEqual(report["rlimits"]["nofile"], [1024, 1024])

    @inlineCallbacks
    def test_overlong_line(self) -> Any:
        """
        A stdout line over C{max_line_bytes} fails the call with C{ChildFailed} and the child
        is stopped.
        """
        server = self.server(fake_service(max_line_bytes=4096))
        yield server.start()
        error = yield self.assertFailure(
            server.call_tool("huge", {"bytes": 100000}, 10), ChildFailed
        )
        self.assertIn("longer than 4096 bytes", error.message)
        self.assertFalse(server.alive)
        yield server.stop()
        self.assertEqual(len(self.exits), 1)

    @inlineCallbacks
    def test_exit_before_initialize(self) -> Any:
        """A child exiting before its C{initialize} reply fails C{start} with its exit code."""
        server = self.server(fake_service("--exit-before-init=5"))
        error = yield self.assertFailure(server.start(), StartupFailed)
        self.assertIn("exited with code 5", error.message)
        self.assertIn("dying before initialize", error.stderr_tail)
        self.assertEqual(os.listdir(self.root), [])

    @inlineCallbacks
    def test_command_not_found(self) -> Any:
        """A command that cannot be run fails C{start}: the launcher exits 127 and says why."""
        server = self.server(ServiceConfig(name="nope", command=("/nonexistent/server",)))
        error = yield self.assertFailure(server.start(), StartupFailed)
        self.assertIn("exited with code 127", error.message)
        self.assertIn("mcpgw-launch: cannot run '/nonexistent/server'", error.stderr_tail)

    @inlineCallbacks
    def test_startup_timeout(self) -> Any:
        """A child that never answers C{initialize} fails C{start} after C{startup_timeout}."""
        server = self.server(fake_service("--no-init-reply", startup_timeout=0.5))
        error = yield self.assertFailure(server.start(), StartupFailed)
        self.assertIn("did not initialize within 0.5 s", error.message)
        self.assertEqual(os.listdir(self.root), [])

    @inlineCallbacks
    def test_list_changed(self) -> Any:
        """A C{notifications/tools/list_changed} calls C{on_tools_changed}."""
        server = self.server(fake_service("--list-changed"))
        yield server.start()
        yield server.call_tool("list_changed", {}, 10)
        self.assertGreaterEqual(len(self.changes), 2)

    @inlineCallbacks
    def test_cancel_sends_cancelled(self) -> Any:
        """Cancelling a call sends C{notifications/cancelled} for its id to the child."""
        server = self.server(fake_service())
        yield server.start()
        call = server.call_tool("hang", {}, 30)
        yield deferLater(reactor, 0.05, lambda: None)
        call.cancel()
        self.failureResultOf(call)
        cancelled = json.loads(text_of((yield server.call_tool("cancelled", {}, 10))))
        self.assertEqual(len(cancelled), 1)


class UtilLinuxProcessTests(RealProcessTests):
    """The same tests through the util-linux chain (C{setsid prlimit setpriv env -C})."""

    launcher = "util-linux"

    def setUp(self) -> None:
        tools, how = launchers.default_tools()
        if tools is None:
            raise SkipTest(f"this machine uses {how}")
        self.tools = tools
        super().setUp()


class PrlimitProcessTests(UtilLinuxProcessTests):
    """The same tests through the chain without C{dash} (C{prlimit} and C{env -C})."""

    def setUp(self) -> None:
        super().setUp()
        assert self.tools is not None
        self.tools = attrs.evolve(self.tools, shell=None)
