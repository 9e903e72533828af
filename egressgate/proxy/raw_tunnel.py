"""The raw-socket tunnel: one driver for CONNECT (proxy/tunnel.py) and SOCKS5 (proxy/socks.py)
tunnels on plain listeners, from the client's request to the end of the relay.

    request read by the front end
      ─► start(): the front end's Admission (proxy/gate.py), walked without a wait when the
         addresses are known (IP literal, hosts file, DNS cache); else the resolver in a task
      ─► connect to the one vetted address on the reactor (several: net/connect.py in a task)
      ─► "established" (a CONNECT 200, a SOCKS5 success reply) ─► SNI check ─► splice relay
      ─► tunnel_done: one access record

Both sockets stay in the private edge-triggered epoll (net/reactor.py) from accept (client)
and socket creation (upstream) to close; each phase only swaps the handler. Edge-triggered
events do not repeat, so `client_state` / `upstream_state` (Readiness) remember what they said.
The connect and the "established" message go through the outbox (net/outbox.py): done at the
end of the loop iteration with the other tunnels' connects and sends, they wake the origin and
the client once per iteration instead of once per tunnel.

What differs between the front ends is what the client is told: a subclass says how its
admission is built (`_admit`, `_refused_admission`), what "established" is
(`_established_bytes`) and how a refusal before it reads (`_refusal_bytes`). After
"established" both speak the same: a TLS alert if the client speaks TLS, then close.

SNI check (per policy, on by default): after "established", the first bytes from the client are
read and, if they are a TLS ClientHello, its server name must be the requested host and allowed
by the policy (no domain fronting through an allowed name). A refused tunnel gets a TLS
access_denied alert. Tunnels that carry no TLS or no SNI are allowed or refused by the policy's
`tunnels_without_sni`. A tunnel that starts with a TLS handshake record is TLS: if its
ClientHello cannot be read within `hello_wait_s()` and MAX_HELLO_BYTES it is refused
(`sni-unreadable`) whatever `tunnels_without_sni` says. When the destination speaks first (SSH,
SMTP) the client will send nothing until it has read that: what the client sent so far is
judged at once instead of after the hello wait. The bytes read for the check are relayed
unchanged.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import time
from collections.abc import Callable

from egressgate.errors import ProxyFailure, Reason
from egressgate.names.hostname import IPAddress, address_text, address_texts
from egressgate.net.connect import translate_os_error
from egressgate.net.rawsocket import RawSocket, nonblocking_stream
from egressgate.net.reactor import FAILED, READABLE, WRITABLE, Readiness, read_ready
from egressgate.net.relay import Relay, RelayStats
from egressgate.net.tasks import spawn
from egressgate.observe.record import AccessRecord
from egressgate.policy.decision import ClientIdentity
from egressgate.policy.intercept import InterceptHost
from egressgate.proxy import gate
from egressgate.proxy.context import ProxyContext, SweptDeadline, connect_step, resolve_into
from egressgate.proxy.failsafe import internal_error
from egressgate.proxy.gate import Admission, Connect, Hello, NeedAddresses, Open, Refuse, Step
from egressgate.proxy.intercept import InterceptSession
from egressgate.proxy.refusal import TLS_ACCESS_DENIED_ALERT, TLS_INTERNAL_ERROR_ALERT
from egressgate.tls.clienthello import MAX_HELLO_BYTES

# Clients are few and reconnect often: parse each peer address once, not per connection.
_IDENTITIES: dict[str, tuple[ClientIdentity, str]] = {}
MAX_CACHED_IDENTITIES = 4096


def client_identity(peer_host: str) -> tuple[ClientIdentity, str]:
    """The identity of a plain-listener client by its socket address (v4-mapped v6 → v4),
    and the address as the access log writes it."""
    known = _IDENTITIES.get(peer_host)
    if known is None:
        address = ipaddress.ip_address(peer_host.split("%", 1)[0])
        if address.version == 6 and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        known = (ClientIdentity(address), address.compressed)
        if len(_IDENTITIES) >= MAX_CACHED_IDENTITIES:
            _IDENTITIES.clear()  # bounded: a scan from many addresses cannot grow it
        _IDENTITIES[peer_host] = known
    return known


def connection_refused_record(peer_host: str, reason: Reason, detail: str) -> AccessRecord:
    """The one record of a client closed before any request was read (at `max_connections`,
    in the descriptor reserve, while draining): `kind: connection`, `method` "-" (issue 12:
    every accepted connection ends with a record). Shared by the HTTP and SOCKS5 listeners."""
    record = AccessRecord(time.time(), client_identity(peer_host)[1], "-", "connection")
    return gate.conclude(record, None, ProxyFailure(reason, detail))


class TunnelCore:
    """The admission, the record and the bookkeeping every tunnel carrier shares (the raw
    tunnels here, the TLS listener's TunnelExchange)."""

    __slots__ = ("_session", "admission", "ctx", "done", "record", "rest")

    admission: Admission  # set by start(), the first thing the front end calls

    def __init__(self, ctx: ProxyContext, record: AccessRecord) -> None:
        self.ctx = ctx
        self.record = record
        self.rest = b""
        self.done = False
        self._session: InterceptSession | None = None  # an intercepted tunnel's driver

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
        if self._session is not None:  # intercepted: close between requests (drain)
            self._session.shutdown_idle()


class RawTunnel(TunnelCore, SweptDeadline):
    """A tunnel on raw sockets in the reactor; subclasses are the front ends' wording.

    `rest`: client bytes read with the request (the start of the tunnel's stream).
    """

    __slots__ = (
        "_address",
        "_address_text",
        "_hello",
        "_in_hello",
        "_intercept",
        "_on_deadline",
        "_pending",
        "_relay",
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

    WHERE = "tunnel"  # what an internal error report names (proxy/failsafe.py)

    def __init__(
        self,
        ctx: ProxyContext,
        client: RawSocket,
        identity: ClientIdentity,
        record: AccessRecord,
        rest: bytes,
        client_state: Readiness,
    ) -> None:
        super().__init__(ctx, record)
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
        self._in_hello = False  # reading the client's first bytes for the SNI check
        # The current phase's deadline (connect, ClientHello), checked by the server's sweeper
        # while this tunnel is in ctx.deadlines; 0: none.
        self.deadline = 0.0
        self._on_deadline: Callable[[], object] | None = None
        self._hello = b""
        ctx.tunnels.add(self)
        ctx.metrics.active_tunnels += 1

    # ---- what the front end says (its subclass)
    def _admit(self) -> Admission:
        """The admission of the client's request, under the generation in force now."""
        raise NotImplementedError

    def _refused_admission(self, failure: ProxyFailure) -> Admission:
        """An admission that ends in `failure`, for a failure before `_admit` ran."""
        raise NotImplementedError

    def _established_bytes(self) -> bytes:
        """What tells the client its tunnel is open (raises OSError if the socket failed)."""
        raise NotImplementedError

    def _refusal_bytes(self, step: Refuse) -> bytes:
        """What tells the client its request is refused, before "established"."""
        raise NotImplementedError

    # ---- a thin driver of the admission (proxy/gate.py)
    def start(self) -> None:
        # Until the ClientHello phase or the relay reads the client: remember its events.
        self.reactor.set_handler(self.client_fd, self.client_state.note, self.internal_error)
        try:  # the invariant's boundary (proxy/failsafe.py); free until it raises
            self.admission = self._admit()
            self._advance(self.admission.next())
        except Exception as exc:
            self.internal_error(exc)

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
                    self._refuse(step)
                    return
            step = admission.next()

    async def _resolve(self, name: str) -> None:
        await resolve_into(self.ctx.resolver, self.admission, name)
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
        sock = await connect_step(self.ctx, self.admission, step)
        if sock is None:
            self._advance(self.admission.next())  # the Refuse connect_failed() made
            return
        if self.done:  # ended meanwhile (a drain)
            sock.close()
            return
        self.upstream = sock
        self.upstream_state = Readiness()
        self.reactor.add(sock.fileno(), self._upstream_early, False, self.internal_error)
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
        self.reactor.set_handler(self.upstream.fileno(), self._upstream_early)
        if self.done:
            self._close_sockets()
            return
        assert self._address is not None
        self.admission.connected(self._address, self._address_text)
        self._advance(self.admission.next())

    def _upstream_early(self, events: int) -> None:
        self.upstream_state.note(events)
        if events & READABLE and self._in_hello:
            self._judge(True)  # the destination speaks first (module docstring)

    def _established(self) -> None:
        if self.done:
            return  # ended meanwhile (a drain closed the sockets)
        self.record.status = 200
        try:
            data = self._established_bytes()
            # A few bytes into an empty socket buffer: they go whole, or the client is gone.
            whole = self.client.send(data) == len(data)
        except OSError:
            whole = False
        if not whole:
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
        self._in_hello = True
        self.reactor.set_handler(self.client_fd, self._hello_event)
        if self.client_state.ready:
            self._hello_readable()
        if self._in_hello and self.upstream_state.ready:
            self._judge(True)  # the destination spoke first (module docstring)

    def _hello_event(self, events: int) -> None:
        self.client_state.note(events)
        if events & READABLE:
            self._hello_readable()

    def _hello_readable(self) -> None:
        chunk = read_ready(self.client, MAX_HELLO_BYTES, self.client_state)
        if chunk is None:
            return
        if chunk:
            self._hello += chunk
            if not self._judge(False) and self.client_state.ready:
                # more bytes, or the EOF that came with these: read on after the others
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
        """True when the hello phase is over (relaying, intercepted, refused, or ended)."""
        if self.done or self._relay is not None or self._session is not None:
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
        """End a tunnel past "established": a TLS alert if the client speaks TLS, then close."""
        if self._hello[:1] == b"\x16" or self.rest[:1] == b"\x16":
            try:
                self.client.send(alert)
            except OSError:
                pass
        self._end(RelayStats(0, 0, "refused"))

    def _stop_hello(self) -> None:
        self._disarm()
        self._in_hello = False
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

    def _fail_before_admission(self, failure: ProxyFailure) -> None:
        if not hasattr(self, "admission"):
            self.admission = self._refused_admission(failure)
        else:
            self.admission.fail(failure)

    def _refuse(self, step: Refuse) -> None:
        """Refuse before "established": the front end's refusal on the client socket."""
        if self.done:
            return
        try:
            self.client.send(self._refusal_bytes(step))
        except OSError:
            pass
        self._end(RelayStats(0, 0, "refused"))

    def internal_error(self, exc: BaseException) -> None:
        """An unexpected exception in this tunnel's work (proxy/failsafe.py): a refusal before
        "established", a TLS internal_error alert after it; logged and counted."""
        failure = internal_error(self.ctx.metrics, exc, self.WHERE)
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
        self._refuse(step)

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

    def force_close(self) -> None:
        if self._session is not None:
            self._session.close()
            return
        if self._relay is not None:
            self._relay.close()
            return
        self._disarm()
        self._end(RelayStats(0, 0, "closed"))
