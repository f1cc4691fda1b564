#!/usr/bin/env python3
"""A fixed, fast stdio MCP server: the benchmark's workload (standard library only).

Newline-delimited JSON-RPC 2.0 on stdin/stdout. Methods: initialize, ping, tools/list,
tools/call; notifications (no "id") are ignored; anything else gets -32601.
Tools: ``echo {text}`` answers the text; ``sleep {seconds}`` answers "slept N" after N
seconds (0..60, on a timer thread, so overlapping calls stay concurrent).
Exits at stdin EOF. Run it with ``python3 -S`` to keep its start-up short.
"""

import json
import sys
import threading

VERSIONS = ("2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25")
TOOLS = [
    {
        "name": "echo",
        "description": "Answer the given text unchanged.",
        "inputSchema": {
            "type": "object",
            "properties": {"text": {"type": "string"}},
            "required": ["text"],
        },
    },
    {
        "name": "sleep",
        "description": "Wait the given number of seconds (0..60), then answer.",
        "inputSchema": {
            "type": "object",
            "properties": {"seconds": {"type": "number"}},
            "required": ["seconds"],
        },
    },
]
_out = sys.stdout.buffer
_lock = threading.Lock()
_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def send(msg):
    data = _encode(msg).encode() + b"\n"
    with _lock:
        try:
            _out.write(data)
            _out.flush()
        except (OSError, ValueError):
            pass


def reply(mid, result):
    send({"jsonrpc": "2.0", "id": mid, "result": result})


def fail(mid, code, message):
    send({"jsonrpc": "2.0", "id": mid, "error": {"code": code, "message": message}})


def text(mid, value):
    reply(mid, {"content": [{"type": "text", "text": value}], "isError": False})


def call(mid, params):
    name, args = params.get("name"), params.get("arguments") or {}
    if name == "echo":
        value = args.get("text")
        if not isinstance(value, str):
            return fail(mid, -32602, "echo: 'text' must be a string")
        return text(mid, value)
    if name == "sleep":
        secs = args.get("seconds")
        if isinstance(secs, bool) or not isinstance(secs, (int, float)) or not 0 <= secs <= 60:
            return fail(mid, -32602, "sleep: 'seconds' must be a number in 0..60")
        timer = threading.Timer(secs, text, (mid, f"slept {secs}"))
        timer.daemon = True
        return timer.start()
    return fail(mid, -32602, f"Unknown tool: {name}")


def handle(msg):
    if not isinstance(msg, dict) or "id" not in msg or "method" not in msg:
        return  # a notification, or a response to nothing we asked
    mid, method, params = msg["id"], msg["method"], msg.get("params") or {}
    if method == "initialize":
        asked = params.get("protocolVersion")
        reply(
            mid,
            {
                "protocolVersion": asked if asked in VERSIONS else VERSIONS[-1],
                "capabilities": {"tools": {"listChanged": False}},
                "serverInfo": {"name": "mcp-echo", "version": "1.0"},
            },
        )
    elif method == "ping":
        reply(mid, {})
    elif method == "tools/list":
        reply(mid, {"tools": TOOLS})
    elif method == "tools/call":
        call(mid, params)
    else:
        fail(mid, -32601, f"Method not found: {method}")


def main():
    for line in sys.stdin.buffer:
        if not line.strip():
            continue
        try:
            msg = json.loads(line)
        except ValueError:
            fail(None, -32700, "Parse error")
            continue
        handle(msg)


if __name__ == "__main__":
    main()
