"""The probes of `egressgate verify --attack`: socket I/O, one function per kind of attempt.

Every probe is harmless and bounded: it is aimed at an address the planner
(egressgate/tools/attack_plan.py) got from the operator or the metadata list, it is one
connection (or one datagram) with each step bounded by the timeout, and it sends no payload
beyond a handshake: a TCP handshake, a TLS ClientHello, one HTTP request head, one DNS query,
one QUIC Initial-shaped datagram. It returns what it saw as an attack.Observation (never a
verdict: attack.judge gives that), or raises NotRunnable when it cannot run here.
"""

from __future__ import annotations

import os
import socket
import ssl
import struct
import time
from collections.abc import Callable

import dns.message
import dns.rcode
import dns.rdatatype

from egressgate.tools import verify
from egressgate.tools.attack import (
    Observation,
    Outcome,
)
from egressgate.tools.verify import Deadline, ErrorKind, ProxyEndpoint, Url, format_hostport

METADATA_V4 = "169.254.169.254"
METADATA_V4_MAPPED = "::ffff:169.254.169.254"
METADATA_NAT64 = "64:ff9b::a9fe:a9fe"  # RFC 6052 well-known prefix + 169.254.169.254
QUIC_PORT = 443
DNS_PORT = 53
DOT_PORT = 853
QUIC_DATAGRAM_BYTES = 1200  # RFC 9000 14.1: a client's Initial is padded to at least 1200
# A reserved version (RFC 9000 15: 0x?a?a?a?a): a QUIC server must answer it with a Version
# Negotiation packet, so any QUIC server on the path replies, and no connection is started.
QUIC_GREASE_VERSION = 0x1A2A3A4A
MAX_BODY_BYTES = 64 * 1024  # the keep-alive probe reads its first answer's body up to this


class NotRunnable(Exception):
    """A probe that cannot run here (the message says why): reported as skipped."""


# -- pure helpers ------------------------------------------------------------------------------


def quic_initial(dcid: bytes, scid: bytes) -> bytes:
    """A QUIC long-header Initial-shaped datagram of QUIC_DATAGRAM_BYTES with a reserved version
    (so a server answers with Version Negotiation and nothing else) and zero padding."""
    if not (0 < len(dcid) <= 20 and len(scid) <= 20):
        raise ValueError("QUIC connection ids are at most 20 bytes")
    header = bytes([0xC3]) + struct.pack("!I", QUIC_GREASE_VERSION)
    header += bytes([len(dcid)]) + dcid + bytes([len(scid)]) + scid
    header += b"\x00"  # token length 0
    remaining = QUIC_DATAGRAM_BYTES - len(header) - 2
    header += struct.pack("!H", 0x4000 | remaining)  # 2-byte varint: the rest of the packet
    return header + bytes(remaining)


def dns_query(name: str, query_id: int) -> bytes:
    """One A query, recursion desired."""
    message = dns.message.make_query(name, dns.rdatatype.A, id=query_id)
    return bytes(message.to_wire())


def parse_dns_reply(wire: bytes, query_id: int) -> tuple[str, int]:
    """(rcode text, answer count); ValueError if it is not a reply to our query."""
    try:
        reply = dns.message.from_wire(wire)
    except Exception as exc:  # dnspython raises many types for malformed wire data
        raise ValueError(f"not a DNS reply: {exc}") from None
    if reply.id != query_id:
        raise ValueError("a DNS reply to another query")
    answers = sum(len(rrset) for rrset in reply.answer)
    return dns.rcode.to_text(reply.rcode()), answers


def outcome_of_error(exc: BaseException) -> Outcome:
    kind, _ = verify.classify_error(exc, 0)
    return {
        ErrorKind.TIMEOUT: Outcome.TIMEOUT,
        ErrorKind.REFUSED: Outcome.REFUSED,
        ErrorKind.UNREACHABLE: Outcome.UNREACHABLE,
        ErrorKind.BLOCKED: Outcome.BLOCKED_LOCAL,
        ErrorKind.RESET: Outcome.RESET,
        ErrorKind.TLS: Outcome.TLS_FAILED,
    }.get(kind, Outcome.ERROR)


def _error_text(exc: BaseException, timeout_s: float) -> str:
    return verify.classify_error(exc, timeout_s)[1]


