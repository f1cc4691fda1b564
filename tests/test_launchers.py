"""Tests for L{mcpgw.launchers}: the util-linux chain's and the Python launcher's argv."""

from __future__ import annotations

import os
from unittest import SkipTest

import attrs
from twisted.trial.unittest import SynchronousTestCase

from mcpgw import launchers, sandbox
from mcpgw.config import ResourceLimits, SandboxConfig, ServiceConfig


def service(**overrides: object) -> ServiceConfig:
    return ServiceConfig(name="svc", command=("srv", "a"), **overrides)  # type: ignore[arg-type]


TOOLS = launchers.Tools(
    setsid="/u/setsid",
    prlimit="/u/prlimit",
    setpriv="/u/setpriv",
    env="/c/env",
    hard_limits={"cpu": None, "as": None, "fsize": None, "nofile": 4096, "nproc": None},
)


class ArgvTests(SynchronousTestCase):
    """L{launchers.build_argv} and L{launchers.limit_options}."""

    def test_defaults(self) -> None:
        """The default limits, pdeathsig, the working directory, C{--} and the command."""
        argv = launchers.build_argv(service(), "/w", euid=1000, python="/py", pdeathsig=True)
        self.assertEqual(
            argv,
            (
                "/py", "-S", "-I", launchers.LAUNCHER,
                "--cpu=3600", f"--as={2048 * 1024 * 1024}", f"--fsize={100 * 1024 * 1024}",
                "--nofile=1024", "--pdeathsig", "--cwd=/w", "--", "srv", "a",
            ),
        )  # fmt: skip

    def test_launcher_is_absolute_file(self) -> None:
        """The launcher is run by an absolute file path that exists."""
        self.assertTrue(os.path.isabs(launchers.LAUNCHER))
        self.assertTrue(os.path.isfile(launchers.LAUNCHER))

    def test_nproc_and_partial(self) -> None:
        """C{max_processes} adds C{--nproc}; a C{None} limit is left out."""
        limits = ResourceLimits(cpu_seconds=None, memory_mb=None, file_size_mb=None,
                                open_files=64, max_processes=50)  # fmt: skip
        self.assertEqual(launchers.limit_options(limits), ["--nofile=64", "--nproc=50"])

    def test_no_limits(self) -> None:
        """C{resource_limits: false} gives no limit options."""
        svc = service(sandbox=SandboxConfig(resource_limits=None))
        argv = launchers.build_argv(svc, "/w", euid=1000, pdeathsig=False)
        self.assertEqual(argv[4:], ("--cwd=/w", "--", "srv", "a"))

    def test_disabled(self) -> None:
        """The sandbox disabled: only the working directory (setsid is unconditional)."""
        svc = service(sandbox=SandboxConfig(enabled=False, drop_privileges=True))
        argv = launchers.build_argv(svc, "/w", euid=0, python="/py")
        self.assertEqual(
            argv, ("/py", "-S", "-I", launchers.LAUNCHER, "--cwd=/w", "--", "srv", "a")
        )

    def test_drop_privileges_only_as_root(self) -> None:
        """C{--user} is passed only when asked for and the gateway is root."""
        svc = service(sandbox=SandboxConfig(drop_privileges=True, user="daemon"))
        self.assertIn("--user=daemon", launchers.build_argv(svc, "/w", euid=0))
        self.assertNotIn("--user=daemon", launchers.build_argv(svc, "/w", euid=1000))
        plain = launchers.build_argv(service(), "/w", 0)
        self.assertFalse(any(a.startswith("--user") for a in plain))

    def test_lc_ctype_passed(self) -> None:
        """
        The child's C{LC_CTYPE}, if it has one, is passed as C{--lc-ctype} (the launcher's
        interpreter coerces it); without one, no option (the launcher removes it).
        """
        argv = launchers.build_argv(service(), "/w", 1000, "/py", False, env={"LC_CTYPE": "C"})
        self.assertEqual(argv[4:], ("--cpu=3600", f"--as={2048 * 1024 * 1024}",
                                    f"--fsize={100 * 1024 * 1024}", "--nofile=1024",
                                    "--cwd=/w", "--lc-ctype=C", "--", "srv", "a"))  # fmt: skip
        plain = launchers.build_argv(service(), "/w", 1000, "/py", False, env={"PATH": "/bin"})
        self.assertFalse(any(a.startswith("--lc-ctype") for a in plain))

    def test_prepare_passes_lc_ctype(self) -> None:
        """C{prepare_launch} gives the launcher the C{LC_CTYPE} of the environment it built."""
        root = os.path.abspath(self.mktemp())
        launch = sandbox.prepare_launch(
            service(sandbox=SandboxConfig(restricted_env=False)),
            root,
            {"PATH": "/bin", "LC_CTYPE": "C"},
            euid=1000,
        )
        self.addCleanup(sandbox.remove_private_dir, launch.private_dir)
        self.assertEqual(launch.env["LC_CTYPE"], "C")
        self.assertIn("--lc-ctype=C", launch.argv)


