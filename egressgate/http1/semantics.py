"""HTTP/1.x meaning of a parsed head: request-target forms, framing (smuggling) rules, and which
headers are hop-by-hop. Pure: no sockets, no policy, no logging.

Every framing rule lives here — even where llhttp already refuses the same thing by default —
because parser defaults are not our security rules, and each rule has its own test.
"""

from __future__ import annotations

import re

from egressgate.errors import ProtocolError, Reason
from egressgate.http1.events import Header, RequestHead, ResponseHead
from egressgate.values import immutable

# RFC 9110 §7.6.1: Connection and the headers it names are hop-by-hop; so are these, which
# predate it (RFC 2616 §13.5.1) or are proxy-specific.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authorization",
        b"proxy-authenticate",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)


@immutable
class RequestTarget:
    """Where a request goes: host text as sent (not yet normalized), port, path for upstream."""

    host: str
    port: int
    path: bytes  # origin-form for the upstream request line ("/" at least); b"" for CONNECT
    authority: bytes  # host[:port] as it goes into the upstream Host header


@immutable
class Framing:
    """How the request body is delimited."""

    chunked: bool
    content_length: int | None  # None with chunked, 0 when there is no body

    @property
    def has_body(self) -> bool:
        return self.chunked or bool(self.content_length)


def parse_connect_target(target: bytes) -> RequestTarget:
    """RFC 9110 §9.3.6: CONNECT uses authority-form, host:port; the port is required."""
    text = _ascii(target)
    host, port = _split_authority(text, default_port=None)
    return RequestTarget(host, port, b"", target)


# The authority ends at the first "/", "?" or "#" (RFC 3986 §3.2).
_AUTHORITY_END = re.compile(r"[/?#]")
# A client talks to few destinations: split each valid authority once (bounded; only valid
# ones are stored, an invalid one raises every time).
_HTTP_AUTHORITIES: dict[str, tuple[str, int]] = {}
_MAX_AUTHORITIES = 4096


def parse_proxy_target(target: bytes) -> RequestTarget:
    """RFC 9112 §3.2.2: a request to a proxy uses absolute-form, http://authority/path."""
    text = _ascii(target)
    if text.startswith("/") or text == "*":
        raise ProtocolError(
            Reason.NOT_A_PROXY_REQUEST, "origin-form request sent to a forward proxy"
        )
    scheme, sep, rest = text.partition("://")
    if not sep:
        raise ProtocolError(Reason.BAD_REQUEST, "request target is not an absolute URL")
    if scheme != "http" and scheme.lower() != "http":
        raise ProtocolError(Reason.UNSUPPORTED_SCHEME, f"scheme {scheme!r} cannot be forwarded")
    found = _AUTHORITY_END.search(rest)
    end = found.start() if found is not None else len(rest)
    authority, path = rest[:end], rest[end:]
    if "@" in authority:
        # RFC 9110 §4.2.4: userinfo is deprecated and a classic way to disguise the real host.
        raise ProtocolError(Reason.BAD_REQUEST, "credentials in the URL are not accepted")
    split = _HTTP_AUTHORITIES.get(authority)
    if split is None:
        split = _split_authority(authority, default_port=80)
        if len(_HTTP_AUTHORITIES) >= _MAX_AUTHORITIES:
            _HTTP_AUTHORITIES.clear()
        _HTTP_AUTHORITIES[authority] = split
    host, port = split
    if "#" in path:
        path = path.split("#", 1)[0]
    if not path.startswith("/"):
        path = "/" + path
    return RequestTarget(host, port, path.encode("ascii"), authority.encode("ascii"))


def _ascii(target: bytes) -> str:
    try:
        return target.decode("ascii")
    except UnicodeDecodeError:
        raise ProtocolError(Reason.BAD_REQUEST, "non-ASCII request target") from None


def _split_authority(authority: str, default_port: int | None) -> tuple[str, int]:
    if authority.startswith("["):
        host, sep, after = authority[1:].partition("]")
        if not sep or (after and not after.startswith(":")):
            raise ProtocolError(Reason.BAD_REQUEST, f"malformed IPv6 authority {authority!r}")
        host = f"[{host}]"
        port_text = after[1:] if after else ""
    else:
        host, sep, port_text = authority.rpartition(":")
        if not sep:
            host, port_text = authority, ""
        if ":" in host:
            # Fix (unit tests, test_semantics.py): "::1:443" or "a:80:80" was split at the last
            # colon. RFC 3986 §3.2.2: "A host identified by an Internet Protocol literal
            # address, version 6 or later, is distinguished by enclosing the IP literal within
            # square brackets" — without them the port is ambiguous, so refuse.
            raise ProtocolError(
                Reason.BAD_REQUEST, f"IPv6 address without brackets in {authority!r}"
            )
    if not host:
        raise ProtocolError(Reason.BAD_REQUEST, "empty host in request target")
    if not port_text:
        if default_port is None:
            raise ProtocolError(Reason.BAD_REQUEST, "CONNECT target needs host:port")
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) <= 65535:
        raise ProtocolError(Reason.BAD_REQUEST, f"invalid port {port_text!r}")
    return host, int(port_text)


def split_authority(authority: str, default_port: int | None) -> tuple[str, int]:
    """host (brackets kept for IPv6) and port of an authority; ProtocolError if malformed."""
    return _split_authority(authority, default_port)


