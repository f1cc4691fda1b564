# -*- test-case-name: tests.test_sandbox -*-
"""
How an MCP server child is launched (SPEC 6): argv, environment, private directory.

Every child is spawned as ``sys.executable -S -I <mcpgw/_launch.py> OPTIONS -- COMMAND...``;
the launcher (``mcpgw._launch``) always calls ``setsid()`` so the child leads its own process
group, applies the resource limits, changes directory and user, and execs the command.
``spawnProcess`` gets neither ``path=`` nor ``uid=``/``gid=`` so it stays on its posix_spawn
path, and always an explicit ``env`` dict.

Decisions (SPEC 6 leaves them to us):

- Each child gets a private directory made with ``tempfile.mkdtemp`` under the sandbox root,
  named ``mcpgw-<service>-<random>`` (never after a session id), removed when the child ends.
- ``restricted_env`` on (the default): only ``PATH``, ``LANG``, ``LC_ALL``, ``USER``, ``TZ``
  from the gateway's environment, ``HOME`` and ``TMPDIR`` set to the private directory, then the
  service's ``env`` on top (so a service may set its own ``HOME`` or ``npm_config_cache``).
  ``PATH`` falls back to ``/usr/local/bin:/usr/bin:/bin`` when the gateway has none.
- ``restricted_env`` off, or the sandbox disabled: the gateway's whole environment,
  ``TMPDIR`` set to the private directory (``HOME`` stays the gateway's, which is usually why
  an operator turns the restriction off: caches and credentials under it), then ``env``.
- The sandbox disabled (``enabled: false``): no resource limits, no privilege drop, the full
  environment; the child still gets its own process group, private directory and working
  directory, because those are what let the gateway clean up after it.
- Working directory: ``service.working_dir``, else ``sandbox.working_dir``, else the private
  directory; never the gateway's own.
- ``drop_privileges`` (only effective when the gateway runs as root): the launcher switches to
  ``sandbox.user`` and the private directory is handed to that user.
- The launcher also sets ``PR_SET_PDEATHSIG`` (Linux, sandbox on) so children die with a
  gateway that is killed outright; it costs a ``ctypes`` import (~3 ms) per spawn.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Mapping

import attrs

from mcpgw.config import ResourceLimits, ServiceConfig

MiB = 1024 * 1024

#: The launcher, run by file path (``-S -I``: no site, isolated) for the cheapest start.
LAUNCHER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_launch.py")

#: What ``restricted_env`` keeps from the gateway's environment.
ALLOWED_ENV = ("PATH", "LANG", "LC_ALL", "USER", "TZ")

DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"


@attrs.frozen
class Launch:
    """Everything ``reactor.spawnProcess`` needs to start one MCP server child."""

    executable: str
    argv: tuple[str, ...]
    env: Mapping[str, str]
    private_dir: str
    working_dir: str


def limit_options(limits: ResourceLimits | None) -> list[str]:
    """The launcher options for ``limits`` (``None``: none at all)."""
    if limits is None:
        return []
    options = []
    if limits.cpu_seconds is not None:
        options.append(f"--cpu={limits.cpu_seconds}")
    if limits.memory_mb is not None:
        options.append(f"--as={limits.memory_mb * MiB}")
    if limits.file_size_mb is not None:
        options.append(f"--fsize={limits.file_size_mb * MiB}")
    if limits.open_files is not None:
        options.append(f"--nofile={limits.open_files}")
    if limits.max_processes is not None:
        options.append(f"--nproc={limits.max_processes}")
    return options


def working_dir_for(service: ServiceConfig, private_dir: str) -> str:
    """``service.working_dir``, else ``sandbox.working_dir``, else the private directory."""
    return service.working_dir or service.sandbox.working_dir or private_dir


def drops_privileges(service: ServiceConfig, euid: int) -> bool:
    """Whether the child will run as ``sandbox.user`` (sandbox on, asked for, and root)."""
    sandbox = service.sandbox
    return sandbox.enabled and sandbox.drop_privileges and euid == 0


def build_env(
    service: ServiceConfig, private_dir: str, environ: Mapping[str, str]
) -> dict[str, str]:
    """The child's complete environment (see the module docstring for the rules)."""
    sandbox = service.sandbox
    if sandbox.enabled and sandbox.restricted_env:
        env = {name: environ[name] for name in ALLOWED_ENV if name in environ}
        env.setdefault("PATH", DEFAULT_PATH)
        env["HOME"] = private_dir
    else:
        env = dict(environ)
    env["TMPDIR"] = private_dir
    env.update(service.env)
    return env


def build_argv(
    service: ServiceConfig,
    working_dir: str,
    euid: int,
    python: str = sys.executable,
    pdeathsig: bool = sys.platform.startswith("linux"),
) -> tuple[str, ...]:
    """The launcher's command line, ending with ``--`` and the service's own command."""
    sandbox = service.sandbox
    argv = [python, "-S", "-I", LAUNCHER]
    if sandbox.enabled:
        argv.extend(limit_options(sandbox.resource_limits))
        if pdeathsig:
            argv.append("--pdeathsig")
        if drops_privileges(service, euid):
            argv.append(f"--user={sandbox.user}")
    argv.append(f"--cwd={working_dir}")
    argv.append("--")
    argv.extend(service.command)
    return tuple(argv)


def make_private_dir(sandbox_root: str, service_name: str) -> str:
    """Create (``mkdtemp``, mode 0700) one child's private directory under ``sandbox_root``."""
    os.makedirs(sandbox_root, mode=0o755, exist_ok=True)
    return tempfile.mkdtemp(prefix=f"mcpgw-{service_name}-", dir=sandbox_root)


def remove_private_dir(path: str) -> None:
    """Remove a private directory and everything in it; a missing one is fine."""
    shutil.rmtree(path, ignore_errors=True)


def give_to_user(path: str, user: str) -> None:
    """Hand ``path`` to ``user`` so a child running as that user can use it as its HOME."""
    import pwd

    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise OSError(f"unknown user {user!r}") from None
    os.chown(path, entry.pw_uid, entry.pw_gid)


def prepare_launch(
    service: ServiceConfig,
    sandbox_root: str,
    environ: Mapping[str, str],
    euid: int | None = None,
    python: str = sys.executable,
) -> Launch:
    """
    Make the private directory and describe the spawn of ``service``'s child.

    @raise OSError: the directory could not be made (nothing is left behind).
    """
    if euid is None:
        euid = os.geteuid()
    private_dir = make_private_dir(sandbox_root, service.name)
    try:
        if drops_privileges(service, euid):
            give_to_user(private_dir, service.sandbox.user)
        working_dir = working_dir_for(service, private_dir)
        return Launch(
            executable=python,
            argv=build_argv(service, working_dir, euid, python),
            env=build_env(service, private_dir, environ),
            private_dir=private_dir,
            working_dir=working_dir,
        )
    except BaseException:
        remove_private_dir(private_dir)
        raise
