"""
Tests for L{mcpgw._launch}, the launcher: option parsing and the order of its system calls
(with fake C{os} and C{resource} modules), and one real run of it by file path.
"""

from __future__ import annotations

import builtins
import io
import os
import signal
import sys
import tempfile
from typing import Any

import attrs
from twisted.internet import reactor as _global_reactor
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from mcpgw import _launch, launchers, sandbox
from mcpgw.config import ResourceLimits, SandboxConfig, ServiceConfig

reactor: Any = _global_reactor
INFINITY = -1


class FakeOS:
    """Records the calls the launcher makes; C{execvp} raises like a missing program."""

    def __init__(
        self,
        euid: int = 1000,
        exec_error: OSError | None = None,
        environ: dict[str, str] | None = None,
    ) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.euid = euid
        self.exec_error = exec_error or FileNotFoundError(2, "No such file or directory")
        self.environ = {} if environ is None else environ

    def setsid(self) -> None:
        self.calls.append(("setsid",))

    def chdir(self, path: str) -> None:
        self.calls.append(("chdir", path))

    def geteuid(self) -> int:
        return self.euid

    def setgroups(self, groups: list[int]) -> None:
        self.calls.append(("setgroups", groups))

    def setgid(self, gid: int) -> None:
        self.calls.append(("setgid", gid))

    def setuid(self, uid: int) -> None:
        self.calls.append(("setuid", uid))

    def execvp(self, file: str, argv: list[str]) -> None:
        self.calls.append(("execvp", file, argv))
        raise self.exec_error


class FakeResource:
    """A C{resource} module double with settable hard limits."""

    RLIM_INFINITY = INFINITY

    def __init__(self, hard: int = INFINITY) -> None:
        self.hard = hard
        self.set: list[tuple[int, tuple[int, int]]] = []

    def getrlimit(self, which: int) -> tuple[int, int]:
        return (self.hard, self.hard)

    def setrlimit(self, which: int, limits: tuple[int, int]) -> None:
        self.set.append((which, limits))


class ParseTests(SynchronousTestCase):
    """L{_launch.parse_args}."""

    def test_options_and_command(self) -> None:
        """Options before C{--}; everything after it is the command, untouched."""
        options, argv = _launch.parse_args(["--nofile=5", "--pdeathsig", "--", "x", "--nofile=9"])
        self.assertEqual(options, {"nofile": "5", "pdeathsig": ""})
        self.assertEqual(argv, ["x", "--nofile=9"])

    def test_errors(self) -> None:
        """No command, an unknown option or a stray argument are launch errors."""
        for args in (["--nofile=5"], ["--nofile=5", "--"], ["--bogus=1", "--", "x"], ["x"]):
            self.assertRaises(_launch.LaunchError, _launch.parse_args, args)


