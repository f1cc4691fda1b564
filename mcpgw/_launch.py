# -*- test-case-name: tests.test_launch -*-
"""
The launcher put in front of every MCP server child (SPEC 6).

``reactor.spawnProcess`` has no ``preexec_fn``, so the gateway spawns::

    sys.executable -S -I /abs/path/mcpgw/_launch.py [OPTIONS] -- COMMAND [ARG ...]

and this script, in the child, before exec'ing COMMAND in place (same pid, same pipes):

1. ``os.setsid()`` - always, so the child leads its own session and process group and the
   gateway can signal the whole tree with ``os.killpg(pid, ...)``;
2. applies the resource limits it was given (soft and hard, never above the current hard);
3. with ``--user=NAME``, drops to that user (only when running as root);
4. with ``--pdeathsig``, asks Linux to send SIGTERM when the gateway dies (``prctl``), after
   the user change, which would clear it;
5. changes to ``--cwd``;
6. resets the signals Python itself ignores (SIGPIPE, SIGXFSZ) to their default, since an
   ignored disposition survives ``exec``;
7. ``os.execvp(COMMAND, [COMMAND, ARG ...])`` with the environment it was started with, less
   what its own interpreter added: Python's C-locale coercion (PEP 538, which ``-I`` does not
   turn off) sets ``LC_CTYPE`` when the locale is ``C``, so ``LC_CTYPE`` is removed, or set
   back to ``--lc-ctype``'s value when the gateway's environment had one.

Everything done after the user change is loaded before it (``ctypes`` and libc for ``prctl``,
what ``os.execvp`` imports to search ``PATH``): the new user may not be able to read the
standard library.

It is run by file path with ``-S -I`` (no site, isolated) to keep the extra interpreter start as
cheap as possible, so it imports only the standard library and nothing of ``mcpgw``.
Any error: one line on stderr, exit status 127.

Options (each ``--name=value``)::

    --cpu=SECONDS  --as=BYTES  --fsize=BYTES  --nofile=N  --nproc=N
    --cwd=DIR  --user=NAME  --pdeathsig  --lc-ctype=VALUE
"""

from __future__ import annotations

# The C module: ``signal`` itself imports enum, which costs milliseconds on every spawn.
import _signal  # type: ignore[import-not-found]
import os
import resource
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, MutableMapping
    from types import ModuleType
    from typing import TextIO

EXIT_LAUNCH_FAILED = 127

PR_SET_PDEATHSIG = 1

LIMITS = {
    "cpu": resource.RLIMIT_CPU,
    "as": resource.RLIMIT_AS,
    "fsize": resource.RLIMIT_FSIZE,
    "nofile": resource.RLIMIT_NOFILE,
}
if hasattr(resource, "RLIMIT_NPROC"):
    LIMITS["nproc"] = resource.RLIMIT_NPROC


class LaunchError(Exception):
    """A problem the launcher reports on one stderr line before exiting 127."""


def parse_args(args: list[str]) -> tuple[dict[str, str], list[str]]:
    """
    Split ``[OPTIONS] -- COMMAND [ARG ...]``.

    @return: ``(options, argv)``: a dict of option name to string value (``""`` for flags),
        and the command line to exec.
    @raise LaunchError: for an unknown option or a missing command.
    """
    options: dict[str, str] = {}
    for index, arg in enumerate(args):
        if arg == "--":
            argv = list(args[index + 1 :])
            if not argv:
                raise LaunchError("no command given after --")
            return options, argv
        if not arg.startswith("--"):
            raise LaunchError(f"unexpected argument {arg!r} (missing --?)")
        name, _, value = arg[2:].partition("=")
        if name not in LIMITS and name not in ("cwd", "user", "pdeathsig", "lc-ctype"):
            raise LaunchError(f"unknown option --{name}")
        options[name] = value
    raise LaunchError("no command given (expected -- COMMAND ...)")


def apply_limit(name: str, value: str, rlimit: ModuleType = resource) -> None:
    """
    Set one resource limit, soft and hard, to ``value`` (never above the current hard limit,
    which an unprivileged process could not raise).
    """
    try:
        wanted = int(value)
    except ValueError:
        raise LaunchError(f"--{name} needs an integer, not {value!r}") from None
    which = LIMITS[name]
    _soft, hard = rlimit.getrlimit(which)
    if hard != rlimit.RLIM_INFINITY and wanted > hard:
        wanted = hard
    try:
        rlimit.setrlimit(which, (wanted, wanted))
    except (ValueError, OSError) as e:
        raise LaunchError(f"cannot set RLIMIT {name} to {wanted}: {e}") from None


