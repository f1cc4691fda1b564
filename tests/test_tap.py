"""
Tests for the twistd plugin and L{mcpgw.tap}: discovery, options, a dropin importing nothing.
"""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
from typing import Any

from twisted.application.service import IServiceMaker, Service
from twisted.internet.defer import Deferred
from twisted.plugin import getPlugins
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from mcpgw.tap import GatewayService, Options, StopSignals, makeService

from .configs import gateway_config


class PluginTests(SynchronousTestCase):
    def test_discovered(self) -> None:
        """getPlugins(IServiceMaker) finds mcp-gateway, a valid IServiceMaker."""
        makers = {p.tapname: p for p in getPlugins(IServiceMaker)}
        self.assertIn("mcp-gateway", makers)
        self.assertTrue(verifyObject(IServiceMaker, makers["mcp-gateway"]))

    def test_dropin_imports_nothing(self) -> None:
        """Loading the dropin imports no reactor and nothing of ours (--reactor works)."""
        code = (
            "import sys, twisted.plugins.mcpgw_plugin as p;"
            "print('twisted.internet.reactor' in sys.modules,"
            " any(m.startswith('mcpgw') or m.startswith('klein') for m in sys.modules))"
        )
        out = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        )
        self.assertEqual(out.stdout.split(), ["False", "False"])


class OptionsTests(SynchronousTestCase):
    def test_defaults_and_config(self) -> None:
        """-c names the config; it is loaded and validated while parsing."""
        path = gateway_config(self.mktemp_dir())
        options = Options()
        options.parseOptions(["-c", path])
        config = options["gateway_config"]
        self.assertEqual(dict(options), {"config": path, "gateway_config": config})
        self.assertEqual(list(config.services), ["notes"])

    def test_bad_config_usage_error(self) -> None:
        """A config mistake is a usage error: one line naming the file and the key."""
        directory = self.mktemp_dir()
        path = gateway_config(directory, server={"port": "eighty"})
        options = Options()
        e = self.assertRaises(usage.UsageError, options.parseOptions, ["-c", path])
        self.assertIn("server.port", str(e))
        self.assertNotIn("\n", str(e))

    def test_missing_config(self) -> None:
        """A missing config file is a usage error naming it."""
        e = self.assertRaises(
            usage.UsageError, Options().parseOptions, ["-c", "/nonexistent/config.json"]
        )
        self.assertIn("/nonexistent/config.json", str(e))

    def mktemp_dir(self) -> str:
        import os

        path = self.mktemp()
        os.makedirs(path)
        return os.path.abspath(path)


class FreezeHeapTests(SynchronousTestCase):
    """
    The service C{twistd} runs freezes the heap left after startup (C{gc.freeze}), so that
    full collections no longer scan the modules' tens of thousands of objects.
    """

    def service(self, freeze: bool) -> GatewayService:
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        options = Options()
        options.parseOptions(["-c", gateway_config(directory, services={})])
        top = GatewayService(options["gateway_config"])
        top.freeze_heap = freeze
        self.addCleanup(gc.unfreeze)
        self.addCleanup(top.stopService)
        return top

    def test_frozen_on_start(self) -> None:
        """With C{freeze_heap}, starting leaves the objects of that moment frozen."""
        gc.unfreeze()
        self.service(freeze=True).startService()
        self.assertGreater(gc.get_freeze_count(), 1000)

    def test_not_frozen_by_default(self) -> None:
        """Tests (and anything building the service directly) leave the heap alone."""
        gc.unfreeze()
        self.service(freeze=False).startService()
        self.assertEqual(gc.get_freeze_count(), 0)

    def test_make_service_freezes(self) -> None:
        """C{makeService}, what twistd and the shim run, turns it on."""
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        options = Options()
        options.parseOptions(["-c", gateway_config(directory, services={})])
        top = makeService(options)
        self.assertIsInstance(top, GatewayService)
        self.assertTrue(getattr(top, "freeze_heap", False))
        stop_signals = getattr(top, "stop_signals", None)
        self.assertIsInstance(stop_signals, StopSignals)
        from twisted.internet import reactor

        self.assertIs(stop_signals.reactor, reactor)  # type: ignore[union-attr]


