"""The probes of `egressgate verify --attack` (socket I/O) and the run that judges them.

Every probe is harmless and bounded:

* targets come only from the operator (--allowed, --denied, --outside-resolver, --doh-name,
  --ipv6-address, the proxy URL and --admin-port) plus the well-known metadata addresses;
  names are resolved with the pod's own resolver, and at most MAX_ADDRESSES addresses of a name
  are tried;
* each probe is one connection (or one datagram) bounded by --timeout per step, and sends no
  payload beyond a handshake: a TCP handshake, a TLS ClientHello, one HTTP request head, one DNS
  query, one QUIC Initial-shaped datagram;
* probes run concurrently, at most `parallel` at a time, so the whole run takes about one
  timeout per wave, not one per probe.

What each probe saw becomes an attack.Observation; attack.judge gives the verdict.
"""

from __future__ import annotations

import os
import socket
import ssl
import struct
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import dns.message
import dns.rcode
import dns.rdatatype

from egressgate.config.model import DEFAULT_ADMIN_LISTEN, ListenAddress
from egressgate.tools import verify
from egressgate.tools.attack import (
    BY_ID,
    Finding,
    Observation,
    Outcome,
    ProbeSpec,
    judge,
    skipped,
)
from egressgate.tools.verify import Deadline, ErrorKind, ProxyEndpoint, Url, format_hostport

METADATA_V4 = "169.254.169.254"
METADATA_V4_MAPPED = "::ffff:169.254.169.254"
METADATA_NAT64 = "64:ff9b::a9fe:a9fe"  # RFC 6052 well-known prefix + 169.254.169.254
QUIC_PORT = 443
DNS_PORT = 53
DOT_PORT = 853
DEFAULT_OTHER_PORT = 8443
DEFAULT_ADMIN_PORT = ListenAddress.parse(DEFAULT_ADMIN_LISTEN).port
DEFAULT_PARALLEL = 8
MAX_PARALLEL = 32
MAX_ADDRESSES = 2  # of one name, per probe: enough to see a second path, never a sweep
QUIC_DATAGRAM_BYTES = 1200  # RFC 9000 14.1: a client's Initial is padded to at least 1200
# A reserved version (RFC 9000 15: 0x?a?a?a?a): a QUIC server must answer it with a Version
# Negotiation packet, so any QUIC server on the path replies, and no connection is started.
QUIC_GREASE_VERSION = 0x1A2A3A4A
MAX_BODY_BYTES = 64 * 1024  # the keep-alive probe reads its first answer's body up to this


@dataclass(frozen=True, slots=True)
class AttackOptions:
    """The command line of `egressgate verify --attack`."""

    allowed: tuple[str, ...] = ()
    denied: tuple[str, ...] = ()
    outside_resolver: str | None = None  # an IP address outside the cluster (e.g. 9.9.9.9)
    doh_name: str | None = None  # a public DoH resolver's name (e.g. dns.google)
    ipv6_address: str | None = None  # an allowed host's IPv6 address, when it has no AAAA
    other_port: int = DEFAULT_OTHER_PORT
    admin_port: int | None = DEFAULT_ADMIN_PORT
    proxy: str | None = None  # overrides the environment's proxy
    timeout_s: float = verify.DEFAULT_TIMEOUT_S
    parallel: int = DEFAULT_PARALLEL
    skip: tuple[str, ...] = ()  # probe-id prefixes not to run


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
    return Outcome.TLS_OK, f"TLS handshake completed ({version})"


def probe_tls(address: str, port: int, sni: str | None, timeout_s: float) -> Observation:
    """TCP, then (if it opens) a TLS handshake naming `sni`; with no `sni` a bare connect."""
    what, started = f"TCP to {format_hostport(address, port)}", time.monotonic()
    deadline = Deadline(timeout_s)
    try:
        sock = _connect(address, port, deadline)
    except OSError as exc:
        return _failed_connect(what, exc, timeout_s, started)
    if sni is None:
        sock.close()
        return Observation(
            Outcome.CONNECTED,
            f"{what}: connected (give --denied so a ClientHello can tell a transparent proxy "
            "from an open path).",
            elapsed_ms=_ms(started),
        )
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


