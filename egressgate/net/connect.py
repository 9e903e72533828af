"""connect(): open a TCP connection to one vetted IP address — never a name, never re-resolved.

connect_first(): the first of several vetted addresses to answer, Happy-Eyeballs style
(RFC 8305 §5): attempts start CONNECTION_ATTEMPT_DELAY_S apart (at once after a failure), at
most MAX_ATTEMPTS_IN_FLIGHT at a time, the first to connect wins and the others are closed, and
the whole search is bounded by a total deadline: a name with many blackholed addresses ends in
`upstream-timeout` after `connect_total_timeout_s`, not after one `connect_timeout_s` each.

OSError becomes UpstreamError with an UPSTREAM_* reason here, once, at the edge.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
from collections.abc import Callable, Sequence

from egressgate.errors import Reason, UpstreamError
from egressgate.names.hostname import IPAddress
from egressgate.net.tasks import spawn

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


# RFC 8305 §8 recommends 250 ms between attempts; a few in flight bound the sockets one
# request can hold against a name with many unresponsive addresses.
CONNECTION_ATTEMPT_DELAY_S = 0.25
MAX_ATTEMPTS_IN_FLIGHT = 4


async def connect_first(
    addresses: Sequence[IPAddress],
    port: int,
    attempt_timeout_s: float,
    total_timeout_s: float,
    on_failure: Callable[[UpstreamError], None] | None = None,
) -> tuple[socket.socket, IPAddress]:
    """A connected socket to the first of `addresses` (tried in order) that answers.

    Raises UpstreamError: the last attempt's error when every address failed, UPSTREAM_TIMEOUT
    when `total_timeout_s` passed first. `on_failure` hears each failed attempt.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + total_timeout_s
    attempts: dict[asyncio.Task[socket.socket], IPAddress] = {}
    last: UpstreamError | None = None
    started = 0
    try:
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            if started < len(addresses) and len(attempts) < MAX_ATTEMPTS_IN_FLIGHT:
                address = addresses[started]
                started += 1
                attempt = connect(address, port, min(attempt_timeout_s, remaining))
                attempts[spawn(attempt, name="egressgate-connect-attempt")] = address
            if not attempts:
                break  # every address failed
            more_to_start = started < len(addresses) and len(attempts) < MAX_ATTEMPTS_IN_FLIGHT
            wait_s = min(CONNECTION_ATTEMPT_DELAY_S, remaining) if more_to_start else remaining
            done, _ = await asyncio.wait(
                attempts, timeout=wait_s, return_when=asyncio.FIRST_COMPLETED
            )
            for task in done:
                address = attempts.pop(task)
                error = task.exception()
                if error is None:
                    return task.result(), address  # the finally closes the others
                if not isinstance(error, UpstreamError):
                    raise error
                last = error
                if on_failure is not None:
                    on_failure(error)
    finally:
        for task in attempts:
            _discard(task)
    if started < len(addresses) or last is None or loop.time() >= deadline:
        tried = f"{started} of {len(addresses)} address(es)"
        raise UpstreamError(
            Reason.UPSTREAM_TIMEOUT,
            f"port {port}: no connection within {total_timeout_s:g}s ({tried} tried)",
        )
    raise last


def _discard(task: asyncio.Task[socket.socket]) -> None:
    """Cancel a losing attempt; close its socket if it connected anyway."""
    if not task.done():
        task.cancel()  # connect() closes its socket on cancellation
        task.add_done_callback(_close_if_connected)
    else:
        _close_if_connected(task)


def _close_if_connected(task: asyncio.Task[socket.socket]) -> None:
    if not task.cancelled() and task.exception() is None:
        task.result().close()
