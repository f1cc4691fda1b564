"""
Tests for L{mcpgw.ratelimit}: limit strings, bucket arithmetic, the memory store, eviction,
the limiter service and client addresses.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from mcpgw.config import RateLimitConfig
from mcpgw.ratelimit import (
    Decision,
    Limit,
    MemoryStore,
    RateLimiter,
    TokenBucket,
    bucket_key,
    client_ip,
    decide,
    parse_limit,
    parse_limits,
    validate_storage_uri,
)


class ParseLimitTests(SynchronousTestCase):
    """L{parse_limit} and L{parse_limits}."""

    def test_forms(self) -> None:
        """`N per unit`, plural units, `N/unit` and any case parse to amount and period."""
        self.assertEqual(parse_limit("10 per minute"), Limit(10, 60.0, "10 per minute"))
        self.assertEqual(parse_limit("5 per seconds"), Limit(5, 1.0, "5 per seconds"))
        self.assertEqual(parse_limit(" 200 per day "), Limit(200, 86400.0, "200 per day"))
        self.assertEqual(parse_limit("50 Per HOURS"), Limit(50, 3600.0, "50 Per HOURS"))
        self.assertEqual(parse_limit("3/minute"), Limit(3, 60.0, "3/minute"))
        self.assertEqual(parse_limit("7 / second"), Limit(7, 1.0, "7 / second"))

    def test_invalid(self) -> None:
        """Anything else raises ValueError naming the text and the accepted forms."""
        for text in [
            "",
            "ten per minute",
            "10 per fortnight",
            "10 minute",
            "-1 per day",
            "0 per minute",
            "10 per minute extra",
            "1.5 per second",
            "per minute",
        ]:
            with self.assertRaises(ValueError, msg=text) as caught:
                parse_limit(text)
            self.assertIn(repr(text), str(caught.exception))

    def test_not_a_string(self) -> None:
        """A non-string item is a ValueError, not a TypeError."""
        self.assertRaises(ValueError, parse_limit, 10)  # type: ignore[arg-type]
        self.assertRaises(ValueError, parse_limits, [10])

    def test_list(self) -> None:
        """A list, a single string and a `;`/`,`-separated string all give every limit."""
        self.assertEqual(
            parse_limits(["200 per day", "50 per hour"]),
            (Limit(200, 86400.0, "200 per day"), Limit(50, 3600.0, "50 per hour")),
        )
        self.assertEqual(parse_limits("10/minute"), (Limit(10, 60.0, "10/minute"),))
        self.assertEqual(
            parse_limits("10 per minute; 100 per day, 1/second"),
            (
                Limit(10, 60.0, "10 per minute"),
                Limit(100, 86400.0, "100 per day"),
                Limit(1, 1.0, "1/second"),
            ),
        )
        self.assertEqual(parse_limits([]), ())
        self.assertRaises(ValueError, parse_limits, ["10 per minute", "bogus"])

    def test_duplicates(self) -> None:
        """A limit repeated (however written) is kept once, as first written, in order."""
        self.assertEqual(
            parse_limits(["3 per minute", "1/second", "3 per minute", "3/minutes"]),
            (Limit(3, 60.0, "3 per minute"), Limit(1, 1.0, "1/second")),
        )
        self.assertEqual(parse_limits("3/minute; 3 per minute"), (Limit(3, 60.0, "3/minute"),))


class TokenBucketTests(SynchronousTestCase):
    """L{TokenBucket} arithmetic, driven by explicit times."""

    def test_take_until_empty(self) -> None:
        """A full bucket of capacity N gives N tokens at one instant, then refuses."""
        bucket = TokenBucket.full(Limit(3, 60.0, "3 per minute"), now=100.0)
        self.assertEqual([bucket.take(now=100.0) for _ in range(4)], [True, True, True, False])

    def test_refill(self) -> None:
        """Tokens come back at N per period, lazily, and never above the capacity."""
        bucket = TokenBucket.full(Limit(10, 60.0, "10 per minute"), now=0.0)
        for _ in range(10):
            bucket.take(now=0.0)
        self.assertFalse(bucket.take(now=5.9))
        self.assertTrue(bucket.take(now=6.0))
        self.assertFalse(bucket.take(now=6.0))
        self.assertAlmostEqual(bucket.level(now=36.0), 5.0)
        self.assertEqual(bucket.level(now=1000.0), 10.0)
        self.assertTrue(bucket.is_full(now=1000.0))
        self.assertFalse(bucket.is_full(now=36.0))

    def test_refused_take_changes_nothing(self) -> None:
        """A refused take leaves the level as it was."""
        bucket = TokenBucket(capacity=2, period=2.0, tokens=0.5, updated=10.0)
        self.assertFalse(bucket.take(now=10.0))
        self.assertEqual(bucket.level(now=10.0), 0.5)

    def test_clock_backwards(self) -> None:
        """A clock that goes backwards refills nothing and takes no tokens away."""
        bucket = TokenBucket(capacity=2, period=2.0, tokens=1.0, updated=10.0)
        self.assertEqual(bucket.level(now=5.0), 1.0)
        self.assertTrue(bucket.take(now=5.0))
        self.assertEqual(bucket.updated, 10.0)


class DecisionTests(SynchronousTestCase):
    """L{decide} and L{Decision.headers}."""

    minute = Limit(10, 60.0, "10 per minute")
    hour = Limit(50, 3600.0, "50 per hour")

    def test_allowed_most_restrictive(self) -> None:
        """Allowed: the limit with the fewest tokens left is reported."""
        decision = decide([self.minute, self.hour], [10.0, 3.0])
        self.assertEqual(decision, Decision(True, self.hour, 2, 48 * 72.0, 0.0))

    def test_refused(self) -> None:
        """Refused: the refusing limit, no tokens left, time to the next token and to full."""
        decision = decide([self.minute, self.hour], [0.5, 30.0])
        self.assertFalse(decision.allowed)
        self.assertEqual(decision.limit, self.minute)
        self.assertEqual(decision.remaining, 0)
        self.assertAlmostEqual(decision.retry_after, 3.0)
        self.assertAlmostEqual(decision.reset_after, 57.0)

    def test_refused_by_several(self) -> None:
        """Refused by several limits: the one whose next token is furthest away is reported."""
        decision = decide([self.minute, self.hour], [0.0, 0.0])
        self.assertEqual(decision.limit, self.hour)
        self.assertAlmostEqual(decision.retry_after, 72.0)

    def test_decide_needs_levels(self) -> None:
        """decide() refuses mismatched or empty inputs."""
        self.assertRaises(ValueError, decide, [], [])
        self.assertRaises(ValueError, decide, [self.minute], [1.0, 2.0])

    def test_headers_allowed(self) -> None:
        """An allowed decision gives the three RateLimit headers, reset rounded up."""
        decision = Decision(True, self.minute, 4, 36.2, 0.0)
        self.assertEqual(
            decision.headers(),
            [
                (b"RateLimit-Limit", b"10"),
                (b"RateLimit-Remaining", b"4"),
                (b"RateLimit-Reset", b"37"),
            ],
        )

    def test_headers_refused(self) -> None:
        """A refused decision adds Retry-After, rounded up and at least 1."""
        decision = Decision(False, self.minute, 0, 60.0, 5.1)
        self.assertEqual(decision.headers()[-1], (b"Retry-After", b"6"))
        self.assertEqual(decision.headers()[2], (b"RateLimit-Reset", b"60"))
        self.assertEqual(Decision(False, self.minute, 0, 1.0, 0.0).retry_after_seconds, 1)


class MemoryStoreTests(SynchronousTestCase):
    """L{MemoryStore} with a L{Clock}."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.store = MemoryStore(self.clock)

    def hit(self, key: str, limits: tuple[Limit, ...]) -> Decision:
        result = self.successResultOf(self.store.hit(key, limits))
        assert result is not None
        return result

    def test_every_limit_must_allow(self) -> None:
        """With two limits, the tighter one refuses even while the other still has tokens."""
        limits = parse_limits(["5 per minute", "2 per second"])
        self.assertEqual([self.hit("k", limits).allowed for _ in range(3)], [True, True, False])
        self.clock.advance(1)
        self.assertEqual([self.hit("k", limits).allowed for _ in range(3)], [True, True, False])
        self.clock.advance(1)
        self.assertTrue(self.hit("k", limits).allowed)
        decision = self.hit("k", limits)
        self.assertFalse(decision.allowed)
        self.assertEqual(decision.limit.text, "5 per minute")

    def test_refused_takes_nothing(self) -> None:
        """A refused request takes no token from the buckets that would have allowed it."""
        limits = parse_limits(["1 per second", "3 per minute"])
        self.assertTrue(self.hit("k", limits).allowed)
        for _ in range(5):
            self.assertFalse(self.hit("k", limits).allowed)
        self.clock.advance(1)
        decision = self.hit("k", limits)
        self.assertTrue(decision.allowed)
        self.assertEqual((decision.limit.text, decision.remaining), ("1 per second", 0))
        self.clock.advance(1)
        decision = self.hit("k", limits)
        self.assertTrue(decision.allowed)
        self.assertEqual((decision.limit.text, decision.remaining), ("3 per minute", 0))

    def test_duplicate_limit_charged_once(self) -> None:
        """A limit listed twice takes one token per request: 3 per minute allows 3."""
        limits = parse_limits(["3 per minute", "3 per minute"])
        self.assertEqual([self.hit("k", limits).allowed for _ in range(4)], [True] * 3 + [False])

    def test_keys_independent(self) -> None:
        """Each key has its own buckets."""
        limits = parse_limits("1 per minute")
        self.assertTrue(self.hit("a", limits).allowed)
        self.assertFalse(self.hit("a", limits).allowed)
        self.assertTrue(self.hit("b", limits).allowed)

    def test_headers_values(self) -> None:
        """Remaining and reset follow the bucket: one token used of 10 per minute."""
        decision = self.hit("k", parse_limits("10 per minute"))
        self.assertEqual((decision.remaining, decision.reset_after), (9, 6.0))

    def test_evict_idle(self) -> None:
        """evict_idle drops only buckets that have refilled completely."""
        limits = parse_limits("2 per minute")
        self.hit("a", limits)
        self.clock.advance(30)
        self.hit("b", limits)
        self.assertEqual(self.store.evict_idle(self.clock.seconds()), 1)
        self.assertEqual(len(self.store), 1)
        self.clock.advance(30)
        self.assertEqual(self.store.evict_idle(self.clock.seconds()), 1)
        self.assertEqual(len(self.store), 0)

    def test_eviction_keeps_limits(self) -> None:
        """A bucket that is still refilling survives eviction, so the limit still holds."""
        limits = parse_limits("1 per minute")
        self.hit("a", limits)
        self.store.evict_idle(self.clock.seconds())
        self.assertFalse(self.hit("a", limits).allowed)


