"""Tests for L{mcpgw.sandbox}: the launcher command line, the environment, the private dir."""

from __future__ import annotations

import os
import stat
import sys

from twisted.trial.unittest import SynchronousTestCase

from mcpgw import sandbox
from mcpgw.config import ResourceLimits, SandboxConfig, ServiceConfig

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
        self.assertEqual(env, {"PATH": sandbox.DEFAULT_PATH, "HOME": "/p", "TMPDIR": "/p"})

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


class ArgvTests(SynchronousTestCase):
    """L{sandbox.build_argv} and L{sandbox.limit_options}."""

    def test_defaults(self) -> None:
        """The default limits, pdeathsig, the working directory, C{--} and the command."""
        argv = sandbox.build_argv(service(), "/w", euid=1000, python="/py", pdeathsig=True)
        self.assertEqual(
            argv,
            (
                "/py", "-S", "-I", sandbox.LAUNCHER,
                "--cpu=3600", f"--as={2048 * 1024 * 1024}", f"--fsize={100 * 1024 * 1024}",
                "--nofile=1024", "--pdeathsig", "--cwd=/w", "--", "srv", "a",
            ),
        )  # fmt: skip

    def test_launcher_is_absolute_file(self) -> None:
        """The launcher is run by an absolute file path that exists."""
        self.assertTrue(os.path.isabs(sandbox.LAUNCHER))
        self.assertTrue(os.path.isfile(sandbox.LAUNCHER))

    def test_nproc_and_partial(self) -> None:
        """C{max_processes} adds C{--nproc}; a C{None} limit is left out."""
        limits = ResourceLimits(cpu_seconds=None, memory_mb=None, file_size_mb=None,
                                open_files=64, max_processes=50)  # fmt: skip
        self.assertEqual(sandbox.limit_options(limits), ["--nofile=64", "--nproc=50"])

    def test_no_limits(self) -> None:
        """C{resource_limits: false} gives no limit options."""
        svc = service(sandbox=SandboxConfig(resource_limits=None))
        argv = sandbox.build_argv(svc, "/w", euid=1000, pdeathsig=False)
        self.assertEqual(argv[4:], ("--cwd=/w", "--", "srv", "a"))

    def test_disabled(self) -> None:
        """The sandbox disabled: only the working directory (setsid is unconditional)."""
        svc = service(sandbox=SandboxConfig(enabled=False, drop_privileges=True))
        argv = sandbox.build_argv(svc, "/w", euid=0, python="/py")
        self.assertEqual(argv, ("/py", "-S", "-I", sandbox.LAUNCHER, "--cwd=/w", "--", "srv", "a"))

    def test_drop_privileges_only_as_root(self) -> None:
        """C{--user} is passed only when asked for and the gateway is root."""
        svc = service(sandbox=SandboxConfig(drop_privileges=True, user="daemon"))
        self.assertIn("--user=daemon", sandbox.build_argv(svc, "/w", euid=0))
        self.assertNotIn("--user=daemon", sandbox.build_argv(svc, "/w", euid=1000))
        plain = sandbox.build_argv(service(), "/w", 0)
        self.assertFalse(any(a.startswith("--user") for a in plain))


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
