"""
Tests for L{mcpgw.config}: the configuration loader (SPEC 3) and L{mcpgw.substitution}.
"""

from __future__ import annotations

import json
import os
from typing import Any

import attrs
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase

from mcpgw.config import (
    Config,
    LoggingConfig,
    RateLimitConfig,
    ResourceLimits,
    SandboxConfig,
    ServerConfig,
    ServiceConfig,
    SessionConfig,
    SwaigConfig,
)
from mcpgw.config_loader import load_config, parse_config
from mcpgw.errors import ConfigError
from mcpgw.substitution import parse_bool, parse_float, parse_int, substitute

CWD = "/srv/gw"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def minimal(**sections: Any) -> dict[str, Any]:
    """
    The smallest valid config (a Bearer token, no services), with ``sections`` merged in.
    """
    data: dict[str, Any] = {"server": {"auth_token": "tok"}, "services": {}}
    data.update(sections)
    return data


def with_service(**fields: Any) -> dict[str, Any]:
    """
    A minimal config with one service ``svc`` running ``echo`` plus ``fields``.
    """
    return minimal(services={"svc": {"command": ["echo"], **fields}})


def parse(data: Any, environ: dict[str, str] | None = None) -> Config:
    return parse_config(data, environ or {}, CWD, "config.json")


class SubstituteTests(SynchronousTestCase):
    """
    L{substitute} implements the C{${VAR}} / C{${VAR|default}} grammar.
    """

    def test_set_variable(self) -> None:
        """
        C{${VAR}} is replaced by the variable's value.
        """
        self.assertEqual(substitute("${A}", {"A": "x"}), "x")

    def test_unset_without_default(self) -> None:
        """
        An unset variable with no default becomes the empty string.
        """
        self.assertEqual(substitute("a${A}b", {}), "ab")

    def test_default(self) -> None:
        """
        An unset variable with a default becomes the default.
        """
        self.assertEqual(substitute("${A|dflt}", {}), "dflt")

    def test_empty_value_wins_over_default(self) -> None:
        """
        A variable set to the empty string wins over the default.
        """
        self.assertEqual(substitute("${A|dflt}", {"A": ""}), "")

    def test_empty_default(self) -> None:
        """
        C{${VAR|}} has an empty default.
        """
        self.assertEqual(substitute("<${A|}>", {}), "<>")

    def test_several_per_string(self) -> None:
        """
        Several references inside one string are all replaced, text around them kept.
        """
        self.assertEqual(
            substitute("redis://${H|localhost}:${P|6379}/${DB}", {"P": "7000"}),
            "redis://localhost:7000/",
        )

    def test_default_with_special_characters(self) -> None:
        """
        A default may hold any character but C{}}, including C{:}, C{/} and C{|}.
        """
        self.assertEqual(substitute("${U|http://a:b@h/x|y}", {}), "http://a:b@h/x|y")

    def test_no_nesting(self) -> None:
        """
        A default is literal up to the first C{}}: a reference inside it is not expanded.
        """
        self.assertEqual(substitute("${A|${B}}", {"B": "b"}), "${B}")

    def test_values_not_rescanned(self) -> None:
        """
        A substituted value that looks like a reference stays as it is.
        """
        self.assertEqual(substitute("${A}", {"A": "${B}", "B": "no"}), "${B}")

    def test_not_a_reference(self) -> None:
        """
        Text that does not match the grammar is left as written.
        """
        for text in ["$A", "${1A}", "${A", "${}", "$ {A}", "${A B}"]:
            self.assertEqual(substitute(text, {"A": "x", "1A": "y"}), text)


class ScalarGrammarTests(SynchronousTestCase):
    """
    The strict string grammars of typed fields.
    """

    def test_int(self) -> None:
        """
        L{parse_int} accepts decimal integers with blanks and a sign, nothing else.
        """
        self.assertEqual([parse_int(t) for t in ["8080", " 42 ", "-3", "+7"]], [8080, 42, -3, 7])
        for text in ["", "8080.0", "1_000", "0x10", "1e3", "eight", "true"]:
            self.assertIsNone(parse_int(text), text)

    def test_float(self) -> None:
        """
        L{parse_float} accepts finite decimal numbers, not C{inf}, C{nan} or underscores.
        """
        self.assertEqual(
            [parse_float(t) for t in ["2.5", "10", " .5 ", "1e2"]], [2.5, 10.0, 0.5, 100.0]
        )
        for text in ["", "inf", "nan", "1_0", "1e999", "1.2.3", "true"]:
            self.assertIsNone(parse_float(text), text)

    def test_bool(self) -> None:
        """
        L{parse_bool} knows true/false, 1/0, yes/no, on/off in any case.
        """
        for text in ["true", "TRUE", "1", "yes", "On", " on "]:
            self.assertIs(parse_bool(text), True, text)
        for text in ["false", "False", "0", "no", "OFF"]:
            self.assertIs(parse_bool(text), False, text)
        for text in ["", "2", "y", "enabled"]:
            self.assertIsNone(parse_bool(text), text)


