"""Tests for L{mcpgw.sandbox}: the environment, the private directory, the launch put together."""

from __future__ import annotations

import os
import stat
import sys
from unittest import SkipTest

from twisted.trial.unittest import SynchronousTestCase

from mcpgw import launchers, sandbox
from mcpgw.config import SandboxConfig, ServiceConfig
from tests.test_launchers import TOOLS

GATEWAY_ENV = {
    "PATH": "/usr/bin",
    "LANG": "C.UTF-8",
    "TZ": "UTC",
    "USER": "gw",
    "HOME": "/root",
    "AUTH_TOKEN": "secret",
}


def service(**overrides: object) -> ServiceConfig:
    return ServiceConfig(name="svc", command=("srv", "a"), **overrides)  # type: ignore[arg-type]


class EnvTests(SynchronousTestCase):
    """L{sandbox.build_env}."""

    def test_restricted(self) -> None:
        """
        Restricted: only the allowed names, C{HOME}/C{TMPDIR} = the private dir, then the
        service's C{env} on top.
        """
        env = sandbox.build_env(service(env={"X": "1", "HOME": "/h"}), "/p", GATEWAY_ENV)
        self.assertEqual(
            env,
            {
                "PATH": "/usr/bin",
                "LANG": "C.UTF-8",
                "TZ": "UTC",
                "USER": "gw",
                "HOME": "/h",
                "TMPDIR": "/p",
                "X": "1",
            },
        )

    def test_default_path(self) -> None:
        """Without a gateway C{PATH}, a standard one is used."""
        env = sandbox.build_env(service(), "/p", {})
        self.assertEqual(env, {"PATH": launchers.DEFAULT_PATH, "HOME": "/p", "TMPDIR": "/p"})

    def test_unrestricted(self) -> None:
        """Unrestricted: the whole gateway env (C{HOME} kept), C{TMPDIR}, then C{env}."""
        svc = service(sandbox=SandboxConfig(restricted_env=False), env={"X": "1"})
        self.assertEqual(
            sandbox.build_env(svc, "/p", GATEWAY_ENV), {**GATEWAY_ENV, "TMPDIR": "/p", "X": "1"}
        )

    def test_disabled(self) -> None:
        """The sandbox disabled passes the whole environment even if restricted_env is on."""
        svc = service(sandbox=SandboxConfig(enabled=False))
        self.assertEqual(sandbox.build_env(svc, "/p", GATEWAY_ENV)["AUTH_TOKEN"], "secret")


class UserEnvTests(SynchronousTestCase):
    """L{sandbox.user_env}: a child switched to another user is told so."""

    def test_user_named(self) -> None:
        """C{USER} names the target user; C{LOGNAME} too, but only when present."""
        svc = service(sandbox=SandboxConfig(drop_privileges=True, user="daemon"))
        self.assertEqual(sandbox.user_env(svc, {"USER": "root"}), {"USER": "daemon"})
        self.assertEqual(
            sandbox.user_env(svc, {"LOGNAME": "root"}), {"USER": "daemon", "LOGNAME": "daemon"}
        )

    def test_service_env_wins(self) -> None:
        """A C{USER} set in the service's C{env} is kept."""
        svc = service(sandbox=SandboxConfig(drop_privileges=True), env={"USER": "svc"})
        self.assertEqual(sandbox.user_env(svc, {"USER": "svc"}), {})

    def test_prepare_as_root(self) -> None:
        """
        As root with C{drop_privileges}, the child's C{USER} is C{sandbox.user}, not the
        gateway's.
        """
        if os.geteuid() != 0:
            raise SkipTest("needs root (the private directory is handed to the user)")
        root = os.path.abspath(self.mktemp())
        svc = service(sandbox=SandboxConfig(drop_privileges=True, user="nobody"))
        launch = sandbox.prepare_launch(svc, root, GATEWAY_ENV, euid=0)
        self.addCleanup(sandbox.remove_private_dir, launch.private_dir)
        self.assertEqual(launch.env["USER"], "nobody")
        plain = sandbox.prepare_launch(service(), root, GATEWAY_ENV, euid=0)
        self.addCleanup(sandbox.remove_private_dir, plain.private_dir)
        self.assertEqual(plain.env["USER"], "gw")


