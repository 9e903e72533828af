"""The TLS proxy listener: each connection is counted and bounded from accept, not from the end
of its handshake.

asyncio's `create_server(ssl=...)` only shows a connection to the proxy once its handshake is
done, so connections that never finish one (plaintext sent to the TLS port, a stalled or
failing handshake) were invisible: not counted against `max_connections`, not logged, not in
any metric. Here the listener is accepted on raw sockets like the plain one (`TlsAcceptor`:
connection cap, descriptor reserve, EMFILE back-off); each connection is registered at once as
a `TlsHandshake` (counted, drained), which runs the handshake through
`loop.connect_accepted_socket(ssl=...)` bounded by `limits.header_timeout_s` and then counts as
an ordinary ClientConnection. A failed handshake writes an access record (kind `tls`, reason
`tls-handshake-failed`, the cause in `detail`) and bumps
`egressgate_tls_handshake_failures_total{cause}`.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from typing import Any, cast

from egressgate.errors import Reason
from egressgate.net.connect import EXHAUSTION_ERRNOS
from egressgate.net.rawsocket import RawSocket
from egressgate.net.tasks import spawn
from egressgate.observe.record import AccessRecord
from egressgate.proxy.acceptor import ACCEPTS_PER_EVENT, Acceptor, client_identity
from egressgate.proxy.connection import ClientConnection
from egressgate.proxy.context import ProxyContext

# ssl library reasons that mean "the client did not speak TLS at all".
_NOT_TLS = frozenset({"HTTP_REQUEST", "HTTPS_PROXY_REQUEST", "WRONG_VERSION_NUMBER"})


def tls_names(ssl_object: ssl.SSLObject | None) -> tuple[str, ...]:
    """Subject CN and SAN names of a verified client certificate, lowercased."""
    if ssl_object is None:
        return ()
    cert: Any = ssl_object.getpeercert()
    if not cert:
        return ()
    names = [value for rdn in cert.get("subject", ()) for key, value in rdn if key == "commonName"]
    names += [
        value
        for kind, value in cert.get("subjectAltName", ())
        if kind in ("DNS", "URI", "email", "IP Address")
    ]
    return tuple(n.lower() for n in names)


class TlsClientConnection(ClientConnection):
    """A client on the TLS listener: its certificate names join its identity."""

    __slots__ = ("handshake",)

    def __init__(self, ctx: ProxyContext, handshake: TlsHandshake) -> None:
        super().__init__(ctx)
        self.handshake = handshake

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Called once the handshake is done: the connection stops counting as a handshake
        # before it counts as a client connection (never twice against max_connections).
        self.handshake.handed_over()
        self.tls_names = tls_names(transport.get_extra_info("ssl_object"))
        super().connection_made(transport)


def handshake_cause(exc: BaseException) -> str:
    """Why a handshake failed, as a metric label: not-tls, timeout, closed or error."""
    if isinstance(exc, ssl.SSLError) and exc.reason in _NOT_TLS:
        return "not-tls"
    text = str(exc)
    if isinstance(exc, TimeoutError) or "taking longer" in text:
        return "timeout"
    if isinstance(exc, ConnectionError | EOFError | ssl.SSLEOFError):
        return "closed"
    return "error"


class TlsAcceptor(Acceptor):
    """Accepts TLS-listener connections on raw sockets: the connection cap, the descriptor
    reserve and the EMFILE back-off of the plain listener apply from accept. Refusals here
    are silent closes (no plaintext answer can mean anything to a TLS client)."""

    refusal_bytes = b""

    def __init__(self, ctx: ProxyContext, listener: socket.socket, context: ssl.SSLContext) -> None:
        self.context = context
        super().__init__(ctx, listener)

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
                return
            if client.fileno() >= ctx.fd_ceiling:
                self._reserve_reached(client, peer)
                continue
            if self.pause.backoff_s or self.in_reserve:
                self._recovered()
            closing = ctx.state.closing
            if closing or len(ctx.live) + len(ctx.tunnels) >= ctx.limits.max_connections:
                ctx.metrics.connections_rejected += not closing
                client.close()  # before its handshake: no HTTP answer is possible, only a record
                self._log_refused(
                    peer,
                    Reason.SHUTTING_DOWN if closing else Reason.TOO_MANY_CONNECTIONS,
                    "the proxy is shutting down"
                    if closing
                    else f"max_connections ({ctx.limits.max_connections}) reached",
                )
                continue
            TlsHandshake(ctx, self.context, client, client_identity(peer[0])[1]).start()


class TlsHandshake:
    """One TLS-listener connection until its handshake ends (module docstring)."""

    __slots__ = ("client_text", "context", "ctx", "done", "sock", "started", "task")

    def __init__(
        self, ctx: ProxyContext, context: ssl.SSLContext, sock: RawSocket, client_text: str
    ) -> None:
        self.ctx = ctx
        self.context = context
        self.sock = sock
        self.client_text = client_text
        self.started = time.time()
        self.done = False
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.ctx.live.add(self)
        self.ctx.metrics.active_connections += 1
        self.task = spawn(self._handshake(), name="egressgate-tls-handshake")

    async def _handshake(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            # The transport owns the socket from here; on any failure it closes it.
            await loop.connect_accepted_socket(
                lambda: TlsClientConnection(self.ctx, handshake=self),
                cast(socket.socket, self.sock),
                ssl=self.context,
                ssl_handshake_timeout=self.ctx.limits.header_timeout_s,
            )
        except asyncio.CancelledError:
            self._unregister()  # force-closed (a drain); the transport closed the socket
            raise
        except Exception as exc:  # every handshake failure is logged and counted
            self._failed(exc)

    def handed_over(self) -> None:
        """The handshake succeeded: the ClientConnection counts the connection from now on."""
        self._unregister()

    def _failed(self, exc: BaseException) -> None:
        if self.done:
            return
        self._unregister()
        cause = handshake_cause(exc)
        ctx = self.ctx
        failures = ctx.metrics.tls_handshake_failures
        failures[cause] = failures.get(cause, 0) + 1
        text = str(exc) or type(exc).__name__
        record = AccessRecord(
            self.started,
            self.client_text,
            "-",
            "tls",
            decision="error",
            reason=Reason.TLS_HANDSHAKE_FAILED.value,
            detail=f"{cause}: {text}"[:300],
        )
        record.duration_ms = (time.time() - self.started) * 1000.0
        ctx.finish(record)

    def _unregister(self) -> None:
        self.done = True
        self.ctx.leave_live(self)

    # Closable, for draining: a handshake in progress is not a request in flight.
    def shutdown_idle(self) -> None:
        self.force_close()

    def force_close(self) -> None:
        if not self.done and self.task is not None:
            self.task.cancel()
