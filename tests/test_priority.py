"""
Tests for L{mcpgw.priority}: a fake C{/proc} in a temporary directory, time on a L{Clock},
and the writes recorded. (Real children: C{tests.test_client_process}, C{test_priority_*}.)
"""

from __future__ import annotations

import os

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from mcpgw import priority
from mcpgw.priority import ChildPriority
from mcpgw.timeslice import SHORTEST, Slices

PID = 4242


class FakeProc:
    """A C{/proc} with C{self} and a few processes, each in an autogroup."""

    def __init__(self, root: str) -> None:
        self.root = root
        os.makedirs(os.path.join(root, str(os.getpid())))
        os.symlink(str(os.getpid()), os.path.join(root, "self"))
        self.group("self", 1)

    def group(self, pid: int | str, number: int, nice: int = 0) -> None:
        os.makedirs(os.path.join(self.root, str(pid)), exist_ok=True)
        with open(os.path.join(self.root, str(pid), "autogroup"), "w") as f:
            f.write(f"/autogroup-{number} nice {nice}\n")

    def status(self, capeff: str) -> None:
        with open(os.path.join(self.root, "self", "status"), "w") as f:
            f.write(f"Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t{capeff}\n")


class FunctionTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.proc = FakeProc(self.mktemp())

    def test_autogroup_of(self) -> None:
        """The group's name, without its nice value; C{None} for a process gone."""
        self.proc.group(PID, 7, nice=19)
        self.assertEqual(priority.autogroup_of(PID, self.proc.root), "/autogroup-7")
        self.assertEqual(priority.autogroup_of("self", self.proc.root), "/autogroup-1")
        self.assertIsNone(priority.autogroup_of(99, self.proc.root))

    def test_set_autogroup_nice(self) -> None:
        """The nice value is written as decimal text; a missing file is C{False}."""
        path = os.path.join(self.proc.root, "5")
        os.mkdir(path)
        open(os.path.join(path, "autogroup"), "w").close()
        self.assertTrue(priority.set_autogroup_nice(5, 19, self.proc.root))
        with open(os.path.join(path, "autogroup")) as f:
            self.assertEqual(f.read(), "19")
        self.assertFalse(priority.set_autogroup_nice(99, 19, self.proc.root))

    def test_autogroup_nice(self) -> None:
        """The group's nice value; C{None} for a process gone or a file that does not parse."""
        self.proc.group(PID, 7, nice=19)
        self.assertEqual(priority.autogroup_nice(PID, self.proc.root), 19)
        self.assertEqual(priority.autogroup_nice("self", self.proc.root), 0)
        self.assertIsNone(priority.autogroup_nice(99, self.proc.root))
        with open(os.path.join(self.proc.root, str(PID), "autogroup"), "w") as f:
            f.write("0")
        self.assertIsNone(priority.autogroup_nice(PID, self.proc.root))

    def can_weight(self, capeff: str, refused: int | None = None) -> bool:
        """
        C{can_weight_groups} with C{CapEff} set, the group file fresh, and the write numbered
        C{refused} (1 or 2) failing like the kernel's C{EAGAIN}.
        """
        self.proc.status(capeff)
        self.proc.group("self", 1, nice=3)
        writes: list[tuple[int | str, int]] = []

        def set_nice(pid: int | str, nice: int, proc: str) -> bool:
            self.assertEqual(proc, self.proc.root)
            writes.append((pid, nice))
            return len(writes) != refused

        result = priority.can_weight_groups(self.proc.root, set_nice)
        self.assertEqual(writes, [("self", 3), ("self", 3)][: len(writes)])
        return result

    def test_needs_cap_sys_admin(self) -> None:
        """
        Without C{CAP_SYS_ADMIN} (bit 21) the kernel takes one write per 100 ms, so the
        groups are weighted only with it, and only where there are autogroups.
        """
        self.assertTrue(self.can_weight("0000000000200000"))
        self.assertTrue(self.can_weight("000001ffffffffff"))
        self.assertFalse(self.can_weight("00000000001fffff"))
        self.assertFalse(self.can_weight("garbage"))
        os.remove(os.path.join(self.proc.root, "self", "status"))
        self.assertFalse(priority.can_weight_groups(self.proc.root))

    def test_writes_tried(self) -> None:
        """
        The capability in C{CapEff} is not enough (root in a user namespace has it there, and
        the kernel refuses its second write within 100 ms): two writes of the group's own
        value must both succeed.
        """
        self.assertFalse(self.can_weight("000001ffffffffff", refused=2))
        self.assertFalse(self.can_weight("000001ffffffffff", refused=1))
        self.assertTrue(self.can_weight("000001ffffffffff"))

    def test_written_for_real(self) -> None:
        """Without a C{set_nice}, the group file itself takes the writes (at offset 0)."""
        self.proc.status("000001ffffffffff")
        self.proc.group("self", 1, nice=3)
        self.assertTrue(priority.can_weight_groups(self.proc.root))
        with open(os.path.join(self.proc.root, "self", "autogroup")) as f:
            self.assertEqual(f.read(2), "3a")

    def test_no_autogroups(self) -> None:
        """No C{/proc/self/autogroup}: nothing to weight."""
        self.proc.status("000001ffffffffff")
        os.remove(os.path.join(self.proc.root, "self", "autogroup"))
        self.assertFalse(priority.can_weight_groups(self.proc.root))

    def test_other_pid_namespace(self) -> None:
        """
        A C{/proc} of another pid namespace (its C{self} is not this pid) would name other
        processes than the children: nothing is done.
        """
        os.remove(os.path.join(self.proc.root, "self"))
        os.symlink("1", os.path.join(self.proc.root, "self"))
        os.makedirs(os.path.join(self.proc.root, "1"))
        self.proc.group("self", 1)
        self.proc.status("000001ffffffffff")
        self.assertFalse(priority.can_weight_groups(self.proc.root))


