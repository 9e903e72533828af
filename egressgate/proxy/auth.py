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

from egressgate.errors import Reason, Refused
from egressgate.http1.events import Header

_DUMMY = hashlib.sha256(b"egressgate-no-such-user").digest()


def authenticate(headers: list[Header], credentials: dict[str, bytes]) -> str | None:
    """The verified user, None when no credentials were sent; Refused(407) when they are wrong."""
    if not credentials:
        return None
    value = None
    for lname, _, header_value in headers:
        if lname == b"proxy-authorization":
            value = header_value
            break
    if value is None:
        return None
    scheme, _, token = value.strip().partition(b" ")
    if scheme.lower() != b"basic":
        raise Refused(Reason.AUTH_REQUIRED, "only Basic proxy authentication is supported")
    try:
        decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise Refused(Reason.AUTH_REQUIRED, "malformed Proxy-Authorization") from None
    user, sep, password = decoded.partition(":")
    digest = hashlib.sha256(password.encode()).digest()
    expected = credentials.get(user, _DUMMY)
    if not sep or not hmac.compare_digest(digest, expected) or user not in credentials:
        raise Refused(Reason.AUTH_REQUIRED, "wrong proxy user name or password")
    return user