class ToolsArgvTests(SynchronousTestCase):
    """L{launchers.build_tools_argv}: the util-linux chain."""

    def test_defaults(self) -> None:
        """
        C{setsid}, C{prlimit} with the default limits, C{setpriv --pdeathsig TERM}, then
        C{env -C} the working directory, C{--} and the command.
        """
        argv = launchers.build_tools_argv(service(), "/w", 1000, TOOLS)
        self.assertEqual(
            argv,
            (
                "/u/setsid",
                "/u/prlimit", "--cpu=3600", f"--as={2048 * 1024 * 1024}",
                f"--fsize={100 * 1024 * 1024}", "--nofile=1024", "--",
                "/u/setpriv", "--pdeathsig", "TERM", "--",
                "/c/env", "-C", "/w", "--", "srv", "a",
            ),
        )  # fmt: skip

    def test_same_limits_as_launcher(self) -> None:
        """Below the hard limits, C{prlimit} gets exactly the Python launcher's options."""
        limits = ResourceLimits(open_files=64, max_processes=50)
        clamped = launchers.clamped_limits(limits, TOOLS.hard_limits)
        self.assertEqual(launchers.as_options(clamped), launchers.limit_options(limits))

    def test_clamped_to_hard(self) -> None:
        """A limit above the gateway's hard limit is lowered to it (prlimit would fail)."""
        limits = ResourceLimits(cpu_seconds=None, memory_mb=None, file_size_mb=None,
                                open_files=100000)  # fmt: skip
        clamped = launchers.clamped_limits(limits, TOOLS.hard_limits)
        self.assertEqual(launchers.as_options(clamped), ["--nofile=4096"])

    def test_no_limits(self) -> None:
        """C{resource_limits: false}: no C{prlimit} at all."""
        svc = service(sandbox=SandboxConfig(resource_limits=None))
        argv = launchers.build_tools_argv(svc, "/w", 1000, TOOLS)
        self.assertEqual(
            argv,
            ("/u/setsid", "/u/setpriv", "--pdeathsig", "TERM", "--",
             "/c/env", "-C", "/w", "--", "srv", "a"),
        )  # fmt: skip

    def test_disabled(self) -> None:
        """The sandbox disabled: only the new session and the working directory."""
        svc = service(sandbox=SandboxConfig(enabled=False, drop_privileges=True))
        argv = launchers.build_tools_argv(svc, "/w", 0, TOOLS)
        self.assertEqual(argv, ("/u/setsid", "/c/env", "-C", "/w", "--", "srv", "a"))

    def test_drop_privileges_only_as_root(self) -> None:
        """
        As root, C{setpriv} switches to the user's uid and primary gid and clears the
        supplementary groups; not otherwise.
        """
        import pwd

        daemon = pwd.getpwnam("daemon")
        svc = service(sandbox=SandboxConfig(drop_privileges=True, user="daemon"))
        argv = launchers.build_tools_argv(svc, "/w", 0, TOOLS)
        start = argv.index("/u/setpriv")
        self.assertEqual(
            argv[start : start + 7],
            ("/u/setpriv", f"--reuid={daemon.pw_uid}", f"--regid={daemon.pw_gid}",
             "--clear-groups", "--pdeathsig", "TERM", "--"),
        )  # fmt: skip
        as_user = launchers.build_tools_argv(svc, "/w", 1000, TOOLS)
        self.assertFalse(any(a.startswith("--reuid") for a in as_user))

    def test_unknown_user(self) -> None:
        """An unknown C{sandbox.user} is an C{OSError}, as for the Python launcher."""
        svc = service(sandbox=SandboxConfig(drop_privileges=True, user="no-such-user-xyz"))
        self.assertRaises(OSError, launchers.build_tools_argv, svc, "/w", 0, TOOLS)