class DefaultsTests(SynchronousTestCase):
    """
    Every key left out takes its SPEC 3 default.
    """

    def test_minimal_config(self) -> None:
        """
        A config with only a token and an empty C{services} object is the default
        L{Config}, with the default paths made absolute against the starting directory.
        """
        self.assertEqual(
            parse(minimal()),
            Config(
                server=ServerConfig(
                    auth_token="tok",
                    tls_cert="/srv/gw/certs/server.pem",
                    tls_key="/srv/gw/certs/server.pem",
                ),
                services={},
                session=SessionConfig(sandbox_dir="/srv/gw/sandbox"),
                rate_limiting=RateLimitConfig(),
                logging=LoggingConfig(),
                swaig=SwaigConfig(),
                source="config.json",
                unknown_keys=(),
            ),
        )

    def test_shape_defaults(self) -> None:
        """
        The shapes' defaults are SPEC 3's.
        """
        server = ServerConfig()
        self.assertEqual(
            (server.host, server.port, server.tls, server.max_body_bytes),
            ("0.0.0.0", 8080, "auto", 10485760),
        )
        session = SessionConfig()
        self.assertEqual(
            (
                session.default_timeout,
                session.max_sessions_per_service,
                session.max_total_sessions,
                session.cleanup_interval,
            ),
            (300.0, 100, 500, 60.0),
        )
        self.assertEqual(
            RateLimitConfig(),
            RateLimitConfig(
                ("200 per day", "50 per hour"),
                "30 per minute",
                "10 per minute",
                "20 per minute",
                "memory://",
            ),
        )
        self.assertEqual(LoggingConfig(), LoggingConfig("INFO", None))
        self.assertEqual(ResourceLimits(), ResourceLimits(3600, 2048, 100, 1024, None))

    def test_service_defaults(self) -> None:
        """
        A service with only a command gets every default.
        """
        config = parse(with_service())
        self.assertEqual(
            config.services,
            {
                "svc": ServiceConfig(
                    name="svc",
                    command=("echo",),
                    description="",
                    enabled=True,
                    env={},
                    working_dir=None,
                    startup_timeout=30.0,
                    call_timeout=25.0,
                    sandbox=SandboxConfig(),
                    max_line_bytes=16 * 1024 * 1024,
                )
            },
        )

    def test_every_key(self) -> None:
        """
        Every key of SPEC 3 given explicitly lands in its field.
        """
        data = {
            "server": {
                "host": "127.0.0.1",
                "port": 9000,
                "auth_user": "u",
                "auth_password": "p",
                "auth_token": "t",
                "tls": "on",
                "tls_cert": "/etc/gw/cert.pem",
                "tls_key": "key.pem",
                "max_body_bytes": 1000,
                "public_url": "https://gw.example.com/",
                "trusted_proxies": ["10.0.0.1", "192.168.0.0/16"],
            },
            "services": {
                "time": {
                    "command": ["uvx", "mcp-server-time"],
                    "description": "Time",
                    "enabled": False,
                    "env": {"TZ": "UTC"},
                    "working_dir": "/tmp/w",
                    "startup_timeout": 5,
                    "call_timeout": 2.5,
                    "max_line_bytes": 2048,
                    "sandbox_config": {
                        "enabled": False,
                        "restricted_env": False,
                        "resource_limits": False,
                        "drop_privileges": True,
                        "user": "mcp",
                    },
                }
            },
            "session": {
                "default_timeout": 60,
                "max_sessions_per_service": 3,
                "max_total_sessions": 7,
                "cleanup_interval": 1.5,
                "sandbox_dir": "/var/lib/gw",
            },
            "rate_limiting": {
                "default_limits": ["5 per second"],
                "tools_limit": "1/minute",
                "call_limit": "2 per hour",
                "session_delete_limit": "3 per day",
                "storage_uri": "memory://",
            },
            "logging": {"level": "debug", "file": "/var/log/gw.log"},
            "swaig": {"auth_user": "sw", "auth_password": "pw"},
        }
        self.assertEqual(
            parse(data),
            Config(
                server=ServerConfig(
                    host="127.0.0.1",
                    port=9000,
                    auth_user="u",
                    auth_password="p",
                    auth_token="t",
                    tls="on",
                    tls_cert="/etc/gw/cert.pem",
                    tls_key="/srv/gw/key.pem",
                    max_body_bytes=1000,
                    public_url="https://gw.example.com",
                    trusted_proxies=("10.0.0.1/32", "192.168.0.0/16"),
                ),
                services={
                    "time": ServiceConfig(
                        name="time",
                        command=("uvx", "mcp-server-time"),
                        description="Time",
                        enabled=False,
                        env={"TZ": "UTC"},
                        working_dir="/tmp/w",
                        startup_timeout=5.0,
                        call_timeout=2.5,
                        sandbox=SandboxConfig(
                            enabled=False,
                            restricted_env=False,
                            resource_limits=None,
                            working_dir="/tmp/w",
                            drop_privileges=True,
                            user="mcp",
                        ),
                        max_line_bytes=2048,
                    )
                },
                session=SessionConfig(60.0, 3, 7, 1.5, "/var/lib/gw"),
                rate_limiting=RateLimitConfig(
                    ("5 per second",), "1/minute", "2 per hour", "3 per day", "memory://"
                ),
                logging=LoggingConfig("DEBUG", "/var/log/gw.log"),
                swaig=SwaigConfig("sw", "pw"),
                source="config.json",
            ),
        )

    def test_disabled_services_kept(self) -> None:
        """
        A disabled service stays in C{services} and is left out of C{enabled_services}.
        """
        config = parse(
            minimal(
                services={
                    "a": {"command": ["a"], "enabled": False},
                    "b": {"command": ["b"]},
                }
            )
        )
        self.assertEqual(list(config.services), ["a", "b"])
        self.assertEqual(list(config.enabled_services), ["b"])


