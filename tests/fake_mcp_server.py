"""
A small stdio MCP server (standard library only) that can misbehave on command.

Run it as ``sys.executable -m tests.fake_mcp_server [FLAGS]`` from the repository root, or by
path (``sys.executable /abs/tests/fake_mcp_server.py [FLAGS]``, which needs no ``sys.path``).
Newline-delimited JSON-RPC 2.0 on stdin/stdout; it exits 0 on stdin EOF (unless told not to).

Flags (all optional):

``--exit-before-init=N``   write ``dying before initialize`` on stderr and exit with code N
                           before reading anything.
``--protocol-version=V``   answer ``initialize`` with version V (default: the client's if it is
                           one of the four legacy versions, else ``2025-11-25``).
``--no-init-reply``        never answer ``initialize`` (a startup timeout).
``--init-error``           answer ``initialize`` with a JSON-RPC error ``-32602``.
``--page-size=N``          paginate ``tools/list``, N tools a page (default: one page).
``--cursor-style=S``       ``index`` (default: cursors ``"1"``, ``"2"``, ...), ``empty-first``
                           (the first ``nextCursor`` is ``""``) or ``loop`` (always ``"again"``).
``--list-changed``         send ``notifications/tools/list_changed`` after
                           ``notifications/initialized``.
``--stderr-lines=N``       write N lines (``stderr line I``) to stderr at start.
``--ignore-eof``           keep running after stdin EOF (so only signals end it).
``--ignore-sigterm``       ignore SIGTERM (so only SIGKILL ends it).
``--grandchild``           at start, spawn ``sleep 600`` with stdio on /dev/null; its pid is
                           written to stderr as ``grandchild pid=N``.
``--grandchild-holds-pipes``  the same, but the grandchild inherits stdout and stderr.
``--crlf``                 end output lines with ``\\r\\n``.
``--init-delay=S``         wait S seconds, then note its CPU priority (``priority``), before
                           answering ``initialize``.
``--priority-on-eof=PATH`` on stdin EOF, write its CPU priority as JSON to PATH.

Tools (``tools/call``; unknown tools get JSON-RPC ``-32602`` ``Unknown tool: NAME``):

``echo {text}``            text content ``text``.
``add {a, b}``             text ``a+b`` and ``structuredContent {"sum": a+b}``.
``incr``                   a counter kept per process: 1, 2, 3, ...
``sleep {seconds}``        answers ``slept`` after that long (on a thread; others go on).
``hang``                   never answers.
``crash {code, stderr_lines, answer_bytes}``
                           writes ``stderr_lines`` lines (default 0, ``stderr line I``) then
                           ``crashing on purpose`` to stderr, answers with a text of
                           ``answer_bytes`` bytes when given, then exits at once with ``code``
                           (default 3), mid-call: what is still in the pipes is the gateway's
                           to read after the exit.
``kill_self {signal}``     kills itself with that signal number (default 9), mid-call.
``stderr_flood {lines}``   writes that many stderr lines (default 1000), then answers.
``garbage``                writes a non-JSON stdout line, a JSON array and a bare JSON value,
                           then answers ``ok``.
``stray``                  writes responses for ids ``"<its own id>"`` (a string) and 999999,
                           then answers ``ok``.
``ping_roots``             sends us ``ping`` (id ``"srv-ping"``), ``roots/list`` (id 0),
                           ``sampling/createMessage`` (id 1) and ``elicitation/create`` (id 2),
                           waits for all four answers, and returns them as JSON text keyed by
                           method.
``huge {bytes}``           a result whose single line is longer than ``bytes``.
``list_changed``           sends ``notifications/tools/list_changed``, then answers ``ok``.
``notify``                 sends ``notifications/progress`` and ``notifications/message``, then
                           answers ``ok``.
``fail {code, message}``   a JSON-RPC error (default ``-32000`` ``custom failure`` with
                           ``data {"detail": "from fake"}``).
``bad_params``             a JSON-RPC error ``-32602`` ``Invalid params``.
``is_error``               a result with ``isError: true`` and text ``tool failed``.
``env``                    the process environment as JSON text.
``priority``               its CPU priority (scheduling policy, nice value of its session's
                           autogroup) when it answered ``initialize`` and now, as JSON text
                           ``{"startup": {...}, "now": {...}}``.
``sandbox``                JSON text: ``cwd``, ``pid``, ``pgid``, ``sid``, ``uid``, ``rlimits``
                           (``cpu``, ``as``, ``fsize``, ``nofile``, ``nproc``: [soft, hard]),
                           ``sigblk`` (the blocked signal mask), ``pdeathsig``.
``spawn_grandchild``       spawns ``sleep 600`` (stdio on /dev/null) and returns its pid as text.

Notifications from us are ignored, except ``notifications/cancelled``, which is recorded: the
``cancelled`` tool returns the request ids cancelled so far as JSON text.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import threading
import time

LEGACY_VERSIONS = ("2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25")

TOOL_NAMES = [
    "echo", "add", "incr", "sleep", "hang", "crash", "kill_self", "stderr_flood", "garbage",
    "stray", "ping_roots", "huge", "list_changed", "notify", "fail", "bad_params", "is_error",
    "env", "sandbox", "spawn_grandchild", "cancelled",
]  # fmt: skip


def tool_definition(name: str) -> dict:
    return {
        "name": name,
        "description": f"fake tool {name}",
        "inputSchema": {"type": "object", "properties": {}},
    }


class FakeServer:
    def __init__(self, flags: dict[str, str]) -> None:
        self.flags = flags
        self.out = sys.stdout.buffer
        self.lock = threading.Lock()
        self.eol = b"\r\n" if "crlf" in flags else b"\n"
        self.counter = 0
        self.cancelled: list[object] = []
        self.waiting: dict[object, dict] = {}
        self.waiting_cond = threading.Condition()
        self.startup_priority: dict | None = None

    # -- output ---------------------------------------------------------------------------

    def write_raw(self, data: bytes) -> None:
        with self.lock:
            self.out.write(data + self.eol)
            self.out.flush()

    def send(self, message: dict) -> None:
        self.write_raw(json.dumps(message, separators=(",", ":")).encode("utf-8"))

    def result(self, request_id: object, result: dict) -> None:
        self.send({"jsonrpc": "2.0", "id": request_id, "result": result})

    def error(self, request_id: object, code: int, message: str, data: object = None) -> None:
        error: dict = {"code": code, "message": message}
        if data is not None:
            error["data"] = data
        self.send({"jsonrpc": "2.0", "id": request_id, "error": error})

    def text(self, request_id: object, text: str, **extra: object) -> None:
        self.result(request_id, {"content": [{"type": "text", "text": text}], **extra})

    # -- input ----------------------------------------------------------------------------

    def run(self) -> int:
        for raw in sys.stdin.buffer:
            try:
                message = json.loads(raw)
            except ValueError:
                continue
            if not isinstance(message, dict):
                continue
            if "method" in message:
                if "id" in message:
                    self.request(message["id"], message["method"], message.get("params") or {})
                else:
                    self.notification(message["method"], message.get("params") or {})
            else:
                with self.waiting_cond:
                    self.waiting[message.get("id")] = message
                    self.waiting_cond.notify_all()
        if "priority-on-eof" in self.flags:
            with open(self.flags["priority-on-eof"], "w") as f:
                json.dump(priority_report(), f)
        if "ignore-eof" in self.flags:
            threading.Event().wait()
        return 0

    def notification(self, method: str, params: dict) -> None:
        if method == "notifications/initialized" and "list-changed" in self.flags:
            self.send({"jsonrpc": "2.0", "method": "notifications/tools/list_changed"})
        elif method == "notifications/cancelled":
            self.cancelled.append(params.get("requestId"))

    def request(self, request_id: object, method: str, params: dict) -> None:
        if method == "initialize":
            self.initialize(request_id, params)
        elif method == "ping":
            self.result(request_id, {})
        elif method == "tools/list":
            self.tools_list(request_id, params)
        elif method == "tools/call":
            self.call(request_id, params.get("name"), params.get("arguments") or {})
        else:
            self.error(request_id, -32601, "Method not found", method)

    def initialize(self, request_id: object, params: dict) -> None:
        if "init-delay" in self.flags:
            time.sleep(float(self.flags["init-delay"]))
        self.startup_priority = priority_report()
        if "no-init-reply" in self.flags:
            return
        if "init-error" in self.flags:
            self.error(request_id, -32602, "Unsupported protocol version")
            return
        offered = params.get("protocolVersion")
        version = self.flags.get("protocol-version") or (
            offered if offered in LEGACY_VERSIONS else "2025-11-25"
        )
        self.result(
            request_id,
            {
                "protocolVersion": version,
                "capabilities": {"tools": {"listChanged": True}},
                "serverInfo": {"name": "fake-mcp-server", "version": "1.0"},
            },
        )

    def tools_list(self, request_id: object, params: dict) -> None:
        size = int(self.flags.get("page-size") or len(TOOL_NAMES))
        style = self.flags.get("cursor-style", "index")
        cursor = params.get("cursor")
        if cursor is None:
            page = 0
        elif style == "loop":
            page = 1
        elif cursor == "":
            page = 1
        else:
            page = int(cursor)
        names = TOOL_NAMES[page * size : (page + 1) * size]
        result: dict = {"tools": [tool_definition(n) for n in names]}
        if style == "loop":
            result["nextCursor"] = "again"
        elif (page + 1) * size < len(TOOL_NAMES):
            result["nextCursor"] = "" if style == "empty-first" and page == 0 else str(page + 1)
        self.result(request_id, result)

    # -- tools ----------------------------------------------------------------------------

    def call(self, request_id: object, name: object, args: dict) -> None:
        if name == "echo":
            self.text(request_id, str(args.get("text", "")))
        elif name == "add":
            total = args.get("a", 0) + args.get("b", 0)
            self.text(request_id, str(total), structuredContent={"sum": total})
        elif name == "incr":
            self.counter += 1
            self.text(request_id, str(self.counter))
        elif name == "sleep":
            seconds = float(args.get("seconds", 1))
            timer = threading.Timer(seconds, self.text, (request_id, "slept"))
            timer.daemon = True
            timer.start()
        elif name == "hang":
            pass
        elif name == "crash":
            for i in range(int(args.get("stderr_lines", 0))):
                sys.stderr.write(f"stderr line {i} " + "x" * 60 + "\n")
            sys.stderr.write("crashing on purpose\n")
            sys.stderr.flush()
            if "answer_bytes" in args:
                self.text(request_id, "a" * int(args["answer_bytes"]))
            os._exit(int(args.get("code", 3)))
        elif name == "kill_self":
            os.kill(os.getpid(), int(args.get("signal", 9)))
        elif name == "stderr_flood":
            for i in range(int(args.get("lines", 1000))):
                sys.stderr.write(f"flood line {i} " + "x" * 60 + "\n")
            sys.stderr.flush()
            self.text(request_id, "flooded")
        elif name == "garbage":
            self.write_raw(b"this is not json")
            self.write_raw(b'[{"jsonrpc":"2.0","method":"ping","id":7}]')
            self.write_raw(b"42")
            self.text(request_id, "ok")
        elif name == "stray":
            self.result(str(request_id), {"content": [], "stray": True})
            self.result(999999, {"content": [], "stray": True})
            self.text(request_id, "ok")
        elif name == "ping_roots":
            thread = threading.Thread(target=self.ping_roots, args=(request_id,), daemon=True)
            thread.start()
        elif name == "huge":
            self.text(request_id, "h" * (int(args.get("bytes", 1024)) + 1))
        elif name == "list_changed":
            self.send({"jsonrpc": "2.0", "method": "notifications/tools/list_changed"})
            self.text(request_id, "ok")
        elif name == "notify":
            self.send(
                {
                    "jsonrpc": "2.0",
                    "method": "notifications/progress",
                    "params": {"progressToken": "t", "progress": 1, "total": 2},
                }
            )
            self.send(
                {
                    "jsonrpc": "2.0",
                    "method": "notifications/message",
                    "params": {"level": "info", "logger": "fake", "data": "hello log"},
                }
            )
            self.text(request_id, "ok")
        elif name == "fail":
            self.error(
                request_id,
                int(args.get("code", -32000)),
                str(args.get("message", "custom failure")),
                {"detail": "from fake"},
            )
        elif name == "bad_params":
            self.error(request_id, -32602, "Invalid params")
        elif name == "is_error":
            self.text(request_id, "tool failed", isError=True)
        elif name == "env":
            self.text(request_id, json.dumps(dict(os.environ)))
        elif name == "priority":
            report = {"startup": self.startup_priority, "now": priority_report()}
            self.text(request_id, json.dumps(report))
        elif name == "sandbox":
            self.text(request_id, json.dumps(sandbox_report()))
        elif name == "spawn_grandchild":
            self.text(request_id, str(spawn_sleep(inherit=False)))
        elif name == "cancelled":
            self.text(request_id, json.dumps(self.cancelled))
        else:
            self.error(request_id, -32602, f"Unknown tool: {name}")

    def ping_roots(self, request_id: object) -> None:
        asks = {
            "ping": "srv-ping",
            "roots/list": 0,
            "sampling/createMessage": 1,
            "elicitation/create": 2,
        }
        for method, ask_id in asks.items():
            self.send({"jsonrpc": "2.0", "id": ask_id, "method": method, "params": {}})
        answers = {}
        with self.waiting_cond:
            for method, ask_id in asks.items():
                self.waiting_cond.wait_for(lambda i=ask_id: i in self.waiting, timeout=30)
                answers[method] = self.waiting.pop(ask_id, None)
        self.text(request_id, json.dumps(answers))


def sandbox_report() -> dict:
    names = {
        "cpu": resource.RLIMIT_CPU,
        "as": resource.RLIMIT_AS,
        "fsize": resource.RLIMIT_FSIZE,
        "nofile": resource.RLIMIT_NOFILE,
        "nproc": resource.RLIMIT_NPROC,
    }
    return {
        "cwd": os.getcwd(),
        "pid": os.getpid(),
        "pgid": os.getpgid(0),
        "sid": os.getsid(0),
        "uid": os.getuid(),
        "rlimits": {k: list(resource.getrlimit(v)) for k, v in names.items()},
        "sigblk": _status_mask("SigBlk"),
        "pdeathsig": _pdeathsig(),
    }


def priority_report() -> dict:
    """
    This process's scheduling policy, its autogroup's nice value and its time slice in ns
    (``None``: unknown).
    """
    try:
        policy: int | None = os.sched_getscheduler(0)
    except (AttributeError, OSError):
        policy = None
    try:
        with open("/proc/self/autogroup") as f:
            autogroup: int | None = int(f.read().split("nice")[1])
    except (OSError, IndexError, ValueError):
        autogroup = None
    slice_ns: int | None = None
    try:
        with open("/proc/self/sched") as f:
            for line in f:
                if line.startswith("se.slice"):
                    slice_ns = int(line.split(":")[1])
    except (OSError, IndexError, ValueError):
        pass
    return {"policy": policy, "autogroup": autogroup, "slice": slice_ns}


def _status_mask(name: str) -> int | None:
    """A signal mask from C{/proc/self/status} (Linux), else C{None}."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(name + ":"):
                    return int(line.split()[1], 16)
    except OSError:
        pass
    return None