def probe_udp_quic(address: str, timeout_s: float) -> Observation:
    """One QUIC Initial-shaped datagram to address:443, then wait for any reply."""
    what, started = f"one QUIC datagram to {format_hostport(address, QUIC_PORT)}", time.monotonic()
    datagram = quic_initial(os.urandom(8), os.urandom(8))
    with socket.socket(_family(address), socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout_s)
        try:
            sock.connect((address, QUIC_PORT))  # connected: ICMP errors are reported to us
            sock.send(datagram)
            reply = sock.recv(2048)
        except ConnectionRefusedError:
            return Observation(
                Outcome.UDP_PORT_UNREACHABLE,
                f"{what}: ICMP port unreachable.",
                elapsed_ms=_ms(started),
            )
        except TimeoutError:
            return Observation(
                Outcome.TIMEOUT,
                f"{what}: no reply in {timeout_s:g} s (a drop looks like this; so does a "
                "target that never answers QUIC — name an --allowed host that serves HTTP/3 to "
                "make this proof strong).",
                elapsed_ms=_ms(started),
            )
        except OSError as exc:
            return _failed_connect(what, exc, timeout_s, started)
    return Observation(
        Outcome.UDP_REPLY, f"{what}: a {len(reply)}-byte reply came back.", elapsed_ms=_ms(started)
    )


def probe_dns_udp(server: str, name: str, timeout_s: float) -> Observation:
    what = f"DNS A {name}? over UDP to {format_hostport(server, DNS_PORT)}"
    started, query_id = time.monotonic(), int.from_bytes(os.urandom(2), "big")
    deadline = Deadline(timeout_s)
    with socket.socket(_family(server), socket.SOCK_DGRAM) as sock:
        try:
            sock.settimeout(deadline.left())
            sock.connect((server, DNS_PORT))
            sock.send(dns_query(name, query_id))
            while True:  # bounded by the deadline; a stray datagram does not end the wait
                sock.settimeout(deadline.left())
                wire = sock.recv(4096)
                try:
                    rcode, answers = parse_dns_reply(wire, query_id)
                    break
                except ValueError:
                    continue
        except ConnectionRefusedError:
            return Observation(
                Outcome.UDP_PORT_UNREACHABLE,
                f"{what}: ICMP port unreachable.",
                elapsed_ms=_ms(started),
            )
        except TimeoutError:
            return Observation(
                Outcome.TIMEOUT,
                f"{what}: no reply in {timeout_s:g} s (a drop on the way, if --outside-resolver "
                "answers when it can be reached, as it should).",
                elapsed_ms=_ms(started),
            )
        except OSError as exc:
            return _failed_connect(what, exc, timeout_s, started)
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
    deadline = Deadline(timeout_s)
    try:
        sock = _proxy_socket(endpoint, deadline)
    except OSError as exc:
        return _unreachable_proxy(endpoint, exc, started)
    with sock:
        request = verify.request_bytes("CONNECT", authority, authority, _proxy_headers(endpoint))
        try:
            head = verify.exchange(sock, request, deadline)
        except (OSError, ValueError) as exc:
            return _after_connect_error(exc, what, started)
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
        if head.status != 200 or sni is None:
            obs = _http_observation(head, what, started)
            if head.status == 200 and head.reason_code is None:
                return Observation(
                    Outcome.TUNNEL, f"{what} → 200: tunnel open.", 200, elapsed_ms=_ms(started)
                )
            return obs
        outcome, text = _handshake(sock, sni, Deadline(timeout_s))
    return Observation(
        outcome, f"{what} → 200; ClientHello naming {sni}: {text}.", 200, elapsed_ms=_ms(started)
    )


def probe_proxy_get(
    endpoint: ProxyEndpoint, absolute: str, host: str, timeout_s: float
) -> Observation:
    """An absolute-form GET through the proxy with this Host header."""
    what, started = f"GET {absolute} (Host: {host}) via {endpoint.authority}", time.monotonic()
    deadline = Deadline(timeout_s)
    try:
        sock = _proxy_socket(endpoint, deadline)
    except OSError as exc:
        return _unreachable_proxy(endpoint, exc, started)
    with sock:
        extra = [*_proxy_headers(endpoint), ("Connection", "close")]
        try:
            head = verify.exchange(
                sock, verify.request_bytes("GET", absolute, host, extra), deadline
            )
        except (OSError, ValueError) as exc:
            return _after_connect_error(exc, what, started)
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


