# -*- test-case-name: tests.test_sessions -*-
"""
Sessions: one MCP server process per ``(service, session_id)``, created on first use.

- Creation is single flight: concurrent first calls of one session share one process.
- Calls on one session are multiplexed by the child's JSON-RPC ids (``RunningServer``).
- The idle TTL counts from the end of the last call; a session with a call in flight is never
  reaped. A ``LoopingCall`` on the injected clock reaps idle sessions.
- Closing answers at once: the session leaves the table (so it no longer counts against the
  limits), waiting calls fail with ``SessionClosed``, and the child stops in the background.
- A child that dies is replaced on the next call of its session, which says
  ``session_restarted``.
- A new session (or a restart) takes a spare child started ahead when there is one
  (``mcpgw.spares``).
"""

from __future__ import annotations

import datetime
import json
import re
from collections.abc import Iterator, Mapping
from typing import Any

import attrs
from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, DeferredList, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure

from mcpgw.config import ServiceConfig, SessionConfig
from mcpgw.errors import (
    ChildFailed,
    ServiceUnavailable,
    SessionClosed,
    StartupFailed,
    TooManySessions,
    UnknownService,
)
from mcpgw.logs import Logger
from mcpgw.servers import RunningServer, ServerFactory
from mcpgw.spares import SparePool

log = Logger()

_SESSION_ID = re.compile(r"[A-Za-z0-9_.-]{1,128}")


def valid_session_id(value: object) -> bool:
    """SPEC 4.1: ``^[A-Za-z0-9_.-]{1,128}$`` as a whole string, and not ``.`` or ``..``."""
    return (
        isinstance(value, str)
        and _SESSION_ID.fullmatch(value) is not None
        and value not in (".", "..")
    )


def iso(seconds: float) -> str:
    """An ISO-8601 UTC timestamp for a reactor time."""
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).isoformat()


@attrs.define(eq=False)
class Session:
    """The state of one ``(service, session_id)``."""

    service: str
    session_id: str
    created_at: float
    last_accessed: float
    timeout: float
    metadata: dict[str, Any]
    server: RunningServer | None = None
    # The server being started (so closing the session can stop it at once).
    starting_server: RunningServer | None = None
    # Callers waiting for the (single) start in progress.
    start_waiters: list[Deferred[RunningServer]] = attrs.Factory(list)
    starting: bool = False
    in_flight: int = 0
    # The calls in flight: the caller's Deferred -> the upstream request's Deferred.
    calls: dict[Deferred[Any], Deferred[Any]] = attrs.Factory(dict)
    closed: bool = False
    # The previous child died: the next call starts a new one and says so.
    restart_pending: bool = False
    restarts: int = 0
    # Orders sessions used at the same reactor time (most recently used wins).
    use_seq: int = 0
    # Its child was a ready spare: its replacement starts once this session's call is done.
    refill_after_call: bool = False

    def describe(self, now: float) -> dict[str, Any]:
        # The idle TTL counts from the end of the last call: with a call in flight it is whole.
        remaining = self.timeout if self.in_flight else self.last_accessed + self.timeout - now
        if self.server is not None:
            state = "running"
        else:
            state = "starting" if self.starting else "stopped"
        return {
            "service_name": self.service,
            "created_at": iso(self.created_at),
            "last_accessed": iso(self.last_accessed),
            "timeout": self.timeout,
            "time_remaining": max(0.0, round(remaining, 3)),
            "metadata": self.metadata,
            "state": state,
            "calls_in_flight": self.in_flight,
            "restarts": self.restarts,
        }


@attrs.frozen
class CallOutcome:
    result: dict[str, Any]
    restarted: bool
    created: bool


def _chain(source: Deferred[Any], outer: Deferred[Any]) -> None:
    """Fire ``outer`` with ``source``'s result unless ``outer`` has fired already."""

    def fire(result: object) -> None:
        if not outer.called:
            if isinstance(result, Failure):
                outer.errback(result)
            else:
                outer.callback(result)

    source.addBoth(fire)