class WorkingDirTests(SynchronousTestCase):
    """L{sandbox.working_dir_for}."""

    def test_precedence(self) -> None:
        """C{service.working_dir}, then C{sandbox.working_dir}, then the private dir."""
        inner = SandboxConfig(working_dir="/s")
        self.assertEqual(sandbox.working_dir_for(service(), "/p"), "/p")
        self.assertEqual(sandbox.working_dir_for(service(sandbox=inner), "/p"), "/s")
        svc = service(sandbox=inner, working_dir="/w")
        self.assertEqual(sandbox.working_dir_for(svc, "/p"), "/w")


class PrivateDirTests(SynchronousTestCase):
    """The private directory."""

    def test_prepare(self) -> None:
        """
        C{prepare_launch} makes a 0700 directory under the root (created if missing), not
        named after anything but the service, used as HOME and working directory.
        """
        root = os.path.join(os.path.abspath(self.mktemp()), "deeper")
        launch = sandbox.prepare_launch(service(), root, GATEWAY_ENV, euid=1000, python="/py")
        self.assertEqual(os.path.dirname(launch.private_dir), root)
        self.assertTrue(os.path.basename(launch.private_dir).startswith("mcpgw-svc-"))
        self.assertEqual(stat.S_IMODE(os.stat(launch.private_dir).st_mode), 0o700)
        self.assertEqual(launch.working_dir, launch.private_dir)
        self.assertEqual(launch.env["HOME"], launch.private_dir)
        self.assertEqual(launch.executable, "/py")
        self.assertIn(f"--cwd={launch.private_dir}", launch.argv)
        sandbox.remove_private_dir(launch.private_dir)
        self.assertFalse(os.path.exists(launch.private_dir))
        sandbox.remove_private_dir(launch.private_dir)

    def test_remove_with_contents(self) -> None:
        """A private directory the child filled (files, a subdirectory) is removed whole."""
        root = os.path.abspath(self.mktemp())
        launch = sandbox.prepare_launch(service(), root, {}, euid=1000)
        os.makedirs(os.path.join(launch.private_dir, ".cache", "pkg"))
        with open(os.path.join(launch.private_dir, ".cache", "pkg", "data"), "w") as f:
            f.write("x")
        sandbox.remove_private_dir(launch.private_dir)
        self.assertFalse(os.path.exists(launch.private_dir))
        self.assertEqual(os.listdir(root), [])

    def test_unique(self) -> None:
        """Two launches of one service get two directories."""
        root = os.path.abspath(self.mktemp())
        first = sandbox.prepare_launch(service(), root, {}, euid=1000)
        second = sandbox.prepare_launch(service(), root, {}, euid=1000)
        self.assertNotEqual(first.private_dir, second.private_dir)

    def test_failure_removes_dir(self) -> None:
        """If preparing fails after the directory was made, it is removed."""
        root = os.path.abspath(self.mktemp())
        svc = service(sandbox=SandboxConfig(drop_privileges=True, user="no-such-user-xyz"))
        self.assertRaises(OSError, sandbox.prepare_launch, svc, root, {}, euid=0)
        self.assertEqual(os.listdir(root), [])

    def test_default_python(self) -> None:
        """The launcher runs under the gateway's own interpreter by default."""
        launch = sandbox.prepare_launch(service(), os.path.abspath(self.mktemp()), {})
        self.assertEqual(launch.argv[0], sys.executable)


class PrepareWithToolsTests(SynchronousTestCase):
    """L{sandbox.prepare_launch} given the util-linux tools."""

    def test_chain(self) -> None:
        """A command that can be found runs through the chain."""
        root = os.path.abspath(self.mktemp())
        svc = ServiceConfig(name="svc", command=(sys.executable, "x.py"))
        launch = sandbox.prepare_launch(svc, root, GATEWAY_ENV, euid=1000, tools=TOOLS)
        self.assertEqual(launch.launcher, "util-linux")
        self.assertEqual(launch.executable, "/u/setsid")
        self.assertEqual(launch.argv[0], "/u/setsid")
        self.assertEqual(
            launch.argv[-5:], ("-C", launch.private_dir, "--", sys.executable, "x.py")
        )
        self.assertNotIn("AUTH_TOKEN", launch.env)

    def test_fallback(self) -> None:
        """A command that cannot be found goes through the Python launcher, which says why."""
        root = os.path.abspath(self.mktemp())
        svc = ServiceConfig(name="svc", command=("/nonexistent/srv",))
        launch = sandbox.prepare_launch(svc, root, GATEWAY_ENV, euid=1000, tools=TOOLS)
        self.assertEqual(launch.launcher, "python")
        self.assertEqual(launch.argv[:4], (sys.executable, "-S", "-I", launchers.LAUNCHER))
