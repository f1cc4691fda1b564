"""
Tests for L{mcpgw.logs} and the security events of L{mcpgw.web}: level filtering, the log
file, and events whose text is one JSON object.
"""

from __future__ import annotations

import json
import os
from typing import Any

from twisted.internet.testing import EventLoggingObserver
from twisted.logger import Logger, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from mcpgw import logs
from mcpgw.logs import FileLogService, filtered
from mcpgw.web import security_event


class FilterTests(SynchronousTestCase):
    def test_level_filters(self) -> None:
        """An observer at WARNING sees warnings and errors, not info or debug."""
        seen: list[Any] = []
        log = Logger(observer=filtered(seen.append, "warning"))
        log.debug("d")
        log.info("i")
        log.warn("w")
        log.error("e")
        log.critical("c")
        self.assertEqual([formatEvent(e) for e in seen], ["w", "e", "c"])

    def test_debug_sees_all(self) -> None:
        """DEBUG (any case) lets every event through."""
        seen: list[Any] = []
        log = Logger(observer=filtered(seen.append, "Debug"))
        log.debug("d")
        log.info("i")
        self.assertEqual(len(seen), 2)


class FileTests(SynchronousTestCase):
    def test_file_service(self) -> None:
        """logging.file gets the gateway's events at its level while the service runs."""
        path = os.path.abspath(self.mktemp())
        service = FileLogService(path, "INFO")
        service.startService()
        log = Logger(namespace="test")
        log.info("hello {who}", who="file")
        log.debug("not shown")
        service.stopService()
        log.info("after stop")
        with open(path) as f:
            text = f.read()
        self.assertIn("hello file", text)
        self.assertNotIn("not shown", text)
        self.assertNotIn("after stop", text)


class SecurityEventTests(SynchronousTestCase):
    def test_json_text(self) -> None:
        """A security event is an INFO event whose text is one JSON object."""
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        security_event("auth_failed", ip="127.0.0.1", method="GET", path="/x")
        self.assertEqual(len(events), 1)
        body = json.loads(formatEvent(events[0]))
        self.assertEqual(
            body, {"event": "auth_failed", "ip": "127.0.0.1", "method": "GET", "path": "/x"}
        )
        self.assertEqual(events[0]["log_level"].name, "info")


class ThresholdTests(SynchronousTestCase):
    """
    Under the shim, C{stdout_observer} is the only observer (with C{logging.file}'s, at the
    same level), so the gateway's C{Logger} drops events below that level before building
    them, security events included.
    """

    def setUp(self) -> None:
        self.addCleanup(setattr, logs, "threshold", logs.threshold)
        self.addCleanup(setattr, logs, "stdout_level", logs.stdout_level)
        self.events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)

    def test_default_builds_everything(self) -> None:
        """Until the shim's observer is made (twistd, tests), every level is emitted."""
        logs.Logger().debug("debug event")
        self.assertEqual([e["log_format"] for e in self.events], ["debug event"])

    def test_shim_level_drops_below(self) -> None:
        """C{stdout_observer} at C{WARNING}: INFO events and security events are not built."""
        logs.stdout_level = "WARNING"
        logs.stdout_observer()
        log = logs.Logger()
        log.info("info event")
        security_event("tool_call", ip="127.0.0.1")
        log.warn("warning event")
        log.error("error event")
        self.assertEqual([e["log_format"] for e in self.events], ["warning event", "error event"])

    def test_shim_info_keeps_security_events(self) -> None:
        """At C{INFO} security events are emitted, debug events are not."""
        logs.stdout_level = "INFO"
        logs.stdout_observer()
        logs.Logger().debug("debug event")
        security_event("tool_call", ip="127.0.0.1")
        self.assertEqual(len(self.events), 1)
        self.assertEqual(json.loads(formatEvent(self.events[0]))["event"], "tool_call")
