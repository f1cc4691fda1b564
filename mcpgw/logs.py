# -*- test-case-name: tests.test_logs -*-
"""
The gateway's own log observers (SPEC 10).

``logging.level`` filters them; ``logging.file`` appends the same events to a file. Under the
console shim the stdout observer comes from ``stdout_observer`` (twistd's ``--logger``);
under ``twistd`` stdout or ``--logfile`` are twistd's own.

The gateway's modules log through ``Logger``, which drops an event below ``threshold`` before
building it: under the shim every observer filters at ``logging.level``, so at ``WARNING`` a
tool call's INFO ``tool_call`` event would cost a tenth of the call's CPU only to be thrown
away. Under ``twistd``, whose observers take every level, the threshold stays at DEBUG.
"""

from __future__ import annotations

import sys
from typing import IO, Any

from twisted.application.service import Service
from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogPublisher,
    textFileLogObserver,
)
from twisted.logger import Logger as _TwistedLogger

# The level of the shim's stdout observer; the shim sets it from the config before twistd
# builds its observer (twistd's ``--logger`` takes a factory without arguments).
stdout_level = "INFO"

#: Events below this level are dropped by ``Logger`` before they are built.
threshold = LogLevel.debug


class Logger(_TwistedLogger):
    """Twisted's ``Logger``, dropping events below ``threshold`` at once."""

    def emit(self, level: LogLevel, format: str | None = None, **kwargs: object) -> None:
        if level < threshold:
            return
        super().emit(level, format, **kwargs)


def level_named(level: str) -> LogLevel:
    """The ``LogLevel`` of a SPEC 3 level name (``DEBUG`` ... ``CRITICAL``)."""
    name = {"CRITICAL": "critical", "WARNING": "warn"}.get(level.upper(), level.lower())
    found: LogLevel = LogLevel.levelWithName(name)
    return found


def filtered(observer: ILogObserver, level: str) -> ILogObserver:
    """``observer`` seeing only events at ``level`` (a SPEC 3 level name) or above."""
    predicate = LogLevelFilterPredicate(defaultLogLevel=level_named(level))
    return FilteringLogObserver(observer, [predicate])


def stdout_observer() -> ILogObserver:
    """
    The console shim's observer: plain text on stdout, filtered by ``logging.level``. The
    shim's observers (this one and ``logging.file``'s) are the only ones, so events below
    that level are not built at all from now on (``threshold``).
    """
    global threshold
    threshold = level_named(stdout_level)
    return filtered(textFileLogObserver(sys.stdout), stdout_level)


class FileLogService(Service):
    """Appends the gateway's events to ``logging.file`` while the service runs."""

    def __init__(self, path: str, level: str) -> None:
        self._path = path
        self._level = level
        self._file: IO[str] | None = None
        self._observer: Any = None

    def open(self) -> None:
        """Start writing to the file (idempotent; also done by ``startService``)."""
        if self._file is not None:
            return
        self._file = open(self._path, "a", encoding="utf-8")
        self._observer = filtered(textFileLogObserver(self._file), self._level)
        globalLogPublisher.addObserver(self._observer)

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        self.open()

    def stopService(self) -> None:
        super().stopService()  # type: ignore[no-untyped-call]
        if self._observer is not None:
            globalLogPublisher.removeObserver(self._observer)
            self._observer = None
        if self._file is not None:
            self._file.close()
            self._file = None