def _ms(started: float) -> float:
    return (time.monotonic() - started) * 1000.0


def _family(address: str) -> int:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


# -- the probes (I/O) --------------------------------------------------------------------------


def _connect(address: str, port: int, deadline: Deadline) -> socket.socket:
    sock = socket.socket(_family(address), socket.SOCK_STREAM)
    try:
        sock.settimeout(deadline.left())
        sock.connect((address, port))
    except BaseException:
        sock.close()
        raise
    return sock


def _failed_connect(what: str, exc: BaseException, timeout_s: float, started: float) -> Observation:
    return Observation(
        outcome_of_error(exc),
        f"{what}: {_error_text(exc, timeout_s)}.",
        elapsed_ms=_ms(started),
    )


def probe_connect(address: str, port: int, timeout_s: float) -> Observation:
    """A TCP handshake, nothing else."""
    what, started = f"TCP to {format_hostport(address, port)}", time.monotonic()
    try:
        sock = _connect(address, port, Deadline(timeout_s))
    except OSError as exc:
        return _failed_connect(what, exc, timeout_s, started)
    sock.close()
    return Observation(Outcome.CONNECTED, f"{what}: connected.", elapsed_ms=_ms(started))


def _handshake(sock: socket.socket, sni: str | None, deadline: Deadline) -> tuple[Outcome, str]:
    """A TLS handshake (no certificate check: the question is only whether a server answers)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    sock.settimeout(deadline.left())
    try:
        with context.wrap_socket(sock, server_hostname=sni) as tls:
            version = tls.version()
    except ssl.SSLError as exc:
        if verify.access_denied(exc):
            return Outcome.TLS_DENIED, "TLS alert access_denied"
        if isinstance(exc, ssl.SSLEOFError | ssl.SSLZeroReturnError):
            return Outcome.RESET, "closed during the TLS handshake"
        return Outcome.TLS_FAILED, f"TLS failed: {getattr(exc, 'reason', None) or exc}"
    except TimeoutError:
        return Outcome.SILENT, "no answer to the ClientHello"
    except OSError as exc:
        return outcome_of_error(exc), _error_text(exc, 0)
    except ValueError as exc:  # a server name the ssl module refuses to send
        sock.close()
        return Outcome.ERROR, f"no ClientHello sent: {exc}"
    return Outcome.TLS_OK, f"TLS handshake completed ({version})"


def probe_tls(address: str, port: int, sni: str, timeout_s: float) -> Observation:
    """TCP, then (if it opens) a TLS handshake naming `sni` ("" for none), then close."""
    what, started = f"TCP to {format_hostport(address, port)}", time.monotonic()
    try:
        sock = _connect(address, port, Deadline(timeout_s))
    except OSError as exc:
        return _failed_connect(what, exc, timeout_s, started)
    named = f" naming {sni}" if sni else ""
    outcome, text = _handshake(sock, sni or None, Deadline(timeout_s))
    facts = f"{what}: connected; ClientHello{named}: {text}."
    return Observation(outcome, facts, elapsed_ms=_ms(started))


def _http_observation(head: verify.ResponseHead, what: str, started: float) -> Observation:
    reason = head.reason_code
    detail = head.refusal_detail()
    if reason is None:
        shown = f"{head.status} {head.phrase}".strip() + " (no X-Egressgate-Reason)"
    else:  # the phrase repeats the reason: the header and the body's detail say more
        shown = f"{head.status}, X-Egressgate-Reason: {reason}" + (f" ({detail})" if detail else "")
    return Observation(
        Outcome.HTTP,
        f"{what} → {shown}.",
        http_status=head.status,
        reason=reason,
        elapsed_ms=_ms(started),
    )


def _after_connect_error(exc: BaseException, what: str, started: float) -> Observation:
    if isinstance(exc, TimeoutError | socket.timeout):
        return Observation(Outcome.SILENT, f"{what}: no answer.", elapsed_ms=_ms(started))
    if isinstance(exc, ValueError):
        return Observation(Outcome.ERROR, f"{what}: {exc}.", elapsed_ms=_ms(started))
    return Observation(Outcome.RESET, f"{what}: {_error_text(exc, 0)}.", elapsed_ms=_ms(started))


def probe_http(address: str, port: int, host: str, timeout_s: float) -> Observation:
    """TCP straight to address:port, one origin-form GET / with this Host, read the head."""
    what, started = f"GET / (Host: {host}) to {format_hostport(address, port)}", time.monotonic()
    deadline = Deadline(timeout_s)
    try:
        sock = _connect(address, port, deadline)
    except OSError as exc:
        return _failed_connect(what, exc, timeout_s, started)
    with sock:
        request = verify.request_bytes("GET", "/", host, [("Connection", "close")])
        try:
            head = verify.exchange(sock, request, Deadline(timeout_s))
        except (OSError, ValueError) as exc:
            return _after_connect_error(exc, what, started)
    return _http_observation(head, what, started)


def _udp(
    address: str,
    port: int,
    payload: bytes,
    accept: Callable[[bytes], bool],
    timeout_s: float,
    what: str,
    silence: str,
) -> bytes | Observation:
    """One datagram, then the first reply `accept` takes (bounded by the timeout), or what
    happened instead; `silence` says what no reply means for this probe."""
    started, deadline = time.monotonic(), Deadline(timeout_s)
    with socket.socket(_family(address), socket.SOCK_DGRAM) as sock:
        try:
            sock.settimeout(deadline.left())
            sock.connect((address, port))  # connected: ICMP errors are reported to us
            sock.send(payload)
            while True:  # bounded by the deadline; a stray datagram does not end the wait
                sock.settimeout(deadline.left())
                reply = sock.recv(4096)
                if accept(reply):
                    return reply
        except ConnectionRefusedError:
            return Observation(
                Outcome.UDP_PORT_UNREACHABLE,
                f"{what}: ICMP port unreachable.",
                elapsed_ms=_ms(started),
            )
        except TimeoutError:
            return Observation(
                Outcome.TIMEOUT,
                f"{what}: no reply in {timeout_s:g} s ({silence}).",
                elapsed_ms=_ms(started),
            )
        except OSError as exc:
            return _failed_connect(what, exc, timeout_s, started)


def probe_udp_quic(address: str, timeout_s: float) -> Observation:
    """One QUIC Initial-shaped datagram to address:443, then wait for any reply."""
    what, started = f"one QUIC datagram to {format_hostport(address, QUIC_PORT)}", time.monotonic()
    silence = (
        "a drop looks like this; so does a target that never answers QUIC — name an --allowed "
        "host that serves HTTP/3 to make this proof strong"
    )
    datagram = quic_initial(os.urandom(8), os.urandom(8))
    reply = _udp(address, QUIC_PORT, datagram, lambda _: True, timeout_s, what, silence)
    if isinstance(reply, Observation):
        return reply
    return Observation(
        Outcome.UDP_REPLY, f"{what}: a {len(reply)}-byte reply came back.", elapsed_ms=_ms(started)
    )


def _is_reply(query_id: int) -> Callable[[bytes], bool]:
    def accept(wire: bytes) -> bool:
        try:
            parse_dns_reply(wire, query_id)
        except ValueError:
            return False
        return True

    return accept


def probe_dns_udp(server: str, name: str, timeout_s: float) -> Observation:
    what = f"DNS A {name}? over UDP to {format_hostport(server, DNS_PORT)}"
    started, query_id = time.monotonic(), int.from_bytes(os.urandom(2), "big")
    silence = "a drop on the way, if --outside-resolver answers when it can be reached"
    query = dns_query(name, query_id)
    wire = _udp(server, DNS_PORT, query, _is_reply(query_id), timeout_s, what, silence)
    if isinstance(wire, Observation):
        return wire
    rcode, answers = parse_dns_reply(wire, query_id)
    return Observation(
        Outcome.DNS_ANSWER,
        f"{what}: {rcode}, {answers} answer(s).",
        rcode=rcode,
        answers=answers,
        elapsed_ms=_ms(started),
    )


def probe_dns_tcp(server: str, name: str, timeout_s: float) -> Observation:
    what = f"DNS A {name}? over TCP to {format_hostport(server, DNS_PORT)}"
    started, query_id = time.monotonic(), int.from_bytes(os.urandom(2), "big")
    deadline = Deadline(timeout_s)
    try:
        sock = _connect(server, DNS_PORT, deadline)
    except OSError as exc:
        return _failed_connect(what, exc, timeout_s, started)
    with sock:
        query = dns_query(name, query_id)
        try:
            sock.settimeout(deadline.left())
            sock.sendall(struct.pack("!H", len(query)) + query)
            (length,) = struct.unpack("!H", _recv_exactly(sock, 2, deadline))
            rcode, answers = parse_dns_reply(_recv_exactly(sock, length, deadline), query_id)
        except (OSError, ValueError) as exc:
            return _after_connect_error(exc, what, started)
    return Observation(
        Outcome.DNS_ANSWER,
        f"{what}: {rcode}, {answers} answer(s).",
        rcode=rcode,
        answers=answers,
        elapsed_ms=_ms(started),
    )


def _recv_exactly(sock: socket.socket, count: int, deadline: Deadline) -> bytes:
    data = b""
    while len(data) < count:
        sock.settimeout(deadline.left())
        chunk = sock.recv(count - len(data))
        if not chunk:
            raise ConnectionResetError("closed early")
        data += chunk
    return data


def probe_doh_direct(name: str, timeout_s: float) -> Observation:
    """The pod's resolver for `name`; then a direct TLS handshake to its first address."""
    started = time.monotonic()
    try:
        infos = socket.getaddrinfo(name, 443, socket.AF_INET, socket.SOCK_STREAM)
    except socket.gaierror as exc:
        outcome = (
            Outcome.NAME_REFUSED
            if exc.errno in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", -5))
            else Outcome.NAME_FAILED
        )
        return Observation(
            outcome,
            f"the pod's resolver for {name}: {exc.strerror or exc}.",
            elapsed_ms=_ms(started),
        )
    address = str(infos[0][4][0])
    return probe_tls(address, 443, name, timeout_s)