class RecordedSlices(Slices):
    """Records C{set} calls; C{ok} is what they return."""

    def __init__(self) -> None:
        super().__init__(None, "x86_64")
        self.calls: list[tuple[int, int]] = []
        self.ok = True

    def set(self, tid: int, runtime: int) -> bool:
        self.calls.append((tid, runtime))
        return self.ok


class ChildPriorityTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.proc = FakeProc(self.mktemp())
        self.clock = Clock()
        self.writes: list[tuple[int | str, int]] = []
        #: How many writes fail, from now on.
        self.refused = 0

    def set_nice(self, pid: int | str, nice: int, proc: str) -> bool:
        self.assertEqual(proc, self.proc.root)
        self.writes.append((pid, nice))
        if self.refused:
            self.refused -= 1
            return False
        return True

    def child(self, nice: int = 19) -> ChildPriority:
        return ChildPriority(self.clock, PID, nice, self.proc.root, set_nice=self.set_nice)

    def test_lowered_once_in_its_own_group(self) -> None:
        """
        Nothing is written while the child is still in the gateway's group (before its
        C{setsid}, and in the moment after it when the kernel has not yet moved it).
        """
        self.proc.group(PID, 1)
        child = self.child()
        child.start()
        self.clock.advance(0.0005)
        self.assertEqual(self.writes, [])
        self.proc.group(PID, 7)
        self.clock.advance(0.001)
        self.assertEqual(self.writes, [(PID, 19)])
        self.assertEqual((child.owned, child.group_nice), (True, 19))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_serving_then_stopping(self) -> None:
        """Serving: the group back to nice 0. Stopping: the low value again."""
        self.proc.group(PID, 7)
        child = self.child(nice=10)
        child.start()
        child.serving()
        child.stopping()
        self.assertEqual(self.writes, [(PID, 10), (PID, 0), (PID, 10)])

    def test_gives_up(self) -> None:
        """A child that never gets its own group is checked a bounded number of times."""
        self.proc.group(PID, 1)
        child = self.child()
        child.start()
        self.clock.pump([0.001] * 200)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        child.serving()
        child.stopping()
        self.assertEqual(self.writes, [])
        self.assertFalse(child.owned)

    def test_gone(self) -> None:
        """A child already gone (or no autogroups) stops the checks at once."""
        child = self.child()
        child.start()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertFalse(child.owned)

    def test_serving_or_cancel_stop_the_checks(self) -> None:
        """C{serving()} and C{cancel()} leave no timer behind."""
        self.proc.group(PID, 1)
        for end in ("serving", "cancel"):
            child = self.child()
            child.start()
            self.assertEqual(len(self.clock.getDelayedCalls()), 1)
            getattr(child, end)()
            self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.writes, [])

    def test_nothing_after_exit(self) -> None:
        """Once the child has exited its pid may be someone else's: nothing is written."""
        self.proc.group(PID, 7)
        child = self.child()
        child.start()
        child.cancel()
        child.serving()
        child.stopping()
        self.assertEqual(self.writes, [(PID, 19)])

    def test_restore_tried_again(self) -> None:
        """
        A failed write back to nice 0 (the kernel's C{EAGAIN}) is tried again every 100 ms
        until it succeeds: a child must not serve at the low weight.
        """
        self.proc.group(PID, 7)
        child = self.child()
        child.start()
        self.refused = 2
        child.serving()
        self.assertEqual(child.group_nice, 19)
        self.clock.advance(priority.RESTORE_DELAY)
        self.assertEqual(child.group_nice, 19)
        self.clock.advance(priority.RESTORE_DELAY)
        self.assertEqual(child.group_nice, 0)
        self.assertEqual(self.writes, [(PID, 19), (PID, 0), (PID, 0), (PID, 0)])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_restore_bounded(self) -> None:
        """The write back is tried a bounded number of times; once stopping, no more."""
        self.proc.group(PID, 7)
        child = self.child()
        child.start()
        self.refused = 1000
        child.serving()
        self.clock.pump([priority.RESTORE_DELAY] * 100)
        self.assertEqual(len(self.writes), 2 + priority.RESTORE_TRIES)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.refused = 1
        child.serving()
        self.assertEqual(len(self.clock.getDelayedCalls()), 0)
        child = self.child()
        child.start()
        self.refused = 1
        child.serving()
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        child.stopping()
        self.clock.advance(priority.RESTORE_DELAY)
        self.assertEqual(child.group_nice, 19)
        self.assertEqual(self.writes[-1], (PID, 0))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stopped_while_starting(self) -> None:
        """A child stopped before it has its own group gets the low weight once it has."""
        self.proc.group(PID, 1)
        child = self.child()
        child.start()
        child.stopping()
        self.proc.group(PID, 7)
        self.clock.advance(0.0005)
        self.assertEqual(self.writes, [(PID, 19)])

    def test_slice_while_starting(self) -> None:
        """
        With C{slices}, the child's first task gets the shortest slice at once, and the
        default one back once it serves; stopping leaves its slice alone.
        """
        slices = RecordedSlices()
        self.proc.group(PID, 1)
        child = ChildPriority(self.clock, PID, 19, self.proc.root, self.set_nice, slices=slices)
        child.start()
        self.assertEqual((slices.calls, child.sliced), ([(PID, SHORTEST)], True))
        child.serving()
        child.stopping()
        self.assertEqual((slices.calls, child.sliced), ([(PID, SHORTEST), (PID, 0)], False))

    def test_slice_not_set_back(self) -> None:
        """A slice the kernel would not set back is still reported as set."""
        slices = RecordedSlices()
        child = ChildPriority(self.clock, PID, 19, self.proc.root, self.set_nice, slices=slices)
        child.start()
        slices.ok = False
        child.serving()
        self.assertEqual((slices.calls, child.sliced), ([(PID, SHORTEST), (PID, 0)], True))

    def test_slice_not_set(self) -> None:
        """A slice that could not be set is not set back; after the exit nothing is written."""
        slices = RecordedSlices()
        slices.ok = False
        child = ChildPriority(self.clock, PID, 19, self.proc.root, self.set_nice, slices=slices)
        child.start()
        child.serving()
        self.assertEqual(slices.calls, [(PID, SHORTEST)])
        slices.ok = True
        child = ChildPriority(self.clock, PID, 19, self.proc.root, self.set_nice, slices=slices)
        child.start()
        child.cancel()
        child.serving()
        self.assertEqual(slices.calls, [(PID, SHORTEST), (PID, SHORTEST)])


