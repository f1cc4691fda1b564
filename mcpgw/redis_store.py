# -*- test-case-name: tests.test_redis_store -*-
"""
Rate-limit buckets in Redis, shared by every gateway replica that uses the same Redis.

Each check is one Lua script (EVALSHA, falling back to EVAL on NOSCRIPT) that reads the clock
with Redis ``TIME``, refills and takes from every bucket of the request atomically, and sets
``PEXPIRE`` so a bucket disappears once it would be full again: Redis memory stays bounded.

Redis being unreachable never stops or slows the gateway down for long: a check that finds no
connection, fails, or gets no answer within ``timeout`` seconds fails open (fires ``None``).
A connection is used only once Redis has answered a PING on it (a Redis that accepts
connections but is stopped answers nothing). After a check goes unanswered, the connection is
dropped and every check fails open at once until a new connection answers its PING; the retry
delay keeps growing until a check is answered again. The outage is logged once; the store
reconnects on the injected reactor with a backoff and enforces limits again as soon as Redis
answers.

A caller that cancels its check (Klein does on client disconnect) only stops waiting: the
script still runs, and the shared connection is left alone.

txredisapi imports the global reactor, so it is imported here, lazily, and only its protocol is
used: connecting and reconnecting go through endpoints built on the injected reactor.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any
from urllib.parse import unquote, urlsplit

import attrs
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IAddress, IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.internet.ssl import optionsForClientTLS
from twisted.internet.task import deferLater

from mcpgw.config import redact_uri
from mcpgw.logs import Logger
from mcpgw.ratelimit import Decision, Limit, decide

# KEYS: one bucket per limit. ARGV: capacity and period (microseconds) per limit.
# Returns each bucket's level before this request, as strings (Lua numbers would be truncated
# to integers). Takes a token from every bucket only when all of them hold one.
LUA_HIT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local levels = {}
local ok = true
for i = 1, #KEYS do
  local cap = tonumber(ARGV[2 * i - 1])
  local period = tonumber(ARGV[2 * i])
  local state = redis.call('HMGET', KEYS[i], 'tokens', 'ts')
  local level = cap
  if state[1] and state[2] then
    local elapsed = math.max(0, now - tonumber(state[2]))
    level = math.min(cap, tonumber(state[1]) + elapsed * cap / period)
  end
  levels[i] = level
  if level < 1 - 1e-9 then ok = false end
end
if ok then
  for i = 1, #KEYS do
    local cap = tonumber(ARGV[2 * i - 1])
    local period = tonumber(ARGV[2 * i])
    local left = math.max(0, levels[i] - 1)
    redis.call('HSET', KEYS[i], 'tokens', string.format('%.17g', left),
               'ts', string.format('%.17g', now))
    redis.call('PEXPIRE', KEYS[i], math.ceil((cap - left) * period / cap / 1000) + 1000)
  end
end
local out = {}
for i = 1, #KEYS do out[i] = string.format('%.17g', levels[i]) end
return out
"""


@attrs.frozen
class RedisTarget:
    """Where and how to connect, from ``redis[s]://[[user]:password@]host[:port][/db]``."""

    host: str = "localhost"
    port: int = 6379
    db: int | None = None
    username: str | None = None
    password: str | None = attrs.field(default=None, repr=False)
    tls: bool = False


def parse_redis_uri(uri: str) -> RedisTarget:
    """
    Parse a Redis URI; user and password are percent-decoded.

    @raise ValueError: for anything else, naming the accepted forms.
    """
    expected = "expected memory:// or redis[s]://[[user]:password@]host[:port][/db]"
    try:
        parts = urlsplit(uri)
        port = parts.port
    except ValueError:
        # Not the error text: urllib quotes what it could not read (maybe part of a password).
        raise ValueError(
            f"invalid storage_uri {redact_uri(uri)!r}: bad host or port"
            f" (percent-encode special characters of the password); {expected}"
        ) from None
    if parts.scheme not in ("redis", "rediss"):
        raise ValueError(f"unsupported storage_uri {redact_uri(uri)!r}: {expected}")
    if parts.query or parts.fragment:
        raise ValueError(f"invalid storage_uri {redact_uri(uri)!r}: no query or fragment allowed")
    db: int | None = None
    path = parts.path.strip("/")
    if path:
        if not path.isdigit():
            raise ValueError(
                f"invalid storage_uri {redact_uri(uri)!r}: the database must be a number, "
                f"not {path!r}"
            )
        db = int(path)
    username = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password is not None else None
    if password == "":
        password = None
    return RedisTarget(
        host=parts.hostname or "localhost",
        port=port if port is not None else 6379,
        db=db,
        username=username if password is not None else None,
        password=password if password is not None else username,
        tls=parts.scheme == "rediss",
    )


