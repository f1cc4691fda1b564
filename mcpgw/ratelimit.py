# -*- test-case-name: tests.test_ratelimit -*-
"""
Rate limiting (SPEC 7): limit strings, token buckets, stores and the limiter service.

A limit ``N per minute`` is a token bucket of capacity N refilled at N per minute. Refill is
computed lazily from the clock at each request (``TokenBucket.take(now=...)``); the limiter's
``LoopingCall`` only drops buckets that have refilled completely, which are the same as absent
ones, so memory stays bounded however many distinct clients come and go.

A request is checked against a list of limits; every one must allow it, and a refused request
takes no token from any bucket.
"""

from __future__ import annotations

import functools
import ipaddress
import math
import re
from collections.abc import Iterable, Sequence
from typing import Protocol
from urllib.parse import quote

import attrs
from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall

from mcpgw.config import RateLimitConfig
from mcpgw.logs import Logger

# Tolerance for float arithmetic when comparing token levels.
_EPSILON = 1e-9

_UNITS = {"second": 1.0, "minute": 60.0, "hour": 3600.0, "day": 86400.0}

_LIMIT_RE = re.compile(
    r"^\s*(?P<amount>\d+)\s*(?:per\s+|/\s*)(?P<unit>second|minute|hour|day)s?\s*$",
    re.IGNORECASE,
)

CLASSES = ("tools", "call", "delete", "default")


@attrs.frozen
class Limit:
    """``amount`` requests per ``period`` seconds; ``text`` as written, for messages."""

    amount: int
    period: float
    text: str

    @property
    def rate(self) -> float:
        """Tokens added per second."""
        return self.amount / self.period


def parse_limit(text: str) -> Limit:
    """
    Parse ``N per second|minute|hour|day`` (plural units allowed) or ``N/minute``.

    @raise ValueError: naming the text and the accepted forms.
    """
    if not isinstance(text, str):
        raise ValueError(f"rate limit must be a string such as '10 per minute', not {text!r}")
    match = _LIMIT_RE.match(text)
    if match is None:
        raise ValueError(
            f"invalid rate limit {text!r}: expected 'N per second|minute|hour|day' "
            "(plural units allowed) or 'N/minute'"
        )
    amount = int(match.group("amount"))
    if amount < 1:
        raise ValueError(f"invalid rate limit {text!r}: the amount must be at least 1")
    return Limit(amount=amount, period=_UNITS[match.group("unit").lower()], text=text.strip())


def parse_limits(texts: str | Iterable[str]) -> tuple[Limit, ...]:
    """
    Parse a list of limit strings; every one must allow a request.

    A single string is accepted too, and may hold several limits separated by ``;`` or ``,``
    (``"10 per minute; 100 per day"``). A repeated limit (same amount and period, however
    written) counts once, as first written: it is one bucket, not two to take from.

    @raise ValueError: for the first invalid item.
    """
    items = [texts] if isinstance(texts, str) else list(texts)
    limits: dict[tuple[int, float], Limit] = {}
    for item in items:
        if not isinstance(item, str):
            raise ValueError(f"rate limit must be a string such as '10 per minute', not {item!r}")
        for part in re.split(r"[;,]", item):
            if part.strip():
                limit = parse_limit(part)
                limits.setdefault((limit.amount, limit.period), limit)
    return tuple(limits.values())


@attrs.frozen
class Decision:
    """
    The outcome of one check. ``limit`` is the most restrictive limit (the one that refused,
    when refused); ``reset_after`` is seconds until its bucket is full again and
    ``retry_after`` seconds until it holds a token (0 when allowed).
    """

    allowed: bool
    limit: Limit
    remaining: int
    reset_after: float
    retry_after: float

    def headers(self) -> list[tuple[bytes, bytes]]:
        """``RateLimit-*`` headers (integers, times rounded up); ``Retry-After`` if refused."""
        headers = [
            (b"RateLimit-Limit", b"%d" % self.limit.amount),
            (b"RateLimit-Remaining", b"%d" % max(0, self.remaining)),
            (b"RateLimit-Reset", b"%d" % _ceil(self.reset_after)),
        ]
        if not self.allowed:
            headers.append((b"Retry-After", b"%d" % self.retry_after_seconds))
        return headers

    @property
    def retry_after_seconds(self) -> int:
        """``retry_after`` as the whole number of seconds for ``Retry-After`` (at least 1)."""
        return max(1, _ceil(self.retry_after))


