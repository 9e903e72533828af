"""Sans-IO HTTP/1.x parsers over httptools (llhttp): feed(bytes) → list of events.

No sockets, no asyncio, no policy, no logging. Enforces the size limits of the request line and
header block (414 / 431) and turns llhttp errors into ProtocolError(BAD_REQUEST). The smuggling
rules are NOT delegated to llhttp's defaults: `http1/semantics.py` checks every head again.

A CONNECT request, or a request/response that upgrades the protocol, ends HTTP parsing: the bytes
after the head come out as TunnelStart(rest).
"""

from __future__ import annotations

import httptools

from egressgate.errors import ProtocolError, Reason
from egressgate.http1.events import END, Event, Header, RequestHead, ResponseHead, TunnelStart


class RequestParser:
    """Parses the client side: requests, possibly pipelined, possibly with bodies."""

    __slots__ = (
        "_boundary",
        "_events",
        "_head_seen",
        "_header_bytes",
        "_headers",
        "_in_head",
        "_max_head",
        "_max_line",
        "_parser",
        "_url",
        "_url_len",
    )

    def __init__(self, max_request_line_bytes: int, max_header_bytes: int) -> None:
        self._parser = httptools.HttpRequestParser(self)
        self._max_line = max_request_line_bytes
        self._max_head = max_header_bytes
        self._events: list[Event] = []
        self._headers: list[Header] = []
        self._url = b""
        self._url_len = 0
        self._header_bytes = 0  # header lines of the current head, counted by on_header
        self._in_head = True  # between messages or inside a head
        self._head_seen = 0  # bytes of the current head received so far
        self._boundary = True  # see at_boundary

    @property
    def at_boundary(self) -> bool:
        """The bytes fed so far end where a head or a whole message ends (no partial head, no
        body byte after a head): a relay that holds back bytes (a secret scan) may release
        them without splitting anything it still has to judge."""
        return self._boundary

    def feed(self, data: bytes) -> list[Event]:
        """Parse `data`; returns the events completed by it. Raises ProtocolError."""
        events = self._events = []
        if self._in_head:
            self._head_seen += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            offset = upgrade.args[0] if upgrade.args else len(data)
            events.append(TunnelStart(bytes(data[offset:])))
        except httptools.HttpParserError as exc:
            # Fix (integration tests, test_refusals.py): a ProtocolError raised in one of our
            # callbacks (on_url's 414, on_header's 431) reaches us only as httptools'
            # "`on_url` callback error", with ours as its __context__: re-raise ours, or every
            # limit would turn into a 400 bad-request.
            if isinstance(exc.__context__, ProtocolError):
                raise exc.__context__ from None
            if self._in_head and self._head_seen > self._max_head:
                raise ProtocolError(Reason.HEADERS_TOO_LARGE, "header block too large") from None
            raise ProtocolError(_reason_for_llhttp_error(str(exc)), str(exc)) from None
        if self._in_head and self._head_seen > self._max_head:
            raise ProtocolError(
                Reason.HEADERS_TOO_LARGE, f"header block exceeds {self._max_head} bytes"
            )
        return events

    # ---- httptools callbacks
    def on_message_begin(self) -> None:
        self._boundary = False
        self._in_head = True
        self._headers = []
        self._url = b""
        self._url_len = 0
        self._header_bytes = 0

    def on_url(self, url: bytes) -> None:
        self._url_len += len(url)
        if self._url_len > self._max_line:
            raise ProtocolError(
                Reason.URI_TOO_LONG, f"request target exceeds {self._max_line} bytes"
            )
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        # Fix (integration tests, test_refusals.py): `feed` only measured a head that was still
        # incomplete after a whole feed, so a head that arrived complete in one read was never
        # checked against max_header_bytes. Count the header lines themselves as well.
        self._header_bytes += len(name) + len(value) + 4  # "name: value\r\n"
        # _head_size() written out: this runs for every header line of every request.
        if (
            len(self._parser.get_method()) + self._url_len + 12 + self._header_bytes
            > self._max_head
        ):
            self._check_head_size(self._head_size())
        if self._in_head:
            self._headers.append((name.lower(), name, value))
        # else: a trailer field of a chunked body (llhttp reports trailers through on_header
        # too). Security fix (issue 19): trailers were appended to the head's header list, so
        # a trailer `Host: evil` reached the forwarded head. They are discarded (RFC 9110
        # §6.5.1 lets a proxy do so); their bytes still count against max_header_bytes.

    def _head_size(self) -> int:
        """The head parsed so far, as written canonically: "METHOD SP target SP HTTP/x.y CRLF"
        plus the header lines (the final CRLF is added by on_headers_complete).

        Fix (unit tests, test_parser.py): head_bytes used to be `_head_seen`, the size of the
        whole *feed* (bodies and later pipelined requests included, and 0 for the second head
        of a read), so it changed with the way the stream was split; and the request line did
        not count towards max_header_bytes when a head arrived in one read, although it did
        when the head was split. This size is the same however the bytes arrive.
        """
        return len(self._parser.get_method()) + self._url_len + 12 + self._header_bytes

    def _check_head_size(self, size: int) -> None:
        if size > self._max_head:
            raise ProtocolError(
                Reason.HEADERS_TOO_LARGE, f"header block exceeds {self._max_head} bytes"
            )

    def on_headers_complete(self) -> None:
        parser = self._parser
        head_bytes = self._head_size() + 2
        self._check_head_size(head_bytes)
        self._events.append(
            RequestHead(
                parser.get_method(),
                self._url,
                parser.get_http_version(),
                self._headers,
                parser.should_keep_alive(),
                head_bytes,
            )
        )
        self._in_head = False
        self._head_seen = 0
        self._boundary = True

    def on_body(self, body: bytes) -> None:
        self._boundary = False
        self._events.append(body)

    def on_message_complete(self) -> None:
        self._events.append(END)
        self._in_head = True
        self._head_seen = 0
        self._boundary = True