class RecordingReactor:
    """What C{StopSignals} uses of a reactor, recorded."""

    _exitSignal: int | None = None

    def __init__(self) -> None:
        self.calls: list[object] = []
        self.when_running: list[object] = []

    def callFromThread(self, f: object) -> None:
        self.calls.append(f)

    def callWhenRunning(self, f: object) -> None:
        self.when_running.append(f)

    def stop(self) -> None:
        pass

    def sigInt(self, signum: int, frame: object) -> None:
        pass


class StopSignalsTests(SynchronousTestCase):
    """
    SIGTERM and SIGINT stop the reactor once; a repeated one while stopping is ignored
    (Twisted's handlers stopped it again and logged C{ReactorNotRunning}).
    """

    def setUp(self) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT):
            self.addCleanup(signal.signal, signum, signal.getsignal(signum))
        self.reactor = RecordingReactor()

    def test_once(self) -> None:
        """The first signal stops the reactor and is noted for twistd; the next ones not."""
        handler = StopSignals(self.reactor)
        handler(signal.SIGTERM)
        handler(signal.SIGINT)
        handler(signal.SIGTERM)
        self.assertEqual(self.reactor.calls, [self.reactor.stop])
        self.assertEqual(self.reactor._exitSignal, signal.SIGTERM)

    def test_install(self) -> None:
        """SIGTERM always; SIGINT only where the reactor had it."""
        handler = StopSignals(self.reactor)
        signal.signal(signal.SIGINT, self.reactor.sigInt)
        handler.install()
        self.assertIs(signal.getsignal(signal.SIGTERM), handler)
        self.assertIs(signal.getsignal(signal.SIGINT), handler)
        other = StopSignals(RecordingReactor())
        other.install()
        self.assertIs(signal.getsignal(signal.SIGTERM), other)
        self.assertIs(signal.getsignal(signal.SIGINT), handler)

    def test_installed_once_running(self) -> None:
        """The service installs them once the reactor runs (after Twisted's own)."""
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        options = Options()
        options.parseOptions(["-c", gateway_config(directory, services={})])
        top = GatewayService(options["gateway_config"])
        top.stop_signals = StopSignals(self.reactor)
        self.addCleanup(top.stopService)
        top.startService()
        self.assertEqual(self.reactor.when_running, [top.stop_signals.install])


class RecordedIdleGroup:
    """Records when the service opens and closes its idle CPU group."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def open(self) -> str:
        self.calls.append("open")
        return "opened"

    def close(self) -> None:
        self.calls.append("close")


class IdleGroupServiceTests(SynchronousTestCase):
    """
    The gateway opens its idle CPU group (C{mcpgw.cpugroup}) when it starts, where some
    service would use it, and closes it once its children have ended.
    """

    def service(self, **sandbox: Any) -> tuple[GatewayService, RecordedIdleGroup]:
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        services = {"notes": {"command": [sys.executable, "srv.py"], **sandbox}}
        options = Options()
        options.parseOptions(["-c", gateway_config(directory, services=services)])
        top = GatewayService(options["gateway_config"])
        top.idle_group = group = RecordedIdleGroup()  # type: ignore[assignment]
        return top, group

    def test_open_then_close(self) -> None:
        """Opened on start; closed once the other services have stopped."""
        top, group = self.service()
        children: Deferred[None] = Deferred()

        class Children(Service):
            def stopService(self) -> Deferred[None]:
                super().stopService()  # type: ignore[no-untyped-call]
                return children

        Children().setServiceParent(top)  # type: ignore[no-untyped-call]
        top.startService()
        self.assertEqual(group.calls, ["open"])
        stopped = top.stopService()
        self.assertEqual(group.calls, ["open"])
        children.callback(None)
        self.successResultOf(stopped)
        self.assertEqual(group.calls, ["open", "close"])

    def test_not_used(self) -> None:
        """No service lowers its starting children (C{startup_nice} 0): not opened."""
        top, group = self.service(sandbox={"resource_limits": {"startup_nice": 0}})
        top.startService()
        self.successResultOf(top.stopService())
        self.assertEqual(group.calls, ["close"])
