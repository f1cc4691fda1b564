"""
Tests for L{mcpgw.web} over real loopback HTTP: the early 413 of L{GatewayRequest} (which
StubTreq cannot show, since it builds its own Site) and the headers of L{GatewayResource}.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.protocol import Protocol
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from zope.interface import implementer

from mcpgw.auth import Credentials
from mcpgw.jsonio import parse_json
from mcpgw.web import GatewayChannel, GatewayResource, GatewaySite, call_route_name


class Echo(Resource):
    """Answers with the length of the body it read."""

    isLeaf = True

    def render_POST(self, request: Any) -> bytes:
        self.bodies.append(request.content.read())
        return b"%d" % len(self.bodies[-1])

    bodies: list[bytes] = []


class RawClient(Protocol):
    """Writes raw bytes and collects everything until the server closes."""

    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.received = b""
        self.closed: Deferred[bytes] = Deferred()

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self.payload)

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.closed.callback(self.received)


class BodyLimitTests(TestCase):
    def setUp(self) -> None:
        Echo.bodies = []
        root = GatewayResource(
            Echo(),
            Credentials(basic=(b"u", b"p")),
            client_ip=lambda r: "127.0.0.1",
        )
        self.site = GatewaySite(root, max_body_bytes=1000)
        self.port = reactor.listenTCP(0, self.site, interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)

    async def exchange(self, payload: bytes) -> bytes:
        client = RawClient(payload)
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.port.getHost().port)
        await connectProtocol(endpoint, client)
        return await client.closed

    def head(self, extra: bytes) -> bytes:
        return (
            b"POST /x HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Basic dTpw\r\n"
            b"Content-Type: application/json\r\nConnection: close\r\n" + extra + b"\r\n"
        )

    async def test_declared_length_refused_before_body(self) -> None:
        """A Content-Length over the limit is answered 413 without sending the body."""
        answer = await self.exchange(self.head(b"Content-Length: 1000000000\r\n"))
        self.assertTrue(answer.startswith(b"HTTP/1.1 413 "), answer)
        self.assertIn(b"X-Content-Type-Options: nosniff", answer)
        self.assertIn(b'"error"', answer)
        self.assertEqual(Echo.bodies, [])

    async def test_chunked_counted(self) -> None:
        """A chunked body is counted as it arrives and refused once over the limit."""
        chunk = b"%x\r\n%s\r\n" % (600, b"a" * 600)
        payload = self.head(b"Transfer-Encoding: chunked\r\n") + chunk * 3 + b"0\r\n\r\n"
        answer = await self.exchange(payload)
        self.assertTrue(answer.startswith(b"HTTP/1.1 413 "), answer)
        self.assertEqual(Echo.bodies, [])

    async def test_within_limit(self) -> None:
        """A body within the limit reaches the application, with the security headers."""
        answer = await self.exchange(self.head(b"Content-Length: 10\r\n") + b"0123456789")
        self.assertTrue(answer.startswith(b"HTTP/1.1 200 "), answer)
        self.assertTrue(answer.endswith(b"10"))
        self.assertIn(b"Cache-Control: no-store", answer)
        self.assertNotIn(b"Server:", answer)
        self.assertEqual(Echo.bodies, [b"0123456789"])


class CallRouteNameTests(SynchronousTestCase):
    """Which paths C{GatewayResource} serves past Klein's routing."""

    def test_plain_paths(self) -> None:
        self.assertEqual(call_route_name(b"/services/echo/call"), "echo")
        self.assertEqual(call_route_name(b"/services/caf\xc3\xa9/call"), "caf\xe9")

    def test_everything_else_goes_to_klein(self) -> None:
        for path in [
            b"/services/call",
            b"/services//call",
            b"/services/a/b/call",
            b"/services/%65cho/call",
            b"/services/echo/call/",
            b"/services/echo/tools",
            b"/sessions",
            b"//services/echo/call",
        ]:
            self.assertIsNone(call_route_name(path), path)


class GatewayChannelTests(SynchronousTestCase):
    """A connection's own address and TLS-ness are asked of the transport once."""

    def channel(self, transport: Any) -> GatewayChannel:
        channel = GatewayChannel()
        channel.makeConnection(transport)
        self.addCleanup(channel.connectionLost, Failure(ConnectionDone()))
        return channel

    def test_host_asked_once(self) -> None:
        transport = StringTransport()
        asked: list[None] = []
        real = transport.getHost

        def getHost() -> Any:
            asked.append(None)
            return real()

        transport.getHost = getHost  # type: ignore[method-assign]
        channel = self.channel(transport)
        self.assertIs(channel.getHost(), channel.getHost())
        self.assertEqual(len(asked), 1)

    def test_secure(self) -> None:
        self.assertFalse(self.channel(StringTransport()).isSecure())

        @implementer(ISSLTransport)
        class TLSTransport(StringTransport):
            def getPeerCertificate(self) -> None:
                return None

            def setTcpNoDelay(self, enabled: bool) -> None:
                pass

        self.assertTrue(self.channel(TLSTransport()).isSecure())


