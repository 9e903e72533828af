"""The SOCKS5 listener (`socks_listen`): an I/O driver for socks/protocol.py and gate.Admission.

    accept ─► SocksSession: the handshake (sans-IO SocksParser; bounded by header_timeout_s,
              in ctx.live): greeting ─► method reply [─► RFC 1929 login ─► its reply] ─► request
          ─► SocksTunnel: the raw-socket tunnel CONNECT uses (proxy/raw_tunnel.py RawTunnel):
               Admission.for_host(host, port, connect=True, login)   the same gate as CONNECT
               NeedAddresses → resolver (cache first)  Connect → on the reactor
          ─► reply (RFC 1928 §6) ─► first client bytes → judge_hello (SNI check) ─► splice relay
          ─► conclude(record, admission): one `kind: socks` access record per client

From accept to close the sockets are raw, in the private edge-triggered epoll (net/reactor.py);
no asyncio transport is built. Once the request is read, a SOCKS5 tunnel is the very object a
CONNECT tunnel is (RawTunnel), told only what to answer: the success reply with the bound
address instead of "200", a SOCKS5 reply code instead of an HTTP refusal. Its connect and its
success reply leave with the loop iteration's other connects and sends (net/outbox.py), as
CONNECT's do; the method reply is sent at once, so that the client's request can arrive in
the same iteration's wake-up.

Every refusal becomes the reply code the client understands (socks/protocol.py reply_code):
before the request a method or sub-negotiation refusal, after it a SOCKS5 reply with REP ≠ 0,
after a success reply (the SNI check) a TLS access_denied alert if the client spoke TLS.
The access record carries the same reason codes as the HTTP side; its `method` is the SOCKS
command, its `kind` is `socks`.
"""

from __future__ import annotations

import errno
import socket
import time
from collections.abc import Callable

from egressgate.errors import ProxyFailure, Reason, Refused
from egressgate.net.connect import EXHAUSTION_ERRNOS
from egressgate.net.listen import AcceptPause, SpareFd
from egressgate.net.rawsocket import RawAcceptor, RawSocket
from egressgate.net.reactor import READABLE, Readiness, read_ready
from egressgate.observe.events import emit
from egressgate.observe.record import AccessRecord
from egressgate.policy.decision import ClientIdentity
from egressgate.proxy import gate
from egressgate.proxy.auth import Login, verify
from egressgate.proxy.context import ProxyContext, SweptDeadline
from egressgate.proxy.failsafe import internal_error
from egressgate.proxy.gate import Admission, Refuse
from egressgate.proxy.raw_tunnel import RawTunnel, client_identity, connection_refused_record
from egressgate.socks.protocol import (
    Credentials,
    Event,
    Method,
    MethodChosen,
    Rejected,
    ReplyCode,
    Request,
    SocksParser,
    auth_reply,
    method_reply,
    reply,
    reply_code,
)

ACCEPTS_PER_EVENT = 64
# One read of the handshake: a whole greeting + sub-negotiation + request is at most 1 032
# bytes; a larger read only carries tunnel bytes sent ahead (an optimistic ClientHello), which
# the SNI check reads anyway.
HANDSHAKE_READ_BYTES = 16 * 1024
MAX_HANDSHAKE_READS = 4  # full reads per event before yielding to other connections
METHOD = "CONNECT"
KIND = "socks"