class CanUseToolsTests(SynchronousTestCase):
    """L{launchers.can_use_tools}: when the chain can run the command."""

    def setUp(self) -> None:
        self.bin = os.path.abspath(self.mktemp())
        os.mkdir(self.bin)
        self.program = os.path.join(self.bin, "srv")
        with open(self.program, "w") as f:
            f.write("#!/bin/sh\n")
        os.chmod(self.program, 0o755)

    def test_found_in_path(self) -> None:
        """A bare name is looked up in the child's C{PATH}, not the gateway's."""
        self.assertTrue(launchers.can_use_tools(("srv",), "/", {"PATH": self.bin}))
        self.assertFalse(launchers.can_use_tools(("srv",), "/", {"PATH": "/nonexistent"}))

    def test_paths(self) -> None:
        """An absolute path must exist; a relative one is taken from the working dir."""
        self.assertTrue(launchers.can_use_tools((self.program,), "/", {}))
        self.assertTrue(launchers.can_use_tools(("./srv",), self.bin, {}))
        self.assertFalse(launchers.can_use_tools(("./srv",), "/", {}))
        self.assertFalse(launchers.can_use_tools(("/nonexistent/srv",), "/", {}))

    def test_not_executable(self) -> None:
        """A file that cannot be executed is left to the Python launcher to report."""
        os.chmod(self.program, 0o644)
        if os.access(self.program, os.X_OK):
            raise SkipTest("root may execute anything")
        self.assertFalse(launchers.can_use_tools((self.program,), "/", {}))

    def test_working_dir_missing(self) -> None:
        """A working directory that is not there is left to the Python launcher to report."""
        self.assertFalse(launchers.can_use_tools((self.program,), "/nonexistent", {}))

    def test_equals_sign(self) -> None:
        """A program name with C{=} would be taken for a variable by C{env}."""
        weird = os.path.join(self.bin, "a=b")
        os.symlink(self.program, weird)
        self.assertFalse(launchers.can_use_tools((weird,), "/", {}))


class ShellArgvTests(SynchronousTestCase):
    """L{launchers.build_tools_argv} with C{dash} in place of C{prlimit} and C{env -C}."""

    tools = attrs.evolve(TOOLS, shell="/b/dash")

    def test_defaults(self) -> None:
        """
        C{setsid}, C{setpriv}, then C{dash} setting the limits in its units (KiB, 512-byte
        blocks) and the directory, all passed as arguments, never in the script.
        """
        argv = launchers.build_tools_argv(service(), "/w d", 1000, self.tools, {"PWD": "/gw"})
        self.assertEqual(
            argv[:7], ("/u/setsid", "/u/setpriv", "--pdeathsig", "TERM", "--", "/b/dash", "-c")
        )
        script = argv[7]
        self.assertEqual(
            script,
            'ulimit -t "$1" && ulimit -v "$2" && ulimit -f "$3" && ulimit -n "$4"'
            ' && cd -- "$5" && export PWD="$6" && unset OLDPWD && shift 6 && exec "$@"',
        )
        self.assertEqual(
            argv[8:],
            ("mcpgw-launch", "3600", str(2048 * 1024), str(100 * 2048), "1024", "/w d", "/gw",
             "srv", "a"),
        )  # fmt: skip

    def test_clamped_and_no_limits(self) -> None:
        """Limits are lowered to the hard ones; without limits only the directory is set."""
        limits = ResourceLimits(cpu_seconds=None, memory_mb=None, file_size_mb=None,
                                open_files=100000)  # fmt: skip
        argv = launchers.build_tools_argv(
            service(sandbox=SandboxConfig(resource_limits=limits)), "/w", 1000, self.tools
        )
        self.assertEqual(argv[8:10], ("mcpgw-launch", "4096"))
        argv = launchers.build_tools_argv(
            service(sandbox=SandboxConfig(enabled=False)), "/w", 1000, self.tools
        )
        self.assertEqual(
            argv,
            ("/u/setsid", "/b/dash", "-c",
             'cd -- "$1" && unset PWD && unset OLDPWD && shift 1 && exec "$@"',
             "mcpgw-launch", "/w", "srv", "a"),
        )  # fmt: skip


