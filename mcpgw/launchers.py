# -*- test-case-name: tests.test_sandbox,tests.test_launch -*-
"""
The command lines that start an MCP server child (SPEC 6).

Every child is spawned through a short chain of small programs that prepare it and ``exec``
the next one in place (same pid, same pipes), so the child leads its own session and process
group, has its resource limits, its working directory (and user) and then runs the command.
Two launchers do that, chosen once at startup (``find_tools``):

- util-linux and coreutils, when present and working (Linux; ``find_tools`` runs the chain
  once)::

      setsid [setpriv [--reuid=U --regid=G --clear-groups] --pdeathsig TERM --]
          dash -c 'ulimit -t "$1" && ulimit -v "$2" ... && cd -- "$N" && shift N && exec "$@"'
          mcpgw-launch LIMIT... DIR COMMAND...

  or, without ``dash``, ``prlimit`` and ``env -C`` in its place::

      setsid [prlimit --cpu=.. --as=.. --fsize=.. --nofile=.. [--nproc=..] --]
          [setpriv [--reuid=U --regid=G --clear-groups] --pdeathsig TERM --]
          env -C DIR -- COMMAND...

  ``setsid(1)`` does not fork when its caller does not lead a process group, which a
  posix_spawned child never does. Each small program adds its exec and dynamic loading to a
  spawn, half a millisecond or more: Debian's ``dash`` sets the limits (soft and hard, after
  the switch of user, which may always lower them) and changes directory in one, where
  ``prlimit`` and ``env`` take two (the first call of a new session: 0.5 ms sooner). The
  values and the directory are arguments, never part of the script;
- the Python launcher (``mcpgw._launch``, ``sys.executable -S -I <mcpgw/_launch.py> OPTIONS --
  COMMAND...``, about 9 ms of interpreter start), used when a tool is missing or does not
  work, and for a command that cannot be found, a working directory that is not there or a
  program name holding ``=`` (which ``env`` would take for a variable): it reports those
  failures in its own words.

``spawnProcess`` gets neither ``path=`` nor ``uid=``/``gid=`` so it stays on its posix_spawn
path, and always an explicit ``env`` dict. Twisted's posix_spawn resets to their default every
signal the gateway ignores (``setsigdef``: SIGPIPE, SIGXFSZ), so the child gets default
dispositions from either launcher.
"""

from __future__ import annotations

import functools
import os
import re
import resource
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping

import attrs

from mcpgw import _launch
from mcpgw.config import ResourceLimits, ServiceConfig

MiB = 1024 * 1024


#: The launcher, run by file path (``-S -I``: no site, isolated) for the cheapest start.
LAUNCHER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_launch.py")


DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"


#: The resource limits by option name; ``prlimit(1)`` and ``mcpgw._launch`` share the names
#: (the launcher's table: it runs alone, by path, so it cannot import this module).
RLIMITS: dict[str, int] = _launch.LIMITS


#: How long ``find_tools`` lets its one trial run of the chain take.
CHECK_TIMEOUT = 5.0


#: The value the trial run gives each ``ulimit`` (lowered to the hard limit): any unit.
TRIAL_LIMIT = 1 << 30


#: A name ``dash`` keeps in the environment it passes on (it drops any other, e.g. ``A-B``).
_SHELL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


@attrs.frozen
class Tools:
    """
    The programs of the util-linux launch chain, as absolute paths (see the module docstring).

    @ivar hard_limits: the gateway's own hard limits by option name (``None``: unlimited);
        a limit asked above one is lowered to it, as ``mcpgw._launch`` does, because
        ``prlimit`` would fail instead.
    """

    setsid: str
    prlimit: str
    setpriv: str
    env: str
    hard_limits: Mapping[str, int | None] = attrs.field(factory=dict)
    #: ``dash``, which replaces ``prlimit`` and ``env -C`` when present (``None``: not used).
    shell: str | None = None


def current_hard_limits() -> dict[str, int | None]:
    """This process's hard resource limits by option name (``None``: unlimited)."""
    hard: dict[str, int | None] = {}
    for name, which in RLIMITS.items():
        value = resource.getrlimit(which)[1]
        hard[name] = None if value == resource.RLIM_INFINITY else value
    return hard


