"""
Test doubles for process code: a reactor that records ``spawnProcess`` and a fake transport.

``FakeProcessReactor`` is a ``MemoryReactor`` and a ``task.Clock``; ``spawnProcess`` records its
arguments, connects the protocol to a ``FakeProcessTransport`` and returns it. The transport
records what is written, stdin closing and signals, and its helpers play the child's side:
``reply()``, ``exit()``, ``close_output()``, ``end()``.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.interfaces import IProcessTransport, IReactorProcess
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor
from twisted.python.failure import Failure
from zope.interface import implementer


@implementer(IProcessTransport)
class FakeProcessTransport:
    def __init__(self, protocol: ProcessProtocol, pid: int) -> None:
        self.protocol = protocol
        self.pid: int | None = pid
        self.written: list[bytes] = []
        self.stdin_closed = False
        self.lost = False
        self.signals: list[str] = []
        self.exited = False
        self.closed_fds: set[int] = set()

    # IProcessTransport / ITransport
    def write(self, data: bytes) -> None:
        self.written.append(data)

    def writeSequence(self, data: list[bytes]) -> None:
        self.written.extend(data)

    def writeToChild(self, childFD: int, data: bytes) -> None:
        self.written.append(data)

    def closeStdin(self) -> None:
        self.stdin_closed = True

    def closeStdout(self) -> None:
        pass

    def closeStderr(self) -> None:
        pass

    def closeChildFD(self, descriptor: int) -> None:
        pass

    def loseConnection(self) -> None:
        self.lost = True
        self.stdin_closed = True

    def signalProcess(self, signalID: Any) -> None:
        self.signals.append(signalID)

    def getPeer(self) -> Any:
        return None

    def getHost(self) -> Any:
        return None

    # the child's side
    def messages(self) -> list[dict[str, Any]]:
        """Every message written to the child's stdin, decoded (one per line)."""
        lines = b"".join(self.written).split(b"\n")
        return [json.loads(line) for line in lines if line]

    def last(self) -> dict[str, Any]:
        return self.messages()[-1]

    def send(self, message: dict[str, Any]) -> None:
        """The child writes one message on stdout."""
        self.protocol.childDataReceived(1, json.dumps(message).encode() + b"\n")

    def reply(self, request_id: int, result: Any) -> None:
        self.send({"jsonrpc": "2.0", "id": request_id, "result": result})

    def exit(
        self, code: int | None = 0, signal: int | None = None, *, output_open: bool = False
    ) -> None:
        """
        The leader exits (``processExited``) with ``code`` or ``signal``; then its stdout and
        stderr reach end of file, unless ``output_open`` (still to be read, or held open by a
        grandchild; ``close_output()`` closes them later).
        """
        self.exited = True
        if code == 0 and signal is None:
            reason = Failure(ProcessDone(0))
        else:
            reason = Failure(ProcessTerminated(code, signal))
        self._reason = reason
        self.pid = None
        self.protocol.processExited(reason)
        if not output_open:
            self.close_output()

    def close_output(self) -> None:
        """The child's stdout and stderr reach end of file (``childConnectionLost``)."""
        for fd in (1, 2):
            if fd not in self.closed_fds:
                self.closed_fds.add(fd)
                self.protocol.childConnectionLost(fd)

    def end(self) -> None:
        """Its pipes closed too (``childConnectionLost`` for each, then ``processEnded``)."""
        self.close_output()
        self.protocol.processEnded(self._reason)


@implementer(IReactorProcess)
class FakeProcessReactor(MemoryReactor, Clock):
    def __init__(self) -> None:
        MemoryReactor.__init__(self)
        Clock.__init__(self)
        self.spawned: list[dict[str, Any]] = []
        self.transports: list[FakeProcessTransport] = []
        self.next_pid = 4242
        self.spawn_error: Exception | None = None

    def spawnProcess(  # type: ignore[override]
        self,
        processProtocol: ProcessProtocol,
        executable: str,
        args: Any = (),
        env: Any = None,
        path: Any = None,
        uid: Any = None,
        gid: Any = None,
        usePTY: bool = False,
        childFDs: Any = None,
        **kwargs: Any,
    ) -> FakeProcessTransport:
        if self.spawn_error is not None:
            raise self.spawn_error
        self.spawned.append(
            {
                "executable": executable,
                "args": list(args),
                "env": env,
                "path": path,
                "uid": uid,
                "gid": gid,
                "usePTY": usePTY,
                "childFDs": childFDs,
            }
        )
        transport = FakeProcessTransport(processProtocol, self.next_pid)
        self.next_pid += 1
        self.transports.append(transport)
        processProtocol.makeConnection(transport)
        return transport
