# -*- test-case-name: tests.test_auth -*-
"""
Who is calling: HTTP Basic and Bearer credentials, checked in constant time on bytes.

The principal is the authenticated user name, ``token`` for the Bearer token, or ``None``
when the credentials are missing or wrong (SPEC 7 calls that principal ``-``).
"""

from __future__ import annotations

import binascii
import hmac
from base64 import b64decode

import attrs

from mcpgw.config import Config

TOKEN_PRINCIPAL = "token"  # noqa: S105 - a principal name, not a secret


@attrs.frozen
class Credentials:
    """The accepted credentials, as bytes, ready for constant-time comparison."""

    basic: tuple[bytes, bytes] | None = None
    token: bytes | None = None
    # The webhook-only pair, accepted on ``POST /swaig`` alone.
    swaig: tuple[bytes, bytes] | None = None

    @classmethod
    def from_config(cls, config: Config) -> Credentials:
        server, swaig = config.server, config.swaig

        def pair(user: str | None, password: str | None) -> tuple[bytes, bytes] | None:
            if user and password:
                return (user.encode("utf-8"), password.encode("utf-8"))
            return None

        return cls(
            basic=pair(server.auth_user, server.auth_password),
            token=server.auth_token.encode("utf-8") if server.auth_token else None,
            swaig=pair(swaig.auth_user, swaig.auth_password),
        )


def _same(given: bytes, expected: bytes) -> bool:
    return hmac.compare_digest(given, expected)


def _basic_matches(user: bytes, password: bytes, pair: tuple[bytes, bytes]) -> bool:
    # Both halves are always compared, so timing does not tell which one was wrong.
    user_ok = _same(user, pair[0])
    password_ok = _same(password, pair[1])
    return user_ok and password_ok


def authenticate(
    authorization: bytes | None, credentials: Credentials, *, webhook: bool = False
) -> str | None:
    """
    Check an ``Authorization`` header value against C{credentials}.

    @param webhook: True on ``POST /swaig``, where the ``swaig.*`` pair is accepted too.
    @return: the principal, or None when the request is not authenticated.
    """
    if not authorization:
        return None
    scheme, _, value = authorization.strip().partition(b" ")
    scheme = scheme.lower()
    value = value.strip()
    if scheme == b"bearer":
        if credentials.token is not None and _same(value, credentials.token):
            return TOKEN_PRINCIPAL
        return None
    if scheme != b"basic":
        return None
    try:
        decoded = b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None
    user, sep, password = decoded.partition(b":")
    if not sep:
        return None
    pairs = [credentials.basic]
    if webhook:
        pairs.append(credentials.swaig)
    for pair in pairs:
        if pair is not None and _basic_matches(user, password, pair):
            return user.decode("utf-8", "replace")
    return None
