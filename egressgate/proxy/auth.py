"""Proxy-Authorization: Basic — parse, compare in constant time, or refuse with 407.

Credentials are never logged: only the user name reaches the access log, and only after it was
verified. Passwords are compared as SHA-256 digests with hmac.compare_digest, and an unknown
user is compared against a dummy digest, so timing reveals neither which users exist nor how
much of a password was right.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from dataclasses import dataclass

from egressgate.errors import Reason, Refused
from egressgate.http1.events import Header

_DUMMY = hashlib.sha256(b"egressgate-no-such-user").digest()


@dataclass(frozen=True, slots=True)
class Login:
    """Credentials a client presented, not yet verified: from a Proxy-Authorization header, or
    an RFC 1929 SOCKS5 username/password sub-negotiation. `problem`: why they are unusable
    (malformed header, unsupported scheme); verification then refuses with that text."""

    user: str
    password: str
    problem: str = ""


def login_from_headers(headers: list[Header]) -> Login | None:
    """The Basic credentials of a Proxy-Authorization header, None when there is none."""
    value = None
    for lname, _, header_value in headers:
        if lname == b"proxy-authorization":
            value = header_value
            break
    if value is None:
        return None
    scheme, _, token = value.strip().partition(b" ")
    if scheme.lower() != b"basic":
        return Login("", "", "only Basic proxy authentication is supported")
    try:
        decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return Login("", "", "malformed Proxy-Authorization")
    user, sep, password = decoded.partition(":")
    if not sep:
        return Login("", "", "wrong proxy user name or password")
    return Login(user, password)


def verify(login: Login | None, credentials: dict[str, bytes]) -> str | None:
    """The verified user, None when no credentials were presented (or none are configured);
    Refused(407) when they are wrong or unusable."""
    if not credentials or login is None:
        return None
    if login.problem:
        raise Refused(Reason.AUTH_REQUIRED, login.problem)
    digest = hashlib.sha256(login.password.encode()).digest()
    expected = credentials.get(login.user, _DUMMY)
    if not hmac.compare_digest(digest, expected) or login.user not in credentials:
        raise Refused(Reason.AUTH_REQUIRED, "wrong proxy user name or password")
    return login.user


def authenticate(headers: list[Header], credentials: dict[str, bytes]) -> str | None:
    """The verified user, None when no credentials were sent; Refused(407) when they are wrong."""
    if not credentials:
        return None
    return verify(login_from_headers(headers), credentials)
