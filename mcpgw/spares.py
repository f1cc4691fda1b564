# -*- test-case-name: tests.test_spares -*-
"""
Spare children: for each service, ``spares`` MCP servers (default 1) spawned and initialized
ahead of the sessions that will take them, so that a new session's first call does not wait
for a spawn (about 20 ms for a small Python server, seconds for an ``npx`` one).

- A new session takes a ready spare, else one still starting (it waits for the rest of that
  start), else starts its own child as before. A spare has served no one: it is what the
  session would have started, only earlier (same command, environment, limits, and a private
  directory of its own).
- Each take starts a replacement: when the spare was ready, once the taker's first call is
  answered (``refill_now``) or 0.1 s later, whichever comes first, so that the spawn (which
  blocks the reactor) and the new child (which takes a core) do not slow that first call;
  when it was still starting, at once (sessions come faster than spares start).
- Spares are not sessions, but they fit in the room the session limits leave: a service
  with no room for another session keeps no spare (``max_sessions_per_service`` 1 still
  means one process).
- A spare that fails to start, or dies while it waits, is replaced after 1 s, doubling up to
  5 min, until a spare is taken ready. Meanwhile sessions start their own children, and
  report their own failures.
- A spare ready for longer than ``max_age`` is replaced by a fresh one (``recycle``): what a
  server read at start (a token, a connection) may be stale by then.
- Once taken, a spare's exit and ``tools/list_changed`` go to its session; before, a change
  goes to ``on_tools_changed``. The gateway stops the spares when it stops.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

from mcpgw.config import ServiceConfig
from mcpgw.logs import Logger
from mcpgw.servers import RunningServer, ServerFactory

log = Logger()

FIRST_BACKOFF = 1.0
MAX_BACKOFF = 300.0
# Seconds between taking a ready spare and starting its replacement, at most.
REFILL_DELAY = 0.1


class Spare:
    """One spare child, and whom its events go to."""

    server: RunningServer

    def __init__(self, service: str, pool: SparePool) -> None:
        self.service = service
        self._pool = pool
        self.taken = False
        # Exited (before or after its start ended): never handed out.
        self.dead = False
        # None while starting; True once started; the Failure of a start that failed.
        self.outcome: bool | Failure | None = None
        self.ready_at = 0.0
        self._waiters: list[Deferred[None]] = []
        self._on_exit: Callable[[str], None] | None = None
        self._on_tools_changed: Callable[[], None] | None = None

    @property
    def gone(self) -> bool:
        """Exited, or started and no longer usable: never to be handed out."""
        return self.dead or (self.outcome is True and not self.server.alive)

    def adopt(self, on_exit: Callable[[str], None], on_tools_changed: Callable[[], None]) -> None:
        """From now on the taker hears of the child's exit and tool changes."""
        self._on_exit = on_exit
        self._on_tools_changed = on_tools_changed

    def started(self) -> Deferred[None]:
        """Fires once the spare is started (at once if it is), or fails as its start did."""
        if isinstance(self.outcome, Failure):
            return fail(self.outcome)
        if self.outcome:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._waiters.append(d)
        return d

    def settle(self, outcome: bool | Failure) -> None:
        self.outcome = outcome
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            if isinstance(outcome, Failure):
                d.errback(outcome)
            else:
                d.callback(None)

    def exited(self, description: str) -> None:
        if self._on_exit is not None:
            self._on_exit(description)
            return
        if self.dead:
            return
        self.dead = True
        if self.outcome is True:
            self._pool.lost(self)
        # Still starting: its start fails next, and the pool hears of that.

    def tools_changed(self) -> None:
        if self._on_tools_changed is not None:
            self._on_tools_changed()
        else:
            self._pool.tools_changed(self.service)


