"""
Tests for L{mcpgw.timeslice}: the real system calls, each on a thread of its own made for
the test (time slices, policies and nice values are per thread), so the test process keeps
its own; and a fake system call for machines without them.
"""

from __future__ import annotations

import ctypes
import os
import platform
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from mcpgw import timeslice
from mcpgw.timeslice import SCHED_FLAG_RESET_ON_FORK, SHORTEST, Slices

T = TypeVar("T")

SCHED_IDLE = 5


def on_thread(f: Callable[[int], T]) -> T:
    """C{f(tid)} on a new thread; its result or its exception."""
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["result"] = f(threading.get_native_id())
        except BaseException as e:  # handed to the test
            out["error"] = e

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(30)
    if thread.is_alive():
        raise AssertionError("the test's thread did not end within 30 s")
    if "error" in out:
        raise out["error"]
    return out["result"]  # type: ignore[no-any-return]


def clears_flag() -> bool:
    """
    The kernel lets this process clear C{SCHED_FLAG_RESET_ON_FORK} once set (it needs
    C{CAP_SYS_NICE} in the initial user namespace): tried with the bare system call on a
    thread of its own. C{False} where there are no custom slices.
    """
    slices = timeslice.available_slices()
    numbers = timeslice.SYSCALLS.get(platform.machine())
    if slices is None or numbers is None:
        return False
    syscall = ctypes.CDLL(None, use_errno=True).syscall

    def probe(tid: int) -> bool:
        if not slices.set(tid, SHORTEST):
            return False
        attr = slices.get(tid)
        assert attr is not None
        policy, flags, nice, priority, runtime = attr
        flags &= ~SCHED_FLAG_RESET_ON_FORK
        packed = timeslice._ATTR.pack(56, policy, flags, nice, priority, runtime, 0, 0, 0, 0)
        return syscall(numbers[0], tid, ctypes.create_string_buffer(packed, 56), 0) == 0

    return on_thread(probe)


def real() -> Slices:
    slices = timeslice.available_slices()
    if slices is None:
        raise SkipTest("no custom time slices here (Linux 6.12 and later)")
    return slices


