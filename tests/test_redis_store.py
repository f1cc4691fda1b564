"""
Tests for L{mcpgw.redis_store}: URI parsing, and the store against a real redis-server that
the tests start as a child process on a free loopback port.
"""

from __future__ import annotations

import itertools
import os
import signal
import socket
from typing import Any

from twisted.internet import protocol
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.task import Clock, deferLater
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase
from zope.interface import implementer

from mcpgw.config import RateLimitConfig
from mcpgw.ratelimit import Decision, RateLimiter, bucket_key, parse_limits
from mcpgw.redis_store import RedisStore, RedisTarget, parse_redis_uri

REDIS_SERVER = "/usr/bin/redis-server"


class ParseRedisUriTests(SynchronousTestCase):
    """L{parse_redis_uri}."""

    def test_error_never_shows_password(self) -> None:
        """A URI urllib cannot read does not echo any part of an unencoded password."""
        with self.assertRaises(ValueError) as caught:
            parse_redis_uri("redis://:qxq/zzz@host:6379")
        self.assertNotIn("qxq", str(caught.exception))
        self.assertNotIn("zzz", str(caught.exception))

    def test_defaults(self) -> None:
        """A bare redis:// means localhost:6379, no database, no credentials, no TLS."""
        self.assertEqual(parse_redis_uri("redis://"), RedisTarget())
        self.assertEqual(
            parse_redis_uri("redis://127.0.0.1:6380"), RedisTarget(host="127.0.0.1", port=6380)
        )

    def test_credentials_and_db(self) -> None:
        """User and password are percent-decoded; the path is the database number."""
        self.assertEqual(
            parse_redis_uri("redis://alice:p%40ss%3A1@127.0.0.1:7000/3"),
            RedisTarget(host="127.0.0.1", port=7000, db=3, username="alice", password="p@ss:1"),
        )
        self.assertEqual(
            parse_redis_uri("redis://:secret@h/0"), RedisTarget(host="h", db=0, password="secret")
        )

    def test_password_only_userinfo(self) -> None:
        """A userinfo without a colon is the password (the legacy AUTH form)."""
        self.assertEqual(
            parse_redis_uri("redis://secret@h"), RedisTarget(host="h", password="secret")
        )

    def test_tls(self) -> None:
        """rediss:// asks for TLS."""
        self.assertTrue(parse_redis_uri("rediss://h:6390").tls)

    def test_errors_hide_password(self) -> None:
        """An error message never shows the password."""
        with self.assertRaises(ValueError) as caught:
            parse_redis_uri("redis://u:hunter2@h/notanumber")
        self.assertNotIn("hunter2", str(caught.exception))
        self.assertIn("must be a number", str(caught.exception))

    def test_password_not_in_repr(self) -> None:
        """The target's repr leaves out the password."""
        self.assertNotIn("hunter2", repr(parse_redis_uri("redis://:hunter2@h")))


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


class RedisProcess(protocol.ProcessProtocol):
    """A redis-server child; ``ready`` fires once it accepts connections."""

    def __init__(self) -> None:
        self.ready: Deferred[None] = Deferred()
        self.ended: Deferred[None] = Deferred()
        self.output = b""

    def outReceived(self, data: bytes) -> None:
        self.output = (self.output + data)[-65536:]
        if not self.ready.called and b"Ready to accept connections" in self.output:
            self.ready.callback(None)

    def processEnded(self, reason: Any) -> None:
        if not self.ready.called:
            self.ready.errback(RuntimeError(f"redis-server exited: {self.output[-2000:]!r}"))
        self.ended.callback(None)


