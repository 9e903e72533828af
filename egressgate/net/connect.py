"""connect(): open a TCP connection to one vetted IP address — never a name, never re-resolved.

OSError becomes UpstreamError with an UPSTREAM_* reason here, once, at the edge.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket

from egressgate.errors import Reason, UpstreamError
from egressgate.names.hostname import IPAddress

# socket()/accept() failures that mean "no descriptor or buffer left", not a network fault.
EXHAUSTION_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})

_UNREACHABLE = {
    errno.ENETUNREACH,
    errno.EHOSTUNREACH,
    errno.EHOSTDOWN,
    errno.ENETDOWN,
    errno.EADDRNOTAVAIL,
    errno.EAFNOSUPPORT,
}


def translate_os_error(exc: OSError, what: str) -> UpstreamError:
    """Map a socket error to our UpstreamError (the single place this is decided)."""
    if exc.errno in EXHAUSTION_ERRNOS:
        # No descriptor (or buffer) for the upstream socket: the proxy is full, not the
        # destination at fault; 503 so the client retries later.
        why = errno.errorcode.get(exc.errno or 0, "")
        return UpstreamError(
            Reason.TOO_MANY_CONNECTIONS,
            f"{what}: no file descriptor for the upstream socket ({why})",
        )
    if isinstance(exc, ConnectionRefusedError):
        return UpstreamError(Reason.UPSTREAM_REFUSED, f"{what}: connection refused")
    if isinstance(exc, ConnectionResetError | BrokenPipeError | ConnectionAbortedError):
        return UpstreamError(Reason.UPSTREAM_RESET, f"{what}: connection reset")
    if isinstance(exc, TimeoutError) or exc.errno == errno.ETIMEDOUT:
        return UpstreamError(Reason.UPSTREAM_TIMEOUT, f"{what}: timed out")
    if exc.errno in _UNREACHABLE:
        return UpstreamError(Reason.UPSTREAM_UNREACHABLE, f"{what}: {exc.strerror}")
    return UpstreamError(Reason.UPSTREAM_ERROR, f"{what}: {exc.strerror or exc}")


async def connect(address: IPAddress, port: int, timeout_s: float) -> socket.socket:
    """A connected non-blocking TCP socket to address:port, with TCP_NODELAY.

    Not `loop.sock_connect`: uvloop's version passes the address through getaddrinfo on its
    thread pool (a futex round trip per connection, measured as the top cost of the CONNECT
    path); a vetted address needs no resolving, so we connect and wait for writability here.
    """
    family = socket.AF_INET if address.version == 4 else socket.AF_INET6
    what = f"{address}:{port}" if address.version == 4 else f"[{address}]:{port}"
    try:
        # Inside the try: EMFILE here used to escape as a bare OSError and wedge the client.
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError as exc:
        raise translate_os_error(exc, what) from None
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        error = sock.connect_ex((str(address), port))
        if error == errno.EINPROGRESS:
            await _wait_connected(sock, timeout_s, what)
            error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if error:
            raise OSError(error, os.strerror(error))
    except OSError as exc:
        sock.close()
        raise translate_os_error(exc, what) from None
    except BaseException:
        sock.close()
        raise
    return sock


async def _wait_connected(sock: socket.socket, timeout_s: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[None] = loop.create_future()
    fd = sock.fileno()

    def ready() -> None:
        if not waiter.done():
            waiter.set_result(None)

    def expire() -> None:
        if not waiter.done():
            waiter.set_exception(
                UpstreamError(Reason.UPSTREAM_TIMEOUT, f"{what}: no answer within {timeout_s:g}s")
            )

    loop.add_writer(fd, ready)
    timer = loop.call_later(timeout_s, expire)
    try:
        await waiter
    finally:
        timer.cancel()
        loop.remove_writer(fd)
