# -*- test-case-name: tests.test_web -*-
"""
HTTP plumbing around the Klein application.

- ``GatewayResource`` wraps the Klein resource: security headers on every response, no
  ``Server`` header, authentication before anything else (``/health`` excepted), failed
  authentications counted against the ``default`` rate limit of ``(-, IP)``.
- ``GatewayRequest`` refuses a declared ``Content-Length`` over the limit with 413 before the
  body is read, and counts chunked bodies as they arrive.
- ``GatewaySite`` builds those requests and keeps no access log (security events are logged
  by the application itself).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any, cast
from urllib.parse import unquote_to_bytes

from twisted.internet.defer import Deferred
from twisted.logger import LogLevel
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel
from twisted.web.http_headers import Headers
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from mcpgw import logs
from mcpgw.auth import Credentials, authenticate
from mcpgw.jsonio import json_bytes
from mcpgw.logs import Logger
from mcpgw.sendnow import send_now

log = Logger()

SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"X-Content-Type-Options", b"nosniff"),
    (b"X-Frame-Options", b"DENY"),
    (b"Content-Security-Policy", b"default-src 'none'; frame-ancestors 'none'"),
    (b"Referrer-Policy", b"no-referrer"),
    (b"Cache-Control", b"no-store"),
)
HSTS = (b"Strict-Transport-Security", b"max-age=31536000; includeSubDomains")
JSON_TYPE = b"application/json"

# Reason phrases Twisted does not know.
_REASONS = {429: b"Too Many Requests"}


def write_json(
    request: IRequest, status: int, body: Any, headers: Sequence[tuple[bytes, bytes]] = ()
) -> bytes:
    """
    Set the status and headers of a JSON answer; the caller returns (or writes) the bytes,
    whole. With its ``Content-Length`` set here, an answer written later, once a child has
    replied, goes out in one piece rather than chunked.
    """
    data = json_bytes(body)
    request.setResponseCode(status, _REASONS.get(status))
    request.setHeader(b"Content-Type", JSON_TYPE)
    request.setHeader(b"Content-Length", b"%d" % len(data))
    for name, value in headers:
        request.setHeader(name, value)
    return data


def security_event(kind: str, **fields: Any) -> None:
    """Log a security event: an INFO event whose text is one JSON object (SPEC 10)."""
    if LogLevel.info < logs.threshold:
        return
    log.info("{security}", security=json.dumps({"event": kind, **fields}), security_event=kind)


# Per-request facts the wrapper learns and the routes read.
def principal_of(request: IRequest) -> str:
    return cast(str, getattr(request, "_mcpgw_principal", "-"))


def client_ip_of(request: IRequest) -> str:
    return cast(str, getattr(request, "_mcpgw_ip", ""))


def call_route_name(path: bytes) -> str | None:
    """The service of a plain ``/services/<name>/call`` path, else ``None`` (Klein's)."""
    if not path.startswith(b"/services/") or not path.endswith(b"/call") or b"%" in path:
        return None
    name = path[10:-5]
    if not name or b"/" in name:
        return None
    return name.decode("utf-8")


class GatewayResource(Resource):
    """The root: headers, authentication, then the Klein resource."""

    isLeaf = True

    def __init__(
        self,
        inner: IResource,
        credentials: Credentials,
        *,
        client_ip: Callable[[IRequest], str],
        on_auth_failure: Callable[[str], Deferred[Any]] | None = None,
        render_call: Callable[[IRequest, str], object] | None = None,
    ) -> None:
        """
        @param client_ip: the client address of a request (peer, or X-Forwarded-For from a
            trusted proxy).
        @param on_auth_failure: called with the client IP after a failed authentication; fires
            with the rate-limit decision of ``(-, IP)`` (``mcpgw.ratelimit.Decision``, or None
            when nothing limits): refused answers 429 instead of 401.
        @param render_call: serves ``POST /services/<name>/call`` past Klein's routing
            (``GatewayApp.render_call``), for plain paths (no ``%``-escape, one segment).
        """
        super().__init__()  # type: ignore[no-untyped-call]
        self._inner = inner
        self._credentials = credentials
        self._client_ip = client_ip
        self._on_auth_failure = on_auth_failure
        self._render_call = render_call

    def render(self, request: IRequest) -> Any:
        headers = request.responseHeaders
        headers.removeHeader(b"server")
        for name, value in SECURITY_HEADERS:
            headers.setRawHeaders(name, [value])
        if request.isSecure():
            headers.setRawHeaders(HSTS[0], [HSTS[1]])
        path = request.path
        if path == b"/health":
            return self._inner.render(request)
        try:
            unquote_to_bytes(path).decode("utf-8")
        except UnicodeDecodeError:
            return write_json(request, 400, {"error": "Invalid URL encoding"})
        ip = self._client_ip(request)
        setattr(request, "_mcpgw_ip", ip)  # noqa: B010
        auth = request.requestHeaders.getRawHeaders(b"authorization")
        webhook = request.method == b"POST" and path == b"/swaig"
        principal = authenticate(auth[0] if auth else None, self._credentials, webhook=webhook)
        if principal is not None:
            setattr(request, "_mcpgw_principal", principal)  # noqa: B010
            if self._render_call is not None and request.method == b"POST":
                service = call_route_name(path)
                if service is not None:
                    return self._render_call(request, service)
            return self._inner.render(request)
        security_event(
            "auth_failed",
            ip=ip,
            method=request.method.decode("latin-1"),
            path=path.decode("latin-1")[:256],
        )
        if self._on_auth_failure is None:
            return self._unauthorized(request)
        d = self._on_auth_failure(ip)
        d.addCallbacks(
            lambda decision: self._finish(request, self._limited(request, ip, decision)),
            lambda f: self._finish(request, self._failed(request, f)),
        )
        return NOT_DONE_YET

    @staticmethod
    def _unauthorized(request: IRequest, headers: Sequence[tuple[bytes, bytes]] = ()) -> bytes:
        return write_json(
            request,
            401,
            {"error": "Authentication required"},
            [*headers, (b"WWW-Authenticate", b'Basic realm="MCP Gateway"')],
        )

    @staticmethod
    def _limited(request: IRequest, ip: str, decision: Any) -> bytes:
        """401, or 429 once ``(-, IP)`` is over its limit; RateLimit-* headers on both."""
        if decision is None:
            return GatewayResource._unauthorized(request)
        headers = decision.headers()
        if decision.allowed:
            return GatewayResource._unauthorized(request, headers)
        text = decision.limit.text
        security_event(
            "rate_limited",
            ip=ip,
            principal="-",
            limit=text,
            path=request.path.decode("latin-1")[:256],
        )
        return write_json(request, 429, {"error": f"Rate limit exceeded: {text}"}, headers)

    @staticmethod
    def _failed(request: IRequest, failure: Failure) -> bytes:
        log.failure("while limiting a failed authentication", failure)
        return GatewayResource._unauthorized(request)

    @staticmethod
    def _finish(request: IRequest, body: bytes) -> None:
        if getattr(request, "_disconnected", False):
            return
        request.write(body)
        request.finish()


class GatewayRequest(Request):
    """
    A request that refuses bodies over its site's ``max_body_bytes`` early.

    It never parses form bodies into ``args`` (the API is JSON; Twisted would otherwise parse
    every POST's ``Content-Type`` with the ``email`` package, a tenth of a call's CPU).
    """

    _refused = False
    _received = 0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("parsePOSTFormSubmission", False)
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]

    def _limit(self) -> int:
        site = getattr(self.channel, "site", None)
        return cast(int, getattr(site, "max_body_bytes", 10 * 1024 * 1024))

    def gotLength(self, length: int | None) -> None:
        if length is not None and length > self._limit():
            self._refuse()
            return
        super().gotLength(length)  # type: ignore[no-untyped-call]

    def handleContentChunk(self, data: bytes) -> None:
        if self._refused:
            return
        self._received += len(data)
        if self._received > self._limit():
            self._refuse()
            return
        super().handleContentChunk(data)  # type: ignore[no-untyped-call]

    def process(self) -> None:
        if self._refused:
            return
        super().process()  # type: ignore[no-untyped-call]

    def _refuse(self) -> None:
        """Answer 413 at once and close: the rest of the body is never read."""
        import io

        self._refused = True
        self.content = io.BytesIO()
        self.requestHeaders.removeHeader(b"expect")
        body = json_bytes({"error": f"Request body too large (limit {self._limit()} bytes)"})
        head = [b"HTTP/1.1 413 Payload Too Large", b"Content-Type: application/json"]
        head += [name + b": " + value for name, value in SECURITY_HEADERS]
        if self.isSecure():  # type: ignore[no-untyped-call]
            head.append(HSTS[0] + b": " + HSTS[1])
        head += [b"Content-Length: " + str(len(body)).encode(), b"Connection: close"]
        transport = self.channel.transport
        if transport is None:
            return
        transport.write(b"\r\n".join(head) + b"\r\n\r\n" + body)
        transport.loseConnection()


