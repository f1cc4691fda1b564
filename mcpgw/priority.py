# -*- test-case-name: tests.test_priority -*-
"""
A child's CPU weight while it starts and while it stops (Linux autogroups).

Every child leads its own session (SPEC 6). With autogroup scheduling
(``/proc/sys/kernel/sched_autogroup_enabled`` = 1, the default of most distribution kernels for
processes that no cpu cgroup holds) each session is a scheduling group of its own, weighted like
the gateway's whole session. A child starting up, an interpreter that spends 15 to 25 ms of CPU
before it answers ``initialize``, then takes as large a share of a busy machine as the gateway
that serves every other session's calls: one client opening and closing sessions slowed the
calls of four others to 60 % of their rate (``../shared/bench`` scenario g, 2 cores).

So the gateway sets the nice value of the child's group (``/proc/PID/autogroup``;
``resource_limits.startup_nice``, 19 by default: about 1.5 % of a nice-0 group's weight) from
the spawn until the child has answered ``initialize``, puts it back to 0 while it serves, and
lowers it again once the child is told to stop (a Python child spends milliseconds in its exit).
An idle machine starts a child just as fast; a busy one finishes the calls in progress first.

Where the gateway may make CPU control groups, the idle group (``mcpgw.cpugroup``) does this
better and takes the place of all that follows: the child starts and stops in it instead.

- The child has its own group only once its launcher has called ``setsid`` (about 0.7 ms after
  the spawn with util-linux, 10 ms with the Python launcher), and the kernel attaches the new
  group just after the session id changes: until then ``/proc/PID/autogroup`` is the gateway's
  own group. So the gateway writes only once the child's group differs from its own, checking
  again a few times, at growing intervals.
- The kernel takes at most one such write per 100 ms from a process without
  ``CAP_SYS_ADMIN`` in the initial user namespace (the others fail with ``EAGAIN``), which
  would leave children serving at the low weight: without it (``can_weight_groups`` tries two
  writes at startup) nothing is done. Should a write back to 0 fail all the same, it is tried
  again, every 100 ms, a few times.
- Where ``/proc/PID/autogroup`` is missing (no autogroups, not Linux) nothing is done either:
  without autogroups a child is one task among the others, weighted like the gateway.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime

from mcpgw.cpugroup import IdleGroup, read_control, write_control
from mcpgw.timeslice import SHORTEST, Slices

PROC = "/proc"

#: The capability without which the kernel takes one autogroup write per 100 ms.
CAP_SYS_ADMIN = 21

#: Seconds between the checks for the child's own group (0.13 s in all).
DELAYS = (0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064)

#: A failed write back to nice 0 is tried again this often, this many times.
RESTORE_DELAY = 0.1
RESTORE_TRIES = 10


def can_weight_groups(
    proc: str = PROC, set_nice: Callable[[int | str, int, str], bool] | None = None
) -> bool:
    """
    Linux, autogroups, and this process may write them without limit: it holds
    ``CAP_SYS_ADMIN``, ``proc`` shows its own pid namespace, and two writes of its own group's
    nice value in a row both succeed. (Root in a user namespace shows the capability in
    ``CapEff``, but the kernel checks it in the initial namespace and refuses the second write
    with ``EAGAIN``.)
    """
    if not sys.platform.startswith("linux") or not os.path.exists(f"{proc}/self/autogroup"):
        return False
    try:
        if os.readlink(f"{proc}/self") != str(os.getpid()):
            return False
        with open(f"{proc}/self/status", encoding="ascii", errors="replace") as f:
            capeff = next(line for line in f if line.startswith("CapEff:"))
        if not int(capeff.split()[1], 16) >> CAP_SYS_ADMIN & 1:
            return False
        nice = autogroup_nice("self", proc)
    except (OSError, ValueError, IndexError, StopIteration):
        return False
    write = set_autogroup_nice if set_nice is None else set_nice
    return nice is not None and write("self", nice, proc) and write("self", nice, proc)


def _read_autogroup(pid: int | str, proc: str) -> str | None:
    try:
        return read_control(f"{proc}/{pid}/autogroup")
    except OSError:
        return None


def autogroup_of(pid: int | str, proc: str = PROC) -> str | None:
    """The name of ``pid``'s autogroup (``/autogroup-N``); ``None`` when it cannot be read."""
    text = _read_autogroup(pid, proc)
    name = text.split(" nice", 1)[0].strip() if text is not None else ""
    return name or None


def autogroup_nice(pid: int | str, proc: str = PROC) -> int | None:
    """The nice value of ``pid``'s autogroup; ``None`` when it cannot be read."""
    text = _read_autogroup(pid, proc)
    try:
        return int(text.split(" nice", 1)[1]) if text is not None else None
    except (IndexError, ValueError):
        return None


def set_autogroup_nice(pid: int | str, nice: int, proc: str = PROC) -> bool:
    """Set the nice value of ``pid``'s autogroup; ``False`` when it cannot be done."""
    try:
        write_control(f"{proc}/{pid}/autogroup", str(nice))
    except OSError:
        return False
    return True


class ChildPriority:
    """
    One child's group weight: low from ``start()`` (just after the spawn) until ``serving()``,
    normal while it serves, low again from ``stopping()``. ``cancel()`` once it has exited
    (its pid may be reused). With ``slices``, its first task also has the shortest time slice
    from ``start()`` until ``serving()`` (``mcpgw.timeslice``).

    @param nice: the nice value of its group while it starts and stops (1 to 19).
    @param set_nice: ``set_autogroup_nice``; replaceable for tests.
    @param slices: set its time slice (``available_slices``); ``None``: leave it alone.
    @param idle_group: in their place, the idle CPU group (``mcpgw.cpugroup``): the child
        starts in it, its whole session leaves it once it serves, and its first process goes
        back to it to stop.
    @param weight_groups: without one, weight its autogroup (and set its slice); C{False}:
        do nothing.
    """

    def __init__(
        self,
        clock: IReactorTime,
        pid: int,
        nice: int,
        proc: str = PROC,
        set_nice: Callable[[int | str, int, str], bool] = set_autogroup_nice,
        slices: Slices | None = None,
        idle_group: IdleGroup | None = None,
        weight_groups: bool = True,
    ) -> None:
        self._clock = clock
        self._idle_group = idle_group
        self._weight_groups = weight_groups
        #: The child is in the idle group now.
        self.idle = False
        self._pid = pid
        self._nice = nice
        self._proc = proc
        self._set_nice = set_nice
        self._slices = slices
        #: The child's first task has the short slice (still, if it could not be set back).
        self.sliced = False
        self._timer: IDelayedCall | None = None
        self._attempt = 0
        self._restores = 0
        #: The gateway's own group, read at the first check (it never changes).
        self._own_group: str | None = None
        self._serving = False
        self._ended = False
        #: The child is in a group of its own (not the gateway's).
        self.owned = False
        #: The nice value last set on the child's group.
        self.group_nice = 0

    @property
    def uses_idle_group(self) -> bool:
        """The child starts and stops in the idle group (rather than weighted groups)."""
        return self._idle_group is not None

    def start(self) -> None:
        if self._idle_group is not None:
            self._idle_group.enter(self._pid)
            self.idle = True
            return
        if not self._weight_groups:
            return
        if self._slices is not None:
            self.sliced = self._slices.set(self._pid, SHORTEST)
        self._check()

    def serving(self) -> None:
        self._serving = True
        if self._idle_group is not None:
            if self.idle and not self._ended:
                self._idle_group.release(self._pid)  # it leads its session
            self.idle = False
            return
        self._cancel_timer()
        if self.sliced and not self._ended and self._slices is not None:
            self.sliced = not self._slices.set(self._pid, 0)
        self._set_group(0)

    def stopping(self) -> None:
        self._serving = False
        if self._idle_group is not None:
            if not self.idle and not self._ended:
                self._idle_group.enter(self._pid)
                self.idle = True
            return
        self._set_group(self._nice)

    def cancel(self) -> None:
        """The child has exited: nothing more is written."""
        self._ended = True
        self._cancel_timer()

    def _check(self) -> None:
        self._timer = None
        if self._serving or self._ended:
            return
        group = autogroup_of(self._pid, self._proc)
        if group is None:  # gone, or no autogroups
            return
        if self._own_group is None:
            self._own_group = autogroup_of("self", self._proc)
        if group != self._own_group:
            self.owned = True
            self._set_group(self._nice)
            return
        if self._attempt >= len(DELAYS):
            return
        delay = DELAYS[self._attempt]
        self._attempt += 1
        self._timer = self._clock.callLater(delay, self._check)

    def _set_group(self, nice: int) -> None:
        if self.owned and not self._ended and nice != self.group_nice:
            if self._set_nice(self._pid, nice, self._proc):
                self.group_nice = nice
            elif nice == 0 and self._restores < RESTORE_TRIES:
                self._restores += 1
                self._timer = self._clock.callLater(RESTORE_DELAY, self._restore)

    def _restore(self) -> None:
        self._timer = None
        if self._serving:
            self._set_group(0)

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
