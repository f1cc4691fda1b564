# -*- test-case-name: tests.test_sendnow -*-
"""
Writing to an idle Twisted file descriptor at once, rather than on the reactor's next turn.

A Twisted ``FileDescriptor`` only queues a write: it asks the reactor to watch the descriptor
for writability (an epoll change), sends on the next turn, then stops watching (another
change). On the call path that is a reactor turn and two system calls more, twice per call
(the child's stdin, the HTTP answer), and the answer waits for the rest of the turn that made
it. When nothing is queued, writing at once keeps the order of the bytes and loses nothing:
what the descriptor does not take now is queued behind, as usual.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.abstract import FileDescriptor


def send_now(descriptor: object, data: bytes) -> bytes:
    """
    Send ``data`` to ``descriptor`` at once when it is an open ``FileDescriptor`` with nothing
    queued; return what was not sent (all of it for anything else), for the caller to pass to
    the transport's ``write``. A write error is not raised: the queued rest meets it again
    and Twisted reports it as usual (``writeSomeData`` returns it).
    """
    if not isinstance(descriptor, FileDescriptor):
        return data
    fd: Any = descriptor
    if (
        not fd.connected
        or fd.disconnecting
        or fd._writeDisconnected
        or getattr(fd, "TLS", False)
        or len(fd.dataBuffer) != fd.offset
        or fd._tempDataBuffer
    ):
        return data
    written = fd.writeSomeData(data)
    if isinstance(written, int) and written > 0:
        return data[written:]
    return data
