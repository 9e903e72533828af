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
from dataclasses import replace
from typing import TYPE_CHECKING

from egressgate.config.model import NoSniAction
from egressgate.errors import ProxyFailure, Reason, Refused, UpstreamError
from egressgate.http1.events import RequestHead
from egressgate.http1.render import CONNECT_ESTABLISHED
from egressgate.http1.semantics import parse_connect_target
from egressgate.names.hostname import IPAddress, address_text, address_texts
from egressgate.net.connect import translate_os_error
from egressgate.net.pump import TransportPump
from egressgate.net.rawsocket import RawSocket, nonblocking_stream
from egressgate.net.reactor import FAILED, READABLE, WRITABLE, Readiness
from egressgate.net.relay import Relay, RelayStats
from egressgate.net.tasks import spawn
from egressgate.observe.record import AccessRecord
from egressgate.policy.decision import ClientIdentity, Decision, Target, Verdict
from egressgate.proxy import gate
from egressgate.proxy.auth import authenticate
from egressgate.proxy.context import ProxyContext
from egressgate.proxy.refusal import TLS_ACCESS_DENIED_ALERT, refusal_response
from egressgate.runtime.state import Generation
from egressgate.tls.clienthello import MAX_HELLO_BYTES, HelloResult, read_sni

if TYPE_CHECKING:
    from egressgate.proxy.connection import ClientConnection

# How long to wait for a client's first tunnel bytes before judging the tunnel as "no TLS".
# Server-speaks-first protocols (SMTP, SSH) send nothing until the server does.
MAX_HELLO_WAIT_S = 5.0
_NO_SNI_WHY = {
    HelloResult.NOT_TLS: "the tunnel does not carry TLS",
    HelloResult.NO_SNI: "the TLS ClientHello has no server name",
}


# Clients open tunnels to few destinations: parse and normalize each valid CONNECT target once
# (bounded; an invalid one is not stored and raises every time).
_DESTINATIONS: dict[bytes, Target] = {}
_MAX_DESTINATIONS = 4096


def connect_destination(raw_target: bytes, record: AccessRecord) -> Target:
    """The destination of a CONNECT target (authority-form); raises ProxyFailure to refuse,
    with `record.host` naming what was asked for."""
    destination = _DESTINATIONS.get(raw_target)
    if destination is None:
        target = parse_connect_target(raw_target)
        record.host = target.host
        host = gate.normalize_target_host(target.host)
        destination = Target(host, target.port, connect=True)
        if len(_DESTINATIONS) >= _MAX_DESTINATIONS:
            _DESTINATIONS.clear()
        _DESTINATIONS[raw_target] = destination
    return destination


class _TunnelCore:
    """Policy, gate and bookkeeping shared by both carriers."""

    __slots__ = ("ctx", "decision", "destination", "done", "gen", "head", "record", "rest")

    def __init__(self, ctx: ProxyContext, head: RequestHead, record: AccessRecord) -> None:
        self.ctx = ctx
        self.head = head
        self.record = record
        self.rest = b""
        self.done = False

    def admit(self, identity: ClientIdentity) -> str | None:
        """Name-level checks. Returns the host text; raises ProxyFailure to refuse."""
        record = self.record
        destination = self.destination = connect_destination(self.head.target, record)
        host = destination.host
        record.host, record.port = host.text, destination.port
        gen = self.ctx.state.current
        user = authenticate(self.head.headers, gen.credentials)
        if user is not None:
            record.user = user
            identity = replace(identity, user=user)
        self.decision = gate.decide(gen, identity, destination, record)
        self.gen: Generation = gen
        return host.text

    def sni_policy_applies(self) -> bool:
        return self.gen.policies.policies[self.decision.policy].sni_check

    def judge_hello(
        self, data: bytes, timed_out: bool, eof: bool = False
    ) -> Decision | HelloResult | None:
        """None: relay. A Decision: refuse. NEED_MORE: keep reading.

        `timed_out`: no more bytes will be waited for (the hello wait passed, or `eof`).
        """
        policy = self.gen.policies.policies[self.decision.policy]
        result = read_sni(data)
        if result is HelloResult.NEED_MORE and not timed_out and len(data) < MAX_HELLO_BYTES:
            return HelloResult.NEED_MORE
        if isinstance(result, str):
            self.record.sni = result
            verdict = policy.decide_sni(self.destination.host, result)
        elif result is not HelloResult.NO_SNI and gate.starts_as_tls(data):
            # TLS whose ClientHello cannot be read: never relayed unchecked (fail closed).
            why = gate.unreadable_hello_why(result, len(data), eof, self.hello_wait_s())
            verdict = policy.sni_unreadable(why)
        elif policy.tunnels_without_sni is not NoSniAction.DENY:
            verdict = None  # no_sni would pass it: skip building the explanation
        elif timed_out and not data:
            verdict = policy.no_sni("the client sent nothing (server-speaks-first protocol?)")
        else:
            why = _NO_SNI_WHY.get(result, "the TLS ClientHello could not be read")
            verdict = policy.no_sni(why)
        if verdict is None:
            return None
        if verdict.verdict is Verdict.REPORT:
            self.record.decision = "report"
            self.record.reason = verdict.reason.value
            self.record.detail = verdict.detail
            return None
        return verdict

    def hello_wait_s(self) -> float:
        """The bound on the whole ClientHello phase: first byte to last byte of the hello."""
        return min(MAX_HELLO_WAIT_S, self.ctx.limits.header_timeout_s)

    def note_refusal(self, verdict: Decision) -> None:
        record = self.record
        record.decision = "deny"
        record.reason = verdict.reason.value
        record.status = verdict.reason.status
        record.detail = verdict.detail

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
        self.record.duration_ms = (time.time() - self.record.start) * 1000.0
        self.ctx.finish(self.record)

    def shutdown_idle(self) -> None:
        pass