class LaunchTests(SynchronousTestCase):
    """L{_launch.launch} and L{_launch.main} with fake modules."""

    def run_main(self, args: list[str], osmod: FakeOS, rlimit: FakeResource) -> tuple[int, str]:
        stderr = io.StringIO()
        code = _launch.main(args, osmod, rlimit, stderr)  # type: ignore[arg-type]
        return code, stderr.getvalue()

    def test_order(self) -> None:
        """
        setsid first, then the limits (soft = hard), then chdir, then exec of the command.
        """
        fake_os, fake_resource = FakeOS(), FakeResource()
        args = ["--cpu=10", "--nofile=64", "--cwd=/w", "--", "srv", "a"]
        self.run_main(args, fake_os, fake_resource)
        self.assertEqual(
            fake_os.calls, [("setsid",), ("chdir", "/w"), ("execvp", "srv", ["srv", "a"])]
        )
        self.assertEqual(
            fake_resource.set,
            [(_launch.LIMITS["cpu"], (10, 10)), (_launch.LIMITS["nofile"], (64, 64))],
        )

    def test_pdeathsig_after_user(self) -> None:
        """
        The parent-death signal is asked for after the user change, which would clear it
        (the kernel resets it on a new euid/egid), and before exec.
        """
        fake_os = FakeOS(euid=0)
        args = ["--pdeathsig", "--user=nobody", "--cwd=/w", "--", "srv"]
        self.assertRaises(
            _launch.LaunchError,
            _launch.launch,
            args,
            fake_os,
            FakeResource(),
            pdeathsig=lambda: fake_os.calls.append(("pdeathsig",)),
        )
        names = [c[0] for c in fake_os.calls]
        self.assertEqual(
            names, ["setsid", "setgroups", "setgid", "setuid", "pdeathsig", "chdir", "execvp"]
        )

    def test_clamped_to_hard(self) -> None:
        """A limit above the current hard limit is lowered to it."""
        fake_resource = FakeResource(hard=100)
        self.run_main(["--nofile=5000", "--", "srv"], FakeOS(), fake_resource)
        self.assertEqual(fake_resource.set, [(_launch.LIMITS["nofile"], (100, 100))])

    def test_exec_failure(self) -> None:
        """A command that cannot run: one line on stderr naming it, exit status 127."""
        code, err = self.run_main(["--", "nope"], FakeOS(), FakeResource())
        self.assertEqual(code, 127)
        self.assertEqual(err, "mcpgw-launch: cannot run 'nope': No such file or directory\n")

    def test_bad_value(self) -> None:
        """A non-integer limit is reported, nothing is exec'd."""
        fake_os = FakeOS()
        code, err = self.run_main(["--as=lots", "--", "srv"], fake_os, FakeResource())
        self.assertEqual(code, 127)
        self.assertIn("--as needs an integer", err)
        self.assertNotIn("execvp", [c[0] for c in fake_os.calls])

    def test_chdir_failure(self) -> None:
        """A working directory that cannot be entered is reported; nothing is exec'd."""

        class NoDir(FakeOS):
            def chdir(self, path: str) -> None:
                raise FileNotFoundError(2, "No such file or directory")

        code, err = self.run_main(["--cwd=/gone", "--", "srv"], NoDir(), FakeResource())
        self.assertEqual(code, 127)
        self.assertIn("cannot change directory to '/gone'", err)

    def test_user_ignored_when_not_root(self) -> None:
        """C{--user} does nothing for a non-root launcher."""
        fake_os = FakeOS(euid=1000)
        self.run_main(["--user=nobody", "--", "srv"], fake_os, FakeResource())
        self.assertNotIn("setuid", [c[0] for c in fake_os.calls])

    def test_user_as_root(self) -> None:
        """As root, C{--user} clears groups, sets the gid, then the uid."""
        import pwd

        nobody = pwd.getpwnam("nobody")
        fake_os = FakeOS(euid=0)
        self.run_main(["--user=nobody", "--", "srv"], fake_os, FakeResource())
        self.assertEqual(
            fake_os.calls[1:4],
            [("setgroups", []), ("setgid", nobody.pw_gid), ("setuid", nobody.pw_uid)],
        )

    def test_unknown_user(self) -> None:
        """An unknown user is a launch error."""
        args = ["--user=no-such-user-xyz", "--", "srv"]
        code, err = self.run_main(args, FakeOS(0), FakeResource())
        self.assertEqual(code, 127)
        self.assertIn("unknown user", err)


class NoImportAfterDropOS(FakeOS):
    """
    A root C{FakeOS} after whose first privilege change (C{setgroups}) importing a module
    the launch did not import before fails, as it does for real when the new user cannot
    read the standard library; C{execvp} searches C{PATH} as C{os.execvp} does
    (C{os.get_exec_path}) before failing like a missing program.
    """

    def __init__(self, test: SynchronousTestCase) -> None:
        super().__init__(euid=0)
        self.dropped = False
        self.imported: set[str] = {"os", "resource", "_signal", "sys"}
        self.refused: list[str] = []
        real_import = builtins.__import__

        def guarded_import(name: str, *args: Any, **kwargs: Any) -> Any:
            if self.dropped and name not in self.imported:
                self.refused.append(name)
                raise ImportError(f"No module named {name!r} (unreadable)")
            self.imported.add(name)
            return real_import(name, *args, **kwargs)

        test.patch(builtins, "__import__", guarded_import)

    def setgroups(self, groups: list[int]) -> None:
        self.dropped = True
        super().setgroups(groups)

    def execvp(self, file: str, argv: list[str]) -> None:
        os.get_exec_path()
        super().execvp(file, argv)