# -- targets and the plan ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Targets:
    """What the operator named, parsed and resolved once (with the pod's resolver)."""

    allowed: Url | None
    allowed_http: Url | None  # the first http:// --allowed URL (keep-alive probe)
    denied_host: str | None
    denied_http_absolute: str | None  # http://DENIED[:port]/ for plain-HTTP probes
    v4: tuple[str, ...]  # IPv4 addresses of the allowed host
    v6: tuple[str, ...]  # IPv6 addresses of the allowed host (or --ipv6-address)
    resolve_error: str | None  # why v4 is empty
    https_port: int
    http_port: int
    endpoint: ProxyEndpoint | None
    no_proxy_why: str | None
    pod_v6: tuple[str, ...]  # the pod's global IPv6 addresses


def _resolve(host: str, family: int) -> tuple[tuple[str, ...], str | None]:
    try:
        infos = socket.getaddrinfo(host, None, family, socket.SOCK_STREAM)
    except socket.gaierror as exc:
        return (), f"the pod's resolver cannot resolve {host} ({exc.strerror or exc})"
    seen: list[str] = []
    for info in infos:
        address = str(info[4][0])
        if address not in seen:
            seen.append(address)
    return tuple(seen[:MAX_ADDRESSES]), None


def build_targets(options: AttackOptions, env: Mapping[str, str], pod_v6: Sequence[str]) -> Targets:
    allowed_urls = [verify.parse_url(u) for u in options.allowed]
    denied_urls = [verify.parse_url(u) for u in options.denied]
    allowed = allowed_urls[0] if allowed_urls else None
    allowed_http = next((u for u in allowed_urls if u.scheme == "http"), None)
    denied = denied_urls[0] if denied_urls else None
    denied_http = next((u for u in denied_urls if u.scheme == "http"), None)
    denied_absolute = None
    if denied_http is not None:
        denied_absolute = denied_http.absolute
    elif denied is not None:
        denied_absolute = (
            f"http://{verify.Url(denied.text, 'http', denied.host, 80, '/').host_header}/"
        )
    https = next((u for u in allowed_urls if u.scheme == "https"), None)
    v4: tuple[str, ...] = ()
    v6: tuple[str, ...] = ()
    error = None
    if allowed is not None:
        v4, error = _resolve(allowed.host, socket.AF_INET)
        if options.ipv6_address is not None:
            v6 = (options.ipv6_address,)
        elif pod_v6:
            v6, _ = _resolve(allowed.host, socket.AF_INET6)
    endpoint, why = _endpoint(options, env)
    return Targets(
        allowed=allowed,
        allowed_http=allowed_http,
        denied_host=denied.host if denied is not None else None,
        denied_http_absolute=denied_absolute,
        v4=v4,
        v6=v6,
        resolve_error=error,
        https_port=https.port if https is not None else 443,
        http_port=allowed_http.port if allowed_http is not None else 80,
        endpoint=endpoint,
        no_proxy_why=why,
        pod_v6=tuple(pod_v6),
    )


def _endpoint(
    options: AttackOptions, env: Mapping[str, str]
) -> tuple[ProxyEndpoint | None, str | None]:
    value = verify.proxy_for("https", env, options.proxy) or verify.proxy_for(
        "http", env, options.proxy
    )
    if value is None:
        return None, (
            "no proxy: no HTTP(S)_PROXY variable and no --proxy (transparent mode needs none; "
            "give --proxy to test the proxy's own refusals)"
        )
    try:
        return verify.parse_proxy_url(value), None
    except ValueError as exc:
        return None, f"the proxy URL is not usable: {exc}"


Thunk = Callable[[], Observation]


@dataclass(frozen=True, slots=True)
class Planned:
    """A probe ready to run, or the reason it will not."""

    spec: ProbeSpec
    target: str
    run: Thunk | None = None
    why_not: str | None = None