class ShellFallbackTests(SynchronousTestCase):
    """Where C{dash} would change what the child gets, C{prlimit} and C{env -C} run instead."""

    tools = attrs.evolve(TOOLS, shell="/b/dash")

    def test_names_dash_drops(self) -> None:
        """An environment name that is no shell name (C{dash} would drop it)."""
        for env in ({"A-B": "1"}, {"1X": "2"}, {"PATH": "/bin", "x.y": "3"}):
            argv = launchers.build_tools_argv(service(), "/w", 1000, self.tools, env)
            self.assertIn("/u/prlimit", argv)
            self.assertNotIn("/b/dash", argv)
        argv = launchers.build_tools_argv(service(), "/w", 1000, self.tools, {"PATH": "/bin"})
        self.assertIn("/b/dash", argv)

    def test_process_limit_with_user_switch(self) -> None:
        """
        C{max_processes} with a switch of user: C{prlimit} sets it before C{setpriv}, so
        the kernel refuses to start a user already over it (C{dash} would set it after).
        """
        import pwd

        daemon = pwd.getpwnam("daemon")
        limits = ResourceLimits(max_processes=50)
        svc = service(sandbox=SandboxConfig(drop_privileges=True, user="daemon",
                                            resource_limits=limits))  # fmt: skip
        argv = launchers.build_tools_argv(svc, "/w", 0, self.tools)
        self.assertEqual(argv[:2], ("/u/setsid", "/u/prlimit"))
        self.assertIn(f"--reuid={daemon.pw_uid}", argv)
        argv = launchers.build_tools_argv(svc, "/w", 1000, self.tools)  # not root: no switch
        self.assertIn("/b/dash", argv)


class FindToolsTests(SynchronousTestCase):
    """L{launchers.find_tools}."""

    def which(self, name: str) -> str | None:
        return f"/bin/{name}"

    def test_found(self) -> None:
        """Every tool found and the trial run passed: the chain, with the hard limits."""
        checked: list[launchers.Tools] = []

        def check(tools: launchers.Tools) -> None:
            checked.append(tools)

        tools, how = launchers.find_tools(self.which, check, "linux")
        assert tools is not None
        self.assertEqual(checked, [tools])
        self.assertEqual(
            (tools.setsid, tools.prlimit, tools.setpriv, tools.env, tools.shell),
            ("/bin/setsid", "/bin/prlimit", "/bin/setpriv", "/bin/env", "/bin/dash"),
        )
        self.assertEqual(tools.hard_limits, launchers.current_hard_limits())
        self.assertIn("util-linux", how)
        self.assertIn("/bin/dash", how)

    def test_without_dash(self) -> None:
        """No C{dash}, or one that fails its trial run: C{prlimit} and C{env -C} instead."""

        def which(name: str) -> str | None:
            return None if name == "dash" else f"/bin/{name}"

        tools, how = launchers.find_tools(which, lambda t: None, "linux")
        assert tools is not None
        self.assertIsNone(tools.shell)
        self.assertNotIn("dash", how)
        checked: list[str | None] = []

        def check(tools: launchers.Tools) -> str | None:
            checked.append(tools.shell)
            return "exited with 2" if tools.shell else None

        tools, how = launchers.find_tools(self.which, check, "linux")
        assert tools is not None
        self.assertEqual(checked, ["/bin/dash", None])
        self.assertIsNone(tools.shell)
        self.assertIn("/bin/prlimit", how)

    def test_missing(self) -> None:
        """A missing tool: the Python launcher, naming what is missing."""

        def which(name: str) -> str | None:
            return None if name in ("setpriv", "prlimit") else f"/bin/{name}"

        tools, how = launchers.find_tools(which, lambda t: None, "linux")
        self.assertIsNone(tools)
        self.assertIn("prlimit, setpriv not found", how)

    def test_check_fails(self) -> None:
        """A failed trial run (e.g. an C{env} without C{-C}): the Python launcher, and why."""
        tools, how = launchers.find_tools(self.which, lambda t: "exited with 125", "linux")
        self.assertIsNone(tools)
        self.assertIn("exited with 125", how)

    def test_not_linux(self) -> None:
        """Elsewhere, always the Python launcher."""
        tools, how = launchers.find_tools(self.which, lambda t: None, "darwin")
        self.assertIsNone(tools)
        self.assertIn("Python launcher", how)

    def test_check_real(self) -> None:
        """On this machine, when the tools are there, the trial run passes."""
        tools, how = launchers.find_tools()
        if tools is None:
            raise SkipTest(how)
        self.assertIsNone(launchers.check_tools(tools))
        self.assertIsNone(launchers.check_tools(attrs.evolve(tools, shell=None)))
        broken = attrs.evolve(tools, env="/nonexistent/env")
        self.assertIsNotNone(launchers.check_tools(broken))
        broken = attrs.evolve(tools, shell=None, prlimit="/nonexistent/prlimit")
        self.assertIsNotNone(launchers.check_tools(broken))

    def test_default_tools_cached(self) -> None:
        """L{launchers.default_tools} looks once per process."""
        self.assertIs(launchers.default_tools(), launchers.default_tools())
