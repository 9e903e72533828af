"""Bind listening sockets: host:port, [v6]:port, port 0 → the real port read back."""

from __future__ import annotations

import socket

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
