# -*- test-case-name: tests.test_swaig_routes -*-
"""
SWAIG on top of the catalog and the sessions: what ``/swaig/functions`` and ``POST /swaig``
do. The translation itself (names, schemas, webhook bodies, result text) is ``mcpgw.swaig``.

``/swaig`` always answers 200 with ``{"response": <text>}``: a SignalWire AI agent reads the
text; failures become sentences it can use, and a log line.  Every webhook that names a tool
logs a ``tool_call`` security event (SPEC 10) like ``POST /services/<name>/call`` does, with
the HTTP status that route would have answered (200, 502, 504, ...) and ``"via": "swaig"``.

The base of ``web_hook_url`` (SPEC 9 leaves the derived value open), first that applies:

1. ``server.public_url`` when configured: the operator's word, never overridden by a request;
2. otherwise the URL the client used to reach us: ``http``/``https`` as the connection is, and
   the request's ``Host`` header (L{SwaigBridge.request_base}).  The listener's own address is
   often a wildcard (the default host is ``0.0.0.0``) or a container-internal one, which
   SignalWire cannot call back, whereas whoever fetches ``/swaig/functions`` reached the
   gateway through the name in ``Host``.  The header is the client's to choose, but only an
   authenticated client sees the answer (``Cache-Control: no-store``) and it learns nothing it
   could not already use, so this is safe; it is only accepted when it is a plain
   ``host[:port]`` (a name, an IPv4 address or a bracketed IPv6 address).  Behind a reverse
   proxy that rewrites ``Host``, set ``server.public_url`` (``X-Forwarded-Host`` is ignored);
3. otherwise (no usable ``Host``: HTTP/1.0 clients) the listener's own URL, ``default_base``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, gatherResults
from twisted.web.iweb import IRequest

from mcpgw import swaig
from mcpgw.catalog import ToolsCatalog
from mcpgw.config import Config
from mcpgw.errors import GatewayError
from mcpgw.logs import Logger
from mcpgw.sessions import SessionManager
from mcpgw.web import security_event

log = Logger()

# ``host[:port]``: a DNS name or IPv4 address, or a bracketed IPv6 address.
_HOST_HEADER = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?|\[[0-9A-Fa-f:.]{2,45}\])(?::[0-9]{1,5})?"
)


class SwaigBridge:
    def __init__(self, config: Config, catalog: ToolsCatalog, sessions: SessionManager) -> None:
        self._config = config
        self._catalog = catalog
        self._sessions = sessions
        # The listener's own URL, the last resort when server.public_url is not configured.
        self.default_base = ""
        # The last function table and the catalog lists it was built from.
        self._built: tuple[dict[str, list[dict[str, Any]]], dict[str, tuple[str, str]]] | None
        self._built = None

    def _function_table(
        self, catalog: dict[str, list[dict[str, Any]]]
    ) -> dict[str, tuple[str, str]]:
        """
        ``swaig.build_function_table``, rebuilt only when the catalog changed: the lists are
        the catalog's own until a re-probe replaces them (~0.2 ms saved per webhook at 100
        tools).
        """
        built = self._built
        if built is not None and built[0].keys() == catalog.keys():
            if all(built[0][name] is tools for name, tools in catalog.items()):
                return built[1]
        table = swaig.build_function_table(catalog)
        self._built = (catalog, table)
        return table

    def base_url(self) -> str:
        return self._config.server.public_url or self.default_base

    def request_base(self, request: IRequest) -> str | None:
        """
        The base URL ``request`` reached us through (scheme and ``Host`` header), or None when
        ``server.public_url`` is configured (it wins) or the header is missing or malformed.
        """
        if self._config.server.public_url:
            return None
        raw = request.getHeader(b"host")
        if raw is None:
            return None
        host = raw.decode("latin-1").strip()
        if not _HOST_HEADER.fullmatch(host):
            return None
        scheme = "https" if request.isSecure() else "http"
        return f"{scheme}://{host.lower()}"

    async def _tools(self, names: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
        """
        The tools of each of ``names`` (concurrently: a failed service is re-probed, and
        several re-probes must not add up); services that cannot list them are left out.
        """

        async def one(name: str) -> list[dict[str, Any]] | None:
            try:
                return await self._catalog.tools(name)
            except GatewayError as e:
                log.warn("SWAIG: skipping {service}: {why}", service=name, why=e.message)
                return None

        found = await gatherResults([Deferred.fromCoroutine(one(name)) for name in names])
        return {name: tools for name, tools in zip(names, found, strict=True) if tools is not None}

    async def _table(self, function: str) -> dict[str, tuple[str, str]]:
        """
        The function table for a webhook naming ``function``.  A caller is waiting: services
        whose last probe failed are not re-probed (that can take their whole startup
        timeout) unless ``function`` is found nowhere else.  Probes in progress are awaited.
        """
        names = list(self._config.enabled_services)
        usable = [n for n in names if self._catalog.state(n) != "failed"]
        table = self._function_table(await self._tools(usable))
        if function in table or len(usable) == len(names):
            return table
        return self._function_table(await self._tools(names))

    async def functions(
        self, wanted: Sequence[str], base_url: str | None = None
    ) -> dict[str, Any]:
        """
        ``GET /swaig/functions``: the definitions of the tools of the ``wanted`` services
        (every enabled one when empty), then the hangup hook.

        @param base_url: the base the request came through (L{request_base}); used when
            ``server.public_url`` is not configured.
        """
        # Names come from the whole catalog, so a filtered listing uses the same names that
        # ``POST /swaig`` resolves.
        catalog = await self._tools(list(self._config.enabled_services))
        base = self._config.server.public_url or base_url or self.default_base
        url = swaig.webhook_url(
            base, self._config.swaig.auth_user, self._config.swaig.auth_password
        )
        chosen = [s for s in catalog if s in wanted] if wanted else None
        return {"functions": swaig.build_functions(catalog, url, services=chosen)}

    async def webhook(self, body: Any, principal: str = "-", ip: str = "") -> dict[str, Any]:
        try:
            call = swaig.parse_webhook(body)
        except swaig.SwaigRefusal as refusal:
            log.info("SWAIG request refused: {why}", why=refusal.sentence)
            return {"response": refusal.sentence}
        if call.is_hangup:
            closed = self._sessions.close_id(call.session_id, "hangup")
            return {"response": f"Closed {closed} session(s) of this call."}
        table = await self._table(call.function)
        try:
            service, tool = swaig.resolve_function(table, call.function)
        except swaig.SwaigRefusal as refusal:
            log.info("SWAIG: unknown function {function}", function=call.function)
            return {"response": refusal.sentence}
        svc = self._config.enabled_services[service]
        started = time.monotonic()
        status = 200
        try:
            outcome = await self._sessions.call(
                service, call.session_id, tool, call.arguments, svc.call_timeout
            )
        except CancelledError:  # the client went away: cancel upstream, answer nothing
            status = 499
            raise
        except Exception as e:  # noqa: BLE001 - logged; one failure must not stop the rest
            status = e.status if isinstance(e, GatewayError) else 500
            log.info(
                "SWAIG: {service}.{tool} failed: {why}", service=service, tool=tool, why=str(e)
            )
            return {"response": swaig.describe_failure(e, tool)}
        finally:
            security_event(
                "tool_call",
                service=service,
                tool=tool,
                session_id=call.session_id,
                principal=principal,
                ip=ip,
                status=status,
                duration_ms=round((time.monotonic() - started) * 1000, 2),
                via="swaig",
            )
        return {"response": swaig.render_result(outcome.result, tool)}
