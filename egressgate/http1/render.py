"""Bytes out: upstream request heads and client response heads. Pure.

Fixed strings (Via) are built once at import; status lines once per (status, reason) seen.
"""

from __future__ import annotations

from egressgate.http1.events import Header, ResponseHead

VIA_VALUE = b"1.1 egressgate"


def request_head(
    method: bytes,
    path: bytes,
    authority: bytes,
    headers: list[Header],
    *,
    upgrade: bytes | None,
    chunked: bool,
    forwarded_for: bytes | None,
    content_length: int | None = None,
) -> bytes:
    """An HTTP/1.1 request head for the origin: origin-form target, Host from the URI, and
    the framing the proxy forwards: `Transfer-Encoding: chunked` if `chunked`, else
    `Content-Length: content_length` unless that is None (no body, no length sent).

    The client's own Host and Content-Length lines are never copied (security fix, issue 19):
    the framing written is the framing of the bytes that follow, whatever the client's
    Connection header named."""
    parts = [method, b" ", path, b" HTTP/1.1\r\nHost: ", authority, b"\r\n"]
    via_seen = False
    for lname, name, value in headers:
        if lname in _WRITTEN_BY_US:
            continue
        if lname == b"via":
            value = value + b", " + VIA_VALUE
            via_seen = True
        parts += (name, b": ", value, b"\r\n")
    if not via_seen:
        parts.append(b"Via: " + VIA_VALUE + b"\r\n")
    if forwarded_for is not None:
        parts += (b"X-Forwarded-For: ", forwarded_for, b"\r\n")
    if chunked:
        parts.append(b"Transfer-Encoding: chunked\r\n")
    elif content_length is not None:
        parts.append(b"Content-Length: %d\r\n" % content_length)
    if upgrade is not None:
        parts += (b"Connection: upgrade\r\nUpgrade: ", upgrade, b"\r\n\r\n")
    else:
        parts.append(b"\r\n")
    return b"".join(parts)


# Header lines of the request that the proxy writes itself instead of copying.
_WRITTEN_BY_US = frozenset({b"host", b"content-length"})


def response_head(
    head: ResponseHead,
    headers: list[Header],
    *,
    keep_alive: bool,
    chunked: bool,
    upgrade: bytes | None = None,
    content_length: int | None = None,
) -> bytes:
    """The response head for the client, with our own framing and connection headers:
    `Transfer-Encoding: chunked` if `chunked`, else `Content-Length: content_length` unless
    that is None. The origin's Content-Length lines are never copied (security fix, issue 19:
    the framing written is that of the body relayed)."""
    parts = [_status_line(head.status, head.reason)]
    via_seen = False
    for lname, name, value in headers:
        if lname == b"content-length":
            continue
        if lname == b"via":
            value = value + b", " + VIA_VALUE
            via_seen = True
        parts += (name, b": ", value, b"\r\n")
    if not via_seen:
        parts.append(b"Via: " + VIA_VALUE + b"\r\n")
    if chunked:
        parts.append(b"Transfer-Encoding: chunked\r\n")
    elif content_length is not None:
        parts.append(b"Content-Length: %d\r\n" % content_length)
    if upgrade is not None:
        parts += (b"Connection: upgrade\r\nUpgrade: ", upgrade, b"\r\n\r\n")
    elif not keep_alive:
        parts.append(b"Connection: close\r\n\r\n")
    else:
        parts.append(b"\r\n")
    return b"".join(parts)


_MAX_STATUS_LINES = 256
_STATUS_LINE_CACHE: dict[tuple[int, bytes], bytes] = {}


def _status_line(status: int, reason: bytes) -> bytes:
    """b"HTTP/1.1 200 OK\\r\\n", built once per (status, reason) an origin uses."""
    key = (status, reason)
    line = _STATUS_LINE_CACHE.get(key)
    if line is None:
        line = b"HTTP/1.1 %d %b\r\n" % (status, reason)
        if len(_STATUS_LINE_CACHE) < _MAX_STATUS_LINES:  # bounded: reasons are origin-chosen
            _STATUS_LINE_CACHE[key] = line
    return line


def chunk(data: bytes) -> bytes:
    """One chunk of chunked transfer coding (RFC 9112 §7.1)."""
    return b"%x\r\n%b\r\n" % (len(data), data)


LAST_CHUNK = b"0\r\n\r\n"
CONNECT_ESTABLISHED = b"HTTP/1.1 200 Connection established\r\n\r\n"
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
