# -*- test-case-name: tests.test_tap -*-
"""
The composition root: ``twistd mcp-gateway -c CONFIG`` (and the console shim) land here.

This is the only module that resolves the global reactor, lazily, inside ``makeService``.
``build_service`` only wires objects together; behaviour lives in the services it builds.
"""

from __future__ import annotations

import gc
import os
import signal
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred
from twisted.python import usage

from mcpgw.app import GatewayApp
from mcpgw.auth import Credentials
from mcpgw.catalog import ToolsCatalog
from mcpgw.config import Config
from mcpgw.config_loader import load_config
from mcpgw.cpugroup import IdleGroup
from mcpgw.errors import ConfigError
from mcpgw.listen import ListenerService, server_endpoint, url_host
from mcpgw.logs import FileLogService, Logger
from mcpgw.sandbox import startup_nice
from mcpgw.servers import ServerFactory, mcp_server_factory
from mcpgw.sessions import SessionManager
from mcpgw.web import GatewayResource, GatewaySite

log = Logger()


class Options(usage.Options):
    synopsis = "[-c CONFIG]"
    optParameters = [
        ["config", "c", "config.json", "The JSON configuration file."],
    ]

    def postOptions(self) -> None:
        try:
            self["gateway_config"] = load_checked(self["config"], os.environ, os.getcwd())
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None


def load_checked(path: str, environ: Mapping[str, str], cwd: str) -> Config:
    """
    Load the config and check what can only be checked on disk: the TLS files, the log
    file (opened for appending) and ``session.sandbox_dir`` (an existing writable directory,
    or creatable: it is made when the gateway starts, after twistd has dropped privileges).
    """
    from mcpgw.listen import certificate_options, wants_tls

    config = load_config(path, environ, cwd)
    if wants_tls(config):
        certificate_options(config)
    if config.logging.file:
        try:
            open(config.logging.file, "a").close()
        except OSError as e:
            raise ConfigError(path, "logging.file", f"cannot append to it: {e}") from None
    _check_dir(path, "session.sandbox_dir", config.session.sandbox_dir)
    return config


def _check_dir(source: str, key: str, directory: str) -> None:
    existing = directory
    while not os.path.exists(existing):
        parent = os.path.dirname(existing)
        if parent == existing:
            break
        existing = parent
    if not os.path.isdir(existing):
        raise ConfigError(source, key, f"{existing} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(source, key, f"{existing} is not writable")


class GatewayService(MultiService):
    """
    The whole gateway; its parts are reachable for tests and the shim.

    @ivar freeze_heap: on start, collect garbage once, then move every object left (modules,
        classes, the config: some 60 000 of them) out of the garbage collector's sight
        (``gc.freeze``). Its full collections then scan only what was made since, and stop
        pausing every session's calls for 20 to 25 ms a few times a minute under load.
        ``makeService`` sets it; tests leave it off (a test process keeps what it froze).
    """

    freeze_heap = False

    def __init__(self, config: Config) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.config = config
        #: Installed once the reactor runs (``makeService`` sets it; tests leave the
        #: process's signal handlers alone).
        self.stop_signals: StopSignals | None = None
        self.app: GatewayApp | None = None
        self.listener: ListenerService | None = None
        self.sessions: SessionManager | None = None
        self.catalog: ToolsCatalog | None = None
        #: Where children start and stop (``mcpgw.cpugroup``), made once the gateway runs.
        self.idle_group: IdleGroup | None = None

    def startService(self) -> None:
        # After twistd has shed privileges: the sandbox is the runtime user's, and so are
        # the probes' children (SPEC 5: probed once the listener is up).
        os.makedirs(self.config.session.sandbox_dir, mode=0o700, exist_ok=True)
        if self.idle_group is not None and any(
            startup_nice(service) for service in self.config.enabled_services.values()
        ):
            log.info("{how}", how=self.idle_group.open())
        super().startService()  # type: ignore[no-untyped-call]
        if self.freeze_heap:
            gc.collect()
            gc.freeze()
        if self.catalog is not None:
            probed = self.catalog.probe_all()
            if self.sessions is not None:
                sessions = self.sessions
                probed.addCallback(lambda _: sessions.start_spares())
        if self.stop_signals is not None:
            self.stop_signals.reactor.callWhenRunning(self.stop_signals.install)

    def stopService(self) -> Deferred[None]:
        stopped: Deferred[None] = super().stopService()  # type: ignore[no-untyped-call]
        idle_group = self.idle_group
        if idle_group is not None:

            def close(result: object) -> object:
                idle_group.close()  # once every child has ended
                return result

            stopped.addBoth(close)
        return stopped


class StopSignals:
    """
    SIGTERM and SIGINT handlers that stop the reactor once. Twisted's own call
    ``reactor.stop`` for every signal, and a second one while the gateway stops its children
    (``timeout`` passing a signal on, Ctrl-C twice) logged ``ReactorNotRunning`` with a
    traceback. A repeated signal is logged and ignored. SIGINT is taken over only from the
    reactor (a debugger's handler stays).
    """

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self.stopping = False

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self)
        if getattr(signal.getsignal(signal.SIGINT), "__self__", None) is self.reactor:
            signal.signal(signal.SIGINT, self)

    def __call__(self, signum: int, frame: object = None) -> None:
        name = signal.Signals(signum).name
        if self.stopping:
            log.info("received {signal} while stopping: still stopping", signal=name)
            return
        self.stopping = True
        log.info("received {signal}, shutting down", signal=name)
        # twistd re-raises it once stopped, as with its own handlers.
        self.reactor._exitSignal = signum
        self.reactor.callFromThread(self.reactor.stop)