def _ceil(value: float) -> int:
    # Float noise (59.0000000001) must not add a whole second.
    return max(0, math.ceil(value - _EPSILON))


def decide(limits: Sequence[Limit], levels: Sequence[float]) -> Decision:
    """
    Build the decision for ``limits`` given each bucket's token level before this request.

    The request is allowed when every level holds a whole token. Allowed: the most restrictive
    limit is the one with the fewest tokens left (then the longest time to refill). Refused: it
    is the refusing limit whose next token is furthest away.
    """
    if not limits or len(limits) != len(levels):
        raise ValueError("decide() needs one level per limit, and at least one limit")
    allowed = all(level >= 1 - _EPSILON for level in levels)
    best: tuple[tuple[float, float], Decision] | None = None
    rank: tuple[float, float]
    for limit, level in zip(limits, levels, strict=True):
        if allowed:
            left = max(0.0, level - 1)
            decision = Decision(
                allowed=True,
                limit=limit,
                remaining=math.floor(left + _EPSILON),
                reset_after=max(0.0, (limit.amount - left) / limit.rate),
                retry_after=0.0,
            )
            rank = (-decision.remaining, decision.reset_after)
        elif level < 1 - _EPSILON:
            decision = Decision(
                allowed=False,
                limit=limit,
                remaining=0,
                reset_after=max(0.0, (limit.amount - level) / limit.rate),
                retry_after=(1 - level) / limit.rate,
            )
            rank = (decision.retry_after, decision.reset_after)
        else:
            continue
        if best is None or rank > best[0]:
            best = (rank, decision)
    assert best is not None
    return best[1]


@attrs.define
class TokenBucket:
    """Pure token-bucket arithmetic: every method takes ``now`` (seconds)."""

    capacity: int
    period: float
    tokens: float
    updated: float

    @classmethod
    def full(cls, limit: Limit, now: float) -> TokenBucket:
        return cls(
            capacity=limit.amount, period=limit.period, tokens=float(limit.amount), updated=now
        )

    def level(self, now: float) -> float:
        """Tokens available at ``now`` (a clock going backwards refills nothing)."""
        elapsed = max(0.0, now - self.updated)
        return min(float(self.capacity), self.tokens + elapsed * self.capacity / self.period)

    def take(self, now: float, count: int = 1) -> bool:
        """Take ``count`` tokens if there are that many; a refused take changes nothing."""
        level = self.level(now)
        if level < count - _EPSILON:
            return False
        self.tokens = max(0.0, level - count)
        self.updated = max(now, self.updated)
        return True

    def is_full(self, now: float) -> bool:
        return self.level(now) >= self.capacity - _EPSILON


class Store(Protocol):
    """What the limiter needs from a bucket store (``MemoryStore``, ``RedisStore``)."""

    def hit(self, key: str, limits: Sequence[Limit]) -> Deferred[Decision | None]: ...

    def evict_idle(self, now: float) -> int: ...

    def start(self) -> None: ...

    def stop(self) -> Deferred[None] | None: ...


class MemoryStore:
    """Buckets in this process, keyed by (key, limit)."""

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self._buckets: dict[tuple[str, Limit], TokenBucket] = {}

    def __len__(self) -> int:
        return len(self._buckets)

    def hit(self, key: str, limits: Sequence[Limit]) -> Deferred[Decision | None]:
        """Take a token from every limit's bucket, or from none when any of them refuses."""
        return succeed(self.hit_now(key, limits, self._clock.seconds()))

    def hit_now(self, key: str, limits: Sequence[Limit], now: float) -> Decision:
        buckets = [
            self._buckets.get((key, limit)) or TokenBucket.full(limit, now) for limit in limits
        ]
        decision = decide(limits, [bucket.level(now) for bucket in buckets])
        if decision.allowed:
            for limit, bucket in zip(limits, buckets, strict=True):
                bucket.take(now)
                self._buckets[(key, limit)] = bucket
        return decision

    def evict_idle(self, now: float) -> int:
        """Drop the buckets that are full at ``now``; return how many were dropped."""
        idle = [k for k, bucket in self._buckets.items() if bucket.is_full(now)]
        for k in idle:
            del self._buckets[k]
        return len(idle)

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass


@functools.lru_cache(maxsize=4096)
def bucket_key(klass: str, principal: str, ip: str) -> str:
    """An unambiguous key for (class, principal, client IP): each part percent-encoded."""
    return ":".join(quote(part, safe="") for part in (klass, principal, ip))


def validate_storage_uri(uri: str) -> None:
    """
    Accept ``memory://`` and ``redis://`` / ``rediss://[[user]:password@]host[:port][/db]``.

    @raise ValueError: with a message for the config loader.
    """
    if uri == "memory://":
        return
    from mcpgw.redis_store import parse_redis_uri

    parse_redis_uri(uri)


def make_store(reactor: IReactorTime, uri: str) -> Store:
    """The store named by ``storage_uri`` (``memory://`` or Redis)."""
    validate_storage_uri(uri)
    if uri == "memory://":
        return MemoryStore(reactor)
    from mcpgw.redis_store import RedisStore

    return RedisStore(reactor, uri)


class RateLimiter(Service):
    """
    The gateway's limits by route class (``tools``, ``call``, ``delete``, ``default``), checked
    per (principal, client IP) against the store named by ``storage_uri``.
    """

    log = Logger()

    def __init__(
        self,
        reactor: IReactorTime,
        config: RateLimitConfig,
        evict_interval: float = 60.0,
        store: Store | None = None,
    ) -> None:
        self._reactor = reactor
        self.classes: dict[str, tuple[Limit, ...]] = {
            "tools": parse_limits(config.tools_limit),
            "call": parse_limits(config.call_limit),
            "delete": parse_limits(config.session_delete_limit),
            "default": parse_limits(config.default_limits),
        }
        self.store: Store = store if store is not None else make_store(reactor, config.storage_uri)
        self._evict_interval = evict_interval
        self._evictor: LoopingCall | None = None

    def check(self, klass: str, principal: str, ip: str) -> Deferred[Decision | None]:
        """
        Count one request of route class ``klass`` from (``principal``, ``ip``).

        Fires with the L{Decision}, or with C{None} when the class has no limits or the store
        cannot answer (fail open): no rate-limit headers then.

        @raise KeyError: for an unknown class.
        """
        limits = self.classes[klass]
        if not limits:
            return succeed(None)
        return self.store.hit(bucket_key(klass, principal, ip), limits)

    def _evict(self) -> None:
        try:
            dropped = self.store.evict_idle(self._reactor.seconds())
        except Exception:  # noqa: BLE001 - a raising tick would stop the LoopingCall for good
            self.log.failure("while evicting idle rate-limit buckets")
        else:
            if dropped:
                self.log.debug("evicted {count} idle rate-limit buckets", count=dropped)

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        self.store.start()
        self._evictor = LoopingCall(self._evict)
        self._evictor.clock = self._reactor
        self._evictor.start(self._evict_interval, now=False)

    def stopService(self) -> Deferred[None] | None:
        super().stopService()  # type: ignore[no-untyped-call]
        if self._evictor is not None and self._evictor.running:
            self._evictor.stop()
        self._evictor = None
        return self.store.stop()


@functools.lru_cache(maxsize=64)
def _networks(
    trusted: tuple[str, ...],
) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(net, strict=False) for net in trusted)


def _parse_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    text = text.strip()
    if text.startswith("["):  # [v6] or [v6]:port
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:  # v4:port
        text = text.partition(":")[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def client_ip(peer_host: str, forwarded_for: str | None, trusted_proxies: Sequence[str]) -> str:
    """
    The client address: the peer's, or, when the peer is a trusted proxy (an IP or CIDR of
    ``trusted_proxies``), the first untrusted address of ``X-Forwarded-For`` scanning from the
    right. A header with an unparseable entry on that path is ignored (the peer is used).
    """
    peer = _parse_ip(peer_host)
    if peer is None or not forwarded_for or not trusted_proxies:
        return peer_host if peer is None else str(peer)
    networks = _networks(tuple(trusted_proxies))

    def trusted(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        return any(address.version == net.version and address in net for net in networks)

    if not trusted(peer):
        return str(peer)
    hops = [entry for entry in forwarded_for.split(",") if entry.strip()]
    candidate = peer
    for entry in reversed(hops):
        address = _parse_ip(entry)
        if address is None:
            return str(peer)
        candidate = address
        if not trusted(address):
            break
    return str(candidate)
