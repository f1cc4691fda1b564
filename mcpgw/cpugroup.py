# -*- test-case-name: tests.test_cpugroup -*-
"""
An idle CPU control group for children while they start and while they stop (Linux).

A child starting up (an interpreter spending 15 to 25 ms of CPU before it answers
``initialize``) competes for the cores with the gateway, which serves every other session's
calls. A low autogroup weight (``mcpgw.priority``) is not enough on a busy machine: the
kernel still gave starting children two thirds of a core while four sessions called tools
and one client churned sessions, because a core running one of them does not count as free
for a task that wakes up there. In a CPU group with ``cpu.idle`` = 1 the scheduler treats
them like ``SCHED_IDLE`` tasks: such a core counts as free, and a task waking up takes it at
once. ``../shared/bench`` scenario g (2 cores, 5 rounds A/B): the steady sessions kept 71 to
80 % of their rate rather than 59 to 61 %, their p99 3.5 ms rather than 4.9 to 5.5; an idle
machine starts a child as fast (first call 19.7 and 19.8 ms).

``IdleGroup.open()`` (once the gateway runs as its final user and process) makes the group
``mcpgw-idle-<pid namespace>-<gateway pid>`` next to the gateway's own group of the ``cpu``
controller (the namespace's inode number: gateways in two containers may have one pid and
share a cgroup directory): cgroup
v1 (a hierarchy with ``cpu``), or cgroup v2 where the gateway's group may have children with
the controller (the root group, as in a container). It checks that it may move processes
there and back with a throwaway child (``sleep``), never the gateway itself. Where any of
that fails, nothing is used and children get the autogroup weights. ``close()`` moves back
what is left and removes the group; the groups of gateways of the same pid namespace that
are gone are emptied and removed too (another namespace's pids cannot be checked from here,
so its groups are left alone).

A child's whole process is moved (``cgroup.procs``): its first process when it is spawned
(``enter``), every process of its session once it serves (``release``: what it started
meanwhile was born in the group, and what it forks during the move too: the group is read
again until none of them is left), and its first process again when it is told to stop.
The moves are made in order in a thread of the group's own: a move takes 10 microseconds
while moves follow each other closely, but one made after a quiet spell waits for an RCU
grace period (the kernel's cgroup lock; 8 to 13 ms here), and the reactor would wait with
it. (The child moving itself, first thing in its launch chain, paid that wait in every
first call on an idle machine: 16.4 -> 29.3 ms.) A move that fails (the process is gone)
is not retried.
"""

from __future__ import annotations

import os
import queue
import re
import shutil
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

from mcpgw.logs import Logger

log = Logger()

PROC = "/proc"
PREFIX = "mcpgw-idle-"

#: Passes over the group's processes to move a session out (see ``release``).
RELEASE_PASSES = 5


def read_control(path: str) -> str:
    """The text of a kernel control file (``/proc``, cgroup files)."""
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read()


def write_control(path: str, text: str) -> None:
    """Write ``text`` to a kernel control file in one ``write`` (C{OSError} if refused)."""
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, text.encode("ascii"))
    finally:
        os.close(fd)


def pid_namespace(proc: str = PROC) -> str:
    """This process's pid namespace, as the inode number of its ``ns/pid`` ("0": unknown)."""
    try:
        return str(os.stat(f"{proc}/self/ns/pid").st_ino)
    except OSError:
        return "0"


def cpu_cgroup_dir(proc: str = PROC) -> str | None:
    """
    The directory of this process's group of the ``cpu`` controller: under a cgroup v1
    hierarchy that has it, else under the cgroup v2 one when that has the controller.
    """
    try:
        mounts = read_control(f"{proc}/self/mountinfo").splitlines()
        groups = read_control(f"{proc}/self/cgroup").splitlines()
    except OSError:
        return None
    own: dict[str, str] = {}  # controllers ("" for v2) -> path
    for line in groups:
        parts = line.split(":", 2)
        if len(parts) == 3:
            own[parts[1]] = parts[2]
    for line in mounts:
        # ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPEROPTIONS
        fields, _, rest = line.partition(" - ")
        head, tail = fields.split(), rest.split()
        if len(head) < 5 or len(tail) < 3:
            continue
        root, mountpoint = _unescape(head[3]), _unescape(head[4])
        if tail[0] == "cgroup" and "cpu" in tail[2].split(","):
            path = next((p for c, p in own.items() if "cpu" in c.split(",")), None)
        elif tail[0] == "cgroup2" and not any("cpu" in c.split(",") for c in own if c):
            path = own.get("")
        else:
            continue
        if path is None or not (path == root or path.startswith(root.rstrip("/") + "/")):
            continue
        directory = os.path.join(mountpoint, path[len(root) :].lstrip("/"))
        if tail[0] == "cgroup2" and not _v2_cpu_delegated(directory):
            return None
        return directory.rstrip("/") or "/"
    return None


def _v2_cpu_delegated(directory: str) -> bool:
    try:
        return "cpu" in read_control(os.path.join(directory, "cgroup.subtree_control")).split()
    except OSError:
        return False


def _unescape(text: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), text)


