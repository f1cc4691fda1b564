"""
First call of a new session through mcpgw: spawn (via the launcher, sandbox on) +
initialize + notifications/initialized + one tools/call, against the bench echo server.

    .venv/bin/python bench/spawn_cost.py [--n 30] [--warmup 1] [--sandbox on|off]
        [--launcher auto|python] [--server /work/shared/bench/echo_server.py]

Timed from just before ``MCPServer.start()`` to the reply of the call; the stop (stdin close,
exit, directory removal) is timed apart. One child at a time. Compare with the floor from
``python3 /work/shared/bench/raw_stdio.py --modes spawn --rounds 3`` measured in the same run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet.defer import ensureDeferred
from twisted.internet.task import react

from mcpgw import launchers
from mcpgw.client import MCPServer
from mcpgw.config import SandboxConfig, ServiceConfig


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def run(reactor: Any, args: argparse.Namespace) -> None:
    service = ServiceConfig(
        name="echo",
        command=(sys.executable, "-S", args.server),
        sandbox=SandboxConfig(enabled=args.sandbox == "on"),
    )
    tools, how = (
        launchers.find_tools() if args.launcher == "auto" else (None, "the Python launcher")
    )
    root = tempfile.mkdtemp(prefix="mcpgw-bench-")
    first: list[float] = []
    stops: list[float] = []
    try:
        for index in range(args.warmup + args.n):
            server = MCPServer(reactor, service, root, os.environ, tools=tools)
            started = time.perf_counter()
            await server.start()
            result = await server.call_tool("echo", {"text": "hi"}, 10)
            elapsed = time.perf_counter() - started
            assert result["content"][0]["text"] == "hi", result
            stopping = time.perf_counter()
            await server.stop()
            stopped = time.perf_counter() - stopping
            if index >= args.warmup:
                first.append(elapsed * 1000)
                stops.append(stopped * 1000)
    finally:
        os.rmdir(root)
    print(f"mcpgw spawn+initialize+call (sandbox {args.sandbox}, {how}), {len(first)} spawns, ms:")
    print(
        f"  p50 {statistics.median(first):.1f}  p90 {percentile(first, 90):.1f}  "
        f"p99 {percentile(first, 99):.1f}  max {max(first):.1f}"
    )
    print(f"  stop p50 {statistics.median(stops):.1f}  p90 {percentile(stops, 90):.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--sandbox", choices=("on", "off"), default="on")
    parser.add_argument("--launcher", choices=("auto", "python"), default="auto")
    parser.add_argument("--server", default="/work/shared/bench/echo_server.py")
    args = parser.parse_args()
    react(lambda reactor: ensureDeferred(run(reactor, args)))


if __name__ == "__main__":
    main()