class RedisTestsMixin:
    """Start, kill and restart redis-server children, cleaned up after each test."""

    port: int

    async def start_redis(self, *extra: str) -> RedisProcess:
        from twisted.internet import reactor

        if not os.path.exists(REDIS_SERVER):
            raise SkipTest("redis-server is not installed")
        proc = RedisProcess()
        args = [
            REDIS_SERVER,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            *extra,
        ]
        transport = reactor.spawnProcess(proc, REDIS_SERVER, args, env=None)

        def cleanup() -> Deferred[None] | None:
            if proc.ended.called:
                return None
            transport.signalProcess("KILL")
            return proc.ended

        self.addCleanup(cleanup)  # type: ignore[attr-defined]
        proc.transport = transport
        ready = proc.ready
        ready.addTimeout(20, reactor)
        await ready
        return proc

    async def kill_redis(self, proc: RedisProcess) -> None:
        assert proc.transport is not None
        proc.transport.signalProcess("KILL")
        await proc.ended

    def make_store(self, uri: str | None = None, **kw: Any) -> RedisStore:
        from twisted.internet import reactor

        store = RedisStore(reactor, uri or f"redis://127.0.0.1:{self.port}", **kw)
        store.start()
        self.addCleanup(store.stop)  # type: ignore[attr-defined]
        return store

    async def until(self, predicate: Any, what: str) -> None:
        """Poll ``predicate`` every 50 ms, at most 400 times."""
        from twisted.internet import reactor

        for _ in range(400):
            if predicate():
                return
            await deferLater(reactor, 0.05, lambda: None)
        raise AssertionError("timed out waiting until " + what)

    def observe(self) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)  # type: ignore
        return events

    def listen_fake(self, answer: bytes) -> list[protocol.Protocol]:
        """
        Listen on a free loopback port (``self.port``) with a fake server that sends
        ``answer`` once, on its first data (a PING), then never answers again; closed on
        cleanup. Returns the server-side connections.
        """
        from twisted.internet import reactor

        connections: list[protocol.Protocol] = []
        lost: list[Deferred[None]] = []

        class Fake(protocol.Protocol):
            answered = False

            def connectionMade(self) -> None:
                connections.append(self)
                self.lost: Deferred[None] = Deferred()
                lost.append(self.lost)

            def dataReceived(self, data: bytes) -> None:
                if answer and not self.answered:
                    self.answered = True
                    self.transport.write(answer)  # type: ignore[union-attr]

            def connectionLost(self, reason: Any = None) -> None:
                self.lost.callback(None)

        listening = reactor.listenTCP(0, protocol.Factory.forProtocol(Fake), interface="127.0.0.1")

        async def close() -> None:
            await listening.stopListening()
            for connection in connections:
                assert connection.transport is not None
                connection.transport.loseConnection()
            for d in lost:
                await d

        self.addCleanup(lambda: Deferred.fromCoroutine(close()))  # type: ignore[attr-defined]
        self.port = listening.getHost().port
        return connections


def warnings_of(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        e
        for e in events
        if e.get("log_level") == LogLevel.warn and "unreachable" in e.get("log_format", "")
    ]


def recoveries_of(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        e
        for e in events
        if e.get("log_level") == LogLevel.info and "answers again" in e.get("log_format", "")
    ]


