"""connect(): open a TCP connection to one vetted IP address — never a name, never re-resolved.

OSError becomes UpstreamError with an UPSTREAM_* reason here, once, at the edge.
"""

from __future__ import annotations

import asyncio
import errno
import socket

from egressgate.errors import Reason, UpstreamError
from egressgate.names.hostname import IPAddress

_UNREACHABLE = {errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EHOSTDOWN, errno.ENETDOWN,
                errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT}


def translate_os_error(exc: OSError, what: str) -> UpstreamError:
    """Map a socket error to our UpstreamError (the single place this is decided)."""
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
    """A connected non-blocking TCP socket to address:port, with TCP_NODELAY."""
    family = socket.AF_INET if address.version == 4 else socket.AF_INET6
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setblocking(False)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    what = f"{address}:{port}" if address.version == 4 else f"[{address}]:{port}"
    try:
        async with asyncio.timeout(timeout_s):
            await asyncio.get_running_loop().sock_connect(sock, (str(address), port))
    except TimeoutError:
        sock.close()
        raise UpstreamError(Reason.UPSTREAM_TIMEOUT, f"{what}: no answer within "
                            f"{timeout_s:g}s") from None
    except OSError as exc:
        sock.close()
        raise translate_os_error(exc, what) from None
    except BaseException:
        sock.close()
        raise
    return sock
