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

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from mcpgw import cpugroup
from mcpgw.cpugroup import PREFIX, IdleGroup, cpu_cgroup_dir

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


class IdleGroupTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.home = os.path.abspath(self.mktemp())
        os.makedirs(self.home)
        self.proc = os.path.abspath(self.mktemp())
        self.writes: list[tuple[str, str]] = []
        #: The file names whose writes fail.
        self.refused: set[str] = set()
        self.group = IdleGroup(self.home, self.proc, write=self.write, threaded=False)
        self.path = os.path.join(self.home, f"{PREFIX}{os.getpid()}")

    def write(self, path: str, text: str) -> None:
        if os.path.basename(path) in self.refused:
            raise PermissionError(13, "Permission denied")
        self.writes.append((os.path.relpath(path, self.home), text))

    def in_group(self, *pids: int) -> None:
        with open(os.path.join(self.path, "cgroup.procs"), "w") as f:
            f.write("".join(f"{pid}\n" for pid in pids))

    def process(self, pid: int, session: int) -> None:
        os.makedirs(os.path.join(self.proc, str(pid)))
        with open(os.path.join(self.proc, str(pid), "stat"), "w") as f:
            f.write(f"{pid} (a (b) c) S 1 {pid} {session} 0 -1 4194560 0 0\n")

    def test_open(self) -> None:
        """
        C{open} makes the group next to the gateway's, sets C{cpu.idle} and moves the gateway
        there and back to check that it may.
        """
        self.assertFalse(self.group.usable)
        self.assertIn(self.path, self.group.open())
        me, name = str(os.getpid()), os.path.basename(self.path)
        self.assertEqual(
            self.writes,
            [(f"{name}/cpu.idle", "1"), (f"{name}/cgroup.procs", me), ("cgroup.procs", me)],
        )
        self.assertTrue(self.group.usable)
        self.assertTrue(os.path.isdir(self.path))

    def test_open_refused(self) -> None:
        """A refused write: the group is removed, not used, and the reason is given."""
        self.refused.add("cpu.idle")
        self.assertIn("Permission denied", self.group.open())
        self.assertFalse(self.group.usable)
        self.assertFalse(os.path.exists(self.path))
        self.group.enter(1234)
        self.assertEqual(self.writes, [])

    def test_move_back_refused(self) -> None:
        """The gateway cannot move back home: the group is not used, and that is said."""
        real = self.write

        def write(path: str, text: str) -> None:
            if path == os.path.join(self.home, "cgroup.procs"):
                raise PermissionError(13, "Permission denied")
            real(path, text)

        group = IdleGroup(self.home, self.proc, write=write, threaded=False)
        how = group.open()
        self.assertIn("cannot move back", how)
        self.assertIn("Permission denied", how)
        self.assertFalse(group.usable)

    def test_no_group(self) -> None:
        """No cpu hierarchy: nothing is made."""
        group = IdleGroup(None, fake_proc(self.mktemp(), "", ""), write=self.write, threaded=False)
        self.assertEqual(group.open(), "no cpu control group to use")
        self.assertFalse(group.usable)

    def test_stale_groups_removed(self) -> None:
        """The empty groups of gateways that are gone are removed; others are kept."""
        gone = os.path.join(self.home, f"{PREFIX}{NO_SUCH_PID}")
        alive = os.path.join(self.home, f"{PREFIX}1")
        other = os.path.join(self.home, "not-ours")
        for path in (gone, alive, other):
            os.makedirs(path)
        self.group.open()
        self.assertFalse(os.path.exists(gone))
        self.assertTrue(os.path.isdir(alive))
        self.assertTrue(os.path.isdir(other))

    def test_enter(self) -> None:
        """C{enter} moves one process; a refused move (a process gone) is dropped."""
        self.group.open()
        del self.writes[:]
        self.group.enter(1234)
        self.assertEqual(self.writes, [(f"{os.path.basename(self.path)}/cgroup.procs", "1234")])
        self.refused.add("cgroup.procs")
        self.group.enter(1235)
        self.assertEqual(len(self.writes), 1)

    def test_threaded(self) -> None:
        """
        By default the moves are made in the group's own thread, in the order asked;
        C{close} waits for them.
        """
        threads: list[str] = []

        def write(path: str, text: str) -> None:
            threads.append(threading.current_thread().name)
            self.write(path, text)

        group = IdleGroup(self.home, self.proc, write=write)
        group.open()
        self.process(10, session=10)
        self.in_group(10)
        for pid in range(20, 30):
            group.enter(pid)
        group.release(10)
        group.close()
        name = os.path.basename(self.path)
        self.assertEqual(
            self.writes[3:],
            [(f"{name}/cgroup.procs", str(pid)) for pid in range(20, 30)]
            + [("cgroup.procs", "10"), ("cgroup.procs", "10")],
        )
        main = threading.current_thread().name
        self.assertEqual(threads[:3], [main] * 3)  # open: at once
        self.assertNotIn(main, threads[3:-1])
        self.assertEqual(threads[-1], main)  # close: what is left, at once

    def test_release(self) -> None:
        """C{release} moves back home every process in the group of that session only."""
        self.group.open()
        del self.writes[:]
        self.process(10, session=10)
        self.process(11, session=10)
        self.process(12, session=99)
        self.in_group(10, 11, 12, 13)  # 13: gone already
        self.group.release(10)
        self.assertEqual(self.writes, [("cgroup.procs", "10"), ("cgroup.procs", "11")])

    def test_close(self) -> None:
        """C{close} moves back whatever is left and no longer uses the group."""
        self.group.open()
        del self.writes[:]
        self.in_group(20, 21)
        self.group.close()
        self.assertEqual(self.writes, [("cgroup.procs", "20"), ("cgroup.procs", "21")])
        self.assertFalse(self.group.usable)
        self.group.close()
        self.assertEqual(len(self.writes), 2)


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
        self.assertEqual(cpugroup._read(os.path.join(self.group.path, "cpu.idle")).strip(), "1")
        assert child.stdin is not None
        child.stdin.write(b"go\n")  # now it starts its own child, in the group
        child.stdin.flush()
        procs: list[str] = []
        for _ in range(500):  # the grandchild, started in the group
            procs = cpugroup._read(os.path.join(self.group.path, "cgroup.procs")).split()
            if len(procs) == 2:
                break
            time.sleep(0.01)
        self.assertEqual(len(procs), 2)
        self.group.release(child.pid)
        self.assertEqual(cpugroup._read(os.path.join(self.group.path, "cgroup.procs")), "")
        self.assertEqual(self.group_of(child.pid), home)
        path = self.group.path
        self.group.close()
        self.assertFalse(os.path.exists(path))
