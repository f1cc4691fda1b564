# -*- test-case-name: tests.test_config -*-
"""
Reading the JSON config into the frozen shapes of ``mcpgw.config`` (SPEC 3).

``load_config`` reads a file, ``parse_config`` already-parsed JSON; both raise
``ConfigError`` naming the file, the key path and the problem.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from collections.abc import Mapping
from typing import Any, Literal, cast
from urllib.parse import urlsplit

import attrs

from mcpgw.config import (
    Config,
    LoggingConfig,
    MiB,
    RateLimitConfig,
    ResourceLimits,
    SandboxConfig,
    ServerConfig,
    ServiceConfig,
    SessionConfig,
    SwaigConfig,
)
from mcpgw.errors import ConfigError
from mcpgw.substitution import MISSING, Context, Reader, as_bool, as_int, substitute_tree

SERVICE_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
TLS_MODES = ("auto", "on", "off")
# Upper bound of a service's ``spares`` (each is an idle child).
MAX_SPARES = 8
# Lower bound of ``max_line_bytes``; the default is 16 MiB (SPEC 5).
MIN_LINE_BYTES = 1024
COMMAND_PROBLEM = "must be a non-empty list of strings"
NO_CREDENTIAL = "no credential: set auth_user and auth_password, or auth_token"


def load_config(path: str, environ: Mapping[str, str], cwd: str) -> Config:
    """
    Read, substitute and validate the JSON config at ``path`` (relative to ``cwd``).

    Errors name ``path`` as given; the returned ``Config.source`` is the absolute path.

    @raise mcpgw.errors.ConfigError: for any mistake, naming the key path.
    """
    full = os.path.abspath(os.path.join(cwd, path))
    try:
        with open(full, encoding="utf-8-sig") as f:
            text = f.read()
    except FileNotFoundError:
        raise ConfigError(path, "", "no such file") from None
    except IsADirectoryError:
        raise ConfigError(path, "", "is a directory, not a file") from None
    except OSError as e:
        raise ConfigError(path, "", f"cannot read the file: {e.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(path, "", "is not UTF-8 text") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        problem = f"invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}"
        raise ConfigError(path, "", problem) from None
    return attrs.evolve(parse_config(data, environ, cwd, path), source=full)


def parse_config(data: Any, environ: Mapping[str, str], cwd: str, source: str) -> Config:
    """
    Build a L{Config} from already-parsed JSON ``data`` (SPEC 3).

    Every string value is substituted from ``environ`` first; relative paths are resolved
    against ``cwd``; errors name ``source``. Decisions where SPEC 3 is silent:

    - ``services`` is required (an empty object is allowed); disabled services are kept with
      ``enabled=False``.
    - A JSON number or boolean where a string is expected is an error ("must be a string").
    - An optional string (credentials, ``public_url``, paths) that is null or ``""`` is unset;
      a Basic pair with an empty half is dropped (both become None), as is a ``swaig`` pair.
    - JSON null is accepted only where the default is "unset".

    @raise mcpgw.errors.ConfigError: for any mistake, naming the key path.
    """
    if not isinstance(data, dict):
        raise ConfigError(source, "", "the top level must be a JSON object")
    ctx = Context(source, cwd)
    top = Reader(substitute_tree(data, environ), "", ctx)
    server = _server(top.section("server"))
    services = _services(top)
    session = _session(top.section("session"))
    rate_limiting = _rate_limiting(top.section("rate_limiting"))
    logging = _logging(top.section("logging"))
    swaig_section = top.section("swaig")
    swaig = SwaigConfig(*_pair(swaig_section, "auth_user", "auth_password"))
    swaig_section.close()
    top.close()
    return Config(
        server=server,
        services=services,
        session=session,
        rate_limiting=rate_limiting,
        logging=logging,
        swaig=swaig,
        source=source,
        unknown_keys=tuple(ctx.unknown),
    )


def _pair(sec: Reader, user_key: str, password_key: str) -> tuple[str | None, str | None]:
    """A user/password pair, or (None, None) unless both halves are non-empty."""
    user, password = sec.optional_string(user_key), sec.optional_string(password_key)
    return (user, password) if user and password else (None, None)


def _server(sec: Reader) -> ServerConfig:
    host = sec.string("host", "0.0.0.0", non_empty=True).strip()
    port = sec.integer("port", 8080, 0, 65535)
    auth_user, auth_password = _pair(sec, "auth_user", "auth_password")
    auth_token = sec.optional_string("auth_token")
    tls = sec.string("tls", "auto").strip().lower()
    if tls not in TLS_MODES:
        raise sec.error("tls", "must be one of auto, on, off")
    tls_cert = sec.path("tls_cert", "certs/server.pem")
    assert tls_cert is not None
    tls_key = sec.path("tls_key", None) or tls_cert
    max_body_bytes = sec.integer("max_body_bytes", 10 * MiB, 1)
    public_url = sec.optional_string("public_url")
    if public_url is not None:
        public_url = public_url.strip().rstrip("/")
        parts = urlsplit(public_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise sec.error("public_url", "must be an http:// or https:// URL")
    trusted = _trusted_proxies(sec)
    sec.close()
    if auth_user is None and auth_token is None:
        raise ConfigError(sec.ctx.source, "server", NO_CREDENTIAL)
    return ServerConfig(
        host=host,
        port=port,
        auth_user=auth_user,
        auth_password=auth_password,
        auth_token=auth_token,
        tls=cast(Literal["auto", "on", "off"], tls),
        tls_cert=tls_cert,
        tls_key=tls_key,
        max_body_bytes=max_body_bytes,
        public_url=public_url,
        trusted_proxies=trusted,
    )


def _trusted_proxies(sec: Reader) -> tuple[str, ...]:
    value = sec.raw("trusted_proxies")
    if value is MISSING:
        return ()
    if not isinstance(value, list):
        raise sec.error("trusted_proxies", "must be a list of IP addresses or networks")
    networks = []
    for index, item in enumerate(value):
        key = f"trusted_proxies[{index}]"
        if not isinstance(item, str):
            raise sec.error(key, "must be a string")
        try:
            networks.append(str(ipaddress.ip_network(item.strip(), strict=False)))
        except ValueError:
            raise sec.error(key, f"not an IP address or network: {item!r}") from None
    return tuple(networks)


def _services(top: Reader) -> dict[str, ServiceConfig]:
    value = top.raw("services")
    if value is MISSING:
        raise top.error("services", "is required: an object of services by name")
    if not isinstance(value, dict):
        raise top.error("services", "must be an object of services by name")
    services = {}
    reader = Reader(value, "services", top.ctx)
    for name, item in value.items():
        if not SERVICE_NAME.fullmatch(name):
            problem = f"invalid service name {name!r}: must match ^[A-Za-z0-9_-]{{1,64}}$"
            raise top.error("services", problem)
        services[name] = _service(name, reader.child(name, item))
    return services


def _service(name: str, sec: Reader) -> ServiceConfig:
    command = _command(sec)
    description = sec.string("description", "")
    enabled = sec.boolean("enabled", True)
    env = _env(sec)
    startup_timeout = sec.seconds("startup_timeout", 30.0)
    call_timeout = sec.seconds("call_timeout", 25.0)
    max_line_bytes = sec.integer("max_line_bytes", 16 * MiB, MIN_LINE_BYTES)
    spares = sec.integer("spares", 1, 0, MAX_SPARES)
    sandbox, sandbox_key = _sandbox_of(sec)
    working_dir = sec.path("working_dir", None)
    if working_dir is None:
        working_dir = sandbox.working_dir
    elif sandbox.working_dir is not None and sandbox.working_dir != working_dir:
        problem = f"differs from {sandbox_key}.working_dir: give it once"
        raise sec.error("working_dir", problem)
    sec.close()
    return ServiceConfig(
        name=name,
        command=command,
        description=description,
        enabled=enabled,
        env=env,
        working_dir=working_dir,
        startup_timeout=startup_timeout,
        call_timeout=call_timeout,
        sandbox=attrs.evolve(sandbox, working_dir=working_dir),
        max_line_bytes=max_line_bytes,
        spares=spares,
    )


def _command(sec: Reader) -> tuple[str, ...]:
    value = sec.raw("command")
    if not isinstance(value, list) or not value:
        raise sec.error("command", COMMAND_PROBLEM)
    argv = []
    for item in value:
        if not isinstance(item, str) or not item:
            raise sec.error("command", COMMAND_PROBLEM)
        argv.append(sec.ctx.path(item) if item.startswith(("./", "../")) else item)
    return tuple(argv)


def _env(sec: Reader) -> dict[str, str]:
    value = sec.raw("env")
    if value is MISSING or value is None:
        return {}
    if not isinstance(value, dict):
        raise sec.error("env", "must be an object mapping variable names to strings")
    for key, item in value.items():
        if not key or "=" in key or "\0" in key:
            raise sec.error("env", f"invalid variable name {key!r}")
        if not isinstance(item, str):
            raise sec.error(f"env.{key}", "must be a string")
        if "\0" in item:
            raise sec.error(f"env.{key}", "must not contain a NUL character")
    return dict(value)


def _sandbox_of(sec: Reader) -> tuple[SandboxConfig, str]:
    """The service's sandbox and the key it was given under (``sandbox`` is an alias)."""
    given = [
        (key, _sandbox(sec.section(key))) for key in ("sandbox_config", "sandbox") if sec.has(key)
    ]
    if not given:
        return SandboxConfig(), "sandbox_config"
    if len(given) == 2 and given[0][1] != given[1][1]:
        raise sec.error("sandbox", "differs from sandbox_config (its alias): give one of them")
    key, sandbox = given[0]
    return sandbox, key