class SubstitutionInConfigTests(SynchronousTestCase):
    """
    Substitution applies to every string value of the config, never to keys.
    """

    def test_nested_values_and_lists(self) -> None:
        """
        Strings inside nested objects and lists are substituted.
        """
        env = {"BIN": "/opt/bin/srv", "TOKEN": "sekrit", "PROXY": "10.1.2.3"}
        config = parse(
            {
                "server": {"auth_token": "${TOKEN}", "trusted_proxies": ["${PROXY}"]},
                "services": {
                    "s": {
                        "command": ["${BIN}", "--key=${KEY|none}"],
                        "env": {"API_KEY": "${TOKEN}-x"},
                    }
                },
            },
            env,
        )
        self.assertEqual(config.server.auth_token, "sekrit")
        self.assertEqual(config.server.trusted_proxies, ("10.1.2.3/32",))
        self.assertEqual(config.services["s"].command, ("/opt/bin/srv", "--key=none"))
        self.assertEqual(config.services["s"].env, {"API_KEY": "sekrit-x"})

    def test_keys_not_substituted(self) -> None:
        """
        Keys are taken as written: a service named C{${NAME}} is not a valid name, and an env
        key is kept literally.
        """
        config = parse(with_service(env={"${K}": "v"}), {"K": "X"})
        self.assertEqual(config.services["svc"].env, {"${K}": "v"})
        error = self.assertRaises(
            ConfigError, parse, minimal(services={"${N}": {"command": ["x"]}}), {"N": "ok"}
        )
        self.assertEqual(error.key, "services")

    def test_unset_credential_is_empty(self) -> None:
        """
        C{"${MCP_AUTH_PASSWORD}"} with the variable unset leaves no Basic pair, so a
        config relying on it alone is refused.
        """
        data = {
            "server": {"auth_user": "admin", "auth_password": "${MCP_AUTH_PASSWORD}"},
            "services": {},
        }
        error = self.assertRaises(ConfigError, parse, data, {})
        self.assertEqual(
            str(error),
            "config.json: server: no credential: set auth_user and auth_password, or auth_token",
        )
        config = parse(data, {"MCP_AUTH_PASSWORD": "pw"})
        self.assertEqual((config.server.auth_user, config.server.auth_password), ("admin", "pw"))


class CoercionTests(SynchronousTestCase):
    """
    Typed fields accept their JSON type or a string of it; no other string is coerced.
    """

    def test_port_from_variable(self) -> None:
        """
        C{"${MCP_PORT|8080}"} gives the int 8080, or the variable's value as an int.
        """
        data = minimal(server={"auth_token": "t", "port": "${MCP_PORT|8080}"})
        self.assertEqual(parse(data).server.port, 8080)
        self.assertEqual(parse(data, {"MCP_PORT": "0"}).server.port, 0)

    def test_numeric_password_stays_string(self) -> None:
        """
        A password (or token) made of digits stays a string.
        """
        config = parse(
            minimal(server={"auth_user": "u", "auth_password": "123456", "auth_token": "007"})
        )
        self.assertEqual(config.server.auth_password, "123456")
        self.assertEqual(config.server.auth_token, "007")

    def test_numeric_argv_stays_string(self) -> None:
        """
        A digit-only argv item stays a string.
        """
        config = parse(with_service(command=["sleep", "42"]))
        self.assertEqual(config.services["svc"].command, ("sleep", "42"))

    def test_number_for_string_is_error(self) -> None:
        """
        A JSON number where a string is expected is refused, naming the key.
        """
        error = self.assertRaises(
            ConfigError, parse, minimal(server={"auth_user": "u", "auth_password": 123456})
        )
        self.assertEqual(str(error), "config.json: server.auth_password: must be a string")
        error = self.assertRaises(ConfigError, parse, with_service(env={"N": 1}))
        self.assertEqual(str(error), "config.json: services.svc.env.N: must be a string")

    def test_bool_not_int(self) -> None:
        """
        JSON C{true} is not an integer, and a float is not an integer either.
        """
        for value in [True, 8080.0, "8080.5"]:
            error = self.assertRaises(
                ConfigError, parse, minimal(server={"auth_token": "t", "port": value})
            )
            self.assertEqual(
                str(error), "config.json: server.port: must be an integer from 0 to 65535"
            )

    def test_float_fields(self) -> None:
        """
        Seconds accept JSON ints and floats and numeric strings; not booleans.
        """
        config = parse(with_service(startup_timeout=5, call_timeout="${CT|2.5}"))
        self.assertEqual(
            (config.services["svc"].startup_timeout, config.services["svc"].call_timeout),
            (5.0, 2.5),
        )
        error = self.assertRaises(ConfigError, parse, with_service(call_timeout=True))
        self.assertEqual(
            str(error), "config.json: services.svc.call_timeout: must be a number of seconds > 0"
        )

    def test_bool_fields(self) -> None:
        """
        Booleans accept JSON booleans and the bool words, not numbers.
        """
        for text, expected in [("${E|off}", False), ("Yes", True), (True, True)]:
            config = parse(with_service(enabled=text))
            self.assertIs(config.services["svc"].enabled, expected)
        error = self.assertRaises(ConfigError, parse, with_service(enabled=1))
        self.assertEqual(str(error), "config.json: services.svc.enabled: must be true or false")
        error = self.assertRaises(ConfigError, parse, with_service(enabled="enabled"))
        self.assertEqual(error.key, "services.svc.enabled")