def keep_pdeathsig(test: SynchronousTestCase) -> None:
    """Restore this process's parent-death signal (Linux) once C{test} is done."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl
    current = ctypes.c_int(0)
    prctl(2, ctypes.byref(current), 0, 0, 0)  # PR_GET_PDEATHSIG
    test.addCleanup(prctl, _launch.PR_SET_PDEATHSIG, current.value, 0, 0, 0)


class PrivilegeDropTests(SynchronousTestCase):
    """The launcher loads everything it needs before it changes user."""

    def test_no_import_after_user_change(self) -> None:
        """
        With C{--user} and C{--pdeathsig}, nothing is imported after the user change: the
        parent-death signal (C{ctypes}, libc) and C{os.execvp}'s C{PATH} search (C{warnings})
        are loaded before it, so the only failure is the fake's missing program.
        """
        keep_pdeathsig(self)
        fake_os = NoImportAfterDropOS(self)
        stderr = io.StringIO()
        args = ["--pdeathsig", "--user=nobody", "--cwd=/w", "--", "srv"]
        rlimit: Any = FakeResource()
        code = _launch.main(args, fake_os, rlimit, stderr)  # type: ignore[arg-type]
        self.assertEqual(fake_os.refused, [])
        self.assertEqual(
            (code, stderr.getvalue()),
            (127, "mcpgw-launch: cannot run 'srv': No such file or directory\n"),
        )
        self.assertEqual([c[0] for c in fake_os.calls][-2:], ["chdir", "execvp"])

    def test_import_error_is_one_line(self) -> None:
        """An C{ImportError} (a module the new user cannot read) is one line and 127."""

        class Unreadable(FakeOS):
            def chdir(self, path: str) -> None:
                raise ImportError("No module named 'warnings'")

        stderr = io.StringIO()
        fake_os: Any = Unreadable()
        rlimit: Any = FakeResource()
        code = _launch.main(["--cwd=/w", "--", "srv"], fake_os, rlimit, stderr)
        self.assertEqual(
            (code, stderr.getvalue()), (127, "mcpgw-launch: No module named 'warnings'\n")
        )


class EnvironTests(SynchronousTestCase):
    """The launcher execs with the environment the gateway built, not its interpreter's."""

    def test_coerced_lc_ctype_removed(self) -> None:
        """
        Without C{--lc-ctype}, an C{LC_CTYPE} (set by the interpreter's C-locale coercion)
        is removed before the exec; the rest of the environment is left alone.
        """
        fake_os = FakeOS(environ={"PATH": "/bin", "LC_CTYPE": "C.UTF-8"})
        self.assertRaises(_launch.LaunchError, _launch.launch, ["--", "srv"], fake_os,
                          FakeResource())  # fmt: skip
        self.assertEqual(fake_os.environ, {"PATH": "/bin"})

    def test_lc_ctype_restored(self) -> None:
        """C{--lc-ctype=VALUE} puts the gateway's C{LC_CTYPE} back (coercion replaced it)."""
        fake_os = FakeOS(environ={"PATH": "/bin", "LC_CTYPE": "C.UTF-8"})
        self.assertRaises(_launch.LaunchError, _launch.launch, ["--lc-ctype=C", "--", "srv"],
                          fake_os, FakeResource())  # fmt: skip
        self.assertEqual(fake_os.environ, {"PATH": "/bin", "LC_CTYPE": "C"})
        options, _ = _launch.parse_args(["--lc-ctype=en_US.UTF-8", "--", "x"])
        self.assertEqual(options, {"lc-ctype": "en_US.UTF-8"})


