"""
Tests for L{mcpgw.redis_store}: URI parsing, and the store against a real redis-server that
the tests start as a child process on a free loopback port.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from twisted.internet import protocol
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from mcpgw.config import RateLimitConfig
from mcpgw.ratelimit import Decision, RateLimiter, bucket_key, parse_limits
from mcpgw.redis_store import RedisStore, RedisTarget, parse_redis_uri

REDIS_SERVER = "/usr/bin/redis-server"


class ParseRedisUriTests(SynchronousTestCase):
    """L{parse_redis_uri}."""

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


def warnings_of(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        e
        for e in events
        if e.get("log_level") == LogLevel.warn and "unreachable" in e.get("log_format", "")
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
        """A server that accepts but never answers makes checks fail open after the timeout."""
        from twisted.internet import reactor

        connected: list[Any] = []

        class Silent(protocol.Protocol):
            def connectionMade(self) -> None:
                connected.append(self.transport)

        listening = reactor.listenTCP(
            0, protocol.Factory.forProtocol(Silent), interface="127.0.0.1"
        )
        self.addCleanup(listening.stopListening)
        self.port = listening.getHost().port
        events = self.observe()
        store = self.make_store(timeout=0.2)
        # Without a password nothing is asked at connection time, so the store is connected.
        await self.until(lambda: store.connected, "connected")
        self.assertIsNone(await store.hit("k", parse_limits("1 per minute")))
        self.assertEqual(len(warnings_of(events)), 1)
        for transport in connected:
            transport.loseConnection()

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