class ValidationTests(SynchronousTestCase):
    """
    Each invalid value is refused with one line naming the file, key path and problem.
    """

    def assert_error(self, data: Any, message: str) -> None:
        error = self.assertRaises(ConfigError, parse, data)
        self.assertEqual(str(error), message)

    def server(self, **fields: Any) -> dict[str, Any]:
        return minimal(server={"auth_token": "t", **fields})

    def test_top_level(self) -> None:
        """
        The top level must be an object, and C{services} is required.
        """
        self.assert_error([], "config.json: the top level must be a JSON object")
        self.assert_error(
            {"server": {"auth_token": "t"}},
            "config.json: services: is required: an object of services by name",
        )
        self.assert_error(
            minimal(services=[]), "config.json: services: must be an object of services by name"
        )

    def test_sections_are_objects(self) -> None:
        """
        Each section must be an object.
        """
        for key in ["session", "rate_limiting", "logging", "swaig"]:
            self.assert_error(minimal(**{key: "x"}), f"config.json: {key}: must be an object")
        self.assert_error(
            {"server": None, "services": {}}, "config.json: server: must be an object"
        )

    def test_port_range(self) -> None:
        """
        The port must be from 0 to 65535.
        """
        for port in [-1, 65536, "70000"]:
            self.assert_error(
                self.server(port=port),
                "config.json: server.port: must be an integer from 0 to 65535",
            )
        self.assertEqual(parse(self.server(port=65535)).server.port, 65535)

    def test_host(self) -> None:
        """
        The host must be a non-empty string.
        """
        self.assert_error(
            self.server(host=""), "config.json: server.host: must be a non-empty string"
        )

    def test_tls(self) -> None:
        """
        C{tls} is auto, on or off in any case.
        """
        self.assertEqual(parse(self.server(tls="OFF")).server.tls, "off")
        self.assert_error(
            self.server(tls="yes"), "config.json: server.tls: must be one of auto, on, off"
        )

    def test_max_body_bytes(self) -> None:
        """
        C{max_body_bytes} must be at least 1.
        """
        self.assert_error(
            self.server(max_body_bytes=0),
            "config.json: server.max_body_bytes: must be an integer >= 1",
        )

    def test_public_url(self) -> None:
        """
        C{public_url} must be an http(s) URL; the trailing slash is dropped; empty is unset.
        """
        self.assertEqual(
            parse(self.server(public_url="http://h:1/base/")).server.public_url, "http://h:1/base"
        )
        self.assertIsNone(parse(self.server(public_url="${PUBLIC_URL}")).server.public_url)
        for url in ["ftp://h", "gw.example.com", "https://"]:
            self.assert_error(
                self.server(public_url=url),
                "config.json: server.public_url: must be an http:// or https:// URL",
            )

    def test_trusted_proxies(self) -> None:
        """
        Trusted proxies are IPs or CIDRs (host bits allowed), stored as networks.
        """
        config = parse(self.server(trusted_proxies=["::1", "10.1.2.3/8"]))
        self.assertEqual(config.server.trusted_proxies, ("::1/128", "10.0.0.0/8"))
        self.assert_error(
            self.server(trusted_proxies=["10.0.0.1", "proxy.local"]),
            "config.json: server.trusted_proxies[1]: not an IP address or network: 'proxy.local'",
        )
        self.assert_error(
            self.server(trusted_proxies="10.0.0.1"),
            "config.json: server.trusted_proxies: must be a list of IP addresses or networks",
        )

    def test_trusted_proxy_not_string(self) -> None:
        """
        A trusted proxy given as a number is refused, naming the item.
        """
        self.assert_error(
            self.server(trusted_proxies=[10]),
            "config.json: server.trusted_proxies[0]: must be a string",
        )

    def test_null(self) -> None:
        """
        JSON null unsets an optional string but is no value for a field with a default.
        """
        self.assertIsNone(parse(self.server(public_url=None)).server.public_url)
        self.assert_error(
            self.server(port=None), "config.json: server.port: must be an integer from 0 to 65535"
        )
        self.assert_error(self.server(host=None), "config.json: server.host: must be a string")

    def test_service_names(self) -> None:
        """
        Service names must match C{^[A-Za-z0-9_-]{1,64}$}.
        """
        ok = "a" * 64
        self.assertIn(ok, parse(minimal(services={ok: {"command": ["x"]}})).services)
        for name in ["", "a" * 65, "has space", "dot.ted", "new\nline"]:
            self.assert_error(
                minimal(services={name: {"command": ["x"]}}),
                f"config.json: services: invalid service name {name!r}: "
                "must match ^[A-Za-z0-9_-]{1,64}$",
            )

    def test_service_is_object(self) -> None:
        """
        Each service must be an object.
        """
        self.assert_error(
            minimal(services={"s": ["echo"]}), "config.json: services.s: must be an object"
        )

    def test_command(self) -> None:
        """
        C{command} must be a non-empty list of non-empty strings.
        """
        for command in [None, [], "echo hi", ["echo", 1], ["echo", ""], [["echo"]]]:
            self.assert_error(
                minimal(services={"time": {"command": command}}),
                "config.json: services.time.command: must be a non-empty list of strings",
            )
        self.assert_error(
            minimal(services={"time": {}}),
            "config.json: services.time.command: must be a non-empty list of strings",
        )

    def test_env(self) -> None:
        """
        C{env} maps valid variable names to strings.
        """
        self.assert_error(
            with_service(env=["A=1"]),
            "config.json: services.svc.env: must be an object mapping variable names to strings",
        )
        self.assert_error(
            with_service(env={"A=B": "1"}),
            "config.json: services.svc.env: invalid variable name 'A=B'",
        )
        self.assert_error(
            with_service(env={"A": "a\0b"}),
            "config.json: services.svc.env.A: must not contain a NUL character",
        )

    def test_timeouts(self) -> None:
        """
        Service timeouts and session periods must be positive numbers.
        """
        for key in ["startup_timeout", "call_timeout"]:
            self.assert_error(
                with_service(**{key: 0}),
                f"config.json: services.svc.{key}: must be a number of seconds > 0",
            )
        for key in ["default_timeout", "cleanup_interval"]:
            self.assert_error(
                minimal(session={key: -1}),
                f"config.json: session.{key}: must be a number of seconds > 0",
            )

    def test_session_limits(self) -> None:
        """
        Session maxima must be at least 1.
        """
        for key in ["max_sessions_per_service", "max_total_sessions"]:
            self.assert_error(
                minimal(session={key: 0}), f"config.json: session.{key}: must be an integer >= 1"
            )

    def test_max_line_bytes(self) -> None:
        """
        C{max_line_bytes} must be at least 1024.
        """
        self.assert_error(
            with_service(max_line_bytes=1023),
            "config.json: services.svc.max_line_bytes: must be an integer >= 1024",
        )

    def test_spares(self) -> None:
        """
        A service keeps one spare child unless C{spares} says otherwise (0 to 8; a string
        that parses as an integer is taken).
        """
        self.assertEqual(parse(with_service()).services["svc"].spares, 1)
        self.assertEqual(parse(with_service(spares=0)).services["svc"].spares, 0)
        self.assertEqual(parse(with_service(spares="3")).services["svc"].spares, 3)
        for bad in (-1, 9, "many", 1.5, True):
            self.assert_error(
                with_service(spares=bad),
                "config.json: services.svc.spares: must be an integer from 0 to 8",
            )

    def test_rate_limits(self) -> None:
        """
        Limit strings are checked by C{mcpgw.ratelimit.parse_limit}; the message names the key.
        """
        error = self.assertRaises(
            ConfigError, parse, minimal(rate_limiting={"call_limit": "10 per fortnight"})
        )
        self.assertEqual(error.key, "rate_limiting.call_limit")
        self.assertIn("10 per fortnight", error.problem)
        error = self.assertRaises(
            ConfigError, parse, minimal(rate_limiting={"default_limits": ["1/day", "lots"]})
        )
        self.assertEqual(error.key, "rate_limiting.default_limits[1]")
        self.assert_error(
            minimal(rate_limiting={"default_limits": "1 per day"}),
            "config.json: rate_limiting.default_limits: must be a list of limit strings",
        )
        self.assert_error(
            minimal(rate_limiting={"tools_limit": 5}),
            "config.json: rate_limiting.tools_limit: "
            "must be a limit string such as '10 per minute'",
        )

    def test_empty_default_limits(self) -> None:
        """
        An empty C{default_limits} list means no default limit.
        """
        config = parse(minimal(rate_limiting={"default_limits": []}))
        self.assertEqual(config.rate_limiting.default_limits, ())

    def test_storage_uri(self) -> None:
        """
        C{storage_uri} is C{memory://} or a Redis URI; anything else names the key.
        """
        config = parse(minimal(rate_limiting={"storage_uri": "redis://:pw@localhost:6379/0"}))
        self.assertEqual(config.rate_limiting.storage_uri, "redis://:pw@localhost:6379/0")
        error = self.assertRaises(
            ConfigError, parse, minimal(rate_limiting={"storage_uri": "mongodb://x"})
        )
        self.assertEqual(error.key, "rate_limiting.storage_uri")

    def test_logging_level(self) -> None:
        """
        The level is accepted in any case and stored upper-case.
        """
        config = parse(minimal(logging={"level": "warning"}))
        self.assertEqual(config.logging.level, "WARNING")
        self.assert_error(
            minimal(logging={"level": "verbose"}),
            "config.json: logging.level: must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL",
        )

    def test_sandbox_fields(self) -> None:
        """
        Sandbox booleans and the user are checked, naming the sandbox key used.
        """
        self.assert_error(
            with_service(sandbox_config={"drop_privileges": "maybe"}),
            "config.json: services.svc.sandbox_config.drop_privileges: must be true or false",
        )
        self.assert_error(
            with_service(sandbox={"user": ""}),
            "config.json: services.svc.sandbox.user: must be a non-empty string",
        )
        self.assert_error(
            with_service(sandbox_config=True),
            "config.json: services.svc.sandbox_config: must be an object",
        )