class RealSlicesTests(SynchronousTestCase):
    def test_set_and_back(self) -> None:
        """
        The shortest slice, with C{SCHED_FLAG_RESET_ON_FORK}, the nice value kept; 0 gives the
        default slice back, and clears the flag.
        """
        slices = real()

        def change(tid: int) -> tuple[Any, ...]:
            os.setpriority(os.PRIO_PROCESS, tid, 5)
            before = slices.get(tid)
            self.assertTrue(slices.set(tid, SHORTEST))
            short = slices.get(tid)
            self.assertTrue(slices.set(tid, 0))
            return before, short, slices.get(tid)

        before, short, after = on_thread(change)
        assert before is not None and short is not None and after is not None
        policy, flags, nice, priority, _ = before
        self.assertEqual((policy, nice), (0, 5))
        self.assertEqual(short, (0, flags | SCHED_FLAG_RESET_ON_FORK, 5, priority, SHORTEST))
        flagged = (0, flags | SCHED_FLAG_RESET_ON_FORK, 5, priority, before[4])
        self.assertIn(after, [before] if clears_flag() else [before, flagged])

    def test_not_inherited(self) -> None:
        """A process started by a task with the short slice gets the default slice."""
        slices = real()

        def spawn(tid: int) -> tuple[int, str]:
            default = slices.get(tid)
            assert default is not None
            self.assertTrue(slices.set(tid, SHORTEST))
            out = subprocess.run(
                [sys.executable, "-c", "print(open('/proc/self/sched').read())"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            return default[4], out

        default, sched = on_thread(spawn)
        lines = [line.split(":") for line in sched.splitlines() if line.startswith("se.slice")]
        self.assertEqual([int(value) for _, value in lines], [default])

    def test_other_policy_left_alone(self) -> None:
        """A task under C{SCHED_IDLE} is not changed."""
        slices = real()

        def idle(tid: int) -> tuple[bool, Any]:
            os.sched_setscheduler(tid, SCHED_IDLE, os.sched_param(0))
            before = slices.get(tid)
            changed = slices.set(tid, SHORTEST)
            self.assertEqual(slices.get(tid), before)
            return changed, before

        changed, before = on_thread(idle)
        self.assertFalse(changed)
        self.assertEqual(before[0], SCHED_IDLE)

    def test_gone(self) -> None:
        """A process that has exited (and been reaped): C{None} and C{False}."""
        slices = real()
        child = subprocess.Popen(["true"])
        child.wait()
        self.assertIsNone(slices.get(child.pid))
        self.assertFalse(slices.set(child.pid, SHORTEST))


class FakeSyscall:
    """
    Records the calls; C{sched_getattr} reports C{runtime} for every task, C{sched_setattr}
    refuses to clear C{SCHED_FLAG_RESET_ON_FORK} when C{keeps_flag}.
    """

    def __init__(self, runtime: int, result: int = 0, keeps_flag: bool = False) -> None:
        self.runtime = runtime
        self.result = result
        self.keeps_flag = keeps_flag
        self.calls: list[tuple[int, int]] = []
        self.written: list[tuple[int, int]] = []

    def __call__(self, number: int, tid: int, buf: Any, *rest: int) -> int:
        self.calls.append((number, tid))
        if number in (275, 315):
            flags = SCHED_FLAG_RESET_ON_FORK if self.keeps_flag else 0
            buf.raw = timeslice._ATTR.pack(56, 0, flags, 0, 0, self.runtime, 0, 0, 0, 0)
            return self.result
        _, _, flags, _, _, runtime, *_ = timeslice._ATTR.unpack(buf.raw)
        self.written.append((flags, runtime))
        if self.keeps_flag and not flags & SCHED_FLAG_RESET_ON_FORK:
            return -1
        return self.result


class FakeSlicesTests(SynchronousTestCase):
    def test_supported(self) -> None:
        """Custom slices where the kernel reports a runtime for this thread."""
        self.assertTrue(Slices(FakeSyscall(1_400_000), "x86_64").supported())
        self.assertFalse(Slices(FakeSyscall(0), "x86_64").supported())
        self.assertFalse(Slices(FakeSyscall(1_400_000, result=-1), "x86_64").supported())

    def test_machines(self) -> None:
        """Each machine's own system call numbers; none on a machine not known."""
        for machine, numbers in (("x86_64", (315, 314)), ("aarch64", (275, 274))):
            syscall = FakeSyscall(1_400_000)
            self.assertTrue(Slices(syscall, machine).set(7, SHORTEST))
            self.assertEqual(syscall.calls, [(numbers[0], 7), (numbers[1], 7)])
        syscall = FakeSyscall(1_400_000)
        self.assertFalse(Slices(syscall, "sparc64").supported())
        self.assertFalse(Slices(syscall, "sparc64").set(7, SHORTEST))
        self.assertEqual(syscall.calls, [])
        self.assertFalse(Slices(None, "x86_64").set(7, SHORTEST))

    def test_flag_kept_without_privilege(self) -> None:
        """
        Where the kernel refuses to clear C{SCHED_FLAG_RESET_ON_FORK} (no C{CAP_SYS_NICE}),
        the default slice goes back with the flag kept.
        """
        syscall = FakeSyscall(SHORTEST, keeps_flag=True)
        self.assertTrue(Slices(syscall, "x86_64").set(7, 0))
        self.assertEqual(syscall.written, [(0, 0), (SCHED_FLAG_RESET_ON_FORK, 0)])
        syscall = FakeSyscall(1_400_000)
        self.assertTrue(Slices(syscall, "x86_64").set(7, SHORTEST))
        self.assertEqual(syscall.written, [(SCHED_FLAG_RESET_ON_FORK, SHORTEST)])
