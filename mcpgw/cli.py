# -*- test-case-name: tests.test_cli -*-
"""
The ``mcp-gateway`` console shim: the twistd plugin in the foreground, logs on stdout.

It does not depend on plugin discovery: the ``ServiceMaker`` is given to twistd directly.
Exit codes: 0 after SIGTERM/SIGINT; 2 for a bad config, a missing certificate the config asks
for, or a port that cannot be bound, with one line on stderr and no traceback.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from twisted.application.service import ServiceMaker
from twisted.internet.error import CannotListenError
from twisted.scripts._twistd_unix import ServerOptions

import mcpgw
from mcpgw import logs
from mcpgw.errors import ConfigError

MAKER = ServiceMaker("MCP Gateway", "mcpgw.tap", "Gateway for MCP servers.", "mcp-gateway")


class ShimOptions(ServerOptions):
    """twistd's options with our plugin as the only subcommand."""

    loadedPlugins = {"mcp-gateway": MAKER}

    @property
    def subCommands(self) -> Any:
        yield (MAKER.tapname, None, MAKER.options, MAKER.description)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mcp-gateway", description="Serve stdio MCP servers over HTTP(S)."
    )
    p.add_argument("-c", "--config", default="config.json", help="JSON config (config.json)")
    p.add_argument("--check", action="store_true", help="validate the config and exit")
    p.add_argument("--version", action="version", version=f"mcp-gateway {mcpgw.__version__}")
    return p


def run_foreground(options: Any) -> None:
    """twistd's runner, without re-raising SIGTERM/SIGINT at the end: the shim exits 0."""
    from twisted.scripts._twistd_unix import UnixApplicationRunner

    UnixApplicationRunner(options).run()


def main(
    argv: Sequence[str] | None = None,
    run_app: Callable[[Any], None] = run_foreground,
) -> int:
    args = _parser().parse_args(argv)
    from mcpgw.tap import load_checked

    try:
        config = load_checked(args.config, os.environ, os.getcwd())
    except ConfigError as e:
        print(str(e), file=sys.stderr)
        return 2
    if args.check:
        print(config.summary(args.config))
        return 0
    logs.stdout_level = config.logging.level
    options = ShimOptions()  # type: ignore[no-untyped-call]
    options.parseOptions(  # type: ignore[no-untyped-call]
        [
            "--nodaemon",
            "--pidfile=",
            "--logger=mcpgw.logs.stdout_observer",
            "mcp-gateway",
            "--config",
            args.config,
        ]
    )
    try:
        run_app(options)
    except CannotListenError as e:
        where = f"{e.interface or '0.0.0.0'}:{e.port}"
        # A port in use (or privileged) is the port's fault; anything else the host's.
        errno_ = getattr(e.socketError, "errno", None)
        key = "server.port" if errno_ in (errno.EADDRINUSE, errno.EACCES) else "server.host"
        print(
            f"{args.config}: {key}: cannot listen on {where}: {e.socketError}",
            # twistd has redirected sys.stderr into its log by now.
            file=sys.__stderr__,
        )
        return 2
    return 0


def console() -> None:
    sys.exit(main())
