"""request_host: the destination of an origin-bound request head, strictly."""

from __future__ import annotations

import pytest

from egressgate.errors import ProtocolError
from egressgate.http1.events import RequestHead
from egressgate.http1.origin_host import request_host
from egressgate.http1.parser import RequestParser


def head(raw: bytes) -> RequestHead:
    (event, *_) = RequestParser(8192, 32768).feed(raw)
    assert isinstance(event, RequestHead)
    return event


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"GET / HTTP/1.1\r\nHost: a.example\r\n\r\n", ("a.example", None)),
        (b"GET / HTTP/1.1\r\nHost: a.example:8080\r\n\r\n", ("a.example", 8080)),
        (b"GET http://a.example/x HTTP/1.1\r\nHost: a.example\r\n\r\n", ("a.example", None)),
        (b"GET http://a.example:81/ HTTP/1.1\r\n\r\n", ("a.example", 81)),
        (b"GET / HTTP/1.1\r\nHost: [2001:db8::1]\r\n\r\n", ("[2001:db8::1]", None)),
    ],
)
def test_the_destination_is_read(raw: bytes, expected: tuple[str, int | None]) -> None:
    assert request_host(head(raw)) == expected


@pytest.mark.parametrize(
    "raw",
    [
        b"GET / HTTP/1.1\r\n\r\n",  # no Host
        b"GET http://a.example/ HTTP/1.1\r\nHost: b.example\r\n\r\n",  # disagree
        b"GET / HTTP/1.1\r\nHost: a.example:0\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: ::1\r\n\r\n",  # IPv6 without brackets
        b"GET http://u@a.example/ HTTP/1.1\r\nHost: a.example\r\n\r\n",  # userinfo
    ],
)
def test_ambiguous_heads_are_refused(raw: bytes) -> None:
    with pytest.raises(ProtocolError):
        request_host(head(raw))
