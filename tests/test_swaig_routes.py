"""
Tests for the SWAIG routes (SPEC 9): ``GET /swaig/functions`` and ``POST /swaig`` through
StubTreq against the real resource tree (L{tests.test_app.Gateway}) with fake MCP servers, and
one end-to-end round trip through the real ``mcp-gateway`` command and the shipped notes server.
"""

from __future__ import annotations

import json
import os
from base64 import b64encode
from typing import Any
from urllib.parse import unquote, urlsplit

import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.test.requesthelper import DummyRequest

from mcpgw.errors import CallTimeout, StartupFailed
from mcpgw.swaig import HANGUP_FUNCTION

from .configs import PASSWORD, USER, gateway_config
from .fakes import TOOLS as FAKE_TOOLS
from .fakes import FakeServer, text_result
from .gateway_process import GatewayProcess, gateway_argv, processes_under
from .test_app import BASE, BASIC, BEARER, Gateway

HOOK_USER, HOOK_PASSWORD = "hook", "h00k:pw"
HOOK = "Basic " + b64encode(f"{HOOK_USER}:{HOOK_PASSWORD}".encode()).decode()
SWAIG_CREDENTIALS = {"auth_user": HOOK_USER, "auth_password": HOOK_PASSWORD}

NESTED_SCHEMA = {
    "type": "object",
    "properties": {
        "query": {"type": "string", "description": "What to look up."},
        "filter": {
            "type": "object",
            "properties": {
                "tags": {"type": "array", "items": {"type": "string"}},
                "since": {"anyOf": [{"type": "string"}, {"type": "null"}]},
            },
            "required": ["tags"],
        },
    },
    "required": ["query", "filter"],
}
# The fakes' echo tool, plus one with a nested schema.
TOOLS: list[dict[str, Any]] = [*FAKE_TOOLS, {"name": "lookup", "inputSchema": NESTED_SCHEMA}]


def webhook_body(function: str, args: Any = None, **fields: Any) -> dict[str, Any]:
    """A SWAIG webhook body as SignalWire sends it."""
    body: dict[str, Any] = {
        "function": function,
        "argument": {"parsed": [args or {}], "raw": json.dumps(args or {})},
        "meta_data": {},
    }
    body.update(fields)
    return body


class SwaigGateway(Gateway):
    """L{Gateway} with helpers for the SWAIG routes."""

    def functions(self, query: str = "", **kw: Any) -> Any:
        r = self.request("GET", "/swaig/functions" + query, **kw)
        self.testcase.assertEqual(r.code, 200)
        return self.json(r)["functions"]

    def webhook(self, body: Any, auth: str = BASIC) -> Any:
        r = self.request("POST", "/swaig", body, auth=auth)
        self.testcase.assertEqual(r.code, 200)
        answer = self.json(r)
        self.testcase.assertEqual(set(answer), {"response"})
        return answer["response"]