class SparePool:
    """The spares of every enabled service with ``spares`` above 0, once ``start`` is called."""

    def __init__(
        self,
        reactor: IReactorTime,
        services: Mapping[str, ServiceConfig],
        factory: ServerFactory,
        *,
        stop: Callable[[RunningServer], None],
        room: Callable[[str], int] | None = None,
        on_tools_changed: Callable[[str], None] | None = None,
        max_age: float | None = None,
    ) -> None:
        """
        @param stop: stops a server in the background (the owner waits for it at shutdown).
        @param room: how many more sessions of a service the limits allow now.
        """
        self._reactor = reactor
        self._services = services
        self._factory = factory
        self._stop = stop
        self._room = room
        self._on_tools_changed = on_tools_changed
        self._max_age = max_age
        self._spares: dict[str, list[Spare]] = {}
        self._backoff: dict[str, float] = {}
        self._not_before: dict[str, float] = {}
        self._refills: dict[str, IDelayedCall] = {}
        # Services whose pending refill follows the take of a ready spare (not a backoff).
        self._after_take: set[str] = set()
        self._running = False

    def spares(self, service: str) -> list[Spare]:
        """The spares of ``service`` not taken yet (ready or starting)."""
        return list(self._spares.get(service, ()))

    def ready(self, service: str) -> int:
        """How many spares of ``service`` are started and waiting."""
        return sum(
            1
            for spare in self._spares.get(service, ())
            if spare.outcome is True and not spare.gone
        )

    def start(self) -> None:
        self._running = True
        for name in self._services:
            self.fill(name)

    def fill(self, service: str) -> None:
        """Start spares until ``service`` has its ``spares`` (unless backing off)."""
        self._refills.pop(service, None)
        self._after_take.discard(service)
        svc = self._services.get(service)
        if not self._running or svc is None or not svc.enabled or svc.spares <= 0:
            return
        spares = self._spares.setdefault(service, [])
        wanted = svc.spares
        if self._room is not None:
            wanted = min(wanted, self._room(service))
        while (
            len(spares) < wanted
            and self._running
            and self._reactor.seconds() >= self._not_before.get(service, 0.0)
        ):
            spare = self._spawn(svc)
            if not isinstance(spare.outcome, Failure):  # a start can fail at once
                spares.append(spare)

    def take(self, service: str) -> Spare | None:
        """
        A spare of ``service`` for a new session (ready or starting), or None; either way
        the service's spares are made up again (``fill``, later).
        """
        spares = self._spares.get(service, [])
        taken = None
        while spares and taken is None:
            spare = spares.pop(0)
            if spare.gone:
                self._stop(spare.server)
                continue
            spare.taken = True
            taken = spare
        ready = taken is not None and taken.outcome is True
        if ready:
            self._backoff.pop(service, None)
        svc = self._services.get(service)
        if self._running and svc is not None and svc.spares > 0 and service not in self._refills:
            # A ready spare's first call goes ahead of its replacement's start (the spawn
            # blocks the reactor, the new child takes a core); one taken while starting
            # means sessions come faster than spares start: replace it at once.
            self._schedule(service, REFILL_DELAY if ready else 0)
            if ready:
                self._after_take.add(service)
        return taken

    def refill_now(self, service: str) -> None:
        """
        Start the replacement that waits for its delay on the reactor's next turn: its taker's
        call is done (and its answer is written in this turn).
        """
        call = self._refills.get(service)
        if service in self._after_take and call is not None and call.active():
            call.reset(0)

    def recycle(self) -> None:
        """Replace the spares that have been ready for longer than ``max_age``."""
        if self._max_age is None:
            return
        now = self._reactor.seconds()
        for service, spares in self._spares.items():
            old = [s for s in spares if s.outcome is True and now - s.ready_at >= self._max_age]
            for spare in old:
                spares.remove(spare)
                self._stop(spare.server)
            if old:
                self.fill(service)

    def stop(self) -> None:
        """Stop every spare not taken (through ``stop``) and every timer; make no more."""
        self._running = False
        for call in self._refills.values():
            if call.active():
                call.cancel()
        self._refills.clear()
        for spares in self._spares.values():
            for spare in spares:
                self._stop(spare.server)
        self._spares.clear()

    # -- what spares tell the pool ---------------------------------------------------------

    def lost(self, spare: Spare) -> None:
        """An untaken, started spare exited while it waited."""
        self._remove(spare)
        self._stop(spare.server)
        if self._running:
            delay = self._back_off(spare.service)
            log.warn(
                "a spare of {service} exited while waiting (next spare in {delay:g} s)",
                service=spare.service,
                delay=delay,
            )

    def tools_changed(self, service: str) -> None:
        if self._on_tools_changed is not None:
            self._on_tools_changed(service)

    # -- internals -----------------------------------------------------------------------------

    def _spawn(self, svc: ServiceConfig) -> Spare:
        spare = Spare(svc.name, self)
        spare.server = self._factory(
            svc, on_tools_changed=spare.tools_changed, on_exit=spare.exited
        )
        spare.server.start().addCallbacks(
            lambda _: self._started(spare), lambda f: self._failed(spare, f)
        )
        return spare

    def _started(self, spare: Spare) -> None:
        spare.ready_at = self._reactor.seconds()
        spare.settle(True)

    def _failed(self, spare: Spare, failure: Failure) -> None:
        if not spare.taken:
            self._remove(spare)
            # A start cut short by stop() is no failure of the service.
            if self._running:
                delay = self._back_off(spare.service)
                log.warn(
                    "a spare of {service} failed to start: {why} (next spare in {delay:g} s)",
                    service=spare.service,
                    why=failure.getErrorMessage(),
                    delay=delay,
                )
        spare.settle(failure)

    def _back_off(self, service: str) -> float:
        """Wait longer before the next spare, and schedule it."""
        delay = min(MAX_BACKOFF, self._backoff.get(service, FIRST_BACKOFF / 2) * 2)
        self._backoff[service] = delay
        self._not_before[service] = self._reactor.seconds() + delay
        call = self._refills.get(service)
        if call is not None and call.active():
            call.cancel()
        self._schedule(service, delay)
        return delay

    def _schedule(self, service: str, delay: float) -> None:
        self._after_take.discard(service)
        self._refills[service] = self._reactor.callLater(delay, self.fill, service)

    def _remove(self, spare: Spare) -> None:
        spares = self._spares.get(spare.service, [])
        if spare in spares:
            spares.remove(spare)