def plan(options: AttackOptions, targets: Targets) -> list[Planned]:
    """Every catalogue probe, in catalogue order, each runnable or skipped with its reason."""
    builders: Mapping[str, Callable[[AttackOptions, Targets, ProbeSpec], Planned]] = {
        **_DIRECT,
        **_DNS,
        **_PROXY,
        **_METADATA,
    }
    planned: list[Planned] = []
    for probe_id, spec in BY_ID.items():
        if any(probe_id.startswith(prefix) for prefix in options.skip):
            planned.append(Planned(spec, "", why_not="--skip"))
            continue
        planned.append(builders[probe_id](options, targets, spec))
    return planned


def _need_allowed(t: Targets, spec: ProbeSpec) -> Planned | None:
    if t.allowed is None:
        return Planned(spec, "", why_not="no --allowed URL: nothing to aim at")
    if not t.v4:
        return Planned(spec, t.allowed.host, why_not=t.resolve_error or "no IPv4 address")
    return None


def _direct_https(o: AttackOptions, t: Targets, s: ProbeSpec) -> Planned:
    missing = _need_allowed(t, s)
    if missing is not None:
        return missing
    address, port, sni = t.v4[0], t.https_port, t.denied_host
    return Planned(
        s, format_hostport(address, port), lambda: probe_tls(address, port, sni, o.timeout_s)
    )


def _direct_other(o: AttackOptions, t: Targets, s: ProbeSpec) -> Planned:
    missing = _need_allowed(t, s)
    if missing is not None:
        return missing
    address = t.v4[0]
    return Planned(
        s,
        format_hostport(address, o.other_port),
        lambda: probe_connect(address, o.other_port, o.timeout_s),
    )


def _direct_http(o: AttackOptions, t: Targets, s: ProbeSpec) -> Planned:
    missing = _need_allowed(t, s)
    if missing is not None:
        return missing
    if t.denied_host is None:
        return Planned(s, "", why_not="no --denied URL: no host to ask for")
    address, port, host = t.v4[0], t.http_port, t.denied_host
    return Planned(
        s, format_hostport(address, port), lambda: probe_http(address, port, host, o.timeout_s)
    )


def _direct_v6(o: AttackOptions, t: Targets, s: ProbeSpec) -> Planned:
    if t.allowed is None:
        return Planned(s, "", why_not="no --allowed URL: nothing to aim at")
    if not t.pod_v6 and o.ipv6_address is None:
        return Planned(s, "", why_not="the pod has no global IPv6 address")
    if not t.v6:
        return Planned(
            s,
            t.allowed.host,
            why_not=f"{t.allowed.host} has no IPv6 address (AAAA): give --ipv6-address",
        )
    address, port = t.v6[0], t.https_port
    sni = t.denied_host
    return Planned(
        s, format_hostport(address, port), lambda: probe_tls(address, port, sni, o.timeout_s)
    )


def _udp_quic(o: AttackOptions, t: Targets, s: ProbeSpec) -> Planned:
    missing = _need_allowed(t, s)
    if missing is not None:
        return missing
    address = t.v4[0]
    return Planned(
        s,
        f"udp:{format_hostport(address, QUIC_PORT)}",
        lambda: probe_udp_quic(address, o.timeout_s),
    )


_DIRECT = {
    "direct.tcp-https": _direct_https,
    "direct.tcp-other-port": _direct_other,
    "direct.http": _direct_http,
    "direct.ipv6": _direct_v6,
    "udp.quic": _udp_quic,
}


def _query_name(t: Targets) -> str | None:
    if t.denied_host is not None:
        return t.denied_host
    return t.allowed.host if t.allowed is not None else None


def _dns_outside(probe: Callable[[str, str, float], Observation]) -> Callable[..., Planned]:
    def build(o: AttackOptions, t: Targets, s: ProbeSpec) -> Planned:
        server, name = o.outside_resolver, _query_name(t)
        if server is None:
            return Planned(s, "", why_not="no --outside-resolver given")
        if name is None:
            return Planned(s, "", why_not="no --denied/--allowed URL: no name to ask for")
        return Planned(
            s, format_hostport(server, DNS_PORT), lambda: probe(server, name, o.timeout_s)
        )

    return build