class CredentialTests(SynchronousTestCase):
    """
    A config must carry a usable credential; a Basic pair needs both halves.
    """

    def test_none(self) -> None:
        """
        No credential at all is refused, naming C{server}.
        """
        error = self.assertRaises(ConfigError, parse, {"services": {}})
        self.assertEqual((error.key, error.problem), ("server", NO_CREDENTIAL_PROBLEM))

    def test_half_pair(self) -> None:
        """
        A user without a password (or the reverse) is no credential, and is dropped.
        """
        for server in [
            {"auth_user": "u"},
            {"auth_password": "p"},
            {"auth_user": "", "auth_password": "p"},
        ]:
            error = self.assertRaises(ConfigError, parse, minimal(server=server))
            self.assertEqual(error.key, "server")
        config = parse(minimal(server={"auth_user": "u", "auth_token": "t"}))
        self.assertEqual((config.server.auth_user, config.server.auth_password), (None, None))

    def test_token_only(self) -> None:
        """
        A token alone is enough; an empty token is none.
        """
        self.assertEqual(parse(minimal(server={"auth_token": "t"})).server.auth_token, "t")
        error = self.assertRaises(ConfigError, parse, minimal(server={"auth_token": ""}))
        self.assertEqual(error.key, "server")

    def test_basic_only(self) -> None:
        """
        A Basic pair alone is enough; the token stays unset.
        """
        config = parse(minimal(server={"auth_user": "u", "auth_password": "p"}))
        self.assertEqual(
            (config.server.auth_user, config.server.auth_password, config.server.auth_token),
            ("u", "p", None),
        )

    def test_swaig_pair(self) -> None:
        """
        The C{swaig} pair is kept only when both halves are non-empty.
        """
        self.assertEqual(
            parse(minimal(swaig={"auth_user": "s", "auth_password": "${SW_PW}"})).swaig,
            SwaigConfig(None, None),
        )
        self.assertEqual(
            parse(
                minimal(swaig={"auth_user": "s", "auth_password": "${SW_PW}"}), {"SW_PW": "x"}
            ).swaig,
            SwaigConfig("s", "x"),
        )


