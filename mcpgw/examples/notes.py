"""
A small stdio MCP server with a few useful tools, shipped for the example config.

Run it as ``python -m mcpgw.examples.notes``. It speaks newline-delimited JSON-RPC 2.0 (MCP
2024-11-05 to 2025-11-25) and uses only the standard library. Tools:

- ``add_note`` ``{"text"}``: remember a note for this session (state lives in the process, so
  each gateway session has its own notes);
- ``list_notes``: the notes taken so far in this session;
- ``current_time`` ``{"timezone"?}``: the current time in an IANA time zone (default UTC);
- ``word_count`` ``{"text"}``: words, lines and characters of a text.
"""

from __future__ import annotations

import datetime
import json
import sys
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

SUPPORTED = ("2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05")

TOOLS: list[dict[str, Any]] = [
    {
        "name": "add_note",
        "description": "Remember a short note for the rest of this session.",
        "inputSchema": {
            "type": "object",
            "properties": {"text": {"type": "string", "description": "The note."}},
            "required": ["text"],
        },
    },
    {
        "name": "list_notes",
        "description": "List the notes remembered in this session.",
        "inputSchema": {"type": "object", "properties": {}},
    },
    {
        "name": "current_time",
        "description": "The current date and time in a time zone.",
        "inputSchema": {
            "type": "object",
            "properties": {
                "timezone": {
                    "type": "string",
                    "description": "IANA time zone name, e.g. Europe/Paris (default UTC).",
                }
            },
        },
    },
    {
        "name": "word_count",
        "description": "Count the words, lines and characters of a text.",
        "inputSchema": {
            "type": "object",
            "properties": {"text": {"type": "string"}},
            "required": ["text"],
        },
    },
]


class Notes:
    """The tools' state: one instance per process, hence per gateway session."""

    def __init__(self) -> None:
        self.notes: list[str] = []

    def call(self, name: str, args: dict[str, Any]) -> dict[str, Any]:
        if name == "add_note":
            text = args.get("text")
            if not isinstance(text, str) or not text:
                return _error("'text' must be a non-empty string")
            self.notes.append(text)
            return _text(f"Noted ({len(self.notes)} so far).")
        if name == "list_notes":
            if not self.notes:
                return _text("No notes yet.")
            return _text("\n".join(f"{i}. {n}" for i, n in enumerate(self.notes, 1)))
        if name == "current_time":
            zone = args.get("timezone") or "UTC"
            try:
                now = datetime.datetime.now(ZoneInfo(str(zone)))
            except (ZoneInfoNotFoundError, ValueError):
                return _error(f"Unknown time zone: {zone}")
            return _text(
                now.isoformat(timespec="seconds"), {"timezone": zone, "datetime": now.isoformat()}
            )
        if name == "word_count":
            text = args.get("text")
            if not isinstance(text, str):
                return _error("'text' must be a string")
            counts = {
                "words": len(text.split()),
                "lines": len(text.splitlines()),
                "characters": len(text),
            }
            return _text(json.dumps(counts), counts)
        raise KeyError(name)


def _text(text: str, structured: dict[str, Any] | None = None) -> dict[str, Any]:
    result: dict[str, Any] = {"content": [{"type": "text", "text": text}], "isError": False}
    if structured is not None:
        result["structuredContent"] = structured
    return result


def _error(text: str) -> dict[str, Any]:
    return {"content": [{"type": "text", "text": text}], "isError": True}


def handle(state: Notes, msg: dict[str, Any]) -> dict[str, Any] | None:
    """Answer one JSON-RPC message; None for notifications and responses."""
    method = msg.get("method")
    if "id" not in msg or not isinstance(method, str):
        return None
    rid = msg["id"]
    params = msg.get("params") or {}
    if method == "initialize":
        asked = params.get("protocolVersion")
        version = asked if asked in SUPPORTED else SUPPORTED[0]
        result: Any = {
            "protocolVersion": version,
            "capabilities": {"tools": {"listChanged": False}},
            "serverInfo": {"name": "mcpgw-notes", "version": "1.0"},
        }
    elif method == "ping":
        result = {}
    elif method == "tools/list":
        result = {"tools": TOOLS}
    elif method == "tools/call":
        try:
            result = state.call(str(params.get("name")), params.get("arguments") or {})
        except KeyError:
            return {
                "jsonrpc": "2.0",
                "id": rid,
                "error": {"code": -32602, "message": f"Unknown tool: {params.get('name')}"},
            }
    else:
        return {
            "jsonrpc": "2.0",
            "id": rid,
            "error": {"code": -32601, "message": f"Method not found: {method}"},
        }
    return {"jsonrpc": "2.0", "id": rid, "result": result}


def main() -> None:
    state = Notes()
    for line in sys.stdin:
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        if not isinstance(msg, dict):
            continue
        reply = handle(state, msg)
        if reply is not None:
            sys.stdout.write(json.dumps(reply, separators=(",", ":")) + "\n")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
