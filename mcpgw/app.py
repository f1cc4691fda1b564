# -*- test-case-name: tests.test_app -*-
"""
The gateway's HTTP API (SPEC 4): one Klein app per ``GatewayApp`` instance.

Authentication and the security headers are applied around it (``mcpgw.web``); this module
rate-limits each route by its class, validates bodies and turns domain errors into JSON.
"""

from __future__ import annotations

import datetime
import math
import re
import time
from collections.abc import Mapping
from typing import Any, cast

from klein import Klein
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource
from twisted.web.server import NOT_DONE_YET
from werkzeug.exceptions import HTTPException, MethodNotAllowed

import mcpgw
from mcpgw.catalog import ToolsCatalog
from mcpgw.config import Config, ServiceConfig
from mcpgw.errors import BadRequest, GatewayError, RateLimited, UnknownService
from mcpgw.jsonio import parse_json
from mcpgw.logs import Logger
from mcpgw.sessions import SessionManager, valid_session_id
from mcpgw.web import client_ip_of, principal_of, security_event, write_json

log = Logger()

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class PayloadTooLarge(GatewayError):
    status = 413


class UnsupportedMediaType(GatewayError):
    status = 415


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def valid_tool_name(value: object) -> bool:
    return isinstance(value, str) and 0 < len(value) <= 128 and not _CONTROL.search(value)


def _retry_after(seconds: float) -> bytes:
    return str(max(1, math.ceil(seconds))).encode()