class RedisStoreTests(RedisTestsMixin, TestCase):
    """L{RedisStore} against a real redis-server."""

    timeout = 60

    def setUp(self) -> None:
        self.port = free_port()

    async def test_shared_limit(self) -> None:
        """Two stores sharing one Redis enforce a single limit together."""
        await self.start_redis()
        one, two = self.make_store(), self.make_store()
        await self.until(lambda: one.connected and two.connected, "both are connected")
        limits = parse_limits("3 per minute")
        key = bucket_key("call", "alice", "127.0.0.1")
        results: list[Decision | None] = []
        for store in (one, two, one, two, one):
            results.append(await store.hit(key, limits))
        self.assertEqual(
            [r.allowed if r else None for r in results], [True, True, True, False, False]
        )
        last = results[-1]
        assert last is not None
        self.assertEqual((last.limit.text, last.remaining), ("3 per minute", 0))
        self.assertTrue(0 < last.retry_after <= 20)
        self.assertTrue(40 < last.reset_after <= 60)
        other = await two.hit(bucket_key("call", "bob", "127.0.0.1"), limits)
        self.assertTrue(other is not None and other.allowed)

    async def test_every_limit_must_allow(self) -> None:
        """A refused request takes no token from any bucket, as in the memory store."""
        await self.start_redis()
        store = self.make_store()
        await self.until(lambda: store.connected, "connected")
        limits = parse_limits(["2 per minute", "5 per hour"])
        allowed = []
        for _ in range(4):
            decision = await store.hit("k", limits)
            assert decision is not None
            allowed.append(decision.allowed)
        self.assertEqual(allowed, [True, True, False, False])
        tokens = await store._proto.execute_command("HGET", "mcpgw:rl:{k}:5/3600", "tokens")
        self.assertAlmostEqual(float(tokens), 3.0, places=3)

    async def test_keys_expire(self) -> None:
        """Every bucket key gets a TTL no longer than its time to refill plus a second."""
        await self.start_redis()
        store = self.make_store()
        await self.until(lambda: store.connected, "connected")
        await store.hit("k", parse_limits("10 per minute"))
        pttl = await store._proto.execute_command("PTTL", "mcpgw:rl:{k}:10/60")
        self.assertTrue(0 < int(pttl) <= 7000, pttl)

    async def test_fail_open_and_recover(self) -> None:
        """
        Redis killed mid-run: checks fail open (logged once), and the limit is enforced again
        once Redis is back on the same port.
        """
        events = self.observe()
        proc = await self.start_redis()
        store = self.make_store()
        await self.until(lambda: store.connected, "connected")
        limits = parse_limits("2 per minute")
        for expected in (True, True, False):
            decision = await store.hit("k", limits)
            assert decision is not None
            self.assertEqual(decision.allowed, expected)

        await self.kill_redis(proc)
        for _ in range(5):
            self.assertIsNone(await store.hit("k", limits))
        await self.until(lambda: not store.connected, "the loss is noticed")
        for _ in range(5):
            self.assertIsNone(await store.hit("k", limits))
        self.assertEqual(len(warnings_of(events)), 1)

        await self.start_redis()
        await self.until(lambda: store.connected, "reconnected")
        results = []
        for _ in range(3):
            decision = await store.hit("k", limits)
            results.append(decision.allowed if decision else None)
        self.assertEqual(results, [True, True, False])
        self.assertEqual(len(warnings_of(events)), 1)
        self.assertTrue(any("answers again" in e.get("log_format", "") for e in events))

    async def test_unreachable_at_start(self) -> None:
        """With no Redis at all, checks fail open at once and one warning is logged."""
        events = self.observe()
        store = self.make_store()
        await self.until(lambda: bool(warnings_of(events)), "the outage is logged")
        self.assertIsNone(await store.hit("k", parse_limits("1 per minute")))
        self.assertFalse(store.connected)

    async def test_auth_user_and_db(self) -> None:
        """User, percent-decoded password and database number from the URI are used."""
        await self.start_redis(
            "--user", "alice", "on", ">p@ss", "~*", "&*", "+@all", "--requirepass", "secret"
        )
        store = self.make_store(f"redis://alice:p%40ss@127.0.0.1:{self.port}/2")
        legacy = self.make_store(f"redis://:secret@127.0.0.1:{self.port}/2")
        await self.until(lambda: store.connected and legacy.connected, "authenticated")
        limits = parse_limits("1 per minute")
        first = await store.hit("k", limits)
        second = await legacy.hit("k", limits)
        self.assertTrue(first is not None and first.allowed)
        self.assertTrue(second is not None and not second.allowed)
        self.assertEqual(await store._proto.execute_command("EXISTS", "mcpgw:rl:{k}:1/60"), 1)

    async def test_wrong_password(self) -> None:
        """A refused AUTH is logged as an outage and checks fail open."""
        events = self.observe()
        await self.start_redis("--requirepass", "secret")
        store = self.make_store(f"redis://:wrong@127.0.0.1:{self.port}")
        await self.until(lambda: bool(warnings_of(events)), "the failure is logged")
        self.assertIn("auth", str(warnings_of(events)[0].get("why")).lower())
        self.assertIsNone(await store.hit("k", parse_limits("1 per minute")))

    async def test_no_answer_times_out(self) -> None:
        """
        A server that answers the PING and then nothing makes checks fail open after the
        timeout; the timeout is logged once, as text.
        """
        self.listen_fake(b"+PONG\r\n")
        events = self.observe()
        store = self.make_store(timeout=0.2)
        await self.until(lambda: store.connected, "connected")
        self.assertIsNone(await store.hit("k", parse_limits("1 per minute")))
        self.assertEqual(len(warnings_of(events)), 1)
        self.assertEqual(warnings_of(events)[0]["why"], "no answer within 0.2 s")

    async def test_accepts_but_never_answers(self) -> None:
        """
        A server that accepts connections but answers nothing (not even the PING) is never
        taken as connected: checks fail open at once, and the outage is logged once, as text.
        """
        connections = self.listen_fake(b"")
        events = self.observe()
        store = self.make_store(timeout=0.2, connect_timeout=0.2)
        await self.until(lambda: len(connections) >= 2, "a reconnection")
        self.assertFalse(store.connected)
        hit = store.hit("k", parse_limits("1 per minute"))
        self.assertIsNone(self.successResultOf(hit))
        self.assertEqual([e["why"] for e in warnings_of(events)], ["no answer within 0.2 s"])
        self.assertEqual(recoveries_of(events), [])

    async def test_stopped_redis_fails_open_at_once(self) -> None:
        """
        A Redis that stops answering (SIGSTOP) costs one check the timeout; after that every
        check fails open at once and nothing more is logged, however often the store retries.
        Once Redis runs again, limits are enforced again and that is logged once.
        """
        from twisted.internet import reactor

        events = self.observe()
        proc = await self.start_redis()
        store = self.make_store(timeout=0.2, connect_timeout=0.3)
        await self.until(lambda: store.connected, "connected")
        limits = parse_limits("100 per minute")
        self.assertIsNotNone(await store.hit("k", limits))
        assert proc.transport is not None
        proc.transport.signalProcess(signal.SIGSTOP)
        self.assertIsNone(await store.hit("k", limits))
        for _ in range(10):
            # Long enough for several reconnection attempts.
            await deferLater(reactor, 0.15, lambda: None)
            hit = store.hit("k", limits)
            self.assertIsNone(self.successResultOf(hit))
        self.assertEqual([e["why"] for e in warnings_of(events)], ["no answer within 0.2 s"])
        self.assertEqual(recoveries_of(events), [])

        proc.transport.signalProcess(signal.SIGCONT)
        decision = None
        for _ in range(200):
            decision = await store.hit("k", limits)
            if decision is not None:
                break
            await deferLater(reactor, 0.05, lambda: None)
        self.assertTrue(decision is not None and decision.allowed)
        self.assertEqual(len(warnings_of(events)), 1)
        self.assertEqual(len(recoveries_of(events)), 1)

    async def test_cancelled_check_leaves_others_alone(self) -> None:
        """
        A check cancelled by its caller (the HTTP client went away) fails with CancelledError
        and nothing else: the other checks in flight are answered, nothing is logged and the
        connection stays up. The cancelled check's script still runs.
        """
        events = self.observe()
        await self.start_redis()
        store = self.make_store()
        await self.until(lambda: store.connected, "connected")
        limits = parse_limits("1 per minute")
        checks = [store.hit(f"k{i}", limits) for i in range(10)]
        checks[0].cancel()
        self.failureResultOf(checks[0], CancelledError)
        results = [await check for check in checks[1:]]
        self.assertEqual([r.allowed if r else None for r in results], [True] * 9)
        self.assertEqual(warnings_of(events), [])
        self.assertTrue(store.connected)
        self.assertEqual(await store._proto.execute_command("EXISTS", "mcpgw:rl:{k0}:1/60"), 1)

    async def test_repeated_limit_charged_once(self) -> None:
        """The same limit written twice takes one token per request: 3 per minute allows 3."""
        await self.start_redis()
        store = self.make_store()
        await self.until(lambda: store.connected, "connected")
        limits = parse_limits(["3 per minute", "3/minute", "3 per minute"])
        results = [await store.hit("k", limits) for _ in range(4)]
        self.assertEqual([r.allowed if r else None for r in results], [True] * 3 + [False])

    async def test_limiter_service(self) -> None:
        """RateLimiter with a redis:// storage_uri uses the Redis store and stops cleanly."""
        from twisted.internet import reactor

        await self.start_redis()
        limiter = RateLimiter(
            reactor,
            RateLimitConfig(
                call_limit="1 per minute", storage_uri=f"redis://127.0.0.1:{self.port}"
            ),
        )
        self.assertIsInstance(limiter.store, RedisStore)
        limiter.startService()
        self.addCleanup(limiter.stopService)
        store = limiter.store
        assert isinstance(store, RedisStore)
        await self.until(lambda: store.connected, "connected")
        first = await limiter.check("call", "alice", "127.0.0.1")
        second = await limiter.check("call", "alice", "127.0.0.1")
        self.assertTrue(first is not None and first.allowed)
        self.assertTrue(second is not None and not second.allowed)
        stopped = limiter.stopService()
        self.assertIsInstance(stopped, Deferred)
        await stopped
        self.assertFalse(store.connected)

    async def test_error_reply_fails_open(self) -> None:
        """
        An error reply on a live connection (here a revoked ACL) fails open, logged once, and
        the limit applies again as soon as the script runs again.
        """
        events = self.observe()
        await self.start_redis("--user", "alice", "on", ">pw", "~*", "&*", "+@all")
        store = self.make_store(f"redis://alice:pw@127.0.0.1:{self.port}")
        admin = self.make_store()
        await self.until(lambda: store.connected and admin.connected, "connected")
        limits = parse_limits("1 per minute")
        await admin._proto.execute_command("ACL", "SETUSER", "alice", "-@scripting")
        self.assertIsNone(await store.hit("k", limits))
        self.assertIsNone(await store.hit("k", limits))
        self.assertEqual(len(warnings_of(events)), 1)
        self.assertIn("NOPERM", str(warnings_of(events)[0].get("why")))
        await admin._proto.execute_command("ACL", "SETUSER", "alice", "+@all")
        first = await store.hit("k", limits)
        second = await store.hit("k", limits)
        self.assertTrue(first is not None and first.allowed)
        self.assertTrue(second is not None and not second.allowed)
        self.assertTrue(any("answers again" in e.get("log_format", "") for e in events))
        self.assertTrue(store.connected)


