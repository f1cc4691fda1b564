"""Tests for L{mcpgw.auth}: Basic and Bearer checks on bytes."""

from __future__ import annotations

from base64 import b64encode

from twisted.trial.unittest import SynchronousTestCase

from mcpgw.auth import Credentials, authenticate

CREDS = Credentials(
    basic=(b"admin", "pässword".encode()),
    token=b"tok",
    swaig=(b"hook", b"hookpw"),
)


def basic(user: bytes, password: bytes) -> bytes:
    return b"Basic " + b64encode(user + b":" + password)


class AuthenticateTests(SynchronousTestCase):
    def test_basic(self) -> None:
        """The Basic pair authenticates as its user name, non-ASCII password included."""
        self.assertEqual(authenticate(basic(b"admin", "pässword".encode()), CREDS), "admin")

    def test_basic_wrong(self) -> None:
        """A wrong user or password, or a missing colon, is not authenticated."""
        for header in [
            basic(b"admin", b"x"),
            basic(b"x", "pässword".encode()),
            b"Basic " + b64encode(b"adminp"),
        ]:
            self.assertIsNone(authenticate(header, CREDS))

    def test_bearer(self) -> None:
        """The Bearer token authenticates as 'token'; scheme names are case-insensitive."""
        self.assertEqual(authenticate(b"Bearer tok", CREDS), "token")
        self.assertEqual(authenticate(b"bearer tok", CREDS), "token")
        self.assertIsNone(authenticate(b"Bearer tok2", CREDS))

    def test_no_token_configured(self) -> None:
        """Without a configured token, no Bearer header authenticates (not even empty)."""
        creds = Credentials(basic=(b"a", b"b"))
        self.assertIsNone(authenticate(b"Bearer ", creds))
        self.assertIsNone(authenticate(b"Bearer x", creds))

    def test_garbage(self) -> None:
        """Missing, empty, unknown-scheme and undecodable headers are not authenticated."""
        for header in [None, b"", b"Basic", b"Basic %%%", b"Digest x", b"\xff\xfe"]:
            self.assertIsNone(authenticate(header, CREDS))

    def test_swaig_pair_only_on_webhook(self) -> None:
        """The swaig.* pair authenticates only when the route is the webhook."""
        header = basic(b"hook", b"hookpw")
        self.assertIsNone(authenticate(header, CREDS))
        self.assertEqual(authenticate(header, CREDS, webhook=True), "hook")
