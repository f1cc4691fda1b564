"""Tests for L{mcpgw.catalog.ToolsCatalog} with fake servers."""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from mcpgw.catalog import ToolsCatalog
from mcpgw.config import ServiceConfig
from mcpgw.errors import ServiceUnavailable, UnknownService

from .fakes import FakeFactory


def make(factory: FakeFactory) -> ToolsCatalog:
    services = {
        "a": ServiceConfig(name="a", command=("x",)),
        "off": ServiceConfig(name="off", command=("x",), enabled=False),
    }
    return ToolsCatalog(services, factory)


class CatalogTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.factory = FakeFactory()
        self.catalog = make(self.factory)

    def tools(self, name: str = "a") -> Deferred[list[dict[str, object]]]:
        return Deferred.fromCoroutine(self.catalog.tools(name))

    def test_probe_once(self) -> None:
        """One probe per service: it starts, lists, stops; later reads start nothing."""
        self.assertEqual(self.catalog.state("a"), "pending")
        self.successResultOf(self.catalog.probe_all())
        self.assertEqual(len(self.factory.servers), 1)
        self.assertTrue(self.factory.servers[0].stopped)
        self.assertEqual(self.successResultOf(self.tools())[0]["name"], "echo")
        self.assertEqual(len(self.factory.servers), 1)
        self.assertEqual(self.catalog.state("a"), "ready")

    def test_disabled_and_unknown(self) -> None:
        """Disabled and unknown services are not probed and are UnknownService."""
        self.successResultOf(self.catalog.probe_all())
        self.failureResultOf(self.tools("off"), UnknownService)
        self.failureResultOf(self.tools("nope"), UnknownService)

    def test_waits_for_probe_in_progress(self) -> None:
        """A request during the first probe waits for it rather than starting another."""
        self.factory.start_mode = "manual"
        self.catalog.probe_all()
        d = self.tools()
        self.assertNoResult(d)
        self.assertEqual(self.catalog.state("a"), "probing")
        started = self.factory.servers[0].started
        assert started is not None
        started.callback(None)
        self.assertEqual(len(self.successResultOf(d)), 1)
        self.assertEqual(len(self.factory.servers), 1)

    def test_failure_then_reprobe_on_request(self) -> None:
        """A failed probe answers ServiceUnavailable naming why; a later request re-probes."""
        self.factory.start_mode = "fail"
        self.successResultOf(self.catalog.probe_all())
        self.assertEqual(self.catalog.state("a"), "failed")
        f = self.failureResultOf(self.tools(), ServiceUnavailable)
        self.assertIn("exit code 1", f.value.message)
        self.factory.start_mode = "auto"
        self.assertEqual(len(self.successResultOf(self.tools())), 1)

    def test_list_changed_during_probe(self) -> None:
        """A change reported during a probe leads to one more probe, whose answer wins."""
        self.factory.start_mode = "manual"
        first = self.catalog.probe_all()
        self.catalog.invalidate("a")
        self.catalog.invalidate("a")
        self.factory.tools = [{"name": "v2", "inputSchema": {"type": "object"}}]
        started = self.factory.servers[0].started
        assert started is not None
        started.callback(None)
        self.assertEqual(len(self.factory.servers), 2)
        second = self.factory.servers[1].started
        assert second is not None
        second.callback(None)
        self.successResultOf(first)
        self.assertEqual([t["name"] for t in self.successResultOf(self.tools())], ["v2"])
        self.assertEqual(len(self.factory.servers), 2)

    def test_stop_stops_probes(self) -> None:
        """Stopping the catalog stops a probe still running."""
        self.factory.start_mode = "manual"
        self.catalog.startService()
        self.catalog.probe_all()
        self.successResultOf(self.catalog.stopService())
        self.assertTrue(self.factory.servers[0].stopped)

    def test_unknown_invalidate_ignored(self) -> None:
        """A change reported for an unknown service does nothing."""
        self.catalog.invalidate("nope")
        self.assertEqual(self.factory.servers, [])