def check_tools(tools: Tools) -> str | None:
    """
    Run the whole chain once (``setsid setpriv --pdeathsig dash -c ... env``, or ``setsid
    prlimit setpriv --pdeathsig env -C / -- env``), with an empty environment; ``None`` if it
    worked, else why not.

    Blocking (a few milliseconds): call it once at startup, before the reactor serves.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)

    def text(value: int) -> str:
        return "unlimited" if value == resource.RLIM_INFINITY else str(value)

    if tools.shell is not None:
        # Every ulimit option the chain may use, each at a value at or below its hard limit.
        limits = [
            (name, min(TRIAL_LIMIT, hard_limit) if hard_limit is not None else TRIAL_LIMIT)
            for name, hard_limit in current_hard_limits().items()
            if name in SHELL_LIMITS
        ]
        argv = [
            tools.setsid,
            tools.setpriv, "--pdeathsig", "TERM", "--",
            *shell_launch(tools.shell, limits, "/", {}), tools.env,
        ]  # fmt: skip
    else:
        argv = [
            tools.setsid,
            tools.prlimit, f"--nofile={text(soft)}:{text(hard)}", "--",
            tools.setpriv, "--pdeathsig", "TERM", "--",
            tools.env, "-C", "/", "--", tools.env,
        ]  # fmt: skip
    try:
        done = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env={},
            timeout=CHECK_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as e:
        return f"trial run failed: {e}"
    if done.returncode != 0:
        why = done.stderr.decode("utf-8", "replace").strip().splitlines()
        return f"trial run exited with {done.returncode}: {why[-1] if why else 'no message'}"
    return None


def find_tools(
    which: Callable[[str], str | None] = shutil.which,
    check: Callable[[Tools], str | None] = check_tools,
    platform: str = sys.platform,
) -> tuple[Tools | None, str]:
    """
    Resolve ``setsid``, ``prlimit``, ``setpriv`` (util-linux) and ``env`` (coreutils, with
    ``-C``), and ``dash`` if there is one, and check that they work together (the chain with
    ``dash`` first, then without).

    @return: ``(tools, how)``, ``tools`` ``None`` when the Python launcher must be used, and
        ``how`` a sentence for the log saying which launcher and why.
    """
    if not platform.startswith("linux"):
        return None, "the Python launcher (util-linux launching is for Linux)"
    found = {name: which(name) for name in ("setsid", "prlimit", "setpriv", "env")}
    missing = sorted(name for name, path in found.items() if path is None)
    if missing:
        return None, f"the Python launcher ({', '.join(missing)} not found)"
    paths = {name: os.path.abspath(path) for name, path in found.items() if path is not None}
    tools = Tools(hard_limits=current_hard_limits(), **paths)
    dash = which("dash")
    if dash is not None:
        with_dash = attrs.evolve(tools, shell=os.path.abspath(dash))
        if check(with_dash) is None:
            chain = " ".join(paths[name] for name in ("setsid", "setpriv"))
            return (
                with_dash,
                f"util-linux ({chain}) and {with_dash.shell} for limits and directory",
            )
    problem = check(tools)
    if problem is not None:
        return None, f"the Python launcher (util-linux chain: {problem})"
    chain = " ".join(paths[name] for name in ("setsid", "prlimit", "setpriv", "env"))
    return tools, f"util-linux ({chain})"


@functools.lru_cache(maxsize=1)
def default_tools() -> tuple[Tools | None, str]:
    """``find_tools()``, run once per process."""
    return find_tools()


def limit_values(limits: ResourceLimits | None) -> list[tuple[str, int]]:
    """``(option name, value)`` for each limit set in ``limits`` (``None``: none at all)."""
    if limits is None:
        return []
    values = [
        ("cpu", limits.cpu_seconds),
        ("as", None if limits.memory_mb is None else limits.memory_mb * MiB),
        ("fsize", None if limits.file_size_mb is None else limits.file_size_mb * MiB),
        ("nofile", limits.open_files),
        ("nproc", limits.max_processes),
    ]
    return [(name, value) for name, value in values if value is not None]


def as_options(limits: list[tuple[str, int]]) -> list[str]:
    """``--name=value`` for each limit: the options of ``prlimit`` and of ``mcpgw._launch``."""
    return [f"--{name}={value}" for name, value in limits]


def limit_options(limits: ResourceLimits | None) -> list[str]:
    """The launcher options for ``limits`` (``None``: none at all)."""
    return as_options(limit_values(limits))


def clamped_limits(
    limits: ResourceLimits | None, hard_limits: Mapping[str, int | None]
) -> list[tuple[str, int]]:
    """``limit_values``, each lowered to the gateway's hard limit (raising it would fail)."""
    clamped = []
    for name, value in limit_values(limits):
        if name not in RLIMITS:
            continue
        hard = hard_limits.get(name)
        if hard is not None and value > hard:
            value = hard
        clamped.append((name, value))
    return clamped


#: ``ulimit`` option and unit (bytes per unit) of each limit, in ``dash``.
SHELL_LIMITS = {"cpu": ("t", 1), "as": ("v", 1024), "fsize": ("f", 512), "nofile": ("n", 1),
                "nproc": ("p", 1)}  # fmt: skip


def shell_can_run(
    env: Mapping[str, str], limits: list[tuple[str, int]], drops_privileges: bool
) -> bool:
    """
    Whether the ``dash`` step may replace ``prlimit`` and ``env -C``: every environment name
    is one ``dash`` passes on, and no process limit is to meet a switch of user (``prlimit``
    sets it before ``setpriv``, so the kernel refuses the exec of a user already over it;
    ``dash`` would set it after).
    """
    if drops_privileges and any(name == "nproc" for name, _ in limits):
        return False
    return all(_SHELL_NAME.match(name) for name in env)


