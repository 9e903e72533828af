"""Bind listening sockets (host:port, [v6]:port, port 0 → the real port read back), and the
descriptor reserve that keeps a process answering when clients exhaust RLIMIT_NOFILE."""

from __future__ import annotations

import _socket
import os
import resource
import socket
from collections.abc import Callable

from egressgate.config.model import ListenAddress
from egressgate.errors import StartupError

BACKLOG = 4096


def bind(address: ListenAddress, reuse_port: bool = False, listen: bool = True) -> socket.socket:
    """A bound (and by default listening) non-blocking TCP socket; StartupError if it cannot."""
    try:
        return _bind(address, reuse_port, listen)
    except OSError as exc:
        why = exc.strerror or str(exc)
        raise StartupError(f"cannot listen on {address}: {why}") from exc


def _bind(address: ListenAddress, reuse_port: bool, listen: bool) -> socket.socket:
    infos = socket.getaddrinfo(
        address.host,
        address.port,
        type=socket.SOCK_STREAM,
        flags=socket.AI_PASSIVE | socket.AI_NUMERICSERV,
    )
    family, _, _, _, sockaddr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6 and address.host in ("::", ""):
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # dual-stack [::]
        sock.bind(sockaddr)
        if listen:
            sock.listen(BACKLOG)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def bound_address(sock: socket.socket) -> str:
    """host:port (or [v6]:port) the socket is bound to."""
    host, port = sock.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def fd_ceiling(reserved_fds: int) -> int:
    """The lowest descriptor number a new client socket may not have.

    Linux hands out the lowest free descriptor, so a new socket numbered N means descriptors
    0..N-1 are all in use: refusing clients whose socket lands at or above
    `RLIMIT_NOFILE - reserved_fds` keeps that many descriptors free for the admin endpoint,
    upstream sockets, DNS and logs. One comparison per accept, no counting.
    """
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 1 << 62
    return max(0, soft - reserved_fds)


class SpareFd:
    """The reserve-descriptor trick (nginx, libuv): one descriptor held open from the start.

    When accept() fails with EMFILE, the spare is closed, queued clients are accepted into
    its slot one at a time, told `503` and closed, and the spare is opened again, so the
    backlog is answered instead of left hanging with the listener readable forever.
    """

    __slots__ = ("fd",)

    def __init__(self) -> None:
        self.fd = -1
        self.restore()

    def restore(self) -> bool:
        """Hold the spare again; False if no descriptor is free yet (retried later)."""
        if self.fd < 0:
            try:
                self.fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                return False
        return True

    def refuse_queued(
        self, accept: Callable[[], tuple[_socket.socket, object]], response: bytes, limit: int
    ) -> int:
        """Release the spare, answer up to `limit` queued clients with `response`, close them,
        take the spare back. Returns how many were answered."""
        if self.fd < 0 and not self.restore():
            return 0
        os.close(self.fd)
        self.fd = -1
        answered = 0
        try:
            for _ in range(limit):
                try:
                    client, _ = accept()
                except OSError:
                    break  # the backlog is empty (EAGAIN), or another descriptor took the slot
                if response:
                    try:
                        client.send(response)
                    except OSError:
                        pass
                client.close()
                answered += 1
        finally:
            self.restore()
        return answered

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def bind_udp(address: ListenAddress) -> socket.socket:
    """A bound non-blocking UDP socket (for the DNS guard); StartupError if it cannot."""
    try:
        infos = socket.getaddrinfo(
            address.host,
            address.port,
            type=socket.SOCK_DGRAM,
            flags=socket.AI_PASSIVE | socket.AI_NUMERICSERV,
        )
        family, _, _, _, sockaddr = infos[0]
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            if family == socket.AF_INET6 and address.host in ("::", ""):
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.bind(sockaddr)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
    except OSError as exc:
        raise StartupError(f"cannot listen on {address} (UDP): {exc.strerror or exc}") from exc
    return sock