class SocksListener:
    """Owns the SOCKS5 listening socket; accepts clients and starts a session for each.

    Descriptor exhaustion, as for the HTTP listener (proxy/acceptor.py): a client socket that
    took one of the last `reserved_fds` descriptors is closed at once (SOCKS5 has no way to say
    "busy" before the greeting), and an accept that fails for want of a descriptor pauses
    accepting with a doubling back-off instead of spinning on a listener that stays readable;
    the clients already queued are closed through the spare descriptor (net/listen.py SpareFd)
    rather than left waiting. A client closed after its accept ends with a `kind: connection`
    record."""

    def __init__(self, ctx: ProxyContext, listener: socket.socket) -> None:
        self.ctx = ctx
        self.listener = listener
        self.spare = SpareFd()
        # Accepted sockets inherit it (Linux): no Nagle wait between two small replies in
        # flight (an optimistic client's method reply and success reply), and no setsockopt
        # per client.
        listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.raw = RawAcceptor(listener)
        self.loop = ctx.reactor.loop
        self.pause = AcceptPause(self.loop, listener.fileno(), self._accept)

    def close(self) -> None:
        self.pause.close()
        self.listener.close()
        self.spare.close()

    def _accept(self) -> None:
        ctx = self.ctx
        for _ in range(ACCEPTS_PER_EVENT):
            try:
                client, peer = self.raw.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in EXHAUSTION_ERRNOS:
                    self._exhausted(exc)
                return  # ECONNABORTED and friends: the next readiness event goes on
            if self.pause.backoff_s and self.spare.restore():
                self.pause.recovered()  # descriptors free again
            if client.fileno() >= ctx.fd_ceiling:
                self._refuse_connection(
                    client,
                    peer,
                    Reason.TOO_MANY_CONNECTIONS,
                    f"{client.fileno() + 1} descriptors open: the last reserved_fds "
                    f"({ctx.limits.reserved_fds}) are kept for the admin port and upstreams",
                )
                continue
            if ctx.state.closing or len(ctx.live) + len(ctx.tunnels) >= ctx.limits.max_connections:
                # SOCKS5 has no way to say "busy" before the greeting: close at once.
                if ctx.state.closing:
                    reason, detail = Reason.SHUTTING_DOWN, "the proxy is shutting down"
                else:
                    reason = Reason.TOO_MANY_CONNECTIONS
                    detail = f"max_connections ({ctx.limits.max_connections}) reached"
                self._refuse_connection(client, peer, reason, detail)
                continue
            session = SocksSession(ctx, client, *client_identity(peer[0]))
            try:  # the invariant's boundary (proxy/failsafe.py) for the session's first read
                session.start()
            except Exception as exc:
                session.internal_error(exc)

    def _refuse_connection(
        self, client: RawSocket, peer: tuple[str, int], reason: Reason, detail: str
    ) -> None:
        """Close a client before its greeting; its one access record (`kind: connection`)."""
        if reason is not Reason.SHUTTING_DOWN:
            self.ctx.metrics.connections_rejected += 1
        client.close()
        self.ctx.finish(connection_refused_record(peer[0], reason, f"SOCKS5 listener: {detail}"))

    def _exhausted(self, exc: OSError) -> None:
        """accept() failed for want of a descriptor: close the queued clients through the
        spare descriptor, then pause accepting, doubling the pause."""
        closed = self.spare.refuse_queued(self.raw.accept, b"", ACCEPTS_PER_EVENT)
        self.ctx.metrics.connections_rejected += closed
        self.ctx.metrics.accept_pauses += 1
        if self.pause.pause(self.ctx.limits.accept_backoff_max_s):
            emit(
                "fd-exhausted",
                level="error",
                listener="socks",
                error=errno.errorcode.get(exc.errno or 0, str(exc.errno)),
                closed=closed,
                action="the SOCKS5 listener pauses accepting and backs off until descriptors "
                "free up",
            )