def shell_launch(
    shell: str, limits: list[tuple[str, int]], working_dir: str, env: Mapping[str, str]
) -> list[str]:
    """
    ``dash -c SCRIPT mcpgw-launch ARG...``, to be followed by the command: the script sets
    each limit (soft and hard) and the directory from its arguments, then execs the rest.

    ``cd`` makes the shell export ``PWD`` and ``OLDPWD``: the script puts back what ``env``
    (the child's environment) holds, so the command gets exactly ``env``, as from the other
    launchers.
    """
    steps: list[str] = []
    args: list[str] = []

    def arg(value: str) -> str:
        args.append(value)
        return f'"${len(args)}"'

    for name, value in limits:
        option, unit = SHELL_LIMITS[name]
        steps.append(f"ulimit -{option} {arg(str(value // unit))}")
    steps.append(f"cd -- {arg(working_dir)}")
    for variable in ("PWD", "OLDPWD"):
        kept = env.get(variable)
        steps.append(f"unset {variable}" if kept is None else f"export {variable}={arg(kept)}")
    steps.append(f'shift {len(args)} && exec "$@"')
    return [shell, "-c", " && ".join(steps), "mcpgw-launch", *args]


def drops_privileges(service: ServiceConfig, euid: int) -> bool:
    """Whether the child will run as ``sandbox.user`` (sandbox on, asked for, and root)."""
    sandbox = service.sandbox
    return sandbox.enabled and sandbox.drop_privileges and euid == 0


def user_ids(user: str) -> tuple[int, int]:
    """``(uid, gid)`` of ``user`` (its primary group); C{OSError} for an unknown user."""
    import pwd

    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise OSError(f"unknown user {user!r}") from None
    return entry.pw_uid, entry.pw_gid


def build_tools_argv(
    service: ServiceConfig,
    working_dir: str,
    euid: int,
    tools: Tools,
    env: Mapping[str, str] | None = None,
) -> tuple[str, ...]:
    """The util-linux chain's command line, ending with ``--`` and the service's command."""
    sandbox = service.sandbox
    limits = clamped_limits(sandbox.resource_limits, tools.hard_limits) if sandbox.enabled else []
    if tools.shell is not None and not shell_can_run(
        env or {}, limits, drops_privileges(service, euid)
    ):
        tools = attrs.evolve(tools, shell=None)
    argv = [tools.setsid]
    if limits and tools.shell is None:
        argv.append(tools.prlimit)
        argv.extend(as_options(limits))
        argv.append("--")
    if sandbox.enabled:
        argv.append(tools.setpriv)
        if drops_privileges(service, euid):
            uid, gid = user_ids(sandbox.user)
            argv.extend((f"--reuid={uid}", f"--regid={gid}", "--clear-groups"))
        argv.extend(("--pdeathsig", "TERM", "--"))
    if tools.shell is not None:
        argv.extend(shell_launch(tools.shell, limits, working_dir, env or {}))
    else:
        argv.extend((tools.env, "-C", working_dir, "--"))
    argv.extend(service.command)
    return tuple(argv)


def can_use_tools(command: tuple[str, ...], working_dir: str, env: Mapping[str, str]) -> bool:
    """
    Whether the util-linux chain can run ``command``: ``working_dir`` is a directory, the
    program is found (in ``env``'s ``PATH``, or relative to ``working_dir``) and its name has
    no ``=`` (which ``env`` would take for a variable). Otherwise the Python launcher runs it
    and explains the failure in its own words (a few stat calls, no more).
    """
    program = command[0]
    if "=" in program or not os.path.isdir(working_dir):
        return False
    if os.sep in program:
        path = os.path.join(working_dir, program)
        return os.path.isfile(path) and os.access(path, os.X_OK)
    return shutil.which(program, path=env.get("PATH", DEFAULT_PATH)) is not None


def build_argv(
    service: ServiceConfig,
    working_dir: str,
    euid: int,
    python: str = sys.executable,
    pdeathsig: bool = sys.platform.startswith("linux"),
    env: Mapping[str, str] | None = None,
) -> tuple[str, ...]:
    """
    The Python launcher's command line, ending with ``--`` and the service's command.

    @param env: the environment the child is spawned with; its ``LC_CTYPE``, if any, is
        passed as ``--lc-ctype`` for the launcher to restore (its interpreter's locale
        coercion changes it), and without one the launcher removes the variable.
    """
    sandbox = service.sandbox
    argv = [python, "-S", "-I", LAUNCHER]
    if sandbox.enabled:
        argv.extend(limit_options(sandbox.resource_limits))
        if pdeathsig:
            argv.append("--pdeathsig")
        if drops_privileges(service, euid):
            argv.append(f"--user={sandbox.user}")
    argv.append(f"--cwd={working_dir}")
    if env is not None and "LC_CTYPE" in env:
        argv.append(f"--lc-ctype={env['LC_CTYPE']}")
    argv.append("--")
    argv.extend(service.command)
    return tuple(argv)
