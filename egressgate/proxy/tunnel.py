"""CONNECT tunnels: port and policy check, the gate, "200", an optional SNI check, the relay.

Two carriers share one Tunnel core:
- RawTunnel: plain listeners. The acceptor hands over the raw client socket; the whole tunnel
  runs on callbacks from the private edge-triggered epoll (connect, hello, splice relay) without
  a coroutine when the destination's addresses are known (IP literal, hosts file, DNS cache) —
  the CONNECT-rate hot path.
- TunnelExchange: CONNECT inside the TLS listener (an asyncio SSL transport, bytes must be
  decrypted by the proxy), relayed with the transport pump (net/pump.py).

SNI check (per policy, on by default): after "200", the first bytes from the client are read
and, if they are a TLS ClientHello, its server name must be the CONNECT host and allowed by the
policy (no domain fronting through an allowed name). A refused tunnel gets a TLS access_denied
alert (an HTTP 403 is no longer possible after "200") and a 403 line in the access log. Tunnels
that carry no TLS or no SNI are allowed or refused by the policy's `tunnels_without_sni`. A
tunnel that starts with a TLS handshake record is TLS: if its ClientHello cannot be read within
`hello_wait_s()` and MAX_HELLO_BYTES (too slow, too large, malformed) it is refused
(`sni-unreadable`) whatever `tunnels_without_sni` says. The bytes read for the check are relayed
unchanged.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import time
from collections.abc import Callable

from egressgate.errors import ProxyFailure
from egressgate.http1.events import RequestHead
from egressgate.http1.render import CONNECT_ESTABLISHED
from egressgate.http1.semantics import parse_connect_target
from egressgate.names.hostname import IPAddress, address_text, address_texts
from egressgate.net.connect import connect_first, translate_os_error
from egressgate.net.pump import TransportPump
from egressgate.net.rawsocket import RawSocket, nonblocking_stream
from egressgate.net.reactor import FAILED, READABLE, WRITABLE, Readiness
from egressgate.net.relay import Relay, RelayStats
from egressgate.net.tasks import spawn
from egressgate.observe.record import AccessRecord
from egressgate.policy.decision import ClientIdentity, Target
from egressgate.policy.intercept import InterceptHost
from egressgate.proxy import gate
from egressgate.proxy.admit import open_upstream
from egressgate.proxy.auth import login_from_headers
from egressgate.proxy.context import ProxyContext, SweptDeadline
from egressgate.proxy.exchange import ClientSide, Exchange
from egressgate.proxy.failsafe import internal_error
from egressgate.proxy.gate import Admission, Connect, Hello, NeedAddresses, Open, Refuse, Step
from egressgate.proxy.intercept import InterceptSession
from egressgate.proxy.refusal import TLS_ACCESS_DENIED_ALERT, TLS_INTERNAL_ERROR_ALERT
from egressgate.tls.clienthello import MAX_HELLO_BYTES

# Clients open tunnels to few destinations: parse and normalize each valid CONNECT target once
# (bounded; an invalid one is not stored and raises every time).
_DESTINATIONS: dict[bytes, Target] = {}
_MAX_DESTINATIONS = 4096


def connect_destination(raw_target: bytes) -> Target:
    """The destination of a CONNECT target (authority-form); raises ProxyFailure to refuse."""
    destination = _DESTINATIONS.get(raw_target)
    if destination is None:
        target = parse_connect_target(raw_target)
        host = gate.normalize_target_host(target.host)
        destination = Target(host, target.port, connect=True)
        if len(_DESTINATIONS) >= _MAX_DESTINATIONS:
            _DESTINATIONS.clear()
        _DESTINATIONS[raw_target] = destination
    return destination


def connect_admission(ctx: ProxyContext, identity: ClientIdentity, head: RequestHead) -> Admission:
    """The admission of a CONNECT request, under the generation in force now."""
    gen = ctx.state.current
    login = login_from_headers(head.headers) if gen.credentials else None
    try:
        destination = connect_destination(head.target)
    except ProxyFailure as exc:
        return Admission(gen, identity, None, login, host_text=_host_text(head.target), failure=exc)
    return Admission(gen, identity, destination, login)


def _host_text(raw_target: bytes) -> str:
    """What a refused CONNECT asked for, as the refusal and the log name it."""
    try:
        return parse_connect_target(raw_target).host
    except ProxyFailure:
        return raw_target[:200].decode("latin-1")


class _TunnelCore:
    """The admission, the record and the bookkeeping both carriers share."""

    __slots__ = ("admission", "ctx", "done", "head", "record", "rest")

    admission: Admission  # set by start(), the first thing the connection or acceptor calls

    def __init__(self, ctx: ProxyContext, head: RequestHead, record: AccessRecord) -> None:
        self.ctx = ctx
        self.head = head
        self.record = record
        self.rest = b""
        self.done = False

    def tunnel_done(self, stats: RelayStats) -> None:
        ctx = self.ctx
        ctx.metrics.active_tunnels -= 1
        ctx.tunnels.discard(self)
        record = self.record
        record.bytes_up += stats.bytes_up
        record.bytes_down += stats.bytes_down
        if stats.end not in ("eof", "refused") and record.detail is None:
            record.detail = f"tunnel ended: {stats.end}"
        self.finish_record()

    def finish_record(self) -> None:
        self.done = True
        self.ctx.finish(gate.conclude(self.record, self.admission))

    def shutdown_idle(self) -> None:
        pass


class RawTunnel(_TunnelCore, SweptDeadline):
    """A CONNECT on a plain listener, on raw sockets in the reactor (net/reactor.py).

    Both sockets stay in the edge-triggered reactor from accept (client) and socket creation
    (upstream) to close; each phase only swaps the handler. Edge-triggered events do not
    repeat, so `client_state` / `upstream_state` (Readiness) remember what they said.
    """

    __slots__ = (
        "_address",
        "_address_text",
        "_hello",
        "_intercept",
        "_on_deadline",
        "_pending",
        "_relay",
        "_session",
        "_sni_check",
        "client",
        "client_fd",
        "client_state",
        "deadline",
        "identity",
        "loop",
        "reactor",
        "upstream",
        "upstream_state",
    )

    def __init__(
        self,
        ctx: ProxyContext,
        client: RawSocket,
        identity: ClientIdentity,
        client_text: str,
        head: RequestHead,
        rest: bytes,
        client_state: Readiness,
    ) -> None:
        record = AccessRecord(time.time(), client_text, "CONNECT", "tunnel")
        super().__init__(ctx, head, record)
        self.client = client
        self.client_fd = client.fileno()
        self.client_state = client_state
        self.identity = identity
        self.rest = rest
        self.loop = ctx.reactor.loop
        self.reactor = ctx.reactor
        self.upstream: RawSocket | None = None
        self.upstream_state = Readiness()
        self._relay: Relay | None = None
        self._address: IPAddress | None = None  # being connected to on the reactor
        self._address_text = ""
        self._pending: Connect | None = None  # the Connect step the outbox callback carries out
        self._sni_check = False  # from the Open step
        self._intercept: InterceptHost | None = None  # from the Open step
        self._session: InterceptSession | None = None  # an intercepted tunnel's driver
        # The current phase's deadline (connect, ClientHello), checked by the server's sweeper
        # while this tunnel is in ctx.deadlines; 0: none.
        self.deadline = 0.0
        self._on_deadline: Callable[[], object] | None = None
        self._hello = b""
        ctx.tunnels.add(self)
        ctx.metrics.active_tunnels += 1

    def start(self) -> None:
        # Until the ClientHello phase or the relay reads the client: remember its events.
        self.reactor.set_handler(self.client_fd, self.client_state.note, self.internal_error)
        try:  # the invariant's boundary (proxy/failsafe.py); free until it raises
            self.admission = connect_admission(self.ctx, self.identity, self.head)
            self._advance(self.admission.next())
        except Exception as exc:
            self.internal_error(exc)

    # ---- a thin driver of the admission (proxy/gate.py)
    def _advance(self, step: Step) -> None:
        """Follow the admission's steps as far as they go without waiting (a cached name: the
        whole admission runs in this callback, no coroutine)."""
        admission = self.admission
        while not self.done:
            match step:
                case NeedAddresses():
                    found = self.ctx.resolver.cached(step.name)
                    if found is None:
                        spawn(self._resolve(step.name), "egressgate-resolve", self.internal_error)
                        return
                    admission.addresses(found)
                case Connect():
                    # A connect wakes the origin's accept on another core: done at the end of
                    # the loop iteration with the other tunnels' connects and sends, it wakes
                    # it once for all of them (net/outbox.py).
                    self._pending = step
                    self.ctx.outbox.later(self._connect)
                    return
                case Open():
                    self._sni_check = step.sni_check
                    self._intercept = step.intercept
                    self.ctx.outbox.later(self._established)  # with this iteration's sends
                    return
                case Refuse():
                    self._refuse_http(step)
                    return
            step = admission.next()

    async def _resolve(self, name: str) -> None:
        try:
            resolution = await self.ctx.resolver.resolve(name)
        except ProxyFailure as exc:
            self.admission.resolve_failed(exc)
        else:
            self.admission.addresses(resolution.addresses)
        self._advance(self.admission.next())

    def _connect(self) -> None:
        """One address (the usual case, and the benchmarked one): a non-blocking connect on
        the reactor. Several: net/connect.py's staggered, deadline-bounded strategy, in a task."""
        if self.done:
            return  # ended meanwhile (a drain)
        step = self._pending
        if step is None:
            return
        if len(step.addresses) == 1:
            self._connect_raw(step, step.addresses[0], step.port)
        else:
            spawn(self._connect_first(step), "egressgate-connect", self.internal_error)

    async def _connect_first(self, step: Connect) -> None:
        try:
            sock, address = await connect_first(
                step.addresses,
                step.port,
                step.attempt_timeout_s,
                step.total_timeout_s,
                self.ctx.metrics.count_upstream_failure,
            )
        except ProxyFailure as exc:
            self.admission.connect_failed(exc)
            self._advance(self.admission.next())
            return
        if self.done:  # ended meanwhile (a drain)
            sock.close()
            return
        self.upstream = sock
        self.upstream_state = Readiness()
        self.reactor.add(sock.fileno(), self.upstream_state.note, False, self.internal_error)
        self.admission.connected(address)
        self._advance(self.admission.next())

    # ---- connecting to the one vetted address on the reactor
    def _connect_raw(self, step: Connect, address: IPAddress, port: int) -> None:
        self._address = address
        text = self._address_text = address_texts(step.addresses)[0]  # no ipaddress hashing
        try:
            sock = nonblocking_stream(address.version == 6)
        except OSError as exc:
            # EMFILE/ENFILE: refuse (503) instead of letting the error escape this callback.
            self._connect_failed(exc)
            return
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.upstream = sock
        self.upstream_state = Readiness()
        error = sock.connect_ex((text, port))
        if error == 0 or error == errno.EINPROGRESS:
            # Writable (or error/hang-up) reports the end of the connect.
            self.reactor.add(sock.fileno(), self._connect_event, True, self.internal_error)
            if error == 0:
                self._connected()
            else:
                self._arm(step.attempt_timeout_s, self._connect_expired)
        else:
            self._connect_failed(OSError(error, "connect"))

    def _connect_event(self, events: int) -> None:
        self.upstream_state.note(events)
        if not events & WRITABLE or self.upstream is None:
            return
        # Linux reports a failed connect as EPOLLERR (with HUP); only then is SO_ERROR worth a
        # syscall. A plain EPOLLOUT is a completed connect.
        if events & FAILED:
            error = self.upstream.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if error:
                self._disarm()
                self._connect_failed(OSError(error, os.strerror(error)))
                return
        # A connecting TCP socket is not writable: this is the end of the connect (events of a
        # closed socket whose fd number was reused never reach here, see Reactor._dispatch).
        self._disarm()
        self._connected()

    def _connect_expired(self) -> None:
        self._connect_failed(TimeoutError(errno.ETIMEDOUT, "timed out"))

    def _connect_failed(self, exc: OSError) -> None:
        self._close_upstream()
        address = self._address
        assert address is not None
        error = translate_os_error(exc, f"{address_text(address)}:{self.admission.port}")
        self.ctx.metrics.count_upstream_error(error.reason.value)
        self.admission.connect_failed(error, address)
        self._advance(self.admission.next())

    def _connected(self) -> None:
        assert self.upstream is not None
        # Until the relay: remember upstream events (a server-speaks-first banner, its EOF).
        self.reactor.set_handler(self.upstream.fileno(), self.upstream_state.note)
        if self.done:
            self._close_sockets()
            return
        assert self._address is not None
        self.admission.connected(self._address, self._address_text)
        self._advance(self.admission.next())

    def _established(self) -> None:
        if self.done:
            return  # ended meanwhile (a drain closed the sockets)
        self.record.status = 200
        try:
            self.client.send(CONNECT_ESTABLISHED)
        except OSError:
            self._end(RelayStats(0, 0, "reset"))
            return
        if self._sni_check:
            self._start_hello()
        else:
            self._relay_now(self.rest)

    # ---- SNI: read the client's first bytes before relaying
    def _start_hello(self) -> None:
        self._hello = self.rest
        if self._hello and self._judge(False):
            return
        self._arm(self.admission.hello_wait_s(), self._hello_expired)
        self.reactor.set_handler(self.client_fd, self._hello_event)
        if self.client_state.ready:
            self._hello_readable()

    def _hello_event(self, events: int) -> None:
        self.client_state.note(events)
        if events & READABLE:
            self._hello_readable()

    def _hello_readable(self) -> None:
        try:
            chunk = self.client.recv(MAX_HELLO_BYTES)
        except BlockingIOError:
            self.client_state.ready = False
            return
        except OSError:
            chunk = b""
        full = len(chunk) == MAX_HELLO_BYTES
        if chunk:
            self.client_state.after_read(full)
            self._hello += chunk
            if not self._judge(False) and full:
                self.loop.call_soon(self._hello_readable)
        elif self._hello:
            self.client_state.ready = True  # the EOF is still there for the relay to see
            self._judge(True, eof=True)  # judge what arrived before the client's EOF
        else:
            self._stop_hello()
            self._end(RelayStats(0, 0, "eof"))

    def _hello_expired(self) -> None:
        self._judge(True)

    def _judge(self, timed_out: bool, eof: bool = False) -> bool:
        if self.done or self._relay is not None:
            return True
        outcome = self.admission.judge_hello(self._hello, timed_out, eof)
        if outcome is Hello.NEED_MORE:
            return False
        self._stop_hello()
        if outcome is Hello.RELAY:
            if self._intercept is not None:
                self._intercept_now(self._hello, self._intercept)
            else:
                self._relay_now(self._hello)
        else:
            self._cut(TLS_ACCESS_DENIED_ALERT)
        return True

    def _cut(self, alert: bytes) -> None:
        """End a tunnel past its "200": a TLS alert if the client speaks TLS, then close."""
        if self._hello[:1] == b"\x16" or self.rest[:1] == b"\x16":
            try:
                self.client.send(alert)
            except OSError:
                pass
        self._end(RelayStats(0, 0, "refused"))

    def _stop_hello(self) -> None:
        self._disarm()
        self.reactor.set_handler(self.client_fd, self.client_state.note)

    # ---- relay and end
    def _relay_now(self, first: bytes) -> None:
        assert self.upstream is not None
        relay = Relay(
            self.reactor,
            self.ctx.outbox,
            self.client,
            self.upstream,
            self._end,
            self.ctx.limits.idle_timeout_s,
            initial_up=first,
            client_state=self.client_state,
            upstream_state=self.upstream_state,
        )
        self._relay = relay
        relay.start()

    def _intercept_now(self, hello: bytes, host: InterceptHost) -> None:
        """The host is under `intercept`: both sockets leave the reactor for the interception
        driver (proxy/intercept.py), which calls _end when it is over."""
        upstream = self.upstream
        assert upstream is not None
        session = InterceptSession(self.ctx, self.admission, host, self.record.client, self._end)
        self._session = session
        self.reactor.remove(self.client_fd)
        self.reactor.remove(upstream.fileno())
        self.record.detail = "intercepted"
        session.start(self.client, upstream, hello)

    def refuse_early(self, failure: ProxyFailure) -> None:
        """Refuse before start() (proxy auth's back-off, proxy/acceptor.py)."""
        self._fail_before_admission(failure)
        step = self.admission.next()
        assert isinstance(step, Refuse)
        self._refuse_http(step)

    def _fail_before_admission(self, failure: ProxyFailure) -> None:
        if not hasattr(self, "admission"):
            gen = self.ctx.state.current
            host = _host_text(self.head.target)
            self.admission = Admission(gen, self.identity, None, host_text=host, failure=failure)
        else:
            self.admission.fail(failure)

    def _refuse_http(self, step: Refuse) -> None:
        """Refuse before "200": an HTTP error response on the client socket."""
        if self.done:
            return
        try:
            self.client.send(step.response())
        except OSError:
            pass
        self._end(RelayStats(0, 0, "refused"))

    def internal_error(self, exc: BaseException) -> None:
        """An unexpected exception in this tunnel's work (proxy/failsafe.py): 502 before the
        "200", a TLS internal_error alert after it; logged and counted."""
        failure = internal_error(self.ctx.metrics, exc, "CONNECT tunnel")
        if self.done:
            return
        self._fail_before_admission(failure)
        if self.record.status == 200:
            if self._session is not None:
                self._session.close()
                return
            if self._relay is not None:
                self._relay.close()  # ends through _end with the admission's failure
                return
            self._disarm()
            self._cut(TLS_INTERNAL_ERROR_ALERT)
            return
        step = self.admission.next()
        assert isinstance(step, Refuse)
        self._disarm()
        self._refuse_http(step)

    def _close_upstream(self) -> None:
        if self.upstream is not None:
            self.reactor.forget(self.upstream.fileno())
            self.upstream.close()
            self.upstream = None

    def _close_sockets(self) -> None:
        self.reactor.forget(self.client_fd)
        self.client.close()
        self._close_upstream()

    def _end(self, stats: RelayStats) -> None:
        if self.done:
            return
        if self._relay is None and self._session is None:
            self._disarm()
            self._close_sockets()
        self._relay = None
        self.tunnel_done(stats)

    def shutdown_idle(self) -> None:
        if self._session is not None:
            self._session.shutdown_idle()

    def force_close(self) -> None:
        if self._session is not None:
            self._session.close()
            return
        if self._relay is not None:
            self._relay.close()
            return
        self._disarm()
        self._end(RelayStats(0, 0, "closed"))