NO_CREDENTIAL_PROBLEM = "no credential: set auth_user and auth_password, or auth_token"


class PathTests(SynchronousTestCase):
    """
    Relative paths resolve against the starting directory and are made absolute.
    """

    def test_server_paths(self) -> None:
        """
        C{tls_cert} is resolved; C{tls_key} defaults to the resolved certificate.
        """
        config = parse(minimal(server={"auth_token": "t", "tls_cert": "../pki/gw.pem"}))
        self.assertEqual(config.server.tls_cert, "/srv/pki/gw.pem")
        self.assertEqual(config.server.tls_key, "/srv/pki/gw.pem")

    def test_empty_cert_is_default(self) -> None:
        """
        An empty C{tls_cert} (an unset variable) means the default.
        """
        config = parse(minimal(server={"auth_token": "t", "tls_cert": "${CERT}"}))
        self.assertEqual(config.server.tls_cert, "/srv/gw/certs/server.pem")

    def test_session_and_logging(self) -> None:
        """
        C{session.sandbox_dir} and C{logging.file} are resolved; an empty file is unset.
        """
        config = parse(
            minimal(session={"sandbox_dir": "var/sb"}, logging={"file": "./logs/gw.log"})
        )
        self.assertEqual(config.session.sandbox_dir, "/srv/gw/var/sb")
        self.assertEqual(config.logging.file, "/srv/gw/logs/gw.log")
        self.assertIsNone(parse(minimal(logging={"file": "${LOG}"})).logging.file)

    def test_argv(self) -> None:
        """
        Only argv items starting with C{./} or C{../} are resolved.
        """
        config = parse(
            with_service(command=["./bin/srv", "../data", "srv.py", "-x", ".hidden", "/abs"])
        )
        self.assertEqual(
            config.services["svc"].command,
            ("/srv/gw/bin/srv", "/srv/data", "srv.py", "-x", ".hidden", "/abs"),
        )

    def test_working_dir(self) -> None:
        """
        A relative C{working_dir} is resolved and copied into the sandbox.
        """
        service = parse(with_service(working_dir="work")).services["svc"]
        self.assertEqual(service.working_dir, "/srv/gw/work")
        self.assertEqual(service.sandbox.working_dir, "/srv/gw/work")


class AliasTests(SynchronousTestCase):
    """
    C{sandbox} is an alias of C{sandbox_config}; C{working_dir} may sit inside it.
    """

    def test_sandbox_alias(self) -> None:
        """
        C{sandbox} alone is read like C{sandbox_config}.
        """
        service = parse(with_service(sandbox={"restricted_env": False})).services["svc"]
        self.assertEqual(service.sandbox, SandboxConfig(restricted_env=False))

    def test_both_equal(self) -> None:
        """
        Both keys given with equal contents are accepted.
        """
        sandbox = {"enabled": False}
        service = parse(with_service(sandbox=sandbox, sandbox_config={"enabled": "no"}))
        self.assertEqual(service.services["svc"].sandbox, SandboxConfig(enabled=False))

    def test_both_different(self) -> None:
        """
        Both keys given with different contents are refused.
        """
        error = self.assertRaises(
            ConfigError,
            parse,
            with_service(sandbox={"enabled": False}, sandbox_config={"enabled": True}),
        )
        self.assertEqual(
            str(error),
            "config.json: services.svc.sandbox: differs from sandbox_config (its alias): "
            "give one of them",
        )

    def test_working_dir_in_sandbox(self) -> None:
        """
        C{sandbox_config.working_dir} becomes the service's working directory.
        """
        service = parse(with_service(sandbox_config={"working_dir": "w"})).services["svc"]
        self.assertEqual(service.working_dir, "/srv/gw/w")
        self.assertEqual(service.sandbox.working_dir, "/srv/gw/w")

    def test_working_dir_both_places(self) -> None:
        """
        C{working_dir} in both places is accepted when they resolve alike, refused otherwise.
        """
        service = parse(
            with_service(working_dir="/srv/gw/w", sandbox={"working_dir": "./w"})
        ).services["svc"]
        self.assertEqual(service.working_dir, "/srv/gw/w")
        error = self.assertRaises(
            ConfigError, parse, with_service(working_dir="a", sandbox={"working_dir": "b"})
        )
        self.assertEqual(
            str(error),
            "config.json: services.svc.working_dir: differs from sandbox.working_dir: "
            "give it once",
        )


