"""Accepts plain (non-TLS) proxy connections itself and routes each by its first bytes.

CONNECT requests stay on raw sockets end to end (proxy/tunnel.py ConnectTunnel → net/relay.py's
splice relay): no asyncio transport, protocol object or task is created for them. Everything
else is handed to an asyncio transport with ClientConnection (plain-HTTP forwarding, where
keep-alive amortises the setup). Measured on the bench rig, building a uvloop transport for a
tunnel and then detaching its socket cost more than the whole raw path.

The first bytes are read here and handed on: to the tunnel's parser, or to ClientConnection as
the start of its stream. The header timeout and the connection cap apply here too. New client
sockets are watched through the private edge-triggered epoll (net/reactor.py), not the loop's
add_reader: each add_reader/remove_reader pair costs uvloop several syscalls per connection.

Descriptor exhaustion (docs/threat-model.md): a client whose socket lands in the descriptor
reserve (`limits.reserved_fds`) gets `503 too-many-connections`. If accept() itself fails with
EMFILE/ENFILE, the spare descriptor (net/listen.py SpareFd) answers the queued clients with the
same 503, and the listener is paused for a growing interval (10 ms doubling up to
`limits.accept_backoff_max_s`) rather than spinning on a socket that stays readable.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import time
from typing import cast

from egressgate.errors import ProtocolError, Reason, Refused
from egressgate.http1.connect_head import read_connect_head
from egressgate.http1.events import RequestHead, TunnelStart
from egressgate.http1.parser import RequestParser
from egressgate.net.connect import EXHAUSTION_ERRNOS
from egressgate.net.listen import AcceptPause, SpareFd
from egressgate.net.rawsocket import RawAcceptor, RawSocket
from egressgate.net.reactor import READABLE, Readiness
from egressgate.net.tasks import spawn
from egressgate.observe.events import emit
from egressgate.observe.record import AccessRecord
from egressgate.proxy import gate
from egressgate.proxy.connection import ClientConnection
from egressgate.proxy.context import ProxyContext
from egressgate.proxy.failsafe import internal_error
from egressgate.proxy.raw_tunnel import client_identity as client_identity  # re-exported
from egressgate.proxy.raw_tunnel import connection_refused_record
from egressgate.proxy.refusal import refusal_response
from egressgate.proxy.tunnel import ConnectTunnel

ACCEPTS_PER_EVENT = 64
FIRST_READ_BYTES = 64 * 1024
MAX_FIRST_READS = 4  # full reads per event before yielding to other connections
_CONNECT = b"CONNECT "
_TOO_MANY = refusal_response(
    Reason.TOO_MANY_CONNECTIONS, None, "the proxy is out of file descriptors; retry later"
)


def start_raw_tunnel(tunnel: ConnectTunnel) -> None:
    """Start a tunnel, or hold it while proxy auth verifies its credentials (proxy/auth.py)."""
    ctx = tunnel.ctx
    if not ctx.auth.hold(
        tunnel.head.headers,
        ctx.state.current.credentials,
        tunnel.record.client,
        ctx.limits.auth_failure_delay_s,
        lambda refused: _auth_done(tunnel, refused),
    ):
        tunnel.start()
        return
    # While held, the client socket's events are only remembered (as start() would do).
    ctx.reactor.set_handler(tunnel.client_fd, tunnel.client_state.note)


def _auth_done(tunnel: ConnectTunnel, refused: Refused | None) -> None:
    if tunnel.done:
        return  # closed meanwhile (a drain)
    if refused is not None:
        tunnel.refuse_early(refused)
        return
    tunnel.start()


class Acceptor:
    """Owns one listening socket; accepts and routes connections."""

    # What a client refused for want of descriptors is told (the TLS listener: nothing).
    refusal_bytes = _TOO_MANY

    def __init__(self, ctx: ProxyContext, listener: socket.socket) -> None:
        self.ctx = ctx
        self.listener = listener
        self.raw = RawAcceptor(listener)
        self.loop = asyncio.get_running_loop()
        self.spare = SpareFd()
        self.in_reserve = False  # refusing clients whose socket lands in the fd reserve
        self.pause = AcceptPause(self.loop, listener.fileno(), self._accept)

    def close(self) -> None:
        self.pause.close()
        self.listener.close()
        self.spare.close()

    def _accept(self) -> None:
        ctx = self.ctx
        accept = self.raw.accept
        limits = ctx.limits
        for _ in range(ACCEPTS_PER_EVENT):
            try:
                client, peer = accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in EXHAUSTION_ERRNOS:
                    self._exhausted(exc)
                return  # ECONNABORTED and friends: the next readiness event goes on
            if client.fileno() >= ctx.fd_ceiling:
                self._reserve_reached(client, peer)
                continue
            if self.pause.backoff_s or self.in_reserve:
                self._recovered()
            if ctx.state.closing or len(ctx.live) + len(ctx.tunnels) >= ctx.limits.max_connections:
                self._reject(client, peer)
                continue
            # Most clients send their request right after the handshake, before the accept is
            # served: on the bench rig 92 % of new connections had their first bytes waiting.
            # Read at once, a CONNECT is routed without an epoll round trip; the rest cost one
            # EAGAIN. The socket joins the reactor only after this read, so the edge it reports
            # on joining is for bytes (or an EOF) that came later.
            try:
                data: bytes | None = client.recv(FIRST_READ_BYTES)
            except (BlockingIOError, InterruptedError):
                data = None
            except OSError:
                data = b""
            if data is not None and len(data) < FIRST_READ_BYTES and data.startswith(_CONNECT):
                # The usual CONNECT, whole: straight to the tunnel (connect_head.py).
                plain = read_connect_head(
                    data, limits.max_request_line_bytes, limits.max_header_bytes
                )
                if plain is not None:
                    state = Readiness()  # a short read: nothing is known to be waiting
                    ctx.reactor.add(client.fileno(), state.note)
                    start_raw_tunnel(
                        ConnectTunnel(ctx, client, *client_identity(peer[0]), *plain, state)
                    )
                    continue
            _FirstRead(ctx, client, peer).start(data)

    # ---- descriptor exhaustion (module docstring)
    def _reserve_reached(self, client: RawSocket, peer: tuple[str, int]) -> None:
        """A client socket took a reserved descriptor: 503 and close it at once."""
        fd = client.fileno()
        self.ctx.metrics.connections_rejected += 1
        if self.refusal_bytes:
            try:
                client.send(self.refusal_bytes)
            except OSError:
                pass
        client.close()
        self._log_refused(
            peer,
            Reason.TOO_MANY_CONNECTIONS,
            f"{fd + 1} descriptors open: the last reserved_fds "
            f"({self.ctx.limits.reserved_fds}) are kept for the admin port and upstreams",
        )
        if not self.in_reserve:
            self.in_reserve = True
            emit(
                "fd-reserve-reached",
                level="warning",
                open_fds=fd + 1,
                reserved_fds=self.ctx.limits.reserved_fds,
                action="new clients get 503 too-many-connections until descriptors free up",
            )

    def _exhausted(self, exc: OSError) -> None:
        """accept() failed for want of a descriptor: answer the queue, then pause."""
        answered = self.spare.refuse_queued(self.raw.accept, self.refusal_bytes, ACCEPTS_PER_EVENT)
        self.ctx.metrics.connections_rejected += answered
        self.ctx.metrics.accept_pauses += 1
        if self.pause.pause(self.ctx.limits.accept_backoff_max_s):
            emit(
                "fd-exhausted",
                level="error",
                error=errno.errorcode.get(exc.errno or 0, str(exc.errno)),
                refused=answered,
                action="queued clients get 503 too-many-connections; accepting pauses and "
                "backs off until descriptors free up",
            )

    def _recovered(self) -> None:
        """A client socket below the reserve again: leave the exhausted state."""
        if self.spare.restore():
            emit("fd-recovered", paused_s=self.pause.recovered() or None)
            self.in_reserve = False

    def _reject(self, client: RawSocket, peer: tuple[str, int]) -> None:
        draining = self.ctx.state.closing
        reason = Reason.SHUTTING_DOWN if draining else Reason.TOO_MANY_CONNECTIONS
        if not draining:
            self.ctx.metrics.connections_rejected += 1
        try:
            client.send(refusal_response(reason, None))
        except OSError:
            pass
        client.close()
        detail = (
            "the proxy is shutting down"
            if draining
            else f"max_connections ({self.ctx.limits.max_connections}) reached"
        )
        self._log_refused(peer, reason, detail)

    def _log_refused(self, peer: tuple[str, int], reason: Reason, detail: str) -> None:
        """Every accepted connection ends with one access record, a refused one too (issue 12):
        `kind: connection`, no request was read."""
        self.ctx.finish(connection_refused_record(peer[0], reason, detail))


class _FirstRead:
    """A new connection before we know what it is: waits (bounded) for its first bytes."""

    __slots__ = (
        "ctx",
        "deadline",
        "fd",
        "loop",
        "parser",
        "peer",
        "prefix",
        "sock",
        "state",
    )

    def __init__(self, ctx: ProxyContext, sock: RawSocket, peer: tuple[str, int]) -> None:
        self.ctx = ctx
        self.sock = sock
        self.fd = sock.fileno()
        self.peer = peer
        self.loop = ctx.reactor.loop
        self.parser: RequestParser | None = None
        self.prefix = b""  # bytes read while they are still a prefix of "CONNECT "
        self.state = Readiness()  # handed on with the socket to the tunnel (edge-triggered)
        ctx.live.add(self)
        ctx.metrics.active_connections += 1
        # Enforced by the server's sweeper (it walks ctx.live), not a loop timer per connection.
        self.deadline = time.monotonic() + ctx.limits.header_timeout_s

    def start(self, data: bytes | None) -> None:
        """Watch the socket, then handle `data`, what the acceptor's first read got (None:
        nothing had arrived)."""
        # Before routing: the tunnel or the transport path take the socket over from here.
        self.ctx.reactor.add(self.fd, self._on_event, False, self.internal_error)
        if data is not None and self._received(data):
            self._readable()  # a full read: more may be waiting (edge-triggered)

    def _on_event(self, events: int) -> None:
        self.state.note(events)
        if events & READABLE:
            self._readable()

    def _readable(self) -> None:
        # Read for real (no MSG_PEEK): bytes read before the route is known are handed on, to
        # the tunnel's parser or to the transport path. Edge-triggered: read until a short read.
        for _ in range(MAX_FIRST_READS):
            try:
                data = self.sock.recv(FIRST_READ_BYTES)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data = b""
            if not self._received(data):
                return
        self.loop.call_soon(self._readable)  # a flood of bytes: continue after the others

    def _received(self, data: bytes) -> bool:
        """Handle one read; True when the socket may hold more that is still ours to read."""
        if not data:
            self._drop()
            return False
        full = len(data) == FIRST_READ_BYTES
        self.state.after_read(full)
        return self._route(data) and full

    def _route(self, data: bytes) -> bool:
        """Handle bytes read; True while this object still owns the socket and wants more."""
        if self.parser is None:
            prefix = self.prefix + data if self.prefix else data
            if not prefix.startswith(_CONNECT):
                if _CONNECT.startswith(prefix):
                    self.prefix = prefix  # "CONN" so far: wait for the rest of the method
                    return True
                self._to_transport(prefix)
                return False
            self.prefix = b""
            # The usual CONNECT, whole in the accept-time read, never gets here (see
            # Acceptor._accept): this is the full parser's path, for heads that come late, in
            # pieces, or unusual.
            limits = self.ctx.limits
            self.parser = RequestParser(limits.max_request_line_bytes, limits.max_header_bytes)
            data = prefix
        return self._feed_connect(data)

    def _feed_connect(self, data: bytes) -> bool:
        assert self.parser is not None
        try:
            events = self.parser.feed(data)
        except ProtocolError as exc:
            self._refuse(exc.reason, exc.detail)
            return False
        head: RequestHead | None = None
        rest = b""
        for event in events:  # typically [RequestHead, TunnelStart(rest)]
            if isinstance(event, RequestHead):
                head = head or event
            elif isinstance(event, TunnelStart):
                rest += event.rest
        if head is None:
            return True  # the head is not complete yet
        self._start_tunnel(head, rest)
        return False

    def _start_tunnel(self, head: RequestHead, rest: bytes) -> None:
        self._stop()
        start_raw_tunnel(
            ConnectTunnel(
                self.ctx,
                self.sock,
                *client_identity(self.peer[0]),
                head,
                rest,
                self.state,
            )
        )

    def _to_transport(self, first_bytes: bytes) -> None:
        self._stop()
        ctx, sock = self.ctx, self.sock
        ctx.reactor.remove(self.fd)  # the transport's own loop registration takes over
        # The loops only use socket methods the C type has (typeshed asks for socket.socket).
        spawn(
            self.loop.connect_accepted_socket(
                lambda: ClientConnection(ctx, first_bytes=first_bytes), cast(socket.socket, sock)
            ),
            name="egressgate-accept",
        )

    def check_deadline(self, now: float) -> None:
        if self.deadline and now >= self.deadline:
            self._timeout()

    def _timeout(self) -> None:
        self.deadline = 0.0
        if self.prefix or (self.parser is not None and self.parser._head_seen):
            self._refuse(
                Reason.HEADER_TIMEOUT,
                f"request head not complete in {self.ctx.limits.header_timeout_s:g}s",
            )
        else:
            self._drop()

    def _refuse(self, reason: Reason, detail: str) -> None:
        self._stop()
        failure = ProtocolError(reason, detail)
        client = client_identity(self.peer[0])[1]
        record = gate.conclude(
            AccessRecord(time.time(), client, "CONNECT", "tunnel"), None, failure
        )
        try:
            self.sock.send(refusal_response(reason, None, detail))
        except OSError:
            pass
        self._close()
        self.ctx.finish(record)

    def internal_error(self, exc: Exception) -> None:
        """An unexpected exception while routing (proxy/failsafe.py): 502, logged, counted."""
        failure = internal_error(self.ctx.metrics, exc, "first read")
        if self in self.ctx.live:  # still ours: not yet handed to a tunnel or a transport
            self._refuse(failure.reason, failure.detail)

    def _stop(self) -> None:
        self.deadline = 0.0
        self.ctx.leave_live(self)

    def _close(self) -> None:
        self.ctx.reactor.forget(self.fd)
        self.sock.close()

    def _drop(self) -> None:
        self._stop()
        self._close()

    # Closable, for draining
    def shutdown_idle(self) -> None:
        if self.parser is None and not self.prefix:
            self._drop()

    def force_close(self) -> None:
        self._drop()
