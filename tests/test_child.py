"""
Tests for L{mcpgw.child.MCPChildProtocol}: framing, correlation, server requests, stderr and
the end of the process, driven through a fake process transport.
"""

from __future__ import annotations

from twisted.internet.defer import CancelledError
from twisted.internet.interfaces import IProcessTransport
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from mcpgw.child import MCPChildProtocol, encode_message
from mcpgw.errors import ChildFailed, JsonRpcError
from tests.fake_process import FakeProcessTransport


class ChildProtocolTests(SynchronousTestCase):
    """L{MCPChildProtocol} over a fake transport."""

    def setUp(self) -> None:
        self.changes: list[None] = []
        self.exits: list[str] = []
        self.broken: list[str] = []
        self.ended: list[None] = []
        self.protocol = MCPChildProtocol(
            "srv",
            1000,
            on_tools_changed=lambda: self.changes.append(None),
            on_exited=self.exits.append,
            on_ended=lambda: self.ended.append(None),
            on_broken=self.broken.append,
        )
        self.transport = FakeProcessTransport(self.protocol, 99)
        self.protocol.makeConnection(self.transport)
        self.events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)

    def out(self, data: bytes) -> None:
        self.protocol.childDataReceived(1, data)

    def test_fake_transport_is_a_process_transport(self) -> None:
        """The fake transport provides C{IProcessTransport}."""
        self.assertTrue(verifyObject(IProcessTransport, self.transport))

    def test_request_written_compact(self) -> None:
        """A request is one compact JSON line with an increasing integer id."""
        self.protocol.request("tools/list", {})
        self.protocol.request("ping")
        self.assertEqual(
            b"".join(self.transport.written),
            b'{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{}}\n'
            b'{"jsonrpc":"2.0","id":2,"method":"ping"}\n',
        )

    def test_encode_escapes_newlines(self) -> None:
        """A newline inside a string never splits the message."""
        self.assertEqual(encode_message({"t": "a\nb"}).count(b"\n"), 1)

    def test_split_chunks_and_crlf(self) -> None:
        """
        Responses split across chunks, several per chunk, with C{\\r\\n} endings and blank
        lines, are each delivered once.
        """
        _, first = self.protocol.request("a")
        _, second = self.protocol.request("b")
        self.out(b'{"jsonrpc":"2.0","id":2,"res')
        self.out(b'ult":{"x":2}}\r\n\n  \n{"jsonrpc":"2.0",')
        self.assertEqual(self.successResultOf(second), {"x": 2})
        self.assertNoResult(first)
        self.out(b'"id":1,"result":{"x":1}}\n')
        self.assertEqual(self.successResultOf(first), {"x": 1})

    def test_error_response(self) -> None:
        """An C{error} response fails the request with C{JsonRpcError} (code, message, data)."""
        _, d = self.protocol.request("tools/call")
        self.transport.send(
            {"jsonrpc": "2.0", "id": 1, "error": {"code": -32000, "message": "no", "data": [1]}}
        )
        error = self.failureResultOf(d, JsonRpcError).value
        self.assertEqual((error.code, error.message, error.data), (-32000, "no", [1]))

    def test_string_id_is_not_ours(self) -> None:
        """A response with id C{"1"} does not answer our request 1."""
        _, d = self.protocol.request("a")
        self.transport.send({"jsonrpc": "2.0", "id": "1", "result": {}})
        self.assertNoResult(d)
        self.assertEqual(self.protocol.pending_ids, [1])

    def test_server_request_not_a_response(self) -> None:
        """
        A server request that reuses our pending id is answered, not taken for the response
        to our request.
        """
        _, d = self.protocol.request("a")
        self.transport.send({"jsonrpc": "2.0", "id": 1, "method": "ping"})
        self.assertNoResult(d)
        self.assertEqual(self.transport.last(), {"jsonrpc": "2.0", "id": 1, "result": {}})

    def test_ping_answered(self) -> None:
        """A server C{ping} with id 0 gets C{{}} with that id."""
        self.transport.send({"jsonrpc": "2.0", "id": 0, "method": "ping"})
        self.assertEqual(self.transport.messages(), [{"jsonrpc": "2.0", "id": 0, "result": {}}])

    def test_other_server_requests_refused(self) -> None:
        """
        C{roots/list}, C{sampling/createMessage}, C{elicitation/create} and unknown methods
        get -32601 with the server's id verbatim.
        """
        methods = ["roots/list", "sampling/createMessage", "elicitation/create", "x/y"]
        for index, method in enumerate(methods):
            self.transport.send({"jsonrpc": "2.0", "id": f"s{index}", "method": method})
        answers = self.transport.messages()
        self.assertEqual([a["id"] for a in answers], ["s0", "s1", "s2", "s3"])
        self.assertEqual({a["error"]["code"] for a in answers}, {-32601})

    def test_non_json_skipped(self) -> None:
        """Lines that are not JSON, or not JSON objects, are logged and skipped."""
        _, d = self.protocol.request("a")
        self.out(b"Starting server...\n[1,2]\n42\n")
        self.out(b'{"jsonrpc":"2.0","id":1,"result":{}}\n')
        self.assertEqual(self.successResultOf(d), {})
        warnings = [e for e in self.events if e.get("log_level").name == "warn"]
        self.assertEqual(len(warnings), 3)
        self.assertEqual(warnings[0]["line"], b"Starting server...")

    def test_deeply_nested_line_skipped(self) -> None:
        """A line nested beyond the JSON parser's reach is skipped like garbage."""
        self.protocol.max_line_bytes = 1_000_000
        _, d = self.protocol.request("a")
        self.out(b"[" * 200_000 + b"]" * 200_000 + b"\n")
        self.out(b'{"jsonrpc":"2.0","id":1,"result":{}}\n')
        self.assertEqual(self.successResultOf(d), {})

    def test_notifications(self) -> None:
        """
        C{tools/list_changed} calls the callback; progress and log notifications are
        logged and not answered.
        """
        self.transport.send({"jsonrpc": "2.0", "method": "notifications/tools/list_changed"})
        self.transport.send(
            {
                "jsonrpc": "2.0",
                "method": "notifications/message",
                "params": {"level": "info", "data": "hello"},
            }
        )
        self.transport.send(
            {"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progress": 1}}
        )
        self.assertEqual(len(self.changes), 1)
        self.assertEqual(self.transport.written, [])
        self.assertIn("hello", [e.get("data") for e in self.events])
        self.assertIn(1, [e.get("progress") for e in self.events])

    def test_overlong_line_fails_every_pending(self) -> None:
        """
        A line longer than the maximum fails every pending request with C{ChildFailed},
        reports the child broken and ignores what follows.
        """
        _, first = self.protocol.request("a")
        _, second = self.protocol.request("b")
        self.out(b"x" * 600)
        self.assertNoResult(first)
        self.out(b"y" * 600)
        for d in (first, second):
            error = self.failureResultOf(d, ChildFailed).value
            self.assertIn("longer than 1000 bytes", error.message)
        self.assertEqual(len(self.broken), 1)
        self.assertFalse(self.protocol.usable)
        self.out(b'\n{"jsonrpc":"2.0","method":"notifications/tools/list_changed"}\n')
        self.assertEqual(self.changes, [])
        self.assertTrue(any(e.get("log_level").name == "error" for e in self.events))

    def test_overlong_complete_line(self) -> None:
        """A complete over-long line in one chunk fails the pending requests too."""
        _, d = self.protocol.request("a")
        self.out(b"z" * 1001 + b"\n")
        self.failureResultOf(d, ChildFailed)

    def test_line_at_maximum_accepted(self) -> None:
        """A line of exactly the maximum length (plus C{\\r\\n}) is accepted."""
        _, d = self.protocol.request("a")
        head = b'{"jsonrpc":"2.0","id":1,"result":{"t":"'
        tail = b'"}}'
        line = head + b"p" * (1000 - len(head) - len(tail)) + tail
        self.out(line + b"\r\n")
        self.assertEqual(len(self.successResultOf(d)["t"]), 1000 - len(head) - len(tail))

    def test_request_after_break_fails(self) -> None:
        """Once broken, new requests fail at once."""
        self.out(b"x" * 2000)
        _, d = self.protocol.request("a")
        self.failureResultOf(d, ChildFailed)

    def test_stderr_logged_and_tail_bounded(self) -> None:
        """
        stderr lines are logged as C{[server] line} events with C{stream="stderr"}; the tail
        keeps only the last lines.
        """
        for i in range(30):
            self.protocol.childDataReceived(2, f"line {i}\r\n".encode())
        self.protocol.childDataReceived(2, b"partial")
        stderr = [e for e in self.events if e.get("stream") == "stderr"]
        self.assertEqual(len(stderr), 30)
        self.assertEqual((stderr[0]["server"], stderr[0]["line"]), ("srv", "line 0"))
        tail = self.protocol.stderr_tail().split("\n")
        self.assertEqual(tail[0], "line 10")
        self.assertEqual(len(tail), 20)

    def test_stderr_bytes_bounded(self) -> None:
        """An endless stderr line is logged in pieces and the tail stays under its byte cap."""
        for _ in range(10):
            self.protocol.childDataReceived(2, b"e" * 3000)
        self.assertLessEqual(len(self.protocol.stderr_tail()), 4096 + 20)

    def test_exit_fails_pending_at_once(self) -> None:
        """
        The process exiting (its stdout and stderr at end of file, before C{processEnded})
        fails every pending request with C{ChildFailed} naming the exit code, carrying the
        stderr tail.
        """
        _, d = self.protocol.request("a")
        self.protocol.childDataReceived(2, b"boom\n")
        self.transport.exit(3)
        error = self.failureResultOf(d, ChildFailed).value
        self.assertEqual(error.message, "MCP server 'srv' exited with code 3")
        self.assertEqual(error.stderr_tail, "boom")
        self.assertEqual(self.exits, ["exited with code 3"])
        self.assertEqual(self.ended, [])
        self.transport.end()
        self.assertEqual(self.ended, [None])
        self.assertEqual(self.exits, ["exited with code 3"])

    def test_response_read_after_exit(self) -> None:
        """
        A response still in the stdout pipe when the exit is reported completes its request:
        C{on_exited} is told at once, but pending requests wait for the end of the output.
        """
        _, d = self.protocol.request("a")
        self.transport.exit(0, output_open=True)
        self.assertEqual(self.exits, ["exited with code 0"])
        self.assertFalse(self.protocol.usable)
        self.assertNoResult(d)
        self.transport.reply(1, {"ok": True})
        self.assertEqual(self.successResultOf(d), {"ok": True})
        self.transport.close_output()
        self.transport.end()
        self.assertEqual(self.exits, ["exited with code 0"])

    def test_stderr_read_after_exit_in_tail(self) -> None:
        """
        stderr read after the exit (the end of a traceback, a last line with no newline)
        is in the C{ChildFailed} of the requests failed at the end of the output.
        """
        _, d = self.protocol.request("a")
        self.protocol.childDataReceived(2, b"Traceback (most recent call last):\n")
        self.transport.exit(1, output_open=True)
        self.protocol.childDataReceived(2, b'  File "x"\nValueError: last words')
        self.protocol.childConnectionLost(1)
        self.assertNoResult(d)
        self.protocol.childConnectionLost(2)
        error = self.failureResultOf(d, ChildFailed).value
        self.assertEqual(error.message, "MCP server 'srv' exited with code 1")
        self.assertEqual(
            error.stderr_tail.splitlines(),
            ["Traceback (most recent call last):", '  File "x"', "ValueError: last words"],
        )

    def test_output_closed_before_exit(self) -> None:
        """Output at end of file before the exit is seen: requests fail at the exit."""
        _, d = self.protocol.request("a")
        self.transport.close_output()
        self.assertNoResult(d)
        self.transport.exit(2, output_open=True)
        self.assertEqual(self.failureResultOf(d, ChildFailed).value.stderr_tail, "")

    def test_report_exit_without_end_of_output(self) -> None:
        """
        C{report_exit} (output held open by a grandchild) fails pending requests at once
        after the exit, only once; before the exit it does nothing.
        """
        _, d = self.protocol.request("a")
        self.protocol.report_exit()
        self.assertNoResult(d)
        self.transport.exit(None, 9, output_open=True)
        self.protocol.report_exit()
        self.assertIn("killed by signal 9", self.failureResultOf(d, ChildFailed).value.message)
        self.protocol.report_exit()
        self.transport.end()
        self.assertEqual(self.ended, [None])

    def test_process_ended_reports(self) -> None:
        """C{processEnded} fails pending requests even if no end of output was seen."""
        _, d = self.protocol.request("a")
        self.transport.exit(0, output_open=True)
        self.assertNoResult(d)
        self.protocol.processEnded(self.transport._reason)
        self.failureResultOf(d, ChildFailed)
        self.assertEqual(self.ended, [None])

    def test_exit_by_signal(self) -> None:
        """A signal death is described with the signal number and name."""
        _, d = self.protocol.request("a")
        self.transport.exit(None, 9)
        self.assertIn("killed by signal 9 (SIGKILL)", self.failureResultOf(d).value.message)

    def test_process_done(self) -> None:
        """A clean exit (C{ProcessDone}) is described as code 0."""
        self.transport.exit(0)
        self.assertEqual(self.exits, ["exited with code 0"])

    def test_ended_without_exited(self) -> None:
        """C{processEnded} alone still fails pending requests and reports the exit."""
        _, d = self.protocol.request("a")
        self.transport.exit(0)
        self.transport.end()
        self.failureResultOf(d, ChildFailed)
        self.assertEqual(self.ended, [None])

    def test_request_after_exit_fails(self) -> None:
        """After the exit, requests fail at once and nothing is written."""
        self.transport.exit(1)
        _, d = self.protocol.request("a")
        self.failureResultOf(d, ChildFailed)
        self.assertEqual(self.transport.written, [])

    def test_cancel_forgets(self) -> None:
        """
        Cancelling a request calls C{on_cancel} with its id, and a late response for it is
        ignored.
        """
        cancelled: list[int] = []
        request_id, d = self.protocol.request("a", on_cancel=cancelled.append)
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(cancelled, [request_id])
        self.transport.reply(request_id, {})
        self.assertEqual(self.protocol.pending_ids, [])

    def test_handler_error_logged(self) -> None:
        """An exception in the tools-changed callback is logged; reading goes on."""

        def boom() -> None:
            raise RuntimeError("callback bug")

        self.protocol._on_tools_changed = boom
        _, d = self.protocol.request("a")
        self.transport.send({"jsonrpc": "2.0", "method": "notifications/tools/list_changed"})
        self.transport.reply(1, {"ok": True})
        self.assertEqual(self.successResultOf(d), {"ok": True})
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_invalid_error_object(self) -> None:
        """A malformed error object still fails the request with a C{JsonRpcError}."""
        _, d = self.protocol.request("a")
        self.transport.send({"jsonrpc": "2.0", "id": 1, "error": "bad"})
        self.assertEqual(self.failureResultOf(d, JsonRpcError).value.code, -32603)