def _sandbox(sec: Reader) -> SandboxConfig:
    sandbox = SandboxConfig(
        enabled=sec.boolean("enabled", True),
        restricted_env=sec.boolean("restricted_env", True),
        resource_limits=_resource_limits(sec),
        working_dir=sec.path("working_dir", None),
        drop_privileges=sec.boolean("drop_privileges", False),
        user=sec.string("user", "nobody", non_empty=True),
    )
    sec.close()
    return sandbox


def _resource_limits(sec: Reader) -> ResourceLimits | None:
    value = sec.raw("resource_limits")
    if value is MISSING:
        return ResourceLimits()
    if isinstance(value, dict):
        limits = sec.child("resource_limits", value)
        overrides = {
            field.name: _one_limit(limits, field.name)
            for field in attrs.fields(ResourceLimits)
            if limits.has(field.name)
        }
        limits.close()
        return ResourceLimits(**overrides)
    flag = as_bool(value)
    if flag is None:
        raise sec.error("resource_limits", "must be true, false or an object")
    return ResourceLimits() if flag else None


#: Limits with an upper bound (a nice value runs from 1 to 19).
_LIMIT_MAXIMA = {"startup_nice": 19}


def _one_limit(sec: Reader, key: str) -> int | None:
    """A positive int, or null/false (also "off", "no", "false") to leave that limit alone."""
    value = sec.raw(key)
    if value is None:
        return None
    number = as_int(value)
    if number is None and as_bool(value) is False:
        return None
    most = _LIMIT_MAXIMA.get(key)
    if most is not None and (number is None or not 0 <= number <= most):
        raise sec.error(key, f"must be an integer from 0 to {most}, or null/false to disable it")
    if number is None or number < 1:
        if most is not None:  # 0: the same as false
            return None
        raise sec.error(key, "must be a positive integer, or null/false to disable it")
    return number


