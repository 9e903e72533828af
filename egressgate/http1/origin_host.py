"""Where an origin-bound HTTP/1.x request goes, read from its head (the transparent listener).

A client that does not know about the proxy sends origin-form (`GET /path`) with a `Host`
header; some send absolute-form (`GET http://name/path`). Either way the destination is a
claim to judge, never an address: this module only reads the name and port out of the head,
strictly (exactly one Host; absolute-form and Host must agree), and raises ProtocolError
(400 bad-request) on anything ambiguous. No sockets, no policy.
"""

from __future__ import annotations

from egressgate.errors import ProtocolError, Reason
from egressgate.http1.events import RequestHead
from egressgate.http1.semantics import parse_proxy_target, split_authority


def request_host(head: RequestHead) -> tuple[str, int | None]:
    """(host as sent, explicit port or None) of an origin-bound request."""
    if head.method == b"CONNECT":
        raise ProtocolError(Reason.BAD_REQUEST, "CONNECT sent to the transparent listener")
    hosts = [header[2] for header in head.headers if header[0] == b"host"]
    if len(hosts) > 1:
        raise ProtocolError(Reason.BAD_REQUEST, "more than one Host header")
    host_value = _ascii(hosts[0]).strip() if hosts else ""
    target = head.target
    if not target.startswith(b"/") and target != b"*":
        # absolute-form: RFC 9112 §3.2.2 lets it win over Host; a careful gate refuses any
        # disagreement instead (one of the two is lying about the destination).
        absolute = parse_proxy_target(target)
        authority = absolute.authority.decode("ascii")
        if host_value and not _same_authority(host_value, authority):
            raise ProtocolError(
                Reason.BAD_REQUEST,
                f"Host {host_value!r} differs from the request target's {authority!r}",
            )
        return _split(authority)
    if not host_value:
        raise ProtocolError(Reason.BAD_REQUEST, "no Host header: the destination is unnamed")
    return _split(host_value)


def _split(authority: str) -> tuple[str, int | None]:
    host, port = split_authority(authority, default_port=0)
    return host, (port or None)


def _same_authority(a: str, b: str) -> bool:
    return _split(a.lower()) == _split(b.lower())


def _ascii(value: bytes) -> str:
    try:
        return value.decode("ascii")
    except UnicodeDecodeError:
        raise ProtocolError(Reason.BAD_REQUEST, "non-ASCII Host header") from None