class ResourceLimitsTests(SynchronousTestCase):
    """
    C{resource_limits} is true, false, or an object overriding single limits.
    """

    def limits(self, value: Any) -> ResourceLimits | None:
        config = parse(with_service(sandbox_config={"resource_limits": value}))
        return config.services["svc"].sandbox.resource_limits

    def test_true_false(self) -> None:
        """
        C{true} (or a true word) gives the defaults; C{false} gives none at all.
        """
        self.assertEqual(self.limits(True), ResourceLimits())
        self.assertEqual(self.limits("on"), ResourceLimits())
        self.assertIsNone(self.limits(False))

    def test_overrides(self) -> None:
        """
        An object overrides the limits it names, disabling those set to null or false.
        """
        self.assertEqual(
            self.limits(
                {"memory_mb": "512", "cpu_seconds": None, "open_files": False, "max_processes": 64}
            ),
            ResourceLimits(
                cpu_seconds=None,
                memory_mb=512,
                file_size_mb=100,
                open_files=None,
                max_processes=64,
            ),
        )

    def test_startup_nice(self) -> None:
        """
        C{startup_nice} (not an RLIMIT: a starting child's CPU priority) is 19 by default, a
        nice value from 1 to 19, or off with 0, null or false.
        """
        self.assertEqual(ResourceLimits().startup_nice, 19)
        nice = [self.limits({"startup_nice": v}).startup_nice for v in (5, "12", 19)]  # type: ignore[union-attr]
        self.assertEqual(nice, [5, 12, 19])
        for off in (0, "0", None, False, "off"):
            self.assertIsNone(self.limits({"startup_nice": off}).startup_nice)  # type: ignore[union-attr]
        for value in [20, -1, 1.5, True, "low"]:
            error = self.assertRaises(
                ConfigError,
                parse,
                with_service(sandbox_config={"resource_limits": {"startup_nice": value}}),
            )
            self.assertEqual(
                str(error),
                "config.json: services.svc.sandbox_config.resource_limits.startup_nice: "
                "must be an integer from 0 to 19, or null/false to disable it",
            )

    def test_invalid(self) -> None:
        """
        A limit must be a positive integer; the whole value an object or a boolean.
        """
        for value in [0, -5, True, 1.5, "lots"]:
            error = self.assertRaises(
                ConfigError,
                parse,
                with_service(sandbox_config={"resource_limits": {"open_files": value}}),
            )
            self.assertEqual(
                str(error),
                "config.json: services.svc.sandbox_config.resource_limits.open_files: "
                "must be a positive integer, or null/false to disable it",
            )
        error = self.assertRaises(
            ConfigError, parse, with_service(sandbox_config={"resource_limits": 5})
        )
        self.assertEqual(
            str(error),
            "config.json: services.svc.sandbox_config.resource_limits: "
            "must be true, false or an object",
        )


class UnknownKeysTests(SynchronousTestCase):
    """
    Unknown keys are collected as dotted paths, not refused.
    """

    def test_unknown_keys(self) -> None:
        """
        Unknown keys at every level are listed; a service's C{env} keys are never unknown.
        """
        data = minimal(
            bogus=1,
            server={"auth_token": "t", "prot": 1},
            services={
                "s": {
                    "command": ["x"],
                    "comand": ["x"],
                    "env": {"ANY": "v"},
                    "sandbox_config": {"resource_limits": {"cpu": 1}, "chroot": "/"},
                }
            },
            logging={"format": "json"},
        )
        self.assertEqual(
            sorted(parse(data).unknown_keys),
            [
                "bogus",
                "logging.format",
                "server.prot",
                "services.s.comand",
                "services.s.sandbox_config.chroot",
                "services.s.sandbox_config.resource_limits.cpu",
            ],
        )


class LoadConfigTests(SynchronousTestCase):
    """
    L{load_config} reads the file and reports file-level problems.
    """

    def setUp(self) -> None:
        self.dir = FilePath(self.mktemp())
        self.dir.makedirs()

    def write(self, text: str, name: str = "config.json") -> None:
        self.dir.child(name).setContent(text.encode("utf-8"))

    def test_loads_relative_to_cwd(self) -> None:
        """
        A relative path is read from C{cwd}; C{source} becomes the absolute path while paths
        inside resolve against C{cwd}.
        """
        self.write(json.dumps(minimal(logging={"file": "gw.log"})))
        config = load_config("config.json", {}, self.dir.path)
        self.assertEqual(config.source, self.dir.child("config.json").path)
        self.assertEqual(config.logging.file, self.dir.child("gw.log").path)

    def test_missing_file(self) -> None:
        """
        A missing file is an error naming the path as given.
        """
        error = self.assertRaises(ConfigError, load_config, "nope.json", {}, self.dir.path)
        self.assertEqual(str(error), "nope.json: no such file")

    def test_directory(self) -> None:
        """
        A directory is not a config file.
        """
        error = self.assertRaises(ConfigError, load_config, ".", {}, self.dir.path)
        self.assertEqual(str(error), ".: is a directory, not a file")

    def test_unreadable(self) -> None:
        """
        An unreadable file is an error.
        """
        if os.getuid() == 0:
            self.skipTest("root reads every file")
        self.write("{}")
        os.chmod(self.dir.child("config.json").path, 0)
        error = self.assertRaises(ConfigError, load_config, "config.json", {}, self.dir.path)
        self.assertEqual(str(error), "config.json: cannot read the file: Permission denied")

    def test_os_error(self) -> None:
        """
        Any other error reading the file is reported with its reason.
        """
        self.write("{}")
        error = self.assertRaises(ConfigError, load_config, "config.json/x", {}, self.dir.path)
        self.assertEqual(str(error), "config.json/x: cannot read the file: Not a directory")

    def test_invalid_json(self) -> None:
        """
        Invalid JSON is reported with its line and column.
        """
        self.write('{\n  "server": {\n    "port": 80,\n  }\n}')
        error = self.assertRaises(ConfigError, load_config, "config.json", {}, self.dir.path)
        self.assertEqual(
            str(error),
            "config.json: invalid JSON at line 4, column 3: "
            "Expecting property name enclosed in double quotes",
        )

    def test_not_utf8(self) -> None:
        """
        A file that is not UTF-8 is an error.
        """
        self.dir.child("config.json").setContent(b'{"a": "\xff"}')
        error = self.assertRaises(ConfigError, load_config, "config.json", {}, self.dir.path)
        self.assertEqual(str(error), "config.json: is not UTF-8 text")

    def test_top_level_array(self) -> None:
        """
        A JSON array at the top level is refused.
        """
        self.write("[]")
        error = self.assertRaises(ConfigError, load_config, "config.json", {}, self.dir.path)
        self.assertEqual(str(error), "config.json: the top level must be a JSON object")

    def test_error_names_path_as_given(self) -> None:
        """
        A validation error names the path as the user gave it.
        """
        self.write(json.dumps(minimal(services={"time": {"command": []}})))
        error = self.assertRaises(
            ConfigError, load_config, os.path.join(".", "config.json"), {}, self.dir.path
        )
        self.assertEqual(
            str(error), "./config.json: services.time.command: must be a non-empty list of strings"
        )