class IdleGroup:
    """
    The idle group, once ``open()`` has made it (``usable``); see the module docstring.

    @param home: the gateway's own group directory (``cpu_cgroup_dir()`` by default).
    @param write: writes a control file (path, text); replaceable for tests.
    @param threaded: move processes in a thread of the group's own (C{False}: at once, in
        the caller's thread).
    """

    def __init__(
        self,
        home: str | None = None,
        proc: str = PROC,
        write: Callable[[str, str], None] = write_control,
        threaded: bool = True,
    ) -> None:
        self._home = home
        self._proc = proc
        self._write = write
        self._threaded = threaded
        self._mover: _Serial | None = None
        self.path: str | None = None

    @property
    def usable(self) -> bool:
        return self.path is not None

    def open(self) -> str:
        """Make the group; says what was done, or why it is not used."""
        home = self._home if self._home is not None else cpu_cgroup_dir(self._proc)
        if home is None:
            return "no cpu control group to use"
        self._home = home
        namespace = pid_namespace(self._proc)
        self._remove_stale(namespace)
        path = os.path.join(home, f"{PREFIX}{namespace}-{os.getpid()}")
        try:
            os.makedirs(path, exist_ok=True)
        except OSError as e:
            return f"cannot make {path}: {e.strerror}"
        try:
            self._write(os.path.join(path, "cpu.idle"), "1")
            self._probe(path, home)
        except OSError as e:
            self._rmdir(path)
            return f"cannot use {path}: {e.strerror or e}"
        self.path = path
        if self._threaded:
            self._mover = _Serial("mcpgw-cpugroup")
        return f"children start and stop in {path} (cpu.idle)"

    def _probe(self, path: str, home: str) -> None:
        """Move a throwaway child into the group and back (C{OSError} if refused)."""
        sleep = shutil.which("sleep")
        argv = (
            [sleep, "60"] if sleep else [sys.executable, "-S", "-c", "import time; time.sleep(60)"]
        )
        pid = os.posix_spawn(argv[0], argv, {})
        try:
            self._write(os.path.join(path, "cgroup.procs"), str(pid))
            self._write(os.path.join(home, "cgroup.procs"), str(pid))
        finally:
            os.kill(pid, signal.SIGKILL)
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:  # pragma: no cover - reaped by someone else
                pass

    def enter(self, pid: int) -> None:
        """Move process ``pid`` into the group."""
        if self.path is not None:
            self._run(self._enter, self.path, pid)

    def release(self, session: int) -> None:
        """
        Move every process of ``session`` that is in the group back to the gateway's: its
        leader (the pid ``session``) first, so that it forks no more into the group, then the
        others, reading the group again until none is left (``RELEASE_PASSES`` at most).
        """
        if self.path is not None:
            self._run(self._release, self.path, session)

    def _release(self, path: str, session: int) -> None:
        for _ in range(RELEASE_PASSES):
            if not self._move_home(path, lambda pid: self._session_of(pid) == session, session):
                return

    def close(self) -> None:
        """Make the moves asked for, then move back what is left and remove the group."""
        path, self.path = self.path, None
        mover, self._mover = self._mover, None
        if path is not None:
            if mover is not None:
                mover.stop()
            self._move_home(path, lambda pid: True)
            self._rmdir(path)

    def _run(self, function: Callable[..., None], *args: Any) -> None:
        if self._mover is not None:
            self._mover.run(function, *args)
        else:
            function(*args)

    def _enter(self, path: str, pid: int) -> None:
        try:
            self._write(os.path.join(path, "cgroup.procs"), str(pid))
        except OSError:
            pass  # gone already

    def _move_home(
        self, group: str, which: Callable[[int], bool], first: int | None = None
    ) -> int:
        """
        Move the processes of ``group`` that ``which`` picks home (``first`` before the
        others, if it is there); how many were picked.
        """
        if self._home is None:
            return 0
        try:
            pids = [int(pid) for pid in read_control(os.path.join(group, "cgroup.procs")).split()]
        except (OSError, ValueError):
            return 0
        pids.sort(key=lambda pid: pid != first)
        picked = 0
        for pid in pids:
            if which(pid):
                picked += 1
                try:
                    self._write(os.path.join(self._home, "cgroup.procs"), str(pid))
                except OSError:
                    pass  # gone meanwhile
        return picked

    def _session_of(self, pid: int) -> int | None:
        try:
            stat = read_control(f"{self._proc}/{pid}/stat")
            return int(stat.rsplit(")", 1)[1].split()[3])
        except (OSError, IndexError, ValueError):
            return None

    def _remove_stale(self, namespace: str) -> None:
        """Empty and remove the groups of this pid namespace's gateways that are gone."""
        assert self._home is not None
        try:
            names = os.listdir(self._home)
        except OSError:
            return
        mine = f"{PREFIX}{namespace}-"
        for name in names:
            owner = name[len(mine) :]
            if name.startswith(mine) and owner.isdigit() and not _alive(int(owner)):
                stale = os.path.join(self._home, name)
                self._move_home(stale, lambda pid: True)
                self._rmdir(stale)

    @staticmethod
    def _rmdir(path: str) -> None:
        try:
            os.rmdir(path)
        except OSError:
            pass


class _Serial:
    """
    One thread that runs the functions it is given, in order (``queue.SimpleQueue``: a put
    costs the reactor a microsecond, where a Twisted thread pool's dispatch cost tens). A
    daemon thread, so a group never closed cannot keep the process from exiting.
    """

    def __init__(self, name: str) -> None:
        self._queue: queue.SimpleQueue[tuple[Callable[..., None], tuple[Any, ...]] | None]
        self._queue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def run(self, function: Callable[..., None], *args: Any) -> None:
        self._queue.put((function, args))

    def stop(self) -> None:
        """Run what was given, then end the thread."""
        self._queue.put(None)
        self._thread.join()

    def _loop(self) -> None:
        while (item := self._queue.get()) is not None:
            function, args = item
            try:
                function(*args)
            except Exception:  # noqa: BLE001 - logged; the moves after it still run
                log.failure("while moving processes between CPU groups")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True
