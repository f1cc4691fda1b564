# -*- test-case-name: tests.test_listen -*-
"""
The listener: plain TCP or native TLS on ``server.host``/``server.port`` (SPEC 3, 8).

``server.tls``: ``auto`` serves TLS when the certificate file exists, ``on`` requires it,
``off`` never. The PEM may hold the key, the certificate and its chain; the chain is served.
The files are read when the service is built, so a bad PEM is a configuration error.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import SSL4ServerEndpoint, TCP4ServerEndpoint
from twisted.internet.interfaces import IListeningPort, IProtocolFactory, IStreamServerEndpoint
from twisted.python.failure import Failure
from twisted.python.filepath import FilePath

from mcpgw.config import Config
from mcpgw.errors import ConfigError
from mcpgw.logs import Logger

log = Logger()

_CERT_BLOCK = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL)


def wants_tls(config: Config) -> bool:
    """Whether to serve TLS; ``ConfigError`` when ``tls: on`` and the file is missing."""
    server = config.server
    if server.tls == "off":
        return False
    exists = FilePath(server.tls_cert).exists()
    if server.tls == "on" and not exists:
        raise ConfigError(config.source, "server.tls_cert", f"{server.tls_cert} does not exist")
    return exists


def certificate_options(config: Config) -> Any:
    """``CertificateOptions`` from the PEM file(s): key, leaf certificate, then the chain."""
    from OpenSSL import crypto
    from twisted.internet import ssl

    server = config.server
    try:
        cert_pem = FilePath(server.tls_cert).getContent()
        key_pem = (
            cert_pem
            if server.tls_key == server.tls_cert
            else FilePath(server.tls_key).getContent()
        )
        blocks = _CERT_BLOCK.findall(cert_pem)
        if not blocks:
            raise ValueError("no certificate found")
        key = crypto.load_privatekey(crypto.FILETYPE_PEM, key_pem)
        leaf = crypto.load_certificate(crypto.FILETYPE_PEM, blocks[0])
        chain = [crypto.load_certificate(crypto.FILETYPE_PEM, b) for b in blocks[1:]]
        options = ssl.CertificateOptions(privateKey=key, certificate=leaf, extraCertChain=chain)
        options.getContext()  # checks that the key matches the certificate
    except Exception as e:  # noqa: BLE001 - logged; one failure must not stop the rest
        where = "server.tls_key" if "key" in str(e).lower() else "server.tls_cert"
        raise ConfigError(config.source, where, f"unusable TLS PEM: {e}") from None
    return options


def server_endpoint(reactor: Any, config: Config) -> tuple[IStreamServerEndpoint, str]:
    """The endpoint to listen on and its scheme (``http`` or ``https``)."""
    server = config.server
    if wants_tls(config):
        options = certificate_options(config)
        return SSL4ServerEndpoint(reactor, server.port, options, interface=server.host), "https"
    return TCP4ServerEndpoint(reactor, server.port, interface=server.host), "http"


def url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


class ListenerService(Service):
    """
    Listens in ``privilegedStartService`` and raises there when the port cannot be bound
    (TCP and TLS endpoints listen synchronously), so startup fails instead of serving nothing.
    """

    def __init__(
        self,
        endpoint: IStreamServerEndpoint,
        factory: IProtocolFactory,
        scheme: str,
        on_listening: Callable[[str, int], None] | None = None,
    ) -> None:
        self._endpoint = endpoint
        self._factory = factory
        self._scheme = scheme
        self._on_listening = on_listening
        self.port: IListeningPort | None = None

    def privilegedStartService(self) -> None:
        super().privilegedStartService()  # type: ignore[no-untyped-call]
        results: list[Any] = []
        self._endpoint.listen(self._factory).addBoth(results.append)
        if not results:  # pragma: no cover - only asynchronous endpoints
            raise RuntimeError("the endpoint did not listen synchronously")
        if isinstance(results[0], Failure):
            results[0].raiseException()
        self.port = results[0]
        address = self.port.getHost()
        host, port = getattr(address, "host", "?"), getattr(address, "port", 0)
        log.info(
            "listening on {scheme}://{host}:{port}",
            scheme=self._scheme,
            host=url_host(host),
            port=port,
        )
        if self._on_listening is not None:
            self._on_listening(host, port)

    def startService(self) -> None:
        if self.port is None:
            self.privilegedStartService()
        super().startService()  # type: ignore[no-untyped-call]

    def stopService(self) -> Deferred[None] | None:
        super().stopService()  # type: ignore[no-untyped-call]
        if self.port is None:
            return None
        port, self.port = self.port, None
        return port.stopListening()
