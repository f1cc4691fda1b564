"""
End-to-end tests: the real ``mcp-gateway`` command on a free loopback port, serving the
shipped example MCP server, driven with treq over real HTTP and HTTPS.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import sys
from typing import Any

import treq
from twisted.internet import reactor, ssl
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool

from .configs import PASSWORD, USER, gateway_config
from .gateway_process import GatewayProcess, gateway_argv, processes_under
from .test_web import RawClient
from .tls import make_chain

AUTH = (USER, PASSWORD)
# No keep-alive: nothing of the client outlives a test (trial's dirty reactor check).
http = treq.client.HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)))
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class EndToEndTests(TestCase):
    timeout = 120

    def setUp(self) -> None:
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.sandbox = os.path.join(self.dir, "sandbox")

    def start(self, argv: list[str] | None = None, **overrides: Any) -> GatewayProcess:
        config = gateway_config(self.dir, **overrides)
        gw = GatewayProcess.start(argv or gateway_argv(config), cwd=self.dir)
        self.addCleanup(gw.stop)
        return gw

    async def call(self, url: str, tool: str, sid: str, args: Any = None, **kw: Any) -> Any:
        body = {"tool": tool, "session_id": sid, "arguments": args or {}}
        client = kw.pop("client", http)
        r = await client.post(f"{url}/services/notes/call", json=body, auth=AUTH)
        return r.code, json.loads(await r.text())

    async def raw_call(self, url: str, tool: str, sid: str) -> bytes:
        """One call over a raw connection: the answer's bytes as they came."""
        body = json.dumps({"tool": tool, "session_id": sid}).encode()
        auth = base64.b64encode(f"{USER}:{PASSWORD}".encode())
        client = RawClient(
            b"POST /services/notes/call HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Authorization: Basic " + auth + b"\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body
        )
        port = int(url.rsplit(":", 1)[1])
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
        return await client.closed

    async def test_plain(self) -> None:
        """
        The command serves the example server over HTTP: tools, calls keeping state within
        a session and not across sessions, DELETE, and a clean SIGTERM with no child left.
        """
        gw = self.start()
        url = await gw.url
        self.assertTrue(url.startswith("http://127.0.0.1:"))
        health = await http.get(f"{url}/health")
        self.assertEqual(health.code, 200)
        r = await http.get(f"{url}/services/notes/tools", auth=AUTH)
        self.assertEqual(r.code, 200)
        names = [t["name"] for t in json.loads(await r.text())["tools"]]
        self.assertIn("add_note", names)
        for text in ("milk", "eggs"):
            code, body = await self.call(url, "add_note", "call-a", {"text": text})
            self.assertEqual(code, 200, body)
        code, body = await self.call(url, "list_notes", "call-a")
        self.assertEqual(body["result"], "1. milk\n2. eggs")
        code, body = await self.call(url, "list_notes", "call-b")
        self.assertEqual(body["result"], "No notes yet.")
        # A call's answer, written once the child has replied, has its length, not chunks.
        raw = await self.raw_call(url, "list_notes", "call-a")
        head, _, payload = raw.partition(b"\r\n\r\n")
        self.assertTrue(head.startswith(b"HTTP/1.1 200 "), head)
        self.assertIn(b"\r\nContent-Length: %d" % len(payload), head)
        self.assertNotIn(b"Transfer-Encoding", head)
        self.assertEqual(json.loads(payload)["result"], "1. milk\n2. eggs")
        self.assertTrue(processes_under(self.sandbox))
        r = await http.delete(f"{url}/sessions/call-a", auth=AUTH)
        self.assertEqual(r.code, 200)
        self.assertEqual(await gw.stop(), 0)
        self.assertEqual(processes_under(self.sandbox), [])
        self.assertEqual(os.listdir(self.sandbox), [])
        self.assertIn("listening on http://127.0.0.1:", gw.output())

    async def test_signal_twice(self) -> None:
        """
        A second SIGTERM while the gateway stops its children (C{timeout} passing a signal
        on, Ctrl-C twice) is ignored: a clean exit, no traceback, no child left. (The child
        ignores stdin EOF, so stopping it takes the 2 s grace before its SIGTERM.)
        """
        fake = os.path.join(REPO, "tests", "fake_mcp_server.py")
        slow = {"command": [sys.executable, fake, "--ignore-eof"], "description": "slow"}
        gw = self.start(services={"slow": slow})
        url = await gw.url
        body = {"tool": "echo", "session_id": "s", "arguments": {"text": "x"}}
        r = await http.post(f"{url}/services/slow/call", json=body, auth=AUTH)
        self.assertEqual(r.code, 200, await r.text())
        gw.kill("TERM")
        for _ in range(100):
            if "shutting down" in gw.output() or gw.ended.called:
                break
            await deferLater(reactor, 0.05, lambda: None)
        gw.kill("TERM")
        self.assertEqual(await gw.ended, 0)
        self.assertNotIn("Traceback", gw.output())
        self.assertIn("received SIGTERM while stopping", gw.output())
        self.assertEqual(processes_under(self.sandbox), [])

    async def test_tls_with_chain(self) -> None:
        """
        With certs/server.pem (key, certificate, intermediate) the same port serves HTTPS,
        the chain is served (the client trusts only the root) and HSTS is sent.
        """
        root_pem = make_chain(os.path.join(self.dir, "certs", "server.pem"))
        gw = self.start()
        url = await gw.url
        self.assertTrue(url.startswith("https://127.0.0.1:"), url)
        policy = BrowserLikePolicyForHTTPS(trustRoot=ssl.Certificate.loadPEM(root_pem))
        pool = HTTPConnectionPool(reactor, persistent=False)
        client = treq.client.HTTPClient(Agent(reactor, contextFactory=policy, pool=pool))
        r = await client.get(f"{url}/health")
        self.assertEqual(r.code, 200)
        self.assertEqual(
            r.headers.getRawHeaders("Strict-Transport-Security"),
            ["max-age=31536000; includeSubDomains"],
        )
        code, body = await self.call(url, "add_note", "s", {"text": "x"}, client=client)
        self.assertEqual(code, 200, body)
        self.assertEqual(await gw.stop(), 0)

    async def test_port_in_use_exit_2(self) -> None:
        """A port that cannot be bound exits 2 with one line naming server.port."""
        taken = socket.socket()
        self.addCleanup(taken.close)
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        gw = self.start(server={"port": taken.getsockname()[1]})
        code = await gw.ended
        self.assertEqual(code, 2)
        lines = gw.stderr.decode().strip().splitlines()
        self.assertEqual(len(lines), 1, gw.output())
        self.assertIn("server.port", lines[0])
        self.assertNotIn(b"Traceback", gw.stderr)

    async def test_twistd_poll_reactor(self) -> None:
        """``twistd --reactor=poll mcp-gateway -c CONFIG`` serves too (plugin discovery)."""
        config = gateway_config(self.dir)
        argv = [
            sys.executable,
            "-c",
            "from twisted.scripts.twistd import run; run()",
            "-n",
            "--reactor=poll",
            "--pidfile=",
            "mcp-gateway",
            "-c",
            config,
        ]
        gw = GatewayProcess.start(argv, cwd=REPO)
        self.addCleanup(gw.stop)
        url = await gw.url
        code, body = await self.call(url, "word_count", "w", {"text": "a b c"})
        self.assertEqual(code, 200, body)
        self.assertEqual(body["mcp_result"]["structuredContent"]["words"], 3)
        self.assertIn("PollReactor", gw.output())
        await gw.stop()
        # twistd's own convention: it ends by re-raising the SIGTERM it received.
        self.assertIn((gw.exit_code, gw.signal), [(0, None), (None, 15)])
        self.assertEqual(processes_under(self.sandbox), [])


