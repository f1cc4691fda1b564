"""
Tests for L{mcpgw.spares} and for sessions taking spares (L{mcpgw.sessions}), driven by a
Clock and fake servers.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from mcpgw.config import ServiceConfig, SessionConfig
from mcpgw.errors import StartupFailed
from mcpgw.sessions import CallOutcome, SessionManager
from mcpgw.spares import MAX_BACKOFF, REFILL_DELAY, SparePool

from .fakes import FakeFactory, FakeServer


def services(**spares: int) -> dict[str, ServiceConfig]:
    return {
        name: ServiceConfig(name=name, command=("x",), spares=count)
        for name, count in spares.items()
    }


class SparePoolTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.factory = FakeFactory()
        self.changed: list[str] = []
        self.stopped: list[FakeServer] = []
        self.room = 100
        self.make(a=1, b=2, off=0)

    def make(self, max_age: float | None = None, **spares: int) -> None:
        self.services = services(**spares)
        self.pool = SparePool(
            self.clock,
            self.services,
            self.factory,
            stop=self.stop,
            room=lambda service: self.room,
            on_tools_changed=self.changed.append,
            max_age=max_age,
        )

    def stop(self, server: Any) -> None:
        self.stopped.append(server)
        server.stop()

    def made(self, service: str = "a") -> list[FakeServer]:
        return [s for s in self.factory.servers if s.service.name == service]

    def spawn_times(self, until: float) -> list[float]:
        """Advance the clock by 0.5 s steps to C{until}; when each spare of "a" was made."""
        times = []
        while self.clock.seconds() < until:
            made = len(self.made())
            self.clock.advance(0.5)
            if len(self.made()) > made:
                times.append(self.clock.seconds())
        return times

    def test_start_fills_each_service(self) -> None:
        """Each enabled service gets its ``spares``, started; none where it is 0."""
        self.pool.start()
        self.assertEqual(len(self.made("a")), 1)
        self.assertEqual(len(self.made("b")), 2)
        self.assertEqual(self.made("off"), [])
        self.assertTrue(all(s.alive for s in self.factory.servers))
        self.assertEqual(len(self.pool.spares("b")), 2)

    def test_ready_counts_started_spares(self) -> None:
        """C{ready} counts the spares started and alive, not those starting or dead."""
        self.factory.start_mode = "manual"
        self.pool.start()
        self.assertEqual(self.pool.ready("b"), 0)
        first, second = self.made("b")
        assert first.started is not None and second.started is not None
        first.started.callback(None)
        second.started.callback(None)
        self.assertEqual(self.pool.ready("b"), 2)
        second.alive = False  # its exit not told yet
        self.assertEqual(self.pool.ready("b"), 1)
        first.die()
        self.assertEqual(self.pool.ready("b"), 0)

    def test_disabled_service_has_none(self) -> None:
        self.services["a"] = ServiceConfig(name="a", command=("x",), enabled=False)
        self.pool.start()
        self.assertEqual(self.made("a"), [])

    def test_room_left_by_session_limits(self) -> None:
        """No more spares than the session limits leave room for."""
        self.room = 1
        self.pool.start()
        self.assertEqual(len(self.made("b")), 1)
        self.room = 0
        self.assertIsNotNone(self.pool.take("b"))
        self.clock.advance(REFILL_DELAY)
        self.assertEqual(len(self.made("b")), 1)

    def test_ready_spare_replaced_after_delay_or_its_call(self) -> None:
        """
        A ready spare is taken at once; its replacement starts C{REFILL_DELAY} s later, or on
        the next turn once C{refill_now} says its first call is done.
        """
        self.pool.start()
        [spare_server] = self.made()
        spare = self.pool.take("a")
        assert spare is not None
        self.assertIs(spare.server, spare_server)
        self.assertTrue(spare.taken)
        self.successResultOf(spare.started())
        self.assertEqual(self.pool.spares("a"), [])
        self.clock.advance(REFILL_DELAY / 2)
        self.assertEqual(len(self.made()), 1)
        self.clock.advance(REFILL_DELAY / 2)
        self.assertEqual(len(self.made()), 2)

        second = self.pool.take("a")
        assert second is not None
        self.pool.refill_now("a")
        self.assertEqual(len(self.made()), 2)
        self.clock.advance(0)
        self.assertEqual(len(self.made()), 3)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_starting_spare_taken_and_replaced_at_once(self) -> None:
        """A spare still starting is taken (its taker waits) and replaced on the next turn."""
        self.factory.start_mode = "manual"
        self.pool.start()
        spare = self.pool.take("a")
        assert spare is not None
        waiting = spare.started()
        self.assertNoResult(waiting)
        self.clock.advance(0)
        self.assertEqual(len(self.made()), 2)
        started = self.made()[0].started
        assert started is not None
        started.callback(None)
        self.successResultOf(waiting)

    def test_none_to_take(self) -> None:
        """No spare: None, and none is made for a service without spares."""
        self.assertIsNone(self.pool.take("a"))  # not started
        self.pool.start()
        self.assertIsNone(self.pool.take("off"))
        self.assertIsNone(self.pool.take("nope"))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_failed_starts_back_off(self) -> None:
        """A spare that fails to start is dropped; the next ones come 1, 2, 4 ... s later."""
        self.factory.start_mode = "fail"
        self.make(a=1)
        self.pool.start()
        self.assertEqual(len(self.made()), 1)
        self.assertEqual(self.pool.spares("a"), [])
        times = self.spawn_times(2000)
        gaps = [later - earlier for earlier, later in zip([0.0, *times], times, strict=False)]
        self.assertEqual(gaps[:5], [1.0, 2.0, 4.0, 8.0, 16.0])
        self.assertEqual(max(gaps), MAX_BACKOFF)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)

    def test_taking_a_ready_spare_resets_back_off(self) -> None:
        """
        A server that starts but dies while it waits backs off too; once a spare is taken
        ready, the next failure waits 1 s again.
        """
        self.make(a=1)
        self.pool.start()
        self.made()[-1].die()
        self.made()[-1].die()  # not yet replaced: a no-op
        self.clock.advance(1.0)
        self.made()[-1].die()  # replaced at 1 s, dies: next one at 3 s
        self.assertEqual(self.spawn_times(3.0), [3.0])
        self.assertIsNotNone(self.pool.take("a"))
        self.clock.advance(REFILL_DELAY)
        self.made()[-1].die()
        self.assertEqual(self.spawn_times(self.clock.seconds() + 2), [3.0 + REFILL_DELAY + 1])

    def test_idle_spare_dies(self) -> None:
        """A spare that exits while it waits is stopped and dropped, and replaced 1 s later."""
        self.make(a=1)
        self.pool.start()
        [server] = self.made()
        server.die()
        self.assertEqual(self.stopped, [server])
        self.assertEqual(self.pool.spares("a"), [])
        self.assertIsNone(self.pool.take("a"))
        self.clock.advance(0.5)
        self.assertEqual(len(self.made()), 1)
        self.clock.advance(0.5)
        self.assertEqual(len(self.pool.spares("a")), 1)

    def test_dead_spare_not_handed_out(self) -> None:
        """A spare found dead when taken (its exit not yet told) is skipped and stopped."""
        self.make(a=1)
        self.pool.start()
        [server] = self.made()
        server.alive = False
        self.assertIsNone(self.pool.take("a"))
        self.assertEqual(self.stopped, [server])

    def test_exit_while_starting(self) -> None:
        """A spare that exits during its start is not handed out; its failed start backs off."""
        self.factory.start_mode = "manual"
        self.make(a=1)
        self.pool.start()
        [server] = self.made()
        server.die()
        self.assertIsNone(self.pool.take("a"))
        assert server.started is not None
        server.started.errback(StartupFailed("exited with code 1"))
        self.assertEqual(self.spawn_times(1.0), [1.0])

    def test_old_spares_recycled(self) -> None:
        """A spare ready for C{max_age} s or more is replaced by a fresh one."""
        self.make(max_age=60, a=1)
        self.pool.start()
        [old] = self.made()
        self.clock.advance(59)
        self.pool.recycle()
        self.assertEqual(self.stopped, [])
        self.clock.advance(1)
        self.pool.recycle()
        self.assertEqual(self.stopped, [old])
        self.assertEqual([s.server for s in self.pool.spares("a")], [self.made()[-1]])
        self.assertTrue(self.made()[-1].alive)

    def test_events_follow_the_taker(self) -> None:
        """Before a take, tool changes go to the pool's callback; after, to the taker's."""
        self.make(a=1)
        self.pool.start()
        [server] = self.made()
        assert server.on_tools_changed is not None
        server.on_tools_changed()
        self.assertEqual(self.changed, ["a"])
        spare = self.pool.take("a")
        assert spare is not None
        exits: list[str] = []
        changes: list[None] = []
        spare.adopt(on_exit=exits.append, on_tools_changed=lambda: changes.append(None))
        server.on_tools_changed()
        server.die("killed by signal 9")
        self.assertEqual((self.changed, changes, exits), (["a"], [None], ["killed by signal 9"]))
        self.assertEqual(self.stopped, [])  # its session stops it

    def test_stop(self) -> None:
        """Stop ends every untaken spare, ready or starting, and leaves no timer."""
        self.pool.start()
        taken = self.pool.take("b")
        assert taken is not None
        self.factory.start_mode = "manual"
        self.clock.advance(REFILL_DELAY)
        self.pool.stop()
        untaken = [s for s in self.factory.servers if s is not taken.server]
        self.assertEqual(len(untaken), 3)
        self.assertEqual(sorted(map(id, self.stopped)), sorted(map(id, untaken)))
        self.assertTrue(all(s.stopped for s in untaken))
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertIsNone(self.pool.take("a"))
        self.assertEqual(self.clock.getDelayedCalls(), [])


class SessionSpareTests(SynchronousTestCase):
    """Sessions take spares when the manager keeps them."""

    manager: SessionManager

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.make_manager()
        self.addCleanup(lambda: self.manager.stopService())

    def make_manager(self, start_mode: str = "auto", **config: Any) -> None:
        """A started manager keeping spares (the previous one stopped)."""
        if hasattr(self, "manager"):
            self.successResultOf(self.manager.stopService())
        self.factory = FakeFactory()
        self.factory.start_mode = start_mode
        self.manager = SessionManager(
            self.clock,
            services(a=1),
            SessionConfig(sandbox_dir="/nonexistent", **config),
            self.factory,
            spares=True,
        )
        self.manager.startService()
        self.manager.start_spares()

    def call(self, sid: str = "s1") -> Deferred[CallOutcome]:
        return Deferred.fromCoroutine(self.manager.call("a", sid, "echo", {}, 25))

    def test_first_call_served_by_the_spare(self) -> None:
        """A new session's first call goes to the spare; the replacement follows the call."""
        [spare] = self.factory.servers
        outcome = self.successResultOf(self.call())
        self.assertTrue(outcome.created)
        self.assertEqual(len(spare.calls), 1)
        self.assertEqual(len(self.factory.servers), 1)
        self.clock.advance(0)
        self.assertEqual(len(self.factory.servers), 2)
        self.assertTrue(self.factory.servers[1].alive)

    def test_open_ahead_takes_the_spare(self) -> None:
        """``POST /sessions`` takes the spare too; its replacement waits C{REFILL_DELAY}."""
        [spare] = self.factory.servers
        session, _ = self.successResultOf(
            Deferred.fromCoroutine(self.manager.open("a", "ahead", None, None))
        )
        self.assertIs(session.server, spare)
        self.successResultOf(self.call("ahead"))  # its first call: no hurry to replace
        self.clock.advance(0)
        self.assertEqual(len(self.factory.servers), 1)
        self.clock.advance(REFILL_DELAY)
        self.assertEqual(len(self.factory.servers), 2)

    def test_one_session_allowed_one_process(self) -> None:
        """With room for one session, its spare is not replaced while it lives."""
        self.make_manager(max_sessions_per_service=1)
        self.successResultOf(self.call())
        self.clock.advance(REFILL_DELAY)
        self.assertEqual(len(self.factory.servers), 1)

    def test_reaper_recycles_old_spares(self) -> None:
        """The reaper replaces a spare ready for C{default_timeout} s."""
        self.make_manager(default_timeout=100, cleanup_interval=60)
        [old] = self.factory.servers
        self.clock.advance(60)
        self.assertFalse(old.stopped)
        self.clock.advance(60)
        self.assertTrue(old.stopped)
        self.assertEqual(len(self.factory.live()), 1)

    def test_spare_failing_fails_its_session(self) -> None:
        """A session waiting for a starting spare that fails gets C{StartupFailed}."""
        self.make_manager(start_mode="manual")
        d = self.call()
        self.assertNoResult(d)
        started = self.factory.servers[0].started
        assert started is not None
        started.errback(StartupFailed("did not initialize: exit code 1"))
        self.failureResultOf(d, StartupFailed)
        self.assertIsNone(self.manager.get("a", "s1"))

    def test_taken_spare_dies_then_restarts(self) -> None:
        """A spare's exit, once taken, is its session's: the next call restarts it."""
        [spare] = self.factory.servers
        self.successResultOf(self.call())
        spare.die()
        outcome = self.successResultOf(self.call())
        self.assertTrue(outcome.restarted)
        self.assertTrue(spare.stopped)

    def test_shutdown_stops_spares(self) -> None:
        self.successResultOf(self.call())
        self.clock.advance(0)
        self.successResultOf(self.manager.stopService())
        self.assertEqual(self.factory.live(), [])
        self.assertEqual(self.clock.getDelayedCalls(), [])
