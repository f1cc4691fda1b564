"""
The gateway's configuration: typed, frozen values built once from the JSON file.

The shapes below are the contract the rest of the gateway reads; ``mcpgw.config_loader``
builds them from the file (SPEC 3: ``${VAR|default}`` substitution, per-field typing,
defaults, absolute paths).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import attrs

MiB = 1024 * 1024


@attrs.frozen
class ResourceLimits:
    """
    RLIMITs applied by the launcher; ``None`` leaves that limit alone. ``startup_nice`` is not
    an RLIMIT: the CPU priority of a child while it starts and stops (``mcpgw.priority``).
    """

    cpu_seconds: int | None = 3600
    memory_mb: int | None = 2048
    file_size_mb: int | None = 100
    open_files: int | None = 1024
    max_processes: int | None = None
    startup_nice: int | None = 19


@attrs.frozen
class SandboxConfig:
    enabled: bool = True
    restricted_env: bool = True
    # None: no resource limits at all (``resource_limits: false``).
    resource_limits: ResourceLimits | None = ResourceLimits()
    working_dir: str | None = None
    drop_privileges: bool = False
    user: str = "nobody"


@attrs.frozen
class ServiceConfig:
    name: str
    command: tuple[str, ...]
    description: str = ""
    enabled: bool = True
    env: Mapping[str, str] = attrs.field(factory=dict)
    # Absolute; None means the session's private directory.
    working_dir: str | None = None
    startup_timeout: float = 30.0
    call_timeout: float = 25.0
    sandbox: SandboxConfig = SandboxConfig()
    # Longest stdout line accepted from the child (SPEC 5: at least 16 MiB).
    max_line_bytes: int = 16 * MiB
    # Children kept started and initialized ahead of the sessions that will take them.
    spares: int = 1


@attrs.frozen
class ServerConfig:
    host: str = "0.0.0.0"
    port: int = 8080
    auth_user: str | None = None
    auth_password: str | None = None
    auth_token: str | None = None
    tls: Literal["auto", "on", "off"] = "auto"
    # Absolute paths.
    tls_cert: str = ""
    tls_key: str = ""
    max_body_bytes: int = 10 * MiB
    # None: derived from host/port/scheme once the listener is up.
    public_url: str | None = None
    # Each an ``ipaddress`` network in its string form ("10.0.0.0/8", "127.0.0.1/32").
    trusted_proxies: tuple[str, ...] = ()


@attrs.frozen
class SessionConfig:
    default_timeout: float = 300.0
    max_sessions_per_service: int = 100
    max_total_sessions: int = 500
    cleanup_interval: float = 60.0
    # Absolute.
    sandbox_dir: str = ""


@attrs.frozen
class RateLimitConfig:
    # Each item a limit string, validated by ``mcpgw.ratelimit.parse_limit`` at load time.
    default_limits: tuple[str, ...] = ("200 per day", "50 per hour")
    tools_limit: str = "30 per minute"
    call_limit: str = "10 per minute"
    session_delete_limit: str = "20 per minute"
    storage_uri: str = "memory://"


@attrs.frozen
class LoggingConfig:
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    # Absolute, or None.
    file: str | None = None


@attrs.frozen
class SwaigConfig:
    auth_user: str | None = None
    auth_password: str | None = None


@attrs.frozen
class Config:
    server: ServerConfig
    services: Mapping[str, ServiceConfig]
    session: SessionConfig
    rate_limiting: RateLimitConfig
    logging: LoggingConfig
    swaig: SwaigConfig
    # The file it came from (absolute), for messages.
    source: str = ""
    # Unknown keys seen, as dotted paths; the caller logs one warning naming them.
    unknown_keys: tuple[str, ...] = ()

    @property
    def enabled_services(self) -> Mapping[str, ServiceConfig]:
        return {name: svc for name, svc in self.services.items() if svc.enabled}

    def summary(self, label: str | None = None) -> str:
        """
        One line for ``mcp-gateway --check``, starting with ``label`` (default: ``source``).
        """
        enabled = list(self.enabled_services)
        noun = "service" if len(enabled) == 1 else "services"
        services = f"{len(enabled)} {noun}" + (f" ({', '.join(enabled)})" if enabled else "")
        disabled = len(self.services) - len(enabled)
        if disabled:
            services += f", {disabled} disabled"
        server = self.server
        schemes = []
        if server.auth_user and server.auth_password:
            schemes.append("basic")
        if server.auth_token:
            schemes.append("token")
        if self.swaig.auth_user and self.swaig.auth_password:
            schemes.append("swaig")
        host = f"[{server.host}]" if ":" in server.host else server.host
        return (
            f"{label if label is not None else self.source}: OK: {services}, "
            f"listening on {host}:{server.port}, tls {server.tls}, "
            f"auth {'+'.join(schemes)}, rate limits {redact_uri(self.rate_limiting.storage_uri)}"
        )


def redact_uri(uri: str) -> str:
    """``uri`` without the password of its userinfo (for messages and logs)."""
    scheme, sep, rest = uri.partition("://")
    userinfo, at, hostpart = rest.rpartition("@")
    if not at:
        return uri
    user = userinfo.partition(":")[0]
    return f"{scheme}{sep}{user}{':***' if ':' in userinfo else ''}@{hostpart}"
