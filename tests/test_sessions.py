"""
Tests for L{mcpgw.sessions}: the session lifecycle, driven by a Clock and fake servers.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from mcpgw.config import ServiceConfig, SessionConfig
from mcpgw.errors import (
    ChildFailed,
    ServiceUnavailable,
    SessionClosed,
    StartupFailed,
    TooManySessions,
    UnknownService,
)
from mcpgw.sessions import CallOutcome, SessionManager

from .fakes import FakeFactory


def services(*names: str, **kw: Any) -> dict[str, ServiceConfig]:
    return {n: ServiceConfig(name=n, command=("x",), **kw) for n in names}


class SessionManagerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.factory = FakeFactory()
        self.config = SessionConfig(
            default_timeout=300,
            max_sessions_per_service=3,
            max_total_sessions=4,
            cleanup_interval=60,
            sandbox_dir="/nonexistent",
        )
        self.manager = SessionManager(
            self.clock, services("a", "b", "c"), self.config, self.factory
        )

    def call(self, service: str = "a", sid: str = "s1", **kw: Any) -> Deferred[CallOutcome]:
        return Deferred.fromCoroutine(
            self.manager.call(service, sid, kw.pop("tool", "echo"), kw.pop("args", {}), 25, **kw)
        )

    def test_first_call_creates_then_reuses(self) -> None:
        """The first call of a session starts one server; later calls reuse it."""
        first = self.successResultOf(self.call())
        second = self.successResultOf(self.call())
        self.assertEqual(len(self.factory.servers), 1)
        self.assertTrue(first.created)
        self.assertFalse(second.created)
        self.assertEqual(len(self.factory.servers[0].calls), 2)
        self.assertFalse(second.restarted)

    def test_single_flight_creation(self) -> None:
        """Concurrent first calls of one new session share exactly one server."""
        self.factory.start_mode = "manual"
        calls = [self.call() for _ in range(5)]
        self.assertEqual(len(self.factory.servers), 1)
        for d in calls:
            self.assertNoResult(d)
        started = self.factory.servers[0].started
        assert started is not None
        started.callback(None)
        for d in calls:
            self.successResultOf(d)
        self.assertEqual(len(self.factory.servers[0].calls), 5)

    def test_same_id_several_services(self) -> None:
        """One session id may be used with several services, each with its own server."""
        self.successResultOf(self.call("a", "call-1"))
        self.successResultOf(self.call("b", "call-1"))
        self.assertEqual([s.service.name for s in self.factory.servers], ["a", "b"])
        snap = self.manager.snapshot()
        self.assertEqual(set(snap["call-1"]["services"]), {"a", "b"})
        self.assertEqual(snap["call-1"]["service_name"], "b")

    def test_unknown_service(self) -> None:
        """A call for an unknown service fails with UnknownService and starts nothing."""
        self.failureResultOf(self.call("nope"), UnknownService)
        self.assertEqual(self.factory.servers, [])

    def test_idle_ttl_reaped(self) -> None:
        """The reaper closes a session idle for longer than its timeout, stopping its child."""
        self.manager.startService()
        self.addCleanup(self.manager.stopService)
        self.successResultOf(self.call(timeout=90))
        self.clock.pump([60])
        self.assertEqual(len(self.manager), 1)
        self.clock.pump([60])
        self.assertEqual(len(self.manager), 0)
        self.assertTrue(self.factory.servers[0].stopped)

    def test_ttl_counts_from_end_of_last_call(self) -> None:
        """A long call does not eat the idle TTL: it counts from the call's end."""
        self.manager.startService()
        self.addCleanup(self.manager.stopService)
        self.factory.auto_answer = False
        d = self.call(timeout=100)
        self.clock.pump([60] * 5)  # 300 s with the call in flight: never reaped
        self.assertEqual(len(self.manager), 1)
        self.factory.servers[0].calls[0][3].callback({"content": []})
        self.successResultOf(d)
        self.clock.pump([60])
        self.assertEqual(len(self.manager), 1)
        self.clock.pump([60])
        self.assertEqual(len(self.manager), 0)

    def test_later_call_updates_timeout(self) -> None:
        """A later call's ``timeout`` becomes the session's idle TTL."""
        self.successResultOf(self.call(timeout=10))
        self.successResultOf(self.call(timeout=500))
        self.assertEqual(self.manager.snapshot()["s1"]["timeout"], 500)

    def test_limit_per_service(self) -> None:
        """Past max_sessions_per_service a new session is refused and no server is made."""
        for i in range(3):
            self.successResultOf(self.call("a", f"s{i}"))
        self.failureResultOf(self.call("a", "s9"), TooManySessions)
        self.assertEqual(len(self.factory.servers), 3)
        self.successResultOf(self.call("a", "s0"))  # existing ones still work

    def test_limit_total(self) -> None:
        """Past max_total_sessions a new session is refused whatever its service."""
        for i, svc in enumerate("aabb"):
            self.successResultOf(self.call(svc, f"s{i}"))
        self.failureResultOf(self.call("c", "s9"), TooManySessions)
        self.assertEqual(len(self.factory.servers), 4)

    def test_closed_sessions_do_not_count(self) -> None:
        """A closed session frees its place at once, while its child stops."""
        for i in range(3):
            self.successResultOf(self.call("a", f"s{i}"))
        self.assertEqual(self.manager.close_id("s0"), 1)
        self.successResultOf(self.call("a", "s9"))

    def test_child_death_restarts(self) -> None:
        """A dead child fails its call; the next call gets a new one, flagged restarted."""
        self.factory.auto_answer = False
        d = self.call()
        self.factory.servers[0].die("killed by signal 9")
        f = self.failureResultOf(d, ChildFailed)
        self.assertIn("signal 9", f.value.message)
        self.factory.auto_answer = True
        again = self.successResultOf(self.call())
        self.assertTrue(again.restarted)
        self.assertEqual(len(self.factory.servers), 2)
        self.assertEqual(self.manager.snapshot()["s1"]["restarts"], 1)
        self.assertFalse(self.successResultOf(self.call()).restarted)

    def test_idle_death_restarts(self) -> None:
        """A child that dies between calls is replaced on the next call, which says so."""
        self.successResultOf(self.call())
        self.factory.servers[0].die()
        self.assertTrue(self.successResultOf(self.call()).restarted)

    def test_close_while_call_waits(self) -> None:
        """Closing a session fails its waiting call with SessionClosed and cancels upstream."""
        self.factory.auto_answer = False
        d = self.call()
        self.assertEqual(self.manager.close_id("s1"), 1)
        self.failureResultOf(d, SessionClosed)
        server = self.factory.servers[0]
        self.assertEqual(server.cancelled, ["echo"])
        self.assertTrue(server.stopped)

    def test_close_while_starting(self) -> None:
        """
        Closing a session that is still starting fails its callers and stops the child at
        once (not when its start ends), so a closed session leaves no process behind.
        """
        self.factory.start_mode = "manual"
        d = self.call()
        self.manager.close_id("s1")
        self.failureResultOf(d, SessionClosed)
        server = self.factory.servers[0]
        self.assertTrue(server.stopped)
        assert server.started is not None
        server.started.callback(None)
        self.assertTrue(server.stopped)

    def test_shutdown_stops_starting_child(self) -> None:
        """Stopping the manager stops a child that is still starting."""
        self.factory.start_mode = "manual"
        self.manager.startService()
        d = self.call()
        self.successResultOf(self.manager.stopService())
        self.failureResultOf(d, SessionClosed)
        self.assertTrue(self.factory.servers[0].stopped)

    def test_no_new_session_after_stop(self) -> None:
        """After stopService (keep-alive connections outlive the listener) no session starts."""
        self.manager.startService()
        self.successResultOf(self.manager.stopService())
        self.failureResultOf(self.call("a", "late"), ServiceUnavailable)
        self.assertEqual(self.factory.servers, [])

    def test_broken_idle_child_replaced(self) -> None:
        """A child that broke between calls (no exit seen yet) is replaced on the next call."""
        self.successResultOf(self.call())
        self.factory.servers[0].alive = False
        outcome = self.successResultOf(self.call())
        self.assertTrue(outcome.restarted)
        self.assertEqual(len(self.factory.servers), 2)
        self.assertTrue(self.factory.servers[0].stopped)
        self.assertFalse(self.successResultOf(self.call()).restarted)

    def test_caller_cancel_cancels_upstream(self) -> None:
        """A caller that goes away (client disconnect) cancels the request upstream."""
        self.factory.auto_answer = False
        d = self.call()
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(self.factory.servers[0].cancelled, ["echo"])
        self.assertEqual(len(self.manager), 1)
        self.assertEqual(self.manager.snapshot()["s1"]["calls_in_flight"], 0)

    def test_startup_failure(self) -> None:
        """A server that fails to start fails the call and leaves no session behind."""
        self.factory.start_mode = "fail"
        self.failureResultOf(self.call(), StartupFailed)
        self.assertEqual(len(self.manager), 0)

    def test_close_id_every_service(self) -> None:
        """close_id closes the id's session of every service; 0 when there is none."""
        self.successResultOf(self.call("a", "x"))
        self.successResultOf(self.call("b", "x"))
        self.successResultOf(self.call("b", "y"))
        self.assertEqual(self.manager.close_id("x"), 2)
        self.assertEqual(list(self.manager.snapshot()), ["y"])
        self.assertEqual(self.manager.close_id("x"), 0)

    def test_snapshot_fields_and_filter(self) -> None:
        """The snapshot has the reference's fields and filters by service without effects."""
        self.successResultOf(self.call("a", "x", metadata={"k": "v"}, timeout=100))
        self.clock.advance(30)
        self.successResultOf(self.call("b", "y"))
        snap = self.manager.snapshot()
        entry = snap["x"]
        for key in (
            "service_name",
            "created_at",
            "last_accessed",
            "timeout",
            "time_remaining",
            "metadata",
            "services",
        ):
            self.assertIn(key, entry)
        self.assertEqual(entry["metadata"], {"k": "v"})
        self.assertEqual(entry["time_remaining"], 70)
        self.assertEqual(list(self.manager.snapshot("b")), ["y"])
        self.assertEqual(self.manager.snapshot(), snap)

    def test_stop_service_stops_all(self) -> None:
        """Stopping the manager closes every session and stops every child."""
        self.manager.startService()
        self.successResultOf(self.call("a", "x"))
        self.successResultOf(self.call("b", "y"))
        self.successResultOf(self.manager.stopService())
        self.assertTrue(all(s.stopped for s in self.factory.servers))
        self.assertEqual(len(self.manager), 0)

    def test_reaper_survives_errors(self) -> None:
        """An exception inside a reaper tick is logged and the loop keeps running."""
        self.manager.startService()
        self.addCleanup(self.manager.stopService)
        self.successResultOf(self.call(timeout=30))
        original = self.manager._close
        self.manager._close = lambda *a: (_ for _ in ()).throw(RuntimeError("boom"))  # type: ignore
        self.clock.pump([60])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.manager._close = original  # type: ignore[method-assign]
        self.clock.pump([60])
        self.assertEqual(len(self.manager), 0)

    def test_open_waits_for_start(self) -> None:
        """open() creates the session and fires once its server is ready; 2nd open finds it."""
        self.factory.start_mode = "manual"
        d = Deferred.fromCoroutine(self.manager.open("a", "x", 60, {"m": 1}))
        self.assertNoResult(d)
        started = self.factory.servers[0].started
        assert started is not None
        started.callback(None)
        session, created = self.successResultOf(d)
        self.assertTrue(created)
        self.assertEqual(session.timeout, 60)
        _, again = self.successResultOf(
            Deferred.fromCoroutine(self.manager.open("a", "x", None, None))
        )
        self.assertFalse(again)
        self.assertEqual(len(self.factory.servers), 1)
