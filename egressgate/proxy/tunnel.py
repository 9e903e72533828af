"""CONNECT tunnels: port and policy check, the gate, "200", an optional SNI check, the relay.

Two carriers share one TunnelCore (proxy/raw_tunnel.py):
- ConnectTunnel: plain listeners. The acceptor hands over the raw client socket; the tunnel is
  a RawTunnel (proxy/raw_tunnel.py, shared with SOCKS5): callbacks from the private
  edge-triggered epoll (connect, hello, splice relay) without a coroutine when the
  destination's addresses are known (IP literal, hosts file, DNS cache) — the CONNECT-rate hot
  path. This module only says what the client is told: "200", or an HTTP refusal.
- TunnelExchange: CONNECT inside the TLS listener (an asyncio SSL transport, bytes must be
  decrypted by the proxy), relayed with the transport pump (net/pump.py).

SNI check (per policy, on by default; raw_tunnel.py tells it in full): after "200", the first
bytes from the client are read and, if they are a TLS ClientHello, its server name must be the
CONNECT host and allowed by the policy. A refused tunnel gets a TLS access_denied alert (an
HTTP 403 is no longer possible after "200") and a 403 line in the access log. The bytes read
for the check are relayed unchanged.
"""

from __future__ import annotations

import asyncio
import time

from egressgate.errors import ProxyFailure
from egressgate.http1.events import RequestHead
from egressgate.http1.render import CONNECT_ESTABLISHED
from egressgate.http1.semantics import parse_connect_target
from egressgate.net.pump import TransportPump
from egressgate.net.rawsocket import RawSocket
from egressgate.net.reactor import Readiness
from egressgate.net.relay import RelayStats
from egressgate.net.tasks import spawn
from egressgate.observe.record import AccessRecord
from egressgate.policy.decision import ClientIdentity, Target
from egressgate.policy.intercept import InterceptHost
from egressgate.proxy import gate
from egressgate.proxy.admit import open_upstream
from egressgate.proxy.auth import login_from_headers
from egressgate.proxy.context import ProxyContext
from egressgate.proxy.exchange import ClientSide, Exchange
from egressgate.proxy.failsafe import internal_error
from egressgate.proxy.gate import Admission, Hello, Open, Refuse
from egressgate.proxy.intercept import InterceptSession
from egressgate.proxy.raw_tunnel import RawTunnel, TunnelCore
from egressgate.proxy.refusal import TLS_ACCESS_DENIED_ALERT, TLS_INTERNAL_ERROR_ALERT

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
    login = login_from_headers(head.headers) if gen.credentials.users else None
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


class ConnectTunnel(RawTunnel):
    """A CONNECT on a plain listener: the raw-socket tunnel (proxy/raw_tunnel.py) answering in
    HTTP ("200 Connection established", an HTTP refusal)."""

    __slots__ = ("head",)

    WHERE = "CONNECT tunnel"

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
        super().__init__(ctx, client, identity, record, rest, client_state)
        self.head = head

    def _admit(self) -> Admission:
        return connect_admission(self.ctx, self.identity, self.head)

    def _refused_admission(self, failure: ProxyFailure) -> Admission:
        gen = self.ctx.state.current
        host = _host_text(self.head.target)
        return Admission(gen, self.identity, None, host_text=host, failure=failure)

    def _established_bytes(self) -> bytes:
        return CONNECT_ESTABLISHED

    def _refusal_bytes(self, step: Refuse) -> bytes:
        return step.response()

    def refuse_early(self, failure: ProxyFailure) -> None:
        """Refuse before start() (proxy auth's back-off, proxy/acceptor.py)."""
        self._fail_before_admission(failure)
        step = self.admission.next()
        assert isinstance(step, Refuse)
        self._refuse(step)


class TunnelExchange(TunnelCore, Exchange):
    """A CONNECT inside the TLS listener: the awaited admission driver, transports, the pump.

    Body events from the client connection before the tunnel opens are early tunnel bytes
    (`request_body`, `tunnel_start`); the other Exchange events keep their defaults: the
    tunnel's own timers apply once it is open.
    """

    __slots__ = ("_intercept", "_pump", "_transports", "conn", "head", "identity")

    def __init__(self, conn: ClientSide, head: RequestHead) -> None:
        super().__init__(conn.ctx, conn.new_record("CONNECT", "tunnel"))
        self.head = head
        self.conn: ClientSide | None = conn
        self._pump: TransportPump | None = None
        self._transports: tuple[asyncio.Transport, asyncio.Transport] | None = None
        self._intercept: InterceptHost | None = None  # from the Open step

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