class RecordedIdleGroup:
    """An idle CPU group that records what is moved."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []

    def enter(self, pid: int) -> None:
        self.calls.append(("enter", pid))

    def release(self, session: int) -> None:
        self.calls.append(("release", session))


class IdleGroupPriorityTests(SynchronousTestCase):
    """C{ChildPriority} with an idle CPU group (C{mcpgw.cpugroup})."""

    def setUp(self) -> None:
        self.proc = FakeProc(self.mktemp())
        self.clock = Clock()
        self.writes: list[tuple[int | str, int]] = []
        self.group = RecordedIdleGroup()
        self.slices = RecordedSlices()

    def set_nice(self, pid: int | str, nice: int, proc: str) -> bool:
        self.writes.append((pid, nice))
        return True

    def child(self, weight_groups: bool = True) -> ChildPriority:
        return ChildPriority(
            self.clock,
            PID,
            19,
            self.proc.root,
            self.set_nice,
            slices=self.slices,
            idle_group=self.group,  # type: ignore[arg-type]
            weight_groups=weight_groups,
        )

    def test_start_serve_stop(self) -> None:
        """
        The child starts in the group, its session leaves it once it serves, its first
        process goes back to stop; no autogroup, no slice, no timer.
        """
        self.proc.group(PID, 7)
        child = self.child()
        child.start()
        self.assertEqual((child.uses_idle_group, child.idle), (True, True))
        child.serving()
        self.assertFalse(child.idle)
        child.stopping()
        self.assertTrue(child.idle)
        self.assertEqual(self.group.calls, [("enter", PID), ("release", PID), ("enter", PID)])
        self.assertEqual((self.writes, self.slices.calls), ([], []))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stopped_while_starting(self) -> None:
        """Stopped before it serves: it is in the group already; nothing more is moved."""
        child = self.child()
        child.start()
        child.stopping()
        self.assertEqual(self.group.calls, [("enter", PID)])

    def test_nothing_after_exit(self) -> None:
        """After C{cancel} (its pid may be reused) nothing is moved."""
        child = self.child()
        child.start()
        child.cancel()
        child.serving()
        child.stopping()
        self.assertEqual(self.group.calls, [("enter", PID)])

    def test_neither(self) -> None:
        """No idle group and no autogroup weights: nothing is done."""
        self.proc.group(PID, 7)
        child = ChildPriority(
            self.clock, PID, 19, self.proc.root, self.set_nice, weight_groups=False
        )
        child.start()
        child.serving()
        child.stopping()
        self.assertEqual(self.writes, [])
        self.assertEqual(self.clock.getDelayedCalls(), [])
