"""Bind listening sockets (host:port, [v6]:port, port 0 → the real port read back), and the
descriptor reserve that keeps a process answering when clients exhaust RLIMIT_NOFILE."""

from __future__ import annotations

import _socket
import asyncio
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


ACCEPT_BACKOFF_FIRST_S = 0.01  # first pause after EMFILE; doubles up to the caller's maximum


class AcceptPause:
    """Watches a listening socket on the loop and takes it off for a while when accept() fails
    for want of descriptors (EMFILE and friends): the pause doubles from ACCEPT_BACKOFF_FIRST_S
    up to the maximum given, and a loop timer puts the listener back. A listener that stays
    readable is never polled in a busy loop. Shared by the HTTP, TLS and SOCKS5 listeners."""

    __slots__ = ("_fd", "_loop", "_on_readable", "_resume", "backoff_s", "closed")

    def __init__(
        self, loop: asyncio.AbstractEventLoop, fd: int, on_readable: Callable[[], object]
    ) -> None:
        self._loop = loop
        self._fd = fd
        self._on_readable = on_readable
        self._resume: asyncio.TimerHandle | None = None
        self.backoff_s = 0.0  # the current pause; 0: not exhausted
        self.closed = False
        loop.add_reader(fd, on_readable)

    def pause(self, max_s: float) -> bool:
        """Stop watching for the next pause (doubled); True if it starts a run of pauses."""
        first = not self.backoff_s
        self.backoff_s = min(
            max_s, self.backoff_s * 2 if self.backoff_s else ACCEPT_BACKOFF_FIRST_S
        )
        if self._resume is None and not self.closed:
            self._loop.remove_reader(self._fd)
            self._resume = self._loop.call_later(self.backoff_s, self._watch_again)
        return first

    def recovered(self) -> float:
        """Descriptors are free again: the run of pauses is over. Returns how long the last
        pause was (0: there was none)."""
        paused, self.backoff_s = self.backoff_s, 0.0
        return paused

    def _watch_again(self) -> None:
        self._resume = None
        if not self.closed:
            self._loop.add_reader(self._fd, self._on_readable)

    def close(self) -> None:
        """Stop watching for good (before the listening socket is closed)."""
        self.closed = True
        if self._resume is not None:
            self._resume.cancel()
            self._resume = None
        else:
            self._loop.remove_reader(self._fd)


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
