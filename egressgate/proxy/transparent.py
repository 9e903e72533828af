"""The transparent listener (`transparent_listen`): clients that never heard of the proxy.

The kernel redirects a pod's outbound TCP 80/443 here (nftables/iptables REDIRECT), or, with the
DNS guard's `dns_answer: proxy`, the client dials this listener believing it is the origin. The
client sends what it would send to the origin; we read (and keep, to relay unchanged) its first
bytes and take the destination NAME from them:

    first byte 0x16 (TLS)  → the ClientHello's SNI, bounded like a tunnel's hello
                              (MAX_HELLO_BYTES, hello_wait_s); unreadable → sni-unreadable
    an ASCII letter (HTTP) → the request head's Host (absolute-form too), bounded by
                              max_header_bytes / header_timeout_s; malformed → 400
    anything else, nothing  → no name: allowed only when the original destination is an IP the
                              policy lists, else no-destination-name

The name then goes through the same `Admission` as a CONNECT (proxy/gate.py): policy on the
name and port (`connect_ports` for TLS, `http_ports` for HTTP), resolve, vet every address,
connect to a vetted one. The original destination (SO_ORIGINAL_DST) is evidence only: it decides
the port and is logged as `original_dst`, but we never connect to it on the client's word (a
forged SNI with an unlisted IP reaches the allowed name's real address, not the IP). A
connection that was not redirected has no original destination: the standard port (443 TLS, 80
HTTP) is assumed.

HTTP keep-alive: every later request head on the connection is read too (bytes still relayed
unchanged); one naming another host closes the connection (fail closed: it was never judged).
Both kinds are relayed by the spliced relay on the reactor (net/relay.py), as CONNECT tunnels
are; for HTTP the client's direction is shown to the head parser chunk by chunk on its way.
Refusals: HTTP gets the usual 403 (X-Egressgate-Reason), TLS an access_denied alert, anything
else a close; every connection is one access record of kind `transparent`.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Sequence

from egressgate.errors import ProtocolError, ProxyFailure, Reason, Refused, UpstreamError
from egressgate.http1.events import RequestHead, TunnelStart
from egressgate.http1.origin_host import request_host
from egressgate.http1.parser import RequestParser
from egressgate.names.hostname import normalize_host
from egressgate.net.origdst import redirected_destination
from egressgate.net.rawsocket import RawAcceptor, RawSocket
from egressgate.net.reactor import READABLE, Readiness
from egressgate.net.relay import Inspector, Relay, RelayStats
from egressgate.net.tasks import spawn
from egressgate.observe.record import AccessRecord
from egressgate.policy.intercept import InterceptHost
from egressgate.policy.secret_scan import LeakScan
from egressgate.proxy.acceptor import client_identity
from egressgate.proxy.context import ProxyContext, connect_step
from egressgate.proxy.failsafe import internal_error
from egressgate.proxy.gate import (
    Admission,
    Connect,
    Hello,
    NeedAddresses,
    Open,
    Refuse,
    conclude,
    starts_as_tls,
    unreadable_hello_why,
)
from egressgate.proxy.intercept import InterceptSession, leak_finder
from egressgate.proxy.raw_tunnel import RawTunnel
from egressgate.proxy.refusal import TLS_ACCESS_DENIED_ALERT, refusal_response
from egressgate.runtime.state import Generation
from egressgate.tls.clienthello import MAX_HELLO_BYTES, HelloResult, read_sni

KIND = "transparent"
HOST_CHANGED = "host-changed"  # the relay's end when a later request names another host
TLS_PORT = 443  # the port assumed when the connection was not redirected
HELLO_WAIT_MAX_S = 5.0  # the first bytes' wait: at most this, or header_timeout_s if shorter
HTTP_PORT = 80
RECV_BYTES = 64 * 1024
MAX_ACCEPTS_PER_WAKEUP = 64
LINGER_S = 1.0  # after a refusal: how long the client's remaining bytes are read and dropped
LINGER_BYTES = 256 * 1024  # then let other connections run
# Refusals of the name itself that become no-destination-name when there was no name.
_NAME_REFUSALS = frozenset({Reason.HOST_NOT_ALLOWED, Reason.IP_LITERAL_NOT_ALLOWED})


class TransparentListener:
    """Accepts redirected connections on one listening socket.

    The usual connection, a TLS ClientHello whose SNI arrived whole with the handshake, takes the
    CONNECT raw path's synchronous machinery (TransparentTunnel, a RawTunnel): no coroutine, no
    task, both sockets on the reactor. Everything else (HTTP, a hello in several pieces, nothing
    yet, no name) is a TransparentConnection task, which reads on with the bytes already read.
    """

    def __init__(self, ctx: ProxyContext, listener: socket.socket) -> None:
        self.ctx = ctx
        self.listener = listener
        self.loop = asyncio.get_running_loop()
        listener.setblocking(False)
        self.raw = RawAcceptor(listener)
        self.loop.add_reader(listener.fileno(), self._accept)

    def _accept(self) -> None:
        ctx = self.ctx
        accept = self.raw.accept
        for _ in range(MAX_ACCEPTS_PER_WAKEUP):
            try:
                client, peer = accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # EMFILE, ECONNABORTED: the next readiness tries again
            if ctx.state.closing or len(ctx.live) + len(ctx.tunnels) >= ctx.limits.max_connections:
                client.close()
                continue
            # As on the CONNECT listener: a client's first bytes are often already waiting.
            try:
                data: bytes | None = client.recv(RECV_BYTES)
            except (BlockingIOError, InterruptedError):
                data = None
            except OSError:
                data = b""
            if data is None:
                _FirstBytes(ctx, client, str(peer[0])).start()
            else:
                _route(ctx, client, str(peer[0]), data, False)

    def close(self) -> None:
        self.loop.remove_reader(self.listener.fileno())
        self.listener.close()


def _route(
    ctx: ProxyContext, client: RawSocket, peer_host: str, data: bytes, in_reactor: bool
) -> None:
    """A whole ClientHello with an SNI (read short: nothing more is waiting) takes the raw path;
    anything else the task path, with the bytes read so far."""
    if len(data) < RECV_BYTES and starts_as_tls(data):
        name = read_sni(data)
        if isinstance(name, str):
            state = Readiness()
            if in_reactor:
                ctx.reactor.set_handler(client.fileno(), state.note)
            else:
                ctx.reactor.add(client.fileno(), state.note)
            TransparentTunnel(ctx, client, peer_host, name, data, state).start()
            return
    if in_reactor:
        ctx.reactor.remove(client.fileno())  # the event loop reads it from now on
    family = socket.AF_INET6 if ":" in peer_host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, 0, client.detach())
    TransparentConnection(ctx, sock, peer_host, data).start()


class _FirstBytes:
    """A redirected connection whose first bytes had not arrived at accept: waits for them on
    the reactor (no task), then routes them as the listener would have. The wait is bounded by
    the hello wait, enforced by the server's sweeper (it walks ctx.live)."""

    __slots__ = ("ctx", "deadline", "fd", "peer_host", "sock")

    def __init__(self, ctx: ProxyContext, sock: RawSocket, peer_host: str) -> None:
        self.ctx = ctx
        self.sock = sock
        self.fd = sock.fileno()
        self.peer_host = peer_host
        limits = ctx.limits
        self.deadline = time.monotonic() + min(HELLO_WAIT_MAX_S, limits.header_timeout_s)

    def start(self) -> None:
        self.ctx.live.add(self)
        self.ctx.metrics.active_connections += 1
        self.ctx.reactor.add(self.fd, self._on_event, False, self._internal_error)

    def _on_event(self, events: int) -> None:
        if not events & READABLE:
            return
        try:
            data = self.sock.recv(RECV_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        self._leave()
        _route(self.ctx, self.sock, self.peer_host, data, True)

    def check_deadline(self, now: float) -> None:
        if self.deadline and now >= self.deadline:
            self._leave()
            _route(self.ctx, self.sock, self.peer_host, b"", True)  # "sent nothing": refused

    def _internal_error(self, exc: Exception) -> None:
        if self in self.ctx.live:
            self._leave()
            self.ctx.reactor.forget(self.fd)
            self.sock.close()
        internal_error(self.ctx.metrics, exc, "transparent first read")

    def _leave(self) -> None:
        self.deadline = 0.0
        self.ctx.leave_live(self)

    # Closable, for draining: nothing was read, nothing is owed
    def shutdown_idle(self) -> None:
        self.force_close()

    def force_close(self) -> None:
        if self in self.ctx.live:
            self._leave()
            self.ctx.reactor.forget(self.fd)
            self.sock.close()


def _original_text(original: tuple[str, int] | None) -> str | None:
    if original is None:
        return None
    host, port = original
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class TransparentTunnel(RawTunnel):
    """A redirected TLS connection whose SNI is known: the CONNECT raw path without the CONNECT
    (no "200"; the hello is judged as soon as the connection is open). Refusals are a TLS
    access_denied alert, as on the task path."""

    __slots__ = ("_name", "original")

    def __init__(
        self,
        ctx: ProxyContext,
        client: RawSocket,
        peer_host: str,
        name: str,
        hello: bytes,
        client_state: Readiness,
    ) -> None:
        identity, client_text = client_identity(peer_host)
        record = AccessRecord(time.time(), client_text, "TLS", KIND)
        super().__init__(ctx, client, identity, record, hello, client_state)
        self.original = redirected_destination(client)
        record.original_dst = _original_text(self.original)
        self._name = name

    def _port(self) -> int:
        return self.original[1] if self.original is not None else TLS_PORT

    def _admit(self) -> Admission:
        gen = self.ctx.state.current
        return Admission.for_host(gen, self.identity, self._name, self._port(), True)

    def _refused_admission(self, failure: ProxyFailure) -> Admission:
        gen = self.ctx.state.current
        admission = Admission(gen, self.identity, None, host_text=self._name, failure=failure)
        admission.port = self._port()
        return admission

    def _established_bytes(self) -> bytes:
        return b""  # nothing: _established judges the hello at once

    def _established(self) -> None:
        """Open: no "200" to send; the hello we already hold is judged at once."""
        if self.done:
            return
        self.record.status = 200
        outcome = self.admission.judge_hello(self.rest, True, sni=self._name)
        if outcome is Hello.RELAY:
            if self._intercept is not None:  # a host under `intercept` (proxy/intercept.py)
                self._intercept_now(self.rest, self._intercept)
            else:
                self._relay_now(self.rest)
        else:
            self._hello = self.rest
            self._cut(TLS_ACCESS_DENIED_ALERT)

    def _refusal_bytes(self, step: Refuse) -> bytes:
        """Refused before the relay: the client speaks TLS, so an alert, never an HTTP 403."""
        return TLS_ACCESS_DENIED_ALERT


class TransparentConnection:
    """One redirected connection: read the name, admit, connect, relay (see the module doc)."""

    __slots__ = (
        "_relay",
        "_session",
        "_task",
        "_upstream",
        "admission",
        "client",
        "ctx",
        "done",
        "first",
        "gen",
        "identity",
        "loop",
        "original",
        "record",
    )

    def __init__(
        self, ctx: ProxyContext, sock: socket.socket, peer_host: str, first: bytes | None = None
    ) -> None:
        self.ctx = ctx
        self.client = sock
        self.first = first  # what the listener already read (None: nothing had arrived)
        self.loop = asyncio.get_running_loop()
        self.gen: Generation = ctx.state.current  # one config from start to end
        self.identity, client_text = client_identity(peer_host)
        self.record = AccessRecord(time.time(), client_text, "-", KIND)
        self.original = redirected_destination(sock)
        self.record.original_dst = _original_text(self.original)
        self.admission: Admission | None = None
        self._upstream: socket.socket | None = None
        self._relay: Relay | None = None
        self._session: InterceptSession | None = None
        self._task: asyncio.Task[None] | None = None
        self.done = False
        ctx.live.add(self)
        ctx.metrics.active_connections += 1

    def start(self) -> None:
        self._task = spawn(self._serve(), name="egressgate-transparent")

    # ---- drain (proxy/server.py)
    def shutdown_idle(self) -> None:
        """Nothing is idle here (a connection is reading its name, or relaying), except an
        intercepted connection between two requests."""
        if self._session is not None:
            self._session.shutdown_idle()

    def force_close(self) -> None:
        if self._session is not None:
            self._session.close()
        elif self._relay is not None:
            self._relay.close()
        elif self._task is not None:
            self._task.cancel()

    # ---- the story
    async def _serve(self) -> None:
        try:
            await self._run()
        except asyncio.CancelledError:
            self._finish(RelayStats(0, 0, "closed"), Refused(Reason.SHUTTING_DOWN))
        except Exception as exc:
            failure = UpstreamError(Reason.UPSTREAM_ERROR, f"internal error: {exc!r}")
            self._finish(RelayStats(0, 0, "closed"), failure)

    async def _run(self) -> None:
        limits = self.gen.config.limits
        hello_wait_s = min(HELLO_WAIT_MAX_S, limits.header_timeout_s)
        start = self.loop.time()
        data = self.first
        self.first = None
        if data is None:
            data = await self._recv_within(start + hello_wait_s)
        if not data:
            await self._no_name(data or b"", "the client sent nothing within the hello wait")
        elif starts_as_tls(data):
            await self._tls(data, start + hello_wait_s)
        elif data[:1].isalpha():
            await self._http(data, start + limits.header_timeout_s)
        else:
            await self._no_name(data, "the first bytes are neither TLS nor HTTP")

    async def _recv_within(self, deadline: float) -> bytes | None:
        """The next bytes, b"" at EOF, None when `deadline` (loop time) passed first."""
        remaining = deadline - self.loop.time()
        if remaining <= 0:
            return None
        try:
            return await asyncio.wait_for(self.loop.sock_recv(self.client, RECV_BYTES), remaining)
        except TimeoutError:
            return None
        except OSError:
            return b""

    # ---- TLS: the SNI is the name
    async def _tls(self, data: bytes, deadline: float) -> None:
        eof = timed_out = False
        result = read_sni(data)
        while result is HelloResult.NEED_MORE and len(data) < MAX_HELLO_BYTES:
            more = await self._recv_within(deadline)
            if not more:
                eof, timed_out = more is not None, more is None
                break
            data += more
            result = read_sni(data)
        self.record.method = "TLS"
        if isinstance(result, str):
            await self._admit_and_relay(result, True, data)
        elif result is HelloResult.NO_SNI:
            await self._no_name(data, "the TLS ClientHello has no server name")
        else:
            if result is HelloResult.NEED_MORE and len(data) >= MAX_HELLO_BYTES:
                result = HelloResult.TOO_LARGE
            why = unreadable_hello_why(
                result, len(data), eof, min(HELLO_WAIT_MAX_S, self._header_timeout())
            )
            if timed_out:
                why = f"the TLS ClientHello was incomplete after the hello wait ({len(data)} bytes)"
            await self._refuse(self._policy_less(Refused(Reason.SNI_UNREADABLE, why)), data)

    def _header_timeout(self) -> float:
        return self.gen.config.limits.header_timeout_s

    # ---- HTTP: the Host header (or the absolute-form URI) is the name
    async def _http(self, data: bytes, deadline: float) -> None:
        limits = self.gen.config.limits
        parser = RequestParser(limits.max_request_line_bytes, limits.max_header_bytes)
        buffered = data
        try:
            head = _first_head(parser.feed(data))
            while head is None:
                more = await self._recv_within(deadline)
                if more is None:
                    raise ProtocolError(Reason.HEADER_TIMEOUT, "the request head did not arrive")
                if not more:
                    raise ProtocolError(Reason.BAD_REQUEST, "the client closed mid-head")
                buffered += more
                head = _first_head(parser.feed(more))
            self.record.method = head.method.decode("ascii", "replace")
            host, port = request_host(head)
        except ProtocolError as exc:
            await self._refuse(self._policy_less(exc), buffered, http=True)
            return
        finder = leak_finder(self.gen, None) if self.gen.policies.all_secrets else None
        if finder is not None and finder.search(buffered):
            # A plaintext leg the proxy reads: no interception secret may go out on it.
            failure = Refused(Reason.SECRET_LEAK, "the request carries an interception secret")
            await self._refuse(self._policy_less(failure, host), buffered, http=True)
            return
        await self._admit_and_relay(host, False, buffered, parser, port)

    # ---- no name: only an original destination the policy lists as an IP
    async def _no_name(self, data: bytes, why: str) -> None:
        if self.original is None:
            detail = f"{why}, and the connection was not redirected (no original destination)"
            await self._refuse(self._policy_less(Refused(Reason.NO_DESTINATION_NAME, detail)), data)
            return
        host, port = self.original
        admission = Admission.for_host(self.gen, self.identity, host, port, True)
        step = admission.next()
        if isinstance(step, Refuse) and step.reason in _NAME_REFUSALS:
            admission.fail(
                Refused(Reason.NO_DESTINATION_NAME, f"{why}; original destination {host}:{port}")
            )
        await self._connect_and_relay(admission, data, None, check_hello=False)

    # ---- the gate, then the relay
    async def _admit_and_relay(
        self,
        host: str,
        tls: bool,
        data: bytes,
        parser: RequestParser | None = None,
        explicit_port: int | None = None,
    ) -> None:
        standard = TLS_PORT if tls else HTTP_PORT
        port = self.original[1] if self.original is not None else standard
        if explicit_port is not None and explicit_port != port:
            failure = ProtocolError(
                Reason.BAD_REQUEST,
                f"the Host port {explicit_port} differs from the destination port {port}",
            )
            await self._refuse(self._policy_less(failure, host), data, http=not tls)
            return
        admission = Admission.for_host(self.gen, self.identity, host, port, tls)
        await self._connect_and_relay(admission, data, parser, check_hello=tls)

    async def _connect_and_relay(
        self,
        admission: Admission,
        data: bytes,
        parser: RequestParser | None,
        check_hello: bool,
    ) -> None:
        self.admission = admission
        http = parser is not None
        step = admission.next()
        if isinstance(step, NeedAddresses):
            found = self.ctx.resolver.cached(step.name)
            if found is None:
                try:
                    found = (await self.ctx.resolver.resolve(step.name)).addresses
                except ProxyFailure as exc:
                    admission.resolve_failed(exc)
            if found is not None:
                admission.addresses(found)
            step = admission.next()
        if isinstance(step, Connect):
            upstream = await connect_step(self.ctx, admission, step)
            if upstream is not None:
                self._upstream = upstream
            step = admission.next()
        if isinstance(step, Open) and check_hello:
            outcome = admission.judge_hello(data, True)
            if isinstance(outcome, Refuse):
                step = outcome
            else:
                assert outcome is Hello.RELAY
        if isinstance(step, Refuse):
            await self._refuse(None, data, http=http)
            return
        assert isinstance(step, Open)
        if step.intercept is not None and check_hello:
            self._intercept_now(data, step.intercept)
        elif parser is None:
            self._relay_raw(data)
        elif self.gen.policies.all_secrets:
            await self._relay_http_scanned(data, parser)
        else:
            self._relay_http(data, parser)

    def _relay_raw(self, data: bytes, inspect_up: Inspector | None = None) -> None:
        """Spliced relay on the reactor (net/relay.py), the peeked bytes first, unchanged;
        `inspect_up` sees every later client chunk (HTTP keep-alive)."""
        upstream = self._upstream
        assert upstream is not None
        reactor = self.ctx.reactor
        client_state, upstream_state = Readiness(), Readiness()
        reactor.add(self.client.fileno(), client_state.note)
        reactor.add(upstream.fileno(), upstream_state.note)
        self._enter_tunnel()
        self._upstream = None  # the relay owns it now
        relay = Relay(
            reactor,
            self.ctx.outbox,
            self.client,
            upstream,
            self._relayed,
            self.gen.config.limits.idle_timeout_s,
            initial_up=data,
            inspect_up=inspect_up,
        )
        self._relay = relay
        relay.start()

    def _intercept_now(self, data: bytes, host: InterceptHost) -> None:
        """The SNI names a host under `intercept`: proxy/intercept.py takes both sockets."""
        upstream = self._upstream
        assert upstream is not None
        assert self.admission is not None
        session = InterceptSession(
            self.ctx, self.admission, host, self.record.client, self._relayed
        )
        self._enter_tunnel()
        self._upstream = None  # the session owns it now
        self._session = session
        self.record.detail = "intercepted"
        session.start(self.client, upstream, data)

    def _relayed(self, stats: RelayStats) -> None:
        self._relay = None
        if stats.end == HOST_CHANGED:
            self.record.detail = (
                "a later request on this connection named another host: connection closed"
            )
        self._finish(stats, None, closed=True)

    def _relay_http(self, data: bytes, parser: RequestParser) -> None:
        """The same spliced relay; every later request head the client sends is read on the
        way (the bytes go on unchanged), and one naming another host closes the connection.
        The responses are spliced: only the client's direction passes through Python.
        (With interception secrets configured: _relay_http_scanned.)"""
        assert self.admission is not None
        judged = self.admission.target.host if self.admission.target is not None else None
        self._relay_raw(data, _HeadWatch(parser, judged).inspect)

    async def _relay_http_scanned(self, data: bytes, parser: RequestParser) -> None:
        """Relay through Python, when interception secrets exist: every byte the client sends is
        scanned for them before it goes out (held back across reads, policy/secret_scan.py),
        which the spliced relay cannot do; every later request head is read, one naming another
        host closes the connection. The bytes go on unchanged."""
        upstream = self._upstream
        assert upstream is not None
        assert self.admission is not None
        judged = self.admission.target.host if self.admission.target is not None else None
        self._enter_tunnel()
        counts = [len(data), 0]
        activity = [self.loop.time()]
        pumps = (
            spawn(self._pump_up(upstream, parser, judged, data, counts, activity), name="up"),
            spawn(self._pump(upstream, self.client, counts, 1, activity), name="down"),
        )
        idle_s = self.gen.config.limits.idle_timeout_s
        end = "eof"
        try:
            pending: set[asyncio.Future[str]] = set(pumps)
            while pending:
                finished, pending = await asyncio.wait(
                    pending, timeout=idle_s, return_when=asyncio.FIRST_COMPLETED
                )
                for pump in finished:
                    result = pump.result()
                    if result != "eof":
                        end = result
                        pending = set()
                if pending and self.loop.time() - activity[0] >= idle_s:
                    end = "idle-timeout"
                    break
        finally:
            for pump in pumps:
                pump.cancel()
        if end == "host-changed":
            self.record.detail = (
                "a later request on this connection named another host: connection closed"
            )
        elif end == "secret-leak":
            self._finish(
                RelayStats(counts[0], counts[1], end),
                Refused(
                    Reason.SECRET_LEAK,
                    "a later request on this connection carried an interception secret:"
                    " connection closed",
                ),
            )
            return
        self._finish(RelayStats(counts[0], counts[1], end), None)

    async def _pump_up(
        self,
        upstream: socket.socket,
        parser: RequestParser | None,
        judged: object,
        first: bytes,
        counts: list[int],
        activity: list[float],
    ) -> str:
        # Interception secrets exist: every byte is scanned before it goes out (a secret split
        # across two reads is held back, policy/secret_scan.py).
        finder = leak_finder(self.gen, None) if self.gen.policies.all_secrets else None
        scan = LeakScan(finder) if finder is not None else None
        try:
            if scan is not None:
                safe_first = scan.feed(first)
                if safe_first is None:
                    return "secret-leak"
                at_boundary = parser is None or parser.at_boundary
                first = safe_first + scan.flush() if at_boundary else safe_first
            await self.loop.sock_sendall(upstream, first)
            while True:
                data = await self.loop.sock_recv(self.client, RECV_BYTES)
                activity[0] = self.loop.time()
                if not data:
                    if scan is not None:
                        await self.loop.sock_sendall(upstream, scan.flush())
                    _shutdown_write(upstream)
                    return "eof"
                if parser is not None:
                    try:
                        events = parser.feed(data)
                    except ProtocolError:
                        return "host-changed"  # unreadable: it cannot be judged either
                    for event in events:
                        if isinstance(event, TunnelStart):
                            parser = None  # Upgrade: what follows is not HTTP any more
                        elif isinstance(event, RequestHead) and not _same_host(event, judged):
                            return "host-changed"
                counts[0] += len(data)
                if scan is not None:
                    safe = scan.feed(data)
                    if safe is None:
                        return "secret-leak"
                    # A request ends here (or its head does): release what was held back, or
                    # the origin would wait for the last bytes of a request it should answer.
                    data = safe + scan.flush() if parser is None or parser.at_boundary else safe
                await self.loop.sock_sendall(upstream, data)
        except OSError:
            return "reset"

    async def _pump(
        self,
        src: socket.socket,
        dst: socket.socket,
        counts: list[int],
        index: int,
        activity: list[float],
    ) -> str:
        try:
            while True:
                data = await self.loop.sock_recv(src, RECV_BYTES)
                activity[0] = self.loop.time()
                if not data:
                    _shutdown_write(dst)
                    return "eof"
                counts[index] += len(data)
                await self.loop.sock_sendall(dst, data)
        except OSError:
            return "reset"

    # ---- ends
    def _policy_less(self, failure: ProxyFailure, host: str | None = None) -> ProxyFailure:
        """A refusal before any admission: a refused admission still names the policy."""
        self.admission = Admission(self.gen, self.identity, None, host_text=host, failure=failure)
        if self.original is not None:
            self.admission.port = self.original[1]
        try:
            self.record.policy = self.gen.policies.policy_for(self.identity).name
        except Exception:
            pass
        return failure

    async def _refuse(self, failure: ProxyFailure | None, data: bytes, http: bool = False) -> None:
        """Tell the client in its own protocol, then log; a lingering close, so that bytes
        the client is still sending do not turn our answer into a reset it never reads."""
        admission = self.admission
        failure = failure or (admission.failure if admission is not None else None)
        assert failure is not None
        try:
            if http:
                host = admission.host_text if admission is not None else None
                policy = self.record.policy
                self.client.send(
                    refusal_response(failure.reason, host, failure.detail, policy, None)
                )
            elif data[:1] == b"\x16":
                self.client.send(TLS_ACCESS_DENIED_ALERT)
            self.client.shutdown(socket.SHUT_WR)
            await self._drain()
        except OSError:
            pass
        self._finish(RelayStats(0, 0, "refused"), failure)

    async def _drain(self) -> None:
        """Read and discard what the client still sends: bounded in bytes and time."""
        deadline = self.loop.time() + LINGER_S
        left = LINGER_BYTES
        while left > 0:
            data = await self._recv_within(deadline)
            if not data:
                return
            left -= len(data)

    def _enter_tunnel(self) -> None:
        self.ctx.live.discard(self)
        self.ctx.tunnels.add(self)
        self.ctx.metrics.active_tunnels += 1

    def _finish(
        self, stats: RelayStats, failure: ProxyFailure | None, closed: bool = False
    ) -> None:
        if self.done:
            return
        self.done = True
        ctx = self.ctx
        record = self.record
        record.bytes_up, record.bytes_down = stats.bytes_up, stats.bytes_down
        if self.ctx.tunnels.__contains__(self):
            ctx.tunnels.discard(self)
            ctx.metrics.active_tunnels -= 1
        ctx.live.discard(self)
        ctx.metrics.active_connections -= 1
        if not closed:
            if self._upstream is not None:
                self._upstream.close()
            self.client.close()
        conclude(record, self.admission, failure)
        if record.decision in ("allow", "report") and stats.end not in ("eof", "refused"):
            record.detail = record.detail or f"relay ended: {stats.end}"
        if record.status == 0:
            record.status = 200
        ctx.finish(record)


class _HeadWatch:
    """The relay's inspector for an HTTP connection: feeds the client's bytes to the request
    parser; a head for another host (or bytes it cannot parse) ends the relay."""

    __slots__ = ("judged", "parser")

    def __init__(self, parser: RequestParser, judged: object) -> None:
        self.parser: RequestParser | None = parser
        self.judged = judged

    def inspect(self, data: bytes) -> str | None:
        parser = self.parser
        if parser is None:
            return None  # after an Upgrade: not HTTP any more
        try:
            events = parser.feed(data)
        except ProtocolError:
            return HOST_CHANGED  # unreadable: it cannot be judged either
        for event in events:
            if isinstance(event, TunnelStart):
                self.parser = None
                return None
            if isinstance(event, RequestHead) and not _same_host(event, self.judged):
                return HOST_CHANGED
        return None


def _first_head(events: Sequence[object]) -> RequestHead | None:
    for event in events:
        if isinstance(event, RequestHead):
            return event
    return None


def _same_host(head: RequestHead, judged: object) -> bool:
    try:
        host, _port = request_host(head)
        return normalize_host(host) == judged
    except Exception:
        return False


def _shutdown_write(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass
