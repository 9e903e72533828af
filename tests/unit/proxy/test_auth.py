"""Login: credentials parsed from Proxy-Authorization (or given by a SOCKS5 front end), then
verified by the admission in constant time."""

from __future__ import annotations

import base64

import pytest

from egressgate.errors import Reason, Refused
from egressgate.policy.credentials import Credentials, parse_secret
from egressgate.proxy.auth import Login, authenticate, login_from_headers, verify

CREDENTIALS = Credentials({"ann": parse_secret("s3cret:x")})


def header(value: bytes) -> list[tuple[bytes, bytes, bytes]]:
    return [(b"proxy-authorization", b"Proxy-Authorization", value)]


def basic(text: str) -> bytes:
    return b"Basic " + base64.b64encode(text.encode())


@pytest.mark.parametrize(
    ("headers", "login"),
    [
        ([], None),
        (header(basic("ann:s3cret:x")), Login("ann", "s3cret:x")),
        (header(b"Bearer abc"), Login("", "", "only Basic proxy authentication is supported")),
        (header(b"Basic !!!"), Login("", "", "malformed Proxy-Authorization")),
        (header(basic("no-colon")), Login("", "", "wrong proxy user name or password")),
    ],
)
def test_login_from_headers(headers: list[tuple[bytes, bytes, bytes]], login: Login | None) -> None:
    assert login_from_headers(headers) == login


@pytest.mark.parametrize(
    ("login", "user"),
    [(None, None), (Login("ann", "s3cret:x"), "ann")],
)
def test_verify_accepts(login: Login | None, user: str | None) -> None:
    assert verify(login, CREDENTIALS) == user


@pytest.mark.parametrize(
    "login",
    [
        Login("ann", "wrong"),
        Login("bob", "s3cret:x"),
        Login("", "", "malformed Proxy-Authorization"),
    ],
)
def test_verify_refuses_with_407(login: Login) -> None:
    with pytest.raises(Refused) as caught:
        verify(login, CREDENTIALS)
    assert caught.value.reason is Reason.AUTH_REQUIRED


def test_no_credentials_configured_means_no_check() -> None:
    assert verify(Login("ann", "wrong"), Credentials({})) is None
    assert authenticate(header(b"Bearer x"), Credentials({})) is None