class ExampleConfigTests(SynchronousTestCase):
    """
    The shipped C{etc/config.json} loads.
    """

    def test_loads_with_password(self) -> None:
        """
        With C{MCP_AUTH_PASSWORD} set, the example loads with safe defaults, no unknown keys.
        """
        config = load_config("etc/config.json", {"MCP_AUTH_PASSWORD": "s3cret"}, REPO)
        self.assertEqual(config.unknown_keys, ())
        self.assertEqual(
            (config.server.host, config.server.port, config.server.auth_user),
            ("127.0.0.1", 8080, "admin"),
        )
        self.assertEqual(config.server.auth_password, "s3cret")
        self.assertEqual(list(config.enabled_services), ["notes"])
        self.assertEqual(
            config.services["notes"].command, ("python3", "-m", "mcpgw.examples.notes")
        )
        self.assertEqual(config.services["notes"].sandbox, SandboxConfig())
        self.assertEqual(config.session, SessionConfig(sandbox_dir=os.path.join(REPO, "sandbox")))
        self.assertEqual(config.rate_limiting, RateLimitConfig())
        self.assertEqual(config.logging, LoggingConfig())

    def test_refused_without_password(self) -> None:
        """
        Without C{MCP_AUTH_PASSWORD} (and no token) the example has no credential.
        """
        error = self.assertRaises(ConfigError, load_config, "etc/config.json", {}, REPO)
        self.assertEqual(error.key, "server")

    def test_environment_overrides(self) -> None:
        """
        The example's variables override host, port and level.
        """
        config = load_config(
            "etc/config.json",
            {
                "MCP_AUTH_TOKEN": "t",
                "MCP_HOST": "0.0.0.0",
                "MCP_PORT": "9999",
                "MCP_LOG_LEVEL": "debug",
            },
            REPO,
        )
        self.assertEqual((config.server.host, config.server.port), ("0.0.0.0", 9999))
        self.assertEqual(config.logging.level, "DEBUG")
        self.assertEqual(config.server.auth_user, None)


class SummaryTests(SynchronousTestCase):
    """
    L{Config.summary} is the one line of C{mcp-gateway --check}.
    """

    def test_summary(self) -> None:
        """
        The summary names the services, listener, TLS mode, auth schemes and limiter store.
        """
        config = parse(
            {
                "server": {"auth_user": "u", "auth_password": "p", "auth_token": "t"},
                "services": {
                    "time": {"command": ["t"]},
                    "notes": {"command": ["n"]},
                    "off": {"command": ["o"], "enabled": False},
                },
            }
        )
        self.assertEqual(
            config.summary(),
            "config.json: OK: 2 services (time, notes), 1 disabled, listening on "
            "0.0.0.0:8080, tls auto, auth basic+token, rate limits memory://",
        )

    def test_basic_only(self) -> None:
        """
        A config with only a Basic pair and no services says so.
        """
        config = parse({"server": {"auth_user": "u", "auth_password": "p"}, "services": {}})
        self.assertEqual(
            config.summary(),
            "config.json: OK: 0 services, listening on 0.0.0.0:8080, tls auto, "
            "auth basic, rate limits memory://",
        )

    def test_label_and_redaction(self) -> None:
        """
        The label replaces the source; a Redis password is never shown; IPv6 is bracketed.
        """
        config = parse(
            {
                "server": {"auth_token": "t", "host": "::", "tls": "on"},
                "services": {"one": {"command": ["x"]}},
                "rate_limiting": {"storage_uri": "redis://user:hunter2@redis:6379/0"},
                "swaig": {"auth_user": "s", "auth_password": "p"},
            }
        )
        self.assertEqual(
            config.summary("etc/gw.json"),
            "etc/gw.json: OK: 1 service (one), listening on [::]:8080, tls on, "
            "auth token+swaig, rate limits redis://user:***@redis:6379/0",
        )


class ImmutabilityTests(SynchronousTestCase):
    """
    The loaded config is frozen.
    """

    def test_frozen(self) -> None:
        """
        Assigning a field of a loaded config raises.
        """
        config = parse(minimal())
        self.assertRaises(attrs.exceptions.FrozenInstanceError, setattr, config, "source", "x")
