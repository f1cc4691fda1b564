"""
Integration tests: the whole gateway built by L{mcpgw.tap.build_service} in this process,
over real loopback HTTP, with real MCP children (``tests/fake_mcp_server.py``, which
misbehaves on command, and a stateful server built on the official MCP SDK from PyPI).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, cast

import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import deferLater
from twisted.trial.unittest import SkipTest, TestCase
from twisted.web.client import Agent, HTTPConnectionPool

from mcpgw.config_loader import parse_config
from mcpgw.tap import build_service

from .gateway_process import processes_under

HERE = os.path.dirname(os.path.abspath(__file__))
FAKE = os.path.join(HERE, "fake_mcp_server.py")
COUNTER = os.path.join(HERE, "sdk_counter_server.py")
AUTH = ("admin", "pw-integration")
http = treq.client.HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)))


def have_mcp_sdk() -> bool:
    try:
        import mcp.server.mcpserver  # noqa: F401
    except ImportError:
        return False
    return True


class GatewayInProcess(TestCase):
    timeout = 60

    def setUp(self) -> None:
        self.dir = os.path.abspath(self.mktemp())
        self.sandbox = os.path.join(self.dir, "sandbox")
        os.makedirs(self.dir)
        data = {
            "server": {
                "host": "127.0.0.1",
                "port": 0,
                "auth_user": AUTH[0],
                "auth_password": AUTH[1],
            },
            "services": {
                "fake": {"command": [sys.executable, FAKE], "call_timeout": 10},
                "counter": {"command": [sys.executable, COUNTER]},
            },
            "session": {"sandbox_dir": self.sandbox, "max_sessions_per_service": 3},
            "logging": {"file": os.path.join(self.dir, "gateway.log")},
            "rate_limiting": {
                "default_limits": [],
                "tools_limit": "1000/second",
                "call_limit": "1000/second",
                "session_delete_limit": "1000/second",
            },
        }
        config = parse_config(data, os.environ, self.dir, "test.json")
        self.service = build_service(reactor, config, os.environ)
        self.service.startService()
        self.addCleanup(self.stop)
        assert self.service.listener is not None and self.service.listener.port is not None
        self.url = f"http://127.0.0.1:{self.service.listener.port.getHost().port}"

    async def stop(self) -> None:
        await self.service.stopService()
        self.assertEqual(processes_under(self.sandbox), [])

    async def call(
        self, tool: str, sid: str, args: Any = None, service: str = "fake", **extra: Any
    ) -> tuple[int, Any]:
        body = {"tool": tool, "session_id": sid, "arguments": args or {}, **extra}
        r = await http.post(f"{self.url}/services/{service}/call", json=body, auth=AUTH)
        return r.code, json.loads(await r.text())

    async def test_single_flight_real_children(self) -> None:
        """Concurrent first calls of one session share one process (its counter says 1..5)."""
        results = await gatherResults(
            [Deferred.fromCoroutine(self.call("incr", "sf")) for _ in range(5)]
        )
        counts = sorted(int(body["result"]) for code, body in results)
        self.assertEqual(counts, [1, 2, 3, 4, 5])

    async def test_idle_group(self) -> None:
        """
        Where this machine lets the gateway make its idle CPU group (C{mcpgw.cpugroup}), a
        child serving calls has left it, and the group is gone once the gateway stops.
        """
        group = self.service.idle_group
        if group is None or group.path is None:
            raise SkipTest("no idle cpu group here")
        path = group.path
        self.assertEqual((await self.call("echo", "ig", {"text": "x"}))[0], 200)
        assert self.service.sessions is not None
        session = self.service.sessions.get("fake", "ig")
        assert session is not None and session.server is not None
        pid = cast(Any, session.server).pid
        name = os.path.basename(path)
        for _ in range(500):  # the move out runs in a thread
            with open(f"/proc/{pid}/cgroup") as f:
                if name not in f.read():
                    break
            await deferLater(reactor, 0.01, lambda: None)
        with open(f"/proc/{pid}/cgroup") as f:
            self.assertNotIn(name, f.read())
        self.assertTrue(os.path.isdir(path))
        await self.service.stopService()
        self.assertFalse(os.path.exists(path))

    async def test_first_call_answered_by_a_spare(self) -> None:
        """
        A new session's first call is answered by the spare started ahead of it; the next
        new session gets the spare's replacement, with a private directory of its own.
        """
        assert self.service.sessions is not None
        pool = self.service.sessions.spares
        assert pool is not None

        async def ready_spare_pid() -> int:
            for _ in range(1000):
                ready = [s for s in pool.spares("fake") if s.outcome is True]
                if ready:
                    return cast(int, cast(Any, ready[0].server).pid)
                await deferLater(reactor, 0.01, lambda: None)
            self.fail("no spare became ready")

        facts = []
        for sid in ("sp1", "sp2"):
            pid = await ready_spare_pid()
            code, body = await self.call("sandbox", sid)
            self.assertEqual(code, 200, body)
            facts.append(json.loads(body["result"]))
            self.assertEqual(facts[-1]["pid"], pid)
        self.assertNotEqual(facts[0]["cwd"], facts[1]["cwd"])
        for fact in facts:
            self.assertTrue(fact["cwd"].startswith(self.sandbox + os.sep), fact["cwd"])

    async def test_multiplexed_calls(self) -> None:
        """Concurrent calls on one session are multiplexed: slow ones do not block others."""
        await self.call("echo", "mx", {"text": "warm"})
        slow = Deferred.fromCoroutine(self.call("sleep", "mx", {"seconds": 1}))
        fast = await self.call("echo", "mx", {"text": "quick"})
        self.assertEqual(fast, (200, fast[1]))
        self.assertEqual(fast[1]["result"], "quick")
        self.assertFalse(slow.called)
        code, body = await slow
        self.assertEqual((code, body["result"]), (200, "slept"))

    async def test_crash_then_restart(self) -> None:
        """A child crashing mid-call is a 502 naming the exit; the next call restarts it."""
        self.assertEqual((await self.call("incr", "cr"))[1]["result"], "1")
        code, body = await self.call("crash", "cr", {"code": 7})
        self.assertEqual(code, 502)
        self.assertIn("7", body["error"])
        code, body = await self.call("incr", "cr")
        self.assertEqual((code, body["result"], body["session_restarted"]), (200, "1", True))

    async def test_timeout_cancels_upstream(self) -> None:
        """A call timeout is 504, notifications/cancelled reaches the child, session kept."""
        code, body = await self.call("hang", "to", call_timeout=0.5)
        self.assertEqual(code, 504)
        self.assertEqual(body["error"], "Tool call timed out after 0.5 s")
        code, body = await self.call("cancelled", "to")
        self.assertEqual(code, 200)
        self.assertEqual(len(json.loads(body["result"])), 1)

    async def test_client_disconnect_cancels_upstream(self) -> None:
        """A client that hangs up mid-call cancels the call in the child."""
        await self.call("echo", "dc", {"text": "warm"})
        pending = http.post(
            f"{self.url}/services/fake/call", auth=AUTH, json={"tool": "hang", "session_id": "dc"}
        )
        await deferLater(reactor, 0.3, lambda: None)
        pending.cancel()
        self.failureResultOf(pending)
        for _ in range(50):  # bounded: up to 5 s for the cancellation to land
            _, body = await self.call("cancelled", "dc")
            if json.loads(body["result"]):
                break
            await deferLater(reactor, 0.1, lambda: None)
        self.assertEqual(len(json.loads(body["result"])), 1)

    async def test_delete_while_waiting(self) -> None:
        """DELETE answers at once; the call waiting on that session gets 409."""
        await self.call("echo", "del", {"text": "warm"})
        waiting = Deferred.fromCoroutine(self.call("hang", "del"))
        await deferLater(reactor, 0.2, lambda: None)
        r = await http.delete(f"{self.url}/sessions/del", auth=AUTH)
        self.assertEqual(r.code, 200)
        code, body = await waiting
        self.assertEqual((code, body["error"]), (409, "Session del was closed"))

    async def test_misbehaving_output(self) -> None:
        """Garbage stdout lines, stray responses and a stderr flood lose no call."""
        for tool in ("garbage", "stray", "stderr_flood", "notify"):
            code, body = await self.call(tool, "mb")
            self.assertEqual(code, 200, (tool, body))
        code, body = await self.call("ping_roots", "mb")
        answers = json.loads(body["result"])
        self.assertEqual(answers["ping"], {"jsonrpc": "2.0", "id": "srv-ping", "result": {}})
        self.assertEqual(answers["roots/list"]["error"]["code"], -32601)

    async def test_jsonrpc_error_statuses(self) -> None:
        """A -32602 error is 400 and another code 422, with the MCP error object."""
        code, body = await self.call("bad_params", "rpc")
        self.assertEqual((code, body["mcp_error"]["code"]), (400, -32602))
        code, body = await self.call("fail", "rpc")
        self.assertEqual((code, body["error"]), (422, "custom failure"))
        self.assertEqual(body["mcp_error"]["data"], {"detail": "from fake"})

    async def test_session_limit_leaves_no_process(self) -> None:
        """Over max_sessions_per_service: 429 and no process started for it."""
        for i in range(3):
            self.assertEqual((await self.call("echo", f"l{i}", {"text": "x"}))[0], 200)
        before = len(processes_under(self.sandbox))
        code, _ = await self.call("echo", "l9", {"text": "x"})
        self.assertEqual(code, 429)
        self.assertEqual(len(processes_under(self.sandbox)), before)

    async def test_sdk_server_state_per_session(self) -> None:
        """A server on the official MCP SDK keeps state per session, not across sessions."""
        if not have_mcp_sdk():
            raise SkipTest("the mcp SDK is not installed (pip install mcp-server-time)")
        for expected in ("1", "2", "3"):
            code, body = await self.call("incr", "sdk-a", service="counter")
            self.assertEqual((code, body["result"]), (200, expected), body)
        code, body = await self.call("incr", "sdk-b", service="counter")
        self.assertEqual(body["result"], "1")
        r = await http.get(f"{self.url}/services/counter/tools", auth=AUTH)
        self.assertEqual([t["name"] for t in json.loads(await r.text())["tools"]], ["incr"])

    async def test_log_file_has_startup_and_events(self) -> None:
        """logging.file gets the startup lines too, and the security events."""
        await self.call("echo", "lf", {"text": "x"})
        with open(os.path.join(self.dir, "gateway.log")) as f:
            text = f.read()
        self.assertIn("listening on http://127.0.0.1:", text)
        self.assertIn('"event": "tool_call"', text)
        self.assertNotIn('"text"', text)  # tool arguments are never logged at INFO