class RateLimiterTests(SynchronousTestCase):
    """L{RateLimiter} as a service with a L{Clock}."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.config = RateLimitConfig(
            default_limits=("3 per minute",),
            tools_limit="2 per minute",
            call_limit="1 per minute",
            session_delete_limit="5/minute",
        )

    def test_classes(self) -> None:
        """The four classes come from the config."""
        limiter = RateLimiter(self.clock, self.config)
        self.assertEqual(
            {k: [limit.text for limit in v] for k, v in limiter.classes.items()},
            {
                "tools": ["2 per minute"],
                "call": ["1 per minute"],
                "delete": ["5/minute"],
                "default": ["3 per minute"],
            },
        )
        self.assertIsInstance(limiter.store, MemoryStore)

    def test_check_keys(self) -> None:
        """Buckets are per (class, principal, IP)."""
        limiter = RateLimiter(self.clock, self.config)

        def allowed(*args: str) -> bool:
            decision = self.successResultOf(limiter.check(*args))
            assert decision is not None
            return decision.allowed

        self.assertTrue(allowed("call", "alice", "127.0.0.1"))
        self.assertFalse(allowed("call", "alice", "127.0.0.1"))
        self.assertTrue(allowed("call", "bob", "127.0.0.1"))
        self.assertTrue(allowed("call", "alice", "127.0.0.2"))
        self.assertTrue(allowed("tools", "alice", "127.0.0.1"))
        self.assertRaises(KeyError, limiter.check, "nope", "alice", "127.0.0.1")

    def test_no_limits(self) -> None:
        """A class with no limits fires None (no headers, never refused)."""
        limiter = RateLimiter(self.clock, RateLimitConfig(default_limits=()))
        self.assertIsNone(self.successResultOf(limiter.check("default", "-", "127.0.0.1")))

    def test_bad_config(self) -> None:
        """A bad limit or storage URI raises ValueError at construction."""
        self.assertRaises(ValueError, RateLimiter, self.clock, RateLimitConfig(call_limit="x"))
        self.assertRaises(
            ValueError,
            RateLimiter,
            self.clock,
            RateLimitConfig(storage_uri="memcached://localhost"),
        )

    def test_eviction_loop(self) -> None:
        """The running service evicts idle buckets every interval and stops cleanly."""
        limiter = RateLimiter(self.clock, self.config, evict_interval=30.0)
        store = limiter.store
        assert isinstance(store, MemoryStore)
        limiter.startService()
        self.successResultOf(limiter.check("call", "alice", "127.0.0.1"))
        self.clock.pump([30])
        self.assertEqual(len(store), 1)
        self.clock.pump([30, 30])
        self.assertEqual(len(store), 0)
        self.assertIsNone(limiter.stopService())
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_eviction_error_logged(self) -> None:
        """A tick that raises is logged and the loop keeps running."""
        limiter = RateLimiter(self.clock, self.config, evict_interval=10.0)
        calls: list[float] = []

        def broken(now: float) -> int:
            calls.append(now)
            raise RuntimeError("boom")

        limiter.store.evict_idle = broken  # type: ignore[method-assign]
        events: list[dict[str, object]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        limiter.startService()
        self.clock.pump([10, 10])
        limiter.stopService()
        self.assertEqual(calls, [10.0, 20.0])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 2)
        self.assertTrue(any(e.get("log_level") == LogLevel.critical for e in events))

    def test_stop_returns_store_deferred(self) -> None:
        """stopService returns what the store's stop returns, to wait for a connection."""
        limiter = RateLimiter(self.clock, self.config)
        waited: Deferred[None] = Deferred()
        limiter.store.stop = lambda: waited  # type: ignore[method-assign]
        limiter.startService()
        self.assertIs(limiter.stopService(), waited)

    def test_bucket_key_unambiguous(self) -> None:
        """Separators inside a part cannot make two keys collide."""
        self.assertNotEqual(bucket_key("call", "a:b", "c"), bucket_key("call", "a", "b:c"))