class RawTunnel(_TunnelCore):
    """A CONNECT on a plain listener, on raw sockets in the reactor (net/reactor.py).

    Both sockets stay in the edge-triggered reactor from accept (client) and socket creation
    (upstream) to close; each phase only swaps the handler. Edge-triggered events do not
    repeat, so `client_state` / `upstream_state` (Readiness) remember what they said.
    """

    __slots__ = (
        "_addresses",
        "_attempt",
        "_hello",
        "_on_deadline",
        "_relay",
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
        self._addresses: tuple[IPAddress, ...] = ()
        self._attempt = 0
        # The current phase's deadline (connect, ClientHello), checked by the server's sweeper
        # while this tunnel is in ctx.deadlines; 0: none.
        self.deadline = 0.0
        self._on_deadline: Callable[[], object] | None = None
        self._hello = b""
        ctx.tunnels.add(self)
        ctx.metrics.active_tunnels += 1

    def start(self) -> None:
        # Until the ClientHello phase or the relay reads the client: remember its events.
        self.reactor.set_handler(self.client_fd, self.client_state.note)
        try:
            self.admit(self.identity)
            found = gate.known_addresses(self.ctx, self.destination)
            if found is None:
                spawn(self._resolve_then_connect(), name="egressgate-resolve")
                return
            self._addresses = gate.vet(self.gen, self.decision, found, self.record)
        except ProxyFailure as exc:
            self._refuse_http(exc)
            return
        # A connect wakes the origin's accept on another core: done at the end of the loop
        # iteration with the other tunnels' connects and sends, it wakes it once for all of
        # them (net/outbox.py).
        self.ctx.outbox.later(self._connect_first)

    def _connect_first(self) -> None:
        if not self.done:  # not ended meanwhile (a drain)
            self._connect_vetted()

    async def _resolve_then_connect(self) -> None:
        try:
            found = await gate.addresses(self.ctx, self.destination)
            self._addresses = gate.vet(self.gen, self.decision, found, self.record)
        except ProxyFailure as exc:
            self._refuse_http(exc)
            return
        if not self.done:
            self._connect_vetted()

    def _connect_vetted(self) -> None:
        """One address (the usual case, and the benchmarked one): connect on the reactor.
        Several: gate.connect_any's staggered, deadline-bounded attempts, in a task."""
        if len(self._addresses) == 1:
            self._connect_next()
        else:
            spawn(self._connect_any(), name="egressgate-connect")

    async def _connect_any(self) -> None:
        try:
            sock, _ = await gate.connect_any(
                self.ctx, self._addresses, self.destination.port, self.record
            )
        except ProxyFailure as exc:
            self._refuse_http(exc)
            return
        if self.done:  # ended meanwhile (a drain)
            sock.close()
            return
        self.upstream = sock
        self.upstream_state = Readiness()
        self.reactor.add(sock.fileno(), self._connect_event, writable=True)
        self._connected()

    # ---- connecting to the one vetted address on the reactor
    def _connect_next(self, last: UpstreamError | None = None) -> None:
        if self._attempt >= len(self._addresses):
            assert last is not None
            self._refuse_http(last)
            return
        address = self._addresses[self._attempt]
        self._attempt += 1
        text = address_texts(self._addresses)[self._attempt - 1]
        self.record.address = text
        port = self.destination.port
        try:
            sock = nonblocking_stream(address.version == 6)
        except OSError as exc:
            # EMFILE/ENFILE: refuse (503) instead of letting the error escape this callback,
            # which left the client socket open and the tunnel registered for good.
            self._refuse_http(translate_os_error(exc, f"{address_text(address)}:{port}"))
            return
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.upstream = sock
        self.upstream_state = Readiness()
        error = sock.connect_ex((text, port))
        if error == 0 or error == errno.EINPROGRESS:
            # Writable (or error/hang-up) reports the end of the connect.
            self.reactor.add(sock.fileno(), self._connect_event, writable=True)
            if error == 0:
                self._connected()
            else:
                limits = self.ctx.limits
                wait_s = min(limits.connect_timeout_s, limits.connect_total_timeout_s)
                self._arm(wait_s, self._connect_expired)
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

    def _arm(self, delay_s: float, action: Callable[[], object]) -> None:
        self.deadline = time.monotonic() + delay_s
        self._on_deadline = action
        self.ctx.deadlines.add(self)

    def _disarm(self) -> None:
        if self.deadline:
            self.deadline = 0.0
            self._on_deadline = None
            self.ctx.deadlines.discard(self)

    def check_deadline(self, now: float) -> None:
        action = self._on_deadline
        if self.deadline and now >= self.deadline and action is not None:
            self._disarm()
            action()

    def _connect_expired(self) -> None:
        self._connect_failed(TimeoutError(errno.ETIMEDOUT, "timed out"))

    def _connect_failed(self, exc: OSError) -> None:
        self._close_upstream()
        address = self._addresses[self._attempt - 1]
        error = translate_os_error(exc, f"{address_text(address)}:{self.destination.port}")
        self.ctx.metrics.count_upstream_error(error.reason.value)
        self._connect_next(error)

    def _connected(self) -> None:
        assert self.upstream is not None
        # Until the relay: remember upstream events (a server-speaks-first banner, its EOF).
        self.reactor.set_handler(self.upstream.fileno(), self.upstream_state.note)
        if self.done:
            self._close_sockets()
            return
        self.ctx.outbox.later(self._established)  # with this iteration's other sends

    def _established(self) -> None:
        if self.done:
            return  # ended meanwhile (a drain closed the sockets)
        self.record.status = 200
        try:
            self.client.send(CONNECT_ESTABLISHED)
        except OSError:
            self._end(RelayStats(0, 0, "reset"))
            return
        if self.sni_policy_applies():
            self._start_hello()
        else:
            self._relay_now(self.rest)

    # ---- SNI: read the client's first bytes before relaying
    def _start_hello(self) -> None:
        self._hello = self.rest
        if self._hello and self._judge(False):
            return
        self._arm(self.hello_wait_s(), self._hello_expired)
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
        outcome = self.judge_hello(self._hello, timed_out, eof)
        if outcome is HelloResult.NEED_MORE:
            return False
        self._stop_hello()
        if isinstance(outcome, Decision):
            self.note_refusal(outcome)
            if self._hello[:1] == b"\x16":
                try:
                    self.client.send(TLS_ACCESS_DENIED_ALERT)
                except OSError:
                    pass
            self._end(RelayStats(0, 0, "refused"))
        else:
            self._relay_now(self._hello)
        return True

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

    def refuse_early(self, failure: ProxyFailure) -> None:
        """Refuse before start() (proxy auth's back-off, proxy/acceptor.py)."""
        self._refuse_http(failure)

    def _refuse_http(self, failure: ProxyFailure) -> None:
        """Refuse before "200": an HTTP error response on the client socket."""
        if self.done:
            return
        record = self.record
        reason = failure.reason
        record.reason = reason.value
        record.status = reason.status
        record.decision = "deny" if isinstance(failure, Refused) else "error"
        record.detail = failure.detail or None
        realm = None
        if reason is Reason.AUTH_REQUIRED:
            auth = self.ctx.state.current.config.auth
            realm = auth.realm if auth is not None else None
        try:
            self.client.send(
                refusal_response(reason, record.host, failure.detail, record.policy, realm)
            )
        except OSError:
            pass
        self._end(RelayStats(0, 0, "refused"))

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
        if self._relay is None:
            self._disarm()
            self._close_sockets()
        self._relay = None
        self.tunnel_done(stats)

    def force_close(self) -> None:
        if self._relay is not None:
            self._relay.close()
            return
        self._disarm()
        self._end(RelayStats(0, 0, "closed"))


class TunnelExchange(_TunnelCore):
    """A CONNECT inside the TLS listener: transports and the pump."""

    __slots__ = ("_pump", "conn", "identity")

    def __init__(self, conn: ClientConnection, head: RequestHead) -> None:
        super().__init__(conn.ctx, head, conn.new_record("CONNECT", "tunnel"))
        self.conn: ClientConnection | None = conn
        self._pump: TransportPump | None = None

    def start(self) -> None:
        conn = self.conn
        assert conn is not None
        assert conn.identity is not None
        self.identity = conn.identity  # kept for a reload's re-decision (proxy/revoke.py)
        try:
            self.admit(conn.identity)
        except ProxyFailure as exc:
            self.done = True
            conn.refuse(exc, self.record, self.record.host)
            return
        spawn(self._open(), name="egressgate-tunnel")

    # Events from the client connection while the tunnel is being set up.
    def request_body(self, data: bytes) -> None:
        self.rest += data

    def request_end(self) -> None:
        pass

    def tunnel_start(self, rest: bytes) -> None:
        self.rest += rest

    def client_eof(self) -> None:
        pass

    def check_deadline(self, now: float) -> None:
        pass  # the tunnel's own timers apply once it is open

    def client_write_paused(self) -> None:
        pass

    def client_write_resumed(self) -> None:
        pass

    def client_lost(self) -> None:
        if not self.done:
            self.record.status = 499
            self.record.detail = "client closed before the tunnel was open"
            self.finish_record()

    async def _open(self) -> None:
        record = self.record
        try:
            found = await gate.addresses(self.ctx, self.destination)
            vetted = gate.vet(self.gen, self.decision, found, record)
            sock, _ = await gate.connect_any(self.ctx, vetted, self.destination.port, record)
        except ProxyFailure as exc:
            if not self.done and self.conn is not None:
                self.done = True
                self.conn.refuse(exc, record, record.host)
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
        record.status = 200
        conn.detach_for_tunnel()
        conn.exchange = None
        self.conn = None
        self.ctx.metrics.active_tunnels += 1
        self.ctx.tunnels.add(self)
        transport.write(CONNECT_ESTABLISHED)
        if self.sni_policy_applies():
            _TransportHello(self, transport, upstream)
        else:
            self._pump = TransportPump(
                transport,
                upstream,
                self.tunnel_done,
                self.ctx.limits.idle_timeout_s,
                initial_up=self.rest,
            )

    def start_pump(
        self, client: asyncio.Transport, upstream: asyncio.Transport, first: bytes
    ) -> None:
        self._pump = TransportPump(
            client, upstream, self.tunnel_done, self.ctx.limits.idle_timeout_s, initial_up=first
        )

    def refuse_tls(
        self,
        client: asyncio.Transport,
        upstream: asyncio.Transport,
        verdict: Decision,
        was_tls: bool,
    ) -> None:
        self.note_refusal(verdict)
        if was_tls:
            client.write(TLS_ACCESS_DENIED_ALERT)
        client.close()
        upstream.close()
        self.tunnel_done(RelayStats(0, 0, "refused"))

    def force_close(self) -> None:
        if self._pump is not None:
            self._pump.close()


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
        wait = tunnel.hello_wait_s()
        self.timer = asyncio.get_running_loop().call_later(wait, self._judge, True)
        client.set_protocol(self)
        if not (self.data and self._judge(False)):
            client.resume_reading()

    def data_received(self, data: bytes) -> None:
        self.data += data
        self._judge(False)

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
        outcome = self.tunnel.judge_hello(self.data, timed_out, eof)
        if outcome is HelloResult.NEED_MORE:
            return False
        self.finished = True
        self.timer.cancel()
        if isinstance(outcome, Decision):
            self.tunnel.refuse_tls(self.client, self.upstream, outcome, self.data[:1] == b"\x16")
        else:
            self.client.pause_reading()
            self.tunnel.start_pump(self.client, self.upstream, self.data)
        return True