class EndpointTests(SynchronousTestCase):
    """L{RedisStore.endpoint}."""

    def test_tls_endpoint(self) -> None:
        """rediss:// wraps the TCP endpoint in TLS; redis:// does not."""
        from twisted.internet.endpoints import HostnameEndpoint
        from twisted.internet.task import Clock

        self.assertIsInstance(RedisStore(Clock(), "redis://h").endpoint(), HostnameEndpoint)
        self.assertNotIsInstance(RedisStore(Clock(), "rediss://h").endpoint(), HostnameEndpoint)

    def test_hit_before_connected(self) -> None:
        """A check made before any connection fails open at once."""
        from twisted.internet.task import Clock

        store = RedisStore(Clock(), "redis://127.0.0.1:1")
        self.assertIsNone(self.successResultOf(store.hit("k", parse_limits("1/minute"))))
        self.assertIsNone(store.stop())


class FakeConnection:
    """A txredisapi protocol stand-in whose answers the L{FakeServer} controls."""

    def __init__(self, server: FakeServer) -> None:
        self.server = server
        self.connected = 1
        self.transport = self
        self.aborted: float | None = None
        self.pending: list[Deferred[Any]] = []
        self.lost: list[Deferred[Any]] = []

    def whenConnected(self) -> Deferred[Any]:
        return succeed(self)

    def whenDisconnected(self) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.lost.append(d)
        return d

    def _reply(self, answering: bool, value: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        if answering:
            d.callback(value)
        else:
            self.pending.append(d)
        return d

    def ping(self) -> Deferred[Any]:
        return self._reply(self.server.pings, "PONG")

    def eval(self, script: str, keys: list[str], args: list[str]) -> Deferred[Any]:
        self.server.evals += 1
        return self._reply(self.server.answers, ["5"] * len(keys))

    def abortConnection(self) -> None:
        self.aborted = self.server.clock.seconds()
        self.loseConnection()

    def loseConnection(self) -> None:
        if not self.connected:
            return
        self.connected = 0
        pending, self.pending = self.pending, []
        for d in pending:
            d.errback(ConnectionError("Lost connection"))
        lost, self.lost = self.lost, []
        for d in lost:
            d.callback(self)


@implementer(IStreamClientEndpoint)
class FakeServer:
    """An endpoint to a fake Redis: whether it answers PINGs and scripts is up to the test."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.pings = False
        self.answers = False
        self.evals = 0
        self.attempts: list[float] = []
        self.connections: list[FakeConnection] = []

    def connect(self, factory: Any) -> Deferred[Any]:
        self.attempts.append(self.clock.seconds())
        self.connections.append(FakeConnection(self))
        return succeed(self.connections[-1])


class FakeServerStore(RedisStore):
    """A L{RedisStore} whose endpoint is a L{FakeServer}."""

    server: FakeServer

    def endpoint(self) -> IStreamClientEndpoint:
        return self.server


class ConnectionLoopTests(SynchronousTestCase):
    """
    L{RedisStore} connecting, timing out and backing off, with a Clock and a fake server.
    Times are multiples of 1/16 s, so the Clock's sums are exact.
    """

    limits = parse_limits("10 per minute")
    step = [1 / 16] * 16

    def setUp(self) -> None:
        self.clock = Clock()
        self.server = FakeServer(self.clock)
        self.store = FakeServerStore(
            self.clock,
            "redis://127.0.0.1:1",
            timeout=0.5,
            connect_timeout=1.0,
            min_retry_delay=0.125,
            max_retry_delay=2.0,
        )
        self.store.server = self.server
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)
        self.addCleanup(self.stop)

    def stop(self) -> None:
        self.successResultOf(self.store.stop() or succeed(None))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def gaps(self) -> list[float]:
        """Seconds between one connection attempt and the next."""
        attempts = self.server.attempts
        return [b - a for a, b in itertools.pairwise(attempts)]

    def delays(self) -> list[float]:
        """Seconds between a connection's abort and the next attempt."""
        ends = [c.aborted for c in self.server.connections]
        return [b - a for a, b in zip(ends, self.server.attempts[1:], strict=False) if a]

    def fails_open_at_once(self) -> None:
        evals = self.server.evals
        self.assertIsNone(self.successResultOf(self.store.hit("k", self.limits)))
        self.assertEqual(self.server.evals, evals)

    def test_connected_only_once_ping_answered(self) -> None:
        """
        A connection is used only after Redis answers its PING; until then checks fail open
        at once, and each attempt that times out waits a doubling delay before the next.
        """
        self.store.start()
        self.assertEqual(len(self.server.attempts), 1)
        self.assertFalse(self.store.connected)
        self.fails_open_at_once()
        self.clock.pump(self.step * 13)
        # connect_timeout (1 s) plus a delay of 1/8, 1/4, 1/2, 1, then at most 2 s.
        self.assertEqual(self.gaps(), [1.125, 1.25, 1.5, 2.0, 3.0, 3.0])
        self.fails_open_at_once()
        self.assertEqual([e["why"] for e in warnings_of(self.events)], ["no answer within 1 s"])
        self.server.pings = self.server.answers = True
        self.clock.pump(self.step * 3)
        self.assertTrue(self.store.connected)
        decision = self.successResultOf(self.store.hit("k", self.limits))
        self.assertTrue(decision is not None and decision.allowed)
        self.assertEqual(len(recoveries_of(self.events)), 1)

    def test_timeout_fails_open_at_once_and_backs_off(self) -> None:
        """
        A check unanswered within the timeout fails open; the connection is dropped, later
        checks fail open at once, and while new connections answer PING but not the script,
        the retry delay keeps doubling and nothing more is logged.
        """
        self.server.pings = self.server.answers = True
        self.store.start()
        self.assertTrue(self.store.connected)
        self.server.answers = False
        check = self.store.hit("k", self.limits)
        self.assertNoResult(check)
        self.clock.advance(0.5)
        self.assertIsNone(self.successResultOf(check))
        self.assertEqual(self.server.connections[0].aborted, 0.5)
        self.assertFalse(self.store.connected)
        self.fails_open_at_once()
        for _ in range(4):
            self.clock.pump(self.step * 3)
            self.assertTrue(self.store.connected)
            check = self.store.hit("k", self.limits)
            self.clock.advance(0.5)
            self.assertIsNone(self.successResultOf(check))
            self.fails_open_at_once()
        self.assertEqual(self.delays(), [0.125, 0.25, 0.5, 1.0])
        self.assertEqual([e["why"] for e in warnings_of(self.events)], ["no answer within 0.5 s"])
        self.assertEqual(recoveries_of(self.events), [])
        self.server.answers = True
        self.clock.pump(self.step * 3)
        decision = self.successResultOf(self.store.hit("k", self.limits))
        self.assertTrue(decision is not None and decision.allowed)
        self.assertEqual(len(recoveries_of(self.events)), 1)

    def test_cancel_only_detaches(self) -> None:
        """
        Cancelling a check fails it with CancelledError, cancels its timer and nothing else:
        the script is not cancelled, the connection stays, and its late answer is ignored.
        """
        self.server.pings = True
        self.store.start()
        check = self.store.hit("k", self.limits)
        answer = self.server.connections[0].pending.pop()
        check.cancel()
        self.failureResultOf(check, CancelledError)
        self.assertNoResult(answer)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        answer.callback(["5"])
        self.assertTrue(self.store.connected)
        self.assertIsNone(self.server.connections[0].aborted)
        self.assertEqual(warnings_of(self.events), [])