class SessionManager(Service):
    """Owns every session; a ``Service`` so the reaper and the shutdown follow twistd."""

    def __init__(
        self,
        reactor: IReactorTime,
        services: Mapping[str, ServiceConfig],
        config: SessionConfig,
        server_factory: ServerFactory,
        *,
        spares: bool = False,
    ) -> None:
        """
        @param spares: keep each service's ``spares`` children started ahead of new sessions
            (``mcpgw.spares``), once ``start_spares`` is called.
        """
        self._reactor = reactor
        self._services = services
        self._config = config
        self._factory = server_factory
        self.spares = (
            SparePool(
                reactor,
                services,
                server_factory,
                stop=self._stop_in_background,
                room=self._room,
                on_tools_changed=self._tools_changed,
                max_age=config.default_timeout,
            )
            if spares
            else None
        )
        self._sessions: dict[tuple[str, str], Session] = {}
        self._use_seq = 0
        # Children being stopped, so shutdown can wait for them.
        self._stopping: set[Deferred[None]] = set()
        self._shutting_down = False
        self._reaper = LoopingCall(self.reap)
        self._reaper.clock = reactor
        self.on_tools_changed: Any = None  # set by the catalog: f(service_name)

    # -- queries -----------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._sessions)

    def __iter__(self) -> Iterator[Session]:
        return iter(list(self._sessions.values()))

    def get(self, service: str, session_id: str) -> Session | None:
        return self._sessions.get((service, session_id))

    def count_for(self, service: str) -> int:
        return sum(1 for (svc, _) in self._sessions if svc == service)

    def ready_spares(self, service: str) -> int:
        """How many spare children of ``service`` are started and waiting for a session."""
        return self.spares.ready(service) if self.spares is not None else 0

    def snapshot(self, service: str | None = None) -> dict[str, Any]:
        """``GET /sessions``: keyed by session id, the most recently used service first."""
        now = self._reactor.seconds()
        by_id: dict[str, list[Session]] = {}
        for session in self._sessions.values():
            if service is None or session.service == service:
                by_id.setdefault(session.session_id, []).append(session)
        result: dict[str, Any] = {}
        for sid, sessions in by_id.items():
            sessions.sort(key=lambda s: (s.last_accessed, s.use_seq), reverse=True)
            entry = sessions[0].describe(now)
            entry["services"] = {s.service: s.describe(now) for s in sessions}
            result[sid] = entry
        return result

    # -- lifecycle ---------------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        self._reaper.start(self._config.cleanup_interval, now=False)

    def start_spares(self) -> None:
        """Start keeping spare children (after the tools probes, so as not to double them)."""
        if self.spares is not None and self.running and not self._shutting_down:
            self.spares.start()

    def _room(self, service: str) -> int:
        """How many more sessions of ``service`` the limits allow now."""
        return min(
            self._config.max_sessions_per_service - self.count_for(service),
            self._config.max_total_sessions - len(self._sessions),
        )

    def _tools_changed(self, service: str) -> None:
        if self.on_tools_changed is not None:
            self.on_tools_changed(service)

    def stopService(self) -> Deferred[None]:
        super().stopService()  # type: ignore[no-untyped-call]
        # Keep-alive connections outlive the listener: refuse new work from now on.
        self._shutting_down = True
        if self._reaper.running:
            self._reaper.stop()
        for session in list(self._sessions.values()):
            self._close(session, "shutdown")
        if self.spares is not None:
            self.spares.stop()
        return self.wait_stopped()

    def wait_stopped(self) -> Deferred[None]:
        """Fires once every child being stopped has ended."""
        if not self._stopping:
            return succeed(None)
        d: Deferred[Any] = DeferredList(list(self._stopping), consumeErrors=True)
        return d.addCallback(lambda _: None)

    def reap(self) -> None:
        """Close sessions idle for longer than their timeout; never one with a call in flight."""
        try:
            now = self._reactor.seconds()
            for session in list(self._sessions.values()):
                if session.in_flight or session.starting:
                    continue
                if now - session.last_accessed >= session.timeout:
                    self._close(session, "expired")
            if self.spares is not None:
                self.spares.recycle()
        except Exception:  # noqa: BLE001 - logged; one failure must not stop the rest
            log.failure("while reaping sessions")

    # -- opening and calling -----------------------------------------------------------------

    def _service(self, name: str) -> ServiceConfig:
        svc = self._services.get(name)
        if svc is None or not svc.enabled:
            raise UnknownService(name)
        return svc

    def _get_or_create(
        self, service: str, session_id: str, timeout: float | None, metadata: dict[str, Any] | None
    ) -> tuple[Session, bool]:
        self._service(service)
        if self._shutting_down:
            raise ServiceUnavailable("The gateway is shutting down")
        key = (service, session_id)
        session = self._sessions.get(key)
        if session is not None:
            if timeout is not None:
                session.timeout = timeout
            if metadata:
                session.metadata = metadata
            return session, False
        if self.count_for(service) >= self._config.max_sessions_per_service:
            raise TooManySessions(
                f"Too many sessions for service {service} "
                f"(limit {self._config.max_sessions_per_service})"
            )
        if len(self._sessions) >= self._config.max_total_sessions:
            raise TooManySessions(f"Too many sessions (limit {self._config.max_total_sessions})")
        now = self._reactor.seconds()
        session = Session(
            service=service,
            session_id=session_id,
            created_at=now,
            last_accessed=now,
            timeout=timeout if timeout is not None else self._config.default_timeout,
            metadata=metadata or {},
        )
        self._sessions[key] = session
        return session, True

    async def open(
        self, service: str, session_id: str, timeout: float | None, metadata: dict[str, Any] | None
    ) -> tuple[Session, bool]:
        """``POST /sessions``: create the session and wait until its server is ready."""
        session, created = self._get_or_create(service, session_id, timeout, metadata)
        session.in_flight += 1
        try:
            await self._ensure_started(session)
        finally:
            self._end_use(session)
        # Its first call may come at once: the spare's replacement waits its delay instead.
        session.refill_after_call = False
        return session, created

    async def call(
        self,
        service: str,
        session_id: str,
        tool: str,
        arguments: dict[str, Any],
        call_timeout: float,
        timeout: float | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> CallOutcome:
        """Call a tool in a session, creating or restarting its server as needed."""
        session, created = self._get_or_create(service, session_id, timeout, metadata)
        session.in_flight += 1
        try:
            current = session.server
            restarted = session.restart_pending or (current is not None and not current.alive)
            server = await self._ensure_started(session)
            if restarted:
                session.restart_pending = False
            pending = server.call_tool(tool, arguments, call_timeout)
            outer: Deferred[dict[str, Any]] = Deferred(lambda _: pending.cancel())
            _chain(pending, outer)
            session.calls[outer] = pending
            try:
                result = await outer
            except ChildFailed:
                self._child_lost(session, server)
                raise
            finally:
                session.calls.pop(outer, None)
            return CallOutcome(result=result, restarted=restarted, created=created)
        finally:
            self._end_use(session)
            if session.refill_after_call and not session.in_flight and self.spares is not None:
                session.refill_after_call = False
                self.spares.refill_now(session.service)

    def _end_use(self, session: Session) -> None:
        session.in_flight -= 1
        session.last_accessed = self._reactor.seconds()
        self._use_seq += 1
        session.use_seq = self._use_seq

    async def _ensure_started(self, session: Session) -> RunningServer:
        if session.closed:
            raise SessionClosed(session.session_id)
        server = session.server
        if server is not None:
            if server.alive:
                return server
            # It broke between calls (e.g. an over-long line): replace it now.
            self._child_lost(session, server)
        waiter: Deferred[RunningServer] = Deferred(
            lambda d: session.start_waiters.remove(d) if d in session.start_waiters else None
        )
        session.start_waiters.append(waiter)
        if not session.starting:
            session.starting = True
            Deferred.fromCoroutine(self._start(session))
        return await waiter

    async def _start(self, session: Session) -> None:
        svc = self._service(session.service)
        server: RunningServer | None = None

        def exited(description: str) -> None:
            if server is not None:
                self._child_lost(session, server)

        def tools_changed() -> None:
            self._tools_changed(session.service)

        outcome: RunningServer | Failure
        try:
            spare = self.spares.take(svc.name) if self.spares is not None else None
            if spare is not None:
                server = spare.server
                spare.adopt(on_exit=exited, on_tools_changed=tools_changed)
                session.starting_server = server
                session.refill_after_call = spare.outcome is True
                await spare.started()
            else:
                server = self._factory(svc, on_tools_changed=tools_changed, on_exit=exited)
                session.starting_server = server
                await server.start()
            outcome = server
        except Exception as e:  # noqa: BLE001 - logged; one failure must not stop the rest
            outcome = Failure(e if isinstance(e, StartupFailed) else StartupFailed(str(e)))
        session.starting = False
        session.starting_server = None
        waiters, session.start_waiters = session.start_waiters, []
        if isinstance(outcome, Failure):
            log.warn(
                "session {session_id} of {service} failed to start: {why}",
                session_id=session.session_id,
                service=session.service,
                why=outcome.getErrorMessage(),
            )
            if (
                not session.restart_pending
                and self._sessions.get((session.service, session.session_id)) is session
            ):
                del self._sessions[(session.service, session.session_id)]
            for w in waiters:
                w.errback(outcome)
            return
        if session.closed:
            self._stop_in_background(outcome)
            for w in waiters:
                w.errback(SessionClosed(session.session_id))
            return
        session.server = outcome
        for w in waiters:
            w.callback(outcome)

    def _child_lost(self, session: Session, server: RunningServer) -> None:
        """The child of ``session`` died: the next call starts a new one."""
        if session.server is server:
            session.server = None
            session.restart_pending = True
            session.restarts += 1
            self._stop_in_background(server)

    # -- closing -------------------------------------------------------------------------------

    def close_id(self, session_id: str, reason: str = "closed") -> int:
        """Close every service's session of ``session_id``; how many there were."""
        found = [s for s in self._sessions.values() if s.session_id == session_id]
        for session in found:
            self._close(session, reason)
        return len(found)

    def _close(self, session: Session, reason: str) -> None:
        if session.closed:
            return
        session.closed = True
        self._sessions.pop((session.service, session.session_id), None)
        log.info(
            "{security}",
            security=json.dumps(
                {
                    "event": "session_closed",
                    "service": session.service,
                    "session_id": session.session_id,
                    "reason": reason,
                }
            ),
        )
        for outer, pending in list(session.calls.items()):
            if not outer.called:
                outer.errback(SessionClosed(session.session_id))
            pending.cancel()  # tells the server (notifications/cancelled)
        waiters, session.start_waiters = session.start_waiters, []
        for w in waiters:
            w.errback(SessionClosed(session.session_id))
        if session.starting_server is not None:
            # Stop a child still starting now, not when its startup_timeout runs out.
            self._stop_in_background(session.starting_server)
        if session.server is not None:
            server, session.server = session.server, None
            self._stop_in_background(server)

    def _stop_in_background(self, server: RunningServer) -> None:
        d = server.stop()
        self._stopping.add(d)

        def done(result: object) -> None:
            self._stopping.discard(d)
            if isinstance(result, Failure) and not result.check(CancelledError):
                log.failure("while stopping a server", result)

        d.addBoth(done)
