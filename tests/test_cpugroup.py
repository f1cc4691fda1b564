"""
Tests for L{mcpgw.cpugroup}: finding the gateway's CPU group in a fake C{/proc}, the idle
group's moves recorded in a fake group directory, and one real run where this machine lets
the test make a group (root, a writable C{cpu} hierarchy).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from mcpgw import cpugroup
from mcpgw.cpugroup import PREFIX, IdleGroup, cpu_cgroup_dir, pid_namespace

#: Above the kernel's largest pid_max: never a live process.
NO_SUCH_PID = 2**22 + 1


def fake_proc(root: str, mountinfo: str, cgroup: str) -> str:
    os.makedirs(os.path.join(root, "self"))
    for name, text in (("mountinfo", mountinfo), ("cgroup", cgroup)):
        with open(os.path.join(root, "self", name), "w") as f:
            f.write(text)
    return root


class CpuCgroupDirTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.mount = os.path.abspath(self.mktemp())
        os.makedirs(self.mount)

    def found(self, mountinfo: str, cgroup: str) -> str | None:
        return cpu_cgroup_dir(fake_proc(self.mktemp(), mountinfo, cgroup))

    def test_v1(self) -> None:
        """cgroup v1: the hierarchy with C{cpu} (alone or with C{cpuacct}) and the path."""
        line = f"32 31 0:29 / {self.mount} rw,relatime - cgroup cgroup rw,cpu,cpuacct\n"
        self.assertEqual(
            self.found(line, "4:memory:/m\n2:cpu,cpuacct:/a/b\n0::/\n"),
            os.path.join(self.mount, "a/b"),
        )
        self.assertEqual(self.found(line, "2:cpu,cpuacct:/\n"), self.mount)

    def test_mount_root(self) -> None:
        """A hierarchy mounted from below its root (a container): the path under it."""
        line = f"32 31 0:29 /docker/c1 {self.mount} rw - cgroup cgroup rw,cpu\n"
        self.assertEqual(self.found(line, "1:cpu:/docker/c1/sub\n"), f"{self.mount}/sub")
        self.assertIsNone(self.found(line, "1:cpu:/elsewhere\n"))

    def test_escaped_mount_point(self) -> None:
        """mountinfo escapes spaces as C{\\040}."""
        spaced = os.path.join(self.mount, "a b")
        os.makedirs(spaced)
        line = f"32 31 0:29 / {self.mount}/a\\040b rw - cgroup cgroup rw,cpu\n"
        self.assertEqual(self.found(line, "1:cpu:/\n"), spaced)

    def test_v2(self) -> None:
        """cgroup v2: only where the group may give its children the C{cpu} controller."""
        line = f"30 23 0:26 / {self.mount} rw - cgroup2 cgroup2 rw\n"
        self.assertIsNone(self.found(line, "0::/\n"))
        with open(os.path.join(self.mount, "cgroup.subtree_control"), "w") as f:
            f.write("cpuset cpu io memory pids\n")
        self.assertEqual(self.found(line, "0::/\n"), self.mount)

    def test_none(self) -> None:
        """No C{cpu} controller, or nothing readable: C{None}."""
        line = f"33 31 0:30 / {self.mount} rw - cgroup cgroup rw,cpuacct\n"
        self.assertIsNone(self.found(line, "3:cpuacct:/\n"))
        self.assertIsNone(cpu_cgroup_dir(os.path.abspath(self.mktemp())))


class FakeHierarchy:
    """
    A cgroup hierarchy in plain directories: a write of a pid to a group's C{cgroup.procs}
    takes it out of every other group's, as the kernel does. Records the writes.
    """

    def __init__(self, home: str) -> None:
        self.home = home
        self.writes: list[tuple[str, str]] = []
        #: File names whose writes fail.
        self.refused: set[str] = set()
        #: Called with each pid moved home (to fork a process meanwhile, say).
        self.moved_home: Callable[[int], None] = lambda pid: None

    def groups(self) -> list[str]:
        return [self.home] + [
            os.path.join(self.home, name)
            for name in sorted(os.listdir(self.home))
            if os.path.isdir(os.path.join(self.home, name))
        ]

    def members(self, group: str) -> list[int]:
        try:
            with open(os.path.join(group, "cgroup.procs")) as f:
                return [int(pid) for pid in f.read().split()]
        except FileNotFoundError:
            return []

    def put(self, group: str, pid: int) -> None:
        for other in self.groups():
            kept = [p for p in self.members(other) if p != pid] + ([pid] if other == group else [])
            procs = os.path.join(other, "cgroup.procs")
            if kept or other == self.home:
                with open(procs, "w") as f:
                    f.write("".join(f"{p}\n" for p in kept))
            elif os.path.exists(procs):
                os.remove(procs)  # an empty group: no file in the way of its rmdir

    def write(self, path: str, text: str) -> None:
        if os.path.basename(path) in self.refused:
            raise PermissionError(13, "Permission denied")
        self.writes.append((os.path.relpath(path, self.home), text))
        if os.path.basename(path) == "cgroup.procs":
            self.put(os.path.dirname(path), int(text))
            if os.path.dirname(path) == self.home:
                self.moved_home(int(text))


class PidNamespaceTests(SynchronousTestCase):
    def test_own(self) -> None:
        """The inode number of this process's C{ns/pid}, as the kernel shows it."""
        if not os.path.exists("/proc/self/ns/pid"):
            raise SkipTest("no /proc/self/ns/pid here")
        self.assertEqual(pid_namespace(), str(os.stat("/proc/self/ns/pid").st_ino))

    def test_unknown(self) -> None:
        """No C{ns/pid} to read: "0"."""
        self.assertEqual(pid_namespace(os.path.abspath(self.mktemp())), "0")


class IdleGroupTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.home = os.path.abspath(self.mktemp())
        os.makedirs(self.home)
        self.proc = os.path.abspath(self.mktemp())
        self.fake = FakeHierarchy(self.home)
        self.group = IdleGroup(self.home, self.proc, write=self.fake.write, threaded=False)
        self.path = os.path.join(self.home, f"{PREFIX}0-{os.getpid()}")  # no ns in self.proc
        self.name = os.path.basename(self.path)

    def process(self, pid: int, session: int, group: str | None = None) -> None:
        os.makedirs(os.path.join(self.proc, str(pid)))
        with open(os.path.join(self.proc, str(pid), "stat"), "w") as f:
            f.write(f"{pid} (a (b) c) S 1 {pid} {session} 0 -1 4194560 0 0\n")
        if group is not None:
            self.fake.put(group, pid)

    def test_open(self) -> None:
        """
        C{open} makes the group next to the gateway's, sets C{cpu.idle}, and checks that it
        may move processes there and back with a throwaway child (reaped), never the gateway.
        """
        self.assertFalse(self.group.usable)
        self.assertIn(self.path, self.group.open())
        (idle, one), (into, child), (back, again) = self.fake.writes
        self.assertEqual((idle, one), (f"{self.name}/cpu.idle", "1"))
        self.assertEqual((into, back), (f"{self.name}/cgroup.procs", "cgroup.procs"))
        self.assertEqual(child, again)
        self.assertNotEqual(int(child), os.getpid())
        self.assertRaises(ChildProcessError, os.waitpid, int(child), os.WNOHANG)
        self.assertTrue(self.group.usable)
        self.assertTrue(os.path.isdir(self.path))

    def test_open_refused(self) -> None:
        """A refused write: the group is removed, not used, and the reason is given."""
        self.fake.refused.add("cpu.idle")
        self.assertIn("Permission denied", self.group.open())
        self.assertFalse(self.group.usable)
        self.assertFalse(os.path.exists(self.path))
        self.group.enter(1234)
        self.assertEqual(self.fake.writes, [])

    def test_move_back_refused(self) -> None:
        """The throwaway child cannot move back: the group is removed and not used."""
        real = self.fake.write

        def write(path: str, text: str) -> None:
            if path == os.path.join(self.home, "cgroup.procs"):
                raise PermissionError(13, "Permission denied")
            real(path, text)

        group = IdleGroup(self.home, self.proc, write=write, threaded=False)
        how = group.open()
        self.assertIn("Permission denied", how)
        self.assertFalse(group.usable)
        self.assertEqual(self.fake.writes[-1][0], f"{self.name}/cgroup.procs")
        self.assertNotIn(str(os.getpid()), [text for _, text in self.fake.writes])

    def test_no_group(self) -> None:
        """No cpu hierarchy: nothing is made."""
        proc = fake_proc(self.mktemp(), "", "")
        group = IdleGroup(None, proc, write=self.fake.write, threaded=False)
        self.assertEqual(group.open(), "no cpu control group to use")
        self.assertFalse(group.usable)

    def test_stale_groups_removed(self) -> None:
        """
        The groups of gateways of this pid namespace that are gone are emptied into the
        gateway's and removed; others are kept, those of another namespace too.
        """
        gone = os.path.join(self.home, f"{PREFIX}0-{NO_SUCH_PID}")
        alive = os.path.join(self.home, f"{PREFIX}0-1")
        elsewhere = os.path.join(self.home, f"{PREFIX}4026531836-{NO_SUCH_PID}")
        other = os.path.join(self.home, "not-ours")
        for path in (alive, elsewhere, other):
            os.makedirs(path)
        os.makedirs(gone)
        self.fake.put(gone, 77)
        self.fake.writes.clear()
        self.group.open()
        self.assertFalse(os.path.exists(gone))
        self.assertIn(("cgroup.procs", "77"), self.fake.writes)
        self.assertTrue(os.path.isdir(alive))
        self.assertTrue(os.path.isdir(elsewhere))
        self.assertTrue(os.path.isdir(other))

    def test_enter(self) -> None:
        """C{enter} moves one process; a refused move (a process gone) is dropped."""
        self.group.open()
        self.fake.writes.clear()
        self.group.enter(1234)
        self.assertEqual(self.fake.members(self.path), [1234])
        self.fake.refused.add("cgroup.procs")
        self.group.enter(1235)
        self.assertEqual(self.fake.members(self.path), [1234])

    def test_release(self) -> None:
        """
        C{release} moves home the session's leader first, then the rest of that session
        only, also what the session forks into the group meanwhile.
        """
        self.group.open()
        self.process(11, session=10, group=self.path)
        self.process(10, session=10, group=self.path)
        self.process(12, session=99, group=self.path)
        forked = []

        def fork(pid: int) -> None:
            if pid == 11 and not forked:  # the session forks while it is moved
                forked.append(13)
                self.process(13, session=10, group=self.path)

        self.fake.moved_home = fork
        self.fake.writes.clear()
        self.group.release(10)
        self.assertEqual(self.fake.members(self.path), [12])
        self.assertEqual([int(text) for _, text in self.fake.writes], [10, 11, 13])

    def test_release_bounded(self) -> None:
        """A session that never stops forking is read again a bounded number of times."""
        self.group.open()
        self.process(10, session=10, group=self.path)
        born = iter(range(100, 200))

        def fork(pid: int) -> None:
            self.process(next(born), session=10, group=self.path)

        self.fake.moved_home = fork
        self.fake.writes.clear()
        self.group.release(10)
        self.assertEqual(len(self.fake.writes), cpugroup.RELEASE_PASSES)

    def test_threaded(self) -> None:
        """
        By default the moves are made in the group's own thread, in the order asked;
        C{close} waits for them, and C{open} makes a new thread after it.
        """
        threads: list[str] = []

        def write(path: str, text: str) -> None:
            threads.append(threading.current_thread().name)
            self.fake.write(path, text)

        group = IdleGroup(self.home, self.proc, write=write)
        group.open()
        for pid in range(20, 30):
            group.enter(pid)
        group.close()
        main = threading.current_thread().name
        self.assertEqual(threads[:3], [main] * 3)  # open: at once
        self.assertNotIn(main, threads[3:13])
        self.assertEqual(
            self.fake.writes[3:13],
            [(f"{self.name}/cgroup.procs", str(pid)) for pid in range(20, 30)],
        )
        self.assertEqual(threads[13:], [main] * 10)  # close: what is left, at once
        self.assertLessEqual(set(range(20, 30)), set(self.fake.members(self.home)))
        group.open()
        group.enter(31)
        group.close()
        self.assertIn(31, self.fake.members(self.home))

    def test_threaded_failure(self) -> None:
        """A move that fails unexpectedly is logged; the moves after it are still made."""

        def write(path: str, text: str) -> None:
            if text == "13":
                raise RuntimeError("unexpected")
            self.fake.write(path, text)

        group = IdleGroup(self.home, self.proc, write=write)
        group.open()
        group.enter(13)
        group.enter(14)
        group.close()
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertIn((f"{self.name}/cgroup.procs", "14"), self.fake.writes)

    def test_close(self) -> None:
        """C{close} moves back whatever is left and no longer uses the group."""
        self.group.open()
        self.fake.put(self.path, 20)
        self.fake.put(self.path, 21)
        self.group.close()
        self.assertEqual(self.fake.members(self.path), [])
        self.assertLessEqual({20, 21}, set(self.fake.members(self.home)))
        self.assertFalse(self.group.usable)
        writes = len(self.fake.writes)
        self.group.close()
        self.assertEqual(len(self.fake.writes), writes)