class RealLaunchTests(TestCase):
    """The launcher run for real, by file path with C{-S -I}."""

    async def test_real_run(self) -> None:
        """
        The command runs as its own session leader with the limits applied, in the asked
        directory, with no ignored signals inherited from the launcher's interpreter.
        """
        workdir = os.path.abspath(self.mktemp())
        os.mkdir(workdir)
        script = (
            'ulimit -n; ulimit -t; pwd; grep SigIgn /proc/self/status; '
            'ps -o pid=,pgid=,sid= -p $$'
        )  # fmt: skip
        args = ["-S", "-I", launchers.LAUNCHER, "--nofile=64", "--cpu=7", "--pdeathsig",
                f"--cwd={workdir}", "--", "sh", "-c", script]  # fmt: skip
        out, err, code = await getProcessOutputAndValue(
            sys.executable, args, env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        )
        self.assertEqual((code, err), (0, b""))
        lines = out.decode().split("\n")
        self.assertEqual(lines[:3], ["64", "7", workdir])
        ignored = int(lines[3].split()[1], 16)
        for signum in (13, 25):  # SIGPIPE, SIGXFSZ: Python ignores them; exec would keep that
            self.assertFalse(ignored & (1 << (signum - 1)), signum)
        pid, pgid, sid = lines[4].split()
        self.assertEqual(pid, pgid)
        self.assertEqual(pid, sid)

    async def test_real_failure(self) -> None:
        """A missing command: exit status 127 and one line on stderr."""
        _, err, code = await getProcessOutputAndValue(
            sys.executable, ["-S", "-I", launchers.LAUNCHER, "--", "/no/such/cmd"], env={}
        )
        self.assertEqual(code, 127)
        self.assertEqual(err.count(b"\n"), 1)
        self.assertTrue(err.startswith(b"mcpgw-launch: cannot run '/no/such/cmd'"))

    async def test_real_environment(self) -> None:
        """
        The command gets exactly the environment the launcher was given: no C{LC_CTYPE}
        added by the interpreter's locale coercion, and C{--lc-ctype}'s value kept as given.
        """
        path = os.environ.get("PATH", "/usr/bin:/bin")
        for extra, option in (({}, []), ({"LC_CTYPE": "C"}, ["--lc-ctype=C"])):
            env = {"PATH": path, "LANG": "C", **extra}
            out, err, code = await getProcessOutputAndValue(
                sys.executable, ["-S", "-I", launchers.LAUNCHER, *option, "--", "env"], env=env
            )
            self.assertEqual((code, err), (0, b""))
            self.assertEqual(dict(line.split("=", 1) for line in out.decode().splitlines()), env)

    async def test_real_drop_privileges(self) -> None:
        """
        As root, C{--user=nobody} with C{--pdeathsig} runs the command as nobody, even when
        nobody cannot read the interpreter's standard library (nothing is imported after
        the switch).
        """
        if os.geteuid() != 0:
            raise SkipTest("needs root")
        import pwd

        nobody = pwd.getpwnam("nobody")
        args = ["-S", "-I", launchers.LAUNCHER, "--pdeathsig", "--user=nobody", "--cwd=/", "--",
                "id", "-u"]  # fmt: skip
        out, err, code = await getProcessOutputAndValue(
            sys.executable, args, env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        )
        self.assertEqual((code, err, out), (0, b"", f"{nobody.pw_uid}\n".encode()))


class EnvParityTests(TestCase):
    """Both launch paths give the child the same environment (SPEC 6 C{restricted_env})."""

    def setUp(self) -> None:
        tools, how = launchers.default_tools()
        if tools is None:
            raise SkipTest(f"this machine uses {how}")
        self.tools = tools
        self.root = os.path.abspath(self.mktemp())

    async def child_env(
        self, tools: launchers.Tools | None, environ: dict[str, str], restricted: bool = True
    ) -> set[str]:
        service = ServiceConfig(
            name="t", command=("env",), sandbox=SandboxConfig(restricted_env=restricted)
        )
        launch = sandbox.prepare_launch(service, self.root, environ, tools=tools)
        self.addCleanup(sandbox.remove_private_dir, launch.private_dir)
        self.assertEqual(launch.launcher, "python" if tools is None else "util-linux")
        out, err, code = await getProcessOutputAndValue(
            launch.executable, launch.argv[1:], env=dict(launch.env)
        )
        self.assertEqual((code, err), (0, b""))
        return set(out.decode().replace(launch.private_dir, "<private>").splitlines())

    async def test_same_environment(self) -> None:
        """
        The Python launcher and the util-linux chain exec the command with the same
        environment, with and without an C{LC_CTYPE} in the gateway's.
        """
        path = os.environ.get("PATH", "/usr/bin:/bin")
        for environ in ({"PATH": path, "SECRET": "x"}, {"PATH": path, "LC_CTYPE": "C"}):
            python = await self.child_env(None, environ)
            chain = await self.child_env(self.tools, environ)
            self.assertEqual(python, chain)
            self.assertNotIn("SECRET=x", python)

    async def test_pwd_passed_through(self) -> None:
        """
        The shell of the chain changes directory, which sets C{PWD} and C{OLDPWD}: the
        command still gets the gateway's values, or none, as from the other launchers.
        """
        path = os.environ.get("PATH", "/usr/bin:/bin")
        tools = [self.tools, attrs.evolve(self.tools, shell=None), None]
        for environ in ({"PATH": path}, {"PATH": path, "PWD": "/gw", "OLDPWD": "/before"}):
            envs = [await self.child_env(t, environ, restricted=False) for t in tools]
            self.assertEqual(envs[0], envs[1])
            self.assertEqual(envs[0], envs[2])
            pwd = {line for line in envs[0] if line.startswith(("PWD=", "OLDPWD="))}
            expected = {f"{k}={v}" for k, v in environ.items() if k != "PATH"}
            self.assertEqual(pwd, expected)