class GatewayApp:
    app = Klein()

    def __init__(
        self,
        reactor: IReactorTime,
        config: Config,
        sessions: SessionManager,
        catalog: ToolsCatalog,
        limiter: Any = None,
        swaig: Any = None,
    ) -> None:
        self._reactor = reactor
        self._config = config
        self._services: Mapping[str, ServiceConfig] = config.enabled_services
        self._sessions = sessions
        self._catalog = catalog
        self._limiter = limiter
        self._swaig = swaig
        self._max_body = config.server.max_body_bytes

    def resource(self) -> IResource:
        return self.app.resource()

    def render_call(self, request: IRequest, name: str) -> object:
        """
        Serve ``POST /services/<name>/call`` (``name`` already decoded) as Klein would: the
        same handler and error handlers, the call cancelled when the client goes away.

        Only the routing is skipped: Klein binds and matches its URL map for every request
        (asking the socket for its own address, the transport whether it is TLS), about a
        tenth of a warm call's CPU, on the route that carries nearly all of the load.
        ``web.GatewayResource`` sends only plain paths here; anything else goes to Klein.
        """
        finished = False

        def on_finish(result: object) -> None:
            nonlocal finished
            finished = True

        notify = cast(Any, request).notifyFinish
        notify().addBoth(on_finish)
        d: Deferred[bytes | None] = Deferred.fromCoroutine(self.call(request, name))
        notify().addErrback(lambda _: d.cancel())

        def failed(failure: Failure) -> bytes | None:
            if finished:
                if not failure.check(CancelledError):
                    log.failure("after the client went away", failure)
                return None
            if failure.check(GatewayError):
                handler = self.gateway_error
            elif failure.check(HTTPException):
                handler = self.http_error
            else:
                handler = self.unexpected
            return cast(bytes, handler(request, failure))

        def write(body: bytes | None) -> None:
            if finished:
                return
            if body is not None:
                request.write(body)
            request.finish()

        def broken(failure: Failure) -> None:
            # An error handler (or the write) failed: a bare 500, as Klein would end it.
            log.failure("while answering {path}", failure, path=f"/services/{name}/call")
            if finished or getattr(request, "finished", False):
                return
            try:
                request.write(write_json(request, 500, {"error": "Internal server error"}))
                request.finish()
            except Exception:  # noqa: BLE001 - nothing more can be told to this client
                log.failure("while answering 500")

        d.addErrback(failed).addCallback(write).addErrback(broken)
        return NOT_DONE_YET

    # -- helpers -------------------------------------------------------------------------------

    async def _limit(self, request: IRequest, klass: str) -> None:
        """Apply the rate limit of ``klass``; the RateLimit-* headers on every answer."""
        if self._limiter is None:
            return
        decision = await self._limiter.check(klass, principal_of(request), client_ip_of(request))
        if decision is None:  # no limit for this class, or the store failed open
            return
        headers = decision.headers()
        for name, value in headers:
            request.setHeader(name, value)
        if not decision.allowed:
            security_event(
                "rate_limited",
                ip=client_ip_of(request),
                principal=principal_of(request),
                limit=decision.limit.text,
                path=request.path.decode("latin-1")[:256],
            )
            raise RateLimited(decision.limit.text, decision.retry_after_seconds)

    def _service(self, name: str) -> ServiceConfig:
        svc = self._services.get(name)
        if svc is None:
            raise UnknownService(name)
        return svc

    def _json_body(self, request: IRequest) -> dict[str, Any]:
        ctype = (request.getHeader(b"content-type") or b"").split(b";")[0].strip().lower()
        if ctype != b"application/json" and not ctype.endswith(b"+json"):
            raise UnsupportedMediaType("Content-Type must be application/json")
        raw = request.content.read(self._max_body + 1) if request.content else b""
        if len(raw) > self._max_body:
            raise PayloadTooLarge(f"Request body too large (limit {self._max_body} bytes)")
        try:
            body = parse_json(raw)
        except ValueError:
            raise BadRequest("Invalid JSON") from None
        if not isinstance(body, dict):
            raise BadRequest("Invalid JSON")
        return body

    @staticmethod
    def _session_id(body: dict[str, Any]) -> str:
        sid = body.get("session_id")
        if sid is None or sid == "":
            raise BadRequest("Missing 'session_id' parameter")
        if not valid_session_id(sid):
            raise BadRequest("Invalid session ID")
        assert isinstance(sid, str)
        return sid

    @staticmethod
    def _ttl_fields(body: dict[str, Any]) -> tuple[float | None, dict[str, Any]]:
        timeout = body.get("timeout")
        if timeout is not None and not (_is_number(timeout) and 0 < timeout <= 3600):
            raise BadRequest("Invalid 'timeout' parameter")
        metadata = body.get("metadata", {})
        if metadata is None:
            metadata = {}
        if not isinstance(metadata, dict):
            raise BadRequest("Invalid 'metadata' parameter")
        return (float(timeout) if timeout is not None else None), metadata

    # -- routes ---------------------------------------------------------------------------------

    @app.route("/health", methods=["GET"])
    def health(self, request: IRequest) -> bytes:
        return write_json(
            request,
            200,
            {
                "status": "healthy",
                "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(),
                "version": mcpgw.__version__,
                "sessions": len(self._sessions),
                "services": {name: self._catalog.state(name) for name in self._services},
            },
        )

    @app.route("/services", methods=["GET"])
    async def services(self, request: IRequest) -> bytes:
        await self._limit(request, "default")
        body = {
            name: {
                "description": svc.description,
                "enabled": True,
                "state": self._catalog.state(name),
                "tools": len(self._catalog.cached(name) or []),
                "sessions": self._sessions.count_for(name),
                "spares": self._sessions.ready_spares(name),
            }
            for name, svc in self._services.items()
        }
        return write_json(request, 200, body)

    @app.route("/services/<string:name>/tools", methods=["GET"])
    async def tools(self, request: IRequest, name: str) -> bytes:
        await self._limit(request, "tools")
        self._service(name)
        tools = await self._catalog.tools(name)
        return write_json(request, 200, {"service": name, "tools": tools})

    @app.route("/services/<string:name>/call", methods=["POST"])
    async def call(self, request: IRequest, name: str) -> bytes:
        await self._limit(request, "call")
        svc = self._service(name)
        body = self._json_body(request)
        tool = body.get("tool")
        if tool is None or tool == "":
            raise BadRequest("Missing 'tool' parameter")
        if body.get("session_id") in (None, ""):
            raise BadRequest("Missing 'session_id' parameter")
        arguments = body.get("arguments", {})
        if arguments is None:
            arguments = {}
        if not isinstance(arguments, dict):
            raise BadRequest("Invalid 'arguments' parameter")
        timeout, metadata = self._ttl_fields(body)
        call_timeout = body.get("call_timeout", svc.call_timeout)
        if not (_is_number(call_timeout) and call_timeout > 0):
            raise BadRequest("Invalid 'call_timeout' parameter")
        sid = self._session_id(body)
        if not valid_tool_name(tool):
            raise BadRequest("Invalid tool name")
        assert isinstance(tool, str)
        started = time.monotonic()
        status = 200
        try:
            outcome = await self._sessions.call(
                name,
                sid,
                tool,
                arguments,
                min(float(call_timeout), svc.call_timeout),
                timeout,
                metadata,
            )
        except GatewayError as e:
            status = e.status
            raise
        except BaseException:
            status = 499
            raise
        finally:
            security_event(
                "tool_call",
                service=name,
                tool=tool,
                session_id=sid,
                principal=principal_of(request),
                ip=client_ip_of(request),
                status=status,
                duration_ms=round((time.monotonic() - started) * 1000, 2),
            )
        result = outcome.result
        content = result.get("content")
        compat: Any = result
        if isinstance(content, list) and content:
            first = content[0]
            if isinstance(first, dict) and first.get("type") == "text":
                compat = first.get("text", result)
        return write_json(
            request,
            200,
            {
                "session_id": sid,
                "service": name,
                "tool": tool,
                "result": compat,
                "mcp_result": result,
                "is_error": bool(result.get("isError", False)),
                "session_restarted": outcome.restarted,
            },
        )

    @app.route("/sessions", methods=["POST"])
    async def open_session(self, request: IRequest) -> bytes:
        await self._limit(request, "call")
        body = self._json_body(request)
        name = body.get("service")
        if not isinstance(name, str) or not name:
            raise BadRequest("Missing 'service' parameter")
        self._service(name)
        sid = self._session_id(body)
        timeout, metadata = self._ttl_fields(body)
        session, created = await self._sessions.open(name, sid, timeout, metadata)
        answer = {
            "service": name,
            "session_id": sid,
            "timeout": session.timeout,
            "metadata": session.metadata,
            **session.describe(self._reactor.seconds()),
        }
        return write_json(request, 201 if created else 200, answer)

    @app.route("/sessions", methods=["GET"])
    async def list_sessions(self, request: IRequest) -> bytes:
        await self._limit(request, "default")
        wanted = request.args.get(b"service")
        service = wanted[0].decode("utf-8", "replace") if wanted else None
        return write_json(request, 200, self._sessions.snapshot(service))

    @app.route("/sessions/<string:session_id>", methods=["DELETE"])
    async def close_session(self, request: IRequest, session_id: str) -> bytes:
        await self._limit(request, "delete")
        if not valid_session_id(session_id) or not self._sessions.close_id(session_id):
            return write_json(request, 404, {"error": f"Session {session_id} not found"})
        return write_json(request, 200, {"message": f"Session {session_id} closed"})

    @app.route("/swaig/functions", methods=["GET"])
    async def swaig_functions(self, request: IRequest) -> bytes:
        await self._limit(request, "tools")
        if self._swaig is None:
            raise UnknownService("swaig")
        wanted = [v.decode("utf-8", "replace") for v in request.args.get(b"service", [])]
        body = await self._swaig.functions(wanted, base_url=self._swaig.request_base(request))
        return write_json(request, 200, body)

    @app.route("/swaig", methods=["POST"])
    async def swaig_webhook(self, request: IRequest) -> bytes:
        await self._limit(request, "call")
        if self._swaig is None:
            raise UnknownService("swaig")
        try:
            body = self._json_body(request)
        except (BadRequest, UnsupportedMediaType) as e:
            # SignalWire reads a sentence whatever happens: /swaig always answers 200.
            log.info("SWAIG request refused: {why}", why=e.message)
            return write_json(
                request, 200, {"response": "The function request was not valid JSON."}
            )
        answer = await self._swaig.webhook(
            body, principal=principal_of(request), ip=client_ip_of(request)
        )
        return write_json(request, 200, answer)

    # -- errors, in one place ----------------------------------------------------------------

    @app.handle_errors(GatewayError)
    def gateway_error(self, request: IRequest, failure: Failure) -> bytes:
        err = failure.value
        assert isinstance(err, GatewayError)
        headers: list[tuple[bytes, bytes]] = []
        retry = getattr(err, "retry_after", None)
        if err.status == 429 and retry is not None:
            headers.append((b"Retry-After", _retry_after(retry)))
        if err.status >= 500:
            log.warn(
                "{method} {path}: {status} {message}",
                method=request.method.decode("latin-1"),
                path=request.path.decode("latin-1")[:256],
                status=err.status,
                message=err.message,
            )
        return write_json(request, err.status, err.body(), headers)

    @app.handle_errors(HTTPException)
    def http_error(self, request: IRequest, failure: Failure) -> bytes:
        err = failure.value
        assert isinstance(err, HTTPException)
        code = err.code or 500
        headers: list[tuple[bytes, bytes]] = []
        if isinstance(err, MethodNotAllowed) and err.valid_methods:
            headers.append((b"Allow", ", ".join(sorted(err.valid_methods)).encode()))
        messages = {404: "Not found", 405: "Method not allowed"}
        return write_json(
            request, code, {"error": messages.get(code, err.name or "Error")}, headers
        )

    @app.handle_errors(Exception)
    def unexpected(self, request: IRequest, failure: Failure) -> bytes:
        log.failure(
            "unexpected error on {method} {path}",
            failure,
            method=request.method.decode("latin-1"),
            path=request.path.decode("latin-1")[:256],
        )
        return write_json(request, 500, {"error": "Internal server error"})
