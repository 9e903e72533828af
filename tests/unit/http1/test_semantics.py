"""http1.semantics: request-target forms, body framing (smuggling rules), hop-by-hop headers.

request_framing is checked on hand-built heads: llhttp refuses most of these combinations on its
own, but its defaults are not our rules, so each rule has its own test here.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from egressgate.errors import ProtocolError, Reason
from egressgate.http1.events import Header, RequestHead, ResponseHead
from egressgate.http1.semantics import (
    HOP_BY_HOP,
    Framing,
    RequestTarget,
    connection_tokens,
    end_to_end,
    expects_continue,
    parse_connect_target,
    parse_proxy_target,
    request_framing,
    response_framing,
    wants_upgrade,
)


def headers(*pairs: tuple[bytes, bytes]) -> list[Header]:
    return [(name.lower(), name, value) for name, value in pairs]


def head(*pairs: tuple[bytes, bytes], method: bytes = b"POST") -> RequestHead:
    return RequestHead(method, b"http://a/", "1.1", headers(*pairs), True, 0)


def smuggling(*pairs: tuple[bytes, bytes]) -> str:
    """The detail of the SMUGGLING refusal request_framing gives these headers."""
    with pytest.raises(ProtocolError) as caught:
        request_framing(head(*pairs))
    assert caught.value.reason is Reason.SMUGGLING
    return caught.value.detail


# ---------------------------------------------------------------------------------------------
# parse_proxy_target (absolute-form) and parse_connect_target (authority-form)
# ---------------------------------------------------------------------------------------------

PROXY_TARGETS: list[tuple[bytes, RequestTarget]] = [
    (b"http://example.com/", RequestTarget("example.com", 80, b"/", b"example.com")),
    (b"http://example.com", RequestTarget("example.com", 80, b"/", b"example.com")),
    (
        b"HTTP://Example.COM:8080/a/b",
        RequestTarget("Example.COM", 8080, b"/a/b", b"Example.COM:8080"),
    ),
    (b"http://example.com?q=1", RequestTarget("example.com", 80, b"/?q=1", b"example.com")),
    (b"http://example.com/p?q#frag", RequestTarget("example.com", 80, b"/p?q", b"example.com")),
    (b"http://example.com:/", RequestTarget("example.com", 80, b"/", b"example.com:")),
    (b"http://example.com:65535/", RequestTarget("example.com", 65535, b"/", b"example.com:65535")),
    (b"http://[::1]:8080/x", RequestTarget("[::1]", 8080, b"/x", b"[::1]:8080")),
    (b"http://[2001:db8::1]/", RequestTarget("[2001:db8::1]", 80, b"/", b"[2001:db8::1]")),
    (b"http://203.0.113.7/", RequestTarget("203.0.113.7", 80, b"/", b"203.0.113.7")),
    (b"http://a/b@c", RequestTarget("a", 80, b"/b@c", b"a")),  # '@' in the path is fine
]


@pytest.mark.parametrize(
    ("target", "expected"), PROXY_TARGETS, ids=[t.decode() for t, _ in PROXY_TARGETS]
)
def test_absolute_form_target_is_split_into_host_port_path(
    target: bytes, expected: RequestTarget
) -> None:
    assert parse_proxy_target(target) == expected


PROXY_REFUSALS: list[tuple[bytes, Reason]] = [
    # RFC 9112 §3.2.2: "a client MUST send the target URI in absolute-form" to a proxy
    (b"/index.html", Reason.NOT_A_PROXY_REQUEST),
    (b"/", Reason.NOT_A_PROXY_REQUEST),
    (b"*", Reason.NOT_A_PROXY_REQUEST),
    (b"https://example.com/", Reason.UNSUPPORTED_SCHEME),  # use CONNECT for https
    (b"ftp://example.com/", Reason.UNSUPPORTED_SCHEME),
    (b"ws://example.com/", Reason.UNSUPPORTED_SCHEME),
    # RFC 9110 §4.2.4: userinfo is deprecated in http URIs, and a classic disguise
    (b"http://user:pass@example.com/", Reason.BAD_REQUEST),
    (b"http://allowed.example@evil.example/", Reason.BAD_REQUEST),
    (b"http://a\\@evil.example/", Reason.BAD_REQUEST),
    (b"example.com:80", Reason.BAD_REQUEST),  # authority-form is for CONNECT
    (b"http:/example.com/", Reason.BAD_REQUEST),
    (b"mailto:x@example.com", Reason.BAD_REQUEST),
    (b"http:///path", Reason.BAD_REQUEST),  # empty host
    (b"http://:80/", Reason.BAD_REQUEST),
    (b"http://example.com:0/", Reason.BAD_REQUEST),
    (b"http://example.com:65536/", Reason.BAD_REQUEST),
    (b"http://example.com:http/", Reason.BAD_REQUEST),
    (b"http://example.com:+80/", Reason.BAD_REQUEST),
    (b"http://example.com:80:80/", Reason.BAD_REQUEST),
    (b"http://::1/", Reason.BAD_REQUEST),  # RFC 3986 §3.2.2: IPv6 needs brackets
    (b"http://[::1/", Reason.BAD_REQUEST),
    (b"http://[::1]x/", Reason.BAD_REQUEST),
    (b"http://ex\xc3\xa4mple.com/", Reason.BAD_REQUEST),  # non-ASCII target
]


@pytest.mark.parametrize(
    ("target", "reason"), PROXY_REFUSALS, ids=[repr(t) for t, _ in PROXY_REFUSALS]
)
def test_absolute_form_target_refusals(target: bytes, reason: Reason) -> None:
    with pytest.raises(ProtocolError) as caught:
        parse_proxy_target(target)
    assert caught.value.reason is reason


CONNECT_TARGETS: list[tuple[bytes, tuple[str, int]]] = [
    (b"example.com:443", ("example.com", 443)),
    (b"Example.COM:8443", ("Example.COM", 8443)),
    (b"203.0.113.7:443", ("203.0.113.7", 443)),
    (b"[::1]:443", ("[::1]", 443)),
    (b"[2001:db8::1]:1", ("[2001:db8::1]", 1)),
    (b"example.com:65535", ("example.com", 65535)),
]


@pytest.mark.parametrize(
    ("target", "expected"), CONNECT_TARGETS, ids=[t.decode() for t, _ in CONNECT_TARGETS]
)
def test_authority_form_connect_target(target: bytes, expected: tuple[str, int]) -> None:
    parsed = parse_connect_target(target)
    assert (parsed.host, parsed.port) == expected
    assert parsed.path == b""
    assert parsed.authority == target


CONNECT_REFUSALS: list[bytes] = [
    b"example.com",  # RFC 9110 §9.3.6: the port is required
    b"[::1]",
    b"example.com:",
    b":443",
    b"example.com:0",
    b"example.com:65536",
    b"example.com:https",
    b"example.com:443/x",
    b"::1:443",  # IPv6 without brackets: which colon is the port's?
    b"2001:db8::1",
    b"[::1:443",
    b"ex\xc3\xa4mple.com:443",
]


@pytest.mark.parametrize("target", CONNECT_REFUSALS, ids=[repr(t) for t in CONNECT_REFUSALS])
def test_authority_form_refusals_are_bad_requests(target: bytes) -> None:
    with pytest.raises(ProtocolError) as caught:
        parse_connect_target(target)
    assert caught.value.reason is Reason.BAD_REQUEST


# ---------------------------------------------------------------------------------------------
# request_framing: one test per smuggling rule (RFC 9112 §6)
# ---------------------------------------------------------------------------------------------


def test_no_length_and_no_coding_means_no_body() -> None:
    framing = request_framing(head(method=b"GET"))
    assert framing == Framing(chunked=False, content_length=0)
    assert not framing.has_body


def test_content_length_frames_the_body() -> None:
    assert request_framing(head((b"Content-Length", b"42"))) == Framing(False, 42)
    assert request_framing(head((b"Content-Length", b" 42 "))).content_length == 42
    assert not request_framing(head((b"Content-Length", b"0"))).has_body
    assert request_framing(head((b"Content-Length", b"1"))).has_body


def test_chunked_frames_the_body() -> None:
    framing = request_framing(head((b"Transfer-Encoding", b"chunked")))
    assert framing == Framing(chunked=True, content_length=None)
    assert framing.has_body
    assert request_framing(head((b"transfer-encoding", b" Chunked "))).chunked


def test_content_length_with_transfer_encoding_is_smuggling() -> None:
    # RFC 9112 §6.1: "A sender MUST NOT send a Content-Length header field in any message that
    # contains a Transfer-Encoding header field." A proxy must not guess which one wins.
    assert "both" in smuggling((b"Content-Length", b"5"), (b"Transfer-Encoding", b"chunked"))
    assert "both" in smuggling((b"Transfer-Encoding", b"chunked"), (b"Content-Length", b"0"))


def test_conflicting_content_lengths_are_smuggling() -> None:
    # RFC 9112 §6.3 (5): differing Content-Length values make the framing unrecoverable.
    assert "conflicting" in smuggling((b"Content-Length", b"5"), (b"Content-Length", b"6"))


def test_repeated_identical_content_length_is_one_length() -> None:
    # RFC 9110 §8.6 allows a recipient to accept repeated identical values as one.
    pairs = ((b"Content-Length", b"5"), (b"Content-Length", b"5"))
    assert request_framing(head(*pairs)) == Framing(False, 5)


@pytest.mark.parametrize(
    "value", [b"abc", b"+5", b"-1", b"0x10", b"1e3", b"5.0", b"", b"5, 5", b"1" * 19]
)
def test_non_numeric_content_length_is_smuggling(value: bytes) -> None:
    # RFC 9110 §8.6: Content-Length = 1*DIGIT
    assert "invalid" in smuggling((b"Content-Length", value))


@pytest.mark.parametrize(
    "values",
    [
        [b"gzip, chunked"],
        [b"chunked, chunked"],
        [b"chunked", b"chunked"],  # two fields are one list (RFC 9110 §5.3)
        [b"chunked, gzip"],
        [b"gzip"],
        [b"identity"],
        [b"chunked;q=1"],
        [b""],
    ],
)
def test_transfer_encoding_other_than_exactly_chunked_is_smuggling(values: list[bytes]) -> None:
    pairs = [(b"Transfer-Encoding", v) for v in values]
    assert "exactly 'chunked'" in smuggling(*pairs)


@pytest.mark.parametrize("value", [b"a\r\n b", b"a\r\n\tb", b"a\nb", b"a\rb", b"\r\n"])
def test_obs_fold_or_bare_cr_lf_in_any_header_value_is_smuggling(value: bytes) -> None:
    # RFC 9112 §5.2: "A server that receives an obs-fold in a request message ... MUST either
    # reject the message by sending a 400 (Bad Request) ... or replace each received obs-fold
    # with one or more SP octets". A proxy that forwards must not pass it on: refuse.
    assert "folding" in smuggling((b"X-Anything", value))
    assert "folding" in smuggling((b"Content-Length", b"5" + value))


# ---------------------------------------------------------------------------------------------
# Hop-by-hop headers (RFC 9110 §7.6.1)
# ---------------------------------------------------------------------------------------------


def test_connection_tokens_from_connection_and_proxy_connection() -> None:
    found = connection_tokens(
        headers(
            (b"Connection", b"Keep-Alive, X-Secret-Hop"),
            (b"Proxy-Connection", b" close "),
            (b"Connection", b"Upgrade"),
            (b"X-Other", b"not-a-token"),
        )
    )
    assert found == {b"keep-alive", b"x-secret-hop", b"close", b"upgrade"}


def test_end_to_end_drops_fixed_hop_by_hop_and_connection_named_headers() -> None:
    # RFC 9110 §7.6.1: "Intermediaries MUST parse a received Connection header field before a
    # message is forwarded and, for each connection-option in this field, remove any header or
    # trailer field(s) from the message with the same name as the connection-option, and then
    # remove the Connection header field itself".
    sent = headers(
        (b"Host", b"a"),
        (b"Connection", b"X-Secret-Hop"),
        (b"X-Secret-Hop", b"1"),
        (b"Keep-Alive", b"timeout=5"),
        (b"Proxy-Authorization", b"Basic Zm9vOmJhcg=="),
        (b"Proxy-Connection", b"keep-alive"),
        (b"TE", b"trailers"),
        (b"Trailer", b"X-T"),
        (b"Transfer-Encoding", b"chunked"),
        (b"Upgrade", b"websocket"),
        (b"Accept", b"*/*"),
        (b"X-Forwarded-For", b"1.2.3.4"),
    )
    kept = end_to_end(sent, connection_tokens(sent))
    assert kept == headers((b"Host", b"a"), (b"Accept", b"*/*"), (b"X-Forwarded-For", b"1.2.3.4"))


def test_hop_by_hop_list_is_complete() -> None:
    assert {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authorization",
        b"proxy-authenticate",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    } <= HOP_BY_HOP


def test_wants_upgrade_needs_the_upgrade_connection_token() -> None:
    with_token = head((b"Connection", b"Upgrade"), (b"Upgrade", b"websocket"), method=b"GET")
    assert wants_upgrade(with_token, connection_tokens(with_token.headers)) == b"websocket"
    without_token = head((b"Upgrade", b"websocket"), method=b"GET")
    assert wants_upgrade(without_token, connection_tokens(without_token.headers)) is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [(b"100-continue", True), (b"100-Continue ", True), (b"200-ok", False)],
)
def test_expects_continue(value: bytes, expected: bool) -> None:
    assert expects_continue(head((b"Expect", value))) is expected
    assert expects_continue(head()) is False


@pytest.mark.parametrize(
    "named",
    [b"Content-Length", b"content-length, keep-alive", b"Host", b"Transfer-Encoding"],
)
def test_connection_cannot_remove_framing_or_host(named: bytes) -> None:
    # Issue 19: `Connection: Content-Length` removed the length of a forwarded body, so the
    # body was read by the origin as a second request (smuggling). Framing and Host stay.
    sent = headers(
        (b"Host", b"a"),
        (b"Connection", named),
        (b"Content-Length", b"52"),
        (b"X-Kept", b"1"),
    )
    kept = end_to_end(sent, connection_tokens(sent))
    assert kept == headers((b"Host", b"a"), (b"Content-Length", b"52"), (b"X-Kept", b"1"))


@given(st.lists(st.sampled_from([b"content-length", b"host", b"x-a", b"keep-alive"]), max_size=4))
def test_framing_and_host_survive_any_connection_tokens(tokens: list[bytes]) -> None:
    sent = headers(
        (b"Host", b"a"),
        (b"Content-Length", b"3"),
        (b"Connection", b", ".join(tokens) or b"close"),
        (b"X-A", b"1"),
    )
    kept = [h[0] for h in end_to_end(sent, connection_tokens(sent))]
    assert kept[:2] == [b"host", b"content-length"]
    assert (b"x-a" in kept) is (b"x-a" not in tokens)


# ---- response_framing: how a final response's body is relayed to the client (RFC 9112 §6.3)


def _response(status: int = 200, chunked: bool = False, length: int | None = None) -> Any:
    return ResponseHead(status, b"OK", "1.1", [], True, chunked, length)


@pytest.mark.parametrize(
    ("status", "chunked", "length", "is_head", "http11", "expected"),
    [
        # (no_body, close_delimited, chunked, ends_by_close)
        (200, False, 10, False, True, (False, False, False, False)),  # length: as it came
        (200, True, None, False, True, (False, False, True, False)),  # chunked: re-chunked
        (200, False, None, False, True, (False, True, True, False)),  # close-delimited
        (200, True, None, False, False, (False, False, False, True)),  # HTTP/1.0: by close
        (200, False, None, False, False, (False, True, False, True)),
        (200, False, 10, False, False, (False, False, False, False)),
        (204, True, None, False, True, (True, False, False, False)),  # no body whatever it says
        (304, False, None, False, False, (True, False, False, False)),
        (200, True, None, True, True, (True, False, False, False)),  # a HEAD answer
    ],
)
def test_response_framing(
    status: int,
    chunked: bool,
    length: int | None,
    is_head: bool,
    http11: bool,
    expected: tuple[bool, bool, bool, bool],
) -> None:
    assert response_framing(_response(status, chunked, length), is_head, http11) == expected
