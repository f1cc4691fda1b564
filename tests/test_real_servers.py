"""
Integration tier against real third-party MCP servers, through the real launcher with the
sandbox on (default limits):

- ``mcp-server-time`` (PyPI), found next to the running interpreter or at
  ``$MCPGW_TIME_SERVER``; install: ``.venv/bin/pip install mcp-server-time==2026.10.19``;
- ``@modelcontextprotocol/server-everything`` (npm), found at
  ``$MCPGW_NPM_DIR/node_modules/.bin/mcp-server-everything`` (default ``MCPGW_NPM_DIR`` is
  ``.npm-kit`` in the repository); install:
  ``mkdir -p .npm-kit && cd .npm-kit && echo '{"private":true}' > package.json &&
  npm install --no-audit --no-fund @modelcontextprotocol/server-everything@2026.8.31``.

Each test is skipped, saying why, when its server is not installed.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from typing import Any

from twisted.internet import reactor as _global_reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import deferLater
from twisted.trial.unittest import SkipTest, TestCase

from mcpgw.client import SUPPORTED_VERSIONS, MCPServer
from mcpgw.config import ServiceConfig

reactor: Any = _global_reactor
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def time_server() -> str:
    path = os.environ.get("MCPGW_TIME_SERVER") or os.path.join(
        os.path.dirname(sys.executable), "mcp-server-time"
    )
    if not os.access(path, os.X_OK):
        raise SkipTest(f"mcp-server-time not installed at {path} (pip install mcp-server-time)")
    return path


def everything_server() -> str:
    npm_dir = os.environ.get("MCPGW_NPM_DIR") or os.path.join(REPO, ".npm-kit")
    path = os.path.join(npm_dir, "node_modules", ".bin", "mcp-server-everything")
    if not os.access(path, os.X_OK):
        raise SkipTest(
            f"server-everything not installed at {path} "
            "(npm install @modelcontextprotocol/server-everything in $MCPGW_NPM_DIR)"
        )
    if shutil.which("node") is None:
        raise SkipTest("node is not on PATH")
    return path


class RealServerTests(TestCase):
    """C{MCPServer} against real third-party servers, sandbox on."""

    timeout = 120

    def server(self, service: ServiceConfig) -> MCPServer:
        self.changes: list[None] = []
        server = MCPServer(
            reactor,
            service,
            os.path.abspath(self.mktemp()),
            os.environ,
            on_tools_changed=lambda: self.changes.append(None),
        )
        self.addCleanup(server.stop)
        return server

    @inlineCallbacks
    def test_time(self) -> Any:
        """
        mcp-server-time starts under the default limits, lists its tools and answers
        C{get_current_time} for Europe/Paris.
        """
        command = (time_server(), "--local-timezone", "UTC")
        server = self.server(ServiceConfig(name="time", command=command))
        yield server.start()
        self.assertIn(server.protocol_version, SUPPORTED_VERSIONS)
        tools = yield server.list_tools()
        self.assertIn("get_current_time", [t["name"] for t in tools])
        result = yield server.call_tool("get_current_time", {"timezone": "Europe/Paris"}, 20)
        self.assertFalse(result.get("isError", False))
        self.assertEqual(result["structuredContent"]["timezone"], "Europe/Paris")
        private_dir = server.private_dir
        yield server.stop()
        self.assertFalse(os.path.exists(str(private_dir)))

    @inlineCallbacks
    def test_everything(self) -> Any:
        """
        server-everything (Node) starts under the default limits, sends
        C{tools/list_changed} after C{initialized}, and answers C{echo} and C{get-sum}.
        """
        command = (everything_server(), "stdio")
        server = self.server(ServiceConfig(name="everything", command=command))
        yield server.start()
        self.assertEqual(server.protocol_version, "2025-11-25")
        for _ in range(100):
            if self.changes:
                break
            yield deferLater(reactor, 0.05, lambda: None)
        self.assertTrue(self.changes, "no tools/list_changed within 5 s")
        tools = yield server.list_tools()
        names = [t["name"] for t in tools]
        self.assertIn("echo", names)
        self.assertIn("get-sum", names)
        echo = yield server.call_tool("echo", {"message": "héllo"}, 20)
        self.assertIn("héllo", echo["content"][0]["text"])
        total = yield server.call_tool("get-sum", {"a": 2, "b": 40}, 20)
        self.assertIn("42", json.dumps(total))