def _session(sec: Reader) -> SessionConfig:
    session = SessionConfig(
        default_timeout=sec.seconds("default_timeout", 300.0),
        max_sessions_per_service=sec.integer("max_sessions_per_service", 100, 1),
        max_total_sessions=sec.integer("max_total_sessions", 500, 1),
        cleanup_interval=sec.seconds("cleanup_interval", 60.0),
        sandbox_dir=sec.path("sandbox_dir", "./sandbox") or "",
    )
    sec.close()
    return session


def _rate_limiting(sec: Reader) -> RateLimitConfig:
    defaults = RateLimitConfig()
    value = sec.raw("default_limits")
    default_limits = defaults.default_limits
    if value is not MISSING:
        if not isinstance(value, list):
            raise sec.error("default_limits", "must be a list of limit strings")
        default_limits = tuple(
            _limit(sec, f"default_limits[{index}]", item) for index, item in enumerate(value)
        )
    tools_limit, call_limit, delete_limit = (
        default if sec.raw(key) is MISSING else _limit(sec, key, sec.raw(key))
        for key, default in (
            ("tools_limit", defaults.tools_limit),
            ("call_limit", defaults.call_limit),
            ("session_delete_limit", defaults.session_delete_limit),
        )
    )
    storage_uri = sec.string("storage_uri", defaults.storage_uri).strip()
    from mcpgw.ratelimit import validate_storage_uri  # it imports this module

    try:
        validate_storage_uri(storage_uri)
    except ValueError as e:
        raise sec.error("storage_uri", str(e)) from None
    sec.close()
    return RateLimitConfig(
        default_limits=default_limits,
        tools_limit=tools_limit,
        call_limit=call_limit,
        session_delete_limit=delete_limit,
        storage_uri=storage_uri,
    )


def _limit(sec: Reader, key: str, value: Any) -> str:
    """A limit string, checked by ``mcpgw.ratelimit.parse_limit``."""
    from mcpgw.ratelimit import parse_limit  # it imports this module

    if not isinstance(value, str):
        raise sec.error(key, "must be a limit string such as '10 per minute'")
    try:
        parse_limit(value)
    except ValueError as e:
        raise sec.error(key, str(e)) from None
    return value.strip()


def _logging(sec: Reader) -> LoggingConfig:
    level = sec.string("level", "INFO").strip().upper()
    if level not in LEVELS:
        raise sec.error("level", f"must be one of {', '.join(LEVELS)}")
    logging = LoggingConfig(
        level=cast(Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"], level),
        file=sec.path("file", None),
    )
    sec.close()
    return logging