# Fix (integration tests, test_refusals.py): llhttp refuses ambiguous framing (CL + TE, duplicate
# or invalid Content-Length, bad chunk sizes, obs-fold, bare CR/LF in a header value) before
# `semantics.request_framing` ever sees the head, so these all came out as "bad-request". They
# are the framing attacks Reason.SMUGGLING names: classify them by llhttp's error text.
_SMUGGLING_MARKERS = ("content-length", "transfer-encoding", "chunk", "after header value")


def _reason_for_llhttp_error(message: str) -> Reason:
    lowered = message.lower()
    if any(marker in lowered for marker in _SMUGGLING_MARKERS):
        return Reason.SMUGGLING
    return Reason.BAD_REQUEST


class ResponseParser:
    """Parses the upstream side: one response at a time on a connection.

    Security fix (issue 19): the response head was unbounded (an origin streaming header lines
    forever grew the proxy by gigabytes). It is bounded like the request head: at most
    `max_head_bytes` bytes (status line and header lines, trailers included) and
    `max_headers` header fields, else ProtocolError(UPSTREAM_BAD_RESPONSE).
    """

    __slots__ = (
        "_count",
        "_events",
        "_field_bytes",
        "_head_bytes",
        "_headers",
        "_in_head",
        "_max_head",
        "_max_headers",
        "_parser",
        "_reason",
    )

    def __init__(self, max_head_bytes: int, max_headers: int) -> None:
        self._parser = httptools.HttpResponseParser(self)
        self._max_head = max_head_bytes
        self._max_headers = max_headers
        self._events: list[Event] = []
        self._headers: list[Header] = []
        self._reason = b""
        self._in_head = True  # between messages or inside a head
        self._head_bytes = 0  # bytes received while in the head (an upper bound of its size)
        self._count = 0  # header fields (and trailer fields) of the current message
        self._field_bytes = 0  # their size as "name: value\r\n" lines

    def feed(self, data: bytes) -> list[Event]:
        events = self._events = []
        if self._in_head:
            # Counted before parsing: httptools buffers a header line that has not ended yet,
            # so one endless line never reaches on_header.
            self._head_bytes += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            offset = upgrade.args[0] if upgrade.args else len(data)
            events.append(TunnelStart(bytes(data[offset:])))
        except httptools.HttpParserError as exc:
            if isinstance(exc.__context__, ProtocolError):
                raise exc.__context__ from None
            raise ProtocolError(Reason.UPSTREAM_BAD_RESPONSE, str(exc)) from None
        if self._in_head and self._head_bytes > self._max_head:
            raise self._too_large()
        return events

    def _too_large(self) -> ProtocolError:
        return ProtocolError(
            Reason.UPSTREAM_BAD_RESPONSE, f"response head exceeds {self._max_head} bytes"
        )

    def set_head_request(self) -> None:
        """The next response answers a HEAD: it has no body whatever its headers say."""
        # llhttp learns this through on_headers_complete's return value, which httptools does
        # not expose; the caller ends the message itself after the head (see forward.py).

    def on_message_begin(self) -> None:
        self._headers = []
        self._reason = b""
        self._count = 0
        self._field_bytes = 0

    def on_status(self, reason: bytes) -> None:
        self._reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        # A head that arrives whole in one read is measured here, not by `feed`. One test on
        # the common path (this runs for every header line of every response).
        count = self._count = self._count + 1
        size = self._field_bytes = self._field_bytes + len(name) + len(value) + 4
        if count > self._max_headers or size > self._max_head:
            if count > self._max_headers:
                raise ProtocolError(
                    Reason.UPSTREAM_BAD_RESPONSE,
                    f"response has more than {self._max_headers} header fields",
                )
            raise self._too_large()
        if self._in_head:
            self._headers.append((name.lower(), name, value))
        # else: a trailer field, discarded: never merged into the head relayed to the client.

    def on_headers_complete(self) -> None:
        parser = self._parser
        chunked = False
        length: int | None = None
        for lname, _, value in self._headers:
            if lname == b"content-length":
                length = int(value)
            elif lname == b"transfer-encoding":
                # Fix (unit tests, test_parser.py): the *final coding* must be chunked (RFC 9112
                # §6.3); endswith() also took "xchunked", which llhttp reads close-delimited, so
                # the head said chunked while the body was not (a normal close became a reset).
                chunked = value.rsplit(b",", 1)[-1].strip().lower() == b"chunked"
        self._events.append(
            ResponseHead(
                parser.get_status_code(),
                self._reason,
                parser.get_http_version(),
                self._headers,
                parser.should_keep_alive(),
                chunked,
                None if chunked else length,
            )
        )
        self._in_head = False
        self._head_bytes = 0

    def on_body(self, body: bytes) -> None:
        self._events.append(body)

    def on_message_complete(self) -> None:
        self._events.append(END)
        self._in_head = True
        self._head_bytes = 0