def _proxy_socket(endpoint: ProxyEndpoint, deadline: Deadline) -> socket.socket:
    return socket.create_connection((endpoint.host, endpoint.port), timeout=deadline.left())


def _proxy_headers(endpoint: ProxyEndpoint) -> list[tuple[str, str]]:
    auth = endpoint.authorization()
    return [("Proxy-Authorization", auth)] if auth else []


def _unreachable_proxy(endpoint: ProxyEndpoint, exc: BaseException, started: float) -> Observation:
    # Not a verdict on the probe: the proxy itself could not be reached.
    return Observation(
        Outcome.NOT_EXERCISED,
        f"cannot connect to the proxy {endpoint.authority}: {_error_text(exc, 0)}; nothing "
        "was sent.",
        elapsed_ms=_ms(started),
    )


def _ask_proxy(
    endpoint: ProxyEndpoint,
    request: tuple[str, str, str, list[tuple[str, str]]],
    what: str,
    started: float,
    deadline: Deadline,
) -> tuple[socket.socket, verify.ResponseHead] | Observation:
    """Connect to the proxy and send (method, target, Host, extra headers): the open socket and
    the answer's head, or what happened instead."""
    try:
        sock = _proxy_socket(endpoint, deadline)
    except OSError as exc:
        return _unreachable_proxy(endpoint, exc, started)
    method, target, host, extra = request
    wire = verify.request_bytes(method, target, host, [*_proxy_headers(endpoint), *extra])
    try:
        return sock, verify.exchange(sock, wire, deadline)
    except (OSError, ValueError) as exc:
        sock.close()
        return _after_connect_error(exc, what, started)