class SocksSession(SweptDeadline):
    """One SOCKS5 client's handshake, from accept to its request (then a SocksTunnel) or its
    refusal."""

    __slots__ = (
        "_auth_held",
        "_deferred",
        "_on_deadline",
        "_pending",
        "client",
        "client_state",
        "ctx",
        "deadline",
        "done",
        "fd",
        "identity",
        "login",
        "parser",
        "reactor",
        "record",
    )

    def __init__(
        self, ctx: ProxyContext, client: RawSocket, identity: ClientIdentity, client_text: str
    ) -> None:
        self.ctx = ctx
        self.client = client
        self.fd = client.fileno()
        self.reactor = ctx.reactor
        self.identity = identity
        self.record = AccessRecord(time.time(), client_text, METHOD, KIND)
        self.parser = SocksParser(login=bool(ctx.state.current.credentials.users))
        self.login: Login | None = None
        self.client_state = Readiness()
        self._auth_held = False
        self._pending: list[Event] = []  # events after a login held for verification
        self._deferred: bytes | None = None  # a method reply waiting for the outbox (_handle)
        self.done = False  # refused, dropped, or handed to its tunnel
        # The handshake's deadline, checked by the server's sweeper; 0: none.
        self.deadline = 0.0
        self._on_deadline: Callable[[], object] | None = None

    def start(self) -> None:
        ctx = self.ctx
        ctx.live.add(self)
        ctx.metrics.active_connections += 1
        self.deadline = time.monotonic() + ctx.limits.header_timeout_s
        self._on_deadline = self._handshake_expired
        self.reactor.add(self.fd, self._handshake_event, owner=self.internal_error)
        # Most clients send their greeting right after the handshake: read now instead of
        # waiting for the epoll round trip (an empty socket costs one EAGAIN).
        self._handshake_readable()

    def _handshake_event(self, events: int) -> None:
        self.client_state.note(events)
        if events & READABLE:
            self._handshake_readable()

    def _handshake_readable(self) -> None:
        # Edge-triggered: read until a short read, or on to the EOF the event announced (a
        # client that sends its last bytes and closes raises one edge for both).
        for _ in range(MAX_HANDSHAKE_READS):
            if self.done or self._auth_held:
                return
            data = read_ready(self.client, HANDSHAKE_READ_BYTES, self.client_state)
            if data is None:
                return
            if not data:
                self._client_closed_early()
                return
            # A lockstep client's greeting and request, each alone in its read, in one step
            # each (SocksParser.quick_*: the results feed gives); anything else through feed.
            parser = self.parser
            reply = parser.quick_greeting(data)
            if reply is not None:
                self._defer(reply)
            else:
                request = parser.quick_request(data)
                if request is not None:
                    self._request(request)
                    return
                self._handle(parser.feed(data))
            if not self.client_state.ready:
                return  # a short read emptied the socket, and no EOF is announced
        self.reactor.loop.call_soon(self._handshake_readable)  # a flood: after the others

    def _handle(self, events: list[Event]) -> None:
        for index, event in enumerate(events):
            if isinstance(event, MethodChosen):
                if not self._method_chosen(event.method, lone=len(events) == 1):
                    return
            elif isinstance(event, Credentials):
                if not self._credentials(event):
                    if self._auth_held:
                        self._pending = events[index + 1 :]  # after the verdict
                    return
            elif isinstance(event, Request):
                self._request(event)
                return
            else:
                self._protocol_refusal(event)
                return

    def _method_chosen(self, method: Method, lone: bool = False) -> bool:
        if lone and method is not Method.NO_ACCEPTABLE:
            self._defer(method_reply(method))
            return True
        if not self._send(method_reply(method)):
            return False
        if method is Method.NO_ACCEPTABLE:
            failure = (
                Refused(
                    Reason.AUTH_REQUIRED,
                    "this proxy needs a user name and password: the client offered no "
                    "username/password authentication (RFC 1929)",
                )
                if self.parser.login_required
                else Refused(Reason.BAD_REQUEST, "the client offered no method this proxy speaks")
            )
            self._finish_refused(failure)
            return False
        return True

    def _credentials(self, event: Credentials) -> bool:
        """Verify before answering the sub-negotiation (RFC 1929 answers it before the request),
        through the same stage 1 as HTTP (proxy/auth.py): slow hashes off the loop, and the
        per-address failure back-off. False: the session waits or ended; `_auth_done` goes on."""
        ctx = self.ctx
        login = self.login = Login(event.user, event.password)
        self.reactor.set_handler(self.fd, self.client_state.note)  # held: remember events
        held = ctx.auth.hold_login(
            login,
            ctx.state.current.credentials,
            self.record.client,
            ctx.limits.auth_failure_delay_s,
            self._auth_done,
        )
        if held:
            self._auth_held = True
            return False
        return self._auth_checked(None)

    def _auth_done(self, refused: Refused | None) -> None:
        self._auth_held = False
        if self.done:
            return  # closed meanwhile (a drain, the header timeout)
        pending, self._pending = self._pending, []
        if self._auth_checked(refused):
            # Go on with what the client sent with its login (an optimistic request), then
            # with what arrived while it was held.
            self._handle(pending)
            if not self.done and self.client_state.ready:
                self._handshake_readable()

    def _auth_checked(self, refused: Refused | None) -> bool:
        """Stage 2: the verdict stage 1 recorded; answer the sub-negotiation with it."""
        try:
            if refused is not None:
                raise refused
            # The admission checks them again (a cache hit) and takes the verified user.
            verify(self.login, self.ctx.state.current.credentials)
        except Refused as exc:
            self._send(auth_reply(False))
            self._finish_refused(exc)
            return False
        if not self._send(auth_reply(True)):
            return False
        self.reactor.set_handler(self.fd, self._handshake_event)
        return True

    def _handshake_expired(self) -> None:
        if not self.parser.started:
            self._drop()  # a connection that never said anything is not a request
            return
        self._finish_refused(
            Refused(
                Reason.HEADER_TIMEOUT,
                f"SOCKS5 handshake not complete in {self.ctx.limits.header_timeout_s:g}s",
            )
        )

    def _client_closed_early(self) -> None:
        if not self.parser.started:
            self._drop()
            return
        self._finish_refused(
            Refused(Reason.BAD_REQUEST, "the client closed before its SOCKS5 request was complete"),
            status=499,
        )

    def _protocol_refusal(self, rejected: Rejected) -> None:
        if rejected.reply and not self._send(rejected.reply):
            return
        self._finish_refused(Refused(rejected.reason, rejected.detail))

    def _request(self, request: Request) -> None:
        """The handshake is over: the tunnel takes the socket (and its readiness) from here."""
        if self._deferred is not None and not self._send(b""):
            return  # the method reply first (a lone greeting's request comes in a later read)
        self._leave_handshake()
        self.done = True
        tunnel = SocksTunnel(
            self.ctx,
            self.client,
            self.identity,
            self.record,
            request,
            self.login,
            self.parser.rest(),
            self.client_state,
        )
        tunnel.start()

    # ---- the end of the handshake
    def _defer(self, reply: bytes) -> None:
        """Send a lone greeting's method reply at the end of the loop iteration.

        A lockstep client (curl, PySocks) waits for it before its next message, so nothing
        else is sent to it this iteration: it leaves with the iteration's other sends
        (net/outbox.py), and one wake-up of the client's core serves them all. Sent at once,
        each was an interrupt of its own: measured 2.0 -> 1.5 rescheduling/function-call
        interrupts per SOCKS5 tunnel (CONNECT: 0.8), and the proxy's CPU per tunnel 1.14x ->
        1.10x CONNECT's. `_send` sends it first if anything else must go out before."""
        self._deferred = reply
        self.ctx.outbox.later(self._send_deferred)

    def _send_deferred(self) -> None:
        """The outbox's action: the method reply `_method_chosen` deferred, unless `_send`
        has sent it already or the session ended meanwhile."""
        if self._deferred is not None and not self.done:
            self._send(b"")

    def _send(self, data: bytes) -> bool:
        """Send a handshake message (a few bytes into an empty socket buffer: it goes whole or
        the client is gone), after a deferred method reply. False: the client is gone, the
        session ended."""
        if self._deferred is not None:
            data, self._deferred = self._deferred + data, None
        try:
            sent = self.client.send(data)
        except OSError:
            sent = -1
        if sent == len(data):
            return True
        gone = "the client went away during the SOCKS5 exchange"
        self._finish_refused(Refused(Reason.BAD_REQUEST, gone), status=499)
        return False

    def _leave_handshake(self) -> None:
        if self in self.ctx.live:
            self.ctx.live.discard(self)
            self.ctx.metrics.active_connections -= 1
        self.deadline = 0.0
        self._on_deadline = None

    def _finish_refused(self, failure: ProxyFailure, status: int | None = None) -> None:
        """A refusal during the handshake (before any Admission). `status`: instead of the
        reason's (499: the client left)."""
        if self.done:
            return
        self._drop()
        record = gate.conclude(self.record, None, failure)
        if status is not None:
            record.status = status
        self.ctx.finish(record)

    def _drop(self) -> None:
        """Close a connection that sent nothing: no record (as for HTTP)."""
        self._leave_handshake()
        self.done = True
        self.reactor.forget(self.fd)
        self.client.close()

    def internal_error(self, exc: BaseException) -> None:
        """An unexpected exception in the handshake's work (proxy/failsafe.py): counted,
        reported on stderr, and the client closed with one record (a general-failure reply
        once the request phase is reached is not owed: the tunnel answers from there)."""
        failure = internal_error(self.ctx.metrics, exc, "SOCKS5 handshake")
        if not self.done:
            self._finish_refused(failure)

    # Closable, for draining
    def shutdown_idle(self) -> None:
        if not self.parser.started:
            self._drop()

    def force_close(self) -> None:
        if self.parser.started:
            self._finish_refused(Refused(Reason.SHUTTING_DOWN, "the proxy is shutting down"))
        else:
            self._drop()


