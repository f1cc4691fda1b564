"""Tests for L{mcpgw.listen}: choosing TLS, reading the PEM, failing to bind."""

from __future__ import annotations

import os
from typing import Any

from twisted.internet.error import CannotListenError
from twisted.internet.testing import MemoryReactor
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import Site

from mcpgw.config import Config
from mcpgw.config_loader import parse_config
from mcpgw.errors import ConfigError
from mcpgw.listen import ListenerService, certificate_options, server_endpoint, wants_tls

from .tls import make_chain


def config(directory: str, **server: Any) -> Config:
    data = {"server": {"auth_token": "t", **server}, "services": {}}
    return parse_config(data, {}, directory, "c.json")


class TLSChoiceTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)

    def test_auto_without_cert(self) -> None:
        """tls auto without certs/server.pem serves plain HTTP."""
        self.assertFalse(wants_tls(config(self.dir)))
        _, scheme = server_endpoint(MemoryReactor(), config(self.dir))
        self.assertEqual(scheme, "http")

    def test_auto_with_cert(self) -> None:
        """tls auto with certs/server.pem (relative to the start directory) serves HTTPS."""
        make_chain(os.path.join(self.dir, "certs", "server.pem"))
        self.assertTrue(wants_tls(config(self.dir)))
        _, scheme = server_endpoint(MemoryReactor(), config(self.dir))
        self.assertEqual(scheme, "https")

    def test_off_ignores_cert(self) -> None:
        """tls off serves plain HTTP even when the certificate exists."""
        make_chain(os.path.join(self.dir, "certs", "server.pem"))
        self.assertFalse(wants_tls(config(self.dir, tls="off")))

    def test_on_without_cert(self) -> None:
        """tls on with no certificate is a config error naming server.tls_cert."""
        e = self.assertRaises(ConfigError, wants_tls, config(self.dir, tls="on"))
        self.assertEqual(e.key, "server.tls_cert")

    def test_bad_pem(self) -> None:
        """A PEM that is not a certificate is a config error, not a traceback."""
        os.makedirs(os.path.join(self.dir, "certs"))
        with open(os.path.join(self.dir, "certs", "server.pem"), "w") as f:
            f.write("not a pem\n")
        e = self.assertRaises(ConfigError, certificate_options, config(self.dir))
        self.assertIn("unusable TLS PEM", str(e))

    def test_key_mismatch(self) -> None:
        """A key that does not match the certificate is a config error."""
        pem = os.path.join(self.dir, "certs", "server.pem")
        other = os.path.join(self.dir, "other", "server.pem")
        make_chain(pem)
        make_chain(other)
        e = self.assertRaises(ConfigError, certificate_options, config(self.dir, tls_key=other))
        self.assertIn("unusable TLS PEM", str(e))

    def test_chain_kept(self) -> None:
        """Certificates after the first in the PEM become the served chain."""
        make_chain(os.path.join(self.dir, "certs", "server.pem"))
        options = certificate_options(config(self.dir))
        self.assertEqual(len(options.extraCertChain), 1)


class ListenerTests(SynchronousTestCase):
    def test_bind_failure_raises(self) -> None:
        """A port that cannot be bound raises at privilegedStartService."""

        class Failing:
            def listen(self, factory: Any) -> Any:
                from twisted.internet.defer import fail

                return fail(CannotListenError("127.0.0.1", 1, OSError("in use")))

        service = ListenerService(Failing(), Site(Resource()), "http")  # type: ignore[arg-type]
        self.assertRaises(CannotListenError, service.privilegedStartService)

    def test_listening_callback(self) -> None:
        """Once bound, the service reports host and port (port 0 gives the real one)."""
        reactor = MemoryReactor()
        seen: list[Any] = []
        endpoint, _ = server_endpoint(reactor, config(os.path.abspath(self.mktemp())))
        service = ListenerService(
            endpoint, Site(Resource()), "http", on_listening=lambda h, p: seen.append((h, p))
        )
        service.startService()
        self.assertEqual(len(seen), 1)
        self.assertEqual(len(reactor.tcpServers), 1)
        service.stopService()