class GatewayChannel(HTTPChannel):
    """
    An HTTP/1.1 connection that:

    - asks its transport only once what cannot change: its own address (every request's
      ``Request.host``, a ``getsockname`` call) and whether it is TLS (a zope adaptation,
      asked twice a request);
    - sends an answer's head and body in one write, made at once when nothing is queued on
      the socket (``mcpgw.sendnow``): one segment (one TLS record) per answer, not sent a
      reactor turn later (Twisted sets ``TCP_NODELAY``).

    No HTTP/2 negotiation: the API is HTTP/1.1.
    """

    _host: Any = None
    _secure: bool | None = None
    # The head of the answer being written, held until its body (or the request's end).
    _head: list[bytes] | None = None

    def writeHeaders(self, version: bytes, code: bytes, reason: bytes, headers: Any) -> None:
        if not isinstance(headers, Headers):  # pairs: sanitized as Twisted's own does
            pairs, headers = headers, Headers()
            for name, value in pairs:
                headers.addRawHeader(name, value)
        head = [version, b" ", code, b" ", reason, b"\r\n"]
        for name, values in headers.getAllRawHeaders():
            for value in values:
                head.extend((name, b": ", value, b"\r\n"))
        head.append(b"\r\n")
        self._head = head

    def write(self, data: bytes) -> None:
        self.writeSequence((data,))

    def writeSequence(self, iovec: Sequence[bytes]) -> None:
        head, self._head = self._head, None
        data = b"".join(iovec if head is None else [*head, *iovec])
        transport = self.transport
        if transport is not None and data:
            data = send_now(transport, data)
            if data:
                transport.write(data)

    def requestDone(self, request: Any) -> None:
        if self._head is not None:
            self.writeSequence(())
        super().requestDone(request)  # type: ignore[no-untyped-call]

    def getHost(self) -> Any:
        if self._host is None:
            self._host = super().getHost()  # type: ignore[no-untyped-call]
        return self._host

    def isSecure(self) -> bool:
        if self._secure is None:
            self._secure = bool(super().isSecure())  # type: ignore[no-untyped-call]
        return self._secure


class GatewaySite(Site):
    """Our channel and request classes, our body limit, no tracebacks, no access log."""

    protocol = GatewayChannel  # type: ignore[assignment]
    requestFactory = GatewayRequest
    displayTracebacks = False

    def __init__(self, resource: IResource, max_body_bytes: int, **kwargs: Any) -> None:
        super().__init__(resource, **kwargs)  # type: ignore[no-untyped-call]
        self.max_body_bytes = max_body_bytes

    def log(self, request: Any) -> None:
        """No access log: the hot path logs nothing below INFO (tool calls are events)."""
