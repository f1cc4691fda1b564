"""
Tests for L{mcpgw.priority}: a fake C{/proc} tree in a temporary directory, time on a
L{Clock}, and a recording stand-in for C{os.sched_setscheduler}. (Real children:
C{tests.test_client_process}, C{test_priority_*}.)
"""

from __future__ import annotations

import os

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from mcpgw import priority
from mcpgw.priority import ChildPriority

PID = 4242


class FakeProc:
    """A C{/proc} of a few processes: stat, autogroup, threads and their children."""

    def __init__(self, root: str) -> None:
        self.root = root
        os.mkdir(root)

    def process(
        self, pid: int, session: int, threads: tuple[int, ...] = (), children: tuple[int, ...] = ()
    ) -> None:
        base = os.path.join(self.root, str(pid))
        os.makedirs(os.path.join(base, "task"), exist_ok=True)
        self.set_session(pid, session)
        with open(os.path.join(base, "autogroup"), "w") as f:
            f.write("")
        for tid in (pid, *threads):
            task = os.path.join(base, "task", str(tid))
            os.makedirs(task, exist_ok=True)
            with open(os.path.join(task, "children"), "w") as f:
                f.write(" ".join(map(str, children)) + " " if tid == pid and children else "")

    def set_session(self, pid: int, session: int) -> None:
        # comm with a space and a parenthesis, as a program may name itself.
        with open(os.path.join(self.root, str(pid), "stat"), "w") as f:
            f.write(f"{pid} (my (prog) x) S 1 {session} {session} 0 -1 4194560 0\n")

    def autogroup_writes(self, pid: int) -> str:
        """What was written to the process's autogroup file since the last look."""
        path = os.path.join(self.root, str(pid), "autogroup")
        with open(path) as f:
            text = f.read()
        open(path, "w").close()
        return text


class FunctionTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.proc = FakeProc(self.mktemp())

    def test_leads_session(self) -> None:
        """The session id is read past a command name holding spaces and parentheses."""
        self.proc.process(PID, session=PID)
        self.proc.process(7, session=1)
        self.assertIs(priority.leads_session(PID, self.proc.root), True)
        self.assertIs(priority.leads_session(7, self.proc.root), False)

    def test_leads_session_gone_or_garbled(self) -> None:
        """A process that is gone, or a stat line that is not one, tells nothing."""
        self.assertIsNone(priority.leads_session(99, self.proc.root))
        self.proc.process(PID, session=PID)
        with open(os.path.join(self.proc.root, str(PID), "stat"), "w") as f:
            f.write("4242 (x) S\n")
        self.assertIsNone(priority.leads_session(PID, self.proc.root))

    def test_set_autogroup_nice(self) -> None:
        """The nice value is written as decimal text; a missing file is C{False}."""
        self.proc.process(PID, session=PID)
        self.assertTrue(priority.set_autogroup_nice(PID, 19, self.proc.root))
        self.assertEqual(self.proc.autogroup_writes(PID), "19")
        self.assertFalse(priority.set_autogroup_nice(99, 19, self.proc.root))

    def test_process_tree(self) -> None:
        """The threads of the process and of its descendants, children of any thread."""
        self.proc.process(PID, session=PID, threads=(4243,), children=(5000,))
        self.proc.process(5000, session=PID, children=(5001,))
        self.proc.process(5001, session=PID)
        self.assertEqual(
            sorted(priority.process_tree(PID, self.proc.root)), [4242, 4243, 5000, 5001]
        )
        self.assertEqual(priority.process_tree(99, self.proc.root), [])

    def test_process_tree_bounded(self) -> None:
        """At most C{limit} processes are visited, however deep the tree (or a loop in it)."""
        self.proc.process(PID, session=PID, children=(PID,))
        self.assertEqual(priority.process_tree(PID, self.proc.root, limit=5), [PID] * 5)

    def test_set_policy_counts_what_was_set(self) -> None:
        """A thread that is gone (or refuses) is skipped."""
        calls: list[tuple[int, int]] = []

        def setscheduler(tid: int, policy: int, param: os.sched_param) -> None:
            if tid == 2:
                raise ProcessLookupError(tid)
            calls.append((tid, policy))

        self.assertEqual(priority.set_policy([1, 2, 3], os.SCHED_IDLE, setscheduler), 2)
        self.assertEqual(calls, [(1, os.SCHED_IDLE), (3, os.SCHED_IDLE)])

    def status(self, capeff: str) -> str:
        os.makedirs(os.path.join(self.proc.root, "self"), exist_ok=True)
        with open(os.path.join(self.proc.root, "self", "status"), "w") as f:
            f.write(f"Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t{capeff}\n")
        return self.proc.root

    def test_idle_policy_needs_cap_sys_nice(self) -> None:
        """C{SCHED_IDLE} is used only with C{CAP_SYS_NICE} (bit 23) in the effective set."""
        self.assertTrue(priority.can_use_idle_policy(self.status("0000000000800000")))
        self.assertTrue(priority.can_use_idle_policy(self.status("000001ffffffffff")))
        self.assertFalse(priority.can_use_idle_policy(self.status("00000000007fffff")))
        self.assertFalse(priority.can_use_idle_policy(self.status("garbage")))
        self.assertFalse(priority.can_use_idle_policy(os.path.join(self.proc.root, "none")))


class ChildPriorityTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.proc = FakeProc(self.mktemp())
        self.clock = Clock()
        self.policies: list[tuple[int, int]] = []

    def setscheduler(self, tid: int, policy: int, param: os.sched_param) -> None:
        self.assertEqual(param.sched_priority, 0)
        self.policies.append((tid, policy))

    def child(self, idle: bool = True, nice: int = 19) -> ChildPriority:
        return ChildPriority(
            self.clock, PID, nice, idle, self.proc.root, setscheduler=self.setscheduler
        )

    def test_lowered_once_it_leads_its_session(self) -> None:
        """
        The policy is set at once; the group's nice value only once the child leads its
        own session (before, the group is the gateway's).
        """
        self.proc.process(PID, session=1)
        child = self.child()
        child.start()
        self.assertEqual(self.policies, [(PID, os.SCHED_IDLE)])
        self.clock.advance(0.0005)
        self.assertEqual(self.proc.autogroup_writes(PID), "")
        self.proc.set_session(PID, PID)
        self.clock.advance(0.001)
        self.assertEqual(self.proc.autogroup_writes(PID), "19")
        self.assertEqual((child.owned, child.group_nice, child.idle), (True, 19, True))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_serving_then_stopping(self) -> None:
        """
        Serving: every thread of the tree back to C{SCHED_OTHER}, the group to nice 0.
        Stopping: the group to the low nice value again (the policy stays: a DELETE answers
        at once, and the tree walk would delay it).
        """
        self.proc.process(PID, session=PID, threads=(4243,), children=(5000,))
        self.proc.process(5000, session=PID)
        child = self.child()
        child.start()
        self.assertEqual(self.proc.autogroup_writes(PID), "19")
        self.policies.clear()
        child.serving()
        self.assertEqual(sorted(self.policies), [(t, os.SCHED_OTHER) for t in (4242, 4243, 5000)])
        self.assertEqual(self.proc.autogroup_writes(PID), "0")
        self.assertFalse(child.idle)
        self.policies.clear()
        child.stopping()
        self.assertEqual(self.policies, [])
        self.assertEqual(self.proc.autogroup_writes(PID), "19")

    def test_without_idle_policy(self) -> None:
        """Without C{CAP_SYS_NICE} only the group's nice value changes."""
        self.proc.process(PID, session=PID)
        child = self.child(idle=False, nice=10)
        child.start()
        self.assertEqual(self.proc.autogroup_writes(PID), "10")
        child.serving()
        self.assertEqual(self.proc.autogroup_writes(PID), "0")
        child.stopping()
        self.assertEqual(self.proc.autogroup_writes(PID), "10")
        self.assertEqual(self.policies, [])

    def test_gives_up(self) -> None:
        """A child that never leads its session is checked a bounded number of times."""
        self.proc.process(PID, session=1)
        child = self.child()
        child.start()
        self.clock.pump([0.001] * 200)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertFalse(child.owned)
        child.serving()
        child.stopping()
        self.assertEqual(self.proc.autogroup_writes(PID), "")

    def test_gone(self) -> None:
        """A child already gone stops the checks at once."""
        child = self.child()
        child.start()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertFalse(child.owned)

    def test_serving_or_cancel_stop_the_checks(self) -> None:
        """C{serving()} and C{cancel()} leave no timer behind."""
        self.proc.process(PID, session=1)
        for end in ("serving", "cancel"):
            child = self.child()
            child.start()
            self.assertEqual(len(self.clock.getDelayedCalls()), 1)
            getattr(child, end)()
            self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.proc.autogroup_writes(PID), "")
