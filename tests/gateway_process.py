"""
Runs the real ``mcp-gateway`` console script (or ``twistd``) as a child process for
end-to-end tests: waits for its ``listening on`` line, stops it with SIGTERM, reports its exit.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import sys
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure

LISTENING = re.compile(rb"listening on (https?)://([^\s]+):(\d+)")


def gateway_argv(config: str) -> list[str]:
    """The installed console script, or the same entry point through this interpreter."""
    script = os.path.join(os.path.dirname(sys.executable), "mcp-gateway")
    if not os.path.exists(script):
        found = shutil.which("mcp-gateway")
        script = found or ""
    if script:
        return [script, "-c", config]
    return [sys.executable, "-c", "from mcpgw.cli import console; console()", "-c", config]


class GatewayProcess(ProcessProtocol):
    """One gateway process; ``url`` fires with its base URL once it listens."""

    def __init__(self) -> None:
        self.stdout = b""
        self.stderr = b""
        self.url: Deferred[str] = Deferred()
        self.ended: Deferred[int | None] = Deferred()
        self.exit_code: int | None = None
        self.signal: int | None = None
        self._timer: Any = None

    @classmethod
    def start(
        cls, argv: list[str], cwd: str, env: dict[str, str] | None = None, timeout: float = 60
    ) -> GatewayProcess:
        proto = cls()
        environ = dict(os.environ)
        environ.update(env or {})
        reactor.spawnProcess(proto, argv[0], argv, env=environ, path=cwd)
        proto._timer = reactor.callLater(timeout, proto._too_slow)
        return proto

    def _too_slow(self) -> None:
        self._timer = None
        if not self.url.called:
            self.url.errback(RuntimeError("gateway did not listen in time:\n" + self.output()))
        self.kill("KILL")

    def output(self) -> str:
        return (self.stdout + self.stderr).decode("utf-8", "replace")

    def outReceived(self, data: bytes) -> None:
        self.stdout += data
        match = LISTENING.search(self.stdout)
        if match and not self.url.called:
            scheme, host, port = (g.decode() for g in match.groups())
            self.url.callback(f"{scheme}://{host}:{port}")

    def errReceived(self, data: bytes) -> None:
        self.stderr += data

    def kill(self, sig: str = "TERM") -> None:
        try:
            assert self.transport is not None
            self.transport.signalProcess(sig)
        except Exception:  # already gone
            pass

    def processEnded(self, reason: Failure) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if reason.check(ProcessDone):
            self.exit_code = 0
        elif reason.check(ProcessTerminated):
            self.exit_code = reason.value.exitCode
            self.signal = reason.value.signal
        if not self.url.called:
            self.url.errback(RuntimeError("gateway exited before listening:\n" + self.output()))
            self.url.addErrback(lambda f: None)
        self.ended.callback(self.exit_code)

    async def stop(self, timeout: float = 15) -> int | None:
        """SIGTERM, then wait for the exit (SIGKILL after ``timeout``)."""
        if not self.ended.called:
            self.kill("TERM")
            killer = reactor.callLater(timeout, self.kill, "KILL")
            try:
                await self.ended
            finally:
                if killer.active():
                    killer.cancel()
        return self.exit_code


def processes_under(directory: str) -> list[int]:
    """PIDs of live processes whose working directory is inside ``directory``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cwd = os.readlink(f"/proc/{entry}/cwd")
        except OSError:
            continue
        if cwd == directory or cwd.startswith(directory.rstrip("/") + "/"):
            found.append(int(entry))
    return found


__all__ = ["GatewayProcess", "gateway_argv", "processes_under", "signal"]