class FunctionsTests(SynchronousTestCase):
    """``GET /swaig/functions``."""

    def setUp(self) -> None:
        self.gw = SwaigGateway(self)
        self.gw.factory.tools = TOOLS

    def test_one_function_per_tool_and_hangup(self) -> None:
        """
        Every tool of every enabled service is one function named ``mcp_<service>_<tool>``,
        described ``[<service>] <description or name>`` with the tool's whole input schema
        (``required`` and nested schemas kept), then the hangup hook.
        """
        functions = self.gw.functions()
        self.assertEqual(
            [f["function"] for f in functions],
            [
                "mcp_echo_echo",
                "mcp_echo_lookup",
                "mcp_other_echo",
                "mcp_other_lookup",
                HANGUP_FUNCTION,
            ],
        )
        by_name = {f["function"]: f for f in functions}
        self.assertEqual(
            by_name["mcp_echo_echo"],
            {
                "function": "mcp_echo_echo",
                "description": "[echo] Echo a text.",
                "parameters": TOOLS[0]["inputSchema"],
                "web_hook_url": BASE + "/swaig",
            },
        )
        self.assertEqual(by_name["mcp_other_lookup"]["description"], "[other] lookup")
        self.assertEqual(by_name["mcp_other_lookup"]["parameters"], NESTED_SCHEMA)
        hangup = functions[-1]
        self.assertIs(hangup["is_hangup_hook"], True)
        self.assertEqual(hangup["web_hook_url"], BASE + "/swaig")
        self.assertTrue(all("is_hangup_hook" not in f for f in functions[:-1]))

    def test_public_url_with_webhook_credentials(self) -> None:
        """
        ``web_hook_url`` is ``server.public_url`` + ``/swaig`` with the ``swaig.*`` credential
        (percent-encoded) as userinfo; the main credentials appear nowhere in the answer.
        """
        gw = SwaigGateway(
            self, server={"public_url": "https://agents.example.com/gw/"}, swaig=SWAIG_CREDENTIALS
        )
        r = gw.request("GET", "/swaig/functions")
        raw = gw.testcase.successResultOf(r.text())
        urls = {f["web_hook_url"] for f in json.loads(raw)["functions"]}
        self.assertEqual(urls, {"https://hook:h00k%3Apw@agents.example.com/gw/swaig"})
        for secret in ("s3cret", "tok-123", "admin"):
            self.assertNotIn(secret, raw)

    def test_public_url_without_webhook_credentials(self) -> None:
        """Without ``swaig.*`` credentials the URL carries no userinfo (never the admin one)."""
        gw = SwaigGateway(self, server={"public_url": "https://agents.example.com"})
        urls = {f["web_hook_url"] for f in gw.functions()}
        self.assertEqual(urls, {"https://agents.example.com/swaig"})

    def test_public_url_wins_over_host(self) -> None:
        """A configured ``public_url`` is used whatever ``Host`` the request carries."""
        gw = SwaigGateway(self, server={"public_url": "https://agents.example.com"})
        functions = gw.functions(headers={"Host": "evil.example:81"})
        self.assertEqual(functions[0]["web_hook_url"], "https://agents.example.com/swaig")

    def test_derived_base_from_host(self) -> None:
        """
        Without ``public_url``, the base is the URL the client reached us through (the
        ``Host`` header), not the listener's own, possibly wildcard, address.
        """
        gw = SwaigGateway(self, swaig=SWAIG_CREDENTIALS)
        gw.swaig.default_base = "http://0.0.0.0:8080"
        functions = gw.functions(headers={"Host": "gw.example.net:9000"})
        self.assertEqual(
            functions[0]["web_hook_url"], "http://hook:h00k%3Apw@gw.example.net:9000/swaig"
        )

    def test_derived_base_bad_host(self) -> None:
        """A malformed ``Host`` header is ignored: the listener's own URL is used."""
        self.gw.swaig.default_base = "http://10.1.2.3:8080"
        functions = self.gw.functions(headers={"Host": "x@evil/path"})
        self.assertEqual(functions[0]["web_hook_url"], "http://10.1.2.3:8080/swaig")

    def test_filter_services_keeps_names(self) -> None:
        """
        ``?service=`` (repeatable) lists only those services' tools plus the hangup hook, under
        the names of the full listing even when a name collision renamed one of them.
        """
        gw = SwaigGateway(self, services={"a_b": {"command": ["x"]}, "a": {"command": ["y"]}})
        tools = {"a_b": [{"name": "c"}], "a": [{"name": "b_c"}]}

        def list_tools(server: FakeServer) -> Deferred[list[dict[str, Any]]]:
            return succeed(tools.get(server.service.name, TOOLS))

        self.patch(FakeServer, "list_tools", list_tools)
        everything = {f["description"]: f["function"] for f in gw.functions()}
        # ("a", "b_c") sorts first and keeps the plain name; the other pair is hashed.
        self.assertEqual(everything["[a] b_c"], "mcp_a_b_c")
        renamed = everything["[a_b] c"]
        self.assertTrue(renamed.startswith("mcp_a_b_c_"), everything)
        only_a_b = gw.functions("?service=a_b")
        self.assertEqual([f["function"] for f in only_a_b], [renamed, HANGUP_FUNCTION])
        both = gw.functions("?service=a_b&service=echo")
        self.assertEqual(
            [f["function"] for f in both],
            ["mcp_echo_echo", "mcp_echo_lookup", renamed, HANGUP_FUNCTION],
        )

    def test_unknown_service_filter(self) -> None:
        """Filtering on services that do not exist lists only the hangup hook."""
        functions = self.gw.functions("?service=nope&service=off")
        self.assertEqual([f["function"] for f in functions], [HANGUP_FUNCTION])

    def test_tools_rate_class(self) -> None:
        """``GET /swaig/functions`` uses ``tools_limit``, not the default limits."""
        gw = SwaigGateway(
            self, rate_limiting={"tools_limit": "2 per minute", "call_limit": "1 per minute"}
        )
        codes = [gw.request("GET", "/swaig/functions").code for _ in range(3)]
        self.assertEqual(codes, [200, 200, 429])
        r = gw.request("GET", "/swaig/functions")
        self.assertEqual(gw.json(r), {"error": "Rate limit exceeded: 2 per minute"})
        self.assertEqual(gw.request("GET", "/services").code, 200)

    def test_webhook_credentials_refused(self) -> None:
        """The ``swaig.*`` credential does not open ``GET /swaig/functions``: 401."""
        gw = SwaigGateway(self, swaig=SWAIG_CREDENTIALS)
        r = gw.request("GET", "/swaig/functions", auth=HOOK)
        self.assertEqual(r.code, 401)
        self.assertEqual(gw.json(r), {"error": "Authentication required"})