class SocksTunnel(RawTunnel):
    """A SOCKS5 CONNECT past its handshake: the raw-socket tunnel (proxy/raw_tunnel.py)
    answering with SOCKS5 replies."""

    __slots__ = ("_login", "_request")

    WHERE = "SOCKS5 tunnel"

    def __init__(
        self,
        ctx: ProxyContext,
        client: RawSocket,
        identity: ClientIdentity,
        record: AccessRecord,
        request: Request,
        login: Login | None,
        rest: bytes,
        client_state: Readiness,
    ) -> None:
        super().__init__(ctx, client, identity, record, rest, client_state)
        self._request = request
        self._login = login

    def _admit(self) -> Admission:
        request = self._request
        gen = self.ctx.state.current
        return Admission.for_host(gen, self.identity, request.host, request.port, True, self._login)

    def _refused_admission(self, failure: ProxyFailure) -> Admission:
        request = self._request
        gen = self.ctx.state.current
        admission = Admission(
            gen, self.identity, None, self._login, host_text=request.host, failure=failure
        )
        admission.port = request.port
        return admission

    def _established_bytes(self) -> bytes:
        upstream = self.upstream
        assert upstream is not None
        try:
            bound: tuple[str, int] | None = upstream.getsockname()
        except OSError:
            bound = None  # reported as 0.0.0.0:0
        return reply(ReplyCode.SUCCEEDED, bound)

    def _refusal_bytes(self, step: Refuse) -> bytes:
        return reply(reply_code(step.reason))