class _ProtocolFactory(Factory):
    """Builds txredisapi protocols that use the injected reactor; no reconnecting of its own."""

    # Read by txredisapi's protocol when AUTH or SELECT fail.
    isLazy = False
    noisy = False

    def __init__(self, store: RedisStore) -> None:
        self._store = store

    def buildProtocol(self, addr: IAddress | None) -> Any:
        txredisapi = _txredisapi()
        target = self._store.target
        proto = txredisapi.RedisProtocol(
            password=target.password,
            dbid=target.db,
            username=target.username,
            convertNumbers=False,
        )
        proto.factory = self
        proto.callLater = self._store.reactor.callLater
        return proto

    def stopTrying(self) -> None:
        """The store's own loop decides about reconnecting."""

    def connectionError(self, why: str) -> None:
        self._store._mark_down(why)


class RedisStore:
    """The Redis bucket store; the same ``hit()`` as ``MemoryStore``."""

    log = Logger()

    def __init__(
        self,
        reactor: IReactorTime,
        uri: str,
        timeout: float = 0.5,
        connect_timeout: float = 2.0,
        min_retry_delay: float = 0.1,
        max_retry_delay: float = 2.0,
        prefix: str = "mcpgw:rl:",
    ) -> None:
        self.reactor = reactor
        self.target = parse_redis_uri(uri)
        self._where = f"{self.target.host}:{self.target.port}"
        self._timeout = timeout
        self._connect_timeout = connect_timeout
        self._min_retry_delay = min_retry_delay
        self._max_retry_delay = max_retry_delay
        self._prefix = prefix
        # The connection being set up or in use, and the one checks use (once it answered).
        self._conn: Any = None
        self._proto: Any = None
        self._down = False
        # A check went unanswered: back off before reconnecting until a check is answered.
        self._suspect = False
        self._delay = min_retry_delay
        self._stopping = False
        self._loop: Deferred[None] | None = None

    @property
    def connected(self) -> bool:
        """Whether a check would reach Redis now (rather than fail open)."""
        return self._proto is not None

    def endpoint(self) -> IStreamClientEndpoint:
        """The endpoint for the target, on the injected reactor (TLS for ``rediss://``)."""
        endpoint: IStreamClientEndpoint = HostnameEndpoint(
            self.reactor, self.target.host, self.target.port, timeout=self._connect_timeout
        )
        if self.target.tls:
            endpoint = wrapClientTLS(optionsForClientTLS(self.target.host), endpoint)
        return endpoint

    def start(self) -> None:
        """Start connecting (and reconnecting, until ``stop``)."""
        if self._loop is None:
            self._stopping = False
            self._loop = Deferred.fromCoroutine(self._run())
            self._loop.addErrback(self._loop_failed)

    def _loop_failed(self, failure: Any) -> None:
        if not failure.check(CancelledError):
            self.log.failure("Redis connection loop failed", failure)

    def stop(self) -> Deferred[None] | None:
        """Stop reconnecting and close the connection; fires once it is closed."""
        self._stopping = True
        conn, self._conn, self._proto = self._conn, None, None
        closed: Deferred[None] | None = None
        if conn is not None and conn.connected:
            closed = conn.whenDisconnected().addCallback(lambda _: None)
            conn.transport.loseConnection()
        loop, self._loop = self._loop, None
        if loop is not None:
            loop.cancel()
        return closed

    async def _run(self) -> None:
        factory = _ProtocolFactory(self)
        while not self._stopping:
            try:
                proto = await self._connect(factory)
            except Exception as e:  # noqa: BLE001 - any failure means: retry later
                if self._stopping:
                    return
                self._mark_down(_describe(e))
                await self._back_off()
                continue
            self._ready(proto)
            await proto.whenDisconnected()
            if self._proto is proto:
                self._proto = None
            if self._stopping:
                return
            self._mark_down("connection lost")
            if self._suspect:
                await self._back_off()

    async def _connect(self, factory: _ProtocolFactory) -> Any:
        """Connect, and wait for AUTH and SELECT (if any) and a PING to be answered."""
        proto: Any = await self.endpoint().connect(factory)
        self._conn = proto
        handshake: Deferred[Any] = proto.whenConnected()
        handshake.addCallback(lambda p: p.ping())
        proto.whenDisconnected().addCallback(_abandon, handshake)
        handshake.addTimeout(self._connect_timeout, self.reactor)
        try:
            await handshake
        except DeferredTimeout:
            proto.transport.abortConnection()
            raise _NoAnswer(f"no answer within {self._connect_timeout:g} s") from None
        except BaseException:
            proto.transport.abortConnection()
            raise
        return proto

    async def _back_off(self) -> None:
        await deferLater(self.reactor, self._delay, lambda: None)
        self._delay = min(self._delay * 2, self._max_retry_delay)

    def _ready(self, proto: Any) -> None:
        """Redis answered the PING on ``proto``: checks use it from now on."""
        self._proto = proto
        if self._suspect:
            # The last connection stopped answering: only an answered check ends the outage.
            return
        self._delay = self._min_retry_delay
        if self._down:
            self._recovered()
        else:
            self.log.info("connected to Redis at {where}", where=self._where)

    def _recovered(self) -> None:
        if self._down:
            self._down = False
            self.log.info(
                "Redis at {where} answers again; rate limits are enforced", where=self._where
            )

    def _mark_down(self, why: str) -> None:
        if self._down or self._stopping:
            return
        self._down = True
        self.log.warn(
            "Redis at {where} unreachable ({why}); serving without rate limits until it "
            "answers again",
            where=self._where,
            why=why,
        )

    def hit(self, key: str, limits: Sequence[Limit]) -> Deferred[Decision | None]:
        """
        Take a token from every limit's bucket, or from none when any refuses; fire the
        L{Decision}, or C{None} (fail open) when Redis does not answer in time.
        """
        proto = self._proto
        if proto is None or not limits:
            return succeed(None)
        base = self._prefix + "{" + key + "}:"
        keys = [base + f"{limit.amount}/{limit.period:g}" for limit in limits]
        args: list[str] = []
        for limit in limits:
            args += [str(limit.amount), str(int(limit.period * 1_000_000))]
        # The caller gets its own Deferred: cancelling it (the HTTP client went away) only
        # stops the wait; the script's answer still arrives, and is then ignored.
        result: Deferred[Decision | None] = Deferred(lambda _: timer.cancel())
        timer = self.reactor.callLater(self._timeout, self._no_answer, result, proto)

        def deliver(outcome: Decision | None) -> None:
            if timer.active():
                timer.cancel()
            if not result.called:
                result.callback(outcome)

        try:
            answer: Deferred[Any] = proto.eval(LUA_HIT, keys, args)
        except Exception as e:  # noqa: BLE001 - e.g. the connection has just closed
            self._mark_down(_describe(e))
            deliver(None)
        else:
            answer.addCallback(self._answered, limits).addErrback(self._failed)
            answer.addCallback(deliver)
        return result

    def _answered(self, levels: Sequence[Any], limits: Sequence[Limit]) -> Decision:
        decision = decide(limits, [float(level) for level in levels])
        self._suspect = False
        self._delay = self._min_retry_delay
        self._recovered()
        return decision

    def _failed(self, failure: Any) -> None:
        """An error reply or a lost connection: fail open, keep the connection."""
        self._mark_down(_describe(failure.value))

    def _no_answer(self, result: Deferred[Decision | None], proto: Any) -> None:
        """
        No answer in time: fail open, now and for every check until a new connection answers
        its PING, and drop this connection (it may be dead without the kernel knowing).
        """
        self._suspect = True
        if self._proto is proto:
            self._proto = None
        self._mark_down(f"no answer within {self._timeout:g} s")
        result.callback(None)
        if proto.connected:
            proto.transport.abortConnection()

    def evict_idle(self, now: float) -> int:
        """Nothing to do: Redis expires idle buckets itself."""
        return 0


def _txredisapi() -> Any:
    """Import txredisapi (which imports the global reactor) only once it is needed."""
    with warnings.catch_warnings():
        # Its module body compares bytes with str, which ``python -b`` reports.
        warnings.simplefilter("ignore", BytesWarning)
        import txredisapi
    return txredisapi


class _NoAnswer(Exception):
    """Redis accepted the connection but did not answer in time."""


def _abandon(proto: Any, ready: Deferred[Any]) -> None:
    """The connection closed before it was usable (AUTH or SELECT refused): stop waiting."""
    if not ready.called:
        ready.errback(ConnectionDone("connection closed before it was ready"))


def _describe(error: BaseException) -> str:
    text = str(error) or type(error).__name__
    return text.splitlines()[0][:200] if text else type(error).__name__