def probe_proxy_connect(
    endpoint: ProxyEndpoint,
    authority: str,
    sni: str | None,
    timeout_s: float,
    *,
    tests_sni: bool = False,
) -> Observation:
    """CONNECT authority; on 200, a TLS handshake naming `sni` when given. With `tests_sni`
    (the CONNECT is to an allowed host), a refused CONNECT means the SNI was never tested."""
    what, started = f"CONNECT {authority} via {endpoint.authority}", time.monotonic()
    asked = _ask_proxy(
        endpoint, ("CONNECT", authority, authority, []), what, started, Deadline(timeout_s)
    )
    if isinstance(asked, Observation):
        return asked
    sock, head = asked
    with sock:
        if head.status != 200 and tests_sni:
            return Observation(
                Outcome.NOT_EXERCISED,
                f"{what} → {head.status} {head.reason_code or head.phrase}: the CONNECT to the "
                "--allowed host was not opened, so no ClientHello was sent (run plain `egressgate "
                "verify` to see why the allowed host fails).",
                http_status=head.status,
                reason=head.reason_code,
                elapsed_ms=_ms(started),
            )
        if head.status != 200 or head.reason_code is not None:
            return _http_observation(head, what, started)
        if sni is None:
            return Observation(
                Outcome.TUNNEL, f"{what} → 200: tunnel open.", 200, elapsed_ms=_ms(started)
            )
        outcome, text = _handshake(sock, sni, Deadline(timeout_s))
    return Observation(
        outcome, f"{what} → 200; ClientHello naming {sni}: {text}.", 200, elapsed_ms=_ms(started)
    )