class RealPyPIServerTests(TestCase):
    timeout = 120

    async def test_pypi_servers_state_per_session(self) -> None:
        """
        The real command serves PyPI servers: ``mcp-server-time`` answers a real call, and a
        server on the official MCP SDK keeps state across calls of one session only.
        """
        from .test_real_servers import time_server

        time_path = time_server()
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        counter = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sdk_counter_server.py")
        config = gateway_config(
            directory,
            services={
                "time": {"command": [time_path, "--local-timezone", "UTC"]},
                "counter": {"command": [sys.executable, counter]},
            },
        )
        gw = GatewayProcess.start(gateway_argv(config), cwd=directory)
        self.addCleanup(gw.stop)
        url = await gw.url

        async def call(service: str, tool: str, sid: str, args: Any = None) -> Any:
            body = {"tool": tool, "session_id": sid, "arguments": args or {}}
            r = await http.post(f"{url}/services/{service}/call", json=body, auth=AUTH)
            self.assertEqual(r.code, 200)
            return json.loads(await r.text())

        body = await call("time", "get_current_time", "call-1", {"timezone": "Europe/Paris"})
        self.assertEqual(body["mcp_result"]["structuredContent"]["timezone"], "Europe/Paris")
        self.assertEqual(
            [(await call("counter", "incr", "call-1"))["result"] for _ in range(3)],
            ["1", "2", "3"],
        )
        self.assertEqual((await call("counter", "incr", "call-2"))["result"], "1")
        r = await http.get(f"{url}/sessions", auth=AUTH)
        sessions = json.loads(await r.text())
        self.assertEqual(set(sessions["call-1"]["services"]), {"time", "counter"})
        self.assertEqual(await gw.stop(), 0)
        self.assertEqual(processes_under(os.path.join(directory, "sandbox")), [])