class RealToolsTests(TestCase):
    """The util-linux chain run for real, spawned by the reactor on its posix_spawn path."""

    def setUp(self) -> None:
        tools, how = launchers.default_tools()
        if tools is None:
            raise SkipTest(f"this machine uses {how}")
        self.tools = tools
        self.workdir = os.path.abspath(self.mktemp())
        os.mkdir(self.workdir)

    async def run_chain(self, script: str, **sandbox_options: Any) -> list[str]:
        limits = ResourceLimits(cpu_seconds=7, memory_mb=None, file_size_mb=None, open_files=64)
        service = ServiceConfig(
            name="t",
            command=("sh", "-c", script),
            sandbox=SandboxConfig(resource_limits=limits, **sandbox_options),
        )
        argv = launchers.build_tools_argv(service, self.workdir, os.geteuid(), self.tools)
        out, err, code = await getProcessOutputAndValue(
            argv[0], argv[1:], env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        )
        self.assertEqual((code, err), (0, b""))
        return out.decode().split("\n")

    async def test_real_run(self) -> None:
        """
        The command runs as its own session leader (no fork: same pid), with the limits,
        in the asked directory, with no ignored signal inherited from the gateway's Python
        (Twisted's posix_spawn resets them), and nothing blocked.
        """
        script = (
            "ulimit -n; ulimit -t; pwd; grep -E 'Sig(Ign|Blk)' /proc/self/status; "
            "ps -o pid=,pgid=,sid= -p $$"
        )
        # What a gateway's Python does (trial may not): the child must not inherit it.
        for signum in (signal.SIGPIPE, signal.SIGXFSZ):
            self.addCleanup(signal.signal, signum, signal.signal(signum, signal.SIG_IGN))
        lines = await self.run_chain(script)
        self.assertEqual(lines[:3], ["64", "7", self.workdir])
        masks = dict(line.split(":") for line in lines[3:5])
        ignored = int(masks["SigIgn"].strip(), 16)
        for signum in (signal.SIGPIPE, signal.SIGXFSZ):
            self.assertFalse(ignored & (1 << (signum - 1)), signum)
        self.assertEqual(int(masks["SigBlk"].strip(), 16), 0)
        pid, pgid, sid = lines[5].split()
        self.assertEqual(pid, pgid)
        self.assertEqual(pid, sid)

    async def test_drop_privileges(self) -> None:
        """As root, the chain switches to the user, its primary group and no other group."""
        if os.geteuid() != 0:
            raise SkipTest("needs root")
        import pwd

        nobody = pwd.getpwnam("nobody")
        # A directory nobody can enter (the trial directory's parents may not be).
        self.workdir = tempfile.mkdtemp(prefix="mcpgw-test-")
        self.addCleanup(os.rmdir, self.workdir)
        os.chmod(self.workdir, 0o755)
        lines = await self.run_chain("id -u; id -g; id -G", drop_privileges=True, user="nobody")
        self.assertEqual(lines[:3], [str(nobody.pw_uid), str(nobody.pw_gid), str(nobody.pw_gid)])
