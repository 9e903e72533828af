"""http1.render: the request head sent upstream and the response head sent to the client."""

from __future__ import annotations

import pytest

from egressgate.http1.events import Header, ResponseHead
from egressgate.http1.render import (
    CONNECT_ESTABLISHED,
    LAST_CHUNK,
    VIA_VALUE,
    chunk,
    request_head,
    response_head,
)


def headers(*pairs: tuple[bytes, bytes]) -> list[Header]:
    return [(name.lower(), name, value) for name, value in pairs]


def lines(rendered: bytes) -> list[bytes]:
    assert rendered.endswith(b"\r\n\r\n")
    return rendered[:-4].split(b"\r\n")


def render_request(
    sent: list[Header],
    *,
    authority: bytes = b"example.com:8080",
    upgrade: bytes | None = None,
    chunked: bool = False,
    forwarded_for: bytes | None = None,
) -> list[bytes]:
    return lines(
        request_head(
            b"GET",
            b"/path?q=1",
            authority,
            sent,
            upgrade=upgrade,
            chunked=chunked,
            forwarded_for=forwarded_for,
        )
    )


def test_request_line_is_origin_form_http_1_1_with_host_from_the_uri_first() -> None:
    # RFC 9112 §3.2.2: a proxy forwarding an absolute-form request "MUST ignore the received
    # Host header field (if any) and instead replace it with the host information of the
    # request-target".
    rendered = render_request(headers((b"Host", b"spoofed.example"), (b"Accept", b"*/*")))
    assert rendered[0] == b"GET /path?q=1 HTTP/1.1"
    assert rendered[1] == b"Host: example.com:8080"
    assert b"Host: spoofed.example" not in rendered
    assert rendered[2] == b"Accept: */*"


def test_header_names_keep_their_spelling_and_order() -> None:
    rendered = render_request(headers((b"X-B", b"2"), (b"x-a", b"1"), (b"X-B", b"3")))
    assert rendered[2:5] == [b"X-B: 2", b"x-a: 1", b"X-B: 3"]


def test_via_is_added_once() -> None:
    # RFC 9110 §7.6.3: "A proxy MUST send an appropriate Via header field ... in each message
    # that it forwards."
    rendered = render_request(headers((b"Accept", b"*/*")))
    assert rendered.count(b"Via: " + VIA_VALUE) == 1


def test_existing_via_is_extended_not_duplicated() -> None:
    rendered = render_request(headers((b"Via", b"1.0 upstream-proxy")))
    via = [line for line in rendered if line.lower().startswith(b"via:")]
    assert via == [b"Via: 1.0 upstream-proxy, " + VIA_VALUE]


def test_x_forwarded_for_is_never_added_unless_asked() -> None:
    assert not any(
        line.lower().startswith(b"x-forwarded-for") for line in render_request(headers())
    )
    asked = render_request(headers(), forwarded_for=b"10.0.0.5")
    assert b"X-Forwarded-For: 10.0.0.5" in asked


def test_chunked_request_body_gets_its_transfer_encoding() -> None:
    assert b"Transfer-Encoding: chunked" in render_request(headers(), chunked=True)
    assert not any(b"Transfer-Encoding" in line for line in render_request(headers()))


def test_upgrade_request_carries_connection_upgrade_and_upgrade() -> None:
    rendered = render_request(headers(), upgrade=b"websocket")
    assert rendered[-2:] == [b"Connection: upgrade", b"Upgrade: websocket"]


def _response(
    *pairs: tuple[bytes, bytes], status: int = 200, reason: bytes = b"OK"
) -> ResponseHead:
    return ResponseHead(status, reason, "1.1", headers(*pairs), True, False, None)


@pytest.mark.parametrize(
    ("keep_alive", "chunked", "expected_tail"),
    [
        (True, False, [b"Via: " + VIA_VALUE]),
        (False, False, [b"Via: " + VIA_VALUE, b"Connection: close"]),
        (True, True, [b"Via: " + VIA_VALUE, b"Transfer-Encoding: chunked"]),
    ],
)
def test_response_head_framing_and_connection(
    keep_alive: bool, chunked: bool, expected_tail: list[bytes]
) -> None:
    head = _response((b"Content-Type", b"text/plain"), status=404, reason=b"Not Found")
    rendered = lines(response_head(head, head.headers, keep_alive=keep_alive, chunked=chunked))
    assert rendered[0] == b"HTTP/1.1 404 Not Found"
    assert rendered[1] == b"Content-Type: text/plain"
    assert rendered[2:] == expected_tail


def test_response_head_extends_an_existing_via() -> None:
    head = _response((b"Via", b"1.1 origin-cache"))
    rendered = lines(response_head(head, head.headers, keep_alive=True, chunked=False))
    assert rendered[1:] == [b"Via: 1.1 origin-cache, " + VIA_VALUE]


def test_response_head_for_an_upgrade() -> None:
    head = _response(status=101, reason=b"Switching Protocols")
    rendered = lines(response_head(head, [], keep_alive=True, chunked=False, upgrade=b"websocket"))
    assert rendered[-2:] == [b"Connection: upgrade", b"Upgrade: websocket"]


@pytest.mark.parametrize(
    ("data", "expected"),
    [(b"hello", b"5\r\nhello\r\n"), (b"x" * 255, b"ff\r\n" + b"x" * 255 + b"\r\n")],
)
def test_chunk_framing(data: bytes, expected: bytes) -> None:
    # RFC 9112 §7.1: chunk = chunk-size CRLF chunk-data CRLF, chunk-size in hex
    assert chunk(data) == expected


def test_fixed_messages() -> None:
    assert LAST_CHUNK == b"0\r\n\r\n"
    assert CONNECT_ESTABLISHED.startswith(b"HTTP/1.1 200 ")
    assert CONNECT_ESTABLISHED.endswith(b"\r\n\r\n")


# ---- issue 19: the proxy writes the framing of what it forwards, never the sender's lines


def test_request_head_writes_its_own_content_length() -> None:
    sent = headers((b"Content-Length", b"999"), (b"Accept", b"*/*"))
    rendered = lines(
        request_head(
            b"POST",
            b"/",
            b"a.test",
            sent,
            upgrade=None,
            chunked=False,
            forwarded_for=None,
            content_length=52,
        )
    )
    assert [line for line in rendered if line.lower().startswith(b"content-length")] == [
        b"Content-Length: 52"
    ]


def test_request_head_without_a_body_has_no_length_and_chunked_has_no_length() -> None:
    sent = headers((b"Content-Length", b"5"))
    assert not any(b"Content-Length" in line for line in render_request(sent))
    chunked = render_request(sent, chunked=True)
    assert not any(b"Content-Length" in line for line in chunked)
    assert b"Transfer-Encoding: chunked" in chunked


def test_response_head_writes_its_own_content_length() -> None:
    head = _response((b"Connection", b"Content-Length"), (b"Content-Length", b"7"))
    kept = [h for h in head.headers if h[0] != b"connection"]
    rendered = lines(response_head(head, kept, keep_alive=True, chunked=False, content_length=7))
    assert rendered[1:] == [b"Via: " + VIA_VALUE, b"Content-Length: 7"]
    rechunked = lines(response_head(head, kept, keep_alive=True, chunked=True))
    assert rechunked[1:] == [b"Via: " + VIA_VALUE, b"Transfer-Encoding: chunked"]
