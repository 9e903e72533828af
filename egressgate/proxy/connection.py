"""ClientConnection: one asyncio.Protocol per client connection.

Owns the request parser, the header timeout (slowloris), keep-alive, and the order of pipelined
requests: one exchange at a time; events of later requests wait in a queue (reading pauses while
they do, so the queue stays bounded). Hands each request to forward.HttpExchange or
tunnel.start_tunnel. Every refusal is written by `refuse()`, through proxy/refusal.py.

States (named, not implied by flags):
  HEAD      waiting for a request head (header timer running)
  BUSY      an exchange is in progress
  TUNNEL    the socket was handed to a tunnel or upgrade relay; this protocol is done with it
  CLOSED
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections import deque
from enum import Enum
from typing import Any, cast

from egressgate.errors import ProtocolError, ProxyFailure, Reason, Refused
from egressgate.http1.events import END, Event, RequestHead, TunnelStart
from egressgate.http1.parser import RequestParser
from egressgate.names.hostname import IPAddress
from egressgate.net.outbox import Output
from egressgate.observe.record import AccessRecord
from egressgate.policy.decision import ClientIdentity
from egressgate.proxy import gate
from egressgate.proxy.context import ProxyContext
from egressgate.proxy.exchange import Exchange
from egressgate.proxy.failsafe import internal_error
from egressgate.proxy.forward import HttpExchange
from egressgate.proxy.gate import Admission, Refuse
from egressgate.proxy.refusal import refusal_response
from egressgate.proxy.tunnel import TunnelExchange

# Pause reading from a client whose pipelined requests queue up beyond this many events.
MAX_QUEUED_EVENTS = 64


class ConnState(Enum):
    HEAD = "head"
    BUSY = "busy"
    TUNNEL = "tunnel"
    CLOSED = "closed"


class ClientConnection(asyncio.Protocol):
    __slots__ = (
        "_queue",
        "_reading_paused",
        "address",
        "auth_wait",
        "client_text",
        "ctx",
        "deadline",
        "exchange",
        "first_bytes",
        "identity",
        "idle",
        "output",
        "parser",
        "peer_port",
        "request_open",
        "state",
        "tls_names",
        "transport",
        "upgraded",
        "write_paused",
    )

    def __init__(
        self, ctx: ProxyContext, tls_names: tuple[str, ...] = (), first_bytes: bytes = b""
    ) -> None:
        self.ctx = ctx
        # Bytes the acceptor already read while routing the connection (see acceptor.py).
        self.first_bytes = first_bytes
        limits = ctx.limits
        self.parser = RequestParser(limits.max_request_line_bytes, limits.max_header_bytes)
        self.state = ConnState.HEAD
        self.transport: asyncio.Transport | None = None
        # Every byte for the client goes through it, written at the end of the loop iteration
        # (net/outbox.py); `transport` is for reading, flow control and peer facts.
        self.output = Output(ctx.outbox)
        self.exchange: Exchange | None = None
        self.request_open = False  # the current exchange still receives request body events
        self._queue: deque[Event] = deque()
        # When the current wait (request head, or idle keep-alive) expires; checked by the
        # server's sweeper (see `check_deadline`), not by a timer per request.
        self.deadline = 0.0
        self._reading_paused = False
        self.write_paused = False
        self.tls_names = tls_names
        self.client_text = "-"
        self.peer_port = 0
        self.identity: ClientIdentity | None = None
        self.address: IPAddress | None = None
        self.upgraded = False  # the parser is done: later bytes belong to a tunnel
        self.auth_wait = False  # a head waits for its credentials' verdict (proxy/auth.py)
        # Idle between requests on a kept-alive connection (the keep-alive timer runs); the
        # first byte of the next head switches to the header timer.
        self.idle = False

    # ---- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses; same interface.
        self.transport = self.output.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        host = peer[0] if isinstance(peer, tuple) else "127.0.0.1"
        self.address = ipaddress.ip_address(host.split("%", 1)[0])
        if self.address.version == 6 and self.address.ipv4_mapped is not None:
            self.address = self.address.ipv4_mapped
        self.client_text = str(self.address)
        self.peer_port = peer[1] if isinstance(peer, tuple) else 0
        self.identity = ClientIdentity(self.address, None, self.tls_names)
        ctx = self.ctx
        closing = ctx.state.closing
        if closing or len(ctx.live) + len(ctx.tunnels) >= ctx.limits.max_connections:
            reason = Reason.SHUTTING_DOWN if closing else Reason.TOO_MANY_CONNECTIONS
            ctx.metrics.connections_rejected += reason is Reason.TOO_MANY_CONNECTIONS
            self.output.write(refusal_response(reason, None))
            self.output.close()
            self.state = ConnState.CLOSED
            return
        ctx.live.add(self)
        ctx.metrics.active_connections += 1
        self._arm_timer(ctx.limits.header_timeout_s)
        if self.first_bytes:
            first, self.first_bytes = self.first_bytes, b""
            self.data_received(first)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.state is ConnState.TUNNEL:
            return  # the socket lives on in a relay
        self._closed()
        exchange, self.exchange = self.exchange, None
        if exchange is not None:
            try:
                exchange.client_lost()
            except Exception as error:  # nobody to answer: count and report it
                internal_error(self.ctx.metrics, error, "client_lost")

    def data_received(self, data: bytes) -> None:
        # The invariant's boundary (proxy/failsafe.py): a bug below answers, logs and counts.
        # One try around the body, not a wrapper call: free on the hot path.
        try:
            if self.state is ConnState.CLOSED or self.state is ConnState.TUNNEL:
                return
            if self.upgraded:
                if self.exchange is not None:
                    self.exchange.tunnel_start(data)  # raw bytes of the tunnel or new protocol
                return
            if self.idle:
                # Fix (issue 19): a kept-alive connection whose next head trickled in was
                # bounded by keepalive_timeout_s (60 s), not header_timeout_s (slowloris on
                # keep-alive).
                self.idle = False
                self._arm_timer(self.ctx.limits.header_timeout_s)
            try:
                events = self.parser.feed(data)
            except ProtocolError as exc:
                self._protocol_error(exc)
                return
            if self._queue or (self.exchange is not None and not self.request_open):
                self._queue.extend(events)
                self._limit_queue()
                return
            self._dispatch(events)
        except Exception as exc:
            self.internal_error(exc)

    def eof_received(self) -> bool | None:
        try:
            return self._eof()
        except Exception as exc:
            self.internal_error(exc)
            return None

    def _eof(self) -> bool | None:
        # A client that half-closes after its request still gets its response.
        if self.exchange is None and not self._queue:
            self.close()
            return None
        if self.exchange is not None and self.request_open:
            self.exchange.client_eof()  # a plain-HTTP body can never complete: aborts both
        return None if self.state is ConnState.CLOSED else True

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.exchange is not None:
            self.exchange.client_write_paused()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.exchange is not None:
            self.exchange.client_write_resumed()

    # ---- event dispatch (pipelining order)
    def _dispatch(self, events: list[Event] | deque[Event]) -> None:
        for index, event in enumerate(events):
            if self.state is ConnState.CLOSED or self.state is ConnState.TUNNEL:
                return
            if self.auth_wait:  # events after a head held by proxy auth wait for it
                self._queue.extend(list(events)[index:])
                self._limit_queue()
                return
            if (
                self.exchange is not None
                and not self.request_open
                and not isinstance(event, TunnelStart)
            ):
                # The current exchange has its whole request; later events wait their turn.
                rest = list(events)[index:]
                self._queue.extend(rest)
                self._limit_queue()
                return
            self._handle(event)

    def _handle(self, event: Event) -> None:
        if isinstance(event, RequestHead):
            self._start_request(event)
        elif isinstance(event, bytes):
            if self.exchange is not None:
                self.exchange.request_body(event)
        elif event is END:
            if self.exchange is not None:
                self.request_open = False
                self.exchange.request_end()
        elif isinstance(event, TunnelStart) and self.exchange is not None:
            self.request_open = False
            self.upgraded = True
            self.exchange.tunnel_start(event.rest)

    def _start_request(self, head: RequestHead) -> None:
        self._cancel_timer()
        self.idle = False
        self.state = ConnState.BUSY
        self.request_open = True
        ctx = self.ctx
        credentials = ctx.state.current.credentials
        # (`.users`, a dict: no auth call and no closure per request when nobody logs in)
        if credentials.users and ctx.auth.hold(
            head.headers,
            credentials,
            self.client_text,
            ctx.limits.auth_failure_delay_s,
            lambda refused: self._auth_done(head, refused),
        ):
            self.auth_wait = True
            self.pause_reading()
            return
        self._open_exchange(head)

    def _auth_done(self, head: RequestHead, refused: Refused | None) -> None:
        """Proxy auth has a verdict for a held head (or refuses it outright)."""
        self.auth_wait = False
        if self.state is not ConnState.BUSY:
            return  # closed meanwhile
        if refused is not None:
            kind = "tunnel" if head.method == b"CONNECT" else "http"
            record = self.new_record(head.method.decode("ascii", "replace"), kind)
            identity = self.identity
            assert identity is not None
            admission = Admission(self.ctx.state.current, identity, None, failure=refused)
            step = admission.next()
            assert isinstance(step, Refuse)
            self.refuse(step.response(), gate.conclude(record, admission))
            return
        self._open_exchange(head)
        if self._queue:
            queued, self._queue = self._queue, deque()
            self._dispatch(queued)
        if self.transport is not None and not self.transport.is_closing():
            self.resume_reading()  # unless the exchange refused and closed it

    def _open_exchange(self, head: RequestHead) -> None:
        exchange: Exchange
        if head.method == b"CONNECT":
            exchange = TunnelExchange(self, head)
        else:
            exchange = HttpExchange(self, head)
        self.exchange = exchange
        exchange.start()

    def exchange_done(self, keep_alive: bool) -> None:
        """The current exchange has sent its whole response."""
        self.exchange = None
        self.request_open = False
        if self.state is not ConnState.BUSY:
            return
        if not keep_alive or self.ctx.state.closing:
            self.close()
            return
        self.state = ConnState.HEAD
        if self.parser_mid_head():
            self._arm_timer(self.ctx.limits.header_timeout_s)  # the next head has begun
        else:
            self.idle = True
            self._arm_timer(self.ctx.limits.keepalive_timeout_s)
        if self._queue:
            queued, self._queue = self._queue, deque()
            self._dispatch(queued)
        if self._reading_paused and not self._queue and self.exchange is None:
            self._reading_paused = False
            if self.transport is not None:
                self.transport.resume_reading()

    def _limit_queue(self) -> None:
        if len(self._queue) > MAX_QUEUED_EVENTS and not self._reading_paused:
            self._reading_paused = True
            if self.transport is not None:
                self.transport.pause_reading()

    # ---- flow control helpers for exchanges
    def pause_reading(self) -> None:
        if not self._reading_paused and self.transport is not None:
            self._reading_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self._reading_paused and self.transport is not None and not self._queue:
            self._reading_paused = False
            self.transport.resume_reading()

    # ---- timers
    def _arm_timer(self, delay_s: float) -> None:
        self.deadline = time.monotonic() + delay_s

    def _cancel_timer(self) -> None:
        self.deadline = 0.0

    def check_deadline(self, now: float) -> None:
        """Called about twice a second by the sweeper: enforce head and keep-alive timeouts,
        and the current exchange's response timeout."""
        if self.deadline and now >= self.deadline:
            self.deadline = 0.0
            self._on_timer()
        exchange = self.exchange
        if exchange is not None:
            exchange.check_deadline(now)

    def _on_timer(self) -> None:
        if self.state is not ConnState.HEAD:
            return
        if self.parser_mid_head():
            self._refuse_request(
                ProtocolError(
                    Reason.HEADER_TIMEOUT,
                    f"request head not complete in {self.ctx.limits.header_timeout_s:g}s",
                )
            )
        else:
            self.close()  # idle keep-alive connection

    def parser_mid_head(self) -> bool:
        return self.parser._head_seen > 0

    # ---- ending
    def new_record(self, method: str, kind: str) -> AccessRecord:
        return AccessRecord(time.time(), self.client_text, method, kind)

    def refuse(self, response: bytes, record: AccessRecord) -> None:
        """Answer with `response` (a refusal), log `record` (concluded), close the connection."""
        if self.transport is not None and not self.transport.is_closing():
            self.output.write(response)
        self.ctx.finish(record)
        self.exchange = None
        self.close()

    def finish(self, record: AccessRecord) -> None:
        """Log and count a concluded record; the connection lives on."""
        self.ctx.finish(record)

    def _refuse_request(self, failure: ProxyFailure) -> None:
        """Refuse a request whose head could not be read (no admission: no destination)."""
        record = gate.conclude(self.new_record("-", "http"), None, failure)
        self.refuse(refusal_response(failure.reason, None, failure.detail), record)

    def _protocol_error(self, exc: ProtocolError) -> None:
        if self.exchange is not None and self.request_open:
            self.exchange.client_lost()  # its request body is corrupt: abandon it
            self.exchange = None
        self._refuse_request(exc)

    def internal_error(self, exc: BaseException) -> None:
        """An unexpected exception in this connection's work (proxy/failsafe.py): the current
        exchange answers 502 and logs it; with none, the connection is refused the same way."""
        exchange = self.exchange
        if exchange is not None:
            exchange.internal_error(exc)
            return
        failure = internal_error(self.ctx.metrics, exc, "client connection")
        if self.state is ConnState.CLOSED or self.state is ConnState.TUNNEL:
            return
        self._refuse_request(failure)

    def detach_for_tunnel(self) -> None:
        """The socket now belongs to a relay: stop tracking it as an HTTP connection."""
        self.output.flush()  # what was queued goes first; the relay writes directly
        self._cancel_timer()
        self.state = ConnState.TUNNEL
        self.exchange = None
        self._unregister()

    def close(self) -> None:
        if self.state is ConnState.CLOSED:
            return
        self._closed()
        self.output.close()

    def _closed(self) -> None:
        if self.state is ConnState.CLOSED:
            return
        self._cancel_timer()
        self.state = ConnState.CLOSED
        self._unregister()

    def _unregister(self) -> None:
        self.ctx.leave_live(self)

    # ---- draining (Closable)
    def shutdown_idle(self) -> None:
        if self.state is ConnState.HEAD and not self.parser_mid_head():
            self.close()

    def force_close(self) -> None:
        if self.exchange is not None:
            self.exchange.client_lost()
            self.exchange = None
        self.output.abort()
        self._closed()

    def __repr__(self) -> str:
        return f"<ClientConnection {self.client_text}:{self.peer_port} {self.state.value}>"

    def extra(self, name: str) -> Any:
        return self.transport.get_extra_info(name) if self.transport is not None else None