class RequestBaseTests(SynchronousTestCase):
    """L{SwaigBridge.request_base}: the base URL a request reached us through."""

    def base(self, host: bytes | None, secure: bool = False, **server: Any) -> str | None:
        gw = SwaigGateway(self, server=server)
        request = DummyRequest([b""])
        if host is not None:
            request.requestHeaders.setRawHeaders(b"host", [host])
        request.isSecure = lambda: secure  # type: ignore[method-assign]
        return gw.swaig.request_base(request)

    def test_host_forms(self) -> None:
        """Names, IPv4 and bracketed IPv6 hosts with or without a port are accepted."""
        self.assertEqual(self.base(b"Example.COM"), "http://example.com")
        self.assertEqual(self.base(b"127.0.0.1:8080"), "http://127.0.0.1:8080")
        self.assertEqual(self.base(b"[::1]:8443", secure=True), "https://[::1]:8443")

    def test_refused(self) -> None:
        """No Host, a malformed one, or a configured public_url give None."""
        for host in [None, b"", b"a b", b"a/b", b"u@h", b"h:p", b"[zz]", b"h:123456"]:
            self.assertIsNone(self.base(host), host)
        self.assertIsNone(self.base(b"example.com", public_url="https://x.example"))


class WebhookTests(SynchronousTestCase):
    """``POST /swaig``."""

    def setUp(self) -> None:
        self.gw = SwaigGateway(self, swaig=SWAIG_CREDENTIALS)

    def test_function_table_follows_the_catalog(self) -> None:
        """
        The webhook's function table is built once per catalog state: later webhooks reuse
        it, and a re-probe (tools/list_changed) brings the new tools in.
        """
        from mcpgw import swaig

        builds: list[int] = []
        original = swaig.build_function_table

        def counting(catalog: Any) -> Any:
            builds.append(1)
            return original(catalog)

        self.patch(swaig, "build_function_table", counting)
        for _ in range(3):
            body = webhook_body("mcp_echo_echo", {"text": "x"}, call_id="c")
            self.assertEqual(self.gw.webhook(body), "echo:{'text': 'x'}")
        self.assertEqual(len(builds), 1)
        self.gw.factory.tools = [{"name": "fresh", "inputSchema": {"type": "object"}}]
        self.gw.catalog.invalidate("echo")
        body = webhook_body("mcp_echo_fresh", {}, call_id="c")
        self.assertEqual(self.gw.webhook(body), "fresh:{}")
        self.assertEqual(len(builds), 2)

    def test_accepted_credentials(self) -> None:
        """POST /swaig accepts the main Basic pair, the token and the ``swaig.*`` pair."""
        for auth in (BASIC, BEARER, HOOK):
            body = webhook_body("mcp_echo_echo", {"text": "hi"}, call_id="c-1")
            self.assertEqual(self.gw.webhook(body, auth=auth), "echo:{'text': 'hi'}")
        wrong = "Basic " + b64encode(b"hook:nope").decode()
        r = self.gw.request("POST", "/swaig", webhook_body("mcp_echo_echo"), auth=wrong)
        self.assertEqual(r.code, 401)

    def test_webhook_credentials_only_on_webhook(self) -> None:
        """The ``swaig.*`` credential is refused with 401 on every other route."""
        for method, path, body in [
            ("GET", "/services", None),
            ("GET", "/services/echo/tools", None),
            ("POST", "/services/echo/call", {"tool": "echo", "session_id": "s"}),
            ("GET", "/sessions", None),
            ("POST", "/sessions", {"service": "echo", "session_id": "s"}),
            ("DELETE", "/sessions/s", None),
            ("GET", "/swaig", None),
        ]:
            r = self.gw.request(method, path, body, auth=HOOK)
            self.assertEqual(r.code, 401, (method, path))
        self.assertEqual(self.gw.factory.servers, [])

    def test_round_trip_parsed(self) -> None:
        """
        Arguments come from ``argument.parsed[0]``, the tool runs in the session named by
        ``call_id`` with the service's call timeout, and its text is the ``response``.
        """
        body = webhook_body("mcp_other_echo", {"text": "parsed"}, call_id="call-1")
        body["argument"]["raw"] = json.dumps({"text": "raw"})
        self.assertEqual(self.gw.webhook(body), "echo:{'text': 'parsed'}")
        self.assertIsNotNone(self.gw.sessions.get("other", "call-1"))
        (server,) = [s for s in self.gw.factory.servers if s.calls]
        self.assertEqual(server.service.name, "other")
        self.assertEqual(server.calls[0][:3], ("echo", {"text": "parsed"}, 25))

    def test_round_trip_raw(self) -> None:
        """Without ``parsed``, arguments are ``argument.raw`` decoded as JSON."""
        body = {"function": "mcp_echo_echo", "argument": {"raw": '{"text": "r"}'}, "call_id": "c"}
        self.assertEqual(self.gw.webhook(body), "echo:{'text': 'r'}")

    def test_bad_raw_arguments(self) -> None:
        """Arguments that are not JSON answer 200 with a sentence; the tool never runs."""
        body = {"function": "mcp_echo_echo", "argument": {"raw": "{nope"}, "call_id": "c"}
        self.assertIn("not valid JSON", self.gw.webhook(body))
        self.assertEqual(len(self.gw.sessions), 0)

    def test_session_id_from_global_data(self) -> None:
        """The session id is ``global_data.mcp_call_id`` when present, else ``call_id``."""
        body = webhook_body(
            "mcp_echo_echo", {"text": "x"}, call_id="call-1", global_data={"mcp_call_id": "m-9"}
        )
        self.gw.webhook(body)
        self.assertIsNotNone(self.gw.sessions.get("echo", "m-9"))
        self.assertIsNone(self.gw.sessions.get("echo", "call-1"))
        self.gw.webhook(webhook_body("mcp_echo_echo", {"text": "x"}, call_id="call-1"))
        self.assertIsNotNone(self.gw.sessions.get("echo", "call-1"))

    def test_no_session_id(self) -> None:
        """
        Without ``global_data.mcp_call_id`` and ``call_id`` the webhook answers 200 with a
        refusal sentence, and no server is started (no shared fallback session).
        """
        for extra in [{}, {"call_id": ""}, {"global_data": {}, "call_id": None}]:
            answer = self.gw.webhook(webhook_body("mcp_echo_echo", {"text": "x"}, **extra))
            self.assertIn("no call id", answer)
        self.assertEqual(self.gw.factory.servers, [])
        self.assertEqual(len(self.gw.sessions), 0)

    def test_unknown_function(self) -> None:
        """An unknown function answers 200 with a sentence naming it; nothing runs."""
        answer = self.gw.webhook(webhook_body("mcp_echo_nope", call_id="c"))
        self.assertEqual(answer, "There is no function named mcp_echo_nope.")
        self.assertEqual(len(self.gw.sessions), 0)

    def test_is_error_prefixed(self) -> None:
        """An ``isError`` result is prefixed so the AI knows the tool failed."""
        self.gw.factory.auto_answer = False
        d = self.gw.send("/swaig", webhook_body("mcp_echo_echo", {"text": "x"}, call_id="c"))
        self.assertNoResult(d)
        (server,) = [s for s in self.gw.factory.servers if s.calls]
        server.calls[0][3].callback(text_result("boom", is_error=True))
        self.gw.stub.flush()
        r = self.successResultOf(d)
        self.assertEqual(r.code, 200)
        self.assertEqual(self.gw.json(r), {"response": "Error from tool echo: boom"})

    def pending(self, call_id: str = "c") -> tuple[Deferred[Any], FakeServer]:
        self.gw.factory.auto_answer = False
        d = self.gw.send("/swaig", webhook_body("mcp_echo_echo", {"text": "x"}, call_id=call_id))
        self.assertNoResult(d)
        (server,) = [s for s in self.gw.factory.servers if s.calls]
        return d, server

    def answer(self, d: Deferred[Any]) -> str:
        self.gw.stub.flush()
        r = self.successResultOf(d)
        self.assertEqual(r.code, 200)
        return str(self.gw.json(r)["response"])

    def test_timeout_sentence(self) -> None:
        """A call timeout answers 200 with a sentence; the session is kept."""
        d, server = self.pending()
        server.calls[0][3].errback(CallTimeout(25))
        self.assertEqual(self.answer(d), "The tool echo did not answer within 25 seconds.")
        self.assertIsNotNone(self.gw.sessions.get("echo", "c"))

    def test_child_failed_sentence(self) -> None:
        """A child dying mid-call answers 200 with a sentence saying it can be retried."""
        d, server = self.pending()
        server.die("exit code 3")
        self.assertEqual(
            self.answer(d),
            "The tool echo stopped unexpectedly while working; it can be tried again.",
        )

    def test_hangup_closes_every_service(self) -> None:
        """The hangup hook closes every service's session of that call id, and no other."""
        for service in ("echo", "other"):
            self.gw.webhook(webhook_body(f"mcp_{service}_echo", {"text": "x"}, call_id="call-1"))
        self.gw.webhook(webhook_body("mcp_echo_echo", {"text": "x"}, call_id="call-2"))
        used = [s for s in self.gw.factory.servers if s.calls]
        self.assertEqual(len(used), 3)
        answer = self.gw.webhook(webhook_body(HANGUP_FUNCTION, call_id="call-1"), auth=HOOK)
        self.assertEqual(answer, "Closed 2 session(s) of this call.")
        self.assertEqual(
            [(s.service, s.session_id) for s in self.gw.sessions], [("echo", "call-2")]
        )
        self.assertEqual([s.stopped for s in used], [True, True, False])
        answer = self.gw.webhook(webhook_body(HANGUP_FUNCTION, call_id="call-1"))
        self.assertEqual(answer, "Closed 0 session(s) of this call.")

    def test_hangup_uses_mcp_call_id(self) -> None:
        """The hangup hook finds the sessions by ``global_data.mcp_call_id`` too."""
        ids = {"call_id": "call-1", "global_data": {"mcp_call_id": "m-1"}}
        self.gw.webhook(webhook_body("mcp_echo_echo", {"text": "x"}, **ids))
        self.assertEqual(
            self.gw.webhook(webhook_body(HANGUP_FUNCTION, **ids)),
            "Closed 1 session(s) of this call.",
        )
        self.assertEqual(len(self.gw.sessions), 0)

    def test_failed_service_does_not_delay(self) -> None:
        """
        A webhook for a healthy service does not wait for a re-probe of a service whose probe
        failed (it could take that service's whole startup timeout); a function found nowhere
        else re-probes the failed services, and is served once its service is back.
        """
        real_start = FakeServer.start
        hang: list[Deferred[None]] = []
        mode = {"other": "fail"}

        def start(server: FakeServer) -> Deferred[None]:
            if server.service.name == "other" and mode["other"] == "fail":
                return fail(StartupFailed("exit code 1"))
            if server.service.name == "other" and mode["other"] == "hang":
                hang.append(Deferred())
                return hang[-1]
            return real_start(server)

        self.patch(FakeServer, "start", start)
        functions = self.gw.functions()
        self.assertEqual([f["function"] for f in functions], ["mcp_echo_echo", HANGUP_FUNCTION])
        self.assertEqual(self.gw.catalog.state("other"), "failed")
        mode["other"] = "hang"
        body = webhook_body("mcp_echo_echo", {"text": "x"}, call_id="c")
        self.assertEqual(self.gw.webhook(body), "echo:{'text': 'x'}")
        self.assertEqual(hang, [])
        # Unknown among the healthy services: the failed one is probed again, and waited for.
        d = self.gw.send("/swaig", webhook_body("mcp_other_echo", {"text": "y"}, call_id="c"))
        self.assertNoResult(d)
        self.assertEqual(len(hang), 1)
        mode["other"] = "ok"
        hang[0].callback(None)
        self.gw.stub.flush()
        r = self.successResultOf(d)
        self.assertEqual(self.gw.json(r), {"response": "echo:{'text': 'y'}"})

    def test_call_rate_class(self) -> None:
        """``POST /swaig`` uses ``call_limit``; the tools class is left alone."""
        gw = SwaigGateway(
            self, rate_limiting={"call_limit": "2 per minute", "tools_limit": "1 per minute"}
        )
        body = webhook_body("mcp_echo_echo", {"text": "x"}, call_id="c")
        codes = [gw.request("POST", "/swaig", body).code for _ in range(3)]
        self.assertEqual(codes, [200, 200, 429])
        self.assertEqual(
            gw.json(gw.request("POST", "/swaig", body)),
            {"error": "Rate limit exceeded: 2 per minute"},
        )
        self.assertEqual(gw.request("GET", "/swaig/functions").code, 200)
        self.assertEqual(gw.request("POST", "/services/echo/call", {"tool": "echo"}).code, 429)

    def test_tool_call_event(self) -> None:
        """
        A webhook tool call logs a ``tool_call`` security event with the principal and the
        client IP, and never the arguments.
        """
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        body = webhook_body("mcp_echo_echo", {"text": "secret-arg"}, call_id="c-7")
        self.gw.webhook(body, auth=HOOK)
        found = [
            json.loads(e["security"]) for e in events if e.get("security_event") == "tool_call"
        ]
        self.assertEqual(len(found), 1)
        event = found[0]
        del event["duration_ms"]
        self.assertEqual(
            event,
            {
                "event": "tool_call",
                "service": "echo",
                "tool": "echo",
                "session_id": "c-7",
                "principal": HOOK_USER,
                "ip": "127.0.0.1",
                "status": 200,
                "via": "swaig",
            },
        )
        self.assertNotIn("secret-arg", json.dumps([dict(e) for e in events], default=repr))