class TunnelExchange(_TunnelCore, Exchange):
    """A CONNECT inside the TLS listener: the awaited admission driver, transports, the pump.

    Body events from the client connection before the tunnel opens are early tunnel bytes
    (`request_body`, `tunnel_start`); the other Exchange events keep their defaults: the
    tunnel's own timers apply once it is open.
    """

    __slots__ = ("_intercept", "_pump", "_session", "_transports", "conn", "identity")

    def __init__(self, conn: ClientSide, head: RequestHead) -> None:
        super().__init__(conn.ctx, head, conn.new_record("CONNECT", "tunnel"))
        self.conn: ClientSide | None = conn
        self._pump: TransportPump | None = None
        self._transports: tuple[asyncio.Transport, asyncio.Transport] | None = None
        self._intercept: InterceptHost | None = None  # from the Open step
        self._session: InterceptSession | None = None

    def start(self) -> None:
        conn = self.conn
        assert conn is not None
        assert conn.identity is not None
        self.identity = conn.identity  # kept for a reload's re-decision (proxy/revoke.py)
        self.admission = connect_admission(self.ctx, conn.identity, self.head)
        spawn(self._open(), "egressgate-tunnel", self.internal_error)

    def request_body(self, data: bytes) -> None:
        self.rest += data

    def tunnel_start(self, rest: bytes) -> None:
        self.rest += rest

    def client_lost(self) -> None:
        if not self.done:
            record = gate.conclude(self.record, self.admission)
            record.status = 499
            record.detail = "client closed before the tunnel was open"
            self.finish_record()

    def _refuse(self) -> None:
        step = self.admission.next()
        assert isinstance(step, Refuse)
        if not self.done and self.conn is not None:
            self.done = True
            self.conn.refuse(step.response(), gate.conclude(self.record, self.admission))

    async def _open(self) -> None:
        sock = await open_upstream(self.ctx, self.admission)
        if sock is None:
            self._refuse()
            return
        conn = self.conn
        if self.done or conn is None or conn.transport is None or conn.transport.is_closing():
            sock.close()
            return
        loop = asyncio.get_running_loop()
        try:
            upstream, _ = await loop.create_connection(asyncio.Protocol, sock=sock)
        except OSError:
            sock.close()
            conn.force_close()
            return
        transport = conn.transport
        if transport is None:
            upstream.close()
            return
        self.record.status = 200
        conn.detach_for_tunnel()
        self.conn = None
        self.ctx.metrics.active_tunnels += 1
        self.ctx.tunnels.add(self)
        self._transports = (transport, upstream)
        transport.write(CONNECT_ESTABLISHED)
        step = self.admission.next()
        assert isinstance(step, Open)
        self._intercept = step.intercept
        if step.sni_check:
            _TransportHello(self, transport, upstream)
        else:
            self.start_pump(transport, upstream, self.rest)

    def start_pump(
        self, client: asyncio.Transport, upstream: asyncio.Transport, first: bytes
    ) -> None:
        if self._intercept is not None:
            session = InterceptSession(
                self.ctx, self.admission, self._intercept, self.record.client, self.tunnel_done
            )
            self._session = session
            self.record.detail = "intercepted"
            session.start_on_transports(client, upstream, first)
            return
        limits = self.admission.gen.config.limits
        self._pump = TransportPump(
            client, upstream, self.tunnel_done, limits.idle_timeout_s, initial_up=first
        )

    def cut(self, alert: bytes, was_tls: bool) -> None:
        """End the tunnel past its "200": a TLS alert if the client speaks TLS, then close."""
        assert self._transports is not None
        client, upstream = self._transports
        if was_tls:
            client.write(alert)
        client.close()
        upstream.close()
        self.tunnel_done(RelayStats(0, 0, "refused"))

    def internal_error(self, exc: BaseException) -> None:
        """An unexpected exception in this tunnel's work (proxy/failsafe.py): 502 before the
        "200", a TLS internal_error alert after it; logged and counted."""
        failure = internal_error(self.ctx.metrics, exc, "CONNECT tunnel (TLS listener)")
        if self.done:
            return
        self.admission.fail(failure)
        if self._session is not None:
            self._session.close()
        elif self._pump is not None:
            self._pump.close()
        elif self._transports is not None:
            self.cut(TLS_INTERNAL_ERROR_ALERT, self.rest[:1] == b"\x16")
        else:
            self._refuse()

    def shutdown_idle(self) -> None:
        if self._session is not None:
            self._session.shutdown_idle()

    def force_close(self) -> None:
        if self._session is not None:
            self._session.close()
        elif self._pump is not None:
            self._pump.close()
        elif self._transports is not None:
            # Still waiting for the ClientHello (no pump yet): closing the client ends the
            # phase now; _TransportHello.connection_lost closes the upstream and concludes the
            # record. A drain or a revocation must not wait for the hello wait.
            self._transports[0].close()


