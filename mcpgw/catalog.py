# -*- test-case-name: tests.test_catalog -*-
"""
The tools catalog: each service's ``tools/list``, probed once and served from memory.

Each service is probed (spawn, initialize, list every page, stop) once after the listener is
up, all services concurrently. ``GET /services/<name>/tools`` answers from the catalog. A
``tools/list_changed`` from any session of a service, or a request for a service whose probe
failed, starts one re-probe (single flight); a service whose probe still fails answers 503.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs
from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList
from twisted.python.failure import Failure

from mcpgw.config import ServiceConfig
from mcpgw.errors import ServiceUnavailable, UnknownService
from mcpgw.logs import Logger
from mcpgw.servers import RunningServer, ServerFactory

log = Logger()


@attrs.define
class _Entry:
    tools: list[dict[str, Any]] | None = None
    error: str | None = None
    # Waiters of the probe in progress, if any.
    waiters: list[Deferred[None]] | None = None
    # A list_changed arrived while probing: probe once more when this one ends.
    stale: bool = False


class ToolsCatalog(Service):
    """A ``Service`` so that shutdown stops the probes still running."""

    def __init__(self, services: Mapping[str, ServiceConfig], server_factory: ServerFactory):
        self._services = {n: s for n, s in services.items() if s.enabled}
        self._factory = server_factory
        self._entries: dict[str, _Entry] = {name: _Entry() for name in self._services}
        self._probes: set[RunningServer] = set()
        self._closed = False

    def stopService(self) -> Deferred[None]:
        super().stopService()  # type: ignore[no-untyped-call]
        self._closed = True
        stops = [server.stop() for server in list(self._probes)]
        d: Deferred[Any] = DeferredList(stops, consumeErrors=True)
        return d.addCallback(lambda _: None)

    def probe_all(self) -> Deferred[None]:
        """Probe every service concurrently; fires when all probes have ended."""
        ds = [self._probe(name) for name in self._services]
        d: Deferred[Any] = DeferredList(ds, consumeErrors=True)
        return d.addCallback(lambda _: None)

    def invalidate(self, name: str) -> None:
        """A session of ``name`` said its tools changed: re-probe (single flight)."""
        entry = self._entries.get(name)
        if entry is None:
            return
        if entry.waiters is not None:
            entry.stale = True
            return
        self._probe(name)

    def cached(self, name: str) -> list[dict[str, Any]] | None:
        entry = self._entries.get(name)
        return None if entry is None else entry.tools

    def state(self, name: str) -> str:
        entry = self._entries[name]
        if entry.tools is not None:
            return "ready"
        if entry.waiters is not None:
            return "probing"
        return "failed" if entry.error else "pending"

    async def tools(self, name: str) -> list[dict[str, Any]]:
        """The tools of ``name``; waits for a probe in progress, re-probes a failed one."""
        entry = self._entries.get(name)
        if entry is None:
            raise UnknownService(name)
        if entry.tools is not None:
            return entry.tools
        await self._probe(name)
        if entry.tools is not None:
            return entry.tools
        raise ServiceUnavailable(f"Service {name} is unavailable: {entry.error}")

    def _probe(self, name: str) -> Deferred[None]:
        entry = self._entries[name]
        waiter: Deferred[None] = Deferred()
        if entry.waiters is not None:
            entry.waiters.append(waiter)
            return waiter
        entry.waiters = [waiter]
        Deferred.fromCoroutine(self._run_probe(name, entry))
        return waiter

    async def _run_probe(self, name: str, entry: _Entry) -> None:
        svc = self._services[name]
        server = self._factory(svc)
        self._probes.add(server)
        try:
            if self._closed:
                raise ServiceUnavailable("the gateway is shutting down")
            await server.start()
            tools = await server.list_tools()
        except Exception as e:  # noqa: BLE001 - logged; one failure must not stop the rest
            entry.error = str(e) or e.__class__.__name__
            log.warn("tools probe of {service} failed: {why}", service=name, why=entry.error)
        else:
            entry.tools, entry.error = tools, None
            log.info("service {service}: {count} tools", service=name, count=len(tools))
        finally:
            try:
                await server.stop()
            except Exception:  # noqa: BLE001 - logged; one failure must not stop the rest
                log.failure("while stopping the probe of {service}", Failure(), service=name)
            self._probes.discard(server)
        waiters, entry.waiters = entry.waiters or [], None
        if entry.stale:
            # The tools changed during this probe: its waiters get the next one's answer.
            entry.stale = False
            self._probe(name)
            if entry.waiters is not None:
                entry.waiters.extend(waiters)
                return
        for w in waiters:
            w.callback(None)