def _dot(o: AttackOptions, t: Targets, s: ProbeSpec) -> Planned:
    server = o.outside_resolver
    if server is None:
        return Planned(s, "", why_not="no --outside-resolver given")
    return Planned(
        s,
        format_hostport(server, DOT_PORT),
        lambda: probe_tls(server, DOT_PORT, "", o.timeout_s),
    )


def _doh_direct(o: AttackOptions, t: Targets, s: ProbeSpec) -> Planned:
    name = o.doh_name
    if name is None:
        return Planned(s, "", why_not="no --doh-name given")
    return Planned(s, f"{name}:443", lambda: probe_doh_direct(name, o.timeout_s))


def _doh_proxy(o: AttackOptions, t: Targets, s: ProbeSpec) -> Planned:
    name, endpoint = o.doh_name, t.endpoint
    if name is None:
        return Planned(s, "", why_not="no --doh-name given")
    if endpoint is None:
        return Planned(s, "", why_not=t.no_proxy_why)
    return Planned(
        s, f"{name}:443", lambda: probe_proxy_connect(endpoint, f"{name}:443", name, o.timeout_s)
    )


_DNS = {
    "dns.udp-outside": _dns_outside(probe_dns_udp),
    "dns.tcp-outside": _dns_outside(probe_dns_tcp),
    "dns.dot-outside": _dot,
    "dns.doh-direct": _doh_direct,
    "dns.doh-via-proxy": _doh_proxy,
}


def _need_proxy(t: Targets, s: ProbeSpec) -> Planned | None:
    if t.endpoint is None:
        return Planned(s, "", why_not=t.no_proxy_why)
    return None


def _connect_ip(o: AttackOptions, t: Targets, s: ProbeSpec) -> Planned:
    missing = _need_proxy(t, s) or _need_allowed(t, s)
    if missing is not None:
        return missing
    assert t.endpoint is not None
    endpoint, authority = t.endpoint, format_hostport(t.v4[0], t.https_port)
    return Planned(
        s, authority, lambda: probe_proxy_connect(endpoint, authority, None, o.timeout_s)
    )


def _http_ip(o: AttackOptions, t: Targets, s: ProbeSpec) -> Planned:
    missing = _need_proxy(t, s) or _need_allowed(t, s)
    if missing is not None:
        return missing
    assert t.endpoint is not None
    endpoint = t.endpoint
    host = t.v4[0] if t.http_port == 80 else format_hostport(t.v4[0], t.http_port)
    url = f"http://{host}/"
    return Planned(s, url, lambda: probe_proxy_get(endpoint, url, host, o.timeout_s))


def _sni_mismatch(o: AttackOptions, t: Targets, s: ProbeSpec) -> Planned:
    missing = _need_proxy(t, s)
    if missing is not None:
        return missing
    if t.allowed is None or t.denied_host is None:
        return Planned(s, "", why_not="needs an --allowed and a --denied URL")
    assert t.endpoint is not None
    endpoint, denied = t.endpoint, t.denied_host
    authority = format_hostport(t.allowed.host, t.https_port)
    return Planned(
        s,
        authority,
        lambda: probe_proxy_connect(endpoint, authority, denied, o.timeout_s, tests_sni=True),
    )


def _host_mismatch(o: AttackOptions, t: Targets, s: ProbeSpec) -> Planned:
    missing = _need_proxy(t, s)
    if missing is not None:
        return missing
    if t.allowed is None or t.denied_http_absolute is None:
        return Planned(s, "", why_not="needs an --allowed and a --denied URL")
    assert t.endpoint is not None
    endpoint, url = t.endpoint, t.denied_http_absolute
    host = t.allowed_http.host_header if t.allowed_http is not None else t.allowed.host
    return Planned(s, url, lambda: probe_proxy_get(endpoint, url, host, o.timeout_s))


def _http_denied(o: AttackOptions, t: Targets, s: ProbeSpec) -> Planned:
    missing = _need_proxy(t, s)
    if missing is not None:
        return missing
    if t.denied_http_absolute is None or t.denied_host is None:
        return Planned(s, "", why_not="no --denied URL")
    assert t.endpoint is not None
    endpoint, url = t.endpoint, t.denied_http_absolute
    host = url.split("/")[2]
    return Planned(s, url, lambda: probe_proxy_get(endpoint, url, host, o.timeout_s))


