# -*- test-case-name: tests.test_logs -*-
"""
The gateway's own log observers (SPEC 10).

``logging.level`` filters them; ``logging.file`` appends the same events to a file. Under the
console shim the stdout observer comes from ``stdout_observer`` (twistd's ``--logger``);
under ``twistd`` stdout or ``--logfile`` are twistd's own.
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

# The level of the shim's stdout observer; the shim sets it from the config before twistd
# builds its observer (twistd's ``--logger`` takes a factory without arguments).
stdout_level = "INFO"


def filtered(observer: ILogObserver, level: str) -> ILogObserver:
    """``observer`` seeing only events at ``level`` (a SPEC 3 level name) or above."""
    name = {"CRITICAL": "critical", "WARNING": "warn"}.get(level.upper(), level.lower())
    predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.levelWithName(name))
    return FilteringLogObserver(observer, [predicate])


def stdout_observer() -> ILogObserver:
    """The console shim's observer: plain text on stdout, filtered by ``logging.level``."""
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