def request_framing(head: RequestHead) -> Framing:
    """RFC 9112 §6: decide how the body is framed, refusing every ambiguous combination."""
    transfer_encodings: list[bytes] = []
    lengths: list[bytes] = []
    for lname, _, value in head.headers:
        if lname == b"transfer-encoding":
            transfer_encodings.append(value)
        elif lname == b"content-length":
            lengths.append(value)
        if b"\r" in value or b"\n" in value:
            # obs-fold (RFC 9112 §5.2) or a bare CR/LF that slipped through: refuse.
            raise ProtocolError(Reason.SMUGGLING, "line folding in a header value")
    if transfer_encodings and lengths:
        # RFC 9112 §6.1: "A sender MUST NOT send a Content-Length header field in any message
        # that contains a Transfer-Encoding header field" — a proxy must not guess which wins.
        raise ProtocolError(Reason.SMUGGLING, "both Transfer-Encoding and Content-Length")
    if transfer_encodings:
        codings = [c.strip().lower() for v in transfer_encodings for c in v.split(b",")]
        if codings != [b"chunked"]:
            # RFC 9112 §6.3: chunked must be final; anything else cannot be framed safely here.
            raise ProtocolError(Reason.SMUGGLING, "Transfer-Encoding other than exactly 'chunked'")
        return Framing(chunked=True, content_length=None)
    if lengths:
        values = {v.strip() for v in lengths}
        if len(values) != 1:
            raise ProtocolError(Reason.SMUGGLING, "conflicting Content-Length values")
        value = values.pop()
        if not value.isdigit() or len(value) > 18:
            raise ProtocolError(Reason.SMUGGLING, "invalid Content-Length")
        return Framing(chunked=False, content_length=int(value))
    return NO_BODY


NO_BODY = Framing(chunked=False, content_length=0)  # immutable: one instance serves every request


_NO_TOKENS: frozenset[bytes] = frozenset()
# Connection header values repeat ("keep-alive", "close", "Upgrade"): split each value once.
_TOKENS_OF: dict[bytes, frozenset[bytes]] = {}
_MAX_TOKEN_VALUES = 1024


def _tokens_of(value: bytes) -> frozenset[bytes]:
    tokens = _TOKENS_OF.get(value)
    if tokens is None:
        tokens = frozenset(t.strip().lower() for t in value.split(b","))
        if len(_TOKENS_OF) >= _MAX_TOKEN_VALUES:
            _TOKENS_OF.clear()
        _TOKENS_OF[value] = tokens
    return tokens


def connection_tokens(headers: list[Header]) -> frozenset[bytes]:
    """Lowercased tokens of every Connection (and Proxy-Connection) header."""
    tokens = _NO_TOKENS
    for lname, _, value in headers:
        if lname == b"connection" or lname == b"proxy-connection":
            tokens = tokens | _tokens_of(value) if tokens else _tokens_of(value)
    return tokens


# Security fix (issue 19): `Connection: Content-Length` made the proxy drop the request's
# Content-Length and forward its body unframed (request smuggling, cross-client response
# poisoning through the shared upstream pool). The message's framing and its Host are never
# hop-by-hop, whatever Connection names; render.py writes the framing of what is forwarded.
NEVER_HOP_BY_HOP = frozenset({b"content-length", b"host", b"transfer-encoding"})


def end_to_end(headers: list[Header], extra_hop: frozenset[bytes] | set[bytes]) -> list[Header]:
    """The headers without hop-by-hop ones (fixed list + those named in Connection, except
    the framing headers and Host: see NEVER_HOP_BY_HOP)."""
    if not extra_hop:
        return [h for h in headers if h[0] not in HOP_BY_HOP]
    return [
        h
        for h in headers
        if h[0] not in HOP_BY_HOP and (h[0] not in extra_hop or h[0] in NEVER_HOP_BY_HOP)
    ]


def wants_upgrade(head: RequestHead, tokens: frozenset[bytes]) -> bytes | None:
    """The Upgrade header value if the client asks to switch protocols (e.g. websocket)."""
    if b"upgrade" not in tokens:
        return None
    for lname, _, value in head.headers:
        if lname == b"upgrade":
            return value
    return None


def expects_continue(head: RequestHead) -> bool:
    return any(
        lname == b"expect" and value.strip().lower() == b"100-continue"
        for lname, _, value in head.headers
    )


# Final responses that never have a body, whatever their headers say (RFC 9110 §6.4.1).
NO_BODY_STATUSES = frozenset({204, 304})


def response_framing(
    head: ResponseHead, is_head: bool, http11_client: bool
) -> tuple[bool, bool, bool, bool]:
    """How a proxy relays the body of a final response to its client (RFC 9112 §6.3, §7):
    (no_body, close_delimited, chunked, ends_by_close).

    `no_body`: a HEAD answer, 204 or 304. `close_delimited`: the origin marks the end of the
    body only by closing. `chunked`: the proxy re-frames the body with chunked encoding (the
    origin's chunked or close-delimited body, to an HTTP/1.1 client). `ends_by_close`: an
    HTTP/1.0 client, which knows no chunked encoding, learns the end of such a body only from
    the close, so its connection cannot be kept. A body with a Content-Length is relayed as
    it came. A plain tuple: this runs for every response."""
    no_body = is_head or head.status in NO_BODY_STATUSES
    close_delimited = not no_body and not head.chunked and head.content_length is None
    delimited_by_us = not no_body and (head.chunked or close_delimited)
    return (
        no_body,
        close_delimited,
        delimited_by_us and http11_client,
        delimited_by_us and not http11_client,
    )
