"""
Tests for the console shim L{mcpgw.cli}: exit codes, --check, --version and what it asks of
twistd (the run itself is exercised end to end in L{tests.test_e2e}).
"""

from __future__ import annotations

import io
import os
from contextlib import redirect_stderr, redirect_stdout
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

import mcpgw
from mcpgw import logs
from mcpgw.cli import main

from .configs import gateway_config


class ShimTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)

    def run_main(self, argv: list[str], run_app: Any = None) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        kwargs = {"run_app": run_app} if run_app else {}
        with redirect_stdout(out), redirect_stderr(err):
            try:
                code = main(argv, **kwargs)
            except SystemExit as e:
                code = int(e.code or 0)
        return code, out.getvalue(), err.getvalue()

    def test_check_ok(self) -> None:
        """--check validates the config and prints a one-line summary; exit 0."""
        code, out, _ = self.run_main(["--check", "-c", gateway_config(self.dir)])
        self.assertEqual(code, 0)
        self.assertEqual(len(out.strip().splitlines()), 1)
        self.assertIn("notes", out)

    def test_bad_config_exit_2(self) -> None:
        """A config mistake exits 2 with one line naming the file and the key path."""
        path = gateway_config(self.dir, services={"bad name!": {"command": ["x"]}})
        code, _, err = self.run_main(["-c", path])
        self.assertEqual(code, 2)
        self.assertEqual(len(err.strip().splitlines()), 1)
        self.assertIn("config.json: services", err)
        self.assertNotIn("Traceback", err)

    def test_missing_config_exit_2(self) -> None:
        """A missing config file exits 2 (no default config is ever written)."""
        code, _, err = self.run_main(["-c", os.path.join(self.dir, "none.json")])
        self.assertEqual(code, 2)
        self.assertIn("none.json", err)
        self.assertFalse(os.path.exists(os.path.join(self.dir, "none.json")))

    def test_tls_on_missing_cert(self) -> None:
        """tls: on without the certificate exits 2 naming server.tls_cert."""
        path = gateway_config(self.dir, server={"tls": "on"})
        code, _, err = self.run_main(["-c", path])
        self.assertEqual(code, 2)
        self.assertIn("server.tls_cert", err)

    def test_version(self) -> None:
        """--version prints the version."""
        code, out, _ = self.run_main(["--version"])
        self.assertEqual(code, 0)
        self.assertIn(mcpgw.__version__, out)

    def test_runs_twistd_in_foreground(self) -> None:
        """The shim runs our plugin under twistd, in the foreground, without a pidfile."""
        seen: list[Any] = []
        path = gateway_config(self.dir)
        code, _, _ = self.run_main(["-c", path], run_app=seen.append)
        self.assertEqual(code, 0)
        options = seen[0]
        self.assertTrue(options["nodaemon"])
        self.assertEqual(options["pidfile"], "")
        self.assertEqual(options.subCommand, "mcp-gateway")
        self.assertEqual(options.subOptions["config"], path)
        self.assertIs(options["logger"], logs.stdout_observer)

    def test_unusable_paths_exit_2(self) -> None:
        """A log file or sandbox dir that cannot be used exits 2 naming its key, no traceback."""
        blocker = os.path.join(self.dir, "a-file")
        with open(blocker, "w") as f:
            f.write("x")
        cases = [
            ({"logging": {"file": os.path.join(blocker, "gw.log")}}, "logging.file"),
            (
                {"session": {"sandbox_dir": os.path.join(blocker, "sandbox")}},
                "session.sandbox_dir",
            ),
        ]
        for overrides, key in cases:
            code, _, err = self.run_main(["-c", gateway_config(self.dir, **overrides)])
            self.assertEqual(code, 2, err)
            self.assertIn(key, err)
            self.assertEqual(len(err.strip().splitlines()), 1)
