"""The only place a refusal or failure becomes HTTP response bytes.

Every refusal is a complete response: the status from the Reason, the Reason code in the
status line's reason phrase (`403 Forbidden (egressgate: host-not-allowed)`, the one part of a
refused CONNECT that most clients print) and in the `X-Egressgate-Reason` header
(machine-readable), the deciding policy in `X-Egressgate-Policy`, and a short plain-text body
naming the host and the reason. Always `Connection: close`: after a refusal the proxy does not
trust the rest of the client's byte stream.

The status line and the fixed header lines are built once per Reason at import; a refusal only
formats what depends on the request (host, detail, policy).
"""

from __future__ import annotations

from egressgate.errors import Reason

REASON_HEADER = "X-Egressgate-Reason"
POLICY_HEADER = "X-Egressgate-Policy"

_PHRASES = {
    400: "Bad Request",
    403: "Forbidden",
    407: "Proxy Authentication Required",
    408: "Request Timeout",
    414: "URI Too Long",
    431: "Request Header Fields Too Large",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


def reason_phrase(reason: Reason) -> str:
    """`Forbidden (egressgate: host-not-allowed)`: the standard phrase, then the reason code.

    RFC 9112 §4: "The reason-phrase element exists for the sole purpose of providing a textual
    description associated with the numeric status code ... A client SHOULD ignore the
    reason-phrase content". Clients ignore it for logic but print it, so it carries the code.
    """
    return f"{_PHRASES.get(reason.status, 'Error')} (egressgate: {reason.value})"


def _head_lines(reason: Reason) -> tuple[bytes, bytes]:
    """(status line + Content-Type, the reason header line), CRLF-terminated."""
    first = f"HTTP/1.1 {reason.status} {reason_phrase(reason)}\r\n"
    first += "Content-Type: text/plain; charset=utf-8\r\n"
    return first.encode("ascii"), f"{REASON_HEADER}: {reason.value}\r\n".encode("ascii")


_HEADS: dict[Reason, tuple[bytes, bytes]] = {reason: _head_lines(reason) for reason in Reason}


def refusal_response(
    reason: Reason,
    host: str | None,
    detail: str = "",
    policy: str | None = None,
    realm: str | None = None,
) -> bytes:
    """A full HTTP/1.1 response explaining `reason` for `host`."""
    status = reason.status
    lines = [f"egressgate: {status} {reason.value}"]
    # Fix (unit tests, test_refusal.py): the host went into the body uncleaned, so a host with
    # CR/LF (a SNI or an unparsable target) could forge extra "field: value" lines in it.
    lines.append(f"host: {_clean(host)}" if host else "host: (none)")
    lines.append(f"reason: {reason.text}")
    if detail:
        lines.append(f"detail: {_clean(detail)}")
    body = ("\n".join(lines) + "\n").encode("utf-8", "replace")
    first, reason_line = _HEADS[reason]
    head: list[str] = []
    if policy:
        head.append(f"{POLICY_HEADER}: {_clean(policy)}")
    if status == 407:
        head.append(f"Proxy-Authenticate: Basic realm={_quoted(realm or 'egressgate')}")
    head += ["Connection: close", "", ""]
    rest = "\r\n".join(head).encode("latin-1", "replace")
    return first + b"Content-Length: %d\r\n" % len(body) + reason_line + rest + body


def _clean(text: str) -> str:
    """No CR/LF or control characters from hostnames or details can reach the response."""
    return "".join(c if c.isprintable() else "?" for c in text)[:300]


def _quoted(text: str) -> str:
    """RFC 9110 §5.6.4 quoted-string: `"` and `\\` are escaped with a backslash.

    Fix (unit tests, test_refusal.py): a realm containing `"` ended the quoted-string early.
    """
    escaped = _clean(text).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


# A TLS alert record (RFC 8446 §6): fatal (2), access_denied (49), sent instead of an HTTP 403
# when an SNI check refuses a tunnel after "200 Connection established" was already sent.
TLS_ACCESS_DENIED_ALERT = bytes([0x15, 0x03, 0x01, 0x00, 0x02, 0x02, 0x31])
# The same for an unexpected failure of the proxy itself (proxy/failsafe.py) after the "200":
# fatal (2), internal_error (80).
TLS_INTERNAL_ERROR_ALERT = bytes([0x15, 0x03, 0x01, 0x00, 0x02, 0x02, 0x50])