def _keepalive(o: AttackOptions, t: Targets, s: ProbeSpec) -> Planned:
    missing = _need_proxy(t, s)
    if missing is not None:
        return missing
    if t.allowed_http is None:
        return Planned(s, "", why_not="needs an http:// --allowed URL (plain HTTP keep-alive)")
    if t.denied_http_absolute is None:
        return Planned(s, "", why_not="no --denied URL")
    assert t.endpoint is not None
    endpoint, allowed, url = t.endpoint, t.allowed_http, t.denied_http_absolute
    host = url.split("/")[2]
    return Planned(s, url, lambda: probe_keepalive(endpoint, allowed, url, host, o.timeout_s))


def _self(o: AttackOptions, t: Targets, s: ProbeSpec) -> Planned:
    missing = _need_proxy(t, s)
    if missing is not None:
        return missing
    assert t.endpoint is not None
    endpoint = t.endpoint
    authority = endpoint.authority
    return Planned(
        s, authority, lambda: probe_proxy_connect(endpoint, authority, None, o.timeout_s)
    )


def _admin(o: AttackOptions, t: Targets, s: ProbeSpec) -> Planned:
    missing = _need_proxy(t, s)
    if missing is not None:
        return missing
    if o.admin_port is None:
        return Planned(s, "", why_not="--admin-port 0: no admin port to try")
    assert t.endpoint is not None
    endpoint = t.endpoint
    authority = format_hostport(endpoint.host, o.admin_port)
    return Planned(
        s, authority, lambda: probe_proxy_connect(endpoint, authority, None, o.timeout_s)
    )


_PROXY = {
    "proxy.connect-ip-literal": _connect_ip,
    "proxy.http-ip-literal": _http_ip,
    "proxy.sni-mismatch": _sni_mismatch,
    "proxy.host-mismatch": _host_mismatch,
    "proxy.http-denied": _http_denied,
    "proxy.keepalive-denied": _keepalive,
    "proxy.self": _self,
    "proxy.admin": _admin,
}


def _metadata_proxy(address: str) -> Callable[..., Planned]:
    def build(o: AttackOptions, t: Targets, s: ProbeSpec) -> Planned:
        missing = _need_proxy(t, s)
        if missing is not None:
            return missing
        assert t.endpoint is not None
        endpoint = t.endpoint
        host = f"[{address}]" if ":" in address else address
        url = f"http://{host}/"
        return Planned(s, url, lambda: probe_proxy_get(endpoint, url, host, o.timeout_s))

    return build


def _metadata_direct(address: str) -> Callable[..., Planned]:
    def build(o: AttackOptions, t: Targets, s: ProbeSpec) -> Planned:
        host = f"[{address}]" if ":" in address else address
        return Planned(
            s, format_hostport(address, 80), lambda: probe_http(address, 80, host, o.timeout_s)
        )

    return build


_METADATA = {
    "metadata.proxy-v4": _metadata_proxy(METADATA_V4),
    "metadata.proxy-v4-mapped": _metadata_proxy(METADATA_V4_MAPPED),
    "metadata.proxy-nat64": _metadata_proxy(METADATA_NAT64),
    "metadata.direct-v4": _metadata_direct(METADATA_V4),
    "metadata.direct-v4-mapped": _metadata_direct(METADATA_V4_MAPPED),
    "metadata.direct-nat64": _metadata_direct(METADATA_NAT64),
}


def run_planned(planned: Sequence[Planned], parallel: int) -> list[Finding]:
    """Run the runnable probes concurrently (at most `parallel` at once); findings in order."""
    runnable = [p for p in planned if p.run is not None]
    workers = max(1, min(parallel, MAX_PARALLEL, len(runnable) or 1))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="attack") as pool:
        futures = {id(p): pool.submit(_run_one, p) for p in runnable}
        findings = []
        for p in planned:
            if p.run is None:
                findings.append(skipped(p.spec, p.why_not or "not applicable", p.target))
            else:
                findings.append(futures[id(p)].result())
    return findings


def _run_one(planned: Planned) -> Finding:
    assert planned.run is not None
    try:
        observation = planned.run()
    except NotRunnable as exc:
        return skipped(planned.spec, str(exc), planned.target)
    return judge(planned.spec, planned.target, observation)
