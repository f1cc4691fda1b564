# -*- test-case-name: tests.test_sandbox -*-
"""
How an MCP server child is launched (SPEC 6): argv, environment, private directory.

The command line comes from ``mcpgw.launchers`` (the util-linux chain, or the Python
launcher); this module makes the private directory and the environment and puts them
together (``prepare_launch``).

Decisions (SPEC 6 leaves them to us):

- Each child gets a private directory made with ``tempfile.mkdtemp`` under the sandbox root,
  named ``mcpgw-<service>-<random>`` (never after a session id), removed when the child ends
  (by ``mcpgw.client``, in the reactor's thread pool: ``rmdir`` can block for milliseconds).
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
  ``sandbox.user`` (its primary group, no supplementary groups), the private directory is
  handed to that user and ``USER`` (``LOGNAME`` too, when present) names it, unless the
  service's ``env`` sets them.
- Both launchers exec the command with exactly the environment built here: the Python
  launcher undoes its own interpreter's C-locale coercion (``LC_CTYPE``, PEP 538), told by
  ``--lc-ctype`` what the value was, if any.
- The launcher also sets ``PR_SET_PDEATHSIG`` (Linux, sandbox on) so children die with a
  gateway that is killed outright, after switching user (the kernel clears it on a change of
  credentials).
- Resource limits are set soft = hard, never above the gateway's own hard limit (which an
  unprivileged child could not raise).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Mapping

import attrs

from mcpgw.config import ServiceConfig
from mcpgw.launchers import (
    DEFAULT_PATH,
    Tools,
    build_argv,
    build_tools_argv,
    can_use_tools,
    drops_privileges,
    user_ids,
)

#: What ``restricted_env`` keeps from the gateway's environment.
ALLOWED_ENV = ("PATH", "LANG", "LC_ALL", "USER", "TZ")


@attrs.frozen
class Launch:
    """Everything ``reactor.spawnProcess`` needs to start one MCP server child."""

    executable: str
    argv: tuple[str, ...]
    env: Mapping[str, str]
    private_dir: str
    working_dir: str
    #: ``"util-linux"`` or ``"python"``: which launcher ``argv`` uses.
    launcher: str = "python"


def startup_nice(service: ServiceConfig) -> int:
    """The nice value of a starting or stopping child's session group; 0: leave it alone."""
    sandbox = service.sandbox
    if not sandbox.enabled or sandbox.resource_limits is None:
        return 0
    return sandbox.resource_limits.startup_nice or 0


def working_dir_for(service: ServiceConfig, private_dir: str) -> str:
    """``service.working_dir``, else ``sandbox.working_dir``, else the private directory."""
    return service.working_dir or service.sandbox.working_dir or private_dir


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


def user_env(service: ServiceConfig, env: Mapping[str, str]) -> dict[str, str]:
    """
    For a child switched to ``sandbox.user``: ``USER`` (and ``LOGNAME`` when ``env`` has it)
    naming that user rather than the gateway's, unless the service's ``env`` sets them.
    """
    user = service.sandbox.user
    names = [name for name in ("USER", "LOGNAME") if name == "USER" or name in env]
    return {name: user for name in names if name not in service.env}


def make_private_dir(sandbox_root: str, service_name: str) -> str:
    """Create (``mkdtemp``, mode 0700) one child's private directory under ``sandbox_root``."""
    os.makedirs(sandbox_root, mode=0o755, exist_ok=True)
    return tempfile.mkdtemp(prefix=f"mcpgw-{service_name}-", dir=sandbox_root)


def remove_private_dir(path: str) -> None:
    """Remove a private directory and everything in it; a missing one is fine."""
    shutil.rmtree(path, ignore_errors=True)


def give_to_user(path: str, user: str) -> None:
    """Hand ``path`` to ``user`` so a child running as that user can use it as its HOME."""
    uid, gid = user_ids(user)
    os.chown(path, uid, gid)


def prepare_launch(
    service: ServiceConfig,
    sandbox_root: str,
    environ: Mapping[str, str],
    euid: int | None = None,
    python: str = sys.executable,
    tools: Tools | None = None,
) -> Launch:
    """
    Make the private directory and describe the spawn of ``service``'s child.

    @param tools: the util-linux chain to use when it can (``find_tools``); ``None``: the
        Python launcher.
    @raise OSError: the directory could not be made (nothing is left behind).
    """
    if euid is None:
        euid = os.geteuid()
    private_dir = make_private_dir(sandbox_root, service.name)
    try:
        if drops_privileges(service, euid):
            give_to_user(private_dir, service.sandbox.user)
        working_dir = working_dir_for(service, private_dir)
        env = build_env(service, private_dir, environ)
        if drops_privileges(service, euid):
            env.update(user_env(service, env))
        if tools is not None and can_use_tools(service.command, working_dir, env):
            argv = build_tools_argv(service, working_dir, euid, tools, env)
            launcher = "util-linux"
        else:
            argv = build_argv(service, working_dir, euid, python, env=env)
            launcher = "python"
        return Launch(
            executable=argv[0],
            argv=argv,
            env=env,
            private_dir=private_dir,
            working_dir=working_dir,
            launcher=launcher,
        )
    except BaseException:
        remove_private_dir(private_dir)
        raise