class ClientIpTests(SynchronousTestCase):
    """L{client_ip}."""

    def test_untrusted_peer(self) -> None:
        """An untrusted peer is the client, whatever X-Forwarded-For says."""
        self.assertEqual(client_ip("127.0.0.1", "1.2.3.4", ["10.0.0.0/8"]), "127.0.0.1")
        self.assertEqual(client_ip("127.0.0.1", "1.2.3.4", []), "127.0.0.1")
        self.assertEqual(client_ip("127.0.0.1", None, ["127.0.0.1"]), "127.0.0.1")

    def test_trusted_peer(self) -> None:
        """Behind trusted proxies, the first untrusted address from the right is the client."""
        trusted = ["127.0.0.1", "10.0.0.0/8"]
        self.assertEqual(client_ip("127.0.0.1", "1.2.3.4", trusted), "1.2.3.4")
        self.assertEqual(client_ip("127.0.0.1", "6.6.6.6, 1.2.3.4, 10.1.2.3", trusted), "1.2.3.4")
        self.assertEqual(client_ip("127.0.0.1", "10.0.0.1, 10.0.0.2", trusted), "10.0.0.1")

    def test_bad_header(self) -> None:
        """A malformed entry on the path makes the header ignored: the peer is used."""
        self.assertEqual(client_ip("127.0.0.1", "garbage", ["127.0.0.1"]), "127.0.0.1")
        self.assertEqual(client_ip("127.0.0.1", "1.2.3.4, bad", ["127.0.0.1"]), "127.0.0.1")
        self.assertEqual(client_ip("127.0.0.1", "bad, 1.2.3.4", ["127.0.0.1"]), "1.2.3.4")
        self.assertEqual(client_ip("127.0.0.1", " , ", ["127.0.0.1"]), "127.0.0.1")

    def test_forms(self) -> None:
        """Ports, brackets, IPv6 and IPv4-mapped addresses are understood."""
        trusted = ["::1", "127.0.0.0/8"]
        self.assertEqual(client_ip("::1", "[2001:db8::1]:443", trusted), "2001:db8::1")
        self.assertEqual(client_ip("::ffff:127.0.0.1", "1.2.3.4:5678", trusted), "1.2.3.4")
        self.assertEqual(client_ip("::1", "2001:DB8::2", trusted), "2001:db8::2")


class StorageUriTests(SynchronousTestCase):
    """L{validate_storage_uri}."""

    def test_valid(self) -> None:
        """memory:// and Redis URIs are accepted."""
        for uri in [
            "memory://",
            "redis://localhost",
            "redis://:pw@127.0.0.1:6380/2",
            "rediss://user:p%40ss@example.com",
        ]:
            validate_storage_uri(uri)

    def test_invalid(self) -> None:
        """Other schemes, bad ports and bad databases are ValueErrors."""
        for uri in [
            "",
            "memory",
            "memcached://x",
            "redis://host:notaport",
            "redis://host/abc",
            "redis://host/1?x=y",
            "redis://host:99999",
        ]:
            self.assertRaises(ValueError, validate_storage_uri, uri)
