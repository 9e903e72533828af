"""The fast CONNECT head reader accepts a strict subset of what the full parser accepts, and
gives exactly the full parser's result; and it recognises the heads real clients send."""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from egressgate.errors import ProtocolError
from egressgate.http1.connect_head import read_connect_head
from egressgate.http1.events import RequestHead, TunnelStart
from egressgate.http1.parser import RequestParser

MAX_LINE = 8192
MAX_HEAD = 65536


def full_parser(data: bytes) -> tuple[RequestHead, bytes] | None:
    """What http1/parser.py makes of `data`: (head, rest), None if the head is incomplete."""
    events = RequestParser(MAX_LINE, MAX_HEAD).feed(data)
    heads = [event for event in events if isinstance(event, RequestHead)]
    tunnels = [event for event in events if isinstance(event, TunnelStart)]
    if not heads:
        return None
    assert len(tunnels) == 1, events
    return heads[0], tunnels[0].rest


# Heads as real clients send them (curl, Go, Python urllib3/requests, Java, Node, git).
REAL_CLIENT_HEADS = [
    b"CONNECT api.example.test:443 HTTP/1.1\r\nHost: api.example.test:443\r\n"
    b"User-Agent: curl/8.5.0\r\nProxy-Connection: Keep-Alive\r\n\r\n",
    b"CONNECT api.example.test:443 HTTP/1.1\r\nHost: api.example.test:443\r\n"
    b"User-Agent: Go-http-client/1.1\r\n\r\n",
    b"CONNECT api.example.test:443 HTTP/1.0\r\n\r\n",
    b"CONNECT api.example.test:443 HTTP/1.1\r\nHost: api.example.test:443\r\n"
    b"Proxy-Authorization: Basic dXNlcjpwYXNz\r\n\r\n",
    b"CONNECT [2001:db8::1]:443 HTTP/1.1\r\nHost: [2001:db8::1]:443\r\n\r\n",
    b"CONNECT api.example.test:443 HTTP/1.1\r\nUser-Agent: Java/17.0.9\r\n"
    b"Host: api.example.test\r\nAccept: */*\r\nProxy-Connection: keep-alive\r\n\r\n",
    b"CONNECT api.example.test:443 HTTP/1.1\r\nhost: api.example.test:443\r\n\r\n",
]


@pytest.mark.parametrize("head", REAL_CLIENT_HEADS)
def test_real_client_heads_take_the_fast_path_with_the_full_parsers_result(head: bytes) -> None:
    data = head + b"\x16\x03\x01 first tunnel bytes"
    fast = read_connect_head(data, MAX_LINE, MAX_HEAD)
    assert fast is not None
    assert fast == full_parser(data)


@pytest.mark.parametrize(
    "data",
    [
        b"CONNECT a.test:443 HTTP/1.1\r\nHost: a.test:443\r\n",  # incomplete
        b"CONNECT a.test:443 HTTP/1.1\nHost: a.test:443\n\n",  # bare LF
        b"CONNECT a.test:443 HTTP/1.1\r\nX: a\r\n b\r\n\r\n",  # obs-fold
        b"CONNECT a.test:443 HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
        b"CONNECT a.test:443 HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"CONNECT a.test:443 HTTP/1.1\r\nConnection: close\r\n\r\n",
        b"CONNECT a.test:443 HTTP/1.1\r\nX: caf\xc3\xa9\r\n\r\n",  # obs-text
        b"CONNECT a.test:443 HTTP/1.1\r\nX : y\r\n\r\n",  # space before the colon
        b"CONNECT a.test:443 HTTP/2.0\r\n\r\n",
        b"CONNECT a test:443 HTTP/1.1\r\n\r\n",
        b"connect a.test:443 HTTP/1.1\r\n\r\n",
        b"GET http://a.test/ HTTP/1.1\r\n\r\n",
    ],
)
def test_anything_unusual_is_left_to_the_full_parser(data: bytes) -> None:
    assert read_connect_head(data, MAX_LINE, MAX_HEAD) is None


def test_the_limits_send_big_heads_to_the_full_parser() -> None:
    head = b"CONNECT a.test:443 HTTP/1.1\r\nX: " + b"y" * 200 + b"\r\n\r\n"
    assert read_connect_head(head, MAX_LINE, MAX_HEAD) is not None
    assert read_connect_head(head, MAX_LINE, 100) is None  # header block over the limit
    assert read_connect_head(head, 5, MAX_HEAD) is None  # request target over the limit


