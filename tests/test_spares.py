"""
Tests for L{mcpgw.spares} and for sessions taking spares (L{mcpgw.sessions}), driven by a
Clock and fake servers.
"""

from __future__ import annotations

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
        self.make(a=1, b=2, off=0)

    def make(self, **spares: int) -> None:
        self.services = services(**spares)
        self.pool = SparePool(
            self.clock, self.services, self.factory, on_tools_changed=self.changed.append
        )

    def made(self, service: str = "a") -> list[FakeServer]:
        return [s for s in self.factory.servers if s.service.name == service]

    def test_start_fills_each_service(self) -> None:
        """Each enabled service gets its ``spares``, started; none where it is 0."""
        self.pool.start()
        self.assertEqual(len(self.made("a")), 1)
        self.assertEqual(len(self.made("b")), 2)
        self.assertEqual(self.made("off"), [])
        self.assertTrue(all(s.alive for s in self.factory.servers))
        self.assertEqual(len(self.pool.spares("b")), 2)

    def test_disabled_service_has_none(self) -> None:
        self.services["a"] = ServiceConfig(name="a", command=("x",), enabled=False)
        self.pool.start()
        self.assertEqual(self.made("a"), [])

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
        """A spare that fails to start is dropped; replacements wait 1, 2, 4 ... s."""
        self.factory.start_mode = "fail"
        self.make(a=1)
        self.pool.start()
        self.assertEqual(len(self.made()), 1)
        self.assertEqual(self.pool.spares("a"), [])
        delays = []
        for _ in range(12):
            made = len(self.made())
            self.assertIsNone(self.pool.take("a"))
            waited = 0.0
            while len(self.made()) == made:
                self.clock.advance(0.5)
                waited += 0.5
                self.pool.take("a")
            delays.append(waited)
        self.assertEqual(delays[:4], [1.0, 2.0, 4.0, 8.0])
        self.assertEqual(delays[-1], MAX_BACKOFF)

    def test_started_spare_resets_back_off(self) -> None:
        """After a spare starts, the next failure waits 1 s again."""
        self.factory.start_mode = "fail"
        self.make(a=1)
        self.pool.start()  # fails: 1 s
        self.clock.advance(1.0)
        self.factory.start_mode = "auto"
        self.assertIsNone(self.pool.take("a"))
        self.clock.advance(0)
        self.assertEqual(len(self.pool.spares("a")), 1)
        self.factory.start_mode = "fail"
        self.assertIsNotNone(self.pool.take("a"))
        self.clock.advance(REFILL_DELAY)  # the replacement fails: 1 s, not 2
        made = len(self.made())
        for wait in (0.5, 0.5):
            self.clock.advance(wait)
            self.pool.take("a")
            self.clock.advance(0)
        self.assertEqual(len(self.made()), made + 1)

    def test_idle_spare_dies(self) -> None:
        """A spare that exits while it waits is stopped and dropped, then replaced later."""
        self.make(a=1)
        self.pool.start()
        [server] = self.made()
        server.die()
        self.assertTrue(server.stopped)
        self.assertEqual(self.pool.spares("a"), [])
        self.assertIsNone(self.pool.take("a"))
        self.clock.advance(0)
        self.assertEqual(len(self.made()), 1)  # backing off
        self.clock.advance(1.0)
        self.assertIsNone(self.pool.take("a"))
        self.clock.advance(0)
        self.assertEqual(len(self.pool.spares("a")), 1)

    def test_dead_spare_not_handed_out(self) -> None:
        """A spare found dead when taken (its exit not yet told) is skipped and stopped."""
        self.make(a=1)
        self.pool.start()
        [server] = self.made()
        server.alive = False
        self.assertIsNone(self.pool.take("a"))
        self.assertTrue(server.stopped)

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
        self.assertFalse(server.stopped)  # its session stops it

    def test_stop(self) -> None:
        """Stop ends every untaken spare, ready or starting, and leaves no timer."""
        self.pool.start()
        taken = self.pool.take("b")
        assert taken is not None
        self.factory.start_mode = "manual"
        self.clock.advance(REFILL_DELAY)
        d = self.pool.stop()
        self.successResultOf(d)
        untaken = [s for s in self.factory.servers if s is not taken.server]
        self.assertEqual(len(untaken), 3)
        self.assertTrue(all(s.stopped for s in untaken))
        self.assertFalse(taken.server.stopped)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertIsNone(self.pool.take("a"))
        self.assertEqual(self.clock.getDelayedCalls(), [])


class SessionSpareTests(SynchronousTestCase):
    """Sessions take spares when the manager keeps them."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.factory = FakeFactory()
        self.manager = SessionManager(
            self.clock,
            services(a=1),
            SessionConfig(sandbox_dir="/nonexistent"),
            self.factory,
            spares=True,
        )
        self.manager.startService()
        self.addCleanup(self.manager.stopService)

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
        self.clock.advance(0)
        self.assertEqual(len(self.factory.servers), 1)
        self.clock.advance(REFILL_DELAY)
        self.assertEqual(len(self.factory.servers), 2)

    def test_spare_failing_fails_its_session(self) -> None:
        """A session waiting for a starting spare that fails gets C{StartupFailed}."""
        self.successResultOf(self.manager.stopService())
        self.factory = FakeFactory()
        self.factory.start_mode = "manual"
        self.manager = SessionManager(
            self.clock,
            services(a=1),
            SessionConfig(sandbox_dir="/nonexistent"),
            self.factory,
            spares=True,
        )
        self.manager.startService()
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
