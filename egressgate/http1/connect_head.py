"""A fast, strict reader for the common CONNECT head, in one regular-expression match.

Why: a CONNECT head is one request line and two or three short headers, read whole by the
first recv. Through httptools it costs a parser object, five callbacks into Python and the
upgrade exception, about 4.5 us; here it is one C-level match and a split, about 1.5 us, on
the path that decides the CONNECT rate (see docs/performance.md).

Safety: this accepts a strict subset of what the httptools parser (http1/parser.py) accepts
and produces exactly what it produces: the same RequestHead (keep_alive and head_bytes
included) and the same bytes after the head. A head it does not recognise (incomplete,
too large, obs-text, obs-fold, bare LF, a Content-Length or Transfer-Encoding header,
anything unusual) returns None, and the caller feeds the bytes to the full parser, which owns
every error and limit. tests/unit/http1/test_connect_head.py checks the equivalence on
generated heads.
"""

from __future__ import annotations

import re

from egressgate.http1.events import Header, RequestHead

# RFC 9112 §3.2.3 authority-form, RFC 3986 §3.2 characters: unreserved, pct-encoded,
# sub-delims, ":" and the brackets of an IP literal. Header names are RFC 9110 tokens; values
# are visible ASCII with inner spaces and tabs (no obs-text, no control characters).
_HEAD = re.compile(
    rb"CONNECT ([A-Za-z0-9._~%!$&'()*+,;=:\[\]-]+) HTTP/1\.([01])\r\n"
    rb"((?:[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[\t -~]*\r\n)*)\r\n"
)
_OWS = b" \t"
# Left to the full parser: framing headers (a body on a CONNECT is for it to judge) and
# Connection, whose token rules in llhttp are not worth copying for a header CONNECTs rarely
# carry (clients send Proxy-Connection).
_FULL_PARSER_HEADERS = frozenset({b"content-length", b"transfer-encoding", b"connection"})


def read_connect_head(
    data: bytes, max_request_line_bytes: int, max_header_bytes: int
) -> tuple[RequestHead, bytes] | None:
    """(head, bytes after it) for a complete, plain CONNECT head at the start of `data`;
    None when the full parser must decide."""
    match = _HEAD.match(data)
    if match is None:
        return None
    target, minor, block = match.groups()
    if len(target) > max_request_line_bytes:
        return None
    headers: list[Header] = []
    keep_alive_token = close_token = False
    # As http1/parser.py counts it: "CONNECT" + target + 12 for " HTTP/1.x\r\n" and the space,
    # each header line as name + value (without OWS) + 4, and the final CRLF.
    head_bytes = 7 + len(target) + 12 + 2
    if block:
        for line in block[:-2].split(b"\r\n"):
            name, _, value = line.partition(b":")
            value = value.lstrip(_OWS)  # llhttp drops leading whitespace and keeps trailing
            lowered = name.lower()
            if lowered in _FULL_PARSER_HEADERS:
                return None
            if lowered == b"proxy-connection":
                # llhttp reads it as Connection: its "keep-alive" and "close" tokens decide
                # keep_alive. Only the plain one-token values are taken here (what clients
                # send: curl's "Keep-Alive"); any other value goes to the full parser.
                token = value.strip(_OWS).lower()
                if token == b"keep-alive":
                    keep_alive_token = True
                elif token == b"close":
                    close_token = True
                else:
                    return None
            head_bytes += len(name) + len(value) + 4
            headers.append((lowered, name, value))
    if head_bytes > max_header_bytes:
        return None
    # llhttp's should_keep_alive: HTTP/1.1 unless "close", HTTP/1.0 only with "keep-alive".
    # (Fixed: HTTP/1.0 with "Proxy-Connection: Keep-Alive" and HTTP/1.1 with
    # "Proxy-Connection: close" came out the other way round from the full parser's answer.)
    if minor == b"1":
        version, keep_alive = "1.1", not close_token
    else:
        version, keep_alive = "1.0", keep_alive_token
    head = RequestHead(b"CONNECT", target, version, headers, keep_alive, head_bytes)
    return head, data[match.end() :]