_TARGET_CHARS = st.sampled_from(
    list(b"abcXYZ019.-_~%!$&'()*+,;=:[]") + list(b' <>"{}|\\^`@/?#\x00\x7f\x80\xff')
)
_NAME_CHARS = st.sampled_from(list(b"HostXa-b_1!#$%&'*+.^`|~") + list(b' ()<>@,;\\"/[]?={}\t\x00'))
_VALUE_CHARS = st.sampled_from(
    list(b"abc XYZ 019\t:;,=/\"'") + list(b"\x00\x01\x0b\x0c\x7f\x80\xc3\xa9\xff\r\n")
)
_EOL = st.sampled_from([b"\r\n", b"\r\n", b"\r\n", b"\n", b"\r"])


def _bytes_of(chars: st.SearchStrategy[int], min_size: int = 0) -> st.SearchStrategy[bytes]:
    return st.lists(chars, min_size=min_size, max_size=24).map(bytes)


_HEADER_NAMES = st.one_of(
    _bytes_of(_NAME_CHARS, 1),
    st.sampled_from(
        [b"Host", b"Proxy-Authorization", b"Proxy-Connection", b"Connection", b"Content-Length"]
    ),
)


@st.composite
def connect_heads(draw: st.DrawFn) -> bytes:
    method = draw(st.sampled_from([b"CONNECT", b"CONNECT", b"CONNECT", b"connect", b"CONNEC"]))
    target = draw(_bytes_of(_TARGET_CHARS, 1))
    version = draw(st.sampled_from([b"1.1", b"1.1", b"1.0", b"2.0", b"1.2", b"0.9"]))
    lines = [method + b" " + target + b" HTTP/" + version + draw(_EOL)]
    for _ in range(draw(st.integers(0, 4))):
        name = draw(_HEADER_NAMES)
        separator = draw(st.sampled_from([b":", b":", b": ", b":\t ", b" :"]))
        value = draw(_bytes_of(_VALUE_CHARS))
        lines.append(name + separator + value + draw(_EOL))
    lines.append(draw(_EOL))
    rest = draw(st.binary(max_size=16))
    return b"".join(lines) + rest


_VALID_TARGET = st.sampled_from(list(b"abcXYZ019.-_~%!$&'()*+,;=:[]"))
_VALID_NAME = st.sampled_from(list(b"HostXa-b_1!#$%&'*+.^`|~"))
_VALID_VALUE = st.sampled_from(list(b"abc XYZ 019\t:;,=/\"'!~"))


@st.composite
def plausible_connect_heads(draw: st.DrawFn) -> bytes:
    """Mostly well-formed heads, so that the fast path's results are compared often."""
    target = draw(_bytes_of(_VALID_TARGET, 1))
    version = draw(st.sampled_from([b"1.1", b"1.0"]))
    lines = [b"CONNECT " + target + b" HTTP/" + version + b"\r\n"]
    for _ in range(draw(st.integers(0, 5))):
        name = draw(st.one_of(_bytes_of(_VALID_NAME, 1), _HEADER_NAMES))
        separator = draw(st.sampled_from([b":", b": ", b":\t ", b":  "]))
        value = draw(st.one_of(_bytes_of(_VALID_VALUE), _bytes_of(_VALUE_CHARS)))
        lines.append(name + separator + value + b"\r\n")
    lines.append(b"\r\n")
    return b"".join(lines) + draw(st.binary(max_size=16))


@settings(max_examples=1000, deadline=None)
@given(st.one_of(connect_heads(), plausible_connect_heads()))
@example(b"CONNECT a:1 HTTP/1.1\r\nX:  \t v a l \t\r\n\r\nrest")
@example(b"CONNECT a:1 HTTP/1.1\r\nX:\r\n\r\n")
def test_the_fast_path_is_a_strict_subset_of_the_full_parser(data: bytes) -> None:
    fast = read_connect_head(data, MAX_LINE, MAX_HEAD)
    if fast is None:
        return  # the full parser decides, as before
    try:
        full = full_parser(data)
    except ProtocolError as exc:
        raise AssertionError(f"fast path accepted what the full parser refuses: {exc}") from None
    assert fast == full