def _pdeathsig() -> int | None:
    """This process's parent-death signal (Linux ``prctl``), else C{None}."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    value = ctypes.c_int()
    libc = ctypes.CDLL(None)
    if libc.prctl(2, ctypes.byref(value), 0, 0, 0) != 0:  # PR_GET_PDEATHSIG
        return None
    return value.value


def spawn_sleep(inherit: bool) -> int:
    if inherit:
        child = subprocess.Popen(["sleep", "600"], stdin=subprocess.DEVNULL)
    else:
        child = subprocess.Popen(
            ["sleep", "600"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    return child.pid


def parse_flags(argv: list[str]) -> dict[str, str]:
    flags = {}
    for arg in argv:
        if arg.startswith("--"):
            name, _, value = arg[2:].partition("=")
            flags[name] = value
    return flags


def main(argv: list[str] | None = None) -> int:
    flags = parse_flags(sys.argv[1:] if argv is None else argv)
    if "exit-before-init" in flags:
        sys.stderr.write("dying before initialize\n")
        sys.stderr.flush()
        return int(flags["exit-before-init"] or 1)
    if "ignore-sigterm" in flags:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    for i in range(int(flags.get("stderr-lines") or 0)):
        sys.stderr.write(f"stderr line {i}\n")
    if "grandchild" in flags or "grandchild-holds-pipes" in flags:
        pid = spawn_sleep(inherit="grandchild-holds-pipes" in flags)
        sys.stderr.write(f"grandchild pid={pid}\n")
    sys.stderr.flush()
    return FakeServer(flags).run()


if __name__ == "__main__":
    sys.exit(main())