class _TransportHello(asyncio.Protocol):
    """Collects the first tunnel bytes from a transport until the SNI can be judged."""

    def __init__(
        self, tunnel: TunnelExchange, client: asyncio.Transport, upstream: asyncio.Transport
    ) -> None:
        self.tunnel = tunnel
        self.client = client
        self.upstream = upstream
        self.data = tunnel.rest
        self.finished = False
        wait = tunnel.admission.hello_wait_s()
        self.timer = asyncio.get_running_loop().call_later(wait, self._judge, True)
        client.set_protocol(self)
        if not (self.data and self._judge(False)):
            client.resume_reading()

    def data_received(self, data: bytes) -> None:
        self.data += data
        try:  # the invariant's boundary (proxy/failsafe.py)
            self._judge(False)
        except Exception as exc:
            self.finished = True
            self.timer.cancel()
            self.tunnel.internal_error(exc)

    def eof_received(self) -> bool:
        self._judge(True, eof=True)
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.finished:
            self.finished = True
            self.timer.cancel()
            self.upstream.close()
            self.tunnel.tunnel_done(RelayStats(0, 0, "eof"))

    def _judge(self, timed_out: bool, eof: bool = False) -> bool:
        if self.finished:
            return True
        outcome = self.tunnel.admission.judge_hello(self.data, timed_out, eof)
        if outcome is Hello.NEED_MORE:
            return False
        self.finished = True
        self.timer.cancel()
        if outcome is Hello.RELAY:
            self.client.pause_reading()
            self.tunnel.start_pump(self.client, self.upstream, self.data)
        else:
            self.tunnel.cut(TLS_ACCESS_DENIED_ALERT, self.data[:1] == b"\x16")
        return True