class RealGroupTests(SynchronousTestCase):
    """On this machine's own cpu hierarchy, where the test may make a group."""

    def setUp(self) -> None:
        self.group = IdleGroup(threaded=False)
        how = self.group.open()
        if not self.group.usable:
            raise SkipTest(f"no idle cpu group here: {how}")
        self.addCleanup(self.group.close)

    def group_of(self, pid: int) -> str:
        with open(f"/proc/{pid}/cgroup") as f:
            lines = f.read().splitlines()
        return next(
            line.split(":", 2)[2]
            for line in lines
            if "cpu" in line.split(":")[1].split(",") or line.startswith("0::")
        )

    def test_child_in_and_out(self) -> None:
        """
        A child and the process it starts leave the group together on C{release}; C{close}
        removes the group.
        """
        assert self.group.path is not None
        child = subprocess.Popen(
            [sys.executable, "-c", "import subprocess, sys; sys.stdin.readline(); "
             "subprocess.Popen(['sleep', '30']); sys.stdin.read()"],
            stdin=subprocess.PIPE,
            start_new_session=True,
        )  # fmt: skip
        self.addCleanup(child.wait)
        self.addCleanup(child.stdin.close)  # type: ignore[union-attr]
        self.addCleanup(os.killpg, child.pid, 9)
        home = self.group_of(os.getpid())
        self.group.enter(child.pid)
        name = os.path.basename(self.group.path)
        self.assertTrue(self.group_of(child.pid).endswith(name))
        idle = cpugroup.read_control(os.path.join(self.group.path, "cpu.idle"))
        self.assertEqual(idle.strip(), "1")
        assert child.stdin is not None
        child.stdin.write(b"go\n")  # now it starts its own child, in the group
        child.stdin.flush()
        procs: list[str] = []
        for _ in range(500):  # the grandchild, started in the group
            procs = cpugroup.read_control(os.path.join(self.group.path, "cgroup.procs")).split()
            if len(procs) == 2:
                break
            time.sleep(0.01)
        self.assertEqual(len(procs), 2)
        self.group.release(child.pid)
        self.assertEqual(cpugroup.read_control(os.path.join(self.group.path, "cgroup.procs")), "")
        self.assertEqual(self.group_of(child.pid), home)
        path = self.group.path
        self.group.close()
        self.assertFalse(os.path.exists(path))

    def test_release_while_forking(self) -> None:
        """Processes the child forks while its session is moved out leave the group too."""
        assert self.group.path is not None
        script = (
            "import os, sys, time\n"
            "sys.stdin.readline()\n"
            "for _ in range(400):\n"
            "    os.posix_spawn('/bin/sleep', ['sleep', '5'], {})\n"
            "    time.sleep(0.0005)\n"
            "sys.stdin.read()\n"
        )
        child = subprocess.Popen(
            [sys.executable, "-c", script], stdin=subprocess.PIPE, start_new_session=True
        )
        self.addCleanup(child.wait)
        self.addCleanup(child.stdin.close)  # type: ignore[union-attr]
        self.addCleanup(os.killpg, child.pid, 9)
        self.group.enter(child.pid)
        assert child.stdin is not None
        child.stdin.write(b"go\n")
        child.stdin.flush()
        time.sleep(0.05)  # it forks meanwhile
        self.group.release(child.pid)
        left = cpugroup.read_control(os.path.join(self.group.path, "cgroup.procs")).split()
        self.assertEqual(left, [])
