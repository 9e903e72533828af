"""Sockets of the raw CONNECT path as the C-level `_socket.socket`, not `socket.socket`.

Why: `socket.socket` is a Python subclass whose accept(), __init__() and close() are Python
functions (accept() also converts family and type to enums on every call); on the raw path,
where a tunnel is a handful of syscalls, those wrappers were about ten Python calls per
tunnel. The C type has every method the raw path uses (recv, send, shutdown, connect_ex,
getsockopt, setblocking, fileno, close), and uvloop's connect_accepted_socket accepts it.
"""

from __future__ import annotations

import _socket
import socket
from collections.abc import Callable

RawSocket = _socket.socket


class RawAcceptor:
    """accept() on a listening socket, returning non-blocking RawSockets."""

    __slots__ = ("_accept", "_family")

    def __init__(self, listener: socket.socket) -> None:
        self._family = int(listener.family)
        # The C method socket.accept() wraps: (fd, address), no enum conversions.
        self._accept: Callable[[], tuple[int, tuple[str, int]]] = listener._accept  # type: ignore[attr-defined]

    def accept(self) -> tuple[RawSocket, tuple[str, int]]:
        fd, peer = self._accept()
        try:
            sock = RawSocket(self._family, socket.SOCK_STREAM, 0, fd)
        except OSError:
            _socket.close(fd)
            raise
        sock.setblocking(False)
        return sock, peer


def nonblocking_stream(ipv6: bool) -> RawSocket:
    """A new non-blocking TCP socket (SOCK_NONBLOCK at creation: no separate ioctl)."""
    family = socket.AF_INET6 if ipv6 else socket.AF_INET
    return RawSocket(family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