def probe_proxy_get(
    endpoint: ProxyEndpoint, absolute: str, host: str, timeout_s: float
) -> Observation:
    """An absolute-form GET through the proxy with this Host header."""
    what, started = f"GET {absolute} (Host: {host}) via {endpoint.authority}", time.monotonic()
    request = ("GET", absolute, host, [("Connection", "close")])
    asked = _ask_proxy(endpoint, request, what, started, Deadline(timeout_s))
    if isinstance(asked, Observation):
        return asked
    sock, head = asked
    sock.close()
    return _http_observation(head, what, started)


def probe_keepalive(
    endpoint: ProxyEndpoint, allowed: Url, denied_absolute: str, denied_host: str, timeout_s: float
) -> Observation:
    """GET the allowed URL keep-alive, read it in full, then GET the denied one on the same
    connection. NotRunnable when the first exchange does not leave a reusable connection."""
    started, deadline = time.monotonic(), Deadline(timeout_s)
    what = f"GET {allowed.absolute} then GET {denied_absolute} on one connection"
    try:
        sock = _proxy_socket(endpoint, deadline)
    except OSError as exc:
        return _unreachable_proxy(endpoint, exc, started)
    with sock:
        extra = _proxy_headers(endpoint)
        first = verify.request_bytes("GET", allowed.absolute, allowed.host_header, extra)
        try:
            sock.settimeout(deadline.left())
            sock.sendall(first)
            raw, rest = verify.read_head(sock, deadline)
            head = verify.parse_response_head(raw)
        except (OSError, ValueError) as exc:
            raise NotRunnable(f"the first request ({allowed.text}) failed: {exc}") from None
        if head.reason_code is not None:
            return Observation(
                Outcome.NOT_EXERCISED,
                f"{what}: the first request, to an --allowed URL, was refused ({head.status} "
                f"{head.reason_code}), so the second was never sent.",
                http_status=head.status,
                reason=head.reason_code,
                elapsed_ms=_ms(started),
            )
        try:
            _skip_body(sock, head, rest, deadline)
        except OSError as exc:
            raise NotRunnable(f"reading the first answer failed: {exc}") from None
        second = verify.request_bytes(
            "GET", denied_absolute, denied_host, [*extra, ("Connection", "close")]
        )
        try:
            answer = verify.exchange(sock, second, Deadline(timeout_s))
        except (OSError, ValueError) as exc:
            return _after_connect_error(exc, what, started)
    return _http_observation(answer, what + f" (first answer {head.status})", started)


def _skip_body(
    sock: socket.socket, head: verify.ResponseHead, rest: bytes, deadline: Deadline
) -> None:
    """Read the first answer's body so the connection can carry a second request."""
    if (head.header("Connection") or "").lower() == "close":
        raise NotRunnable(
            f"the first answer ({head.status}) closes the connection (Connection: close)"
        )
    length_text = head.header("Content-Length")
    if length_text is None or not length_text.isdigit():
        raise NotRunnable("the first answer has no Content-Length (cannot reuse it safely)")
    length = int(length_text)
    if length > MAX_BODY_BYTES:
        raise NotRunnable(f"the first answer's body is over {MAX_BODY_BYTES} bytes")
    got = len(rest)
    while got < length:
        sock.settimeout(deadline.left())
        chunk = sock.recv(length - got)
        if not chunk:
            raise NotRunnable("the proxy closed the connection after the first answer")
        got += len(chunk)
