"""
Tests for L{mcpgw.sendnow}: writing to an idle Twisted file descriptor at once, over a real
pipe, with a L{MemoryReactor} to see whether the descriptor asked to be watched for writing.
"""

from __future__ import annotations

import fcntl
import os

from twisted.internet import fdesc
from twisted.internet.abstract import FileDescriptor
from twisted.internet.testing import MemoryReactor
from twisted.trial.unittest import SynchronousTestCase

from mcpgw.sendnow import send_now


class PipeWriter(FileDescriptor):
    """The write end of a non-blocking pipe, as Twisted's process writer is."""

    def __init__(self, reactor: MemoryReactor, fd: int) -> None:
        super().__init__(reactor)  # type: ignore[no-untyped-call]
        self.fd = fd
        self.connected = 1

    def fileno(self) -> int:
        return self.fd

    def writeSomeData(self, data: bytes) -> object:
        return fdesc.writeToFD(self.fd, data)  # type: ignore[no-untyped-call]


class SendNowTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactor()
        self.read_fd, write_fd = os.pipe()
        os.set_blocking(self.read_fd, False)
        os.set_blocking(write_fd, False)
        self.addCleanup(os.close, self.read_fd)
        self.addCleanup(os.close, write_fd)
        self.writer = PipeWriter(self.reactor, write_fd)

    def read(self) -> bytes:
        try:
            return os.read(self.read_fd, 1 << 20)
        except BlockingIOError:
            return b""

    def test_idle_descriptor_written_at_once(self) -> None:
        """Nothing queued: all is sent now and the reactor is not asked to watch for writing."""
        self.assertEqual(send_now(self.writer, b"one line\n"), b"")
        self.assertEqual(self.read(), b"one line\n")
        self.assertEqual(self.reactor.getWriters(), [])

    def test_queued_descriptor_left_alone(self) -> None:
        """With bytes queued, nothing is sent ahead of them."""
        self.writer.write(b"first\n")
        self.assertEqual(send_now(self.writer, b"second\n"), b"second\n")
        self.assertEqual(self.read(), b"")
        self.writer.write(b"second\n")
        self.writer.doWrite()
        self.assertEqual(self.read(), b"first\nsecond\n")

    def test_full_pipe_returns_the_rest(self) -> None:
        """What the pipe does not take is returned, and follows in order once queued."""
        fcntl.fcntl(self.writer.fd, fcntl.F_SETPIPE_SZ, 4096)
        data = bytes(range(256)) * 64  # 16 KiB
        rest = send_now(self.writer, data)
        self.assertTrue(0 < len(rest) < len(data), len(rest))
        self.assertEqual(send_now(self.writer, rest), rest)  # pipe full: nothing taken
        self.writer.write(rest)
        received = b""
        for _ in range(100):
            received += self.read()
            self.writer.doWrite()
            if len(received) == len(data):
                break
        self.assertEqual(received, data)

    def test_not_for_closed_or_foreign_transports(self) -> None:
        """A closing descriptor, a TLS one, or no descriptor at all gets the data back."""
        self.writer.disconnecting = True
        self.assertEqual(send_now(self.writer, b"x"), b"x")
        self.writer.disconnecting = False
        self.writer.connected = 0
        self.assertEqual(send_now(self.writer, b"x"), b"x")
        self.writer.connected = 1
        self.writer.TLS = True  # type: ignore[attr-defined]
        self.assertEqual(send_now(self.writer, b"x"), b"x")
        self.assertEqual(send_now(object(), b"x"), b"x")
        self.assertEqual(send_now(None, b"x"), b"x")
        self.assertEqual(self.read(), b"")