def build_service(
    reactor: Any,
    config: Config,
    environ: Mapping[str, str],
    server_factory: ServerFactory | None = None,
) -> GatewayService:
    """Wire the gateway for ``config``."""
    from mcpgw.ratelimit import RateLimiter, client_ip

    top = GatewayService(config)
    if config.logging.file:
        # Opened now, so the file also gets what is logged while the gateway starts.
        file_log = FileLogService(config.logging.file, config.logging.level)
        file_log.open()
        file_log.setServiceParent(top)  # type: ignore[no-untyped-call]
    if config.unknown_keys:
        log.warn(
            "{source}: unknown configuration keys ignored: {keys}",
            source=config.source,
            keys=", ".join(config.unknown_keys),
        )
    if server_factory is None:
        top.idle_group = IdleGroup()
        server_factory = mcp_server_factory(
            reactor, config.session.sandbox_dir, environ, idle_group=top.idle_group
        )
    services = config.enabled_services
    catalog = ToolsCatalog(services, server_factory)
    catalog.setServiceParent(top)  # type: ignore[no-untyped-call]
    sessions = SessionManager(reactor, services, config.session, server_factory, spares=True)
    sessions.on_tools_changed = catalog.invalidate
    sessions.setServiceParent(top)  # type: ignore[no-untyped-call]

    limiter = RateLimiter(reactor, config.rate_limiting)
    limiter.setServiceParent(top)  # type: ignore[no-untyped-call]

    from mcpgw.swaig_bridge import SwaigBridge

    swaig = SwaigBridge(config, catalog, sessions)
    gateway = GatewayApp(reactor, config, sessions, catalog, limiter, swaig)
    trusted = config.server.trusted_proxies
    # Parsing addresses costs more than the rest of the rate-limit check: keep recent answers.
    cached_ip = lru_cache(maxsize=4096)(client_ip)

    def ip_of(request: Any) -> str:
        peer = request.getClientAddress()
        forwarded = request.requestHeaders.getRawHeaders(b"x-forwarded-for") if trusted else None
        return cached_ip(
            getattr(peer, "host", ""),
            b",".join(forwarded).decode("latin-1") if forwarded else None,
            trusted,
        )

    root = GatewayResource(
        gateway.resource(),
        Credentials.from_config(config),
        client_ip=ip_of,
        on_auth_failure=lambda ip: limiter.check("default", "-", ip),
        render_call=gateway.render_call,
    )
    site = GatewaySite(root, config.server.max_body_bytes, reactor=reactor)
    endpoint, scheme = server_endpoint(reactor, config)

    def listening(host: str, port: int) -> None:
        swaig.default_base = f"{scheme}://{url_host(host)}:{port}"

    listener = ListenerService(endpoint, site, scheme, on_listening=listening)
    listener.setServiceParent(top)  # type: ignore[no-untyped-call]
    top.app, top.listener, top.sessions, top.catalog = gateway, listener, sessions, catalog
    return top


def makeService(options: Options) -> MultiService:
    from twisted.internet import reactor

    top = build_service(reactor, options["gateway_config"], os.environ)
    top.freeze_heap = True
    top.stop_signals = StopSignals(reactor)
    return top