# No keep-alive: nothing of the client outlives a test (trial's dirty reactor check).
http = treq.client.HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)))


class SwaigEndToEndTests(TestCase):
    """The SWAIG routes of the real ``mcp-gateway`` command with a real MCP child."""

    timeout = 120

    async def test_webhook_round_trip(self) -> None:
        """
        ``GET /swaig/functions`` lists the notes tools with a working ``web_hook_url``;
        webhooks on one call id keep state in one session, another call id has its own, and
        the hangup hook closes them: no session and no child left.
        """
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        sandbox = os.path.join(directory, "sandbox")
        config = gateway_config(directory, swaig=SWAIG_CREDENTIALS)
        gw = GatewayProcess.start(gateway_argv(config), cwd=directory)
        self.addCleanup(gw.stop)
        url = await gw.url
        auth = (USER, PASSWORD)
        r = await http.get(f"{url}/swaig/functions", auth=auth)
        self.assertEqual(r.code, 200)
        functions = json.loads(await r.text())["functions"]
        names = [f["function"] for f in functions]
        self.assertEqual(names[-1], HANGUP_FUNCTION)
        self.assertIn("mcp_notes_add_note", names)
        self.assertIn("mcp_notes_list_notes", names)
        hook_url = functions[0]["web_hook_url"]
        parts = urlsplit(hook_url)
        self.assertEqual((parts.username, parts.path), (HOOK_USER, "/swaig"))
        self.assertEqual(f"{parts.scheme}://{parts.hostname}:{parts.port}", url)
        endpoint = f"{parts.scheme}://{parts.hostname}:{parts.port}{parts.path}"
        hook_auth = (unquote(parts.username or ""), unquote(parts.password or ""))

        async def webhook(function: str, call_id: str, args: Any = None) -> str:
            body = webhook_body(function, args, call_id=call_id)
            r = await http.post(endpoint, json=body, auth=hook_auth)
            self.assertEqual(r.code, 200)
            return str(json.loads(await r.text())["response"])

        for text in ("milk", "eggs"):
            self.assertIn("Noted", await webhook("mcp_notes_add_note", "call-a", {"text": text}))
        self.assertEqual(await webhook("mcp_notes_list_notes", "call-a"), "1. milk\n2. eggs")
        self.assertEqual(await webhook("mcp_notes_list_notes", "call-b"), "No notes yet.")
        r = await http.get(f"{url}/sessions", auth=auth)
        self.assertEqual(set(json.loads(await r.text())), {"call-a", "call-b"})
        for call_id in ("call-a", "call-b"):
            answer = await webhook(HANGUP_FUNCTION, call_id)
            self.assertEqual(answer, "Closed 1 session(s) of this call.")
        r = await http.get(f"{url}/sessions", auth=auth)
        self.assertEqual(json.loads(await r.text()), {})
        self.assertEqual(await gw.stop(), 0)
        self.assertEqual(processes_under(sandbox), [])
