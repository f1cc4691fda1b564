"""
Tests for the HTTP API (L{mcpgw.app} behind L{mcpgw.web.GatewayResource}), through StubTreq
against the real Klein resource, with fake MCP servers and a Clock.
"""

from __future__ import annotations

import json
from base64 import b64encode
from typing import Any

from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from mcpgw.app import GatewayApp
from mcpgw.auth import Credentials
from mcpgw.catalog import ToolsCatalog
from mcpgw.config import Config
from mcpgw.config_loader import parse_config
from mcpgw.errors import CallTimeout, JsonRpcError
from mcpgw.ratelimit import RateLimiter, client_ip
from mcpgw.sessions import SessionManager
from mcpgw.swaig_bridge import SwaigBridge
from mcpgw.web import GatewayResource

from .fakes import FakeFactory

BASIC = "Basic " + b64encode(b"admin:s3cret").decode()
BEARER = "Bearer tok-123"
BASE = "http://127.0.0.1:8080"


def make_config(**overrides: Any) -> Config:
    data: dict[str, Any] = {
        "server": {"auth_user": "admin", "auth_password": "s3cret", "auth_token": "tok-123"},
        "services": {
            "echo": {
                "command": ["echo-server", "--secret-flag"],
                "description": "Echo",
                "env": {"API_KEY": "hidden"},
            },
            "other": {"command": ["other"]},
            "off": {"command": ["off"], "enabled": False},
        },
        "rate_limiting": {
            "default_limits": ["1000 per minute"],
            "tools_limit": "1000 per minute",
            "call_limit": "1000 per minute",
            "session_delete_limit": "1000 per minute",
        },
        "session": {"max_sessions_per_service": 2},
    }
    for section, values in overrides.items():
        data.setdefault(section, {}).update(values)
    return parse_config(data, {}, "/tmp", "test.json")


class Gateway:
    """The real resource tree wired to fakes."""

    def __init__(
        self, testcase: SynchronousTestCase, *, spares: bool = False, **overrides: Any
    ) -> None:
        self.clock = Clock()
        self.clock.advance(10_000)
        self.factory = FakeFactory()
        self.config = make_config(**overrides)
        services = self.config.enabled_services
        self.catalog = ToolsCatalog(services, self.factory)
        self.sessions = SessionManager(
            self.clock, services, self.config.session, self.factory, spares=spares
        )
        self.sessions.on_tools_changed = self.catalog.invalidate
        self.limiter = RateLimiter(self.clock, self.config.rate_limiting)
        self.swaig = SwaigBridge(self.config, self.catalog, self.sessions)
        self.swaig.default_base = BASE
        app = self.app = GatewayApp(
            self.clock, self.config, self.sessions, self.catalog, self.limiter, self.swaig
        )

        def ip_of(request: Any) -> str:
            return client_ip(getattr(request.getClientAddress(), "host", ""), None, ())

        def auth_failed(ip: str) -> Any:
            return self.limiter.check("default", "-", ip)

        root = GatewayResource(
            app.resource(),
            Credentials.from_config(self.config),
            client_ip=ip_of,
            on_auth_failure=auth_failed,
            render_call=app.render_call,
        )
        self.stub = StubTreq(root)
        self.testcase = testcase

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        auth: str | None = BASIC,
        headers: dict[str, str] | None = None,
        raw: bytes | None = None,
    ) -> Any:
        h = {"Content-Type": "application/json"}
        if auth:
            h["Authorization"] = auth
        h.update(headers or {})
        data = (
            raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        )
        d = self.stub.request(method, BASE + path, headers=h, data=data)
        return self.testcase.successResultOf(d)

    def send(self, path: str, body: Any) -> Any:
        """POST ``body`` as JSON with the admin credentials; the unresolved Deferred."""
        return self.stub.request(
            "POST",
            BASE + path,
            headers={"Authorization": BASIC, "Content-Type": "application/json"},
            data=json.dumps(body).encode(),
        )

    def json(self, response: Any) -> Any:
        return json.loads(self.testcase.successResultOf(response.content()))

    def call(self, body: dict[str, Any], service: str = "echo", **kw: Any) -> Any:
        return self.request("POST", f"/services/{service}/call", body, **kw)


class HealthAndAuthTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.gw = Gateway(self)

    def test_health_no_auth(self) -> None:
        """GET /health needs no credentials and reports status, timestamp and version."""
        r = self.gw.request("GET", "/health", auth=None)
        self.assertEqual(r.code, 200)
        body = self.gw.json(r)
        self.assertEqual(body["status"], "healthy")
        self.assertIn("timestamp", body)
        self.assertIn("version", body)

    def test_security_headers_everywhere(self) -> None:
        """Every response, errors included, has the security headers and no Server header."""
        for method, path, auth in [
            ("GET", "/health", None),
            ("GET", "/nope", None),
            ("GET", "/nope", BASIC),
            ("GET", "/services", BASIC),
        ]:
            r = self.gw.request(method, path, auth=auth)
            h = r.headers
            self.assertEqual(h.getRawHeaders("X-Content-Type-Options"), ["nosniff"])
            self.assertEqual(h.getRawHeaders("X-Frame-Options"), ["DENY"])
            self.assertEqual(h.getRawHeaders("Cache-Control"), ["no-store"])
            self.assertEqual(h.getRawHeaders("Referrer-Policy"), ["no-referrer"])
            self.assertEqual(
                h.getRawHeaders("Content-Security-Policy"),
                ["default-src 'none'; frame-ancestors 'none'"],
            )
            self.assertIsNone(h.getRawHeaders("Server"))
            self.assertIsNone(h.getRawHeaders("Strict-Transport-Security"))

    def test_unauthenticated_401_before_404(self) -> None:
        """Without credentials every route but /health is 401, even an unknown one."""
        for path in ["/services", "/nope", "/sessions"]:
            r = self.gw.request("GET", path, auth=None)
            self.assertEqual(r.code, 401)
            self.assertEqual(self.gw.json(r), {"error": "Authentication required"})
            self.assertEqual(
                r.headers.getRawHeaders("WWW-Authenticate"), ['Basic realm="MCP Gateway"']
            )

    def test_bad_credentials(self) -> None:
        """Wrong passwords, malformed and non-ASCII credentials are a 401, never a crash."""
        bad = [
            "Basic " + b64encode(b"admin:wrong").decode(),
            "Basic " + b64encode("admin:pässwörd".encode()).decode(),
            "Basic !!!notbase64",
            "Basic " + b64encode(b"nocolon").decode(),
            "Bearer wrong",
            "Digest abc",
        ]
        for auth in bad:
            r = self.gw.request("GET", "/services", auth=auth)
            self.assertEqual(r.code, 401, auth)

    def test_bearer(self) -> None:
        """The Bearer token authenticates."""
        self.assertEqual(self.gw.request("GET", "/services", auth=BEARER).code, 200)

    def test_failed_auth_rate_limited(self) -> None:
        """Failed authentications count against default_limits of (-, IP): then 429."""
        gw = Gateway(self, rate_limiting={"default_limits": ["3 per minute"]})
        codes = [gw.request("GET", "/services", auth="Bearer x").code for _ in range(5)]
        self.assertEqual(codes, [401, 401, 401, 429, 429])
        r = gw.request("GET", "/services", auth="Bearer x")
        self.assertIsNotNone(r.headers.getRawHeaders("Retry-After"))

    def test_not_found_and_method(self) -> None:
        """Unknown routes are a JSON 404; a wrong method a JSON 405 with Allow."""
        r = self.gw.request("GET", "/nope")
        self.assertEqual(r.code, 404)
        self.assertIn("error", self.gw.json(r))
        r = self.gw.request("PUT", "/services")
        self.assertEqual(r.code, 405)
        self.assertIn("GET", r.headers.getRawHeaders("Allow")[0])
        self.assertIn("error", self.gw.json(r))

    def test_services_hide_command_and_env(self) -> None:
        """GET /services lists enabled services without their argv or environment."""
        r = self.gw.request("GET", "/services")
        body = self.gw.json(r)
        self.assertEqual(set(body), {"echo", "other"})
        self.assertEqual(body["echo"]["description"], "Echo")
        text = json.dumps(body)
        self.assertNotIn("secret-flag", text)
        self.assertNotIn("hidden", text)
        self.assertNotIn("command", text)

    def test_services_count_ready_spares(self) -> None:
        """GET /services says how many spare children of each service wait, started."""
        self.assertEqual(self.gw.json(self.gw.request("GET", "/services"))["echo"]["spares"], 0)
        gw = Gateway(self, spares=True)
        gw.sessions.startService()
        self.addCleanup(gw.sessions.stopService)
        gw.sessions.start_spares()
        self.assertEqual(gw.json(gw.request("GET", "/services"))["echo"]["spares"], 1)
        r = gw.request("POST", "/services/echo/call", {"tool": "echo", "session_id": "s1"})
        self.assertEqual(r.code, 200)
        self.assertEqual(gw.json(gw.request("GET", "/services"))["echo"]["spares"], 0)
        gw.clock.advance(0)
        self.assertEqual(gw.json(gw.request("GET", "/services"))["echo"]["spares"], 1)


class ToolsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.gw = Gateway(self)

    def test_tools_from_catalog(self) -> None:
        """Tools come from one probe; later listings start no process."""
        self.successResultOf(self.gw.catalog.probe_all())
        made = len(self.gw.factory.servers)
        for _ in range(3):
            r = self.gw.request("GET", "/services/echo/tools")
            self.assertEqual(r.code, 200)
            body = self.gw.json(r)
            self.assertEqual(body["service"], "echo")
            self.assertEqual(body["tools"][0]["name"], "echo")
        self.assertEqual(len(self.gw.factory.servers), made)
        self.assertTrue(all(s.stopped for s in self.gw.factory.servers))

    def test_unknown_and_disabled_service(self) -> None:
        """Unknown or disabled services are 404 'Unknown service: <name>'."""
        for name in ["nope", "off"]:
            r = self.gw.request("GET", f"/services/{name}/tools")
            self.assertEqual(r.code, 404)
            self.assertEqual(self.gw.json(r), {"error": f"Unknown service: {name}"})

    def test_failed_probe_503_then_reprobe(self) -> None:
        """A failed probe answers 503 naming the failure; asking again re-probes."""
        self.gw.factory.tools_error = "spawn failed: no such file"
        self.successResultOf(self.gw.catalog.probe_all())
        r = self.gw.request("GET", "/services/echo/tools")
        self.assertEqual(r.code, 503)
        self.assertIn("no such file", self.gw.json(r)["error"])
        self.gw.factory.tools_error = None
        r = self.gw.request("GET", "/services/echo/tools")
        self.assertEqual(r.code, 200)

    def test_list_changed_reprobes(self) -> None:
        """tools/list_changed from a session re-probes the service's catalog."""
        self.successResultOf(self.gw.catalog.probe_all())
        self.gw.factory.tools = [{"name": "new", "inputSchema": {"type": "object"}}]
        self.gw.call({"tool": "echo", "session_id": "s"})
        session_server = self.gw.factory.servers[-1]
        assert session_server.on_tools_changed is not None
        session_server.on_tools_changed()
        body = self.gw.json(self.gw.request("GET", "/services/echo/tools"))
        self.assertEqual([t["name"] for t in body["tools"]], ["new"])


class CallTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.gw = Gateway(self)

    def assertError(self, response: Any, code: int, message: str) -> None:
        self.assertEqual(response.code, code)
        self.assertEqual(self.gw.json(response)["error"], message)

    def test_success_shape(self) -> None:
        """A call answers the first text item as result, plus mcp_result and is_error."""
        r = self.gw.call({"tool": "echo", "session_id": "s1", "arguments": {"text": "hi"}})
        self.assertEqual(r.code, 200)
        body = self.gw.json(r)
        self.assertEqual(body["result"], "echo:{'text': 'hi'}")
        self.assertEqual(body["service"], "echo")
        self.assertEqual(body["session_id"], "s1")
        self.assertEqual(body["tool"], "echo")
        self.assertFalse(body["is_error"])
        self.assertFalse(body["session_restarted"])
        self.assertEqual(body["mcp_result"]["content"][0]["type"], "text")

    def test_validation(self) -> None:
        """Every SPEC 4.1 check answers 400 with its message."""
        cases: list[tuple[Any, str]] = [
            ({"session_id": "s"}, "Missing 'tool' parameter"),
            ({"tool": "", "session_id": "s"}, "Missing 'tool' parameter"),
            ({"tool": "echo"}, "Missing 'session_id' parameter"),
            (
                {"tool": "echo", "session_id": "s", "arguments": [1]},
                "Invalid 'arguments' parameter",
            ),
            (
                {"tool": "echo", "session_id": "s", "arguments": "x"},
                "Invalid 'arguments' parameter",
            ),
            ({"tool": "echo", "session_id": "s", "timeout": True}, "Invalid 'timeout' parameter"),
            ({"tool": "echo", "session_id": "s", "timeout": 0}, "Invalid 'timeout' parameter"),
            ({"tool": "echo", "session_id": "s", "timeout": 3601}, "Invalid 'timeout' parameter"),
            ({"tool": "echo", "session_id": "s", "timeout": "10"}, "Invalid 'timeout' parameter"),
            ({"tool": "echo", "session_id": "s", "metadata": [1]}, "Invalid 'metadata' parameter"),
            (
                {"tool": "echo", "session_id": "s", "call_timeout": -1},
                "Invalid 'call_timeout' parameter",
            ),
            (
                {"tool": "echo", "session_id": "s", "call_timeout": False},
                "Invalid 'call_timeout' parameter",
            ),
            ({"tool": "echo", "session_id": "../etc"}, "Invalid session ID"),
            ({"tool": "echo", "session_id": ".."}, "Invalid session ID"),
            ({"tool": "echo", "session_id": "a b"}, "Invalid session ID"),
            ({"tool": "echo", "session_id": "x" * 129}, "Invalid session ID"),
            ({"tool": "echo", "session_id": "ok\n"}, "Invalid session ID"),
            ({"tool": "echo", "session_id": 12}, "Invalid session ID"),
            ({"tool": "e\x00cho", "session_id": "s"}, "Invalid tool name"),
            ({"tool": "t" * 129, "session_id": "s"}, "Invalid tool name"),
            ({"tool": 5, "session_id": "s"}, "Invalid tool name"),
        ]
        for body, message in cases:
            self.assertError(self.gw.call(body), 400, message)
        self.assertEqual(self.gw.factory.servers, [])

    def test_bad_json(self) -> None:
        """Malformed JSON and non-object bodies are 400 'Invalid JSON'."""
        for raw in [b"{not json", b"[1,2]", b"", b'"text"']:
            self.assertError(self.gw.call({}, raw=raw), 400, "Invalid JSON")

    def test_content_type(self) -> None:
        """A body that is not application/json is refused with 415."""
        r = self.gw.call(
            {"tool": "echo", "session_id": "s"}, headers={"Content-Type": "text/plain"}
        )
        self.assertEqual(r.code, 415)
        r = self.gw.call(
            {"tool": "echo", "session_id": "s"},
            headers={"Content-Type": "application/json; charset=utf-8"},
        )
        self.assertEqual(r.code, 200)

    def test_body_too_large(self) -> None:
        """A body over max_body_bytes is 413 (the app checks what StubTreq lets through)."""
        gw = Gateway(self, server={"max_body_bytes": 100})
        r = gw.call({"tool": "echo", "session_id": "s", "arguments": {"t": "x" * 200}})
        self.assertEqual(r.code, 413)

    def test_unknown_service(self) -> None:
        """An unknown or disabled service is 404."""
        self.assertError(
            self.gw.call({"tool": "echo", "session_id": "s"}, service="off"),
            404,
            "Unknown service: off",
        )

    def test_escaped_path_same_answers(self) -> None:
        """
        A plain path is served past Klein's routing; a %-escaped one goes through Klein. Both
        give the same answers, successes and errors alike.
        """
        ok = {"tool": "echo", "session_id": "s1", "arguments": {"text": "hi"}}
        for path in ("/services/echo/call", "/services/%65cho/call"):
            r = self.gw.request("POST", path, ok)
            self.assertEqual(r.code, 200)
            self.assertEqual(self.gw.json(r)["result"], "echo:{'text': 'hi'}")
            r = self.gw.request("POST", path, {"session_id": "s1"})
            self.assertError(r, 400, "Missing 'tool' parameter")
        for path in ("/services/off/call", "/services/%6Fff/call"):
            self.assertError(self.gw.request("POST", path, ok), 404, "Unknown service: off")
        self.assertEqual(len(self.gw.factory.servers), 1)

    def test_unexpected_error_is_500(self) -> None:
        """A bug below the call route answers a bare 500 and logs the traceback."""
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)

        def broken(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("boom")

        self.gw.sessions.call = broken  # type: ignore[method-assign]
        r = self.gw.call({"tool": "echo", "session_id": "s"})
        self.assertError(r, 500, "Internal server error")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertTrue(any(e.get("log_failure") for e in events))

    def test_failing_error_handler_is_500(self) -> None:
        """An error handler that fails still ends the call route's answer: a bare 500."""

        def broken(request: Any, failure: Any) -> bytes:
            raise RuntimeError("handler bug")

        self.gw.app.gateway_error = broken  # type: ignore[method-assign]
        r = self.gw.call({"tool": "echo", "session_id": "s"}, service="off")
        self.assertError(r, 500, "Internal server error")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_jsonrpc_errors(self) -> None:
        """-32601/-32602 map to 400, other codes to 422, with the MCP error kept."""
        self.gw.factory.auto_answer = False
        for code, status in [(-32602, 400), (-32601, 400), (-32000, 422), (5, 422)]:
            d = self.gw.send("/services/echo/call", {"tool": "echo", "session_id": "s"})
            server = self.gw.factory.servers[0]
            server.calls[-1][3].errback(JsonRpcError(code, "Unknown tool: echo", {"x": 1}))
            self.gw.stub.flush()
            r = self.successResultOf(d)
            self.assertEqual(r.code, status)
            body = self.gw.json(r)
            self.assertEqual(body["error"], "Unknown tool: echo")
            self.assertEqual(
                body["mcp_error"],
                {"code": code, "message": "Unknown tool: echo", "data": {"x": 1}},
            )

    def pending_call(self, sid: str = "s") -> Any:
        self.gw.factory.auto_answer = False
        return self.gw.send(
            "/services/echo/call", {"tool": "echo", "session_id": sid, "call_timeout": 5}
        )

    def test_timeout_504(self) -> None:
        """A call timeout is 504 and keeps the session."""
        d = self.pending_call()
        server = self.gw.factory.servers[0]
        self.assertEqual(server.calls[0][2], 5)
        server.calls[0][3].errback(CallTimeout(5))
        self.gw.stub.flush()
        r = self.successResultOf(d)
        self.assertError(r, 504, "Tool call timed out after 5 s")
        self.assertEqual(len(self.gw.sessions), 1)

    def test_child_death_502_then_restart(self) -> None:
        """A child dying mid-call is 502 naming the exit; the next call is restarted."""
        d = self.pending_call()
        self.gw.factory.servers[0].die("killed by signal 9")
        self.gw.stub.flush()
        r = self.successResultOf(d)
        self.assertEqual(r.code, 502)
        self.assertIn("signal 9", self.gw.json(r)["error"])
        self.gw.factory.auto_answer = True
        body = self.gw.json(self.gw.call({"tool": "echo", "session_id": "s"}))
        self.assertTrue(body["session_restarted"])

    def test_closed_while_waiting_409(self) -> None:
        """DELETE while a call waits: the call answers 409, DELETE answers 200 at once."""
        d = self.pending_call()
        r = self.gw.request("DELETE", "/sessions/s")
        self.assertEqual(r.code, 200)
        self.assertEqual(self.gw.json(r), {"message": "Session s closed"})
        self.gw.stub.flush()
        self.assertError(self.successResultOf(d), 409, "Session s was closed")

    def test_session_limit_429(self) -> None:
        """Over max_sessions_per_service: 429 with Retry-After, no process made."""
        for sid in ["a", "b"]:
            self.assertEqual(self.gw.call({"tool": "echo", "session_id": sid}).code, 200)
        r = self.gw.call({"tool": "echo", "session_id": "c"})
        self.assertEqual(r.code, 429)
        self.assertIsNotNone(r.headers.getRawHeaders("Retry-After"))
        self.assertEqual(len(self.gw.factory.servers), 2)

    def test_call_timeout_capped(self) -> None:
        """A call_timeout above the service's is capped to the service's."""
        self.gw.call({"tool": "echo", "session_id": "s", "call_timeout": 999})
        self.assertEqual(self.gw.factory.servers[0].calls[0][2], 25)

    def test_rate_limit(self) -> None:
        """Calls over call_limit are 429 with Retry-After; RateLimit-* on every answer."""
        gw = Gateway(self, rate_limiting={"call_limit": "2 per minute"})
        first = gw.call({"tool": "echo", "session_id": "s"})
        self.assertEqual(first.headers.getRawHeaders("RateLimit-Limit"), ["2"])
        self.assertEqual(first.headers.getRawHeaders("RateLimit-Remaining"), ["1"])
        gw.call({"tool": "echo", "session_id": "s"})
        r = gw.call({"tool": "echo", "session_id": "s"})
        self.assertEqual(r.code, 429)
        self.assertEqual(gw.json(r), {"error": "Rate limit exceeded: 2 per minute"})
        self.assertEqual(r.headers.getRawHeaders("Retry-After"), ["30"])
        gw.clock.advance(30)
        self.assertEqual(gw.call({"tool": "echo", "session_id": "s"}).code, 200)

    def test_health_never_limited(self) -> None:
        """/health is never rate limited."""
        gw = Gateway(self, rate_limiting={"default_limits": ["1 per minute"]})
        codes = {gw.request("GET", "/health", auth=None).code for _ in range(5)}
        self.assertEqual(codes, {200})


class SessionRouteTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.gw = Gateway(self)

    def test_post_sessions(self) -> None:
        """POST /sessions creates (201) then finds (200) a session, starting its server."""
        body = {"service": "echo", "session_id": "call-1", "timeout": 60, "metadata": {"a": 1}}
        r = self.gw.request("POST", "/sessions", body)
        self.assertEqual(r.code, 201)
        got = self.gw.json(r)
        self.assertEqual(
            (got["service"], got["session_id"], got["timeout"], got["metadata"]),
            ("echo", "call-1", 60, {"a": 1}),
        )
        self.assertEqual(len(self.gw.factory.servers), 1)
        self.assertEqual(self.gw.request("POST", "/sessions", body).code, 200)
        self.assertEqual(len(self.gw.factory.servers), 1)

    def test_post_sessions_validation(self) -> None:
        """POST /sessions validates service, session id, timeout and metadata."""
        cases = [
            ({"session_id": "x"}, 400),
            ({"service": "nope", "session_id": "x"}, 404),
            ({"service": "echo"}, 400),
            ({"service": "echo", "session_id": "../x"}, 400),
            ({"service": "echo", "session_id": "x", "timeout": -1}, 400),
        ]
        for body, code in cases:
            self.assertEqual(self.gw.request("POST", "/sessions", body).code, code, body)

    def test_list_and_filter(self) -> None:
        """GET /sessions is keyed by id with every service; ?service= filters."""
        self.gw.call({"tool": "echo", "session_id": "x"})
        self.gw.call({"tool": "echo", "session_id": "x"}, service="other")
        self.gw.call({"tool": "echo", "session_id": "y"}, service="other")
        body = self.gw.json(self.gw.request("GET", "/sessions"))
        self.assertEqual(set(body), {"x", "y"})
        self.assertEqual(set(body["x"]["services"]), {"echo", "other"})
        body = self.gw.json(self.gw.request("GET", "/sessions?service=echo"))
        self.assertEqual(set(body), {"x"})
        self.assertEqual(set(body["x"]["services"]), {"echo"})

    def test_delete(self) -> None:
        """DELETE closes every service's session of the id; unknown ids are 404."""
        self.gw.call({"tool": "echo", "session_id": "x"})
        self.gw.call({"tool": "echo", "session_id": "x"}, service="other")
        r = self.gw.request("DELETE", "/sessions/x")
        self.assertEqual(r.code, 200)
        self.assertTrue(all(s.stopped for s in self.gw.factory.servers))
        r = self.gw.request("DELETE", "/sessions/x")
        self.assertEqual(r.code, 404)
        self.assertEqual(self.gw.json(r), {"error": "Session x not found"})


class HostileInputTests(SynchronousTestCase):
    """Input that once produced a 500: each now has its proper answer."""

    def setUp(self) -> None:
        self.gw = Gateway(self)

    def test_deeply_nested_json(self) -> None:
        """A body nested beyond the parser's recursion limit is 400 Invalid JSON."""
        raw = (
            b'{"tool": "echo", "session_id": "s", "arguments": '
            + b"[" * 100_000
            + b"]" * 100_000
            + b"}"
        )
        r = self.gw.call({}, raw=raw)
        self.assertEqual((r.code, self.gw.json(r)), (400, {"error": "Invalid JSON"}))

    def test_nan_refused(self) -> None:
        """NaN and Infinity are not JSON: 400 Invalid JSON, nothing forwarded."""
        raw = b'{"tool": "echo", "session_id": "s", "arguments": {"x": NaN}}'
        self.assertEqual(self.gw.call({}, raw=raw).code, 400)
        self.assertEqual(self.gw.factory.servers, [])

    def test_lone_surrogate(self) -> None:
        """A lone surrogate in arguments and in the tool name is answered, not a 500."""
        raw = b'{"tool": "echo", "session_id": "s", "arguments": {"text": "\\ud800"}}'
        r = self.gw.call({}, raw=raw)
        self.assertEqual(r.code, 200)
        self.assertIn("ud800", self.gw.json(r)["result"])
        raw = b'{"tool": "\\ud800", "session_id": "s"}'
        self.assertEqual(self.gw.call({}, raw=raw).code, 200)

    def test_non_finite_result(self) -> None:
        """A child's Infinity becomes null in the answer, which stays valid JSON."""
        self.gw.factory.auto_answer = False
        d = self.gw.send("/services/echo/call", {"tool": "echo", "session_id": "s"})
        result = {"content": [], "structuredContent": {"sum": float("inf")}}
        self.gw.factory.servers[0].calls[0][3].callback(result)
        self.gw.stub.flush()
        r = self.successResultOf(d)
        text = self.successResultOf(r.content())
        self.assertNotIn(b"Infinity", text)
        self.assertIsNone(json.loads(text)["mcp_result"]["structuredContent"]["sum"])

    def test_non_utf8_url(self) -> None:
        """A URL that is not UTF-8 is a JSON 400."""
        r = self.gw.request("DELETE", "/sessions/%FF")
        self.assertEqual(r.code, 400)
        self.assertIn("error", self.gw.json(r))

    def test_429_reason_phrase(self) -> None:
        """429 answers carry the phrase Too Many Requests."""
        gw = Gateway(self, rate_limiting={"default_limits": ["1 per minute"]})
        gw.request("GET", "/services")
        r = gw.request("GET", "/services")
        self.assertEqual((r.code, r.phrase), (429, b"Too Many Requests"))

    def test_failed_auth_headers_and_event(self) -> None:
        """Limited failed logins carry RateLimit-* headers; the refusal logs rate_limited."""
        from twisted.internet.testing import EventLoggingObserver
        from twisted.logger import formatEvent, globalLogPublisher

        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        gw = Gateway(self, rate_limiting={"default_limits": ["2 per minute"]})
        first = gw.request("GET", "/services", auth="Bearer nope")
        self.assertEqual(first.code, 401)
        self.assertEqual(first.headers.getRawHeaders("RateLimit-Remaining"), ["1"])
        gw.request("GET", "/services", auth="Bearer nope")
        r = gw.request("GET", "/services", auth="Bearer nope")
        self.assertEqual(r.code, 429)
        self.assertEqual(r.headers.getRawHeaders("RateLimit-Limit"), ["2"])
        self.assertIsNotNone(r.headers.getRawHeaders("Retry-After"))
        kinds = [json.loads(formatEvent(e))["event"] for e in events if "security" in e]
        self.assertEqual(kinds.count("auth_failed"), 3)
        self.assertEqual(kinds.count("rate_limited"), 1)

    def test_swaig_bad_body_is_200(self) -> None:
        """POST /swaig answers 200 with a sentence even for a body it cannot read."""
        for headers, raw in [({}, b"{nope"), ({"Content-Type": "text/plain"}, b"{}")]:
            r = self.gw.request("POST", "/swaig", headers=headers, raw=raw)
            self.assertEqual(r.code, 200)
            self.assertIn("response", self.gw.json(r))