class Answers(Resource):
    """``/whole`` with a length, ``/empty`` with none, ``/parts`` written in two pieces."""

    isLeaf = True

    def render_GET(self, request: Any) -> Any:
        if request.path == b"/whole":
            request.setHeader(b"Content-Length", b"5")
            return b"hello"
        if request.path == b"/empty":
            request.setResponseCode(204)
            return b""
        request.write(b"ab")
        request.write(b"cd")
        request.finish()
        return NOT_DONE_YET


class WriteRecorder(StringTransport):
    """Keeps each write the channel makes."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data)
        super().write(data)

    def writeSequence(self, seq: Any) -> None:
        self.write(b"".join(seq))


class AnswerWriteTests(SynchronousTestCase):
    """An answer's head goes out with its body, in one write."""

    def exchange(self, path: bytes) -> list[bytes]:
        site = GatewaySite(Answers(), max_body_bytes=1000)
        channel = site.buildProtocol(None)
        transport = WriteRecorder()
        channel.makeConnection(transport)
        self.addCleanup(channel.connectionLost, Failure(ConnectionDone()))
        channel.dataReceived(b"GET " + path + b" HTTP/1.1\r\nHost: a\r\n\r\n")
        return transport.writes

    def test_head_and_body_together(self) -> None:
        [answer] = self.exchange(b"/whole")
        self.assertTrue(answer.startswith(b"HTTP/1.1 200 OK\r\n"), answer)
        self.assertTrue(answer.endswith(b"\r\n\r\nhello"), answer)

    def test_head_alone_sent_when_the_request_ends(self) -> None:
        [answer] = self.exchange(b"/empty")
        self.assertTrue(answer.startswith(b"HTTP/1.1 204 "), answer)
        self.assertTrue(answer.endswith(b"\r\n\r\n"), answer)

    def test_header_pairs_sanitized(self) -> None:
        """Headers given as pairs (Twisted's old form) are sanitized, as Twisted's own are."""
        channel = GatewayChannel()
        transport = WriteRecorder()
        channel.makeConnection(transport)
        self.addCleanup(channel.connectionLost, Failure(ConnectionDone()))
        channel.writeHeaders(b"HTTP/1.1", b"200", b"OK", [(b"X-A", b"1\r\nInjected: yes")])
        channel.write(b"body")
        [answer] = transport.writes
        self.assertTrue(answer.startswith(b"HTTP/1.1 200 OK\r\nX-A: 1 "), answer)
        self.assertNotIn(b"\r\nInjected", answer)
        self.assertTrue(answer.endswith(b"\r\n\r\nbody"), answer)

    def test_chunked_answer_in_order(self) -> None:
        writes = self.exchange(b"/parts")
        self.assertEqual(len(writes), 3)
        self.assertIn(b"Transfer-Encoding: chunked", writes[0])
        self.assertTrue(writes[0].endswith(b"\r\n\r\n2\r\nab\r\n"), writes[0])
        self.assertEqual(writes[1:], [b"2\r\ncd\r\n", b"0\r\n\r\n"])


class RealSocketAnswerTests(TestCase):
    """Over a real socket, answers written at once arrive whole and in order."""

    async def test_keep_alive_answers(self) -> None:
        site = GatewaySite(Answers(), max_body_bytes=1000)
        port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        request = b"GET /whole HTTP/1.1\r\nHost: a\r\n\r\n"
        client = RawClient(
            request * 2 + b"GET /parts HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
        )
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
        await connectProtocol(endpoint, client)
        received = await client.closed
        self.assertEqual(received.count(b"HTTP/1.1 200 OK"), 3)
        self.assertEqual(received.count(b"\r\n\r\nhello"), 2)
        self.assertTrue(received.endswith(b"2\r\nab\r\n2\r\ncd\r\n0\r\n\r\n"), received)


class ParseJsonTests(SynchronousTestCase):
    """C{parse_json} reads bytes as C{json.loads} does, and is strict."""

    def test_encodings(self) -> None:
        body = {"text": "caf\u00e9 \u2603"}
        for encoding in ("utf-8", "utf-16", "utf-16-le", "utf-32"):
            self.assertEqual(parse_json(json.dumps(body).encode(encoding)), body)
        self.assertEqual(parse_json('{"a": 1}'), {"a": 1})

    def test_strict(self) -> None:
        for raw in [b"NaN", b"[Infinity]", b"{", "\ufeff{}", b"[" * 100000 + b"]" * 100000]:
            self.assertRaises(ValueError, parse_json, raw)
