"""RequestParser / ResponseParser: sans-IO, bytes in → events out, whatever the split.

Events: RequestHead / ResponseHead, body `bytes`, END, TunnelStart(rest). Headers come as
(lowercased name, name as sent, value). A CONNECT (or an accepted Upgrade) ends HTTP parsing:
the caller stops feeding the parser after TunnelStart and hands the rest to the tunnel.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from egressgate.errors import ProtocolError, Reason
from egressgate.http1.events import END, Event, RequestHead, ResponseHead, TunnelStart
from egressgate.http1.parser import RequestParser, ResponseParser

LINE_LIMIT = 8192
HEAD_LIMIT = 32768


RESPONSE_HEAD_LIMIT = 65536
RESPONSE_HEADERS_LIMIT = 256


def request_parser(line: int = LINE_LIMIT, head: int = HEAD_LIMIT) -> RequestParser:
    return RequestParser(line, head)


def response_parser(
    head: int = RESPONSE_HEAD_LIMIT, count: int = RESPONSE_HEADERS_LIMIT
) -> ResponseParser:
    return ResponseParser(head, count)


def coalesce(events: Iterable[Event]) -> list[Event]:
    """Adjacent body chunks joined: how a body is chunked depends on the reads, nothing else."""
    out: list[Event] = []
    for event in events:
        if isinstance(event, bytes) and out and isinstance(out[-1], bytes):
            out[-1] = out[-1] + event
        else:
            out.append(event)
    return out


def feed_pieces(parser: RequestParser | ResponseParser, pieces: Iterable[bytes]) -> list[Event]:
    events: list[Event] = []
    for piece in pieces:
        events += parser.feed(piece)
    return coalesce(events)


def split_at(data: bytes, cuts: Iterable[int]) -> list[bytes]:
    points = [0, *sorted(set(cuts)), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(points)]


def refusal(
    data: bytes, *, step: int | None = None, line: int = LINE_LIMIT, head: int = HEAD_LIMIT
) -> Reason:
    """The reason the parser refuses `data` with, fed whole or `step` bytes at a time."""
    parser = request_parser(line, head)
    pieces = [data] if step is None else [data[i : i + step] for i in range(0, len(data), step)]
    with pytest.raises(ProtocolError) as caught:
        feed_pieces(parser, pieces)
    return caught.value.reason


GET = b"GET http://example.com/a?b=c HTTP/1.1\r\nHost: example.com\r\nX-Trace: 1\r\n\r\n"
POST_LENGTH = (
    b"POST http://example.com/submit HTTP/1.1\r\nHost: example.com\r\n"
    b"Content-Length: 11\r\n\r\nhello world"
)
POST_CHUNKED = (
    b"POST http://example.com/up HTTP/1.1\r\nHost: example.com\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\n"
)
PIPELINE = GET + POST_LENGTH + POST_CHUNKED


# ---------------------------------------------------------------------------------------------
# Requests
# ---------------------------------------------------------------------------------------------


def test_get_produces_head_and_end() -> None:
    events = request_parser().feed(GET)
    assert events == [
        RequestHead(
            method=b"GET",
            target=b"http://example.com/a?b=c",
            version="1.1",
            headers=[(b"host", b"Host", b"example.com"), (b"x-trace", b"X-Trace", b"1")],
            keep_alive=True,
            head_bytes=len(GET),
        ),
        END,
    ]


def test_header_names_keep_their_spelling_next_to_the_lowercased_name() -> None:
    (head, _) = request_parser().feed(
        b"GET http://a/ HTTP/1.1\r\nX-MiXeD-Case: Value As Sent\r\n\r\n"
    )
    assert isinstance(head, RequestHead)
    assert head.headers == [(b"x-mixed-case", b"X-MiXeD-Case", b"Value As Sent")]


def test_repeated_headers_are_all_kept_in_order() -> None:
    data = b"GET http://a/ HTTP/1.1\r\nAccept: a\r\nCookie: x=1\r\nAccept: b\r\n\r\n"
    head = request_parser().feed(data)[0]
    assert isinstance(head, RequestHead)
    assert [(n, v) for n, _, v in head.headers] == [
        (b"accept", b"a"),
        (b"cookie", b"x=1"),
        (b"accept", b"b"),
    ]


@pytest.mark.parametrize(
    ("request_head", "keep_alive"),
    [
        (b"GET http://a/ HTTP/1.1\r\n\r\n", True),  # RFC 9112 §9.3: 1.1 persists by default
        (b"GET http://a/ HTTP/1.1\r\nConnection: close\r\n\r\n", False),
        (b"GET http://a/ HTTP/1.0\r\n\r\n", False),  # 1.0 closes by default
        (b"GET http://a/ HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", True),
    ],
)
def test_keep_alive_follows_version_and_connection(request_head: bytes, keep_alive: bool) -> None:
    head = request_parser().feed(request_head)[0]
    assert isinstance(head, RequestHead)
    assert head.keep_alive is keep_alive
    assert head.version == request_head.split(b"\r\n")[0][-3:].decode()


def test_content_length_body_is_delivered_then_end() -> None:
    events = feed_pieces(request_parser(), [POST_LENGTH])
    assert events[1:] == [b"hello world", END]


def test_chunked_body_is_delivered_decoded() -> None:
    events = feed_pieces(request_parser(), [POST_CHUNKED])
    assert events[1:] == [b"hello world", END]


def test_pipelined_requests_produce_events_in_order() -> None:
    events = feed_pieces(request_parser(), [PIPELINE])
    kinds = [e.method if isinstance(e, RequestHead) else e for e in events]
    assert kinds == [b"GET", END, b"POST", b"hello world", END, b"POST", b"hello world", END]


def test_head_bytes_is_the_size_of_each_head_even_when_pipelined() -> None:
    heads = [e for e in feed_pieces(request_parser(), [PIPELINE]) if isinstance(e, RequestHead)]
    assert [h.head_bytes for h in heads] == [
        len(GET),
        POST_LENGTH.index(b"\r\n\r\n") + 4,
        POST_CHUNKED.index(b"\r\n\r\n") + 4,
    ]


def test_pipelined_requests_split_at_every_byte_give_the_same_events() -> None:
    whole = feed_pieces(request_parser(), [PIPELINE])
    byte_by_byte = feed_pieces(
        request_parser(), [PIPELINE[i : i + 1] for i in range(len(PIPELINE))]
    )
    assert byte_by_byte == whole


@given(st.lists(st.integers(0, len(PIPELINE)), max_size=12))
def test_pipelined_requests_split_anywhere_give_the_same_events(cuts: list[int]) -> None:
    whole = feed_pieces(request_parser(), [PIPELINE])
    assert feed_pieces(request_parser(), split_at(PIPELINE, cuts)) == whole


# ---------------------------------------------------------------------------------------------
# CONNECT and Upgrade: TunnelStart carries exactly the bytes after the head
# ---------------------------------------------------------------------------------------------

CONNECT = b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n"
TLS_BYTES = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(64))


def _tunnel(data: bytes, cut: int) -> tuple[list[Event], bytes]:
    """Feed data[:cut] then data[cut:] until TunnelStart; then (events, all bytes after)."""
    parser = request_parser()
    events: list[Event] = []
    pieces = split_at(data, [cut])
    for index, piece in enumerate(pieces):
        events += parser.feed(piece)
        start = events[-1] if events else None
        if isinstance(start, TunnelStart):
            return events, start.rest + b"".join(pieces[index + 1 :])
    raise AssertionError(f"no TunnelStart in {events!r}")


def test_connect_produces_head_end_and_tunnel_start_with_the_rest() -> None:
    events = request_parser().feed(CONNECT + TLS_BYTES)
    assert len(events) == 3
    head, end, start = events
    assert isinstance(head, RequestHead)
    assert (head.method, head.target) == (b"CONNECT", b"example.com:443")
    assert end is END
    assert start == TunnelStart(TLS_BYTES)


def test_connect_without_following_bytes_has_empty_rest() -> None:
    assert request_parser().feed(CONNECT)[-1] == TunnelStart(b"")


@pytest.mark.parametrize("cut", range(1, len(CONNECT) + len(TLS_BYTES)))
def test_connect_split_anywhere_hands_over_exactly_the_bytes_after_the_head(cut: int) -> None:
    events, rest = _tunnel(CONNECT + TLS_BYTES, cut)
    assert [type(e) for e in events] == [RequestHead, type(END), TunnelStart]
    assert rest == TLS_BYTES


def test_upgrade_request_ends_http_parsing_with_the_rest() -> None:
    data = (
        b"GET http://example.com/ws HTTP/1.1\r\nHost: example.com\r\n"
        b"Connection: Upgrade\r\nUpgrade: websocket\r\n\r\n\x81\x05hello"
    )
    events = request_parser().feed(data)
    assert events[-1] == TunnelStart(b"\x81\x05hello")


# ---------------------------------------------------------------------------------------------
# Limits: request line (414), header block (431)
# ---------------------------------------------------------------------------------------------


def _with_target_length(length: int) -> bytes:
    prefix = b"http://example.com/"
    return b"GET " + prefix + b"a" * (length - len(prefix)) + b" HTTP/1.1\r\n\r\n"


@pytest.mark.parametrize("step", [None, 1, 7])
def test_request_target_at_the_limit_is_accepted(step: int | None) -> None:
    data = _with_target_length(100)
    parser = request_parser(line=100)
    pieces = [data] if step is None else [data[i : i + step] for i in range(0, len(data), step)]
    assert feed_pieces(parser, pieces)[-1] is END


@pytest.mark.parametrize("step", [None, 1, 7])
def test_request_target_over_the_limit_is_uri_too_long(step: int | None) -> None:
    # RFC 9112 §3: "A server that receives a request-target longer than any URI it wishes to
    # parse MUST respond with a 414 (URI Too Long) status code."
    assert refusal(_with_target_length(101), step=step, line=100) is Reason.URI_TOO_LONG


def _with_head_size(size: int) -> bytes:
    start = b"GET http://example.com/ HTTP/1.1\r\nX-Pad: "
    return start + b"p" * (size - len(start) - 4) + b"\r\n\r\n"


@pytest.mark.parametrize("step", [None, 1, 13])
def test_head_at_the_limit_is_accepted(step: int | None) -> None:
    data = _with_head_size(500)
    assert len(data) == 500
    parser = request_parser(head=500)
    pieces = [data] if step is None else [data[i : i + step] for i in range(0, len(data), step)]
    events = feed_pieces(parser, pieces)
    assert isinstance(events[0], RequestHead)
    assert events[0].head_bytes == 500


@pytest.mark.parametrize("step", [None, 1, 13])
def test_head_over_the_limit_is_headers_too_large(step: int | None) -> None:
    # RFC 6585 §5: 431 "the server is unwilling to process the request because its header
    # fields are too large".
    assert refusal(_with_head_size(501), step=step, head=500) is Reason.HEADERS_TOO_LARGE


def test_many_small_headers_over_the_limit_are_headers_too_large() -> None:
    data = b"GET http://a/ HTTP/1.1\r\n" + b"X-A: b\r\n" * 100 + b"\r\n"
    assert refusal(data, head=500) is Reason.HEADERS_TOO_LARGE


def test_an_incomplete_head_is_refused_as_soon_as_it_passes_the_limit() -> None:
    parser = request_parser(head=500)
    parser.feed(b"GET http://a/ HTTP/1.1\r\nX-Pad: ")
    with pytest.raises(ProtocolError) as caught:
        parser.feed(b"p" * 600)  # no end of head in sight
    assert caught.value.reason is Reason.HEADERS_TOO_LARGE


def test_the_limit_applies_to_each_pipelined_head_not_to_the_connection() -> None:
    small = b"GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n"
    events = feed_pieces(request_parser(head=len(small)), [small * 20])
    assert events.count(END) == 20
    with pytest.raises(ProtocolError) as caught:
        feed_pieces(request_parser(head=len(small)), [small + _with_head_size(len(small) + 1)])
    assert caught.value.reason is Reason.HEADERS_TOO_LARGE


def test_body_bytes_do_not_count_towards_the_header_limit() -> None:
    data = b"POST http://a/ HTTP/1.1\r\nContent-Length: 1000\r\n\r\n" + b"x" * 1000
    assert feed_pieces(request_parser(head=100), [data])[-1] is END


# ---------------------------------------------------------------------------------------------
# Malformed requests
# ---------------------------------------------------------------------------------------------

MALFORMED: list[tuple[bytes, Reason]] = [
    (b"GARBAGE\r\n\r\n", Reason.BAD_REQUEST),
    (b"get http://a/ HTTP/1.1\r\n\r\n", Reason.BAD_REQUEST),  # methods are case-sensitive
    (b"GET http://a/ HTTP/9.9\r\n\r\n", Reason.BAD_REQUEST),
    (b"GET http://a/ HTTP/1.1\n\n", Reason.BAD_REQUEST),  # bare LF line ends
    (b"GET http://a/ HTTP/1.1\r\nNo Colon\r\n\r\n", Reason.BAD_REQUEST),
    (b"GET http://a/ HTTP/1.1\r\nName : v\r\n\r\n", Reason.BAD_REQUEST),  # RFC 9112 §5.1
    (b"GET http://a/ HTTP/1.1\r\nX\x00: y\r\n\r\n", Reason.BAD_REQUEST),
    (b"GET http://a/ HTTP/1.1\r\nX: a\x00b\r\n\r\n", Reason.BAD_REQUEST),
    # framing attacks llhttp already refuses come out as smuggling, not plain bad requests
    (b"GET http://a/ HTTP/1.1\r\nX: a\r\n b\r\n\r\n", Reason.SMUGGLING),  # obs-fold
    (b"GET http://a/ HTTP/1.1\r\nX: a\rb\r\n\r\n", Reason.SMUGGLING),  # bare CR
    (
        b"POST http://a/ HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
        Reason.SMUGGLING,
    ),
    (
        b"POST http://a/ HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        Reason.SMUGGLING,
    ),
    (b"POST http://a/ HTTP/1.1\r\nContent-Length: 1x\r\n\r\n", Reason.SMUGGLING),
    (
        b"POST http://a/ HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        Reason.SMUGGLING,
    ),
]


@pytest.mark.parametrize(("data", "reason"), MALFORMED, ids=[repr(d[:48]) for d, _ in MALFORMED])
def test_malformed_requests_are_refused(data: bytes, reason: Reason) -> None:
    assert refusal(data) is reason
    assert refusal(data, step=1) is reason


@given(st.binary(max_size=300))
def test_arbitrary_bytes_give_events_or_protocol_error(data: bytes) -> None:
    try:
        events = request_parser(200, 400).feed(data)
    except ProtocolError:
        return
    assert all(isinstance(e, RequestHead | TunnelStart | bytes) or e is END for e in events)


# ---------------------------------------------------------------------------------------------
# Responses
# ---------------------------------------------------------------------------------------------


def test_response_with_content_length() -> None:
    events = feed_pieces(response_parser(), [b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"])
    assert events == [
        ResponseHead(
            200, b"OK", "1.1", [(b"content-length", b"Content-Length", b"5")], True, False, 5
        ),
        b"hello",
        END,
    ]


@pytest.mark.parametrize(
    ("coding", "chunked"),
    [
        (b"chunked", True),
        (b"Chunked", True),
        (b"gzip, chunked", True),  # RFC 9112 §6.3: chunked as the final coding frames it
        (b"xchunked", False),  # not the chunked coding: the body runs to the close
        (b"chunked, gzip", False),
        (b"identity", False),
    ],
)
def test_response_is_chunked_only_when_the_final_coding_is_chunked(
    coding: bytes, chunked: bool
) -> None:
    data = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: " + coding + b"\r\n\r\n"
    head = response_parser().feed(data)[0]
    assert isinstance(head, ResponseHead)
    assert head.chunked is chunked
    assert head.content_length is None


def test_chunked_response_body_is_decoded() -> None:
    data = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    assert feed_pieces(response_parser(), [data])[1:] == [b"hello", END]


def test_close_delimited_response_has_no_end_until_the_close() -> None:
    events = feed_pieces(response_parser(), [b"HTTP/1.0 200 OK\r\n\r\nuntil close"])
    head = events[0]
    assert isinstance(head, ResponseHead)
    assert (head.keep_alive, head.chunked, head.content_length) == (False, False, None)
    assert events[1:] == [b"until close"]


def test_switching_protocols_response_ends_with_tunnel_start() -> None:
    data = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
    events = response_parser().feed(data + b"\x81\x00")
    assert events[-1] == TunnelStart(b"\x81\x00")


def test_response_split_at_every_byte_gives_the_same_events() -> None:
    data = b"HTTP/1.1 200 Fine\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    whole = feed_pieces(response_parser(), [data])
    assert feed_pieces(response_parser(), [data[i : i + 1] for i in range(len(data))]) == whole


@pytest.mark.parametrize(
    "data",
    [
        b"garbage\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
    ],
)
def test_invalid_response_is_upstream_bad_response(data: bytes) -> None:
    with pytest.raises(ProtocolError) as caught:
        response_parser().feed(data)
    assert caught.value.reason is Reason.UPSTREAM_BAD_RESPONSE


# ---------------------------------------------------------------------------------------------
# Issue 19: trailers are never merged into a head; the response head is bounded
# ---------------------------------------------------------------------------------------------

CHUNKED_POST_WITH_TRAILERS = (
    b"POST http://a.test/ HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5\r\nhello\r\n0\r\nX-Trailer: 1\r\nHost: evil.test\r\n\r\n"
)


@pytest.mark.parametrize("step", [None, 1, 7])
def test_request_trailers_are_not_merged_into_the_head(step: int | None) -> None:
    data = CHUNKED_POST_WITH_TRAILERS
    pieces = [data] if step is None else [data[i : i + step] for i in range(0, len(data), step)]
    events = feed_pieces(request_parser(), pieces)
    head = events[0]
    assert isinstance(head, RequestHead)
    assert [h[0] for h in head.headers] == [b"host", b"transfer-encoding"]
    assert events[1:] == [b"hello", END]


def test_request_trailers_count_against_the_head_limit() -> None:
    trailer = b"X-T: " + b"a" * 300 + b"\r\n"
    data = CHUNKED_POST_WITH_TRAILERS[:-2] + trailer * 10 + b"\r\n"
    assert refusal(data, head=1024) is Reason.HEADERS_TOO_LARGE


def test_response_trailers_are_not_merged_into_the_head() -> None:
    data = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n0\r\nContent-Type: evil\r\nX-T: 1\r\n\r\n"
    )
    events = response_parser().feed(data)
    head = events[0]
    assert isinstance(head, ResponseHead)
    assert [h[0] for h in head.headers] == [b"transfer-encoding"]
    assert events[1:] == [b"abc", END]


def _too_large(parser: ResponseParser, pieces: Iterable[bytes]) -> ProtocolError:
    with pytest.raises(ProtocolError) as caught:
        feed_pieces(parser, pieces)
    assert caught.value.reason is Reason.UPSTREAM_BAD_RESPONSE
    return caught.value


@pytest.mark.parametrize("step", [None, 1, 100, 4096])
def test_response_head_over_the_byte_limit_is_refused(step: int | None) -> None:
    data = b"HTTP/1.1 200 OK\r\n" + (b"X-Filler: " + b"f" * 90 + b"\r\n") * 20 + b"\r\n"
    pieces = [data] if step is None else [data[i : i + step] for i in range(0, len(data), step)]
    error = _too_large(response_parser(head=1024), pieces)
    assert "1024 bytes" in error.detail


def test_one_endless_response_header_line_is_refused() -> None:
    parser = response_parser(head=4096)
    parser.feed(b"HTTP/1.1 200 OK\r\nX-Endless: ")
    _too_large(parser, [b"x" * 1000] * 5)


def test_response_with_too_many_header_fields_is_refused() -> None:
    data = b"HTTP/1.1 200 OK\r\n" + b"A: 1\r\n" * 11 + b"\r\n"
    error = _too_large(response_parser(count=10), [data])
    assert "more than 10 header fields" in error.detail
    ok = b"HTTP/1.1 200 OK\r\n" + b"A: 1\r\n" * 9 + b"Content-Length: 0\r\n\r\n"
    assert feed_pieces(response_parser(count=10), [ok])[-1] is END


def test_response_limits_apply_to_each_response_on_a_connection() -> None:
    one = b"HTTP/1.1 200 OK\r\n" + b"A: 1\r\n" * 5 + b"Content-Length: 2\r\n\r\nok"
    parser = response_parser(head=200, count=8)
    for _ in range(50):  # the counts restart with every response
        assert parser.feed(one)[-1] is END


def test_at_boundary_says_where_a_head_or_a_message_ends() -> None:
    """A secret scan on the transparent relay releases held-back bytes only at a boundary."""
    parser = RequestParser(8192, 32768)
    assert parser.at_boundary
    parser.feed(b"GET / HTTP/1.1\r\nHo")
    assert not parser.at_boundary  # inside a head
    parser.feed(b"st: a\r\n\r\n")
    assert parser.at_boundary  # a whole message (no body)
    parser.feed(b"POST /u HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\n")
    assert parser.at_boundary  # a head ends, no body byte yet
    parser.feed(b"ab")
    assert not parser.at_boundary  # inside a body
    parser.feed(b"cdGET / HTTP/1.1\r\n")
    assert not parser.at_boundary  # a message ended, the next head has begun
