# -*- test-case-name: tests.test_timeslice -*-
"""
A task's CPU time slice (Linux 6.12 and later: EEVDF custom slices, ``sched_setattr``).

A child starting up runs on the same cores as the gateway, its other sessions' children and
their HTTP clients. Once the scheduler has picked it, it keeps the core for its slice (1.4 ms
by default on 2 cores) before a task that wakes up may take the core, however low its group's
weight (``mcpgw.priority``). With the kernel's shortest slice (0.1 ms) it hands the core over
almost at once. A short slice also brings a task's turn forward (an earlier virtual
deadline), so it is only given together with the low group weight, which outweighs that.
``ChildPriority`` sets it on the child just after the spawn and sets the default back once
the child has answered ``initialize``.

Only the child's first task is changed, with ``SCHED_FLAG_RESET_ON_FORK``: threads and
processes it starts meanwhile get the default slice, so setting the default back on that one
task leaves no short slice behind. The flag itself is cleared too where the gateway has
``CAP_SYS_NICE`` (in the initial user namespace); elsewhere the kernel keeps it (the child's
later children then start at the default policy and a nice value of at least 0). Its
scheduling policy and nice value are read and written back as they are (a change the child
makes to them in the few microseconds between would be undone); a task under a policy other
than ``SCHED_OTHER`` or ``SCHED_BATCH`` is left alone. A child that switches user is not
changed: the gateway may not be allowed to set it back (root in a user namespace).

Older kernels have no custom slices for these policies (``available_slices`` tells).
"""

from __future__ import annotations

import ctypes
import platform
import struct
import sys
from collections.abc import Callable

#: The kernel's shortest slice, in nanoseconds (0.1 ms).
SHORTEST = 100_000

#: ``sched_setattr`` and ``sched_getattr`` by machine (``uname -m``).
SYSCALLS = {
    "x86_64": (314, 315),
    "aarch64": (274, 275),
    "arm64": (274, 275),
    "riscv64": (274, 275),
}

SCHED_FLAG_RESET_ON_FORK = 0x01
#: The policies whose tasks have slices: ``SCHED_OTHER`` and ``SCHED_BATCH``.
FAIR_POLICIES = (0, 3)

# struct sched_attr, first version: size, policy, flags, nice, priority, runtime, deadline,
# period, util_min, util_max.
_ATTR = struct.Struct("=IIQiIQQQII")

Syscall = Callable[..., int]


def _libc_syscall() -> Syscall | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).syscall
    except (OSError, AttributeError):
        return None


class Slices:
    """
    ``sched_getattr``/``sched_setattr`` on one machine.

    @param syscall: ``libc.syscall``; C{None}: nothing can be done.
    @param machine: ``platform.machine()``.
    """

    def __init__(self, syscall: Syscall | None = None, machine: str | None = None) -> None:
        if machine is None:
            # The kernel's machine; a 32-bit process on it has other system call numbers.
            machine = platform.machine() if ctypes.sizeof(ctypes.c_void_p) == 8 else "32-bit"
        numbers = SYSCALLS.get(machine)
        self._syscall = syscall if numbers is not None else None
        self._set, self._get = numbers or (0, 0)

    def get(self, tid: int) -> tuple[int, int, int, int, int] | None:
        """``(policy, flags, nice, priority, runtime)`` of ``tid`` (0: the calling thread)."""
        buf = ctypes.create_string_buffer(_ATTR.size)
        if not self._call(self._get, tid, buf, _ATTR.size, 0):
            return None
        _, policy, flags, nice, priority, runtime, *_ = _ATTR.unpack(buf.raw)
        return policy, flags, nice, priority, runtime

    def set(self, tid: int, runtime: int) -> bool:
        """
        Give ``tid`` a slice of ``runtime`` ns with ``SCHED_FLAG_RESET_ON_FORK``, or (0) the
        default slice without that flag, its policy and nice value unchanged. ``False`` when
        the task is gone, not ours, or under another policy. (Without ``CAP_SYS_NICE`` the
        kernel keeps the flag once set: then only the slice goes back.)
        """
        attr = self.get(tid)
        if attr is None:
            return False
        policy, flags, nice, priority, _ = attr
        if policy not in FAIR_POLICIES:
            return False
        tries = [flags | SCHED_FLAG_RESET_ON_FORK]
        if not runtime:
            tries.insert(0, flags & ~SCHED_FLAG_RESET_ON_FORK)
        for flags in tries:
            packed = _ATTR.pack(_ATTR.size, policy, flags, nice, priority, runtime, 0, 0, 0, 0)
            if self._call(self._set, tid, ctypes.create_string_buffer(packed, _ATTR.size), 0):
                return True
        return False

    def _call(self, number: int, *args: object) -> bool:
        return self._syscall is not None and self._syscall(number, *args) == 0

    def supported(self) -> bool:
        """
        The kernel reports a slice for this thread (6.12 and later; before, the runtime of a
        ``SCHED_OTHER`` task reads 0 and a custom one is ignored).
        """
        attr = self.get(0)
        return attr is not None and attr[0] in FAIR_POLICIES and attr[4] > 0


def available_slices() -> Slices | None:
    """
    This machine's ``Slices`` where the kernel has custom slices (Linux 6.12 and later, on a
    machine whose system calls are known), else ``None``.
    """
    slices = Slices(_libc_syscall())
    return slices if slices.supported() else None