def prepare_pdeathsig() -> Callable[[], None]:
    """
    Load what asking for the parent-death signal needs (``ctypes``, libc) and return the
    function that asks for it (Linux only; elsewhere a no-op).

    Called before the user change, the function after it: the new user may not be able to
    read the standard library, and the function imports nothing.
    """
    if not sys.platform.startswith("linux"):
        return lambda: None
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl
    get_errno = ctypes.get_errno

    def set_pdeathsig() -> None:
        if prctl(PR_SET_PDEATHSIG, _signal.SIGTERM, 0, 0, 0) != 0:
            raise LaunchError(f"prctl(PR_SET_PDEATHSIG): errno {get_errno()}")

    return set_pdeathsig


def set_pdeathsig() -> None:
    """Ask the kernel to SIGTERM this process when its parent dies (Linux only; else a no-op)."""
    prepare_pdeathsig()()


def prepare_exec() -> None:
    """
    Import now what ``os.execvp`` imports when it searches ``PATH`` (``os.get_exec_path``
    imports ``warnings``), for a user who may not be able to read the standard library.
    """
    os.get_exec_path()


def restore_environ(options: dict[str, str], environ: MutableMapping[str, str]) -> None:
    """
    Undo the interpreter's C-locale coercion (PEP 538): ``LC_CTYPE`` as the gateway gave it
    (``--lc-ctype``), or not at all.
    """
    if "lc-ctype" in options:
        environ["LC_CTYPE"] = options["lc-ctype"]
    else:
        environ.pop("LC_CTYPE", None)


def drop_privileges(user: str, osmod: ModuleType = os) -> None:
    """Become ``user`` (group, supplementary groups, then user); only when running as root."""
    if osmod.geteuid() != 0:
        return
    import pwd

    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise LaunchError(f"unknown user {user!r}") from None
    try:
        osmod.setgroups([])
        osmod.setgid(entry.pw_gid)
        osmod.setuid(entry.pw_uid)
    except OSError as e:
        raise LaunchError(f"cannot switch to user {user!r}: {e}") from None


def launch(
    args: list[str],
    osmod: ModuleType = os,
    rlimit: ModuleType = resource,
    pdeathsig: Callable[[], None] | None = None,
) -> None:
    """
    Prepare this process as ``args`` ask and exec the command; returns only on failure.

    @param pdeathsig: asks for the parent-death signal; default: ``prepare_pdeathsig()``.
    """
    options, argv = parse_args(args)
    restore_environ(options, osmod.environ)
    if "pdeathsig" in options and pdeathsig is None:
        pdeathsig = prepare_pdeathsig()
    osmod.setsid()
    for name in LIMITS:
        if name in options:
            apply_limit(name, options[name], rlimit)
    if options.get("user"):
        prepare_exec()
        drop_privileges(options["user"], osmod)
    # After the user change: the kernel clears the parent-death signal on a new euid/egid.
    if pdeathsig is not None and "pdeathsig" in options:
        pdeathsig()
    if options.get("cwd"):
        try:
            osmod.chdir(options["cwd"])
        except OSError as e:
            cwd = options["cwd"]
            raise LaunchError(f"cannot change directory to {cwd!r}: {e}") from None
    for name in ("SIGPIPE", "SIGXFSZ"):
        if hasattr(_signal, name):
            _signal.signal(getattr(_signal, name), _signal.SIG_DFL)
    try:
        osmod.execvp(argv[0], argv)
    except OSError as e:
        raise LaunchError(f"cannot run {argv[0]!r}: {e.strerror or e}") from None


def main(
    args: list[str] | None = None,
    osmod: ModuleType = os,
    rlimit: ModuleType = resource,
    stderr: TextIO | None = None,
) -> int:
    """Entry point: run ``launch`` and turn any failure into one stderr line and 127."""
    if args is None:
        args = sys.argv[1:]
    try:
        launch(args, osmod, rlimit)
    except (LaunchError, OSError, ImportError) as e:
        (stderr or sys.stderr).write(f"mcpgw-launch: {e}\n")
        (stderr or sys.stderr).flush()
        return EXIT_LAUNCH_FAILED
    return EXIT_LAUNCH_FAILED  # pragma: no cover - execvp only returns by raising


if __name__ == "__main__":
    sys.exit(main())
