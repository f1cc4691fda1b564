# -*- test-case-name: tests.test_priority -*-
"""
A child's CPU priority while it starts and while it stops (Linux).

Every child leads its own session (SPEC 6). With autogroup scheduling
(``/proc/sys/kernel/sched_autogroup_enabled`` = 1, the default of most distribution kernels for
processes that no cpu cgroup holds) each session is a scheduling group of its own, weighted like
the gateway's whole session. A child starting up, an interpreter that spends 15 to 25 ms of CPU
before it answers ``initialize``, then takes as large a share of a busy machine as the gateway
that serves every other session's calls: one client opening and closing sessions slowed the
calls of four others to 60 % of their rate (``../shared/bench`` scenario g, 2 cores).

So, from the spawn until the child has answered ``initialize`` (and, for the group's nice
value, again once it is told to stop: a Python child spends milliseconds in its exit), the
gateway:

- sets the nice value of the child's session group (``/proc/PID/autogroup``;
  ``resource_limits.startup_nice``, 19 by default: about 1.5 % of a nice-0 group's weight);
  the child only leads its session once its launcher has called ``setsid`` (about 0.7 ms after
  the spawn with util-linux, 10 ms with the Python launcher), before that the file is the
  gateway's own group, so the gateway checks the child's session id first and tries again a
  few times, at growing intervals;
- when it may set the policy back (``CAP_SYS_NICE``, e.g. root), also runs the child's process
  as ``SCHED_IDLE`` until ``initialize`` is answered: a CPU running only such tasks counts as
  idle, so the steady sessions' children and the gateway are woken on it and preempt it at
  once. Without the capability an ``SCHED_IDLE`` process could not be set back, so only the
  group's nice value is used.

While it serves, the child has the normal weight and policy, like any process. Raising a
group's nice value needs no privilege, and setting it back to 0 neither (only a negative value
does). An idle machine starts a child just as fast; a busy one finishes the calls in progress
first. Where ``/proc/PID/autogroup`` is missing (no autogroups, not Linux) nothing is done
there: without autogroups a child is one task among the others, weighted like the gateway.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime

PROC = "/proc"

#: The capability that lets the gateway set a child's policy back from ``SCHED_IDLE``.
CAP_SYS_NICE = 23

#: Seconds between the checks for the child's own session (0.13 s in all).
DELAYS = (0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064)

#: The most processes (the child and its descendants) whose policy is set back.
MAX_PROCESSES = 64

SetScheduler = Callable[[int, int, "os.sched_param"], None]


def can_use_idle_policy(proc: str = PROC) -> bool:
    """Linux, ``SCHED_IDLE`` known, and this process holds ``CAP_SYS_NICE``."""
    if not sys.platform.startswith("linux") or not hasattr(os, "SCHED_IDLE"):
        return False
    try:
        with open(f"{proc}/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> CAP_SYS_NICE & 1)
    except (OSError, ValueError, IndexError):
        pass
    return False


def leads_session(pid: int, proc: str = PROC) -> bool | None:
    """Whether ``pid`` leads its own session; ``None`` when that cannot be read (gone)."""
    try:
        with open(f"{proc}/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # "pid (comm) state ppid pgrp session ...": comm may hold spaces and parentheses.
    fields = stat[stat.rfind(b")") + 2 :].split()
    try:
        return int(fields[3]) == pid
    except (IndexError, ValueError):
        return None


def set_autogroup_nice(pid: int, nice: int, proc: str = PROC) -> bool:
    """Set the nice value of ``pid``'s session group; ``False`` when it cannot be done."""
    try:
        fd = os.open(f"{proc}/{pid}/autogroup", os.O_WRONLY)
    except OSError:
        return False
    try:
        os.write(fd, str(nice).encode("ascii"))
    except OSError:
        return False
    finally:
        os.close(fd)
    return True


def process_tree(pid: int, proc: str = PROC, limit: int = MAX_PROCESSES) -> list[int]:
    """
    The threads of ``pid`` and of its descendants (at most ``limit`` processes), from
    ``/proc/PID/task/TID/children``; ``[]`` when ``pid`` is gone.
    """
    threads: list[int] = []
    todo, seen = [pid], 0
    while todo and seen < limit:
        current = todo.pop()
        seen += 1
        try:
            tids = os.listdir(f"{proc}/{current}/task")
        except OSError:
            continue
        for tid in tids:
            if not tid.isdigit():
                continue
            threads.append(int(tid))
            try:
                with open(f"{proc}/{current}/task/{tid}/children", "rb") as f:
                    todo.extend(int(child) for child in f.read().split())
            except (OSError, ValueError):
                pass
    return threads


def set_policy(tids: list[int], policy: int, setscheduler: SetScheduler) -> int:
    """Give each thread ``policy`` (priority 0); how many were set."""
    done = 0
    for tid in tids:
        try:
            setscheduler(tid, policy, os.sched_param(0))
        except OSError:
            continue
        done += 1
    return done


class ChildPriority:
    """
    One child's priority: low from ``start()`` (just after the spawn) until ``serving()``,
    normal while it serves, low again from ``stopping()``; ``cancel()`` when it has ended.

    @param nice: the nice value of its session group while it starts and stops (1 to 19).
    @param idle: also run it as ``SCHED_IDLE`` until it serves (see ``can_use_idle_policy``).
    """

    def __init__(
        self,
        clock: IReactorTime,
        pid: int,
        nice: int,
        idle: bool,
        proc: str = PROC,
        setscheduler: SetScheduler | None = None,
    ) -> None:
        self._clock = clock
        self._pid = pid
        self._nice = nice
        self._idle = idle
        self._proc = proc
        self._setscheduler: SetScheduler = setscheduler or os.sched_setscheduler
        self._timer: IDelayedCall | None = None
        self._attempt = 0
        self._serving = False
        #: The child leads its own session: the group it is in is its own.
        self.owned = False
        #: The nice value last set on the child's session group.
        self.group_nice = 0
        #: Whether the child was set to ``SCHED_IDLE`` and not yet back.
        self.idle = False

    def start(self) -> None:
        if self._idle:
            # The launcher has exec'd and is single-threaded; what it runs inherits the policy.
            self.idle = set_policy([self._pid], os.SCHED_IDLE, self._setscheduler) > 0
        self._check()

    def serving(self) -> None:
        self._serving = True
        self._cancel_timer()
        if self.idle:
            set_policy(process_tree(self._pid, self._proc), os.SCHED_OTHER, self._setscheduler)
            self.idle = False
        self._set_group(0)

    def stopping(self) -> None:
        # Only the group's weight: a DELETE answers at once, and walking the process tree
        # to set every thread's policy would add a tenth of a millisecond to it.
        self._serving = False
        self._set_group(self._nice)

    def cancel(self) -> None:
        self._cancel_timer()

    def _check(self) -> None:
        self._timer = None
        if self._serving:
            return
        leads = leads_session(self._pid, self._proc)
        if leads:
            self.owned = True
            self._set_group(self._nice)
            return
        if leads is None or self._attempt >= len(DELAYS):
            return
        delay = DELAYS[self._attempt]
        self._attempt += 1
        self._timer = self._clock.callLater(delay, self._check)

    def _set_group(self, nice: int) -> None:
        if self.owned and nice != self.group_nice:
            if set_autogroup_nice(self._pid, nice, self._proc):
                self.group_nice = nice

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
